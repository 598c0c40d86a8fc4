//! `upstream_connections`: how many upstream SMTP sessions one asset may have open at
//! once (Exchange Online refuses a fourth with `432 4.3.2 Concurrent connections limit
//! exceeded`). A semaphore per asset; each open connection holds a [`Slot`] for as long as
//! it lives (in a session, kept between messages, or in the pool), and gives it back when
//! it is closed. With replicas on Redis the slot also holds a lease under the asset's cap
//! across all replicas (`crate::state::slots`); while Redis is down, this replica's own
//! count is all there is (logged once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::state::slots::{take_lease, Lease};
use crate::state::RedisState;

/// One open upstream connection's place under its asset's cap.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _lease: Option<Lease>,
}

#[derive(Default)]
pub struct Slots {
    /// Per asset: the cap the semaphore was made for, and the semaphore.
    by_asset: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
    /// The replicas' shared state, when `[state] backend = "redis"`.
    shared: Option<Arc<RedisState>>,
}

impl Slots {
    /// Slots whose caps hold across the replicas sharing `shared`.
    pub fn shared(shared: Option<Arc<RedisState>>) -> Slots {
        Slots {
            by_asset: Mutex::default(),
            shared,
        }
    }

    /// The asset's semaphore for `cap` connections; None when `cap` is 0 (no limit). A
    /// changed cap (after a reload) gets a new semaphore; connections holding permits of
    /// the old one still give them back to it.
    pub fn semaphore(&self, asset: &str, cap: usize) -> Option<Arc<Semaphore>> {
        if cap == 0 {
            return None;
        }
        let mut map = self
            .by_asset
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = map
            .entry(asset.to_string())
            .or_insert_with(|| (cap, Arc::new(Semaphore::new(cap))));
        if entry.0 != cap {
            *entry = (cap, Arc::new(Semaphore::new(cap)));
        }
        Some(entry.1.clone())
    }

    /// A slot if one is free now: `Some(None)` when the asset has no cap, `None` when all
    /// its slots are in use (here, or with the replicas, on any of them).
    pub async fn try_take(&self, asset: &str, cap: usize) -> Option<Option<Slot>> {
        let semaphore = match self.semaphore(asset, cap) {
            None => return Some(None),
            Some(semaphore) => semaphore,
        };
        let permit = semaphore.try_acquire_owned().ok()?;
        let lease = match &self.shared {
            None => None,
            Some(shared) => match take_lease(shared, asset, cap).await {
                Ok(Some(lease)) => Some(lease),
                Ok(None) => return None,
                Err(_) => {
                    shared.fallback("upstream_connections: counted by this replica alone");
                    None
                }
            },
        };
        Some(Some(Slot {
            _permit: permit,
            _lease: lease,
        }))
    }

    /// Connections of the asset open now on this replica (0 when it has no cap).
    pub fn in_use(&self, asset: &str, cap: usize) -> usize {
        self.semaphore(asset, cap)
            .map_or(0, |s| cap.saturating_sub(s.available_permits()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_capped_and_come_back_when_dropped() {
        let slots = Slots::default();
        assert!(matches!(slots.try_take("a", 0).await, Some(None)));
        let first = slots.try_take("a", 2).await;
        let second = slots.try_take("a", 2).await;
        assert!(matches!(first, Some(Some(_))));
        assert!(matches!(second, Some(Some(_))));
        assert!(slots.try_take("a", 2).await.is_none());
        assert_eq!(slots.in_use("a", 2), 2);
        drop(first);
        assert!(slots.try_take("a", 2).await.is_some());
    }
}
