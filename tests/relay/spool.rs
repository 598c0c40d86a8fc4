//! The durable spool (issue 15) through a `delivery = "spool"` user against the sandbox:
//! real clients get `250 queued as <id>` once the message is on disk, and the worker
//! delivers it byte-exact through outages, dead tokens and refusals (dead letters with a
//! DSN). The CLI and kill -9 tests are in `spool_cli.rs` and `spool_crash.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use smtp_oauth_relay::credentials::secret::Secret;
use smtp_oauth_relay::credentials::store::StoredToken;
use smtp_oauth_relay::sandbox::gmail::{Behaviour, Delivered};
use smtp_oauth_relay::sandbox::token_issuer::IssuerAccount;

/// A spool in the env's directory; `retry_secs` as given.
pub fn spool_options(retry_secs: &str, extra: &str) -> Options {
    Options {
        scanner_delivery: Some("spool".into()),
        spool: format!("dir = \"@DIR@/spool\"\nretry_secs = {retry_secs}\n{extra}"),
        ..Options::default()
    }
}

pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub fn spool_dir(env: &Env) -> PathBuf {
    env.path("spool")
}

/// Waits (bounded) until `check` holds.
pub async fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `message` with python's smtplib as the scanner; returns the final reply line.
pub async fn smtplib_send(env: &Env, from: &str, to: &[&str], message: &[u8]) -> String {
    let path = env.path("message.eml");
    std::fs::write(&path, message).unwrap();
    let script = format!(
        "import smtplib,sys\n\
         s=smtplib.SMTP('127.0.0.1',{port},timeout=20)\n\
         s.ehlo('scanner.test')\n\
         s.login('{user}','{password}')\n\
         s.mail('{from}')\n\
         for to in {to:?}: s.rcpt(to)\n\
         code,text=s.data(open('{file}','rb').read())\n\
         print(code,text.decode())\n\
         s.quit()\n",
        port = env.relay_addr.port(),
        user = SCANNER.0,
        password = SCANNER.1,
        file = path.display(),
    );
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

pub fn queued_id(reply: &str) -> String {
    assert!(reply.starts_with("250 "), "{reply}");
    reply
        .split("queued as ")
        .nth(1)
        .unwrap_or_else(|| panic!("no id in {reply}"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn spooled_message_is_delivered_byte_exact_and_removed() {
    let env = Env::with(spool_options("[1]", "")).await;
    let message = message("spooled-exact");
    let reply = smtplib_send(&env, SUPPORT_EMAIL, &["friend@example.net"], &message).await;
    let id = queued_id(&reply);
    assert!(reply.contains("2.0.0"), "{reply}");
    assert!(
        env.gmail
            .wait_for_messages(1, Duration::from_secs(20))
            .await
    );
    let delivered = &env.gmail.messages()[0];
    assert_eq!(delivered.mail_from, SUPPORT_EMAIL);
    assert_eq!(delivered.rcpt_to, vec!["friend@example.net".to_string()]);
    let (received, rest) = split_received(&delivered.data);
    assert!(received.contains("relay.test"), "{received}");
    assert_eq!(
        rest, message,
        "the provider gets the client's bytes unchanged"
    );
    // Delivered: the entry is gone, nothing is left in tmp/.
    until("the entry to be removed", Duration::from_secs(10), || {
        files_in(&spool_dir(&env).join("queue")).is_empty()
    })
    .await;
    assert!(files_in(&spool_dir(&env).join("tmp")).is_empty());
    assert!(!id.is_empty());
    // Direct users see no change: app still relays straight through.
    env.send_as(APP, SALES_EMAIL, "x@example.net", "direct")
        .await
        .expect_code(250);
    assert!(
        env.gmail
            .wait_for_messages(2, Duration::from_secs(10))
            .await
    );
    env.stop().await;
}

#[tokio::test]
async fn upstream_down_gets_250_at_once_and_delivery_when_it_is_back() {
    let env = Env::with(spool_options("[1]", "")).await;
    env.gmail.set_behaviour(Behaviour {
        greeting: Some("421 4.7.0 Try again later, closing connection".into()),
        ..Behaviour::default()
    });
    let mut client = env.logged_in(SCANNER).await;
    let reply = client
        .send_mail(SUPPORT_EMAIL, &["a@example.net"], &message("while-down"))
        .await;
    assert!(reply.to_string().contains("queued as"), "{reply}");
    reply.expect_code(250);
    client.quit().await;
    // Several attempts fail while it is down; the message waits.
    let queue = spool_dir(&env).join("queue");
    until(
        "a failed attempt to be recorded",
        Duration::from_secs(15),
        || {
            files_in(&queue).iter().any(|name| name.ends_with(".json"))
                && std::fs::read_dir(&queue).unwrap().any(|e| {
                    let path = e.unwrap().path();
                    path.extension().is_some_and(|x| x == "json")
                        && std::fs::read_to_string(&path)
                            .unwrap()
                            .contains("\"attempts\": 2")
                })
        },
    )
    .await;
    assert!(env.gmail.messages().is_empty());
    env.gmail.set_behaviour(Behaviour::default());
    assert!(
        env.gmail
            .wait_for_messages(1, Duration::from_secs(20))
            .await
    );
    assert_eq!(env.gmail.messages().len(), 1);
    until("the entry to be removed", Duration::from_secs(10), || {
        files_in(&queue).is_empty()
    })
    .await;
    env.stop().await;
}

fn grant(refresh_token: &str) -> StoredToken {
    StoredToken::new(
        Secret::new(refresh_token),
        Some(SUPPORT_EMAIL.to_string()),
        vec!["https://mail.google.com/".to_string()],
        1,
    )
}

#[tokio::test]
async fn revoked_token_queues_and_a_new_grant_delivers_at_once() {
    let mut options = spool_options("[3600]", "");
    options.support_from_store = true;
    let env = Env::with(options).await;
    env.store().put("support", grant(SUPPORT_REFRESH)).unwrap();
    env.send_as(SCANNER, SUPPORT_EMAIL, "a@example.net", "before-revocation")
        .await
        .expect_code(250);
    assert!(
        env.gmail
            .wait_for_messages(1, Duration::from_secs(20))
            .await
    );

    // The grant dies (revoked at the provider; the access tokens with it).
    env.issuer.revoke_all_refresh_tokens();
    env.tokens.revoke_all();
    let reply = env
        .send_as(SCANNER, SUPPORT_EMAIL, "a@example.net", "after-revocation")
        .await;
    reply.expect_code(250);
    let queue = spool_dir(&env).join("queue");
    until(
        "the credential failure to be recorded",
        Duration::from_secs(15),
        || {
            std::fs::read_dir(&queue).unwrap().any(|e| {
                let path = e.unwrap().path();
                path.extension().is_some_and(|x| x == "json")
                    && std::fs::read_to_string(&path)
                        .unwrap()
                        .contains("\"waiting_for_credentials\": true")
            })
        },
    )
    .await;
    assert_eq!(
        env.gmail.messages().len(),
        1,
        "not delivered without credentials"
    );

    // Re-authorization (what `authorize` and the console do): a new grant in the store.
    // The retry schedule says an hour; the new grant makes it go now.
    env.issuer.add_account(IssuerAccount {
        client_id: "support-client".into(),
        client_secret: SUPPORT_SECRET.into(),
        refresh_token: "1//support-new-grant".into(),
        email: SUPPORT_EMAIL.into(),
    });
    env.store()
        .put("support", grant("1//support-new-grant"))
        .unwrap();
    assert!(
        env.gmail
            .wait_for_messages(2, Duration::from_secs(20))
            .await
    );
    let subjects: Vec<String> = env
        .gmail
        .messages()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect();
    assert!(subjects[1].contains("Subject: after-revocation"));
    until("the entry to be removed", Duration::from_secs(10), || {
        files_in(&queue).is_empty()
    })
    .await;
    env.stop().await;
}

/// The DSN among what the fake received, parsed.
fn dsn_in(messages: &[Delivered]) -> &Delivered {
    messages
        .iter()
        .find(|m| String::from_utf8_lossy(&m.data).contains("multipart/report"))
        .expect("a DSN was delivered")
}

#[track_caller]
fn assert_is_report_about(dsn: &Delivered, failed: &str, not: Option<&str>) {
    use mail_parser::MimeHeaders;
    let parsed = mail_parser::MessageParser::default()
        .parse(&dsn.data)
        .unwrap();
    let content_type = parsed.content_type().unwrap();
    assert_eq!(content_type.ctype(), "multipart");
    assert_eq!(content_type.subtype(), Some("report"));
    assert_eq!(
        content_type.attribute("report-type"),
        Some("delivery-status")
    );
    let status = parsed
        .parts
        .iter()
        .find(|part| {
            part.content_type().is_some_and(|ct| {
                ct.ctype() == "message" && ct.subtype() == Some("delivery-status")
            })
        })
        .expect("a message/delivery-status part");
    let status_text = String::from_utf8_lossy(status.contents()).into_owned();
    assert!(
        status_text.contains(&format!("Final-Recipient: rfc822; {failed}")),
        "{status_text}"
    );
    assert!(status_text.contains("Action: failed"), "{status_text}");
    assert!(status_text.contains("Status: 5.1.1"), "{status_text}");
    if let Some(not) = not {
        assert!(!status_text.contains(not), "{status_text}");
    }
    assert_eq!(dsn.rcpt_to, vec![SUPPORT_EMAIL.to_string()]);
}

#[tokio::test]
async fn refusal_makes_a_dead_letter_with_a_dsn_and_a_log_line() {
    let (captured, _guard) = capture_logs_at(tracing::Level::INFO);
    let env = Env::with(spool_options("[1]", "")).await;
    env.gmail.set_behaviour(Behaviour {
        reject_recipients: vec!["gone@example.net".into()],
        ..Behaviour::default()
    });
    let mut client = env.logged_in(SCANNER).await;
    let reply = client
        .send_mail(
            SUPPORT_EMAIL,
            &["gone@example.net"],
            &message("to-the-dead"),
        )
        .await;
    reply.expect_code(250);
    client.quit().await;
    assert!(
        env.gmail
            .wait_for_messages(1, Duration::from_secs(20))
            .await
    );
    let messages = env.gmail.messages();
    assert_eq!(messages.len(), 1, "only the DSN reached the provider");
    assert_is_report_about(dsn_in(&messages), "gone@example.net", None);
    assert_eq!(
        dsn_in(&messages).mail_from,
        "",
        "the report comes from the null sender"
    );
    let dead = spool_dir(&env).join("dead");
    until(
        "the dead letter to be kept",
        Duration::from_secs(10),
        || files_in(&dead).len() == 2,
    )
    .await;
    assert!(files_in(&spool_dir(&env).join("queue")).is_empty());
    let json = files_in(&dead)
        .into_iter()
        .find(|n| n.ends_with(".json"))
        .unwrap();
    let state = std::fs::read_to_string(dead.join(json)).unwrap();
    assert!(state.contains("\"state\": \"failed\""), "{state}");
    assert!(state.contains("dead_reason"), "{state}");
    let logs = captured.text();
    assert!(logs.contains("spool_dead_letter"), "{logs}");
    assert!(logs.contains("delivery status notification sent"), "{logs}");
    let metrics = env.relay.metrics.render();
    assert!(
        metrics.contains("smtp_oauth_relay_spool_dead_letters_total 1"),
        "{metrics}"
    );
    env.stop().await;
}

#[tokio::test]
async fn partial_refusal_delivers_the_rest_once_and_reports_the_refused() {
    let env = Env::with(spool_options("[1]", "")).await;
    env.gmail.set_behaviour(Behaviour {
        reject_recipients: vec!["gone@example.net".into()],
        ..Behaviour::default()
    });
    let reply = smtplib_send(
        &env,
        SUPPORT_EMAIL,
        &["ok@example.net", "gone@example.net"],
        &message("partly"),
    )
    .await;
    queued_id(&reply);
    assert!(
        env.gmail
            .wait_for_messages(2, Duration::from_secs(20))
            .await
    );
    let queue = spool_dir(&env).join("queue");
    until("the entry to be removed", Duration::from_secs(10), || {
        files_in(&queue).is_empty()
    })
    .await;
    // Another second: nothing is sent again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let messages = env.gmail.messages();
    assert_eq!(messages.len(), 2, "the message once, the DSN once");
    let original: Vec<&Delivered> = messages
        .iter()
        .filter(|m| String::from_utf8_lossy(&m.data).contains("Subject: partly"))
        .filter(|m| !String::from_utf8_lossy(&m.data).contains("multipart/report"))
        .collect();
    assert_eq!(original.len(), 1);
    assert_eq!(original[0].rcpt_to, vec!["ok@example.net".to_string()]);
    assert_is_report_about(
        dsn_in(&messages),
        "gone@example.net",
        Some("ok@example.net"),
    );
    assert!(
        files_in(&spool_dir(&env).join("dead")).is_empty(),
        "partly delivered is not dead"
    );
    env.stop().await;
}

#[tokio::test]
async fn full_spool_answers_452_and_keeps_nothing_half_written() {
    // Down upstream, so what is queued stays; room for one small message.
    let env = Env::with(spool_options("[3600]", "max_bytes = 3000")).await;
    env.gmail.set_behaviour(Behaviour {
        greeting: Some("421 4.7.0 Try again later".into()),
        ..Behaviour::default()
    });
    env.send_as(SCANNER, SUPPORT_EMAIL, "a@example.net", "first")
        .await
        .expect_code(250);
    let mut client = env.logged_in(SCANNER).await;
    client.mail_from(SUPPORT_EMAIL, 250).await;
    client.rcpt_to("a@example.net", 250).await;
    let big = format!(
        "Subject: big\r\n\r\n{}",
        ("x".repeat(70) + "\r\n").repeat(40)
    );
    let reply = client.data(big.as_bytes(), 452).await;
    assert!(reply.to_string().contains("4.3.1"), "{reply}");
    // Declared too big at MAIL: refused there.
    let reply = client
        .cmd(&format!("MAIL FROM:<{SUPPORT_EMAIL}> SIZE=5000"))
        .await;
    assert_eq!(reply.code, 452, "{reply}");
    client.quit().await;
    let dir = spool_dir(&env);
    assert!(
        files_in(&dir.join("tmp")).is_empty(),
        "{:?}",
        files_in(&dir.join("tmp"))
    );
    assert_eq!(
        files_in(&dir.join("queue")).len(),
        2,
        "only the first message"
    );
    let metrics = env.relay.metrics.render();
    assert!(
        metrics.contains("smtp_oauth_relay_spool_refused_total{reason=\"full\"} 2"),
        "{metrics}"
    );
    env.stop().await;
}

#[tokio::test]
async fn corrupt_entry_is_set_aside_and_reported_and_the_worker_goes_on() {
    let (captured, _guard) = capture_logs_at(tracing::Level::INFO);
    let env = Env::with(spool_options("[1]", "")).await;
    let queue = spool_dir(&env).join("queue");
    std::fs::write(
        queue.join("0000000000000000BAD0.json"),
        b"{\"version\": 1, \"id\": ",
    )
    .unwrap();
    std::fs::write(
        queue.join("0000000000000000BAD0.eml"),
        b"Subject: x\r\n\r\nx\r\n",
    )
    .unwrap();
    env.send_as(SCANNER, SUPPORT_EMAIL, "a@example.net", "after-corrupt")
        .await
        .expect_code(250);
    assert!(
        env.gmail
            .wait_for_messages(1, Duration::from_secs(20))
            .await
    );
    let corrupt = spool_dir(&env).join("corrupt");
    until(
        "the corrupt entry to be set aside",
        Duration::from_secs(10),
        || files_in(&corrupt).len() == 2,
    )
    .await;
    assert_eq!(
        files_in(&corrupt),
        vec![
            "0000000000000000BAD0.eml".to_string(),
            "0000000000000000BAD0.json".to_string()
        ]
    );
    let logs = captured.text();
    assert!(
        logs.contains("corrupt spool entry moved to corrupt/"),
        "{logs}"
    );
    assert!(logs.contains("0000000000000000BAD0"), "{logs}");
    env.stop().await;
}
