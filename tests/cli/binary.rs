//! The real `smtp-oauth-relay` binary: `serve --sandbox`, `hash-password`, `check` and the
//! exit code for a broken config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use smtp_oauth_relay::sandbox::token_issuer::IssuerMode;

const BIN: &str = env!("CARGO_BIN_EXE_smtp-oauth-relay");

/// sysexits.h EX_CONFIG, what the binary returns for a config it cannot use.
const EXIT_CONFIG: i32 = 78;

/// Kills (and reaps) the child unless the test has already waited for it, so that a
/// failing assertion never leaves a relay running.
struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    fn id(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    /// Waits up to `limit` for the child to exit.
    fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port that was free a moment ago (the binary binds it itself, so a race with another
/// process is possible; callers retry).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Starts `serve --sandbox` on a free port and waits until it accepts connections.
/// Returns the guard, the address and the file that collects its stderr.
fn start_sandbox(dir: &Path, mail_dir: &Path) -> (ChildGuard, SocketAddr, PathBuf) {
    start_sandbox_with(dir, mail_dir, &[])
}

/// [`start_sandbox`] with more arguments for `serve` (e.g. `--sandbox-transport`).
fn start_sandbox_with(
    dir: &Path,
    mail_dir: &Path,
    extra: &[&str],
) -> (ChildGuard, SocketAddr, PathBuf) {
    let mut last_log = String::new();
    for attempt in 0..5 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join(format!("serve-{attempt}.log"));
        let child = Command::new(BIN)
            .args(["serve", "--sandbox", "--listen", &addr.to_string()])
            .arg("--sandbox-mail-dir")
            .arg(mail_dir)
            .args(extra)
            .env_remove("SMTP_OAUTH_RELAY_CONFIG")
            .env_remove("SMTP_OAUTH_RELAY_LISTEN")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("serve-{attempt}.out"))).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut guard = ChildGuard { child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = guard.try_wait() {
                // Most likely the port was taken in between: try another one.
                guard.child = None;
                last_log = format!("exited with {status}:\n{}", read_lossy(&log));
                break;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return (guard, addr, log);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if guard.child.is_some() {
            panic!(
                "serve --sandbox did not accept connections within 30 s:\n{}",
                read_lossy(&log)
            );
        }
    }
    panic!("serve --sandbox could not start in 5 attempts; last one {last_log}");
}

/// Sends one message through `addr` with Python's smtplib (user demo / demo).
fn send_with_smtplib(addr: SocketAddr, message: &[u8]) -> Output {
    let script = r#"
import smtplib, sys
msg = sys.stdin.buffer.read()
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30) as server:
    server.login("demo", "demo")
    server.sendmail("you@example.com", ["friend@example.net"], msg)
print("SENT")
"#;
    let mut child = Command::new("python3")
        .args([
            "-c",
            script,
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(message).unwrap();
    collect(child, Duration::from_secs(60))
}

/// Runs the binary to completion with a timeout.
fn run_bin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("SMTP_OAUTH_RELAY_CONFIG")
        .env_remove("SMTP_OAUTH_RELAY_LISTEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    collect(child, Duration::from_secs(60))
}

/// Reads the child's stdout and stderr on threads and waits for it with a timeout,
/// killing it if it overruns.
fn collect(mut child: Child, limit: Duration) -> Output {
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let mut guard = ChildGuard { child: Some(child) };
    let status = guard
        .wait_timeout(limit)
        .unwrap_or_else(|| panic!("the child did not finish within {limit:?}"));
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn text(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn serve_sandbox_over_the_gmail_api_delivers_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mail_dir = dir.path().join("mail");
    let (_relay, addr, log) =
        start_sandbox_with(dir.path(), &mail_dir, &["--sandbox-transport", "gmail-api"]);
    let message = b"From: You <you@example.com>\r\n\
        To: Friend <friend@example.net>\r\n\
        Subject: sandbox over the Gmail API\r\n\
        \r\n\
        Hello through the API.\r\n\
        .a line with a leading dot\r\n";
    let output = send_with_smtplib(addr, message);
    assert!(
        output.status.success(),
        "smtplib failed: {}\nrelay log:\n{}",
        text(&output),
        read_lossy(&log)
    );
    // The fake API saves before it answers 200, and the relay answers 250 only after.
    let found: Vec<PathBuf> = std::fs::read_dir(&mail_dir)
        .unwrap()
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    let content = std::fs::read(&found[0]).unwrap();
    let (_, rest) = split_received(&content);
    assert_eq!(
        String::from_utf8_lossy(&rest),
        String::from_utf8_lossy(message)
    );
    let log_text = read_lossy(&log);
    assert!(log_text.contains("upstream_id=18c"), "{log_text}");
}

/// Peak resident memory of a process, from /proc (kB).
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A 20 MiB message through the Gmail API transport is spooled and streamed, not held:
/// the relay's peak memory (which includes the in-process fake API) grows far less than
/// the message. Not a timing assertion: a memory bound.
#[test]
fn a_20_mib_message_over_the_gmail_api_keeps_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mail_dir = dir.path().join("mail");
    let (relay, addr, log) =
        start_sandbox_with(dir.path(), &mail_dir, &["--sandbox-transport", "gmail-api"]);
    let mut message =
        b"From: you@example.com\r\nTo: friend@example.net\r\nSubject: big\r\n\r\n".to_vec();
    while message.len() < 20 * 1024 * 1024 {
        message.extend_from_slice(&[b'x'; 76]);
        message.extend_from_slice(b"\r\n");
    }
    // A small message first, so the baseline includes TLS, token and connection state.
    let warm = send_with_smtplib(
        addr,
        b"From: you@example.com\r\nTo: friend@example.net\r\n\r\nwarm\r\n",
    );
    assert!(
        warm.status.success(),
        "{}\n{}",
        text(&warm),
        read_lossy(&log)
    );
    let pid = relay.id();
    let before = peak_rss_kb(pid);
    let output = send_with_smtplib(addr, &message);
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output),
        read_lossy(&log)
    );
    let after = peak_rss_kb(pid);
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 12,
        "peak RSS grew {grown_mib} MiB ({before} kB -> {after} kB) for a 20 MiB message"
    );
    let delivered: u64 = std::fs::read_dir(&mail_dir)
        .unwrap()
        .filter_map(|entry| entry.ok()?.metadata().ok().map(|m| m.len()))
        .max()
        .unwrap();
    assert!(delivered > message.len() as u64, "{delivered}");
}

#[test]
fn serve_sandbox_relays_to_mail_dir_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mail_dir = dir.path().join("mail");
    let (mut relay, addr, log) = start_sandbox(dir.path(), &mail_dir);

    let message = b"From: You <you@example.com>\r\n\
        To: Friend <friend@example.net>\r\n\
        Subject: sandbox via the binary\r\n\
        Date: Tue, 25 Nov 2025 10:00:00 +0100\r\n\
        Message-ID: <binary-sandbox@client.test>\r\n\
        \r\n\
        Hello through the real binary.\r\n\
        .a line with a leading dot\r\n";
    let output = send_with_smtplib(addr, message);
    assert!(
        output.status.success(),
        "smtplib failed: {}\nrelay log:\n{}",
        text(&output),
        read_lossy(&log)
    );

    // The relay answered 250 only after the upstream did, and the upstream saves the
    // file (atomically, via a temporary name) before answering.
    let deadline = Instant::now() + Duration::from_secs(10);
    let eml = loop {
        let found: Vec<PathBuf> = std::fs::read_dir(&mail_dir)
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                    .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(path) = found.first() {
            assert_eq!(found.len(), 1, "{found:?}");
            break path.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no .eml in {}; relay log:\n{}",
            mail_dir.display(),
            read_lossy(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let content = std::fs::read(&eml).unwrap();
    let (received, rest) = split_received(&content);
    assert!(received.contains("smtp-oauth-relay"), "{received}");
    assert_eq!(
        String::from_utf8_lossy(&rest),
        String::from_utf8_lossy(message)
    );

    let kill = Command::new("kill")
        .args(["-TERM", &relay.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = relay
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "still running 10 s after SIGTERM; log:\n{}",
                read_lossy(&log)
            )
        });
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status}; log:\n{}",
        read_lossy(&log)
    );
}

#[test]
fn hash_password_reads_stdin_and_prints_an_argon2id_hash() {
    let output = run_bin(&["hash-password"], b"correct horse battery staple\n");
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let hash = stdout.trim();
    assert!(hash.starts_with("$argon2id$"), "{}", text(&output));
    assert_eq!(stdout.lines().count(), 1, "{}", text(&output));

    use argon2::{PasswordHash, PasswordVerifier};
    let parsed = PasswordHash::new(hash).unwrap();
    let argon2 = argon2::Argon2::default();
    assert!(argon2
        .verify_password(b"correct horse battery staple", &parsed)
        .is_ok());
    assert!(argon2.verify_password(b"wrong", &parsed).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_asset_and_fails_when_reauthorization_is_needed() {
    let env = Env::start().await;
    let config = env.path("relay.toml");
    let config_arg = config.to_str().unwrap().to_string();

    let run_check = || {
        let config_arg = config_arg.clone();
        tokio::task::spawn_blocking(move || run_bin(&["check", "--config", &config_arg], b""))
    };

    let output = run_check().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{}", text(&output));
    assert!(stdout.contains("asset support: OK"), "{}", text(&output));
    assert!(stdout.contains("asset sales: OK"), "{}", text(&output));

    // The forecast the console and the alerts show: a time-limited grant (Testing mode).
    env.issuer
        .set_refresh_token_lifetime(Some(std::time::Duration::from_secs(7 * 24 * 3600)));
    let output = run_check().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        stdout.contains("refresh token expires ")
            && stdout.contains("(in 6 d 23 h): the provider issued a time-limited grant"),
        "{}",
        text(&output)
    );
    assert!(stdout.contains("\"In production\""), "{}", text(&output));
    env.issuer.set_refresh_token_lifetime(None);

    env.issuer.set_mode(IssuerMode::InvalidGrant);
    let output = run_check().await.unwrap();
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert_ne!(output.status.code(), Some(EXIT_CONFIG), "{all}");
    assert!(all.contains("asset support: FAILED"), "{all}");
    assert!(all.contains("asset sales: FAILED"), "{all}");
    assert!(all.contains("re-authorization"), "{all}");
    // The secrets from the config never show up in the report.
    for secret in [SUPPORT_SECRET, SUPPORT_REFRESH, SALES_SECRET, SALES_REFRESH] {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
    env.stop().await;
}

/// A config that is valid except for what `mutate` does to it.
fn config_with(mutate: impl FnOnce(&str) -> String) -> String {
    // Any valid PHC string will do: the config is rejected before anyone logs in.
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$EyisUoIL8Us9jQXrWGC8Rg$hsonQp5vnH/12ZhgQEcP5ST51pfS0Fq6uWm+xtrs4nc";
    let text = format!(
        r#"[server]
listen = "127.0.0.1:1"
hostname = "relay.test"

[[user]]
name = "user"
password_hash = "{hash}"
assets = ["*"]

[[asset]]
name = "first"
email = "first@example.com"
client_id = "client-1"
client_secret = "secret-1"
refresh_token = "refresh-1"
senders = ["first@example.com"]

[[asset]]
name = "second"
email = "second@example.com"
client_id = "client-2"
client_secret = "secret-2"
refresh_token = "refresh-2"
senders = ["second@example.com"]
"#
    );
    mutate(&text)
}

/// 1-based number of the line of `text` that contains `needle` (the last such line).
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .map(|(index, _)| index + 1)
        .last()
        .unwrap_or_else(|| panic!("{needle:?} not in config"))
}

/// Runs `serve --config` on `config_text`; asserts exit code 78 and that stderr names the
/// file, the line of `line_needle` and `field`.
fn assert_serve_rejects(config_text: &str, line_needle: &str, field: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config_text).unwrap();
    let output = run_bin(&["serve", "--config", path.to_str().unwrap()], b"");
    let all = text(&output);
    assert_eq!(output.status.code(), Some(EXIT_CONFIG), "{all}");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let location = format!("{}:{}:", path.display(), line_of(config_text, line_needle));
    assert!(
        stderr.contains(&location),
        "stderr should name {location}\n{all}"
    );
    assert!(stderr.contains(field), "stderr should name {field}\n{all}");
    stderr
}

#[test]
fn serve_with_a_sender_claimed_twice_exits_78_naming_file_line_and_field() {
    let config = config_with(|text| {
        text.replace(
            r#"senders = ["second@example.com"]"#,
            r#"senders = ["second@example.com", "first@example.com"]"#,
        )
    });
    let stderr = assert_serve_rejects(
        &config,
        r#""second@example.com", "first@example.com""#,
        "asset[1].senders",
    );
    assert!(stderr.contains("first@example.com"), "{stderr}");
}

#[test]
fn serve_with_an_unknown_key_exits_78_naming_file_line_and_field() {
    let config = config_with(|text| {
        text.replace(
            "hostname = \"relay.test\"\n",
            "hostname = \"relay.test\"\nlisten_prot = 2525\n",
        )
    });
    assert_serve_rejects(&config, "listen_prot", "listen_prot");
}
