//! `upstream_connections` across the replicas (issue 16): a mailbox's cap (Exchange Online:
//! 3 SMTP sessions) is the provider's, not one replica's. Each open upstream connection
//! holds a lease in the sorted set `slots:<asset>` (member: a random id, score: when the
//! lease ends, in Redis's own clock). Taking one drops the ended leases and adds ours only
//! while fewer than the cap remain; a task renews it while the connection lives, and
//! dropping the lease removes it. A replica that dies leaves leases that end within
//! [`LEASE`] by themselves.

use std::sync::Arc;
use std::time::Duration;

use super::connection::{RedisState, StateError};

/// How long a lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often a held lease is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// KEYS[1] the set; ARGV: cap, lease ms, id. 1 when taken.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
  return 1
end
return 0
";

/// KEYS[1] the set; ARGV: lease ms, id. 1 when the lease was still held and is renewed.
const RENEW: &str = r"
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
return 1
";

/// One upstream connection's place under the asset's shared cap; given back when dropped.
pub struct Lease {
    state: Arc<RedisState>,
    key: String,
    id: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("key", &self.key).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
        let (state, key, id) = (self.state.clone(), self.key.clone(), self.id.clone());
        // Best effort: a lease not removed ends by itself within LEASE.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = state.run::<u64>(redis::cmd("ZREM").arg(key).arg(id)).await;
            });
        }
    }
}

fn lease_ms() -> String {
    LEASE.as_millis().to_string()
}

/// Takes a place for one more upstream connection of `asset` under `cap` across the
/// replicas: `Ok(None)` when all are in use.
pub async fn take_lease(
    state: &Arc<RedisState>,
    asset: &str,
    cap: usize,
) -> Result<Option<Lease>, StateError> {
    let key = state.key(&format!("slots:{asset}"));
    let id = random_id(state)?;
    let cap_text = cap.to_string();
    let ms = lease_ms();
    let taken: u8 = state
        .script(
            &redis::Script::new(TAKE),
            std::slice::from_ref(&key),
            &[cap_text.as_bytes(), ms.as_bytes(), id.as_bytes()],
        )
        .await?;
    if taken != 1 {
        return Ok(None);
    }
    let renewal = tokio::spawn(renew(state.clone(), key.clone(), id.clone()));
    Ok(Some(Lease {
        state: state.clone(),
        key,
        id,
        renewal,
    }))
}

async fn renew(state: Arc<RedisState>, key: String, id: String) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let ms = lease_ms();
        let renewed = state
            .script::<u8>(
                &redis::Script::new(RENEW),
                std::slice::from_ref(&key),
                &[ms.as_bytes(), id.as_bytes()],
            )
            .await;
        if let Ok(0) = renewed {
            // Ended meanwhile (Redis restarted without the set, or a long outage): the
            // connection carries on; the cap counts it again from its next one.
            tracing::debug!(key = %key, "upstream connection lease had ended");
            return;
        }
    }
}

/// A random lease id (12 bytes, hex).
fn random_id(state: &RedisState) -> Result<String, StateError> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 12];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StateError {
            url: state.display_url(),
            reason: "the system random number generator failed".to_string(),
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
