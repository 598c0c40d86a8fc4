//! A fake `smtp.gmail.com`: real TLS (STARTTLS on a 587-style port or implicit TLS on a
//! 465-style port), real SMTP, and XOAUTH2 authentication checked against [`AccessTokens`].
//!
//! Replies copy Gmail's wording and multi-line layout so that the relay's error handling is
//! exercised against what it will really see.
//!
//! This file holds the handle ([`FakeGmail`]), its configuration and the accept loop; one
//! connection's dialogue is in `session` (commands up to RCPT) and `data` (DATA, BDAT,
//! delivery), the fake's own line reading, reply writing and XOAUTH2 decoding in `wire`.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::token_issuer::AccessTokens;
use super::SandboxError;
use session::{End, Session};

mod data;
mod session;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure
pub(crate) mod tests;
mod wire;

pub use wire::xoauth2_response;

/// The SIZE Gmail advertises.
pub const GMAIL_SIZE_LIMIT: u64 = 35_882_577;
/// Messages beyond this are discarded while being read, to bound memory.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including the CRLF.
pub const DEFAULT_MAX_COMMAND_LINE: usize = 512;
/// RFC 4954 §4: SASL response lines may be much longer than commands.
const MAX_SASL_LINE: usize = 12_288;
/// Gmail's per-message recipient limit; also keeps the recipient list bounded.
const MAX_RECIPIENTS: usize = 100;
/// How long the server waits for the client before giving up, like a real MTA.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// `{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`, what Gmail sends
/// as the SASL challenge when a bearer token is rejected.
pub const XOAUTH2_ERROR_CHALLENGE: &str =
    "eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==";

#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// RCPT for these (case-insensitive) gets Gmail's multi-line 550 5.1.1 "does not exist".
    pub reject_recipients: Vec<String>,
    /// Overrides the final reply after "." (e.g. "552 5.3.4 Message too big"); the message
    /// counts as delivered only if the override starts with '2'.
    pub data_reply: Option<String>,
    /// Replaces the reply to an authenticated MAIL FROM (e.g. "550 5.4.5 Daily user
    /// sending limit exceeded"); the transaction does not start.
    pub mail_reply: Option<String>,
    /// Drop the connection after receiving some DATA bytes, without replying.
    pub close_during_data: bool,
    /// Read the terminator, then drop the connection without a reply.
    pub close_after_dot: bool,
    /// Reply to the final dot, then close the connection (as a server ending idle or
    /// long-lived sessions does), so a client that keeps it for later finds it dead.
    pub close_after_reply: bool,
    /// Do not advertise (nor accept) STARTTLS, to test downgrade protection.
    pub no_starttls: bool,
    pub greeting_delay: Option<Duration>,
    /// Replaces the `220` greeting (e.g. "421 4.7.0 Try again later"); a greeting that does
    /// not start with '2' is followed by closing the connection, as a busy server does.
    pub greeting: Option<String>,
    /// Drop the connection when AUTH arrives (counted in `auth_attempts`), without replying.
    pub close_during_auth: bool,
    /// After the 354, read what has arrived and then stop reading and never reply: a hung
    /// server whose TCP window fills up. The connection stays open until shutdown.
    pub stall_during_data: bool,
    /// An authenticated session lasts only as long as its access token: once the token is
    /// revoked (`AccessTokens::revoke_all`, standing in for expiry), MAIL on the connection
    /// gets `530 5.7.0`, as providers that end sessions at token expiry answer.
    pub session_ends_with_token: bool,
    /// EHLO does not offer PIPELINING (the relay must then wait for each reply).
    pub no_pipelining: bool,
    /// EHLO does not offer CHUNKING (the relay must then use DATA).
    pub no_chunking: bool,
    /// After a BDAT chunk that is not the last, drop the connection without replying.
    pub close_between_chunks: bool,
    /// Keep every byte each connection receives and sends, for [`FakeGmail::dialogue`].
    pub record_dialogue: bool,
}

/// One turn of a recorded dialogue: what one side sent before the other spoke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Turn {
    Client(Vec<u8>),
    Server(Vec<u8>),
}

#[derive(Clone)]
pub struct FakeGmailConfig {
    pub tls: Arc<rustls::ServerConfig>,
    /// false: port-587 style STARTTLS; true: port-465 style TLS from the first byte.
    pub implicit_tls: bool,
    pub tokens: AccessTokens,
    /// Name used in the greeting and EHLO reply.
    pub hostname: String,
    /// When set, each delivered message is written there as `<timestamp>-<n>.eml`.
    pub mail_dir: Option<PathBuf>,
    pub behaviour: Behaviour,
    /// Longest accepted command line, CRLF included; longer ones get 555 5.5.2.
    pub max_command_line: usize,
}

impl FakeGmailConfig {
    pub fn new(tls: Arc<rustls::ServerConfig>, tokens: AccessTokens) -> Self {
        FakeGmailConfig {
            tls,
            implicit_tls: false,
            tokens,
            hostname: "smtp.gmail.com".to_owned(),
            mail_dir: None,
            behaviour: Behaviour::default(),
            max_command_line: DEFAULT_MAX_COMMAND_LINE,
        }
    }
}

impl fmt::Debug for FakeGmailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeGmailConfig")
            .field("implicit_tls", &self.implicit_tls)
            .field("hostname", &self.hostname)
            .field("mail_dir", &self.mail_dir)
            .field("behaviour", &self.behaviour)
            .field("max_command_line", &self.max_command_line)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub auth_user: String,
    pub mail_from: String,
    pub mail_params: Vec<String>,
    /// Accepted recipients only.
    pub rcpt_to: Vec<String>,
    /// Dot-unstuffed content without the terminating ".CRLF", otherwise exactly as received.
    pub data: Vec<u8>,
}

/// Handle to a running fake Gmail; clones share the same server.
#[derive(Clone)]
pub struct FakeGmail {
    shared: Arc<Shared>,
}

struct Shared {
    addr: SocketAddr,
    config: FakeGmailConfig,
    acceptor: TlsAcceptor,
    behaviour: Mutex<Behaviour>,
    messages: Mutex<Vec<Delivered>>,
    /// Per connection number, in order (with `record_dialogue`).
    dialogues: Mutex<std::collections::BTreeMap<usize, Vec<Turn>>>,
    message_count: watch::Sender<usize>,
    connections: AtomicUsize,
    open_connections: AtomicUsize,
    /// The most connections open at once so far (issue 16's `upstream_connections`).
    max_open_connections: AtomicUsize,
    auth_attempts: AtomicUsize,
    file_seq: AtomicU64,
    shutdown: CancellationToken,
}

impl FakeGmail {
    pub async fn start(
        listener: TcpListener,
        config: FakeGmailConfig,
        shutdown: CancellationToken,
    ) -> Result<FakeGmail, SandboxError> {
        let addr = listener
            .local_addr()
            .map_err(SandboxError::io("reading the fake Gmail's address"))?;
        if let Some(dir) = &config.mail_dir {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(SandboxError::io("creating the sandbox mail directory"))?;
        }
        let shared = Arc::new(Shared {
            addr,
            acceptor: TlsAcceptor::from(Arc::clone(&config.tls)),
            behaviour: Mutex::new(config.behaviour.clone()),
            config,
            messages: Mutex::new(Vec::new()),
            dialogues: Mutex::new(std::collections::BTreeMap::new()),
            message_count: watch::Sender::new(0),
            connections: AtomicUsize::new(0),
            open_connections: AtomicUsize::new(0),
            max_open_connections: AtomicUsize::new(0),
            auth_attempts: AtomicUsize::new(0),
            file_seq: AtomicU64::new(0),
            shutdown,
        });
        tracing::info!(
            %addr,
            implicit_tls = shared.config.implicit_tls,
            "sandbox Gmail listening"
        );
        tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(FakeGmail { shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    pub fn messages(&self) -> Vec<Delivered> {
        lock(&self.shared.messages).clone()
    }

    /// Affects new connections and subsequent commands on existing ones.
    pub fn set_behaviour(&self, b: Behaviour) {
        *lock(&self.shared.behaviour) = b;
    }

    /// What connection `conn` (1 = the first accepted) received and sent, byte for byte,
    /// as turns: consecutive reads (or replies) are one turn. Recorded only with
    /// `Behaviour::record_dialogue`; the STARTTLS prelude is recorded too (as text it is
    /// before TLS), the AUTH line with the token in it as well (tests only).
    pub fn dialogue(&self, conn: usize) -> Vec<Turn> {
        lock(&self.shared.dialogues)
            .get(&conn)
            .cloned()
            .unwrap_or_default()
    }

    /// Numbers of the connections with a recorded dialogue.
    pub fn recorded_connections(&self) -> Vec<usize> {
        lock(&self.shared.dialogues).keys().copied().collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections open right now (accepted and not yet ended).
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::SeqCst)
    }

    /// The most connections that were open at the same time so far.
    pub fn max_open_connections(&self) -> usize {
        self.shared.max_open_connections.load(Ordering::SeqCst)
    }

    /// AUTH commands seen so far (any mechanism, any outcome).
    pub fn auth_attempts(&self) -> usize {
        self.shared.auth_attempts.load(Ordering::SeqCst)
    }

    /// Resolves to true once at least `n` messages were delivered, false on timeout.
    pub fn wait_for_messages(
        &self,
        n: usize,
        timeout: Duration,
    ) -> impl Future<Output = bool> + Send + 'static {
        let mut rx = self.shared.message_count.subscribe();
        async move {
            matches!(
                tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n)).await,
                Ok(Ok(_))
            )
        }
    }
}

impl fmt::Debug for FakeGmail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeGmail")
            .field("addr", &self.shared.addr)
            .field("implicit_tls", &self.shared.config.implicit_tls)
            .field("connections", &self.connections())
            .field("messages", &lock(&self.shared.messages).len())
            .finish_non_exhaustive()
    }
}

/// Counts a connection as open until dropped, however its task ends.
struct OpenConnection<'a>(&'a AtomicUsize);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A poisoned lock only means another thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let n = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let open = shared.open_connections.fetch_add(1, Ordering::SeqCst) + 1;
                shared
                    .max_open_connections
                    .fetch_max(open, Ordering::SeqCst);
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let _open = OpenConnection(&shared.open_connections);
                    let shutdown = shared.shutdown.clone();
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        result = handle_connection(stream, peer, n, &shared) => {
                            match result {
                                Ok(()) => {
                                    tracing::debug!(
                                        %peer,
                                        conn = n,
                                        "sandbox Gmail: connection closed",
                                    )
                                }
                                Err(err) => {
                                    tracing::debug!(
                                        %peer,
                                        conn = n,
                                        error = %err,
                                        "sandbox Gmail: connection ended",
                                    )
                                }
                            }
                        }
                    }
                });
            }
            Err(err) => {
                // Typically EMFILE; pausing avoids a hot loop while descriptors are exhausted.
                tracing::warn!(error = %err, "sandbox Gmail: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::debug!("sandbox Gmail stopped");
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    conn_no: usize,
    shared: &Shared,
) -> io::Result<()> {
    tracing::info!(%peer, conn = conn_no, "sandbox Gmail: connection accepted");
    let _ = stream.set_nodelay(true);
    let id = session_id();
    if shared.config.implicit_tls {
        let tls = tls_accept(shared, stream).await?;
        let mut session = Session::new(tls, shared, peer, conn_no, id, true);
        let end = session.run(true).await?;
        return session.close(end).await;
    }

    let mut session = Session::new(stream, shared, peer, conn_no, id.clone(), false);
    match session.run(true).await? {
        End::StartTls => {
            // Dropping the session drops its read buffer: anything the client pipelined after
            // STARTTLS is discarded unread (CVE-2011-0411 command injection).
            let Session { stream, .. } = session;
            let tls = tls_accept(shared, stream).await?;
            let mut session = Session::new(tls, shared, peer, conn_no, id, true);
            let end = session.run(false).await?;
            session.close(end).await
        }
        end => session.close(end).await,
    }
}

async fn tls_accept(
    shared: &Shared,
    stream: TcpStream,
) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, shared.acceptor.accept(stream)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

/// Something shaped like Gmail's per-connection ids, e.g. `5b1f17b1804b1-2a0ec1fa2c1si12sb.87`.
fn session_id() -> String {
    let hex = super::random_hex(12);
    format!("{}-{}sb.{}", &hex[..13], &hex[13..], hex.len())
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}
