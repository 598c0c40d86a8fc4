//! The relay driven by real SMTP clients: Python's smtplib, curl, swaks and msmtp.
//!
//! Each client runs as a child process while the relay keeps serving on the multi-thread
//! runtime; the tests then look at what the Gmail-like upstream received. swaks and msmtp
//! are installed by CI (`.ci/run`); elsewhere a test whose client is missing is skipped
//! with a note, but under CI (env `CI` set) a missing client fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::common::*;
use smtp_oauth_relay::sandbox::gmail::Delivered;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// True when `tool` is on PATH; see [`crate::installed_or_skip`].
fn require(tool: &str) -> bool {
    crate::installed_or_skip(tool, crate::on_path(tool))
}

/// Runs a client to completion (feeding `stdin` if given) with a timeout, without
/// blocking the runtime the relay serves on; the child is killed if it overruns.
/// (std::process polled from async code: tokio's "process" feature is not enabled.)
async fn run(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {program}: {err}"));
    let writer = stdin.map(|input| {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        })
    });
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = tokio::time::Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} did not finish within {CLIENT_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Some(writer) = writer {
        writer.join().unwrap();
    }
    let output = Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    // REAL_CLIENTS_TRACE=1 cargo test --test real_clients -- --nocapture: see what each
    // client really said.
    if std::env::var_os("REAL_CLIENTS_TRACE").is_some() {
        eprintln!("=== {program} {args:?}\n{}", transcript(&output));
    }
    output
}

/// Panics with the client's output unless it exited with status 0.
#[track_caller]
fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

fn transcript(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A realistic message in wire form (CRLF line endings, ending in CRLF), with a line that
/// starts with "." (dot-stuffing must round-trip) and, when `utf8`, 8-bit UTF-8 text.
fn realistic_message(from: &str, to: &str, subject: &str, utf8: bool) -> Vec<u8> {
    let mut text = format!(
        "From: Relay Test <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: Tue, 25 Nov 2025 10:00:00 +0100\r\n\
         Message-ID: <{subject}.1732525200@client.test>\r\n\
         MIME-Version: 1.0\r\n"
    );
    if utf8 {
        text.push_str(
            "Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\
             \r\n\
             Grüße aus Köln, ça va? Ελληνικά, 日本語, emoji 📨.\r\n",
        );
    } else {
        text.push_str(
            "Content-Type: text/plain; charset=us-ascii\r\n\
             \r\n\
             Hello from a real SMTP client.\r\n",
        );
    }
    text.push_str(
        ".this line starts with a dot\r\n\
         ..and this one with two\r\n\
         \r\n\
         -- \r\n\
         The relay tests\r\n",
    );
    text.into_bytes()
}

/// The one message the upstream received: right mailbox, envelope, and exactly `data`
/// after the relay's Received header.
#[track_caller]
fn assert_delivered(
    delivered: &[Delivered],
    auth_user: &str,
    from: &str,
    to: &[&str],
    data: &[u8],
) {
    assert_eq!(delivered.len(), 1, "expected exactly one message upstream");
    let message = &delivered[0];
    assert_eq!(
        message.auth_user, auth_user,
        "XOAUTH2 user= must be the asset's mailbox"
    );
    assert_eq!(message.mail_from, from);
    assert_eq!(message.rcpt_to, to);
    let (received, rest) = split_received(&message.data);
    assert!(
        received.contains("by relay.test (smtp-oauth-relay)"),
        "{received}"
    );
    assert!(
        rest == data,
        "message changed on the way:\n--- sent ---\n{}\n--- received ---\n{}",
        String::from_utf8_lossy(data),
        String::from_utf8_lossy(&rest)
    );
}

async fn delivered(env: &Env, n: usize) -> Vec<Delivered> {
    env.gmail.wait_for_messages(n, Duration::from_secs(5)).await;
    env.gmail.messages()
}

// ---------------------------------------------------------------------------------------
// Python smtplib
// ---------------------------------------------------------------------------------------

/// Sends `message.eml` from the environment's directory with smtplib. Arguments: port,
/// mode (plain | login | starttls | badpass), user, password, from, to, CA file.
const SMTPLIB_SCRIPT: &str = r#"
import smtplib, ssl, sys
port, mode, user, password, mail_from, rcpt, cafile, path = sys.argv[1:9]
with open(path, "rb") as f:
    msg = f.read()
server = smtplib.SMTP("127.0.0.1", int(port), local_hostname="client.test", timeout=30)
server.set_debuglevel(1)
server.ehlo()
if mode == "starttls":
    ctx = ssl.create_default_context(cafile=cafile)
    server.starttls(context=ctx)
    server.ehlo()
    print("TLS:", server.sock.version(), file=sys.stderr)
if mode in ("plain", "badpass"):
    server.user, server.password = user, password
    try:
        code, text = server.auth("PLAIN", server.auth_plain)
    except smtplib.SMTPAuthenticationError as err:
        print("AUTH-FAILED", err.smtp_code, err.smtp_error.decode())
        server.quit()
        sys.exit(0)
elif mode == "login":
    server.user, server.password = user, password
    code, text = server.auth("LOGIN", server.auth_login)
else:
    code, text = server.login(user, password)
print("AUTH", code, text.decode())
refused = server.sendmail(mail_from, [rcpt], msg)
assert not refused, refused
server.quit()
print("SENT")
"#;

async fn smtplib(env: &Env, mode: &str, (user, password): (&str, &str), message: &[u8]) -> Output {
    let script = env.path("send.py");
    std::fs::write(&script, SMTPLIB_SCRIPT).unwrap();
    let eml = env.path("message.eml");
    std::fs::write(&eml, message).unwrap();
    let port = env.relay_addr.port().to_string();
    let ca = env.path("ca.pem");
    std::fs::write(&ca, &env.pki.ca_cert_pem).unwrap();
    run(
        "python3",
        &[
            script.to_str().unwrap(),
            &port,
            mode,
            user,
            password,
            SUPPORT_EMAIL,
            "someone@example.net",
            ca.to_str().unwrap(),
            eml.to_str().unwrap(),
        ],
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_auth_plain() {
    if !require("python3") {
        return;
    }
    let env = Env::start().await;
    let message = realistic_message(SUPPORT_EMAIL, "someone@example.net", "smtplib-plain", true);
    let output = smtplib(&env, "plain", SCANNER, &message).await;
    assert_success("smtplib", &output);
    let text = transcript(&output);
    assert!(text.contains("AUTH 235"), "{text}");
    assert!(text.contains("send: 'AUTH PLAIN "), "{text}");
    assert_delivered(
        &delivered(&env, 1).await,
        SUPPORT_EMAIL,
        SUPPORT_EMAIL,
        &["someone@example.net"],
        &message,
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_auth_login() {
    if !require("python3") {
        return;
    }
    let env = Env::start().await;
    let message = realistic_message(SUPPORT_EMAIL, "someone@example.net", "smtplib-login", false);
    let output = smtplib(&env, "login", SCANNER, &message).await;
    assert_success("smtplib", &output);
    let text = transcript(&output);
    assert!(text.contains("AUTH 235"), "{text}");
    // smtplib sends the user name as an initial response: "AUTH LOGIN <b64 user>".
    assert!(text.contains("send: 'AUTH LOGIN "), "{text}");
    assert_delivered(
        &delivered(&env, 1).await,
        SUPPORT_EMAIL,
        SUPPORT_EMAIL,
        &["someone@example.net"],
        &message,
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_starttls_then_login() {
    if !require("python3") {
        return;
    }
    let env = Env::start().await;
    let message = realistic_message(SUPPORT_EMAIL, "someone@example.net", "smtplib-tls", true);
    // ADMIN may use every asset; the sender picks "support".
    let output = smtplib(&env, "starttls", ADMIN, &message).await;
    assert_success("smtplib", &output);
    let text = transcript(&output);
    assert!(text.contains("TLS: TLSv1."), "{text}");
    assert!(text.contains("AUTH 235"), "{text}");
    assert_delivered(
        &delivered(&env, 1).await,
        SUPPORT_EMAIL,
        SUPPORT_EMAIL,
        &["someone@example.net"],
        &message,
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_wrong_password_gets_535() {
    if !require("python3") {
        return;
    }
    let env = Env::start().await;
    let message = realistic_message(SUPPORT_EMAIL, "someone@example.net", "smtplib-bad", false);
    let output = smtplib(&env, "badpass", (SCANNER.0, "wrong-password"), &message).await;
    assert_success("smtplib", &output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("AUTH-FAILED 535"),
        "expected SMTPAuthenticationError 535:\n{}",
        transcript(&output)
    );
    assert!(env.gmail.messages().is_empty());
    assert_eq!(env.gmail.connections(), 0);
    env.stop().await;
}

// ---------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------

async fn curl(env: &Env, (user, password): (&str, &str), extra: &[&str], message: &[u8]) -> Output {
    let eml = env.path("curl.eml");
    std::fs::write(&eml, message).unwrap();
    let url = format!("smtp://127.0.0.1:{}/client.test", env.relay_addr.port());
    let credentials = format!("{user}:{password}");
    let mut args = vec![
        "--silent",
        "--show-error",
        "--verbose",
        "--max-time",
        "30",
        "--url",
        &url,
        "--mail-from",
        SALES_EMAIL,
        "--mail-rcpt",
        "buyer@example.net",
        "--mail-rcpt",
        "boss@example.org",
        "--user",
        &credentials,
        "--upload-file",
        eml.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run("curl", &args, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_sends_with_the_auth_it_chooses() {
    if !require("curl") {
        return;
    }
    let env = Env::start().await;
    let message = realistic_message(SALES_EMAIL, "buyer@example.net", "curl-plain", true);
    let output = curl(&env, APP, &[], &message).await;
    assert_success("curl", &output);
    let text = transcript(&output);
    // curl prefers PLAIN over LOGIN when the server offers both.
    assert!(text.contains("> AUTH PLAIN"), "{text}");
    assert!(!text.contains("> STARTTLS"), "{text}");
    assert_delivered(
        &delivered(&env, 1).await,
        SALES_EMAIL,
        SALES_EMAIL,
        &["buyer@example.net", "boss@example.org"],
        &message,
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_starttls_required() {
    if !require("curl") {
        return;
    }
    let env = Env::start().await;
    let ca = env.path("ca.pem");
    std::fs::write(&ca, &env.pki.ca_cert_pem).unwrap();
    let message = realistic_message(SALES_EMAIL, "buyer@example.net", "curl-tls", false);
    let output = curl(
        &env,
        APP,
        &["--ssl-reqd", "--cacert", ca.to_str().unwrap()],
        &message,
    )
    .await;
    assert_success("curl", &output);
    let text = transcript(&output);
    assert!(text.contains("> STARTTLS"), "{text}");
    assert!(text.contains("> AUTH "), "{text}");
    assert_delivered(
        &delivered(&env, 1).await,
        SALES_EMAIL,
        SALES_EMAIL,
        &["buyer@example.net", "boss@example.org"],
        &message,
    );
    env.stop().await;
}

// ---------------------------------------------------------------------------------------
// swaks
// ---------------------------------------------------------------------------------------

async fn swaks(env: &Env, mechanism: &str, message: &[u8]) -> Output {
    let eml = env.path("swaks.eml");
    std::fs::write(&eml, message).unwrap();
    let server = env.relay_addr.to_string();
    let data = format!("@{}", eml.display());
    run(
        "swaks",
        &[
            "--server",
            &server,
            "--helo",
            "client.test",
            "--auth",
            mechanism,
            "--auth-user",
            SCANNER.0,
            "--auth-password",
            SCANNER.1,
            "--from",
            "helpdesk@example.com",
            "--to",
            "customer@example.net",
            "--data",
            &data,
            "--timeout",
            "30",
        ],
        None,
    )
    .await
}

async fn swaks_test(mechanism: &str) {
    if !require("swaks") {
        return;
    }
    let env = Env::start().await;
    // "helpdesk@example.com" is served by the support asset's "@example.com" claim.
    let subject = format!("swaks-{}", mechanism.to_lowercase());
    let message = realistic_message(
        "helpdesk@example.com",
        "customer@example.net",
        &subject,
        mechanism == "LOGIN",
    );
    let output = swaks(&env, mechanism, &message).await;
    // swaks (20201014, Debian 12) always appends "\r\n." to the data it read, even when
    // the data already ends in CRLF: the wire carries the file plus one empty line.
    let mut expected = message.clone();
    expected.extend_from_slice(b"\r\n");
    assert_success("swaks", &output);
    let text = transcript(&output);
    assert!(
        text.contains(&format!("~> AUTH {mechanism}"))
            || text.contains(&format!("-> AUTH {mechanism}")),
        "{text}"
    );
    assert!(text.contains("<-  235"), "{text}");
    assert_delivered(
        &delivered(&env, 1).await,
        SUPPORT_EMAIL,
        "helpdesk@example.com",
        &["customer@example.net"],
        &expected,
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_auth_plain() {
    swaks_test("PLAIN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_auth_login() {
    swaks_test("LOGIN").await;
}

// ---------------------------------------------------------------------------------------
// msmtp
// ---------------------------------------------------------------------------------------

async fn msmtp(env: &Env, auth: &str, tls_lines: &str, message: &[u8]) -> Output {
    let config = env.path("msmtprc");
    std::fs::write(
        &config,
        format!(
            "defaults\n\
             logfile {log}\n\
             \n\
             account relay\n\
             host 127.0.0.1\n\
             port {port}\n\
             domain client.test\n\
             {auth}\n\
             user {user}\n\
             password {password}\n\
             from {from}\n\
             {tls_lines}\n\
             \n\
             account default : relay\n",
            log = env.path("msmtp.log").display(),
            port = env.relay_addr.port(),
            user = APP.0,
            password = APP.1,
            from = SALES_EMAIL,
        ),
    )
    .unwrap();
    // msmtp refuses a config file that holds a password and others may read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    run(
        "msmtp",
        &[
            "--file",
            config.to_str().unwrap(),
            "--debug",
            "buyer@example.net",
        ],
        Some(message),
    )
    .await
}

/// Sends a message with msmtp (with STARTTLS when `tls`) and checks what arrived;
/// returns msmtp's transcript.
async fn msmtp_test(tls: bool, subject: &str) -> String {
    let env = Env::start().await;
    // Without TLS msmtp refuses "auth on" ("cannot use a secure authentication
    // method"): it only picks a cleartext mechanism by itself over TLS, so the plain
    // connection names one explicitly.
    let (auth, tls_lines) = if tls {
        let ca = env.path("client-ca.pem");
        std::fs::write(&ca, &env.pki.ca_cert_pem).unwrap();
        let lines = format!("tls on\ntls_starttls on\ntls_trust_file {}", ca.display());
        ("auth on", lines)
    } else {
        ("auth login", "tls off".to_string())
    };
    let message = realistic_message(SALES_EMAIL, "buyer@example.net", subject, true);
    let output = msmtp(&env, auth, &tls_lines, &message).await;
    assert_success("msmtp", &output);
    assert_delivered(
        &delivered(&env, 1).await,
        SALES_EMAIL,
        SALES_EMAIL,
        &["buyer@example.net"],
        &message,
    );
    env.stop().await;
    transcript(&output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msmtp_plain_connection() {
    if !require("msmtp") {
        return;
    }
    let text = msmtp_test(false, "msmtp-plain").await;
    assert!(text.contains("--> AUTH LOGIN"), "{text}");
    assert!(!text.contains("--> STARTTLS"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msmtp_starttls() {
    if !require("msmtp") {
        return;
    }
    let text = msmtp_test(true, "msmtp-tls").await;
    assert!(text.contains("--> STARTTLS"), "{text}");
    assert!(text.contains("--> AUTH "), "{text}");
}
