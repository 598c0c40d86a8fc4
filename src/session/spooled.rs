//! A spooled transaction (issue 15, `delivery = "spool"`): after every check a direct
//! one gets (AUTH, sender → asset, the user's assets; the header-From policy and the
//! DATA limits below), MAIL and RCPT are answered here without a provider, and after the
//! final dot the message is made durable in the spool before the client hears
//! `250 2.0.0 queued as <id>`. Anything that keeps it from being durable is a 4xx, with
//! nothing half-written left (`spool::Intake` removes its file unless committed).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::conn::Input;
use super::headers::{GateState, HeaderGate};
use super::mail::MailParams;
use super::{Flow, Phase, Session};
use crate::config::Asset;
use crate::console::recent::{Ended, MessageRecord};
use crate::logsafe::Untrusted;
use crate::metrics::Outcome;
use crate::received::Trace;
use crate::replies::{for_spool_failure, Say};
use crate::smtp::address;
use crate::smtp::data::{DataProblem, DataScanner};
use crate::spool::entry::{now_ms, Entry, RcptState, Recipient, FORMAT_VERSION};

/// The envelope of a spooled transaction.
pub(super) struct Spooled {
    asset: Arc<Asset>,
    sender: String,
    recipients: Vec<String>,
    eight_bit: bool,
    smtputf8: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    /// MAIL for a spooled user, after the sender and its asset were accepted.
    pub(super) fn spool_mail(
        &mut self,
        asset: Arc<Asset>,
        from: String,
        params: MailParams,
    ) -> Flow {
        let Some(spool) = self.relay.spool.clone() else {
            self.relay.metrics.transaction(Outcome::TempFailed);
            self.say(Say::SpoolUnavailable);
            return Flow::Continue;
        };
        if !spool.has_room(params.size.unwrap_or(0)) {
            self.relay.metrics.spool.refused(true);
            self.relay.metrics.transaction(Outcome::TempFailed);
            tracing::warn!(
                used = spool.used(),
                max_bytes = spool.max_bytes(),
                "spool full, message refused"
            );
            self.say(Say::SpoolFull);
            return Flow::Continue;
        }
        self.phase = Phase::Spooled(Box::new(Spooled {
            asset,
            sender: from,
            recipients: Vec::new(),
            eight_bit: params.eight_bit,
            smtputf8: params.smtputf8,
        }));
        self.say(Say::SpoolSenderOk);
        Flow::Continue
    }

    /// RCPT in a spooled transaction: syntax and count checked here; the provider's
    /// verdict comes at delivery (a refusal then is a DSN).
    pub(super) fn spool_rcpt(&mut self, to: String) -> Flow {
        let max_recipients = self.params.max_recipients;
        let Phase::Spooled(spooled) = &mut self.phase else {
            return self.reject(Say::NeedMail);
        };
        if spooled.recipients.len() >= max_recipients {
            self.relay.metrics.limit_hit("recipients");
            self.say(Say::TooManyRecipients);
            return Flow::Continue;
        }
        let canonical = match address::canonical(&to) {
            Ok(canonical) if !to.is_empty() => canonical.to_string(),
            _ => return self.reject(Say::BadRecipientSyntax),
        };
        spooled.recipients.push(canonical);
        self.say(Say::SpoolRecipientOk);
        Flow::Continue
    }

    /// DATA in a spooled transaction: the message goes to the spool, then 250 or 4xx.
    pub(super) async fn spool_data(&mut self) -> Flow {
        let Phase::Spooled(spooled) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return self.reject(Say::NeedMail);
        };
        if spooled.recipients.is_empty() {
            self.phase = Phase::Spooled(spooled);
            return self.reject(Say::NeedRcpt);
        }
        let Some(spool) = self.relay.spool.clone() else {
            self.say(Say::SpoolUnavailable);
            return Flow::Continue;
        };
        let mut intake = match spool.intake() {
            Ok(intake) => intake,
            Err(err) => {
                tracing::error!(error = %err, "cannot start writing to the spool");
                self.relay.metrics.spool.refused(false);
                self.say(for_spool_failure(&err));
                return Flow::Continue;
            }
        };
        self.say(Say::StartData);
        self.transactions += 1;
        let params = &self.params;
        let max_message_size = params.max_message_size;
        let mut scanner = DataScanner::new(params.data);
        let trace_id = format!("{}.{}", self.id, self.transactions);
        let trace = Trace {
            helo: self.client.helo.as_deref().unwrap_or("unknown"),
            peer: self.peer.ip(),
            hostname: &params.hostname,
            esmtp: self.client.esmtp,
            tls: self.conn.stream.is_tls(),
            authenticated: self.client.user.is_some(),
            id: &trace_id,
            single_recipient: match spooled.recipients.as_slice() {
                [only] => Some(only.as_str()),
                _ => None,
            },
        };
        let mut wire = trace.header(SystemTime::now()).into_bytes();
        let mut gate = HeaderGate::new();
        let mut refused: Option<Say> = None;
        let mut message_id = None;
        let mut full = false;
        let data_deadline = Instant::now() + params.data_total_timeout;
        let block_timeout = params.data_block_timeout;
        loop {
            let scan = scanner.feed(&self.conn.read_buf, &mut wire);
            self.conn.read_buf.advance(scan.consumed);
            if refused.is_none() {
                if let GateState::Decide(headers, complete) = gate.pass(&mut wire, scan.finished) {
                    let (refusal, id) = self.inspect_headers(&headers, complete, &spooled.asset);
                    refused = refusal;
                    message_id = id;
                    wire = headers;
                }
            }
            let keep = refused.is_none()
                && scanner.problem().is_none()
                && scanner.content_len() <= max_message_size;
            // While the gate collects, `wire` is empty: it holds the block back.
            if keep && !full && !wire.is_empty() {
                intake.write(&wire);
                full = !intake.fits();
            }
            wire.clear();
            if scan.finished {
                break;
            }
            let deadline = (Instant::now() + block_timeout).min(data_deadline);
            match self.conn.fill(deadline).await {
                Ok(true) => {}
                Ok(false) | Err(Input::Closed) => {
                    tracing::info!(asset = %spooled.asset.name, "client disconnected during DATA; nothing was spooled");
                    return Flow::Close;
                }
                Err(_) => {
                    tracing::info!(asset = %spooled.asset.name, "client timed out during DATA; nothing was spooled");
                    self.say(Say::CommandTimeout);
                    return Flow::Close;
                }
            }
        }
        let size = scanner.content_len();
        let refusal = refused.or(match scanner.problem() {
            Some(DataProblem::LineTooLong) => Some(Say::DataLineTooLong {
                limit: self.params.data.max_line_len,
            }),
            Some(DataProblem::BareLineEnding) => Some(Say::BareLineEnding),
            None if size > max_message_size => {
                self.relay.metrics.limit_hit("message_size");
                Some(Say::MessageTooBig {
                    limit: max_message_size,
                })
            }
            None => None,
        });
        let user = self.client.user.as_ref().map_or_else(
            || self.relay.trusted_user.name.clone(),
            |user| user.name.clone(),
        );
        let reply = if let Some(say) = refusal {
            self.relay.metrics.transaction(Outcome::PolicyRejected);
            say
        } else if full {
            self.relay.metrics.spool.refused(true);
            self.relay.metrics.transaction(Outcome::TempFailed);
            Say::SpoolFull
        } else {
            let entry = Entry {
                version: FORMAT_VERSION,
                id: String::new(),
                asset: spooled.asset.name.clone(),
                user: user.clone(),
                client: self.peer.ip().to_string(),
                sender: spooled.sender.clone(),
                recipients: spooled
                    .recipients
                    .iter()
                    .map(|address| Recipient {
                        address: address.clone(),
                        state: RcptState::Pending,
                        reply: None,
                    })
                    .collect(),
                arrived_ms: now_ms(),
                size: 0,
                message_id: message_id.clone(),
                eight_bit: spooled.eight_bit,
                smtputf8: spooled.smtputf8,
                attempts: 0,
                next_try_ms: 0,
                last_error: None,
                waiting_for_credentials: false,
                sending: false,
                dead_reason: None,
            };
            match spool.commit(intake, entry).await {
                Ok(id) => {
                    self.junk_commands = 0;
                    tracing::info!(
                        asset = %spooled.asset.name,
                        from = %Untrusted(&spooled.sender),
                        recipients = spooled.recipients.len(),
                        size,
                        message_id = %Untrusted(message_id.as_deref().unwrap_or("")),
                        spool_id = %id,
                        "message spooled"
                    );
                    Say::SpoolQueued { id }
                }
                Err(err) => {
                    tracing::error!(asset = %spooled.asset.name, error = %err, "message not spooled");
                    self.relay
                        .metrics
                        .spool
                        .refused(matches!(err, crate::spool::IntakeError::Full { .. }));
                    self.relay.metrics.transaction(Outcome::TempFailed);
                    for_spool_failure(&err)
                }
            }
        };
        let reply = reply.reply();
        self.relay.recent.record(MessageRecord {
            at: SystemTime::now(),
            user,
            sender: spooled.sender.clone(),
            recipients: spooled.recipients.len(),
            size,
            asset: spooled.asset.name.clone(),
            outcome: Ended::from_code(reply.code),
            reply: reply.to_string(),
        });
        self.send(&reply);
        Flow::Continue
    }
}
