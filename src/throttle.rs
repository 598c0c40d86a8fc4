//! Failed-login throttling: a growing delay, then a temporary lockout.
//!
//! Failures are counted per client IP and per user name, so neither one host trying many
//! names nor many hosts trying one name gets far. A success clears both counters. The
//! delay is served before the 535 reply with an async sleep, so it costs the attacker
//! time and the relay nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Entries older than this are forgotten, so the maps cannot grow without bound.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// How many times the base delay a failure can cost at most.
const MAX_DELAY_STEPS: u32 = 5;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead and check the password.
    Allowed,
    /// Refuse without checking: too many failures recently.
    LockedOut,
}

pub struct AuthThrottle {
    max_failures: u32,
    lockout: Duration,
    delay_step: Duration,
    by_ip: Mutex<HashMap<IpAddr, Failures>>,
    by_user: Mutex<HashMap<String, Failures>>,
}

impl AuthThrottle {
    pub fn new(max_failures: u32, lockout: Duration, delay_step: Duration) -> Self {
        AuthThrottle {
            max_failures,
            lockout,
            delay_step,
            by_ip: Mutex::new(HashMap::new()),
            by_user: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, ip: IpAddr, user: &str) -> Verdict {
        let now = Instant::now();
        let locked = |entry: Option<&Failures>| {
            entry
                .and_then(|f| f.locked_until)
                .is_some_and(|until| now < until)
        };
        if locked(lock(&self.by_ip).get(&ip)) || locked(lock(&self.by_user).get(user)) {
            Verdict::LockedOut
        } else {
            Verdict::Allowed
        }
    }

    /// Records a failure; returns how long to wait before replying and whether this
    /// failure started a lockout.
    pub fn failed(&self, ip: IpAddr, user: &str) -> (Duration, bool) {
        let now = Instant::now();
        let (ip_count, ip_locked) = self.bump(&mut lock(&self.by_ip), ip, now);
        let (user_count, user_locked) = self.bump(&mut lock(&self.by_user), user.to_string(), now);
        let steps = ip_count.max(user_count).min(MAX_DELAY_STEPS);
        (self.delay_step * steps, ip_locked || user_locked)
    }

    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        lock(&self.by_ip).remove(&ip);
        lock(&self.by_user).remove(user);
    }

    fn bump<K: std::hash::Hash + Eq>(
        &self,
        map: &mut HashMap<K, Failures>,
        key: K,
        now: Instant,
    ) -> (u32, bool) {
        map.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
        let entry = map.entry(key).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        // A lockout that ran out starts a fresh count.
        if entry.locked_until.is_some_and(|until| now >= until) {
            entry.count = 0;
            entry.locked_until = None;
        }
        entry.count += 1;
        entry.last = now;
        let starts_lockout = entry.count >= self.max_failures && entry.locked_until.is_none();
        if starts_lockout {
            entry.locked_until = Some(now + self.lockout);
        }
        (entry.count, starts_lockout)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the counters inconsistent in a way
    // that matters more than refusing all logins would.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delay_grows_then_locks_out_then_recovers() {
        let throttle = AuthThrottle::new(3, Duration::from_secs(60), Duration::from_millis(100));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(throttle.check(ip, "u"), Verdict::Allowed);
        assert_eq!(
            throttle.failed(ip, "u"),
            (Duration::from_millis(100), false)
        );
        assert_eq!(
            throttle.failed(ip, "u"),
            (Duration::from_millis(200), false)
        );
        assert_eq!(throttle.failed(ip, "u"), (Duration::from_millis(300), true));
        assert_eq!(throttle.check(ip, "u"), Verdict::LockedOut);
        // The same user from elsewhere is locked too; another user from elsewhere is not.
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(throttle.check(other, "u"), Verdict::LockedOut);
        assert_eq!(throttle.check(other, "v"), Verdict::Allowed);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(throttle.check(ip, "u"), Verdict::Allowed);
        assert!(!throttle.failed(ip, "u").1);
    }

    #[tokio::test(start_paused = true)]
    async fn success_clears_the_counters() {
        let throttle = AuthThrottle::new(3, Duration::from_secs(60), Duration::from_millis(100));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        throttle.failed(ip, "u");
        throttle.failed(ip, "u");
        throttle.succeeded(ip, "u");
        assert_eq!(
            throttle.failed(ip, "u"),
            (Duration::from_millis(100), false)
        );
    }
}
