//! `serve --sandbox --sandbox-transport graph` through the real binary: the demo user's
//! message goes to the embedded Microsoft Graph-like endpoint (HTTPS, app-only token from
//! the sandbox issuer's client-credentials grant) and is saved as `.eml`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use crate::common::split_received;

const BIN: &str = env!("CARGO_BIN_EXE_smtp-oauth-relay");

#[tokio::test]
async fn the_sandbox_sends_through_the_fake_graph() {
    let dir = tempfile::tempdir().unwrap();
    let mail_dir = dir.path().join("mail");
    let addr: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--sandbox",
            "--sandbox-transport",
            "graph",
            "--listen",
        ])
        .arg(addr.to_string())
        .arg("--sandbox-mail-dir")
        .arg(&mail_dir)
        .env_remove("SMTP_OAUTH_RELAY_CONFIG")
        .env_remove("SMTP_OAUTH_RELAY_LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the sandbox did not listen on {addr}");

    let message = b"From: You <you@example.com>\r\nTo: Friend <friend@example.net>\r\n\
Subject: sandbox via Graph\r\n\r\nHello through Microsoft Graph.\r\n.a leading dot\r\n";
    let script = r#"
import smtplib, sys
msg = sys.stdin.buffer.read()
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30) as server:
    server.login("demo", "demo")
    server.sendmail("you@example.com", ["friend@example.net"], msg)
print("SENT")
"#;
    let mut python = Command::new("python3")
        .args([
            "-c",
            script,
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    python
        .stdin
        .take()
        .unwrap()
        .write_all(message)
        .await
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), python.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let saved: Vec<_> = std::fs::read_dir(&mail_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains("-graph-"))
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let (received, rest) = split_received(&std::fs::read(&saved[0]).unwrap());
    assert!(received.contains("smtp-oauth-relay"), "{received}");
    assert_eq!(
        String::from_utf8_lossy(&rest),
        String::from_utf8_lossy(message)
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
}
