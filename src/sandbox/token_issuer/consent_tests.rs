//! The fake authorization endpoint (`GET /auth`) and the `authorization_code` grant: PKCE,
//! redirect URI rules, consent modes, code reuse and expiry, refresh-token rotation.

use hyper::header;
use hyper::StatusCode;
use oauth2::url::Url;

use super::grants::s256_challenge;
use super::tests::{account, basic_header, fixture, post_form, Fixture};
use super::*;

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const REDIRECT: &str = "http://127.0.0.1:4567/callback";

fn no_redirect_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn auth_params<'a>(redirect_uri: &'a str, state: &'a str) -> Vec<(&'a str, String)> {
    vec![
        ("response_type", "code".into()),
        ("client_id", account().client_id),
        ("redirect_uri", redirect_uri.into()),
        ("scope", GMAIL_SCOPE.into()),
        ("state", state.into()),
        ("code_challenge", s256_challenge(VERIFIER)),
        ("code_challenge_method", "S256".into()),
        ("access_type", "offline".into()),
        ("prompt", "consent".into()),
    ]
}

/// Sends `GET /auth`; returns the status, the parsed `Location` query (if a redirect) and the
/// body.
async fn authorize(
    f: &Fixture,
    params: &[(&str, String)],
) -> (StatusCode, Option<(Url, HashMap<String, String>)>, String) {
    let resp = no_redirect_client()
        .get(f.issuer.auth_url())
        .query(params)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let location = resp.headers().get(header::LOCATION).map(|v| {
        let url = Url::parse(v.to_str().unwrap()).unwrap();
        let query = url.query_pairs().into_owned().collect();
        (url, query)
    });
    (status, location, resp.text().await.unwrap())
}

async fn get_code(f: &Fixture, redirect_uri: &str) -> String {
    let (status, location, _) = authorize(f, &auth_params(redirect_uri, "st")).await;
    assert_eq!(status, StatusCode::FOUND);
    location.unwrap().1["code"].clone()
}

async fn exchange(
    f: &Fixture,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> (StatusCode, serde_json::Value) {
    let a = account();
    let (status, _, body) = post_form(
        f,
        Some(basic_header(&a.client_id, &a.client_secret)),
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ],
    )
    .await;
    (status, body)
}

async fn refresh(f: &Fixture, refresh_token: &str) -> (StatusCode, serde_json::Value) {
    let a = account();
    let (status, _, body) = post_form(
        f,
        Some(basic_header(&a.client_id, &a.client_secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await;
    (status, body)
}

#[tokio::test]
async fn auth_redirects_with_code_state_and_scope_then_code_exchanges() {
    let f = fixture().await;
    // An existing query in redirect_uri is kept; values needing encoding are encoded.
    let redirect = "http://localhost:4567/cb?keep=1";
    let (status, location, _) = authorize(&f, &auth_params(redirect, "a b&c=d")).await;
    assert_eq!(status, StatusCode::FOUND);
    let (url, query) = location.unwrap();
    assert_eq!(url.host_str(), Some("localhost"));
    assert_eq!(url.port(), Some(4567));
    assert_eq!(url.path(), "/cb");
    assert_eq!(query["keep"], "1");
    assert_eq!(query["state"], "a b&c=d");
    assert_eq!(query["scope"], GMAIL_SCOPE);
    let code = &query["code"];
    assert!(code.starts_with("4/"));

    let recorded = f.issuer.last_authorization_request().unwrap();
    assert_eq!(recorded["access_type"], "offline");
    assert_eq!(recorded["prompt"], "consent");
    assert_eq!(recorded["redirect_uri"], redirect);

    let (status, body) = exchange(&f, code, redirect, VERIFIER).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], GMAIL_SCOPE);
    let access = body["access_token"].as_str().unwrap();
    assert!(f.tokens.is_valid("user@example.com", access));
    let new_refresh = body["refresh_token"].as_str().unwrap();
    assert!(new_refresh.starts_with("1//"));
    assert_eq!(
        f.issuer.current_refresh_tokens("USER@example.com"),
        vec!["1//0refresh".to_owned(), new_refresh.to_owned()]
    );

    // The new refresh token works, and so does the configured one.
    assert_eq!(refresh(&f, new_refresh).await.0, StatusCode::OK);
    assert_eq!(refresh(&f, "1//0refresh").await.0, StatusCode::OK);
    assert_eq!(f.issuer.refresh_count(), 3);
}

#[tokio::test]
async fn form_client_auth_and_consent_email() {
    let f = fixture().await;
    f.issuer.add_account(IssuerAccount {
        refresh_token: "1//0second".into(),
        email: "second@example.com".into(),
        ..account()
    });
    f.issuer.set_consent_email("second@example.com");
    let code = get_code(&f, REDIRECT).await;
    let a = account();
    let (status, _, body) = post_form(
        &f,
        None,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", &a.client_id),
            ("client_secret", &a.client_secret),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(f
        .tokens
        .is_valid("second@example.com", body["access_token"].as_str().unwrap()));
    assert_eq!(
        f.issuer.current_refresh_tokens("second@example.com").len(),
        2
    );
    assert_eq!(f.issuer.current_refresh_tokens("user@example.com").len(), 1);
}

#[tokio::test]
async fn deny_and_wrong_state() {
    let f = fixture().await;
    f.issuer.set_consent(ConsentMode::Deny);
    let (status, location, _) = authorize(&f, &auth_params(REDIRECT, "s1")).await;
    assert_eq!(status, StatusCode::FOUND);
    let (url, query) = location.unwrap();
    assert_eq!(url.path(), "/callback");
    assert_eq!(query["error"], "access_denied");
    assert_eq!(query["state"], "s1");
    assert!(!query.contains_key("code"));

    f.issuer.set_consent(ConsentMode::WrongState);
    let (status, location, _) = authorize(&f, &auth_params(REDIRECT, "s2")).await;
    assert_eq!(status, StatusCode::FOUND);
    let query = location.unwrap().1;
    assert!(query.contains_key("code"));
    assert_ne!(query["state"], "s2");
}

#[tokio::test]
async fn auth_error_pages() {
    let f = fixture().await;
    f.issuer
        .allow_redirect_uri(&account().client_id, "https://app.example/oauth");

    let mut params = auth_params(REDIRECT, "s");
    params[1].1 = "unknown.apps.googleusercontent.com".into();
    let (status, location, body) = authorize(&f, &params).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(location.is_none());
    assert!(body.contains("Error 401: invalid_client"), "{body}");

    for bad in [
        "https://evil.example/cb",
        "http://192.168.1.2:80/cb",
        "https://app.example/other",
    ] {
        let (status, location, body) = authorize(&f, &auth_params(bad, "s")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(location.is_none());
        assert!(body.contains("Error 400: redirect_uri_mismatch"), "{body}");
        assert_eq!(
            f.issuer.last_authorization_request().unwrap()["redirect_uri"],
            bad
        );
    }
    // A registered prefix is accepted.
    let (status, _, _) = authorize(&f, &auth_params("https://app.example/oauth/cb", "s")).await;
    assert_eq!(status, StatusCode::FOUND);

    // PKCE is mandatory, with S256.
    let no_challenge: Vec<_> = auth_params(REDIRECT, "s")
        .into_iter()
        .filter(|(k, _)| *k != "code_challenge")
        .collect();
    let (status, location, body) = authorize(&f, &no_challenge).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(location.is_none());
    assert!(body.contains("Error 400: invalid_request"), "{body}");
    let mut plain_method = auth_params(REDIRECT, "s");
    plain_method[6].1 = "plain".into();
    let (status, _, body) = authorize(&f, &plain_method).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("invalid_request"), "{body}");

    // User input is escaped in the page.
    let (_, _, body) = authorize(&f, &auth_params("<script>", "s")).await;
    assert!(body.contains("&lt;script&gt;") && !body.contains("<script>"));

    let resp = f.client.post(f.issuer.auth_url()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(f.issuer.refresh_count(), 0);
}

#[tokio::test]
async fn pkce_code_reuse_redirect_mismatch_and_expiry() {
    let f = fixture().await;

    // Wrong verifier; the attempt consumes the code.
    let code = get_code(&f, REDIRECT).await;
    let wrong = "x".repeat(43);
    let (status, body) = exchange(&f, &code, REDIRECT, &wrong).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_description"], "Invalid code verifier.");
    let (status, body) = exchange(&f, &code, REDIRECT, VERIFIER).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    // Single use.
    let code = get_code(&f, REDIRECT).await;
    assert_eq!(
        exchange(&f, &code, REDIRECT, VERIFIER).await.0,
        StatusCode::OK
    );
    let (status, body) = exchange(&f, &code, REDIRECT, VERIFIER).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    // redirect_uri must be the one used at /auth.
    let code = get_code(&f, REDIRECT).await;
    let (status, body) = exchange(&f, &code, "http://127.0.0.1:4567/other", VERIFIER).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_description"], "redirect_uri mismatch");

    // Expired code.
    f.issuer.set_authorization_code_lifetime(Duration::ZERO);
    let code = get_code(&f, REDIRECT).await;
    let (status, body) = exchange(&f, &code, REDIRECT, VERIFIER).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    // Wrong client secret.
    f.issuer
        .set_authorization_code_lifetime(DEFAULT_CODE_LIFETIME);
    let code = get_code(&f, REDIRECT).await;
    let (status, _, body) = post_form(
        &f,
        Some(basic_header(&account().client_id, "wrong")),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    // That did not consume the code.
    assert_eq!(
        exchange(&f, &code, REDIRECT, VERIFIER).await.0,
        StatusCode::OK
    );
    assert_eq!(f.issuer.current_refresh_tokens("user@example.com").len(), 3);
}

#[tokio::test]
async fn no_refresh_token_mode_and_online_access() {
    let f = fixture().await;
    f.issuer.set_consent(ConsentMode::NoRefreshToken);
    let code = get_code(&f, REDIRECT).await;
    let (status, body) = exchange(&f, &code, REDIRECT, VERIFIER).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["access_token"].is_string());
    assert!(body.get("refresh_token").is_none(), "{body}");

    // Without access_type=offline Google never issues a refresh token either.
    f.issuer.set_consent(ConsentMode::Approve);
    let online: Vec<_> = auth_params(REDIRECT, "s")
        .into_iter()
        .filter(|(k, _)| *k != "access_type")
        .collect();
    let (_, location, _) = authorize(&f, &online).await;
    let code = location.unwrap().1["code"].clone();
    let (status, body) = exchange(&f, &code, REDIRECT, VERIFIER).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(f.issuer.current_refresh_tokens("user@example.com").len(), 1);
}

#[tokio::test]
async fn rotation_and_revocation() {
    let f = fixture().await;
    // Without rotation no refresh_token is returned (Google).
    let (status, body) = refresh(&f, "1//0refresh").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("refresh_token").is_none());

    f.issuer.set_rotate_refresh_tokens(true);
    let (status, body) = refresh(&f, "1//0refresh").await;
    assert_eq!(status, StatusCode::OK);
    let rotated = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, "1//0refresh");
    assert_eq!(
        f.issuer.current_refresh_tokens("user@example.com"),
        vec![rotated.clone()]
    );
    let (status, body) = refresh(&f, "1//0refresh").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    let (status, body) = refresh(&f, &rotated).await;
    assert_eq!(status, StatusCode::OK);
    let rotated2 = body["refresh_token"].as_str().unwrap().to_owned();

    f.issuer.set_rotate_refresh_tokens(false);
    assert!(f.issuer.revoke_refresh_token(&rotated2));
    assert!(!f.issuer.revoke_refresh_token(&rotated2));
    let (status, body) = refresh(&f, &rotated2).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error_description"],
        "Token has been expired or revoked."
    );

    // Revoke all: issued tokens too.
    let code = get_code(&f, REDIRECT).await;
    let (_, body) = exchange(&f, &code, REDIRECT, VERIFIER).await;
    let issued = body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(refresh(&f, &issued).await.0, StatusCode::OK);
    f.issuer.revoke_all_refresh_tokens();
    assert_eq!(refresh(&f, &issued).await.0, StatusCode::BAD_REQUEST);
    assert!(f
        .issuer
        .current_refresh_tokens("user@example.com")
        .is_empty());
}
