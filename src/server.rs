//! Listeners, the connection limit and graceful shutdown.
//!
//! [`run`] takes already-bound listeners and a cancellation token, so the binary binds
//! the configured addresses while tests bind `127.0.0.1:0` and cancel when done.

use std::net::SocketAddr;
use std::sync::Arc;
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

/// Serves until `shutdown` is cancelled, then lets sessions finish the message they are
/// sending (up to the configured grace period) and returns.
pub async fn run(listeners: Listeners, relay: Arc<Relay>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
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
            relay.clone(),
            slots.clone(),
            tracker.clone(),
            shutdown.clone(),
        )));
    }
    shutdown.cancelled().await;
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
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
}

async fn accept_loop(
    listener: TcpListener,
    implicit_tls: bool,
    relay: Arc<Relay>,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached, refusing");
            tracker.spawn(refuse(socket, implicit_tls));
            continue;
        };
        let relay = relay.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            serve_connection(socket, peer, implicit_tls, relay, shutdown).await;
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

/// Over the connection limit: a 421 tells well-behaved clients to retry later.
async fn refuse(mut socket: TcpStream, implicit_tls: bool) {
    if !implicit_tls {
        let reply = Say::TooManyConnections.reply().to_wire();
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.write_all(&reply)).await;
    }
    let _ = socket.shutdown().await;
}
