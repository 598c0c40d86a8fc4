//! The fake issuer over real HTTP: the token endpoint (client authentication, forced modes,
//! delays, routing and protocol errors) and the service-account `jwt-bearer` grant. The
//! authorization endpoint and code exchange are in `consent_tests`.

use base64::Engine as _;
use hyper::header;
use hyper::StatusCode;
use oauth2::url::form_urlencoded;

use super::grants::{now_unix, UNAUTHORIZED_CLIENT_DESCRIPTION};
use super::*;

pub(super) struct Fixture {
    pub(super) issuer: TokenIssuer,
    pub(super) tokens: AccessTokens,
    pub(super) client: reqwest::Client,
    _shutdown: tokio_util::sync::DropGuard,
}

pub(super) fn account() -> IssuerAccount {
    IssuerAccount {
        client_id: "123-abc.apps.googleusercontent.com".into(),
        client_secret: "GOCSPX-s3cr&t=+/:x".into(),
        refresh_token: "1//0refresh".into(),
        email: "user@example.com".into(),
    }
}

pub(super) async fn fixture() -> Fixture {
    let shutdown = CancellationToken::new();
    let tokens = AccessTokens::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = TokenIssuer::start(listener, vec![account()], tokens.clone(), shutdown.clone())
        .await
        .unwrap();
    Fixture {
        issuer,
        tokens,
        client: reqwest::Client::new(),
        _shutdown: shutdown.drop_guard(),
    }
}

pub(super) fn basic_header(id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", enc(id), enc(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

pub(super) async fn post_form(
    f: &Fixture,
    auth: Option<String>,
    form: &[(&str, &str)],
) -> (StatusCode, Option<String>, serde_json::Value) {
    let mut req = f.client.post(f.issuer.token_url()).form(form);
    if let Some(auth) = auth {
        req = req.header(header::AUTHORIZATION, auth);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, ctype, json)
}

#[tokio::test]
async fn basic_auth_refresh_issues_registered_token() {
    let f = fixture().await;
    let a = account();
    let (status, ctype, body) = post_form(
        &f,
        Some(basic_header(&a.client_id, &a.client_secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &a.refresh_token),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.unwrap().starts_with("application/json"));
    let token = body["access_token"].as_str().unwrap();
    assert!(token.starts_with("ya29."));
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], GMAIL_SCOPE);
    assert!(f.tokens.is_valid("user@example.com", token));
    assert!(!f.tokens.is_valid("other@example.com", token));
    assert_eq!(f.issuer.refresh_count(), 1);
}

#[tokio::test]
async fn form_auth_refresh_succeeds_and_expires_in_is_configurable() {
    let f = fixture().await;
    f.issuer.set_expires_in(60);
    let a = account();
    let (status, _, body) = post_form(
        &f,
        None,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &a.refresh_token),
            ("client_id", &a.client_id),
            ("client_secret", &a.client_secret),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["expires_in"], 60);
    assert!(f
        .tokens
        .is_valid(&a.email, body["access_token"].as_str().unwrap()));
}

#[tokio::test]
async fn wrong_refresh_token_is_invalid_grant() {
    let f = fixture().await;
    let a = account();
    let (status, _, body) = post_form(
        &f,
        Some(basic_header(&a.client_id, &a.client_secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "1//0nope"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(
        body["error_description"],
        "Token has been expired or revoked."
    );
    assert!(f.tokens.is_empty());
}

#[tokio::test]
async fn time_limited_grants_say_so_and_then_die() {
    let f = fixture().await;
    let a = account();
    async fn refresh(f: &Fixture) -> (StatusCode, Option<String>, serde_json::Value) {
        let a = account();
        post_form(
            f,
            Some(basic_header(&a.client_id, &a.client_secret)),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &a.refresh_token),
            ],
        )
        .await
    }
    let (status, _, body) = refresh(&f).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("refresh_token_expires_in").is_none(), "{body}");

    f.issuer
        .set_refresh_token_lifetime(Some(Duration::from_secs(7 * 24 * 3600)));
    let (_, _, body) = refresh(&f).await;
    let left = body["refresh_token_expires_in"].as_u64().unwrap();
    assert!(
        (7 * 24 * 3600 - 5..=7 * 24 * 3600).contains(&left),
        "{body}"
    );

    // A grant past its end is refused like a revoked one.
    f.issuer.set_refresh_token_lifetime(None);
    f.issuer.revoke_refresh_token(&a.refresh_token);
    f.issuer.add_account(IssuerAccount {
        refresh_token: "1//0short".into(),
        ..account()
    });
    f.issuer
        .set_refresh_token_lifetime(Some(Duration::from_millis(50)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, body) = post_form(
        &f,
        Some(basic_header(&a.client_id, &a.client_secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "1//0short"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn echo_mode_repeats_the_secrets_it_was_sent() {
    let f = fixture().await;
    f.issuer.set_mode(IssuerMode::InvalidGrantEcho);
    let (status, _, body) = post_form(
        &f,
        None,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "1//0refresh"),
            ("client_id", "123-abc.apps.googleusercontent.com"),
            ("client_secret", "GOCSPX-s3cr&t=+/:x"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("1//0refresh") && description.contains("GOCSPX-s3cr&t=+/:x"));
}

#[tokio::test]
async fn unknown_client_or_wrong_secret_is_invalid_client() {
    let f = fixture().await;
    let a = account();
    for (id, secret) in [
        ("nope", a.client_secret.as_str()),
        (a.client_id.as_str(), "wrong"),
    ] {
        let (status, _, body) = post_form(
            &f,
            Some(basic_header(id, secret)),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &a.refresh_token),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "invalid_client");
        assert_eq!(body["error_description"], "The OAuth client was not found.");
    }
    assert_eq!(f.issuer.refresh_count(), 2);
}

#[tokio::test]
async fn forced_modes_override_valid_credentials() {
    let f = fixture().await;
    let a = account();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", a.refresh_token.as_str()),
    ];
    let auth = basic_header(&a.client_id, &a.client_secret);

    f.issuer.set_mode(IssuerMode::ServerError);
    let (status, ctype, _) = post_form(&f, Some(auth.clone()), &form).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ctype.unwrap().starts_with("text/html"));

    f.issuer.set_mode(IssuerMode::InvalidGrant);
    let (status, _, body) = post_form(&f, Some(auth.clone()), &form).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    f.issuer.set_mode(IssuerMode::Hang);
    let hung = tokio::time::timeout(
        Duration::from_millis(300),
        post_form(&f, Some(auth.clone()), &form),
    )
    .await;
    assert!(hung.is_err(), "Hang mode must not answer");

    f.issuer.set_mode(IssuerMode::Normal);
    let (status, _, _) = post_form(&f, Some(auth), &form).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.issuer.refresh_count(), 4);
    assert_eq!(f.tokens.len(), 1);
}

#[tokio::test]
async fn delay_is_applied_per_request() {
    let f = fixture().await;
    f.issuer.set_delay(Duration::from_millis(200));
    let a = account();
    let started = std::time::Instant::now();
    let (status, _, _) = post_form(
        &f,
        Some(basic_header(&a.client_id, &a.client_secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &a.refresh_token),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn routing_and_protocol_errors() {
    let f = fixture().await;
    let base = format!("http://{}", f.issuer.addr());
    let resp = f.client.post(format!("{base}/other")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = f.client.get(f.issuer.token_url()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let resp = f
        .client
        .post(f.issuer.token_url())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(vec![b'a'; MAX_BODY_BYTES + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let a = account();
    let (status, _, body) = post_form(
        &f,
        Some(basic_header(&a.client_id, &a.client_secret)),
        &[("grant_type", "password")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unsupported_grant_type");

    // Added accounts are honoured immediately.
    f.issuer.add_account(IssuerAccount {
        refresh_token: "1//0second".into(),
        email: "second@example.com".into(),
        ..account()
    });
    let (status, _, body) = post_form(
        &f,
        Some(basic_header(&a.client_id, &a.client_secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "1//0second"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(f
        .tokens
        .is_valid("second@example.com", body["access_token"].as_str().unwrap()));
    f.tokens.revoke_all();
    assert!(f.tokens.is_empty());
}

// ---- Service accounts (JWT bearer) ----

const SA_EMAIL: &str = "relay@test-project.iam.gserviceaccount.com";
const SA_KEY: &str = include_str!("../../../tests/fixtures/service-account-test-key.pem");
const SA_PUB: &str = include_str!("../../../tests/fixtures/service-account-test-pub.pem");
const SA_CERT: &str = include_str!("../../../tests/fixtures/service-account-test-cert.pem");
const OTHER_KEY: &str = include_str!("../../../tests/fixtures/other-test-key.pem");

fn sign_jwt(private_key_pem: &str, claims: &serde_json::Value) -> String {
    use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
    let der = jwt::pem_block(private_key_pem, "PRIVATE KEY")
        .unwrap()
        .unwrap();
    let key = RsaKeyPair::from_pkcs8(&der).unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "test-kid"});
    let input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{input}.{}", b64.encode(sig))
}

fn claims(f: &Fixture, sub: &str) -> serde_json::Value {
    let now = now_unix();
    serde_json::json!({
        "iss": SA_EMAIL,
        "sub": sub,
        "scope": GMAIL_SCOPE,
        "aud": f.issuer.token_url(),
        "iat": now,
        "exp": now + 3600,
    })
}

async fn jwt_grant(f: &Fixture, assertion: &str) -> (StatusCode, serde_json::Value) {
    let (status, _, body) = post_form(
        f,
        None,
        &[
            ("grant_type", JWT_BEARER_GRANT_TYPE),
            ("assertion", assertion),
        ],
    )
    .await;
    (status, body)
}

async fn sa_fixture(public_key_pem: &str) -> Fixture {
    let f = fixture().await;
    f.issuer.add_service_account(ServiceAccount {
        client_email: SA_EMAIL.into(),
        public_key_pem: public_key_pem.into(),
        allowed_subjects: vec!["Boss@Example.com".into()],
    });
    f
}

#[test]
fn fixture_json_matches_fixture_key() {
    let json: serde_json::Value =
        serde_json::from_str(include_str!("../../../tests/fixtures/service-account.json")).unwrap();
    assert_eq!(json["type"], "service_account");
    assert_eq!(json["client_email"], SA_EMAIL);
    assert_eq!(json["private_key"], SA_KEY);
    assert_eq!(json["token_uri"], "https://oauth2.googleapis.com/token");
}

#[tokio::test]
async fn jwt_bearer_valid_assertion_issues_token_for_subject() {
    for public_key in [SA_PUB, SA_CERT] {
        let f = sa_fixture(public_key).await;
        let assertion = sign_jwt(SA_KEY, &claims(&f, "boss@example.com"));
        let (status, body) = jwt_grant(&f, &assertion).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3599);
        assert!(body.get("refresh_token").is_none());
        let token = body["access_token"].as_str().unwrap();
        assert!(f.tokens.is_valid("boss@example.com", token));
        assert_eq!(f.issuer.refresh_count(), 1);
    }
}

#[tokio::test]
async fn jwt_bearer_rejections() {
    let f = sa_fixture(SA_PUB).await;
    let expect = |(status, body): (StatusCode, serde_json::Value),
                  want_status: StatusCode,
                  error: &str,
                  description: &str| {
        assert_eq!(status, want_status, "{body}");
        assert_eq!(body["error"], error, "{body}");
        let got = body["error_description"].as_str().unwrap();
        assert!(got.starts_with(description), "{got}");
    };

    // Signed with another key.
    let wrong_key = sign_jwt(OTHER_KEY, &claims(&f, "boss@example.com"));
    expect(
        jwt_grant(&f, &wrong_key).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "Invalid JWT Signature.",
    );
    // Tampered claims.
    let good = sign_jwt(SA_KEY, &claims(&f, "boss@example.com"));
    let parts: Vec<&str> = good.split('.').collect();
    let other_claims = sign_jwt(SA_KEY, &claims(&f, "other@example.com"));
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        other_claims.split('.').nth(1).unwrap(),
        parts[2]
    );
    expect(
        jwt_grant(&f, &tampered).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "Invalid JWT Signature.",
    );
    // Malformed.
    expect(
        jwt_grant(&f, "not-a-jwt").await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "Invalid JWT: ",
    );
    // Expired.
    let mut c = claims(&f, "boss@example.com");
    c["iat"] = (now_unix() - 7200).into();
    c["exp"] = (now_unix() - 3600).into();
    expect(
        jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "Invalid JWT: Token must be a short-lived token",
    );
    // Too long-lived.
    let mut c = claims(&f, "boss@example.com");
    c["exp"] = (now_unix() + 3601).into();
    expect(
        jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "Invalid JWT: Token must be a short-lived token",
    );
    // Issued in the future.
    let mut c = claims(&f, "boss@example.com");
    c["iat"] = (now_unix() + 600).into();
    c["exp"] = (now_unix() + 1200).into();
    expect(
        jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "Invalid JWT: Token must be a short-lived token",
    );
    // Wrong audience (the real Google URL is not this fake's).
    let mut c = claims(&f, "boss@example.com");
    c["aud"] = "https://oauth2.googleapis.com/token".into();
    expect(
        jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "Invalid JWT: Failed audience check.",
    );
    // Subject without delegation.
    expect(
        jwt_grant(&f, &sign_jwt(SA_KEY, &claims(&f, "intruder@example.com"))).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized_client",
        UNAUTHORIZED_CLIENT_DESCRIPTION,
    );
    // Scope without Gmail.
    let mut c = claims(&f, "boss@example.com");
    c["scope"] = "https://www.googleapis.com/auth/drive".into();
    expect(
        jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized_client",
        "Client is unauthorized",
    );
    // No scope at all.
    let mut c = claims(&f, "boss@example.com");
    c.as_object_mut().unwrap().remove("scope");
    expect(
        jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
        "Invalid OAuth scope",
    );
    // Unknown issuer.
    let mut c = claims(&f, "boss@example.com");
    c["iss"] = "other@test-project.iam.gserviceaccount.com".into();
    expect(
        jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "Invalid grant: account not found",
    );
    // Missing assertion.
    let (status, _, body) = post_form(&f, None, &[("grant_type", JWT_BEARER_GRANT_TYPE)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_request");
    assert!(f.tokens.is_empty());

    // Without `sub`, the token is for the service account itself (as with Google).
    let mut c = claims(&f, "");
    c.as_object_mut().unwrap().remove("sub");
    let (status, body) = jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(f
        .tokens
        .is_valid(SA_EMAIL, body["access_token"].as_str().unwrap()));
    assert_eq!(f.issuer.refresh_count(), 13);
}

#[tokio::test]
async fn jwt_bearer_with_unusable_key_fails_signature() {
    let f = sa_fixture("garbage").await;
    let (status, body) = jwt_grant(&f, &sign_jwt(SA_KEY, &claims(&f, "boss@example.com"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error_description"], "Invalid JWT Signature.");
}
