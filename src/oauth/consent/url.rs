//! The authorization URL: PKCE S256, a random `state`, the asset's scopes and, for Google,
//! what makes a refresh token come back even on re-consent.

use oauth2::basic::BasicClient;
use oauth2::url::Url;
use oauth2::{
    AuthType, AuthUrl, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, TokenUrl,
};

use super::AuthorizeError;
use crate::config::{Asset, Provider};

/// The consent URL, its `state` and the PKCE verifier, separated so they can be unit-tested.
pub fn consent_url(
    asset: &Asset,
    redirect_uri: &str,
) -> Result<(Url, CsrfToken, PkceCodeVerifier), AuthorizeError> {
    let client = oauth_client(asset, redirect_uri)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(asset.scopes.iter().cloned().map(Scope::new))
        .set_pkce_challenge(challenge)
        // Google and Microsoft pre-select this account (OpenID Connect Core §3.1.2.1), so
        // a browser signed in to several accounts offers the right one.
        .add_extra_param("login_hint", asset.email.clone());
    if asset.provider == Provider::Google {
        // Without these Google returns a refresh token only on the very first consent.
        request = request
            .add_extra_param("access_type", "offline")
            .add_extra_param("prompt", "consent");
    }
    let (url, state) = request.url();
    Ok((url, state, verifier))
}

pub(super) type Client = BasicClient<
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

pub(super) fn oauth_client(asset: &Asset, redirect_uri: &str) -> Result<Client, AuthorizeError> {
    let auth_url =
        AuthUrl::new(asset.auth_url.clone()).map_err(|err| AuthorizeError::BadEndpoint {
            field: "auth_url",
            url: asset.auth_url.clone(),
            reason: err.to_string(),
        })?;
    let token_url =
        TokenUrl::new(asset.token_url.clone()).map_err(|err| AuthorizeError::BadEndpoint {
            field: "token_url",
            url: asset.token_url.clone(),
            reason: err.to_string(),
        })?;
    let redirect = RedirectUrl::new(redirect_uri.to_string()).map_err(|err| {
        AuthorizeError::BadRedirectUri {
            uri: redirect_uri.to_string(),
            reason: err.to_string(),
        }
    })?;
    Ok(BasicClient::new(ClientId::new(asset.client_id.clone()))
        .set_client_secret(ClientSecret::new(asset.client_secret.expose().to_string()))
        .set_auth_uri(auth_url)
        .set_token_uri(token_url)
        .set_redirect_uri(redirect)
        // Google and Microsoft both accept credentials in the form body (as in token.rs).
        .set_auth_type(AuthType::RequestBody))
}
