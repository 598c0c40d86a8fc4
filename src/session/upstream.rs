//! Getting a link to the provider for a transaction through the asset's transport
//! ([`Link::open`]: the access token and, for SMTP, the shared
//! [`Connector`](crate::upstream::Connector) with its connection, TLS, `AUTH XOAUTH2` and
//! one retry on a fresh token when a cached one is refused). Failures are logged for the
//! operator and answered through `replies` (`Say::for_failure`).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;
use crate::config::Asset;
use crate::error::RelayError;
use crate::replies::Say;
use crate::smtp::reply::Reply;
use crate::transport::{Link, TransportError};

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    /// A new link for `asset`, after waiting for one of its `upstream_connections`.
    pub(super) async fn open_upstream(&self, asset: &Arc<Asset>) -> Result<Link, Reply> {
        match self.upstream_slot(asset, false).await? {
            super::limits::Slot::Free(permit) => self.open_upstream_holding(asset, permit).await,
            // Not asked for the pool: cannot happen; a pooled link is still a link.
            super::limits::Slot::Pooled(link) => Ok(link),
        }
    }

    /// A new link for `asset`; an SMTP connection holds `slot` for as long as it lives.
    pub(super) async fn open_upstream_holding(
        &self,
        asset: &Arc<Asset>,
        slot: Option<crate::limits::Slot>,
    ) -> Result<Link, Reply> {
        let relay = &self.relay;
        let cx = relay.transport_context();
        // Boxed: opening a connection (token, TCP, TLS, XOAUTH2) is the largest future a
        // session awaits, and inline it would make every session's future that large,
        // idle ones included.
        let error = match Box::pin(Link::open(&cx, asset)).await {
            Ok(mut upstream) => {
                if let Link::Smtp(connection) = &mut upstream {
                    connection.hold_slot(slot);
                }
                return Ok(upstream);
            }
            Err(error) => error,
        };
        let reply =
            Say::for_failure(&error, &asset.name, relay.config.server.credential_failure).reply();
        // TLS trouble (no STARTTLS, a failed handshake) may be an attack on the path:
        // the operator must hear of it, like credentials only they can fix.
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

    /// Logs a transport failure after the message: at ERROR when only an operator can fix
    /// it (a refused token, a missing scope), else at WARN.
    pub(super) fn transport_failed(&self, asset: &Asset, error: &TransportError, reply: &Reply) {
        if error.needs_operator() {
            tracing::error!(asset = %asset.name, error = %error, reply = %reply, "asset needs attention");
        } else {
            tracing::warn!(asset = %asset.name, error = %error, reply = %reply, "message not accepted by the provider");
        }
    }
}
