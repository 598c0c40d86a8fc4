//! The SMTP-shaped face of a [`Link`]: the calls the session's dialogue makes on its
//! provider leg (commands and pipelined flights, capabilities, DATA and BDAT bodies, the
//! verdict). On [`Link::Smtp`] they are the upstream client's own; on an API link they are
//! answered from the relay's own command lines through the typed steps of `mod.rs` (MAIL,
//! RCPT, DATA, RSET), so the session's pipelining and BDAT logic runs unchanged and an API
//! link simply offers neither PIPELINING nor CHUNKING.

use std::sync::OnceLock;

use super::{Context, Envelope, Link, MailRequest, TransportError};
use crate::replies::Say;
use crate::smtp::ehlo::Capabilities;
use crate::smtp::reply::Reply;
use crate::upstream::UpstreamError;

/// What an API link "offers": no pipelining or chunking (nothing to save a round trip
/// on), 8BITMIME and SMTPUTF8 (the message goes as it is), Google's size limit.
fn api_capabilities() -> &'static Capabilities {
    static CAPABILITIES: OnceLock<Capabilities> = OnceLock::new();
    CAPABILITIES.get_or_init(|| Capabilities {
        eight_bit_mime: true,
        smtputf8: true,
        enhanced_status_codes: true,
        size: Some(crate::config::GMAIL_API_MAX_MESSAGE),
        ..Capabilities::default()
    })
}

/// What a Graph link "offers": as an API link, without a SIZE of its own (the relay's
/// `max_message_size` applies; the draft path takes what one request cannot).
fn graph_capabilities() -> &'static Capabilities {
    static CAPABILITIES: OnceLock<Capabilities> = OnceLock::new();
    CAPABILITIES.get_or_init(|| Capabilities {
        eight_bit_mime: true,
        smtputf8: true,
        enhanced_status_codes: true,
        ..Capabilities::default()
    })
}

impl Link {
    pub fn capabilities(&self) -> &Capabilities {
        match self {
            Link::Smtp(upstream) => upstream.capabilities(),
            Link::GmailApi(_) => api_capabilities(),
            Link::Graph(_) => graph_capabilities(),
        }
    }

    /// One command line of the relay's own making, and its reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply, UpstreamError> {
        if let Link::Smtp(upstream) = self {
            return upstream.command(line).await;
        }
        let result = if line.eq_ignore_ascii_case("RSET") {
            let _ = self.reset().await;
            Ok(Say::Ok.reply())
        } else if let Some(rest) = line.strip_prefix("MAIL FROM:<") {
            let (from, params) = rest.split_once('>').unwrap_or((rest, ""));
            let size = params
                .split_whitespace()
                .find_map(|p| p.strip_prefix("SIZE="))
                .and_then(|n| n.parse().ok());
            let request = MailRequest {
                from,
                size,
                eight_bit: params.contains("BODY=8BITMIME"),
                smtputf8: params.contains("SMTPUTF8"),
            };
            let reply = self.mail(&request).await;
            if let Ok(reply) = &reply {
                if reply.is_positive() {
                    let fresh = Envelope {
                        sender: from.to_string(),
                        recipients: Vec::new(),
                    };
                    match &mut *self {
                        Link::GmailApi(link) => link.pending = fresh,
                        Link::Graph(link) => link.pending = fresh,
                        Link::Smtp(_) => {}
                    }
                }
            }
            reply
        } else if let Some(rest) = line.strip_prefix("RCPT TO:<") {
            let to = rest.split_once('>').map_or(rest, |(to, _)| to).to_string();
            let reply = self.rcpt(&to).await;
            if let Ok(reply) = &reply {
                if reply.is_positive() {
                    match &mut *self {
                        Link::GmailApi(link) => link.pending.recipients.push(to),
                        Link::Graph(link) => link.pending.recipients.push(to),
                        Link::Smtp(_) => {}
                    }
                }
            }
            reply
        } else if line.eq_ignore_ascii_case("DATA") {
            let envelope = match self {
                Link::GmailApi(link) => link.pending.clone(),
                Link::Graph(link) => link.pending.clone(),
                Link::Smtp(_) => Envelope::default(),
            };
            self.data(&envelope).await
        } else {
            Ok(Say::UnknownCommand.reply())
        };
        result.map_err(|err| self.lost(err))
    }

    /// Several command lines (one flight when the upstream pipelines).
    pub async fn pipeline(&mut self, lines: &[&str]) -> Result<Vec<Reply>, UpstreamError> {
        if let Link::Smtp(upstream) = self {
            return upstream.pipeline(lines).await;
        }
        let mut replies = Vec::with_capacity(lines.len());
        for line in lines {
            replies.push(self.command(line).await?);
        }
        Ok(replies)
    }

    /// Whether the last transaction on the link has not ended (RSET needed first).
    pub fn transaction_open(&self) -> bool {
        match self {
            Link::Smtp(upstream) => upstream.transaction_open(),
            Link::GmailApi(_) | Link::Graph(_) => false,
        }
    }

    /// Whether a kept link still looks usable without sending anything.
    pub async fn quiet_since_last_reply(&mut self) -> bool {
        match self {
            Link::Smtp(upstream) => upstream.quiet_since_last_reply().await,
            Link::GmailApi(_) | Link::Graph(_) => true,
        }
    }

    /// The last message bytes with the DATA terminator at their end.
    pub async fn send_data_end(
        &mut self,
        bytes_with_terminator: &[u8],
    ) -> Result<(), UpstreamError> {
        if let Link::Smtp(upstream) = self {
            return upstream.send_data_end(bytes_with_terminator).await;
        }
        let bytes = bytes_with_terminator
            .strip_suffix(b".\r\n")
            .unwrap_or(bytes_with_terminator);
        if bytes.is_empty() {
            return Ok(());
        }
        self.send_wire(bytes).await
    }

    /// Wire-form message bytes, as the upstream client's `send_data`.
    pub async fn send_wire(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        let sent = self.send_data(bytes).await;
        sent.map_err(|err| self.lost(err))
    }

    /// BDAT chunk (never on an API link: it offers no CHUNKING).
    pub async fn send_bdat_chunk(
        &mut self,
        framed: &[u8],
        wait: bool,
    ) -> Result<Option<Reply>, UpstreamError> {
        match self {
            Link::Smtp(upstream) => upstream.send_bdat_chunk(framed, wait).await,
            Link::GmailApi(_) | Link::Graph(_) => Err(self.lost(TransportError::Spool(
                std::io::Error::other("BDAT on an API link"),
            ))),
        }
    }

    pub async fn send_bdat_last(&mut self, framed: &[u8]) -> Result<(), UpstreamError> {
        match self {
            Link::Smtp(upstream) => upstream.send_bdat_last(framed).await,
            Link::GmailApi(_) | Link::Graph(_) => Err(self.lost(TransportError::Spool(
                std::io::Error::other("BDAT on an API link"),
            ))),
        }
    }

    /// The verdict on the message whose end was sent: the SMTP upstream's final reply, or
    /// the API's answer to the upload. `Err` says why there is none.
    pub async fn final_reply(&mut self, cx: &Context<'_>) -> Result<Reply, TransportError> {
        match self {
            Link::Smtp(upstream) => upstream
                .final_reply()
                .await
                .map_err(|err| TransportError::SmtpVerdictLost(Box::new(err))),
            Link::GmailApi(link) => link.finish(cx).await,
            Link::Graph(link) => link.finish(cx).await,
        }
    }

    fn lost(&self, error: TransportError) -> UpstreamError {
        UpstreamError::Lost {
            target: self.target(),
            reason: error.to_string(),
        }
    }
}
