//! Listeners, the connection limit and graceful shutdown.
//!
//! [`run`] takes already-bound listeners and a cancellation token, so the binary binds
//! the configured addresses while tests bind `127.0.0.1:0` and cancel when done.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::relay::Relay;
use crate::replies::Say;
use crate::session::Session;
use crate::stream::MaybeTls;

/// The sockets to serve: plain (with optional STARTTLS) and implicit TLS.
#[derive(Default)]
pub struct Listeners {
    pub plain: Vec<TcpListener>,
    pub implicit_tls: Vec<TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Listeners {
    /// Binds every configured address, failing on the first that cannot be bound.
    pub async fn bind(
        plain: &[SocketAddr],
        implicit_tls: &[SocketAddr],
    ) -> Result<Self, BindError> {
        let mut listeners = Listeners::default();
        for &addr in plain {
            listeners.plain.push(bind(addr).await?);
        }
        for &addr in implicit_tls {
            listeners.implicit_tls.push(bind(addr).await?);
        }
        Ok(listeners)
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError::Bind { addr, source })
}

/// The relay state new sessions use; replaced as a whole on reload (SIGHUP), while
/// running sessions keep the state they started with.
#[derive(Clone)]
pub struct RelayHandle(Arc<RwLock<Arc<Relay>>>);

impl RelayHandle {
    pub fn new(relay: Arc<Relay>) -> Self {
        RelayHandle(Arc::new(RwLock::new(relay)))
    }

    pub fn current(&self) -> Arc<Relay> {
        match self.0.read() {
            Ok(relay) => relay.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, relay: Arc<Relay>) {
        match self.0.write() {
            Ok(mut current) => *current = relay,
            Err(poisoned) => *poisoned.into_inner() = relay,
        }
    }
}

impl From<Arc<Relay>> for RelayHandle {
    fn from(relay: Arc<Relay>) -> Self {
        RelayHandle::new(relay)
    }
}

/// Open connections per client address, for `max_connections_per_ip`.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

struct PerIpGuard {
    counts: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn try_enter(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<PerIpGuard> {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(PerIpGuard {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Serves until `shutdown` is cancelled, then lets sessions finish the message they are
/// sending (up to the configured grace period) and returns. While draining, new
/// connections are answered 421 so clients retry elsewhere or later.
pub async fn run(listeners: Listeners, relay: impl Into<RelayHandle>, shutdown: CancellationToken) {
    let relays: RelayHandle = relay.into();
    let relay = relays.current();
    let tracker = TaskTracker::new();
    let drained = CancellationToken::new();
    let per_ip = Arc::new(PerIp::default());
    // Sized once: a reload cannot resize it (a restart can).
    let slots = Arc::new(Semaphore::new(relay.config.limits.max_connections));
    let mut accept_loops = Vec::new();
    let all = listeners
        .plain
        .into_iter()
        .map(|l| (l, false))
        .chain(listeners.implicit_tls.into_iter().map(|l| (l, true)));
    for (listener, implicit_tls) in all {
        if let Ok(addr) = listener.local_addr() {
            let kind = if implicit_tls { "implicit TLS" } else { "SMTP" };
            tracing::info!(%addr, "listening ({kind})");
        }
        accept_loops.push(tokio::spawn(accept_loop(
            listener,
            implicit_tls,
            AcceptContext {
                relays: relays.clone(),
                slots: slots.clone(),
                per_ip: per_ip.clone(),
                tracker: tracker.clone(),
                shutdown: shutdown.clone(),
                drained: drained.clone(),
            },
        )));
    }
    // Issue 15: the spool's delivery worker runs beside the listeners; it drains its
    // deliveries in flight within the same grace period as the sessions.
    let spool_worker = tokio::spawn(crate::spool::worker::run(relays.clone(), shutdown.clone()));
    shutdown.cancelled().await;
    tracker.close();
    let grace = relay.config.timeouts.shutdown_grace;
    if !tracker.is_empty() {
        tracing::info!(
            sessions = tracker.len(),
            grace_secs = grace.as_secs(),
            "draining sessions"
        );
    }
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            sessions = tracker.len(),
            "shutdown grace period over, dropping sessions"
        );
    }
    let _ = spool_worker.await;
    drained.cancel();
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
}

struct AcceptContext {
    relays: RelayHandle,
    slots: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    drained: CancellationToken,
}

async fn accept_loop(listener: TcpListener, implicit_tls: bool, context: AcceptContext) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = context.drained.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Usually EMFILE: back off instead of spinning on the error.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        if context.shutdown.is_cancelled() {
            tokio::spawn(refuse(socket, implicit_tls, Say::ShuttingDown));
            continue;
        }
        let relay = context.relays.current();
        let Some(per_ip) = context.per_ip.try_enter(
            peer.ip().to_canonical(),
            relay.config.limits.max_connections_per_ip,
        ) else {
            tracing::warn!(%peer, "per-address connection limit reached, refusing");
            relay.metrics.limit_hit("connections_per_ip");
            tokio::spawn(refuse(socket, implicit_tls, Say::TooManyConnections));
            continue;
        };
        let Ok(permit) = context.slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached, refusing");
            relay.metrics.limit_hit("connections");
            tokio::spawn(refuse(socket, implicit_tls, Say::TooManyConnections));
            continue;
        };
        let shutdown = context.shutdown.clone();
        context.tracker.spawn(async move {
            let _permit = permit;
            let _per_ip = per_ip;
            let metrics = relay.metrics.clone();
            metrics.sessions_total.inc();
            metrics.sessions_current.inc();
            serve_connection(socket, peer, implicit_tls, relay, shutdown).await;
            metrics.sessions_current.dec();
        });
    }
}

async fn serve_connection(
    socket: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    relay: Arc<Relay>,
    shutdown: CancellationToken,
) {
    let stream = if implicit_tls {
        let Some(acceptor) = relay.tls_acceptor.clone() else {
            return;
        };
        let handshake =
            tokio::time::timeout(relay.config.timeouts.command, acceptor.accept(socket)).await;
        match handshake {
            Ok(Ok(tls)) => MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))),
            Ok(Err(err)) => {
                tracing::info!(%peer, error = %err, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "TLS handshake timed out");
                return;
            }
        }
    } else {
        MaybeTls::Plain(socket)
    };
    Session::new(relay, stream, peer, shutdown).run().await;
}

/// Over a limit or shutting down: a 421 tells well-behaved clients to retry later.
async fn refuse(mut socket: TcpStream, implicit_tls: bool, say: Say) {
    // On the implicit-TLS port a plaintext reply would be noise to a TLS client.
    if !implicit_tls {
        let reply = say.reply().to_wire();
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.write_all(&reply)).await;
    }
    let _ = socket.shutdown().await;
}
