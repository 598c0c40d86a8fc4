//! One client connection, from greeting to QUIT.
//!
//! The session is an explicit state machine. *What comes next* on the wire is decided by
//! the loop in [`Session::run`] (a command line; inside AUTH, a SASL line; after DATA, the
//! message); *where we are* is [`Phase`] (no transaction, or a transaction that owns an
//! authenticated upstream connection). Parsing is done by the pure `smtp` module; this
//! file only decides and does I/O.
//!
//! The rule everything here serves: a client hears 2xx for MAIL, RCPT and the message only
//! when the upstream said 2xx for the same thing. Whenever the upstream cannot be reached
//! or vanishes, the client hears 4xx and keeps the mail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Asset, AssetAccess, HeaderFromPolicy, User};
use crate::credentials::secret::Secret;
use crate::error::RelayError;
use crate::logsafe::Untrusted;
use crate::metrics::{Metrics, Outcome};
use crate::received::Trace;
use crate::relay::Relay;
use crate::replies::{relayed, Say};
use crate::smtp::address::{self, CanonicalAddress};
use crate::smtp::command::{parse_command, Command, CommandError, Param};
use crate::smtp::data::{DataLimits, DataProblem, DataScanner};
use crate::smtp::reply::Reply;
use crate::smtp::sasl::{self, Credentials, SaslError};
use crate::stream::MaybeTls;
use crate::throttle::Verdict;
use crate::upstream::pool::refuses_authentication;
use crate::upstream::{Upstream, UpstreamError};

/// How much we read from the client at once; also bounds the chunks sent upstream.
const READ_CHUNK: usize = 64 * 1024;

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// Where the session is in the SMTP dialogue.
enum Phase {
    /// No mail transaction (before or between messages).
    Idle,
    /// The upstream accepted MAIL FROM; RCPTs and DATA follow.
    Transaction(Box<Transaction>),
}

struct Transaction {
    asset: Arc<Asset>,
    upstream: Upstream,
    sender: String,
    recipients: Vec<String>,
    /// From the parsed header block, for the log line.
    message_id: Option<String>,
    /// Getting an authenticated upstream at MAIL FROM (token, connect, TLS, AUTH); near
    /// zero when the session's previous connection was reused.
    upstream_setup: Duration,
}

/// An authenticated upstream connection kept between transactions of one session. It is
/// reused only under the shared pool's rule (`pool::reusable`: idle age, token margin).
struct IdleUpstream {
    asset: String,
    upstream: Upstream,
    /// When its last transaction ended.
    parked_at: Instant,
}

/// What reading the next line from the client produced.
enum Input {
    Line(Vec<u8>),
    /// The line passed the limit; answer it. What follows of it, up to its line end, is
    /// dropped by the next read.
    TooLong,
    /// An overlong line's end did not come within `line_end_secs`.
    LineNotEnded,
    /// The client went away, or a write to it failed or timed out.
    Closed,
    TimedOut,
    ShutDown,
}

/// The client leg: a stream, a read buffer, and replies waiting to be flushed.
struct ClientConnection<IO> {
    stream: MaybeTls<IO>,
    read_buf: BytesMut,
    write_buf: Vec<u8>,
    /// Every write to the client is bounded by this: one that does not read its replies
    /// would otherwise hold the session, and its connection slot, forever.
    write_timeout: Duration,
    /// Set once a write timed out: nothing more is written (each try would wait again).
    write_timed_out: bool,
    /// How long the end of an overlong line may take.
    line_end_timeout: Duration,
    /// While the rest of an already answered overlong line is being dropped: the instant
    /// its line end must have come by.
    discard_until: Option<Instant>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ClientConnection<IO> {
    fn queue(&mut self, reply: &Reply) {
        reply.write_to(&mut self.write_buf);
    }

    /// Replies are queued and written only when we are about to wait for the client, so a
    /// pipelining client gets its replies in one packet (RFC 2920).
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.write_timed_out {
            return Err(write_timed_out());
        }
        let write = async {
            if !self.write_buf.is_empty() {
                self.stream.write_all(&self.write_buf).await?;
                self.write_buf.clear();
            }
            self.stream.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(written) => written,
            Err(_) => {
                self.write_timed_out = true;
                Err(write_timed_out())
            }
        }
    }

    /// The last flush and the close (a TLS close_notify is a write too), both bounded.
    async fn close(&mut self) {
        if self.flush().await.is_ok() {
            let _ = tokio::time::timeout(self.write_timeout, self.stream.shutdown()).await;
        }
    }

    /// Reads more bytes into the buffer; Ok(false) when the client closed the connection.
    async fn fill(&mut self, deadline: Instant) -> Result<bool, Input> {
        if self.flush().await.is_err() {
            return Err(Input::Closed);
        }
        self.read_buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.read_buf)).await {
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(_)) => Err(Input::Closed),
            Err(_) => Err(Input::TimedOut),
        }
    }

    /// The next line without its CRLF (or bare LF). A line longer than `max` (counting
    /// its CRLF) is reported as TooLong as soon as it passes the limit, without buffering
    /// it, so the client hears about it at once; the next call drops the rest of it up to
    /// its line end, which must come within the line-end timeout.
    async fn read_line(
        &mut self,
        max: usize,
        timeout: Duration,
        shutdown: Option<&CancellationToken>,
    ) -> Input {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line_end_by) = self.discard_until {
                if let Some(newline) = self.read_buf.iter().position(|&b| b == b'\n') {
                    self.read_buf.advance(newline + 1);
                    self.discard_until = None;
                    continue;
                }
                self.read_buf.clear();
                match self
                    .fill_or_shutdown(line_end_by.min(deadline), shutdown)
                    .await
                {
                    Ok(true) => continue,
                    Ok(false) => return Input::Closed,
                    Err(Input::TimedOut) if line_end_by <= deadline => return Input::LineNotEnded,
                    Err(input) => return input,
                }
            }
            if let Some(newline) = self.read_buf.iter().position(|&b| b == b'\n') {
                let line = self.read_buf.split_to(newline + 1);
                if line.len() > max {
                    return Input::TooLong;
                }
                let mut line = line.to_vec();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Input::Line(line);
            }
            // No line end yet, and with one the line would be longer than `max`.
            if self.read_buf.len() >= max {
                self.read_buf.clear();
                self.discard_until = Some(Instant::now() + self.line_end_timeout);
                return Input::TooLong;
            }
            match self.fill_or_shutdown(deadline, shutdown).await {
                Ok(true) => {}
                Ok(false) => return Input::Closed,
                Err(input) => return input,
            }
        }
    }

    async fn fill_or_shutdown(
        &mut self,
        deadline: Instant,
        shutdown: Option<&CancellationToken>,
    ) -> Result<bool, Input> {
        match shutdown {
            Some(shutdown) => tokio::select! {
                filled = self.fill(deadline) => filled,
                _ = shutdown.cancelled() => Err(Input::ShutDown),
            },
            None => self.fill(deadline).await,
        }
    }
}

fn write_timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the client does not read its replies",
    )
}

pub struct Session<IO> {
    relay: Arc<Relay>,
    conn: ClientConnection<IO>,
    peer: SocketAddr,
    id: String,
    helo: Option<String>,
    esmtp: bool,
    user: Option<Arc<User>>,
    phase: Phase,
    idle_upstream: Option<IdleUpstream>,
    errors: usize,
    /// Commands that move no mail forward (NOOP, RSET, VRFY, HELP, refused ones) since the
    /// last delivered message.
    junk_commands: usize,
    transactions: usize,
    /// The peer is in `trusted_networks`: MAIL without AUTH is allowed.
    trusted: bool,
    shutdown: CancellationToken,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    /// A session on `stream`; `stream` is already TLS for the implicit-TLS listener.
    pub fn new(
        relay: Arc<Relay>,
        stream: MaybeTls<IO>,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> Self {
        let id = relay.next_session_id();
        // An IPv4 client on a dual-stack listener arrives as ::ffff:a.b.c.d; policy
        // (loopback, trusted networks, throttling) must see the IPv4 address.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let trusted = relay
            .config
            .server
            .trusted_networks
            .iter()
            .any(|network| network.contains(&peer.ip()));
        let conn = ClientConnection {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: Vec::with_capacity(1024),
            write_timeout: relay.config.timeouts.client_write,
            write_timed_out: false,
            line_end_timeout: relay.config.timeouts.line_end,
            discard_until: None,
        };
        Session {
            relay,
            conn,
            peer,
            id,
            helo: None,
            esmtp: false,
            user: None,
            phase: Phase::Idle,
            idle_upstream: None,
            errors: 0,
            junk_commands: 0,
            transactions: 0,
            trusted,
            shutdown,
        }
    }

    /// Runs the dialogue to its end; never panics on client input.
    pub async fn run(mut self) {
        let span = tracing::info_span!(
            "session",
            id = %self.id,
            peer = %self.peer,
            user = tracing::field::Empty
        );
        async move {
            tracing::debug!(tls = self.conn.stream.is_tls(), "connected");
            let hostname = self.relay.config.server.hostname.clone();
            self.say(Say::Greeting {
                hostname: &hostname,
            });
            self.dialogue().await;
            self.conn.close().await;
            if self.conn.write_timed_out {
                tracing::info!("client does not read its replies, disconnected");
                self.relay.metrics.limit_hit("client_write");
            }
            // An open transaction is simply dropped: the upstream never saw the final
            // "." and discards what it had.
            if let Some(idle) = self.idle_upstream.take() {
                self.release(idle).await;
            }
            tracing::debug!(messages = self.transactions, "disconnected");
        }
        .instrument(span)
        .await
    }

    async fn dialogue(&mut self) {
        let limits = self.relay.config.limits.clone();
        let timeouts = self.relay.config.timeouts.clone();
        loop {
            // Shutdown interrupts only a session that is between transactions; a message in
            // flight is allowed to finish.
            let shutdown = match self.phase {
                Phase::Idle => Some(self.shutdown.clone()),
                Phase::Transaction(_) => None,
            };
            let input = self
                .conn
                .read_line(limits.max_command_line, timeouts.command, shutdown.as_ref())
                .await;
            let flow = match input {
                Input::Line(line) => self.handle_line(&line).await,
                Input::TooLong => {
                    self.relay.metrics.limit_hit("command_line");
                    self.reject(Say::CommandLineTooLong)
                }
                Input::LineNotEnded => {
                    tracing::info!("overlong line not ended in time, disconnecting");
                    self.relay.metrics.limit_hit("line_end");
                    self.say(Say::LineNotEnded);
                    Flow::Close
                }
                Input::Closed => Flow::Close,
                Input::TimedOut => {
                    tracing::info!("client timed out");
                    self.relay.metrics.limit_hit("timeout");
                    self.say(Say::CommandTimeout);
                    Flow::Close
                }
                Input::ShutDown => {
                    self.say(Say::ShuttingDown);
                    Flow::Close
                }
            };
            if flow == Flow::Close {
                return;
            }
        }
    }

    fn say(&mut self, say: Say<'_>) {
        self.conn.queue(&say.reply());
    }

    fn send(&mut self, reply: &Reply) {
        self.conn.queue(reply);
    }

    /// Replies with an error of the client's making and counts it, as an error and as a
    /// junk command; too many and we hang up.
    fn reject(&mut self, say: Say<'_>) -> Flow {
        self.say(say);
        match self.count_error() {
            Flow::Continue => self.count_junk(),
            Flow::Close => Flow::Close,
        }
    }

    /// Counts a refusal (ours, or a permanent one relayed from the upstream).
    fn count_error(&mut self) -> Flow {
        self.errors += 1;
        if self.errors >= self.relay.config.limits.max_errors {
            tracing::info!(errors = self.errors, "too many errors, disconnecting");
            self.relay.metrics.limit_hit("errors");
            self.say(Say::TooManyErrors);
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Counts a command that moves no mail forward. Cheap commands are still work, and a
    /// client looping on them holds a connection slot; Postfix's smtpd_junk_command_limit.
    fn count_junk(&mut self) -> Flow {
        self.junk_commands += 1;
        if self.junk_commands > self.relay.config.limits.max_junk_commands {
            tracing::info!(
                commands = self.junk_commands,
                "too many commands that send no mail, disconnecting"
            );
            self.relay.metrics.limit_hit("junk_commands");
            self.say(Say::TooManyJunkCommands);
            return Flow::Close;
        }
        Flow::Continue
    }

    async fn handle_line(&mut self, line: &[u8]) -> Flow {
        let command = match parse_command(line) {
            Ok(command) => command,
            Err(err) => {
                return match err {
                    CommandError::Unrecognized => self.reject(Say::UnknownCommand),
                    CommandError::Syntax(detail) => self.reject(Say::Syntax { detail }),
                    CommandError::BadSenderAddress => self.reject(Say::BadSenderSyntax),
                    CommandError::BadRecipientAddress => self.reject(Say::BadRecipientSyntax),
                }
            }
        };
        match command {
            Command::Ehlo { domain } => self.hello(domain, true).await,
            Command::Helo { domain } => self.hello(domain, false).await,
            Command::StartTls => self.starttls().await,
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(&mechanism, initial_response).await,
            Command::Mail { from, params } => self.mail(from, &params).await,
            Command::Rcpt { to, params } => self.rcpt(to, &params).await,
            Command::Data => self.data().await,
            Command::Rset => {
                if self.count_junk() == Flow::Close {
                    return Flow::Close;
                }
                self.end_transaction().await;
                self.say(Say::ResetOk);
                Flow::Continue
            }
            Command::Noop => self.junk_reply(Say::Ok),
            Command::Vrfy { .. } => self.junk_reply(Say::Vrfy),
            Command::Expn { .. } => self.reject(Say::ExpnDisabled),
            Command::Help { .. } => self.junk_reply(Say::Help),
            Command::Quit => {
                let hostname = self.relay.config.server.hostname.clone();
                self.say(Say::Bye {
                    hostname: &hostname,
                });
                Flow::Close
            }
        }
    }

    /// Answers a harmless command that counts against the junk-command limit.
    fn junk_reply(&mut self, say: Say<'_>) -> Flow {
        if self.count_junk() == Flow::Close {
            return Flow::Close;
        }
        self.say(say);
        Flow::Continue
    }

    async fn hello(&mut self, domain: String, extended: bool) -> Flow {
        // RFC 5321 §4.1.4: EHLO/HELO in the middle of a transaction resets it.
        self.end_transaction().await;
        let config = &self.relay.config;
        let hostname = config.server.hostname.clone();
        let reply = if extended {
            let mut lines = vec![
                format!("{hostname} Hello {domain} [{}]", self.peer.ip()),
                "PIPELINING".to_string(),
                format!("SIZE {}", config.limits.max_message_size),
                "8BITMIME".to_string(),
                "SMTPUTF8".to_string(),
                "ENHANCEDSTATUSCODES".to_string(),
            ];
            if self.auth_allowed() {
                lines.push("AUTH PLAIN LOGIN".to_string());
            }
            if config.server.tls.is_some() && !self.conn.stream.is_tls() {
                lines.push("STARTTLS".to_string());
            }
            Say::Ehlo { lines }.reply()
        } else {
            Say::Helo {
                hostname: &hostname,
                client: &domain,
            }
            .reply()
        };
        self.helo = Some(domain);
        self.esmtp = extended;
        self.send(&reply);
        Flow::Continue
    }

    /// RFC 4954 §4: passwords in the clear only on loopback, unless the operator allows it.
    fn auth_allowed(&self) -> bool {
        self.conn.stream.is_tls()
            || self.peer.ip().is_loopback()
            || self.relay.config.server.allow_plaintext_auth
    }

    async fn starttls(&mut self) -> Flow {
        if self.conn.stream.is_tls() {
            return self.reject(Say::TlsAlreadyActive);
        }
        let Some(acceptor) = self.relay.tls_acceptor.clone() else {
            return self.reject(Say::TlsNotAvailable);
        };
        self.say(Say::StartTls);
        if self.conn.flush().await.is_err() {
            return Flow::Close;
        }
        // CVE-2011-0411: commands pipelined after STARTTLS arrived in the clear and must
        // not be executed inside the TLS session.
        if !self.conn.read_buf.is_empty() {
            tracing::warn!(
                bytes = self.conn.read_buf.len(),
                "discarding data the client sent before the TLS handshake"
            );
            self.conn.read_buf.clear();
        }
        let Some(plain) = self.conn.stream.take_plain() else {
            return Flow::Close;
        };
        let handshake =
            tokio::time::timeout(self.relay.config.timeouts.command, acceptor.accept(plain)).await;
        match handshake {
            Ok(Ok(tls)) => {
                self.conn.stream = MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)));
                // RFC 3207 §4.2: the client must start over with EHLO.
                self.end_transaction().await;
                self.helo = None;
                self.user = None;
                tracing::debug!("STARTTLS done");
                Flow::Continue
            }
            Ok(Err(err)) => {
                tracing::info!(error = %err, "client TLS handshake failed");
                Flow::Close
            }
            Err(_) => {
                tracing::info!("client TLS handshake timed out");
                Flow::Close
            }
        }
    }

    // ---------------------------------------------------------------- AUTH

    async fn auth(&mut self, mechanism: &str, initial_response: Option<String>) -> Flow {
        if self.helo.is_none() {
            return self.reject(Say::SendHeloFirst);
        }
        if self.user.is_some() {
            return self.reject(Say::AuthAlreadyDone);
        }
        if matches!(self.phase, Phase::Transaction(_)) {
            return self.reject(Say::AuthInTransaction);
        }
        if !self.auth_allowed() {
            return self.reject(Say::EncryptionRequired);
        }
        let credentials = match mechanism {
            "PLAIN" => self.auth_plain(initial_response).await,
            "LOGIN" => self.auth_login(initial_response).await,
            _ => return self.reject(Say::AuthUnknownMechanism),
        };
        let credentials = match credentials {
            Ok(credentials) => credentials,
            Err(AuthAbort::Sasl(SaslError::Cancelled)) => return self.reject(Say::AuthCancelled),
            Err(AuthAbort::Sasl(SaslError::Malformed)) => return self.reject(Say::AuthBadBase64),
            Err(AuthAbort::TooLong) => return self.reject(Say::AuthLineTooLong),
            Err(AuthAbort::Disconnect(say)) => {
                if let Some(say) = say {
                    self.say(say);
                }
                return Flow::Close;
            }
        };
        let username = credentials.username.clone();
        let ip = self.peer.ip();
        let throttle = &self.relay.auth_throttle;
        if throttle.check(ip, &username) == Verdict::LockedOut {
            tracing::warn!(mechanism, user = %Untrusted(&username), "login refused: locked out after too many failures");
            self.relay.metrics.limit_hit("auth_lockout");
            return self.reject(Say::AuthLockedOut);
        }
        match self.relay.users.verify(credentials).await {
            Some(user) => {
                throttle.succeeded(ip, &username);
                tracing::Span::current().record("user", user.name.as_str());
                tracing::info!(mechanism, "authenticated");
                self.user = Some(user);
                self.say(Say::AuthSucceeded);
                Flow::Continue
            }
            None => {
                let (delay, locked_out) = throttle.failed(ip, &username);
                if locked_out {
                    tracing::warn!(
                        mechanism,
                        user = %Untrusted(&username),
                        lockout_secs = self.relay.config.limits.auth_lockout.as_secs(),
                        "authentication failed; too many failures, locking out this client and user name"
                    );
                } else {
                    tracing::warn!(mechanism, user = %Untrusted(&username), delay_ms = delay.as_millis() as u64, "authentication failed");
                }
                // Slows guessing down; other sessions are not affected.
                tokio::time::sleep(delay).await;
                self.relay.metrics.auth_failures.inc();
                self.reject(Say::AuthFailed)
            }
        }
    }

    async fn auth_plain(&mut self, initial: Option<String>) -> Result<Credentials, AuthAbort> {
        let response = match initial {
            Some(response) => response,
            None => self.sasl_exchange("").await?,
        };
        let decoded = sasl::decode_response(&response)?;
        Ok(sasl::decode_plain(&decoded)?)
    }

    async fn auth_login(&mut self, initial: Option<String>) -> Result<Credentials, AuthAbort> {
        let username = match initial {
            Some(response) => response,
            // base64("Username:")
            None => self.sasl_exchange("VXNlcm5hbWU6").await?,
        };
        let username = sasl::decode_login_text(sasl::decode_response(&username)?)?;
        // base64("Password:")
        let password = self.sasl_exchange("UGFzc3dvcmQ6").await?;
        let password = sasl::decode_login_text(sasl::decode_response(&password)?)?;
        if username.is_empty() {
            return Err(AuthAbort::Sasl(SaslError::Malformed));
        }
        Ok(Credentials {
            username,
            password: Secret::new(password),
        })
    }

    /// Sends a 334 challenge and reads the client's response line.
    async fn sasl_exchange(&mut self, challenge: &str) -> Result<String, AuthAbort> {
        self.say(Say::AuthChallenge { challenge });
        let config = &self.relay.config;
        let input = self
            .conn
            .read_line(config.limits.max_auth_line, config.timeouts.command, None)
            .await;
        match input {
            Input::Line(line) => {
                String::from_utf8(line).map_err(|_| AuthAbort::Sasl(SaslError::Malformed))
            }
            Input::TooLong => Err(AuthAbort::TooLong),
            Input::LineNotEnded => Err(AuthAbort::Disconnect(Some(Say::LineNotEnded))),
            Input::TimedOut => Err(AuthAbort::Disconnect(Some(Say::CommandTimeout))),
            Input::Closed | Input::ShutDown => Err(AuthAbort::Disconnect(None)),
        }
    }

    // ---------------------------------------------------------------- MAIL

    async fn mail(&mut self, from: String, params: &[Param]) -> Flow {
        if self.helo.is_none() {
            return self.reject(Say::SendHeloFirst);
        }
        let user = match (&self.user, self.trusted) {
            (Some(user), _) => user.clone(),
            (None, true) => self.relay.trusted_user.clone(),
            (None, false) => return self.reject(Say::AuthRequired),
        };
        if matches!(self.phase, Phase::Transaction(_)) {
            return self.reject(Say::NestedMail);
        }
        if self.transactions >= self.relay.config.limits.max_transactions {
            self.relay.metrics.limit_hit("transactions");
            self.say(Say::TooManyTransactions);
            return Flow::Close;
        }
        let envelope = match MailParams::parse(params, self.relay.config.limits.max_message_size) {
            Ok(envelope) => envelope,
            Err(say) => {
                if matches!(say, Say::MessageTooBigDeclared { .. }) {
                    self.relay.metrics.limit_hit("message_size");
                    self.relay.metrics.transaction(Outcome::PolicyRejected);
                }
                return self.reject(say);
            }
        };
        // Routing, the upstream's MAIL FROM and the log all use the canonical form, so a
        // spelling ("boss"@example.com) cannot reach another asset than the address does;
        // RFC 5321 §4.1.2 asks for the dot-string form anyway. The command parser has
        // checked the syntax; an address it accepts that still does not canonicalize is
        // refused rather than routed by its spelling.
        let canonical = if from.is_empty() {
            None
        } else {
            match address::canonical(&from) {
                Ok(canonical) => Some(canonical),
                Err(err) => {
                    tracing::info!(sender = %from, problem = %err, "sender address has no canonical form");
                    return self.reject(Say::BadSenderSyntax);
                }
            }
        };
        let asset = match self.asset_for(canonical.as_ref(), &user) {
            Ok(asset) => asset,
            Err(say) => {
                tracing::warn!(sender = %Untrusted(&from), user = %user.name, reply = %say.reply(), "sender refused");
                self.relay.metrics.transaction(Outcome::PolicyRejected);
                return self.reject(say);
            }
        };

        let from = canonical.map_or(from, |canonical| canonical.to_string());

        let setup_started = Instant::now();
        let (mut upstream, reused) = match self.upstream_for(&asset).await {
            Ok(found) => found,
            Err(reply) => {
                self.relay.metrics.transaction(Outcome::TempFailed);
                self.send(&reply);
                return Flow::Continue;
            }
        };
        let mut line = format!("MAIL FROM:<{from}>");
        let capabilities = upstream.capabilities().clone();
        if let Some(size) = envelope.size {
            if capabilities.size.is_some() {
                line.push_str(&format!(" SIZE={size}"));
            }
        }
        if envelope.eight_bit && capabilities.eight_bit_mime {
            line.push_str(" BODY=8BITMIME");
        }
        if envelope.smtputf8 {
            if !capabilities.smtputf8 {
                self.park_upstream(&asset, upstream);
                return self.reject(Say::Utf8NotSupportedUpstream);
            }
            line.push_str(" SMTPUTF8");
        }
        let mut mail_reply = None;
        if reused {
            // RSET checks the kept connection and guarantees a clean transaction state;
            // with PIPELINING it travels in the same packet as MAIL FROM. Nothing is
            // committed on this connection yet, so if it turns out dead (or its
            // authentication gone) a new one is opened and the client never notices.
            let reused_reply = mail_on_reused(&mut upstream, &line).await;
            if let Err(why) = &reused_reply {
                tracing::debug!(asset = %asset.name, why, "kept upstream connection is unusable, opening a new one");
                // Dropped without QUIT: it is dead or its session is over.
                upstream = match self.open_upstream(&asset).await {
                    Ok(upstream) => upstream,
                    Err(reply) => {
                        self.relay.metrics.transaction(Outcome::TempFailed);
                        self.send(&reply);
                        return Flow::Continue;
                    }
                };
            }
            mail_reply = reused_reply.ok();
        }
        let mail_reply = match mail_reply {
            Some(reply) => Ok(reply),
            None => upstream.command(&line).await,
        };
        match mail_reply {
            Ok(reply) => {
                let accepted = reply.is_positive();
                self.send(&relayed(reply));
                if accepted {
                    self.phase = Phase::Transaction(Box::new(Transaction {
                        asset,
                        upstream,
                        sender: from,
                        recipients: Vec::new(),
                        message_id: None,
                        upstream_setup: setup_started.elapsed(),
                    }));
                } else {
                    self.park_upstream(&asset, upstream);
                }
            }
            Err(err) => {
                tracing::warn!(asset = %asset.name, error = %err, "upstream failed at MAIL FROM");
                self.say(Say::UpstreamLost);
            }
        }
        Flow::Continue
    }

    /// The asset that sends for `sender` (None: the null sender), or the refusal for the
    /// client.
    fn asset_for(
        &self,
        sender: Option<&CanonicalAddress>,
        user: &User,
    ) -> Result<Arc<Asset>, Say<'static>> {
        let config = &self.relay.config;
        let Some(sender) = sender else {
            // Bounces from a Postfix in front of us come with a null sender: send them as
            // the one account the user has, if there is exactly one.
            let only = match &user.assets {
                AssetAccess::Only(names) if names.len() == 1 => names.iter().next().cloned(),
                AssetAccess::All if config.assets.len() == 1 => {
                    config.assets.first().map(|asset| asset.name.clone())
                }
                _ => None,
            };
            return only
                .and_then(|name| config.asset(&name).cloned())
                .ok_or(Say::NullSenderNoAsset);
        };
        // Leaked into 'static replies: the texts are built now, sender and user copied.
        let sender_text = sender.as_str();
        let Some(name) = config.senders.lookup(sender) else {
            return Err(owned_say(
                |s| Say::SenderNotServed { sender: s },
                sender_text,
            ));
        };
        if !user.assets.allows(name) {
            let text = Say::SenderNotOwned {
                sender: sender_text,
                user: &user.name,
            }
            .reply();
            return Err(Say::Prebuilt(text));
        }
        config
            .asset(name)
            .cloned()
            .ok_or_else(|| owned_say(|s| Say::SenderNotServed { sender: s }, sender_text))
    }

    /// An authenticated upstream for `asset`, and whether it was kept from earlier (this
    /// session's previous message, or the pool) and so must be checked before use.
    async fn upstream_for(&mut self, asset: &Arc<Asset>) -> Result<(Upstream, bool), Reply> {
        if let Some(idle) = self.idle_upstream.take() {
            if idle.asset == asset.name {
                if self.relay.pool.is_reusable(&idle.upstream, idle.parked_at) {
                    return Ok((idle.upstream, true));
                }
                tracing::debug!(asset = %asset.name, "kept upstream connection idle too long or its token expiring, opening a new one");
                idle.upstream.quit().await;
            } else {
                self.release(idle).await;
            }
        }
        if let Some(pooled) = self.relay.pool.take(&asset.name) {
            tracing::debug!(asset = %asset.name, "reusing a pooled upstream connection");
            return Ok((pooled, true));
        }
        Ok((self.open_upstream(asset).await?, false))
    }

    /// Hands a connection this session no longer needs to the pool, or closes it.
    async fn release(&self, idle: IdleUpstream) {
        if let Some(unwanted) = self
            .relay
            .pool
            .put(&idle.asset, idle.upstream, idle.parked_at)
        {
            unwanted.quit().await;
        }
    }

    async fn open_upstream(&self, asset: &Asset) -> Result<Upstream, Reply> {
        let relay = &self.relay;
        let metrics: &Metrics = &relay.metrics;
        let connector =
            crate::upstream::Connector::new(&relay.tokens, &relay.upstream).with_metrics(metrics);
        let error = match connector.open(asset).await {
            Ok(upstream) => return Ok(upstream),
            Err(error) => error,
        };
        let reply = error
            .client_reply(&asset.name, relay.config.server.credential_failure)
            .reply();
        let tls_trouble = matches!(&error, RelayError::Upstream(err) if err.is_tls_trouble());
        if error.needs_operator() || tls_trouble {
            tracing::error!(
                asset = %asset.name,
                error = %error,
                hint = error.hint(),
                reply = %reply,
                "asset needs attention"
            );
        } else {
            tracing::warn!(
                asset = %asset.name,
                error = %error,
                hint = error.hint(),
                reply = %reply,
                "cannot open upstream session"
            );
        }
        Err(reply)
    }

    fn park_upstream(&mut self, asset: &Asset, upstream: Upstream) {
        self.idle_upstream = Some(IdleUpstream {
            asset: asset.name.clone(),
            upstream,
            parked_at: Instant::now(),
        });
    }

    /// Ends a transaction without delivering: RSET upstream and keep the connection.
    async fn end_transaction(&mut self) {
        if let Phase::Transaction(mut transaction) = std::mem::replace(&mut self.phase, Phase::Idle)
        {
            if matches!(transaction.upstream.command("RSET").await, Ok(reply) if reply.is_positive())
            {
                self.park_upstream(&transaction.asset, transaction.upstream);
            }
        }
    }

    // ---------------------------------------------------------------- RCPT

    async fn rcpt(&mut self, to: String, params: &[Param]) -> Flow {
        if let Some(param) = params.first() {
            let keyword = param.keyword.clone();
            return self.reject(Say::UnsupportedParameter { keyword: &keyword });
        }
        let max_recipients = self.relay.config.limits.max_recipients;
        let Phase::Transaction(transaction) = &mut self.phase else {
            return self.reject(Say::NeedMail);
        };
        if transaction.recipients.len() >= max_recipients {
            self.relay.metrics.limit_hit("recipients");
            self.say(Say::TooManyRecipients);
            return Flow::Continue;
        }
        match transaction
            .upstream
            .command(&format!("RCPT TO:<{to}>"))
            .await
        {
            Ok(reply) => {
                if reply.is_positive() {
                    transaction.recipients.push(to);
                }
                // A client that probes address after address the provider refuses is
                // making errors like any other (Postfix counts them too).
                let permanent = reply.code / 100 == 5;
                self.send(&relayed(reply));
                if permanent {
                    return self.count_error();
                }
            }
            Err(err) => {
                tracing::warn!(asset = %transaction.asset.name, error = %err, "upstream failed at RCPT TO");
                self.phase = Phase::Idle;
                self.say(Say::UpstreamLost);
            }
        }
        Flow::Continue
    }

    // ---------------------------------------------------------------- DATA

    async fn data(&mut self) -> Flow {
        let Phase::Transaction(transaction) = &mut self.phase else {
            return self.reject(Say::NeedMail);
        };
        if transaction.recipients.is_empty() {
            return self.reject(Say::NeedRcpt);
        }
        let Phase::Transaction(mut transaction) = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return Flow::Continue;
        };
        match transaction.upstream.command("DATA").await {
            Ok(reply) if reply.code == 354 => {}
            Ok(reply) => {
                self.send(&relayed(reply));
                self.phase = Phase::Transaction(transaction);
                return Flow::Continue;
            }
            Err(err) => {
                tracing::warn!(asset = %transaction.asset.name, error = %err, "upstream failed at DATA");
                self.say(Say::UpstreamLost);
                return Flow::Continue;
            }
        }
        self.say(Say::StartData);
        self.transactions += 1;
        let started = Instant::now();
        let mut outcome = self.stream_message(&mut transaction).await;
        if let Streamed::Complete { size } = outcome {
            // A failed write of the terminator is not a possible duplicate: the provider
            // never saw it (a TLS record arrives whole or is useless, and the dot's is the
            // last one), so it discards the partial message like any other cut-off DATA.
            if let Err(error) = transaction.upstream.send_terminator().await {
                outcome = Streamed::UpstreamFailed { error, size };
            }
        }
        let asset = transaction.asset.name.clone();
        let recipients = transaction.recipients.len();
        let metrics = self.relay.metrics.clone();
        let message_id = transaction.message_id.clone().unwrap_or_default();
        let log_done = |outcome: &str, reply: &Reply, size: u64| {
            tracing::info!(
                asset = %asset,
                from = %Untrusted(&transaction.sender),
                recipients,
                size,
                message_id = %Untrusted(&message_id),
                upstream_setup_ms = transaction.upstream_setup.as_millis() as u64,
                transfer_ms = started.elapsed().as_millis() as u64,
                reply = %reply,
                "{outcome}"
            );
        };
        match outcome {
            Streamed::Complete { size } => match transaction.upstream.final_reply().await {
                Ok(reply) => {
                    let (outcome, counted) = match reply.code / 100 {
                        2 => ("message relayed", Outcome::Delivered),
                        4 => ("message deferred by upstream", Outcome::TempFailed),
                        _ => ("message refused by upstream", Outcome::PermFailed),
                    };
                    metrics.transaction(counted);
                    if counted == Outcome::Delivered {
                        metrics.bytes_relayed.inc_by(size);
                        // Postfix too starts the junk count again after a delivery.
                        self.junk_commands = 0;
                    }
                    log_done(outcome, &reply, size);
                    self.send(&relayed(reply));
                    self.park_upstream(&transaction.asset, transaction.upstream);
                }
                Err(err) => {
                    let reply = Say::PossibleDuplicate.reply();
                    tracing::warn!(
                        asset = %asset,
                        error = %err,
                        possible_duplicate = true,
                        "upstream connection lost after the end of data: the message may or may not have been delivered"
                    );
                    metrics.transaction(Outcome::PossibleDuplicate);
                    log_done("message outcome unknown", &reply, size);
                    self.send(&reply);
                }
            },
            Streamed::Refused { say, size } => {
                // The upstream gets no terminator: dropping the connection makes it discard
                // the partial message.
                let reply = say.reply();
                match say {
                    Say::MessageTooBig { .. } => metrics.limit_hit("message_size"),
                    Say::DataLineTooLong { .. } => metrics.limit_hit("data_line"),
                    _ => {}
                }
                metrics.transaction(Outcome::PolicyRejected);
                log_done("message refused", &reply, size);
                self.send(&reply);
            }
            Streamed::UpstreamFailed { error, size } => {
                let reply = Say::UpstreamLost.reply();
                tracing::warn!(asset = %asset, error = %error, "upstream failed during DATA");
                metrics.transaction(Outcome::TempFailed);
                log_done("message not relayed", &reply, size);
                self.send(&reply);
            }
            Streamed::ClientGone => {
                tracing::info!(asset = %asset, "client disconnected during DATA; nothing was delivered");
                return Flow::Close;
            }
            Streamed::ClientTimedOut => {
                tracing::info!(asset = %asset, "client timed out during DATA; nothing was delivered");
                self.say(Say::CommandTimeout);
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    /// Copies the message from the client to the upstream until the client's end of data.
    /// Never sends the terminator: that is the caller's decision.
    async fn stream_message(&mut self, transaction: &mut Transaction) -> Streamed {
        let config = self.relay.config.clone();
        let mut scanner = DataScanner::new(DataLimits {
            max_line_len: config.limits.max_data_line,
            bare_line_endings: config.server.bare_line_endings,
        });
        let trace = Trace {
            helo: self.helo.as_deref().unwrap_or("unknown"),
            peer: self.peer.ip(),
            hostname: &config.server.hostname,
            esmtp: self.esmtp,
            tls: self.conn.stream.is_tls(),
            authenticated: self.user.is_some(),
            id: &format!("{}.{}", self.id, self.transactions),
            single_recipient: match transaction.recipients.as_slice() {
                [only] => Some(only.as_str()),
                _ => None,
            },
        };
        let mut out = Vec::with_capacity(READ_CHUNK + 1024);
        out.extend_from_slice(trace.header(SystemTime::now()).as_bytes());
        let mut upstream_error: Option<UpstreamError> = None;
        let mut too_big = false;
        let mut header_gate = HeaderGate::new();
        let data_deadline = Instant::now() + config.timeouts.data_total;
        let mut refused: Option<Say<'static>> = None;
        loop {
            let scan = scanner.feed(&self.conn.read_buf, &mut out);
            self.conn.read_buf.advance(scan.consumed);
            if scanner.content_len() > config.limits.max_message_size {
                too_big = true;
            }
            if refused.is_none() {
                // Holds the header block back until it is complete and checked.
                match header_gate.pass(&mut out, scan.finished) {
                    GateState::Collecting | GateState::Open => {}
                    GateState::Decide(headers, complete) => {
                        let (refusal, message_id) =
                            self.inspect_headers(&headers, complete, &transaction.asset);
                        refused = refusal;
                        transaction.message_id = message_id;
                        out = headers;
                    }
                }
            }
            let forwarding = upstream_error.is_none()
                && !too_big
                && refused.is_none()
                && scanner.problem().is_none();
            if forwarding && !out.is_empty() {
                if let Err(err) = transaction.upstream.send_data(&out).await {
                    upstream_error = Some(err);
                }
            }
            out.clear();
            if scan.finished {
                break;
            }
            let deadline = (Instant::now() + config.timeouts.data_block).min(data_deadline);
            match self.conn.fill(deadline).await {
                Ok(true) => {}
                Ok(false) | Err(Input::Closed) => return Streamed::ClientGone,
                Err(_) => return Streamed::ClientTimedOut,
            }
        }
        let size = scanner.content_len();
        if let Some(say) = refused {
            return Streamed::Refused { say, size };
        }
        if too_big {
            return Streamed::Refused {
                say: Say::MessageTooBig {
                    limit: config.limits.max_message_size,
                },
                size,
            };
        }
        match scanner.problem() {
            Some(DataProblem::LineTooLong) => {
                return Streamed::Refused {
                    say: Say::DataLineTooLong {
                        limit: config.limits.max_data_line,
                    },
                    size,
                }
            }
            Some(DataProblem::BareLineEnding) => {
                return Streamed::Refused {
                    say: Say::BareLineEnding,
                    size,
                }
            }
            None => {}
        }
        match upstream_error {
            Some(error) => Streamed::UpstreamFailed { error, size },
            None => Streamed::Complete { size },
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    /// Reads the header block once: the Message-ID for the log, and the header-From
    /// policy (every From: address must be served).
    fn inspect_headers(
        &self,
        headers: &[u8],
        complete: bool,
        asset: &Asset,
    ) -> (Option<Say<'static>>, Option<String>) {
        let message_id = mail_parser::MessageParser::new()
            .parse_headers(headers)
            .as_ref()
            .and_then(|message| message.message_id())
            .map(str::to_string);
        (self.check_header_from(headers, complete, asset), message_id)
    }

    /// The header-From policy. The From fields are read from the raw header block, not
    /// from mail-parser: it returns only the last From field, and reduces spellings such as
    /// `"boss"@example.com` to something that matched a domain claim. Every From field is
    /// read as an RFC 5322 mailbox list and each address looked up by its canonical form,
    /// the same form the envelope sender is looked up by.
    fn check_header_from(
        &self,
        headers: &[u8],
        complete: bool,
        asset: &Asset,
    ) -> Option<Say<'static>> {
        let config = &self.relay.config;
        let policy = config.server.header_from;
        if policy == HeaderFromPolicy::Off {
            return None;
        }
        let enforce = policy == HeaderFromPolicy::Enforce;
        // A From: hidden behind 100 KiB of padding must not slip through.
        if !complete {
            tracing::warn!(asset = %asset.name, "header block too large to check the From: address");
            return enforce.then_some(Say::HeaderBlockTooLarge);
        }
        let fields = address::header_fields(headers, "From");
        if fields.len() > 1 {
            // Readers differ on which of several From fields they show.
            tracing::warn!(
                asset = %asset.name,
                fields = fields.len(),
                policy = ?policy,
                "message has more than one From: header"
            );
            if enforce {
                return Some(Say::HeaderFromRepeated);
            }
        }
        let mut addresses: Vec<CanonicalAddress> = Vec::new();
        for field in &fields {
            match address::mailbox_list(field) {
                Ok(list) => addresses.extend(list),
                Err(err) => {
                    tracing::warn!(
                        asset = %asset.name,
                        from = %Untrusted(field.trim()),
                        problem = %err,
                        policy = ?policy,
                        "From: header cannot be read as a plain mailbox list"
                    );
                    if enforce {
                        return Some(Say::HeaderFromUnreadable);
                    }
                }
            }
        }
        if addresses.is_empty() {
            tracing::warn!(asset = %asset.name, "message has no From: header address");
            return enforce.then_some(Say::HeaderFromMissing);
        }
        let stranger = addresses
            .iter()
            .find(|address| config.senders.lookup(address) != Some(asset.name.as_str()))?;
        tracing::warn!(
            asset = %asset.name,
            from = %Untrusted(stranger.as_str()),
            policy = ?policy,
            "From: header address is not served by the sending asset"
        );
        match policy {
            HeaderFromPolicy::Enforce => Some(owned_say(
                |from| Say::HeaderFromNotServed { from },
                stranger.as_str(),
            )),
            HeaderFromPolicy::Log | HeaderFromPolicy::Off => None,
        }
    }
}

/// The header block is at most this big before we decide anyway (Postfix's
/// header_size_limit is 100 KiB; what is not a header by then never will be).
const MAX_HEADER_BLOCK: usize = 100 * 1024;

enum GateState {
    /// Still reading headers; nothing may be forwarded yet.
    Collecting,
    /// The header block is complete (or as large as we look at): check it, then
    /// forward it. The flag says whether its end was seen.
    Decide(Vec<u8>, bool),
    /// Past the headers (or no policy): forward as it comes.
    Open,
}

/// Holds back the header block until it is complete, so it is parsed once (Message-ID for
/// the log) and a header-From policy can act before anything of the message reaches the
/// upstream.
struct HeaderGate {
    collected: Option<Vec<u8>>,
}

impl HeaderGate {
    fn new() -> Self {
        HeaderGate {
            collected: Some(Vec::new()),
        }
    }

    /// Takes this round's output while collecting; hands the block back when complete.
    fn pass(&mut self, out: &mut Vec<u8>, finished: bool) -> GateState {
        let Some(collected) = &mut self.collected else {
            return GateState::Open;
        };
        let searched_from = collected.len().saturating_sub(3);
        collected.append(out);
        let complete = collected[searched_from..]
            .windows(4)
            .any(|window| window == b"\r\n\r\n");
        if complete || finished || collected.len() > MAX_HEADER_BLOCK {
            let block = std::mem::take(collected);
            self.collected = None;
            return GateState::Decide(block, complete || finished);
        }
        GateState::Collecting
    }
}

/// RSET and MAIL FROM on a kept connection; Err (why, for the log) when the connection is
/// not usable: RSET fails or is refused, or MAIL is refused for authentication
/// (`pool::refuses_authentication`), the provider having ended the authenticated session.
async fn mail_on_reused(upstream: &mut Upstream, mail: &str) -> Result<Reply, &'static str> {
    const DEAD: &str = "no answer to RSET or MAIL";
    const RESET_REFUSED: &str = "RSET refused";
    let reply = if upstream.capabilities().pipelining {
        let replies = upstream.pipeline(&["RSET", mail]).await.map_err(|_| DEAD)?;
        let mut replies = replies.into_iter();
        let reset = replies.next().ok_or(DEAD)?;
        if !reset.is_positive() {
            return Err(RESET_REFUSED);
        }
        replies.next().ok_or(DEAD)?
    } else {
        let reset = upstream.command("RSET").await.map_err(|_| DEAD)?;
        if !reset.is_positive() {
            return Err(RESET_REFUSED);
        }
        upstream.command(mail).await.map_err(|_| DEAD)?
    };
    if refuses_authentication(&reply) {
        return Err("MAIL refused for authentication");
    }
    Ok(reply)
}

/// How copying a message ended.
enum Streamed {
    Complete { size: u64 },
    Refused { say: Say<'static>, size: u64 },
    UpstreamFailed { error: UpstreamError, size: u64 },
    ClientGone,
    ClientTimedOut,
}

enum AuthAbort {
    Sasl(SaslError),
    TooLong,
    Disconnect(Option<Say<'static>>),
}

impl From<SaslError> for AuthAbort {
    fn from(err: SaslError) -> Self {
        AuthAbort::Sasl(err)
    }
}

/// Builds a reply whose text needs a borrowed value, detached from that borrow.
fn owned_say(make: impl FnOnce(&str) -> Say<'_>, value: &str) -> Say<'static> {
    Say::Prebuilt(make(value).reply())
}

/// The MAIL FROM parameters we advertise and understand.
struct MailParams {
    size: Option<u64>,
    eight_bit: bool,
    smtputf8: bool,
}

impl MailParams {
    fn parse(params: &[Param], max_size: u64) -> Result<MailParams, Say<'static>> {
        let mut envelope = MailParams {
            size: None,
            eight_bit: false,
            smtputf8: false,
        };
        for param in params {
            match (param.keyword.as_str(), param.value.as_deref()) {
                ("SIZE", Some(value)) => {
                    let size: u64 = value.parse().map_err(|_| Say::Syntax {
                        detail: "SIZE needs a number",
                    })?;
                    if size > max_size {
                        return Err(Say::MessageTooBigDeclared { limit: max_size });
                    }
                    envelope.size = Some(size);
                }
                ("BODY", Some(value)) if value.eq_ignore_ascii_case("8BITMIME") => {
                    envelope.eight_bit = true;
                }
                ("BODY", Some(value)) if value.eq_ignore_ascii_case("7BIT") => {}
                ("SMTPUTF8", None) => envelope.smtputf8 = true,
                // RFC 4954 §5: AUTH= on MAIL is informational; we already know the user.
                ("AUTH", _) => {}
                _ => {
                    return Err(owned_say(
                        |keyword| Say::UnsupportedParameter { keyword },
                        &param.keyword,
                    ))
                }
            }
        }
        Ok(envelope)
    }
}
