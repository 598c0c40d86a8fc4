//! Warm, authenticated upstream connections kept between client sessions.
//!
//! Printers and cron jobs send one message per connection; without a pool each of them
//! would pay TCP + TLS + XOAUTH2 towards Gmail. A connection goes back to the pool only
//! from a known-clean state (its last transaction ended with a definite reply), is used by
//! one transaction at a time, and is checked with RSET before reuse; one that fails the
//! check, sat idle too long, or whose access token is about to expire is dropped and a new
//! one is opened instead.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::upstream::Upstream;

/// A pooled connection is not handed out when its token has less than this left: the
/// provider may end an authenticated session when its token expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub enabled: bool,
    /// Idle connections kept per asset.
    pub size: usize,
    /// Below the provider's own idle timeout, so we close first.
    pub idle_timeout: Duration,
}

struct Idle {
    upstream: Upstream,
    parked_at: Instant,
}

pub struct UpstreamPool {
    settings: PoolSettings,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl UpstreamPool {
    pub fn new(settings: PoolSettings) -> Self {
        UpstreamPool {
            settings,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// The freshest usable idle connection for `asset`, if any. The caller still checks
    /// it (RSET) before trusting it.
    pub fn take(&self, asset: &str) -> Option<Upstream> {
        let now = Instant::now();
        let mut idle = self.lock();
        let connections = idle.get_mut(asset)?;
        while let Some(entry) = connections.pop() {
            if self.usable(&entry, now) {
                return Some(entry.upstream);
            }
        }
        None
    }

    /// Keeps a connection whose last transaction ended cleanly. Returns it back when the
    /// pool does not want it (disabled, full, token expiring), so the caller can QUIT it.
    pub fn put(&self, asset: &str, upstream: Upstream) -> Option<Upstream> {
        if !self.settings.enabled || self.settings.size == 0 {
            return Some(upstream);
        }
        let now = Instant::now();
        let entry = Idle {
            upstream,
            parked_at: now,
        };
        if !self.usable(&entry, now) {
            return Some(entry.upstream);
        }
        let mut idle = self.lock();
        let connections = idle.entry(asset.to_string()).or_default();
        connections.retain(|entry| self.usable(entry, now));
        if connections.len() >= self.settings.size {
            return Some(entry.upstream);
        }
        connections.push(entry);
        None
    }

    pub fn idle_count(&self, asset: &str) -> usize {
        self.lock().get(asset).map_or(0, Vec::len)
    }

    fn usable(&self, entry: &Idle, now: Instant) -> bool {
        let fresh = now.duration_since(entry.parked_at) < self.settings.idle_timeout;
        let token_ok = entry
            .upstream
            .token_expires_at()
            .is_some_and(|expires| now + TOKEN_MARGIN < expires);
        fresh && token_ok
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Idle>>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
