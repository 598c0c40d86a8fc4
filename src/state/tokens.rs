//! The token store on Redis: one hash per asset, `tokens:<asset>`, with
//!
//! - `doc`: the asset's entry in the token store's own format (`credentials::store_format`,
//!   a one-asset document; sealed with ChaCha20-Poly1305 when a store key is configured,
//!   exactly as the file would be);
//! - `fp`: HMAC-SHA-256 of the refresh token under a key derived from the store key (or
//!   plain SHA-256 without one): what the compare-and-swap compares, so Lua never needs
//!   to decrypt anything and the token itself is never compared in clear text;
//! - `ver`: a counter bumped at every write, the cheap "did `authorize` write a new grant"
//!   check ([`RedisTokens::version`]).
//!
//! No TTL: a refresh token lives until it is replaced. Writes are compare-and-swap on
//! `fp` in one Lua script, so two replicas rotating at once, or a rotation racing a new
//! `authorize`, can never overwrite a newer grant with an older one.

use std::collections::BTreeMap;
use std::path::Path;

use ring::digest;
use ring::hmac;

use super::connection::{RedisState, StateError};
use crate::credentials::secret::Secret;
use crate::credentials::store::{StoreError, StoredToken};
use crate::credentials::store_format::{decode, encode};

/// Swap `doc`/`fp` only if `fp` still is ARGV[1] (`""` = no entry yet); bump `ver`.
const CAS: &str = r"
local current = redis.call('HGET', KEYS[1], 'fp')
if not current then current = '' end
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'fp', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'ver', 1)
return 1
";

/// A failure of the Redis token store: the backend, or an entry that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    #[error(transparent)]
    Backend(#[from] StateError),
    #[error(transparent)]
    Entry(#[from] StoreError),
    #[error("another writer kept changing the entry of asset \"{0}\"; try again")]
    Contended(String),
}

/// The token store of a relay with `backend = "redis"`.
pub struct RedisTokens<'a> {
    state: &'a RedisState,
}

impl RedisState {
    pub fn tokens(&self) -> RedisTokens<'_> {
        RedisTokens { state: self }
    }
}

impl RedisTokens<'_> {
    fn key(&self, asset: &str) -> String {
        self.state.key(&format!("tokens:{asset}"))
    }

    /// Where the asset's entry lives, for messages (no password).
    pub fn describe(&self, asset: &str) -> String {
        self.place(asset)
    }

    /// What errors name instead of a file path.
    fn place(&self, asset: &str) -> String {
        format!("{} key {}", self.state.display_url(), self.key(asset))
    }

    /// The asset's entry and its fingerprint, if it has one.
    async fn read(&self, asset: &str) -> Result<Option<(StoredToken, String)>, RedisStoreError> {
        let (doc, fp): (Option<Vec<u8>>, Option<String>) = self
            .state
            .run(
                redis::cmd("HMGET")
                    .arg(self.key(asset))
                    .arg("doc")
                    .arg("fp"),
            )
            .await?;
        let (Some(doc), Some(fp)) = (doc, fp) else {
            return Ok(None);
        };
        let place = self.place(asset);
        let mut entries = decode(Path::new(&place), self.state.key.as_ref(), &doc)?;
        Ok(entries.remove(asset).map(|entry| (entry, fp)))
    }

    pub async fn get(&self, asset: &str) -> Result<Option<StoredToken>, RedisStoreError> {
        Ok(self.read(asset).await?.map(|(entry, _)| entry))
    }

    /// Bumped at every write of the asset's entry; `None` when it has none.
    pub async fn version(&self, asset: &str) -> Result<Option<u64>, RedisStoreError> {
        Ok(self
            .state
            .run(redis::cmd("HGET").arg(self.key(asset)).arg("ver"))
            .await?)
    }

    /// A new grant (`authorize`, the console): like the file store's `put`, keeps
    /// `obtained_at` when the account is the same.
    pub async fn put(&self, asset: &str, token: StoredToken) -> Result<(), RedisStoreError> {
        // A few rounds: only a rotation racing exactly this write makes one fail.
        for _ in 0..5 {
            let mut token = token.clone();
            let existing = self.read(asset).await?;
            let expected = match &existing {
                Some((entry, fp)) => {
                    if entry.account == token.account {
                        token.obtained_at = entry.obtained_at;
                    }
                    fp.clone()
                }
                None => String::new(),
            };
            if self.swap(asset, &expected, token).await? {
                return Ok(());
            }
        }
        Err(RedisStoreError::Contended(asset.to_string()))
    }

    /// Replaces the refresh token with a rotated one only if the entry still holds
    /// `previous`; `Ok(false)` when a newer grant is there (it wins).
    pub async fn replace_rotated(
        &self,
        asset: &str,
        previous: &Secret,
        rotated: Secret,
        now: u64,
    ) -> Result<bool, RedisStoreError> {
        let Some((mut entry, fp)) = self.read(asset).await? else {
            return Ok(false);
        };
        if fp != self.fingerprint(previous) {
            return Ok(false);
        }
        entry.refresh_token = rotated;
        entry.updated_at = now;
        self.swap(asset, &fp, entry).await
    }

    pub async fn remove(&self, asset: &str) -> Result<bool, RedisStoreError> {
        let removed: u64 = self
            .state
            .run(redis::cmd("DEL").arg(self.key(asset)))
            .await?;
        Ok(removed > 0)
    }

    async fn swap(
        &self,
        asset: &str,
        expected: &str,
        entry: StoredToken,
    ) -> Result<bool, RedisStoreError> {
        let fp = self.fingerprint(&entry.refresh_token);
        let place = self.place(asset);
        let doc = encode(
            Path::new(&place),
            self.state.key.as_ref(),
            BTreeMap::from([(asset.to_string(), entry)]),
        )?;
        let swapped: u8 = self
            .state
            .script(
                &redis::Script::new(CAS),
                &[self.key(asset)],
                &[expected.as_bytes(), &doc, fp.as_bytes()],
            )
            .await?;
        Ok(swapped == 1)
    }

    fn fingerprint(&self, token: &Secret) -> String {
        let tag: Vec<u8> = match &self.state.key {
            Some(key) => {
                let derived = key.derive(b"smtp-oauth-relay token fingerprint v1");
                hmac::sign(
                    &hmac::Key::new(hmac::HMAC_SHA256, &derived),
                    token.expose().as_bytes(),
                )
                .as_ref()
                .to_vec()
            }
            None => digest::digest(&digest::SHA256, token.expose().as_bytes())
                .as_ref()
                .to_vec(),
        };
        tag.iter().map(|b| format!("{b:02x}")).collect()
    }
}
