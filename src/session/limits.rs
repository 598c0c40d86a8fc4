//! Sending limits in the dialogue (issue 16): admitting a message at MAIL FROM and each
//! recipient at RCPT against the asset's limits, turning the provider's own quota
//! refusals into 4xx (and marking the asset), and holding an `upstream_connections` slot
//! for each upstream SMTP session. The limits themselves live in `crate::limits`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::Session;
use crate::config::{Asset, AssetTransport};
use crate::limits::{self, Admission, Limit, LimitHit, ProviderQuota};
use crate::replies::{relayed, Say};
use crate::smtp::reply::Reply;
use crate::transport::{Link, TransportError};

/// How often a session waiting for an `upstream_connections` slot looks for a connection
/// another session has given back to the pool.
const SLOT_POLL: Duration = Duration::from_millis(50);

/// What waiting for an upstream connection of a capped asset gave.
pub(super) enum Slot {
    /// A slot to open a new connection with (None: the asset has no cap).
    Free(Option<limits::Slot>),
    /// A warm connection another session gave back to the pool meanwhile.
    Pooled(Link),
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    /// Admits a message for `asset` at MAIL FROM, waiting (at most
    /// `upstream_command_secs`) when only the per-minute limit stops it.
    pub(super) async fn admit_message(&mut self, asset: &Asset) -> Result<Admission, Say> {
        let wait = self.relay.config.timeouts.upstream_command;
        match self.relay.limits.admit_within(asset, 0, wait).await {
            Ok(admission) => Ok(admission),
            Err(hit) => Err(self.limit_hit(hit)),
        }
    }

    /// Admits one more recipient of the transaction's message, or the 451 that refuses it.
    pub(super) async fn admit_recipient(&mut self) -> Result<(), Say> {
        let super::Phase::Transaction(transaction) = &mut self.phase else {
            return Ok(());
        };
        let Some(admission) = transaction.admission.as_mut() else {
            return Ok(());
        };
        let asset = transaction.asset.clone();
        let now = limits::unix_now();
        match self
            .relay
            .limits
            .add_recipients(admission, &asset, 1, now)
            .await
        {
            Ok(()) => Ok(()),
            Err(hit) => Err(self.limit_hit(hit)),
        }
    }

    /// A RCPT the recipient limit refused: when it already went upstream in a pipelined
    /// flight and was accepted there (another session took the room meanwhile), the
    /// upstream transaction is given up (the link dropped, so the provider discards it)
    /// rather than let that recipient receive the message.
    pub(super) fn recipient_over_limit(&mut self, line: &str) {
        if let super::Phase::Transaction(transaction) = &mut self.phase {
            if let super::pipeline::Ahead::Reply(reply) = transaction.prefetched.take(line) {
                if reply.is_positive() {
                    self.phase = super::Phase::Idle;
                }
            }
        }
    }

    /// Gives back a recipient admitted for a RCPT the provider then refused.
    pub(super) fn recipient_refused(&mut self) {
        if let super::Phase::Transaction(transaction) = &mut self.phase {
            if let Some(admission) = transaction.admission.as_mut() {
                self.relay.limits.drop_recipients(admission, 1);
            }
        }
    }

    /// How many recipients the asset's daily limit still lets this transaction add (for
    /// the RCPTs sent ahead in one flight: none may be one the limit would refuse).
    pub(super) async fn recipient_room(&self, asset: &Asset) -> usize {
        let room = self
            .relay
            .limits
            .recipient_room(asset, limits::unix_now())
            .await;
        usize::try_from(room).unwrap_or(usize::MAX)
    }

    /// The reply for a message a limit stops; logged and counted.
    fn limit_hit(&self, hit: LimitHit) -> Say {
        tracing::warn!(
            asset = %hit.asset,
            limit = hit.limit.key(),
            frees_at = %limits::format_time(hit.frees_at),
            "message refused: sending limit reached"
        );
        self.relay.metrics.limit_hit(match hit.limit {
            Limit::DailyMessages(_) => "daily_messages",
            Limit::DailyRecipients(_) => "daily_recipients",
            Limit::MessagesPerMinute(_) => "messages_per_minute",
            Limit::Provider(_) => "provider_quota",
        });
        Say::SendingLimit { hit }
    }

    /// An upstream reply as the client hears it: a provider's quota refusal becomes our
    /// 4xx (the mail waits in the client's queue, it does not bounce) and marks the asset;
    /// anything else is relayed.
    pub(super) async fn provider_reply(&self, asset: &Asset, reply: Reply) -> Reply {
        match limits::quota::smtp_quota(&reply) {
            Some(quota) => {
                let hit = self.provider_quota(asset, &quota).await;
                Say::SendingLimit { hit }.reply()
            }
            None => relayed(reply),
        }
    }

    /// Marks the asset when an API transport's failure is a quota refusal.
    pub(super) async fn transport_quota(&self, asset: &Asset, error: &TransportError) {
        if let Some(quota) = limits::quota::transport_quota(error) {
            self.provider_quota(asset, &quota).await;
        }
    }

    async fn provider_quota(&self, asset: &Asset, quota: &ProviderQuota) -> LimitHit {
        let now = limits::unix_now();
        let mark = self.relay.limits.provider_refused(asset, quota, now).await;
        tracing::error!(
            asset = %asset.name,
            until = %limits::format_time(mark.until),
            provider_said = %mark.reason,
            "asset over the provider's sending limit: its mail is answered 451 locally until then"
        );
        // The alert task sees the mark at its next check (`asset_over_provider_limit`).
        self.relay.metrics.limit_hit("provider_quota");
        LimitHit {
            asset: asset.name.clone(),
            limit: Limit::Provider(mark.reason),
            frees_at: mark.until,
        }
    }

    /// A slot for a new upstream SMTP session of `asset` (or a pooled connection that
    /// came back meanwhile, when `from_pool`), waiting up to `upstream_connect_secs`.
    pub(super) async fn upstream_slot(
        &self,
        asset: &Arc<Asset>,
        from_pool: bool,
    ) -> Result<Slot, Reply> {
        let cap = match asset.transport {
            AssetTransport::Smtp => asset.sending.upstream_connections,
            _ => 0,
        };
        let deadline = Instant::now() + self.relay.config.timeouts.upstream_connect;
        loop {
            if let Some(slot) = self.relay.limits.slots.try_take(&asset.name, cap).await {
                return Ok(Slot::Free(slot));
            }
            if from_pool {
                if let Some(pooled) = self.relay.pool.take(&asset.name) {
                    return Ok(Slot::Pooled(pooled));
                }
            }
            if Instant::now() >= deadline {
                tracing::warn!(asset = %asset.name, limit = cap, "all upstream_connections in use");
                self.relay.metrics.limit_hit("upstream_connections");
                return Err(Say::UpstreamConnectionsBusy {
                    asset: asset.name.clone(),
                    limit: cap,
                }
                .reply());
            }
            tokio::time::sleep(SLOT_POLL).await;
        }
    }
}
