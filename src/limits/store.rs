//! Where sending counters and "over the provider's limit" marks live: the
//! [`LimitStore`] trait, and its local implementation (memory, persisted to a file in
//! the relay's state directory so a restart does not forget a day of sends).
//!
//! The trait is the seam for a shared backend (issue 16 §2, Redis): several replicas
//! sending for one mailbox must count against one window. It deals only in buckets
//! ([`Usage`]) and marks; the arithmetic on them (totals, when a limit frees up) is in
//! `window.rs`, shared by every backend. Times are Unix seconds, so replicas agree.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::file;
use super::window::Usage;

/// "Over the provider's limit until …": the provider refused for quota; the relay answers
/// this asset's mail itself until `until` instead of contacting the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverLimit {
    /// Unix seconds.
    pub until: u64,
    /// Unix seconds when the provider said so.
    pub since: u64,
    /// What the provider said (its reply or error, sanitized), for the console and logs.
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LimitStoreError {
    #[error("cannot read or write the limits state file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the limits state file {path} cannot be read: {reason}")]
    Format { path: PathBuf, reason: String },
    /// A shared backend failed (its own error, without secrets).
    #[error("the limits backend failed: {0}")]
    Backend(String),
}

/// The state behind sending limits. Implementations must be cheap to call per message:
/// `record` once per delivered message, `usage` and `over_limit` at each MAIL.
pub trait LimitStore: Send + Sync + 'static {
    /// Counts a delivered message with `recipients` recipients for `asset` at `at`.
    fn record<'a>(
        &'a self,
        asset: &'a str,
        at: u64,
        messages: u64,
        recipients: u64,
    ) -> BoxFuture<'a, Result<(), LimitStoreError>>;

    /// The asset's buckets that are still inside their windows at `now`.
    fn usage<'a>(
        &'a self,
        asset: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<Usage, LimitStoreError>>;

    /// Marks the asset over the provider's limit (replacing an earlier mark).
    fn set_over_limit<'a>(
        &'a self,
        asset: &'a str,
        mark: OverLimit,
    ) -> BoxFuture<'a, Result<(), LimitStoreError>>;

    /// The asset's mark if it still holds at `now` (`until > now`).
    fn over_limit<'a>(
        &'a self,
        asset: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<Option<OverLimit>, LimitStoreError>>;

    /// Removes the asset's mark (an operator says the provider sends again).
    fn clear_over_limit<'a>(&'a self, asset: &'a str)
        -> BoxFuture<'a, Result<(), LimitStoreError>>;

    /// Makes everything recorded so far durable (shutdown, tests); a no-op for backends
    /// that write through.
    fn flush(&self) -> BoxFuture<'_, Result<(), LimitStoreError>>;

    /// `"local"`, `"redis"`: for logs and `/readyz`.
    fn backend(&self) -> &'static str;
}

/// How long the local store lets changes gather before writing them.
const WRITE_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// One asset's state in the local store and its file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct AssetState {
    #[serde(default)]
    pub(super) usage: Usage,
    #[serde(default)]
    pub(super) over_limit: Option<OverLimit>,
}

/// In memory, written to `path` (when set) a moment after a change (`WRITE_DELAY`, so a
/// busy relay writes about once a second, not once a message): atomically (temporary
/// file, fsync, rename), by at most one writer at a time, changes made during a write
/// going into the next one. Sessions never wait for the disk; `flush` writes at once.
pub struct LocalLimitStore {
    path: Option<PathBuf>,
    assets: Mutex<HashMap<String, AssetState>>,
    dirty: AtomicBool,
    /// A delayed write is scheduled.
    scheduled: AtomicBool,
    /// Held while a write is under way, so writes never overtake each other.
    writing: tokio::sync::Mutex<()>,
}

impl LocalLimitStore {
    /// A store kept only in memory (tests, `check`).
    pub fn in_memory() -> Arc<LocalLimitStore> {
        Arc::new(LocalLimitStore::with_state(None, HashMap::new()))
    }

    /// A store persisted to `path`, loaded from it when it exists. A file that cannot be
    /// read is an error for the caller to report; the relay then starts with empty
    /// counters (the provider still enforces its limits) rather than not at all.
    pub fn open(
        path: PathBuf,
    ) -> Result<Arc<LocalLimitStore>, (Arc<LocalLimitStore>, LimitStoreError)> {
        match file::load(&path) {
            Ok(assets) => Ok(Arc::new(LocalLimitStore::with_state(Some(path), assets))),
            Err(err) => Err((
                Arc::new(LocalLimitStore::with_state(Some(path), HashMap::new())),
                err,
            )),
        }
    }

    fn with_state(path: Option<PathBuf>, assets: HashMap<String, AssetState>) -> Self {
        LocalLimitStore {
            path,
            assets: Mutex::new(assets),
            dirty: AtomicBool::new(false),
            scheduled: AtomicBool::new(false),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, AssetState>> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.assets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes a change and starts a write in the background when a runtime is there.
    fn changed(self: &Arc<Self>) {
        if self.path.is_none() {
            return;
        }
        self.dirty.store(true, Ordering::SeqCst);
        if self.scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let store = self.clone();
            handle.spawn(async move {
                tokio::time::sleep(WRITE_DELAY).await;
                // Changes from here on schedule the next write (or are in this one).
                store.scheduled.store(false, Ordering::SeqCst);
                if let Err(err) = store.write_if_dirty().await {
                    tracing::warn!(error = %err, "cannot persist the sending counters");
                }
            });
        } else {
            // No runtime (a tool, a test): the next `flush` writes.
            self.scheduled.store(false, Ordering::SeqCst);
        }
    }

    async fn write_if_dirty(&self) -> Result<(), LimitStoreError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let _writing = self.writing.lock().await;
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let snapshot = {
            let mut assets = self.lock();
            let now = super::unix_now();
            // Forget what no window counts any more, so the file stays small.
            assets.retain(|_, state| {
                state.usage.prune(now);
                !state.usage.is_idle(now)
                    || state.over_limit.as_ref().is_some_and(|m| m.until > now)
            });
            assets.clone()
        };
        let written = tokio::task::spawn_blocking(move || file::save(&path, &snapshot)).await;
        match written {
            Ok(result) => result.inspect_err(|_| self.dirty.store(true, Ordering::SeqCst)),
            Err(join) => Err(LimitStoreError::Backend(format!(
                "writer task failed: {join}"
            ))),
        }
    }
}

/// The trait is implemented on the `Arc`, so a change can start its background write.
impl LimitStore for Arc<LocalLimitStore> {
    fn record<'a>(
        &'a self,
        asset: &'a str,
        at: u64,
        messages: u64,
        recipients: u64,
    ) -> BoxFuture<'a, Result<(), LimitStoreError>> {
        self.lock()
            .entry(asset.to_string())
            .or_default()
            .usage
            .record(at, messages, recipients);
        self.changed();
        Box::pin(async { Ok(()) })
    }

    fn usage<'a>(
        &'a self,
        asset: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<Usage, LimitStoreError>> {
        let mut usage = self
            .lock()
            .get(asset)
            .map(|state| state.usage.clone())
            .unwrap_or_default();
        usage.prune(now);
        Box::pin(async move { Ok(usage) })
    }

    fn set_over_limit<'a>(
        &'a self,
        asset: &'a str,
        mark: OverLimit,
    ) -> BoxFuture<'a, Result<(), LimitStoreError>> {
        self.lock().entry(asset.to_string()).or_default().over_limit = Some(mark);
        self.changed();
        Box::pin(async { Ok(()) })
    }

    fn over_limit<'a>(
        &'a self,
        asset: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<Option<OverLimit>, LimitStoreError>> {
        let mark = self
            .lock()
            .get(asset)
            .and_then(|state| state.over_limit.clone())
            .filter(|mark| mark.until > now);
        Box::pin(async move { Ok(mark) })
    }

    fn clear_over_limit<'a>(
        &'a self,
        asset: &'a str,
    ) -> BoxFuture<'a, Result<(), LimitStoreError>> {
        if let Some(state) = self.lock().get_mut(asset) {
            state.over_limit = None;
        }
        self.changed();
        Box::pin(async { Ok(()) })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), LimitStoreError>> {
        Box::pin(self.write_if_dirty())
    }

    fn backend(&self) -> &'static str {
        "local"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    #[tokio::test]
    async fn counters_and_marks_survive_a_new_store_on_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.json");
        let store = LocalLimitStore::open(path.clone())
            .map_err(|(_, e)| e)
            .unwrap();
        let now = super::super::unix_now();
        store.record("support", now, 1, 4).await.unwrap();
        store.record("support", now, 1, 1).await.unwrap();
        let mark = OverLimit {
            until: now + 3600,
            since: now,
            reason: "550 5.4.5 Daily user sending limit exceeded".into(),
        };
        store.set_over_limit("sales", mark.clone()).await.unwrap();
        store.flush().await.unwrap();

        let again = LocalLimitStore::open(path.clone())
            .map_err(|(_, e)| e)
            .unwrap();
        let totals = again.usage("support", now).await.unwrap().totals(now);
        assert_eq!((totals.messages_day, totals.recipients_day), (2, 5));
        assert_eq!(again.over_limit("sales", now).await.unwrap(), Some(mark));
        // The mark ends by itself.
        assert_eq!(again.over_limit("sales", now + 3600).await.unwrap(), None);
        again.clear_over_limit("sales").await.unwrap();
        assert_eq!(again.over_limit("sales", now).await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_unreadable_file_is_reported_and_the_store_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.json");
        std::fs::write(&path, "{ not json").unwrap();
        let (store, err) = match LocalLimitStore::open(path) {
            Ok(_) => panic!("a broken file was accepted"),
            Err(found) => found,
        };
        assert!(matches!(err, LimitStoreError::Format { .. }), "{err}");
        assert!(store.usage("a", T0).await.unwrap().day.is_empty());
    }

    #[tokio::test]
    async fn in_memory_store_counts_without_a_file() {
        let store = LocalLimitStore::in_memory();
        store.record("a", T0, 1, 2).await.unwrap();
        store.flush().await.unwrap();
        assert_eq!(
            store
                .usage("a", T0)
                .await
                .unwrap()
                .totals(T0)
                .recipients_day,
            2
        );
        assert_eq!(store.backend(), "local");
    }
}
