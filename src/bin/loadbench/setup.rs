//! The shared setup: PKI, token issuer, the relay config pieces and a scratch directory,
//! made once per benchmark and used by every run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use base64::Engine as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use smtp_oauth_relay::credentials::secret::Secret;
use smtp_oauth_relay::sandbox::gmail::{FakeGmail, FakeGmailConfig};
use smtp_oauth_relay::sandbox::pki::TestPki;
use smtp_oauth_relay::sandbox::token_issuer::{AccessTokens, IssuerAccount, TokenIssuer};

use crate::procfs::clock_ticks;
use crate::{CLIENT_ID, CLIENT_SECRET, EMAIL, MIB, PASSWORD, REFRESH_TOKEN, USER};

pub(crate) struct Bench {
    pub(crate) upstream_rt: tokio::runtime::Handle,
    pub(crate) shutdown: CancellationToken,
    pki: TestPki,
    tokens: AccessTokens,
    pub(crate) issuer: TokenIssuer,
    pub(crate) dir: ScratchDir,
    pub(crate) relay_exe: PathBuf,
    password_hash: String,
    /// For the direct runs, fetched from the fake issuer once.
    pub(crate) access_token: String,
    pub(crate) direct_tls: tokio_rustls::TlsConnector,
    pub(crate) clk_tck: u64,
    /// Relay runs so far, to name each run's config and log file.
    pub(crate) run_no: AtomicU64,
    /// Print the relay's pid when a measured phase starts (`--profile-secs`).
    pub(crate) announce_pid: bool,
}

impl Bench {
    pub(crate) async fn setup(upstream_rt: tokio::runtime::Handle) -> Bench {
        let relay_exe = std::env::current_exe()
            .expect("cannot find this program's path")
            .with_file_name("smtp-oauth-relay");
        if !relay_exe.is_file() {
            eprintln!(
                "error: {} not found; build it first: cargo build --release --bins",
                relay_exe.display()
            );
            std::process::exit(1);
        }
        let shutdown = CancellationToken::new();
        let pki = TestPki::generate(&["localhost", "127.0.0.1"]).expect("cannot generate the PKI");
        let tokens = AccessTokens::new();
        let issuer = {
            let tokens = tokens.clone();
            let shutdown = shutdown.clone();
            upstream_rt
                .spawn(async move {
                    let listener = TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("cannot bind the token issuer");
                    TokenIssuer::start(
                        listener,
                        vec![IssuerAccount {
                            client_id: CLIENT_ID.into(),
                            client_secret: CLIENT_SECRET.into(),
                            refresh_token: REFRESH_TOKEN.into(),
                            email: EMAIL.into(),
                        }],
                        tokens,
                        shutdown,
                    )
                    .await
                    .expect("cannot start the token issuer")
                })
                .await
                .expect("token issuer setup panicked")
        };
        let dir = ScratchDir::create();
        std::fs::write(dir.path().join("ca.pem"), &pki.ca_cert_pem).expect("cannot write ca.pem");
        let password_hash = smtp_oauth_relay::users::hash_password(&Secret::new(PASSWORD))
            .expect("cannot hash the password");
        let access_token = fetch_token(&issuer.token_url()).await;
        let direct_tls =
            tokio_rustls::TlsConnector::from(pki.client_config().expect("client TLS config"));
        Bench {
            upstream_rt,
            shutdown,
            pki,
            tokens,
            issuer,
            dir,
            relay_exe,
            password_hash,
            access_token,
            direct_tls,
            clk_tck: clock_ticks(),
            run_no: AtomicU64::new(0),
            announce_pid: false,
        }
    }

    /// A fresh fake Gmail on the upstream runtime, stopped by the returned token.
    pub(crate) async fn start_gmail(&self) -> (FakeGmail, CancellationToken) {
        let stop = self.shutdown.child_token();
        let config = FakeGmailConfig::new(
            self.pki.server_config().expect("server TLS config"),
            self.tokens.clone(),
        );
        let token = stop.clone();
        let gmail = self
            .upstream_rt
            .spawn(async move {
                let listener = TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("cannot bind the fake Gmail");
                FakeGmail::start(listener, config, token)
                    .await
                    .expect("cannot start the fake Gmail")
            })
            .await
            .expect("fake Gmail setup panicked");
        (gmail, stop)
    }

    /// The relay config for an upstream at `upstream`, listening on `listen`. No [pool]
    /// table: the relay runs with the repo's defaults there.
    pub(crate) fn relay_config(&self, listen: SocketAddr, upstream: SocketAddr) -> String {
        format!(
            r#"[server]
listen = "{listen}"
hostname = "relay.loadbench"

[limits]
max_connections = 1000
max_connections_per_ip = 1000
max_message_size = {max_size}

[[user]]
name = "{USER}"
password_hash = "{hash}"
assets = ["bench"]

[[asset]]
name = "bench"
email = "{EMAIL}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
refresh_token = "{REFRESH_TOKEN}"
senders = ["{EMAIL}"]
upstream = "{upstream}"
upstream_tls = "starttls"
upstream_ca = "{ca}"
token_url = "{token_url}"
# A benchmark is not a mailbox: no sending limits (issue 16).
daily_messages = 0
daily_recipients = 0
"#,
            max_size = 64 * MIB,
            hash = self.password_hash,
            ca = self.dir.path().join("ca.pem").display(),
            token_url = self.issuer.token_url(),
        )
    }

    /// The pool settings the relay runs with, as its own config parser reads the generated
    /// config (so the defaults of whatever this build is).
    pub(crate) fn pool_settings(&self) -> String {
        let probe: SocketAddr = "127.0.0.1:1".parse().expect("literal address");
        let text = self.relay_config(probe, probe);
        let path = self.dir.path().join("probe.toml");
        match smtp_oauth_relay::config::parse(&text, &path) {
            Ok(config) => {
                let debug = format!("{config:?}");
                let found = debug_fields(&debug, "pool");
                if found.is_empty() {
                    "none (this build's config has no pool settings)".to_string()
                } else {
                    found.join("; ")
                }
            }
            Err(err) => format!("unknown: the generated config does not parse: {err}"),
        }
    }
}

/// A private directory under the system temp dir for configs and relay logs, removed on drop.
/// (`tempfile` is only a dev-dependency, so not available to binaries.)
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    pub(crate) fn create() -> ScratchDir {
        use std::os::unix::fs::DirBuilderExt as _;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("loadbench-{}-{nanos:09}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .expect("cannot create a scratch directory");
        ScratchDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Gets an access token from the fake issuer with the refresh-token grant, as the relay does.
async fn fetch_token(token_url: &str) -> String {
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    let response = reqwest::Client::new()
        .post(token_url)
        .header("authorization", format!("Basic {basic}"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", REFRESH_TOKEN),
        ])
        .send()
        .await
        .expect("token request failed");
    let body = response.text().await.expect("token response unreadable");
    let json: serde_json::Value = serde_json::from_str(&body).expect("token response is not JSON");
    json["access_token"]
        .as_str()
        .expect("token response has no access_token")
        .to_owned()
}

/// The `field: Value { ... }` parts of a Debug rendering whose name contains `name`.
fn debug_fields(debug: &str, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(pos) = debug[from..].find(name) {
        let start = from + pos;
        let mut depth = 0i32;
        let mut end = debug.len();
        for (i, ch) in debug[start..].char_indices() {
            match ch {
                '{' | '[' | '(' => depth += 1,
                '}' | ']' | ')' if depth == 0 => {
                    end = start + i;
                    break;
                }
                '}' | ']' | ')' => depth -= 1,
                ',' if depth == 0 => {
                    end = start + i;
                    break;
                }
                _ => {}
            }
        }
        found.push(debug[start..end].trim().to_string());
        from = end.max(start + name.len());
    }
    found
}
