//! Bodies of the command-line commands; `main.rs` only parses arguments, starts logging
//! and turns the one [`error::CliError`] a body returns into an exit code.
//!
//! [`serve`] (with `--sandbox`, SIGHUP reloads and signals), [`check`], [`authorize`],
//! [`token`], [`hash_password`]; [`demo`] is the sandbox's config, [`logging`] the
//! subscriber.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{self, Asset, Config};
use crate::credentials::store::TokenStore;
use crate::oauth::token::TokenManager;

pub mod authorize;
pub mod check;
pub mod demo;
pub mod error;
pub mod hash_password;
pub mod import_tokens;
pub mod logging;
pub mod serve;
pub mod spool;
pub mod token;

use error::CliError;

/// `smtp-oauth-relay check`: the config, then a refresh and an upstream login per asset.
pub async fn check_command(config_path: PathBuf) -> Result<(), CliError> {
    let config = load_config(&config_path)?;
    println!("config {}: OK", config_path.display());
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
    let tokens = TokenManager::new(&config)?;
    let state_ok = check::report_state(&tokens).await;
    let results = check::check_assets(&config, &tokens).await;
    let all_ok = check::report(&results, &mut std::io::stdout());
    check::report_limits(&config, &tokens, &mut std::io::stdout()).await;
    if all_ok && state_ok {
        Ok(())
    } else {
        Err(CliError::Reported)
    }
}

pub(crate) fn load_config(path: &Path) -> Result<Config, CliError> {
    Ok(config::load(path)?)
}

/// The asset a command names; an unknown name is a config error that lists the known ones.
fn find_asset(config: &Config, name: &str) -> Result<Arc<Asset>, CliError> {
    config.asset(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = config.assets.iter().map(|a| a.name.as_str()).collect();
        CliError::config(format!(
            "no asset is named \"{name}\" (configured: {})",
            known.join(", ")
        ))
    })
}

fn token_store(config: &Config) -> TokenStore {
    TokenStore::new(config.tokens.path.clone(), config.tokens.key.clone())
}
