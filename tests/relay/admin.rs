//! The admin listener: liveness, readiness that follows the assets' credential state, and
//! Prometheus metrics that count what the relay did.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use smtp_oauth_relay::sandbox::token_issuer::IssuerMode;
use smtp_oauth_relay::server::RelayHandle;
use tokio_util::sync::CancellationToken;

async fn get(base: &str, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let env = Env::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(smtp_oauth_relay::admin::serve(
        listener,
        RelayHandle::new(env.relay.clone()),
        shutdown.clone(),
    ));

    assert_eq!(get(&base, "/healthz").await, (200, "ok\n".to_string()));
    let (status, body) = get(&base, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(&base, "/nope").await.0, 404);

    let mut client = env.logged_in(SCANNER).await;
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("metrics"))
        .await
        .expect_code(250);
    client.mail_from("stranger@elsewhere.net", 550).await;
    client.auth_plain(SCANNER.0, "wrong").await;
    client.quit().await;

    let (status, metrics) = get(&base, "/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        "smtp_oauth_relay_transactions_total{outcome=\"delivered\"} 1",
        "smtp_oauth_relay_transactions_total{outcome=\"rejected_by_policy\"} 1",
        "smtp_oauth_relay_token_refreshes_total{asset=\"support\",result=\"ok\"} 1",
        "smtp_oauth_relay_upstream_connect_seconds_count 1",
        "smtp_oauth_relay_upstream_auth_seconds_count 1",
        "smtp_oauth_relay_asset_ready{asset=\"support\"} 1",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in\n{metrics}"
        );
    }
    assert!(
        metrics.contains("smtp_oauth_relay_sessions_total"),
        "{metrics}"
    );
    assert!(!metrics.contains(SUPPORT_SECRET) && !metrics.contains("ya29."));

    // Every asset needs re-authorization: not ready. One would not be enough.
    env.issuer.set_mode(IssuerMode::InvalidGrant);
    env.tokens.revoke_all();
    let mut client = env.logged_in(ADMIN).await;
    client.mail_from(SALES_EMAIL, 454).await;
    let (status, body) = get(&base, "/readyz").await;
    assert_eq!(status, 200, "one usable asset left: {body}");
    assert!(body.contains("asset sales: needs attention"), "{body}");
    client.mail_from(SUPPORT_EMAIL, 454).await;
    let (status, body) = get(&base, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let (_, metrics) = get(&base, "/metrics").await;
    assert!(
        metrics.contains("smtp_oauth_relay_asset_ready{asset=\"support\"} 0"),
        "{metrics}"
    );
    shutdown.cancel();
    env.stop().await;
}

async fn admin_for(env: &Env) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(smtp_oauth_relay::admin::serve(
        listener,
        RelayHandle::new(env.relay.clone()),
        shutdown.clone(),
    ));
    (base, shutdown)
}

/// A provider hiccup (HTTP 503 `temporarily_unavailable`) for every asset: clients get
/// 454, and the pod stays ready, since nothing needs an operator.
#[tokio::test]
async fn transient_token_endpoint_errors_keep_the_relay_ready() {
    let env = Env::with(Options {
        server: "credential_failure = \"permanent\"".into(),
        ..Options::default()
    })
    .await;
    let (base, shutdown) = admin_for(&env).await;
    env.issuer.set_mode(IssuerMode::OAuthError {
        status: 503,
        error: "temporarily_unavailable",
    });
    let mut client = env.logged_in(ADMIN).await;
    for sender in [SUPPORT_EMAIL, SALES_EMAIL] {
        let reply = client.cmd(&format!("MAIL FROM:<{sender}>")).await;
        assert_eq!(reply.code, 454, "{reply}");
        assert_eq!(reply.enhanced.map(|c| c.to_string()), Some("4.7.0".into()));
    }
    client.quit().await;
    let (status, body) = get(&base, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("asset support: ok"), "{body}");
    assert!(body.contains("asset sales: ok"), "{body}");
    let (_, metrics) = get(&base, "/metrics").await;
    assert!(
        metrics.contains("smtp_oauth_relay_asset_ready{asset=\"support\"} 1"),
        "{metrics}"
    );
    shutdown.cancel();
    env.stop().await;
}

/// `/readyz` reports from a snapshot: a refresh in flight (a slow token endpoint) must not
/// hold the probe until the refresh ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_while_a_refresh_is_in_flight() {
    let env = Env::with(Options {
        timeouts: "token_request_secs = 20".into(),
        ..Options::default()
    })
    .await;
    let (base, shutdown) = admin_for(&env).await;
    env.issuer.set_delay(std::time::Duration::from_secs(6));
    let relay_addr = env.relay_addr;
    let sending = tokio::spawn(async move {
        let mut client = Client::connect(relay_addr).await;
        client.ehlo().await;
        client
            .auth_plain(SCANNER.0, SCANNER.1)
            .await
            .expect_code(235);
        let reply = client.cmd(&format!("MAIL FROM:<{SUPPORT_EMAIL}>")).await;
        client.quit().await;
        reply
    });
    // Wait until the refresh is at the (slow) token endpoint.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while env.issuer.refresh_count() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no refresh request");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let probe = tokio::time::timeout(std::time::Duration::from_secs(1), get(&base, "/readyz"))
        .await
        .expect("/readyz waited for the token refresh");
    assert_eq!(probe.0, 200, "{}", probe.1);
    assert!(!sending.is_finished(), "the refresh was not in flight");
    sending.await.unwrap().expect_code(250);
    shutdown.cancel();
    env.stop().await;
}
