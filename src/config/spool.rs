//! `[spool]`, `[[user]] delivery` and `[server] trusted_delivery` (issue 15): the opt-in
//! durable spool for clients that cannot retry (scanners, alarm panels). The spool itself
//! lives in `crate::spool`; here are only its settings and their checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::problems::Checker;

/// How a user's (or the trusted networks') mail leaves: straight through to the provider
/// (the default: 250 only when the provider accepted), or through the durable spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    #[default]
    Direct,
    Spool,
}

/// Where Postfix keeps its queue by default is beside its other state; ours too.
pub const DEFAULT_SPOOL_DIR: &str = "state/spool";
/// 72 h: long enough for a weekend's dead token to be re-authorized on Monday morning.
pub const DEFAULT_SPOOL_MAX_AGE_SECS: u64 = 259_200;
/// 1 GiB: a bound on disk use; past it new messages get 452 4.3.1.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1_073_741_824;
/// Postfix-like back-off: a minute, five, a quarter of an hour, half an hour, then hourly.
pub const DEFAULT_SPOOL_RETRY_SECS: [u64; 5] = [60, 300, 900, 1800, 3600];
/// Deliveries in flight per asset: a provider's per-account connection limits (Gmail
/// allows about ten parallel SMTP sessions) must leave room for direct sessions.
pub const DEFAULT_SPOOL_CONCURRENCY: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    /// Whether a spool is in use: a `[spool]` table, or any user (or the trusted
    /// networks) with `delivery = "spool"`. Without it no worker runs.
    pub enabled: bool,
    pub dir: PathBuf,
    pub max_age: Duration,
    pub max_bytes: u64,
    /// The waits between attempts; after the last one, every last value.
    pub retry: Vec<Duration>,
    /// Deliveries in flight per asset.
    pub concurrency: usize,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            enabled: false,
            dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            max_age: Duration::from_secs(DEFAULT_SPOOL_MAX_AGE_SECS),
            max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            retry: DEFAULT_SPOOL_RETRY_SECS
                .iter()
                .map(|secs| Duration::from_secs(*secs))
                .collect(),
            concurrency: DEFAULT_SPOOL_CONCURRENCY,
        }
    }
}

impl SpoolSettings {
    /// The wait after the `attempts`-th failed attempt (1-based).
    pub fn retry_after(&self, attempts: u32) -> Duration {
        let index = (attempts.max(1) as usize) - 1;
        self.retry
            .get(index)
            .or(self.retry.last())
            .copied()
            .unwrap_or(Duration::from_secs(DEFAULT_SPOOL_RETRY_SECS[0]))
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpool {
    pub(super) dir: Option<PathBuf>,
    pub(super) max_age_secs: Option<u64>,
    pub(super) max_bytes: Option<u64>,
    pub(super) retry_secs: Option<Vec<u64>>,
    pub(super) concurrency: Option<usize>,
}

/// The `[spool]` table; `used` when some user or the trusted networks spool.
pub(super) fn validate_spool(
    raw: Option<RawSpool>,
    used: bool,
    check: &mut Checker,
) -> SpoolSettings {
    let defaults = SpoolSettings::default();
    let enabled = used || raw.is_some();
    let raw = raw.unwrap_or_default();
    let dir = raw.dir.unwrap_or(defaults.dir);
    if dir.as_os_str().is_empty() {
        check.general("spool.dir", "must name a directory");
    }
    let max_age_secs = raw.max_age_secs.unwrap_or(DEFAULT_SPOOL_MAX_AGE_SECS);
    if max_age_secs == 0 {
        check.general("spool.max_age_secs", "must be at least 1");
    }
    let max_bytes = raw.max_bytes.unwrap_or(defaults.max_bytes);
    if max_bytes == 0 {
        check.general("spool.max_bytes", "must be at least 1");
    }
    let retry_secs = raw
        .retry_secs
        .unwrap_or_else(|| DEFAULT_SPOOL_RETRY_SECS.to_vec());
    if retry_secs.is_empty() || retry_secs.contains(&0) {
        check.general(
            "spool.retry_secs",
            "must list at least one wait, each at least 1 second",
        );
    }
    let concurrency = raw.concurrency.unwrap_or(defaults.concurrency);
    if concurrency == 0 {
        check.general("spool.concurrency", "must be at least 1");
    }
    SpoolSettings {
        enabled,
        dir,
        max_age: Duration::from_secs(max_age_secs),
        max_bytes,
        retry: retry_secs.into_iter().map(Duration::from_secs).collect(),
        concurrency,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::path::Path;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/relay.example.toml");

    /// The example config with its commented `[spool]` block uncommented.
    fn example_with_spool() -> String {
        let text = std::fs::read_to_string(EXAMPLE).unwrap();
        let block: String = text
            .lines()
            .skip_while(|line| line.trim() != "# [spool]")
            .take_while(|line| line.starts_with("# "))
            .map(|line| format!("{}\n", &line[2..]))
            .collect();
        assert!(block.contains("retry_secs"), "{block}");
        format!("{text}\n{block}")
    }

    #[test]
    fn example_spool_block_loads_with_the_documented_defaults() {
        let config = crate::config::parse(&example_with_spool(), Path::new(EXAMPLE)).unwrap();
        assert_eq!(
            config.spool,
            SpoolSettings {
                enabled: true,
                ..SpoolSettings::default()
            }
        );
        // Without the table and without a spooling user: no spool.
        let text = std::fs::read_to_string(EXAMPLE).unwrap();
        let plain = crate::config::parse(&text, Path::new(EXAMPLE)).unwrap();
        assert!(!plain.spool.enabled);
        assert!(plain.users.values().all(|u| u.delivery == Delivery::Direct));
        assert_eq!(plain.server.trusted_delivery, Delivery::Direct);
        // A spooling user (or trusted network) turns it on with the defaults.
        let spooling = text.replacen("[server]\n", "[server]\ntrusted_delivery = \"spool\"\n", 1);
        let spooling = crate::config::parse(&spooling, Path::new(EXAMPLE)).unwrap();
        assert_eq!(spooling.server.trusted_delivery, Delivery::Spool);
        assert!(spooling.spool.enabled);
        let user = text.replacen("[[user]]\n", "[[user]]\ndelivery = \"spool\"\n", 1);
        let user = crate::config::parse(&user, Path::new(EXAMPLE)).unwrap();
        assert!(user.users.values().any(|u| u.delivery == Delivery::Spool));
        assert!(user.spool.enabled);
    }

    #[test]
    fn bad_spool_settings_are_reported_by_field() {
        let text = example_with_spool()
            .replace("retry_secs = [60, 300, 900, 1800, 3600]", "retry_secs = []")
            .replace("max_bytes = 1073741824", "max_bytes = 0");
        let err = crate::config::parse(&text, Path::new(EXAMPLE))
            .unwrap_err()
            .to_string();
        assert!(err.contains("spool.retry_secs"), "{err}");
        assert!(err.contains("spool.max_bytes"), "{err}");
        let typo = example_with_spool().replace("max_age_secs", "max_age_sec");
        assert!(crate::config::parse(&typo, Path::new(EXAMPLE)).is_err());
        let delivery = std::fs::read_to_string(EXAMPLE).unwrap().replacen(
            "[[user]]\n",
            "[[user]]\ndelivery = \"queue\"\n",
            1,
        );
        assert!(crate::config::parse(&delivery, Path::new(EXAMPLE)).is_err());
    }

    #[test]
    fn retry_schedule_repeats_its_last_value() {
        let settings = SpoolSettings {
            retry: vec![Duration::from_secs(1), Duration::from_secs(5)],
            ..SpoolSettings::default()
        };
        assert_eq!(settings.retry_after(1), Duration::from_secs(1));
        assert_eq!(settings.retry_after(2), Duration::from_secs(5));
        assert_eq!(settings.retry_after(9), Duration::from_secs(5));
        assert_eq!(settings.retry_after(0), Duration::from_secs(1));
    }
}
