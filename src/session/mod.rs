//! One client connection, from greeting to QUIT.
//!
//! The session is an explicit state machine. *What comes next* on the wire is decided by
//! the loop in [`Session::run`] (a command line; inside AUTH, a SASL line; after DATA, the
//! message); *where we are* is [`Phase`] (no transaction, or a transaction that owns an
//! authenticated upstream connection); *what limits apply* is [`Params`], read from the
//! config once. Parsing is done by the pure `smtp` module and reply texts come from
//! `replies`; the session only decides and does I/O.
//!
//! One file per verb family, each an `impl Session` block (as in Stalwart's
//! `inbound/`): [`conn`] the client leg, `hello` EHLO/HELO/STARTTLS, `auth` the SASL
//! dialogue, `mail` MAIL/RCPT and the choice of asset, `upstream` getting an
//! authenticated upstream, `pipeline` the envelope sent upstream in one flight, `data` DATA
//! and streaming, `body` the body buffers and DATA or BDAT upstream, `headers` the header
//! gate and the header-From policy.
//!
//! The rule everything here serves: a client hears 2xx for MAIL, RCPT and the message only
//! when the upstream said 2xx for the same thing. Whenever the upstream cannot be reached
//! or vanishes, the client hears 4xx and keeps the mail.

mod auth;
mod body;
mod conn;
mod data;
mod headers;
mod hello;
mod limits;
mod mail;
mod pipeline;
mod upstream;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Asset, Config, HeaderFromPolicy, User};
use crate::relay::Relay;
use crate::replies::Say;
use crate::smtp::command::{parse_command, Command};
use crate::smtp::data::DataLimits;
use crate::smtp::reply::Reply;
use crate::stream::MaybeTls;
use crate::transport::Link;

use conn::{ClientConnection, Input};

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
    /// The asset's transport (an SMTP upstream connection, or an API link).
    upstream: Link,
    sender: String,
    recipients: Vec<String>,
    /// From the parsed header block, for the log line.
    message_id: Option<String>,
    /// Getting an authenticated upstream at MAIL FROM (token, connect, TLS, AUTH); near
    /// zero when the session's previous connection was reused.
    upstream_setup: Duration,
    /// Replies to the client's pipelined commands that went upstream ahead of time.
    prefetched: pipeline::Prefetched,
    /// The message's place under the asset's sending limits (issue 16); counted as sent
    /// when the provider accepts it, given back when the transaction ends otherwise.
    admission: Option<crate::limits::Admission>,
}

/// An authenticated upstream connection kept between transactions of one session. It is
/// reused only under the shared pool's rule (`pool::reusable`: idle age, token margin).
struct IdleUpstream {
    asset: String,
    upstream: Link,
    /// When its last transaction ended.
    parked_at: Instant,
}

/// What a session obeys, taken from the config once when it starts (Stalwart's
/// `core/params.rs`): every limit a session checks is listed here, and the dialogue code
/// reads `self.params` instead of reaching through the relay's config each time. The
/// config itself stays reachable for what is looked up, not obeyed (assets, senders).
struct Params {
    /// Our name in the greeting, HELO/EHLO, QUIT replies and the Received header.
    hostname: String,
    /// The peer is in `trusted_networks`: MAIL without AUTH is allowed.
    trusted: bool,
    /// A certificate is configured, so EHLO offers STARTTLS on a plain connection.
    tls_configured: bool,
    allow_plaintext_auth: bool,
    header_from: HeaderFromPolicy,
    /// The DATA scanner's limits (longest line, bare CR/LF handling).
    data: DataLimits,
    max_message_size: u64,
    max_recipients: usize,
    max_command_line: usize,
    max_auth_line: usize,
    max_errors: usize,
    max_junk_commands: usize,
    /// 0 = unlimited.
    max_transactions: usize,
    /// `[upstream]`: pipeline the envelope and BDAT chunks when the provider offers
    /// PIPELINING; send the message as BDAT when it offers CHUNKING.
    pipelining: bool,
    chunking: bool,
    /// Only for the log line of a lockout.
    auth_lockout: Duration,
    command_timeout: Duration,
    data_block_timeout: Duration,
    data_total_timeout: Duration,
}

impl Params {
    fn new(config: &Config, peer: &SocketAddr) -> Params {
        let limits = &config.limits;
        let timeouts = &config.timeouts;
        let server = &config.server;
        Params {
            hostname: server.hostname.clone(),
            trusted: server
                .trusted_networks
                .iter()
                .any(|network| network.contains(&peer.ip())),
            tls_configured: server.tls.is_some(),
            allow_plaintext_auth: server.allow_plaintext_auth,
            header_from: server.header_from,
            data: DataLimits {
                max_line_len: limits.max_data_line,
                bare_line_endings: server.bare_line_endings,
            },
            max_message_size: limits.max_message_size,
            max_recipients: limits.max_recipients,
            max_command_line: limits.max_command_line,
            max_auth_line: limits.max_auth_line,
            max_errors: limits.max_errors,
            max_junk_commands: limits.max_junk_commands,
            max_transactions: limits.max_transactions,
            pipelining: config.upstream.pipelining,
            chunking: config.upstream.chunking,
            auth_lockout: limits.auth_lockout,
            command_timeout: timeouts.command,
            data_block_timeout: timeouts.data_block,
            data_total_timeout: timeouts.data_total,
        }
    }
}

/// What the client has told us about itself. STARTTLS forgets all of it (RFC 3207 §4.2:
/// the client starts over with EHLO, and logs in again under TLS).
#[derive(Default)]
struct Client {
    helo: Option<String>,
    esmtp: bool,
    user: Option<Arc<User>>,
}

pub struct Session<IO> {
    relay: Arc<Relay>,
    params: Params,
    conn: ClientConnection<IO>,
    peer: SocketAddr,
    id: String,
    client: Client,
    phase: Phase,
    idle_upstream: Option<IdleUpstream>,
    errors: usize,
    /// Commands that move no mail forward (NOOP, RSET, VRFY, HELP, refused ones) since the
    /// last delivered message.
    junk_commands: usize,
    transactions: usize,
    /// The message body's buffers, kept from message to message once the first DATA
    /// allocated them (a session that never sends holds none).
    body: Option<Box<body::BodyBuffers>>,
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
        let params = Params::new(&relay.config, &peer);
        let timeouts = &relay.config.timeouts;
        let conn = ClientConnection::new(stream, timeouts.client_write, timeouts.line_end);
        Session {
            relay,
            params,
            conn,
            peer,
            id,
            client: Client::default(),
            phase: Phase::Idle,
            idle_upstream: None,
            errors: 0,
            junk_commands: 0,
            transactions: 0,
            body: None,
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
            self.say(Say::Greeting {
                hostname: self.params.hostname.clone(),
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
                // Boxed like MAIL: a QUIT upstream is a large future, needed once.
                Box::pin(self.release(idle)).await;
            }
            tracing::debug!(messages = self.transactions, "disconnected");
        }
        .instrument(span)
        .await
    }

    async fn dialogue(&mut self) {
        loop {
            // Shutdown interrupts only a session that is between transactions; a message in
            // flight is allowed to finish.
            let shutdown = match self.phase {
                Phase::Idle => Some(self.shutdown.clone()),
                Phase::Transaction(_) => None,
            };
            let input = self
                .conn
                .read_line(
                    self.params.max_command_line,
                    self.params.command_timeout,
                    shutdown.as_ref(),
                )
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

    async fn handle_line(&mut self, line: &[u8]) -> Flow {
        let command = match parse_command(line) {
            Ok(command) => command,
            Err(err) => return self.reject(Say::for_command_error(&err)),
        };
        match command {
            Command::Ehlo { domain } => self.hello(domain, true).await,
            Command::Helo { domain } => self.hello(domain, false).await,
            Command::StartTls => self.starttls().await,
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(&mechanism, initial_response).await,
            // MAIL (which may open an upstream connection) has the largest future; boxed,
            // it is allocated for the command instead of inflating every session's future,
            // idle ones included (with the upstream reply buffer change: 21 KB → 8 KB).
            Command::Mail { from, params } => Box::pin(self.mail(from, &params)).await,
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
                self.say(Say::Bye {
                    hostname: self.params.hostname.clone(),
                });
                Flow::Close
            }
        }
    }

    fn say(&mut self, say: Say) {
        self.conn.queue(&say.reply());
    }

    fn send(&mut self, reply: &Reply) {
        self.conn.queue(reply);
    }

    /// Replies with an error of the client's making and counts it, as an error and as a
    /// junk command; too many and we hang up.
    fn reject(&mut self, say: Say) -> Flow {
        self.say(say);
        match self.count_error() {
            Flow::Continue => self.count_junk(),
            Flow::Close => Flow::Close,
        }
    }

    /// Counts a refusal (ours, or a permanent one relayed from the upstream).
    fn count_error(&mut self) -> Flow {
        self.errors += 1;
        if self.errors >= self.params.max_errors {
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
        if self.junk_commands > self.params.max_junk_commands {
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

    /// Answers a harmless command that counts against the junk-command limit.
    fn junk_reply(&mut self, say: Say) -> Flow {
        if self.count_junk() == Flow::Close {
            return Flow::Close;
        }
        self.say(say);
        Flow::Continue
    }
}
