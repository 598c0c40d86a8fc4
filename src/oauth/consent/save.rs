//! Storing a new grant: the one place a consent's refresh token goes into the token
//! store, shared by `authorize` and the console's "Generate Token" so both store it the
//! same way (account, scopes, obtained/updated times), under the store's lock.

use std::path::PathBuf;

use super::Consent;
use crate::config::{Asset, Config};
use crate::credentials::store::{StoreError, StoredToken, TokenStore};
use crate::oauth::http::unix_now;

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the token store write did not finish: {0}")]
    Task(String),
    #[error(transparent)]
    Shared(#[from] crate::state::tokens::RedisStoreError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// Writes `consent`'s refresh token for `asset` into the configured token store (over an
/// earlier grant). Call only after [`super::verify_account`] proved the grant is the
/// asset's account. Returns the store's path.
pub async fn store_grant(
    config: &Config,
    asset: &Asset,
    consent: &Consent,
) -> Result<PathBuf, SaveError> {
    let store = TokenStore::new(config.tokens.path.clone(), config.tokens.key.clone());
    let now = unix_now();
    let stored = StoredToken {
        refresh_token: consent.refresh_token.clone(),
        account: Some(asset.email.clone()),
        scopes: consent.scopes.clone(),
        obtained_at: now,
        updated_at: now,
    };
    if let crate::config::StateSettings::Redis(settings) = &config.state {
        // Several replicas: the grant goes where every one of them reads it.
        let shared = crate::state::RedisState::new(settings, config.tokens.key.clone())?;
        shared.tokens().put(&asset.name, stored).await?;
        return Ok(PathBuf::from(shared.tokens().describe(&asset.name)));
    }
    let name = asset.name.clone();
    tokio::task::spawn_blocking(move || {
        store.put(&name, stored)?;
        Ok::<_, StoreError>(store.path().to_path_buf())
    })
    .await
    .map_err(|err| SaveError::Task(err.to_string()))?
    .map_err(SaveError::from)
}
