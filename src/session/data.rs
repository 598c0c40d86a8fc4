//! DATA: the 354, copying the message to the upstream as it arrives (behind the DATA
//! scanner and the header gate), and the final reply, which is the upstream's own.

use std::time::SystemTime;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::conn::{Input, READ_CHUNK};
use super::headers::{GateState, HeaderGate};
use super::{Flow, Phase, Session, Transaction};
use crate::console::recent::{Ended, MessageRecord};
use crate::logsafe::Untrusted;
use crate::metrics::Outcome;
use crate::received::Trace;
use crate::replies::{relayed, Say};
use crate::smtp::data::{DataProblem, DataScanner};
use crate::smtp::reply::Reply;
use crate::upstream::UpstreamError;

/// How copying a message ended.
enum Streamed {
    Complete { size: u64 },
    Refused { say: Say, size: u64 },
    UpstreamFailed { error: UpstreamError, size: u64 },
    ClientGone,
    ClientTimedOut,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    pub(super) async fn data(&mut self) -> Flow {
        let Phase::Transaction(transaction) = &mut self.phase else {
            return self.reject(Say::NeedMail);
        };
        if transaction.recipients.is_empty() {
            return self.reject(Say::NeedRcpt);
        }
        let Phase::Transaction(mut transaction) = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return Flow::Continue;
        };
        match transaction.upstream.command("DATA").await {
            Ok(reply) if reply.code == 354 => {}
            Ok(reply) => {
                self.send(&relayed(reply));
                self.phase = Phase::Transaction(transaction);
                return Flow::Continue;
            }
            Err(err) => {
                tracing::warn!(asset = %transaction.asset.name, error = %err, "upstream failed at DATA");
                self.say(Say::UpstreamLost);
                return Flow::Continue;
            }
        }
        self.say(Say::StartData);
        self.transactions += 1;
        let started = Instant::now();
        let mut outcome = self.stream_message(&mut transaction).await;
        if let Streamed::Complete { size } = outcome {
            // A failed write of the terminator is not a possible duplicate: the provider
            // never saw it (a TLS record arrives whole or is useless, and the dot's is the
            // last one), so it discards the partial message like any other cut-off DATA.
            if let Err(error) = transaction.upstream.send_terminator().await {
                outcome = Streamed::UpstreamFailed { error, size };
            }
        }
        let asset = transaction.asset.name.clone();
        let recipients = transaction.recipients.len();
        let metrics = self.relay.metrics.clone();
        let message_id = transaction.message_id.clone().unwrap_or_default();
        let recent = self.relay.recent.clone();
        let user = self
            .client
            .user
            .as_ref()
            .map(|user| user.name.clone())
            .unwrap_or_default();
        let log_done = |outcome: &str, reply: &Reply, size: u64| {
            recent.record(MessageRecord {
                at: SystemTime::now(),
                user: user.clone(),
                sender: transaction.sender.clone(),
                recipients,
                size,
                asset: asset.clone(),
                outcome: Ended::from_code(reply.code),
                reply: reply.to_string(),
            });
            tracing::info!(
                asset = %asset,
                from = %Untrusted(&transaction.sender),
                recipients,
                size,
                message_id = %Untrusted(&message_id),
                upstream_setup_ms = transaction.upstream_setup.as_millis() as u64,
                transfer_ms = started.elapsed().as_millis() as u64,
                reply = %reply,
                "{outcome}"
            );
        };
        match outcome {
            Streamed::Complete { size } => match transaction.upstream.final_reply().await {
                Ok(reply) => {
                    let (outcome, counted) = match reply.code / 100 {
                        2 => ("message relayed", Outcome::Delivered),
                        4 => ("message deferred by upstream", Outcome::TempFailed),
                        _ => ("message refused by upstream", Outcome::PermFailed),
                    };
                    metrics.transaction(counted);
                    if counted == Outcome::Delivered {
                        metrics.bytes_relayed.inc_by(size);
                        // Postfix too starts the junk count again after a delivery.
                        self.junk_commands = 0;
                    }
                    log_done(outcome, &reply, size);
                    self.send(&relayed(reply));
                    self.park_upstream(&transaction.asset, transaction.upstream);
                }
                Err(err) => {
                    let reply = Say::PossibleDuplicate.reply();
                    tracing::warn!(
                        asset = %asset,
                        error = %err,
                        possible_duplicate = true,
                        "upstream connection lost after the end of data: the message may or may not have been delivered"
                    );
                    metrics.transaction(Outcome::PossibleDuplicate);
                    log_done("message outcome unknown", &reply, size);
                    self.send(&reply);
                }
            },
            Streamed::Refused { say, size } => {
                // The upstream gets no terminator: dropping the connection makes it discard
                // the partial message.
                let reply = say.reply();
                match say {
                    Say::MessageTooBig { .. } => metrics.limit_hit("message_size"),
                    Say::DataLineTooLong { .. } => metrics.limit_hit("data_line"),
                    _ => {}
                }
                metrics.transaction(Outcome::PolicyRejected);
                log_done("message refused", &reply, size);
                self.send(&reply);
            }
            Streamed::UpstreamFailed { error, size } => {
                let reply = Say::UpstreamLost.reply();
                tracing::warn!(asset = %asset, error = %error, "upstream failed during DATA");
                metrics.transaction(Outcome::TempFailed);
                log_done("message not relayed", &reply, size);
                self.send(&reply);
            }
            Streamed::ClientGone => {
                tracing::info!(asset = %asset, "client disconnected during DATA; nothing was delivered");
                return Flow::Close;
            }
            Streamed::ClientTimedOut => {
                tracing::info!(asset = %asset, "client timed out during DATA; nothing was delivered");
                self.say(Say::CommandTimeout);
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    /// Copies the message from the client to the upstream until the client's end of data.
    /// Never sends the terminator: that is the caller's decision.
    async fn stream_message(&mut self, transaction: &mut Transaction) -> Streamed {
        let params = &self.params;
        let max_message_size = params.max_message_size;
        let max_data_line = params.data.max_line_len;
        let mut scanner = DataScanner::new(params.data);
        let trace = Trace {
            helo: self.client.helo.as_deref().unwrap_or("unknown"),
            peer: self.peer.ip(),
            hostname: &params.hostname,
            esmtp: self.client.esmtp,
            tls: self.conn.stream.is_tls(),
            authenticated: self.client.user.is_some(),
            id: &format!("{}.{}", self.id, self.transactions),
            single_recipient: match transaction.recipients.as_slice() {
                [only] => Some(only.as_str()),
                _ => None,
            },
        };
        let mut out = Vec::with_capacity(READ_CHUNK + 1024);
        out.extend_from_slice(trace.header(SystemTime::now()).as_bytes());
        let mut upstream_error: Option<UpstreamError> = None;
        let mut too_big = false;
        let mut header_gate = HeaderGate::new();
        let data_deadline = Instant::now() + params.data_total_timeout;
        let data_block_timeout = params.data_block_timeout;
        let mut refused: Option<Say> = None;
        loop {
            let scan = scanner.feed(&self.conn.read_buf, &mut out);
            self.conn.read_buf.advance(scan.consumed);
            if scanner.content_len() > max_message_size {
                too_big = true;
            }
            if refused.is_none() {
                // Holds the header block back until it is complete and checked.
                match header_gate.pass(&mut out, scan.finished) {
                    GateState::Collecting | GateState::Open => {}
                    GateState::Decide(headers, complete) => {
                        let (refusal, message_id) =
                            self.inspect_headers(&headers, complete, &transaction.asset);
                        refused = refusal;
                        transaction.message_id = message_id;
                        out = headers;
                    }
                }
            }
            let forwarding = upstream_error.is_none()
                && !too_big
                && refused.is_none()
                && scanner.problem().is_none();
            if forwarding && !out.is_empty() {
                if let Err(err) = transaction.upstream.send_data(&out).await {
                    upstream_error = Some(err);
                }
            }
            out.clear();
            if scan.finished {
                break;
            }
            let deadline = (Instant::now() + data_block_timeout).min(data_deadline);
            match self.conn.fill(deadline).await {
                Ok(true) => {}
                Ok(false) | Err(Input::Closed) => return Streamed::ClientGone,
                Err(_) => return Streamed::ClientTimedOut,
            }
        }
        let size = scanner.content_len();
        if let Some(say) = refused {
            return Streamed::Refused { say, size };
        }
        if too_big {
            return Streamed::Refused {
                say: Say::MessageTooBig {
                    limit: max_message_size,
                },
                size,
            };
        }
        match scanner.problem() {
            Some(DataProblem::LineTooLong) => {
                return Streamed::Refused {
                    say: Say::DataLineTooLong {
                        limit: max_data_line,
                    },
                    size,
                }
            }
            Some(DataProblem::BareLineEnding) => {
                return Streamed::Refused {
                    say: Say::BareLineEnding,
                    size,
                }
            }
            None => {}
        }
        match upstream_error {
            Some(error) => Streamed::UpstreamFailed { error, size },
            None => Streamed::Complete { size },
        }
    }
}
