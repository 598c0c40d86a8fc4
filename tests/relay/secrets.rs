//! Secrets (passwords, client secrets, refresh and access tokens) never reach a log line,
//! whatever happens in the session.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use base64::Engine;
use smtp_oauth_relay::sandbox::token_issuer::IssuerMode;

// A current-thread runtime: every task of the relay and its fakes runs on this thread, so
// the thread-local subscriber sees all their events.
#[tokio::test]
async fn a_full_session_at_trace_level_logs_no_secret() {
    let (captured, _guard) = capture_logs_at(tracing::Level::TRACE);

    let env = Env::start().await;
    // AUTH PLAIN, a delivered message.
    let mut client = env.logged_in(SCANNER).await;
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("secret-test"))
        .await
        .expect_code(250);
    client.quit().await;
    // AUTH LOGIN with the wrong password, then the right one.
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut client = env.client().await;
    client.ehlo().await;
    client.cmd("AUTH LOGIN").await.expect_code(334);
    client.cmd(&b64(APP.0)).await.expect_code(334);
    client.cmd(&b64("wrong-password-Qx")).await.expect_code(535);
    client.cmd("AUTH LOGIN").await.expect_code(334);
    client.cmd(&b64(APP.0)).await.expect_code(334);
    client.cmd(&b64(APP.1)).await.expect_code(235);
    // The cached token refused by the upstream, then a refresh.
    env.tokens.revoke_all();
    client
        .send_mail(SALES_EMAIL, &["y@example.net"], &message("secret-test-2"))
        .await
        .expect_code(250);
    client.quit().await;
    // A refresh token the provider refuses.
    env.tokens.revoke_all();
    env.issuer.set_mode(IssuerMode::InvalidGrant);
    let mut client = env.logged_in(ADMIN).await;
    client.mail_from(SALES_EMAIL, 454).await;
    client.quit().await;
    // Long tokens take the two-step AUTH path.
    env.issuer.set_mode(IssuerMode::Normal);
    env.tokens.set_min_token_len(1500);
    env.tokens.revoke_all();
    let mut client = env.logged_in(SCANNER).await;
    client
        .send_mail(SUPPORT_EMAIL, &["z@example.net"], &message("secret-test-3"))
        .await
        .expect_code(250);
    client.quit().await;
    // Config and state printed with Debug, as a careless log line would.
    tracing::debug!(config = ?env.relay.config, "config dump");
    env.stop().await;

    let log = captured.text();
    // The capture works: the test would see a secret if one were logged.
    assert!(log.contains("message relayed"), "log capture is empty");
    assert!(
        log.contains("C: MAIL FROM"),
        "upstream conversation not traced"
    );
    assert!(
        log.contains("authentication failed"),
        "auth failure not logged"
    );

    let forbidden = [
        SCANNER.1.to_string(),
        APP.1.to_string(),
        ADMIN.1.to_string(),
        "wrong-password-Qx".to_string(),
        b64(&format!("\0{}\0{}", SCANNER.0, SCANNER.1)),
        b64(APP.1),
        SUPPORT_SECRET.to_string(),
        SALES_SECRET.to_string(),
        SUPPORT_REFRESH.to_string(),
        SALES_REFRESH.to_string(),
        // Every access token the fake issuer hands out starts like Google's.
        "ya29.".to_string(),
        // base64 of "user=", the start of every XOAUTH2 response.
        "dXNlcj".to_string(),
    ];
    for secret in forbidden {
        assert!(
            !log.contains(&secret),
            "secret {secret:?} appears in the log:\n{}",
            log.lines()
                .filter(|line| line.contains(&secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
