//! SIGHUP reloads the config of the running binary; a bad config is refused and the old
//! one kept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// Kills the relay if the test fails half-way.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn login_reply(addr: std::net::SocketAddr, user: &str, password: &str) -> u16 {
    let mut client = Client::connect(addr).await;
    client.ehlo().await;
    let code = client.auth_plain(user, password).await.code;
    client.quit().await;
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_users_and_refuses_a_bad_config() {
    let env = Env::start().await;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config_path = env.path("reload.toml");
    std::fs::write(&config_path, &env.config_text).unwrap();
    let mut relay = Relay(
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
    assert_eq!(login_reply(addr, SCANNER.0, SCANNER.1).await, 235);
    let mut client = Client::connect(addr).await;
    client.ehlo().await;
    client
        .auth_plain(SCANNER.0, SCANNER.1)
        .await
        .expect_code(235);
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("before-reload"))
        .await
        .expect_code(250);
    client.quit().await;
    assert_eq!(env.issuer.refresh_count(), 1);

    // Give the scanner the app's password hash: after the reload only that one works.
    let app_hash = common_hash_of(&env.config_text, APP.0);
    let scanner_hash = common_hash_of(&env.config_text, SCANNER.0);
    let changed = env.config_text.replacen(&scanner_hash, &app_hash, 1);
    std::fs::write(&config_path, changed).unwrap();
    signal(&relay.0, "HUP");
    let mut reloaded = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if login_reply(addr, SCANNER.0, APP.1).await == 235 {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "the new password hash was not picked up");
    assert_eq!(login_reply(addr, SCANNER.0, SCANNER.1).await, 535);

    // A broken config is refused; the relay keeps the one it has.
    std::fs::write(&config_path, "[server\nthis is not toml").unwrap();
    signal(&relay.0, "HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(login_reply(addr, SCANNER.0, APP.1).await, 235);
    let mut client = Client::connect(addr).await;
    client.ehlo().await;
    client.auth_plain(SCANNER.0, APP.1).await.expect_code(235);
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("after-reload"))
        .await
        .expect_code(250);
    client.quit().await;
    // The support asset's credentials did not change: its access token survived both
    // reloads.
    assert_eq!(
        env.issuer.refresh_count(),
        1,
        "a reload threw the token state away"
    );

    signal(&relay.0, "TERM");
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = relay.0.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        exited.map(|s| s.success()),
        Some(true),
        "no clean exit after SIGTERM"
    );
    env.stop().await;
}

/// The password hash of `user` in a harness config text.
fn common_hash_of(config: &str, user: &str) -> String {
    let start = config
        .find(&format!("name = \"{user}\""))
        .expect("user in config");
    let rest = &config[start..];
    let line = rest
        .lines()
        .find(|line| line.starts_with("password_hash"))
        .unwrap();
    line.split('"').nth(1).unwrap().to_string()
}
