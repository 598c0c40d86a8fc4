//! Unit tests of the consent's pure pieces and of the redirect plans.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use oauth2::url::Url;
use oauth2::{CsrfToken, PkceCodeChallenge};
use tokio::time::Instant;

use super::callback::{check_callback, constant_time_eq, parse_paste, parse_query, read_paste};
use super::callback::{Pasted, MAX_PASTE_LEN};
use super::exchange::{no_refresh_token_hint, GOOGLE_PERMISSIONS_URL};
use super::loopback::html_escape;
use super::redirect::{plan_redirect, Receiver};
use super::{consent_url, minutes, AuthorizeError};
use crate::config::{Asset, Provider};

/// A syntactically valid argon2id PHC string (never checked here).
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                    0VbV0jU5dEbWgZ5y3ZL4q3nSxRvLwUg8n6tQ3h2QW6I";

fn asset(provider: &str, extra: &str) -> Asset {
    let text = format!(
        r#"
[[user]]
name = "app"
password_hash = "{HASH}"
assets = ["*"]

[[asset]]
name = "box"
email = "box@example.com"
provider = "{provider}"
client_id = "client-123"
client_secret = "client-secret-XYZ"
refresh_token = "placeholder"
senders = ["box@example.com"]
auth_url = "https://auth.example.test/authorize"
token_url = "https://auth.example.test/token"
upstream = "127.0.0.1:1"
{extra}
"#
    );
    let config = crate::config::parse(&text, Path::new("t.toml")).unwrap();
    config.assets[0].as_ref().clone()
}

fn query(url: &Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

#[test]
fn consent_url_has_every_parameter_with_s256() {
    let asset = asset("custom", "scope = \"a b\"");
    let (url, state, verifier) = consent_url(&asset, "http://127.0.0.1:4321/callback").unwrap();
    assert!(url
        .as_str()
        .starts_with("https://auth.example.test/authorize?"));
    let q = query(&url);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "client-123");
    assert_eq!(q["redirect_uri"], "http://127.0.0.1:4321/callback");
    assert_eq!(q["scope"], "a b");
    assert_eq!(q["state"], *state.secret());
    assert_eq!(q["code_challenge_method"], "S256");
    let expected = PkceCodeChallenge::from_code_verifier_sha256(&verifier);
    assert_eq!(q["code_challenge"], expected.as_str());
    assert_eq!(q["login_hint"], "box@example.com");
    assert!(!q.contains_key("access_type"));
    assert!(!q.contains_key("prompt"));
    // Nothing secret in the URL.
    assert!(!url.as_str().contains("client-secret-XYZ"));
    assert!(!url.as_str().contains(verifier.secret().as_str()));
    // Fresh randomness every time.
    let (_, state2, verifier2) = consent_url(&asset, "http://127.0.0.1:4321/callback").unwrap();
    assert_ne!(state.secret(), state2.secret());
    assert_ne!(verifier.secret(), verifier2.secret());
}

#[test]
fn google_asks_for_offline_access_and_the_consent_screen() {
    let asset = asset("google", "");
    let (url, _, _) = consent_url(&asset, "http://127.0.0.1:1/callback").unwrap();
    let q = query(&url);
    assert_eq!(q["access_type"], "offline");
    assert_eq!(q["prompt"], "consent");
    assert_eq!(q["scope"], "https://mail.google.com/");
}

#[test]
fn microsoft_gets_nothing_extra() {
    let asset = asset("microsoft", "");
    let (url, _, _) = consent_url(&asset, "http://127.0.0.1:1/callback").unwrap();
    let q = query(&url);
    assert!(!q.contains_key("access_type"));
    assert!(!q.contains_key("prompt"));
    assert!(q["scope"].split(' ').any(|s| s == "offline_access"));
}

#[tokio::test]
async fn redirect_plans() {
    // Default: an ephemeral loopback port, listened on.
    let plan = plan_redirect(&asset("custom", "scope = \"s\""), false)
        .await
        .unwrap();
    let url = Url::parse(&plan.redirect_uri).unwrap();
    assert_eq!(url.host_str(), Some("127.0.0.1"));
    assert_ne!(url.port(), None);
    assert_eq!(url.path(), "/callback");
    assert!(matches!(plan.receiver, Receiver::Listen { ref path, .. } if path == "/callback"));

    // Port 0 in a configured loopback URI becomes the real port; the path is kept.
    let plan = plan_redirect(
        &asset(
            "custom",
            "scope = \"s\"\nredirect_uri = \"http://localhost:0/oauth/cb\"",
        ),
        false,
    )
    .await
    .unwrap();
    let url = Url::parse(&plan.redirect_uri).unwrap();
    assert_eq!(url.host_str(), Some("localhost"));
    assert_ne!(url.port().unwrap_or(0), 0);
    assert!(matches!(plan.receiver, Receiver::Listen { ref path, .. } if path == "/oauth/cb"));

    // A Web client's URI cannot be listened on...
    let web = asset(
        "custom",
        "scope = \"s\"\nredirect_uri = \"https://relay.example/callback\"",
    );
    let err = plan_redirect(&web, false).await.err().unwrap();
    assert!(matches!(err, AuthorizeError::BadRedirectUri { .. }));
    assert!(err.to_string().contains("--no-browser"), "{err}");
    // ...but is fine for the paste flow, unchanged.
    let plan = plan_redirect(&web, true).await.unwrap();
    assert_eq!(plan.redirect_uri, "https://relay.example/callback");
    assert!(matches!(plan.receiver, Receiver::Paste));

    let tls_loopback = asset(
        "custom",
        "scope = \"s\"\nredirect_uri = \"https://127.0.0.1:8443/cb\"",
    );
    let err = plan_redirect(&tls_loopback, false).await.err().unwrap();
    assert!(matches!(err, AuthorizeError::BadRedirectUri { .. }));
}

#[test]
fn state_is_checked_before_anything_else() {
    let state = CsrfToken::new("s-123".to_string());
    let params = |q: &str| parse_query(q).unwrap();
    assert_eq!(
        check_callback(&params("code=c1&state=s-123"), &state)
            .unwrap()
            .secret(),
        "c1"
    );
    for q in [
        "code=c1&state=s-124",
        "code=c1",
        "error=access_denied&state=x",
    ] {
        assert!(matches!(
            check_callback(&params(q), &state),
            Err(AuthorizeError::StateMismatch)
        ));
    }
    assert!(matches!(
        check_callback(&params("error=access_denied&state=s-123"), &state),
        Err(AuthorizeError::AccessDenied { .. })
    ));
    assert!(matches!(
        check_callback(&params("error=invalid_scope&state=s-123"), &state),
        Err(AuthorizeError::Authorization { .. })
    ));
    assert!(matches!(
        check_callback(&params("state=s-123"), &state),
        Err(AuthorizeError::BadInput { .. })
    ));
    assert!(matches!(
        parse_query("code=a&code=b"),
        Err(AuthorizeError::BadInput { .. })
    ));
}

#[test]
fn pastes() {
    match parse_paste("  http://127.0.0.1:9/callback?state=s&code=4%2F0Ab&scope=x \n").unwrap() {
        Pasted::Redirect(p) => {
            assert_eq!(p.code.as_deref(), Some("4/0Ab"));
            assert_eq!(p.state.as_deref(), Some("s"));
        }
        Pasted::BareCode(_) => panic!("a URL is not a bare code"),
    }
    match parse_paste("?code=abc&state=s").unwrap() {
        Pasted::Redirect(p) => assert_eq!(p.code.as_deref(), Some("abc")),
        Pasted::BareCode(_) => panic!("a query is not a bare code"),
    }
    match parse_paste("4%2F0Ab-cd\n").unwrap() {
        Pasted::BareCode(code) => assert_eq!(code.secret(), "4/0Ab-cd"),
        Pasted::Redirect(_) => panic!("a code is not a URL"),
    }
    assert!(parse_paste("   ").is_err());
    assert!(parse_paste("two words").is_err());
    assert!(parse_paste("http://[bad").is_err());
}

#[tokio::test]
async fn paste_reading_is_bounded_and_skips_blank_lines() {
    let far = Instant::now() + Duration::from_secs(5);
    let line = read_paste(&b"\n\r\n  code\nrest\n"[..], far, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(line.trim(), "code");
    let long = vec![b'a'; MAX_PASTE_LEN + 10];
    let err = read_paste(&long[..], far, Duration::from_secs(5))
        .await
        .err();
    assert!(matches!(err, Some(AuthorizeError::BadInput { .. })));
    let err = read_paste(&b""[..], far, Duration::from_secs(5))
        .await
        .err();
    assert!(matches!(err, Some(AuthorizeError::BadInput { .. })));
    let (_keep_open, silent) = tokio::io::duplex(64);
    let silent = tokio::io::BufReader::new(silent);
    let err = read_paste(
        silent,
        Instant::now() + Duration::from_millis(50),
        Duration::from_secs(1),
    )
    .await
    .err();
    assert!(matches!(err, Some(AuthorizeError::Timeout { secs: 1 })));
}

#[test]
fn helpers() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
    assert_eq!(minutes(Duration::from_secs(270)), "4:30");
    assert_eq!(minutes(Duration::from_secs(5)), "0:05");
    assert_eq!(
        html_escape("<a href=\"x\">&'"),
        "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
    );
}

#[test]
fn hints_name_the_fix() {
    assert!(no_refresh_token_hint(Provider::Google).contains(GOOGLE_PERMISSIONS_URL));
    assert!(no_refresh_token_hint(Provider::Microsoft).contains("offline_access"));
    let err = AuthorizeError::RedirectUriMismatch {
        redirect_uri: "http://127.0.0.1:5/cb".into(),
        description: "Bad Request".into(),
    };
    assert!(err.to_string().contains("Desktop app"));
    assert!(AuthorizeError::Timeout { secs: 300 }
        .to_string()
        .contains("300 s"));
}
