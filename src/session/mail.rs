//! MAIL and RCPT: the sender's parameters, the choice of the asset that sends for it, and
//! the upstream connection the transaction runs on (kept from this session's previous
//! message, taken from the pool, or opened), which goes back to the pool afterwards.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::limits::Slot;
use super::pipeline::{exchange, flight_on_reused, followers, Ahead, Prefetched, Unusable};
use super::{Flow, IdleUpstream, Phase, Session, Transaction};
use crate::config::{Asset, AssetAccess, Config, User};
use crate::logsafe::Untrusted;
use crate::metrics::Outcome;
use crate::replies::Say;
use crate::smtp::address::{self, CanonicalAddress};
use crate::smtp::command::Param;
use crate::smtp::reply::Reply;
use crate::transport::Link;
use crate::upstream::UpstreamError;

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    pub(super) async fn mail(&mut self, from: String, params: &[Param]) -> Flow {
        if self.client.helo.is_none() {
            return self.reject(Say::SendHeloFirst);
        }
        let user = match (&self.client.user, self.params.trusted) {
            (Some(user), _) => user.clone(),
            (None, true) => self.relay.trusted_user.clone(),
            (None, false) => return self.reject(Say::AuthRequired),
        };
        if matches!(self.phase, Phase::Transaction(_)) {
            return self.reject(Say::NestedMail);
        }
        // 0 = unlimited.
        let max = self.params.max_transactions;
        if max != 0 && self.transactions >= max {
            self.relay.metrics.limit_hit("transactions");
            self.say(Say::TooManyTransactions);
            return Flow::Close;
        }
        let envelope = match MailParams::parse(params, self.params.max_message_size) {
            Ok(envelope) => envelope,
            Err(say) => {
                if matches!(say, Say::MessageTooBigDeclared { .. }) {
                    self.relay.metrics.limit_hit("message_size");
                    self.relay.metrics.transaction(Outcome::PolicyRejected);
                }
                return self.reject(say);
            }
        };
        // Routing, the upstream's MAIL FROM and the log all use the canonical form, so a
        // spelling ("boss"@example.com) cannot reach another asset than the address does;
        // RFC 5321 §4.1.2 asks for the dot-string form anyway. The command parser has
        // checked the syntax; an address it accepts that still does not canonicalize is
        // refused rather than routed by its spelling.
        let canonical = if from.is_empty() {
            None
        } else {
            match address::canonical(&from) {
                Ok(canonical) => Some(canonical),
                Err(err) => {
                    tracing::info!(sender = %from, problem = %err, "sender address has no canonical form");
                    return self.reject(Say::BadSenderSyntax);
                }
            }
        };
        let asset = match choose_asset(&self.relay.config, canonical.as_ref(), &user) {
            Ok(asset) => asset,
            Err(say) => {
                tracing::warn!(sender = %Untrusted(&from), user = %user.name, reply = %say.reply(), "sender refused");
                self.relay.metrics.transaction(Outcome::PolicyRejected);
                return self.reject(say);
            }
        };

        let from = canonical.map_or(from, |canonical| canonical.to_string());

        // Refused before the provider sees it (issue 16): at its message limit, or marked
        // over the provider's own limit.
        let admission = match self.admit_message(&asset).await {
            Ok(admission) => admission,
            Err(say) => {
                self.relay.metrics.transaction(Outcome::TempFailed);
                self.say(say);
                return Flow::Continue;
            }
        };

        let setup_started = Instant::now();
        let (mut upstream, reused) = match self.upstream_for(&asset).await {
            Ok(found) => found,
            Err(reply) => {
                self.relay.metrics.transaction(Outcome::TempFailed);
                self.send(&reply);
                return Flow::Continue;
            }
        };
        let mut line = format!("MAIL FROM:<{from}>");
        let capabilities = upstream.capabilities().clone();
        if let Some(size) = envelope.size {
            if capabilities.size.is_some() {
                line.push_str(&format!(" SIZE={size}"));
            }
        }
        if envelope.eight_bit && capabilities.eight_bit_mime {
            line.push_str(" BODY=8BITMIME");
        }
        if envelope.smtputf8 {
            if !capabilities.smtputf8 {
                self.park_upstream(&asset, upstream);
                return self.reject(Say::Utf8NotSupportedUpstream);
            }
            line.push_str(" SMTPUTF8");
        }
        // The RCPTs (and DATA) the client pipelined behind this MAIL go in the same flight.
        let mut lines = vec![line];
        let room = (self.params.max_recipients).min(self.recipient_room(&asset).await);
        lines.extend(followers(&self.params, &self.conn, &upstream, room, 0));
        let mut replies = None;
        if reused {
            // Nothing is committed on a kept connection at MAIL: if it turns out dead (or
            // its authentication gone), a new one is opened, the flight sent again, and the
            // client never notices.
            match flight_on_reused(&mut upstream, &lines).await {
                Ok(found) => replies = Some(found),
                Err(why) => {
                    tracing::debug!(asset = %asset.name, why = why.as_str(), "kept upstream connection is unusable, opening a new one");
                    if let Unusable::AuthenticationRefused {
                        token_refused: true,
                    } = why
                    {
                        // The provider ended the session for this token: the new connection
                        // must not try the same (cached) token first.
                        if let Some(token) = upstream.token() {
                            self.relay.tokens.invalidate(&asset.name, token).await;
                        }
                    }
                    // Dropped without QUIT: it is dead or its session is over. Dropped
                    // first, so its `upstream_connections` slot is free for the new one.
                    drop(upstream);
                    upstream = match self.open_upstream(&asset).await {
                        Ok(upstream) => upstream,
                        Err(reply) => {
                            self.relay.metrics.transaction(Outcome::TempFailed);
                            self.send(&reply);
                            return Flow::Continue;
                        }
                    };
                }
            }
        }
        let replies = match replies {
            Some(replies) => Ok(replies),
            None => exchange(&mut upstream, &lines).await,
        };
        let mut replies = match replies {
            Ok(replies) => replies.into_iter(),
            Err(err) => {
                tracing::warn!(asset = %asset.name, error = %err, "upstream failed at MAIL FROM");
                self.say(Say::UpstreamLost);
                return Flow::Continue;
            }
        };
        let Some(reply) = replies.next() else {
            self.say(Say::UpstreamLost);
            return Flow::Continue;
        };
        let prefetched = Prefetched::new(lines.get(1..).unwrap_or_default(), replies);
        let accepted = reply.is_positive();
        let reply = self.provider_reply(&asset, reply).await;
        self.send(&reply);
        if accepted {
            self.phase = Phase::Transaction(Box::new(Transaction {
                asset,
                upstream,
                sender: from,
                recipients: Vec::new(),
                message_id: None,
                upstream_setup: setup_started.elapsed(),
                prefetched,
                admission: Some(admission),
            }));
        } else if !prefetched.holds_data_go_ahead() {
            // The pipelined RCPTs and DATA were refused upstream for want of a MAIL; the
            // client's copies get their refusal from the session when it reads them.
            self.park_upstream(&asset, upstream);
        }
        Flow::Continue
    }

    pub(super) async fn rcpt(&mut self, to: String, params: &[Param]) -> Flow {
        if let Some(param) = params.first() {
            let keyword = param.keyword.clone();
            return self.reject(Say::UnsupportedParameter { keyword });
        }
        let max_recipients = self.params.max_recipients;
        let line = format!("RCPT TO:<{to}>");
        // The asset's daily recipient limit, before the provider sees the recipient.
        let mut limit_room = usize::MAX;
        if let Phase::Transaction(transaction) = &self.phase {
            if transaction.recipients.len() < max_recipients {
                let asset = transaction.asset.clone();
                if let Err(say) = self.admit_recipient().await {
                    self.recipient_over_limit(&line);
                    self.say(say);
                    return Flow::Continue;
                }
                limit_room = self.recipient_room(&asset).await;
            }
        }
        let Phase::Transaction(transaction) = &mut self.phase else {
            return self.reject(Say::NeedMail);
        };
        if transaction.recipients.len() >= max_recipients {
            self.relay.metrics.limit_hit("recipients");
            self.say(Say::TooManyRecipients);
            return Flow::Continue;
        }
        let reply = match transaction.prefetched.take(&line) {
            Ahead::Reply(reply) => Ok(reply),
            Ahead::NotSent => {
                // This RCPT and those pipelined behind it, in one flight.
                let room = max_recipients
                    .saturating_sub(transaction.recipients.len() + 1)
                    .min(limit_room);
                let accepted = transaction.recipients.len();
                let mut lines = vec![line];
                lines.extend(followers(
                    &self.params,
                    &self.conn,
                    &transaction.upstream,
                    room,
                    accepted,
                ));
                match exchange(&mut transaction.upstream, &lines).await {
                    Ok(replies) => {
                        let mut replies = replies.into_iter();
                        let first = replies.next();
                        transaction.prefetched =
                            Prefetched::new(lines.get(1..).unwrap_or_default(), replies);
                        first.ok_or_else(|| out_of_step(&transaction.upstream))
                    }
                    Err(err) => Err(err),
                }
            }
            Ahead::OutOfStep => Err(out_of_step(&transaction.upstream)),
        };
        let Phase::Transaction(transaction) = &mut self.phase else {
            return Flow::Continue;
        };
        match reply {
            Ok(reply) => {
                let positive = reply.is_positive();
                if positive {
                    transaction.recipients.push(to);
                }
                let asset = transaction.asset.clone();
                if !positive {
                    self.recipient_refused();
                }
                let reply = self.provider_reply(&asset, reply).await;
                // A client that probes address after address the provider refuses is
                // making errors like any other (Postfix counts them too).
                let permanent = reply.code / 100 == 5;
                self.send(&reply);
                if permanent {
                    return self.count_error();
                }
            }
            Err(err) => {
                tracing::warn!(asset = %transaction.asset.name, error = %err, "upstream failed at RCPT TO");
                self.phase = Phase::Idle;
                self.say(Say::UpstreamLost);
            }
        }
        Flow::Continue
    }

    /// An authenticated upstream for `asset`, and whether it was kept from earlier (this
    /// session's previous message, or the pool) and so must be checked before use.
    pub(super) async fn upstream_for(&mut self, asset: &Arc<Asset>) -> Result<(Link, bool), Reply> {
        if let Some(idle) = self.idle_upstream.take() {
            if idle.asset == asset.name {
                if self.relay.pool.is_reusable(&idle.upstream, idle.parked_at) {
                    return Ok((idle.upstream, true));
                }
                tracing::debug!(asset = %asset.name, "kept upstream connection idle too long or its token expiring, opening a new one");
                idle.upstream.quit().await;
            } else {
                self.release(idle).await;
            }
        }
        if let Some(pooled) = self.relay.pool.take(&asset.name) {
            tracing::debug!(asset = %asset.name, "reusing a pooled upstream connection");
            return Ok((pooled, true));
        }
        // With `upstream_connections` all in use, a connection another session gives
        // back to the pool is as good as a free slot.
        match self.upstream_slot(asset, true).await? {
            Slot::Pooled(pooled) => Ok((pooled, true)),
            Slot::Free(permit) => Ok((self.open_upstream_holding(asset, permit).await?, false)),
        }
    }

    /// Hands a connection this session no longer needs to the pool, or closes it.
    pub(super) async fn release(&self, idle: IdleUpstream) {
        if let Some(unwanted) = self
            .relay
            .pool
            .put(&idle.asset, idle.upstream, idle.parked_at)
        {
            unwanted.quit().await;
        }
    }

    pub(super) fn park_upstream(&mut self, asset: &Asset, upstream: Link) {
        self.idle_upstream = Some(IdleUpstream {
            asset: asset.name.clone(),
            upstream,
            parked_at: Instant::now(),
        });
    }

    /// Ends a transaction without delivering: RSET upstream and keep the connection.
    pub(super) async fn end_transaction(&mut self) {
        if let Phase::Transaction(mut transaction) = std::mem::replace(&mut self.phase, Phase::Idle)
        {
            if transaction.prefetched.is_empty()
                && matches!(transaction.upstream.command("RSET").await, Ok(reply) if reply.is_positive())
            {
                self.park_upstream(&transaction.asset, transaction.upstream);
            }
        }
    }
}

/// The asset that sends for `sender` (None: the null sender) on behalf of `user`, or the
/// refusal for the client. Decided by the config alone (its assets and sender claims).
pub(super) fn choose_asset(
    config: &Config,
    sender: Option<&CanonicalAddress>,
    user: &User,
) -> Result<Arc<Asset>, Say> {
    let Some(sender) = sender else {
        // Bounces from a Postfix in front of us come with a null sender: send them as
        // the one account the user has, if there is exactly one.
        let only = match &user.assets {
            AssetAccess::Only(names) if names.len() == 1 => names.iter().next().cloned(),
            AssetAccess::All if config.assets.len() == 1 => {
                config.assets.first().map(|asset| asset.name.clone())
            }
            _ => None,
        };
        return only
            .and_then(|name| config.asset(&name).cloned())
            .ok_or(Say::NullSenderNoAsset);
    };
    let not_served = || Say::SenderNotServed {
        sender: sender.as_str().to_string(),
    };
    let Some(name) = config.senders.lookup(sender) else {
        return Err(not_served());
    };
    if !user.assets.allows(name) {
        return Err(Say::SenderNotOwned {
            sender: sender.as_str().to_string(),
            user: user.name.clone(),
        });
    }
    config.asset(name).cloned().ok_or_else(not_served)
}

/// The error for replies that no longer match the commands sent ahead.
fn out_of_step(upstream: &Link) -> UpstreamError {
    UpstreamError::Protocol {
        target: upstream.target().to_string(),
        reason: "replies to pipelined commands out of step".to_string(),
    }
}

/// The MAIL FROM parameters we advertise and understand.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct MailParams {
    pub(super) size: Option<u64>,
    pub(super) eight_bit: bool,
    pub(super) smtputf8: bool,
}

impl MailParams {
    pub(super) fn parse(params: &[Param], max_size: u64) -> Result<MailParams, Say> {
        let mut envelope = MailParams {
            size: None,
            eight_bit: false,
            smtputf8: false,
        };
        for param in params {
            match (param.keyword.as_str(), param.value.as_deref()) {
                ("SIZE", Some(value)) => {
                    let size: u64 = value.parse().map_err(|_| Say::Syntax {
                        detail: "SIZE needs a number",
                    })?;
                    if size > max_size {
                        return Err(Say::MessageTooBigDeclared { limit: max_size });
                    }
                    envelope.size = Some(size);
                }
                ("BODY", Some(value)) if value.eq_ignore_ascii_case("8BITMIME") => {
                    envelope.eight_bit = true;
                }
                ("BODY", Some(value)) if value.eq_ignore_ascii_case("7BIT") => {}
                ("SMTPUTF8", None) => envelope.smtputf8 = true,
                // RFC 4954 §5: AUTH= on MAIL is informational; we already know the user.
                ("AUTH", _) => {}
                _ => {
                    return Err(Say::UnsupportedParameter {
                        keyword: param.keyword.clone(),
                    })
                }
            }
        }
        Ok(envelope)
    }
}
