//! Fault matrix: the upstream, the token endpoint and the client misbehave one at a time.
//!
//! Every case checks four things: the client gets the right reply (class and enhanced
//! code); nothing is delivered twice or partially; nothing the upstream did not accept is
//! acknowledged with 2xx; and the relay keeps serving: afterwards a fresh client sends a
//! normal message. Faults that break the `support` asset's configuration (upstream address,
//! CA, client secret, token URL) leave `sales` intact, and the fresh client sends through it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use smtp_oauth_relay::sandbox::gmail::{Behaviour, FakeGmail, FakeGmailConfig};
use smtp_oauth_relay::sandbox::pki::TestPki;
use smtp_oauth_relay::smtp::reply::{parse_reply, Reply, ReplyParse};

// ------------------------------------------------------------------------------ helpers

fn enhanced(reply: &Reply) -> String {
    reply.enhanced.map(|c| c.to_string()).unwrap_or_default()
}

#[track_caller]
fn expect(reply: &Reply, code: u16, enhanced_code: &str) {
    assert_eq!(reply.code, code, "unexpected reply: {reply}");
    assert_eq!(enhanced(reply), enhanced_code, "unexpected reply: {reply}");
}

#[track_caller]
fn expect_class(reply: &Reply, class: u16) {
    assert_eq!(reply.code / 100, class, "unexpected reply: {reply}");
    assert_eq!(
        reply.enhanced.map(|c| u16::from(c.class)),
        Some(class),
        "enhanced code missing or of another class: {reply}"
    );
}

/// What the upstream holds is exactly one complete copy of each message named, in order:
/// nothing twice, nothing partial, nothing else.
#[track_caller]
fn assert_mailbox(env: &Env, subjects: &[&str]) {
    let delivered = env.gmail.messages();
    assert_eq!(
        delivered.len(),
        subjects.len(),
        "delivered {} messages, expected {subjects:?}",
        delivered.len()
    );
    for (message, subject) in delivered.iter().zip(subjects) {
        let (_, rest) = split_received(&message.data);
        assert!(
            rest == unstuffed(&message_for(subject)),
            "message {subject:?} arrived altered or partial"
        );
    }
}

fn message_for(subject: &str) -> Vec<u8> {
    message(subject)
}

/// A new client sends a normal message through `user`'s asset and it arrives once.
async fn fresh_client_sends(env: &Env, user: (&str, &str), from: &str, subject: &str) {
    let reply = env.send_as(user, from, "fresh@example.net", subject).await;
    expect(&reply, 250, "2.0.0");
}

/// MAIL FROM for the support asset, as SCANNER.
async fn support_mail_from(env: &Env) -> (Client, Reply) {
    let mut client = env.logged_in(SCANNER).await;
    let reply = client.cmd(&format!("MAIL FROM:<{SUPPORT_EMAIL}>")).await;
    (client, reply)
}

/// A loopback address nobody listens on.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Deterministic bytes (xorshift64*), so a failing junk run can be replayed.
struct Junk(u64);

impl Junk {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }
}

/// Every reply in `bytes`, until the first incomplete or malformed one.
fn replies_in(mut bytes: &[u8]) -> Vec<Reply> {
    let mut replies = Vec::new();
    while let Ok(ReplyParse::Complete { reply, consumed }) = parse_reply(bytes, 4096, 100) {
        replies.push(reply);
        bytes = &bytes[consumed..];
    }
    replies
}

/// A token endpoint that answers every request with `200 OK`, `content_type` and `body`.
async fn bogus_token_endpoint(content_type: &'static str, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the request head (and whatever body came with it), then answer.
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}/token")
}

// ------------------------------------------------------------------------ upstream faults

#[tokio::test]
async fn upstream_refusing_connections_gives_451_4_4_1() {
    let env = Env::with(Options {
        support_upstream: Some(closed_port().to_string()),
        ..Options::default()
    })
    .await;
    let (mut client, reply) = support_mail_from(&env).await;
    expect(&reply, 451, "4.4.1");
    // The session goes on; the client may retry later.
    client.cmd("NOOP").await.expect_code(250);
    assert_eq!(env.gmail.connections(), 0);
    assert_mailbox(&env, &[]);
    fresh_client_sends(&env, APP, SALES_EMAIL, "after-refused").await;
    assert_mailbox(&env, &["after-refused"]);
    env.stop().await;
}

#[tokio::test]
async fn upstream_greeting_with_421_gives_4xx_at_mail() {
    let env = Env::start().await;
    env.gmail.set_behaviour(Behaviour {
        greeting: Some("421 4.7.0 Try again later, closing connection.".into()),
        ..Behaviour::default()
    });
    let (mut client, reply) = support_mail_from(&env).await;
    expect(&reply, 451, "4.4.1");
    assert_eq!(env.gmail.auth_attempts(), 0);
    assert_mailbox(&env, &[]);
    // The upstream recovers: the same session and a fresh one both get through.
    env.gmail.set_behaviour(Behaviour::default());
    let reply = client
        .send_mail(
            SUPPORT_EMAIL,
            &["x@example.net"],
            &message_for("same-session"),
        )
        .await;
    expect(&reply, 250, "2.0.0");
    fresh_client_sends(&env, SCANNER, SUPPORT_EMAIL, "after-421").await;
    assert_mailbox(&env, &["same-session", "after-421"]);
    env.stop().await;
}

#[tokio::test]
async fn upstream_certificate_from_an_unknown_ca_gives_454_4_7_5_and_no_credentials() {
    let other = TestPki::generate(&["localhost", "127.0.0.1"]).unwrap();
    let env = Env::with(Options {
        support_upstream_ca_pem: Some(other.ca_cert_pem.clone()),
        ..Options::default()
    })
    .await;
    let (mut client, reply) = support_mail_from(&env).await;
    expect(&reply, 454, "4.7.5");
    assert_eq!(env.gmail.auth_attempts(), 0, "credentials sent without TLS");
    client.cmd("NOOP").await.expect_code(250);
    assert_mailbox(&env, &[]);
    fresh_client_sends(&env, APP, SALES_EMAIL, "after-wrong-ca").await;
    assert_mailbox(&env, &["after-wrong-ca"]);
    env.stop().await;
}

#[tokio::test]
async fn upstream_certificate_for_another_name_gives_454_4_7_5_and_no_credentials() {
    // A second Gmail whose certificate (from a CA the asset trusts) names another host.
    let other_pki = TestPki::generate(&["other.example"]).unwrap();
    let shutdown = CancellationToken::new();
    let _stop_other = shutdown.clone().drop_guard();
    let other = FakeGmail::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        FakeGmailConfig::new(
            other_pki.server_config().unwrap(),
            smtp_oauth_relay::sandbox::token_issuer::AccessTokens::new(),
        ),
        shutdown,
    )
    .await
    .unwrap();
    let env = Env::with(Options {
        support_upstream: Some(other.addr().to_string()),
        support_upstream_ca_pem: Some(other_pki.ca_cert_pem.clone()),
        ..Options::default()
    })
    .await;
    let (mut client, reply) = support_mail_from(&env).await;
    expect(&reply, 454, "4.7.5");
    assert_eq!(other.connections(), 1, "the TLS attempt did not happen");
    assert_eq!(
        other.auth_attempts(),
        0,
        "credentials sent to the wrong host"
    );
    assert!(other.messages().is_empty());
    client.cmd("NOOP").await.expect_code(250);
    assert_mailbox(&env, &[]);
    fresh_client_sends(&env, APP, SALES_EMAIL, "after-wrong-name").await;
    assert_mailbox(&env, &["after-wrong-name"]);
    env.stop().await;
}

#[tokio::test]
async fn upstream_closing_during_auth_gives_4xx() {
    let env = Env::start().await;
    env.gmail.set_behaviour(Behaviour {
        close_during_auth: true,
        ..Behaviour::default()
    });
    let (mut client, reply) = support_mail_from(&env).await;
    expect_class(&reply, 4);
    assert!(env.gmail.auth_attempts() >= 1);
    client.cmd("NOOP").await.expect_code(250);
    assert_mailbox(&env, &[]);
    env.gmail.set_behaviour(Behaviour::default());
    fresh_client_sends(&env, SCANNER, SUPPORT_EMAIL, "after-auth-close").await;
    assert_mailbox(&env, &["after-auth-close"]);
    env.stop().await;
}

#[tokio::test]
async fn upstream_stalling_mid_data_times_out_with_4xx_and_nothing_delivered() {
    let env = Env::with(Options {
        timeouts: "upstream_command_secs = 2\nupstream_final_reply_secs = 2".into(),
        ..Options::default()
    })
    .await;
    env.gmail.set_behaviour(Behaviour {
        stall_during_data: true,
        ..Behaviour::default()
    });
    let mut client = env.logged_in(SCANNER).await;
    client.mail_from(SUPPORT_EMAIL, 250).await;
    client.rcpt_to("x@example.net", 250).await;
    client.cmd("DATA").await.expect_code(354);
    // More than loopback socket buffers hold, so the relay's writes block on the stalled
    // upstream (if they all fit, the wait for the final reply times out instead).
    let mut body = b"Subject: stalled\r\n\r\n".to_vec();
    while body.len() < 16 * 1024 * 1024 {
        body.extend_from_slice(b"a line of a message the upstream stops reading\r\n");
    }
    let started = Instant::now();
    client.write(&body).await;
    client.write(b".\r\n").await;
    let reply = client.read_reply().await;
    expect(&reply, 451, "4.4.2");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "upstream timeout not applied: {:?}",
        started.elapsed()
    );
    assert_mailbox(&env, &[]);
    // The session goes on, and the next message takes a new upstream connection.
    client.cmd("NOOP").await.expect_code(250);
    env.gmail.set_behaviour(Behaviour::default());
    let reply = client
        .send_mail(
            SUPPORT_EMAIL,
            &["x@example.net"],
            &message_for("same-session"),
        )
        .await;
    expect(&reply, 250, "2.0.0");
    fresh_client_sends(&env, SCANNER, SUPPORT_EMAIL, "after-stall").await;
    assert_mailbox(&env, &["same-session", "after-stall"]);
    env.stop().await;
}

#[tokio::test]
async fn upstream_4xx_after_data_is_passed_through() {
    let env = Env::start().await;
    env.gmail.set_behaviour(Behaviour {
        data_reply: Some("451 4.3.0 Mail server temporarily rejected message.".into()),
        ..Behaviour::default()
    });
    let mut client = env.logged_in(SCANNER).await;
    let reply = client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message_for("deferred"))
        .await;
    expect(&reply, 451, "4.3.0");
    assert_eq!(reply.text(), "Mail server temporarily rejected message.");
    assert_mailbox(&env, &[]);
    // The client retries in the same session once the upstream accepts again.
    env.gmail.set_behaviour(Behaviour::default());
    let reply = client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message_for("deferred"))
        .await;
    expect(&reply, 250, "2.0.0");
    fresh_client_sends(&env, SCANNER, SUPPORT_EMAIL, "after-451").await;
    assert_mailbox(&env, &["deferred", "after-451"]);
    env.stop().await;
}

#[tokio::test]
async fn one_of_three_pipelined_recipients_refused_message_goes_to_two() {
    // Unlike relay.rs's test, the refused recipient is the first and everything up to DATA
    // arrives in one packet.
    let env = Env::start().await;
    env.gmail.set_behaviour(Behaviour {
        reject_recipients: vec!["gone@example.net".into()],
        ..Behaviour::default()
    });
    let mut client = env.logged_in(SCANNER).await;
    client
        .write(
            format!(
                "MAIL FROM:<{SUPPORT_EMAIL}>\r\nRCPT TO:<gone@example.net>\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
            )
            .as_bytes(),
        )
        .await;
    expect(&client.read_reply().await, 250, "2.1.0");
    expect(&client.read_reply().await, 550, "5.1.1");
    expect(&client.read_reply().await, 250, "2.1.5");
    expect(&client.read_reply().await, 250, "2.1.5");
    client.read_reply().await.expect_code(354);
    client.write(&message_for("two-of-three")).await;
    client.write(b".\r\n").await;
    expect(&client.read_reply().await, 250, "2.0.0");
    assert_mailbox(&env, &["two-of-three"]);
    assert_eq!(
        env.gmail.messages()[0].rcpt_to,
        vec!["a@example.net", "b@example.net"]
    );
    fresh_client_sends(&env, SCANNER, SUPPORT_EMAIL, "after-rcpt").await;
    assert_mailbox(&env, &["two-of-three", "after-rcpt"]);
    env.stop().await;
}

// ------------------------------------------------------------------ token endpoint faults

#[tokio::test]
async fn invalid_client_gives_454_and_check_says_to_check_the_client_credentials() {
    let env = Env::with(Options {
        support_client_secret: Some("not-the-client-secret".into()),
        ..Options::default()
    })
    .await;
    let (mut client, reply) = support_mail_from(&env).await;
    expect(&reply, 454, "4.7.0");
    assert_eq!(env.gmail.connections(), 0);
    client.cmd("NOOP").await.expect_code(250);

    // What `check` prints for the asset (the same hint goes to the log).
    let asset = env.relay.config.asset("support").unwrap();
    let result =
        smtp_oauth_relay::cli::check::check_asset(&env.relay.config, &env.relay.tokens, asset)
            .await;
    let mut out = Vec::new();
    assert!(!smtp_oauth_relay::cli::check::report(&[result], &mut out));
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("client_id/client_secret"), "{out}");
    assert!(
        !out.contains("not-the-client-secret"),
        "secret printed: {out}"
    );

    assert_mailbox(&env, &[]);
    fresh_client_sends(&env, APP, SALES_EMAIL, "after-invalid-client").await;
    assert_mailbox(&env, &["after-invalid-client"]);
    env.stop().await;
}

#[tokio::test]
async fn token_endpoint_answering_200_with_garbage_gives_454() {
    for (content_type, body) in [
        ("application/json", "not json"),
        (
            "text/html; charset=utf-8",
            "<html><body>Sign in to continue</body></html>",
        ),
        ("application/json", "{\"token_type\":\"Bearer\"}"),
    ] {
        let env = Env::with(Options {
            support_token_url: Some(bogus_token_endpoint(content_type, body).await),
            ..Options::default()
        })
        .await;
        let (mut client, reply) = support_mail_from(&env).await;
        assert_eq!(reply.code, 454, "{content_type} {body:?}: {reply}");
        expect_class(&reply, 4);
        assert_eq!(env.gmail.connections(), 0);
        client.cmd("NOOP").await.expect_code(250);
        assert_mailbox(&env, &[]);
        fresh_client_sends(&env, APP, SALES_EMAIL, "after-garbage-token").await;
        assert_mailbox(&env, &["after-garbage-token"]);
        env.stop().await;
    }
}

// -------------------------------------------------------------------------- client faults

#[tokio::test]
async fn client_disconnecting_mid_data_delivers_nothing_and_drops_the_upstream() {
    let env = Env::start().await;
    let mut client = env.logged_in(SCANNER).await;
    client.mail_from(SUPPORT_EMAIL, 250).await;
    client.rcpt_to("x@example.net", 250).await;
    client.cmd("DATA").await.expect_code(354);
    let whole = message_for("cut-off");
    client.write(&whole[..whole.len() / 2]).await;
    assert_eq!(env.gmail.open_connections(), 1);
    drop(client);

    // The relay drops its upstream connection without a terminator.
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.gmail.open_connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "upstream connection still open after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_mailbox(&env, &[]);
    fresh_client_sends(&env, SCANNER, SUPPORT_EMAIL, "after-cut-off").await;
    assert_mailbox(&env, &["after-cut-off"]);
    env.stop().await;
}

#[tokio::test]
async fn two_megabyte_command_line_gets_500_5_5_6() {
    let env = Env::start().await;
    let mut client = env.logged_in(SCANNER).await;
    let mut line = vec![b'A'; 2 * 1024 * 1024];
    line.extend_from_slice(b"\r\n");
    client.write(&line).await;
    expect(&client.read_reply().await, 500, "5.5.6");
    // The session survives (or, if the relay chose to hang up, says so first).
    client.write(b"NOOP\r\n").await;
    match client.try_read_reply().await {
        Some(reply) if reply.code == 250 => {}
        Some(reply) => {
            expect_class(&reply, 4);
            assert!(client.try_read_reply().await.is_none());
        }
        None => panic!("connection closed without a reply"),
    }
    assert_mailbox(&env, &[]);
    fresh_client_sends(&env, SCANNER, SUPPORT_EMAIL, "after-long-command").await;
    assert_mailbox(&env, &["after-long-command"]);
    env.stop().await;
}

#[tokio::test]
async fn two_megabyte_line_in_data_refuses_the_message() {
    let env = Env::start().await;
    let mut client = env.logged_in(SCANNER).await;
    client.mail_from(SUPPORT_EMAIL, 250).await;
    client.rcpt_to("x@example.net", 250).await;
    client.cmd("DATA").await.expect_code(354);
    let mut body = b"Subject: long line\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'x', 2 * 1024 * 1024));
    body.extend_from_slice(b"\r\n.\r\n");
    client.write(&body).await;
    let reply = client.read_reply().await;
    expect(&reply, 500, "5.5.2");
    assert_mailbox(&env, &[]);
    client.cmd("NOOP").await.expect_code(250);
    let reply = client
        .send_mail(
            SUPPORT_EMAIL,
            &["x@example.net"],
            &message_for("same-session"),
        )
        .await;
    expect(&reply, 250, "2.0.0");
    fresh_client_sends(&env, SCANNER, SUPPORT_EMAIL, "after-long-data-line").await;
    assert_mailbox(&env, &["same-session", "after-long-data-line"]);
    env.stop().await;
}

#[tokio::test]
async fn thousand_pipelined_noops_get_thousand_replies_in_order() {
    // About pipelining, not the junk-command limit (100 by default).
    let env = Env::with(Options {
        limits: "max_junk_commands = 2000".into(),
        ..Options::default()
    })
    .await;
    let mut client = env.client().await;
    let mut batch = b"EHLO client.test\r\n".to_vec();
    for _ in 0..1000 {
        batch.extend_from_slice(b"NOOP\r\n");
    }
    batch.extend_from_slice(b"QUIT\r\n");
    client.write(&batch).await;
    client.read_reply().await.expect_code(250);
    for i in 0..1000 {
        let reply = client.read_reply().await;
        assert_eq!(reply.code, 250, "reply {i}: {reply}");
        assert_eq!(reply.text(), "OK", "reply {i}: {reply}");
    }
    client.read_reply().await.expect_code(221);
    assert!(client.try_read_reply().await.is_none());
    assert_mailbox(&env, &[]);
    fresh_client_sends(&env, SCANNER, SUPPORT_EMAIL, "after-noops").await;
    assert_mailbox(&env, &["after-noops"]);
    env.stop().await;
}

/// A relayhost client that keeps its connection for thousands of messages is never cut
/// with 421: `max_transactions` is unlimited (0) by default, like Postfix's smtpd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_in_one_session_get_no_421() {
    const MESSAGES: usize = 1000;
    let env = Env::start().await;
    let mut client = env.logged_in(SCANNER).await;
    let body = message_for("long-session");
    let mut message = body.clone();
    message.extend_from_slice(b".\r\n");
    let envelope = format!("MAIL FROM:<{SUPPORT_EMAIL}>\r\nRCPT TO:<x@example.net>\r\nDATA\r\n");
    let started = Instant::now();
    // Bounded: well under a second here; a relay that stalls fails instead of hanging.
    tokio::time::timeout(Duration::from_secs(60), async {
        for i in 0..MESSAGES {
            // MAIL, RCPT and DATA pipelined in one write (RFC 2920), then the message.
            client.write(envelope.as_bytes()).await;
            for expected in [250, 250, 354] {
                let reply = client.read_reply().await;
                assert_eq!(reply.code, expected, "message {i}: {reply}");
            }
            // One write: a separate small write for the terminator would wait out delayed
            // ACKs (Nagle) on every message.
            client.write(&message).await;
            let reply = client.read_reply().await;
            expect(&reply, 250, "2.0.0");
        }
        client.cmd("QUIT").await.expect_code(221);
    })
    .await
    .expect("1000 messages in one session took over a minute");
    eprintln!(
        "{MESSAGES} messages in one session: {:?}",
        started.elapsed()
    );
    let delivered = env.gmail.messages();
    assert_eq!(delivered.len(), MESSAGES);
    assert!(delivered
        .iter()
        .all(|m| split_received(&m.data).1 == unstuffed(&body)));
    env.stop().await;
}

/// An operator who wants a per-connection limit still gets it.
#[tokio::test]
async fn a_configured_max_transactions_closes_the_session_with_421() {
    let env = Env::with(Options {
        limits: "max_transactions = 2".into(),
        ..Options::default()
    })
    .await;
    let mut client = env.logged_in(SCANNER).await;
    for subject in ["first", "second"] {
        let reply = client
            .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message_for(subject))
            .await;
        expect(&reply, 250, "2.0.0");
    }
    let reply = client.cmd(&format!("MAIL FROM:<{SUPPORT_EMAIL}>")).await;
    expect(&reply, 421, "4.7.0");
    assert!(
        client.try_read_reply().await.is_none(),
        "closed after the 421"
    );
    assert_mailbox(&env, &["first", "second"]);
    fresh_client_sends(&env, SCANNER, SUPPORT_EMAIL, "after-limit").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_connections_over_the_limit_get_421_and_slots_come_back() {
    // 2000 connections (a second or two here) against a limit of 50, also per client
    // address, since every connection comes from 127.0.0.1.
    const LIMIT: usize = 50;
    const CONNECTIONS: usize = 2000;
    let env = Env::with(Options {
        limits: format!("max_connections = {LIMIT}\nmax_connections_per_ip = {LIMIT}"),
        ..Options::default()
    })
    .await;
    let mut held = Vec::new();
    let mut refused = 0;
    let mut tasks = tokio::task::JoinSet::new();
    for batch in 0..CONNECTIONS / 100 {
        for _ in 0..100 {
            let addr = env.relay_addr;
            tasks.spawn(async move { Client::connect(addr).await });
        }
        while let Some(client) = tasks.join_next().await {
            let client = client.unwrap();
            match client.greeting.code {
                220 => held.push(client),
                421 => {
                    expect(&client.greeting, 421, "4.7.0");
                    refused += 1;
                }
                _ => panic!("batch {batch}: unexpected greeting {}", client.greeting),
            }
        }
    }
    assert_eq!(held.len(), LIMIT);
    assert_eq!(refused, CONNECTIONS - LIMIT);
    // The relay still serves the ones it accepted.
    held[0].cmd("NOOP").await.expect_code(250);
    drop(held);

    // Once those are closed, new clients are served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let client = Client::connect(env.relay_addr).await;
        if client.greeting.code == 220 {
            client.quit().await;
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_mailbox(&env, &[]);
    fresh_client_sends(&env, SCANNER, SUPPORT_EMAIL, "after-flood").await;
    assert_mailbox(&env, &["after-flood"]);
    env.stop().await;
}

#[tokio::test]
async fn binary_junk_gets_only_error_replies() {
    let env = Env::start().await;
    for seed in 1..=12u64 {
        let mut junk = Junk(0x9E37_79B9_7F4A_7C15 ^ seed);
        let mut input = Vec::new();
        // Half the sessions are inside an AUTH exchange when the junk starts.
        let prefix_replies = if seed % 2 == 0 {
            input.extend_from_slice(b"EHLO junk.test\r\nAUTH PLAIN\r\n");
            2
        } else {
            0
        };
        let mut bytes = junk.bytes(64 * 1024);
        // Make sure of NUL, 0xFF and line ends, whatever the generator gave.
        bytes.extend_from_slice(b"\0\xff\xfe\r\n\0\r\n\xff\n");
        input.extend_from_slice(&bytes);

        let stream = TcpStream::connect(env.relay_addr).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let read_all = tokio::spawn(async move {
            let mut received = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut received))
                    .await;
            received
        });
        // The relay may hang up (max_errors) before it has read everything.
        let _ = writer.write_all(&input).await;
        let _ = writer.shutdown().await;
        let received = read_all.await.unwrap();
        let replies = replies_in(&received);
        assert!(
            replies.len() > prefix_replies + 1,
            "seed {seed}: no replies to the junk: {:?}",
            String::from_utf8_lossy(&received)
        );
        assert_eq!(replies[0].code, 220, "seed {seed}");
        for reply in &replies[1 + prefix_replies..] {
            assert!(
                matches!(reply.code / 100, 4 | 5),
                "seed {seed}: junk got {reply}"
            );
        }
    }
    assert_mailbox(&env, &[]);
    fresh_client_sends(&env, SCANNER, SUPPORT_EMAIL, "after-junk").await;
    assert_mailbox(&env, &["after-junk"]);
    env.stop().await;
}

#[tokio::test]
async fn fifty_wrong_passwords_then_the_right_one_still_works() {
    // max_errors ends each session after 20 failures; lockout (per address and per user)
    // is set well above 50 here and the failure delay small: this test is about the
    // sessions surviving, not about the lockout.
    const MAX_ERRORS: usize = 20;
    let env = Env::with(Options {
        limits: format!(
            "max_errors = {MAX_ERRORS}\nauth_max_failures = 1000\nauth_failure_delay_ms = 10"
        ),
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let mut failures = 0;
    while failures < 50 {
        let mut client = env.client().await;
        client.ehlo().await;
        let mut in_session = 0;
        while failures < 50 && in_session < MAX_ERRORS {
            let reply = client.auth_plain(SCANNER.0, "wrong-password").await;
            expect(&reply, 535, "5.7.8");
            failures += 1;
            in_session += 1;
        }
        if in_session == MAX_ERRORS {
            expect(&client.read_reply().await, 421, "4.7.0");
            assert!(client.try_read_reply().await.is_none());
        } else {
            // Below max_errors the session is still open, and the right password works in it.
            client
                .auth_plain(SCANNER.0, SCANNER.1)
                .await
                .expect_code(235);
            client.quit().await;
        }
    }
    fresh_client_sends(&env, SCANNER, SUPPORT_EMAIL, "after-wrong-passwords").await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_mailbox(&env, &["after-wrong-passwords"]);
    env.stop().await;
}
