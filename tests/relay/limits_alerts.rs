//! The `asset_over_provider_limit` alert (issue 16): a provider's quota refusal reaches an
//! operator's webhook once, with when the mark ends, and without a secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokio_util::sync::CancellationToken;

use crate::common::*;
use smtp_oauth_relay::alerts::{self, AlertOptions};
use smtp_oauth_relay::sandbox::gmail::Behaviour;
use smtp_oauth_relay::server::RelayHandle;

use crate::alerts::receiver::Receiver;

#[tokio::test]
async fn a_quota_refusal_is_announced_once_with_its_end() {
    let mut hook = Receiver::start(0).await;
    let config = format!(
        r#"
[[asset]]
name = "limited"
email = "{SALES_EMAIL}"
client_id = "sales-client"
client_secret = "{SALES_SECRET}"
refresh_token = "{SALES_REFRESH}"
senders = ["@limited.example"]
upstream = "@UPSTREAM@"
upstream_tls = "@UPSTREAM_TLS@"
upstream_ca = "@CA@"
token_url = "@TOKEN_URL@"

[alerts]
check_secs = 1
retry_secs = 1

[[alert]]
kind = "webhook"
url = "{}"
format = "json"
"#,
        hook.url("/json")
    );
    let env = Env::with(Options {
        extra_assets: config,
        ..Options::default()
    })
    .await;
    let stop = CancellationToken::new();
    tokio::spawn(alerts::run(
        RelayHandle::new(env.relay.clone()),
        stop.clone(),
        AlertOptions::default(),
    ));
    env.gmail.set_behaviour(Behaviour {
        data_reply: Some("550 5.4.5 Daily user sending limit exceeded.".into()),
        ..Behaviour::default()
    });
    let mut client = env.logged_in(ADMIN).await;
    let reply = client
        .send_mail(
            "robot@limited.example",
            &["x@example.net"],
            &message("quota"),
        )
        .await;
    client.quit().await;
    assert_eq!(reply.code, 451, "{reply}");
    let received = hook.wait_for(1).await;
    let json = received[0].json();
    assert_eq!(json["event"], "asset_over_provider_limit", "{json}");
    assert_eq!(json["asset"], "limited");
    assert!(json["reason"].as_str().unwrap().contains("5.4.5"), "{json}");
    assert!(json["expires_at"].is_string(), "{json}");
    for secret in [SALES_SECRET, SALES_REFRESH, "ya29."] {
        assert!(!received[0].body.contains(secret), "{secret}");
    }
    // The same mark is not announced again.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(hook.all().len(), 1, "{:?}", hook.all());
    stop.cancel();
    env.stop().await;
}
