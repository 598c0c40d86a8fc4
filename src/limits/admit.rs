//! [`Limits`]: the relay's one service for sending limits. It admits a message for an
//! asset (or says which limit stops it and when that frees up), holds what sessions have
//! admitted but not yet delivered, counts delivered messages into the store, and marks
//! assets the provider said are over its limit.
//!
//! Admitted-but-unfinished messages count against the limits too (an [`Admission`]
//! reserves its message and recipients until it is committed or dropped), so sessions
//! running side by side cannot together pass a limit that each alone would respect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::quota::ProviderQuota;
use super::store::{LimitStore, LimitStoreError, OverLimit};
use super::window::{Counted, Usage};
use super::{unix_now, Slots};
use crate::config::{Asset, SendingLimits};
use crate::metrics::Metrics;

/// Which limit a message ran into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    DailyMessages(u64),
    DailyRecipients(u64),
    MessagesPerMinute(u64),
    /// The provider itself refused for quota (the mark's reason).
    Provider(String),
}

impl Limit {
    /// The name in metrics and logs (the config key).
    pub fn key(&self) -> &'static str {
        match self {
            Limit::DailyMessages(_) => "daily_messages",
            Limit::DailyRecipients(_) => "daily_recipients",
            Limit::MessagesPerMinute(_) => "messages_per_minute",
            Limit::Provider(_) => "provider",
        }
    }
}

/// A message that a limit stops: which asset, which limit, and when it frees up (Unix
/// seconds). `replies` words it as `451 4.7.0`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("asset {asset} is at its {} limit until {frees_at}", limit.key())]
pub struct LimitHit {
    pub asset: String,
    pub limit: Limit,
    pub frees_at: u64,
}

/// What sessions have admitted for one asset and not yet finished.
#[derive(Debug, Default, Clone, Copy)]
struct Reserved {
    messages: u64,
    recipients: u64,
}

/// One admitted message: holds its place (the message and its recipients) against the
/// asset's limits until [`Limits::commit`] counts it as sent, or it is dropped (not sent).
#[must_use = "dropping an admission gives its place back"]
pub struct Admission {
    limits: Arc<Limits>,
    asset: String,
    recipients: u64,
    done: bool,
}

impl Admission {
    pub fn asset(&self) -> &str {
        &self.asset
    }

    pub fn recipients(&self) -> u64 {
        self.recipients
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.done {
            self.limits.release(&self.asset, 1, self.recipients);
        }
    }
}

pub struct Limits {
    store: Arc<dyn LimitStore>,
    reserved: Mutex<HashMap<String, Reserved>>,
    /// `upstream_connections` per asset.
    pub slots: Slots,
    metrics: Option<Arc<Metrics>>,
    /// A failing store is logged once per failure streak, not per message.
    store_failing: AtomicBool,
}

impl Limits {
    pub fn new(store: Arc<dyn LimitStore>, metrics: Option<Arc<Metrics>>) -> Arc<Limits> {
        Limits::with_slots(store, metrics, Slots::default())
    }

    /// With `slots` shared across replicas (`Slots::shared`).
    pub fn with_slots(
        store: Arc<dyn LimitStore>,
        metrics: Option<Arc<Metrics>>,
        slots: Slots,
    ) -> Arc<Limits> {
        Arc::new(Limits {
            store,
            reserved: Mutex::new(HashMap::new()),
            slots,
            metrics,
            store_failing: AtomicBool::new(false),
        })
    }

    pub fn store(&self) -> &Arc<dyn LimitStore> {
        &self.store
    }

    /// Admits one message with `recipients` recipients (0 at MAIL FROM; more are added
    /// with [`Limits::add_recipients`]) for `asset` at `now` (Unix seconds), or says which
    /// limit stops it.
    pub async fn admit(
        self: &Arc<Self>,
        asset: &Asset,
        recipients: u64,
        now: u64,
    ) -> Result<Admission, LimitHit> {
        self.check(asset, 1, recipients, now).await?;
        let mut reserved = self.lock();
        let entry = reserved.entry(asset.name.clone()).or_default();
        entry.messages += 1;
        entry.recipients += recipients;
        Ok(Admission {
            limits: self.clone(),
            asset: asset.name.clone(),
            recipients,
            done: false,
        })
    }

    /// [`Limits::admit`], waiting up to `max_wait` when only the per-minute limit stops
    /// the message and frees up within that time (issue 16: "a per-minute limit delays
    /// before it refuses").
    pub async fn admit_within(
        self: &Arc<Self>,
        asset: &Asset,
        recipients: u64,
        max_wait: Duration,
    ) -> Result<Admission, LimitHit> {
        let deadline = std::time::SystemTime::now() + max_wait;
        // Each round waits for the minute window to move on; a few rounds at most,
        // bounded by the deadline.
        for _ in 0..64 {
            match self.admit(asset, recipients, unix_now()).await {
                Err(hit) if matches!(hit.limit, Limit::MessagesPerMinute(_)) => {
                    let frees = std::time::UNIX_EPOCH + Duration::from_secs(hit.frees_at);
                    if frees > deadline {
                        return Err(hit);
                    }
                    let wait = frees
                        .duration_since(std::time::SystemTime::now())
                        .unwrap_or_default();
                    tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
                }
                other => return other,
            }
        }
        self.admit(asset, recipients, unix_now()).await
    }

    /// Adds `more` recipients to an admitted message, unless they would pass the daily
    /// recipient limit.
    pub async fn add_recipients(
        &self,
        admission: &mut Admission,
        asset: &Asset,
        more: u64,
        now: u64,
    ) -> Result<(), LimitHit> {
        self.check(asset, 0, more, now).await?;
        if let Some(entry) = self.lock().get_mut(&admission.asset) {
            entry.recipients += more;
        }
        admission.recipients += more;
        Ok(())
    }

    /// Gives back `fewer` recipients of an admitted message (the provider refused them).
    pub fn drop_recipients(&self, admission: &mut Admission, fewer: u64) {
        let fewer = fewer.min(admission.recipients);
        admission.recipients -= fewer;
        self.release(&admission.asset, 0, fewer);
    }

    /// How many more recipients the asset's daily limit allows now, beyond those already
    /// admitted (`u64::MAX` without a limit; 0 while the asset is marked).
    pub async fn recipient_room(&self, asset: &Asset, now: u64) -> u64 {
        if self.over_limit(&asset.name, now).await.is_some() {
            return 0;
        }
        let limit = asset.sending.daily_recipients;
        if limit == 0 {
            return u64::MAX;
        }
        let used = self
            .usage(&asset.name, now)
            .await
            .totals(now)
            .recipients_day;
        let reserved = self.lock().get(&asset.name).copied().unwrap_or_default();
        limit.saturating_sub(used + reserved.recipients)
    }

    /// Counts an admitted message as sent (the provider accepted it).
    pub async fn commit(&self, mut admission: Admission, asset: &Asset, now: u64) {
        admission.done = true;
        self.release(&admission.asset, 1, admission.recipients);
        if asset.sending.counts() {
            if let Err(err) = self
                .store
                .record(&admission.asset, now, 1, admission.recipients)
                .await
            {
                self.store_failed(&err);
            }
        }
        self.publish(asset, now).await;
    }

    /// Marks `asset` over the provider's limit for what `quota` says, from `now`.
    pub async fn provider_refused(
        &self,
        asset: &Asset,
        quota: &ProviderQuota,
        now: u64,
    ) -> OverLimit {
        let mark = OverLimit {
            until: now + quota.for_secs,
            since: now,
            reason: quota.reason.clone(),
        };
        if let Err(err) = self.store.set_over_limit(&asset.name, mark.clone()).await {
            self.store_failed(&err);
        }
        if let Some(metrics) = &self.metrics {
            metrics.set_asset_over_limit(&asset.name, true);
        }
        mark
    }

    /// The asset's "over the provider's limit" mark, if one holds at `now`.
    pub async fn over_limit(&self, asset: &str, now: u64) -> Option<OverLimit> {
        match self.store.over_limit(asset, now).await {
            Ok(mark) => mark,
            Err(err) => {
                self.store_failed(&err);
                None
            }
        }
    }

    /// The asset's counts in both windows at `now` (for the console and metrics).
    pub async fn usage(&self, asset: &str, now: u64) -> Usage {
        match self.store.usage(asset, now).await {
            Ok(usage) => {
                if self.store_failing.swap(false, Ordering::SeqCst) {
                    tracing::info!(
                        backend = self.store.backend(),
                        "sending-limit state available again"
                    );
                }
                usage
            }
            Err(err) => {
                self.store_failed(&err);
                Usage::default()
            }
        }
    }

    /// Sets the asset's gauges from the store (after a send, and on `/metrics`).
    pub async fn publish(&self, asset: &Asset, now: u64) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let totals = self.usage(&asset.name, now).await.totals(now);
        let limits = &asset.sending;
        metrics.set_asset_sent_24h(&asset.name, totals.messages_day);
        for (key, limit, used) in [
            ("daily_messages", limits.daily_messages, totals.messages_day),
            (
                "daily_recipients",
                limits.daily_recipients,
                totals.recipients_day,
            ),
            (
                "messages_per_minute",
                limits.messages_per_minute,
                totals.messages_minute,
            ),
        ] {
            if limit != 0 {
                metrics.set_asset_limit_remaining(&asset.name, key, limit.saturating_sub(used));
            }
        }
        let over = self.over_limit(&asset.name, now).await.is_some();
        metrics.set_asset_over_limit(&asset.name, over);
    }

    /// Whether `messages` more messages with `recipients` more recipients fit.
    async fn check(
        &self,
        asset: &Asset,
        messages: u64,
        recipients: u64,
        now: u64,
    ) -> Result<(), LimitHit> {
        let hit = |limit, frees_at| LimitHit {
            asset: asset.name.clone(),
            limit,
            frees_at,
        };
        if let Some(mark) = self.over_limit(&asset.name, now).await {
            return Err(hit(Limit::Provider(mark.reason), mark.until));
        }
        let limits: &SendingLimits = &asset.sending;
        if !limits.counts() {
            return Ok(());
        }
        let usage = self.usage(&asset.name, now).await;
        let totals = usage.totals(now);
        let reserved = self.lock().get(&asset.name).copied().unwrap_or_default();
        let day_messages = totals.messages_day + reserved.messages;
        if messages > 0
            && limits.daily_messages != 0
            && day_messages + messages > limits.daily_messages
        {
            let wanted = reserved.messages + messages;
            let at = usage.day_frees_at(Counted::Messages, limits.daily_messages, wanted, now);
            return Err(hit(
                Limit::DailyMessages(limits.daily_messages),
                at.max(now + 1),
            ));
        }
        let day_recipients = totals.recipients_day + reserved.recipients;
        if recipients > 0
            && limits.daily_recipients != 0
            && day_recipients + recipients > limits.daily_recipients
        {
            let wanted = reserved.recipients + recipients;
            let at = usage.day_frees_at(Counted::Recipients, limits.daily_recipients, wanted, now);
            return Err(hit(
                Limit::DailyRecipients(limits.daily_recipients),
                at.max(now + 1),
            ));
        }
        let minute = totals.messages_minute + reserved.messages;
        if messages > 0
            && limits.messages_per_minute != 0
            && minute + messages > limits.messages_per_minute
        {
            let wanted = reserved.messages + messages;
            let at = usage.minute_frees_at(limits.messages_per_minute, wanted, now);
            return Err(hit(
                Limit::MessagesPerMinute(limits.messages_per_minute),
                at.max(now + 1),
            ));
        }
        Ok(())
    }

    fn release(&self, asset: &str, messages: u64, recipients: u64) {
        let mut reserved = self.lock();
        if let Some(entry) = reserved.get_mut(asset) {
            entry.messages = entry.messages.saturating_sub(messages);
            entry.recipients = entry.recipients.saturating_sub(recipients);
            if entry.messages == 0 && entry.recipients == 0 {
                reserved.remove(asset);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Reserved>> {
        self.reserved
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Without its store the relay still sends (the provider enforces its limits anyway):
    /// refusing all mail because a counter is unreadable would be the worse failure.
    fn store_failed(&self, err: &LimitStoreError) {
        if !self.store_failing.swap(true, Ordering::SeqCst) {
            tracing::error!(backend = self.store.backend(), error = %err, "sending-limit state unavailable; limits are not enforced until it is back");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "admit_tests.rs"]
mod tests;
