//! Sending counters (issue 16) survive a restart of the real binary: swaks sends an
//! asset's daily allowance through one `serve` process, which is stopped with SIGTERM;
//! the next process refuses the asset's next message with 451 before the upstream sees it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

const FROM: &str = "robot@limited.example";

/// Kills the relay if the test fails half-way.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

async fn start(config: &Path) -> (Relay, SocketAddr) {
    let addr = free_addr();
    let relay = Relay(
        Command::new(env!("CARGO_BIN_EXE_smtp-oauth-relay"))
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return (relay, addr);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("relay did not start");
}

async fn stop(mut relay: Relay) {
    let status = Command::new("kill")
        .args(["-TERM", &relay.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..200 {
        if let Some(status) = relay.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no exit after SIGTERM");
}

/// swaks through the relay at `addr`; its exit status and output.
async fn swaks(addr: SocketAddr, subject: &str) -> (bool, String) {
    let out = tokio::process::Command::new("swaks")
        .args([
            "--server",
            &addr.to_string(),
            "--from",
            FROM,
            "--to",
            "x@example.net",
        ])
        .args([
            "--auth",
            "PLAIN",
            "--auth-user",
            ADMIN.0,
            "--auth-password",
            ADMIN.1,
        ])
        .args(["--header", &format!("Subject: {subject}")])
        .args(["--timeout", "20"])
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_survive_a_restart_of_the_binary() {
    let asset = format!(
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
daily_messages = 2
"#
    );
    let env = Env::with(Options {
        extra_assets: asset,
        ..Options::default()
    })
    .await;
    let config = env.path("limits.toml");
    std::fs::write(&config, &env.config_text).unwrap();

    let (relay, addr) = start(&config).await;
    for i in 0..2 {
        let (ok, out) = swaks(addr, &format!("day-{i}")).await;
        assert!(ok, "{out}");
    }
    stop(relay).await;
    assert_eq!(env.gmail.messages().len(), 2);

    let (relay, addr) = start(&config).await;
    let connections = env.gmail.connections();
    let (ok, out) = swaks(addr, "one too many").await;
    assert!(!ok, "{out}");
    assert!(out.contains(" 451 4.7.0"), "{out}");
    assert!(out.contains("2 messages in 24 hours"), "{out}");
    assert_eq!(env.gmail.messages().len(), 2);
    assert_eq!(env.gmail.connections(), connections);
    stop(relay).await;

    // `check` reads the same counters and says how much of each limit is used.
    let out = Command::new(env!("CARGO_BIN_EXE_smtp-oauth-relay"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("asset limited: last 24 h: 2 of 2 messages, 2 of 10000 recipients"),
        "{stdout}"
    );
    env.stop().await;
}
