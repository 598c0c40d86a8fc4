//! The refresh-token store: one JSON file holding the refresh token of every asset.
//!
//! A refresh token is the one credential that cannot be recreated without a human going
//! through consent again, so this module is written to never lose or corrupt one:
//!
//! - **Reads never guess.** A missing file is an empty store; a file that cannot be read,
//!   parsed or decrypted is an error, never "empty". Treating it as empty would make the next
//!   [`TokenStore::put`] write a store holding one token and silently drop all the others.
//! - **Writes are read-modify-write under a lock.** The relay (rotating tokens) and a
//!   concurrent `authorize` process may both write; each takes an exclusive advisory lock on
//!   `<store>.lock`, re-reads the store under it, changes one entry and writes the result, so
//!   neither can overwrite the other's entry with a stale copy.
//! - **Writes are atomic.** The new content goes to a fresh temp file in the same directory
//!   (`.<store file name>.tmp.<pid>.<random>`, mode 0600 from creation), is fsynced, renamed
//!   over the store and the directory is fsynced. A crash leaves either the old or the new
//!   store, plus at worst a stray temp file that readers never look at and the next writer
//!   deletes.
//! - **Readers take no lock**: thanks to the rename they always see a complete file.
//!
//! # Format
//!
//! Plain: `{"version":1,"assets":{"<asset>":{"refresh_token":..,"account":..,"scopes":[..],
//! "obtained_at":..,"updated_at":..}}}`.
//!
//! With a [`StoreKey`]: `{"version":1,"encryption":"chacha20-poly1305","nonce":"<base64>",
//! "ciphertext":"<base64>"}`, where the ciphertext (with its 16-byte tag appended) seals the
//! plain document above, under a fresh random 96-bit nonce per write and the fixed AAD
//! `smtp-oauth-relay token store v1`. A plain store is read fine when a key is configured
//! (so encryption can be switched on) and the next write encrypts it.
//!
//! The store file must not be accessible to group or others (mode `& 0o077 == 0`); a store
//! that is gets refused rather than used, because its tokens may already have leaked.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::credentials::secret::Secret;

/// The only format version this code reads and writes.
const FORMAT_VERSION: u32 = 1;
/// The `encryption` value of an encrypted store.
const ENCRYPTION: &str = "chacha20-poly1305";
/// Binds the ciphertext to this purpose and format version: a blob sealed with the same key
/// for anything else does not decrypt as a token store.
const AAD: &[u8] = b"smtp-oauth-relay token store v1";
const KEY_LEN: usize = 32;
/// Infix of temp file names: `.<store file name>.tmp.<pid>.<random hex>`.
const TEMP_INFIX: &str = ".tmp.";

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Everything that can go wrong with the store. Messages name the file and never contain a
/// token or a key (parser messages are scrubbed of quoted values, see [`scrub`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot access the token store file {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "the token store {} is unreadable ({reason}); it was left untouched and nothing will \
         be written to it: restore it from a backup, or move it away and authorize the assets again",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "cannot decrypt the token store {}: the store key is wrong or the file was modified",
        path.display()
    )]
    Decrypt { path: PathBuf },
    #[error(
        "the token store {} is encrypted but no store key is configured",
        path.display()
    )]
    Encrypted { path: PathBuf },
    #[error("invalid store key: {0}")]
    Key(String),
    #[error(
        "{} is accessible by group or others (mode {mode:03o}); refusing to use it, run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("cannot lock the token store {}: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
    /// The system random generator failed (no nonce, no temp name, no key).
    #[error("the system random number generator failed")]
    Random,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A serde_json error as text that is safe to show: serde quotes offending values
/// (`invalid type: string "1//0abc…"`), which in this file may be a refresh token, so
/// everything between double quotes is dropped. Field names (in backticks), the line and
/// the column stay, which is what the user needs to find the problem.
fn scrub(error: &serde_json::Error) -> String {
    let mut out = String::new();
    let mut in_quotes = false;
    for c in error.to_string().chars() {
        if c == '"' {
            if in_quotes {
                out.push_str("\"…\"");
            }
            in_quotes = !in_quotes;
        } else if !in_quotes {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Key
// ---------------------------------------------------------------------------------------

/// The 256-bit key that encrypts the store.
#[derive(Clone)]
pub struct StoreKey([u8; KEY_LEN]);

impl StoreKey {
    /// 64 hex chars or standard base64 of 32 bytes, surrounding whitespace ignored.
    pub fn parse(text: &str) -> Result<StoreKey, StoreError> {
        let text = text.trim();
        // No ambiguity: 64 base64 characters would be 48 bytes, not 32.
        if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut key = [0u8; KEY_LEN];
            for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
                *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
            }
            return Ok(StoreKey(key));
        }
        let decoded = STANDARD
            .decode(text)
            .or_else(|_| STANDARD_NO_PAD.decode(text))
            .map_err(|_| {
                // The message describes the shape only: the text may be a real key with a typo.
                StoreError::Key(format!(
                    "expected 64 hex characters or the base64 of 32 bytes, got {} characters that are neither",
                    text.len()
                ))
            })?;
        let key: [u8; KEY_LEN] = decoded.as_slice().try_into().map_err(|_| {
            StoreError::Key(format!(
                "the base64 decodes to {} bytes, a store key is {KEY_LEN}",
                decoded.len()
            ))
        })?;
        Ok(StoreKey(key))
    }

    /// Reads a key file (as written from [`StoreKey::generate`]'s output). Like the store,
    /// the file must not be accessible to group or others.
    pub fn from_file(path: &Path) -> Result<StoreKey, StoreError> {
        let mut file = File::open(path).map_err(io_error(path))?;
        check_private(&file, path)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io_error(path))?;
        StoreKey::parse(&text).map_err(|error| match error {
            StoreError::Key(reason) => StoreError::Key(format!("{}: {reason}", path.display())),
            other => other,
        })
    }

    /// A new random key, base64, for `smtp-oauth-relay` to print for the user.
    pub fn generate() -> Result<String, StoreError> {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| StoreError::Random)?;
        Ok(STANDARD.encode(key))
    }

    fn aead_key(&self) -> Result<LessSafeKey, StoreError> {
        // Only fails for a wrong key length, which the type rules out; mapped rather than
        // unwrapped all the same.
        UnboundKey::new(&CHACHA20_POLY1305, &self.0)
            .map(LessSafeKey::new)
            .map_err(|_| StoreError::Key("ChaCha20-Poly1305 refused the key".to_string()))
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0, // unreachable: the caller checked is_ascii_hexdigit
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({})", crate::credentials::secret::REDACTED)
    }
}

// ---------------------------------------------------------------------------------------
// Entries and the file format
// ---------------------------------------------------------------------------------------

/// One asset's grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredToken {
    #[serde(with = "secret_text")]
    pub refresh_token: Secret,
    /// The mailbox that consented, when known.
    pub account: Option<String>,
    pub scopes: Vec<String>,
    /// Unix seconds, first stored.
    pub obtained_at: u64,
    /// Unix seconds, last replaced (rotation).
    pub updated_at: u64,
}

impl StoredToken {
    /// A new grant obtained at `now` (unix seconds).
    pub fn new(
        refresh_token: Secret,
        account: Option<String>,
        scopes: Vec<String>,
        now: u64,
    ) -> StoredToken {
        StoredToken {
            refresh_token,
            account,
            scopes,
            obtained_at: now,
            updated_at: now,
        }
    }
}

/// Serde for the one field that holds a [`Secret`]. Kept private so `Secret` itself never
/// gains serde impls: a `Serialize` on it would let any `#[derive(Serialize)]` struct (a
/// status page, a debug dump) write the value out without anyone calling `expose`.
mod secret_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::credentials::secret::Secret;

    pub fn serialize<S: Serializer>(secret: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(secret.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// The plain document, also the plaintext of an encrypted store.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainFile {
    version: u32,
    assets: BTreeMap<String, StoredToken>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptedFile {
    version: u32,
    encryption: String,
    nonce: String,
    ciphertext: String,
}

/// Just enough of either document to decide how to read the rest.
#[derive(Deserialize)]
struct Envelope {
    version: Option<u32>,
    encryption: Option<serde::de::IgnoredAny>,
}

// ---------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------

/// Cheap change detection: a running relay compares this with the last one it saw to notice
/// that `authorize` wrote a new token, without reading or decrypting the file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StoreFingerprint {
    modified: Option<SystemTime>,
    len: u64,
    /// Every write renames a new file into place, so the inode changes even when mtime
    /// granularity or an identical size would hide the change.
    inode: u64,
    device: u64,
}

pub struct TokenStore {
    path: PathBuf,
    key: Option<StoreKey>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .field("encrypted", &self.key.is_some())
            .finish()
    }
}

impl TokenStore {
    pub fn new(path: PathBuf, key: Option<StoreKey>) -> TokenStore {
        TokenStore { path, key }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `other` reads and writes the same store the same way (path and key): a
    /// reload that keeps both keeps the assets' token state.
    pub fn same_place(&self, other: &TokenStore) -> bool {
        let same_key = match (&self.key, &other.key) {
            (None, None) => true,
            (Some(a), Some(b)) => a.0 == b.0,
            _ => false,
        };
        self.path == other.path && same_key
    }

    /// All entries. A missing file is an empty store; an unreadable, corrupt or undecryptable
    /// file is an error — never silently treated as empty (that would lose every token at the
    /// next write).
    pub fn load(&self) -> Result<BTreeMap<String, StoredToken>, StoreError> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(error) => return Err(io_error(&self.path)(error)),
        };
        // Checked on the open handle, not the path, so the file checked is the file read.
        let metadata = file.metadata().map_err(io_error(&self.path))?;
        if !metadata.is_file() {
            return Err(corrupt(&self.path, "not a regular file"));
        }
        check_private(&file, &self.path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_error(&self.path))?;
        self.decode(&bytes)
    }

    pub fn get(&self, asset: &str) -> Result<Option<StoredToken>, StoreError> {
        Ok(self.load()?.remove(asset))
    }

    /// Inserts or replaces one asset's entry, under the lock and atomically (see the module
    /// documentation). Creates the parent directory (mode 0700) if missing.
    ///
    /// When the asset already has an entry for the same `account`, the entry's
    /// `obtained_at` is kept: the grant is the same, only the token rotated (or the scopes
    /// grew). A different account means a new grant and the given `obtained_at` is used.
    ///
    /// If the existing store cannot be read (corrupt, undecryptable, wrong mode), this fails
    /// and writes nothing: rewriting it would drop the entries it still holds.
    pub fn put(&self, asset: &str, token: StoredToken) -> Result<(), StoreError> {
        let mut token = token;
        self.modify(|assets| {
            if let Some(existing) = assets.get(asset) {
                if existing.account == token.account {
                    token.obtained_at = existing.obtained_at;
                }
            }
            assets.insert(asset.to_string(), token);
            true
        })
        .map(|_| ())
    }

    /// Replaces the asset's refresh token with a rotated one, but only if the store still
    /// holds `previous`: if `authorize` stored a new grant meanwhile, that grant wins and
    /// this returns `Ok(false)` without writing.
    pub fn replace_rotated(
        &self,
        asset: &str,
        previous: &Secret,
        rotated: Secret,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.modify(|assets| match assets.get_mut(asset) {
            Some(entry) if &entry.refresh_token == previous => {
                entry.refresh_token = rotated;
                entry.updated_at = now;
                true
            }
            _ => false,
        })
    }

    /// Removes one asset's entry; `Ok(false)` (and no write) when it had none.
    pub fn remove(&self, asset: &str) -> Result<bool, StoreError> {
        self.modify(|assets| assets.remove(asset).is_some())
    }

    /// Cheap change detection (mtime + size + inode); `None` when the file does not exist
    /// or cannot be examined.
    pub fn fingerprint(&self) -> Option<StoreFingerprint> {
        let metadata = fs::metadata(&self.path).ok()?;
        let (inode, device) = inode_and_device(&metadata);
        Some(StoreFingerprint {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode,
            device,
        })
    }

    /// Lock, re-read, let `change` edit the entries (it returns whether it changed
    /// anything), write back if so. Returns what `change` returned.
    fn modify(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, StoredToken>) -> bool,
    ) -> Result<bool, StoreError> {
        let dir = self.directory();
        create_private_dir(&dir)?;
        let _lock = self.lock()?;
        // Re-read under the lock: another process may have written since any earlier read.
        let mut assets = self.load()?;
        if !change(&mut assets) {
            return Ok(false);
        }
        // Holding the lock, no writer is between creating a temp file and renaming it, so
        // any temp file still around was left by a crash.
        self.remove_stray_temp_files(&dir);
        let bytes = self.encode(assets)?;
        self.write_atomically(&dir, &bytes)?;
        Ok(true)
    }

    fn directory(&self) -> PathBuf {
        match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tokens".to_string())
    }

    /// The exclusive lock on `<store>.lock`, held until the returned file is dropped. The
    /// lock file is never deleted: deleting it would let a waiting process lock the old
    /// inode while a newcomer locks a new one.
    fn lock(&self) -> Result<File, StoreError> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        private_mode(&mut options);
        let file = options
            .open(&lock_path)
            .map_err(|source| StoreError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        file.lock().map_err(|source| StoreError::Lock {
            path: lock_path,
            source,
        })?;
        Ok(file)
    }

    fn write_atomically(&self, dir: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let mut suffix = [0u8; 8];
        SystemRandom::new()
            .fill(&mut suffix)
            .map_err(|_| StoreError::Random)?;
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let temp_path = dir.join(format!(
            ".{}{TEMP_INFIX}{}.{suffix}",
            self.file_name(),
            std::process::id()
        ));

        let mut options = OpenOptions::new();
        // create_new = O_EXCL: never follow or reuse something already at that name.
        options.write(true).create_new(true);
        private_mode(&mut options);
        let file = options.open(&temp_path).map_err(io_error(&temp_path))?;
        if let Err(error) = write_and_sync(file, bytes)
            .map_err(io_error(&temp_path))
            .and_then(|()| fs::rename(&temp_path, &self.path).map_err(io_error(&self.path)))
        {
            // The store itself is untouched; do not leave the half-written copy behind.
            let _ = fs::remove_file(&temp_path);
            return Err(error);
        }
        // Makes the rename itself durable: without it a power cut can bring the old
        // directory entry (and so the old token, maybe already rotated away) back.
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(dir))
    }

    fn remove_stray_temp_files(&self, dir: &Path) {
        let prefix = format!(".{}{TEMP_INFIX}", self.file_name());
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let stray = entry.path();
                // Best effort: a stray left behind costs disk space, never correctness.
                match fs::remove_file(&stray) {
                    Ok(()) => {
                        tracing::info!(file = %stray.display(), "removed a temp file left by an interrupted token store write")
                    }
                    Err(error) => {
                        tracing::warn!(file = %stray.display(), %error, "cannot remove a stray token store temp file")
                    }
                }
            }
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<BTreeMap<String, StoredToken>, StoreError> {
        let path = &self.path;
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|error| corrupt(path, scrub(&error)))?;
        match envelope.version {
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(corrupt(
                    path,
                    format!(
                    "format version {other}, this relay only understands version {FORMAT_VERSION}"
                ),
                ))
            }
            None => return Err(corrupt(path, "no \"version\" field")),
        }
        if envelope.encryption.is_none() {
            return parse_plain(path, bytes);
        }

        let file: EncryptedFile =
            serde_json::from_slice(bytes).map_err(|error| corrupt(path, scrub(&error)))?;
        if file.encryption != ENCRYPTION {
            return Err(corrupt(
                path,
                format!("unknown encryption, this relay only understands {ENCRYPTION}"),
            ));
        }
        let Some(key) = &self.key else {
            return Err(StoreError::Encrypted { path: path.clone() });
        };
        let nonce: [u8; NONCE_LEN] = STANDARD
            .decode(&file.nonce)
            .ok()
            .and_then(|nonce| nonce.try_into().ok())
            .ok_or_else(|| corrupt(path, "the nonce is not base64 of 12 bytes"))?;
        let mut sealed = STANDARD
            .decode(&file.ciphertext)
            .map_err(|_| corrupt(path, "the ciphertext is not base64"))?;
        let plaintext = key
            .aead_key()?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut sealed,
            )
            .map_err(|_| StoreError::Decrypt { path: path.clone() })?;
        let assets = parse_plain(path, plaintext);
        // Best effort to not keep plaintext tokens around in freed memory.
        sealed.fill(0);
        assets
    }

    fn encode(&self, assets: BTreeMap<String, StoredToken>) -> Result<Vec<u8>, StoreError> {
        let plain = PlainFile {
            version: FORMAT_VERSION,
            assets,
        };
        let Some(key) = &self.key else {
            return to_json(&self.path, &plain);
        };
        let mut sealed = serde_json::to_vec(&plain).map_err(|error| {
            io_error(&self.path)(io::Error::other(format!(
                "cannot encode: {}",
                scrub(&error)
            )))
        })?;
        // A fresh random nonce per write. With random 96-bit nonces a collision under one
        // key becomes likely only after ~2^32 writes, far beyond a token store's lifetime.
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| StoreError::Random)?;
        key.aead_key()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut sealed,
            )
            .map_err(|_| StoreError::Key("encryption failed".to_string()))?;
        to_json(
            &self.path,
            &EncryptedFile {
                version: FORMAT_VERSION,
                encryption: ENCRYPTION.to_string(),
                nonce: STANDARD.encode(nonce),
                ciphertext: STANDARD.encode(&sealed),
            },
        )
    }
}

/// Writes and fsyncs, then closes: the data must be on disk before the rename publishes it.
fn write_and_sync(mut file: File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)?;
    file.sync_all()
}

fn parse_plain(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, StoredToken>, StoreError> {
    let file: PlainFile =
        serde_json::from_slice(bytes).map_err(|error| corrupt(path, scrub(&error)))?;
    Ok(file.assets)
}

fn to_json(path: &Path, value: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    // Pretty, newline-terminated: people do open this file to see which assets it holds.
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|error| {
        io_error(path)(io::Error::other(format!(
            "cannot encode: {}",
            scrub(&error)
        )))
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------
// Platform details
// ---------------------------------------------------------------------------------------

/// Refuses a file that group or others may access.
fn check_private(file: &File, path: &Path) -> Result<(), StoreError> {
    let metadata = file.metadata().map_err(io_error(path))?;
    match open_to_group_or_others(&metadata) {
        Some(mode) => Err(StoreError::Permissions {
            path: path.to_path_buf(),
            mode,
        }),
        None => Ok(()),
    }
}

/// The file's permission bits when group or others may access it (`mode & 0o077 != 0`),
/// else None. The one place this rule lives: the store refuses such a file, the config
/// warns about secret files like it.
#[cfg(unix)]
pub fn open_to_group_or_others(metadata: &fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Other systems have no such mode bits to check.
#[cfg(not(unix))]
pub fn open_to_group_or_others(_metadata: &fs::Metadata) -> Option<u32> {
    None
}

/// Mode 0600 from the moment of creation, so there is no window in which the file is
/// readable by others (setting the mode after creating would leave one).
#[cfg(unix)]
fn private_mode(options: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(0o600);
}

#[cfg(not(unix))]
fn private_mode(_options: &mut OpenOptions) {}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error(dir))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(io_error(dir))
}

#[cfg(unix)]
fn inode_and_device(metadata: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (metadata.ino(), metadata.dev())
}

#[cfg(not(unix))]
fn inode_and_device(_metadata: &fs::Metadata) -> (u64, u64) {
    (0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parses_hex_and_base64_and_rejects_the_rest() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let half = [
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ];
        let mut expected = [0u8; 32];
        expected[..16].copy_from_slice(&half);
        expected[16..].copy_from_slice(&half);
        let key = StoreKey::parse(&format!("  {hex}\n")).map(|key| key.0).ok();
        assert_eq!(key, Some(expected));
        let b64 = STANDARD.encode(expected);
        assert_eq!(StoreKey::parse(&b64).map(|key| key.0).ok(), Some(expected));

        for bad in [
            "",
            "zz",
            &hex[..62],
            &STANDARD.encode([1u8; 31]),
            "not a key at all!",
        ] {
            assert!(
                matches!(StoreKey::parse(bad), Err(StoreError::Key(_))),
                "{bad:?}"
            );
        }
        let message = StoreKey::parse("secret-looking-garbage")
            .err()
            .map(|e| e.to_string());
        assert!(message.is_some_and(|m| !m.contains("secret-looking-garbage")));
    }

    #[test]
    fn generated_keys_parse_and_differ() {
        let (Ok(a), Ok(b)) = (StoreKey::generate(), StoreKey::generate()) else {
            panic!("generate failed");
        };
        assert_ne!(a, b);
        assert!(StoreKey::parse(&a).is_ok());
    }

    #[test]
    fn debug_shows_no_key() {
        let key = StoreKey([0xab; 32]);
        let text = format!("{key:?}");
        assert!(!text.to_lowercase().contains("abab"), "{text}");
        assert!(text.contains(crate::credentials::secret::REDACTED));
    }

    #[test]
    fn scrub_drops_quoted_values() {
        let error = serde_json::from_str::<u64>("\"1//secret-token\"").err();
        let text = error.as_ref().map(scrub).unwrap_or_default();
        assert!(!text.contains("secret-token"), "{text}");
        assert!(text.contains("line 1"), "{text}");
    }
}
