//! The README's PHPMailer and nodemailer snippets ("Pointing mail software at the relay"),
//! run as they are written against the relay, with only the address, port, password and
//! mail addresses substituted: if a README snippet stops working, these tests fail.
//!
//! Needs `php` with Debian's PHPMailer (`php-cli`, `libphp-phpmailer`) and `node` with
//! nodemailer installed by npm under `$HOME/.cache/smtp-oauth-relay-node` (both installed by
//! `.ci/run`). When one is missing the test is skipped with a note, but under CI (env `CI`
//! set) it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::{installed_or_skip as require, on_path};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const PHPMAILER_AUTOLOAD: &str = "/usr/share/php/libphp-phpmailer/autoload.php";
const RECIPIENT: &str = "someone@example.net";

/// Where `.ci/run` installs nodemailer with npm.
fn node_modules() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is not set");
    Path::new(&home).join(".cache/smtp-oauth-relay-node/node_modules")
}

/// The code block (```lang) that follows the README heading `heading`.
fn readme_snippet(heading: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("cannot read README.md");
    let section = readme
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no heading {heading:?}"))
        .1;
    let body = section
        .split_once(&format!("```{lang}\n"))
        .unwrap_or_else(|| panic!("no ```{lang} block after {heading:?} in README.md"))
        .1;
    let (code, _) = body
        .split_once("\n```")
        .unwrap_or_else(|| panic!("unterminated ```{lang} block after {heading:?}"));
    format!("{code}\n")
}

/// Replaces every `from` in `text` by `to`; `from` must occur (so a README edit that drops
/// a placeholder fails loudly instead of sending to the wrong place).
fn substitute(text: &str, replacements: &[(&str, &str)]) -> String {
    let mut text = text.to_string();
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "README snippet no longer contains {from:?}:\n{text}"
        );
        text = text.replace(from, to);
    }
    text
}

/// The README's placeholders, mapped onto the test environment: relay port, the SCANNER
/// user's password, the `support` asset's address as sender and a recipient.
fn env_replacements(env: &Env) -> Vec<(&'static str, String)> {
    assert_eq!(env.relay_addr.ip().to_string(), "127.0.0.1");
    assert_eq!(
        SCANNER.0, "scanner",
        "the README snippets log in as scanner"
    );
    vec![
        ("2525", env.relay_addr.port().to_string()),
        ("change-me", SCANNER.1.to_string()),
        ("scanner@example.com", SUPPORT_EMAIL.to_string()),
        ("friend@example.net", RECIPIENT.to_string()),
    ]
}

/// Runs `program script` (in the env's directory, with `envs`) to completion on a blocking
/// thread, killing it after CLIENT_TIMEOUT; panics with its output unless it exits with 0.
async fn run_ok(env: &Env, program: &'static str, script: PathBuf, envs: Vec<(String, String)>) {
    let dir = env.path("");
    let stdout_path = env.path(&format!("{program}.stdout"));
    let stderr_path = env.path(&format!("{program}.stderr"));
    let (out, err) = (stdout_path.clone(), stderr_path.clone());
    let status = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(program)
            .arg(&script)
            .current_dir(dir)
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(std::fs::File::create(err).unwrap())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {program}: {err}"));
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!(
            "{program} failed ({status}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        ),
        Err(()) => panic!(
            "{program} did not finish within {CLIENT_TIMEOUT:?}:\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        ),
    }
}

/// The upstream got exactly one message: from the `support` mailbox, the README's envelope
/// (substituted), and the Subject and body after the relay's Received header.
async fn assert_snippet_delivered(env: &Env) {
    env.gmail.wait_for_messages(1, Duration::from_secs(5)).await;
    let delivered = env.gmail.messages();
    assert_eq!(delivered.len(), 1, "expected exactly one message upstream");
    let message = &delivered[0];
    assert_eq!(
        message.auth_user, SUPPORT_EMAIL,
        "XOAUTH2 user= must be the asset's mailbox"
    );
    assert_eq!(message.mail_from, SUPPORT_EMAIL);
    assert_eq!(message.rcpt_to, [RECIPIENT]);
    let (received, rest) = split_received(&message.data);
    assert!(
        received.contains("by relay.test (smtp-oauth-relay)"),
        "{received}"
    );
    let rest = String::from_utf8(rest).expect("the snippets send ASCII");
    let (headers, body) = rest
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header/body separator:\n{rest}"));
    let has_header = |name: &str, value: &str| {
        headers.lines().any(|line| {
            line.split_once(':').is_some_and(|(n, v)| {
                n.eq_ignore_ascii_case(name) && v.trim().trim_matches(['<', '>']) == value
            })
        })
    };
    assert!(has_header("Subject", "test"), "no 'Subject: test':\n{rest}");
    assert!(has_header("To", RECIPIENT), "no To: {RECIPIENT}:\n{rest}");
    assert!(
        headers
            .lines()
            .any(|line| line.starts_with("From:") && line.contains(SUPPORT_EMAIL)),
        "no From: {SUPPORT_EMAIL}:\n{rest}"
    );
    assert_eq!(body.trim_end(), "hello", "body:\n{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_phpmailer_snippet_sends() {
    if !require("php", on_path("php"))
        || !require(
            "PHPMailer (libphp-phpmailer)",
            Path::new(PHPMAILER_AUTOLOAD).is_file(),
        )
    {
        return;
    }
    let env = Env::start().await;
    let replacements = env_replacements(&env);
    let mut replacements: Vec<(&str, &str)> = replacements
        .iter()
        .map(|(from, to)| (*from, to.as_str()))
        .collect();
    let autoload = format!("'{PHPMAILER_AUTOLOAD}'");
    replacements.push(("'vendor/autoload.php'", &autoload));
    let code = substitute(&readme_snippet("### PHPMailer", "php"), &replacements);
    let script = env.path("send.php");
    std::fs::write(&script, code).unwrap();
    run_ok(&env, "php", script, Vec::new()).await;
    assert_snippet_delivered(&env).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_nodemailer_snippet_sends() {
    let modules = node_modules();
    if !require("node", on_path("node"))
        || !require(
            &format!("nodemailer (npm, in {})", modules.display()),
            modules.join("nodemailer/package.json").is_file(),
        )
    {
        return;
    }
    let env = Env::start().await;
    let replacements = env_replacements(&env);
    let replacements: Vec<(&str, &str)> = replacements
        .iter()
        .map(|(from, to)| (*from, to.as_str()))
        .collect();
    let code = substitute(
        &readme_snippet("### Node.js (nodemailer)", "js"),
        &replacements,
    );
    let script = env.path("send.js");
    std::fs::write(&script, code).unwrap();
    let envs = vec![("NODE_PATH".to_string(), modules.display().to_string())];
    run_ok(&env, "node", script, envs).await;
    assert_snippet_delivered(&env).await;
    env.stop().await;
}
