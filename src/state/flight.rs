//! Single flight across replicas: one replica refreshes an asset's access token at a time
//! and publishes it; the others wait briefly and read it.
//!
//! - `lock:<asset>`: `SET NX PX` with a random 128-bit value. The expiry frees the lock
//!   when its holder dies mid-refresh; release is compare-and-delete (Lua), so a holder
//!   whose lock expired never deletes the next holder's lock.
//! - `access:<asset>`: the access token and its expiry, `PX` = its remaining lifetime.
//!   Written by a Lua script that first checks the lock still holds the writer's value
//!   (the fencing check): a replica that stalled past its lock's expiry cannot overwrite
//!   the token its successor published. Sealed with ChaCha20-Poly1305 under a key
//!   derived from the store key when one is configured; otherwise plain, like the store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::connection::{RedisState, StateError};
use crate::credentials::secret::Secret;

/// Release: delete the lock only if it still holds our value.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Publish (fenced): write the token only while the lock still holds our value.
const PUBLISH: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
";

const SEALED_PREFIX: &str = "v1:";

/// A held refresh lock. Dropping it without [`RedisState::release`] leaves it to expire.
#[derive(Debug)]
pub struct FlightLock {
    asset: String,
    value: String,
}

impl FlightLock {
    pub fn asset(&self) -> &str {
        &self.asset
    }
}

#[derive(Serialize, Deserialize)]
struct Shared {
    token: String,
    /// Unix milliseconds.
    expires_at: u64,
}

impl RedisState {
    fn lock_key(&self, asset: &str) -> String {
        self.key(&format!("lock:{asset}"))
    }

    fn access_key(&self, asset: &str) -> String {
        self.key(&format!("access:{asset}"))
    }

    /// The shared access token and its expiry, if a replica published one that has not
    /// expired. A value that does not open (another store key) counts as none.
    pub async fn shared_access_token(
        &self,
        asset: &str,
    ) -> Result<Option<(Secret, SystemTime)>, StateError> {
        let value: Option<String> = self
            .run(redis::cmd("GET").arg(self.access_key(asset)))
            .await?;
        let Some(shared) = value.and_then(|value| self.open(asset, &value)) else {
            return Ok(None);
        };
        let expires_at = UNIX_EPOCH + Duration::from_millis(shared.expires_at);
        if expires_at <= SystemTime::now() {
            return Ok(None);
        }
        Ok(Some((Secret::new(shared.token), expires_at)))
    }

    /// Tries to take the asset's refresh lock for `ttl`; `None` when another replica
    /// holds it.
    pub async fn try_lock(
        &self,
        asset: &str,
        ttl: Duration,
    ) -> Result<Option<FlightLock>, StateError> {
        let mut random = [0u8; 16];
        SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| StateError {
                url: self.display_url(),
                reason: "the system random number generator failed".to_string(),
            })?;
        let value: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let set: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(self.lock_key(asset))
                    .arg(&value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64),
            )
            .await?;
        Ok(set.map(|_| FlightLock {
            asset: asset.to_string(),
            value,
        }))
    }

    /// Publishes a freshly refreshed token, fenced by `lock`; `Ok(false)` when the lock
    /// expired meanwhile (the token is then only used by this replica).
    pub async fn publish_access_token(
        &self,
        lock: &FlightLock,
        token: &Secret,
        expires_at: SystemTime,
    ) -> Result<bool, StateError> {
        let ttl = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_millis() as u64;
        if ttl == 0 {
            return Ok(false);
        }
        let shared = Shared {
            token: token.expose().to_string(),
            expires_at: expires_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        };
        let value = self.seal(&lock.asset, &shared)?;
        let ttl = ttl.to_string();
        let published: u8 = self
            .script(
                &redis::Script::new(PUBLISH),
                &[self.lock_key(&lock.asset), self.access_key(&lock.asset)],
                &[lock.value.as_bytes(), value.as_bytes(), ttl.as_bytes()],
            )
            .await?;
        Ok(published == 1)
    }

    /// Forgets the shared token if it is `token` (the provider refused it).
    pub async fn forget_access_token(&self, asset: &str, token: &Secret) -> Result<(), StateError> {
        if let Some((shared, _)) = self.shared_access_token(asset).await? {
            if &shared == token {
                self.run::<u64>(redis::cmd("DEL").arg(self.access_key(asset)))
                    .await?;
            }
        }
        Ok(())
    }

    /// Releases the lock if it is still ours (compare-and-delete).
    pub async fn release(&self, lock: FlightLock) -> Result<(), StateError> {
        self.script::<u64>(
            &redis::Script::new(RELEASE),
            &[self.lock_key(&lock.asset)],
            &[lock.value.as_bytes()],
        )
        .await
        .map(|_| ())
    }

    fn aead(&self) -> Option<LessSafeKey> {
        let key = self.key.as_ref()?;
        let derived = key.derive(b"smtp-oauth-relay shared access token v1");
        UnboundKey::new(&CHACHA20_POLY1305, &derived)
            .ok()
            .map(LessSafeKey::new)
    }

    fn seal(&self, asset: &str, shared: &Shared) -> Result<String, StateError> {
        let fail = |reason: &str| StateError {
            url: self.display_url(),
            reason: reason.to_string(),
        };
        let mut plain = serde_json::to_vec(shared).map_err(|_| fail("cannot encode"))?;
        let Some(aead) = self.aead() else {
            return String::from_utf8(plain).map_err(|_| fail("cannot encode"));
        };
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| fail("the system random number generator failed"))?;
        // The asset name in the AAD: a value copied to another asset's key does not open.
        aead.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(asset)),
            &mut plain,
        )
        .map_err(|_| fail("encryption failed"))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&plain);
        Ok(format!("{SEALED_PREFIX}{}", STANDARD.encode(blob)))
    }

    fn open(&self, asset: &str, value: &str) -> Option<Shared> {
        let Some(aead) = self.aead() else {
            return serde_json::from_str(value).ok();
        };
        let mut blob = STANDARD.decode(value.strip_prefix(SEALED_PREFIX)?).ok()?;
        if blob.len() < NONCE_LEN {
            return None;
        }
        let mut sealed = blob.split_off(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = blob.try_into().ok()?;
        let plain = aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(asset)),
                &mut sealed,
            )
            .ok()?;
        serde_json::from_slice(plain).ok()
    }
}

fn aad(asset: &str) -> Vec<u8> {
    format!("smtp-oauth-relay access token v1:{asset}").into_bytes()
}
