//! Access tokens: one cache per asset, refreshed ahead of expiry, one refresh at a time.
//!
//! Every session that needs a token for an asset goes through [`TokenManager::access_token`].
//! The per-asset mutex is held across the HTTP refresh, so when a hundred sessions arrive at
//! the moment the token expires, one of them refreshes and the rest wait and reuse its result
//! (single flight) instead of hammering the token endpoint. Failures are classified so the
//! session can tell the client "temporary, try later" and the operator what to fix; no
//! failure ever discards a refresh token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, ClientId, ClientSecret, HttpClientError, RefreshToken, RequestTokenError, Scope,
    TokenResponse, TokenUrl,
};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::{Asset, RefreshTokenSource};
use crate::secret::Secret;

/// Refresh this long before the provider's expiry, so a token never dies mid-session.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The provider says the refresh token is dead (`invalid_grant`): only a human can fix it.
    #[error("the refresh token of asset \"{asset}\" was refused by the token endpoint ({error}: {description}); the account needs re-authorization")]
    NeedsReauthorization {
        asset: String,
        error: String,
        description: String,
    },
    /// The OAuth client itself is refused (`invalid_client`, `unauthorized_client`, ...).
    #[error("the token endpoint refused the OAuth client of asset \"{asset}\" ({error}: {description}); check client_id and client_secret")]
    ClientRejected {
        asset: String,
        error: String,
        description: String,
    },
    /// Network trouble, timeouts, 5xx: the next attempt may well work.
    #[error("the token endpoint of asset \"{asset}\" is unavailable: {reason}")]
    Unavailable { asset: String, reason: String },
    #[error("cannot read the refresh token of asset \"{asset}\" from {path}: {reason}")]
    RefreshTokenFile {
        asset: String,
        path: String,
        reason: String,
    },
}

impl TokenError {
    /// True when retrying cannot help until an operator acts (re-authorize, fix the client).
    pub fn needs_operator(&self) -> bool {
        !matches!(self, TokenError::Unavailable { .. })
    }

    /// What the operator should do, for the log line and `check`.
    pub fn hint(&self) -> &'static str {
        match self {
            TokenError::NeedsReauthorization { .. } => {
                "get a new refresh token (consent again) and put it in the asset's refresh_token_file; \
                 usual causes: the OAuth consent screen is in \"Testing\" (refresh tokens expire after 7 days), \
                 the user revoked access or changed the password, or the token was unused for 6 months"
            }
            TokenError::ClientRejected { .. } => {
                "check client_id/client_secret against the provider console, and that the client may use this grant"
            }
            TokenError::Unavailable { .. } => {
                "the relay answers 454 and clients retry; check network access to the token URL"
            }
            TokenError::RefreshTokenFile { .. } => "check the refresh_token_file path and permissions",
        }
    }
}

/// A usable access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret,
    /// Whether this call fetched it (as opposed to the cache); a refused cached token is
    /// worth one fresh retry, a refused fresh one is not.
    pub fresh: bool,
    pub expires_at: Instant,
}

struct Cached {
    token: Secret,
    expires_at: Instant,
}

#[derive(Default)]
struct AssetState {
    cached: Option<Cached>,
    /// A refresh token handed back by the provider (Microsoft rotates them on every use);
    /// it replaces the configured one for the life of the process.
    rotated_refresh_token: Option<Secret>,
}

struct AssetSlot {
    asset: Arc<Asset>,
    state: Mutex<AssetState>,
}

type HttpError = HttpClientError<reqwest::Error>;
type BasicRequestError = RequestTokenError<HttpError, oauth2::basic::BasicErrorResponse>;

pub struct TokenManager {
    http: reqwest::Client,
    slots: HashMap<String, Arc<AssetSlot>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for token requests: {0}")]
pub struct HttpClientInitError(#[from] reqwest::Error);

impl TokenManager {
    pub fn new(
        assets: &[Arc<Asset>],
        request_timeout: Duration,
    ) -> Result<TokenManager, HttpClientInitError> {
        let http = reqwest::Client::builder()
            // The oauth2 crate requires redirects off: a redirect could leak the credentials.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .build()?;
        let slots = assets
            .iter()
            .map(|asset| {
                let slot = AssetSlot {
                    asset: asset.clone(),
                    state: Mutex::new(AssetState::default()),
                };
                (asset.name.clone(), Arc::new(slot))
            })
            .collect();
        Ok(TokenManager { http, slots })
    }

    /// A valid access token for `asset`: the cached one while it has more than a minute to
    /// live, otherwise a freshly refreshed one.
    pub async fn access_token(&self, asset: &str) -> Result<AccessToken, TokenError> {
        let slot = self.slot(asset)?;
        let mut state = slot.state.lock().await;
        if let Some(cached) = &state.cached {
            if Instant::now() + EXPIRY_MARGIN < cached.expires_at {
                return Ok(AccessToken {
                    token: cached.token.clone(),
                    fresh: false,
                    expires_at: cached.expires_at,
                });
            }
        }
        let refreshed = self.refresh(&slot.asset, &mut state).await?;
        Ok(refreshed)
    }

    /// Forgets `token` if it is still the cached one (the provider refused it), so the next
    /// call refreshes. A token refreshed meanwhile by another session is kept.
    pub async fn invalidate(&self, asset: &str, token: &Secret) {
        if let Ok(slot) = self.slot(asset) {
            let mut state = slot.state.lock().await;
            if state.cached.as_ref().is_some_and(|c| &c.token == token) {
                state.cached = None;
            }
        }
    }

    fn slot(&self, asset: &str) -> Result<Arc<AssetSlot>, TokenError> {
        self.slots
            .get(asset)
            .cloned()
            .ok_or_else(|| TokenError::Unavailable {
                asset: asset.to_string(),
                reason: "no such asset".to_string(),
            })
    }

    async fn refresh(
        &self,
        asset: &Asset,
        state: &mut AssetState,
    ) -> Result<AccessToken, TokenError> {
        let refresh_token = match &state.rotated_refresh_token {
            Some(rotated) => rotated.clone(),
            None => current_refresh_token(asset).await?,
        };
        let unavailable = |reason: String| TokenError::Unavailable {
            asset: asset.name.clone(),
            reason,
        };
        let token_url = TokenUrl::new(asset.token_url.clone())
            .map_err(|err| unavailable(format!("bad token URL: {err}")))?;
        let client = BasicClient::new(ClientId::new(asset.client_id.clone()))
            .set_client_secret(ClientSecret::new(asset.client_secret.expose().to_string()))
            .set_token_uri(token_url)
            // Google and Microsoft both accept credentials in the form body.
            .set_auth_type(AuthType::RequestBody);
        let started = Instant::now();
        let response = client
            .exchange_refresh_token(&RefreshToken::new(refresh_token.expose().to_string()))
            .add_scopes(asset.scopes.iter().cloned().map(Scope::new))
            .request_async(&self.http)
            .await
            .map_err(|err| classify(asset, err))?;

        let lifetime = response
            .expires_in()
            // RFC 6749 makes expires_in optional; Google and Microsoft always send it.
            .unwrap_or(Duration::from_secs(3600));
        let expires_at = started + lifetime;
        let token = Secret::new(response.access_token().secret().clone());
        if let Some(rotated) = response.refresh_token() {
            if rotated.secret() != refresh_token.expose() {
                tracing::info!(asset = %asset.name, "token endpoint rotated the refresh token");
                state.rotated_refresh_token = Some(Secret::new(rotated.secret().clone()));
            }
        }
        tracing::info!(
            asset = %asset.name,
            expires_in_secs = lifetime.as_secs(),
            took_ms = started.elapsed().as_millis() as u64,
            "access token refreshed"
        );
        state.cached = Some(Cached {
            token: token.clone(),
            expires_at,
        });
        Ok(AccessToken {
            token,
            fresh: true,
            expires_at,
        })
    }
}

async fn current_refresh_token(asset: &Asset) -> Result<Secret, TokenError> {
    match &asset.refresh_token {
        RefreshTokenSource::Inline(token) => Ok(token.clone()),
        RefreshTokenSource::File(path) => {
            let text = tokio::fs::read_to_string(path).await.map_err(|err| {
                TokenError::RefreshTokenFile {
                    asset: asset.name.clone(),
                    path: path.display().to_string(),
                    reason: err.to_string(),
                }
            })?;
            let token = text.trim();
            if token.is_empty() {
                return Err(TokenError::RefreshTokenFile {
                    asset: asset.name.clone(),
                    path: path.display().to_string(),
                    reason: "the file is empty".to_string(),
                });
            }
            Ok(Secret::new(token))
        }
    }
}

fn classify(asset: &Asset, err: BasicRequestError) -> TokenError {
    let name = asset.name.clone();
    match err {
        RequestTokenError::ServerResponse(response) => {
            let error = response.error().to_string();
            let description = response
                .error_description()
                .cloned()
                .unwrap_or_else(|| "no description".to_string());
            match response.error() {
                BasicErrorResponseType::InvalidGrant => TokenError::NeedsReauthorization {
                    asset: name,
                    error,
                    description,
                },
                _ => TokenError::ClientRejected {
                    asset: name,
                    error,
                    description,
                },
            }
        }
        RequestTokenError::Request(HttpClientError::Reqwest(err)) => {
            let reason = if err.is_timeout() {
                "request timed out".to_string()
            } else if err.is_connect() {
                "cannot connect".to_string()
            } else {
                // Without the URL: it is in the config, and the text stays short.
                err.without_url().to_string()
            };
            TokenError::Unavailable {
                asset: name,
                reason,
            }
        }
        RequestTokenError::Request(other) => TokenError::Unavailable {
            asset: name,
            reason: other.to_string(),
        },
        // A 5xx with an HTML body lands here: the endpoint is not itself right now.
        RequestTokenError::Parse(_, body) => TokenError::Unavailable {
            asset: name,
            reason: format!(
                "unexpected response ({} bytes that are not an OAuth reply)",
                body.len()
            ),
        },
        RequestTokenError::Other(reason) => TokenError::Unavailable {
            asset: name,
            reason,
        },
    }
}
