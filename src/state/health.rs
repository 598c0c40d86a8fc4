//! Asset health shared by the replicas: `health:<asset>` holds why the asset needs an
//! operator (the token endpoint refused its grant or client), as the replica that
//! refreshed last saw it, so every replica's `/readyz` and console show it even when that
//! replica still has a cached token. Written by the refresh lock's holder; deleted by the
//! next successful refresh; expires after a day so a forgotten entry cannot stick.

use super::connection::RedisState;

/// How long a reported problem stays without being confirmed by a new refresh.
const PROBLEM_TTL_SECS: u64 = 24 * 60 * 60;

impl RedisState {
    fn health_key(&self, asset: &str) -> String {
        self.key(&format!("health:{asset}"))
    }

    /// Records (`Some`) or clears (`None`) the asset's problem; best effort.
    pub async fn set_asset_problem(&self, asset: &str, problem: Option<String>) {
        let key = self.health_key(asset);
        let result = match problem {
            Some(text) => {
                self.run::<()>(
                    redis::cmd("SET")
                        .arg(key)
                        .arg(text)
                        .arg("EX")
                        .arg(PROBLEM_TTL_SECS),
                )
                .await
            }
            None => self
                .run::<u64>(redis::cmd("DEL").arg(key))
                .await
                .map(|_| ()),
        };
        if result.is_err() {
            self.fallback("asset health: not shared with the other replicas");
        }
    }

    /// The asset's problem as the replicas last saw it (`None` also when Redis is down).
    pub async fn asset_problem(&self, asset: &str) -> Option<String> {
        self.run::<Option<String>>(redis::cmd("GET").arg(self.health_key(asset)))
            .await
            .ok()
            .flatten()
    }
}
