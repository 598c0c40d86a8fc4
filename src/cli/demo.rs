//! `serve --sandbox`: the relay with no config and no Google account.
//!
//! Starts the embedded Gmail-like server and token issuer (see `sandbox`) and builds a
//! config in memory whose only asset sends there, so a new user can point a mailer at
//! 127.0.0.1:2525 and see the relayed message appear as an .eml file.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{
    Asset, AssetAccess, AssetTransport, Config, CredentialFailure, Grant, GraphSettings,
    HeaderFromPolicy, Limits, PoolSettings, Provider, RefreshTokenSource, ServerSettings, Timeouts,
    TokenSettings, UpstreamTarget, UpstreamTls, User, DEFAULT_GRAPH_CONCURRENCY,
};
use crate::credentials::secret::Secret;
use crate::sandbox::SandboxUpstream;
use crate::senders::{SenderMap, SenderPattern};
use crate::smtp::data::BareLineEndings;
use crate::tls;
use crate::users::hash_password;

pub const DEMO_USER: &str = "demo";
pub const DEMO_PASSWORD: &str = "demo";
pub const DEMO_ASSET: &str = "sandbox";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the sandbox upstream: {0}")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Hash(#[from] crate::users::HashError),
}

/// A relay config whose one asset ("sandbox", serving every sender) delivers to `upstream`.
pub fn sandbox_config(
    upstream: &SandboxUpstream,
    listen: Vec<SocketAddr>,
) -> Result<Config, DemoError> {
    let addr = upstream.gmail.addr();
    let asset = Asset {
        name: DEMO_ASSET.to_string(),
        email: upstream.email.clone(),
        provider: Provider::Custom,
        client_id: upstream.client_id.clone(),
        client_secret: Secret::new(upstream.client_secret.clone()),
        refresh_token: RefreshTokenSource::Inline(Secret::new(upstream.refresh_token.clone())),
        service_account: None,
        auth_url: format!(
            "{}/auth",
            upstream.issuer.token_url().trim_end_matches("/token")
        ),
        token_url: upstream.issuer.token_url(),
        scopes: vec!["https://mail.google.com/".to_string()],
        redirect_uri: None,
        upstream: UpstreamTarget {
            host: addr.ip().to_string(),
            port: addr.port(),
            tls: UpstreamTls::Starttls,
            client_config: tls::client_config_from(upstream.pki.root_store())?,
        },
        transport: Default::default(),
        header_recipients: Default::default(),
        grant: Grant::RefreshToken,
        client_secret_expires: None,
        // A custom provider has no published limits.
        sending: Default::default(),
    };
    let mut senders = SenderMap::default();
    // Only one claim on an empty map: it cannot collide.
    let _ = senders.insert(SenderPattern::Any, DEMO_ASSET);
    let user = User {
        name: DEMO_USER.to_string(),
        password_hash: hash_password(&Secret::new(DEMO_PASSWORD))?,
        assets: AssetAccess::Only(HashSet::from([DEMO_ASSET.to_string()])),
        delivery: Default::default(),
    };
    Ok(Config {
        server: ServerSettings {
            listen,
            listen_tls: Vec::new(),
            hostname: "localhost".to_string(),
            // STARTTLS on the local side too, with the sandbox's own certificate, so
            // clients can try it.
            tls: Some(upstream.pki.server_config()?),
            credential_failure: CredentialFailure::Temporary,
            bare_line_endings: BareLineEndings::Normalize,
            allow_plaintext_auth: false,
            trusted_networks: Vec::new(),
            trusted_assets: AssetAccess::Only(HashSet::new()),
            header_from: HeaderFromPolicy::Off,
            log_format: None,
            trusted_delivery: Default::default(),
        },
        limits: Limits::default(),
        timeouts: Timeouts::default(),
        users: HashMap::from([(DEMO_USER.to_string(), Arc::new(user))]),
        assets: vec![Arc::new(asset)],
        senders,
        // Unused: the sandbox asset's refresh token is inline.
        admin_listen: None,
        admin: Default::default(),
        pool: PoolSettings::default(),
        upstream: crate::config::UpstreamDialogue::default(),
        alerts: crate::config::AlertSettings::default(),
        state: crate::config::StateSettings::default(),
        warnings: Vec::new(),
        spool: Default::default(),
        tokens: TokenSettings {
            path: PathBuf::from("sandbox-state/tokens.json"),
            key: None,
        },
    })
}

/// Which embedded upstream `serve --sandbox` sends through (`--sandbox-transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SandboxTransport {
    /// The Gmail-like SMTP server (XOAUTH2 with a refresh token).
    #[default]
    Smtp,
    /// The Gmail API fake (HTTPS, bearer token, scope gmail.send).
    GmailApi,
    /// The Microsoft Graph-like HTTPS endpoint, with app-only (client-credentials)
    /// tokens and the large-message path on.
    Graph,
}

/// [`sandbox_config`] for `transport`: the one asset sends through the chosen fake.
pub fn sandbox_config_for(
    upstream: &SandboxUpstream,
    listen: Vec<SocketAddr>,
    transport: SandboxTransport,
) -> Result<Config, DemoError> {
    let mut config = sandbox_config(upstream, listen)?;
    if transport == SandboxTransport::GmailApi {
        use_gmail_api(&mut config, upstream);
    }
    if transport == SandboxTransport::Graph {
        let addr = upstream.graph.addr();
        let mut asset = Asset::clone(&config.assets[0]);
        asset.transport = AssetTransport::Graph(GraphSettings {
            api_url: upstream.graph.api_url(),
            large_messages: true,
            concurrency: DEFAULT_GRAPH_CONCURRENCY,
        });
        asset.grant = Grant::ClientCredentials;
        asset.client_id = upstream.graph_client_id.clone();
        asset.client_secret = Secret::new(upstream.graph_client_secret.clone());
        asset.scopes = vec!["https://graph.microsoft.com/.default".to_string()];
        asset.upstream = UpstreamTarget {
            host: addr.ip().to_string(),
            port: addr.port(),
            tls: UpstreamTls::Implicit,
            client_config: tls::client_config_from(upstream.pki.root_store())?,
        };
        config.assets = vec![Arc::new(asset)];
    }
    Ok(config)
}

/// Switches the sandbox asset to the Gmail API transport, pointed at the sandbox's fake
/// Gmail API (and its tokeninfo), with the gmail.send scope.
pub fn use_gmail_api(config: &mut Config, upstream: &SandboxUpstream) {
    for asset in &mut config.assets {
        let mut changed = (**asset).clone();
        changed.transport =
            crate::config::AssetTransport::GmailApi(crate::config::GmailApiSettings {
                api_url: upstream.gmail_api.url(),
                tokeninfo_url: upstream.gmail_api.tokeninfo_url(),
            });
        changed.scopes = vec![crate::config::GMAIL_SEND_SCOPE.to_string()];
        *asset = Arc::new(changed);
    }
}

/// Where the sandbox saves delivered mail by default.
pub fn default_mail_dir() -> PathBuf {
    PathBuf::from("sandbox-mail")
}
