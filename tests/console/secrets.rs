//! The console's new paths log no secret: logins (failed and successful), the consent
//! (state, code, PKCE, tokens), the test message, at trace level.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use crate::harness::Console;

// A current-thread runtime: every task of the relay, the console and the fakes runs on
// this thread, so the thread-local subscriber sees their events.
#[tokio::test]
async fn console_logs_no_secret() {
    let (captured, _guard) = capture_logs_at(tracing::Level::TRACE);

    let options = Options {
        support_from_store: true,
        ..Options::default()
    };
    let console = Console::start(options, "users = [\"admin\"]").await;
    let mut browser = console.browser();
    assert_eq!(
        browser
            .login(ADMIN.0, "wrong-console-password-Zr")
            .await
            .status,
        401
    );
    assert_eq!(browser.login(ADMIN.0, ADMIN.1).await.status, 303);
    let csrf = browser.csrf().await;
    let start = browser
        .post("/assets/support/generate", &[("csrf", &csrf)])
        .await;
    let consent_url = start.location.unwrap();
    let provider = browser.get_without_cookies(&consent_url).await;
    let back = provider.location.unwrap();
    let done = browser.get_without_cookies(&back).await;
    assert_eq!(done.status, 200, "{}", done.body);
    let sent = browser
        .post(
            "/assets/sales/test",
            &[("csrf", &csrf), ("to", "friend@example.net")],
        )
        .await;
    assert_eq!(sent.status, 303);

    let query: std::collections::HashMap<String, String> = reqwest::Url::parse(&back)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let stored = console.env.store().get("support").unwrap().unwrap();
    let secrets = [
        ADMIN.1.to_string(),
        "wrong-console-password-Zr".to_string(),
        SUPPORT_SECRET.to_string(),
        SALES_SECRET.to_string(),
        SALES_REFRESH.to_string(),
        stored.refresh_token.expose().to_string(),
        browser.cookies["relay_console"].clone(),
        csrf.clone(),
        query["code"].clone(),
        query["state"].clone(),
    ];
    let logs = captured.text();
    assert!(logs.contains("console login"), "{logs}");
    assert!(logs.contains("console: new refresh token stored"), "{logs}");
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "{secret:?} is in the logs:\n{logs}"
        );
    }
}
