//! Per-mailbox sending limits (issue 16 §1) end to end: the relay on loopback in front of
//! the fake Gmail (SMTP) and the fake Gmail API, real clients (the wire test client and
//! Python's smtplib). Each test's asset is its own, so nothing is shared between tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::*;
use smtp_oauth_relay::sandbox::gmail::Behaviour;
use smtp_oauth_relay::sandbox::gmail_api::ApiFault;
use smtp_oauth_relay::smtp::reply::Reply;

const FROM: &str = "robot@limited.example";

/// An SMTP asset on the fake Gmail (the sales account's credentials), for `@limited.example`.
fn limited_asset(extra: &str) -> String {
    format!(
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
{extra}
"#
    )
}

async fn limited_env(extra: &str, timeouts: &str) -> Env {
    Env::with(Options {
        extra_assets: limited_asset(extra),
        timeouts: timeouts.to_string(),
        ..Options::default()
    })
    .await
}

/// One message from FROM to `to` on a new connection; the final reply (panics when MAIL,
/// RCPT or DATA is refused).
async fn send(env: &Env, to: &[&str], subject: &str) -> Reply {
    let mut client = env.logged_in(ADMIN).await;
    let reply = client.send_mail(FROM, to, &message(subject)).await;
    client.quit().await;
    reply
}

/// MAIL FROM on a new connection; its reply.
async fn mail_from(env: &Env, from: &str) -> Reply {
    env.mail_from_as(ADMIN, from).await
}

fn assert_limit_reply(reply: &Reply, words: &[&str]) {
    assert_eq!(reply.code, 451, "{reply}");
    let text = reply.to_string();
    assert!(text.contains("4.7.0"), "{text}");
    for word in words {
        assert!(text.contains(word), "{word:?} not in {text}");
    }
}

#[tokio::test]
async fn the_sixth_message_is_refused_at_mail_before_the_upstream_sees_it() {
    let env = limited_env("daily_messages = 5", "").await;
    for i in 0..5 {
        send(&env, &["x@example.net"], &format!("n{i}"))
            .await
            .expect_code(250);
    }
    let connections = env.gmail.connections();
    let reply = mail_from(&env, FROM).await;
    assert_limit_reply(
        &reply,
        &["\"limited\"", "5 messages in 24 hours", "until 20"],
    );
    assert_eq!(env.gmail.messages().len(), 5);
    assert_eq!(
        env.gmail.connections(),
        connections,
        "the upstream was contacted for a refused message"
    );
    // Another asset is not affected.
    env.send_as(SCANNER, SUPPORT_EMAIL, "x@example.net", "other")
        .await
        .expect_code(250);
    let metrics = env.relay.metrics.render();
    assert!(
        metrics.contains("smtp_oauth_relay_asset_sent_messages_24h{asset=\"limited\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "smtp_oauth_relay_asset_limit_remaining{asset=\"limited\",limit=\"daily_messages\"} 0"
        ),
        "{metrics}"
    );
    env.stop().await;
}

#[tokio::test]
async fn python_smtplib_sees_the_451_as_a_temporary_refusal() {
    let env = limited_env("daily_messages = 1", "").await;
    send(&env, &["x@example.net"], "first")
        .await
        .expect_code(250);
    let script = format!(
        "import smtplib, sys\ns = smtplib.SMTP('127.0.0.1', {port})\ns.login('{user}', '{password}')\n\
         try:\n    s.sendmail('{FROM}', ['py@example.net'], b'Subject: py\\r\\n\\r\\nbody\\r\\n')\n    print('accepted')\n\
         except smtplib.SMTPSenderRefused as e:\n    print(e.smtp_code, e.smtp_error.decode())\ns.quit()\n",
        port = env.relay_addr.port(),
        user = ADMIN.0,
        password = ADMIN.1,
    );
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("451 4.7.0"), "{stdout}");
    assert!(stdout.contains("1 messages in 24 hours"), "{stdout}");
    assert_eq!(env.gmail.messages().len(), 1);
    env.stop().await;
}

#[tokio::test]
async fn a_recipient_over_the_daily_recipient_limit_is_refused_at_rcpt() {
    let env = limited_env("daily_recipients = 3", "").await;
    send(&env, &["a@example.net", "b@example.net"], "two")
        .await
        .expect_code(250);
    let mut client = env.logged_in(ADMIN).await;
    client.mail_from(FROM, 250).await;
    client.rcpt_to("c@example.net", 250).await;
    let refused = client.cmd("RCPT TO:<d@example.net>").await;
    assert_limit_reply(&refused, &["\"limited\"", "3 recipients in 24 hours"]);
    // The message goes to the recipient that fit, and only to it.
    client.data(&message("three"), 250).await;
    client.quit().await;
    let messages = env.gmail.messages();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1].rcpt_to, vec!["c@example.net".to_string()]);
    // The day's recipients are used up: the next message gets no recipient through.
    let mut client = env.logged_in(ADMIN).await;
    client.mail_from(FROM, 250).await;
    let refused = client.cmd("RCPT TO:<e@example.net>").await;
    assert_limit_reply(&refused, &["3 recipients"]);
    client.quit().await;
    env.stop().await;
}

#[tokio::test]
async fn a_provider_quota_reply_becomes_4xx_and_later_mail_is_answered_locally() {
    let env = limited_env("", "").await;
    env.gmail.set_behaviour(Behaviour {
        data_reply: Some("550 5.4.5 Daily user sending limit exceeded. For more information, go to https://support.google.com/a/answer/166852".into()),
        ..Behaviour::default()
    });
    let reply = send(&env, &["x@example.net"], "over").await;
    assert_limit_reply(
        &reply,
        &["\"limited\"", "over its provider's sending limit until"],
    );
    // Later messages never reach the provider, even once it would take them again.
    env.gmail.set_behaviour(Behaviour::default());
    let connections = env.gmail.connections();
    let reply = mail_from(&env, FROM).await;
    assert_limit_reply(&reply, &["over its provider's sending limit"]);
    assert_eq!(env.gmail.connections(), connections);
    assert!(env.gmail.messages().is_empty());
    let metrics = env.relay.metrics.render();
    assert!(
        metrics.contains("smtp_oauth_relay_asset_over_provider_limit{asset=\"limited\"} 1"),
        "{metrics}"
    );
    // The mark is persisted without any of the asset's secrets.
    env.relay.limits.store().flush().await.unwrap();
    let state = std::fs::read_to_string(env.path("limits.json")).unwrap();
    assert!(state.contains("5.4.5"), "{state}");
    for secret in [SALES_SECRET, SALES_REFRESH] {
        assert!(!state.contains(secret));
    }
    env.stop().await;
}

#[tokio::test]
async fn a_quota_refusal_at_mail_from_is_turned_into_451_too() {
    let env = limited_env("", "").await;
    env.gmail.set_behaviour(Behaviour {
        mail_reply: Some("550 5.4.5 Daily user sending limit exceeded.".into()),
        ..Behaviour::default()
    });
    let reply = mail_from(&env, FROM).await;
    assert_limit_reply(&reply, &["over its provider's sending limit"]);
    // The support asset (another mailbox) is not marked.
    env.gmail.set_behaviour(Behaviour::default());
    env.send_as(SCANNER, SUPPORT_EMAIL, "x@example.net", "other")
        .await
        .expect_code(250);
    env.stop().await;
}

#[tokio::test]
async fn a_gmail_api_daily_limit_becomes_4xx_and_marks_the_asset() {
    let api = format!(
        r#"
[[asset]]
name = "api"
email = "{SALES_EMAIL}"
provider = "google"
transport = "gmail-api"
api_url = "@API_URL@"
tokeninfo_url = "@TOKENINFO_URL@"
upstream_ca = "@CA@"
client_id = "sales-client"
client_secret = "{SALES_SECRET}"
refresh_token = "{SALES_REFRESH}"
token_url = "@TOKEN_URL@"
auth_url = "@AUTH_URL@"
senders = ["@limited.example"]
"#
    );
    let env = Env::with(Options {
        extra_assets: api,
        ..Options::default()
    })
    .await;
    env.gmail_api.push_fault(ApiFault::status(
        403,
        "PERMISSION_DENIED",
        "dailyLimitExceeded",
        "Daily Limit Exceeded",
    ));
    let body = format!("From: <{FROM}>\r\nTo: x@example.net\r\nSubject: api\r\n\r\nbody\r\n");
    let mut client = env.logged_in(ADMIN).await;
    let reply = client
        .send_mail(FROM, &["x@example.net"], body.as_bytes())
        .await;
    client.quit().await;
    assert_eq!(reply.code / 100, 4, "{reply}");
    let uploads = env.gmail_api.uploads();
    let reply = mail_from(&env, FROM).await;
    assert_limit_reply(&reply, &["\"api\"", "over its provider's sending limit"]);
    assert_eq!(env.gmail_api.uploads(), uploads);
    assert!(env.gmail_api.messages().is_empty());
    env.stop().await;
}

#[tokio::test]
async fn counters_survive_a_restart() {
    let mut env = limited_env("daily_messages = 2", "").await;
    for i in 0..2 {
        send(&env, &["x@example.net"], &format!("r{i}"))
            .await
            .expect_code(250);
    }
    // What `serve` does as it shuts down.
    env.relay.limits.store().flush().await.unwrap();
    env.restart_relay().await;
    let reply = mail_from(&env, FROM).await;
    assert_limit_reply(&reply, &["2 messages in 24 hours"]);
    assert_eq!(env.gmail.messages().len(), 2);
    env.stop().await;
}

#[tokio::test]
async fn the_per_minute_limit_refuses_when_it_cannot_wait_long_enough() {
    // upstream_command_secs bounds the wait; a minute window does not free up in 1 s.
    let env = limited_env("messages_per_minute = 2", "upstream_command_secs = 1\n").await;
    for i in 0..2 {
        send(&env, &["x@example.net"], &format!("m{i}"))
            .await
            .expect_code(250);
    }
    let reply = mail_from(&env, FROM).await;
    assert_limit_reply(&reply, &["2 messages a minute"]);
    assert_eq!(env.gmail.messages().len(), 2);
    env.stop().await;
}

#[tokio::test]
async fn upstream_connections_caps_concurrent_upstream_sessions() {
    let env = limited_env("upstream_connections = 2", "upstream_connect_secs = 2\n").await;
    // Two sessions hold the asset's two upstream connections.
    let mut first = env.logged_in(ADMIN).await;
    first.mail_from(FROM, 250).await;
    let mut second = env.logged_in(ADMIN).await;
    second.mail_from(FROM, 250).await;
    // A third waits for a slot (upstream_connect_secs) and is then told to come back.
    let third = mail_from(&env, FROM).await;
    assert_limit_reply(&third, &["\"limited\"", "2 provider connections in use"]);
    assert_eq!(env.gmail.max_open_connections(), 2);
    // One connection closes: a waiting session gets its slot.
    first.quit().await;
    let mut fourth = env.logged_in(ADMIN).await;
    fourth.mail_from(FROM, 250).await;
    fourth.quit().await;
    second.quit().await;

    // Many at once: all delivered, never more than two upstream sessions open.
    let sends = (0..6).map(|i| {
        let env = &env;
        async move {
            let mut client = env.logged_in(ADMIN).await;
            let reply = client
                .send_mail(FROM, &["x@example.net"], &message(&format!("c{i}")))
                .await;
            client.quit().await;
            reply
        }
    });
    let replies = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(sends),
    )
    .await
    .unwrap();
    // Some may have waited longer than upstream_connect_secs: those were refused with
    // 451 and are a client's to retry; none was refused any other way.
    for reply in &replies {
        assert!(matches!(reply.code, 250 | 451), "{reply}");
    }
    assert!(replies.iter().any(|r| r.code == 250));
    assert_eq!(env.gmail.max_open_connections(), 2);
    env.stop().await;
}

#[tokio::test]
async fn a_graph_429_marks_the_asset_for_its_retry_after() {
    use crate::common::graph::{graph_env, graph_message, GraphOptions, GRAPH_EMAIL};
    use smtp_oauth_relay::sandbox::graph::{FaultKind, GraphFault, Route};
    let g = graph_env(GraphOptions::default()).await;
    g.graph.add_fault(GraphFault {
        route: Some(Route::SendMail),
        kind: FaultKind::Status {
            status: 429,
            code: "ApplicationThrottled".into(),
            message: "Application is over its MailboxConcurrency limit.".into(),
            retry_after: Some(600),
        },
        times: 1,
    });
    let mut client = g.env.logged_in(ADMIN).await;
    let reply = client
        .send_mail(
            GRAPH_EMAIL,
            &["ops@example.net"],
            &graph_message("throttled"),
        )
        .await;
    client.quit().await;
    assert_eq!(reply.code, 451, "{reply}");
    let requests = g.graph.requests(Route::SendMail);
    let reply = g.env.mail_from_as(ADMIN, GRAPH_EMAIL).await;
    assert_limit_reply(
        &reply,
        &["\"graph\"", "over its provider's sending limit until"],
    );
    assert_eq!(g.graph.requests(Route::SendMail), requests);
    let mark = g
        .env
        .relay
        .limits
        .over_limit("graph", smtp_oauth_relay::limits::unix_now())
        .await
        .unwrap();
    // Retry-After: 600 s from the refusal.
    assert!(mark.until - mark.since == 600, "{mark:?}");
    assert!(g.graph.delivered().is_empty());
    g.env.stop().await;
}
