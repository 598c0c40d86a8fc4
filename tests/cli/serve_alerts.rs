//! `serve` runs the alert task: the binary, configured with `[[alert]]`, posts one
//! `asset_needs_attention` to a webhook receiver on 127.0.0.1 when a refresh token is
//! revoked, and nothing else (no secret, no second alert within the interval).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

#[path = "../relay/alert_receiver.rs"]
mod alert_receiver;

use alert_receiver::Receiver;

/// Kills the relay if the test fails half-way.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_binary_alerts_once_when_a_token_is_revoked() {
    let mut receiver = Receiver::start(0).await;
    let env = Env::start().await;
    let addr: std::net::SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let config_path = env.path("alerts.toml");
    let config = format!(
        "{}\n[alerts]\ncheck_secs = 1\n\n[[alert]]\nkind = \"webhook\"\nurl = \"{}\"\n",
        env.config_text,
        receiver.url("/relay-alerts")
    );
    std::fs::write(&config_path, config).unwrap();
    let _relay = Relay(
        Command::new(env!("CARGO_BIN_EXE_smtp-oauth-relay"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .args(["--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "relay did not start");

    assert!(env.issuer.revoke_refresh_token(SALES_REFRESH));
    let mut client = Client::connect(addr).await;
    client.ehlo().await;
    client.auth_plain(APP.0, APP.1).await.expect_code(235);
    client.mail_from(SALES_EMAIL, 454).await;
    client.quit().await;

    let all = receiver.wait_for(1).await;
    let alert = all[0].json();
    assert_eq!(all[0].path, "/relay-alerts");
    assert_eq!(alert["event"], "asset_needs_attention", "{alert}");
    assert_eq!(alert["asset"], "sales");
    assert_eq!(alert["email"], SALES_EMAIL);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.all().len(), 1, "{:#?}", receiver.all());
    for secret in [
        SALES_REFRESH,
        SALES_SECRET,
        SUPPORT_SECRET,
        SUPPORT_REFRESH,
        "ya29.",
    ] {
        assert!(!all[0].body.contains(secret), "{}", all[0].body);
    }
    env.stop().await;
}
