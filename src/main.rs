//! The `smtp-oauth-relay` command line: parse, set up logging, hand over to the library.

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use smtp_oauth_relay::cli::{check, demo};
use smtp_oauth_relay::config::{self, Config, DEFAULT_CONFIG_PATH};
use smtp_oauth_relay::config::{Asset, RefreshTokenSource};
use smtp_oauth_relay::credentials::secret::Secret;
use smtp_oauth_relay::credentials::store::{StoredToken, TokenStore};
use smtp_oauth_relay::oauth::consent::{self, obtain_consent, ConsentOptions};
use smtp_oauth_relay::oauth::token::TokenManager;
use smtp_oauth_relay::relay::Relay;
use smtp_oauth_relay::sandbox::SandboxUpstream;
use smtp_oauth_relay::server::{self, Listeners, RelayHandle};
use smtp_oauth_relay::{admin, tls, users};

/// sysexits.h: the config is wrong (EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(name = "smtp-oauth-relay", version, about)]
struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "SMTP_OAUTH_RELAY_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Log format (text or json; default: the config's server.log_format, else text);
    /// the filter comes from RUST_LOG (default "info").
    #[arg(long, global = true, value_enum, env = "SMTP_OAUTH_RELAY_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve {
        /// Run with a built-in demo user and an embedded Gmail-like upstream; no config
        /// file or Google account needed.
        #[arg(long)]
        sandbox: bool,
        /// Listen here instead of the config's server.listen (repeatable).
        #[arg(long, env = "SMTP_OAUTH_RELAY_LISTEN", value_delimiter = ',')]
        listen: Vec<SocketAddr>,
        /// Serve /healthz, /readyz and /metrics here (overrides [admin] listen).
        #[arg(long, env = "SMTP_OAUTH_RELAY_ADMIN_LISTEN")]
        admin_listen: Option<SocketAddr>,
        /// Where --sandbox saves delivered messages.
        #[arg(long, default_value = "sandbox-mail")]
        sandbox_mail_dir: PathBuf,
    },
    /// Validate the config, then refresh a token and authenticate upstream for every asset.
    Check,
    /// Consent once in a browser (OAuth with PKCE) and store the asset's refresh token.
    Authorize {
        /// The asset's name in the config.
        asset: String,
        /// For headless servers: print the URL and read the redirected URL (or the code)
        /// pasted back on stdin.
        #[arg(long)]
        no_browser: bool,
        /// How long to wait for the consent, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// Show the state of an asset's credentials (refreshes an access token to prove them).
    Token {
        asset: String,
        /// Also print the access token (for debugging with other tools; treat it as a password).
        #[arg(long)]
        show: bool,
    },
    /// Read a password (terminal or stdin) and print its argon2id hash for the config.
    HashPassword,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` reads the config first, so the config can choose the log format.
    let serving_config = matches!(cli.command, Command::Serve { sandbox: false, .. });
    if !serving_config {
        init_logging(cli.log_format.unwrap_or(LogFormat::Text));
    }
    tls::install_default_provider();
    match cli.command {
        Command::HashPassword => hash_password(),
        Command::Check => with_runtime(check_command(cli.config)),
        Command::Authorize {
            asset,
            no_browser,
            timeout_secs,
        } => with_runtime(authorize_command(
            cli.config,
            asset,
            no_browser,
            Duration::from_secs(timeout_secs),
        )),
        Command::Token { asset, show } => with_runtime(token_command(cli.config, asset, show)),
        Command::Serve {
            sandbox: true,
            listen,
            sandbox_mail_dir,
            admin_listen,
        } => with_runtime(serve_sandbox(listen, sandbox_mail_dir, admin_listen)),
        Command::Serve {
            listen,
            admin_listen,
            ..
        } => with_runtime(serve(cli.config, listen, admin_listen, cli.log_format)),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn with_runtime(future: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(future),
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::from(EXIT_CONFIG)
    })
}

async fn serve(
    config_path: PathBuf,
    listen: Vec<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
) -> ExitCode {
    let config = load_config(&config_path);
    let from_config = config
        .as_ref()
        .ok()
        .and_then(|config| config.server.log_format)
        .map(|format| match format {
            config::LogFormat::Text => LogFormat::Text,
            config::LogFormat::Json => LogFormat::Json,
        });
    init_logging(log_format.or(from_config).unwrap_or(LogFormat::Text));
    let mut config = match config {
        Ok(config) => config,
        Err(code) => return code,
    };
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
    if let Err(code) = check_token_store(&config) {
        return code;
    }
    run_relay(config, CancellationToken::new(), Some(config_path)).await
}

async fn serve_sandbox(
    listen: Vec<SocketAddr>,
    mail_dir: PathBuf,
    admin_listen: Option<SocketAddr>,
) -> ExitCode {
    let shutdown = CancellationToken::new();
    let upstream = match SandboxUpstream::start(Some(mail_dir.clone()), shutdown.clone()).await {
        Ok(upstream) => upstream,
        Err(err) => {
            eprintln!("error: cannot start the sandbox: {err}");
            return ExitCode::FAILURE;
        }
    };
    let listen = if listen.is_empty() {
        vec![SocketAddr::from(([127, 0, 0, 1], 2525))]
    } else {
        listen
    };
    let config = match demo::sandbox_config(&upstream, listen.clone()) {
        Ok(mut config) => {
            config.admin_listen = admin_listen;
            config
        }
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let first = listen[0];
    println!(
        "smtp-oauth-relay sandbox\n\
         \x20 relay:      {first} (STARTTLS available, self-signed)\n\
         \x20 user:       {user}\n\
         \x20 password:   {password}\n\
         \x20 senders:    any address\n\
         \x20 upstream:   embedded Gmail-like server on {upstream_addr} (TLS + XOAUTH2)\n\
         \x20 mail saved: {dir}/\n\
         try:\n\
         \x20 swaks --server {first} --auth-user {user} --auth-password {password} \\\n\
         \x20       --from you@example.com --to friend@example.net\n\
         Press Ctrl-C to stop.",
        user = demo::DEMO_USER,
        password = demo::DEMO_PASSWORD,
        upstream_addr = upstream.gmail.addr(),
        dir = mail_dir.display(),
    );
    run_relay(config, shutdown, None).await
}

/// A corrupt, unreadable or too-open token store is a startup error, not a surprise at
/// the first refresh; an asset not authorized yet only gets a warning.
fn check_token_store(config: &Config) -> Result<(), ExitCode> {
    let uses_store: Vec<&Arc<Asset>> = config
        .assets
        .iter()
        .filter(|a| a.service_account.is_none() && a.refresh_token == RefreshTokenSource::Store)
        .collect();
    if uses_store.is_empty() {
        return Ok(());
    }
    let store = TokenStore::new(config.tokens.path.clone(), config.tokens.key.clone());
    match store.load() {
        Ok(entries) => {
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
        Err(err) => {
            eprintln!("error: {err}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

async fn run_relay(
    config: Config,
    shutdown: CancellationToken,
    reload_from: Option<PathBuf>,
) -> ExitCode {
    let listeners = match Listeners::bind(&config.server.listen, &config.server.listen_tls).await {
        Ok(listeners) => listeners,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let admin = match config.admin_listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(err) => {
                eprintln!("error: cannot listen on {addr} (admin): {err}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let relay = match Relay::new(config) {
        Ok(relay) => Arc::new(relay),
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
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
    server::run(listeners, relays, shutdown).await;
    ExitCode::SUCCESS
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

async fn check_command(config_path: PathBuf) -> ExitCode {
    let config = match load_config(&config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    println!("config {}: OK", config_path.display());
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
    let tokens = match TokenManager::new(&config) {
        Ok(tokens) => tokens,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let results = check::check_assets(&config, &tokens).await;
    if check::report(&results, &mut std::io::stdout()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn hash_password() -> ExitCode {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ");
        let second = rpassword::prompt_password("Again: ");
        match (first, second) {
            (Ok(first), Ok(second)) if first == second => first,
            (Ok(_), Ok(_)) => {
                eprintln!("error: the passwords differ");
                return ExitCode::FAILURE;
            }
            (Err(err), _) | (_, Err(err)) => {
                eprintln!("error: cannot read the password: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(err) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!("error: cannot read the password: {err}");
            return ExitCode::FAILURE;
        }
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        eprintln!("error: the password is empty");
        return ExitCode::FAILURE;
    }
    match users::hash_password(&Secret::new(password)) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn find_asset(config: &Config, name: &str) -> Result<Arc<Asset>, ExitCode> {
    config.asset(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = config.assets.iter().map(|a| a.name.as_str()).collect();
        eprintln!(
            "error: no asset is named \"{name}\" (configured: {})",
            known.join(", ")
        );
        ExitCode::from(EXIT_CONFIG)
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn authorize_command(
    config_path: PathBuf,
    asset_name: String,
    no_browser: bool,
    timeout: Duration,
) -> ExitCode {
    let config = match load_config(&config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let asset = match find_asset(&config, &asset_name) {
        Ok(asset) => asset,
        Err(code) => return code,
    };
    if asset.service_account.is_some() {
        eprintln!("error: asset \"{asset_name}\" uses a service account: it needs no consent");
        return ExitCode::from(EXIT_CONFIG);
    }
    let options = ConsentOptions {
        no_browser,
        open_browser: !no_browser,
        timeout,
    };
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let consent = match obtain_consent(&asset, &options, stdin, &mut std::io::stdout()).await {
        Ok(consent) => consent,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Only a grant proven to be the asset's account may replace the one in the store.
    if let Err(err) = consent::verify_account(&config, &asset, &consent).await {
        eprintln!("error: {err}");
        return ExitCode::FAILURE;
    }
    let store = TokenStore::new(config.tokens.path.clone(), config.tokens.key.clone());
    let now = unix_now();
    let stored = StoredToken {
        refresh_token: consent.refresh_token.clone(),
        account: Some(asset.email.clone()),
        scopes: consent.scopes.clone(),
        obtained_at: now,
        updated_at: now,
    };
    let saved = tokio::task::spawn_blocking(move || {
        store.put(&asset_name, stored)?;
        Ok::<_, smtp_oauth_relay::credentials::store::StoreError>(store)
    })
    .await;
    let store_path = match saved {
        Ok(Ok(store)) => store.path().to_path_buf(),
        Ok(Err(err)) => {
            eprintln!("error: the consent worked but the refresh token could not be stored: {err}");
            return ExitCode::FAILURE;
        }
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "Refresh token for asset \"{}\" stored in {}.",
        asset.name,
        store_path.display()
    );
    println!("  account: {}", asset.email);
    println!("  scopes granted: {}", consent.scopes.join(" "));
    if let Some(expires_in) = consent.expires_in {
        println!("  access token valid for: {} s", expires_in.as_secs());
    }
    if asset.refresh_token != RefreshTokenSource::Store {
        println!(
            "note: this asset is configured to read its refresh token from {}, so the relay will not use the stored one \
             until refresh_token / refresh_token_file is removed from the asset",
            asset.refresh_token.describe()
        );
        return ExitCode::SUCCESS;
    }
    // Prove the whole chain, as `check` does: a refresh and an upstream XOAUTH2 login.
    let tokens = match TokenManager::new(&config) {
        Ok(tokens) => tokens,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let results = check::check_asset(&config, &tokens, &asset).await;
    if check::report(std::slice::from_ref(&results), &mut std::io::stdout()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn token_command(config_path: PathBuf, asset_name: String, show: bool) -> ExitCode {
    let config = match load_config(&config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let asset = match find_asset(&config, &asset_name) {
        Ok(asset) => asset,
        Err(code) => return code,
    };
    let tokens = match TokenManager::new(&config) {
        Ok(tokens) => tokens,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!("asset {}: {}", asset.name, asset.email);
    if asset.service_account.is_none() && asset.refresh_token == RefreshTokenSource::Store {
        let store = TokenStore::new(config.tokens.path.clone(), config.tokens.key.clone());
        match store.get(&asset.name) {
            Ok(Some(stored)) => println!(
                "  stored refresh token: obtained {} (unix), last replaced {} (unix), scopes {}",
                stored.obtained_at,
                stored.updated_at,
                stored.scopes.join(" ")
            ),
            Ok(None) => println!("  stored refresh token: none in {}", store.path().display()),
            Err(err) => println!("  token store: {err}"),
        }
    }
    let result = tokens.access_token(&asset.name).await;
    if let Some(status) = tokens.status(&asset.name).await {
        println!("  source: {}", status.source);
        if let Some(valid_for) = status.access_token_valid_for {
            println!("  access token: valid for {} s", valid_for.as_secs());
        }
        if let Some(at) = status.last_refresh {
            let secs = at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            println!("  last refresh: {secs} (unix)");
        }
    }
    match result {
        Ok(token) => {
            if show {
                println!("  access token: {}", token.token.expose());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("  last error: {err}");
            println!("  what to do: {}", err.hint());
            ExitCode::FAILURE
        }
    }
}
