//! The Gmail API transport end to end: real clients (the test client, Python smtplib,
//! curl) through the relay to the fake Gmail API over HTTPS with the sandbox CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::*;
use smtp_oauth_relay::sandbox::gmail_api::ApiFault;

const FROM: &str = "robot@api.example";

/// An asset on the Gmail API, sending as the sales account (the issuer's tokens for it are
/// what the fake API accepts), claiming the sender domain api.example.
fn api_asset(extra: &str) -> String {
    format!(
        r#"
[[asset]]
name = "api"
email = "{SALES_EMAIL}"
provider = "custom"
transport = "gmail-api"
api_url = "@API_URL@"
tokeninfo_url = "@TOKENINFO_URL@"
upstream_ca = "@CA@"
client_id = "sales-client"
client_secret = "{SALES_SECRET}"
refresh_token = "{SALES_REFRESH}"
token_url = "@TOKEN_URL@"
auth_url = "@AUTH_URL@"
senders = ["@api.example"]
{extra}
"#
    )
}

async fn api_env(extra: &str, limits: &str, timeouts: &str) -> Env {
    Env::with(Options {
        extra_assets: api_asset(extra),
        limits: limits.to_string(),
        timeouts: timeouts.to_string(),
        ..Options::default()
    })
    .await
}

fn api_message(to: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Robot <{FROM}>\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nbody line\r\n.dot line\r\n"
    )
    .into_bytes()
}

async fn send(env: &Env, to: &[&str], body: &[u8]) -> smtp_oauth_relay::smtp::reply::Reply {
    let mut client = env.logged_in(ADMIN).await;
    let reply = client.send_mail(FROM, to, body).await;
    client.quit().await;
    reply
}

fn delivered(env: &Env, n: usize) -> Vec<u8> {
    let messages = env.gmail_api.messages();
    assert_eq!(messages.len(), n, "{messages:?}");
    std::fs::read(&messages[n - 1].path).unwrap()
}

#[tokio::test]
async fn message_arrives_byte_exact_after_received_with_missing_recipients_in_bcc() {
    let env = api_env("", "", "").await;
    let body = api_message("To Someone <Someone@Example.net>", "exact");
    let reply = send(&env, &["someone@example.net", "hidden@example.org"], &body).await;
    let reply = reply.expect_code(250);
    assert!(reply.text().starts_with("OK <18c"), "{reply}");
    let data = delivered(&env, 1);
    let (received, rest) = split_received(&data);
    assert!(received.contains("by relay.test"), "{received}");
    // The fake strips the inserted Bcc, so what remains is the client's message (the test
    // client writes its bytes as wire form: ".dot line" arrives un-stuffed).
    assert_eq!(rest, unstuffed(&body));
    let message = &env.gmail_api.messages()[0];
    assert_eq!(message.account, SALES_EMAIL);
    assert_eq!(
        message.recipients,
        vec!["hidden@example.org", "someone@example.net"]
    );
}

#[tokio::test]
async fn header_only_recipients_are_refused_unless_the_asset_delivers_them() {
    let env = api_env("", "", "").await;
    let body = api_message("a@example.net, b@example.net", "undeclared");
    let reply = send(&env, &["a@example.net"], &body).await;
    let reply = reply.expect_code(550);
    assert!(reply.to_string().contains("5.7.1"), "{reply}");
    assert!(reply.text().contains("<b@example.net>"), "{reply}");
    assert_eq!(env.gmail_api.uploads(), 0);

    let env = api_env("header_recipients = \"deliver\"", "", "").await;
    send(&env, &["a@example.net"], &body).await.expect_code(250);
    assert_eq!(
        env.gmail_api.messages()[0].recipients,
        vec!["a@example.net", "b@example.net"]
    );
}

#[tokio::test]
async fn a_message_over_googles_limit_is_refused_and_nothing_is_sent() {
    let env = api_env("", "max_message_size = 50000000", "").await;
    let mut body = api_message("a@example.net", "big").to_vec();
    let line = vec![b'x'; 998];
    while body.len() < 36 * 1024 * 1024 + 10 {
        body.extend_from_slice(&line);
        body.extend_from_slice(b"\r\n");
    }
    let reply = send(&env, &["a@example.net"], &body).await;
    let reply = reply.expect_code(552);
    assert!(reply.to_string().contains("5.3.4"), "{reply}");
    assert_eq!(env.gmail_api.uploads(), 0);
    // Declared in advance: refused at MAIL.
    let mut client = env.logged_in(ADMIN).await;
    client
        .cmd(&format!("MAIL FROM:<{FROM}> SIZE=40000000"))
        .await
        .expect_code(552);
    client.quit().await;
}

#[tokio::test]
async fn a_20_mib_message_is_delivered_byte_exact() {
    let env = api_env("", "", "").await;
    let mut body = api_message("a@example.net", "twenty").to_vec();
    let mut n = 0u64;
    while body.len() < 20 * 1024 * 1024 {
        n += 1;
        body.extend_from_slice(format!("{n:020} .. line of a large message\r\n").as_bytes());
        if n.is_multiple_of(1000) {
            body.extend_from_slice(b".starts with a dot\r\n");
        }
    }
    send(&env, &["a@example.net"], &body).await.expect_code(250);
    let (_, rest) = split_received(&delivered(&env, 1));
    // The test client sends its bytes as wire form; what arrives is them un-stuffed.
    let expected = unstuffed(&body);
    assert!(
        rest == expected,
        "20 MiB body differs ({} vs {} bytes)",
        rest.len(),
        expected.len()
    );
}

#[tokio::test]
async fn a_refused_token_is_refreshed_once_and_the_upload_replayed() {
    let env = api_env("", "", "").await;
    env.gmail_api.push_fault(ApiFault::status(
        401,
        "UNAUTHENTICATED",
        "authError",
        "Invalid Credentials",
    ));
    send(
        &env,
        &["a@example.net"],
        &api_message("a@example.net", "retry"),
    )
    .await
    .expect_code(250);
    assert_eq!(env.gmail_api.uploads(), 2);
    assert_eq!(env.gmail_api.messages().len(), 1);

    // Refused again after the fresh token: 454, the mail stays with the client.
    for _ in 0..2 {
        env.gmail_api.push_fault(ApiFault::status(
            401,
            "UNAUTHENTICATED",
            "authError",
            "Invalid Credentials",
        ));
    }
    let reply = send(
        &env,
        &["a@example.net"],
        &api_message("a@example.net", "twice"),
    )
    .await;
    reply.expect_code(454);
    assert_eq!(env.gmail_api.messages().len(), 1);
}

#[tokio::test]
async fn google_failures_map_to_their_replies_and_nothing_is_acknowledged() {
    let env = api_env(
        "",
        "",
        "upstream_final_reply_secs = 2\nupstream_command_secs = 5\n",
    )
    .await;
    let cases: Vec<(ApiFault, u16, &str)> = vec![
        (ApiFault::status(429, "RESOURCE_EXHAUSTED", "rateLimitExceeded", "Rate Limit Exceeded"), 451, "4.7.0 sending rate limit of sales@example.org reached; try again later"),
        (ApiFault::status(403, "PERMISSION_DENIED", "userRateLimitExceeded", "User-rate limit exceeded"), 451, "4.7.0 sending rate limit"),
        (ApiFault::status(400, "INVALID_ARGUMENT", "invalidArgument", "Invalid To header"), 554, "5.6.0 Message refused by the provider: Invalid To header"),
        (ApiFault::status(400, "FAILED_PRECONDITION", "failedPrecondition", "Precondition check failed."), 451, "4.3.0"),
        (ApiFault::status(403, "PERMISSION_DENIED", "insufficientPermissions", "Request had insufficient authentication scopes."), 454, "4.7.0 Sending account \"api\" needs re-authorization"),
        (ApiFault::status(500, "INTERNAL", "backendError", "Backend Error"), 451, "4.4.2 Connection to the upstream mail server lost"),
        (ApiFault::Hang, 451, "4.4.2 Upstream connection lost before it confirmed the message; try again (a duplicate is possible)"),
        (ApiFault::CutAfterBody, 451, "(a duplicate is possible)"),
    ];
    for (fault, code, text) in cases {
        env.gmail_api.push_fault(fault.clone());
        let reply = send(
            &env,
            &["a@example.net"],
            &api_message("a@example.net", "fault"),
        )
        .await;
        assert_eq!(reply.code, code, "{fault:?}: {reply}");
        assert!(reply.to_string().contains(text), "{fault:?}: {reply}");
        // A rate limit marks the asset (issue 16, tests/relay/limits.rs); each case here
        // starts without a mark.
        env.relay
            .limits
            .store()
            .clear_over_limit("api")
            .await
            .unwrap();
    }
    assert!(env.gmail_api.messages().is_empty());
    let metrics = env.relay.metrics.render();
    assert!(
        metrics.contains("outcome=\"possible_duplicate\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn several_transactions_rset_and_bdat_work_as_on_smtp() {
    let env = api_env("", "", "").await;
    let mut client = env.logged_in(ADMIN).await;
    client
        .cmd(&format!("MAIL FROM:<{FROM}>"))
        .await
        .expect_code(250);
    client.cmd("RCPT TO:<a@example.net>").await.expect_code(250);
    client.cmd("RSET").await.expect_code(250);
    for subject in ["one", "two"] {
        client
            .send_mail(
                FROM,
                &["a@example.net"],
                &api_message("a@example.net", subject),
            )
            .await
            .expect_code(250);
    }
    client.quit().await;
    assert_eq!(env.gmail_api.messages().len(), 2);
}

#[tokio::test]
async fn python_smtplib_curl_and_swaks_deliver_through_the_api() {
    let env = api_env("", "", "").await;
    let body = api_message("py@example.net", "python");
    let message_path = env.path("python.eml");
    std::fs::write(&message_path, &body).unwrap();
    let script = format!(
        "import smtplib\ns = smtplib.SMTP('127.0.0.1', {port})\ns.ehlo()\ns.login('{user}', '{password}')\ns.sendmail('{FROM}', ['py@example.net', 'bcc@example.net'], open('{path}', 'rb').read())\ns.quit()\n",
        port = env.relay_addr.port(),
        user = ADMIN.0,
        password = ADMIN.1,
        path = message_path.display(),
    );
    let python = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .await
        .unwrap();
    assert!(
        python.status.success(),
        "{}",
        String::from_utf8_lossy(&python.stderr)
    );
    let (_, rest) = split_received(&delivered(&env, 1));
    assert_eq!(rest, body);
    assert_eq!(
        env.gmail_api.messages()[0].recipients,
        vec!["bcc@example.net", "py@example.net"]
    );

    let body = api_message("curl@example.net", "curl");
    let message_path = env.path("curl.eml");
    std::fs::write(&message_path, &body).unwrap();
    let curl = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--url"])
        .arg(format!("smtp://127.0.0.1:{}", env.relay_addr.port()))
        .args([
            "--mail-from",
            FROM,
            "--mail-rcpt",
            "curl@example.net",
            "--user",
        ])
        .arg(format!("{}:{}", ADMIN.0, ADMIN.1))
        .arg("--upload-file")
        .arg(&message_path)
        .output()
        .await
        .unwrap();
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    let (_, rest) = split_received(&delivered(&env, 2));
    assert_eq!(rest, body);

    // swaks sends the file given with --data and a CRLF of its own before the final dot.
    let body = api_message("swaks@example.net", "swaks");
    let message_path = env.path("swaks.eml");
    std::fs::write(&message_path, &body).unwrap();
    let swaks = tokio::process::Command::new("swaks")
        .arg("--server")
        .arg(env.relay_addr.to_string())
        .args([
            "--auth",
            "PLAIN",
            "--auth-user",
            ADMIN.0,
            "--auth-password",
            ADMIN.1,
        ])
        .args(["--from", FROM, "--to", "swaks@example.net", "--data"])
        .arg(format!("@{}", message_path.display()))
        .output()
        .await
        .unwrap();
    assert!(
        swaks.status.success(),
        "{}",
        String::from_utf8_lossy(&swaks.stdout)
    );
    let (_, rest) = split_received(&delivered(&env, 3));
    assert_eq!(rest, [body.as_slice(), b"\r\n"].concat());
}

#[tokio::test]
async fn check_proves_the_scope_with_tokeninfo() {
    let env = api_env("", "", "").await;
    let asset = env.relay.config.asset("api").unwrap().clone();
    let result =
        smtp_oauth_relay::cli::check::check_asset(&env.relay.config, &env.relay.tokens, &asset)
            .await;
    let summary = result.result.unwrap();
    assert!(summary.contains("gmail.send"), "{summary}");
    env.gmail_api
        .set_scope("https://www.googleapis.com/auth/gmail.readonly");
    let result =
        smtp_oauth_relay::cli::check::check_asset(&env.relay.config, &env.relay.tokens, &asset)
            .await;
    let error = result.result.unwrap_err().to_string();
    assert!(
        error.contains("https://www.googleapis.com/auth/gmail.send"),
        "{error}"
    );
}

// A current-thread runtime: the thread-local subscriber sees every task's events.
#[tokio::test]
async fn trace_logs_of_the_api_path_hold_no_secret() {
    let (captured, _guard) = capture_logs_at(tracing::Level::TRACE);
    let env = api_env("", "", "upstream_final_reply_secs = 1\n").await;
    env.gmail_api.push_fault(ApiFault::status(
        401,
        "UNAUTHENTICATED",
        "authError",
        "Invalid Credentials",
    ));
    send(
        &env,
        &["a@example.net"],
        &api_message("a@example.net", "s1"),
    )
    .await
    .expect_code(250);
    env.gmail_api.push_fault(ApiFault::Hang);
    send(
        &env,
        &["a@example.net"],
        &api_message("a@example.net", "s2"),
    )
    .await
    .expect_code(451);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = captured.text();
    assert!(logs.contains("Gmail API"), "no API lines captured");
    for secret in [SALES_SECRET, SALES_REFRESH, ADMIN.1, "ya29."] {
        assert!(!logs.contains(secret), "{secret} in logs");
    }
}
