//! Clients that misbehave on purpose: never reading replies, forging log lines through
//! the values they send, sending endless lines, spamming harmless commands; and the one
//! upstream failure that must not be mistaken for a possible duplicate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine;
use smtp_oauth_relay::sandbox::gmail::Behaviour;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Waits (bounded) until a new connection from 127.0.0.1 is greeted with 220.
async fn slot_comes_back(env: &Env, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let client = Client::connect(env.relay_addr).await;
        if client.greeting.code == 220 {
            client.quit().await;
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

// ------------------------------------------------------------------ client never reads

#[tokio::test]
async fn client_that_never_reads_replies_is_disconnected_and_its_slot_freed() {
    let env = Env::with(Options {
        limits: "max_connections_per_ip = 1".into(),
        timeouts: "client_write_secs = 1".into(),
        ..Options::default()
    })
    .await;
    // A tiny receive window, and we never read: the relay's replies pile up in its send
    // buffer until its writes block.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(env.relay_addr).await.unwrap();
    let (_reader, mut writer) = stream.into_split();
    // EHLO is not a junk command, and its reply is ~10 times the size of the command.
    let flood = tokio::spawn(async move {
        let batch = b"EHLO client.test\r\n".repeat(4096);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sent = 0usize;
        while Instant::now() < deadline && sent < 16 * 1024 * 1024 {
            match tokio::time::timeout(Duration::from_secs(1), writer.write_all(&batch)).await {
                Ok(Ok(())) => sent += batch.len(),
                // Blocked (the relay stopped reading) or refused (it hung up).
                Ok(Err(_)) => break,
                Err(_) => continue,
            }
        }
        writer
    });
    // The one slot of 127.0.0.1 is taken while the flood lasts...
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = Client::connect(env.relay_addr).await;
    assert_eq!(refused.greeting.code, 421, "{}", refused.greeting);
    // ...and comes back once the relay gives up writing to the client that does not read.
    assert!(
        slot_comes_back(&env, Duration::from_secs(15)).await,
        "the client that never reads still holds its slot"
    );
    let metrics = env.relay.metrics.render();
    assert!(
        metrics.contains("limit=\"client_write\""),
        "no client_write limit counted: {metrics}"
    );
    flood.abort();
    env.stop().await;
}

// ------------------------------------------------------------------------- log forging

/// A user name that tries to forge a fail2ban-worthy line after its own.
const FORGED: &str = "nobody\r\n2030-01-01T00:00:00.000000Z  WARN session{id=9 peer=203.0.113.99:4000}: smtp_oauth_relay::session: authentication failed mechanism=\"PLAIN\" user=root peer=203.0.113.99\n";

async fn forge_attempts(env: &Env) {
    let mut client = env.client().await;
    client.ehlo().await;
    client.auth_plain(FORGED, "wrong").await.expect_code(535);
    client.cmd("AUTH LOGIN").await.expect_code(334);
    client.cmd(&b64(FORGED)).await.expect_code(334);
    client.cmd(&b64("wrong")).await.expect_code(535);
    // 8 KB of name (in an AUTH LOGIN response line), the forgery at the end.
    let long = format!("{}{FORGED}", "x".repeat(8000));
    client.cmd("AUTH LOGIN").await.expect_code(334);
    client.cmd(&b64(&long)).await.expect_code(334);
    client.cmd(&b64("wrong")).await.expect_code(535);
    client.quit().await;
    // Header values: a Message-ID and a From: with terminal escapes and line breaks that
    // survive header parsing (vertical tab, form feed, ESC).
    let mut client = env.logged_in(SCANNER).await;
    let body = "From: support@example.com\r\nTo: x@example.net\r\nMessage-ID: <a\x0b\x0c\x1b[2Jb@client.test>\r\nSubject: forge\r\n\r\nbody\r\n";
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], body.as_bytes())
        .await
        .expect_code(250);
    client.quit().await;
}

#[tokio::test]
async fn forged_newline_in_a_user_name_never_splits_a_text_log_line() {
    let (captured, _guard) = capture_logs_at(tracing::Level::INFO);
    let env = Env::with(Options {
        limits: "auth_failure_delay_ms = 10".into(),
        ..Options::default()
    })
    .await;
    forge_attempts(&env).await;
    env.stop().await;

    let log = captured.text();
    let failures: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("authentication failed"))
        .collect();
    assert_eq!(failures.len(), 3, "{log}");
    for line in log.lines() {
        assert!(
            !line.starts_with("2030-01-01"),
            "forged line in the log:\n{log}"
        );
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\t'),
            "control character in {line:?}"
        );
        if line.contains("203.0.113.99") {
            // Only inside the genuine line, whose own peer comes first.
            assert!(line.contains("peer=127.0.0.1"), "{line}");
            assert!(line.contains("\\r\\n2030-01-01"), "{line}");
        }
        assert!(line.len() < 2048, "log line of {} bytes", line.len());
    }
    // The Message-ID is logged, escaped.
    assert!(
        log.contains("message_id=a\\u{b}\\u{c}\\u{1b}[2Jb@client.test "),
        "{log}"
    );
}

#[tokio::test]
async fn forged_newline_in_a_user_name_stays_inside_its_json_field() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let _guard = capture_logs(subscriber);
    let env = Env::with(Options {
        limits: "auth_failure_delay_ms = 10".into(),
        ..Options::default()
    })
    .await;
    forge_attempts(&env).await;
    env.stop().await;

    let log = captured.text();
    let mut failures = 0;
    for line in log.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not a JSON log line ({err}): {line}"));
        let fields = &event["fields"];
        if fields["message"] == "authentication failed" {
            failures += 1;
            let user = fields["user"].as_str().unwrap();
            assert!(!user.chars().any(char::is_control), "{user:?}");
            assert!(user.len() < 512, "user name of {} bytes logged", user.len());
        }
        if let Some(id) = fields["message_id"].as_str() {
            assert!(!id.chars().any(char::is_control), "{id:?}");
        }
    }
    assert_eq!(failures, 3, "{log}");
}

// ------------------------------------------------------------------ overlong command lines

#[tokio::test]
async fn two_megabyte_line_without_newline_is_answered_at_once_then_closed() {
    let env = Env::with(Options {
        timeouts: "line_end_secs = 1".into(),
        ..Options::default()
    })
    .await;
    let mut client = env.client().await;
    client.ehlo().await;
    let started = Instant::now();
    // Written in the background: the relay may stop reading once it gives up.
    let stream = TcpStream::connect(env.relay_addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let mut greeting = [0u8; 512];
    let n = reader.read(&mut greeting).await.unwrap();
    assert!(greeting[..n].starts_with(b"220 "));
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&vec![b'A'; 2 * 1024 * 1024]).await;
        writer
    });
    let mut received = Vec::new();
    let reply = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let mut chunk = [0u8; 1024];
            let n = reader.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed without a reply");
            received.extend_from_slice(&chunk[..n]);
            if received.ends_with(b"\r\n") {
                break;
            }
        }
    })
    .await;
    assert!(reply.is_ok(), "no reply within a second to an endless line");
    let text = String::from_utf8_lossy(&received).into_owned();
    assert!(text.starts_with("500 5.5.6 "), "{text}");
    // No line end follows: the relay hangs up (after a 421) within the bound.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest).await;
        rest
    })
    .await
    .expect("the connection stayed open without a line end");
    let rest = String::from_utf8_lossy(&closed).into_owned();
    assert!(rest.is_empty() || rest.starts_with("421 "), "{rest}");
    assert!(started.elapsed() < Duration::from_secs(8));
    let _ = writing.await;
    // The other client was not disturbed.
    client.cmd("NOOP").await.expect_code(250);
    env.stop().await;
}

#[tokio::test]
async fn overlong_line_then_its_line_end_lets_the_client_continue() {
    let env = Env::start().await;
    let mut client = env.logged_in(SCANNER).await;
    client.write(&vec![b'B'; 2 * 1024 * 1024]).await;
    let reply = tokio::time::timeout(Duration::from_secs(1), client.read_reply())
        .await
        .expect("no reply within a second to an overlong line");
    assert_eq!(reply.code, 500, "{reply}");
    assert_eq!(reply.enhanced.map(|c| c.to_string()), Some("5.5.6".into()));
    // The rest of the line, then its end: discarded, not executed.
    client.write(b"BBBB QUIT\r\nNOOP\r\n").await;
    client.read_reply().await.expect_code(250);
    client
        .send_mail(
            SUPPORT_EMAIL,
            &["x@example.net"],
            &message("after-long-line"),
        )
        .await
        .expect_code(250);
    env.stop().await;
}

// ---------------------------------------------------------------- junk commands, errors

#[tokio::test]
async fn junk_commands_are_limited() {
    let env = Env::with(Options {
        limits: "max_junk_commands = 10".into(),
        ..Options::default()
    })
    .await;
    let mut client = env.client().await;
    client.ehlo().await;
    let junk = ["NOOP", "RSET", "VRFY x", "HELP", "XYZZY"];
    // Ten are allowed (refused ones get their error reply first)...
    for i in 0..10 {
        let reply = client.cmd(junk[i % junk.len()]).await;
        assert!(reply.code != 421, "closed after {i} junk commands: {reply}");
    }
    // ...the eleventh gets 421 instead of an answer.
    let reply = client.cmd("NOOP").await;
    assert_eq!(reply.code, 421, "{reply}");
    assert_eq!(reply.enhanced.map(|c| c.to_string()), Some("4.7.0".into()));
    assert!(client.try_read_reply().await.is_none());

    // A delivered message starts the count again (Postfix does the same).
    let mut client = env.logged_in(SCANNER).await;
    for _ in 0..9 {
        client.cmd("NOOP").await.expect_code(250);
    }
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("junk-reset"))
        .await
        .expect_code(250);
    for _ in 0..10 {
        client.cmd("RSET").await.expect_code(250);
    }
    client.quit().await;
    env.stop().await;
}

#[tokio::test]
async fn junk_limit_default_is_one_hundred() {
    let env = Env::start().await;
    let mut client = env.client().await;
    let mut batch = b"EHLO client.test\r\n".to_vec();
    for _ in 0..150 {
        batch.extend_from_slice(b"NOOP\r\n");
    }
    client.write(&batch).await;
    client.read_reply().await.expect_code(250);
    for i in 0..100 {
        let reply = client.read_reply().await;
        assert_eq!(reply.code, 250, "NOOP {i}: {reply}");
    }
    let reply = client.read_reply().await;
    assert_eq!(reply.code, 421, "{reply}");
    env.stop().await;
}

#[tokio::test]
async fn upstream_5xx_recipient_refusals_count_as_errors() {
    let env = Env::with(Options {
        limits: "max_errors = 3".into(),
        ..Options::default()
    })
    .await;
    env.gmail.set_behaviour(Behaviour {
        reject_recipients: vec!["nobody@example.net".into()],
        ..Behaviour::default()
    });
    let mut client = env.logged_in(SCANNER).await;
    client.mail_from(SUPPORT_EMAIL, 250).await;
    client.rcpt_to("x@example.net", 250).await;
    client.rcpt_to("nobody@example.net", 550).await;
    client.rcpt_to("nobody@example.net", 550).await;
    client.rcpt_to("nobody@example.net", 550).await;
    let reply = client.read_reply().await;
    assert_eq!(reply.code, 421, "{reply}");
    assert!(client.try_read_reply().await.is_none());
    assert!(env.gmail.messages().is_empty());
    env.stop().await;
}

// ------------------------------------------------------------------------- final dot

#[tokio::test]
async fn failed_write_of_the_final_dot_is_not_a_possible_duplicate() {
    let env = Env::start().await;
    // The upstream reads the first part of the message and drops the connection: it never
    // sees the terminator. (The DATA path: with BDAT nothing goes upstream before the
    // first chunk is full.)
    env.gmail.set_behaviour(Behaviour {
        close_during_data: true,
        no_chunking: true,
        ..Behaviour::default()
    });
    let mut client = env.logged_in(SCANNER).await;
    client.mail_from(SUPPORT_EMAIL, 250).await;
    client.rcpt_to("x@example.net", 250).await;
    client.cmd("DATA").await.expect_code(354);
    client.write(&message("never-ended")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.gmail.open_connections() > 0 {
        assert!(Instant::now() < deadline, "the upstream never dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One more line: its write is the first after the upstream left, so it still succeeds
    // and draws the reset that makes the write of the dot fail.
    client.write(b"one more line\r\n").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = client.cmd(".").await;
    assert_eq!(reply.code, 451, "{reply}");
    assert!(!reply.text().contains("duplicate"), "{reply}");
    let metrics = env.relay.metrics.render();
    assert!(
        !metrics.contains("outcome=\"possible_duplicate\"} 1"),
        "{metrics}"
    );
    assert!(env.gmail.messages().is_empty());
    client.cmd("NOOP").await.expect_code(250);
    env.stop().await;
}
