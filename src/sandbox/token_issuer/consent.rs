//! `GET /auth`: the fake authorization endpoint. It checks the request as Google's consent
//! screen does (client, redirect URI, PKCE `S256`, response type), then "clicks" according to the
//! [`ConsentMode`] and redirects back with a code for [`super::grants`] to exchange; requests it
//! cannot redirect get Google's HTML "Access blocked" page.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use oauth2::url::{form_urlencoded, Host, Url};

use super::http::{parse_params, plain, HttpResponse};
use super::{lock, ConsentMode, IssuerShared, PendingCode};
use crate::sandbox::random_hex;

/// Whether `uri` may receive the authorization response for `client_id`: loopback `http` with
/// any port (Google's rule for Desktop clients) or a registered prefix. Never with a fragment.
fn redirect_uri_allowed(uri: &str, client_id: &str, prefixes: &[(String, String)]) -> bool {
    let Ok(url) = Url::parse(uri) else {
        return false;
    };
    if url.fragment().is_some() {
        return false;
    }
    let loopback = url.scheme() == "http"
        && match url.host() {
            Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
            Some(Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
            Some(Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
            None => false,
        };
    loopback
        || prefixes
            .iter()
            .any(|(id, prefix)| id == client_id && uri.starts_with(prefix.as_str()))
}

/// `GET /auth`: validates the request like Google's consent screen, then "clicks" according to
/// the [`ConsentMode`] and redirects back to the client.
pub(super) fn handle_auth(shared: &IssuerShared, req: &Request<Incoming>) -> HttpResponse {
    if req.method() != Method::GET {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    let query = req.uri().query().unwrap_or_default();
    let recorded: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    lock(&shared.auth).last_authorization_request = Some(recorded);
    let params = match parse_params(query.as_bytes()) {
        Ok(params) => params,
        Err(key) => {
            return auth_error_page(
                "invalid_request",
                &format!("Parameter not allowed to be repeated: {key}"),
            )
        }
    };
    let param = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let missing = |name: &str| {
        auth_error_page(
            "invalid_request",
            &format!("Missing required parameter: {name}"),
        )
    };

    let Some(client_id) = param("client_id") else {
        return missing("client_id");
    };
    let default_email = lock(&shared.accounts)
        .iter()
        .find(|a| a.client_id == client_id)
        .map(|a| a.email.clone());
    let Some(default_email) = default_email else {
        tracing::info!(%client_id, outcome = "invalid_client", "sandbox authorization request");
        return auth_error_page_with_code(
            "Error 401: invalid_client",
            "The OAuth client was not found.",
        );
    };
    let Some(redirect_uri) = param("redirect_uri") else {
        return missing("redirect_uri");
    };
    let (consent, consent_email, allowed) = {
        let auth = lock(&shared.auth);
        (
            auth.consent,
            auth.consent_email.clone(),
            redirect_uri_allowed(redirect_uri, client_id, &auth.redirect_prefixes),
        )
    };
    let location = if allowed {
        Url::parse(redirect_uri).ok()
    } else {
        None
    };
    let Some(mut location) = location else {
        tracing::info!(%client_id, %redirect_uri, outcome = "redirect_uri_mismatch", "sandbox authorization request");
        return auth_error_page(
            "redirect_uri_mismatch",
            &format!(
                "You can't sign in to this app because it doesn't comply with Google's OAuth 2.0 \
                 policy. Request details: redirect_uri={redirect_uri}"
            ),
        );
    };

    let Some(response_type) = param("response_type") else {
        return missing("response_type");
    };
    if response_type != "code" {
        return auth_error_page(
            "unsupported_response_type",
            &format!("Unsupported response_type: {response_type}"),
        );
    }
    let Some(scope) = param("scope") else {
        return missing("scope");
    };
    let Some(code_challenge) = param("code_challenge") else {
        return missing("code_challenge");
    };
    if param("code_challenge_method") != Some("S256") {
        return auth_error_page(
            "invalid_request",
            "Invalid code_challenge_method: only S256 is supported.",
        );
    }
    let state = param("state");

    // Google only issues a refresh token for access_type=offline.
    let offline = param("access_type") == Some("offline");
    let mut pairs = location.query_pairs_mut();
    match consent {
        ConsentMode::Deny => {
            pairs.append_pair("error", "access_denied");
            if let Some(state) = state {
                pairs.append_pair("state", state);
            }
        }
        ConsentMode::Approve | ConsentMode::WrongState | ConsentMode::NoRefreshToken => {
            let code = format!("4/0sandbox-{}", random_hex(24));
            let email = consent_email.unwrap_or(default_email);
            {
                let mut auth = lock(&shared.auth);
                let expires_at = Instant::now() + auth.code_lifetime;
                auth.codes.insert(
                    code.clone(),
                    PendingCode {
                        client_id: client_id.to_owned(),
                        email,
                        redirect_uri: redirect_uri.to_owned(),
                        code_challenge: code_challenge.to_owned(),
                        scope: scope.to_owned(),
                        with_refresh_token: offline && consent != ConsentMode::NoRefreshToken,
                        expires_at,
                    },
                );
            }
            pairs.append_pair("code", &code);
            if consent == ConsentMode::WrongState {
                pairs.append_pair("state", &format!("forged-{}", random_hex(8)));
            } else if let Some(state) = state {
                pairs.append_pair("state", state);
            }
            pairs.append_pair("scope", scope);
        }
    }
    drop(pairs);
    tracing::info!(%client_id, ?consent, outcome = "redirect", "sandbox authorization request");
    let Ok(location) = HeaderValue::from_str(location.as_str()) else {
        return auth_error_page("invalid_request", "Invalid redirect_uri.");
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

/// Google's "Access blocked" page for `Error 400: <error>`.
fn auth_error_page(error: &str, detail: &str) -> HttpResponse {
    auth_error_page_with_code(&format!("Error 400: {error}"), detail)
}

/// An HTML error page shown instead of redirecting (the redirect target is not trusted). Always
/// status 400, as Google's page; `heading` carries the OAuth error ("Error 401: invalid_client").
fn auth_error_page_with_code(heading: &str, detail: &str) -> HttpResponse {
    let body = format!(
        "<!DOCTYPE html>\n<html lang=en><meta charset=utf-8>\
         <title>Sign in - Google Accounts</title>\
         <h1>Access blocked: authorization error</h1>\
         <p><b>{}</b></p><p>{}</p>\n",
        html_escape(heading),
        html_escape(detail)
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure
mod tests {
    use super::*;

    #[test]
    fn redirect_uri_rules() {
        let prefixes = vec![("web".to_owned(), "https://app.example/cb".to_owned())];
        for ok in [
            "http://127.0.0.1:1/",
            "http://127.0.0.1:65000/x?y=1",
            "http://localhost:8080/cb",
            "http://LOCALHOST/cb",
            "http://[::1]:9/",
        ] {
            assert!(redirect_uri_allowed(ok, "desktop", &prefixes), "{ok}");
        }
        for bad in [
            "https://127.0.0.1:1/",
            "http://127.0.0.2:1/",
            "http://localhost.evil.example/",
            "http://127.0.0.1:1/#frag",
            "https://app.example/cb",
            "not a url",
        ] {
            assert!(!redirect_uri_allowed(bad, "desktop", &prefixes), "{bad}");
        }
        assert!(redirect_uri_allowed(
            "https://app.example/cb/done",
            "web",
            &prefixes
        ));
    }
}
