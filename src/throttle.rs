//! Failed-login throttling: a growing delay, then a temporary lockout.
//!
//! Failures are counted three ways:
//!
//! - per client **address** (IPv6 aggregated to its /64, since one host usually owns a
//!   whole /64 and could otherwise hop through 2^64 addresses): one host trying many
//!   names is locked out, whichever name it tries next;
//! - per (**address, user name**) pair: the lock for one host guessing one name;
//! - per **user name** from anywhere: when many hosts guess one name, that name is locked
//!   for every address that has failed recently, so each new guessing host gets a single
//!   try. An address with no recent failures is *not* refused by it, so nobody can lock a
//!   user out of their own mailbox just by failing as them from elsewhere.
//!
//! User names are keyed by their SHA-256 (a client may send ~9 KB of name), so every
//! entry has a fixed size, and each table holds at most `max_entries` keys. When a table
//! is full, expired entries go first, then the oldest ones that are not locked; a locked
//! entry is never evicted before its lockout ends (an attacker flooding the table with new
//! names must not unlock himself). A failure that still finds no room is not tracked and
//! gets the longest delay. Expired entries are swept at most once a minute, not on every
//! failure.
//!
//! A success forgives only the failures of that (address, user) pair: a user's own typos
//! stop counting, other names guessed from the same address do not.
//!
//! The delay is served before the 535 reply with an async sleep, so it costs the attacker
//! time and the relay nothing.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Entries without a failure for this long (and not locked) are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// How many times the base delay a failure can cost at most.
const MAX_DELAY_STEPS: u32 = 5;
/// How often expired entries are swept out (on the next failure after this long).
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// A full table is searched for room at most this often: when every entry is locked, a
/// flood of failures must not turn into a full scan per failure.
const MAKE_ROOM_INTERVAL: Duration = Duration::from_secs(1);
/// Longer lockouts are cut to this, so adding one to an instant cannot overflow.
const MAX_LOCKOUT: Duration = Duration::from_secs(366 * 24 * 3600);
/// Default for `limits.auth_throttle_entries`; the value and its reason live with the
/// other defaults in config, which must not import this runtime service.
pub use crate::config::DEFAULT_AUTH_THROTTLE_ENTRIES as DEFAULT_MAX_ENTRIES;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

impl Failures {
    fn locked(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|until| now < until)
    }

    /// Nothing is lost by dropping it: not locked, and either its lockout ran out (the
    /// count would start over anyway) or it has been quiet for [`FORGET_AFTER`].
    fn expired(&self, now: Instant) -> bool {
        !self.locked(now)
            && (self.locked_until.is_some() || now.duration_since(self.last) >= FORGET_AFTER)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead and check the password.
    Allowed,
    /// Refuse without checking: too many failures recently.
    LockedOut,
}

/// A user name as a fixed-size key.
type UserKey = [u8; 32];

fn user_key(user: &str) -> UserKey {
    let digest = ring::digest::digest(&ring::digest::SHA256, user.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// The address failures are counted under: IPv4 as is (also when it arrives IPv4-mapped
/// on a dual-stack socket), IPv6 as its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
    }
}

/// One table of failure counts with a size cap.
#[derive(Debug)]
struct Table<K> {
    entries: HashMap<K, Failures>,
    max_entries: usize,
    /// When room was last searched for in a full table.
    last_make_room: Option<Instant>,
}

/// What [`Table::bump`] did.
#[derive(Debug, Clone, Copy)]
enum Bumped {
    Counted {
        count: u32,
        lockout_started: bool,
    },
    /// The table is full of entries that must be kept.
    Untracked,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(max_entries: usize) -> Self {
        Table {
            entries: HashMap::new(),
            max_entries: max_entries.max(1),
            last_make_room: None,
        }
    }

    fn get(&self, key: &K) -> Option<&Failures> {
        self.entries.get(key)
    }

    fn locked(&self, key: &K, now: Instant) -> bool {
        self.entries.get(key).is_some_and(|f| f.locked(now))
    }

    fn sweep(&mut self, now: Instant) {
        self.entries.retain(|_, f| !f.expired(now));
    }

    /// Frees about a tenth of the table: expired entries, then the oldest unlocked ones.
    /// Amortized over the inserts the freed room then takes.
    fn make_room(&mut self, now: Instant) {
        if self
            .last_make_room
            .is_some_and(|at| now.duration_since(at) < MAKE_ROOM_INTERVAL)
        {
            return;
        }
        self.last_make_room = Some(now);
        self.sweep(now);
        let target = self.max_entries - (self.max_entries / 10).max(1);
        if self.entries.len() <= target {
            return;
        }
        let mut evictable: Vec<(Instant, K)> = self
            .entries
            .iter()
            .filter(|(_, f)| !f.locked(now))
            .map(|(key, f)| (f.last, key.clone()))
            .collect();
        evictable.sort_by_key(|(last, _)| *last);
        let excess = self.entries.len() - target;
        for (_, key) in evictable.into_iter().take(excess) {
            self.entries.remove(&key);
        }
    }

    fn bump(&mut self, key: K, now: Instant, max_failures: u32, lockout: Duration) -> Bumped {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_entries {
            self.make_room(now);
            if self.entries.len() >= self.max_entries {
                return Bumped::Untracked;
            }
        }
        let entry = self.entries.entry(key).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        // A lockout that ran out starts a fresh count.
        if entry.locked_until.is_some_and(|until| now >= until) {
            entry.count = 0;
            entry.locked_until = None;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        let lockout_started = entry.count >= max_failures && entry.locked_until.is_none();
        if lockout_started {
            entry.locked_until = Some(now + lockout);
        }
        Bumped::Counted {
            count: entry.count,
            lockout_started,
        }
    }

    /// Takes `n` failures off `key`'s count, dropping the entry at zero (unless locked).
    fn forgive(&mut self, key: &K, n: u32, now: Instant) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.count = entry.count.saturating_sub(n);
            if entry.count == 0 && !entry.locked(now) {
                self.entries.remove(key);
            }
        }
    }
}

#[derive(Debug)]
struct State {
    addresses: Table<IpAddr>,
    pairs: Table<(IpAddr, UserKey)>,
    users: Table<UserKey>,
    next_sweep: Instant,
    /// Whether the "table full" warning was given since the last sweep (one per minute).
    warned_full: bool,
}

pub struct AuthThrottle {
    max_failures: u32,
    lockout: Duration,
    delay_step: Duration,
    state: Mutex<State>,
}

impl AuthThrottle {
    /// `max_entries` caps each of the three tables (addresses, pairs, user names).
    pub fn new(
        max_failures: u32,
        lockout: Duration,
        delay_step: Duration,
        max_entries: usize,
    ) -> Self {
        AuthThrottle {
            max_failures,
            lockout: lockout.min(MAX_LOCKOUT),
            delay_step,
            state: Mutex::new(State {
                addresses: Table::new(max_entries),
                pairs: Table::new(max_entries),
                users: Table::new(max_entries),
                next_sweep: Instant::now() + SWEEP_INTERVAL,
                warned_full: false,
            }),
        }
    }

    /// Whether the address failed within the last lockout period.
    fn failed_recently(&self, state: &State, address: &IpAddr, now: Instant) -> bool {
        state
            .addresses
            .get(address)
            .is_some_and(|f| f.count > 0 && now.duration_since(f.last) < self.lockout)
    }

    pub fn check(&self, ip: IpAddr, user: &str) -> Verdict {
        let now = Instant::now();
        let address = address_key(ip);
        let user = user_key(user);
        let state = lock(&self.state);
        let locked = state.addresses.locked(&address, now)
            || state.pairs.locked(&(address, user), now)
            // A name under attack stays open to addresses that have not been failing.
            || (state.users.locked(&user, now) && self.failed_recently(&state, &address, now));
        if locked {
            Verdict::LockedOut
        } else {
            Verdict::Allowed
        }
    }

    /// Records a failure; returns how long to wait before replying and whether this
    /// failure started a lockout of this client (its address, or its address with this
    /// user name).
    pub fn failed(&self, ip: IpAddr, user: &str) -> (Duration, bool) {
        let now = Instant::now();
        let address = address_key(ip);
        let user = user_key(user);
        let mut state = lock(&self.state);
        if now >= state.next_sweep {
            state.addresses.sweep(now);
            state.pairs.sweep(now);
            state.users.sweep(now);
            state.next_sweep = now + SWEEP_INTERVAL;
            state.warned_full = false;
        }
        let (max, lockout) = (self.max_failures, self.lockout);
        let by_address = state.addresses.bump(address, now, max, lockout);
        let by_pair = state.pairs.bump((address, user), now, max, lockout);
        let by_user = state.users.bump(user, now, max, lockout);
        let mut steps = 0;
        let mut lockout_started = false;
        let mut untracked = false;
        for bumped in [by_address, by_pair] {
            match bumped {
                Bumped::Counted {
                    count,
                    lockout_started: started,
                } => {
                    steps = steps.max(count);
                    lockout_started |= started;
                }
                Bumped::Untracked => untracked = true,
            }
        }
        untracked |= matches!(by_user, Bumped::Untracked);
        if untracked {
            // Not counted means not slowed by counts: make it as slow as it gets.
            steps = MAX_DELAY_STEPS;
            if !state.warned_full {
                state.warned_full = true;
                tracing::warn!(
                    max_entries = state.addresses.max_entries,
                    "failed-login tables are full of locked entries; further failures get the longest delay but no lockout (raise limits.auth_throttle_entries if this is not an attack)"
                );
            }
        }
        (
            self.delay_step * steps.min(MAX_DELAY_STEPS),
            lockout_started,
        )
    }

    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        let now = Instant::now();
        let address = address_key(ip);
        let user = user_key(user);
        let mut state = lock(&self.state);
        let Some(pair) = state.pairs.entries.remove(&(address, user)) else {
            return;
        };
        // Only this pair's failures were the user's own mistakes; whatever else this
        // address or others did under this name still counts.
        state.addresses.forgive(&address, pair.count, now);
        state.users.forgive(&user, pair.count, now);
    }

    #[cfg(test)]
    fn sizes(&self) -> (usize, usize, usize) {
        let state = lock(&self.state);
        (
            state.addresses.entries.len(),
            state.pairs.entries.len(),
            state.users.entries.len(),
        )
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

    fn throttle(max_failures: u32) -> AuthThrottle {
        AuthThrottle::new(
            max_failures,
            Duration::from_secs(60),
            Duration::from_millis(100),
            DEFAULT_MAX_ENTRIES,
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn delay_grows_then_locks_out_then_recovers() {
        let throttle = throttle(3);
        let ip = ip("192.0.2.1");
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
        // The address is locked for every user name.
        assert_eq!(throttle.check(ip, "v"), Verdict::LockedOut);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(throttle.check(ip, "u"), Verdict::Allowed);
        assert!(!throttle.failed(ip, "u").1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_name_cannot_be_locked_out_from_elsewhere() {
        let throttle = throttle(3);
        let attacker = ip("192.0.2.66");
        for _ in 0..5 {
            throttle.failed(attacker, "u");
        }
        assert_eq!(throttle.check(attacker, "u"), Verdict::LockedOut);
        // The owner, at an address without failures, gets to try the password.
        let owner = ip("198.51.100.7");
        assert_eq!(throttle.check(owner, "u"), Verdict::Allowed);
        // And the owner's success does not unlock the attacker.
        throttle.succeeded(owner, "u");
        assert_eq!(throttle.check(attacker, "u"), Verdict::LockedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn many_hosts_guessing_one_name_get_one_try_each_once_it_is_locked() {
        let throttle = throttle(3);
        // Three hosts, one failure each: the name now has three failures.
        for host in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            assert_eq!(throttle.check(ip(host), "u"), Verdict::Allowed);
            throttle.failed(ip(host), "u");
        }
        // Each of them is refused for this name now, though none reached the limit itself...
        for host in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            assert_eq!(throttle.check(ip(host), "u"), Verdict::LockedOut, "{host}");
            assert_eq!(
                throttle.check(ip(host), "other"),
                Verdict::Allowed,
                "{host}"
            );
        }
        // ...a fourth host gets one try, then it too has failed recently.
        let fourth = ip("192.0.2.4");
        assert_eq!(throttle.check(fourth, "u"), Verdict::Allowed);
        throttle.failed(fourth, "u");
        assert_eq!(throttle.check(fourth, "u"), Verdict::LockedOut);
        // A failure older than the lockout no longer taints an address.
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(throttle.check(fourth, "u"), Verdict::Allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pair_stays_locked_when_its_address_is_forgiven() {
        let throttle = throttle(3);
        let host = ip("192.0.2.1");
        throttle.failed(host, "victim");
        throttle.failed(host, "victim");
        // The attacker's own account logging in does not wipe the guesses at another name.
        throttle.succeeded(host, "mine");
        assert_eq!(
            throttle.failed(host, "victim"),
            (Duration::from_millis(300), true)
        );
        assert_eq!(throttle.check(host, "victim"), Verdict::LockedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn success_clears_the_counters() {
        let throttle = throttle(3);
        let ip = ip("192.0.2.1");
        throttle.failed(ip, "u");
        throttle.failed(ip, "u");
        throttle.succeeded(ip, "u");
        assert_eq!(
            throttle.failed(ip, "u"),
            (Duration::from_millis(100), false)
        );
        throttle.succeeded(ip, "u");
        assert_eq!(throttle.sizes(), (0, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_counts_per_slash_64() {
        let throttle = throttle(3);
        // Three addresses of one /64 (and the IPv4-mapped spelling of an IPv4 address).
        throttle.failed(ip("2001:db8:1:2::1"), "u");
        throttle.failed(ip("2001:db8:1:2:ffff::9"), "v");
        assert!(
            throttle
                .failed(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "w")
                .1
        );
        assert_eq!(
            throttle.check(ip("2001:db8:1:2::77"), "x"),
            Verdict::LockedOut
        );
        // The neighbouring /64 is another host.
        assert_eq!(throttle.check(ip("2001:db8:1:3::1"), "x"), Verdict::Allowed);
        assert_eq!(
            address_key(ip("::ffff:192.0.2.1")),
            address_key(ip("192.0.2.1"))
        );
        assert_eq!(address_key(ip("2001:db8::1")), ip("2001:db8::"));
    }

    #[tokio::test(start_paused = true)]
    async fn long_user_names_are_keyed_by_a_fixed_size_digest() {
        let throttle = throttle(3);
        let long = "x".repeat(9000);
        let longer = format!("{long}y");
        throttle.failed(ip("192.0.2.1"), &long);
        throttle.failed(ip("192.0.2.2"), &long);
        // A name differing only after the first 9000 bytes is another name.
        throttle.failed(ip("192.0.2.3"), &longer);
        assert_eq!(throttle.sizes(), (3, 3, 2));
        assert_eq!(std::mem::size_of::<UserKey>(), 32);
    }

    #[tokio::test(start_paused = true)]
    async fn tables_are_capped_and_never_evict_a_lock() {
        let throttle =
            AuthThrottle::new(2, Duration::from_secs(600), Duration::from_millis(100), 10);
        // One locked address, then a flood of single failures from other addresses and names.
        let locked = ip("192.0.2.1");
        throttle.failed(locked, "u");
        assert!(throttle.failed(locked, "u").1);
        for i in 0..1000u32 {
            let host = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            throttle.failed(host, &format!("name{i}"));
            tokio::time::advance(Duration::from_millis(10)).await;
            let (a, p, u) = throttle.sizes();
            assert!(a <= 10 && p <= 10 && u <= 10, "{:?}", (a, p, u));
        }
        assert_eq!(throttle.check(locked, "u"), Verdict::LockedOut);
        assert_eq!(throttle.check(locked, "other"), Verdict::LockedOut);

        // A table full of locks: new keys are not tracked (so nothing old is unlocked) and
        // get the longest delay.
        let full = AuthThrottle::new(1, Duration::from_secs(600), Duration::from_millis(100), 3);
        for host in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            assert!(full.failed(ip(host), "u").1);
        }
        let (delay, started) = full.failed(ip("192.0.2.4"), "v");
        assert_eq!((delay, started), (Duration::from_millis(500), false));
        for host in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            assert_eq!(full.check(ip(host), "w"), Verdict::LockedOut, "{host}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_swept_periodically() {
        let throttle = throttle(3);
        throttle.failed(ip("192.0.2.1"), "a");
        tokio::time::advance(FORGET_AFTER - Duration::from_secs(30)).await;
        // A sweep runs here, but "a" is not quiet long enough yet.
        throttle.failed(ip("192.0.2.2"), "b");
        assert_eq!(throttle.sizes(), (2, 2, 2));
        tokio::time::advance(Duration::from_secs(40)).await;
        // "a" is past due, but the last sweep was 40 s ago: no scan on this failure.
        throttle.failed(ip("192.0.2.3"), "c");
        assert_eq!(throttle.sizes(), (3, 3, 3));
        tokio::time::advance(SWEEP_INTERVAL).await;
        throttle.failed(ip("192.0.2.4"), "d");
        assert_eq!(throttle.sizes(), (3, 3, 3), "\"a\" swept, \"d\" added");
        let state = lock(&throttle.state);
        assert!(state.addresses.get(&ip("192.0.2.1")).is_none());
    }
}
