//! `smtp-oauth-relay authorize ASSET`: the one-time consent in a browser (or by paste),
//! the proof that it is the asset's account, the refresh token into the store, and then
//! the whole chain checked as `check` does.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::error::CliError;
use crate::cli::{check, find_asset, load_config};
use crate::config::{Grant, RefreshTokenSource};
use crate::oauth::consent::{self, obtain_consent, ConsentOptions};
use crate::oauth::token::TokenManager;

pub async fn authorize(
    config_path: PathBuf,
    asset_name: String,
    no_browser: bool,
    timeout: Duration,
) -> Result<(), CliError> {
    let config = load_config(&config_path)?;
    let asset = find_asset(&config, &asset_name)?;
    if asset.service_account.is_some() {
        return Err(CliError::config(format!(
            "asset \"{asset_name}\" uses a service account: it needs no consent"
        )));
    }
    if asset.grant == Grant::ClientCredentials {
        return Err(CliError::config(format!(
            "asset \"{asset_name}\" uses grant = \"client_credentials\" (app-only): there is nothing to \
             consent to and no refresh token to store; the relay gets its tokens with the client id and \
             secret alone. Grant the application permission (with admin consent) in Microsoft Entra, \
             then run `smtp-oauth-relay check`"
        )));
    }
    let options = ConsentOptions {
        no_browser,
        open_browser: !no_browser,
        timeout,
    };
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let consent = obtain_consent(&asset, &options, stdin, &mut std::io::stdout()).await?;
    // Only a grant proven to be the asset's account may replace the one in the store.
    consent::verify_account(&config, &asset, &consent).await?;
    let store_path = consent::store_grant(&config, &asset, &consent)
        .await
        .map_err(|err| {
            CliError::failed(format!(
                "the consent worked but the refresh token could not be stored: {err}"
            ))
        })?;
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
        return Ok(());
    }
    // Prove the whole chain, as `check` does: a refresh and an upstream XOAUTH2 login.
    let tokens = TokenManager::new(&config)?;
    let results = check::check_asset(&config, &tokens, &asset).await;
    if check::report(std::slice::from_ref(&results), &mut std::io::stdout()) {
        Ok(())
    } else {
        Err(CliError::Reported)
    }
}
