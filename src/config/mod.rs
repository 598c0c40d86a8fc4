//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! Loading happens in two steps. Serde reads the file into the shapes in `raw.rs`, which
//! mirror the TOML exactly (unknown keys are errors, so a typo never silently disables a
//! setting); `validate.rs` and `asset.rs` then check everything that serde cannot (asset
//! names, sender claims, URLs, files named by the config) and collect *every* problem,
//! each with the file, the line and the field (`problems.rs`), before the relay binds a
//! single socket. A `Config` therefore never holds a half-checked value.
//!
//! The rest, by concern: `types.rs` the validated settings everyone reads, `defaults.rs`
//! each default with its reason, `provider.rs` the provider presets and Google's client
//! file, `env.rs` `${VAR}` expansion. This module holds the entry points and re-exports
//! the types, so `crate::config::X` is the one path to each of them. Config holds value
//! types only and imports no runtime service (pool, upstream client, token manager,
//! session): they depend on it, never the other way round.

mod admin;
mod alerts;
mod asset;
mod defaults;
mod env;
mod grant;
mod graph;
mod problems;
mod provider;
mod raw;
mod sending;
mod spool;
mod state;
mod transport;
mod types;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use admin::{AdminSettings, ConsoleSettings};
pub use alerts::{AlertChannel, AlertSettings, WebhookFormat};
pub use asset::check_endpoint_url;
pub use defaults::DEFAULT_AUTH_THROTTLE_ENTRIES;
pub use env::{expand_env, STORE_KEY_ENV};
pub use problems::{ConfigError, Problem};
pub use spool::{Delivery, SpoolSettings};
pub use state::{RedisSettings, StateSettings, DEFAULT_STATE_PREFIX};
pub use types::UpstreamDialogue;
pub use types::{
    Asset, AssetAccess, Config, CredentialFailure, Grant, HeaderFromPolicy, Limits, LogFormat,
    PoolSettings, Provider, RefreshTokenSource, ServerSettings, Timeouts, TokenSettings,
    UpstreamTarget, UpstreamTls, User,
};

pub use graph::{GraphSettings, DEFAULT_GRAPH_CONCURRENCY, GRAPH_API_URL};
pub use sending::{AccountKind, SendingLimits};
pub use transport::{
    AssetTransport, GmailApiSettings, HeaderRecipients, GMAIL_API_MAX_MESSAGE, GMAIL_API_URL,
    GMAIL_SEND_SCOPE, GOOGLE_TOKENINFO_URL,
};

use problems::{Checker, LineIndex};
use raw::RawConfig;
use validate::validate;

/// Where the relay looks for its config when neither `--config` nor the environment says.
pub const DEFAULT_CONFIG_PATH: &str = "config/relay.toml";

/// Reads and validates the config at `path`. Relative paths inside it (certificates,
/// secret files) are resolved against the directory the relay runs in, as the README's
/// examples assume.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_env(path, process_env)
}

/// [`load`] with `env` standing in for the process environment (`${VAR}` and
/// [`STORE_KEY_ENV`]).
pub fn load_with_env(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut config = parse_with_env(&text, path, env)?;
    // A config that keeps its secrets in files (or ${VARIABLES}) may be world-readable,
    // as deploy/systemd installs it; one with a secret written into it may not.
    if holds_inline_secret(&text) {
        if let Some(mode) = exposed_mode(path) {
            let warning = format!(
                "config file {path} can be read by group or others (mode {mode:03o}) and has a \
                 client_secret or refresh_token written into it; run `chmod 600 {path}`, or \
                 move the secret to client_secret_file / refresh_token_file",
                path = path.display()
            );
            tracing::warn!("{warning}");
            config.warnings.push(warning);
        }
    }
    Ok(config)
}

/// Whether the (unexpanded) config text sets `client_secret` or `refresh_token` to a
/// value of its own rather than a `${VARIABLE}`.
fn holds_inline_secret(text: &str) -> bool {
    text.lines().any(|line| {
        line.split_once('=').is_some_and(|(key, value)| {
            matches!(key.trim(), "client_secret" | "refresh_token") && !value.contains("${")
        })
    })
}

/// The mode of a secret file when someone besides the relay may read it: the token
/// store's rule (`mode & 0o077 != 0`, see [`crate::credentials::store::open_to_group_or_others`]),
/// except that read access for a group the relay itself is in is fine. Kubernetes mounts
/// Secrets as root:fsGroup 0440, the only way a non-root relay can read them.
fn exposed_mode(path: &Path) -> Option<u32> {
    let metadata = std::fs::metadata(path).ok()?;
    let mode = crate::credentials::store::open_to_group_or_others(&metadata)?;
    if mode & 0o037 == 0 && relay_is_in_group_of(&metadata) {
        return None;
    }
    Some(mode)
}

/// Whether the file's group is one of this process's groups (Linux; elsewhere: no).
#[cfg(unix)]
fn relay_is_in_group_of(metadata: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let gid = metadata.gid();
    // getegid()/getgroups() would need unsafe code, which this crate forbids; Linux
    // lists the same in /proc.
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .filter_map(|line| {
            line.strip_prefix("Gid:")
                .or_else(|| line.strip_prefix("Groups:"))
        })
        .flat_map(str::split_whitespace)
        .any(|group| group.parse::<u32>() == Ok(gid))
}

#[cfg(not(unix))]
fn relay_is_in_group_of(_metadata: &std::fs::Metadata) -> bool {
    false
}

/// Parses config text; `path` is only used to name the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with_env(text, path, process_env)
}

/// [`parse`] with `env` standing in for the process environment, so tests and the fuzzer
/// need not change it.
pub fn parse_with_env(
    text: &str,
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let expanded = expand_env(text, &env).map_err(|problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    })?;
    let text = expanded.as_str();
    let lines = LineIndex::new(text);
    let raw: RawConfig = toml::from_str(text).map_err(|err| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems: vec![Problem {
            line: err.span().map(|span| lines.line_of(span.start)),
            field: String::new(),
            message: err.message().trim().to_string(),
        }],
    })?;
    let mut check = Checker {
        lines,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let config = validate(raw, &env, &mut check);
    if check.problems.is_empty() {
        if let Some(mut config) = config {
            for warning in &check.warnings {
                tracing::warn!("{warning}");
            }
            config.warnings = check.warnings;
            return Ok(config);
        }
    }
    Err(ConfigError::Invalid {
        path: path.to_path_buf(),
        problems: check.problems,
    })
}

/// The environment as the real loader sees it; a variable that is not valid Unicode
/// counts as unset.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
