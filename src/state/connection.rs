//! The connection to Redis and its health: one multiplexed connection per relay process
//! (redis-rs' `ConnectionManager`, which reconnects by itself), every command bounded by a
//! timeout, and the up/down transitions logged once each.
//!
//! The manager is created lazily, so a relay starts while Redis is down and joins it when
//! it comes up, without a restart. A failed command marks the backend down; the next
//! command that succeeds marks it up again.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use redis::aio::ConnectionManager;
use redis::{Client, ConnectionInfo, IntoConnectionInfo};

use crate::config::RedisSettings;
use crate::credentials::secret::redact;
use crate::credentials::store::StoreKey;

/// How long one command may take before the backend counts as down. Short: a session
/// waits for it, and the fallback (local state) is always at hand.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a (re)connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// While Redis is down, commands fail at once instead of each waiting for a reconnection
/// attempt; one command per this interval tries for real (so recovery is noticed).
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// A Redis failure, already scrubbed of the password.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the shared state on Redis ({url}) is unavailable: {reason}")]
pub struct StateError {
    pub url: String,
    pub reason: String,
}

/// Why the backend is down, and the fallbacks taken since (each logged once).
#[derive(Debug, Clone, Default)]
pub struct Outage {
    pub since: Option<SystemTime>,
    pub reason: String,
    pub fallbacks: BTreeSet<&'static str>,
    /// Until when commands fail without trying (see [`RETRY_INTERVAL`]).
    next_try: Option<Instant>,
}

/// What `/readyz`, the console and `check` show about the backend.
#[derive(Debug, Clone)]
pub struct BackendHealth {
    pub url: String,
    /// `None` when up.
    pub down: Option<Outage>,
}

pub struct RedisState {
    pub(crate) settings: RedisSettings,
    pub(crate) key: Option<StoreKey>,
    manager: ConnectionManager,
    outage: Mutex<Option<Outage>>,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState")
            .field("url", &self.settings.display_url())
            .finish()
    }
}

impl RedisState {
    /// Prepares the connection (nothing is sent until the first command). Fails only for
    /// settings the client refuses (an unreadable CA file).
    pub fn new(settings: &RedisSettings, key: Option<StoreKey>) -> Result<RedisState, StateError> {
        let fail = |reason: String| StateError {
            url: settings.display_url(),
            reason: scrub(settings, &reason),
        };
        let info = connection_info(settings).map_err(|err| fail(err.to_string()))?;
        let client = match (&settings.ca_file, settings.tls) {
            (Some(ca), true) => {
                let pem = std::fs::read(ca)
                    .map_err(|err| fail(format!("cannot read {}: {err}", ca.display())))?;
                Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            _ => Client::open(info),
        }
        .map_err(|err| fail(err.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            // Retries happen at the next command: a session must not wait for them.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|err| fail(err.to_string()))?;
        Ok(RedisState {
            settings: settings.clone(),
            key,
            manager,
            outage: Mutex::new(None),
        })
    }

    /// `prefix` + `name`: every key goes through here (see the table in `state/mod.rs`).
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.settings.prefix)
    }

    pub fn display_url(&self) -> String {
        self.settings.display_url()
    }

    /// Whether these settings reach the same Redis the same way (a reload keeps it).
    pub fn same_place(&self, settings: &RedisSettings, key: Option<&StoreKey>) -> bool {
        let same_key = match (&self.key, key) {
            (None, None) => true,
            (Some(a), Some(b)) => a.same_key(b),
            _ => false,
        };
        let ours = &self.settings;
        same_key
            && ours.display_url() == settings.display_url()
            && ours.username == settings.username
            && ours.password == settings.password
            && ours.ca_file == settings.ca_file
            && ours.prefix == settings.prefix
    }

    /// Runs one command (or script invocation) with the timeout, tracking health.
    pub async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StateError> {
        self.may_try()?;
        let mut connection = self.manager.clone();
        let result = tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<T>(&mut connection))
            .await
            .map_err(|_| "no answer in time".to_string())
            .and_then(|result| result.map_err(|err| err.to_string()));
        self.settled(result)
    }

    /// Invokes a Lua script (EVALSHA, loading it on NOSCRIPT) with the timeout.
    pub async fn script<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<T, StateError> {
        self.may_try()?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let mut connection = self.manager.clone();
        let result = tokio::time::timeout(
            COMMAND_TIMEOUT,
            invocation.invoke_async::<T>(&mut connection),
        )
        .await
        .map_err(|_| "no answer in time".to_string())
        .and_then(|result| result.map_err(|err| err.to_string()));
        self.settled(result)
    }

    /// Fails at once while Redis is known to be down, except for one try per interval.
    fn may_try(&self) -> Result<(), StateError> {
        let mut outage = self
            .outage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(outage) = outage.as_mut().filter(|o| o.since.is_some()) else {
            return Ok(());
        };
        let now = Instant::now();
        if outage.next_try.is_some_and(|next| now < next) {
            return Err(StateError {
                url: self.display_url(),
                reason: outage.reason.clone(),
            });
        }
        outage.next_try = Some(now + RETRY_INTERVAL);
        Ok(())
    }

    fn settled<T>(&self, result: Result<T, String>) -> Result<T, StateError> {
        let mut outage = self
            .outage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match result {
            Ok(value) => {
                if let Some(past) = outage.take() {
                    tracing::info!(
                        url = %self.display_url(),
                        fallbacks = ?past.fallbacks,
                        "shared state on Redis is reachable again; this replica rejoined it"
                    );
                }
                Ok(value)
            }
            Err(reason) => {
                let reason = scrub(&self.settings, &reason);
                if outage.as_ref().is_none_or(|o| o.since.is_none()) {
                    let fallbacks = outage.take().map(|o| o.fallbacks).unwrap_or_default();
                    tracing::warn!(
                        url = %self.display_url(),
                        %reason,
                        "shared state on Redis is unreachable; falling back to this replica's memory (cached access tokens until they expire, local counters and lockouts); refreshes that need the shared lock are answered 454"
                    );
                    *outage = Some(Outage {
                        since: Some(SystemTime::now()),
                        reason: reason.clone(),
                        fallbacks,
                        next_try: None,
                    });
                }
                if let Some(outage) = outage.as_mut() {
                    outage.next_try = Some(Instant::now() + RETRY_INTERVAL);
                }
                Err(StateError {
                    url: self.display_url(),
                    reason,
                })
            }
        }
    }

    /// Records that `what` fell back to local state; logged once per outage.
    pub fn fallback(&self, what: &'static str) {
        let mut outage = self
            .outage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let outage = outage.get_or_insert_with(Outage::default);
        if outage.fallbacks.insert(what) {
            tracing::warn!(url = %self.display_url(), fallback = what, "Redis unavailable: using this replica's local state");
        }
    }

    /// The health as of the last command.
    pub fn health(&self) -> BackendHealth {
        BackendHealth {
            url: self.display_url(),
            down: self
                .outage
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        }
    }

    /// A PING, for `check` and for a replica that has been idle through an outage.
    pub async fn ping(&self) -> Result<(), StateError> {
        self.run::<String>(&redis::cmd("PING")).await.map(|_| ())
    }
}

fn connection_info(settings: &RedisSettings) -> redis::RedisResult<ConnectionInfo> {
    // Built from parts: the URL with the password in it never exists here.
    let scheme = if settings.tls { "rediss" } else { "redis" };
    let host = if settings.host.contains(':') {
        format!("[{}]", settings.host)
    } else {
        settings.host.clone()
    };
    let info =
        format!("{scheme}://{host}:{}/{}", settings.port, settings.db).into_connection_info()?;
    let mut redis_settings = info.redis_settings().clone();
    if let Some(username) = &settings.username {
        redis_settings = redis_settings.set_username(username);
    }
    if let Some(password) = &settings.password {
        redis_settings = redis_settings.set_password(password.expose());
    }
    Ok(info.set_redis_settings(redis_settings))
}

/// Error text from the client with the password (and user name) taken out, whatever the
/// client chose to repeat.
fn scrub(settings: &RedisSettings, text: &str) -> String {
    let password = settings.password.as_ref().map_or("", |p| p.expose());
    redact(text, &[password])
}
