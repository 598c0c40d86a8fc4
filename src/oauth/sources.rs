//! Where an asset's refresh token comes from besides the store (inline, a file), and
//! whether a reloaded asset may keep its token state; moved out of `token.rs` to keep
//! that file on the cache and the refresh.

use crate::config::{Asset, RefreshTokenSource};
use crate::credentials::secret::Secret;
use crate::credentials::store::TokenStore;
use crate::oauth::error::TokenError;

/// Whether a reloaded asset may keep the token state of the asset of the same name: the
/// same account, client, token endpoint, scopes and refresh-token source (the same store,
/// for a store asset; the same key, for a service account).
pub(super) fn same_credentials(
    old: &Asset,
    old_store: &TokenStore,
    new: &Asset,
    new_store: &TokenStore,
) -> bool {
    let same_key = match (&old.service_account, &new.service_account) {
        (None, None) => true,
        (Some(old), Some(new)) => old.same_key(new),
        _ => false,
    };
    let uses_store = new.uses_store();
    old.email == new.email
        && old.grant == new.grant
        && old.client_id == new.client_id
        && old.client_secret == new.client_secret
        && old.refresh_token == new.refresh_token
        && old.token_url == new.token_url
        && old.scopes == new.scopes
        && same_key
        && (!uses_store || old_store.same_place(new_store))
}

pub(super) async fn configured_refresh_token(asset: &Asset) -> Result<Secret, TokenError> {
    let path = match &asset.refresh_token {
        RefreshTokenSource::Inline(token) => return Ok(token.clone()),
        RefreshTokenSource::File(path) => path,
        RefreshTokenSource::Store => {
            return Err(TokenError::NotAuthorized {
                asset: asset.name.clone(),
            })
        }
    };
    let file_error = |reason: String| TokenError::RefreshTokenFile {
        asset: asset.name.clone(),
        path: path.display().to_string(),
        reason,
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|err| file_error(err.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(file_error("the file is empty".to_string()));
    }
    Ok(Secret::new(token))
}
