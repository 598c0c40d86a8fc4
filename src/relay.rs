//! What every session shares: the validated config, users, token cache and TLS settings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{Config, User};
use crate::console::recent::RecentMessages;
use crate::metrics::Metrics;
use crate::oauth::token::{HttpClientInitError, TokenManager};
use crate::throttle::AuthThrottle;
use crate::transport::{self, ApiClients, Link};
use crate::upstream::pool::UpstreamPool;
use crate::upstream::UpstreamSettings;
use crate::users::Users;

pub struct Relay {
    pub config: Arc<Config>,
    pub users: Users,
    pub tokens: TokenManager,
    pub upstream: UpstreamSettings,
    pub tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// Warm authenticated upstream links, per asset.
    pub pool: UpstreamPool<Link>,
    /// HTTPS clients of the assets on API transports.
    pub apis: ApiClients,
    /// Shared across reloads, so a SIGHUP does not clear lockouts.
    pub auth_throttle: Arc<AuthThrottle>,
    /// Shared with the relay that came before a reload, so counters keep counting.
    pub metrics: Arc<Metrics>,
    /// Who a client from `trusted_networks` sends as when it does not log in.
    pub trusted_user: Arc<User>,
    /// Recent per-message outcomes for the console; shared across reloads.
    pub recent: Arc<RecentMessages>,
    /// `[state] backend = "redis"`: what the replicas share (`None`: local).
    pub shared: crate::state::Shared,
    /// Sending limits per asset (issue 16): counters, marks, connection slots; shared
    /// across reloads.
    pub limits: Arc<crate::limits::Limits>,
    id_prefix: String,
    next_session: AtomicU64,
}

impl Relay {
    pub fn new(config: Config) -> Result<Relay, HttpClientInitError> {
        Relay::with_metrics(config, Arc::new(Metrics::new()))
    }

    pub fn with_metrics(
        config: Config,
        metrics: Arc<Metrics>,
    ) -> Result<Relay, HttpClientInitError> {
        let limits = &config.limits;
        let auth_throttle = Arc::new(AuthThrottle::new(
            limits.auth_max_failures,
            limits.auth_lockout,
            limits.auth_failure_delay,
            limits.auth_throttle_entries,
        ));
        let tokens = TokenManager::new(&config)?;
        let recent = Arc::new(RecentMessages::new(
            config
                .admin
                .console
                .as_ref()
                .map_or(0, |console| console.messages_kept),
        ));
        let limits = crate::limits::Limits::new(
            crate::state::limit_store(&config, tokens.shared()),
            Some(metrics.clone()),
        );
        Relay::build(config, metrics, auth_throttle, tokens, recent, limits)
    }

    /// The relay for a reloaded config: counters, login lockouts and the token state of
    /// assets whose credentials did not change carry over.
    pub fn reloaded(config: Config, previous: &Relay) -> Result<Relay, HttpClientInitError> {
        let tokens = TokenManager::reloaded(&config, &previous.tokens)?;
        Relay::build(
            config,
            previous.metrics.clone(),
            previous.auth_throttle.clone(),
            tokens,
            previous.recent.clone(),
            previous.limits.clone(),
        )
    }

    fn build(
        config: Config,
        metrics: Arc<Metrics>,
        auth_throttle: Arc<AuthThrottle>,
        tokens: TokenManager,
        recent: Arc<RecentMessages>,
        limits: Arc<crate::limits::Limits>,
    ) -> Result<Relay, HttpClientInitError> {
        let tokens = tokens.with_metrics(metrics.clone());
        let shared = tokens.shared().clone();
        let upstream = UpstreamSettings::from_config(&config);
        let tls_acceptor = config
            .server
            .tls
            .clone()
            .map(tokio_rustls::TlsAcceptor::from);
        // Session ids look like Postfix queue ids: the start time keeps them unique across
        // restarts, the counter within one run.
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let trusted_user = Arc::new(User {
            name: "(trusted network)".to_string(),
            password_hash: String::new(),
            assets: config.server.trusted_assets.clone(),
        });
        Ok(Relay {
            pool: UpstreamPool::new(config.pool),
            apis: ApiClients::new(&config)?,
            metrics,
            auth_throttle,
            trusted_user,
            recent,
            shared,
            limits,
            users: Users::new(config.users.clone(), config.limits.max_password_checks),
            config: Arc::new(config),
            tokens,
            upstream,
            tls_acceptor,
            id_prefix: format!("{:08X}", started as u32),
            next_session: AtomicU64::new(1),
        })
    }

    /// What transports need from the relay to open links and finish messages.
    pub fn transport_context(&self) -> transport::Context<'_> {
        transport::Context {
            tokens: &self.tokens,
            settings: &self.upstream,
            metrics: Some(&self.metrics),
            apis: &self.apis,
        }
    }

    pub fn next_session_id(&self) -> String {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:05X}", self.id_prefix)
    }
}
