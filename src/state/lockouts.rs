//! Login lockouts shared by the replicas, on top of each replica's own
//! [`crate::throttle::AuthThrottle`] (which keeps the delays, the per-user-name rule and
//! works alone when Redis is down). Attackers round-robin replicas behind one Service:
//! without this each replica would grant `auth_max_failures` guesses of its own.
//!
//! Counted per client address (IPv6 by /64, as the local throttle) and per (address,
//! user name); user names are keyed by their SHA-256, never written as sent:
//!
//! - `login:fails:<kind>:<id>`: `INCR`, `PEXPIRE` = `auth_lockout_secs` from the first
//!   failure (the counting window);
//! - `login:lock:<kind>:<id>`: set for `auth_lockout_secs` when the count reaches
//!   `auth_max_failures`; a login is refused while it exists.

use std::net::IpAddr;
use std::time::Duration;

use super::connection::RedisState;
use crate::throttle::address_key;

/// Count a failure; start the lockout at the limit. Returns the new count.
const FAILED: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  redis.call('DEL', KEYS[1])
end
return n
";

fn ids(ip: IpAddr, user: &str) -> [(&'static str, String); 2] {
    let address = address_key(ip).to_string();
    let digest = ring::digest::digest(&ring::digest::SHA256, user.as_bytes());
    let user: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    [
        ("addr", address.clone()),
        ("pair", format!("{address}:{user}")),
    ]
}

impl RedisState {
    /// Whether another replica (or this one) locked this client out. Redis down: not
    /// locked here (the local throttle still applies), noted as a fallback.
    pub async fn login_locked(&self, ip: IpAddr, user: &str) -> bool {
        let keys: Vec<String> = ids(ip, user)
            .iter()
            .map(|(kind, id)| self.key(&format!("login:lock:{kind}:{id}")))
            .collect();
        match self.run::<u64>(redis::cmd("EXISTS").arg(&keys)).await {
            Ok(found) => found > 0,
            Err(_) => {
                self.fallback("login lockouts: this replica's only");
                false
            }
        }
    }

    /// Counts a failed login on every replica's behalf; true when it started a lockout.
    pub async fn login_failed(&self, ip: IpAddr, user: &str, max: u32, lockout: Duration) -> bool {
        if max == 0 || lockout.is_zero() {
            return false;
        }
        let window = lockout.as_millis().max(1).to_string();
        let max_text = max.to_string();
        let mut started = false;
        for (kind, id) in ids(ip, user) {
            let keys = [
                self.key(&format!("login:fails:{kind}:{id}")),
                self.key(&format!("login:lock:{kind}:{id}")),
            ];
            match self
                .script::<u64>(
                    &redis::Script::new(FAILED),
                    &keys,
                    &[max_text.as_bytes(), window.as_bytes()],
                )
                .await
            {
                Ok(count) => started |= count >= u64::from(max),
                Err(_) => {
                    self.fallback("login lockouts: this replica's only");
                    return false;
                }
            }
        }
        started
    }

    /// A successful login forgives the (address, user) pair's count, as the local
    /// throttle does; the address's count stands.
    pub async fn login_succeeded(&self, ip: IpAddr, user: &str) {
        let [_, (kind, id)] = ids(ip, user);
        let key = self.key(&format!("login:fails:{kind}:{id}"));
        if self.run::<u64>(redis::cmd("DEL").arg(key)).await.is_err() {
            self.fallback("login lockouts: this replica's only");
        }
    }
}
