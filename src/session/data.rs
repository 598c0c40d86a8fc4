//! DATA: the 354, copying the message to the upstream as it arrives (behind the DATA
//! scanner and the header gate), and the final reply, which is the upstream's own.
//!
//! The message goes upstream as the client's dot-stuffed DATA stream, or, when the provider
//! offers CHUNKING, un-stuffed as BDAT chunks (`body.rs`): then the 354 is the relay's own
//! (no DATA round trip) and the last chunk goes as `BDAT <n> LAST`. Either way the last
//! octets and the end of the message (dot or LAST) leave in one write, and the client hears
//! 250 only when the upstream said 250 to the end of the message.

use std::time::SystemTime;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::body::{BodyBuffers, BodyMode, BodySender};
use super::conn::Input;
use super::headers::{GateState, HeaderGate};
use super::pipeline::{pipelines, uses_bdat, Ahead};
use super::{Flow, Phase, Session, Transaction};
use crate::console::recent::{Ended, MessageRecord};
use crate::logsafe::Untrusted;
use crate::metrics::Outcome;
use crate::received::Trace;
use crate::replies::Say;
use crate::smtp::data::{DataProblem, DataScanner};
use crate::smtp::reply::Reply;
use crate::transport::TransportError;
use crate::upstream::UpstreamError;

/// How copying a message ended.
enum Streamed {
    /// The whole message and its end (dot or BDAT LAST) were sent.
    Complete {
        size: u64,
    },
    /// The upstream refused a BDAT chunk before the last.
    UpstreamRefused {
        reply: Reply,
        size: u64,
    },
    Refused {
        say: Say,
        size: u64,
    },
    UpstreamFailed {
        error: UpstreamError,
        size: u64,
    },
    ClientGone,
    ClientTimedOut,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    pub(super) async fn data(&mut self) -> Flow {
        let Phase::Transaction(transaction) = &mut self.phase else {
            return self.reject(Say::NeedMail);
        };
        let ahead = transaction.prefetched.take("DATA");
        if transaction.recipients.is_empty() {
            if matches!(&ahead, Ahead::Reply(reply) if reply.code == 354) {
                // A DATA sent ahead that the upstream accepted without a recipient: the
                // connection waits for a message that will not come; give it up.
                self.phase = Phase::Idle;
            }
            return self.reject(Say::NeedRcpt);
        }
        let Phase::Transaction(mut transaction) = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return Flow::Continue;
        };
        let bdat = uses_bdat(&self.params, &transaction.upstream);
        if !bdat {
            let reply = match ahead {
                Ahead::Reply(reply) => Ok(reply),
                Ahead::NotSent => transaction.upstream.command("DATA").await,
                Ahead::OutOfStep => Err(UpstreamError::Protocol {
                    target: transaction.upstream.target().to_string(),
                    reason: "replies to pipelined commands out of step".to_string(),
                }),
            };
            match reply {
                Ok(reply) if reply.code == 354 => {}
                Ok(reply) => {
                    let reply = self.provider_reply(&transaction.asset, reply).await;
                    self.send(&reply);
                    self.phase = Phase::Transaction(transaction);
                    return Flow::Continue;
                }
                Err(err) => {
                    tracing::warn!(asset = %transaction.asset.name, error = %err, "upstream failed at DATA");
                    self.say(Say::UpstreamLost);
                    return Flow::Continue;
                }
            }
        }
        // With BDAT the 354 is ours: the upstream hears of the message with its first chunk.
        self.say(Say::StartData);
        self.transactions += 1;
        let started = Instant::now();
        let mut body = self.body.take().unwrap_or_default();
        let mode = if bdat {
            BodyMode::Bdat {
                wait_each_chunk: !pipelines(&self.params, &transaction.upstream),
            }
        } else {
            BodyMode::Data
        };
        let outcome = self.stream_message(&mut transaction, &mut body, mode).await;
        body.after_message();
        self.body = Some(body);
        let asset = transaction.asset.name.clone();
        let recipients = transaction.recipients.len();
        let metrics = self.relay.metrics.clone();
        let message_id = transaction.message_id.clone().unwrap_or_default();
        let relay = self.relay.clone();
        let credential_failure = relay.config.server.credential_failure;
        let recent = self.relay.recent.clone();
        let user = self
            .client
            .user
            .as_ref()
            .map(|user| user.name.clone())
            .unwrap_or_default();
        let log_done = |outcome: &str, reply: &Reply, size: u64, upstream_id: Option<&str>| {
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
                upstream_id = upstream_id.map(tracing::field::display),
                reply = %reply,
                "{outcome}"
            );
        };
        match outcome {
            Streamed::Complete { size } => match transaction
                .upstream
                .final_reply(&relay.transport_context())
                .await
            {
                Ok(reply) => {
                    // A quota refusal after the message becomes a 4xx (issue 16).
                    let reply = self.provider_reply(&transaction.asset, reply).await;
                    let (outcome, counted) = match reply.code / 100 {
                        2 => ("message relayed", Outcome::Delivered),
                        4 => ("message deferred by upstream", Outcome::TempFailed),
                        _ => ("message refused by upstream", Outcome::PermFailed),
                    };
                    metrics.transaction(counted);
                    if counted == Outcome::Delivered {
                        metrics.bytes_relayed.inc_by(size);
                        if let Some(admission) = transaction.admission.take() {
                            let now = crate::limits::unix_now();
                            relay
                                .limits
                                .commit(admission, &transaction.asset, now)
                                .await;
                        }
                        // Postfix too starts the junk count again after a delivery.
                        self.junk_commands = 0;
                    }
                    log_done(outcome, &reply, size, transaction.upstream.accepted_id());
                    self.send(&reply);
                    self.park_upstream(&transaction.asset, transaction.upstream);
                }
                Err(error) if error.possible_duplicate() => {
                    let reply = Say::PossibleDuplicate.reply();
                    tracing::warn!(
                        asset = %asset,
                        error = %error,
                        possible_duplicate = true,
                        "upstream connection lost after the end of data: the message may or may not have been delivered"
                    );
                    metrics.transaction(Outcome::PossibleDuplicate);
                    log_done("message outcome unknown", &reply, size, None);
                    self.send(&reply);
                }
                Err(error) => {
                    // An API transport's definite failure (the SMTP upstream's are replies).
                    self.transport_quota(&transaction.asset, &error).await;
                    let say = Say::for_transport_failure(&error, &asset, credential_failure);
                    let reply = say.reply();
                    self.transport_failed(&transaction.asset, &error, &reply);
                    let counted = if error.is_policy() {
                        Outcome::PolicyRejected
                    } else if reply.code / 100 == 5 {
                        Outcome::PermFailed
                    } else {
                        Outcome::TempFailed
                    };
                    if matches!(error, TransportError::TooBig { .. }) {
                        metrics.limit_hit("message_size");
                    }
                    metrics.transaction(counted);
                    log_done("message not relayed", &reply, size, None);
                    self.send(&reply);
                    // A link whose message was refused is still good for the next one.
                    if matches!(
                        error,
                        TransportError::Api(_)
                            | TransportError::TooBig { .. }
                            | TransportError::UndeclaredRecipients { .. }
                            | TransportError::HeaderBlockTooLarge
                            | TransportError::UnwritableRecipient { .. }
                    ) {
                        self.park_upstream(&transaction.asset, transaction.upstream);
                    }
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
                log_done("message refused", &reply, size, None);
                self.send(&reply);
            }
            Streamed::UpstreamRefused { reply, size } => {
                // A BDAT chunk refused before the end: the upstream discards the rest; the
                // connection is not trusted for another transaction.
                let reply = self.provider_reply(&transaction.asset, reply).await;
                metrics.transaction(if reply.code / 100 == 4 {
                    Outcome::TempFailed
                } else {
                    Outcome::PermFailed
                });
                log_done("message refused by upstream", &reply, size, None);
                self.send(&reply);
            }
            Streamed::UpstreamFailed { error, size } => {
                let reply = Say::UpstreamLost.reply();
                tracing::warn!(asset = %asset, error = %error, "upstream failed during DATA");
                metrics.transaction(Outcome::TempFailed);
                log_done("message not relayed", &reply, size, None);
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

    /// Copies the message from the client to the upstream until the client's end of data,
    /// and sends the end of the message with its last octets when nothing stopped it.
    async fn stream_message(
        &mut self,
        transaction: &mut Transaction,
        body: &mut BodyBuffers,
        mode: BodyMode,
    ) -> Streamed {
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
        let mut sender = BodySender::new(mode);
        body.wire.clear();
        body.wire
            .extend_from_slice(trace.header(SystemTime::now()).as_bytes());
        let mut upstream_error: Option<UpstreamError> = None;
        let mut upstream_refusal: Option<Reply> = None;
        let mut too_big = false;
        let mut header_gate = HeaderGate::new();
        let data_deadline = Instant::now() + params.data_total_timeout;
        let data_block_timeout = params.data_block_timeout;
        let mut refused: Option<Say> = None;
        loop {
            let scan = scanner.feed(&self.conn.read_buf, &mut body.wire);
            self.conn.read_buf.advance(scan.consumed);
            if scanner.content_len() > max_message_size {
                too_big = true;
            }
            if refused.is_none() {
                // Holds the header block back until it is complete and checked.
                match header_gate.pass(&mut body.wire, scan.finished) {
                    GateState::Collecting | GateState::Open => {}
                    GateState::Decide(headers, complete) => {
                        let (refusal, message_id) =
                            self.inspect_headers(&headers, complete, &transaction.asset);
                        refused = refusal;
                        transaction.message_id = message_id;
                        body.wire = headers;
                    }
                }
            }
            let forwarding = upstream_error.is_none()
                && upstream_refusal.is_none()
                && !too_big
                && refused.is_none()
                && scanner.problem().is_none();
            if forwarding {
                let upstream = &mut transaction.upstream;
                let sent = if scan.finished {
                    sender.send_end(upstream, body).await.map(|()| None)
                } else {
                    sender.send_part(upstream, body).await
                };
                match sent {
                    Ok(None) => {}
                    Ok(Some(reply)) => upstream_refusal = Some(reply),
                    Err(err) => upstream_error = Some(err),
                }
            }
            body.wire.clear();
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
        if let Some(reply) = upstream_refusal {
            return Streamed::UpstreamRefused { reply, size };
        }
        match upstream_error {
            Some(error) => Streamed::UpstreamFailed { error, size },
            None => Streamed::Complete { size },
        }
    }
}
