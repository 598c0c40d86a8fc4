//! Local users and their argon2id password checks (the SASL decoding is in
//! [`crate::smtp::sasl`]).
//!
//! Password verification is deliberately slow (argon2), so it runs on the blocking pool
//! where it cannot stall other sessions. Unknown users are checked against a fixed dummy
//! hash, so the time a failure takes does not reveal which user names exist. Its memory is
//! a bounded, reused resource: `max_password_checks` checks at once, each in a buffer the
//! relay owns and frees after a quiet period ([`PasswordChecks`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use crate::config::User;
use crate::credentials::secret::Secret;
use crate::smtp::sasl::Credentials;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The configured users, by name.
#[derive(Debug)]
pub struct Users {
    by_name: HashMap<String, Arc<User>>,
    verified: VerifiedCache,
    checks: PasswordChecks,
}

impl Default for Users {
    fn default() -> Self {
        Users::new(
            HashMap::new(),
            crate::config::Limits::default().max_password_checks,
        )
    }
}

impl Users {
    /// `max_checks` (at least 1) argon2 checks run at once; see [`PasswordChecks`].
    pub fn new(by_name: HashMap<String, Arc<User>>, max_checks: usize) -> Self {
        Users {
            by_name,
            verified: VerifiedCache::new(),
            checks: PasswordChecks::new(max_checks),
        }
    }

    /// The user when the password matches; None otherwise (unknown user or wrong password,
    /// indistinguishable from outside).
    pub async fn verify(&self, credentials: Credentials) -> Option<Arc<User>> {
        let user = self.by_name.get(&credentials.username).cloned();
        let cache_key = user
            .as_ref()
            .and_then(|user| self.verified.key(user, &credentials.password));
        if let (Some(user), Some(key)) = (&user, &cache_key) {
            if self.verified.contains(key) {
                return Some(user.clone());
            }
        }
        let hash = match &user {
            Some(user) => user.password_hash.clone(),
            None => dummy_hash().to_string(),
        };
        let password = credentials.password;
        let mut slot = self.checks.acquire().await?;
        // The slot (permit and buffer) moves into the blocking task: a session that goes
        // away while its check runs does not free the permit before the memory is free.
        let matches = tokio::task::spawn_blocking(move || slot.matches(&hash, &password))
            .await
            .unwrap_or(false);
        if matches {
            if let Some(key) = cache_key {
                self.verified.insert(key);
            }
            user
        } else {
            None
        }
    }
}

/// Each buffer's capacity at least: over glibc's largest dynamic mmap threshold (32 MiB on
/// 64-bit), so the buffer is mapped on its own (see [`PasswordChecks`]).
const MIN_BUFFER_BYTES: usize = 33 * 1024 * 1024;

/// How long the argon2 buffers outlive the last password check. A burst of logins (a
/// network blip, then every printer at once) reuses them; then the memory goes back.
const BUFFER_IDLE: Duration = Duration::from_secs(30);

/// argon2id needs its working memory (19 MiB with `hash-password`'s parameters) for each
/// check, so a burst of logins must neither run unbounded checks at once nor keep that
/// memory afterwards. At most `max_checks` checks run at once, each with a buffer from a
/// pool of at most `max_checks` buffers; the buffers are reused while logins keep coming
/// and freed [`BUFFER_IDLE`] after the last check.
///
/// Each buffer must go back to the system when freed, whichever blocking-pool thread
/// allocated or frees it, without growing a per-thread malloc arena. glibc maps a block on
/// its own (and unmaps it when freed) only at or above its mmap threshold, which starts at
/// 128 KiB but rises to the size of any mapped block freed, up to 32 MiB on 64-bit: once
/// one 19 MiB argon2 buffer has been freed (argon2's own allocation when hashing the dummy
/// password, say), the next 19 MiB buffer comes from an arena, and freeing it does not give
/// it back (measured: the RSS stayed at the burst's peak). So each buffer reserves
/// [`MIN_BUFFER_BYTES`], above that ceiling, and is always mapped on its own; the pages
/// past the blocks a hash uses are never touched, so they cost address space, not memory.
/// Reusing the buffers also takes away argon2's fresh allocation (and page faults) per check.
#[derive(Debug)]
struct PasswordChecks {
    permits: Arc<Semaphore>,
    pool: Arc<Mutex<BufferPool>>,
}

#[derive(Default)]
struct BufferPool {
    /// Buffers not in use: with the ones in use, never more than `max_checks`, since a
    /// buffer comes back before its permit is released.
    idle: Vec<Vec<Block>>,
    /// Checks holding a slot now, and the most there ever were (for the tests).
    in_use: usize,
    peak_in_use: usize,
    /// When the last check ended.
    last_check: Option<Instant>,
    /// Whether a task is waiting to free the idle buffers.
    releasing: bool,
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("idle", &self.idle.len())
            .field("in_use", &self.in_use)
            .finish_non_exhaustive()
    }
}

impl PasswordChecks {
    fn new(max_checks: usize) -> Self {
        PasswordChecks {
            permits: Arc::new(Semaphore::new(max_checks.max(1))),
            pool: Arc::new(Mutex::new(BufferPool::default())),
        }
    }

    /// Waits for a permit, then takes an idle buffer (or an empty one, sized at first use).
    /// None only if the semaphore were closed, which it never is.
    async fn acquire(&self) -> Option<CheckSlot> {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        let mut pool = lock(&self.pool);
        pool.in_use += 1;
        pool.peak_in_use = pool.peak_in_use.max(pool.in_use);
        if !pool.releasing {
            pool.releasing = true;
            tokio::spawn(release_when_idle(Arc::downgrade(&self.pool)));
        }
        let buffer = pool.idle.pop().unwrap_or_default();
        drop(pool);
        Some(CheckSlot {
            buffer,
            pool: self.pool.clone(),
            _permit: permit,
        })
    }

    #[cfg(test)]
    fn idle_buffers(&self) -> usize {
        lock(&self.pool).idle.len()
    }

    #[cfg(test)]
    fn peak_in_use(&self) -> usize {
        lock(&self.pool).peak_in_use
    }
}

/// Frees the idle buffers once no check has run for [`BUFFER_IDLE`], then ends; the next
/// check starts a new one. Ends early when the `Users` (a reload replaces it) is gone.
async fn release_when_idle(pool: Weak<Mutex<BufferPool>>) {
    loop {
        let deadline = {
            let Some(pool) = pool.upgrade() else { return };
            let mut pool = lock(&pool);
            let now = Instant::now();
            match pool.last_check {
                Some(last) if pool.in_use == 0 && now >= last + BUFFER_IDLE => {
                    // Dropping the Vecs unmaps them (see PasswordChecks).
                    pool.idle = Vec::new();
                    pool.releasing = false;
                    return;
                }
                Some(last) if pool.in_use == 0 => last + BUFFER_IDLE,
                // A check is running: look again when it has surely ended or been idle.
                _ => now + BUFFER_IDLE,
            }
        };
        tokio::time::sleep_until(deadline).await;
    }
}

fn lock(pool: &Mutex<BufferPool>) -> MutexGuard<'_, BufferPool> {
    pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One running check: its semaphore permit and its buffer. Dropping it puts the buffer
/// back in the pool, then releases the permit.
struct CheckSlot {
    buffer: Vec<Block>,
    pool: Arc<Mutex<BufferPool>>,
    _permit: OwnedSemaphorePermit,
}

impl CheckSlot {
    /// Whether `password` matches the PHC string `hash`, computed in this slot's buffer
    /// with the algorithm, version, parameters (memory, passes, lanes, output length) and
    /// salt the string names, so hashes made by other tools verify as well. What the
    /// password-hash crate's `verify_password` does, without its allocation.
    fn matches(&mut self, hash: &str, password: &Secret) -> bool {
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
            return false;
        };
        let version = match parsed.version.map(Version::try_from) {
            None => Version::default(),
            Some(Ok(version)) => version,
            Some(Err(_)) => return false,
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return false;
        };
        let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
        let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
            return false;
        };
        let blocks = params.block_count();
        if self.buffer.len() < blocks {
            if self.buffer.capacity() < blocks {
                // Free the smaller buffer before allocating the larger one. A buffer stays
                // as large as the largest hash checked in it (a user's own parameters).
                self.buffer = Vec::new();
                self.buffer
                    .reserve_exact(blocks.max(MIN_BUFFER_BYTES / Block::SIZE));
            }
            // Touches (and so commits) only the blocks this hash uses.
            self.buffer.resize(blocks, Block::default());
        }
        let argon2 = Argon2::new(algorithm, version, params);
        let computed = Output::init_with(expected.len(), |out| {
            argon2
                .hash_password_into_with_memory(
                    password.expose().as_bytes(),
                    salt,
                    out,
                    &mut self.buffer[..],
                )
                .map_err(Into::into)
        });
        // Output's equality compares in constant time.
        computed.is_ok_and(|computed| computed == expected)
    }
}

impl Drop for CheckSlot {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        let mut pool = lock(&self.pool);
        pool.in_use -= 1;
        pool.last_check = Some(Instant::now());
        if !buffer.is_empty() {
            pool.idle.push(buffer);
        }
    }
}

/// Remembers successful logins so a client that opens many sessions pays for argon2 once.
///
/// Entries are HMAC-SHA256 values under a random key that exists only in this process's
/// memory, over the user name, the password and the stored hash: the cache holds nothing
/// that helps recover a password, and a changed password hash (a reload builds a new
/// `Users` anyway) never matches an old entry. Only successes are cached, so failures
/// always cost the full argon2 time.
#[derive(Debug, Default)]
struct VerifiedCache {
    key: Option<ring::hmac::Key>,
    entries: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
}

/// Plenty for a site's users and their devices; when full the cache starts over.
const MAX_CACHED_LOGINS: usize = 4096;

impl VerifiedCache {
    fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        VerifiedCache {
            // Without randomness there is no safe key: the cache is then simply off.
            key: ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).ok(),
            entries: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    fn key(&self, user: &User, password: &Secret) -> Option<Vec<u8>> {
        let key = self.key.as_ref()?;
        let mut context = ring::hmac::Context::with_key(key);
        for part in [
            user.name.as_bytes(),
            password.expose().as_bytes(),
            user.password_hash.as_bytes(),
        ] {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
        Some(context.sign().as_ref().to_vec())
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.lock().contains(key)
    }

    fn insert(&self, key: Vec<u8>) {
        let mut entries = self.lock();
        if entries.len() >= MAX_CACHED_LOGINS {
            entries.clear();
        }
        entries.insert(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Vec<u8>>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A valid hash of a random password, made once, for timing-equal failures.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(salt.as_str().as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .unwrap_or_default()
    })
}

#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(String);

/// An argon2id PHC string for `password` with a random salt and argon2's default
/// parameters (OWASP's recommended minimum: 19 MiB, 2 passes).
pub fn hash_password(password: &Secret) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| HashError(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AssetAccess;

    fn users(hashes: &[(&str, String)], max_checks: usize) -> Users {
        let by_name = hashes
            .iter()
            .map(|(name, hash)| {
                let user = Arc::new(User {
                    name: name.to_string(),
                    password_hash: hash.clone(),
                    assets: AssetAccess::All,
                    delivery: Default::default(),
                });
                (name.to_string(), user)
            })
            .collect();
        Users::new(by_name, max_checks)
    }

    fn attempt(name: &str, password: &str) -> Credentials {
        Credentials {
            username: name.into(),
            password: Secret::new(password),
        }
    }

    /// Made by another implementation (argon2-cffi, i.e. the reference C code, with its
    /// defaults: 64 MiB, 3 passes, 4 lanes) for the password "TestPass123".
    const FOREIGN_HASH: &str = "$argon2id$v=19$m=65536,t=3,p=4$2m5CBWkA489bnIwyY5iaWQ$w3ujhnFOTF63QwaBVK950q/NxCwyTVQF4LLTeHAEt/Y";

    #[tokio::test]
    async fn verify_accepts_right_password_only() {
        let hash = hash_password(&Secret::new("right")).unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        let users = users(&[("scanner", hash)], 2);
        assert!(users.verify(attempt("scanner", "right")).await.is_some());
        assert!(users.verify(attempt("scanner", "wrong")).await.is_none());
        assert!(users.verify(attempt("nobody", "right")).await.is_none());
        // Cached after the first success, and still exact: a wrong password never hits.
        assert_eq!(users.verified.lock().len(), 1);
        assert!(users.verify(attempt("scanner", "right")).await.is_some());
        assert!(users.verify(attempt("scanner", "wrong")).await.is_none());
        assert!(users.verify(attempt("scanner", "righ")).await.is_none());
        assert_eq!(users.verified.lock().len(), 1);
    }

    /// The parameters come from the PHC string, not from argon2's defaults: more memory,
    /// passes and lanes, another output length, argon2i, a hash made by another tool.
    #[tokio::test]
    async fn verify_honours_the_parameters_in_the_hash() {
        let made_here = |algorithm, m, t, p, len| {
            let params = Params::new(m, t, p, Some(len)).unwrap();
            let salt = SaltString::generate(&mut OsRng);
            Argon2::new(algorithm, Version::V0x13, params)
                .hash_password(b"other-params", &salt)
                .unwrap()
                .to_string()
        };
        let hashes = [
            ("foreign", FOREIGN_HASH.to_string(), "TestPass123"),
            (
                "lanes",
                made_here(Algorithm::Argon2id, 65536, 3, 4, 32),
                "other-params",
            ),
            (
                "small",
                made_here(Algorithm::Argon2id, 4096, 1, 2, 16),
                "other-params",
            ),
            (
                "argon2i",
                made_here(Algorithm::Argon2i, 8192, 2, 1, 64),
                "other-params",
            ),
        ];
        assert!(hashes[1].1.starts_with("$argon2id$v=19$m=65536,t=3,p=4$"));
        let table: Vec<(&str, String)> = hashes
            .iter()
            .map(|(name, hash, _)| (*name, hash.clone()))
            .collect();
        // One check at a time, so every hash runs in the same (reused) buffer, large ones
        // and small ones in turn.
        let users = users(&table, 1);
        for (name, _, password) in &hashes {
            assert!(
                users.verify(attempt(name, "wrong")).await.is_none(),
                "{name}"
            );
            assert!(
                users.verify(attempt(name, password)).await.is_some(),
                "{name}"
            );
        }
        assert_eq!(users.checks.idle_buffers(), 1);
        // A buffer stays as large as the largest hash it has served (64 MiB = 65536 blocks).
        assert_eq!(lock(&users.checks.pool).idle[0].len(), 65536);
        // A changed hash byte, or a malformed string, never matches.
        let mut tampered = FOREIGN_HASH.to_string();
        tampered.pop();
        tampered.push('Z');
        let users = crate::users::tests::users(
            &[
                ("tampered", tampered),
                ("broken", "$argon2id$v=19$m=x".into()),
            ],
            1,
        );
        assert!(users
            .verify(attempt("tampered", "TestPass123"))
            .await
            .is_none());
        assert!(users
            .verify(attempt("broken", "TestPass123"))
            .await
            .is_none());
    }

    /// N+1 logins at once: N hash at the same time, the last waits for a permit, and no
    /// more than N buffers ever exist.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_max_password_checks_run_at_once() {
        for max_checks in [1, 2] {
            // The foreign hash's 64 MiB and 3 passes take long enough that the checks
            // started together surely overlap.
            let users = Arc::new(users(&[("u", FOREIGN_HASH.to_string())], max_checks));
            let logins: Vec<_> = (0..=max_checks)
                .map(|i| {
                    let users = users.clone();
                    let password = if i == 0 { "TestPass123" } else { "wrong" };
                    tokio::spawn(async move { users.verify(attempt("u", password)).await })
                })
                .collect();
            let mut accepted = 0;
            for login in logins {
                accepted += usize::from(login.await.unwrap().is_some());
            }
            assert_eq!(accepted, 1);
            assert_eq!(users.checks.peak_in_use(), max_checks, "{max_checks}");
            assert_eq!(users.checks.idle_buffers(), max_checks, "{max_checks}");
            assert_eq!(lock(&users.checks.pool).in_use, 0);
        }
    }

    /// The buffers are reused while logins keep coming and freed once they stop.
    #[tokio::test(start_paused = true)]
    async fn buffers_are_freed_after_an_idle_period() {
        let users = users(&[("u", hash_password(&Secret::new("pw")).unwrap())], 2);
        assert!(users.verify(attempt("u", "wrong")).await.is_none());
        assert_eq!(users.checks.idle_buffers(), 1);
        // Another check before the idle period ends reuses the buffer and restarts it.
        tokio::time::sleep(BUFFER_IDLE - Duration::from_secs(1)).await;
        assert_eq!(users.checks.idle_buffers(), 1);
        assert!(users.verify(attempt("u", "pw")).await.is_some());
        assert_eq!(users.checks.idle_buffers(), 1);
        tokio::time::sleep(BUFFER_IDLE - Duration::from_secs(1)).await;
        assert_eq!(users.checks.idle_buffers(), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            users.checks.idle_buffers(),
            0,
            "freed 30 s after the last check"
        );
        assert!(!lock(&users.checks.pool).releasing);
        // The next burst allocates afresh and is freed again.
        assert!(users.verify(attempt("u", "wrong")).await.is_none());
        assert_eq!(users.checks.idle_buffers(), 1);
        tokio::time::sleep(BUFFER_IDLE + Duration::from_secs(1)).await;
        assert_eq!(users.checks.idle_buffers(), 0);
    }
}
