//! `smtp-oauth-relay serve` (and `serve --sandbox`): load and check everything, bind every
//! listener, then run until SIGINT/SIGTERM; SIGHUP reloads the config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::cli::error::CliError;
use crate::cli::logging::init_logging;
use crate::cli::{demo, load_config, token_store};
use crate::config::{self, Asset, Config, LogFormat};
use crate::relay::Relay;
use crate::sandbox::SandboxUpstream;
use crate::server::{self, Listeners, RelayHandle};

/// The relay from a config file. `log_format` (the command line's) beats the config's.
pub async fn serve(
    config_path: PathBuf,
    listen: Vec<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
) -> Result<(), CliError> {
    // The config chooses the log format, so logging starts after it was read; its error
    // is said once logging is set up either way.
    let config = load_config(&config_path);
    let from_config = config
        .as_ref()
        .ok()
        .and_then(|config| config.server.log_format);
    init_logging(log_format.or(from_config).unwrap_or(LogFormat::Text));
    let mut config = config?;
    // Found before logging was set up; said again now so they are not lost.
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    if !listen.is_empty() {
        config.server.listen = listen;
    }
    if admin_listen.is_some() {
        config.admin_listen = admin_listen;
    }
    tracing::info!(
        config = %config_path.display(),
        assets = config.assets.len(),
        users = config.users.len(),
        "config loaded"
    );
    check_token_store(&config)?;
    if config.spool.enabled {
        // A spool that cannot be used is a startup error, not 451s for every scan.
        crate::spool::Spool::open(&config.spool).map_err(|err| {
            CliError::failed(format!(
                "cannot use the spool directory {}: {err}",
                config.spool.dir.display()
            ))
        })?;
    }
    run_relay(config, CancellationToken::new(), Some(config_path)).await
}

/// The relay with a demo user and the embedded Gmail-like upstream: no config, no account.
pub async fn serve_sandbox(
    listen: Vec<SocketAddr>,
    mail_dir: PathBuf,
    admin_listen: Option<SocketAddr>,
    transport: demo::SandboxTransport,
) -> Result<(), CliError> {
    let shutdown = CancellationToken::new();
    let upstream = SandboxUpstream::start(Some(mail_dir.clone()), shutdown.clone())
        .await
        .map_err(|err| CliError::failed(format!("cannot start the sandbox: {err}")))?;
    let listen = if listen.is_empty() {
        vec![SocketAddr::from(([127, 0, 0, 1], 2525))]
    } else {
        listen
    };
    let mut config =
        demo::sandbox_config_for(&upstream, listen.clone(), transport).map_err(CliError::failed)?;
    let upstream_line = match transport {
        demo::SandboxTransport::Smtp => format!(
            "embedded Gmail-like server on {} (TLS + XOAUTH2)",
            upstream.gmail.addr()
        ),
        demo::SandboxTransport::GmailApi => format!(
            "embedded Gmail API on {} (HTTPS, bearer token, scope gmail.send)",
            upstream.gmail_api.url()
        ),
        demo::SandboxTransport::Graph => format!(
            "embedded Microsoft Graph-like endpoint on {} (HTTPS, app-only token)",
            upstream.graph.api_url()
        ),
    };
    config.admin_listen = admin_listen;
    let first = listen[0];
    println!(
        "smtp-oauth-relay sandbox\n\
         \x20 relay:      {first} (STARTTLS available, self-signed)\n\
         \x20 user:       {user}\n\
         \x20 password:   {password}\n\
         \x20 senders:    any address\n\
         \x20 upstream:   {upstream_line}\n\
         \x20 mail saved: {dir}/\n\
         try:\n\
         \x20 swaks --server {first} --auth-user {user} --auth-password {password} \\\n\
         \x20       --from you@example.com --to friend@example.net\n\
         Press Ctrl-C to stop.",
        user = demo::DEMO_USER,
        password = demo::DEMO_PASSWORD,
        dir = mail_dir.display(),
    );
    run_relay(config, shutdown, None).await
}

/// A corrupt, unreadable or too-open token store is a startup error, not a surprise at
/// the first refresh; an asset not authorized yet only gets a warning.
fn check_token_store(config: &Config) -> Result<(), CliError> {
    let uses_store: Vec<&Arc<Asset>> = config.assets.iter().filter(|a| a.uses_store()).collect();
    // With `[state] backend = "redis"` the store is in Redis, which may well be down at
    // start-up: `/readyz`, `check` and each refresh report it, nothing stops `serve`.
    if uses_store.is_empty() || matches!(config.state, crate::config::StateSettings::Redis(_)) {
        return Ok(());
    }
    let entries = token_store(config).load().map_err(CliError::config)?;
    for asset in uses_store {
        if !entries.contains_key(&asset.name) {
            tracing::warn!(
                asset = %asset.name,
                "no refresh token stored yet: run `smtp-oauth-relay authorize {}`; until then its senders get 454",
                asset.name
            );
        }
    }
    Ok(())
}

/// Binds everything first (a port in use is an error before any connection is taken),
/// then serves until a signal cancels `shutdown`; `reload_from` enables SIGHUP reloads.
async fn run_relay(
    config: Config,
    shutdown: CancellationToken,
    reload_from: Option<PathBuf>,
) -> Result<(), CliError> {
    let listeners = Listeners::bind(&config.server.listen, &config.server.listen_tls)
        .await
        .map_err(CliError::failed)?;
    let admin =
        match config.admin_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|err| {
                CliError::failed(format!("cannot listen on {addr} (admin): {err}"))
            })?),
            None => None,
        };
    let alert_options = crate::alerts::AlertOptions {
        console_base: console_base(&config, admin.as_ref()),
    };
    let relay = Arc::new(Relay::new(config)?);
    let signal_shutdown = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal_shutdown.cancel();
    });
    let relays = RelayHandle::new(relay);
    if let Some(listener) = admin {
        tokio::spawn(admin::serve(listener, relays.clone(), shutdown.clone()));
    }
    if let Some(path) = reload_from {
        tokio::spawn(reload_on_sighup(path, relays.clone()));
    }
    // Runs even without [[alert]] channels (a reload may add some), and keeps refresh tokens
    // from expiring unused.
    tokio::spawn(crate::alerts::run(
        relays.clone(),
        shutdown.clone(),
        alert_options,
    ));
    server::run(listeners, relays.clone(), shutdown).await;
    // The sending counters of the last messages (issue 16) must outlive the process.
    if let Err(err) = relays.current().limits.store().flush().await {
        tracing::error!(error = %err, "cannot save the sending counters");
    }
    Ok(())
}

/// Where alerts link to the asset's console page: `[admin] public_url`, else the admin
/// listener's own address (as the console derives it); none without a console.
fn console_base(config: &Config, admin: Option<&tokio::net::TcpListener>) -> Option<String> {
    let console = config.admin.console.as_ref()?;
    if let Some(url) = &console.public_url {
        return Some(url.clone());
    }
    let mut addr = admin?.local_addr().ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if config.admin.tls.is_some() {
        "https"
    } else {
        "http"
    };
    Some(format!("{scheme}://{addr}"))
}

/// SIGHUP: read the config again and, if it is valid, give new sessions the new users,
/// assets and senders; running sessions finish with the old ones. A bad config is
/// logged and ignored. Listen addresses and the connection limit need a restart.
async fn reload_on_sighup(path: PathBuf, relays: RelayHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangup.recv().await.is_some() {
            let old = relays.current();
            let reloaded =
                config::load(&path)
                    .map_err(|err| err.to_string())
                    .and_then(|mut config| {
                        config.server.listen = old.config.server.listen.clone();
                        config.server.listen_tls = old.config.server.listen_tls.clone();
                        Relay::reloaded(config, &old).map_err(|err| err.to_string())
                    });
            match reloaded {
                Ok(relay) => {
                    tracing::info!(
                        config = %path.display(),
                        assets = relay.config.assets.len(),
                        users = relay.config.users.len(),
                        "config reloaded"
                    );
                    relays.replace(Arc::new(relay));
                }
                Err(err) => {
                    tracing::error!(config = %path.display(), "config reload refused, keeping the running config: {err}");
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, relays);
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
