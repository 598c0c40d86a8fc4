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
    /// The durable spool (issue 15) when the config uses one; shared across reloads.
    pub spool: Option<Arc<crate::spool::Spool>>,
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
        let limits = crate::limits::Limits::with_slots(
            crate::state::limit_store(&config, tokens.shared()),
            Some(metrics.clone()),
            crate::limits::Slots::shared(tokens.shared().clone()),
        );
        let spool = open_spool(&config, None);
        Relay::build(
            config,
            metrics,
            auth_throttle,
            tokens,
            recent,
            limits,
            spool,
        )
    }

    /// The relay for a reloaded config: counters, login lockouts and the token state of
    /// assets whose credentials did not change carry over.
    pub fn reloaded(config: Config, previous: &Relay) -> Result<Relay, HttpClientInitError> {
        let tokens = TokenManager::reloaded(&config, &previous.tokens)?;
        let spool = open_spool(&config, previous.spool.as_ref());
        Relay::build(
            config,
            previous.metrics.clone(),
            previous.auth_throttle.clone(),
            tokens,
            previous.recent.clone(),
            previous.limits.clone(),
            spool,
        )
    }

    fn build(
        config: Config,
        metrics: Arc<Metrics>,
        auth_throttle: Arc<AuthThrottle>,
        tokens: TokenManager,
        recent: Arc<RecentMessages>,
        limits: Arc<crate::limits::Limits>,
        spool: Option<Arc<crate::spool::Spool>>,
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
            delivery: config.server.trusted_delivery,
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
            spool,
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

/// The spool for `config`: the running one at a reload, else opened now. A spool that cannot be opened is logged; `serve` checks it before
/// binding, so this only happens when the directory breaks at a reload.
fn open_spool(
    config: &Config,
    previous: Option<&Arc<crate::spool::Spool>>,
) -> Option<Arc<crate::spool::Spool>> {
    if !config.spool.enabled {
        return None;
    }
    if let Some(previous) = previous {
        // The worker delivers from the spool it started with: a new directory takes a
        // restart (the old one may still hold mail).
        if previous.dirs.root != config.spool.dir {
            tracing::warn!(running = %previous.dirs.root.display(), configured = %config.spool.dir.display(), "a new [spool] dir takes effect at the next restart; the running spool is kept");
        }
        return Some(previous.clone());
    }
    match crate::spool::Spool::open(&config.spool) {
        Ok(spool) => Some(spool),
        Err(err) => {
            tracing::error!(dir = %config.spool.dir.display(), error = %err, "cannot open the spool directory; spooled users get 451 until it works");
            None
        }
    }
}
