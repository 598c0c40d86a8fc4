//! The Graph transport behind the seam ([`super::Link::Graph`]): MAIL and RCPT are
//! answered by the relay, the message is spooled ([`super::body`]), its header block is
//! compared with the envelope as on every API transport ([`super::api_recipients`]), and
//! at the final dot [`GraphTransport::send`] takes it to Microsoft Graph. What Graph said
//! becomes a [`TransportError`] whose reply `replies.rs` decides.

use std::sync::Arc;

use super::body::BodySpool;
use super::graph::{ByteStream, GraphMessage, GraphPath, GraphTransport, MessageSource};
use super::graph_error::GraphError;
use super::{Context, Envelope, MailRequest, TransportError};
use crate::config::Asset;
use crate::error::RelayError;
use crate::oauth::token::AccessToken;
use crate::replies::Say;
use crate::smtp::reply::Reply;

/// The spool with the relay's inserted header in front, read again on a retry.
struct SpoolSource<'a> {
    spool: &'a mut BodySpool,
    prefix: Vec<u8>,
}

impl MessageSource for SpoolSource<'_> {
    fn len(&self) -> u64 {
        self.spool.stream_len(self.prefix.len())
    }

    fn chunks(&mut self) -> std::io::Result<ByteStream> {
        Ok(Box::pin(self.spool.stream(self.prefix.clone())?))
    }
}

/// One asset's link to Graph, carrying one transaction at a time.
pub struct GraphLink {
    asset: Arc<Asset>,
    transport: Arc<GraphTransport>,
    token: AccessToken,
    envelope: Envelope,
    /// The envelope as MAIL and RCPT build it (the SMTP-shaped face, `face.rs`).
    pub(super) pending: Envelope,
    spool: Option<BodySpool>,
    accepted: Option<&'static str>,
}

impl GraphLink {
    /// Gets the access token (credential trouble is answered at MAIL FROM, as on SMTP).
    pub async fn open(cx: &Context<'_>, asset: &Arc<Asset>) -> Result<GraphLink, RelayError> {
        let token = cx.tokens.access_token(&asset.name).await?;
        let transport = cx.apis.graph(asset).ok_or_else(|| {
            RelayError::Token(crate::oauth::token::TokenError::Unavailable {
                asset: asset.name.clone(),
                reason: "no Microsoft Graph client for this asset".to_string(),
            })
        })?;
        Ok(GraphLink {
            asset: asset.clone(),
            transport,
            token,
            envelope: Envelope::default(),
            pending: Envelope::default(),
            spool: None,
            accepted: None,
        })
    }

    pub fn token(&self) -> &AccessToken {
        &self.token
    }

    pub fn target(&self) -> &str {
        self.transport.api_url()
    }

    pub fn accepted_id(&self) -> Option<&str> {
        self.accepted
    }

    /// MAIL FROM: nothing to ask Graph (the size is judged at the final dot, when the
    /// message with the relay's headers is known).
    pub fn mail(&mut self, _request: &MailRequest<'_>) -> Reply {
        self.reset();
        Say::Ok.reply()
    }

    pub fn reset(&mut self) {
        self.envelope = Envelope::default();
        self.pending = Envelope::default();
        self.spool = None;
        self.accepted = None;
    }

    /// DATA: the message will be spooled (the session enforces `max_message_size`).
    pub fn data(&mut self, envelope: &Envelope) -> Reply {
        self.envelope = envelope.clone();
        self.spool = Some(BodySpool::new(u64::MAX, None));
        self.accepted = None;
        Say::StartData.reply()
    }

    pub fn send_data(&mut self, wire: &[u8]) -> Result<(), TransportError> {
        match &mut self.spool {
            Some(spool) => Ok(spool.write_wire(wire)?),
            None => Err(TransportError::Spool(std::io::Error::other(
                "no message started",
            ))),
        }
    }

    /// The final dot: recipients checked, then Graph; `Ok` only on Graph's 2xx.
    pub async fn finish(&mut self, cx: &Context<'_>) -> Result<Reply, TransportError> {
        let mut spool = self
            .spool
            .take()
            .ok_or_else(|| TransportError::Spool(std::io::Error::other("no message started")))?;
        let prefix =
            super::api_recipients::recipients_prefix(&self.asset, &self.envelope, &mut spool)?;
        let mut source = SpoolSource {
            spool: &mut spool,
            prefix,
        };
        let mut message = GraphMessage {
            source: &mut source,
            recipients: &self.envelope.recipients,
        };
        match self.transport.send(cx.tokens, &mut message).await {
            Ok(path) => {
                self.accepted = Some(match path {
                    GraphPath::SendMail => "sendMail 202",
                    GraphPath::Draft => "draft sent 202",
                });
                Ok(Say::Ok.reply())
            }
            Err(error) => {
                if matches!(
                    error,
                    GraphError::Unauthorized { .. } | GraphError::Forbidden { .. }
                ) {
                    // The operator's to fix: say what, once per message, and mark the asset.
                    tracing::error!(asset = %self.asset.name, %error, "Microsoft Graph refused the asset's credentials; the client was told to retry later");
                    if let Some(metrics) = cx.metrics {
                        metrics.set_asset_ready(&self.asset.name, false);
                    }
                }
                Err(TransportError::Graph(error))
            }
        }
    }
}
