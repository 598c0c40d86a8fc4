//! `upstream_connections`: how many upstream SMTP sessions one asset may have open at
//! once (Exchange Online refuses a fourth with `432 4.3.2 Concurrent connections limit
//! exceeded`). A semaphore per asset; each open connection holds a permit for as long as
//! it lives (in a session, kept between messages, or in the pool), and gives it back when
//! it is closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Default)]
pub struct Slots {
    /// Per asset: the cap the semaphore was made for, and the semaphore.
    by_asset: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
}

impl Slots {
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

    /// A permit if one is free now.
    pub fn try_take(&self, asset: &str, cap: usize) -> Option<Option<OwnedSemaphorePermit>> {
        match self.semaphore(asset, cap) {
            None => Some(None),
            Some(semaphore) => semaphore.try_acquire_owned().ok().map(Some),
        }
    }

    /// Connections of the asset open now (0 when it has no cap).
    pub fn in_use(&self, asset: &str, cap: usize) -> usize {
        self.semaphore(asset, cap)
            .map_or(0, |s| cap.saturating_sub(s.available_permits()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_capped_and_come_back_when_dropped() {
        let slots = Slots::default();
        assert!(matches!(slots.try_take("a", 0), Some(None)));
        let first = slots.try_take("a", 2);
        let second = slots.try_take("a", 2);
        assert!(matches!(first, Some(Some(_))));
        assert!(matches!(second, Some(Some(_))));
        assert!(slots.try_take("a", 2).is_none());
        assert_eq!(slots.in_use("a", 2), 2);
        drop(first);
        assert!(slots.try_take("a", 2).is_some());
    }
}
