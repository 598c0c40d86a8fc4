//! `[admin]`: the admin listener's TLS and the operator console's settings (who may log
//! in, the session idle timeout, the external URL, plain-HTTP logins). Validation lives
//! next to the types so the whole table reads in one place; `validate.rs` calls
//! [`validate_admin`] once users and the `[server]` TLS are known.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::problems::Checker;
use super::types::User;
use crate::tls;

/// `session_idle_secs`: half an hour without a click logs the operator out, the usual
/// figure for admin consoles (OWASP suggests 15–30 minutes for sensitive applications).
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(1800);
/// `consent_timeout_secs`: how long a "Generate Token" may take at the provider before
/// its `state` is forgotten; the provider's own consent pages time out after ~10 minutes.
pub const DEFAULT_CONSENT_TIMEOUT: Duration = Duration::from_secs(600);
/// `messages_kept`: per-message outcomes the Messages page keeps in memory (a few hundred
/// bytes each).
pub const DEFAULT_MESSAGES_KEPT: usize = 200;
/// `refresh_secs`: how often the Assets page reloads itself.
pub const DEFAULT_REFRESH_SECS: u64 = 15;

/// The `[admin]` table as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) users: Vec<Spanned<String>>,
    pub(super) tls_cert: Option<Spanned<PathBuf>>,
    pub(super) tls_key: Option<Spanned<PathBuf>>,
    /// Serve the admin listener with `[server]`'s certificate and key.
    pub(super) tls: Option<bool>,
    pub(super) session_idle_secs: Option<u64>,
    pub(super) allow_plaintext: Option<bool>,
    pub(super) public_url: Option<Spanned<String>>,
    pub(super) consent_timeout_secs: Option<u64>,
    pub(super) messages_kept: Option<usize>,
    pub(super) refresh_secs: Option<u64>,
}

/// The validated `[admin]` settings (besides `listen`, which is `Config::admin_listen`).
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// The admin listener speaks HTTPS with this when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The console; None unless `[admin] users` names at least one user.
    pub console: Option<ConsoleSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// `[[user]]` names allowed to log in.
    pub users: Vec<String>,
    pub session_idle: Duration,
    /// Logins over plain HTTP from a non-loopback address (behind a TLS proxy).
    pub allow_plaintext: bool,
    /// External base URL (no trailing slash), e.g. `https://relay.example.com/admin`.
    pub public_url: Option<String>,
    pub consent_timeout: Duration,
    pub messages_kept: usize,
    pub refresh_secs: u64,
}

impl ConsoleSettings {
    pub fn allows(&self, user: &str) -> bool {
        self.users.iter().any(|name| name == user)
    }
}

pub(super) fn validate_admin(
    raw: RawAdmin,
    users: &HashMap<String, Arc<User>>,
    server_tls: Option<&Arc<rustls::ServerConfig>>,
    check: &mut Checker,
) -> AdminSettings {
    let tls = match (&raw.tls_cert, &raw.tls_key) {
        (Some(cert), Some(key)) => match tls::server_config(cert.get_ref(), key.get_ref()) {
            Ok(config) => Some(config),
            Err(err) => {
                check.at(cert, "admin.tls_cert", err.to_string());
                None
            }
        },
        (Some(cert), None) => {
            check.at(
                cert,
                "admin.tls_key",
                "tls_cert is set but tls_key is missing",
            );
            None
        }
        (None, Some(key)) => {
            check.at(
                key,
                "admin.tls_cert",
                "tls_key is set but tls_cert is missing",
            );
            None
        }
        (None, None) if raw.tls == Some(true) => {
            if server_tls.is_none() {
                check.general(
                    "admin.tls",
                    "tls = true reuses [server]'s tls_cert and tls_key, which are not set; \
                     set them, or give [admin] its own tls_cert and tls_key",
                );
            }
            server_tls.cloned()
        }
        (None, None) => None,
    };
    let mut names = Vec::new();
    for name in &raw.users {
        if !users.contains_key(name.get_ref()) {
            check.at(
                name,
                "admin.users",
                format!(
                    "\"{}\" is not a [[user]]: console users log in with a [[user]]'s password",
                    name.get_ref()
                ),
            );
        } else if !names.contains(name.get_ref()) {
            names.push(name.get_ref().clone());
        }
    }
    if !raw.users.is_empty() && raw.listen.is_none() {
        check.general(
            "admin.users",
            "the console is served on [admin] listen, which is not set",
        );
    }
    let public_url = raw.public_url.as_ref().and_then(|url| {
        let text = url.get_ref().trim_end_matches('/');
        match oauth2::url::Url::parse(text) {
            Ok(parsed)
                if matches!(parsed.scheme(), "http" | "https")
                    && parsed.host().is_some()
                    && parsed.query().is_none()
                    && parsed.fragment().is_none() =>
            {
                Some(text.to_string())
            }
            _ => {
                check.at(
                    url,
                    "admin.public_url",
                    format!(
                        "\"{}\" is not a base URL such as \"https://relay.example.com/admin\"",
                        url.get_ref()
                    ),
                );
                None
            }
        }
    });
    if raw.session_idle_secs == Some(0) {
        check.general("admin.session_idle_secs", "must be at least 1");
    }
    if raw.consent_timeout_secs == Some(0) {
        check.general("admin.consent_timeout_secs", "must be at least 1");
    }
    let console = (!raw.users.is_empty()).then(|| ConsoleSettings {
        users: names,
        session_idle: raw
            .session_idle_secs
            .map_or(DEFAULT_SESSION_IDLE, Duration::from_secs),
        allow_plaintext: raw.allow_plaintext.unwrap_or(false),
        public_url,
        consent_timeout: raw
            .consent_timeout_secs
            .map_or(DEFAULT_CONSENT_TIMEOUT, Duration::from_secs),
        messages_kept: raw.messages_kept.unwrap_or(DEFAULT_MESSAGES_KEPT),
        refresh_secs: raw.refresh_secs.unwrap_or(DEFAULT_REFRESH_SECS),
    });
    AdminSettings { tls, console }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "admin_tests.rs"]
mod tests;
