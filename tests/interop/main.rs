//! Real SMTP clients and peers against the relay: swaks, msmtp, curl, Python's smtplib,
//! a private Postfix instance using the relay as its relayhost, and the README's PHPMailer
//! and nodemailer snippets. A test whose program is missing skips, except under CI
//! (`CI=true`), where it fails.

#[path = "../common/mod.rs"]
mod common;

mod pipelining;
mod postfix;
mod real_clients;
mod snippets;

/// True when `what` is installed (`present`). When it is not: fails the test under CI
/// (`.ci/run` must install it), otherwise prints a note and returns false so that the test
/// can return early.
fn installed_or_skip(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    let in_ci = std::env::var("CI").is_ok_and(|value| !value.is_empty());
    assert!(
        !in_ci,
        "{what} is not installed but CI is set: the CI script (.ci/run) must install it"
    );
    eprintln!("skipping: {what} not installed (CI installs it)");
    false
}

/// True when an executable `tool` is on PATH.
fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool)).is_ok_and(|meta| {
                use std::os::unix::fs::PermissionsExt;
                meta.is_file() && meta.permissions().mode() & 0o111 != 0
            })
        })
    })
}
