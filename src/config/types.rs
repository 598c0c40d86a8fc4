//! The validated settings: what the rest of the relay reads. Plain values only (numbers,
//! durations, names, secrets, keys, rustls configs); nothing here opens a connection or
//! holds a runtime service, so every module may depend on these types and this module
//! depends on none of theirs.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::credentials::secret::Secret;
use crate::senders::SenderMap;
use crate::smtp::data::BareLineEndings;

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub users: HashMap<String, Arc<User>>,
    pub assets: Vec<Arc<Asset>>,
    pub senders: SenderMap,
    pub tokens: TokenSettings,
    /// The admin HTTP listener (`/healthz`, `/readyz`, `/metrics`), off when None.
    pub admin_listen: Option<SocketAddr>,
    /// The rest of `[admin]`: the listener's TLS and the operator console.
    pub admin: super::admin::AdminSettings,
    pub pool: PoolSettings,
    /// `[upstream]`: the SMTP extensions the relay may use towards the provider.
    pub upstream: UpstreamDialogue,
    /// `[alerts]` and `[[alert]]`: who is told when an asset needs an operator.
    pub alerts: super::alerts::AlertSettings,
    /// `[spool]`: the opt-in durable spool (issue 15).
    pub spool: super::spool::SpoolSettings,
    /// `[state]`: local, or shared with other replicas on Redis.
    pub state: super::state::StateSettings,
    /// Problems that do not stop the relay but should be fixed (a secret file others can
    /// read). Logged when found; `serve` logs them again once logging is set up, `check`
    /// prints them.
    pub warnings: Vec<String>,
}

impl Config {
    pub fn asset(&self, name: &str) -> Option<&Arc<Asset>> {
        self.assets.iter().find(|asset| asset.name == name)
    }
}

/// Where refresh tokens obtained by `authorize` live.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub path: PathBuf,
    /// Encrypts the store at rest when set (from `key_file` or the environment).
    pub key: Option<crate::credentials::store::StoreKey>,
}

/// The warm upstream connections kept per asset (`[pool]`). Owned here, not by
/// `upstream::pool`, so that config never depends on the pool that reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub enabled: bool,
    /// Idle connections kept per asset.
    pub size: usize,
    /// Below the provider's own idle timeout, so we close first.
    pub idle_timeout: Duration,
}

/// Which of the provider's SMTP extensions the relay uses (`[upstream]`), so an operator
/// whose provider or middlebox mishandles one can fall back to the plain dialogue. Each is
/// used only when the provider also offers it in EHLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamDialogue {
    /// RFC 2920: the envelope (MAIL, RCPTs, DATA) a client pipelined goes upstream in one
    /// flight, and BDAT chunks are not waited for one by one.
    pub pipelining: bool,
    /// RFC 3030: the message goes as BDAT chunks instead of DATA + 354 + dot.
    pub chunking: bool,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub listen_tls: Vec<SocketAddr>,
    /// Our name in the greeting, EHLO reply and Received header.
    pub hostname: String,
    /// Present when `tls_cert`/`tls_key` are set: enables STARTTLS and `listen_tls`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Whether credential trouble (revoked refresh token, token refused by the provider) is
    /// answered with a temporary 454 (the client's queue keeps the mail until an operator
    /// re-authorizes) or a permanent 535.
    pub credential_failure: CredentialFailure,
    pub bare_line_endings: BareLineEndings,
    /// AUTH PLAIN/LOGIN without TLS from a non-loopback client (RFC 4954 §4 forbids
    /// plaintext passwords on the open network unless the operator says otherwise).
    pub allow_plaintext_auth: bool,
    /// Clients in these networks may send without AUTH, through `trusted_assets` only.
    pub trusted_networks: Vec<ipnet::IpNet>,
    pub trusted_assets: AssetAccess,
    pub header_from: HeaderFromPolicy,
    /// `text` or `json`; `--log-format` / `SMTP_OAUTH_RELAY_LOG_FORMAT` win over it.
    pub log_format: Option<LogFormat>,
    /// How mail from `trusted_networks` (without AUTH) leaves: direct or spooled.
    pub trusted_delivery: super::spool::Delivery,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// What to do when the message's From: header names an address the asset does not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderFromPolicy {
    Off,
    Log,
    Enforce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialFailure {
    Temporary,
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_command_line: usize,
    pub max_data_line: usize,
    pub max_auth_line: usize,
    pub max_errors: usize,
    /// NOOP, RSET, VRFY, HELP and refused commands a session may send before it is closed;
    /// the count starts again after each delivered message.
    pub max_junk_commands: usize,
    /// Messages per connection; 0 = unlimited.
    pub max_transactions: usize,
    /// argon2id password checks running at once, each with its own working memory.
    pub max_password_checks: usize,
    pub max_connections_per_ip: usize,
    /// Failed logins (per client IP, and per user name) before a temporary lockout.
    pub auth_max_failures: u32,
    pub auth_lockout: Duration,
    /// Each failure in a row adds this much delay before the 535, up to five times it.
    pub auth_failure_delay: Duration,
    /// Keys each failed-login table (addresses, address+user pairs, user names) may hold.
    pub auth_throttle_entries: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub command: Duration,
    /// Writing a reply (or a batch of pipelined replies) to the client: a client that does
    /// not read must not hold its session, and its connection slot, forever.
    pub client_write: Duration,
    /// After an overlong command line has been answered, how long its line end may take
    /// before the connection is closed.
    pub line_end: Duration,
    pub data_block: Duration,
    /// The whole DATA phase, so a client trickling a byte per block cannot hold a session
    /// (and its upstream connection) forever.
    pub data_total: Duration,
    pub upstream_connect: Duration,
    pub upstream_command: Duration,
    pub upstream_final_reply: Duration,
    pub token_request: Duration,
    /// After a failed refresh, further sessions get the same answer for this long instead
    /// of each hitting the token endpoint again (0: no back-off).
    pub token_retry: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    /// An argon2 PHC string, checked to parse at load time.
    pub password_hash: String,
    pub assets: AssetAccess,
    /// `delivery = "direct"` (default) or `"spool"`.
    pub delivery: super::spool::Delivery,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetAccess {
    All,
    Only(HashSet<String>),
}

impl AssetAccess {
    pub fn allows(&self, asset: &str) -> bool {
        match self {
            AssetAccess::All => true,
            AssetAccess::Only(names) => names.contains(asset),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Google,
    Microsoft,
    Custom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// Plain connect, then STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshTokenSource {
    Inline(Secret),
    /// Re-read at every refresh, so a rotated file (a Kubernetes Secret) needs no restart.
    File(PathBuf),
    /// The token store that `authorize` writes (see `[tokens]`).
    Store,
}

impl RefreshTokenSource {
    pub fn describe(&self) -> String {
        match self {
            RefreshTokenSource::Inline(_) => "refresh_token in the config".to_string(),
            RefreshTokenSource::File(path) => format!("refresh_token_file {}", path.display()),
            RefreshTokenSource::Store => "the token store".to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Asset {
    pub name: String,
    /// The mailbox: the XOAUTH2 `user=`.
    pub email: String,
    pub provider: Provider,
    pub client_id: String,
    pub client_secret: Secret,
    pub refresh_token: RefreshTokenSource,
    /// Set for a Google service account with domain-wide delegation: tokens come from a
    /// signed JWT, no client secret and no refresh token.
    pub service_account: Option<Arc<crate::credentials::service_account::ServiceAccountKey>>,
    pub auth_url: String,
    pub token_url: String,
    pub scopes: Vec<String>,
    pub redirect_uri: Option<String>,
    pub upstream: UpstreamTarget,
    /// How mail reaches the provider (`transport`); for API transports `upstream` only
    /// lends its TLS roots (web PKI plus `upstream_ca`) to the HTTPS client.
    pub transport: super::transport::AssetTransport,
    /// API transports: To/Cc/Bcc addresses that are not envelope recipients.
    pub header_recipients: super::transport::HeaderRecipients,
    /// How access tokens are obtained (issue 13): a refresh token from a consent, or
    /// app-only client credentials (no consent, no token store).
    pub grant: Grant,
    /// When the OAuth client secret expires (`client_secret_expires`; Microsoft's expire
    /// after at most two years), for `client_secret_expiring` alerts.
    pub client_secret_expires: Option<time::Date>,
    /// The provider's sending limits the relay keeps the asset under (issue 16).
    pub sending: super::sending::SendingLimits,
}

impl Asset {
    /// Whether the asset's refresh token lives in the token store `authorize` writes.
    pub fn uses_store(&self) -> bool {
        self.grant == Grant::RefreshToken
            && self.service_account.is_none()
            && self.refresh_token == RefreshTokenSource::Store
    }
}

/// `grant` on an asset: which OAuth grant gets its access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// Delegated: a refresh token from `authorize` (or the config), the default.
    RefreshToken,
    /// App-only (RFC 6749 §4.4): the client id and secret alone; Microsoft's application
    /// permissions (`SMTP.SendAsApp`, Graph `Mail.Send`).
    ClientCredentials,
}

#[derive(Clone)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub tls: UpstreamTls,
    /// Web PKI roots plus `upstream_ca`; hostname verification is always on.
    pub client_config: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.tls {
            UpstreamTls::Starttls => "STARTTLS",
            UpstreamTls::Implicit => "implicit TLS",
        };
        write!(f, "{}:{} ({mode})", self.host, self.port)
    }
}
