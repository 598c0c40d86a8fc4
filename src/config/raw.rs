//! The config file's shapes as serde reads them: they mirror the TOML exactly, so an
//! unknown key is an error (a typo never silently disables a setting). Nothing here is
//! checked yet; `validate.rs` turns these into the settings in [`super::types`].
//! Values that problems must point at are `Spanned`, so the problem can name the line.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::admin::RawAdmin;
use super::types::{CredentialFailure, Grant, HeaderFromPolicy, LogFormat, Provider, UpstreamTls};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: Option<RawServer>,
    pub(super) limits: Option<RawLimits>,
    pub(super) timeouts: Option<RawTimeouts>,
    pub(super) tokens: Option<RawTokens>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) pool: Option<RawPool>,
    pub(super) upstream: Option<RawUpstream>,
    #[serde(default, rename = "user")]
    pub(super) users: Vec<Spanned<RawUser>>,
    #[serde(default, rename = "asset")]
    pub(super) assets: Vec<Spanned<RawAsset>>,
    pub(super) alerts: Option<super::alerts::RawAlerts>,
    pub(super) state: Option<super::state::RawState>,
    #[serde(default, rename = "alert")]
    pub(super) alert_channels: Vec<Spanned<super::alerts::RawAlert>>,
    pub(super) spool: Option<super::spool::RawSpool>,
}

/// `listen = "addr"` or `listen = ["addr", ...]`. (Spans do not survive serde's untagged
/// enums, so problems here are reported by field name only.)
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<OneOrMany>,
    pub(super) listen_tls: Option<OneOrMany>,
    pub(super) hostname: Option<String>,
    pub(super) tls_cert: Option<Spanned<PathBuf>>,
    pub(super) tls_key: Option<Spanned<PathBuf>>,
    pub(super) credential_failure: Option<CredentialFailure>,
    pub(super) bare_line_endings: Option<RawBareLineEndings>,
    pub(super) allow_plaintext_auth: Option<bool>,
    #[serde(default)]
    pub(super) trusted_networks: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) trusted_assets: Vec<Spanned<String>>,
    pub(super) header_from: Option<HeaderFromPolicy>,
    pub(super) log_format: Option<LogFormat>,
    pub(super) trusted_delivery: Option<super::spool::Delivery>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawBareLineEndings {
    Normalize,
    Reject,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_connections: Option<usize>,
    pub(super) max_message_size: Option<u64>,
    pub(super) max_recipients: Option<usize>,
    pub(super) max_command_line: Option<usize>,
    pub(super) max_data_line: Option<usize>,
    pub(super) max_auth_line: Option<usize>,
    pub(super) max_errors: Option<usize>,
    pub(super) max_junk_commands: Option<usize>,
    pub(super) max_transactions: Option<usize>,
    pub(super) max_password_checks: Option<usize>,
    pub(super) max_connections_per_ip: Option<usize>,
    pub(super) auth_max_failures: Option<u32>,
    pub(super) auth_lockout_secs: Option<u64>,
    pub(super) auth_failure_delay_ms: Option<u64>,
    pub(super) auth_throttle_entries: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) enabled: Option<bool>,
    pub(super) size: Option<usize>,
    pub(super) idle_secs: Option<u64>,
}

/// `[upstream]`: how the relay talks to the provider. The values are read as TOML values
/// and checked in `validate.rs`, so a wrong type is reported with its line and field.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) pipelining: Option<Spanned<toml::Value>>,
    pub(super) chunking: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokens {
    pub(super) path: Option<PathBuf>,
    pub(super) key_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) command_secs: Option<u64>,
    pub(super) client_write_secs: Option<u64>,
    pub(super) line_end_secs: Option<u64>,
    pub(super) data_block_secs: Option<u64>,
    pub(super) data_total_secs: Option<u64>,
    pub(super) upstream_connect_secs: Option<u64>,
    pub(super) upstream_command_secs: Option<u64>,
    pub(super) upstream_final_reply_secs: Option<u64>,
    pub(super) token_request_secs: Option<u64>,
    pub(super) token_retry_secs: Option<u64>,
    pub(super) shutdown_grace_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) name: Spanned<String>,
    pub(super) password_hash: Spanned<String>,
    #[serde(default)]
    pub(super) assets: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) delivery: super::spool::Delivery,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAsset {
    pub(super) name: Spanned<String>,
    pub(super) email: Spanned<String>,
    pub(super) provider: Option<Provider>,
    pub(super) tenant: Option<String>,
    pub(super) client_id: Option<Spanned<String>>,
    pub(super) client_secret: Option<Spanned<String>>,
    pub(super) client_secret_file: Option<Spanned<PathBuf>>,
    pub(super) refresh_token: Option<Spanned<String>>,
    pub(super) refresh_token_file: Option<Spanned<PathBuf>>,
    pub(super) client_json: Option<Spanned<PathBuf>>,
    pub(super) service_account_json: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) senders: Vec<Spanned<String>>,
    pub(super) upstream: Option<Spanned<String>>,
    pub(super) upstream_tls: Option<UpstreamTls>,
    pub(super) upstream_ca: Option<Spanned<PathBuf>>,
    pub(super) auth_url: Option<Spanned<String>>,
    pub(super) token_url: Option<Spanned<String>>,
    pub(super) scope: Option<String>,
    pub(super) redirect_uri: Option<Spanned<String>>,
    // Transports (config/transport.rs).
    pub(super) transport: Option<Spanned<super::transport::TransportName>>,
    pub(super) api_url: Option<Spanned<String>>,
    pub(super) tokeninfo_url: Option<Spanned<String>>,
    pub(super) header_recipients: Option<Spanned<super::transport::HeaderRecipients>>,
    // Issue 13 (grant.rs): app-only credentials and the Graph transport's options.
    pub(super) grant: Option<Spanned<Grant>>,
    pub(super) graph_large_messages: Option<Spanned<bool>>,
    pub(super) graph_concurrency: Option<Spanned<usize>>,
    /// `"YYYY-MM-DD"`: `client_secret_expiring` alerts before it.
    pub(super) client_secret_expires: Option<Spanned<String>>,
    // Issue 16 (sending.rs): the provider's sending limits.
    pub(super) account: Option<Spanned<super::sending::AccountKind>>,
    pub(super) daily_messages: Option<Spanned<u64>>,
    pub(super) daily_recipients: Option<Spanned<u64>>,
    pub(super) messages_per_minute: Option<Spanned<u64>>,
    pub(super) upstream_connections: Option<Spanned<u64>>,
}
