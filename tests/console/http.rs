//! The console over HTTP on 127.0.0.1, with a plain reqwest client that keeps cookies
//! itself and follows no redirect, so every status, Location and Set-Cookie is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tower::ServiceExt as _;

use crate::common::*;
use crate::harness::{hidden, Console};

const CONSOLE: &str = "users = [\"admin\"]";

fn store_options() -> Options {
    Options {
        support_from_store: true,
        ..Options::default()
    }
}

#[tokio::test]
async fn no_console_unless_users_are_set() {
    let console = Console::start(Options::default(), "").await;
    let mut browser = console.browser();
    assert_eq!(browser.get("/").await.status, 404);
    assert_eq!(browser.get("/login").await.status, 404);
    let probe = browser.get("/healthz").await;
    assert_eq!((probe.status, probe.body.as_str()), (200, "ok\n"));
}

#[tokio::test]
async fn probes_stay_open_and_pages_need_a_session() {
    let console = Console::start(Options::default(), CONSOLE).await;
    let mut browser = console.browser();
    assert_eq!(browser.get("/healthz").await.status, 200);
    assert_eq!(browser.get("/readyz").await.status, 200);
    assert!(browser
        .get("/metrics")
        .await
        .body
        .contains("smtp_oauth_relay_"));
    for path in ["/", "/assets/support", "/messages"] {
        let page = browser.get(path).await;
        assert_eq!(page.status, 303, "{path}");
        assert_eq!(page.location.as_deref(), Some("/login"), "{path}");
    }
    let post = browser
        .post("/assets/support/generate", &[("csrf", "x")])
        .await;
    assert_eq!(
        (post.status, post.location.as_deref()),
        (303, Some("/login"))
    );
}

#[tokio::test]
async fn login_sets_a_strict_httponly_cookie_and_logout_ends_it() {
    let console = Console::start(Options::default(), CONSOLE).await;
    let mut browser = console.browser();
    let response = browser.login(ADMIN.0, ADMIN.1).await;
    assert_eq!(
        (response.status, response.location.as_deref()),
        (303, Some("/"))
    );
    let session = response
        .set_cookies
        .iter()
        .find(|c| c.starts_with("relay_console="))
        .expect("session cookie");
    assert!(session.contains("HttpOnly"), "{session}");
    assert!(session.contains("SameSite=Strict"), "{session}");
    assert!(!session.contains("Secure"), "plain HTTP: {session}");
    let value = browser.cookies["relay_console"].clone();
    assert_eq!(value.len(), 43, "32 random bytes, base64url");

    let assets = browser.get("/").await;
    assert_eq!(assets.status, 200);
    assert!(
        assets.body.contains("Signed in as admin"),
        "{}",
        assets.body
    );

    // A second login gets another session.
    let other = console.logged_in(ADMIN).await;
    assert_ne!(other.cookies["relay_console"], value);

    let csrf = hidden(&assets.body, "csrf");
    let out = browser.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!((out.status, out.location.as_deref()), (303, Some("/login")));
    // The old cookie no longer opens anything.
    browser.cookies.insert("relay_console".into(), value);
    assert_eq!(browser.get("/").await.status, 303);
}

#[tokio::test]
async fn cookies_are_secure_over_tls() {
    // tls = true reuses [server]'s certificate.
    let console = Console::start(Options::default(), &format!("{CONSOLE}\ntls = true")).await;
    assert!(console.base.starts_with("https://"));
    let mut browser = console.browser();
    let response = browser.login(ADMIN.0, ADMIN.1).await;
    assert_eq!(response.status, 303, "{}", response.body);
    assert!(
        response.set_cookies.iter().all(|c| c.contains("; Secure")),
        "{:?}",
        response.set_cookies
    );
    assert_eq!(
        browser.get("/healthz").await.status,
        200,
        "probes over HTTPS too"
    );
}

#[tokio::test]
async fn wrong_passwords_lock_out_like_smtp_auth() {
    let options = Options {
        limits: "auth_max_failures = 3\nauth_lockout_secs = 600\nauth_failure_delay_ms = 0".into(),
        ..Options::default()
    };
    let console = Console::start(options, CONSOLE).await;
    let mut browser = console.browser();
    for _ in 0..3 {
        let page = browser.login(ADMIN.0, "wrong").await;
        assert_eq!(page.status, 401);
        assert!(
            page.body.contains("Wrong user name or password"),
            "{}",
            page.body
        );
    }
    let locked = browser.login(ADMIN.0, ADMIN.1).await;
    assert_eq!(locked.status, 429, "{}", locked.body);
    assert!(locked.body.contains("locked out"));
    // The same throttle guards SMTP AUTH of this relay.
    let mut smtp = Client::connect(console.smtp_addr).await;
    smtp.ehlo().await;
    smtp.auth_plain(ADMIN.0, ADMIN.1).await.expect_code(454);
}

#[tokio::test]
async fn only_console_users_get_in() {
    let console = Console::start(Options::default(), CONSOLE).await;
    let mut browser = console.browser();
    let page = browser.login(SCANNER.0, SCANNER.1).await;
    assert_eq!(page.status, 403);
    assert!(!browser.cookies.contains_key("relay_console"));
}

#[tokio::test]
async fn csrf_missing_or_wrong_is_refused() {
    let console = Console::start(store_options(), CONSOLE).await;
    let mut browser = console.logged_in(ADMIN).await;
    let csrf = browser.csrf().await;
    for form in [vec![], vec![("csrf", "wrong")], vec![("csrf", &csrf[1..])]] {
        for path in ["/assets/support/generate", "/assets/sales/test", "/logout"] {
            let mut fields = form.clone();
            fields.push(("to", "x@example.net"));
            let page = browser.post(path, &fields).await;
            assert_eq!(page.status, 403, "{path} {form:?}");
            assert!(page.body.contains("CSRF"), "{}", page.body);
        }
    }
    assert!(console.env.gmail.messages().is_empty());
    // Still logged in: the refusals changed nothing.
    assert_eq!(browser.get("/").await.status, 200);

    // The login form needs its token too.
    let mut stranger = console.browser();
    let page = stranger
        .post("/login", &[("user", ADMIN.0), ("password", ADMIN.1)])
        .await;
    assert_eq!(page.status, 403);
}

#[tokio::test]
async fn sessions_end_after_the_idle_timeout() {
    let console = Console::start(
        Options::default(),
        &format!("{CONSOLE}\nsession_idle_secs = 1"),
    )
    .await;
    let mut browser = console.logged_in(ADMIN).await;
    assert_eq!(browser.get("/").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let page = browser.get("/").await;
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some("/login"))
    );
}

/// A request to the console router as if from `peer` (there is only 127.0.0.1 to bind).
async fn from_peer(console: &Console, peer: &str, path: &str) -> (u16, String) {
    let app = smtp_oauth_relay::console::App {
        relays: smtp_oauth_relay::server::RelayHandle::new(console.relay.clone()),
        console: Default::default(),
        tls: false,
        local: console.admin_addr,
    };
    let mut request = axum::http::Request::builder()
        .method(if path == "/login" { "POST" } else { "GET" })
        .uri(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(
            "user=admin&password=admin-password-3&csrf=t",
        ))
        .unwrap();
    request
        .extensions_mut()
        .insert(smtp_oauth_relay::console::Peer(peer.parse().unwrap()));
    let response = smtp_oauth_relay::console::router(app)
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn plain_http_login_from_another_host_is_refused() {
    let console = Console::start(Options::default(), CONSOLE).await;
    let (status, body) = from_peer(&console, "192.0.2.10:40000", "/login").await;
    assert_eq!(status, 403);
    assert!(body.contains("Log in over HTTPS"), "{body}");
    // From loopback the same request gets as far as the CSRF check.
    let (status, body) = from_peer(&console, "127.0.0.1:40000", "/login").await;
    assert_eq!(status, 403);
    assert!(body.contains("CSRF"), "{body}");

    let allowed = Console::start(
        Options::default(),
        &format!("{CONSOLE}\nallow_plaintext = true"),
    )
    .await;
    let (_, body) = from_peer(&allowed, "192.0.2.10:40000", "/login").await;
    assert!(body.contains("CSRF"), "allowed now: {body}");
}

#[tokio::test]
async fn asset_page_shows_the_settings_and_masks_secrets() {
    let console = Console::start(store_options(), CONSOLE).await;
    let mut browser = console.logged_in(ADMIN).await;
    let page = browser.get("/assets/support").await;
    assert_eq!(page.status, 200);
    let callback = format!("http://{}/oauth/callback", console.admin_addr);
    for expected in [
        SUPPORT_EMAIL,
        "support-client",
        "•••••••• (set; see the config)",
        callback.as_str(),
        &console.env.issuer.auth_url(),
        &console.env.issuer.token_url(),
        "https://mail.google.com/",
        "STARTTLS",
        "needs attention",
        "Generate Token",
        "Send test message",
    ] {
        assert!(
            page.body.contains(expected),
            "missing {expected:?} in {}",
            page.body
        );
    }
    assert!(!page.body.contains(SUPPORT_SECRET));
    assert_eq!(browser.get("/assets/nope").await.status, 404);
}

#[tokio::test]
async fn hostile_names_and_senders_are_escaped() {
    let hostile = "<script>alert(1)</script>";
    let options = Options {
        extra_assets: format!(
            "[[asset]]\nname = \"{hostile}\"\nemail = \"{SALES_EMAIL}\"\nclient_id = \"sales-client\"\n\
             client_secret = \"{SALES_SECRET}\"\nrefresh_token = \"{SALES_REFRESH}\"\n\
             senders = [\"@evil.example\"]\nupstream = \"@UPSTREAM@\"\nupstream_tls = \"@UPSTREAM_TLS@\"\n\
             upstream_ca = \"@CA@\"\ntoken_url = \"@TOKEN_URL@\"\n"
        ),
        ..Options::default()
    };
    let console = Console::start(options, CONSOLE).await;
    // A message whose sender is markup goes through the console relay.
    // The fake Gmail takes only dot-atom senders, so the markup character is "&": shown
    // raw, "&lt;" would turn into "<".
    let sender = "x'&lt@evil.example";
    let mut smtp = Client::connect(console.smtp_addr).await;
    smtp.ehlo().await;
    smtp.auth_plain(ADMIN.0, ADMIN.1).await.expect_code(235);
    smtp.send_mail(sender, &["x@example.net"], &message("hostile"))
        .await
        .expect_code(250);
    smtp.quit().await;

    let mut browser = console.logged_in(ADMIN).await;
    for path in [
        "/",
        "/messages",
        "/assets/%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    ] {
        let page = browser.get(path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(!page.body.contains("<script>"), "{path}: {}", page.body);
        assert!(!page.body.contains("<img"), "{path}: {}", page.body);
    }
    assert!(browser
        .get("/")
        .await
        .body
        .contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let messages = browser.get("/messages").await.body;
    assert!(messages.contains("x'&amp;lt@evil.example"), "{messages}");
    assert!(!messages.contains("x'&lt@"), "{messages}");
}

#[tokio::test]
async fn consent_round_trip_stores_the_token_and_the_asset_turns_ok() {
    let console = Console::start(store_options(), CONSOLE).await;
    let mut browser = console.logged_in(ADMIN).await;
    let assets = browser.get("/").await;
    assert!(assets.body.contains("needs attention"), "{}", assets.body);
    assert!(
        assets.body.contains("Generate Token"),
        "the fix names the button"
    );

    let csrf = browser.csrf().await;
    let start = browser
        .post("/assets/support/generate", &[("csrf", &csrf)])
        .await;
    assert_eq!(start.status, 303, "{}", start.body);
    let consent_url = start.location.unwrap();
    assert!(
        consent_url.starts_with(&console.env.issuer.auth_url()),
        "{consent_url}"
    );
    let request = console.env.issuer.last_authorization_request();
    assert!(
        request.is_none(),
        "nothing sent to the issuer before the browser goes there"
    );

    // The "provider": approves and redirects back to the console's callback.
    let provider = browser.get_without_cookies(&consent_url).await;
    assert_eq!(provider.status, 302, "{}", provider.body);
    let back = provider.location.unwrap();
    let expected = format!("http://{}/oauth/callback?", console.admin_addr);
    assert!(back.starts_with(&expected), "{back}");
    let sent = console.env.issuer.last_authorization_request().unwrap();
    assert_eq!(sent["code_challenge_method"], "S256");
    assert_eq!(
        sent["redirect_uri"],
        format!("http://{}/oauth/callback", console.admin_addr)
    );

    // The Strict cookie is not sent on the way back: the state alone authorizes it.
    let done = browser.get_without_cookies(&back).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body.contains("new refresh token stored"),
        "{}",
        done.body
    );
    assert!(
        done.body
            .contains("accepted XOAUTH2 for support@example.com"),
        "{}",
        done.body
    );
    let stored = console.env.store().get("support").unwrap().expect("stored");
    assert_eq!(stored.account.as_deref(), Some(SUPPORT_EMAIL));
    assert!(!done.body.contains(stored.refresh_token.expose()));

    // Single use.
    let again = browser.get_without_cookies(&back).await;
    assert_eq!(again.status, 400, "{}", again.body);

    let assets = browser.get("/").await;
    assert!(!assets.body.contains("needs attention"), "{}", assets.body);
    assert!(
        assets.body.contains("class=\"ok status\""),
        "{}",
        assets.body
    );
    // And mail flows.
    let mut smtp = Client::connect(console.smtp_addr).await;
    smtp.ehlo().await;
    smtp.auth_plain(SCANNER.0, SCANNER.1).await.expect_code(235);
    smtp.send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("after"))
        .await
        .expect_code(250);
    smtp.quit().await;
}

#[tokio::test]
async fn callbacks_with_a_forged_state_or_an_ended_session_are_refused() {
    let console = Console::start(store_options(), CONSOLE).await;
    let mut browser = console.logged_in(ADMIN).await;
    let forged = browser
        .get_without_cookies("/oauth/callback?code=4/0abc&state=forged")
        .await;
    assert_eq!(forged.status, 400);
    let missing = browser.get_without_cookies("/oauth/callback").await;
    assert_eq!(missing.status, 400);

    let csrf = browser.csrf().await;
    let start = browser
        .post("/assets/support/generate", &[("csrf", &csrf)])
        .await;
    let provider = browser.get_without_cookies(&start.location.unwrap()).await;
    let back = provider.location.unwrap();
    // Logging out ends what the session started.
    browser.post("/logout", &[("csrf", &csrf)]).await;
    let done = browser.get_without_cookies(&back).await;
    assert_eq!(done.status, 403, "{}", done.body);
    assert!(console.env.store().get("support").unwrap().is_none());
}

#[tokio::test]
async fn test_message_goes_out_through_the_asset() {
    let console = Console::start(Options::default(), CONSOLE).await;
    let mut browser = console.logged_in(ADMIN).await;
    let csrf = browser.csrf().await;
    let sent = browser
        .post(
            "/assets/sales/test",
            &[("csrf", &csrf), ("to", "friend@example.net")],
        )
        .await;
    assert_eq!(
        (sent.status, sent.location.as_deref()),
        (303, Some("/assets/sales"))
    );
    let page = browser.get("/assets/sales").await;
    assert!(
        page.body.contains("sent to friend@example.net"),
        "{}",
        page.body
    );
    let messages = console.env.gmail.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].rcpt_to, vec!["friend@example.net".to_string()]);
    let list = browser.get("/messages").await;
    assert!(list.body.contains("admin (console test)"), "{}", list.body);
    assert!(list.body.contains("delivered"));

    let bad = browser
        .post(
            "/assets/sales/test",
            &[("csrf", &csrf), ("to", "not an address")],
        )
        .await;
    assert_eq!(bad.status, 303);
    assert!(browser
        .get("/assets/sales")
        .await
        .body
        .contains("not an e-mail address"));
    assert_eq!(console.env.gmail.messages().len(), 1);
}

#[tokio::test]
async fn no_secret_appears_in_any_page() {
    let console = Console::start(store_options(), CONSOLE).await;
    let mut browser = console.logged_in(ADMIN).await;
    // Make tokens exist: a consent for support, a message through sales.
    let csrf = browser.csrf().await;
    let start = browser
        .post("/assets/support/generate", &[("csrf", &csrf)])
        .await;
    let provider = browser.get_without_cookies(&start.location.unwrap()).await;
    let done = browser
        .get_without_cookies(&provider.location.unwrap())
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    browser
        .post(
            "/assets/sales/test",
            &[("csrf", &csrf), ("to", "friend@example.net")],
        )
        .await;
    let stored = console.env.store().get("support").unwrap().unwrap();
    let session = browser.cookies["relay_console"].clone();
    let mut secrets = vec![
        SUPPORT_SECRET.to_string(),
        SALES_SECRET.to_string(),
        SALES_REFRESH.to_string(),
        stored.refresh_token.expose().to_string(),
        ADMIN.1.to_string(),
        session,
    ];
    secrets.extend(console.env.issuer.current_refresh_tokens(SALES_EMAIL));
    let mut pages = vec![done.body];
    for path in [
        "/",
        "/assets/support",
        "/assets/sales",
        "/messages",
        "/login",
        "/metrics",
        "/readyz",
    ] {
        pages.push(browser.get(path).await.body);
    }
    let mut anonymous = console.browser();
    pages.push(anonymous.get("/login").await.body);
    for page in &pages {
        for secret in &secrets {
            assert!(
                !page.contains(secret.as_str()),
                "a secret leaked into {page}"
            );
        }
    }
}
