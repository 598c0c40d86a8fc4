//! Test harness: a relay on a loopback port in front of the embedded Gmail-like upstream
//! (real TLS, real XOAUTH2 check) and the fake token endpoint; the SMTP client (`client`),
//! log capture (`logs`) and message helpers every test binary shares. Each binary includes
//! it with `#[path = "../common/mod.rs"] mod common;`.
// Each binary uses part of the harness.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

mod client;
pub mod graph;
mod logs;

pub use client::{Client, ExpectCode, MemoryClient};
pub use logs::{capture_logs, capture_logs_at, Captured};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use smtp_oauth_relay::config;
use smtp_oauth_relay::credentials::secret::Secret;
use smtp_oauth_relay::relay::Relay;
use smtp_oauth_relay::sandbox::gmail::{FakeGmail, FakeGmailConfig};
use smtp_oauth_relay::sandbox::gmail_api::FakeGmailApi;
use smtp_oauth_relay::sandbox::pki::TestPki;
use smtp_oauth_relay::sandbox::token_issuer::{AccessTokens, IssuerAccount, TokenIssuer};
use smtp_oauth_relay::server::{self, Listeners};
use smtp_oauth_relay::smtp::reply::Reply;

pub const SCANNER: (&str, &str) = ("scanner", "scanner-password-1");
pub const APP: (&str, &str) = ("app", "app-password-2");
pub const ADMIN: (&str, &str) = ("admin", "admin-password-3");

pub const SUPPORT_EMAIL: &str = "support@example.com";
pub const SUPPORT_SECRET: &str = "support-client-secret-Zq81";
pub const SUPPORT_REFRESH: &str = "1//support-refresh-token-Kx92";
pub const SALES_EMAIL: &str = "sales@example.org";
pub const SALES_SECRET: &str = "sales-client-secret-Pw77";
pub const SALES_REFRESH: &str = "1//sales-refresh-token-Lm33";

/// Password hashes are slow to make; every test in a binary shares them.
fn hashes() -> &'static [String; 3] {
    static HASHES: OnceLock<[String; 3]> = OnceLock::new();
    HASHES.get_or_init(|| {
        [SCANNER, APP, ADMIN].map(|(_, password)| {
            smtp_oauth_relay::users::hash_password(&Secret::new(password)).unwrap()
        })
    })
}

/// Knobs for one test environment.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra lines for the [server] table.
    pub server: String,
    /// Lines for the [limits] table.
    pub limits: String,
    /// Lines for the [timeouts] table.
    pub timeouts: String,
    /// Lines for the [pool] table; empty means the pool is off, so tests see one
    /// upstream connection per session unless they test the pool.
    pub pool: String,
    /// Lines for the [upstream] table (pipelining, chunking); empty means the defaults.
    pub upstream: String,
    /// Upstream in implicit-TLS mode.
    pub implicit_tls: bool,
    /// The upstream checks tokens against its own registry, so it refuses every token the
    /// issuer hands out (as Gmail does for a token of the wrong account or scope).
    pub upstream_refuses_tokens: bool,
    /// The `support` asset has no refresh_token_file: it reads its refresh token from the
    /// token store at `env.path("tokens.json")` (empty at first), and its auth_url is the
    /// fake issuer's consent endpoint (for `authorize`).
    pub support_from_store: bool,
    /// Extra lines for the [tokens] table (e.g. `key_file = ...`); placeholders as in
    /// `extra_assets`.
    pub tokens: String,
    /// More `[[asset]]` tables, appended after the two standard ones. Placeholders:
    /// `@TOKEN_URL@`, `@AUTH_URL@` (the fake issuer), `@UPSTREAM@`, `@UPSTREAM_TLS@`, `@CA@`
    /// (the fake Gmail and its CA file), `@DIR@` (the env's directory), `@API_URL@` and
    /// `@TOKENINFO_URL@` (the fake Gmail API).
    pub extra_assets: String,
    /// Files written (mode 0600) into the env's directory before the config is loaded, as
    /// (name, contents); the contents take the placeholders of `extra_assets`.
    pub files: Vec<(String, String)>,
    /// Replaces the `support` asset's `upstream` (e.g. a closed port, or another server);
    /// `sales` keeps the fake Gmail.
    pub support_upstream: Option<String>,
    /// A CA certificate (PEM) written to `support-ca.pem` and used as the `support` asset's
    /// `upstream_ca` instead of the fake Gmail's CA.
    pub support_upstream_ca_pem: Option<String>,
    /// Replaces the `support` asset's `client_secret`.
    pub support_client_secret: Option<String>,
    /// Replaces the `support` asset's `token_url`.
    pub support_token_url: Option<String>,
    /// `delivery = ...` for the `scanner` user (issue 15: "spool").
    pub scanner_delivery: Option<String>,
    /// More lines for the `support` asset (e.g. its sending limits).
    pub support_extra: String,
    /// Lines for a `[spool]` table (placeholders as in `extra_assets`); none when empty.
    pub spool: String,
}

pub struct Env {
    pub relay_addr: SocketAddr,
    /// The relay's implicit-TLS listener.
    pub relay_tls_addr: SocketAddr,
    pub relay: Arc<Relay>,
    pub gmail: FakeGmail,
    /// A fake Gmail API (HTTPS with the same CA) for assets with `transport = "gmail-api"`.
    pub gmail_api: FakeGmailApi,
    pub issuer: TokenIssuer,
    pub tokens: AccessTokens,
    pub pki: TestPki,
    pub dir: tempfile::TempDir,
    pub config_text: String,
    shutdown: CancellationToken,
    /// A child of `shutdown` that stops only the relay (see [`Env::restart_relay`]).
    relay_shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Env {
    pub async fn start() -> Env {
        Env::with(Options::default()).await
    }

    pub async fn with(options: Options) -> Env {
        smtp_oauth_relay::tls::install_default_provider();
        let shutdown = CancellationToken::new();
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate(&["localhost", "127.0.0.1", "::1"]).unwrap();
        let tokens = AccessTokens::new();

        let issuer = TokenIssuer::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            vec![
                IssuerAccount {
                    client_id: "support-client".into(),
                    client_secret: SUPPORT_SECRET.into(),
                    refresh_token: SUPPORT_REFRESH.into(),
                    email: SUPPORT_EMAIL.into(),
                },
                IssuerAccount {
                    client_id: "sales-client".into(),
                    client_secret: SALES_SECRET.into(),
                    refresh_token: SALES_REFRESH.into(),
                    email: SALES_EMAIL.into(),
                },
            ],
            tokens.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();

        let upstream_tokens = if options.upstream_refuses_tokens {
            AccessTokens::new()
        } else {
            tokens.clone()
        };
        let mut gmail_config = FakeGmailConfig::new(pki.server_config().unwrap(), upstream_tokens);
        gmail_config.implicit_tls = options.implicit_tls;
        let gmail = FakeGmail::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            gmail_config,
            shutdown.clone(),
        )
        .await
        .unwrap();

        let gmail_api = FakeGmailApi::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            pki.server_config().unwrap(),
            tokens.clone(),
            None,
            shutdown.clone(),
        )
        .await
        .unwrap();

        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), &pki.ca_cert_pem).unwrap();
        std::fs::write(path("relay.crt"), pki.server_cert_pem()).unwrap();
        std::fs::write(path("relay.key"), pki.server_key_pem()).unwrap();
        std::fs::write(path("support.refresh"), format!("{SUPPORT_REFRESH}\n")).unwrap();
        std::fs::write(path("sales.secret"), SALES_SECRET).unwrap();
        let upstream_tls_mode = if options.implicit_tls {
            "implicit"
        } else {
            "starttls"
        };
        let placeholders = |text: &str| {
            text.replace("@TOKEN_URL@", &issuer.token_url())
                .replace("@AUTH_URL@", &issuer.auth_url())
                .replace("@UPSTREAM@", &gmail.addr().to_string())
                .replace("@UPSTREAM_TLS@", upstream_tls_mode)
                .replace("@CA@", &path("ca.pem").display().to_string())
                .replace("@DIR@", &dir.path().display().to_string())
                .replace("@API_URL@", &gmail_api.url())
                .replace("@TOKENINFO_URL@", &gmail_api.tokeninfo_url())
        };
        for (name, contents) in &options.files {
            // Private (0600), as key files must be.
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path(name))
                .unwrap();
            file.write_all(placeholders(contents).as_bytes()).unwrap();
        }
        let support_token_source = if options.support_from_store {
            format!("auth_url = \"{}\"", issuer.auth_url())
        } else {
            format!(
                "refresh_token_file = \"{}\"",
                path("support.refresh").display()
            )
        };
        // Always in the env's directory: the relay keeps its state (the token store, the
        // sending counters of issue 16 in `limits.json` beside it) there, never in the
        // working directory that tests share.
        let tokens_table = format!(
            "[tokens]\npath = \"{}\"\n{}\n",
            path("tokens.json").display(),
            placeholders(&options.tokens)
        );
        let extra_assets = placeholders(&options.extra_assets);
        let spool_table = if options.spool.is_empty() {
            String::new()
        } else {
            format!("[spool]\n{}\n", placeholders(&options.spool))
        };
        let scanner_delivery = options
            .scanner_delivery
            .as_ref()
            .map(|delivery| format!("delivery = \"{delivery}\""))
            .unwrap_or_default();

        let [scanner_hash, app_hash, admin_hash] = hashes().clone();
        let upstream_tls = upstream_tls_mode;
        let support_ca = match &options.support_upstream_ca_pem {
            Some(pem) => {
                std::fs::write(path("support-ca.pem"), pem).unwrap();
                path("support-ca.pem")
            }
            None => path("ca.pem"),
        };
        let support_upstream = options
            .support_upstream
            .clone()
            .unwrap_or_else(|| gmail.addr().to_string());
        let support_secret = options
            .support_client_secret
            .as_deref()
            .unwrap_or(SUPPORT_SECRET);
        let support_token_url = options
            .support_token_url
            .clone()
            .unwrap_or_else(|| issuer.token_url());
        // A default below is left out when the test sets the same key itself (TOML refuses
        // duplicate keys).
        let timeout_defaults: String = [
            ("upstream_command_secs", 10),
            ("upstream_final_reply_secs", 10),
            ("token_request_secs", 3),
        ]
        .iter()
        .filter(|(key, _)| !options.timeouts.contains(key))
        .map(|(key, secs)| format!("{key} = {secs}\n"))
        .collect();
        // No back-off between failed refreshes unless a test asks for it: tests switch the
        // fake token endpoint between modes and expect the next session to see the change.
        let timeouts = if options.timeouts.contains("token_retry_secs") {
            options.timeouts.clone()
        } else {
            format!("token_retry_secs = 0\n{}", options.timeouts)
        };
        let config_text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
hostname = "relay.test"
tls_cert = "{cert}"
tls_key = "{key}"
{server_extra}

[limits]
{limits}

[timeouts]
{timeout_defaults}{timeouts}

[pool]
{pool}

[upstream]
{upstream_table}

[[user]]
name = "{scanner}"
password_hash = "{scanner_hash}"
assets = ["support"]
{scanner_delivery}

[[user]]
name = "{app}"
password_hash = "{app_hash}"
assets = ["sales"]

[[user]]
name = "{admin}"
password_hash = "{admin_hash}"
assets = ["*"]

[[asset]]
name = "support"
email = "{support_email}"
client_id = "support-client"
client_secret = "{support_secret}"
{support_token_source}
senders = ["{support_email}", "@example.com"]
upstream = "{support_upstream}"
upstream_tls = "{upstream_tls}"
upstream_ca = "{support_ca}"
token_url = "{support_token_url}"
{support_extra}

[[asset]]
name = "sales"
email = "{sales_email}"
client_id = "sales-client"
client_secret_file = "{sales_secret}"
refresh_token = "{sales_refresh}"
senders = ["{sales_email}"]
upstream = "{upstream}"
upstream_tls = "{upstream_tls}"
upstream_ca = "{ca}"
token_url = "{token_url}"

{extra_assets}

{tokens_table}

{spool_table}
"#,
            cert = path("relay.crt").display(),
            key = path("relay.key").display(),
            server_extra = options.server,
            limits = options.limits,
            timeouts = timeouts,
            pool = if options.pool.is_empty() {
                "enabled = false"
            } else {
                options.pool.as_str()
            },
            upstream_table = options.upstream,
            scanner = SCANNER.0,
            app = APP.0,
            admin = ADMIN.0,
            support_email = SUPPORT_EMAIL,
            support_secret = support_secret,
            support_extra = options.support_extra,
            support_ca = support_ca.display(),
            support_token_source = support_token_source,
            upstream = gmail.addr(),
            ca = path("ca.pem").display(),
            token_url = issuer.token_url(),
            sales_email = SALES_EMAIL,
            sales_secret = path("sales.secret").display(),
            sales_refresh = SALES_REFRESH,
        );
        std::fs::write(path("relay.toml"), &config_text).unwrap();
        let config = config::parse(&config_text, &path("relay.toml")).unwrap();
        let relay_shutdown = shutdown.child_token();
        let (relay, relay_addr, relay_tls_addr, server) =
            spawn_relay(config, relay_shutdown.clone()).await;
        Env {
            relay_addr,
            relay_tls_addr,
            relay,
            gmail,
            gmail_api,
            issuer,
            tokens,
            pki,
            dir,
            config_text,
            shutdown,
            relay_shutdown,
            server: Some(server),
        }
    }

    /// Stops the relay (not the fakes) and starts a new one from the same config file on
    /// new ports: a process restart, with the same token store and the same fakes.
    pub async fn restart_relay(&mut self) {
        self.relay_shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
        let config = config::parse(&self.config_text, &self.path("relay.toml")).unwrap();
        self.relay_shutdown = self.shutdown.child_token();
        let (relay, relay_addr, relay_tls_addr, server) =
            spawn_relay(config, self.relay_shutdown.clone()).await;
        self.relay = relay;
        self.relay_addr = relay_addr;
        self.relay_tls_addr = relay_tls_addr;
        self.server = Some(server);
    }

    /// The token store the relay uses (path and key from the config).
    pub fn store(&self) -> smtp_oauth_relay::credentials::store::TokenStore {
        smtp_oauth_relay::credentials::store::TokenStore::new(
            self.relay.config.tokens.path.clone(),
            self.relay.config.tokens.key.clone(),
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.relay_addr).await
    }

    /// A client that has said EHLO and logged in with AUTH PLAIN.
    pub async fn logged_in(&self, (user, password): (&str, &str)) -> Client {
        let mut client = self.client().await;
        client.ehlo().await;
        client.auth_plain(user, password).await.expect_code(235);
        client
    }

    /// On a new connection: logs in as `user`, sends `message(subject)` from `from` to `to`
    /// and says QUIT; returns the final reply to the message. Panics if MAIL, RCPT or DATA
    /// is refused.
    pub async fn send_as(&self, user: (&str, &str), from: &str, to: &str, subject: &str) -> Reply {
        let mut client = self.logged_in(user).await;
        let reply = client.send_mail(from, &[to], &message(subject)).await;
        client.quit().await;
        reply
    }

    /// On a new connection: logs in as `user`, sends `MAIL FROM:<from>` and says QUIT;
    /// returns the reply to MAIL.
    pub async fn mail_from_as(&self, user: (&str, &str), from: &str) -> Reply {
        let mut client = self.logged_in(user).await;
        let reply = client.cmd(&format!("MAIL FROM:<{from}>")).await;
        client.quit().await;
        reply
    }

    /// Stops the relay (which drains its sessions) and returns the upstream fake, still
    /// holding what was delivered; the fakes stop when the returned handle's Env is gone.
    pub async fn stop_and_keep_fakes(mut self) -> FakeGmail {
        if let Some(server) = self.server.take() {
            self.relay_shutdown.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
        }
        let gmail = self.gmail.clone();
        self.shutdown.cancel();
        gmail
    }

    /// Stops the relay and its fakes and waits for the relay to drain.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
    }
}

/// A relay for `config` on fresh loopback ports (plain and implicit TLS).
async fn spawn_relay(
    config: config::Config,
    shutdown: CancellationToken,
) -> (
    Arc<Relay>,
    SocketAddr,
    SocketAddr,
    tokio::task::JoinHandle<()>,
) {
    let relay = Arc::new(Relay::new(config).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = listener.local_addr().unwrap();
    let tls_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_tls_addr = tls_listener.local_addr().unwrap();
    let server = tokio::spawn(server::run(
        Listeners {
            plain: vec![listener],
            implicit_tls: vec![tls_listener],
        },
        relay.clone(),
        shutdown,
    ));
    (relay, relay_addr, relay_tls_addr, server)
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A small well-formed message with CRLF line endings.
pub fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: Support <support@example.com>\r\nTo: someone@example.net\r\nSubject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\n\r\nHello from the test.\r\n.leading dot line\r\n"
    )
    .into_bytes()
}

/// Splits what the upstream received into the relay's Received header and the rest.
pub fn split_received(data: &[u8]) -> (String, Vec<u8>) {
    assert!(data.starts_with(b"Received: "), "no Received header first");
    // The header ends at the first CRLF not followed by folding whitespace.
    let mut end = 0;
    while let Some(pos) = data[end..].windows(2).position(|w| w == b"\r\n") {
        let next = end + pos + 2;
        if matches!(data.get(next), Some(b' ') | Some(b'\t')) {
            end = next;
        } else {
            end = next;
            break;
        }
    }
    (
        String::from_utf8(data[..end].to_vec()).unwrap(),
        data[end..].to_vec(),
    )
}

/// Dot-unstuffed form of a wire body (what the recipient sees).
pub fn unstuffed(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    let mut at_line_start = true;
    let mut i = 0;
    while i < wire.len() {
        let byte = wire[i];
        if at_line_start && byte == b'.' {
            i += 1;
            at_line_start = false;
            continue;
        }
        out.push(byte);
        at_line_start = byte == b'\n';
        i += 1;
    }
    out
}
