//! One asset's token state: the cached access token, an unsaved rotation, the last
//! failure (the back-off), and the snapshot `/readyz` reads. The manager in
//! [`super::token`] holds one [`SlotState`] per asset, behind an `Arc` a config reload may
//! hand on.

use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::credentials::secret::Secret;
use crate::credentials::store::StoreFingerprint;

/// What the token store looked like at a failure: the file's fingerprint, or the Redis
/// entry's write counter (`[state] backend = "redis"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMark {
    File(StoreFingerprint),
    Version(u64),
}
use crate::oauth::error::TokenError;

pub(super) struct Cached {
    pub token: Secret,
    pub expires_at: Instant,
}

/// The last failed refresh, remembered so a burst of sessions does not hammer a failing
/// endpoint, and so `check` and the logs can say what is wrong.
pub(super) struct Failure {
    pub error: TokenError,
    pub at: Instant,
    /// How long to answer with `error` without asking again: `token_retry_secs`, or the
    /// endpoint's (clamped) `Retry-After` when that is longer.
    pub back_off: Duration,
    /// The store as it was then: a new token written by `authorize` is tried at once.
    pub store_seen: Option<StoreMark>,
}

/// A refresh token the provider rotated that the asset's source does not hold: the store
/// could not be written, or the source is read-only (config, file). `based_on` is what the
/// source held when this lineage left it. While the source still holds `based_on`, `token`
/// is the newer credential; once it holds anything else, a new grant arrived (`authorize`,
/// an edited file) and wins: the rotation is dropped, and a store write compares against
/// `based_on`, never against whatever the store holds by then.
pub(super) struct PendingRotation {
    pub token: Secret,
    pub based_on: Secret,
}

#[derive(Default)]
pub(super) struct AssetState {
    pub cached: Option<Cached>,
    pub rotation: Option<PendingRotation>,
    pub failure: Option<Failure>,
    pub last_refresh: Option<SystemTime>,
    /// When the refresh token dies, as the provider said at the last refresh
    /// (`refresh_token_expires_in`, a time-limited grant); `None` when it did not say.
    pub refresh_token_expires_at: Option<SystemTime>,
}

/// What `status` reports, copied out of [`AssetState`] whenever it changes: the state's
/// lock is held across a refresh (up to `token_request_secs`), and a readiness probe must
/// not wait for that.
#[derive(Default, Clone)]
pub(super) struct Snapshot {
    pub expires_at: Option<Instant>,
    pub last_refresh: Option<SystemTime>,
    pub last_error: Option<TokenError>,
    pub refresh_token_expires_at: Option<SystemTime>,
}

/// One asset's token state. Shared with the manager of a reloaded config while the asset's
/// credentials stay the same, so a reload neither refreshes again nor opens a second
/// single-flight domain next to the one old sessions still use.
#[derive(Default)]
pub(super) struct SlotState {
    pub state: Mutex<AssetState>,
    snapshot: std::sync::Mutex<Snapshot>,
    /// Why the provider refused a freshly refreshed access token at the last login, if it
    /// did (SMTP AUTH off for the mailbox, a token of another account); cleared by the next
    /// login it accepts. Kept apart from `state`: logins happen without the refresh lock.
    pub provider_refusal: std::sync::Mutex<Option<String>>,
}

impl SlotState {
    pub fn publish(&self, state: &AssetState) {
        let snapshot = Snapshot {
            expires_at: state.cached.as_ref().map(|cached| cached.expires_at),
            last_refresh: state.last_refresh,
            last_error: state.failure.as_ref().map(|failure| failure.error.clone()),
            refresh_token_expires_at: state.refresh_token_expires_at,
        };
        *self
            .snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = snapshot;
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}
