//! `POST /token`: the forced failure modes and the three grants the fake issues tokens for,
//! `refresh_token` (with optional rotation), `authorization_code` with PKCE (codes come from
//! [`super::consent`]) and the service-account `jwt-bearer` grant of RFC 7523, each failing
//! with Google's error codes and descriptions.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};

use super::http::{
    json, oauth_error, parse_basic, parse_params, plain, server_error, HttpResponse,
};
use super::jwt::{JwtError, UnverifiedJwt};
use super::{
    lock, IssuerMode, IssuerShared, RefreshGrant, ASSERTION_CLOCK_SKEW_SECS, GMAIL_SCOPE,
    JWT_BEARER_GRANT_TYPE, MAX_ASSERTION_LIFETIME_SECS, MAX_BODY_BYTES,
};
use crate::sandbox::random_hex;

pub(super) async fn handle_token(shared: &IssuerShared, req: Request<Incoming>) -> HttpResponse {
    if req.method() != Method::POST {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    shared.refresh_count.fetch_add(1, Ordering::SeqCst);

    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            if err.is::<http_body_util::LengthLimitError>() {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large");
            }
            tracing::debug!(error = %err, "sandbox token issuer: reading request body failed");
            return plain(StatusCode::BAD_REQUEST, "Bad Request");
        }
    };

    let delay = *lock(&shared.delay);
    if !delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.shutdown.cancelled() => return server_error(),
        }
    }

    let mode = *lock(&shared.mode);
    match mode {
        IssuerMode::Normal => {}
        IssuerMode::InvalidGrant => {
            tracing::info!(outcome = "invalid_grant (forced)", "sandbox token request");
            return invalid_grant();
        }
        IssuerMode::ServerError => {
            tracing::info!(outcome = "503 (forced)", "sandbox token request");
            return server_error();
        }
        IssuerMode::Hang => {
            tracing::info!(outcome = "hang (forced)", "sandbox token request");
            shared.shutdown.cancelled().await;
            return server_error();
        }
        // Answered below, once the form (whose secrets it repeats) is read.
        IssuerMode::InvalidGrantEcho => {}
        IssuerMode::OAuthError { status, error } => {
            tracing::info!(outcome = error, status, "sandbox token request (forced)");
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return oauth_error(status, error, "Forced by the test.");
        }
    }

    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Request content type must be application/x-www-form-urlencoded.",
        );
    }

    let form = match parse_params(&body) {
        Ok(form) => form,
        Err(key) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("Duplicate parameter: {key}"),
            )
        }
    };

    if mode == IssuerMode::InvalidGrantEcho {
        tracing::info!(
            outcome = "invalid_grant echoing secrets (forced)",
            "sandbox token request"
        );
        let echoed = format!(
            "Token {} of client secret {} has been expired or revoked.",
            form.get("refresh_token").map_or("", String::as_str),
            form.get("client_secret").map_or("", String::as_str),
        );
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &echoed);
    }

    match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => refresh_token_grant(shared, &parts.headers, &form),
        Some("authorization_code") => authorization_code_grant(shared, &parts.headers, &form),
        Some(JWT_BEARER_GRANT_TYPE) => jwt_bearer_grant(shared, &form),
        Some("client_credentials") => {
            super::apps::client_credentials_grant(shared, &parts.headers, &form)
        }
        Some(other) => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("Invalid grant_type: {other}"),
        ),
        None => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: grant_type",
        ),
    }
}

/// The client's credentials, from exactly one of HTTP Basic or the form (RFC 6749 §2.3.1).
pub(super) fn client_credentials(
    headers: &hyper::HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(String, String), Box<HttpResponse>> {
    let basic = match headers.get(header::AUTHORIZATION) {
        Some(value) => match parse_basic(value) {
            Some(creds) => Some(creds),
            None => return Err(Box::new(invalid_client(None))),
        },
        None => None,
    };
    let form_creds = form.get("client_id").map(|id| {
        (
            id.clone(),
            form.get("client_secret").cloned().unwrap_or_default(),
        )
    });
    match (basic, form_creds) {
        (Some(creds), None) | (None, Some(creds)) => Ok(creds),
        // RFC 6749 §2.3: a client must use exactly one authentication method.
        (Some(_), Some(_)) => Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Client authentication must use only one method.",
        ))),
        (None, None) => Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Could not determine client ID from request.",
        ))),
    }
}

/// Whether some account is registered with this client id and secret.
fn client_is_known(shared: &IssuerShared, client_id: &str, client_secret: &str) -> bool {
    lock(&shared.accounts)
        .iter()
        .any(|a| a.client_id == client_id && a.client_secret == client_secret)
}

/// Google's refresh tokens look like `1//0` followed by ~100 URL-safe characters.
fn new_refresh_token() -> String {
    format!("1//0sandbox-{}", random_hex(32))
}

fn refresh_token_grant(
    shared: &IssuerShared,
    headers: &hyper::HeaderMap,
    form: &HashMap<String, String>,
) -> HttpResponse {
    let (client_id, client_secret) = match client_credentials(headers, form) {
        Ok(creds) => creds,
        Err(resp) => return *resp,
    };
    let Some(refresh_token) = form.get("refresh_token").filter(|t| !t.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: refresh_token",
        );
    };
    if !client_is_known(shared, &client_id, &client_secret) {
        return invalid_client(Some(&client_id));
    }

    let (email, rotated, expires_at) = {
        let mut auth = lock(&shared.auth);
        let rotate = auth.rotate_refresh_tokens;
        // A time-limited grant past its end is gone, as at Google.
        let now = Instant::now();
        auth.refresh_grants
            .retain(|g| g.expires_at.is_none_or(|expires_at| expires_at > now));
        let Some(grant) = auth
            .refresh_grants
            .iter_mut()
            .find(|g| g.client_id == client_id && &g.token == refresh_token)
        else {
            tracing::info!(%client_id, outcome = "invalid_grant", "sandbox token request");
            return invalid_grant();
        };
        let rotated = rotate.then(|| {
            grant.token = new_refresh_token();
            grant.token.clone()
        });
        (grant.email.clone(), rotated, grant.expires_at)
    };

    // Graph scopes get a JWT with `scp`, as Entra issues them (apps.rs).
    let access_token =
        super::apps::delegated_graph_token(&shared.tokens, &email, form.get("scope"))
            .unwrap_or_else(|| shared.tokens.issue(&email));
    tracing::info!(%client_id, %email, outcome = "issued", "sandbox token request");
    let mut body = serde_json::json!({
        "access_token": access_token,
        "expires_in": shared.expires_in.load(Ordering::SeqCst),
        "scope": GMAIL_SCOPE,
        "token_type": "Bearer",
    });
    if let Some(new_token) = rotated {
        body["refresh_token"] = serde_json::Value::String(new_token);
    }
    if let Some(expires_at) = expires_at {
        body["refresh_token_expires_in"] = remaining_secs(expires_at).into();
    }
    json(StatusCode::OK, &body)
}

/// RFC 7636 §4.1: 43-128 characters from the unreserved set.
fn is_valid_code_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `BASE64URL-NOPAD(SHA256(verifier))` (RFC 7636 §4.2, method `S256`).
pub(super) fn s256_challenge(verifier: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn authorization_code_grant(
    shared: &IssuerShared,
    headers: &hyper::HeaderMap,
    form: &HashMap<String, String>,
) -> HttpResponse {
    let (client_id, client_secret) = match client_credentials(headers, form) {
        Ok(creds) => creds,
        Err(resp) => return *resp,
    };
    if !client_is_known(shared, &client_id, &client_secret) {
        return invalid_client(Some(&client_id));
    }
    let Some(code) = form.get("code").filter(|c| !c.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: code",
        );
    };
    let Some(redirect_uri) = form.get("redirect_uri") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing parameter: redirect_uri",
        );
    };
    // Codes are single-use: any exchange attempt by the right client consumes it.
    let pending = lock(&shared.auth).codes.remove(code.as_str());
    let pending = match pending {
        Some(p) if p.client_id == client_id && p.expires_at > Instant::now() => p,
        other => {
            let why = if other.is_some() {
                "expired or other client's code"
            } else {
                "unknown or used code"
            };
            tracing::info!(%client_id, outcome = "invalid_grant", why, "sandbox code exchange");
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Bad Request");
        }
    };
    if *redirect_uri != pending.redirect_uri {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "redirect_uri mismatch",
        );
    }
    let Some(verifier) = form.get("code_verifier") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Missing code verifier.",
        );
    };
    if !is_valid_code_verifier(verifier) || s256_challenge(verifier) != pending.code_challenge {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid code verifier.",
        );
    }

    let email = pending.email;
    let refresh_token = pending.with_refresh_token.then(|| {
        let token = new_refresh_token();
        let mut auth = lock(&shared.auth);
        let expires_at = auth
            .refresh_token_lifetime
            .map(|lifetime| Instant::now() + lifetime);
        auth.refresh_grants.push(RefreshGrant {
            token: token.clone(),
            client_id: client_id.clone(),
            email: email.clone(),
            expires_at,
        });
        (token, expires_at)
    });
    let access_token = shared.tokens.issue(&email);
    tracing::info!(%client_id, %email, outcome = "issued", "sandbox code exchange");
    let mut body = serde_json::json!({
        "access_token": access_token,
        "expires_in": shared.expires_in.load(Ordering::SeqCst),
        "scope": pending.scope,
        "token_type": "Bearer",
    });
    if let Some((token, expires_at)) = refresh_token {
        body["refresh_token"] = serde_json::Value::String(token);
        if let Some(expires_at) = expires_at {
            body["refresh_token_expires_in"] = remaining_secs(expires_at).into();
        }
    }
    json(StatusCode::OK, &body)
}

/// Google's answer when domain-wide delegation does not cover the subject or scopes.
pub(super) const UNAUTHORIZED_CLIENT_DESCRIPTION: &str =
    "Client is unauthorized to retrieve access tokens \
    using this method, or client not authorized for any of the scopes requested.";
/// Google's answer for `iat`/`exp` out of bounds.
const JWT_TIMEFRAME_DESCRIPTION: &str = "Invalid JWT: Token must be a short-lived token \
    (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.";

pub(super) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A NumericDate claim (RFC 7519 §2): a JSON number, possibly fractional.
fn numeric_date(claims: &serde_json::Map<String, serde_json::Value>, name: &str) -> Option<i64> {
    let value = claims.get(name)?;
    // Truncation of a fractional date is intended; the range is checked by the caller.
    #[allow(clippy::cast_possible_truncation)]
    value
        .as_i64()
        .or_else(|| value.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

fn jwt_bearer_grant(shared: &IssuerShared, form: &HashMap<String, String>) -> HttpResponse {
    let bad_jwt = |description: &str| {
        tracing::info!(
            outcome = "invalid_grant",
            description,
            "sandbox jwt-bearer request"
        );
        oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
    };
    let Some(assertion) = form.get("assertion").filter(|a| !a.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    let jwt = match UnverifiedJwt::parse(assertion) {
        Ok(jwt) => jwt,
        Err(JwtError::Malformed(why)) => return bad_jwt(&format!("Invalid JWT: {why}")),
        Err(_) => return bad_jwt("Invalid JWT: malformed"),
    };
    let Some(iss) = jwt.claims.get("iss").and_then(|v| v.as_str()) else {
        return bad_jwt("Invalid JWT: missing iss claim");
    };
    let found = lock(&shared.auth)
        .service_accounts
        .iter()
        .find(|sa| sa.account.client_email == iss)
        .map(|sa| (sa.rsa_key.clone(), sa.account.allowed_subjects.clone()));
    let Some((rsa_key, allowed_subjects)) = found else {
        return bad_jwt("Invalid grant: account not found");
    };
    match rsa_key.map(|key| jwt.verify_rs256(&key)) {
        Some(Ok(())) => {}
        Some(Err(JwtError::UnsupportedAlgorithm(alg))) => {
            return bad_jwt(&format!("Invalid JWT: unsupported algorithm {alg}"))
        }
        Some(Err(JwtError::Malformed(why))) => return bad_jwt(&format!("Invalid JWT: {why}")),
        Some(Err(JwtError::BadSignature)) | None => return bad_jwt("Invalid JWT Signature."),
    }

    let token_url = format!("http://{}/token", shared.addr);
    if jwt.claims.get("aud").and_then(|v| v.as_str()) != Some(token_url.as_str()) {
        return bad_jwt(&format!(
            "Invalid JWT: Failed audience check. The right audience is {token_url}"
        ));
    }
    let now = now_unix();
    let times = numeric_date(&jwt.claims, "iat").zip(numeric_date(&jwt.claims, "exp"));
    let Some((iat, exp)) = times else {
        return bad_jwt(JWT_TIMEFRAME_DESCRIPTION);
    };
    let lifetime = exp.saturating_sub(iat);
    if iat > now.saturating_add(ASSERTION_CLOCK_SKEW_SECS)
        || exp <= now
        || lifetime <= 0
        || lifetime > MAX_ASSERTION_LIFETIME_SECS
    {
        return bad_jwt(JWT_TIMEFRAME_DESCRIPTION);
    }

    let scope = jwt
        .claims
        .get("scope")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if scope.split_whitespace().next().is_none() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        );
    }
    // Without `sub` Google issues a token for the service account itself (no impersonation).
    let subject = match jwt.claims.get("sub") {
        None => iss.to_owned(),
        Some(sub) => match sub.as_str() {
            Some(sub) if allowed_subjects.iter().any(|a| a.eq_ignore_ascii_case(sub)) => {
                sub.to_owned()
            }
            _ => return unauthorized_client(iss),
        },
    };
    if !scope.split_whitespace().any(|s| s == GMAIL_SCOPE) {
        return unauthorized_client(iss);
    }

    let access_token = shared.tokens.issue(&subject);
    tracing::info!(client_email = %iss, %subject, outcome = "issued", "sandbox jwt-bearer request");
    json(
        StatusCode::OK,
        &serde_json::json!({
            "access_token": access_token,
            "expires_in": shared.expires_in.load(Ordering::SeqCst),
            "token_type": "Bearer",
        }),
    )
}

fn unauthorized_client(client_email: &str) -> HttpResponse {
    tracing::info!(%client_email, outcome = "unauthorized_client", "sandbox jwt-bearer request");
    oauth_error(
        StatusCode::UNAUTHORIZED,
        "unauthorized_client",
        UNAUTHORIZED_CLIENT_DESCRIPTION,
    )
}

fn invalid_client(client_id: Option<&str>) -> HttpResponse {
    tracing::info!(
        client_id = client_id.unwrap_or("<unparseable>"),
        outcome = "invalid_client",
        "sandbox token request"
    );
    oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "The OAuth client was not found.",
    )
}

/// Whole seconds left until `expires_at`, as `refresh_token_expires_in` counts them.
fn remaining_secs(expires_at: Instant) -> u64 {
    expires_at
        .saturating_duration_since(Instant::now())
        .as_secs()
}

fn invalid_grant() -> HttpResponse {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "Token has been expired or revoked.",
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure
mod tests {
    use super::*;

    /// RFC 7636 Appendix B's example verifier.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

    #[test]
    fn s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            s256_challenge(VERIFIER),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(is_valid_code_verifier(VERIFIER));
        assert!(!is_valid_code_verifier("short"));
        assert!(!is_valid_code_verifier(&"a b".repeat(20)));
        assert!(!is_valid_code_verifier(&"a".repeat(129)));
    }
}
