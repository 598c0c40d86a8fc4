//! Warm, authenticated upstream connections kept between client sessions.
//!
//! Printers and cron jobs send one message per connection; without a pool each of them
//! would pay TCP + TLS + XOAUTH2 towards Gmail. A connection goes back to the pool only
//! from a known-clean state (its last transaction ended with a definite reply), is used by
//! one transaction at a time, and is checked with RSET before reuse; one that fails the
//! check, sat idle too long, or whose access token is about to expire is dropped and a new
//! one is opened instead.
//!
//! The same rule ([`reusable`], [`refuses_authentication`]) applies to the connection a
//! session keeps for its own next message: a connection is a connection, whoever kept it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::PoolSettings;
use crate::smtp::reply::Reply;
use crate::upstream::Upstream;

/// What the pool keeps: anything that knows when its access token expires (an SMTP
/// connection, or a transport link around one).
pub trait Reusable {
    fn token_expires_at(&self) -> Option<Instant>;
}

impl Reusable for Upstream {
    fn token_expires_at(&self) -> Option<Instant> {
        Upstream::token_expires_at(self)
    }
}

/// A pooled connection is not handed out when its token has less than this left: the
/// provider may end an authenticated session when its token expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

struct Idle<C> {
    upstream: C,
    parked_at: Instant,
}

pub struct UpstreamPool<C = Upstream> {
    settings: PoolSettings,
    idle: Mutex<HashMap<String, Vec<Idle<C>>>>,
}

impl<C: Reusable> UpstreamPool<C> {
    pub fn new(settings: PoolSettings) -> Self {
        UpstreamPool {
            settings,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// The freshest usable idle connection for `asset`, if any. The caller still checks
    /// it (RSET) before trusting it.
    pub fn take(&self, asset: &str) -> Option<C> {
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

    /// Whether a connection idle since `idle_since` may carry another transaction, by the
    /// pool's rule; for the connection a session keeps between its own messages.
    pub fn is_reusable(&self, upstream: &C, idle_since: Instant) -> bool {
        reusable(
            upstream,
            idle_since,
            self.settings.idle_timeout,
            Instant::now(),
        )
    }

    /// Keeps a connection whose last transaction ended cleanly, idle since `idle_since`
    /// (a session may have kept it for a while before giving it up). Returns it back when
    /// the pool does not want it (disabled, full, idle too long, token expiring), so the
    /// caller can QUIT it.
    pub fn put(&self, asset: &str, upstream: C, idle_since: Instant) -> Option<C> {
        if !self.settings.enabled || self.settings.size == 0 {
            return Some(upstream);
        }
        let now = Instant::now();
        let entry = Idle {
            upstream,
            parked_at: idle_since,
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

    fn usable(&self, entry: &Idle<C>, now: Instant) -> bool {
        reusable(
            &entry.upstream,
            entry.parked_at,
            self.settings.idle_timeout,
            now,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Idle<C>>>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The one usability rule for a kept connection (pooled, or kept by a session for its next
/// message): idle for less than `idle_timeout`, and its access token valid for more than
/// [`TOKEN_MARGIN`] (a provider may end an authenticated session when its token expires;
/// a connection whose token expiry is unknown is not reused).
pub fn reusable(
    upstream: &impl Reusable,
    idle_since: Instant,
    idle_timeout: Duration,
    now: Instant,
) -> bool {
    usable_times(upstream.token_expires_at(), idle_since, idle_timeout, now)
}

fn usable_times(
    token_expires_at: Option<Instant>,
    idle_since: Instant,
    idle_timeout: Duration,
    now: Instant,
) -> bool {
    let fresh = now.saturating_duration_since(idle_since) < idle_timeout;
    let token_ok = token_expires_at
        .is_some_and(|expires| now.checked_add(TOKEN_MARGIN).is_some_and(|at| at < expires));
    fresh && token_ok
}

/// Whether the upstream's refusal of MAIL on a reused connection says the connection's
/// authentication is gone (530, 535, or any x.7.x enhanced code: expired or revoked token,
/// a session the provider ended). Nothing was committed at MAIL, so the caller drops the
/// connection and tries once on a freshly authenticated one instead of relaying the
/// refusal; a policy refusal (5.7.1) just comes back again from the fresh connection.
pub fn refuses_authentication(reply: &Reply) -> bool {
    !reply.is_positive()
        && (matches!(reply.code, 530 | 535) || reply.enhanced.is_some_and(|code| code.subject == 7))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::EnhancedCode;

    #[test]
    fn usability_needs_a_fresh_connection_and_a_token_with_time_left() {
        let parked = Instant::now();
        let idle = Duration::from_secs(60);
        let secs = Duration::from_secs;
        let long = Some(parked + secs(3600));
        assert!(usable_times(long, parked, idle, parked));
        assert!(usable_times(long, parked, idle, parked + secs(59)));
        assert!(!usable_times(long, parked, idle, parked + secs(60)));
        assert!(!usable_times(Some(parked + secs(60)), parked, idle, parked));
        assert!(usable_times(Some(parked + secs(61)), parked, idle, parked));
        assert!(!usable_times(
            Some(parked + secs(100)),
            parked,
            idle,
            parked + secs(50)
        ));
        assert!(!usable_times(None, parked, idle, parked));
        // Parked "after" now (clocks read in another order) is simply fresh.
        assert!(usable_times(long, parked + secs(5), idle, parked));
    }

    #[test]
    fn authentication_class_refusals_are_recognised() {
        let reply = |code: u16, enhanced: Option<(u8, u16, u16)>| {
            Reply::new(
                code,
                enhanced.map(|(c, s, d)| EnhancedCode::new(c, s, d)),
                "x",
            )
        };
        assert!(refuses_authentication(&reply(530, Some((5, 7, 0)))));
        assert!(refuses_authentication(&reply(530, None)));
        assert!(refuses_authentication(&reply(535, None)));
        assert!(refuses_authentication(&reply(454, Some((4, 7, 0)))));
        assert!(refuses_authentication(&reply(550, Some((5, 7, 1)))));
        assert!(!refuses_authentication(&reply(250, Some((2, 1, 0)))));
        assert!(!refuses_authentication(&reply(550, Some((5, 1, 0)))));
        assert!(!refuses_authentication(&reply(451, Some((4, 4, 2)))));
        assert!(!refuses_authentication(&reply(552, None)));
    }
}
