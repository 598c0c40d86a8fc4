//! State that several replicas share (`[state] backend = "redis"`, issue 16 §2).
//!
//! With the default `backend = "local"` none of this runs: the token store is the file
//! (`credentials::store`) and caches, counters and lockouts live in each process. With
//! Redis, every key below starts with `[state] prefix` (default `smtp-oauth-relay:`):
//!
//! | key | type | TTL | written by | file |
//! |---|---|---|---|---|
//! | `tokens:<asset>` | hash `doc`, `fp`, `ver` | none | `authorize`, console, rotations (CAS on `fp`) | [`tokens`] |
//! | `access:<asset>` | string (sealed with the store key if any) | the token's remaining lifetime | the lock holder, fenced | [`flight`] |
//! | `lock:<asset>` | string, random value | `2 × token_request_secs + 5 s` | `SET NX PX`; compare-and-delete | [`flight`] |
//! | `login:fails:{addr,pair}:<id>` | counter | `auth_lockout_secs` from the first failure | failed logins | [`lockouts`] |
//! | `login:lock:{addr,pair}:<id>` | string | `auth_lockout_secs` | the failure that reaches `auth_max_failures` | [`lockouts`] |
//! | `health:<asset>` | string: why the asset needs an operator | 24 h; deleted by a successful refresh | the refresh lock's holder | [`health`] |
//! | `limits:<asset>:day` | hash of minute buckets | 25 h after the last send | every delivered message | [`limits`] |
//! | `limits:<asset>:minute` | hash of second buckets | 2 min | every delivered message | [`limits`] |
//! | `limits:<asset>:over` | JSON mark | until the mark ends | a provider quota refusal | [`limits`] |
//! | `alert:<asset>:<event>` | string | `[alerts] interval_secs` | the replica that sends the alert | [`alerts`] |
//! | `slots:<asset>` | sorted set: lease id → end (ms) | 2 × the lease (60 s), renewed while held | each open upstream connection of an asset with `upstream_connections` | [`slots`] |
//!
//! Only `tokens:*` must survive a Redis restart (run Redis with AOF, see the README);
//! everything else is rebuilt within one token lifetime or one lockout.
//!
//! **Redis down.** Every operation has a short timeout ([`connection::COMMAND_TIMEOUT`]); a
//! failure marks the backend down (logged once), each fallback is logged once per outage
//! ([`RedisState::fallback`]) and `/readyz`, the console and `check` show it:
//! cached access tokens are used until they expire (never past), lockouts and counters
//! are this replica's own, and a refresh — which needs the lock — is refused, so the
//! client gets 454 and retries. Nothing is written to a local file meanwhile (it would
//! conflict with Redis later). The first command that succeeds again ends the outage.
//!
//! The spool stays per replica on purpose: exactly one replica must deliver each message,
//! and a spooled body is large and written once; see the README.

pub mod alerts;
pub mod connection;
pub mod flight;
pub mod health;
pub mod limits;
pub mod lockouts;
pub mod slots;
pub mod tokens;

use std::sync::Arc;

pub use self::connection::{BackendHealth, RedisState, StateError};
use crate::config::{Config, StateSettings};

/// The shared state of a relay: `None` with `backend = "local"`.
pub type Shared = Option<Arc<RedisState>>;

/// The shared state for `config`, reusing `previous` when a reload kept the settings (so
/// the connection and the outage record carry over).
pub fn for_config(
    config: &Config,
    previous: Option<&Arc<RedisState>>,
) -> Result<Shared, StateError> {
    match &config.state {
        StateSettings::Local => Ok(None),
        StateSettings::Redis(settings) => {
            if let Some(previous) = previous {
                if previous.same_place(settings, config.tokens.key.as_ref()) {
                    return Ok(Some(previous.clone()));
                }
            }
            RedisState::new(settings, config.tokens.key.clone()).map(|state| Some(Arc::new(state)))
        }
    }
}

/// Where sending counters live: Redis with `backend = "redis"` (nothing then goes to
/// the local `limits.json`, which would conflict later), else the local store.
pub fn limit_store(config: &Config, shared: &Shared) -> Arc<dyn crate::limits::LimitStore> {
    match shared {
        Some(shared) => Arc::new(limits::RedisLimitStore::new(shared.clone())),
        None => crate::limits::open_local_store(config),
    }
}

/// One line for `/readyz`, the console and `check`, after a PING (so a replica idle
/// through an outage notices the end of it here too).
pub async fn describe_health(shared: &RedisState) -> String {
    let _ = shared.ping().await;
    let health = shared.health();
    match health.down {
        None => format!("state redis {}: ok", health.url),
        Some(outage) => {
            let since = outage
                .since
                .and_then(|since| since.elapsed().ok())
                .map_or(String::new(), |ago| format!(" for {}s", ago.as_secs()));
            let fallbacks: Vec<&str> = outage.fallbacks.iter().copied().collect();
            format!(
                "state redis {}: unreachable{since} ({}); using this replica's local state{}",
                health.url,
                outage.reason,
                if fallbacks.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", fallbacks.join("; "))
                }
            )
        }
    }
}
