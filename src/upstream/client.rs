//! The client side towards Gmail (or any XOAUTH2 submission server).
//!
//! One [`Upstream`] is one authenticated SMTP connection: TCP, then implicit TLS or
//! STARTTLS (never continuing in the clear), EHLO, `AUTH XOAUTH2`. After that the session
//! drives the transaction command by command, so every reply the client sees is the
//! upstream's real answer.

use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::{UpstreamTarget, UpstreamTls};
use crate::credentials::secret::Secret;
use crate::logsafe::Untrusted;
use crate::smtp::ehlo::Capabilities;
use crate::smtp::reply::{parse_reply, Reply, ReplyParse};
use crate::smtp::xoauth2::{self, ErrorChallenge};
use crate::stream::MaybeTls;

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

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("TLS with {target} failed: {reason}")]
    Tls { target: String, reason: String },
    #[error("{target} does not offer STARTTLS; credentials are never sent without TLS")]
    NoStartTls { target: String },
    #[error("{target} does not offer AUTH XOAUTH2 (it offers: {offered})")]
    NoXoauth2 { target: String, offered: String },
    #[error("{target} refused the access token: {reply}{}", challenge.as_ref().map(|c| format!(" (challenge: {c})")).unwrap_or_default())]
    AuthRejected {
        target: String,
        reply: Reply,
        challenge: Option<ErrorChallenge>,
    },
    #[error("{target} answered \"{reply}\" to {step}")]
    Unexpected {
        target: String,
        step: Step,
        reply: Reply,
    },
    #[error("connection to {target} lost: {reason}")]
    Lost { target: String, reason: String },
    #[error("{target} did not answer within {secs} s")]
    Timeout { target: String, secs: u64 },
    #[error("{target} sent a malformed reply: {reason}")]
    Protocol { target: String, reason: String },
}

/// Where in the connection setup an upstream answered something unexpected; callers
/// match on it (STARTTLS trouble is logged as needing attention), so it is a type, not text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Greeting,
    Ehlo,
    StartTls,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Greeting => "the greeting",
            Step::Ehlo => "EHLO",
            Step::StartTls => "STARTTLS",
        })
    }
}

impl UpstreamError {
    /// A refusal of the credentials themselves (as opposed to a temporary 4xx or trouble
    /// with the connection).
    pub fn is_credential_rejection(&self) -> bool {
        match self {
            UpstreamError::AuthRejected {
                reply, challenge, ..
            } => challenge.is_some() || reply.code == 535,
            _ => false,
        }
    }
}

pub struct Upstream {
    stream: MaybeTls<TcpStream>,
    read_buf: Vec<u8>,
    capabilities: Capabilities,
    target: String,
    command_timeout: Duration,
    final_reply_timeout: Duration,
    /// When the access token this connection authenticated with expires.
    token_expires_at: Option<tokio::time::Instant>,
}

impl Upstream {
    pub fn token_expires_at(&self) -> Option<tokio::time::Instant> {
        self.token_expires_at
    }

    pub fn set_token_expires_at(&mut self, at: tokio::time::Instant) {
        self.token_expires_at = Some(at);
    }

    /// Connects and secures the connection (TLS verified against the target's roots), and
    /// learns the capabilities offered under TLS. Does not authenticate.
    pub async fn connect(
        target: &UpstreamTarget,
        settings: &UpstreamSettings,
    ) -> Result<Upstream, UpstreamError> {
        let name = format!("{}:{}", target.host, target.port);
        let tcp = timeout(
            settings.connect_timeout,
            TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        .map_err(|_| UpstreamError::Timeout {
            target: name.clone(),
            secs: settings.connect_timeout.as_secs(),
        })?
        .map_err(|err| UpstreamError::Connect {
            target: name.clone(),
            reason: err.to_string(),
        })?;
        // The final "." often goes in its own small write; without NODELAY, Nagle plus
        // delayed ACK add ~40 ms to every message.
        let _ = tcp.set_nodelay(true);

        let mut upstream = Upstream {
            stream: MaybeTls::Plain(tcp),
            read_buf: Vec::with_capacity(4096),
            capabilities: Capabilities::default(),
            target: name,
            command_timeout: settings.command_timeout,
            final_reply_timeout: settings.final_reply_timeout,
            token_expires_at: None,
        };
        if target.tls == UpstreamTls::Implicit {
            upstream.start_tls(target).await?;
        }
        upstream.expect_greeting().await?;
        upstream.ehlo(&settings.ehlo_name).await?;
        if target.tls == UpstreamTls::Starttls {
            if !upstream.capabilities.starttls {
                return Err(UpstreamError::NoStartTls {
                    target: upstream.target,
                });
            }
            let reply = upstream.command("STARTTLS").await?;
            if reply.code != 220 {
                return Err(UpstreamError::Unexpected {
                    target: upstream.target,
                    step: Step::StartTls,
                    reply,
                });
            }
            // CVE-2011-0411: anything that arrived with the 220 was sent before TLS and
            // could have been injected by a man in the middle.
            if !upstream.read_buf.is_empty() {
                tracing::warn!(
                    upstream = %upstream.target,
                    bytes = upstream.read_buf.len(),
                    "discarding data received before the TLS handshake"
                );
                upstream.read_buf.clear();
            }
            upstream.start_tls(target).await?;
            // RFC 3207 §4.2: forget everything learned before TLS and ask again.
            upstream.capabilities = Capabilities::default();
            upstream.ehlo(&settings.ehlo_name).await?;
        }
        Ok(upstream)
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    pub fn target(&self) -> &str {
        &self.target
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

    fn auth_rejected(&self, reply: Reply, challenge: Option<ErrorChallenge>) -> UpstreamError {
        UpstreamError::AuthRejected {
            target: self.target.clone(),
            reply,
            challenge,
        }
    }

    /// Sends one command line (without CRLF) and returns the reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply, UpstreamError> {
        // The line carries client-supplied addresses.
        tracing::trace!(upstream = %self.target, "C: {}", Untrusted(line));
        self.write_line(line).await?;
        self.read_reply(self.command_timeout).await
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
        for _ in lines {
            replies.push(self.read_reply(self.command_timeout).await?);
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

    /// Sends the end-of-data terminator. Kept apart from [`final_reply`](Self::final_reply)
    /// because only a failure after the terminator went out leaves the outcome unknown.
    pub async fn send_terminator(&mut self) -> Result<(), UpstreamError> {
        self.write_all(b".\r\n").await?;
        self.flush().await
    }

    /// The verdict on the message, after [`send_terminator`](Self::send_terminator), waited
    /// for with the final-reply cap.
    pub async fn final_reply(&mut self) -> Result<Reply, UpstreamError> {
        self.read_reply(self.final_reply_timeout).await
    }

    /// Polite goodbye; errors do not matter any more at this point.
    pub async fn quit(mut self) {
        let _ = timeout(Duration::from_secs(5), self.command("QUIT")).await;
        let _ = self.stream.shutdown().await;
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        match timeout(self.command_timeout, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(self.lost(err.to_string())),
            Err(_) => Err(self.timed_out(self.command_timeout)),
        }
    }

    async fn flush(&mut self) -> Result<(), UpstreamError> {
        match timeout(self.command_timeout, self.stream.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(self.lost(err.to_string())),
            Err(_) => Err(self.timed_out(self.command_timeout)),
        }
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

    async fn read_reply(&mut self, limit: Duration) -> Result<Reply, UpstreamError> {
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
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
            match read {
                Ok(Ok(0)) => return Err(self.lost("connection closed by the server".into())),
                Ok(Ok(n)) => self.read_buf.extend_from_slice(&chunk[..n]),
                Ok(Err(err)) => return Err(self.lost(err.to_string())),
                Err(_) => return Err(self.timed_out(limit)),
            }
        }
    }

    async fn expect_greeting(&mut self) -> Result<(), UpstreamError> {
        let greeting = self.read_reply(self.command_timeout).await?;
        if greeting.code != 220 {
            return Err(UpstreamError::Unexpected {
                target: self.target.clone(),
                step: Step::Greeting,
                reply: greeting,
            });
        }
        Ok(())
    }

    async fn ehlo(&mut self, name: &str) -> Result<(), UpstreamError> {
        let reply = self.command(&format!("EHLO {name}")).await?;
        if reply.code != 250 {
            return Err(UpstreamError::Unexpected {
                target: self.target.clone(),
                step: Step::Ehlo,
                reply,
            });
        }
        self.capabilities = Capabilities::from_ehlo(&reply);
        Ok(())
    }

    async fn start_tls(&mut self, target: &UpstreamTarget) -> Result<(), UpstreamError> {
        let tls_error = |reason: String| UpstreamError::Tls {
            target: format!("{}:{}", target.host, target.port),
            reason,
        };
        let server_name = ServerName::try_from(target.host.clone())
            .map_err(|err| tls_error(format!("invalid server name: {err}")))?;
        let tcp = self
            .stream
            .take_plain()
            .ok_or_else(|| tls_error("the connection is already TLS".into()))?;
        let connector = tokio_rustls::TlsConnector::from(target.client_config.clone());
        let tls = timeout(self.command_timeout, connector.connect(server_name, tcp))
            .await
            .map_err(|_| tls_error("handshake timed out".into()))?
            .map_err(|err| tls_error(err.to_string()))?;
        self.stream = MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Client(tls)));
        Ok(())
    }
}
