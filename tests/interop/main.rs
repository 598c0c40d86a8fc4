//! Real SMTP clients and peers against the relay: swaks, msmtp, curl, Python's smtplib,
//! a private Postfix instance using the relay as its relayhost, and the README's PHPMailer
//! and nodemailer snippets. A test whose program is missing skips, except under CI
//! (`CI=true`), where it fails.

#[path = "../common/mod.rs"]
mod common;

mod postfix;
mod real_clients;
mod snippets;
