//! The seam between a session and the provider: a [`Link`] is what one asset's mail goes
//! through, whatever the transport behind it.
//!
//! A session holds a `Link` for the length of a transaction (and may keep it for the next
//! one, or give it to the pool) and speaks to it in SMTP's terms — MAIL, RCPT, DATA,
//! message bytes in wire form, the final verdict — so the session has no per-transport
//! branch. Each transport decides what those steps mean:
//!
//! - [`Link::Smtp`]: today's upstream (`upstream::Upstream`), each step a real command
//!   to the provider, its replies passed through (lock-step MAIL/RCPT/DATA).
//! - HTTP API transports (the Gmail API; Microsoft Graph next) answer MAIL and RCPT
//!   themselves, spool the un-stuffed message with the relay's `Received:` header in
//!   front ([`body`]), and send it at the final dot; their failures are classified once
//!   ([`error::ApiFailure`]) and mapped to replies in `replies.rs`.
//!
//! Adding a transport: a variant here, its settings in `config::AssetTransport`, a
//! `match` arm in each method below (the compiler lists them), and its check in `check`.

pub mod api_recipients;
pub mod body;
pub mod check;
pub mod error;
mod face;
pub mod gmail_api;
pub mod graph;
pub mod graph_check;
pub mod graph_error;
mod graph_large;
pub mod graph_link;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure
mod graph_tests;
pub mod http;
pub mod smtp;

use std::sync::Arc;

use tokio::time::Instant;

use crate::config::{Asset, AssetTransport};
use crate::credentials::secret::Secret;
use crate::error::RelayError;
use crate::metrics::Metrics;
use crate::oauth::token::TokenManager;
use crate::smtp::reply::Reply;
use crate::upstream::pool::Reusable;
use crate::upstream::{Connector, Upstream, UpstreamSettings};

pub use error::{ApiFailure, TransportError};
pub use gmail_api::GmailApiLink;
pub use graph_link::GraphLink;
pub use http::ApiClients;
pub use smtp::Unusable;

/// What opening a link and running a transaction need from the relay (or from `check`).
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub tokens: &'a TokenManager,
    pub settings: &'a UpstreamSettings,
    pub metrics: Option<&'a Metrics>,
    /// HTTP clients for the API transports, one per asset (its own CA roots).
    pub apis: &'a ApiClients,
}

/// MAIL FROM as the client asked for it (the address in canonical form, empty for the
/// null sender), with the parameters the relay understands.
#[derive(Debug, Clone, Copy)]
pub struct MailRequest<'a> {
    pub from: &'a str,
    pub size: Option<u64>,
    pub eight_bit: bool,
    pub smtputf8: bool,
}

/// The transaction as it stands when the message starts: who sends, to whom.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    pub sender: String,
    pub recipients: Vec<String>,
}

/// One asset's way to the provider, able to carry one transaction at a time.
pub enum Link {
    Smtp(Box<Upstream>),
    GmailApi(Box<GmailApiLink>),
    Graph(Box<GraphLink>),
}

impl Link {
    /// A link for `asset`: gets the access token (credential trouble shows here, at MAIL
    /// FROM) and, for SMTP, connects and logs in.
    pub async fn open(cx: &Context<'_>, asset: &Arc<Asset>) -> Result<Link, RelayError> {
        match &asset.transport {
            AssetTransport::Smtp => {
                let connector = Connector::new(cx.tokens, cx.settings);
                let connector = match cx.metrics {
                    Some(metrics) => connector.with_metrics(metrics),
                    None => connector,
                };
                Ok(Link::Smtp(Box::new(connector.open(asset).await?)))
            }
            AssetTransport::GmailApi(settings) => Ok(Link::GmailApi(Box::new(
                GmailApiLink::open(cx, asset, settings).await?,
            ))),
            AssetTransport::Graph(_) => {
                Ok(Link::Graph(Box::new(GraphLink::open(cx, asset).await?)))
            }
        }
    }

    /// The access token the link uses, for invalidation when the provider refuses it.
    pub fn token(&self) -> Option<&Secret> {
        match self {
            Link::Smtp(upstream) => upstream.token(),
            Link::GmailApi(link) => Some(&link.token().token),
            Link::Graph(link) => Some(&link.token().token),
        }
    }

    /// Where it goes, for log lines.
    pub fn target(&self) -> String {
        match self {
            Link::Smtp(upstream) => upstream.target().to_string(),
            Link::GmailApi(link) => link.target().to_string(),
            Link::Graph(link) => link.target().to_string(),
        }
    }

    /// Whether the provider takes SMTPUTF8 messages (RFC 6531); MAIL with SMTPUTF8 is
    /// refused by the session when it does not.
    pub fn supports_smtputf8(&self) -> bool {
        match self {
            Link::Smtp(upstream) => upstream.capabilities().smtputf8,
            // The API takes the message as it is; Gmail reads UTF-8 headers.
            Link::GmailApi(_) => true,
            // Graph takes the MIME as it is (base64 of the bytes).
            Link::Graph(_) => true,
        }
    }

    /// MAIL FROM. A refusal comes back as the reply; `Err` when the link is broken.
    pub async fn mail(&mut self, request: &MailRequest<'_>) -> Result<Reply, TransportError> {
        match self {
            Link::Smtp(upstream) => smtp::mail(upstream, request).await,
            Link::GmailApi(link) => Ok(link.mail(request)),
            Link::Graph(link) => Ok(link.mail(request)),
        }
    }

    /// RSET and MAIL FROM on a link kept from an earlier transaction; `Err` when the
    /// link cannot carry this one (the session then opens a new one; nothing is lost).
    pub async fn mail_on_reused(&mut self, request: &MailRequest<'_>) -> Result<Reply, Unusable> {
        match self {
            Link::Smtp(upstream) => smtp::mail_on_reused(upstream, request).await,
            Link::GmailApi(link) => Ok(link.mail(request)),
            Link::Graph(link) => Ok(link.mail(request)),
        }
    }

    /// RCPT TO for `to`.
    pub async fn rcpt(&mut self, to: &str) -> Result<Reply, TransportError> {
        match self {
            Link::Smtp(upstream) => Ok(upstream.command(&format!("RCPT TO:<{to}>")).await?),
            // Recipient problems come back later as bounces, as on Gmail's SMTP.
            Link::GmailApi(_) | Link::Graph(_) => Ok(crate::replies::Say::Ok.reply()),
        }
    }

    /// The start of the message: a 354 (or the transport's own go-ahead) lets the
    /// session send it; any other reply is the refusal to pass on.
    pub async fn data(&mut self, envelope: &Envelope) -> Result<Reply, TransportError> {
        match self {
            Link::Smtp(upstream) => Ok(upstream.command("DATA").await?),
            Link::GmailApi(link) => Ok(link.data(envelope)),
            Link::Graph(link) => Ok(link.data(envelope)),
        }
    }

    /// Message bytes in SMTP wire form (dot-stuffed, CRLF lines, the relay's Received
    /// header first), as the DATA scanner produces them; never the terminator.
    pub async fn send_data(&mut self, wire: &[u8]) -> Result<(), TransportError> {
        match self {
            Link::Smtp(upstream) => Ok(upstream.send_data(wire).await?),
            Link::GmailApi(link) => link.send_data(wire),
            Link::Graph(link) => link.send_data(wire),
        }
    }

    /// The client's final dot: the message is complete; waits (bounded by
    /// `upstream_final_reply_secs`) for the provider's verdict. `Ok` is a definite reply
    /// to pass on (2xx only when the provider accepted the message); `Err` says why there
    /// is none ([`TransportError::possible_duplicate`] when the provider may have it).
    pub async fn finish(&mut self, cx: &Context<'_>) -> Result<Reply, TransportError> {
        match self {
            Link::Smtp(upstream) => smtp::finish(upstream).await,
            Link::GmailApi(link) => link.finish(cx).await,
            Link::Graph(link) => link.finish(cx).await,
        }
    }

    /// The provider's own id of the message accepted by the last `finish`, for the log.
    pub fn accepted_id(&self) -> Option<&str> {
        match self {
            Link::Smtp(_) => None,
            Link::GmailApi(link) => link.accepted_id(),
            Link::Graph(link) => link.accepted_id(),
        }
    }

    /// Ends a transaction without a message (RSET); false when the link is not reusable.
    pub async fn reset(&mut self) -> bool {
        match self {
            Link::Smtp(upstream) => {
                matches!(upstream.command("RSET").await, Ok(reply) if reply.is_positive())
            }
            Link::GmailApi(link) => {
                link.reset();
                true
            }
            Link::Graph(link) => {
                link.reset();
                true
            }
        }
    }

    /// Closes the link politely.
    pub async fn quit(self) {
        match self {
            Link::Smtp(upstream) => (*upstream).quit().await,
            Link::GmailApi(_) | Link::Graph(_) => {}
        }
    }
}

impl Reusable for Link {
    fn token_expires_at(&self) -> Option<Instant> {
        match self {
            Link::Smtp(upstream) => upstream.token_expires_at(),
            Link::GmailApi(link) => Some(link.token().expires_at),
            Link::Graph(link) => Some(link.token().expires_at),
        }
    }
}

impl From<crate::upstream::UpstreamError> for TransportError {
    fn from(error: crate::upstream::UpstreamError) -> Self {
        TransportError::Smtp(Box::new(error))
    }
}
