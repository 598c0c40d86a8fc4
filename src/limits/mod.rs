//! Per-mailbox provider sending limits (issue 16 §1): the relay keeps each asset under
//! its provider's limits instead of letting the provider stop the mailbox for a day.
//!
//! - `window`: the rolling 24 h and 1 min windows (pure, bucketed, bounded memory);
//! - `store`: where counters and "over the provider's limit until …" marks live (the
//!   [`store::LimitStore`] trait; the local implementation persists to a file);
//! - `file`: the local store's file, written atomically;
//! - `admit`: the [`Limits`] service sessions (and the spool) ask before sending;
//! - `quota`: recognizing the provider's own quota refusals;
//! - `slots`: `upstream_connections`, concurrent upstream sessions per asset.
//!
//! # Using it (sessions, and the spool)
//!
//! ```text
//! let admission = limits.admit(&asset, recipients, unix_now()).await?;   // Err(LimitHit)
//! //   LimitHit { asset, limit, frees_at }: a session answers 451 4.7.0 (Say::SendingLimit);
//! //   a spool keeps the message and tries again at frees_at.
//! ... send ...
//! limits.commit(admission, &asset, unix_now()).await;        // the provider took it
//! drop(admission);                                           // or: not sent, place given back
//! if let Some(quota) = quota::smtp_quota(&reply) /* or quota::transport_quota(&err) */ {
//!     limits.provider_refused(&asset, &quota, unix_now()).await;   // the asset is marked
//! }
//! ```
//!
//! Sessions use [`Limits::admit_within`] at MAIL (the per-minute limit may wait up to
//! `upstream_command_secs`) and [`Limits::add_recipients`] at each RCPT. The relay builds
//! its `Limits` with [`open_local_store`]; a shared backend replaces only the store.

mod admit;
mod file;
pub mod quota;
pub mod slots;
pub mod store;
pub mod window;

use std::time::{SystemTime, UNIX_EPOCH};

pub use admit::{Admission, Limit, LimitHit, Limits};
pub use quota::ProviderQuota;
pub use slots::{Slot, Slots};
pub use store::{LimitStore, LimitStoreError, LocalLimitStore, OverLimit};
pub use window::{Bucket, Totals, Usage};

/// Now, in Unix seconds (0 for a clock before 1970, which no window then counts).
pub fn unix_now() -> u64 {
    unix_secs(SystemTime::now())
}

pub fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Unix seconds as RFC 3339 UTC, for replies, logs and the console.
pub fn format_time(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} seconds after 1970"))
}

/// The local store's file: `limits.json` in the relay's state directory (beside the token
/// store, `[tokens] path`).
pub fn local_store_path(config: &crate::config::Config) -> std::path::PathBuf {
    config.tokens.path.with_file_name("limits.json")
}

/// The local store for `config`, loaded from its file. A file that cannot be read is
/// logged and the relay starts with empty counters: the provider still enforces its own
/// limits, and refusing to start over a counter file would stop all mail.
pub fn open_local_store(config: &crate::config::Config) -> std::sync::Arc<dyn LimitStore> {
    match LocalLimitStore::open(local_store_path(config)) {
        Ok(store) => std::sync::Arc::new(store),
        Err((store, err)) => {
            tracing::error!(error = %err, "sending counters start empty");
            std::sync::Arc::new(store)
        }
    }
}
