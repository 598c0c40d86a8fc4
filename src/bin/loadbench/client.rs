//! The load client: what the clients of one run share, one client's loop, the login to
//! the relay (AUTH PLAIN) or directly to the fake Gmail (STARTTLS + XOAUTH2), and a minimal
//! one-command-at-a-time SMTP connection.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

use smtp_oauth_relay::smtp::reply::{parse_reply, Reply, ReplyParse};

use crate::scenarios::{human_size, Mode, Target};
use crate::{EMAIL, RCPT, REPLY_TIMEOUT, REUSE_LIMIT};

/// What all clients of one run share.
pub(crate) struct Plan {
    pub(crate) target: Target,
    pub(crate) addr: SocketAddr,
    pub(crate) mode: Mode,
    /// Send MAIL, RCPT and DATA in one write (RFC 2920) instead of one at a time.
    pub(crate) pipelining: bool,
    pub(crate) warmup_message: Vec<u8>,
    pub(crate) message: Vec<u8>,
    pub(crate) auth_plain: String,
    pub(crate) xoauth2: String,
    pub(crate) tls: tokio_rustls::TlsConnector,
    pub(crate) duration: Duration,
    pub(crate) max_messages: u64,
    /// Messages begun in the measured phase.
    pub(crate) started: AtomicU64,
    /// When the measured phase started.
    pub(crate) go: OnceLock<Instant>,
    /// Clients + the coordinator: every client finished its warm-up.
    pub(crate) warm: Barrier,
    /// Clients + the coordinator: the measured phase begins.
    pub(crate) start: Barrier,
    pub(crate) first_error: Mutex<Option<String>>,
}

impl Plan {
    /// Whether the client may begin another message in the measured phase.
    fn claim(&self) -> bool {
        let in_time = self.go.get().is_some_and(|go| go.elapsed() < self.duration);
        in_time && self.started.fetch_add(1, Ordering::Relaxed) < self.max_messages
    }

    pub(crate) fn error(&self, stats: &mut ClientStats, err: String) {
        stats.errors += 1;
        self.first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(err);
    }
}

#[derive(Default)]
pub(crate) struct ClientStats {
    pub(crate) messages: u64,
    pub(crate) errors: u64,
    pub(crate) latencies: Vec<Duration>,
}

impl ClientStats {
    pub(crate) fn merge(&mut self, other: ClientStats) {
        self.messages += other.messages;
        self.errors += other.errors;
        self.latencies.extend(other.latencies);
    }
}

/// One load client: a warm-up message, then messages until the plan says stop.
pub(crate) async fn client(plan: Arc<Plan>) -> ClientStats {
    let mut stats = ClientStats::default();
    let mut conn = match connect(&plan).await {
        Ok(mut conn) => match conn.send_message(&plan.warmup_message).await {
            Ok(_) if plan.mode == Mode::Persistent => Some(conn),
            Ok(_) => {
                let _ = conn.quit().await;
                None
            }
            Err(err) => {
                plan.error(&mut stats, format!("warm-up: {err}"));
                None
            }
        },
        Err(err) => {
            plan.error(&mut stats, format!("warm-up: {err}"));
            None
        }
    };
    plan.warm.wait().await;
    plan.start.wait().await;
    // Messages sent on `conn` so far (the warm-up counts, as the relay counts it).
    let mut on_conn = usize::from(conn.is_some());
    while plan.claim() {
        let began = Instant::now();
        let mut current = match conn.take() {
            Some(current) if on_conn < REUSE_LIMIT => current,
            old => {
                if let Some(mut old) = old {
                    let _ = old.quit().await;
                }
                on_conn = 0;
                match connect(&plan).await {
                    Ok(fresh) => fresh,
                    Err(err) => {
                        plan.error(&mut stats, err);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
            }
        };
        let sent = if plan.pipelining {
            current.send_message_pipelined(&plan.message).await
        } else {
            current.send_message(&plan.message).await
        };
        match sent {
            Ok(latency) => {
                stats.messages += 1;
                // One message per connection: the sender waits for the whole session.
                stats.latencies.push(match plan.mode {
                    Mode::Persistent => latency,
                    Mode::PerConnection => began.elapsed(),
                });
                on_conn += 1;
                match plan.mode {
                    Mode::Persistent => conn = Some(current),
                    Mode::PerConnection => {
                        let _ = current.quit().await;
                    }
                }
            }
            Err(err) => plan.error(&mut stats, err),
        }
    }
    if let Some(mut conn) = conn {
        let _ = conn.quit().await;
    }
    stats
}

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Connects and logs in: to the relay with AUTH PLAIN on plain loopback SMTP, or directly
/// to the fake Gmail with STARTTLS and AUTH XOAUTH2.
pub(crate) async fn connect(plan: &Plan) -> Result<Smtp<Box<dyn Io>>, String> {
    let tcp = TcpStream::connect(plan.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let mut conn = Smtp::new(tcp);
    conn.expect(220).await?;
    conn.command("EHLO loadbench.local", 250).await?;
    match plan.target {
        Target::Relay => {
            let mut conn = conn.boxed();
            conn.command(&format!("AUTH PLAIN {}", plan.auth_plain), 235)
                .await?;
            Ok(conn)
        }
        Target::Direct => {
            conn.command("STARTTLS", 220).await?;
            if !conn.buf.is_empty() {
                return Err("bytes after the STARTTLS reply".into());
            }
            let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let tls = plan
                .tls
                .connect(name, conn.io)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            let mut conn = Smtp::new(Box::new(tls) as Box<dyn Io>);
            conn.command("EHLO loadbench.local", 250).await?;
            conn.command(&format!("AUTH XOAUTH2 {}", plan.xoauth2), 235)
                .await?;
            Ok(conn)
        }
    }
}

/// A minimal SMTP client connection: one command, one reply, no pipelining (as printers,
/// scanners and most small mailers send).
pub(crate) struct Smtp<S> {
    io: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Smtp<S> {
    pub(crate) fn new(io: S) -> Smtp<S> {
        Smtp {
            io,
            buf: BytesMut::with_capacity(4096),
        }
    }

    fn boxed(self) -> Smtp<Box<dyn Io>> {
        Smtp {
            io: Box::new(self.io),
            buf: self.buf,
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, String> {
        loop {
            match parse_reply(&self.buf, 4096, 100) {
                Ok(ReplyParse::Complete { reply, consumed }) => {
                    self.buf.advance(consumed);
                    return Ok(reply);
                }
                Ok(ReplyParse::Incomplete) => {}
                Err(err) => return Err(format!("bad reply: {err}")),
            }
            self.buf.reserve(4096);
            match tokio::time::timeout(REPLY_TIMEOUT, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) => return Err("connection closed by the server".into()),
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(format!("read: {err}")),
                Err(_) => return Err("timed out waiting for a reply".into()),
            }
        }
    }

    pub(crate) async fn expect(&mut self, code: u16) -> Result<Reply, String> {
        let reply = self.read_reply().await?;
        if reply.code == code {
            Ok(reply)
        } else {
            Err(format!("expected {code}, got: {reply}"))
        }
    }

    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.io
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.io.flush().await.map_err(|e| format!("flush: {e}"))
    }

    pub(crate) async fn command(&mut self, line: &str, code: u16) -> Result<Reply, String> {
        let mut wire = Vec::with_capacity(line.len() + 2);
        wire.extend_from_slice(line.as_bytes());
        wire.extend_from_slice(b"\r\n");
        self.write(&wire).await?;
        self.expect(code).await
    }

    /// One transaction; returns the time from MAIL to the final 250.
    pub(crate) async fn send_message(&mut self, wire_message: &[u8]) -> Result<Duration, String> {
        let t0 = Instant::now();
        self.command(&format!("MAIL FROM:<{EMAIL}>"), 250).await?;
        self.command(&format!("RCPT TO:<{RCPT}>"), 250).await?;
        self.command("DATA", 354).await?;
        self.write(wire_message).await?;
        self.expect(250).await?;
        Ok(t0.elapsed())
    }

    /// One transaction with MAIL, RCPT and DATA in one write (RFC 2920), as MTAs such as
    /// Postfix send; returns the time from MAIL to the final 250.
    pub(crate) async fn send_message_pipelined(
        &mut self,
        wire_message: &[u8],
    ) -> Result<Duration, String> {
        let t0 = Instant::now();
        self.write(format!("MAIL FROM:<{EMAIL}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n").as_bytes())
            .await?;
        self.expect(250).await?;
        self.expect(250).await?;
        self.expect(354).await?;
        self.write(wire_message).await?;
        self.expect(250).await?;
        Ok(t0.elapsed())
    }

    pub(crate) async fn quit(&mut self) -> Result<(), String> {
        let _ = self.command("QUIT", 221).await;
        self.io
            .shutdown()
            .await
            .map_err(|e| format!("shutdown: {e}"))
    }
}

/// A message of `size` content bytes in DATA wire form (76-character lines, none starting
/// with '.'), followed by the terminator.
pub(crate) fn wire_message(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 8);
    let _ = write!(
        Text(&mut out),
        "From: <{EMAIL}>\r\nTo: <{RCPT}>\r\nSubject: loadbench {}\r\n\
         Message-ID: <loadbench-{size}@example.com>\r\n\r\n",
        human_size(size)
    );
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut line = 0usize;
    while out.len() < size {
        let len = (size - out.len()).saturating_sub(2).min(76);
        out.extend((0..len).map(|i| alphabet[(line + i) % alphabet.len()]));
        out.extend_from_slice(b"\r\n");
        line += 1;
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// `fmt::Write` into a byte buffer.
struct Text<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}
