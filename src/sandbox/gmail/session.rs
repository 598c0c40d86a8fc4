//! One connection's SMTP dialogue with the fake Gmail: the command loop and the verbs up to the
//! message itself (EHLO/HELO, STARTTLS, AUTH XOAUTH2, MAIL, RCPT), each answered with Gmail's
//! wording. DATA/BDAT are in [`super::data`]; reading lines and writing replies in [`super::wire`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::data::size_exceeded;
use super::wire::{decode_xoauth2, multiline, normalize_reply, parse_path_arg, Line};
use super::{
    lock, Behaviour, Shared, GMAIL_SIZE_LIMIT, MAX_RECIPIENTS, MAX_SASL_LINE,
    XOAUTH2_ERROR_CHALLENGE,
};

pub(super) enum End {
    /// Orderly end (QUIT or client EOF): close TLS properly.
    Closed,
    /// Drop the transport without a TLS close_notify, like a crashed or cut-off server.
    Abort,
    StartTls,
}

#[derive(Default)]
pub(super) struct Transaction {
    pub(super) mail_from: Option<(String, Vec<String>)>,
    pub(super) rcpt_to: Vec<String>,
    /// BDAT chunks received so far, or None when no BDAT sequence is in progress.
    pub(super) bdat: Option<Vec<u8>>,
    pub(super) bdat_too_big: bool,
}

pub(super) struct Session<'a, S> {
    pub(super) stream: S,
    pub(super) buf: BytesMut,
    pub(super) shared: &'a Shared,
    pub(super) peer: SocketAddr,
    pub(super) conn_no: usize,
    pub(super) id: String,
    pub(super) tls: bool,
    pub(super) helo: Option<String>,
    pub(super) auth_user: Option<String>,
    /// The access token the connection authenticated with.
    pub(super) auth_token: Option<String>,
    pub(super) txn: Transaction,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Session<'a, S> {
    pub(super) fn new(
        stream: S,
        shared: &'a Shared,
        peer: SocketAddr,
        conn_no: usize,
        id: String,
        tls: bool,
    ) -> Self {
        Session {
            stream,
            buf: BytesMut::with_capacity(4096),
            shared,
            peer,
            conn_no,
            id,
            tls,
            helo: None,
            auth_user: None,
            auth_token: None,
            txn: Transaction::default(),
        }
    }

    pub(super) async fn close(mut self, end: End) -> io::Result<()> {
        match end {
            End::Closed | End::StartTls => self.stream.shutdown().await,
            End::Abort => Ok(()),
        }
    }

    pub(super) fn behaviour(&self) -> Behaviour {
        lock(&self.shared.behaviour).clone()
    }

    fn hostname(&self) -> &str {
        &self.shared.config.hostname
    }

    /// ` <id> - gsmtp`, the suffix Gmail puts on most replies.
    pub(super) fn tag(&self) -> String {
        format!("{} - gsmtp", self.id)
    }

    pub(super) async fn run(&mut self, greet: bool) -> io::Result<End> {
        if greet {
            if let Some(delay) = self.behaviour().greeting_delay {
                tokio::time::sleep(delay).await;
            }
            let greeting = match self.behaviour().greeting {
                Some(custom) => normalize_reply(&custom),
                None => format!("220 {} ESMTP {}", self.hostname(), self.tag()),
            };
            self.reply(&greeting).await?;
            if !greeting.starts_with('2') {
                tracing::info!(
                    peer = %self.peer,
                    conn = self.conn_no,
                    "sandbox Gmail: refused the connection in the greeting (behaviour)",
                );
                return Ok(End::Closed);
            }
        }
        loop {
            let line = match self.read_line(self.shared.config.max_command_line).await? {
                Line::Text(line) => line,
                Line::TooLong => {
                    self.log_client("<overlong line>");
                    let text = format!(
                        "555 5.5.2 Syntax error, command line too long. {}",
                        self.tag()
                    );
                    self.reply(&text).await?;
                    continue;
                }
                Line::Eof => return Ok(End::Closed),
            };
            let line = String::from_utf8_lossy(&line).into_owned();
            let (verb, args) = match line.split_once(' ') {
                Some((verb, args)) => (verb.to_ascii_uppercase(), args.trim()),
                None => (line.trim().to_ascii_uppercase(), ""),
            };
            if verb == "AUTH" {
                // The initial response carries the bearer token.
                let mechanism = args.split(' ').next().unwrap_or("");
                self.log_client(&format!("AUTH {mechanism} <redacted>"));
            } else {
                self.log_client(&line);
            }
            match verb.as_str() {
                "EHLO" => self.ehlo(args).await?,
                "HELO" => self.helo(args).await?,
                "STARTTLS" => {
                    if self.starttls(args).await? {
                        return Ok(End::StartTls);
                    }
                }
                "AUTH" => self.auth(args).await?,
                "MAIL" => self.mail(args).await?,
                "RCPT" => self.rcpt(args).await?,
                "DATA" => {
                    if !self.data(args).await? {
                        return Ok(End::Abort);
                    }
                }
                "BDAT" => {
                    if !self.bdat(args).await? {
                        return Ok(End::Abort);
                    }
                }
                "RSET" => {
                    self.txn = Transaction::default();
                    let text = format!("250 2.1.5 Flushed {}", self.tag());
                    self.reply(&text).await?;
                }
                "NOOP" => {
                    let text = format!("250 2.0.0 OK {}", self.tag());
                    self.reply(&text).await?;
                }
                "VRFY" => {
                    let text = format!("252 2.1.5 Send some mail, I'll try my best {}", self.tag());
                    self.reply(&text).await?;
                }
                "HELP" => {
                    let text = format!(
                        "214 2.0.0  https://www.google.com/search?btnI&q=RFC+5321 {}",
                        self.tag()
                    );
                    self.reply(&text).await?;
                }
                "QUIT" => {
                    let text = format!("221 2.0.0 closing connection {}", self.tag());
                    self.reply(&text).await?;
                    return Ok(End::Closed);
                }
                _ => {
                    let text = format!("502 5.5.1 Unrecognized command. {}", self.tag());
                    self.reply(&text).await?;
                }
            }
        }
    }

    async fn ehlo(&mut self, domain: &str) -> io::Result<()> {
        if domain.is_empty() {
            let text = format!(
                "501 5.5.4 Empty HELO/EHLO argument not allowed. {}",
                self.tag()
            );
            return self.reply(&text).await;
        }
        self.helo = Some(domain.to_owned());
        self.txn = Transaction::default();
        let mut lines = vec![
            format!("{} at your service, [{}]", self.hostname(), self.peer.ip()),
            format!("SIZE {GMAIL_SIZE_LIMIT}"),
            "8BITMIME".to_owned(),
        ];
        if self.tls {
            lines.push("AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH".to_owned());
        } else if !self.behaviour().no_starttls {
            lines.push("STARTTLS".to_owned());
        }
        let behaviour = self.behaviour();
        for ext in ["ENHANCEDSTATUSCODES", "PIPELINING", "CHUNKING", "SMTPUTF8"] {
            let withheld = (ext == "PIPELINING" && behaviour.no_pipelining)
                || (ext == "CHUNKING" && behaviour.no_chunking);
            if !withheld {
                lines.push(ext.to_owned());
            }
        }
        let text = multiline("250", &lines);
        self.reply(&text).await
    }

    async fn helo(&mut self, domain: &str) -> io::Result<()> {
        if domain.is_empty() {
            let text = format!(
                "501 5.5.4 Empty HELO/EHLO argument not allowed. {}",
                self.tag()
            );
            return self.reply(&text).await;
        }
        self.helo = Some(domain.to_owned());
        self.txn = Transaction::default();
        let text = format!("250 {} at your service", self.hostname());
        self.reply(&text).await
    }

    /// Returns true when the caller must switch to TLS.
    async fn starttls(&mut self, args: &str) -> io::Result<bool> {
        if self.tls || self.behaviour().no_starttls {
            let text = format!("502 5.5.1 Unrecognized command. {}", self.tag());
            self.reply(&text).await?;
            return Ok(false);
        }
        if !args.is_empty() {
            let text = format!(
                "501 5.5.2 Syntax error, no parameters allowed {}",
                self.tag()
            );
            self.reply(&text).await?;
            return Ok(false);
        }
        if !self.buf.is_empty() {
            tracing::warn!(
                peer = %self.peer,
                conn = self.conn_no,
                bytes = self.buf.len(),
                "sandbox Gmail: discarding data pipelined after STARTTLS"
            );
            self.buf.clear();
        }
        self.reply("220 2.0.0 Ready to start TLS").await?;
        Ok(true)
    }

    /// Replies 503 unless EHLO/HELO was given; Gmail insists on it before AUTH and MAIL.
    async fn require_helo(&mut self) -> io::Result<bool> {
        if self.helo.is_some() {
            return Ok(true);
        }
        let text = format!("503 5.5.1 EHLO/HELO first. {}", self.tag());
        self.reply(&text).await?;
        Ok(false)
    }

    pub(super) async fn require_tls(&mut self) -> io::Result<bool> {
        if self.tls {
            return Ok(true);
        }
        let text = format!(
            "530 5.7.0 Must issue a STARTTLS command first. {}",
            self.tag()
        );
        self.reply(&text).await?;
        Ok(false)
    }

    async fn auth(&mut self, args: &str) -> io::Result<()> {
        self.shared.auth_attempts.fetch_add(1, Ordering::SeqCst);
        if self.behaviour().close_during_auth {
            tracing::info!(
                peer = %self.peer,
                conn = self.conn_no,
                "sandbox Gmail: dropping connection during AUTH (behaviour)",
            );
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed during AUTH (behaviour)",
            ));
        }
        if !self.require_tls().await? || !self.require_helo().await? {
            return Ok(());
        }
        if self.auth_user.is_some() {
            let text = format!("503 5.5.1 Already authenticated. {}", self.tag());
            return self.reply(&text).await;
        }
        if self.txn.mail_from.is_some() {
            let text = format!(
                "503 5.5.1 AUTH not allowed during a mail transaction. {}",
                self.tag()
            );
            return self.reply(&text).await;
        }
        let mut parts = args.split_whitespace();
        let mechanism = parts.next().unwrap_or("");
        let initial = parts.next();
        if !mechanism.eq_ignore_ascii_case("XOAUTH2") {
            let text = format!("504 5.7.4 Unrecognized authentication type. {}", self.tag());
            return self.reply(&text).await;
        }
        if parts.next().is_some() {
            let text = format!("501 5.5.2 Cannot Decode response {}", self.tag());
            return self.reply(&text).await;
        }
        let response = match initial {
            Some(initial) => initial.to_owned(),
            None => {
                self.reply("334 ").await?;
                match self.read_line(MAX_SASL_LINE).await? {
                    Line::Text(line) => {
                        self.log_client("<redacted>");
                        String::from_utf8_lossy(&line).into_owned()
                    }
                    Line::TooLong => {
                        self.log_client("<overlong line>");
                        let text = format!(
                            "500 5.5.6 Authentication exchange line is too long {}",
                            self.tag()
                        );
                        return self.reply(&text).await;
                    }
                    Line::Eof => return Err(io::ErrorKind::UnexpectedEof.into()),
                }
            }
        };
        if response == "*" {
            let text = format!("501 5.7.0 Authentication aborted {}", self.tag());
            return self.reply(&text).await;
        }
        let Some((user, token)) = decode_xoauth2(&response) else {
            let text = format!("501 5.5.2 Cannot Decode response {}", self.tag());
            return self.reply(&text).await;
        };
        if self.shared.config.tokens.is_valid(&user, &token) {
            tracing::info!(
                peer = %self.peer,
                conn = self.conn_no,
                %user,
                "sandbox Gmail: XOAUTH2 accepted",
            );
            self.auth_user = Some(user);
            self.auth_token = Some(token);
            return self.reply("235 2.7.0 Accepted").await;
        }
        tracing::info!(
            peer = %self.peer,
            conn = self.conn_no,
            %user,
            "sandbox Gmail: XOAUTH2 rejected",
        );
        let challenge = format!("334 {XOAUTH2_ERROR_CHALLENGE}");
        self.reply(&challenge).await?;
        // The client is expected to answer the error challenge with an empty line.
        match self.read_line(MAX_SASL_LINE).await? {
            Line::Text(_) | Line::TooLong => self.log_client("<redacted>"),
            Line::Eof => return Err(io::ErrorKind::UnexpectedEof.into()),
        }
        let text = multiline(
            "535",
            &[
                "5.7.8 Username and Password not accepted. For more information, go to".to_owned(),
                format!(
                    "5.7.8  https://support.google.com/mail/?p=BadCredentials {}",
                    self.tag()
                ),
            ],
        );
        self.reply(&text).await
    }

    async fn mail(&mut self, args: &str) -> io::Result<()> {
        if !self.require_tls().await? || !self.require_helo().await? {
            return Ok(());
        }
        let token_gone = self.behaviour().session_ends_with_token
            && match (&self.auth_user, &self.auth_token) {
                (Some(user), Some(token)) => !self.shared.config.tokens.is_valid(user, token),
                _ => false,
            };
        if self.auth_user.is_none() || token_gone {
            let text = multiline(
                "530",
                &[
                    "5.7.0 Authentication Required. For more information, go to".to_owned(),
                    format!(
                        "5.7.0  https://support.google.com/mail/?p=WantAuthError {}",
                        self.tag()
                    ),
                ],
            );
            return self.reply(&text).await;
        }
        if self.txn.mail_from.is_some() {
            let text = format!("503 5.5.1 Nested MAIL command. {}", self.tag());
            return self.reply(&text).await;
        }
        if let Some(text) = self.behaviour().mail_reply {
            // e.g. Gmail's "550 5.4.5 Daily user sending limit exceeded" (issue 16).
            return self.reply(&super::wire::normalize_reply(&text)).await;
        }
        let Some((from, params)) = parse_path_arg(args, "FROM:") else {
            let text = format!("555 5.5.2 Syntax error. {}", self.tag());
            return self.reply(&text).await;
        };
        for param in &params {
            let (key, value) = param.split_once('=').unwrap_or((param.as_str(), ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => match value.parse::<u64>() {
                    Ok(size) if size > GMAIL_SIZE_LIMIT => {
                        let text = size_exceeded(&self.tag());
                        return self.reply(&text).await;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let text = format!("501 5.5.4 Invalid SIZE parameter {}", self.tag());
                        return self.reply(&text).await;
                    }
                },
                "BODY" | "SMTPUTF8" | "AUTH" | "RET" | "ENVID" => {}
                _ => {
                    let text = format!("555 5.5.4 Unsupported parameter {key} {}", self.tag());
                    return self.reply(&text).await;
                }
            }
        }
        self.txn = Transaction {
            mail_from: Some((from, params)),
            ..Transaction::default()
        };
        let text = format!("250 2.1.0 OK {}", self.tag());
        self.reply(&text).await
    }

    async fn rcpt(&mut self, args: &str) -> io::Result<()> {
        if !self.require_tls().await? {
            return Ok(());
        }
        if self.txn.mail_from.is_none() {
            let text = format!("503 5.5.1 MAIL first. {}", self.tag());
            return self.reply(&text).await;
        }
        let Some((to, _params)) = parse_path_arg(args, "TO:").filter(|(to, _)| !to.is_empty())
        else {
            let text = format!("555 5.5.2 Syntax error. {}", self.tag());
            return self.reply(&text).await;
        };
        if self.txn.rcpt_to.len() >= MAX_RECIPIENTS {
            let text = format!(
                "452 4.5.3 Your message has too many recipients. {}",
                self.tag()
            );
            return self.reply(&text).await;
        }
        let rejected = self
            .behaviour()
            .reject_recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&to));
        if rejected {
            let text = multiline(
                "550",
                &[
                    "5.1.1 The email account that you tried to reach does not exist. Please try"
                        .to_owned(),
                    "5.1.1 double-checking the recipient's email address for typos or".to_owned(),
                    "5.1.1 unnecessary spaces. For more information, go to".to_owned(),
                    format!(
                        "5.1.1  https://support.google.com/mail/?p=NoSuchUser {}",
                        self.tag()
                    ),
                ],
            );
            return self.reply(&text).await;
        }
        self.txn.rcpt_to.push(to);
        let text = format!("250 2.1.5 OK {}", self.tag());
        self.reply(&text).await
    }

    /// Replies with the 503/554 for DATA or BDAT issued out of sequence; true if in sequence.
    pub(super) async fn require_recipients(&mut self) -> io::Result<bool> {
        if self.txn.mail_from.is_none() {
            let text = format!("503 5.5.1 MAIL first. {}", self.tag());
            self.reply(&text).await?;
            return Ok(false);
        }
        if self.txn.rcpt_to.is_empty() {
            let text = format!("503 5.5.1 RCPT first. {}", self.tag());
            self.reply(&text).await?;
            return Ok(false);
        }
        Ok(true)
    }
}
