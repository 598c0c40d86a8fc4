//! Abuse resistance: plaintext AUTH policy, trusted networks, per-address limits, login
//! throttling, the header-From policy and draining on shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::*;

#[tokio::test]
async fn plaintext_auth_is_refused_from_the_network_but_allowed_on_loopback() {
    let env = Env::start().await;
    let mut remote = MemoryClient::start(&env, "192.0.2.10:40000").await;
    assert_eq!(remote.greeting.code, 220);
    let ehlo = remote.cmd("EHLO remote").await.expect_code(250);
    assert!(
        !ehlo.lines.iter().any(|l| l.starts_with("AUTH")),
        "{ehlo:?}"
    );
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    let reply = remote
        .auth_plain(SCANNER.0, SCANNER.1)
        .await
        .expect_code(538);
    assert_eq!(reply.enhanced.map(|c| c.to_string()), Some("5.7.11".into()));

    let mut local = MemoryClient::start(&env, "127.0.0.1:40001").await;
    let ehlo = local.cmd("EHLO local").await.expect_code(250);
    assert!(
        ehlo.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"),
        "{ehlo:?}"
    );
    local
        .auth_plain(SCANNER.0, SCANNER.1)
        .await
        .expect_code(235);
    env.stop().await;
}

#[tokio::test]
async fn plaintext_auth_can_be_allowed_explicitly() {
    let env = Env::with(Options {
        server: "allow_plaintext_auth = true".into(),
        ..Options::default()
    })
    .await;
    let mut remote = MemoryClient::start(&env, "192.0.2.10:40000").await;
    remote.cmd("EHLO remote").await.expect_code(250);
    remote
        .auth_plain(SCANNER.0, SCANNER.1)
        .await
        .expect_code(235);
    env.stop().await;
}

#[tokio::test]
async fn trusted_network_sends_without_auth_through_its_assets_only() {
    let env = Env::with(Options {
        server: "trusted_networks = [\"192.0.2.0/24\"]\ntrusted_assets = [\"support\"]".into(),
        ..Options::default()
    })
    .await;
    let mut trusted = MemoryClient::start(&env, "192.0.2.55:40000").await;
    trusted.cmd("EHLO printer").await.expect_code(250);
    trusted.mail_from(SUPPORT_EMAIL, 250).await;
    trusted.cmd("RSET").await.expect_code(250);
    trusted.mail_from(SALES_EMAIL, 553).await;

    let mut outsider = MemoryClient::start(&env, "198.51.100.7:40000").await;
    outsider.cmd("EHLO elsewhere").await.expect_code(250);
    outsider.mail_from(SUPPORT_EMAIL, 530).await;
    env.stop().await;
}

#[tokio::test]
async fn per_address_connection_limit() {
    let env = Env::with(Options {
        limits: "max_connections_per_ip = 2".into(),
        ..Options::default()
    })
    .await;
    let first = env.client().await;
    let second = env.client().await;
    assert_eq!(first.greeting.code, 220);
    assert_eq!(second.greeting.code, 220);
    let third = env.client().await;
    assert_eq!(third.greeting.code, 421, "{}", third.greeting);
    first.quit().await;
    // A slot is free again once a connection ends.
    let mut fourth = None;
    for _ in 0..50 {
        let client = env.client().await;
        if client.greeting.code == 220 {
            fourth = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fourth.is_some(), "the freed slot was never reused");
    env.stop().await;
}

#[tokio::test]
async fn failed_logins_slow_down_then_lock_out() {
    let env = Env::with(Options {
        limits: "auth_max_failures = 3\nauth_lockout_secs = 60\nauth_failure_delay_ms = 200".into(),
        ..Options::default()
    })
    .await;
    let mut client = env.client().await;
    client.ehlo().await;
    let started = std::time::Instant::now();
    for _ in 0..3 {
        client.auth_plain(SCANNER.0, "wrong").await.expect_code(535);
    }
    // 200 + 400 + 600 ms of growing delay.
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    // Locked out now: even the right password is refused, temporarily.
    let reply = client
        .auth_plain(SCANNER.0, SCANNER.1)
        .await
        .expect_code(454);
    assert!(reply.text().contains("Too many failed logins"), "{reply}");
    // Another user from the same address is locked out too (the address is counted).
    let mut other = env.client().await;
    other.ehlo().await;
    other.auth_plain(APP.0, APP.1).await.expect_code(454);
    env.stop().await;
}

/// Failing as a user name from one address must not lock that user out elsewhere: the
/// right password from an address with no failures of its own still logs in.
#[tokio::test]
async fn an_attacker_cannot_lock_a_user_out_from_another_address() {
    let env = Env::with(Options {
        limits: "auth_max_failures = 3\nauth_lockout_secs = 600\nauth_failure_delay_ms = 0".into(),
        ..Options::default()
    })
    .await;
    let attacker_ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut attacker = Client::connect_from(attacker_ip, env.relay_addr).await;
    attacker.ehlo().await;
    for _ in 0..3 {
        attacker
            .auth_plain(SCANNER.0, "guess")
            .await
            .expect_code(535);
    }
    // Locked out at the attacker's address, for any user and even the right password.
    attacker
        .auth_plain(SCANNER.0, "guess")
        .await
        .expect_code(454);
    attacker
        .auth_plain(SCANNER.0, SCANNER.1)
        .await
        .expect_code(454);
    let mut again = Client::connect_from(attacker_ip, env.relay_addr).await;
    again.ehlo().await;
    again.auth_plain(APP.0, APP.1).await.expect_code(454);

    // The real scanner, at 127.0.0.1 with no failures, logs in.
    let mut legitimate = env.client().await;
    legitimate.ehlo().await;
    legitimate
        .auth_plain(SCANNER.0, SCANNER.1)
        .await
        .expect_code(235);
    env.stop().await;
}

#[tokio::test]
async fn header_from_enforce_refuses_foreign_from_and_sends_nothing() {
    let env = Env::with(Options {
        server: "header_from = \"enforce\"".into(),
        ..Options::default()
    })
    .await;
    let mut client = env.logged_in(SCANNER).await;
    let forged =
        b"From: CEO <ceo@bank.example>\r\nTo: x@example.net\r\nSubject: pay\r\n\r\nbody\r\n";
    let reply = client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], forged)
        .await
        .expect_code(550);
    assert!(reply.text().contains("ceo@bank.example"), "{reply}");
    assert!(env.gmail.messages().is_empty());
    // No From: address to check is refused too under enforce.
    let reply = client
        .send_mail(
            SUPPORT_EMAIL,
            &["x@example.net"],
            b"Subject: no from\r\n\r\nbody\r\n",
        )
        .await
        .expect_code(550);
    assert!(reply.text().contains("no From"), "{reply}");
    // From: hidden behind a huge header block cannot slip through.
    let mut padded = Vec::new();
    for i in 0..1200 {
        padded.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "p".repeat(90)).as_bytes());
    }
    padded.extend_from_slice(b"From: ceo@bank.example\r\n\r\nbody\r\n");
    let reply = client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &padded)
        .await;
    // Either the From: was found and refused, or the block was too big to check.
    assert!(matches!(reply.code, 550 | 552), "{reply}");
    assert!(env.gmail.messages().is_empty());
    // A From the asset serves passes, byte for byte.
    let good = message("from-ok");
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &good)
        .await
        .expect_code(250);
    let (_, rest) = split_received(&env.gmail.messages()[0].data);
    assert_eq!(rest, unstuffed(&good));
    env.stop().await;
}

#[tokio::test]
async fn header_from_log_only_lets_the_message_through() {
    let env = Env::with(Options {
        server: "header_from = \"log\"".into(),
        ..Options::default()
    })
    .await;
    let mut client = env.logged_in(SCANNER).await;
    let forged = b"From: someone@elsewhere.example\r\nSubject: hi\r\n\r\nbody\r\n";
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], forged)
        .await
        .expect_code(250);
    assert_eq!(env.gmail.messages().len(), 1);
    env.stop().await;
}

#[tokio::test]
async fn shutdown_drains_transactions_and_refuses_new_connections() {
    let env = Env::start().await;
    let mut client = env.logged_in(SCANNER).await;
    client.mail_from(SUPPORT_EMAIL, 250).await;
    client.rcpt_to("x@example.net", 250).await;
    let addr = env.relay_addr;
    let stopping = tokio::spawn(env.stop_and_keep_fakes());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are told to come back later.
    let late = Client::connect(addr).await;
    assert_eq!(late.greeting.code, 421, "{}", late.greeting);
    // The transaction in flight completes and is delivered.
    client.cmd("DATA").await.expect_code(354);
    client.write(&message("drain")).await;
    client.cmd(".").await.expect_code(250);
    // Between transactions the draining relay says goodbye on its own.
    client.read_reply().await.expect_code(421);
    let gmail = stopping.await.unwrap();
    assert_eq!(gmail.messages().len(), 1);
}
