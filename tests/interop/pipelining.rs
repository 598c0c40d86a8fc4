//! A real pipelining client through the relay: swaks with `--pipeline` sends MAIL, RCPTs
//! and DATA in one write (RFC 2920); the relay passes the envelope upstream in one flight
//! and the message as `BDAT <n> LAST` (RFC 3030), and swaks gets every reply in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::*;
use smtp_oauth_relay::sandbox::gmail::{Behaviour, Turn};

#[tokio::test]
async fn swaks_pipelining_through_the_relay_is_one_upstream_flight() {
    if !crate::installed_or_skip("swaks", crate::on_path("swaks")) {
        return;
    }
    let env = Env::start().await;
    env.gmail.set_behaviour(Behaviour {
        record_dialogue: true,
        ..Behaviour::default()
    });
    let eml = env.path("pipelined.eml");
    let body = b"From: <helpdesk@example.com>\r\nSubject: swaks-pipeline\r\n\r\n.a line with a dot\r\nbye\r\n";
    std::fs::write(&eml, body).unwrap();
    let server = env.relay_addr.to_string();
    let data = format!("@{}", eml.display());
    let args: Vec<String> = [
        "--server",
        &server,
        "--pipeline",
        "--helo",
        "client.test",
        "--auth",
        "PLAIN",
        "--auth-user",
        SCANNER.0,
        "--auth-password",
        SCANNER.1,
        "--from",
        "helpdesk@example.com",
        "--to",
        "one@example.net,two@example.net",
        "--data",
        &data,
        "--timeout",
        "30",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    // A blocking child on the blocking pool: the relay keeps serving on this runtime.
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("swaks").args(&args).output()
        }),
    )
    .await
    .expect("swaks did not finish in 60 s")
    .unwrap()
    .unwrap();
    let transcript = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{transcript}");
    assert!(transcript.contains("<-  250"), "{transcript}");

    assert!(env.gmail.wait_for_messages(1, Duration::from_secs(5)).await);
    let messages = env.gmail.messages();
    assert_eq!(messages[0].rcpt_to, ["one@example.net", "two@example.net"]);
    let (_, received) = split_received(&messages[0].data);
    // swaks dot-stuffs the file's ".a line" and adds a CRLF before its dot; the relay
    // un-stuffs it for BDAT, so the message arrives as the file says (plus that CRLF).
    let mut expected = body.to_vec();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(received, expected);

    let dialogue = env.gmail.dialogue(1);
    let login = dialogue
        .iter()
        .position(|turn| matches!(turn, Turn::Server(bytes) if bytes.starts_with(b"235 ")))
        .unwrap();
    let sent: Vec<&Vec<u8>> = dialogue[login + 1..]
        .iter()
        .filter_map(|turn| match turn {
            Turn::Client(bytes) => Some(bytes),
            Turn::Server(_) => None,
        })
        .collect();
    assert_eq!(
        String::from_utf8_lossy(sent[0]),
        "MAIL FROM:<helpdesk@example.com>\r\nRCPT TO:<one@example.net>\r\nRCPT TO:<two@example.net>\r\n"
    );
    let mut last = format!("BDAT {} LAST\r\n", messages[0].data.len()).into_bytes();
    last.extend_from_slice(&messages[0].data);
    assert!(sent[1] == &last, "{}", String::from_utf8_lossy(sent[1]));
    env.stop().await;
}
