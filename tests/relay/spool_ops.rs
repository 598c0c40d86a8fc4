//! The spool in operation (issue 15): `/readyz` and metrics while every asset needs an
//! operator, the `max_age_secs` dead letter, and a shutdown that lets a delivery in flight
//! finish.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::*;
use crate::spool::{files_in, spool_dir, spool_options, until};
use smtp_oauth_relay::sandbox::gmail::Behaviour;

async fn http_get(base: &str, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn readyz_stays_ready_while_the_spool_accepts_and_metrics_count_it() {
    use smtp_oauth_relay::sandbox::token_issuer::IssuerMode;
    use smtp_oauth_relay::server::RelayHandle;
    let env = Env::with(spool_options("[3600]", "max_bytes = 22000")).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(smtp_oauth_relay::admin::serve(
        listener,
        RelayHandle::new(env.relay.clone()),
        shutdown.clone(),
    ));
    // Every asset's refresh token revoked: no asset can send.
    env.issuer.set_mode(IssuerMode::InvalidGrant);
    env.mail_from_as(APP, SALES_EMAIL).await.expect_code(454);
    env.send_as(SCANNER, SUPPORT_EMAIL, "x@example.net", "spooled-waits")
        .await
        .expect_code(250);
    until("support to need attention", Duration::from_secs(15), || {
        std::fs::read_dir(spool_dir(&env).join("queue"))
            .unwrap()
            .any(|e| {
                let path = e.unwrap().path();
                path.extension().is_some_and(|x| x == "json")
                    && std::fs::read_to_string(&path)
                        .unwrap()
                        .contains("\"waiting_for_credentials\": true")
            })
    })
    .await;
    let (status, body) = http_get(&base, "/readyz").await;
    assert!(body.contains("asset sales: needs attention"), "{body}");
    assert!(body.contains("asset support: needs attention"), "{body}");
    assert!(body.contains("spool: ok ("), "{body}");
    assert_eq!(status, 200, "the spool still accepts: {body}");
    // Past 90 % of max_bytes it says so.
    let mut client = env.logged_in(SCANNER).await;
    let big = format!(
        "Subject: big\r\n\r\n{}",
        ("y".repeat(70) + "\r\n").repeat(260)
    );
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], big.as_bytes())
        .await
        .expect_code(250);
    client.quit().await;
    let (_, body) = http_get(&base, "/readyz").await;
    assert!(body.contains("spool: nearly full"), "{body}");
    let (_, metrics) = http_get(&base, "/metrics").await;
    assert!(
        metrics.contains("smtp_oauth_relay_spool_deliveries_total{outcome=\"deferred\"}"),
        "{metrics}"
    );
    shutdown.cancel();
    env.stop().await;
}

#[tokio::test]
async fn a_message_older_than_max_age_becomes_a_dead_letter() {
    let (captured, _guard) = capture_logs_at(tracing::Level::INFO);
    let env = Env::with(spool_options("[1]", "max_age_secs = 2")).await;
    env.gmail.set_behaviour(Behaviour {
        greeting: Some("421 4.7.0 Try again later".into()),
        ..Behaviour::default()
    });
    env.send_as(SCANNER, SUPPORT_EMAIL, "x@example.net", "too-old")
        .await
        .expect_code(250);
    let dead = spool_dir(&env).join("dead");
    until("the dead letter", Duration::from_secs(20), || {
        files_in(&dead).len() == 2
    })
    .await;
    let json = files_in(&dead)
        .into_iter()
        .find(|n| n.ends_with(".json"))
        .unwrap();
    let state = std::fs::read_to_string(dead.join(json)).unwrap();
    assert!(state.contains("not delivered within 2 seconds"), "{state}");
    assert!(env.gmail.messages().is_empty());
    let logs = captured.text();
    assert!(logs.contains("spool_dead_letter"), "{logs}");
    // The provider is down, so the report could not go: said, not hidden.
    assert!(
        logs.contains("delivery status notification not sent"),
        "{logs}"
    );
    for secret in [SUPPORT_SECRET, SUPPORT_REFRESH, SCANNER.1] {
        assert!(!logs.contains(secret), "secret in the logs");
    }
    env.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_delivery_in_flight_finish() {
    let mut options = spool_options("[3600]", "");
    options.timeouts = "shutdown_grace_secs = 20".into();
    let env = Env::with(options).await;
    // A slow provider: the delivery is still under way when the relay is told to stop.
    env.gmail.set_behaviour(Behaviour {
        greeting_delay: Some(Duration::from_millis(1500)),
        ..Behaviour::default()
    });
    env.send_as(SCANNER, SUPPORT_EMAIL, "x@example.net", "in-flight")
        .await
        .expect_code(250);
    let queue = spool_dir(&env).join("queue");
    until("the delivery to start", Duration::from_secs(10), || {
        std::fs::read_dir(&queue).unwrap().any(|e| {
            let path = e.unwrap().path();
            path.extension().is_some_and(|x| x == "json")
                && std::fs::read_to_string(&path)
                    .unwrap()
                    .contains("\"sending\": true")
        })
    })
    .await;
    let gmail = env.stop_and_keep_fakes().await;
    assert_eq!(gmail.messages().len(), 1, "the delivery in flight finished");
    assert!(!files_in(&queue).iter().any(|name| name.ends_with(".json")));
}
