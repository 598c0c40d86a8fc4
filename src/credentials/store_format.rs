//! The token store's file format (see [`super::store`] for the layout): the plain
//! document, the same document sealed with ChaCha20-Poly1305 under a [`StoreKey`], and the
//! key itself. Pure encoding: the file handling, locks and atomic writes are the store's.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::credentials::secret::Secret;
use crate::credentials::store::{check_private, corrupt, io_error, scrub, StoreError};

/// The only format version this code reads and writes.
const FORMAT_VERSION: u32 = 1;
/// The `encryption` value of an encrypted store.
const ENCRYPTION: &str = "chacha20-poly1305";
/// Binds the ciphertext to this purpose and format version: a blob sealed with the same key
/// for anything else does not decrypt as a token store.
const AAD: &[u8] = b"smtp-oauth-relay token store v1";
const KEY_LEN: usize = 32;

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

    /// Whether both are the same key (a reload that keeps it keeps the token state).
    pub(crate) fn same_key(&self, other: &StoreKey) -> bool {
        self.0 == other.0
    }

    /// A subkey for another purpose: HMAC-SHA-256 of `label` under this key, so the one
    /// configured key can seal shared access tokens and fingerprint refresh tokens
    /// (`crate::state`) without being used for two things itself.
    pub(crate) fn derive(&self, label: &[u8]) -> [u8; KEY_LEN] {
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0),
            label,
        );
        let mut out = [0u8; KEY_LEN];
        out.copy_from_slice(&tag.as_ref()[..KEY_LEN]);
        out
    }

    pub(crate) fn aead_key(&self) -> Result<LessSafeKey, StoreError> {
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
// Reading and writing the document
// ---------------------------------------------------------------------------------------

pub(crate) fn decode(
    path: &Path,
    key: Option<&StoreKey>,
    bytes: &[u8],
) -> Result<BTreeMap<String, StoredToken>, StoreError> {
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
    let Some(key) = key else {
        return Err(StoreError::Encrypted {
            path: path.to_path_buf(),
        });
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
        .map_err(|_| StoreError::Decrypt {
            path: path.to_path_buf(),
        })?;
    let assets = parse_plain(path, plaintext);
    // Best effort to not keep plaintext tokens around in freed memory.
    sealed.fill(0);
    assets
}

pub(crate) fn encode(
    path: &Path,
    key: Option<&StoreKey>,
    assets: BTreeMap<String, StoredToken>,
) -> Result<Vec<u8>, StoreError> {
    let plain = PlainFile {
        version: FORMAT_VERSION,
        assets,
    };
    let Some(key) = key else {
        return to_json(path, &plain);
    };
    let mut sealed = serde_json::to_vec(&plain).map_err(|error| {
        io_error(path)(io::Error::other(format!(
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
        path,
        &EncryptedFile {
            version: FORMAT_VERSION,
            encryption: ENCRYPTION.to_string(),
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(&sealed),
        },
    )
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
