//! One alert per event across the replicas: each replica's alert task sees the same broken
//! asset (the health is shared), and without this every replica would send its own copy of
//! `asset_needs_attention`. Before sending, a replica claims `alert:<asset>:<event>` with
//! `SET NX PX` for the reminder interval; the replica that got it sends, the others only
//! log. Claiming one of a pair (needs attention / recovered) deletes the other's claim, so
//! a new breakage soon after a recovery is told again.

use std::time::Duration;

use super::connection::RedisState;

impl RedisState {
    fn alert_key(&self, asset: &str, event: &str) -> String {
        self.key(&format!("alert:{asset}:{event}"))
    }

    /// Whether this replica should send `event` about `asset`: true when it claimed it for
    /// `window` (or Redis is down: better twice than never), false when another replica
    /// already did. `opposite`: the event whose claim this one ends.
    pub async fn claim_alert(
        &self,
        asset: &str,
        event: &str,
        opposite: Option<&str>,
        window: Duration,
    ) -> bool {
        let claimed = self
            .run::<Option<String>>(
                redis::cmd("SET")
                    .arg(self.alert_key(asset, event))
                    .arg("1")
                    .arg("NX")
                    .arg("PX")
                    .arg(window.as_millis().max(1) as u64),
            )
            .await;
        match claimed {
            Ok(Some(_)) => {
                if let Some(opposite) = opposite {
                    let _ = self
                        .run::<u64>(redis::cmd("DEL").arg(self.alert_key(asset, opposite)))
                        .await;
                }
                true
            }
            Ok(None) => false,
            Err(_) => {
                self.fallback("alerts: each replica sends its own");
                true
            }
        }
    }
}
