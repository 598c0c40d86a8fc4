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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, ClientId, ClientSecret, HttpClientError, RefreshToken, RequestTokenError, Scope,
    TokenResponse, TokenUrl,
};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::{Asset, Config, RefreshTokenSource};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::service_account::ServiceAccountKey;
use crate::store::{StoreFingerprint, StoredToken, TokenStore};

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
    /// The store has no token for the asset yet.
    #[error("asset \"{asset}\" has no refresh token in the token store; run `smtp-oauth-relay authorize {asset}`")]
    NotAuthorized { asset: String },
    #[error("the token store cannot be used for asset \"{asset}\": {reason}")]
    Store { asset: String, reason: String },
    /// Google refused the service account's signed assertion (delegation, key, clock).
    #[error("the token endpoint refused the service account of asset \"{asset}\" ({error}: {description})")]
    ServiceAccountRejected {
        asset: String,
        error: String,
        description: String,
    },
}

impl TokenError {
    /// True when retrying cannot help until an operator acts (re-authorize, fix the client).
    pub fn needs_operator(&self) -> bool {
        !matches!(self, TokenError::Unavailable { .. })
    }

    pub fn asset(&self) -> &str {
        match self {
            TokenError::NeedsReauthorization { asset, .. }
            | TokenError::ClientRejected { asset, .. }
            | TokenError::Unavailable { asset, .. }
            | TokenError::RefreshTokenFile { asset, .. }
            | TokenError::NotAuthorized { asset }
            | TokenError::Store { asset, .. }
            | TokenError::ServiceAccountRejected { asset, .. } => asset,
        }
    }

    /// What the operator should do, for the log line and `check`.
    pub fn hint(&self) -> String {
        self.hint_template().replace("ASSET", self.asset())
    }

    fn hint_template(&self) -> &'static str {
        match self {
            TokenError::NeedsReauthorization { .. } => {
                "run `smtp-oauth-relay authorize ASSET` to consent again (or replace the refresh token the \
                 asset is configured with); usual causes: the OAuth consent screen is in \"Testing\" \
                 (refresh tokens expire after 7 days), the user revoked access or changed the password, \
                 or the token was unused for 6 months"
            }
            TokenError::NotAuthorized { .. } => {
                "run `smtp-oauth-relay authorize ASSET` once to store a refresh token"
            }
            TokenError::Store { .. } => {
                "fix the token store named in [tokens] (permissions 0600, the right key); it is never reset automatically"
            }
            TokenError::ServiceAccountRejected { .. } => {
                "in the Workspace admin console, allow the service account's client ID the scope \
                 https://mail.google.com/ (domain-wide delegation); the asset's email must be a mailbox \
                 of that domain; check the system clock"
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

/// The last failed refresh, remembered so a burst of sessions does not hammer a failing
/// endpoint, and so `check` and the logs can say what is wrong.
struct Failure {
    error: TokenError,
    at: Instant,
    /// The store as it was then: a new token written by `authorize` is tried at once.
    store_seen: Option<StoreFingerprint>,
}

#[derive(Default)]
struct AssetState {
    cached: Option<Cached>,
    /// A refresh token the provider rotated while the asset reads its token from the config
    /// or a read-only file: kept for the life of the process (the store persists it instead).
    rotated_refresh_token: Option<Secret>,
    failure: Option<Failure>,
    last_refresh: Option<SystemTime>,
}

struct AssetSlot {
    asset: Arc<Asset>,
    state: Mutex<AssetState>,
}

/// What `token` and `check` show about an asset's credentials.
#[derive(Debug, Clone)]
pub struct TokenStatus {
    pub source: String,
    pub access_token_valid_for: Option<Duration>,
    pub last_refresh: Option<SystemTime>,
    pub last_error: Option<TokenError>,
}

type HttpError = HttpClientError<reqwest::Error>;
type BasicRequestError = RequestTokenError<HttpError, oauth2::basic::BasicErrorResponse>;

pub struct TokenManager {
    http: reqwest::Client,
    slots: HashMap<String, Arc<AssetSlot>>,
    store: Arc<TokenStore>,
    retry_after: Duration,
    metrics: Option<Arc<Metrics>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for token requests: {0}")]
pub struct HttpClientInitError(#[from] reqwest::Error);

impl TokenManager {
    pub fn new(config: &Config) -> Result<TokenManager, HttpClientInitError> {
        let request_timeout = config.timeouts.token_request;
        let http = reqwest::Client::builder()
            // The oauth2 crate requires redirects off: a redirect could leak the credentials.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .build()?;
        let slots = config
            .assets
            .iter()
            .map(|asset| {
                let slot = AssetSlot {
                    asset: asset.clone(),
                    state: Mutex::new(AssetState::default()),
                };
                (asset.name.clone(), Arc::new(slot))
            })
            .collect();
        let store = TokenStore::new(config.tokens.path.clone(), config.tokens.key.clone());
        Ok(TokenManager {
            http,
            slots,
            store: Arc::new(store),
            retry_after: config.timeouts.token_retry,
            metrics: None,
        })
    }

    /// Counts refreshes and asset readiness in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        for asset in self.slots.keys() {
            metrics.set_asset_ready(asset, true);
        }
        self.metrics = Some(metrics);
        self
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
        let uses_store = slot.asset.service_account.is_none()
            && slot.asset.refresh_token == RefreshTokenSource::Store;
        let fingerprint = if uses_store {
            self.store.fingerprint()
        } else {
            None
        };
        if let Some(failure) = &state.failure {
            let store_changed = uses_store && fingerprint != failure.store_seen;
            if !store_changed && failure.at.elapsed() < self.retry_after {
                return Err(failure.error.clone());
            }
        }
        let result = self.refresh(&slot.asset, &mut state).await;
        if let Some(metrics) = &self.metrics {
            metrics.token_refresh(&slot.asset.name, result.is_ok());
            let needs_operator = result
                .as_ref()
                .err()
                .is_some_and(TokenError::needs_operator);
            metrics.set_asset_ready(&slot.asset.name, !needs_operator);
        }
        match result {
            Ok(token) => {
                if let Some(failure) = state.failure.take() {
                    tracing::info!(asset = %slot.asset.name, previous_error = %failure.error, "asset credentials work again");
                }
                Ok(token)
            }
            Err(error) => {
                let first = state
                    .failure
                    .as_ref()
                    .is_none_or(|previous| previous.error != error);
                if first && error.needs_operator() {
                    tracing::error!(asset = %slot.asset.name, %error, hint = error.hint(), "asset needs re-authorization or a configuration fix; other assets are not affected");
                }
                // An unsaved rotation that the provider now refuses must not shadow a new
                // grant that `authorize` puts in the store.
                if uses_store && matches!(error, TokenError::NeedsReauthorization { .. }) {
                    state.rotated_refresh_token = None;
                }
                state.failure = Some(Failure {
                    error: error.clone(),
                    at: Instant::now(),
                    store_seen: fingerprint,
                });
                Err(error)
            }
        }
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

    pub async fn status(&self, asset: &str) -> Option<TokenStatus> {
        let slot = self.slots.get(asset)?;
        let state = slot.state.lock().await;
        let source = match &slot.asset.service_account {
            Some(key) => format!("service account {}", key.client_email),
            None => slot.asset.refresh_token.describe(),
        };
        Some(TokenStatus {
            source,
            access_token_valid_for: state
                .cached
                .as_ref()
                .map(|cached| cached.expires_at.saturating_duration_since(Instant::now())),
            last_refresh: state.last_refresh,
            last_error: state.failure.as_ref().map(|failure| failure.error.clone()),
        })
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
        let started = Instant::now();
        let grant = match &asset.service_account {
            Some(key) => self.service_account_grant(asset, key).await?,
            None => self.refresh_token_grant(asset, state).await?,
        };
        let expires_at = started + grant.lifetime;
        tracing::info!(
            asset = %asset.name,
            expires_in_secs = grant.lifetime.as_secs(),
            took_ms = started.elapsed().as_millis() as u64,
            "access token refreshed"
        );
        state.last_refresh = Some(SystemTime::now());
        state.cached = Some(Cached {
            token: grant.access_token.clone(),
            expires_at,
        });
        Ok(AccessToken {
            token: grant.access_token,
            fresh: true,
            expires_at,
        })
    }

    async fn refresh_token_grant(
        &self,
        asset: &Asset,
        state: &mut AssetState,
    ) -> Result<Grant, TokenError> {
        let stored = match &asset.refresh_token {
            RefreshTokenSource::Store => Some(self.stored_token(asset).await?),
            _ => None,
        };
        let refresh_token = match (&stored, &state.rotated_refresh_token) {
            // A rotation we could not save is newer than what the store holds.
            (_, Some(rotated)) => rotated.clone(),
            (Some(stored), None) => stored.refresh_token.clone(),
            (None, None) => configured_refresh_token(asset).await?,
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
        let response = client
            .exchange_refresh_token(&RefreshToken::new(refresh_token.expose().to_string()))
            .add_scopes(asset.scopes.iter().cloned().map(Scope::new))
            .request_async(&self.http)
            .await
            .map_err(|err| classify(asset, err))?;

        if let Some(rotated) = response.refresh_token() {
            if rotated.secret() != refresh_token.expose() {
                let rotated = Secret::new(rotated.secret().clone());
                if let Some(stored) = &stored {
                    // Persist before the access token is used: if we crashed after using
                    // it, the old refresh token might already be dead (Microsoft). The
                    // compare is against what the store held when we read it, so a grant
                    // `authorize` stored meanwhile is never overwritten.
                    match self
                        .save_rotated(asset, &stored.refresh_token, rotated.clone())
                        .await
                    {
                        Ok(true) => {
                            state.rotated_refresh_token = None;
                            tracing::info!(asset = %asset.name, "rotated refresh token saved to the token store");
                        }
                        Ok(false) => {
                            state.rotated_refresh_token = None;
                            tracing::info!(asset = %asset.name, "token store changed meanwhile (a new authorization); keeping it");
                        }
                        Err(err) => {
                            // The new token still works for this process; losing it now
                            // would lose the grant (the old one may be dead already).
                            tracing::error!(asset = %asset.name, error = %err, "cannot save the rotated refresh token; keeping it in memory");
                            state.rotated_refresh_token = Some(rotated);
                        }
                    }
                } else {
                    tracing::warn!(
                        asset = %asset.name,
                        source = %asset.refresh_token.describe(),
                        "the provider rotated the refresh token, but this asset's token source is read-only: \
                         the new token is kept in memory only; use the token store (`authorize`) to persist it"
                    );
                    state.rotated_refresh_token = Some(rotated);
                }
            }
        }
        Ok(Grant {
            access_token: Secret::new(response.access_token().secret().clone()),
            // RFC 6749 makes expires_in optional; Google and Microsoft always send it.
            lifetime: response.expires_in().unwrap_or(Duration::from_secs(3600)),
        })
    }

    async fn stored_token(&self, asset: &Asset) -> Result<StoredToken, TokenError> {
        let store = self.store.clone();
        let name = asset.name.clone();
        let result = tokio::task::spawn_blocking(move || store.get(&name)).await;
        match result {
            Ok(Ok(Some(stored))) => Ok(stored),
            Ok(Ok(None)) => Err(TokenError::NotAuthorized {
                asset: asset.name.clone(),
            }),
            Ok(Err(err)) => Err(TokenError::Store {
                asset: asset.name.clone(),
                reason: err.to_string(),
            }),
            Err(err) => Err(TokenError::Store {
                asset: asset.name.clone(),
                reason: err.to_string(),
            }),
        }
    }

    async fn save_rotated(
        &self,
        asset: &Asset,
        previous: &Secret,
        rotated: Secret,
    ) -> Result<bool, TokenError> {
        let store = self.store.clone();
        let name = asset.name.clone();
        let previous = previous.clone();
        let result = tokio::task::spawn_blocking(move || {
            store.replace_rotated(&name, &previous, rotated, unix_now())
        })
        .await;
        let reason = match result {
            Ok(Ok(saved)) => return Ok(saved),
            Ok(Err(err)) => err.to_string(),
            Err(err) => err.to_string(),
        };
        Err(TokenError::Store {
            asset: asset.name.clone(),
            reason: format!("cannot save the rotated refresh token: {reason}"),
        })
    }

    /// RFC 7523 JWT-bearer grant, as Google's service accounts use it.
    async fn service_account_grant(
        &self,
        asset: &Asset,
        key: &ServiceAccountKey,
    ) -> Result<Grant, TokenError> {
        let assertion = key
            .assertion(
                &asset.email,
                &asset.scopes.join(" "),
                &asset.token_url,
                unix_now(),
            )
            .map_err(|err| TokenError::ServiceAccountRejected {
                asset: asset.name.clone(),
                error: "signing".to_string(),
                description: err.to_string(),
            })?;
        let unavailable = |reason: String| TokenError::Unavailable {
            asset: asset.name.clone(),
            reason,
        };
        let response = self
            .http
            .post(&asset.token_url)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.expose()),
            ])
            .send()
            .await
            .map_err(|err| unavailable(describe_http_error(&err)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|err| unavailable(describe_http_error(&err)))?;
        if status.is_success() {
            #[derive(serde::Deserialize)]
            struct Success {
                access_token: String,
                expires_in: Option<u64>,
            }
            let success: Success = serde_json::from_slice(&body)
                .map_err(|_| unavailable(format!("unexpected {status} response")))?;
            return Ok(Grant {
                access_token: Secret::new(success.access_token),
                lifetime: Duration::from_secs(success.expires_in.unwrap_or(3600)),
            });
        }
        #[derive(serde::Deserialize)]
        struct Failure {
            error: String,
            error_description: Option<String>,
        }
        match serde_json::from_slice::<Failure>(&body) {
            Ok(failure) if status.is_client_error() => Err(TokenError::ServiceAccountRejected {
                asset: asset.name.clone(),
                error: failure.error,
                description: failure
                    .error_description
                    .unwrap_or_else(|| "no description".to_string()),
            }),
            _ => Err(unavailable(format!("HTTP {status}"))),
        }
    }
}

struct Grant {
    access_token: Secret,
    lifetime: Duration,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn describe_http_error(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "request timed out".to_string()
    } else if err.is_connect() {
        "cannot connect".to_string()
    } else {
        // The whole cause chain: "connection refused" says more than reqwest's summary.
        let mut text = String::new();
        let mut source: Option<&dyn std::error::Error> = Some(err);
        while let Some(err) = source {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&err.to_string());
            source = err.source();
        }
        text
    }
}

async fn configured_refresh_token(asset: &Asset) -> Result<Secret, TokenError> {
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
