//! A fake Microsoft Graph (`https://graph.microsoft.com`) for the Graph transport: real
//! TLS with the sandbox CA, bearer tokens checked against the sandbox issuer (delegated
//! tokens by mailbox, app-only tokens by `roles` and application access policy), and the
//! mail routes the relay uses, answered with Graph's status codes and error bodies:
//!
//! - `POST /v1.0/users/{id}/sendMail` with base64 MIME (`text/plain`), 4 MB request limit,
//!   `202 Accepted`;
//! - drafts (`POST …/messages`), small attachments (`POST …/messages/{m}/attachments`),
//!   upload sessions (`…/attachments/createUploadSession`, then `PUT` byte ranges to the
//!   returned URL without a bearer token, each range checked), `POST …/messages/{m}/send`,
//!   `DELETE …/messages/{m}`;
//! - at most 4 concurrent requests per mailbox (more get `429` with `Retry-After`, as
//!   Outlook's throttling does), and faults on demand ([`GraphFault`]).
//!
//! Delivered mail is kept ([`GraphDelivered`]) and saved as `.eml`. This file holds the
//! handle and state; `routes` the request handling (`drafts` the draft path); `mime` the
//! fake's own header reading
//! and `.eml` building (an oracle shares no parsing code with the relay).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::token_issuer::AccessTokens;
use super::SandboxError;

mod drafts;
mod mime;
mod routes;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure
mod tests;

/// Graph's request size limit ("4 MB"), taken as 4 MiB: bodies above it get 413.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Upload-session ranges: at most 4 MiB each, and a multiple of 320 KiB unless last.
pub const MAX_UPLOAD_RANGE: u64 = 4 * 1024 * 1024;
pub const UPLOAD_RANGE_UNIT: u64 = 320 * 1024;
/// Outlook's limit of concurrent requests per app and mailbox.
pub const MAX_CONCURRENT_PER_MAILBOX: usize = 4;
/// Attachments posted whole (not through an upload session) must stay below 3 MB.
pub const MAX_INLINE_ATTACHMENT: usize = 3 * 1024 * 1024;

/// A route of the fake, for faults and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    SendMail,
    CreateDraft,
    Attachment,
    CreateUploadSession,
    Upload,
    Send,
    Delete,
}

/// What a faulty request gets instead of the normal answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// An HTTP status with Graph's JSON error (`code`, `message`) and an optional
    /// `Retry-After` in seconds.
    Status {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<u64>,
    },
    /// Read the request and never answer (until shutdown).
    Hang,
    /// Read the whole request, then drop the connection without an answer.
    CloseAfterBody,
}

/// A fault for the next `times` requests of `route` (any route when `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphFault {
    pub route: Option<Route>,
    pub kind: FaultKind,
    pub times: usize,
}

impl GraphFault {
    /// Graph's JSON error with `status` and `code` for the next `times` requests of `route`.
    pub fn status(route: Option<Route>, status: u16, code: &str, times: usize) -> GraphFault {
        GraphFault {
            route,
            kind: FaultKind::Status {
                status,
                code: code.to_string(),
                message: format!("Forced by the test ({code})."),
                retry_after: None,
            },
            times,
        }
    }
}

/// An attachment as Graph stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphAttachment {
    pub name: String,
    pub content_type: String,
    pub content_id: Option<String>,
    pub is_inline: bool,
    pub bytes: Vec<u8>,
    /// Whether it came through an upload session (else posted whole).
    pub uploaded: bool,
}

/// A message Graph accepted for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphDelivered {
    /// The `{id}` of the URL (UPN or user id).
    pub mailbox: String,
    /// `sendMail`: the decoded MIME exactly as posted; drafts: the `.eml` the fake built.
    pub mime: Vec<u8>,
    /// From To, Cc and Bcc (headers for MIME, recipient lists for drafts), lowercased.
    pub recipients: Vec<String>,
    /// Drafts only: the message resource as posted, and its attachments.
    pub draft: Option<serde_json::Value>,
    pub attachments: Vec<GraphAttachment>,
    /// Whether the token was app-only.
    pub app_only: bool,
}

#[derive(Clone)]
pub struct FakeGraphConfig {
    pub tls: Arc<rustls::ServerConfig>,
    pub tokens: AccessTokens,
    /// When set, each delivered message is written there as `<timestamp>-<n>.eml`.
    pub mail_dir: Option<PathBuf>,
}

/// A draft being built.
#[derive(Clone, Debug)]
struct Draft {
    mailbox: String,
    resource: serde_json::Value,
    attachments: Vec<GraphAttachment>,
}

/// An upload session: the attachment it will add and the bytes so far.
#[derive(Clone, Debug)]
struct UploadSession {
    draft: String,
    attachment: GraphAttachment,
    size: u64,
}

#[derive(Default)]
struct State {
    delivered: Vec<GraphDelivered>,
    drafts: HashMap<String, Draft>,
    uploads: HashMap<String, UploadSession>,
    faults: Vec<GraphFault>,
    in_flight: HashMap<String, usize>,
    max_in_flight: usize,
    requests: HashMap<Route, usize>,
    deleted_drafts: usize,
    /// Requests that carried a bearer token, and every token seen, for secrecy tests.
    last_authorization: Option<String>,
}

struct Shared {
    addr: SocketAddr,
    config: FakeGraphConfig,
    acceptor: TlsAcceptor,
    state: Mutex<State>,
    delay: Mutex<Duration>,
    count: watch::Sender<usize>,
    file_seq: AtomicU64,
    connections: AtomicUsize,
    shutdown: CancellationToken,
}

/// Handle to a running fake Graph; clones share the same server.
#[derive(Clone)]
pub struct FakeGraph {
    shared: Arc<Shared>,
}

impl FakeGraph {
    pub async fn start(
        listener: TcpListener,
        config: FakeGraphConfig,
        shutdown: CancellationToken,
    ) -> Result<FakeGraph, SandboxError> {
        let addr = listener
            .local_addr()
            .map_err(SandboxError::io("reading the fake Graph's address"))?;
        if let Some(dir) = &config.mail_dir {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(SandboxError::io("creating the sandbox mail directory"))?;
        }
        let shared = Arc::new(Shared {
            addr,
            acceptor: TlsAcceptor::from(Arc::clone(&config.tls)),
            config,
            state: Mutex::new(State::default()),
            delay: Mutex::new(Duration::ZERO),
            count: watch::Sender::new(0),
            file_seq: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            shutdown,
        });
        tracing::info!(%addr, "sandbox Graph listening");
        tokio::spawn(routes::accept_loop(listener, Arc::clone(&shared)));
        Ok(FakeGraph { shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The `api_url` to configure: `https://127.0.0.1:PORT`.
    pub fn api_url(&self) -> String {
        format!("https://{}", self.shared.addr)
    }

    pub fn delivered(&self) -> Vec<GraphDelivered> {
        lock(&self.shared.state).delivered.clone()
    }

    /// Adds a fault; faults are consulted in order, each used up after `times` requests.
    pub fn add_fault(&self, fault: GraphFault) {
        lock(&self.shared.state).faults.push(fault);
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.state).faults.clear();
    }

    /// Latency added to every request after it was read, to make requests overlap.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.shared.delay) = delay;
    }

    /// The most requests seen at once for one mailbox.
    pub fn max_in_flight(&self) -> usize {
        lock(&self.shared.state).max_in_flight
    }

    /// Requests seen for `route` (all outcomes).
    pub fn requests(&self, route: Route) -> usize {
        lock(&self.shared.state)
            .requests
            .get(&route)
            .copied()
            .unwrap_or(0)
    }

    /// Drafts deleted so far.
    pub fn deleted_drafts(&self) -> usize {
        lock(&self.shared.state).deleted_drafts
    }

    /// Drafts that exist now (created, neither sent nor deleted).
    pub fn open_drafts(&self) -> usize {
        lock(&self.shared.state).drafts.len()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The `Authorization` header of the last request that had one.
    pub fn last_authorization(&self) -> Option<String> {
        lock(&self.shared.state).last_authorization.clone()
    }

    /// Resolves to true once at least `n` messages were delivered, false on timeout.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.shared.count.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n)).await;
        matches!(reached, Ok(Ok(_)))
    }
}

impl fmt::Debug for FakeGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeGraph")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
