//! The `smtp-oauth-relay` command line: parse, set up logging, hand over to a command body
//! in [`smtp_oauth_relay::cli`], and turn its one error type into the exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use smtp_oauth_relay::cli::demo::SandboxTransport;
use smtp_oauth_relay::cli::error::CliError;
use smtp_oauth_relay::cli::logging::init_logging;
use smtp_oauth_relay::cli::{authorize, check_command, hash_password, serve, token};
use smtp_oauth_relay::config::{self, DEFAULT_CONFIG_PATH};
use smtp_oauth_relay::tls;

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
        /// How the sandbox asset sends: SMTP with XOAUTH2, the Gmail API (gmail.send), or
        /// Microsoft Graph (app-only).
        #[arg(long, value_enum, default_value = "smtp")]
        sandbox_transport: SandboxTransport,
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
    /// Copy the grants of the token store file into Redis ([state] backend = "redis"), to
    /// move from one relay to several replicas without consenting again.
    ImportTokens {
        /// The token store file to read (default: [tokens] path).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Replace grants Redis already holds (by default they are kept: they are newer).
        #[arg(long)]
        overwrite: bool,
    },
    /// Look at and act on the durable spool (works while `serve` runs).
    Spool {
        #[command(subcommand)]
        action: smtp_oauth_relay::cli::spool::SpoolAction,
    },
}

impl From<LogFormat> for config::LogFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Text => config::LogFormat::Text,
            LogFormat::Json => config::LogFormat::Json,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format.map(config::LogFormat::from);
    // `serve` reads the config first, so the config can choose the log format.
    let serving_config = matches!(cli.command, Command::Serve { sandbox: false, .. });
    if !serving_config {
        init_logging(log_format.unwrap_or(config::LogFormat::Text));
    }
    tls::install_default_provider();
    let result = match cli.command {
        Command::HashPassword => hash_password::hash_password(),
        Command::Spool { action } => smtp_oauth_relay::cli::spool::spool(cli.config, action),
        Command::Check => with_runtime(check_command(cli.config)),
        Command::Authorize {
            asset,
            no_browser,
            timeout_secs,
        } => with_runtime(authorize::authorize(
            cli.config,
            asset,
            no_browser,
            Duration::from_secs(timeout_secs),
        )),
        Command::Token { asset, show } => with_runtime(token::token(cli.config, asset, show)),
        Command::ImportTokens { from, overwrite } => with_runtime(
            smtp_oauth_relay::cli::import_tokens::import_tokens(cli.config, from, overwrite),
        ),
        Command::Serve {
            sandbox: true,
            listen,
            sandbox_mail_dir,
            admin_listen,
            sandbox_transport,
        } => with_runtime(serve::serve_sandbox(
            listen,
            sandbox_mail_dir,
            admin_listen,
            sandbox_transport,
        )),
        Command::Serve {
            listen,
            admin_listen,
            ..
        } => with_runtime(serve::serve(cli.config, listen, admin_listen, log_format)),
    };
    // The one error exit: `error: …` on stderr, 78 for a config error, 1 otherwise.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => err.report(),
    }
}

fn with_runtime(
    future: impl std::future::Future<Output = Result<(), CliError>>,
) -> Result<(), CliError> {
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|err| CliError::failed(format!("cannot start the async runtime: {err}")))?;
    runtime.block_on(future)
}
