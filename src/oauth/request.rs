//! One request to a token endpoint (RFC 6749 §4.6 refresh, RFC 7523 JWT bearer) and what
//! its answer means.
//!
//! What the endpoint says is classified by [`classify_refusal`]: only `invalid_grant`
//! means "re-authorize", only the client/config error codes of RFC 6749 §5.2 mean "fix the
//! client"; any 5xx or 429, and every other error code, is a provider hiccup that clients
//! retry. Every duration a provider supplies (`expires_in`, `Retry-After`) is clamped
//! here, before it meets `Instant` arithmetic.

use std::time::Duration;

use crate::config::Asset;
use crate::credentials::secret::{redact, Secret};
use crate::oauth::error::TokenError;
use crate::oauth::http::{describe_error, provider_text};

/// The longest access-token lifetime believed. Google and Microsoft issue one hour; a larger
/// `expires_in` (or `u64::MAX`, which would overflow `Instant`) is a provider bug, and a
/// token revoked early is caught by the upstream refusing it anyway.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// RFC 6749 makes `expires_in` optional; this is what the big providers issue.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest back-off a token endpoint's `Retry-After` can impose: longer would let one
/// odd answer keep an asset's mail queued for hours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// A failed refresh: the error, and how long the endpoint asked us to wait.
pub(super) struct Refusal {
    pub error: TokenError,
    pub retry_after: Option<Duration>,
}

impl From<TokenError> for Refusal {
    fn from(error: TokenError) -> Self {
        Refusal {
            error,
            retry_after: None,
        }
    }
}

/// Which grant a token request was for: the same error code means different things.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GrantKind {
    RefreshToken,
    ServiceAccount,
    /// App-only (RFC 6749 §4.4): every refusal that is not temporary is about the client.
    ClientCredentials,
}

/// A successful token reply, its durations already clamped.
pub(super) struct TokenResponse {
    pub access_token: Secret,
    pub lifetime: Duration,
    pub refresh_token: Option<Secret>,
    /// `refresh_token_expires_in`: the grant is time-limited (Google's Testing-mode apps,
    /// time-based access) and dies this long from now. Clamped to [`MAX_GRANT_LIFETIME`].
    pub refresh_token_lifetime: Option<Duration>,
}

/// The longest refresh-token lifetime believed from `refresh_token_expires_in`: far beyond
/// any provider's (Google's longest time-based access is a few weeks), short enough that
/// adding it to the clock cannot overflow.
pub const MAX_GRANT_LIFETIME: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// One POST to the asset's token endpoint (RFC 6749 §4.6, RFC 7523), classified.
pub(super) async fn token_request(
    http: &reqwest::Client,
    asset: &Asset,
    form: &[(&str, &str)],
    kind: GrantKind,
) -> Result<TokenResponse, Refusal> {
    let unavailable = |reason: String| TokenError::Unavailable {
        asset: asset.name.clone(),
        reason,
    };
    let response = http
        .post(&asset.token_url)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(form)
        .send()
        .await
        // Without the URL: it is in the config, and the text stays short.
        .map_err(|err| unavailable(describe_error(&err.without_url())))?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response
        .bytes()
        .await
        .map_err(|err| unavailable(describe_error(&err.without_url())))?;
    if status.is_success() {
        return token_response(&body).ok_or_else(|| {
            Refusal::from(unavailable(format!(
                "unexpected HTTP {status} response ({} bytes that are not an OAuth token reply)",
                body.len()
            )))
        });
    }
    // What the endpoint says goes to logs, `check`, pages and alert payloads: a provider
    // that repeats the request's secrets in its error text must not put them there.
    let secrets: Vec<&str> = form
        .iter()
        .filter(|(key, _)| matches!(*key, "refresh_token" | "client_secret" | "assertion"))
        .map(|(_, value)| *value)
        .collect();
    Err(Refusal {
        error: classify_refusal(&asset.name, kind, status, &body, &secrets),
        retry_after,
    })
}

fn token_response(body: &[u8]) -> Option<TokenResponse> {
    #[derive(serde::Deserialize)]
    struct Success {
        access_token: String,
        #[serde(default)]
        expires_in: Option<serde_json::Value>,
        #[serde(default)]
        refresh_token: Option<String>,
        #[serde(default)]
        refresh_token_expires_in: Option<serde_json::Value>,
    }
    let success: Success = serde_json::from_slice(body).ok()?;
    if success.access_token.is_empty() {
        return None;
    }
    Some(TokenResponse {
        access_token: Secret::new(success.access_token),
        lifetime: success
            .expires_in
            .as_ref()
            .and_then(provider_seconds)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME)
            .min(MAX_TOKEN_LIFETIME),
        refresh_token: success
            .refresh_token
            .filter(|token| !token.is_empty())
            .map(Secret::new),
        refresh_token_lifetime: success
            .refresh_token_expires_in
            .as_ref()
            .and_then(|value| provider_seconds_up_to(value, MAX_GRANT_LIFETIME)),
    })
}

/// A provider's `expires_in`: a JSON number (integer or not, any size) or a numeric string,
/// as some providers send. Clamped to [`MAX_TOKEN_LIFETIME`]; negative is zero; anything
/// else is `None` (the default applies).
fn provider_seconds(value: &serde_json::Value) -> Option<Duration> {
    provider_seconds_up_to(value, MAX_TOKEN_LIFETIME)
}

/// [`provider_seconds`] clamped to `max` instead.
fn provider_seconds_up_to(value: &serde_json::Value, max: Duration) -> Option<Duration> {
    let secs = match value {
        serde_json::Value::Number(number) => number.as_f64()?,
        serde_json::Value::String(text) => text.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if secs.is_nan() {
        return None;
    }
    Duration::try_from_secs_f64(secs.clamp(0.0, max.as_secs_f64())).ok()
}

/// `Retry-After` in delta-seconds, clamped to [`MAX_RETRY_AFTER`]; an HTTP date is ignored
/// (the configured back-off applies).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// The error codes of RFC 6749 §5.2 that only a change of the client or its configuration
/// can fix.
const CLIENT_ERRORS: [&str; 4] = [
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
];

/// What a non-2xx token reply means. Any 5xx or 429 is temporary whatever its body says (a
/// provider under load answers oddly); otherwise only `invalid_grant` (the grant is dead)
/// and [`CLIENT_ERRORS`] need the operator, and every other code — `temporarily_unavailable`,
/// codes invented after this was written — is temporary too: a wrong "needs the operator"
/// marks the asset not ready and, with `credential_failure = "permanent"`, bounces mail.
fn classify_refusal(
    asset: &str,
    kind: GrantKind,
    status: reqwest::StatusCode,
    body: &[u8],
    secrets: &[&str],
) -> TokenError {
    #[derive(serde::Deserialize)]
    struct OAuthError {
        error: String,
        #[serde(default)]
        error_description: Option<String>,
    }
    let asset = asset.to_string();
    let Ok(refusal) = serde_json::from_slice::<OAuthError>(body) else {
        return TokenError::Unavailable {
            asset,
            reason: format!(
                "unexpected HTTP {status} response ({} bytes that are not an OAuth reply)",
                body.len()
            ),
        };
    };
    // Redacted before `provider_text` shortens it, so no cut-off piece of a secret remains.
    let error = provider_text(&redact(&refusal.error, secrets));
    let description = refusal
        .error_description
        .as_deref()
        .map(|text| provider_text(&redact(text, secrets)))
        .unwrap_or_else(|| "no description".to_string());
    let temporary = status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
    let code = refusal.error.as_str();
    match kind {
        _ if temporary => {}
        GrantKind::RefreshToken if code == "invalid_grant" => {
            return TokenError::NeedsReauthorization {
                asset,
                error,
                description,
            }
        }
        GrantKind::RefreshToken if CLIENT_ERRORS.contains(&code) => {
            return TokenError::ClientRejected {
                asset,
                error,
                description,
            }
        }
        // For a JWT grant, invalid_grant is about the assertion: the key, the delegation,
        // the clock — all the operator's.
        GrantKind::ServiceAccount if code == "invalid_grant" || CLIENT_ERRORS.contains(&code) => {
            return TokenError::ServiceAccountRejected {
                asset,
                error,
                description,
            }
        }
        // No user grant is involved: a refused secret, an unknown app, a scope without
        // `/.default` or a permission not consented (Microsoft: invalid_client,
        // unauthorized_client, invalid_scope, invalid_grant) are the operator's to fix.
        GrantKind::ClientCredentials
            if code == "invalid_grant" || CLIENT_ERRORS.contains(&code) =>
        {
            return TokenError::ClientRejected {
                asset,
                error,
                description,
            }
        }
        _ => {}
    }
    TokenError::Unavailable {
        asset,
        reason: format!("HTTP {status}: {error}: {description}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(kind: GrantKind, status: u16, body: &str) -> TokenError {
        let status = reqwest::StatusCode::from_u16(status).unwrap_or_default();
        classify_refusal("a", kind, status, body.as_bytes(), &[])
    }

    fn oauth(error: &str) -> String {
        format!(r#"{{"error":"{error}","error_description":"d"}}"#)
    }

    #[test]
    fn only_credential_codes_need_the_operator() {
        use GrantKind::*;
        assert!(matches!(
            refusal(RefreshToken, 400, &oauth("invalid_grant")),
            TokenError::NeedsReauthorization { .. }
        ));
        for code in CLIENT_ERRORS {
            assert!(matches!(
                refusal(RefreshToken, 401, &oauth(code)),
                TokenError::ClientRejected { .. }
            ));
            assert!(matches!(
                refusal(ServiceAccount, 400, &oauth(code)),
                TokenError::ServiceAccountRejected { .. }
            ));
            assert!(matches!(
                refusal(ClientCredentials, 401, &oauth(code)),
                TokenError::ClientRejected { .. }
            ));
        }
        assert!(matches!(
            refusal(ClientCredentials, 400, &oauth("invalid_grant")),
            TokenError::ClientRejected { .. }
        ));
        for (status, body) in [
            (400, oauth("temporarily_unavailable")),
            (400, oauth("server_error")),
            (400, oauth("invalid_request")),
            (400, oauth("brand_new_code")),
            (503, oauth("invalid_grant")),
            (500, oauth("invalid_client")),
            (429, oauth("invalid_grant")),
            (429, "Too Many Requests".to_string()),
            (400, "<html>".to_string()),
            (302, String::new()),
        ] {
            for kind in [RefreshToken, ServiceAccount, ClientCredentials] {
                let error = refusal(kind, status, &body);
                assert!(
                    matches!(error, TokenError::Unavailable { .. }),
                    "{kind:?} {status} {body}: {error:?}"
                );
                assert!(!error.needs_operator());
            }
        }
    }

    #[test]
    fn secrets_echoed_by_the_provider_are_redacted() {
        let status = reqwest::StatusCode::BAD_REQUEST;
        let long = "1//0".to_string() + &"k".repeat(400);
        let body = format!(
            r#"{{"error":"invalid_grant","error_description":"Token {long} of client shh-secret is revoked"}}"#
        );
        let error = classify_refusal(
            "a",
            GrantKind::RefreshToken,
            status,
            body.as_bytes(),
            &[long.as_str(), "shh-secret"],
        );
        let text = error.to_string();
        assert!(matches!(error, TokenError::NeedsReauthorization { .. }));
        assert!(
            !text.contains("1//0") && !text.contains("kkkk") && !text.contains("shh"),
            "{text}"
        );
        assert!(
            text.contains(crate::credentials::secret::REDACTED),
            "{text}"
        );
    }

    #[test]
    fn provider_durations_are_clamped() {
        let lifetime = |json: &str| token_response(json.as_bytes()).map(|r| r.lifetime);
        let day = Some(MAX_TOKEN_LIFETIME);
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":18446744073709551615}"#),
            day
        );
        assert_eq!(lifetime(r#"{"access_token":"t","expires_in":1e19}"#), day);
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":"99999999999999999999999"}"#),
            day
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":"NaN"}"#),
            Some(DEFAULT_TOKEN_LIFETIME)
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":-5}"#),
            Some(Duration::ZERO)
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":"3599"}"#),
            Some(Duration::from_secs(3599))
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":3599.5}"#),
            Some(Duration::from_secs_f64(3599.5))
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t"}"#),
            Some(DEFAULT_TOKEN_LIFETIME)
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":null}"#),
            Some(DEFAULT_TOKEN_LIFETIME)
        );
        assert_eq!(lifetime(r#"{"access_token":""}"#), None);

        let grant =
            |json: &str| token_response(json.as_bytes()).and_then(|r| r.refresh_token_lifetime);
        assert_eq!(grant(r#"{"access_token":"t"}"#), None);
        assert_eq!(
            grant(r#"{"access_token":"t","refresh_token_expires_in":604799}"#),
            Some(Duration::from_secs(604_799))
        );
        assert_eq!(
            grant(r#"{"access_token":"t","refresh_token_expires_in":1e300}"#),
            Some(MAX_GRANT_LIFETIME)
        );

        let after = |value: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            if let Ok(value) = value.parse() {
                headers.insert(reqwest::header::RETRY_AFTER, value);
            }
            retry_after(&headers)
        };
        assert_eq!(after("7"), Some(Duration::from_secs(7)));
        assert_eq!(after("18446744073709551615"), Some(MAX_RETRY_AFTER));
        assert_eq!(after("99999999999999999999999"), None);
        assert_eq!(after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
