//! The delivery worker: one per `serve`. Every second (or at once when a message arrives)
//! it repairs what crashes left, reads the queue, sets corrupt entries aside, updates the
//! spool's metrics and starts the due deliveries, oldest first, at most
//! `[spool] concurrency` per asset. A new grant in the token store (`authorize`, the
//! console) makes every entry that waits for credentials due at once. On shutdown it
//! starts nothing new and lets the deliveries in flight finish within
//! `shutdown_grace_secs`; the rest waits in the spool for the next start.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::deliver::{attempt, Ended};
use super::entry::{now_ms, Entry};
use super::store::{Dirs, Place, ReadError};
use super::Spool;
use crate::credentials::store::TokenStore;
use crate::server::RelayHandle;

/// How often the queue is read without being woken (CLI changes, retry times).
const SCAN_EVERY: Duration = Duration::from_secs(1);

/// What one scan found.
struct Scan {
    queue: Vec<Entry>,
    corrupt: Vec<(String, String)>,
    bytes: u64,
}

fn scan(dirs: &Dirs) -> std::io::Result<Scan> {
    let mut corrupt: Vec<(String, String)> = dirs
        .repair()?
        .into_iter()
        .map(|id| (id, "its message file is missing".to_string()))
        .collect();
    let mut queue = Vec::new();
    for id in dirs.ids(Place::Queue)? {
        match dirs.read(Place::Queue, &id) {
            Ok(entry) => queue.push(entry),
            Err(ReadError::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(ReadError::Io(err)) => return Err(err),
            Err(ReadError::Corrupt(err)) => {
                // Never silently dropped: kept in corrupt/ for the operator.
                dirs.set_aside(Place::Queue, &id)?;
                corrupt.push((id, err.to_string()));
            }
        }
    }
    Ok(Scan {
        queue,
        corrupt,
        bytes: dirs.bytes_used()?,
    })
}

/// Runs until `shutdown`: idle while the config has no spool (a reload may add one), then
/// delivering from it; at shutdown waits (at most the grace period) for deliveries in
/// flight.
pub async fn run(relays: RelayHandle, shutdown: CancellationToken) {
    let spool = loop {
        if let Some(spool) = relays.current().spool.clone() {
            break spool;
        }
        tokio::select! {
            _ = tokio::time::sleep(SCAN_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    };
    deliver_from(relays, spool, shutdown).await;
}

async fn deliver_from(relays: RelayHandle, spool: Arc<Spool>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut slots: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let mut store_seen = None;
    let mut first = true;
    tracing::info!(dir = %spool.dirs.root.display(), "spool worker started");
    loop {
        let relay = relays.current();
        // A new grant (authorize, the console) changes the store file, or with
        // `[state] backend = "redis"` an asset's entry version there.
        let fingerprint = grants_fingerprint(&relay).await;
        let new_grant = !first && fingerprint != store_seen;
        store_seen = fingerprint;
        first = false;
        let dirs = spool.dirs.clone();
        let scanned = tokio::task::spawn_blocking(move || scan(&dirs))
            .await
            .unwrap_or_else(|err| Err(std::io::Error::other(err.to_string())));
        match scanned {
            Ok(found) => {
                spool.set_used(found.bytes);
                let metrics = &relay.metrics.spool;
                for (id, problem) in &found.corrupt {
                    tracing::error!(spool_id = %id, %problem, "corrupt spool entry moved to corrupt/; it is not delivered");
                }
                let now = now_ms();
                metrics.messages.set(found.queue.len() as i64);
                metrics.bytes.set(found.bytes as i64);
                metrics.nearly_full.set(i64::from(spool.nearly_full()));
                let oldest = found.queue.iter().map(|e| e.arrived_ms).min();
                metrics
                    .oldest_age_seconds
                    .set(oldest.map_or(0, |at| now.saturating_sub(at) / 1000) as i64);
                if !shutdown.is_cancelled() {
                    let mut due: Vec<&Entry> = found
                        .queue
                        .iter()
                        .filter(|e| {
                            e.next_try_ms <= now || (new_grant && e.waiting_for_credentials)
                        })
                        .collect();
                    due.sort_by_key(|e| (e.arrived_ms, e.id.clone()));
                    for entry in due {
                        if lock(&in_flight).contains(&entry.id) {
                            continue;
                        }
                        let slot = slots
                            .entry(entry.asset.clone())
                            .or_insert_with(|| {
                                Arc::new(Semaphore::new(relay.config.spool.concurrency))
                            })
                            .clone();
                        let id = entry.id.clone();
                        lock(&in_flight).insert(id.clone());
                        let force = new_grant && entry.waiting_for_credentials;
                        if force && entry.next_try_ms > now {
                            tracing::info!(spool_id = %id, asset = %entry.asset, "new grant stored: trying the spooled message now");
                        }
                        let task_relay = relay.clone();
                        let task_spool = spool.clone();
                        let task_in_flight = in_flight.clone();
                        let task_shutdown = shutdown.clone();
                        // Every due entry gets its task now; the asset's semaphore (fair,
                        // so oldest first) lets `concurrency` of them deliver at a time.
                        tracker.spawn(async move {
                            let permit = tokio::select! {
                                permit = slot.acquire_owned() => permit.ok(),
                                _ = task_shutdown.cancelled() => None,
                            };
                            if permit.is_some() && !task_shutdown.is_cancelled() {
                                let ended = attempt(task_relay, task_spool, id.clone(), force).await;
                                if ended == Ended::Skipped {
                                    tracing::debug!(spool_id = %id, "spool entry skipped (locked, gone or not due)");
                                }
                            }
                            lock(&task_in_flight).remove(&id);
                            drop(permit);
                        });
                    }
                }
            }
            Err(err) => {
                tracing::error!(dir = %spool.dirs.root.display(), error = %err, "cannot read the spool directory");
            }
        }
        let grace = relay.config.timeouts.shutdown_grace;
        drop(relay);
        if shutdown.is_cancelled() {
            tracker.close();
            if !tracker.is_empty() {
                tracing::info!(
                    deliveries = tracker.len(),
                    grace_secs = grace.as_secs(),
                    "waiting for spooled deliveries in flight"
                );
            }
            if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                tracing::warn!(deliveries = tracker.len(), "shutdown grace period over; the remaining spooled messages are tried at the next start");
            }
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(SCAN_EVERY) => {}
            _ = spool.wake.notified() => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What changes when a grant is stored: the token store file's fingerprint, or with the
/// Redis backend the versions of the assets' entries there (`None` while Redis is
/// unreachable; its return then counts as a change, which only tries the messages
/// waiting for credentials once more).
async fn grants_fingerprint(relay: &crate::relay::Relay) -> Option<String> {
    match &relay.shared {
        None => TokenStore::new(
            relay.config.tokens.path.clone(),
            relay.config.tokens.key.clone(),
        )
        .fingerprint()
        .map(|file| format!("{file:?}")),
        Some(shared) => {
            let tokens = shared.tokens();
            let mut versions = String::new();
            for asset in &relay.config.assets {
                let version = tokens.version(&asset.name).await.ok()?;
                versions.push_str(&format!("{}={:?};", asset.name, version));
            }
            Some(versions)
        }
    }
}
