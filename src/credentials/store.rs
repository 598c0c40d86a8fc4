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
//! The format itself (and [`StoreKey`]) lives in [`super::store_format`].
//!
//! The store file must not be accessible to group or others (mode `& 0o077 == 0`); a store
//! that is gets refused rather than used, because its tokens may already have leaked.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ring::rand::{SecureRandom, SystemRandom};

use crate::credentials::secret::Secret;
use crate::credentials::store_format::{decode, encode};

pub use crate::credentials::store_format::{StoreKey, StoredToken};

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

pub(super) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn corrupt(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A serde_json error as text that is safe to show: serde quotes offending values
/// (`invalid type: string "1//0abc…"`), which in this file may be a refresh token, so
/// everything between double quotes is dropped. Field names (in backticks), the line and
/// the column stay, which is what the user needs to find the problem.
pub(super) fn scrub(error: &serde_json::Error) -> String {
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
            (Some(a), Some(b)) => a.same_key(b),
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
        decode(&self.path, self.key.as_ref(), &bytes)
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
        let bytes = encode(&self.path, self.key.as_ref(), assets)?;
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
}

/// Writes and fsyncs, then closes: the data must be on disk before the rename publishes it.
fn write_and_sync(mut file: File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)?;
    file.sync_all()
}

// ---------------------------------------------------------------------------------------
// Platform details
// ---------------------------------------------------------------------------------------

/// Refuses a file that group or others may access.
pub(super) fn check_private(file: &File, path: &Path) -> Result<(), StoreError> {
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
