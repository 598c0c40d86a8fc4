//! The relay's dialogue with the provider, byte for byte, as the fake Gmail recorded it:
//! the envelope a client pipelined goes upstream in one flight (RFC 2920), the message as
//! `BDAT <n> LAST` (RFC 3030) when CHUNKING is offered, and the plain lock-step dialogue
//! when the provider (or the `[upstream]` switches) do not allow those. Round trips are
//! counted as the client turns after the XOAUTH2 login.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use smtp_oauth_relay::sandbox::gmail::{Behaviour, Delivered, Turn};

const A: &str = "a@example.net";
const B: &str = "b@example.net";
const NOBODY: &str = "nobody@example.net";

fn recording(behaviour: Behaviour) -> Behaviour {
    Behaviour {
        record_dialogue: true,
        ..behaviour
    }
}

/// The turns of upstream connection `conn` after its `235` (the login), up to QUIT.
fn after_login(env: &Env, conn: usize) -> Vec<Turn> {
    let dialogue = env.gmail.dialogue(conn);
    let login = dialogue
        .iter()
        .position(|turn| matches!(turn, Turn::Server(bytes) if bytes.starts_with(b"235 ")))
        .unwrap_or_else(|| panic!("no login in {}", show(&dialogue)));
    dialogue
        .into_iter()
        .skip(login + 1)
        .take_while(|turn| !matches!(turn, Turn::Client(bytes) if bytes.starts_with(b"QUIT")))
        .collect()
}

/// What the relay sent, turn by turn.
fn client_turns(turns: &[Turn]) -> Vec<Vec<u8>> {
    turns
        .iter()
        .filter_map(|turn| match turn {
            Turn::Client(bytes) => Some(bytes.clone()),
            Turn::Server(_) => None,
        })
        .collect()
}

fn show(turns: &[Turn]) -> String {
    turns
        .iter()
        .map(|turn| match turn {
            Turn::Client(bytes) => format!("C: {}", String::from_utf8_lossy(bytes)),
            Turn::Server(bytes) => format!("S: {}", String::from_utf8_lossy(bytes)),
        })
        .collect::<Vec<_>>()
        .join("")
}

#[track_caller]
fn assert_turns(actual: &[Vec<u8>], expected: &[Vec<u8>]) {
    let text = |turns: &[Vec<u8>]| {
        turns
            .iter()
            .map(|turn| format!("[{}]", String::from_utf8_lossy(turn)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        actual == expected,
        "upstream dialogue differs\n--- expected ---\n{}\n--- actual ---\n{}",
        text(expected),
        text(actual)
    );
}

fn bdat_last(message: &Delivered) -> Vec<u8> {
    let mut bytes = format!("BDAT {} LAST\r\n", message.data.len()).into_bytes();
    bytes.extend_from_slice(&message.data);
    bytes
}

/// The DATA path: the relay's Received header, the client's own wire form (its
/// dot-stuffing passed on as it is), and the dot in the same write.
fn data_then_dot(message: &Delivered, wire: &[u8]) -> Vec<u8> {
    let (received, body) = split_received(&message.data);
    assert_eq!(body, unstuffed(wire));
    let mut bytes = received.into_bytes();
    bytes.extend_from_slice(wire);
    bytes.extend_from_slice(b".\r\n");
    bytes
}

fn lines(lines: &[&str]) -> Vec<u8> {
    lines
        .iter()
        .map(|line| format!("{line}\r\n"))
        .collect::<String>()
        .into_bytes()
}

/// One client session that pipelines MAIL, the RCPTs and DATA in one write (RFC 2920),
/// then the message; returns the replies (envelope ones, then the final one).
async fn pipelined_send(env: &Env, to: &[&str], body: &[u8]) -> Vec<u16> {
    let mut client = env.logged_in(SCANNER).await;
    let mut envelope = format!("MAIL FROM:<{SUPPORT_EMAIL}>\r\n");
    for rcpt in to {
        envelope.push_str(&format!("RCPT TO:<{rcpt}>\r\n"));
    }
    envelope.push_str("DATA\r\n");
    client.write(envelope.as_bytes()).await;
    let mut codes = Vec::new();
    for _ in 0..to.len() + 2 {
        codes.push(client.read_reply().await.code);
    }
    if codes.last() == Some(&354) {
        client.write(body).await;
        client.write(b".\r\n").await;
        codes.push(client.read_reply().await.code);
    }
    client.quit().await;
    codes
}

#[tokio::test]
async fn pipelined_envelope_and_bdat_take_two_round_trips() {
    let env = Env::start().await;
    env.gmail.set_behaviour(recording(Behaviour::default()));
    let codes = pipelined_send(&env, &[A, B], &message("pipelined")).await;
    assert_eq!(codes, [250, 250, 250, 354, 250]);
    let messages = env.gmail.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].rcpt_to, [A, B]);
    let turns = after_login(&env, 1);
    assert_turns(
        &client_turns(&turns),
        &[
            lines(&[
                &format!("MAIL FROM:<{SUPPORT_EMAIL}>"),
                &format!("RCPT TO:<{A}>"),
                &format!("RCPT TO:<{B}>"),
            ]),
            bdat_last(&messages[0]),
        ],
    );
    // The body arrived as the client meant it (the dot-stuffed line un-stuffed once).
    let (_, body) = split_received(&messages[0].data);
    assert_eq!(body, unstuffed(&message("pipelined")));
    env.stop().await;
}

#[tokio::test]
async fn one_refused_recipient_keeps_its_place_among_accepted_ones() {
    let env = Env::start().await;
    env.gmail.set_behaviour(recording(Behaviour {
        reject_recipients: vec![NOBODY.into()],
        ..Behaviour::default()
    }));
    let codes = pipelined_send(&env, &[A, NOBODY, B], &message("one-refused")).await;
    assert_eq!(codes, [250, 250, 550, 250, 354, 250]);
    let messages = env.gmail.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].rcpt_to, [A, B]);
    assert_turns(
        &client_turns(&after_login(&env, 1)),
        &[
            lines(&[
                &format!("MAIL FROM:<{SUPPORT_EMAIL}>"),
                &format!("RCPT TO:<{A}>"),
                &format!("RCPT TO:<{NOBODY}>"),
                &format!("RCPT TO:<{B}>"),
            ]),
            bdat_last(&messages[0]),
        ],
    );
    env.stop().await;
}

#[tokio::test]
async fn data_without_an_accepted_recipient_gets_554_and_sends_no_message() {
    for no_chunking in [false, true] {
        let env = Env::start().await;
        env.gmail.set_behaviour(recording(Behaviour {
            reject_recipients: vec![NOBODY.into()],
            no_chunking,
            ..Behaviour::default()
        }));
        let codes = pipelined_send(&env, &[NOBODY], &message("nobody")).await;
        // RFC 2920 §3.1: a pipelined DATA after all RCPTs failed gets 554.
        assert_eq!(codes, [250, 550, 554], "no_chunking = {no_chunking}");
        assert!(env.gmail.messages().is_empty());
        let sent: Vec<u8> = client_turns(&after_login(&env, 1)).concat();
        let sent = String::from_utf8_lossy(&sent);
        assert!(!sent.contains("BDAT"), "{sent}");
        if no_chunking {
            // DATA went in the flight and was refused upstream; no message followed.
            assert!(sent.ends_with("DATA\r\n"), "{sent}");
        } else {
            assert!(!sent.contains("DATA"), "{sent}");
        }
        env.stop().await;
    }
}

#[tokio::test]
async fn without_chunking_the_envelope_and_data_go_in_one_flight() {
    let env = Env::start().await;
    env.gmail.set_behaviour(recording(Behaviour {
        no_chunking: true,
        ..Behaviour::default()
    }));
    let codes = pipelined_send(&env, &[A], &message("no-chunking")).await;
    assert_eq!(codes, [250, 250, 354, 250]);
    let messages = env.gmail.messages();
    assert_turns(
        &client_turns(&after_login(&env, 1)),
        &[
            lines(&[
                &format!("MAIL FROM:<{SUPPORT_EMAIL}>"),
                &format!("RCPT TO:<{A}>"),
                "DATA",
            ]),
            // The dot leaves with the last octets of the message.
            data_then_dot(&messages[0], &message("no-chunking")),
        ],
    );
    env.stop().await;
}

#[tokio::test]
async fn without_pipelining_the_envelope_goes_in_lock_step() {
    let env = Env::start().await;
    env.gmail.set_behaviour(recording(Behaviour {
        no_pipelining: true,
        ..Behaviour::default()
    }));
    let codes = pipelined_send(&env, &[A, B], &message("lock-step")).await;
    assert_eq!(codes, [250, 250, 250, 354, 250]);
    let messages = env.gmail.messages();
    assert_turns(
        &client_turns(&after_login(&env, 1)),
        &[
            lines(&[&format!("MAIL FROM:<{SUPPORT_EMAIL}>")]),
            lines(&[&format!("RCPT TO:<{A}>")]),
            lines(&[&format!("RCPT TO:<{B}>")]),
            bdat_last(&messages[0]),
        ],
    );
    env.stop().await;
}

#[tokio::test]
async fn switched_off_the_relay_speaks_the_plain_dialogue() {
    let env = Env::with(Options {
        upstream: "pipelining = false\nchunking = false".into(),
        ..Options::default()
    })
    .await;
    env.gmail.set_behaviour(recording(Behaviour::default()));
    let codes = pipelined_send(&env, &[A], &message("plain")).await;
    assert_eq!(codes, [250, 250, 354, 250]);
    let messages = env.gmail.messages();
    assert_turns(
        &client_turns(&after_login(&env, 1)),
        &[
            lines(&[&format!("MAIL FROM:<{SUPPORT_EMAIL}>")]),
            lines(&[&format!("RCPT TO:<{A}>")]),
            lines(&["DATA"]),
            data_then_dot(&messages[0], &message("plain")),
        ],
    );
    env.stop().await;
}

/// A message of `size` octets or more, full of lines that need dot-stuffing, in wire form.
fn dotty_body(size: usize) -> Vec<u8> {
    let mut body = b"Subject: dots\r\n\r\n".to_vec();
    let mut i = 0;
    while body.len() < size {
        body.extend_from_slice(
            match i % 4 {
                0 => "..\r\n".to_string(),
                1 => format!("..line {i} starts with a dot\r\n"),
                2 => format!("...{i}\r\n"),
                _ => format!("plain line {i} of the message\r\n"),
            }
            .as_bytes(),
        );
        i += 1;
    }
    body
}

#[tokio::test]
async fn dot_stuffed_bodies_arrive_unstuffed_through_bdat() {
    let env = Env::start().await;
    env.gmail.set_behaviour(recording(Behaviour::default()));
    let mut client = env.logged_in(SCANNER).await;
    // Small (one BDAT LAST) and large (several chunks, split anywhere).
    for size in [100, 200 * 1024, 1024 * 1024 + 7] {
        let body = dotty_body(size);
        client
            .send_mail(SUPPORT_EMAIL, &[A], &body)
            .await
            .expect_code(250);
        let messages = env.gmail.messages();
        let (_, received) = split_received(&messages.last().unwrap().data);
        assert!(
            received == unstuffed(&body),
            "body of {size} octets changed"
        );
    }
    client.quit().await;
    // Every chunk went as BDAT, nothing as DATA.
    let sent: Vec<u8> = client_turns(&after_login(&env, 1)).concat();
    assert!(!sent.windows(6).any(|w| w == b"DATA\r\n"));
    env.stop().await;
}

#[tokio::test]
async fn a_connection_dropped_between_bdat_chunks_gives_4xx_and_one_delivery_on_retry() {
    let env = Env::start().await;
    env.gmail.set_behaviour(Behaviour {
        close_between_chunks: true,
        ..Behaviour::default()
    });
    let body = dotty_body(300 * 1024);
    let mut client = env.logged_in(SCANNER).await;
    client.mail_from(SUPPORT_EMAIL, 250).await;
    client.rcpt_to(A, 250).await;
    client.cmd("DATA").await.expect_code(354);
    client.write(&body).await;
    let reply = client.cmd(".").await;
    assert_eq!(reply.code, 451, "{reply}");
    assert!(env.gmail.messages().is_empty());
    // The client retries (its queue kept the message): delivered once.
    env.gmail.set_behaviour(Behaviour::default());
    client
        .send_mail(SUPPORT_EMAIL, &[A], &body)
        .await
        .expect_code(250);
    client.quit().await;
    let messages = env.gmail.messages();
    assert_eq!(messages.len(), 1);
    let (_, received) = split_received(&messages[0].data);
    assert!(received == unstuffed(&body));
    env.stop().await;
}

#[tokio::test]
async fn a_long_session_of_1000_messages_reuses_one_connection_without_rset() {
    let env = Env::start().await;
    env.gmail.set_behaviour(recording(Behaviour::default()));
    let mut client = env.logged_in(SCANNER).await;
    for i in 0..1000 {
        let envelope = format!("MAIL FROM:<{SUPPORT_EMAIL}>\r\nRCPT TO:<{A}>\r\nDATA\r\n");
        client.write(envelope.as_bytes()).await;
        for code in [250, 250, 354] {
            client.read_reply().await.expect_code(code);
        }
        client.write(&message(&format!("long-{i}"))).await;
        let reply = client.cmd(".").await;
        assert_eq!(reply.code, 250, "message {i}: {reply}");
    }
    client.quit().await;
    assert_eq!(env.gmail.messages().len(), 1000);
    // One upstream connection carried them all, two round trips each, and no RSET: a
    // transaction that ended with the reply to BDAT LAST needs none.
    assert_eq!(env.gmail.connections(), 1);
    let turns = client_turns(&after_login(&env, 1));
    assert_eq!(turns.len(), 2000);
    assert!(!turns.iter().any(|turn| turn.starts_with(b"RSET")));
    env.stop().await;
}

#[tokio::test]
async fn pipelined_bdat_session_logs_no_secret() {
    let (captured, _guard) = capture_logs_at(tracing::Level::TRACE);
    let env = Env::start().await;
    let codes = pipelined_send(&env, &[A, B], &message("secret-free")).await;
    assert_eq!(codes, [250, 250, 250, 354, 250]);
    let logs = captured.text();
    assert!(
        logs.contains("BDAT"),
        "trace logs should show the BDAT path"
    );
    // The password, the asset's secrets, access tokens (the fake issues them like Google,
    // "ya29.") and XOAUTH2 responses (base64 of "user=").
    for secret in [
        SCANNER.1,
        SUPPORT_SECRET,
        SUPPORT_REFRESH,
        "ya29.",
        "dXNlcj",
    ] {
        assert!(!logs.contains(secret), "secret {secret:?} reached the log");
    }
    env.stop().await;
}

#[tokio::test]
async fn pipelined_recipients_beyond_the_limit_are_refused_in_their_place() {
    let env = Env::with(Options {
        limits: "max_recipients = 2".into(),
        ..Options::default()
    })
    .await;
    env.gmail.set_behaviour(recording(Behaviour::default()));
    let codes = pipelined_send(&env, &[A, B, NOBODY], &message("limit")).await;
    // The third RCPT is refused by the relay's own limit, and never goes upstream.
    assert_eq!(codes, [250, 250, 250, 452, 354, 250]);
    let messages = env.gmail.messages();
    assert_eq!(messages[0].rcpt_to, [A, B]);
    assert_turns(
        &client_turns(&after_login(&env, 1)),
        &[
            lines(&[
                &format!("MAIL FROM:<{SUPPORT_EMAIL}>"),
                &format!("RCPT TO:<{A}>"),
                &format!("RCPT TO:<{B}>"),
            ]),
            bdat_last(&messages[0]),
        ],
    );
    env.stop().await;
}
