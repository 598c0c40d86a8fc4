//! End-to-end behaviour of the relay against the Gmail-like upstream and token endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::*;
use smtp_oauth_relay::sandbox::gmail::Behaviour;
use smtp_oauth_relay::sandbox::token_issuer::IssuerMode;

#[tokio::test]
async fn auth_plain_message_arrives_byte_for_byte_after_received_header() {
    let env = Env::start().await;
    let mut client = env.logged_in(SCANNER).await;
    let body = message("plain");
    let reply = client
        .send_mail(SUPPORT_EMAIL, &["someone@example.net"], &body)
        .await
        .expect_code(250);
    assert!(reply.text().contains("OK"), "{reply}");
    client.quit().await;

    let delivered = env.gmail.messages();
    assert_eq!(delivered.len(), 1);
    let message = &delivered[0];
    assert_eq!(
        message.auth_user, SUPPORT_EMAIL,
        "XOAUTH2 user= must be the asset's mailbox"
    );
    assert_eq!(message.mail_from, SUPPORT_EMAIL);
    assert_eq!(message.rcpt_to, vec!["someone@example.net".to_string()]);
    let (received, rest) = split_received(&message.data);
    assert_eq!(rest, unstuffed(&body));
    assert!(
        received.contains("by relay.test (smtp-oauth-relay) with ESMTPA"),
        "{received}"
    );
    assert!(received.contains("for <someone@example.net>"), "{received}");
    env.stop().await;
}

#[tokio::test]
async fn auth_plain_without_initial_response() {
    use base64::Engine;
    let env = Env::start().await;
    let mut client = env.client().await;
    client.ehlo().await;
    let challenge = client.cmd("AUTH PLAIN").await.expect_code(334);
    assert_eq!(challenge.text(), "");
    let response =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{}\0{}", SCANNER.0, SCANNER.1));
    client.cmd(&response).await.expect_code(235);
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("plain2"))
        .await
        .expect_code(250);
    env.stop().await;
}

#[tokio::test]
async fn auth_login_works_and_cancel_is_honoured() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let env = Env::start().await;
    let mut client = env.client().await;
    client.ehlo().await;
    let user_prompt = client.cmd("AUTH LOGIN").await.expect_code(334);
    assert_eq!(user_prompt.text(), "VXNlcm5hbWU6");
    client.cmd("*").await.expect_code(501);

    let prompt = client.cmd("AUTH LOGIN").await.expect_code(334);
    assert_eq!(prompt.text(), "VXNlcm5hbWU6");
    let password_prompt = client.cmd(&b64(APP.0)).await.expect_code(334);
    assert_eq!(password_prompt.text(), "UGFzc3dvcmQ6");
    client.cmd(&b64(APP.1)).await.expect_code(235);
    client
        .send_mail(SALES_EMAIL, &["x@example.net"], &message("login"))
        .await
        .expect_code(250);
    assert_eq!(env.gmail.messages()[0].auth_user, SALES_EMAIL);
    env.stop().await;
}

#[tokio::test]
async fn wrong_password_is_refused_and_mail_needs_auth() {
    let env = Env::start().await;
    let mut client = env.client().await;
    client.ehlo().await;
    let reply = client
        .auth_plain(SCANNER.0, "not-the-password")
        .await
        .expect_code(535);
    assert_eq!(reply.enhanced.map(|c| c.to_string()), Some("5.7.8".into()));
    client
        .auth_plain("nobody", SCANNER.1)
        .await
        .expect_code(535);
    let reply = client.mail_from(SUPPORT_EMAIL, 530).await;
    assert_eq!(reply.enhanced.map(|c| c.to_string()), Some("5.7.0".into()));
    assert_eq!(env.gmail.connections(), 0);
    env.stop().await;
}

#[tokio::test]
async fn unknown_sender_gets_550_and_nothing_goes_upstream() {
    let env = Env::start().await;
    let mut client = env.logged_in(ADMIN).await;
    let reply = client.mail_from("stranger@elsewhere.net", 550).await;
    assert_eq!(reply.enhanced.map(|c| c.to_string()), Some("5.7.1".into()));
    assert_eq!(env.gmail.connections(), 0);
    assert_eq!(env.issuer.refresh_count(), 0);
    env.stop().await;
}

#[tokio::test]
async fn sender_of_another_users_asset_gets_553() {
    let env = Env::start().await;
    let mut client = env.logged_in(SCANNER).await;
    let reply = client.mail_from(SALES_EMAIL, 553).await;
    assert_eq!(reply.enhanced.map(|c| c.to_string()), Some("5.7.1".into()));
    assert!(
        reply.text().contains("not owned by user scanner"),
        "{reply}"
    );
    assert_eq!(env.gmail.connections(), 0);
    env.stop().await;
}

#[tokio::test]
async fn domain_claim_serves_other_addresses_of_the_domain() {
    let env = Env::start().await;
    let mut client = env.logged_in(SCANNER).await;
    client
        .send_mail(
            "printer@example.com",
            &["x@example.net"],
            &message("domain"),
        )
        .await
        .expect_code(250);
    let delivered = env.gmail.messages();
    assert_eq!(delivered[0].mail_from, "printer@example.com");
    assert_eq!(delivered[0].auth_user, SUPPORT_EMAIL);
    env.stop().await;
}

#[tokio::test]
async fn one_rejected_recipient_among_several() {
    let env = Env::start().await;
    env.gmail.set_behaviour(Behaviour {
        reject_recipients: vec!["gone@example.net".into()],
        ..Behaviour::default()
    });
    let mut client = env.logged_in(SCANNER).await;
    client.mail_from(SUPPORT_EMAIL, 250).await;
    client.rcpt_to("a@example.net", 250).await;
    let refused = client.rcpt_to("gone@example.net", 550).await;
    // Gmail's own multi-line text reaches the client.
    assert!(refused.lines.len() > 1, "{refused:?}");
    assert_eq!(
        refused.enhanced.map(|c| c.to_string()),
        Some("5.1.1".into())
    );
    client.rcpt_to("b@example.net", 250).await;
    client.cmd("DATA").await.expect_code(354);
    client.write(&message("partial")).await;
    client.write(b".\r\n").await;
    client.read_reply().await.expect_code(250);
    let delivered = env.gmail.messages();
    assert_eq!(delivered[0].rcpt_to, vec!["a@example.net", "b@example.net"]);
    // Several recipients: none is named in the trace header (it would disclose Bcc).
    let (received, _) = split_received(&delivered[0].data);
    assert!(!received.contains(" for <"), "{received}");
    env.stop().await;
}

#[tokio::test]
async fn two_transactions_in_one_session_with_two_assets() {
    let env = Env::start().await;
    let mut client = env.logged_in(ADMIN).await;
    client
        .send_mail(SUPPORT_EMAIL, &["a@example.net"], &message("first"))
        .await
        .expect_code(250);
    client.mail_from(SUPPORT_EMAIL, 250).await;
    client.cmd("RSET").await.expect_code(250);
    client
        .send_mail(SALES_EMAIL, &["b@example.net"], &message("second"))
        .await
        .expect_code(250);
    client
        .send_mail(SALES_EMAIL, &["c@example.net"], &message("third"))
        .await
        .expect_code(250);
    client.quit().await;
    let delivered = env.gmail.messages();
    let users: Vec<_> = delivered.iter().map(|m| m.auth_user.as_str()).collect();
    assert_eq!(users, [SUPPORT_EMAIL, SALES_EMAIL, SALES_EMAIL]);
    // Support once, sales once: the sales connection is reused for the third message.
    assert_eq!(env.gmail.connections(), 2);
    env.stop().await;
}

#[tokio::test]
async fn starttls_on_the_local_side() {
    let env = Env::start().await;
    let mut client = env.client().await;
    let ehlo = client.ehlo().await;
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    client.starttls(&env.pki).await;
    // After TLS the client starts over; STARTTLS is no longer offered.
    client.mail_from(SUPPORT_EMAIL, 503).await;
    let ehlo = client.ehlo().await;
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    client
        .auth_plain(SCANNER.0, SCANNER.1)
        .await
        .expect_code(235);
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("tls"))
        .await
        .expect_code(250);
    let (received, _) = split_received(&env.gmail.messages()[0].data);
    assert!(received.contains("with ESMTPSA"), "{received}");
    env.stop().await;
}

#[tokio::test]
async fn commands_pipelined_after_starttls_are_discarded() {
    let env = Env::start().await;
    let mut client = env.client().await;
    client.ehlo().await;
    // CVE-2011-0411: the injected command must not run inside the TLS session.
    client.write(b"STARTTLS\r\nNOOP\r\n").await;
    // Only the 220 may come back before the handshake.
    let reply = client.read_reply().await;
    assert_eq!(reply.code, 220);
    env.stop().await;
}

#[tokio::test]
async fn a_20_megabyte_message_streams_through_intact() {
    let env = Env::start().await;
    let mut client = env.logged_in(SCANNER).await;
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    let mut n = 0u64;
    while body.len() < 20 * 1024 * 1024 {
        body.extend_from_slice(line);
        if n.is_multiple_of(1000) {
            body.extend_from_slice(b"..dot-stuffed line\r\n");
        }
        n += 1;
    }
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &body)
        .await
        .expect_code(250);
    let delivered = env.gmail.messages();
    let (_, rest) = split_received(&delivered[0].data);
    assert_eq!(rest.len(), unstuffed(&body).len());
    assert!(
        rest == unstuffed(&body),
        "20 MB body differs after relaying"
    );
    env.stop().await;
}

#[tokio::test]
async fn invalid_grant_gives_temporary_454_naming_the_asset() {
    let env = Env::start().await;
    env.issuer.set_mode(IssuerMode::InvalidGrant);
    let mut client = env.logged_in(SCANNER).await;
    let reply = client.mail_from(SUPPORT_EMAIL, 454).await;
    assert_eq!(reply.enhanced.map(|c| c.to_string()), Some("4.7.0".into()));
    assert!(
        reply.text().contains("\"support\" needs re-authorization"),
        "{reply}"
    );
    assert_eq!(env.gmail.connections(), 0);
    // The stored refresh token is untouched: when the provider recovers, mail flows.
    env.issuer.set_mode(IssuerMode::Normal);
    client.cmd("RSET").await.expect_code(250);
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("after"))
        .await
        .expect_code(250);
    assert_eq!(
        std::fs::read_to_string(env.path("support.refresh"))
            .unwrap()
            .trim(),
        SUPPORT_REFRESH
    );
    env.stop().await;
}

#[tokio::test]
async fn invalid_grant_can_be_configured_permanent() {
    let env = Env::with(Options {
        server: "credential_failure = \"permanent\"".into(),
        ..Options::default()
    })
    .await;
    env.issuer.set_mode(IssuerMode::InvalidGrant);
    let mut client = env.logged_in(SCANNER).await;
    let reply = client.mail_from(SUPPORT_EMAIL, 535).await;
    assert_eq!(reply.enhanced.map(|c| c.to_string()), Some("5.7.8".into()));
    env.stop().await;
}

#[tokio::test]
async fn token_endpoint_down_gives_454_and_next_session_retries() {
    let env = Env::start().await;
    env.issuer.set_mode(IssuerMode::ServerError);
    let mut client = env.logged_in(SCANNER).await;
    let reply = client.mail_from(SUPPORT_EMAIL, 454).await;
    assert!(reply.text().contains("try again later"), "{reply}");
    client.quit().await;

    env.issuer.set_mode(IssuerMode::Hang);
    let mut client = env.logged_in(SCANNER).await;
    let started = std::time::Instant::now();
    client.mail_from(SUPPORT_EMAIL, 454).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "token timeout not applied"
    );
    client.quit().await;

    env.issuer.set_mode(IssuerMode::Normal);
    let mut client = env.logged_in(SCANNER).await;
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("recovered"))
        .await
        .expect_code(250);
    env.stop().await;
}

#[tokio::test]
async fn upstream_closing_mid_data_gives_4xx_and_no_delivery() {
    let env = Env::start().await;
    env.gmail.set_behaviour(Behaviour {
        close_during_data: true,
        ..Behaviour::default()
    });
    let mut client = env.logged_in(SCANNER).await;
    client.mail_from(SUPPORT_EMAIL, 250).await;
    client.rcpt_to("x@example.net", 250).await;
    client.cmd("DATA").await.expect_code(354);
    let mut body = Vec::new();
    for i in 0..20000 {
        body.extend_from_slice(
            format!("line {i} of a message that will not arrive\r\n").as_bytes(),
        );
    }
    client.write(&body).await;
    client.write(b".\r\n").await;
    let reply = client.read_reply().await;
    assert_eq!(reply.code / 100, 4, "{reply}");
    assert!(env.gmail.messages().is_empty());
    // The session stays usable.
    client.cmd("NOOP").await.expect_code(250);
    env.stop().await;
}

#[tokio::test]
async fn connection_lost_after_dot_is_a_possible_duplicate_451() {
    let env = Env::start().await;
    env.gmail.set_behaviour(Behaviour {
        close_after_dot: true,
        ..Behaviour::default()
    });
    let mut client = env.logged_in(SCANNER).await;
    client.mail_from(SUPPORT_EMAIL, 250).await;
    client.rcpt_to("x@example.net", 250).await;
    client.cmd("DATA").await.expect_code(354);
    client.write(&message("dup")).await;
    let reply = client.cmd(".").await.expect_code(451);
    assert!(reply.text().contains("duplicate"), "{reply}");
    env.stop().await;
}

#[tokio::test]
async fn upstream_5xx_after_data_is_passed_back_unchanged() {
    let env = Env::start().await;
    env.gmail.set_behaviour(Behaviour {
        data_reply: Some("552 5.3.4 Your message exceeded Google's message size limits.".into()),
        ..Behaviour::default()
    });
    let mut client = env.logged_in(SCANNER).await;
    let reply = client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("refused"))
        .await
        .expect_code(552);
    assert_eq!(reply.enhanced.map(|c| c.to_string()), Some("5.3.4".into()));
    assert_eq!(
        reply.text(),
        "Your message exceeded Google's message size limits."
    );
    env.stop().await;
}

#[tokio::test]
async fn refused_cached_token_is_refreshed_once() {
    let env = Env::start().await;
    let mut client = env.logged_in(SCANNER).await;
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("one"))
        .await
        .expect_code(250);
    client.quit().await;
    assert_eq!(env.issuer.refresh_count(), 1);
    // Google revokes the access token early; the cached copy is now refused.
    env.tokens.revoke_all();
    let mut client = env.logged_in(SCANNER).await;
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("two"))
        .await
        .expect_code(250);
    assert_eq!(env.issuer.refresh_count(), 2);
    env.stop().await;
}

#[tokio::test]
async fn many_sessions_share_one_token_refresh() {
    let env = Env::start().await;
    env.issuer.set_delay(Duration::from_millis(300));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let addr = env.relay_addr;
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            client.ehlo().await;
            client
                .auth_plain(SCANNER.0, SCANNER.1)
                .await
                .expect_code(235);
            client
                .send_mail(
                    SUPPORT_EMAIL,
                    &["x@example.net"],
                    &message(&format!("burst{i}")),
                )
                .await
                .expect_code(250);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(env.gmail.messages().len(), 8);
    assert_eq!(env.issuer.refresh_count(), 1, "single flight");
    env.stop().await;
}

#[tokio::test]
async fn long_tokens_use_the_two_step_auth_form() {
    let env = Env::start().await;
    // A 1.5 KB token (Microsoft, service accounts) would push an inline AUTH line past 512.
    env.tokens.set_min_token_len(1500);
    let mut client = env.logged_in(SCANNER).await;
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("long"))
        .await
        .expect_code(250);
    env.stop().await;
}

#[tokio::test]
async fn upstream_without_starttls_never_gets_credentials() {
    let env = Env::start().await;
    env.gmail.set_behaviour(Behaviour {
        no_starttls: true,
        ..Behaviour::default()
    });
    let mut client = env.logged_in(SCANNER).await;
    let reply = client.cmd(&format!("MAIL FROM:<{SUPPORT_EMAIL}>")).await;
    assert_eq!(reply.code / 100, 4, "{reply}");
    assert_eq!(env.gmail.auth_attempts(), 0);
    env.stop().await;
}

#[tokio::test]
async fn implicit_tls_upstream() {
    let env = Env::with(Options {
        implicit_tls: true,
        ..Options::default()
    })
    .await;
    let mut client = env.logged_in(SCANNER).await;
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("465"))
        .await
        .expect_code(250);
    env.stop().await;
}

#[tokio::test]
async fn pipelined_transaction_in_one_packet() {
    let env = Env::start().await;
    let mut client = env.client().await;
    use base64::Engine;
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{}\0{}", SCANNER.0, SCANNER.1));
    let mut burst = format!(
        "EHLO pipeliner\r\nAUTH PLAIN {auth}\r\nMAIL FROM:<{SUPPORT_EMAIL}>\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    )
    .into_bytes();
    client.write(&burst).await;
    for code in [250, 235, 250, 250, 250, 354] {
        client.read_reply().await.expect_code(code);
    }
    burst = message("pipelined");
    burst.extend_from_slice(b".\r\nQUIT\r\n");
    client.write(&burst).await;
    client.read_reply().await.expect_code(250);
    client.read_reply().await.expect_code(221);
    assert_eq!(env.gmail.messages().len(), 1);
    env.stop().await;
}

#[tokio::test]
async fn bare_lf_dot_never_ends_the_message_upstream() {
    let env = Env::start().await;
    let mut client = env.logged_in(SCANNER).await;
    client.mail_from(SUPPORT_EMAIL, 250).await;
    client.rcpt_to("x@example.net", 250).await;
    client.cmd("DATA").await.expect_code(354);
    // An SMTP smuggling attempt: "\n.\n" followed by a second, forged transaction.
    client
        .write(b"Subject: s\r\n\r\nbody\n.\nMAIL FROM:<forged@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nforged\r\n")
        .await;
    client.write(b".\r\n").await;
    client.read_reply().await.expect_code(250);
    let delivered = env.gmail.messages();
    assert_eq!(delivered.len(), 1, "the forged transaction must not exist");
    let (_, rest) = split_received(&delivered[0].data);
    let text = String::from_utf8(rest).unwrap();
    assert!(text.contains("MAIL FROM:<forged@example.com>"), "{text}");
    env.stop().await;
}

#[tokio::test]
async fn size_limits_are_enforced_before_and_during_data() {
    let env = Env::with(Options {
        limits: "max_message_size = 100000".into(),
        ..Options::default()
    })
    .await;
    let mut client = env.logged_in(SCANNER).await;
    let ehlo = client.ehlo().await;
    assert!(ehlo.lines.iter().any(|l| l == "SIZE 100000"), "{ehlo:?}");
    client
        .cmd(&format!("MAIL FROM:<{SUPPORT_EMAIL}> SIZE=200000"))
        .await
        .expect_code(552);
    client.mail_from(SUPPORT_EMAIL, 250).await;
    client.rcpt_to("x@example.net", 250).await;
    client.cmd("DATA").await.expect_code(354);
    let mut body = Vec::new();
    for _ in 0..300 {
        body.extend_from_slice(&[b'y'; 500]);
        body.extend_from_slice(b"\r\n");
    }
    client.write(&body).await;
    let reply = client.cmd(".").await.expect_code(552);
    assert_eq!(reply.enhanced.map(|c| c.to_string()), Some("5.3.4".into()));
    assert!(env.gmail.messages().is_empty());
    env.stop().await;
}

#[tokio::test]
async fn too_many_recipients_get_452() {
    let env = Env::with(Options {
        limits: "max_recipients = 2".into(),
        ..Options::default()
    })
    .await;
    let mut client = env.logged_in(SCANNER).await;
    client.mail_from(SUPPORT_EMAIL, 250).await;
    client.rcpt_to("a@example.net", 250).await;
    client.rcpt_to("b@example.net", 250).await;
    let reply = client.rcpt_to("c@example.net", 452).await;
    assert_eq!(reply.enhanced.map(|c| c.to_string()), Some("4.5.3".into()));
    env.stop().await;
}

#[tokio::test]
async fn protocol_basics_and_sequence_errors() {
    let env = Env::start().await;
    let mut client = env.client().await;
    assert_eq!(client.greeting.code, 220);
    client.mail_from(SUPPORT_EMAIL, 503).await;
    client.cmd("FROBNICATE").await.expect_code(500);
    client.cmd("HELO old.client").await.expect_code(250);
    client.cmd("NOOP").await.expect_code(250);
    client.cmd("VRFY someone").await.expect_code(252);
    client.cmd("HELP").await.expect_code(214);
    client.rcpt_to("a@example.net", 503).await;
    client.cmd("DATA").await.expect_code(503);
    client.mail_from("not an address", 501).await;
    let long = format!("NOOP {}", "x".repeat(5000));
    client.cmd(&long).await.expect_code(500);
    client.cmd("RSET").await.expect_code(250);
    client.cmd("QUIT").await.expect_code(221);
    env.stop().await;
}

#[tokio::test]
async fn too_many_errors_disconnects() {
    let env = Env::with(Options {
        limits: "max_errors = 3".into(),
        ..Options::default()
    })
    .await;
    let mut client = env.client().await;
    client.cmd("BAD1").await.expect_code(500);
    client.cmd("BAD2").await.expect_code(500);
    client.write(b"BAD3\r\n").await;
    client.read_reply().await.expect_code(500);
    client.read_reply().await.expect_code(421);
    assert!(client.try_read_reply().await.is_none());
    env.stop().await;
}

#[tokio::test]
async fn idle_client_times_out_with_421() {
    let env = Env::with(Options {
        timeouts: "command_secs = 1".into(),
        ..Options::default()
    })
    .await;
    let mut client = env.client().await;
    let reply = client.read_reply().await.expect_code(421);
    assert_eq!(reply.enhanced.map(|c| c.to_string()), Some("4.4.2".into()));
    env.stop().await;
}

#[tokio::test]
async fn shutdown_answers_idle_sessions_421() {
    let env = Env::start().await;
    let mut client = env.client().await;
    client.ehlo().await;
    env.stop().await;
    client.read_reply().await.expect_code(421);
}

#[tokio::test]
async fn implicit_tls_listener() {
    let env = Env::start().await;
    let mut client = Client::connect_tls(env.relay_tls_addr, &env.pki).await;
    assert_eq!(client.greeting.code, 220);
    let ehlo = client.ehlo().await;
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    client
        .auth_plain(SCANNER.0, SCANNER.1)
        .await
        .expect_code(235);
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("smtps"))
        .await
        .expect_code(250);
    let (received, _) = split_received(&env.gmail.messages()[0].data);
    assert!(received.contains("with ESMTPSA"), "{received}");
    env.stop().await;
}

#[tokio::test]
async fn upstream_refusing_a_fresh_token_gives_one_clear_reply() {
    let env = Env::with(Options {
        upstream_refuses_tokens: true,
        ..Options::default()
    })
    .await;
    let mut client = env.logged_in(SCANNER).await;
    // Gmail's 334 JSON challenge is handled by the relay; the client sees one reply.
    let reply = client.mail_from(SUPPORT_EMAIL, 454).await;
    assert!(reply.text().contains("needs re-authorization"), "{reply}");
    // A fresh token that is refused is not retried: retrying cannot help.
    assert_eq!(env.gmail.auth_attempts(), 1);
    assert_eq!(env.issuer.refresh_count(), 1);
    client.cmd("NOOP").await.expect_code(250);
    env.stop().await;
}
