//! Opening the provider leg: TCP, then implicit TLS or STARTTLS (never continuing in the
//! clear), and the [`Connector`] that turns an asset into an authenticated [`Upstream`]
//! (access token → connection → `AUTH XOAUTH2`), shared by the session and `check`.

use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::client::{SmtpClient, UpstreamSettings};
use super::error::UpstreamError;
use crate::config::{Asset, UpstreamTarget, UpstreamTls};
use crate::error::RelayError;
use crate::metrics::Metrics;
use crate::oauth::token::{AccessToken, TokenManager};

/// What an upstream connection runs over once it is secured: always TLS.
pub type UpstreamStream = tokio_rustls::client::TlsStream<TcpStream>;

/// One SMTP connection to the provider, secured and (after
/// [`authenticate`](SmtpClient::authenticate)) logged in. The session drives its
/// transactions; the pool keeps it between them.
pub type Upstream = SmtpClient<UpstreamStream>;

impl Upstream {
    /// Connects and secures the connection (TLS verified against the target's roots), and
    /// learns the capabilities offered under TLS. Does not authenticate.
    pub async fn connect(
        target: &UpstreamTarget,
        settings: &UpstreamSettings,
    ) -> Result<Upstream, UpstreamError> {
        let name = format!("{}:{}", target.host, target.port);
        let tcp = timeout(
            settings.connect_timeout,
            TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        .map_err(|_| UpstreamError::Timeout {
            target: name.clone(),
            secs: settings.connect_timeout.as_secs(),
        })?
        .map_err(|err| UpstreamError::Connect {
            target: name.clone(),
            reason: err.to_string(),
        })?;
        // The final "." often goes in its own small write; without NODELAY, Nagle plus
        // delayed ACK add ~40 ms to every message.
        let _ = tcp.set_nodelay(true);

        let handshake_timeout = settings.command_timeout;
        match target.tls {
            UpstreamTls::Implicit => {
                let tls = secure(tcp, target, handshake_timeout).await?;
                let mut upstream = SmtpClient::new(tls, name, settings);
                upstream.handshake(&settings.ehlo_name).await?;
                Ok(upstream)
            }
            UpstreamTls::Starttls => {
                let mut plain = SmtpClient::new(tcp, name.clone(), settings);
                plain.handshake(&settings.ehlo_name).await?;
                let tcp = plain.starttls().await?;
                let tls = secure(tcp, target, handshake_timeout).await?;
                let mut upstream = SmtpClient::new(tls, name, settings);
                upstream.ehlo(&settings.ehlo_name).await?;
                Ok(upstream)
            }
        }
    }
}

/// The TLS handshake, verified against the target's roots and host name.
async fn secure(
    tcp: TcpStream,
    target: &UpstreamTarget,
    limit: Duration,
) -> Result<UpstreamStream, UpstreamError> {
    let tls_error = |reason: String| UpstreamError::Tls {
        target: format!("{}:{}", target.host, target.port),
        reason,
    };
    let server_name = ServerName::try_from(target.host.clone())
        .map_err(|err| tls_error(format!("invalid server name: {err}")))?;
    let connector = tokio_rustls::TlsConnector::from(target.client_config.clone());
    timeout(limit, connector.connect(server_name, tcp))
        .await
        .map_err(|_| tls_error("handshake timed out".into()))?
        .map_err(|err| tls_error(err.to_string()))
}

/// Opens authenticated upstream connections for assets: the one place where an access
/// token, a connection and an XOAUTH2 login come together.
pub struct Connector<'a> {
    tokens: &'a TokenManager,
    settings: &'a UpstreamSettings,
    metrics: Option<&'a Metrics>,
}

/// A failed attempt, with the token the provider refused if it got as far as the login.
struct Failed {
    error: RelayError,
    refused: Option<AccessToken>,
}

impl Failed {
    /// Before the login: no token was refused.
    fn early(err: impl Into<RelayError>) -> Failed {
        Failed {
            error: err.into(),
            refused: None,
        }
    }
}

impl<'a> Connector<'a> {
    pub fn new(tokens: &'a TokenManager, settings: &'a UpstreamSettings) -> Self {
        Connector {
            tokens,
            settings,
            metrics: None,
        }
    }

    /// Records connect and login times in `metrics`.
    pub fn with_metrics(self, metrics: &'a Metrics) -> Self {
        Connector {
            metrics: Some(metrics),
            ..self
        }
    }

    /// An upstream connection for `asset`, logged in with its access token and knowing
    /// when that token expires.
    pub async fn open(&self, asset: &Asset) -> Result<Upstream, RelayError> {
        let started = Instant::now();
        let mut retried = false;
        loop {
            let failure = match self.attempt(asset).await {
                Ok(upstream) => {
                    self.tokens.note_provider_login(&asset.name, None);
                    tracing::debug!(
                        asset = %asset.name,
                        upstream = %upstream.target(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "upstream session ready"
                    );
                    return Ok(upstream);
                }
                Err(failure) => failure,
            };
            // A cached token the provider refuses (revoked, or expired early) deserves one
            // fresh token on a new connection before we give up.
            if let (false, Some(token), RelayError::Upstream(err)) =
                (retried, &failure.refused, &failure.error)
            {
                if err.is_credential_rejection() && !token.fresh {
                    tracing::info!(asset = %asset.name, error = %err, "cached access token refused, refreshing once");
                    self.tokens.invalidate(&asset.name, &token.token).await;
                    retried = true;
                    continue;
                }
            }
            if let (Some(token), RelayError::Upstream(err)) = (&failure.refused, &failure.error) {
                // A fresh token refused: the credentials are fine at the token endpoint but
                // the provider will not take them (SMTP AUTH off, another account's grant).
                if err.is_credential_rejection() && token.fresh {
                    self.tokens
                        .note_provider_login(&asset.name, Some(err.to_string()));
                }
            }
            return Err(failure.error);
        }
    }

    async fn attempt(&self, asset: &Asset) -> Result<Upstream, Failed> {
        let token = self
            .tokens
            .access_token(&asset.name)
            .await
            .map_err(Failed::early)?;
        let connecting = Instant::now();
        let mut upstream = Upstream::connect(&asset.upstream, self.settings)
            .await
            .map_err(Failed::early)?;
        self.observe(|m| &m.upstream_connect_seconds, connecting.elapsed());
        let authenticating = Instant::now();
        let authenticated = upstream.authenticate(&asset.email, &token.token).await;
        self.observe(|m| &m.upstream_auth_seconds, authenticating.elapsed());
        match authenticated {
            Ok(()) => {
                upstream.set_token(token.token.clone(), token.expires_at);
                Ok(upstream)
            }
            Err(err) => Err(Failed {
                error: err.into(),
                refused: Some(token),
            }),
        }
    }

    fn observe(&self, histogram: impl FnOnce(&Metrics) -> &Histogram, took: Duration) {
        if let Some(metrics) = self.metrics {
            Metrics::observe(histogram(metrics), took);
        }
    }
}
