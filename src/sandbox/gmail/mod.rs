//! A fake `smtp.gmail.com`: real TLS (STARTTLS on a 587-style port or implicit TLS on a
//! 465-style port), real SMTP, and XOAUTH2 authentication checked against [`AccessTokens`].
//!
//! Replies copy Gmail's wording and multi-line layout so that the relay's error handling is
//! exercised against what it will really see.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::token_issuer::AccessTokens;
use super::SandboxError;

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
    message_count: watch::Sender<usize>,
    connections: AtomicUsize,
    open_connections: AtomicUsize,
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
            message_count: watch::Sender::new(0),
            connections: AtomicUsize::new(0),
            open_connections: AtomicUsize::new(0),
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

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections open right now (accepted and not yet ended).
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::SeqCst)
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
                shared.open_connections.fetch_add(1, Ordering::SeqCst);
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

enum End {
    /// Orderly end (QUIT or client EOF): close TLS properly.
    Closed,
    /// Drop the transport without a TLS close_notify, like a crashed or cut-off server.
    Abort,
    StartTls,
}

/// Outcome of reading one CRLF-terminated line.
enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

#[derive(Default)]
struct Transaction {
    mail_from: Option<(String, Vec<String>)>,
    rcpt_to: Vec<String>,
    /// BDAT chunks received so far, or None when no BDAT sequence is in progress.
    bdat: Option<Vec<u8>>,
    bdat_too_big: bool,
}

struct Session<'a, S> {
    stream: S,
    buf: BytesMut,
    shared: &'a Shared,
    peer: SocketAddr,
    conn_no: usize,
    id: String,
    tls: bool,
    helo: Option<String>,
    auth_user: Option<String>,
    /// The access token the connection authenticated with.
    auth_token: Option<String>,
    txn: Transaction,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Session<'a, S> {
    fn new(
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

    async fn close(mut self, end: End) -> io::Result<()> {
        match end {
            End::Closed | End::StartTls => self.stream.shutdown().await,
            End::Abort => Ok(()),
        }
    }

    fn behaviour(&self) -> Behaviour {
        lock(&self.shared.behaviour).clone()
    }

    fn hostname(&self) -> &str {
        &self.shared.config.hostname
    }

    /// ` <id> - gsmtp`, the suffix Gmail puts on most replies.
    fn tag(&self) -> String {
        format!("{} - gsmtp", self.id)
    }

    async fn run(&mut self, greet: bool) -> io::Result<End> {
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
        for ext in ["ENHANCEDSTATUSCODES", "PIPELINING", "CHUNKING", "SMTPUTF8"] {
            lines.push(ext.to_owned());
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

    async fn require_tls(&mut self) -> io::Result<bool> {
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
    async fn require_recipients(&mut self) -> io::Result<bool> {
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

    /// Returns false when the connection must be dropped.
    async fn data(&mut self, args: &str) -> io::Result<bool> {
        if !self.require_tls().await? {
            return Ok(true);
        }
        if !args.is_empty() {
            let text = format!("501 5.5.4 Syntax error in parameters {}", self.tag());
            self.reply(&text).await?;
            return Ok(true);
        }
        if self.txn.bdat.is_some() {
            let text = format!("503 5.5.1 DATA not allowed after BDAT. {}", self.tag());
            self.reply(&text).await?;
            return Ok(true);
        }
        if !self.require_recipients().await? {
            return Ok(true);
        }
        let text = format!("354  Go ahead {}", self.tag());
        self.reply(&text).await?;

        if self.behaviour().close_during_data {
            if self.buf.is_empty() {
                self.read_more().await?;
            }
            tracing::info!(
                peer = %self.peer,
                conn = self.conn_no,
                "sandbox Gmail: dropping connection during DATA (behaviour)",
            );
            return Ok(false);
        }
        if self.behaviour().stall_during_data {
            if self.buf.is_empty() {
                self.read_more().await?;
            }
            tracing::info!(
                peer = %self.peer,
                conn = self.conn_no,
                "sandbox Gmail: stalling during DATA (behaviour)",
            );
            // Until shutdown: the caller's select! ends the connection then.
            std::future::pending::<()>().await;
        }

        let Some((data, too_big)) = self.read_data().await? else {
            return Ok(false);
        };
        tracing::debug!(
            peer = %self.peer,
            conn = self.conn_no,
            bytes = data.len(),
            "C: <message data> .",
        );
        self.finish_message(data, too_big).await
    }

    /// Reads the message up to CRLF.CRLF, dot-unstuffing. Only CRLF counts as a line end: a
    /// bare LF followed by "." must neither terminate nor be unstuffed (SMTP smuggling).
    /// Returns None on EOF.
    async fn read_data(&mut self) -> io::Result<Option<(Vec<u8>, bool)>> {
        let mut data = Vec::new();
        let mut too_big = false;
        // The DATA command's own CRLF puts us at the start of a line.
        let mut at_line_start = true;
        loop {
            loop {
                if at_line_start && self.buf.first() == Some(&b'.') {
                    match (self.buf.get(1), self.buf.get(2)) {
                        (Some(b'\r'), Some(b'\n')) => {
                            self.buf.advance(3);
                            return Ok(Some((data, too_big)));
                        }
                        (Some(b'\r'), None) | (None, _) => break, // undecided: need more bytes
                        _ => {
                            self.buf.advance(1); // stuffed dot
                            at_line_start = false;
                        }
                    }
                }
                if self.buf.is_empty() {
                    break;
                }
                let (take, line_end) = match find_crlf(&self.buf) {
                    Some(pos) => (pos + 2, true),
                    // Keep a trailing CR: it may be the first half of a CRLF.
                    None if self.buf.last() == Some(&b'\r') => (self.buf.len() - 1, false),
                    None => (self.buf.len(), false),
                };
                if take == 0 {
                    break;
                }
                if !too_big {
                    if data.len() + take > MAX_MESSAGE_BYTES {
                        too_big = true;
                        data = Vec::new();
                    } else {
                        data.extend_from_slice(&self.buf[..take]);
                    }
                }
                self.buf.advance(take);
                at_line_start = line_end;
            }
            if self.read_more().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// BDAT (RFC 3030): exactly `size` octets follow, no dot-stuffing. Returns false when the
    /// connection must be dropped.
    async fn bdat(&mut self, args: &str) -> io::Result<bool> {
        let mut parts = args.split_whitespace();
        let size = parts.next().and_then(|s| s.parse::<u64>().ok());
        let last = match parts.next() {
            None => false,
            Some(word) if word.eq_ignore_ascii_case("LAST") => true,
            Some(_) => {
                let text = format!("501 5.5.4 Syntax error in parameters {}", self.tag());
                self.reply(&text).await?;
                return Ok(true);
            }
        };
        let Some(size) = size.filter(|_| parts.next().is_none()) else {
            // Without a valid size the chunk cannot be skipped, so the stream is out of sync.
            let text = format!("501 5.5.4 Syntax error in parameters {}", self.tag());
            self.reply(&text).await?;
            return Ok(false);
        };
        // The chunk must be consumed even when it is going to be refused.
        let in_sequence = self.tls && self.txn.mail_from.is_some() && !self.txn.rcpt_to.is_empty();
        let mut chunk = Vec::new();
        let mut keep = in_sequence && !self.txn.bdat_too_big;
        let current = self.txn.bdat.as_ref().map_or(0, Vec::len) as u64;
        if keep && current + size > MAX_MESSAGE_BYTES as u64 {
            keep = false;
            self.txn.bdat_too_big = true;
        }
        let mut remaining = size;
        while remaining > 0 {
            if self.buf.is_empty() && self.read_more().await? == 0 {
                return Ok(false);
            }
            let take = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            if keep {
                chunk.extend_from_slice(&self.buf[..take]);
            }
            self.buf.advance(take);
            remaining -= take as u64;
        }
        tracing::debug!(
            peer = %self.peer,
            conn = self.conn_no,
            bytes = size,
            last,
            "C: <BDAT chunk>",
        );
        if !in_sequence {
            if !self.require_tls().await? {
                return Ok(true);
            }
            self.require_recipients().await?;
            return Ok(true);
        }
        let data = self.txn.bdat.get_or_insert_with(Vec::new);
        data.extend_from_slice(&chunk);
        if !last {
            let text = format!("250 2.0.0 OK {size} octets received {}", self.tag());
            self.reply(&text).await?;
            return Ok(true);
        }
        let data = self.txn.bdat.take().unwrap_or_default();
        let too_big = self.txn.bdat_too_big;
        self.finish_message(data, too_big).await
    }

    /// Applies the behaviour switches, stores the message and sends the final reply. Returns
    /// false when the connection must be dropped.
    async fn finish_message(&mut self, data: Vec<u8>, too_big: bool) -> io::Result<bool> {
        let behaviour = self.behaviour();
        let txn = std::mem::take(&mut self.txn);
        if behaviour.close_after_dot {
            tracing::info!(
                peer = %self.peer,
                conn = self.conn_no,
                "sandbox Gmail: dropping connection after end of data (behaviour)",
            );
            return Ok(false);
        }
        if too_big {
            let text = size_exceeded(&self.tag());
            self.reply(&text).await?;
            return Ok(true);
        }
        let override_reply = behaviour.data_reply.map(|r| normalize_reply(&r));
        let deliver = override_reply.as_ref().is_none_or(|r| r.starts_with('2'));
        if deliver {
            let (mail_from, mail_params) = txn.mail_from.unwrap_or_default();
            let message = Delivered {
                auth_user: self.auth_user.clone().unwrap_or_default(),
                mail_from,
                mail_params,
                rcpt_to: txn.rcpt_to,
                data,
            };
            if let Err(err) = self.save(&message).await {
                tracing::error!(error = %err, "sandbox Gmail: could not save message");
                let text = format!(
                    "451 4.3.0 Mail server temporarily rejected message. {}",
                    self.tag()
                );
                self.reply(&text).await?;
                return Ok(true);
            }
            tracing::info!(
                peer = %self.peer,
                conn = self.conn_no,
                from = %message.mail_from,
                rcpt = ?message.rcpt_to,
                bytes = message.data.len(),
                "sandbox Gmail: message accepted"
            );
            let count = {
                let mut messages = lock(&self.shared.messages);
                messages.push(message);
                messages.len()
            };
            self.shared.message_count.send_replace(count);
        }
        let text = match override_reply {
            Some(reply) => reply,
            None => format!("250 2.0.0 OK  {} {}", unix_now().as_secs(), self.tag()),
        };
        self.reply(&text).await?;
        Ok(!behaviour.close_after_reply)
    }

    async fn save(&self, message: &Delivered) -> io::Result<()> {
        let Some(dir) = &self.shared.config.mail_dir else {
            return Ok(());
        };
        let n = self.shared.file_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let name = format!("{}-{n}.eml", unix_now().as_millis());
        write_atomically(dir, &name, &message.data).await
    }

    /// Reads one CRLF-terminated line (CRLF stripped) of at most `limit` octets including CRLF.
    /// An overlong line is consumed up to its CRLF without being buffered whole.
    async fn read_line(&mut self, limit: usize) -> io::Result<Line> {
        let mut overlong = false;
        loop {
            if let Some(pos) = find_crlf(&self.buf) {
                let line = self.buf.split_to(pos + 2);
                if overlong || pos + 2 > limit {
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Text(line[..pos].to_vec()));
            }
            if self.buf.len() > limit {
                overlong = true;
                // Keep a trailing CR: it may be the first half of the CRLF.
                let keep = usize::from(self.buf.last() == Some(&b'\r'));
                let drop = self.buf.len() - keep;
                self.buf.advance(drop);
            }
            if self.read_more().await? == 0 {
                return Ok(Line::Eof);
            }
        }
    }

    /// Reads more bytes into the buffer; 0 means EOF. Times out like a real MTA would.
    async fn read_more(&mut self) -> io::Result<usize> {
        self.buf.reserve(8192);
        match tokio::time::timeout(IDLE_TIMEOUT, self.stream.read_buf(&mut self.buf)).await {
            Ok(result) => result,
            Err(_) => {
                let text = format!("451 4.4.2 Timeout - closing connection. {}", self.tag());
                self.reply(&text).await?;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client idle timeout",
                ))
            }
        }
    }

    /// Sends a (possibly multi-line, CRLF-separated) reply.
    async fn reply(&mut self, text: &str) -> io::Result<()> {
        for line in text.split("\r\n") {
            tracing::debug!(peer = %self.peer, conn = self.conn_no, tls = self.tls, "S: {line}");
        }
        let mut out = Vec::with_capacity(text.len() + 2);
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    fn log_client(&self, line: &str) {
        tracing::debug!(peer = %self.peer, conn = self.conn_no, tls = self.tls, "C: {line}");
    }
}

/// Writes via a temporary name and renames, so a watcher never sees a half-written .eml.
async fn write_atomically(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(".{name}.tmp"));
    tokio::fs::write(&tmp, data).await?;
    tokio::fs::rename(&tmp, dir.join(name)).await
}

fn size_exceeded(tag: &str) -> String {
    multiline(
        "552",
        &[
            "5.3.4 Your message exceeded Google's message size limits. For more".to_owned(),
            format!(
                "5.3.4 information, go to  https://support.google.com/mail/?p=MaxSizeError {tag}"
            ),
        ],
    )
}

/// `code-line1\r\ncode-line2\r\ncode line3`.
fn multiline(code: &str, lines: &[String]) -> String {
    let last = lines.len().saturating_sub(1);
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let sep = if i == last { ' ' } else { '-' };
            format!("{code}{sep}{line}")
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Accepts a configured reply with LF or CRLF line breaks and no trailing newline.
fn normalize_reply(reply: &str) -> String {
    reply
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Parses `FROM:<path> params...` / `TO:<path> params...` (keyword case-insensitive, optional
/// space after the colon, as Gmail tolerates). Returns the path without brackets.
fn parse_path_arg(args: &str, keyword: &str) -> Option<(String, Vec<String>)> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    let path = &rest[..end];
    if path.contains(['<', ' ']) {
        return None;
    }
    let params = rest[end + 1..]
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    Some((path.to_owned(), params))
}

/// Decodes `base64(user=<email>\x01auth=Bearer <token>\x01\x01)`.
fn decode_xoauth2(response: &str) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(response.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let body = text.strip_suffix("\x01\x01")?;
    let mut user = None;
    let mut token = None;
    for field in body.split('\x01') {
        let (key, value) = field.split_once('=')?;
        match key {
            "user" => user = Some(value),
            "auth" => token = Some(value.strip_prefix("Bearer ")?),
            _ => {}
        }
    }
    let user = user.filter(|u| !u.is_empty())?;
    let token = token.filter(|t| !t.is_empty())?;
    Some((user.to_owned(), token.to_owned()))
}

/// Builds an XOAUTH2 initial response, for tests and tools that talk to the fake directly.
pub fn xoauth2_response(user: &str, token: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure
pub(crate) mod tests {
    use super::*;
    use crate::sandbox::pki::TestPki;
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// A minimal line-oriented SMTP client for driving the fake in tests.
    pub(crate) struct Client<S> {
        io: BufReader<S>,
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
        pub(crate) fn new(stream: S) -> Self {
            Client {
                io: BufReader::new(stream),
            }
        }

        pub(crate) async fn send(&mut self, line: &str) {
            self.send_raw(format!("{line}\r\n").as_bytes()).await;
        }

        pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
            self.io.get_mut().write_all(bytes).await.unwrap();
            self.io.get_mut().flush().await.unwrap();
        }

        /// Reads one (possibly multi-line) reply: (code, lines without the code prefix).
        pub(crate) async fn reply(&mut self) -> (u16, Vec<String>) {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0, "connection closed while awaiting a reply");
                let line = line.strip_suffix("\r\n").unwrap();
                let code: u16 = line[..3].parse().unwrap();
                lines.push(line[4..].to_owned());
                if line.as_bytes().get(3) == Some(&b' ') {
                    return (code, lines);
                }
                assert_eq!(line.as_bytes()[3], b'-');
            }
        }

        pub(crate) async fn cmd(&mut self, line: &str) -> (u16, Vec<String>) {
            self.send(line).await;
            self.reply().await
        }

        /// True if the server closed the connection without sending anything more.
        pub(crate) async fn closed(&mut self) -> bool {
            let mut rest = Vec::new();
            matches!(
                tokio::time::timeout(Duration::from_secs(5), self.io.read_to_end(&mut rest)).await,
                Ok(Ok(0)) | Ok(Err(_))
            )
        }

        pub(crate) fn into_inner(self) -> S {
            self.io.into_inner()
        }
    }

    pub(crate) struct Fixture {
        pub(crate) gmail: FakeGmail,
        pub(crate) tokens: AccessTokens,
        pub(crate) pki: TestPki,
        _shutdown: tokio_util::sync::DropGuard,
    }

    pub(crate) async fn fixture_with(configure: impl FnOnce(&mut FakeGmailConfig)) -> Fixture {
        let pki = TestPki::generate(&["localhost", "127.0.0.1"]).unwrap();
        let tokens = AccessTokens::new();
        let mut config = FakeGmailConfig::new(pki.server_config().unwrap(), tokens.clone());
        configure(&mut config);
        let shutdown = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gmail = FakeGmail::start(listener, config, shutdown.clone())
            .await
            .unwrap();
        Fixture {
            gmail,
            tokens,
            pki,
            _shutdown: shutdown.drop_guard(),
        }
    }

    async fn fixture() -> Fixture {
        fixture_with(|_| {}).await
    }

    type TlsClient = Client<tokio_rustls::client::TlsStream<TcpStream>>;

    async fn tls_upgrade(f: &Fixture, tcp: TcpStream, name: &str) -> TlsClient {
        let connector = tokio_rustls::TlsConnector::from(f.pki.client_config().unwrap());
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        Client::new(connector.connect(server_name, tcp).await.unwrap())
    }

    /// Connects, checks the greeting and EHLO, and upgrades with STARTTLS.
    async fn connect_starttls(f: &Fixture) -> TlsClient {
        let tcp = TcpStream::connect(f.gmail.addr()).await.unwrap();
        let mut plain = Client::new(tcp);
        let (code, greeting) = plain.reply().await;
        assert_eq!(code, 220);
        assert!(greeting[0].starts_with("smtp.gmail.com ESMTP "));
        assert!(greeting[0].ends_with(" - gsmtp"));
        let (code, ext) = plain.cmd("EHLO client.example").await;
        assert_eq!(code, 250);
        assert_eq!(ext[0], "smtp.gmail.com at your service, [127.0.0.1]");
        assert!(ext.contains(&"STARTTLS".to_owned()));
        assert!(!ext.iter().any(|e| e.starts_with("AUTH")));
        let (code, text) = plain.cmd("STARTTLS").await;
        assert_eq!((code, text[0].as_str()), (220, "2.0.0 Ready to start TLS"));
        let mut tls = tls_upgrade(f, plain.into_inner(), "localhost").await;
        let (code, ext) = tls.cmd("EHLO client.example").await;
        assert_eq!(code, 250);
        assert!(ext
            .contains(&"AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH".to_owned()));
        assert!(!ext.contains(&"STARTTLS".to_owned()));
        tls
    }

    async fn authed(f: &Fixture) -> TlsClient {
        let mut c = connect_starttls(f).await;
        let token = f.tokens.issue("user@example.com");
        let (code, _) = c
            .cmd(&format!(
                "AUTH XOAUTH2 {}",
                xoauth2_response("user@example.com", &token)
            ))
            .await;
        assert_eq!(code, 235);
        c
    }

    #[tokio::test]
    async fn starttls_xoauth2_initial_response_and_delivery() {
        let f = fixture().await;
        let mut c = authed(&f).await;
        assert_eq!(
            c.cmd("MAIL FROM:<user@example.com> SIZE=100 BODY=8BITMIME")
                .await
                .0,
            250
        );
        let (code, text) = c.cmd("RCPT TO:<a@example.net>").await;
        assert_eq!(code, 250);
        assert!(text[0].starts_with("2.1.5 OK"));
        let (code, text) = c.cmd("DATA").await;
        assert_eq!(code, 354);
        assert!(text[0].starts_with(" Go ahead"));
        c.send_raw(
            b"Subject: hi\r\n\r\n..leading dot\r\n..\r\nnot end\n.\nstill body\r\nlast\r\n.\r\n",
        )
        .await;
        let (code, text) = c.reply().await;
        assert_eq!(code, 250);
        assert!(text[0].starts_with("2.0.0 OK  "));
        assert_eq!(c.cmd("QUIT").await.0, 221);

        assert!(f.gmail.wait_for_messages(1, Duration::from_secs(1)).await);
        let msgs = f.gmail.messages();
        assert_eq!(
            msgs,
            vec![Delivered {
                auth_user: "user@example.com".into(),
                mail_from: "user@example.com".into(),
                mail_params: vec!["SIZE=100".into(), "BODY=8BITMIME".into()],
                rcpt_to: vec!["a@example.net".into()],
                data: b"Subject: hi\r\n\r\n.leading dot\r\n.\r\nnot end\n.\nstill body\r\nlast\r\n"
                    .to_vec(),
            }]
        );
        assert_eq!(f.gmail.connections(), 1);
        assert_eq!(f.gmail.auth_attempts(), 1);
    }

    #[tokio::test]
    async fn xoauth2_two_step_form() {
        let f = fixture().await;
        let mut c = connect_starttls(&f).await;
        let token = f.tokens.issue("user@example.com");
        let (code, text) = c.cmd("AUTH XOAUTH2").await;
        assert_eq!((code, text[0].as_str()), (334, ""));
        let (code, text) = c.cmd(&xoauth2_response("USER@example.com", &token)).await;
        assert_eq!((code, text[0].as_str()), (235, "2.7.0 Accepted"));
    }

    #[tokio::test]
    async fn bad_token_gets_json_challenge_then_535() {
        let f = fixture().await;
        let mut c = connect_starttls(&f).await;
        let token = f.tokens.issue("other@example.com");
        let (code, text) = c
            .cmd(&format!(
                "AUTH XOAUTH2 {}",
                xoauth2_response("user@example.com", &token)
            ))
            .await;
        assert_eq!((code, text[0].as_str()), (334, XOAUTH2_ERROR_CHALLENGE));
        let json = base64::engine::general_purpose::STANDARD
            .decode(XOAUTH2_ERROR_CHALLENGE)
            .unwrap();
        assert_eq!(
            json,
            br#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#
        );
        let (code, text) = c.cmd("").await;
        assert_eq!(code, 535);
        assert_eq!(text.len(), 2);
        assert!(text[0].starts_with("5.7.8 Username and Password not accepted."));
        assert!(text[1].starts_with("5.7.8  https://support.google.com/mail/?p=BadCredentials "));

        // Revoked tokens fail the same way; other mechanisms and garbage are refused.
        let (code, _) = c.cmd("AUTH PLAIN AHVzZXIAcGFzcw==").await;
        assert_eq!(code, 504);
        let (code, text) = c.cmd("AUTH XOAUTH2 !!!notbase64").await;
        assert_eq!(
            (code, text[0].starts_with("5.5.2 Cannot Decode response")),
            (501, true)
        );
        let (code, _) = c.cmd("MAIL FROM:<user@example.com>").await;
        assert_eq!(code, 530);
        assert_eq!(f.gmail.auth_attempts(), 3);
    }

    #[tokio::test]
    async fn plaintext_auth_and_mail_are_refused_and_pipelined_bytes_after_starttls_are_dropped() {
        let f = fixture().await;
        let tcp = TcpStream::connect(f.gmail.addr()).await.unwrap();
        let mut c = Client::new(tcp);
        assert_eq!(c.reply().await.0, 220);
        assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 530);
        assert_eq!(c.cmd("EHLO x").await.0, 250);
        let (code, text) = c.cmd("MAIL FROM:<a@b>").await;
        assert_eq!(code, 530);
        assert!(text[0].starts_with("5.7.0 Must issue a STARTTLS command first."));
        assert_eq!(c.cmd("AUTH XOAUTH2").await.0, 530);
        assert_eq!(c.cmd("FOO").await.0, 502);
        // Injected command must not be executed inside TLS (CVE-2011-0411).
        c.send_raw(b"STARTTLS\r\nRSET\r\n").await;
        assert_eq!(c.reply().await.0, 220);
        let mut tls = tls_upgrade(&f, c.into_inner(), "127.0.0.1").await;
        // Had RSET been kept, its 250 would arrive before the NOOP's reply: check the text.
        let (code, text) = tls.cmd("NOOP").await;
        assert_eq!(code, 250);
        assert!(text[0].starts_with("2.0.0 OK"), "{text:?}");
        // State was reset: EHLO is required again.
        let (code, _) = tls.cmd("AUTH XOAUTH2").await;
        assert_eq!(code, 503);
    }

    #[tokio::test]
    async fn recipient_rejection_is_multiline_and_other_recipients_still_deliver() {
        let f = fixture_with(|c| {
            c.behaviour.reject_recipients = vec!["Nobody@Example.com".into()];
        })
        .await;
        let mut c = authed(&f).await;
        assert_eq!(c.cmd("MAIL FROM:<user@example.com>").await.0, 250);
        let (code, text) = c.cmd("RCPT TO:<nobody@example.com>").await;
        assert_eq!(code, 550);
        assert_eq!(text.len(), 4);
        assert!(
            text[0].starts_with("5.1.1 The email account that you tried to reach does not exist.")
        );
        assert_eq!(c.cmd("DATA").await.0, 503);
        assert_eq!(c.cmd("RCPT TO:<ok@example.com>").await.0, 250);
        assert_eq!(c.cmd("DATA").await.0, 354);
        let (code, _) = c.cmd("hello\r\n.").await;
        assert_eq!(code, 250);
        let msgs = f.gmail.messages();
        assert_eq!(msgs[0].rcpt_to, vec!["ok@example.com".to_owned()]);
        assert_eq!(msgs[0].data, b"hello\r\n");
    }

    #[tokio::test]
    async fn pipelined_transaction_and_size_and_long_lines() {
        let f = fixture().await;
        let mut c = authed(&f).await;
        let (code, text) = c
            .cmd(&format!("MAIL FROM:<a@b> SIZE={}", GMAIL_SIZE_LIMIT + 1))
            .await;
        assert_eq!((code, text[0].starts_with("5.3.4")), (552, true));
        let long = format!("NOOP {}", "x".repeat(600));
        assert_eq!(c.cmd(&long).await.0, 555);
        c.send_raw(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\n")
            .await;
        for expected in [250, 250, 250, 354] {
            assert_eq!(c.reply().await.0, expected);
        }
        c.send_raw(b".\r\nRSET\r\nNOOP\r\n").await;
        for expected in [250, 250, 250] {
            assert_eq!(c.reply().await.0, expected);
        }
        let msgs = f.gmail.messages();
        assert_eq!(msgs.len(), 1);
        assert!(msgs[0].data.is_empty());
        assert_eq!(msgs[0].rcpt_to.len(), 2);
    }

    #[tokio::test]
    async fn bdat_chunks_are_concatenated_without_unstuffing() {
        let f = fixture().await;
        let mut c = authed(&f).await;
        assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 250);
        assert_eq!(c.cmd("RCPT TO:<c@d>").await.0, 250);
        c.send_raw(b"BDAT 6\r\n.a\r\nb\r").await;
        assert_eq!(c.reply().await.0, 250);
        c.send_raw(b"BDAT 3 LAST\r\n\n.\n").await;
        assert_eq!(c.reply().await.0, 250);
        assert_eq!(f.gmail.messages()[0].data, b".a\r\nb\r\n.\n");
    }

    #[tokio::test]
    async fn behaviour_switches() {
        let f = fixture().await;

        f.gmail.set_behaviour(Behaviour {
            data_reply: Some("552 5.3.4 Message too big".into()),
            ..Behaviour::default()
        });
        let mut c = authed(&f).await;
        assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 250);
        assert_eq!(c.cmd("RCPT TO:<c@d>").await.0, 250);
        assert_eq!(c.cmd("DATA").await.0, 354);
        let (code, text) = c.cmd("x\r\n.").await;
        assert_eq!((code, text[0].as_str()), (552, "5.3.4 Message too big"));

        f.gmail.set_behaviour(Behaviour {
            close_after_dot: true,
            ..Behaviour::default()
        });
        assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 250);
        assert_eq!(c.cmd("RCPT TO:<c@d>").await.0, 250);
        assert_eq!(c.cmd("DATA").await.0, 354);
        c.send("x\r\n.").await;
        assert!(c.closed().await);

        f.gmail.set_behaviour(Behaviour {
            close_during_data: true,
            ..Behaviour::default()
        });
        let mut c = authed(&f).await;
        assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 250);
        assert_eq!(c.cmd("RCPT TO:<c@d>").await.0, 250);
        assert_eq!(c.cmd("DATA").await.0, 354);
        c.send_raw(b"Subject: partial\r\n").await;
        assert!(c.closed().await);
        assert!(f.gmail.messages().is_empty());
    }

    #[tokio::test]
    async fn no_starttls_is_neither_advertised_nor_accepted() {
        let f = fixture_with(|c| c.behaviour.no_starttls = true).await;
        let mut c = Client::new(TcpStream::connect(f.gmail.addr()).await.unwrap());
        assert_eq!(c.reply().await.0, 220);
        let (code, ext) = c.cmd("EHLO x").await;
        assert_eq!(code, 250);
        assert!(!ext.iter().any(|e| e == "STARTTLS" || e.starts_with("AUTH")));
        assert_eq!(c.cmd("STARTTLS").await.0, 502);
        assert_eq!(c.cmd("AUTH XOAUTH2").await.0, 530);
    }

    #[tokio::test]
    async fn implicit_tls_offers_auth_immediately() {
        let f = fixture_with(|c| c.implicit_tls = true).await;
        let tcp = TcpStream::connect(f.gmail.addr()).await.unwrap();
        let mut c = tls_upgrade(&f, tcp, "127.0.0.1").await;
        assert_eq!(c.reply().await.0, 220);
        let (code, ext) = c.cmd("EHLO x").await;
        assert_eq!(code, 250);
        assert!(!ext.contains(&"STARTTLS".to_owned()));
        assert!(ext
            .iter()
            .any(|e| e.starts_with("AUTH ") && e.contains("XOAUTH2")));
        let token = f.tokens.issue("user@example.com");
        let (code, _) = c
            .cmd(&format!(
                "AUTH XOAUTH2 {}",
                xoauth2_response("user@example.com", &token)
            ))
            .await;
        assert_eq!(code, 235);
    }

    #[tokio::test]
    async fn messages_are_written_to_mail_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mail_dir = dir.path().join("nested/mail");
        let f = fixture_with(|c| c.mail_dir = Some(mail_dir.clone())).await;
        let mut c = authed(&f).await;
        for _ in 0..2 {
            assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 250);
            assert_eq!(c.cmd("RCPT TO:<c@d>").await.0, 250);
            assert_eq!(c.cmd("DATA").await.0, 354);
            assert_eq!(c.cmd("Subject: saved\r\n\r\nbody\r\n.").await.0, 250);
        }
        let mut names: Vec<String> = std::fs::read_dir(&mail_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2);
        assert!(names.iter().all(|n| n.ends_with(".eml")));
        let content = std::fs::read(mail_dir.join(&names[0])).unwrap();
        assert_eq!(content, b"Subject: saved\r\n\r\nbody\r\n");
    }

    #[test]
    fn xoauth2_decoding() {
        let ok = xoauth2_response("u@example.com", "ya29.t");
        assert_eq!(
            decode_xoauth2(&ok),
            Some(("u@example.com".into(), "ya29.t".into()))
        );
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(decode_xoauth2(&b64("user=u\x01auth=Bearer t\x01")), None);
        assert_eq!(decode_xoauth2(&b64("user=u\x01auth=Basic t\x01\x01")), None);
        assert_eq!(decode_xoauth2(&b64("auth=Bearer t\x01\x01")), None);
        assert_eq!(decode_xoauth2("%%%"), None);
    }

    #[test]
    fn path_parsing() {
        assert_eq!(
            parse_path_arg("from:<a@b> SIZE=1", "FROM:"),
            Some(("a@b".into(), vec!["SIZE=1".into()]))
        );
        assert_eq!(
            parse_path_arg("FROM: <>", "FROM:"),
            Some((String::new(), vec![]))
        );
        assert_eq!(parse_path_arg("FROM:a@b", "FROM:"), None);
        assert_eq!(parse_path_arg("TO:<a@b>", "FROM:"), None);
    }
}
