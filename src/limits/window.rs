//! Rolling sending windows of one asset, pure and bounded.
//!
//! Providers count a mailbox's sends over a rolling 24 hours (Google, Exchange) and a
//! rolling minute (Exchange's 30 a minute, the Gmail API's ~150). Keeping every send's
//! timestamp for 24 hours would grow with the traffic; instead sends are added into
//! buckets: one per minute for the day window (at most 1,440) and one per second for the
//! minute window (at most 60). A bucket is counted as long as any part of it is inside the
//! window, so the relay may wait up to one bucket longer than the provider would: it errs
//! on the side of staying under the limit.
//!
//! Both the local store and a shared store (Redis) hand their buckets to these functions,
//! so the arithmetic (totals, when a limit frees up) is written and tested once.

use serde::{Deserialize, Serialize};

/// The day window's length and bucket width, in seconds.
pub const DAY_SECS: u64 = 24 * 60 * 60;
pub const DAY_BUCKET_SECS: u64 = 60;
/// The minute window's length and bucket width, in seconds.
pub const MINUTE_SECS: u64 = 60;
pub const MINUTE_BUCKET_SECS: u64 = 1;

/// Sends that started within one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Unix seconds at the bucket's start (a multiple of its width).
    pub start: u64,
    pub messages: u64,
    pub recipients: u64,
}

/// What a store knows about one asset's recent sends: the buckets of both windows, each
/// oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Minute buckets of the last 24 hours.
    pub day: Vec<Bucket>,
    /// Second buckets of the last minute.
    pub minute: Vec<Bucket>,
}

/// The sums over both windows at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub messages_day: u64,
    pub recipients_day: u64,
    pub messages_minute: u64,
}

/// What a count is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Messages,
    Recipients,
}

impl Bucket {
    fn count(&self, what: Counted) -> u64 {
        match what {
            Counted::Messages => self.messages,
            Counted::Recipients => self.recipients,
        }
    }
}

/// Whether a bucket starting at `start` (of `width`) still overlaps the window of
/// `length` that ends at `now`.
fn live(start: u64, width: u64, length: u64, now: u64) -> bool {
    start + width + length > now
}

impl Usage {
    /// Adds a send of `messages` messages and `recipients` recipients at `at`, and drops
    /// buckets that have left their window (which bounds the memory).
    pub fn record(&mut self, at: u64, messages: u64, recipients: u64) {
        add(&mut self.day, at, DAY_BUCKET_SECS, messages, recipients);
        add(
            &mut self.minute,
            at,
            MINUTE_BUCKET_SECS,
            messages,
            recipients,
        );
        self.prune(at);
    }

    /// Drops buckets outside their windows at `now`.
    pub fn prune(&mut self, now: u64) {
        self.day
            .retain(|b| live(b.start, DAY_BUCKET_SECS, DAY_SECS, now));
        self.minute
            .retain(|b| live(b.start, MINUTE_BUCKET_SECS, MINUTE_SECS, now));
    }

    /// Whether nothing is counted any more at `now` (the asset can be forgotten).
    pub fn is_idle(&self, now: u64) -> bool {
        self.totals(now) == Totals::default()
    }

    pub fn totals(&self, now: u64) -> Totals {
        let day = self
            .day
            .iter()
            .filter(|b| b.start <= now && live(b.start, DAY_BUCKET_SECS, DAY_SECS, now));
        let (messages_day, recipients_day) =
            day.fold((0, 0), |(m, r), b| (m + b.messages, r + b.recipients));
        let messages_minute = self
            .minute
            .iter()
            .filter(|b| b.start <= now && live(b.start, MINUTE_BUCKET_SECS, MINUTE_SECS, now))
            .map(|b| b.messages)
            .sum();
        Totals {
            messages_day,
            recipients_day,
            messages_minute,
        }
    }

    /// The first moment after `now` at which the day window counts at most
    /// `limit - wanted` of `what`, so that `wanted` more fit; `now` when they fit already.
    pub fn day_frees_at(&self, what: Counted, limit: u64, wanted: u64, now: u64) -> u64 {
        frees_at(
            &self.day,
            DAY_BUCKET_SECS,
            DAY_SECS,
            what,
            limit,
            wanted,
            now,
        )
    }

    /// As [`Usage::day_frees_at`], for messages in the minute window.
    pub fn minute_frees_at(&self, limit: u64, wanted: u64, now: u64) -> u64 {
        frees_at(
            &self.minute,
            MINUTE_BUCKET_SECS,
            MINUTE_SECS,
            Counted::Messages,
            limit,
            wanted,
            now,
        )
    }
}

fn add(buckets: &mut Vec<Bucket>, at: u64, width: u64, messages: u64, recipients: u64) {
    let start = at - at % width;
    match buckets.iter_mut().rev().find(|b| b.start == start) {
        Some(bucket) => {
            bucket.messages += messages;
            bucket.recipients += recipients;
        }
        None => {
            buckets.push(Bucket {
                start,
                messages,
                recipients,
            });
            // A clock that stepped back could put a bucket out of order.
            buckets.sort_by_key(|b| b.start);
        }
    }
}

fn frees_at(
    buckets: &[Bucket],
    width: u64,
    length: u64,
    what: Counted,
    limit: u64,
    wanted: u64,
    now: u64,
) -> u64 {
    let mut live_buckets: Vec<&Bucket> = buckets
        .iter()
        .filter(|b| live(b.start, width, length, now))
        .collect();
    live_buckets.sort_by_key(|b| b.start);
    let mut total: u64 = live_buckets.iter().map(|b| b.count(what)).sum();
    if total + wanted <= limit {
        return now;
    }
    // Buckets leave the window oldest first; when enough have left, the rest fit.
    for bucket in live_buckets {
        total -= bucket.count(what);
        if total + wanted <= limit {
            return bucket.start + width + length;
        }
    }
    // More wanted than the limit allows at all: once everything has left.
    now + length
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    #[test]
    fn counts_within_the_rolling_day_and_minute() {
        let mut usage = Usage::default();
        usage.record(T0, 1, 3);
        usage.record(T0 + 30, 1, 2);
        let totals = usage.totals(T0 + 30);
        assert_eq!(totals.messages_day, 2);
        assert_eq!(totals.recipients_day, 5);
        assert_eq!(totals.messages_minute, 2);
        // A minute later the minute window is empty, the day still counts both.
        let later = usage.totals(T0 + 120);
        assert_eq!(later.messages_minute, 0);
        assert_eq!(later.messages_day, 2);
        // A day and a bucket later, nothing.
        assert!(usage.is_idle(T0 + DAY_SECS + 120));
    }

    #[test]
    fn memory_stays_bounded_by_the_bucket_count() {
        let mut usage = Usage::default();
        // Two days of one send every 7 seconds.
        for i in 0..(2 * DAY_SECS / 7) {
            usage.record(T0 + i * 7, 1, 1);
        }
        assert!(usage.day.len() <= (DAY_SECS / DAY_BUCKET_SECS) as usize + 1);
        assert!(usage.minute.len() <= (MINUTE_SECS / MINUTE_BUCKET_SECS) as usize + 1);
    }

    #[test]
    fn the_day_limit_frees_up_when_the_oldest_sends_leave() {
        let mut usage = Usage::default();
        usage.record(T0, 2, 2);
        usage.record(T0 + 3600, 3, 3);
        let now = T0 + 7200;
        // 5 sent, limit 5: one more fits once the first bucket (2) has left.
        let at = usage.day_frees_at(Counted::Messages, 5, 1, now);
        assert_eq!(at, T0 - T0 % 60 + 60 + DAY_SECS);
        assert!(at > now);
        // Room already: now.
        assert_eq!(usage.day_frees_at(Counted::Messages, 6, 1, now), now);
        // Four more recipients need both buckets gone.
        let all = usage.day_frees_at(Counted::Recipients, 5, 4, now);
        assert_eq!(all, (T0 + 3600) - (T0 + 3600) % 60 + 60 + DAY_SECS);
        // More than the limit: never fits while anything is counted; once all is gone.
        assert_eq!(
            usage.day_frees_at(Counted::Recipients, 5, 9, now),
            now + DAY_SECS
        );
    }

    #[test]
    fn the_minute_limit_frees_up_within_a_minute() {
        let mut usage = Usage::default();
        for s in 0..3 {
            usage.record(T0 + s, 1, 1);
        }
        assert_eq!(usage.minute_frees_at(3, 1, T0 + 10), T0 + 1 + MINUTE_SECS);
        assert_eq!(usage.minute_frees_at(4, 1, T0 + 10), T0 + 10);
    }

    #[test]
    fn a_clock_step_back_keeps_buckets_ordered() {
        let mut usage = Usage::default();
        usage.record(T0 + 600, 1, 1);
        usage.record(T0, 1, 1);
        assert!(usage.day.windows(2).all(|w| w[0].start < w[1].start));
        assert_eq!(usage.totals(T0 + 600).messages_day, 2);
    }
}
