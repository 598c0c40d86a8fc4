//! Per-mailbox provider sending limits (issue 16 §1): the relay keeps each asset under
//! its provider's limits instead of letting the provider stop the mailbox for a day.
//!
//! - `window`: the rolling 24 h and 1 min windows (pure, bucketed, bounded memory);
//! - `store`: where counters and "over the provider's limit until …" marks live (the
//!   [`store::LimitStore`] trait; the local implementation persists to a file);
//! - `file`: the local store's file, written atomically.

mod file;
pub mod store;
pub mod window;

use std::time::{SystemTime, UNIX_EPOCH};

pub use store::{LimitStore, LimitStoreError, LocalLimitStore, OverLimit};
pub use window::{Bucket, Totals, Usage};

/// Now, in Unix seconds (0 for a clock before 1970, which no window then counts).
pub fn unix_now() -> u64 {
    unix_secs(SystemTime::now())
}

pub fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
