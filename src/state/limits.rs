//! Sending counters and "over the provider's limit" marks shared by the replicas: the
//! [`LimitStore`] of `[state] backend = "redis"` (the limits themselves are `crate::limits`).
//!
//! The buckets are the local store's (`limits::window`: one per minute for the rolling
//! day, one per second for the rolling minute), kept in two hashes per asset so every
//! replica adds into the same ones with `HINCRBY`:
//!
//! - `limits:<asset>:day`: fields `<bucket start>:m` / `:r` (messages, recipients);
//!   `EXPIRE` 25 h after the last send; buckets that left the window are deleted when a
//!   new bucket starts (at most once a minute per asset);
//! - `limits:<asset>:minute`: the same per second; `EXPIRE` 2 min;
//! - `limits:<asset>:over`: the mark as JSON, expiring when the mark ends.
//!
//! Redis down: counting and reading go to this replica's memory (logged once per
//! outage); what was counted there is not written back, so for the outage each replica
//! counts only its own sends.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::connection::RedisState;
use crate::limits::window::{DAY_BUCKET_SECS, DAY_SECS, MINUTE_BUCKET_SECS, MINUTE_SECS};
use crate::limits::{Bucket, LimitStore, LimitStoreError, LocalLimitStore, OverLimit, Usage};

/// Adds to both windows' buckets; on a new bucket, drops the fields older than the
/// window. ARGV: day bucket, minute bucket, messages, recipients, oldest live day bucket,
/// oldest live minute bucket.
const RECORD: &str = r"
local function add(key, bucket, messages, recipients, oldest, ttl)
  local m = redis.call('HINCRBY', key, bucket .. ':m', messages)
  redis.call('HINCRBY', key, bucket .. ':r', recipients)
  redis.call('EXPIRE', key, ttl)
  if m == tonumber(messages) then
    for _, field in ipairs(redis.call('HKEYS', key)) do
      local start = tonumber(string.match(field, '^(%d+):'))
      if start and start < tonumber(oldest) then redis.call('HDEL', key, field) end
    end
  end
end
add(KEYS[1], ARGV[1], ARGV[3], ARGV[4], ARGV[5], 90000)
add(KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[6], 120)
return 1
";

const FALLBACK: &str = "sending counters: this replica's only";

/// Counters and marks on Redis, with this replica's memory for outages.
pub struct RedisLimitStore {
    state: Arc<RedisState>,
    local: Arc<LocalLimitStore>,
}

impl RedisLimitStore {
    pub fn new(state: Arc<RedisState>) -> RedisLimitStore {
        RedisLimitStore {
            state,
            local: LocalLimitStore::in_memory(),
        }
    }

    fn keys(&self, asset: &str) -> [String; 3] {
        ["day", "minute", "over"].map(|part| self.state.key(&format!("limits:{asset}:{part}")))
    }
}

/// The start of the bucket of `width` seconds that `at` falls in.
fn bucket_start(at: u64, width: u64) -> u64 {
    at / width.max(1) * width.max(1)
}

fn buckets(fields: HashMap<String, u64>) -> Vec<Bucket> {
    let mut by_start: BTreeMap<u64, Bucket> = BTreeMap::new();
    for (field, value) in fields {
        let Some((start, kind)) = field.split_once(':') else {
            continue;
        };
        let Ok(start) = start.parse::<u64>() else {
            continue;
        };
        let bucket = by_start.entry(start).or_insert(Bucket {
            start,
            messages: 0,
            recipients: 0,
        });
        match kind {
            "m" => bucket.messages = value,
            "r" => bucket.recipients = value,
            _ => {}
        }
    }
    by_start.into_values().collect()
}

impl LimitStore for RedisLimitStore {
    fn record<'a>(
        &'a self,
        asset: &'a str,
        at: u64,
        messages: u64,
        recipients: u64,
    ) -> BoxFuture<'a, Result<(), LimitStoreError>> {
        Box::pin(async move {
            let [day, minute, _] = self.keys(asset);
            let args = [
                bucket_start(at, DAY_BUCKET_SECS),
                bucket_start(at, MINUTE_BUCKET_SECS),
                messages,
                recipients,
                at.saturating_sub(DAY_SECS + DAY_BUCKET_SECS),
                at.saturating_sub(MINUTE_SECS + MINUTE_BUCKET_SECS),
            ]
            .map(|n| n.to_string());
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            let recorded = self
                .state
                .script::<u8>(&redis::Script::new(RECORD), &[day, minute], &args)
                .await;
            if recorded.is_err() {
                self.state.fallback(FALLBACK);
                return self.local.record(asset, at, messages, recipients).await;
            }
            Ok(())
        })
    }

    fn usage<'a>(
        &'a self,
        asset: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<Usage, LimitStoreError>> {
        Box::pin(async move {
            let [day, minute, _] = self.keys(asset);
            let read = async {
                let day: HashMap<String, u64> =
                    self.state.run(redis::cmd("HGETALL").arg(day)).await?;
                let minute: HashMap<String, u64> =
                    self.state.run(redis::cmd("HGETALL").arg(minute)).await?;
                Ok::<_, super::StateError>((day, minute))
            };
            match read.await {
                Ok((day, minute)) => {
                    let mut usage = Usage {
                        day: buckets(day),
                        minute: buckets(minute),
                    };
                    usage.prune(now);
                    Ok(usage)
                }
                Err(_) => {
                    self.state.fallback(FALLBACK);
                    self.local.usage(asset, now).await
                }
            }
        })
    }

    fn set_over_limit<'a>(
        &'a self,
        asset: &'a str,
        mark: OverLimit,
    ) -> BoxFuture<'a, Result<(), LimitStoreError>> {
        Box::pin(async move {
            let [_, _, over] = self.keys(asset);
            let json = serde_json::to_string(&mark)
                .map_err(|err| LimitStoreError::Backend(err.to_string()))?;
            let until = mark.until.max(crate::limits::unix_now() + 1);
            let set = self
                .state
                .run::<()>(redis::cmd("SET").arg(over).arg(json).arg("EXAT").arg(until))
                .await;
            if set.is_err() {
                self.state.fallback(FALLBACK);
                return self.local.set_over_limit(asset, mark).await;
            }
            Ok(())
        })
    }

    fn over_limit<'a>(
        &'a self,
        asset: &'a str,
        now: u64,
    ) -> BoxFuture<'a, Result<Option<OverLimit>, LimitStoreError>> {
        Box::pin(async move {
            let [_, _, over] = self.keys(asset);
            match self
                .state
                .run::<Option<String>>(redis::cmd("GET").arg(over))
                .await
            {
                Ok(found) => Ok(found
                    .and_then(|json| serde_json::from_str::<OverLimit>(&json).ok())
                    .filter(|mark| mark.until > now)),
                Err(_) => {
                    self.state.fallback(FALLBACK);
                    self.local.over_limit(asset, now).await
                }
            }
        })
    }

    fn clear_over_limit<'a>(
        &'a self,
        asset: &'a str,
    ) -> BoxFuture<'a, Result<(), LimitStoreError>> {
        Box::pin(async move {
            let [_, _, over] = self.keys(asset);
            self.local.clear_over_limit(asset).await?;
            self.state
                .run::<u64>(redis::cmd("DEL").arg(over))
                .await
                .map(|_| ())
                .map_err(|err| LimitStoreError::Backend(err.to_string()))
        })
    }

    /// Redis writes through; nothing to flush.
    fn flush(&self) -> BoxFuture<'_, Result<(), LimitStoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
