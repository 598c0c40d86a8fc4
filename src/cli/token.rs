//! `smtp-oauth-relay token ASSET`: the state of an asset's credentials, proven by
//! refreshing an access token (printed only with `--show`).

use std::path::PathBuf;

use crate::cli::error::CliError;
use crate::cli::{find_asset, load_config, token_store};
use crate::oauth::http::unix_secs;
use crate::oauth::token::TokenManager;

pub async fn token(config_path: PathBuf, asset_name: String, show: bool) -> Result<(), CliError> {
    let config = load_config(&config_path)?;
    let asset = find_asset(&config, &asset_name)?;
    let tokens = TokenManager::new(&config)?;
    println!("asset {}: {}", asset.name, asset.email);
    if let (true, Some(shared)) = (asset.uses_store(), tokens.shared()) {
        match shared.tokens().get(&asset.name).await {
            Ok(Some(stored)) => println!(
                "  stored refresh token: obtained {} (unix), last replaced {} (unix), scopes {}",
                stored.obtained_at,
                stored.updated_at,
                stored.scopes.join(" ")
            ),
            Ok(None) => println!(
                "  stored refresh token: none at {}",
                shared.tokens().describe(&asset.name)
            ),
            Err(err) => println!("  token store: {err}"),
        }
    } else if asset.uses_store() {
        let store = token_store(&config);
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
            println!("  last refresh: {} (unix)", unix_secs(at));
        }
    }
    match result {
        Ok(token) => {
            if show {
                println!("  access token: {}", token.token.expose());
            }
            Ok(())
        }
        Err(err) => {
            println!("  last error: {err}");
            println!("  what to do: {}", err.hint());
            Err(CliError::Reported)
        }
    }
}
