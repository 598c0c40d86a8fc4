//! Local users and their argon2id password checks (the SASL decoding is in
//! [`crate::smtp::sasl`]).
//!
//! Password verification is deliberately slow (argon2), so it runs on the blocking pool
//! where it cannot stall other sessions. Unknown users are checked against a fixed dummy
//! hash, so the time a failure takes does not reveal which user names exist.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::config::User;
use crate::credentials::secret::Secret;
use crate::smtp::sasl::Credentials;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};

/// The configured users, by name.
#[derive(Debug)]
pub struct Users {
    by_name: HashMap<String, Arc<User>>,
    verified: VerifiedCache,
    /// argon2 takes 19 MiB per check: a burst of logins must not take a gigabyte.
    checks: tokio::sync::Semaphore,
}

/// Password checks running at once; more wait their turn (each takes tens of ms).
const CONCURRENT_PASSWORD_CHECKS: usize = 2;

impl Default for Users {
    fn default() -> Self {
        Users::new(HashMap::new())
    }
}

impl Users {
    pub fn new(by_name: HashMap<String, Arc<User>>) -> Self {
        Users {
            by_name,
            verified: VerifiedCache::new(),
            checks: tokio::sync::Semaphore::new(CONCURRENT_PASSWORD_CHECKS),
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
        // The semaphore is never closed, so acquiring only waits.
        let _permit = self.checks.acquire().await.ok();
        let matches = tokio::task::spawn_blocking(move || password_matches(&hash, &password))
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

fn password_matches(hash: &str, password: &Secret) -> bool {
    match PasswordHash::new(hash) {
        // argon2's verify compares in constant time.
        Ok(parsed) => Argon2::default()
            .verify_password(password.expose().as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
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

    #[tokio::test]
    async fn verify_accepts_right_password_only() {
        let hash = hash_password(&Secret::new("right")).unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let user = Arc::new(User {
            name: "scanner".into(),
            password_hash: hash,
            assets: AssetAccess::All,
        });
        let users = Users::new(HashMap::from([("scanner".to_string(), user)]));
        let attempt = |name: &str, password: &str| Credentials {
            username: name.into(),
            password: Secret::new(password),
        };
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
}
