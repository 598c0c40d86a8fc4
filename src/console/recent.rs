//! The recent per-message outcomes the console shows: the last N messages (Messages page)
//! and, per asset, counts by outcome over the last 24 hours (Assets page). In memory
//! only, bounded: N records plus 24 hourly buckets per asset; a restart starts empty.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How a message ended, by the final reply the client got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// 2xx: the provider accepted it.
    Delivered,
    /// 4xx: not sent; the client keeps it and retries.
    Deferred,
    /// 5xx: refused (by the provider or by the relay's policy).
    Refused,
}

impl Ended {
    pub fn from_code(code: u16) -> Ended {
        match code / 100 {
            2 => Ended::Delivered,
            4 => Ended::Deferred,
            _ => Ended::Refused,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Ended::Delivered => "delivered",
            Ended::Deferred => "deferred",
            Ended::Refused => "refused",
        }
    }
}

/// One message as the Messages page lists it. Values come from clients and providers:
/// pages escape them (maud does by default).
#[derive(Debug, Clone)]
pub struct MessageRecord {
    pub at: SystemTime,
    pub user: String,
    pub sender: String,
    pub recipients: usize,
    pub size: u64,
    pub asset: String,
    pub outcome: Ended,
    /// The final reply the client got (the upstream's own, or the relay's).
    pub reply: String,
}

/// Counts per outcome in one hour.
#[derive(Debug, Clone, Copy, Default)]
struct Hour {
    /// Hours since the epoch this bucket counts.
    hour: u64,
    counts: [u64; 3],
}

#[derive(Debug, Default)]
struct Inner {
    records: VecDeque<MessageRecord>,
    /// Per asset, 24 buckets indexed by hour % 24.
    hours: HashMap<String, [Hour; 24]>,
}

#[derive(Debug)]
pub struct RecentMessages {
    kept: usize,
    inner: Mutex<Inner>,
}

/// Counts of the last 24 h for one asset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayCounts {
    pub delivered: u64,
    pub deferred: u64,
    pub refused: u64,
}

fn hour_of(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
        / 3600
}

impl RecentMessages {
    /// Keeps the last `kept` records (0: the Messages page stays empty; counts still work).
    pub fn new(kept: usize) -> RecentMessages {
        RecentMessages {
            kept,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn record(&self, record: MessageRecord) {
        let hour = hour_of(record.at);
        let mut inner = self.lock();
        let buckets = inner.hours.entry(record.asset.clone()).or_default();
        let bucket = &mut buckets[(hour % 24) as usize];
        if bucket.hour != hour {
            *bucket = Hour {
                hour,
                counts: [0; 3],
            };
        }
        bucket.counts[record.outcome as usize] += 1;
        if self.kept > 0 {
            while inner.records.len() >= self.kept {
                inner.records.pop_front();
            }
            inner.records.push_back(record);
        }
    }

    /// Newest first.
    pub fn latest(&self) -> Vec<MessageRecord> {
        self.lock().records.iter().rev().cloned().collect()
    }

    /// The asset's messages of the last 24 hours (the current hour and the 23 before).
    pub fn last_day(&self, asset: &str) -> DayCounts {
        let now = hour_of(SystemTime::now());
        let inner = self.lock();
        let mut counts = DayCounts::default();
        if let Some(buckets) = inner.hours.get(asset) {
            for bucket in buckets
                .iter()
                .filter(|b| b.hour + 24 > now && b.hour <= now)
            {
                counts.delivered += bucket.counts[Ended::Delivered as usize];
                counts.deferred += bucket.counts[Ended::Deferred as usize];
                counts.refused += bucket.counts[Ended::Refused as usize];
            }
        }
        counts
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(asset: &str, outcome: Ended, at: SystemTime) -> MessageRecord {
        MessageRecord {
            at,
            user: "u".into(),
            sender: "s@example.com".into(),
            recipients: 1,
            size: 10,
            asset: asset.into(),
            outcome,
            reply: "250 ok".into(),
        }
    }

    #[test]
    fn keeps_the_last_n_newest_first() {
        let log = RecentMessages::new(2);
        for n in 0..3 {
            let mut r = record("a", Ended::Delivered, SystemTime::now());
            r.size = n;
            log.record(r);
        }
        let sizes: Vec<u64> = log.latest().iter().map(|r| r.size).collect();
        assert_eq!(sizes, vec![2, 1]);
    }

    #[test]
    fn counts_the_last_day_only() {
        let log = RecentMessages::new(0);
        let now = SystemTime::now();
        log.record(record("a", Ended::Delivered, now));
        log.record(record("a", Ended::Deferred, now));
        log.record(record(
            "a",
            Ended::Refused,
            now - Duration::from_secs(3600 * 2),
        ));
        log.record(record(
            "a",
            Ended::Delivered,
            now - Duration::from_secs(3600 * 30),
        ));
        log.record(record("b", Ended::Delivered, now));
        assert_eq!(
            log.last_day("a"),
            DayCounts {
                delivered: 1,
                deferred: 1,
                refused: 1
            }
        );
        assert!(log.latest().is_empty());
    }
}
