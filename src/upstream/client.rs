//! The SMTP dialogue with Gmail (or any XOAUTH2 submission server), over any stream.
//!
//! [`SmtpClient`] speaks the protocol and nothing else: greeting, EHLO, STARTTLS (up to
//! handing the stream over for the handshake), `AUTH XOAUTH2` inline or in two steps, and
//! the transaction command by command, so every reply the session sees is the upstream's
//! real answer. It is generic over its stream (as Stalwart's `SmtpClient<T>`) so the
//! dialogue can be tested over `tokio::io::duplex`; opening TCP and TLS is `connect.rs`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::error::{Step, UpstreamError};
use crate::config::Config;
use crate::credentials::secret::Secret;
use crate::logsafe::Untrusted;
use crate::smtp::ehlo::Capabilities;
use crate::smtp::reply::{parse_reply, Reply, ReplyParse};
use crate::smtp::xoauth2::{self, ErrorChallenge};

/// RFC 5321 §4.5.3.1.4 says 512 for a command line; an inline AUTH response that would
/// push past it must use the two-step form (Gmail answers 555 otherwise).
const MAX_COMMAND_LINE: usize = 512;
/// Generous bounds on replies we accept, so a broken server cannot make us buffer forever.
const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 200;

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Our name in EHLO.
    pub ehlo_name: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub final_reply_timeout: Duration,
}

impl UpstreamSettings {
    /// The one way to derive them: our hostname and the `[timeouts]` upstream values.
    pub fn from_config(config: &Config) -> UpstreamSettings {
        UpstreamSettings {
            ehlo_name: config.server.hostname.clone(),
            connect_timeout: config.timeouts.upstream_connect,
            command_timeout: config.timeouts.upstream_command,
            final_reply_timeout: config.timeouts.upstream_final_reply,
        }
    }
}

/// One SMTP client connection over `T`. In production `T` is a TLS stream (see
/// [`Upstream`](super::Upstream)); the STARTTLS prelude runs over the plain TCP stream.
pub struct SmtpClient<T> {
    pub(super) stream: T,
    pub(super) read_buf: Vec<u8>,
    capabilities: Capabilities,
    /// `host:port`, for errors and log lines.
    target: String,
    command_timeout: Duration,
    final_reply_timeout: Duration,
    /// The access token this connection authenticated with, and when it expires: a
    /// provider that later ends the session for that token gets it invalidated.
    token: Option<Secret>,
    token_expires_at: Option<tokio::time::Instant>,
    /// A MAIL was accepted and its transaction has not ended yet (no final reply, no RSET):
    /// only then does a kept connection need RSET before the next MAIL (RFC 5321 §4.1.1.4:
    /// the reply to the end of data ends the transaction, whatever it says).
    pub(super) transaction_open: bool,
    /// BDAT chunks sent without waiting for their replies (PIPELINING): their replies come
    /// before the last chunk's, and [`final_reply`](Self::final_reply) reads them.
    pub(super) bdat_unanswered: usize,
    /// The asset's `upstream_connections` slot this connection holds while it lives
    /// (issue 16); given back when the connection is dropped.
    slot: Option<crate::limits::Slot>,
}

impl<T> SmtpClient<T> {
    /// Holds an `upstream_connections` slot for the connection's lifetime.
    pub fn hold_slot(&mut self, slot: Option<crate::limits::Slot>) {
        self.slot = slot;
    }

    /// A client on a stream that was just opened (or just secured); nothing is read or
    /// written yet.
    pub fn new(stream: T, target: impl Into<String>, settings: &UpstreamSettings) -> Self {
        SmtpClient {
            stream,
            read_buf: Vec::with_capacity(4096),
            capabilities: Capabilities::default(),
            target: target.into(),
            command_timeout: settings.command_timeout,
            final_reply_timeout: settings.final_reply_timeout,
            token: None,
            token_expires_at: None,
            transaction_open: false,
            bdat_unanswered: 0,
            slot: None,
        }
    }

    pub fn token_expires_at(&self) -> Option<tokio::time::Instant> {
        self.token_expires_at
    }

    /// The token the connection authenticated with.
    pub fn token(&self) -> Option<&Secret> {
        self.token.as_ref()
    }

    /// Remembers the token the connection authenticated with and its expiry.
    pub fn set_token(&mut self, token: Secret, expires_at: tokio::time::Instant) {
        self.token = Some(token);
        self.token_expires_at = Some(expires_at);
    }

    /// What the last EHLO offered (after STARTTLS: what was offered under TLS).
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub(super) fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    fn lost(&self, reason: String) -> UpstreamError {
        UpstreamError::Lost {
            target: self.target.clone(),
            reason,
        }
    }

    fn timed_out(&self, after: Duration) -> UpstreamError {
        UpstreamError::Timeout {
            target: self.target.clone(),
            secs: after.as_secs(),
        }
    }

    fn unexpected(&self, step: Step, reply: Reply) -> UpstreamError {
        UpstreamError::Unexpected {
            target: self.target.clone(),
            step,
            reply,
        }
    }

    fn auth_rejected(&self, reply: Reply, challenge: Option<ErrorChallenge>) -> UpstreamError {
        UpstreamError::AuthRejected {
            target: self.target.clone(),
            reply,
            challenge,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> SmtpClient<T> {
    /// Reads the 220 greeting, then says EHLO.
    pub async fn handshake(&mut self, ehlo_name: &str) -> Result<(), UpstreamError> {
        let greeting = self.read_reply(self.command_timeout).await?;
        if greeting.code != 220 {
            return Err(self.unexpected(Step::Greeting, greeting));
        }
        self.ehlo(ehlo_name).await
    }

    /// EHLO, remembering what the server offers.
    pub async fn ehlo(&mut self, name: &str) -> Result<(), UpstreamError> {
        let reply = self.command(&format!("EHLO {name}")).await?;
        if reply.code != 250 {
            return Err(self.unexpected(Step::Ehlo, reply));
        }
        self.capabilities = Capabilities::from_ehlo(&reply);
        Ok(())
    }

    /// STARTTLS, refusing to go on in the clear. Returns the stream for the TLS handshake;
    /// the dialogue then starts over on the secured stream (RFC 3207 §4.2: forget
    /// everything learned before TLS and ask again).
    pub async fn starttls(mut self) -> Result<T, UpstreamError> {
        if !self.capabilities.starttls {
            return Err(UpstreamError::NoStartTls {
                target: self.target,
            });
        }
        let reply = self.command("STARTTLS").await?;
        if reply.code != 220 {
            return Err(self.unexpected(Step::StartTls, reply));
        }
        // CVE-2011-0411: anything that arrived with the 220 was sent before TLS and
        // could have been injected by a man in the middle.
        if !self.read_buf.is_empty() {
            tracing::warn!(
                upstream = %self.target,
                bytes = self.read_buf.len(),
                "discarding data received before the TLS handshake"
            );
        }
        Ok(self.stream)
    }

    /// `AUTH XOAUTH2` for `user` with `access_token`.
    pub async fn authenticate(
        &mut self,
        user: &str,
        access_token: &Secret,
    ) -> Result<(), UpstreamError> {
        if !self.capabilities.supports_auth("XOAUTH2") {
            return Err(UpstreamError::NoXoauth2 {
                target: self.target.clone(),
                offered: self.capabilities.auth_mechanisms.join(" "),
            });
        }
        let response = xoauth2::client_response(user, access_token.expose());
        let inline = format!("AUTH XOAUTH2 {response}");
        let reply = if inline.len() + 2 <= MAX_COMMAND_LINE {
            self.send_secret_line(&inline).await?
        } else {
            let challenge = self.command("AUTH XOAUTH2").await?;
            if challenge.code != 334 {
                return Err(self.auth_rejected(challenge, None));
            }
            self.send_secret_line(&response).await?
        };
        match reply.code {
            235 => Ok(()),
            334 => {
                // The failure dance: the 334 carries a JSON error, the server wants an
                // empty line before it sends the real (535) reply.
                let challenge = ErrorChallenge::decode(&reply.text());
                let final_reply = self.command("").await?;
                Err(self.auth_rejected(final_reply, challenge))
            }
            _ => Err(self.auth_rejected(reply, None)),
        }
    }

    /// Sends one command line (without CRLF) and returns the reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply, UpstreamError> {
        // The line carries client-supplied addresses.
        tracing::trace!(upstream = %self.target, "C: {}", Untrusted(line));
        self.write_line(line).await?;
        let reply = self.read_reply(self.command_timeout).await?;
        self.observe(line, &reply);
        Ok(reply)
    }

    /// Follows the transaction state from the commands and their replies.
    fn observe(&mut self, line: &str, reply: &Reply) {
        let verb = line.get(..4).unwrap_or(line);
        if verb.eq_ignore_ascii_case("MAIL") && reply.is_positive() {
            self.transaction_open = true;
        } else if verb.eq_ignore_ascii_case("RSET") && reply.is_positive() {
            self.transaction_open = false;
        }
    }

    /// Whether the connection is in the middle of a transaction (a MAIL was accepted and
    /// neither a final reply nor RSET has ended it).
    pub fn transaction_open(&self) -> bool {
        self.transaction_open
    }

    /// Several commands in one write (RFC 2920 PIPELINING; only when the server
    /// advertised it), then their replies in order.
    pub async fn pipeline(&mut self, lines: &[&str]) -> Result<Vec<Reply>, UpstreamError> {
        let mut bytes = Vec::new();
        for line in lines {
            tracing::trace!(upstream = %self.target, "C: {}", Untrusted(line));
            bytes.extend_from_slice(line.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        self.write_all(&bytes).await?;
        self.flush().await?;
        let mut replies = Vec::with_capacity(lines.len());
        for line in lines {
            let reply = self.read_reply(self.command_timeout).await?;
            self.observe(line, &reply);
            replies.push(reply);
        }
        Ok(replies)
    }

    /// Like [`command`](Self::command) for a line that carries a token: never traced.
    async fn send_secret_line(&mut self, line: &str) -> Result<Reply, UpstreamError> {
        tracing::trace!(upstream = %self.target, "C: <credentials redacted>");
        self.write_line(line).await?;
        self.read_reply(self.command_timeout).await
    }

    async fn write_line(&mut self, line: &str) -> Result<(), UpstreamError> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.write_all(&bytes).await?;
        self.flush().await
    }

    /// Message bytes in wire form (dot-stuffed, CRLF lines).
    pub async fn send_data(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        self.write_all(bytes).await
    }

    /// Sends the last message bytes, which end with the end-of-data terminator, in one
    /// write (the dot does not cost a write, a TLS record and a packet of its own). Kept
    /// apart from [`final_reply`](Self::final_reply) because only a failure after the
    /// terminator went out leaves the outcome unknown.
    pub async fn send_data_end(
        &mut self,
        bytes_with_terminator: &[u8],
    ) -> Result<(), UpstreamError> {
        self.write_all(bytes_with_terminator).await?;
        self.flush().await
    }

    /// Sends the end-of-data terminator on its own.
    pub async fn send_terminator(&mut self) -> Result<(), UpstreamError> {
        self.send_data_end(b".\r\n").await
    }

    /// The verdict on the message, after [`send_data_end`](Self::send_data_end) or the last
    /// BDAT chunk, waited for with the final-reply cap. With BDAT chunks whose replies were
    /// not waited for, those come first: the first refusal among them is the verdict (RFC
    /// 3030 §4: a server that refused a chunk refuses the rest of the message).
    pub async fn final_reply(&mut self) -> Result<Reply, UpstreamError> {
        let mut refusal = None;
        while self.bdat_unanswered > 0 {
            let reply = self.read_reply(self.command_timeout).await?;
            self.bdat_unanswered -= 1;
            if !reply.is_positive() && refusal.is_none() {
                refusal = Some(reply);
            }
        }
        let last = self.read_reply(self.final_reply_timeout).await?;
        self.transaction_open = false;
        Ok(refusal.unwrap_or(last))
    }

    /// Polite goodbye; errors do not matter any more at this point.
    pub async fn quit(mut self) {
        let _ = timeout(Duration::from_secs(5), self.command("QUIT")).await;
        let _ = self.stream.shutdown().await;
    }

    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        match timeout(self.command_timeout, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(self.lost(err.to_string())),
            Err(_) => Err(self.timed_out(self.command_timeout)),
        }
    }

    pub(super) async fn flush(&mut self) -> Result<(), UpstreamError> {
        match timeout(self.command_timeout, self.stream.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(self.lost(err.to_string())),
            Err(_) => Err(self.timed_out(self.command_timeout)),
        }
    }

    pub(super) async fn read_reply(&mut self, limit: Duration) -> Result<Reply, UpstreamError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match parse_reply(&self.read_buf, MAX_REPLY_LINE, MAX_REPLY_LINES) {
                Ok(ReplyParse::Complete { reply, consumed }) => {
                    self.read_buf.drain(..consumed);
                    tracing::trace!(upstream = %self.target, "S: {reply}");
                    return Ok(reply);
                }
                Ok(ReplyParse::Incomplete) => {}
                Err(err) => {
                    return Err(UpstreamError::Protocol {
                        target: self.target.clone(),
                        reason: err.to_string(),
                    })
                }
            }
            // Straight into the buffer: a 4 KiB array here would sit in every future that
            // awaits a reply (each session's among them).
            self.read_buf.reserve(4096);
            let read =
                tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.read_buf)).await;
            match read {
                Ok(Ok(0)) => return Err(self.lost("connection closed by the server".into())),
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(self.lost(err.to_string())),
                Err(_) => return Err(self.timed_out(limit)),
            }
        }
    }
}
