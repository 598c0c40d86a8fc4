//! `[state]`: where the state that several replicas must share lives (issue 16 §2).
//!
//! `backend = "local"` (the default) keeps everything as a single relay always had it:
//! the token store file and in-memory caches, counters and lockouts. `backend = "redis"`
//! moves the token store, the access-token cache and its refresh lock, login lockouts and
//! asset health into Redis (`crate::state` documents the keys). The password never sits in
//! a printable value: it is split out of the URL (or read from `password_file`) into a
//! [`Secret`], and the URL kept for messages has none.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::asset::is_loopback_host;
use super::problems::Checker;
use crate::credentials::secret::Secret;

/// `prefix`: every key the relay writes starts with it, so one Redis can serve several
/// relays (or other software) without collisions.
pub const DEFAULT_STATE_PREFIX: &str = "smtp-oauth-relay:";

/// The `[state]` table as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) backend: Option<Spanned<String>>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<PathBuf>>,
    pub(super) prefix: Option<Spanned<String>>,
    /// PEM CA bundle that signs the Redis server's certificate (a private CA); without
    /// it the system's trust store is used.
    pub(super) ca_file: Option<Spanned<PathBuf>>,
}

/// The validated `[state]` settings.
#[derive(Debug, Clone, Default)]
pub enum StateSettings {
    #[default]
    Local,
    Redis(RedisSettings),
}

/// How to reach Redis. `Debug` shows no password (it is a [`Secret`]).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `rediss` (TLS) or `redis` (loopback only).
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    pub prefix: String,
}

impl RedisSettings {
    /// The URL without credentials, for logs, `check` and `/readyz`.
    pub fn display_url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}/{}", self.port, self.db)
    }
}

pub(super) fn validate_state(raw: RawState, check: &mut Checker) -> StateSettings {
    let backend = raw
        .backend
        .as_ref()
        .map_or("local", |backend| backend.get_ref().as_str());
    match backend {
        "local" => {
            for (present, field) in [
                (raw.url.is_some(), "state.url"),
                (raw.password_file.is_some(), "state.password_file"),
                (raw.ca_file.is_some(), "state.ca_file"),
            ] {
                if present {
                    check.general(field, "only used with backend = \"redis\"");
                }
            }
            StateSettings::Local
        }
        "redis" => validate_redis(raw, check).map_or(StateSettings::Local, StateSettings::Redis),
        other => {
            if let Some(spanned) = &raw.backend {
                check.at(
                    spanned,
                    "state.backend",
                    format!("\"{other}\" is not a backend; use \"local\" or \"redis\""),
                );
            }
            StateSettings::Local
        }
    }
}

fn validate_redis(raw: RawState, check: &mut Checker) -> Option<RedisSettings> {
    let Some(url) = &raw.url else {
        check.general(
            "state.url",
            "backend = \"redis\" needs url = \"rediss://host:port/db\"",
        );
        return None;
    };
    // Messages never repeat the URL: it may hold the password.
    let parsed = match reqwest::Url::parse(url.get_ref()) {
        Ok(parsed) => parsed,
        Err(err) => {
            check.at(url, "state.url", format!("not a URL ({err})"));
            return None;
        }
    };
    let tls = match parsed.scheme() {
        "rediss" => true,
        "redis" if is_loopback_host(parsed.host_str()) => false,
        "redis" => {
            check.at(
                url,
                "state.url",
                "redis:// (no TLS) is only allowed on a loopback address; use rediss://",
            );
            return None;
        }
        other => {
            check.at(
                url,
                "state.url",
                format!("scheme \"{other}\" is neither rediss nor redis"),
            );
            return None;
        }
    };
    let Some(host) = parsed.host_str().filter(|host| !host.is_empty()) else {
        check.at(url, "state.url", "the URL names no host");
        return None;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let db = match parsed.path().trim_start_matches('/') {
        "" => 0,
        text => match text.parse::<i64>() {
            Ok(db) if db >= 0 => db,
            _ => {
                check.at(url, "state.url", "the path must be a database number (/0)");
                return None;
            }
        },
    };
    let username = Some(parsed.username())
        .filter(|name| !name.is_empty())
        .map(str::to_string);
    let in_url = parsed.password().map(|password| {
        // Percent-decoded, as every Redis client reads URL passwords.
        let decoded: String = percent_decode(password);
        Secret::new(decoded)
    });
    let password = match (&raw.password_file, in_url) {
        (Some(file), Some(_)) => {
            check.at(
                file,
                "state.password_file",
                "the URL holds a password already; give it in one place",
            );
            return None;
        }
        (Some(file), None) => match std::fs::read_to_string(file.get_ref()) {
            Ok(text) if !text.trim().is_empty() => {
                check.secret_file(file.get_ref(), "state.password_file");
                Some(Secret::new(text.trim()))
            }
            Ok(_) => {
                check.at(file, "state.password_file", "the file is empty");
                return None;
            }
            Err(err) => {
                check.at(
                    file,
                    "state.password_file",
                    format!("cannot read {}: {err}", file.get_ref().display()),
                );
                return None;
            }
        },
        (None, password) => password,
    };
    if let Some(ca) = &raw.ca_file {
        if !tls {
            check.at(ca, "state.ca_file", "only used with rediss://");
        } else if let Err(err) = std::fs::metadata(ca.get_ref()) {
            check.at(
                ca,
                "state.ca_file",
                format!("cannot read {}: {err}", ca.get_ref().display()),
            );
        }
    }
    let prefix = raw
        .prefix
        .map_or_else(|| DEFAULT_STATE_PREFIX.to_string(), Spanned::into_inner);
    Some(RedisSettings {
        tls,
        port: parsed.port().unwrap_or(6379),
        host,
        db,
        username,
        password,
        ca_file: raw.ca_file.map(Spanned::into_inner),
        prefix,
    })
}

/// `%XX` decoding of a URL's userinfo (invalid sequences are kept as written).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
