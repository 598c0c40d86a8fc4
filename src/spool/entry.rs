//! One spooled message's envelope and delivery state: the `<id>.json` beside its
//! `<id>.eml` (see the format in `mod.rs`). Pure data and its checks; no I/O.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The format's version; an entry of another version is set aside, never guessed at.
pub const FORMAT_VERSION: u32 = 1;

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptState {
    /// Not yet accepted by the provider; tried at the next attempt.
    Pending,
    /// The provider accepted the message for this recipient: never sent again.
    Delivered,
    /// Refused for good (5xx), or expired with the message.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub state: RcptState,
    /// The provider's last reply for it (or the relay's reason), for the DSN and `list`.
    #[serde(default)]
    pub reply: Option<String>,
}

/// The `<id>.json` of a spooled message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub version: u32,
    pub id: String,
    pub asset: String,
    pub user: String,
    /// The client's IP address.
    pub client: String,
    /// The envelope sender in canonical form; empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// Unix time in milliseconds.
    pub arrived_ms: u64,
    /// Bytes of the `.eml` (the message as it goes to the provider).
    pub size: u64,
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub eight_bit: bool,
    #[serde(default)]
    pub smtputf8: bool,
    /// Attempts started so far.
    pub attempts: u32,
    /// Unix time in milliseconds of the next attempt.
    pub next_try_ms: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    /// The last attempt failed for want of credentials: a new grant in the token store
    /// retries it at once.
    #[serde(default)]
    pub waiting_for_credentials: bool,
    /// Written true (and made durable) before an attempt sends anything, false after its
    /// outcome was recorded: an entry still true after a restart may have reached the
    /// provider, and its next delivery is logged as `possible_duplicate`.
    #[serde(default)]
    pub sending: bool,
    /// Why it is a dead letter (in `dead/` only).
    #[serde(default)]
    pub dead_reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("not a spool entry: {0}")]
    Json(#[from] serde_json::Error),
    #[error("spool entry format version {0} is not {FORMAT_VERSION}")]
    Version(u32),
    #[error("spool entry names id {found}, not its file name {expected}")]
    WrongId { expected: String, found: String },
    #[error("spool entry has no recipient")]
    NoRecipient,
}

impl Entry {
    /// Reads an entry and checks it belongs to the file it was read from.
    pub fn parse(bytes: &[u8], expected_id: &str) -> Result<Entry, EntryError> {
        let entry: Entry = serde_json::from_slice(bytes)?;
        if entry.version != FORMAT_VERSION {
            return Err(EntryError::Version(entry.version));
        }
        if entry.id != expected_id {
            return Err(EntryError::WrongId {
                expected: expected_id.to_string(),
                found: entry.id,
            });
        }
        if entry.recipients.is_empty() {
            return Err(EntryError::NoRecipient);
        }
        Ok(entry)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, numbers and enums always serializes.
        let mut json = serde_json::to_vec_pretty(self).unwrap_or_default();
        json.push(b'\n');
        json
    }

    pub fn pending(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients
            .iter()
            .filter(|r| r.state == RcptState::Pending)
    }

    pub fn has_pending(&self) -> bool {
        self.pending().next().is_some()
    }

    pub fn count(&self, state: RcptState) -> usize {
        self.recipients.iter().filter(|r| r.state == state).count()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A new entry id: the arrival time in microseconds (so ids sort by age) and 32 random
/// bits (so two processes, or two replicas sharing nothing, never collide). Only
/// `[0-9A-F]`: safe as a file name and in a reply.
pub fn new_id() -> String {
    use ring::rand::SecureRandom;
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut random = [0u8; 4];
    // The system RNG does not fail on Linux; a failure leaves zeros and the time alone.
    let _ = ring::rand::SystemRandom::new().fill(&mut random);
    format!("{micros:014X}{:08X}", u32::from_be_bytes(random))
}

/// Whether `id` could be one of ours (CLI arguments and file names are checked with it,
/// so no path can be smuggled in).
pub fn valid_id(id: &str) -> bool {
    (8..=40).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(crate) fn sample(id: &str) -> Entry {
        Entry {
            version: FORMAT_VERSION,
            id: id.to_string(),
            asset: "support".into(),
            user: "scanner".into(),
            client: "127.0.0.1".into(),
            sender: "scan@example.com".into(),
            recipients: vec![Recipient {
                address: "a@example.net".into(),
                state: RcptState::Pending,
                reply: None,
            }],
            arrived_ms: 1,
            size: 10,
            message_id: None,
            eight_bit: false,
            smtputf8: false,
            attempts: 0,
            next_try_ms: 0,
            last_error: None,
            waiting_for_credentials: false,
            sending: false,
            dead_reason: None,
        }
    }

    #[test]
    fn round_trips_and_checks_its_id() {
        let id = new_id();
        assert!(valid_id(&id));
        let entry = sample(&id);
        assert_eq!(Entry::parse(&entry.to_json(), &id).unwrap(), entry);
        assert!(matches!(
            Entry::parse(&entry.to_json(), "00000000AB"),
            Err(EntryError::WrongId { .. })
        ));
        assert!(Entry::parse(b"{\"version\":1", &id).is_err());
        let mut other = entry.clone();
        other.version = 2;
        assert!(matches!(
            Entry::parse(&other.to_json(), &id),
            Err(EntryError::Version(2))
        ));
    }

    #[test]
    fn ids_are_unique_and_safe() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(!valid_id("../../etc/passwd"));
        assert!(!valid_id("ABC"));
    }
}
