//! Getting an authenticated upstream for a transaction through the shared
//! [`Connector`](crate::upstream::Connector) (access token, connection, TLS,
//! `AUTH XOAUTH2`, one retry on a fresh token when a cached one is refused). Failures are
//! logged for the operator and answered through `replies` (`Say::for_failure`).

use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;
use crate::config::Asset;
use crate::error::RelayError;
use crate::replies::Say;
use crate::smtp::reply::Reply;
use crate::upstream::{Connector, Upstream};

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    pub(super) async fn open_upstream(&self, asset: &Asset) -> Result<Upstream, Reply> {
        let relay = &self.relay;
        let connector = Connector::new(&relay.tokens, &relay.upstream).with_metrics(&relay.metrics);
        // Boxed: opening a connection (token, TCP, TLS, XOAUTH2) is the largest future a
        // session awaits, and inline it would make every session's future that large,
        // idle ones included.
        let error = match Box::pin(connector.open(asset)).await {
            Ok(upstream) => return Ok(upstream),
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
}
