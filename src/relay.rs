//! What every session shares: the validated config, users, token cache and TLS settings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth::Users;
use crate::config::Config;
use crate::token::{HttpClientInitError, TokenManager};
use crate::upstream::UpstreamSettings;

pub struct Relay {
    pub config: Arc<Config>,
    pub users: Users,
    pub tokens: TokenManager,
    pub upstream: UpstreamSettings,
    pub tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
    id_prefix: String,
    next_session: AtomicU64,
}

impl Relay {
    pub fn new(config: Config) -> Result<Relay, HttpClientInitError> {
        let tokens = TokenManager::new(&config)?;
        let upstream = UpstreamSettings {
            ehlo_name: config.server.hostname.clone(),
            connect_timeout: config.timeouts.upstream_connect,
            command_timeout: config.timeouts.upstream_command,
            final_reply_timeout: config.timeouts.upstream_final_reply,
        };
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
        Ok(Relay {
            users: Users::new(config.users.clone()),
            config: Arc::new(config),
            tokens,
            upstream,
            tls_acceptor,
            id_prefix: format!("{:08X}", started as u32),
            next_session: AtomicU64::new(1),
        })
    }

    pub fn next_session_id(&self) -> String {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:05X}", self.id_prefix)
    }
}
