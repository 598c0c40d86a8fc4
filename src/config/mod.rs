//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! Loading happens in two steps. Serde reads the file into `Raw*` structs that mirror the
//! TOML exactly (unknown keys are errors, so a typo never silently disables a setting);
//! [`validate`] then checks everything that serde cannot (asset names, sender claims,
//! URLs, files named by the config) and collects *every* problem, each with the file, the
//! line and the field, before the relay binds a single socket. A `Config` therefore never
//! holds a half-checked value.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::credentials::secret::Secret;
use crate::senders::{SenderMap, SenderPattern};
use crate::smtp::data::BareLineEndings;
use crate::tls;

/// Where the relay looks for its config when neither `--config` nor the environment says.
pub const DEFAULT_CONFIG_PATH: &str = "config/relay.toml";

// ---------------------------------------------------------------------------------------
// Validated configuration
// ---------------------------------------------------------------------------------------

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
    pub pool: crate::upstream::pool::PoolSettings,
    /// Problems that do not stop the relay but should be fixed (a secret file others can
    /// read). Logged when found; `serve` logs them again once logging is set up, `check`
    /// prints them.
    pub warnings: Vec<String>,
}

/// Where refresh tokens obtained by `authorize` live.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub path: PathBuf,
    /// Encrypts the store at rest when set (from `key_file` or the environment).
    pub key: Option<crate::credentials::store::StoreKey>,
}

/// The environment variable that may hold the token-store key (instead of `key_file`).
pub const STORE_KEY_ENV: &str = "SMTP_OAUTH_RELAY_STORE_KEY";
/// Beside the config's usual place, owned by the relay (systemd's StateDirectory, a volume).
const DEFAULT_TOKEN_STORE: &str = "state/tokens.json";

impl Config {
    pub fn asset(&self, name: &str) -> Option<&Arc<Asset>> {
        self.assets.iter().find(|asset| asset.name == name)
    }
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
    pub max_transactions: usize,
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

/// The file Google Cloud Console's "Download JSON" gives for an OAuth client, of either kind.
#[derive(Debug, Clone)]
struct GoogleClientFile {
    client_id: String,
    client_secret: Secret,
    auth_uri: String,
    token_uri: String,
    /// The first registered loopback redirect, for Web clients; Desktop ("installed")
    /// clients accept any loopback port, so none is needed.
    loopback_redirect: Option<String>,
}

impl GoogleClientFile {
    fn load(path: &Path) -> Result<GoogleClientFile, String> {
        #[derive(Deserialize)]
        struct Outer {
            web: Option<Inner>,
            installed: Option<Inner>,
        }
        #[derive(Deserialize)]
        struct Inner {
            client_id: String,
            client_secret: String,
            auth_uri: String,
            token_uri: String,
            #[serde(default)]
            redirect_uris: Vec<String>,
        }
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        let outer: Outer = serde_json::from_str(&text).map_err(|err| {
            format!(
                "{} is not a Google OAuth client file: {err}",
                path.display()
            )
        })?;
        let (inner, web) = match (outer.web, outer.installed) {
            (Some(web), None) => (web, true),
            (None, Some(installed)) => (installed, false),
            _ => {
                return Err(format!(
                    "{} must hold exactly one of \"web\" or \"installed\"",
                    path.display()
                ))
            }
        };
        let loopback_redirect = if web {
            inner
                .redirect_uris
                .iter()
                .find(|uri| {
                    reqwest::Url::parse(uri)
                        .map(|url| url.scheme() == "http" && is_loopback_host(url.host_str()))
                        .unwrap_or(false)
                })
                .cloned()
        } else {
            None
        };
        Ok(GoogleClientFile {
            client_id: inner.client_id,
            client_secret: Secret::new(inner.client_secret),
            auth_uri: inner.auth_uri,
            token_uri: inner.token_uri,
            loopback_redirect,
        })
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

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// One thing wrong with the config, located as precisely as the TOML allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let mut text = format!(
        "{} problem(s) in config file {}:",
        problems.len(),
        path.display()
    );
    for problem in problems {
        let location = match problem.line {
            Some(line) => format!("{}:{line}", path.display()),
            None => path.display().to_string(),
        };
        let field = if problem.field.is_empty() {
            String::new()
        } else {
            format!(" {}:", problem.field)
        };
        text.push_str(&format!("\n  {location}:{field} {}", problem.message));
    }
    text
}

// ---------------------------------------------------------------------------------------
// Raw (serde) shapes
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Option<RawServer>,
    limits: Option<RawLimits>,
    timeouts: Option<RawTimeouts>,
    tokens: Option<RawTokens>,
    admin: Option<RawAdmin>,
    pool: Option<RawPool>,
    #[serde(default, rename = "user")]
    users: Vec<Spanned<RawUser>>,
    #[serde(default, rename = "asset")]
    assets: Vec<Spanned<RawAsset>>,
}

/// `listen = "addr"` or `listen = ["addr", ...]`. (Spans do not survive serde's untagged
/// enums, so problems here are reported by field name only.)
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<OneOrMany>,
    listen_tls: Option<OneOrMany>,
    hostname: Option<String>,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
    credential_failure: Option<CredentialFailure>,
    bare_line_endings: Option<RawBareLineEndings>,
    allow_plaintext_auth: Option<bool>,
    #[serde(default)]
    trusted_networks: Vec<Spanned<String>>,
    #[serde(default)]
    trusted_assets: Vec<Spanned<String>>,
    header_from: Option<HeaderFromPolicy>,
    log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawBareLineEndings {
    Normalize,
    Reject,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<usize>,
    max_message_size: Option<u64>,
    max_recipients: Option<usize>,
    max_command_line: Option<usize>,
    max_data_line: Option<usize>,
    max_auth_line: Option<usize>,
    max_errors: Option<usize>,
    max_junk_commands: Option<usize>,
    max_transactions: Option<usize>,
    max_connections_per_ip: Option<usize>,
    auth_max_failures: Option<u32>,
    auth_lockout_secs: Option<u64>,
    auth_failure_delay_ms: Option<u64>,
    auth_throttle_entries: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPool {
    enabled: Option<bool>,
    size: Option<usize>,
    idle_secs: Option<u64>,
}

/// A few warm connections per mailbox carry a burst of one-message clients; Gmail
/// allows many more concurrent sessions than that.
const DEFAULT_POOL_SIZE: usize = 4;
/// Gmail drops idle SMTP sessions after a few minutes; we let go well before.
const DEFAULT_POOL_IDLE: u64 = 60;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    path: Option<PathBuf>,
    key_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    command_secs: Option<u64>,
    client_write_secs: Option<u64>,
    line_end_secs: Option<u64>,
    data_block_secs: Option<u64>,
    data_total_secs: Option<u64>,
    upstream_connect_secs: Option<u64>,
    upstream_command_secs: Option<u64>,
    upstream_final_reply_secs: Option<u64>,
    token_request_secs: Option<u64>,
    token_retry_secs: Option<u64>,
    shutdown_grace_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Spanned<String>,
    password_hash: Spanned<String>,
    #[serde(default)]
    assets: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAsset {
    name: Spanned<String>,
    email: Spanned<String>,
    provider: Option<Provider>,
    tenant: Option<String>,
    client_id: Option<Spanned<String>>,
    client_secret: Option<Spanned<String>>,
    client_secret_file: Option<Spanned<PathBuf>>,
    refresh_token: Option<Spanned<String>>,
    refresh_token_file: Option<Spanned<PathBuf>>,
    client_json: Option<Spanned<PathBuf>>,
    service_account_json: Option<Spanned<PathBuf>>,
    #[serde(default)]
    senders: Vec<Spanned<String>>,
    upstream: Option<Spanned<String>>,
    upstream_tls: Option<UpstreamTls>,
    upstream_ca: Option<Spanned<PathBuf>>,
    auth_url: Option<Spanned<String>>,
    token_url: Option<Spanned<String>>,
    scope: Option<String>,
    redirect_uri: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------------
// Defaults, each with the reason it has this value
// ---------------------------------------------------------------------------------------

/// Loopback only: the relay holds mailbox credentials, so exposing it is a decision the
/// operator makes explicitly.
const DEFAULT_LISTEN: &str = "127.0.0.1:2525";
/// Gmail's own advertised SIZE; anything larger would be refused upstream anyway.
const DEFAULT_MAX_MESSAGE_SIZE: u64 = 35_882_577;
/// Gmail's per-message recipient limit; RFC 5321 §4.5.3.1.8 requires at least 100.
const DEFAULT_MAX_RECIPIENTS: usize = 100;
/// RFC 5321 says 512 octets, plus room for ESMTP parameters; Postfix allows 2048 as well.
const DEFAULT_MAX_COMMAND_LINE: usize = 2048;
/// RFC 5321 §4.5.3.1.6: 1000 octets including CRLF.
const DEFAULT_MAX_DATA_LINE: usize = 1000;
/// RFC 4954 §4: AUTH lines up to 12288 octets.
const DEFAULT_MAX_AUTH_LINE: usize = 12288;
/// A sidecar serves a handful of local programs; this caps memory and file descriptors.
const DEFAULT_MAX_CONNECTIONS: usize = 100;
/// Postfix's smtpd_hard_error_limit default is 20.
const DEFAULT_MAX_ERRORS: usize = 20;
/// Postfix's smtpd_junk_command_limit.
const DEFAULT_MAX_JUNK_COMMANDS: usize = 100;
const DEFAULT_MAX_TRANSACTIONS: usize = 100;
/// One misbehaving host cannot take every slot from the others.
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 20;
/// Enough for a user mistyping a password a few times; far too few to guess one.
const DEFAULT_AUTH_MAX_FAILURES: u32 = 10;
const DEFAULT_AUTH_LOCKOUT: u64 = 600;
/// msmtpd waits 1 s after a failed AUTH; we grow from there to 5 s.
const DEFAULT_AUTH_FAILURE_DELAY_MS: u64 = 1000;
/// RFC 5321 §4.5.3.2.7: a server should wait at least 5 minutes for a command.
const DEFAULT_COMMAND_TIMEOUT: u64 = 300;
/// A client that sends the end of an overlong line does so at once; one that does not
/// within seconds is feeding us an endless line.
const DEFAULT_LINE_END_TIMEOUT: u64 = 10;
/// RFC 5321 §4.5.3.2.6: 3 minutes per data block.
const DEFAULT_DATA_BLOCK_TIMEOUT: u64 = 180;
/// 30 minutes moves Gmail's largest message at 20 KB/s: slower than that is an attack
/// or a link that will not finish anyway.
const DEFAULT_DATA_TOTAL_TIMEOUT: u64 = 1800;
const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: u64 = 30;
/// Gmail answers commands in well under a second; a minute means it is not going to.
const DEFAULT_UPSTREAM_COMMAND_TIMEOUT: u64 = 60;
/// Postfix's before-queue proxy waits 100 s for the next hop, so its own client (with the
/// RFC's 10 minute minimum) never gives up before we do.
const DEFAULT_UPSTREAM_FINAL_REPLY_TIMEOUT: u64 = 100;
/// Seconds, not minutes: a session waits on it during MAIL FROM.
const DEFAULT_TOKEN_REQUEST_TIMEOUT: u64 = 15;
const DEFAULT_SHUTDOWN_GRACE: u64 = 30;
/// Long enough that a burst of sessions cannot hammer a failing endpoint, short enough that
/// recovery is noticed at once.
const DEFAULT_TOKEN_RETRY: u64 = 5;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            max_command_line: DEFAULT_MAX_COMMAND_LINE,
            max_data_line: DEFAULT_MAX_DATA_LINE,
            max_auth_line: DEFAULT_MAX_AUTH_LINE,
            max_errors: DEFAULT_MAX_ERRORS,
            max_junk_commands: DEFAULT_MAX_JUNK_COMMANDS,
            max_transactions: DEFAULT_MAX_TRANSACTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            auth_max_failures: DEFAULT_AUTH_MAX_FAILURES,
            auth_lockout: Duration::from_secs(DEFAULT_AUTH_LOCKOUT),
            auth_failure_delay: Duration::from_millis(DEFAULT_AUTH_FAILURE_DELAY_MS),
            auth_throttle_entries: crate::throttle::DEFAULT_MAX_ENTRIES,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: Duration::from_secs(DEFAULT_COMMAND_TIMEOUT),
            // Postfix bounds writes with the same smtpd_timeout as reads.
            client_write: Duration::from_secs(DEFAULT_COMMAND_TIMEOUT),
            line_end: Duration::from_secs(DEFAULT_LINE_END_TIMEOUT),
            data_block: Duration::from_secs(DEFAULT_DATA_BLOCK_TIMEOUT),
            data_total: Duration::from_secs(DEFAULT_DATA_TOTAL_TIMEOUT),
            upstream_connect: Duration::from_secs(DEFAULT_UPSTREAM_CONNECT_TIMEOUT),
            upstream_command: Duration::from_secs(DEFAULT_UPSTREAM_COMMAND_TIMEOUT),
            upstream_final_reply: Duration::from_secs(DEFAULT_UPSTREAM_FINAL_REPLY_TIMEOUT),
            token_request: Duration::from_secs(DEFAULT_TOKEN_REQUEST_TIMEOUT),
            token_retry: Duration::from_secs(DEFAULT_TOKEN_RETRY),
            shutdown_grace: Duration::from_secs(DEFAULT_SHUTDOWN_GRACE),
        }
    }
}

struct ProviderPreset {
    host: &'static str,
    port: u16,
    auth_url: String,
    token_url: String,
    scope: &'static str,
}

fn preset(provider: Provider, tenant: Option<&str>) -> Option<ProviderPreset> {
    match provider {
        Provider::Google => Some(ProviderPreset {
            host: "smtp.gmail.com",
            port: 587,
            auth_url: "https://accounts.google.com/o/oauth2/auth".into(),
            token_url: "https://oauth2.googleapis.com/token".into(),
            // The only Google scope that allows SMTP.
            scope: "https://mail.google.com/",
        }),
        Provider::Microsoft => {
            // "common" works for multi-tenant apps; single-tenant apps must name their tenant.
            let tenant = tenant.unwrap_or("common");
            Some(ProviderPreset {
                host: "smtp.office365.com",
                port: 587,
                auth_url: format!(
                    "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize"
                ),
                token_url: format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"),
                scope: "https://outlook.office.com/SMTP.Send offline_access",
            })
        }
        Provider::Custom => None,
    }
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

/// Reads and validates the config at `path`. Relative paths inside it (certificates,
/// secret files) are resolved against the directory the relay runs in, as the README's
/// examples assume.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut config = parse(&text, path)?;
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
    let expanded = expand_env(text, |name| std::env::var(name).ok()).map_err(|problems| {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        }
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
    let config = validate(raw, &mut check);
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

/// Replaces `${NAME}` with the environment variable NAME, line by line so TOML line
/// numbers stay right. `$${` is a literal `${`. Inside a "basic string" the value is
/// escaped for TOML, so a secret containing `"` or `\` cannot break the file; comments
/// are left alone. An unset variable, or one holding a line break, is a problem.
pub fn expand_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<Problem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let mut in_basic = false;
        let mut in_literal = false;
        let mut chars = line.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' if in_basic => {
                    out.push(c);
                    if let Some((_, escaped)) = chars.next() {
                        out.push(escaped);
                    }
                    continue;
                }
                '"' if !in_literal => in_basic = !in_basic,
                '\'' if !in_basic => in_literal = !in_literal,
                '#' if !in_basic && !in_literal => {
                    out.push_str(&line[at..]);
                    break;
                }
                '$' if line[at..].starts_with("$${") => {
                    out.push_str("${");
                    chars.next();
                    chars.next();
                    continue;
                }
                '$' if line[at..].starts_with("${") => {
                    let Some(end) = line[at..].find('}') else {
                        problems.push(Problem {
                            line: Some(index + 1),
                            field: String::new(),
                            message: "\"${\" without a closing \"}\"".to_string(),
                        });
                        out.push(c);
                        continue;
                    };
                    let name = &line[at + 2..at + end];
                    match lookup(name) {
                        Some(value) if value.contains(['\n', '\r']) => problems.push(Problem {
                            line: Some(index + 1),
                            field: String::new(),
                            message: format!("environment variable {name} contains a line break"),
                        }),
                        Some(value) if in_basic => {
                            for v in value.chars() {
                                match v {
                                    '"' => out.push_str("\\\""),
                                    '\\' => out.push_str("\\\\"),
                                    other => out.push(other),
                                }
                            }
                        }
                        Some(value) => out.push_str(&value),
                        None => problems.push(Problem {
                            line: Some(index + 1),
                            field: String::new(),
                            message: format!("environment variable {name} is not set"),
                        }),
                    }
                    // Skip past the closing brace.
                    while let Some((position, _)) = chars.peek() {
                        if *position > at + end {
                            break;
                        }
                        chars.next();
                    }
                    continue;
                }
                _ => {}
            }
            out.push(c);
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Maps byte offsets (TOML spans) to 1-based line numbers.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { starts }
    }

    fn line_of(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

struct Checker {
    lines: LineIndex,
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Checker {
    /// Warns when the secret file named by `field` can be read by others. Only the path
    /// and the mode are named, never the content.
    fn secret_file(&mut self, path: &Path, field: &str) {
        if let Some(mode) = exposed_mode(path) {
            self.warnings.push(format!(
                "{field}: {path} holds a secret and can be read by group or others (mode \
                 {mode:03o}); run `chmod 600 {path}`",
                path = path.display()
            ));
        }
    }

    fn at<T>(
        &mut self,
        spanned: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let line = self.lines.line_of(spanned.span().start);
        self.problems.push(Problem {
            line: Some(line),
            field: field.into(),
            message: message.into(),
        });
    }

    fn general(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            line: None,
            field: field.into(),
            message: message.into(),
        });
    }
}

fn validate(raw: RawConfig, check: &mut Checker) -> Option<Config> {
    let limits = validate_limits(raw.limits.unwrap_or_default(), check);
    let timeouts = validate_timeouts(raw.timeouts.unwrap_or_default(), check);

    let mut assets = Vec::new();
    let mut asset_names = HashSet::new();
    for (index, raw_asset) in raw.assets.iter().enumerate() {
        let name = raw_asset.get_ref().name.get_ref().clone();
        if !asset_names.insert(name.clone()) {
            check.at(
                &raw_asset.get_ref().name,
                format!("asset[{index}].name"),
                format!("asset name \"{name}\" is used twice"),
            );
        }
        if let Some(asset) = validate_asset(raw_asset.get_ref(), index, check) {
            assets.push(Arc::new(asset));
        }
    }
    if raw.assets.is_empty() {
        check.general(
            "asset",
            "no [[asset]] is configured: the relay would have nowhere to send mail",
        );
    }

    let server = validate_server(raw.server.unwrap_or_default(), &asset_names, check);
    let senders = build_sender_map(&raw.assets, check);
    let tokens = validate_tokens(raw.tokens.unwrap_or_default(), check);
    let admin_listen = raw.admin.and_then(|admin| admin.listen).and_then(|listen| {
        match listen.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                check.at(
                    &listen,
                    "admin.listen",
                    format!(
                        "\"{}\" is not an IP address and port such as \"127.0.0.1:9025\"",
                        listen.get_ref()
                    ),
                );
                None
            }
        }
    });

    let mut users = HashMap::new();
    for (index, raw_user) in raw.users.iter().enumerate() {
        if let Some(user) = validate_user(raw_user.get_ref(), index, &asset_names, check) {
            if users.contains_key(&user.name) {
                check.at(
                    &raw_user.get_ref().name,
                    format!("user[{index}].name"),
                    format!("user name \"{}\" is used twice", user.name),
                );
            }
            users.insert(user.name.clone(), Arc::new(user));
        }
    }
    if raw.users.is_empty() {
        check.general(
            "user",
            "no [[user]] is configured: no client could authenticate",
        );
    }

    Some(Config {
        server: server?,
        limits,
        timeouts,
        users,
        assets,
        senders,
        tokens,
        admin_listen,
        pool: {
            let raw = raw.pool.unwrap_or_default();
            crate::upstream::pool::PoolSettings {
                enabled: raw.enabled.unwrap_or(true),
                size: raw.size.unwrap_or(DEFAULT_POOL_SIZE),
                idle_timeout: Duration::from_secs(raw.idle_secs.unwrap_or(DEFAULT_POOL_IDLE)),
            }
        },
        warnings: Vec::new(),
    })
}

fn validate_tokens(raw: RawTokens, check: &mut Checker) -> TokenSettings {
    let key = match &raw.key_file {
        Some(path) => match crate::credentials::store::StoreKey::from_file(path.get_ref()) {
            Ok(key) => Some(key),
            Err(err) => {
                check.at(path, "tokens.key_file", err.to_string());
                None
            }
        },
        None => match std::env::var(STORE_KEY_ENV) {
            Ok(text) if !text.trim().is_empty() => {
                match crate::credentials::store::StoreKey::parse(&text) {
                    Ok(key) => Some(key),
                    Err(err) => {
                        check.general(STORE_KEY_ENV, err.to_string());
                        None
                    }
                }
            }
            _ => None,
        },
    };
    TokenSettings {
        path: raw
            .path
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_STORE)),
        key,
    }
}

fn parse_listen(
    value: Option<OneOrMany>,
    default: Option<&str>,
    field: &str,
    check: &mut Checker,
) -> Vec<SocketAddr> {
    let Some(value) = value else {
        return default
            .and_then(|addr| addr.parse().ok())
            .into_iter()
            .collect();
    };
    let mut addrs = Vec::new();
    for entry in value.into_vec() {
        match entry.parse::<SocketAddr>() {
            Ok(addr) => addrs.push(addr),
            Err(_) => check.general(
                field,
                format!(
                    "\"{entry}\" is not an IP address and port such as \"127.0.0.1:2525\" or \"[::1]:2525\""
                ),
            ),
        }
    }
    addrs
}

fn validate_server(
    raw: RawServer,
    asset_names: &HashSet<String>,
    check: &mut Checker,
) -> Option<ServerSettings> {
    let mut trusted_networks = Vec::new();
    for network in &raw.trusted_networks {
        let text = network.get_ref();
        // A bare address is a network of one host.
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => trusted_networks.push(net),
            Err(_) => check.at(
                network,
                "server.trusted_networks",
                format!("\"{text}\" is not a network like \"192.168.1.0/24\" or an address"),
            ),
        }
    }
    let trusted_assets = asset_access(
        &raw.trusted_assets,
        "server.trusted_assets",
        asset_names,
        check,
    );
    if !trusted_networks.is_empty() && raw.trusted_assets.is_empty() {
        check.general(
            "server.trusted_assets",
            "trusted_networks is set, so name the assets they may send through (or \"*\")",
        );
    }
    let listen = parse_listen(raw.listen, Some(DEFAULT_LISTEN), "server.listen", check);
    let listen_tls = parse_listen(raw.listen_tls, None, "server.listen_tls", check);
    let tls = match (&raw.tls_cert, &raw.tls_key) {
        (Some(cert), Some(key)) => match tls::server_config(cert.get_ref(), key.get_ref()) {
            Ok(config) => Some(config),
            Err(err) => {
                check.at(cert, "server.tls_cert", err.to_string());
                None
            }
        },
        (Some(cert), None) => {
            check.at(
                cert,
                "server.tls_key",
                "tls_cert is set but tls_key is missing",
            );
            None
        }
        (None, Some(key)) => {
            check.at(
                key,
                "server.tls_cert",
                "tls_key is set but tls_cert is missing",
            );
            None
        }
        (None, None) => None,
    };
    if !listen_tls.is_empty() && tls.is_none() && raw.tls_cert.is_none() {
        check.general(
            "server.listen_tls",
            "an implicit-TLS listener needs tls_cert and tls_key",
        );
    }
    if listen.is_empty() && listen_tls.is_empty() {
        check.general("server.listen", "no listen address is configured");
    }
    let hostname = raw.hostname.unwrap_or_else(default_hostname);
    if hostname.is_empty()
        || hostname
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        check.general(
            "server.hostname",
            format!("\"{hostname}\" is not a usable host name"),
        );
    }
    Some(ServerSettings {
        listen,
        listen_tls,
        hostname,
        tls,
        credential_failure: raw
            .credential_failure
            .unwrap_or(CredentialFailure::Temporary),
        bare_line_endings: match raw.bare_line_endings {
            None | Some(RawBareLineEndings::Normalize) => BareLineEndings::Normalize,
            Some(RawBareLineEndings::Reject) => BareLineEndings::Reject,
        },
        allow_plaintext_auth: raw.allow_plaintext_auth.unwrap_or(false),
        trusted_networks,
        trusted_assets,
        header_from: raw.header_from.unwrap_or(HeaderFromPolicy::Off),
        log_format: raw.log_format,
    })
}

/// The machine's name when it has one we can read without a dependency, else "localhost".
fn default_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty() && !name.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".to_string())
}

fn validate_limits(raw: RawLimits, check: &mut Checker) -> Limits {
    let defaults = Limits::default();
    let limits = Limits {
        max_connections: raw.max_connections.unwrap_or(defaults.max_connections),
        max_message_size: raw.max_message_size.unwrap_or(defaults.max_message_size),
        max_recipients: raw.max_recipients.unwrap_or(defaults.max_recipients),
        max_command_line: raw.max_command_line.unwrap_or(defaults.max_command_line),
        max_data_line: raw.max_data_line.unwrap_or(defaults.max_data_line),
        max_auth_line: raw.max_auth_line.unwrap_or(defaults.max_auth_line),
        max_errors: raw.max_errors.unwrap_or(defaults.max_errors),
        max_junk_commands: raw.max_junk_commands.unwrap_or(defaults.max_junk_commands),
        max_transactions: raw.max_transactions.unwrap_or(defaults.max_transactions),
        max_connections_per_ip: raw
            .max_connections_per_ip
            .unwrap_or(defaults.max_connections_per_ip),
        auth_max_failures: raw.auth_max_failures.unwrap_or(defaults.auth_max_failures),
        auth_lockout: raw
            .auth_lockout_secs
            .map(Duration::from_secs)
            .unwrap_or(defaults.auth_lockout),
        auth_failure_delay: raw
            .auth_failure_delay_ms
            .map(Duration::from_millis)
            .unwrap_or(defaults.auth_failure_delay),
        auth_throttle_entries: raw
            .auth_throttle_entries
            .unwrap_or(defaults.auth_throttle_entries),
    };
    let minimums: [(&str, u64, u64); 12] = [
        (
            "limits.max_connections_per_ip",
            limits.max_connections_per_ip as u64,
            1,
        ),
        (
            "limits.auth_max_failures",
            limits.auth_max_failures as u64,
            1,
        ),
        ("limits.max_connections", limits.max_connections as u64, 1),
        ("limits.max_message_size", limits.max_message_size, 1024),
        ("limits.max_recipients", limits.max_recipients as u64, 1),
        // RFC 5321 minimums: clients may rely on them.
        (
            "limits.max_command_line",
            limits.max_command_line as u64,
            512,
        ),
        ("limits.max_data_line", limits.max_data_line as u64, 1000),
        ("limits.max_auth_line", limits.max_auth_line as u64, 512),
        ("limits.max_errors", limits.max_errors as u64, 1),
        (
            "limits.max_junk_commands",
            limits.max_junk_commands as u64,
            1,
        ),
        ("limits.max_transactions", limits.max_transactions as u64, 1),
        (
            "limits.auth_throttle_entries",
            limits.auth_throttle_entries as u64,
            1,
        ),
    ];
    for (field, value, minimum) in minimums {
        if value < minimum {
            check.general(field, format!("{value} is below the minimum of {minimum}"));
        }
    }
    limits
}

fn validate_timeouts(raw: RawTimeouts, check: &mut Checker) -> Timeouts {
    let defaults = Timeouts::default();
    let mut pick = |field: &str, value: Option<u64>, default: Duration| match value {
        Some(0) => {
            check.general(field, "a timeout of 0 seconds would fail every operation");
            default
        }
        Some(secs) => Duration::from_secs(secs),
        None => default,
    };
    let command = pick("timeouts.command_secs", raw.command_secs, defaults.command);
    Timeouts {
        command,
        // Unset, writes get the same bound as reads.
        client_write: pick("timeouts.client_write_secs", raw.client_write_secs, command),
        line_end: pick(
            "timeouts.line_end_secs",
            raw.line_end_secs,
            defaults.line_end,
        ),
        data_block: pick(
            "timeouts.data_block_secs",
            raw.data_block_secs,
            defaults.data_block,
        ),
        data_total: pick(
            "timeouts.data_total_secs",
            raw.data_total_secs,
            defaults.data_total,
        ),
        upstream_connect: pick(
            "timeouts.upstream_connect_secs",
            raw.upstream_connect_secs,
            defaults.upstream_connect,
        ),
        upstream_command: pick(
            "timeouts.upstream_command_secs",
            raw.upstream_command_secs,
            defaults.upstream_command,
        ),
        upstream_final_reply: pick(
            "timeouts.upstream_final_reply_secs",
            raw.upstream_final_reply_secs,
            defaults.upstream_final_reply,
        ),
        token_request: pick(
            "timeouts.token_request_secs",
            raw.token_request_secs,
            defaults.token_request,
        ),
        token_retry: raw
            .token_retry_secs
            .map(Duration::from_secs)
            .unwrap_or(defaults.token_retry),
        shutdown_grace: pick(
            "timeouts.shutdown_grace_secs",
            raw.shutdown_grace_secs,
            defaults.shutdown_grace,
        ),
    }
}

fn validate_user(
    raw: &RawUser,
    index: usize,
    asset_names: &HashSet<String>,
    check: &mut Checker,
) -> Option<User> {
    let name = raw.name.get_ref().clone();
    if name.is_empty() {
        check.at(
            &raw.name,
            format!("user[{index}].name"),
            "a user name must not be empty",
        );
    }
    let hash = raw.password_hash.get_ref().clone();
    if let Err(err) = argon2::PasswordHash::new(&hash) {
        check.at(
            &raw.password_hash,
            format!("user[{index}].password_hash"),
            format!(
                "not a valid argon2 hash ({err}); make one with `smtp-oauth-relay hash-password`"
            ),
        );
    }
    let assets = asset_access(
        &raw.assets,
        &format!("user[{index}].assets"),
        asset_names,
        check,
    );
    if raw.assets.is_empty() {
        check.at(
            &raw.name,
            format!("user[{index}].assets"),
            format!("user \"{name}\" may use no asset; list asset names or \"*\""),
        );
    }
    Some(User {
        name,
        password_hash: hash,
        assets,
    })
}

/// A list of asset names, or "*" for all of them.
fn asset_access(
    names: &[Spanned<String>],
    field: &str,
    asset_names: &HashSet<String>,
    check: &mut Checker,
) -> AssetAccess {
    let mut allowed = HashSet::new();
    for name in names {
        let text = name.get_ref();
        if text == "*" {
            return AssetAccess::All;
        }
        if asset_names.contains(text) {
            allowed.insert(text.clone());
        } else {
            check.at(name, field, format!("no asset is named \"{text}\""));
        }
    }
    AssetAccess::Only(allowed)
}

fn build_sender_map(raw_assets: &[Spanned<RawAsset>], check: &mut Checker) -> SenderMap {
    let mut map = SenderMap::default();
    for (index, raw_asset) in raw_assets.iter().enumerate() {
        let asset = raw_asset.get_ref();
        let asset_name = asset.name.get_ref();
        if asset.senders.is_empty() {
            check.at(
                &asset.name,
                format!("asset[{index}].senders"),
                format!(
                    "asset \"{asset_name}\" serves no sender; list addresses, \"@domain\" or \"*\""
                ),
            );
        }
        for sender in &asset.senders {
            let field = format!("asset[{index}].senders");
            match SenderPattern::parse(sender.get_ref()) {
                Ok(pattern) => {
                    if let Err(previous) = map.insert(pattern, asset_name) {
                        check.at(
                            sender,
                            field,
                            format!(
                                "sender \"{}\" is already served by asset \"{previous}\"",
                                sender.get_ref()
                            ),
                        );
                    }
                }
                Err(message) => check.at(sender, field, message),
            }
        }
    }
    map
}

fn read_secret_file(path: &Spanned<PathBuf>, field: String, check: &mut Checker) -> Option<Secret> {
    match std::fs::read_to_string(path.get_ref()) {
        Ok(text) => {
            let value = text.trim();
            if value.is_empty() {
                check.at(
                    path,
                    field,
                    format!("{} is empty", path.get_ref().display()),
                );
                None
            } else {
                check.secret_file(path.get_ref(), &field);
                Some(Secret::new(value))
            }
        }
        Err(err) => {
            check.at(
                path,
                field,
                format!("cannot read {}: {err}", path.get_ref().display()),
            );
            None
        }
    }
}

fn validate_asset(raw: &RawAsset, index: usize, check: &mut Checker) -> Option<Asset> {
    let field = |name: &str| format!("asset[{index}].{name}");
    let name = raw.name.get_ref().clone();
    if name.is_empty() || name == "*" {
        check.at(
            &raw.name,
            field("name"),
            "an asset needs a name (and \"*\" is reserved)",
        );
    }
    let email = raw.email.get_ref().clone();
    if !email.contains('@') {
        check.at(
            &raw.email,
            field("email"),
            format!("\"{email}\" is not an email address"),
        );
    }
    let provider = raw.provider.unwrap_or(Provider::Google);
    let preset = preset(provider, raw.tenant.as_deref());

    let client_file = match &raw.client_json {
        Some(path) => match GoogleClientFile::load(path.get_ref()) {
            Ok(file) => {
                for (set, key) in [
                    (raw.client_id.is_some(), "client_id"),
                    (raw.client_secret.is_some(), "client_secret"),
                    (raw.client_secret_file.is_some(), "client_secret_file"),
                ] {
                    if set {
                        check.at(
                            path,
                            field(key),
                            format!("{key} comes from client_json; set one or the other"),
                        );
                    }
                }
                check.secret_file(path.get_ref(), &field("client_json"));
                Some(file)
            }
            Err(message) => {
                check.at(path, field("client_json"), message);
                None
            }
        },
        None => None,
    };
    let service_account = match &raw.service_account_json {
        Some(path) => {
            match crate::credentials::service_account::ServiceAccountKey::from_file(path.get_ref())
            {
                Ok(key) => {
                    check.secret_file(path.get_ref(), &field("service_account_json"));
                    Some(Arc::new(key))
                }
                Err(err) => {
                    check.at(path, field("service_account_json"), err.to_string());
                    None
                }
            }
        }
        None => None,
    };
    if let (Some(path), true) = (
        &raw.service_account_json,
        raw.client_json.is_some()
            || raw.client_id.is_some()
            || raw.refresh_token.is_some()
            || raw.refresh_token_file.is_some(),
    ) {
        check.at(
            path,
            field("service_account_json"),
            "a service-account asset needs no client_json, client_id or refresh token",
        );
    }

    let client_id = if raw.service_account_json.is_some() {
        Some(String::new())
    } else if let Some(file) = &client_file {
        Some(file.client_id.clone())
    } else {
        match &raw.client_id {
            Some(id) if !id.get_ref().is_empty() => Some(id.get_ref().clone()),
            _ => {
                check.at(
                    &raw.name,
                    field("client_id"),
                    format!("asset \"{name}\" needs a client_id (or client_json, or service_account_json)"),
                );
                None
            }
        }
    };
    let client_secret = match (&raw.client_secret, &raw.client_secret_file) {
        _ if raw.service_account_json.is_some() => Some(Secret::default()),
        _ if client_file.is_some() => client_file.as_ref().map(|f| f.client_secret.clone()),
        (Some(secret), None) => Some(Secret::new(secret.get_ref().clone())),
        (None, Some(path)) => read_secret_file(path, field("client_secret_file"), check),
        (Some(secret), Some(_)) => {
            check.at(
                secret,
                field("client_secret"),
                "set client_secret or client_secret_file, not both",
            );
            None
        }
        (None, None) => {
            check.at(
                &raw.name,
                field("client_secret"),
                format!(
                    "asset \"{name}\" needs client_secret or client_secret_file (or client_json)"
                ),
            );
            None
        }
    };
    let refresh_token = match (&raw.refresh_token, &raw.refresh_token_file) {
        (Some(token), None) => Some(RefreshTokenSource::Inline(Secret::new(
            token.get_ref().clone(),
        ))),
        (None, Some(path)) => read_secret_file(path, field("refresh_token_file"), check)
            .map(|_| RefreshTokenSource::File(path.get_ref().clone())),
        (Some(token), Some(_)) => {
            check.at(
                token,
                field("refresh_token"),
                "set refresh_token or refresh_token_file, not both",
            );
            None
        }
        // The usual case: `authorize` puts the token in the store.
        (None, None) => Some(RefreshTokenSource::Store),
    };

    // A URL the asset does not set comes from a file it names (checked like one written in
    // the config: a key file from elsewhere must not send credentials over plain http) or
    // from the provider preset.
    let from_client_json = |url: &str| {
        raw.client_json
            .as_ref()
            .map(|path| UrlSource::File(path, "client_json", url.to_string()))
    };
    let from_key_file = |url: &str| {
        raw.service_account_json
            .as_ref()
            .map(|path| UrlSource::File(path, "service_account_json", url.to_string()))
    };
    let from_preset = |url: &str| Some(UrlSource::Preset(url.to_string()));
    let token_url = pick_url(
        &raw.token_url,
        client_file
            .as_ref()
            .and_then(|f| from_client_json(&f.token_uri))
            .or_else(|| {
                service_account
                    .as_ref()
                    .and_then(|key| from_key_file(&key.token_uri))
            })
            .or_else(|| preset.as_ref().and_then(|p| from_preset(&p.token_url))),
        &field("token_url"),
        &raw.name,
        check,
    );
    let auth_url = pick_url(
        &raw.auth_url,
        client_file
            .as_ref()
            .and_then(|f| from_client_json(&f.auth_uri))
            .or_else(|| preset.as_ref().and_then(|p| from_preset(&p.auth_url))),
        &field("auth_url"),
        &raw.name,
        check,
    );
    let scope = match (&raw.scope, &preset) {
        (Some(scope), _) => Some(scope.clone()),
        (None, Some(preset)) => Some(preset.scope.to_string()),
        (None, None) => {
            check.at(
                &raw.name,
                field("scope"),
                "provider \"custom\" needs a scope",
            );
            None
        }
    };
    let redirect_uri = raw
        .redirect_uri
        .as_ref()
        .map(|uri| uri.get_ref().clone())
        .or_else(|| {
            client_file
                .as_ref()
                .and_then(|f| f.loopback_redirect.clone())
        });

    let (host, port) = match &raw.upstream {
        Some(upstream) => match split_host_port(upstream.get_ref()) {
            Some(host_port) => host_port,
            None => {
                check.at(
                    upstream,
                    field("upstream"),
                    format!("\"{}\" is not host:port", upstream.get_ref()),
                );
                return None;
            }
        },
        None => match &preset {
            Some(preset) => (preset.host.to_string(), preset.port),
            None => {
                check.at(
                    &raw.name,
                    field("upstream"),
                    "provider \"custom\" needs upstream = \"host:port\"",
                );
                return None;
            }
        },
    };
    let upstream_tls = raw.upstream_tls.unwrap_or(if port == 465 {
        UpstreamTls::Implicit
    } else {
        UpstreamTls::Starttls
    });
    let client_config =
        match tls::client_config(raw.upstream_ca.as_ref().map(|ca| ca.get_ref().as_path())) {
            Ok(config) => config,
            Err(err) => {
                match &raw.upstream_ca {
                    Some(ca) => check.at(ca, field("upstream_ca"), err.to_string()),
                    None => check.general(field("upstream_ca"), err.to_string()),
                }
                return None;
            }
        };

    Some(Asset {
        name,
        email,
        provider,
        client_id: client_id?,
        client_secret: client_secret?,
        refresh_token: refresh_token?,
        service_account,
        auth_url: auth_url?,
        token_url: token_url?,
        scopes: scope?.split_whitespace().map(str::to_string).collect(),
        redirect_uri,
        upstream: UpstreamTarget {
            host,
            port,
            tls: upstream_tls,
            client_config,
        },
    })
}

/// Where an OAuth endpoint URL the asset does not set itself comes from.
enum UrlSource<'a> {
    /// A file the asset names (`client_json`, `service_account_json`): the field and the URL.
    File(&'a Spanned<PathBuf>, &'static str, String),
    /// The provider's preset.
    Preset(String),
}

/// An OAuth endpoint: https, or plain http only on a loopback address (tests, the sandbox),
/// whatever its source.
fn pick_url(
    value: &Option<Spanned<String>>,
    fallback: Option<UrlSource<'_>>,
    field: &str,
    asset_name: &Spanned<String>,
    check: &mut Checker,
) -> Option<String> {
    let Some(value) = value else {
        return match fallback {
            None => {
                check.at(asset_name, field, "provider \"custom\" needs this URL");
                None
            }
            Some(UrlSource::File(path, file_field, url)) => match check_endpoint_url(&url) {
                Ok(()) => Some(url),
                Err(message) => {
                    check.at(
                        path,
                        format!("{field} (from {file_field})"),
                        format!("{} ({file_field}): {message}", path.get_ref().display()),
                    );
                    None
                }
            },
            Some(UrlSource::Preset(url)) => match check_endpoint_url(&url) {
                Ok(()) => Some(url),
                Err(message) => {
                    check.at(asset_name, field, message);
                    None
                }
            },
        };
    };
    match check_endpoint_url(value.get_ref()) {
        Ok(()) => Some(value.get_ref().clone()),
        Err(message) => {
            check.at(value, field, message);
            None
        }
    }
}

pub fn check_endpoint_url(url: &str) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|err| format!("\"{url}\" is not a URL: {err}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(parsed.host_str()) => Ok(()),
        "http" => Err(format!(
            "\"{url}\": plain http is only allowed on loopback addresses; use https"
        )),
        other => Err(format!("\"{url}\": scheme \"{other}\" is not https")),
    }
}

fn is_loopback_host(host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

fn split_host_port(value: &str) -> Option<(String, u16)> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Some((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = value.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    if host.parse::<IpAddr>().is_err() && host.contains(':') {
        return None;
    }
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3\"cr\\et".to_string()),
            "PORT" => Some("2525".to_string()),
            "BROKEN" => Some("a\nb".to_string()),
            _ => None,
        }
    }

    #[test]
    fn env_expansion_table() {
        let cases = [
            ("a = \"${PORT}\"\n", Ok("a = \"2525\"\n")),
            ("a = ${PORT}\n", Ok("a = 2525\n")),
            // Escaped for a basic string, raw in a literal string.
            ("a = \"${SECRET}\"", Ok("a = \"s3\\\"cr\\\\et\"")),
            ("a = '${PORT}'", Ok("a = '2525'")),
            ("a = \"$${PORT}\"", Ok("a = \"${PORT}\"")),
            (
                "# ${UNSET} in a comment stays\n",
                Ok("# ${UNSET} in a comment stays\n"),
            ),
            ("a = 1 # ${UNSET}", Ok("a = 1 # ${UNSET}")),
            (
                "a = \"# not a comment ${PORT}\"",
                Ok("a = \"# not a comment 2525\""),
            ),
        ];
        for (input, expected) in cases {
            let got = expand_env(input, env).map_err(|p| p.len());
            assert_eq!(got, expected.map(str::to_string), "{input:?}");
        }
        let problems = expand_env(
            "x = 1\na = \"${UNSET}\"\nb = \"${BROKEN}\"\nc = \"${OPEN\"",
            env,
        )
        .unwrap_err();
        let lines: Vec<_> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [Some(2), Some(3), Some(4)]);
        assert!(problems[0].message.contains("UNSET is not set"));
    }

    #[test]
    fn expanded_secret_reaches_the_config() {
        std::env::set_var("SMTP_OAUTH_RELAY_TEST_SECRET", "from-the-environment");
        let hash = crate::users::hash_password(&Secret::new("pw")).unwrap();
        let text = format!(
            r#"
[[user]]
name = "u"
password_hash = "{hash}"
assets = ["a"]

[[asset]]
name = "a"
email = "a@example.com"
client_id = "id"
client_secret = "${{SMTP_OAUTH_RELAY_TEST_SECRET}}"
refresh_token = "rt"
senders = ["a@example.com"]
"#
        );
        let config = parse(&text, Path::new("t.toml")).unwrap();
        assert_eq!(
            config.assets[0].client_secret.expose(),
            "from-the-environment"
        );
    }
}
