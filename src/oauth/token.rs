//! Access tokens: one cache per asset, refreshed ahead of expiry, one refresh at a time.
//!
//! Every session that needs a token for an asset goes through [`TokenManager::access_token`].
//! The per-asset mutex is held across the HTTP refresh, so when a hundred sessions arrive at
//! the moment the token expires, one of them refreshes and the rest wait and reuse its result
//! (single flight) instead of hammering the token endpoint. Failures are classified so the
//! session can tell the client "temporary, try later" and the operator what to fix; no
//! failure ever discards a refresh token.
//!
//! What the token endpoint says is classified by `classify_refusal`: only `invalid_grant`
//! means "re-authorize", only the client/config error codes of RFC 6749 §5.2 mean "fix the
//! client"; any 5xx or 429, and every other error code, is a provider hiccup that clients
//! retry. Every duration a provider supplies (`expires_in`, `Retry-After`) is clamped
//! before it meets `Instant` arithmetic.
//!
//! The per-asset state (cache, single-flight lock, unsaved rotation, back-off) lives in an
//! `Arc` that a config reload hands to the new manager when the asset's credentials did not
//! change ([`TokenManager::reloaded`]), and `/readyz` reads a snapshot of it that is never
//! held across a refresh ([`TokenManager::status`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::{Asset, Config, RefreshTokenSource};
use crate::credentials::secret::Secret;
use crate::credentials::service_account::ServiceAccountKey;
use crate::credentials::store::{StoreFingerprint, StoredToken, TokenStore};
use crate::metrics::Metrics;

/// Refresh this long before the provider's expiry, so a token never dies mid-session.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// The longest access-token lifetime believed. Google and Microsoft issue one hour; a larger
/// `expires_in` (or `u64::MAX`, which would overflow `Instant`) is a provider bug, and a
/// token revoked early is caught by the upstream refusing it anyway.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// RFC 6749 makes `expires_in` optional; this is what the big providers issue.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest back-off a token endpoint's `Retry-After` can impose: longer would let one
/// odd answer keep an asset's mail queued for hours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The provider says the refresh token is dead (`invalid_grant`): only a human can fix it.
    #[error("the refresh token of asset \"{asset}\" was refused by the token endpoint ({error}: {description}); the account needs re-authorization")]
    NeedsReauthorization {
        asset: String,
        error: String,
        description: String,
    },
    /// The OAuth client or its configuration is refused (`invalid_client`,
    /// `unauthorized_client`, `unsupported_grant_type`, `invalid_scope`).
    #[error("the token endpoint refused the OAuth client of asset \"{asset}\" ({error}: {description}); check client_id and client_secret")]
    ClientRejected {
        asset: String,
        error: String,
        description: String,
    },
    /// Network trouble, timeouts, any 5xx or 429, an OAuth error code that is not about the
    /// credentials (`temporarily_unavailable`, unknown codes): the next attempt may well work.
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
    /// True when retrying cannot help until an operator acts (re-authorize, fix the client,
    /// fix the token store or file).
    pub fn needs_operator(&self) -> bool {
        !matches!(self, TokenError::Unavailable { .. })
    }

    /// True when the provider refused the asset's credentials (or there are none yet): the
    /// only failures `credential_failure = "permanent"` may turn into a bounce. A store or
    /// file the relay cannot read says nothing about the mail, which must stay queued.
    pub fn is_credential_refusal(&self) -> bool {
        matches!(
            self,
            TokenError::NeedsReauthorization { .. }
                | TokenError::ClientRejected { .. }
                | TokenError::ServiceAccountRejected { .. }
                | TokenError::NotAuthorized { .. }
        )
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
    /// How long to answer with `error` without asking again: `token_retry_secs`, or the
    /// endpoint's (clamped) `Retry-After` when that is longer.
    back_off: Duration,
    /// The store as it was then: a new token written by `authorize` is tried at once.
    store_seen: Option<StoreFingerprint>,
}

/// A refresh token the provider rotated that the asset's source does not hold: the store
/// could not be written, or the source is read-only (config, file). `based_on` is what the
/// source held when this lineage left it. While the source still holds `based_on`, `token`
/// is the newer credential; once it holds anything else, a new grant arrived (`authorize`,
/// an edited file) and wins: the rotation is dropped, and a store write compares against
/// `based_on`, never against whatever the store holds by then.
struct PendingRotation {
    token: Secret,
    based_on: Secret,
}

#[derive(Default)]
struct AssetState {
    cached: Option<Cached>,
    rotation: Option<PendingRotation>,
    failure: Option<Failure>,
    last_refresh: Option<SystemTime>,
}

/// What `status` reports, copied out of [`AssetState`] whenever it changes: the state's
/// lock is held across a refresh (up to `token_request_secs`), and a readiness probe must
/// not wait for that.
#[derive(Default, Clone)]
struct Snapshot {
    expires_at: Option<Instant>,
    last_refresh: Option<SystemTime>,
    last_error: Option<TokenError>,
}

/// One asset's token state. Shared with the manager of a reloaded config while the asset's
/// credentials stay the same, so a reload neither refreshes again nor opens a second
/// single-flight domain next to the one old sessions still use.
#[derive(Default)]
struct SlotState {
    state: Mutex<AssetState>,
    snapshot: std::sync::Mutex<Snapshot>,
}

impl SlotState {
    fn publish(&self, state: &AssetState) {
        let snapshot = Snapshot {
            expires_at: state.cached.as_ref().map(|cached| cached.expires_at),
            last_refresh: state.last_refresh,
            last_error: state.failure.as_ref().map(|failure| failure.error.clone()),
        };
        *self
            .snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = snapshot;
    }

    fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

struct AssetSlot {
    asset: Arc<Asset>,
    shared: Arc<SlotState>,
}

/// What `token` and `check` show about an asset's credentials.
#[derive(Debug, Clone)]
pub struct TokenStatus {
    pub source: String,
    pub access_token_valid_for: Option<Duration>,
    pub last_refresh: Option<SystemTime>,
    pub last_error: Option<TokenError>,
}

/// A failed refresh: the error, and how long the endpoint asked us to wait.
struct Refusal {
    error: TokenError,
    retry_after: Option<Duration>,
}

impl From<TokenError> for Refusal {
    fn from(error: TokenError) -> Self {
        Refusal {
            error,
            retry_after: None,
        }
    }
}

/// Which grant a token request was for: the same error code means different things.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GrantKind {
    RefreshToken,
    ServiceAccount,
}

pub struct TokenManager {
    http: reqwest::Client,
    slots: HashMap<String, AssetSlot>,
    store: Arc<TokenStore>,
    retry_after: Duration,
    metrics: Option<Arc<Metrics>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for token requests: {0}")]
pub struct HttpClientInitError(#[from] reqwest::Error);

impl TokenManager {
    pub fn new(config: &Config) -> Result<TokenManager, HttpClientInitError> {
        TokenManager::build(config, None)
    }

    /// The manager for a reloaded config: an asset whose credentials (account, client,
    /// refresh-token source, service-account key, token URL, scopes, store) are unchanged
    /// keeps its state — cached access token, single-flight lock, unsaved rotation,
    /// back-off — shared with `previous`; any other asset starts afresh.
    pub fn reloaded(
        config: &Config,
        previous: &TokenManager,
    ) -> Result<TokenManager, HttpClientInitError> {
        TokenManager::build(config, Some(previous))
    }

    fn build(
        config: &Config,
        previous: Option<&TokenManager>,
    ) -> Result<TokenManager, HttpClientInitError> {
        let request_timeout = config.timeouts.token_request;
        let http = reqwest::Client::builder()
            // Redirects off: a redirect could carry the credentials somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .build()?;
        let store = TokenStore::new(config.tokens.path.clone(), config.tokens.key.clone());
        let slots = config
            .assets
            .iter()
            .map(|asset| {
                let kept = previous.and_then(|previous| {
                    let old = previous.slots.get(&asset.name)?;
                    if same_credentials(&old.asset, &previous.store, asset, &store) {
                        Some(old.shared.clone())
                    } else {
                        tracing::info!(asset = %asset.name, "credentials changed: the asset's token state starts afresh");
                        None
                    }
                });
                let slot = AssetSlot {
                    asset: asset.clone(),
                    shared: kept.unwrap_or_default(),
                };
                (asset.name.clone(), slot)
            })
            .collect();
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
        for (asset, slot) in &self.slots {
            // A state kept across a reload keeps its readiness too.
            let needs_operator = slot
                .shared
                .snapshot()
                .last_error
                .is_some_and(|error| error.needs_operator());
            metrics.set_asset_ready(asset, !needs_operator);
        }
        self.metrics = Some(metrics);
        self
    }

    /// A valid access token for `asset`: the cached one while it has more than a minute to
    /// live, otherwise a freshly refreshed one.
    pub async fn access_token(&self, asset: &str) -> Result<AccessToken, TokenError> {
        let slot = self.slot(asset)?;
        let mut state = slot.shared.state.lock().await;
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
            if !store_changed && failure.at.elapsed() < failure.back_off {
                return Err(failure.error.clone());
            }
        }
        let result = self.refresh(&slot.asset, &mut state).await;
        if let Some(metrics) = &self.metrics {
            metrics.token_refresh(&slot.asset.name, result.is_ok());
            let needs_operator = result
                .as_ref()
                .err()
                .is_some_and(|refusal| refusal.error.needs_operator());
            metrics.set_asset_ready(&slot.asset.name, !needs_operator);
        }
        let outcome = match result {
            Ok(token) => {
                if let Some(failure) = state.failure.take() {
                    tracing::info!(asset = %slot.asset.name, previous_error = %failure.error, "asset credentials work again");
                }
                Ok(token)
            }
            Err(Refusal { error, retry_after }) => {
                let first = state
                    .failure
                    .as_ref()
                    .is_none_or(|previous| previous.error != error);
                if first && error.needs_operator() {
                    tracing::error!(asset = %slot.asset.name, %error, hint = error.hint(), "asset needs re-authorization or a configuration fix; other assets are not affected");
                } else if first {
                    tracing::warn!(asset = %slot.asset.name, %error, retry_after_secs = retry_after.map(|d| d.as_secs()), "token refresh failed; clients are told to try again later");
                }
                let back_off = retry_after.map_or(self.retry_after, |d| d.max(self.retry_after));
                state.failure = Some(Failure {
                    error: error.clone(),
                    at: Instant::now(),
                    back_off,
                    store_seen: fingerprint,
                });
                Err(error)
            }
        };
        slot.shared.publish(&state);
        outcome
    }

    /// Forgets `token` if it is still the cached one (the provider refused it), so the next
    /// call refreshes. A token refreshed meanwhile by another session is kept.
    pub async fn invalidate(&self, asset: &str, token: &Secret) {
        if let Ok(slot) = self.slot(asset) {
            let mut state = slot.shared.state.lock().await;
            if state.cached.as_ref().is_some_and(|c| &c.token == token) {
                state.cached = None;
                slot.shared.publish(&state);
            }
        }
    }

    /// The asset's state as of the last change. Never waits for a refresh in flight.
    pub async fn status(&self, asset: &str) -> Option<TokenStatus> {
        let slot = self.slots.get(asset)?;
        let snapshot = slot.shared.snapshot();
        let source = match &slot.asset.service_account {
            Some(key) => format!("service account {}", key.client_email),
            None => slot.asset.refresh_token.describe(),
        };
        Some(TokenStatus {
            source,
            access_token_valid_for: snapshot
                .expires_at
                .map(|expires_at| expires_at.saturating_duration_since(Instant::now())),
            last_refresh: snapshot.last_refresh,
            last_error: snapshot.last_error,
        })
    }

    fn slot(&self, asset: &str) -> Result<&AssetSlot, TokenError> {
        self.slots
            .get(asset)
            .ok_or_else(|| TokenError::Unavailable {
                asset: asset.to_string(),
                reason: "no such asset".to_string(),
            })
    }

    async fn refresh(&self, asset: &Asset, state: &mut AssetState) -> Result<AccessToken, Refusal> {
        let started = Instant::now();
        let grant = match &asset.service_account {
            Some(key) => self.service_account_grant(asset, key).await?,
            None => self.refresh_token_grant(asset, state).await?,
        };
        // Clamped by `token_response`; checked all the same, as an overflow here would panic
        // every session of the asset.
        let expires_at = started.checked_add(grant.lifetime).unwrap_or(started);
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
    ) -> Result<Grant, Refusal> {
        let uses_store = asset.refresh_token == RefreshTokenSource::Store;
        // What the asset's source holds now.
        let mut current = if uses_store {
            self.stored_token(asset)
                .await
                .map(|stored| stored.refresh_token)
        } else {
            configured_refresh_token(asset).await
        };
        if let (Some(pending), Ok(held)) = (&state.rotation, &current) {
            if held == &pending.token {
                // Saved after all (by an earlier attempt that reported an error).
                state.rotation = None;
            } else if held != &pending.based_on {
                tracing::info!(
                    asset = %asset.name,
                    source = %asset.refresh_token.describe(),
                    "a new grant replaced the refresh token the rotation kept in memory was based on; using the new grant"
                );
                state.rotation = None;
            }
        }
        if uses_store {
            if let Some(pending) = &state.rotation {
                // The store still holds `based_on`: try again to save the rotation.
                match self
                    .save_rotated(asset, &pending.based_on, pending.token.clone())
                    .await
                {
                    Ok(true) => {
                        tracing::info!(asset = %asset.name, "the rotated refresh token kept in memory is saved to the token store now");
                        current = Ok(pending.token.clone());
                        state.rotation = None;
                    }
                    Ok(false) => {
                        // A new grant arrived between the read above and the write.
                        state.rotation = None;
                        current = self
                            .stored_token(asset)
                            .await
                            .map(|stored| stored.refresh_token);
                    }
                    Err(err) => {
                        tracing::warn!(asset = %asset.name, error = %err, "still cannot save the rotated refresh token; keeping it in memory");
                    }
                }
            }
        }
        // The token to send, and what the source holds for it (the compare of a store write).
        let (refresh_token, based_on) = match &state.rotation {
            Some(pending) => (pending.token.clone(), pending.based_on.clone()),
            None => {
                let held = current?;
                (held.clone(), held)
            }
        };

        let scope = asset.scopes.join(" ");
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
            ("client_id", asset.client_id.as_str()),
            // Google and Microsoft both accept client credentials in the form body.
            ("client_secret", asset.client_secret.expose()),
        ];
        if !scope.is_empty() {
            form.push(("scope", scope.as_str()));
        }
        let response = self
            .token_request(asset, &form, GrantKind::RefreshToken)
            .await?;

        if let Some(rotated) = response.refresh_token {
            if rotated != refresh_token {
                if uses_store {
                    // Persist before the access token is used: if we crashed after using
                    // it, the old refresh token might already be dead (Microsoft). The
                    // compare is against the token this lineage replaced, so a grant
                    // `authorize` stored meanwhile is never overwritten.
                    match self.save_rotated(asset, &based_on, rotated.clone()).await {
                        Ok(true) => {
                            state.rotation = None;
                            tracing::info!(asset = %asset.name, "rotated refresh token saved to the token store");
                        }
                        Ok(false) => {
                            state.rotation = None;
                            tracing::info!(asset = %asset.name, "token store changed meanwhile (a new authorization); keeping it");
                        }
                        Err(err) => {
                            // The new token still works for this process; losing it now
                            // would lose the grant (the old one may be dead already).
                            tracing::error!(asset = %asset.name, error = %err, "cannot save the rotated refresh token; keeping it in memory");
                            state.rotation = Some(PendingRotation {
                                token: rotated,
                                based_on,
                            });
                        }
                    }
                } else {
                    tracing::warn!(
                        asset = %asset.name,
                        source = %asset.refresh_token.describe(),
                        "the provider rotated the refresh token, but this asset's token source is read-only: \
                         the new token is kept in memory only; use the token store (`authorize`) to persist it"
                    );
                    state.rotation = Some(PendingRotation {
                        token: rotated,
                        based_on,
                    });
                }
            }
        }
        Ok(Grant {
            access_token: response.access_token,
            lifetime: response.lifetime,
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
    ) -> Result<Grant, Refusal> {
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
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.expose()),
        ];
        let response = self
            .token_request(asset, &form, GrantKind::ServiceAccount)
            .await?;
        Ok(Grant {
            access_token: response.access_token,
            lifetime: response.lifetime,
        })
    }

    /// One POST to the asset's token endpoint (RFC 6749 §4.6, RFC 7523), classified.
    async fn token_request(
        &self,
        asset: &Asset,
        form: &[(&str, &str)],
        kind: GrantKind,
    ) -> Result<TokenResponse, Refusal> {
        let unavailable = |reason: String| TokenError::Unavailable {
            asset: asset.name.clone(),
            reason,
        };
        let response = self
            .http
            .post(&asset.token_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            // Without the URL: it is in the config, and the text stays short.
            .map_err(|err| unavailable(describe_http_error(&err.without_url())))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = response
            .bytes()
            .await
            .map_err(|err| unavailable(describe_http_error(&err.without_url())))?;
        if status.is_success() {
            return token_response(&body).ok_or_else(|| {
                Refusal::from(unavailable(format!(
                    "unexpected HTTP {status} response ({} bytes that are not an OAuth token reply)",
                    body.len()
                )))
            });
        }
        Err(Refusal {
            error: classify_refusal(&asset.name, kind, status, &body),
            retry_after,
        })
    }
}

struct Grant {
    access_token: Secret,
    lifetime: Duration,
}

/// A successful token reply, its durations already clamped.
struct TokenResponse {
    access_token: Secret,
    lifetime: Duration,
    refresh_token: Option<Secret>,
}

fn token_response(body: &[u8]) -> Option<TokenResponse> {
    #[derive(serde::Deserialize)]
    struct Success {
        access_token: String,
        #[serde(default)]
        expires_in: Option<serde_json::Value>,
        #[serde(default)]
        refresh_token: Option<String>,
    }
    let success: Success = serde_json::from_slice(body).ok()?;
    if success.access_token.is_empty() {
        return None;
    }
    Some(TokenResponse {
        access_token: Secret::new(success.access_token),
        lifetime: success
            .expires_in
            .as_ref()
            .and_then(provider_seconds)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME)
            .min(MAX_TOKEN_LIFETIME),
        refresh_token: success
            .refresh_token
            .filter(|token| !token.is_empty())
            .map(Secret::new),
    })
}

/// A provider's `expires_in`: a JSON number (integer or not, any size) or a numeric string,
/// as some providers send. Clamped to [`MAX_TOKEN_LIFETIME`]; negative is zero; anything
/// else is `None` (the default applies).
fn provider_seconds(value: &serde_json::Value) -> Option<Duration> {
    let secs = match value {
        serde_json::Value::Number(number) => number.as_f64()?,
        serde_json::Value::String(text) => text.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if secs.is_nan() {
        return None;
    }
    Duration::try_from_secs_f64(secs.clamp(0.0, MAX_TOKEN_LIFETIME.as_secs_f64())).ok()
}

/// `Retry-After` in delta-seconds, clamped to [`MAX_RETRY_AFTER`]; an HTTP date is ignored
/// (the configured back-off applies).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// The error codes of RFC 6749 §5.2 that only a change of the client or its configuration
/// can fix.
const CLIENT_ERRORS: [&str; 4] = [
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
];

/// What a non-2xx token reply means. Any 5xx or 429 is temporary whatever its body says (a
/// provider under load answers oddly); otherwise only `invalid_grant` (the grant is dead)
/// and [`CLIENT_ERRORS`] need the operator, and every other code — `temporarily_unavailable`,
/// codes invented after this was written — is temporary too: a wrong "needs the operator"
/// marks the asset not ready and, with `credential_failure = "permanent"`, bounces mail.
fn classify_refusal(
    asset: &str,
    kind: GrantKind,
    status: reqwest::StatusCode,
    body: &[u8],
) -> TokenError {
    #[derive(serde::Deserialize)]
    struct OAuthError {
        error: String,
        #[serde(default)]
        error_description: Option<String>,
    }
    let asset = asset.to_string();
    let Ok(refusal) = serde_json::from_slice::<OAuthError>(body) else {
        return TokenError::Unavailable {
            asset,
            reason: format!(
                "unexpected HTTP {status} response ({} bytes that are not an OAuth reply)",
                body.len()
            ),
        };
    };
    let error = provider_text(&refusal.error);
    let description = refusal
        .error_description
        .as_deref()
        .map(provider_text)
        .unwrap_or_else(|| "no description".to_string());
    let temporary = status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
    let code = refusal.error.as_str();
    match kind {
        _ if temporary => {}
        GrantKind::RefreshToken if code == "invalid_grant" => {
            return TokenError::NeedsReauthorization {
                asset,
                error,
                description,
            }
        }
        GrantKind::RefreshToken if CLIENT_ERRORS.contains(&code) => {
            return TokenError::ClientRejected {
                asset,
                error,
                description,
            }
        }
        // For a JWT grant, invalid_grant is about the assertion: the key, the delegation,
        // the clock — all the operator's.
        GrantKind::ServiceAccount if code == "invalid_grant" || CLIENT_ERRORS.contains(&code) => {
            return TokenError::ServiceAccountRejected {
                asset,
                error,
                description,
            }
        }
        _ => {}
    }
    TokenError::Unavailable {
        asset,
        reason: format!("HTTP {status}: {error}: {description}"),
    }
}

/// Provider text for logs and errors: control characters replaced (no forged log lines),
/// at most 300 characters.
fn provider_text(text: &str) -> String {
    const MAX_CHARS: usize = 300;
    let mut out: String = text
        .chars()
        .take(MAX_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Whether a reloaded asset may keep the token state of the asset of the same name: the
/// same account, client, token endpoint, scopes and refresh-token source (the same store,
/// for a store asset; the same key, for a service account).
fn same_credentials(
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
    let uses_store =
        new.service_account.is_none() && new.refresh_token == RefreshTokenSource::Store;
    old.email == new.email
        && old.client_id == new.client_id
        && old.client_secret == new.client_secret
        && old.refresh_token == new.refresh_token
        && old.token_url == new.token_url
        && old.scopes == new.scopes
        && same_key
        && (!uses_store || old_store.same_place(new_store))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(kind: GrantKind, status: u16, body: &str) -> TokenError {
        let status = reqwest::StatusCode::from_u16(status).unwrap_or_default();
        classify_refusal("a", kind, status, body.as_bytes())
    }

    fn oauth(error: &str) -> String {
        format!(r#"{{"error":"{error}","error_description":"d"}}"#)
    }

    #[test]
    fn only_credential_codes_need_the_operator() {
        use GrantKind::*;
        assert!(matches!(
            refusal(RefreshToken, 400, &oauth("invalid_grant")),
            TokenError::NeedsReauthorization { .. }
        ));
        for code in CLIENT_ERRORS {
            assert!(matches!(
                refusal(RefreshToken, 401, &oauth(code)),
                TokenError::ClientRejected { .. }
            ));
            assert!(matches!(
                refusal(ServiceAccount, 400, &oauth(code)),
                TokenError::ServiceAccountRejected { .. }
            ));
        }
        for (status, body) in [
            (400, oauth("temporarily_unavailable")),
            (400, oauth("server_error")),
            (400, oauth("invalid_request")),
            (400, oauth("brand_new_code")),
            (503, oauth("invalid_grant")),
            (500, oauth("invalid_client")),
            (429, oauth("invalid_grant")),
            (429, "Too Many Requests".to_string()),
            (400, "<html>".to_string()),
            (302, String::new()),
        ] {
            for kind in [RefreshToken, ServiceAccount] {
                let error = refusal(kind, status, &body);
                assert!(
                    matches!(error, TokenError::Unavailable { .. }),
                    "{kind:?} {status} {body}: {error:?}"
                );
                assert!(!error.needs_operator());
            }
        }
    }

    #[test]
    fn provider_durations_are_clamped() {
        let lifetime = |json: &str| token_response(json.as_bytes()).map(|r| r.lifetime);
        let day = Some(MAX_TOKEN_LIFETIME);
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":18446744073709551615}"#),
            day
        );
        assert_eq!(lifetime(r#"{"access_token":"t","expires_in":1e19}"#), day);
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":"99999999999999999999999"}"#),
            day
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":"NaN"}"#),
            Some(DEFAULT_TOKEN_LIFETIME)
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":-5}"#),
            Some(Duration::ZERO)
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":"3599"}"#),
            Some(Duration::from_secs(3599))
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":3599.5}"#),
            Some(Duration::from_secs_f64(3599.5))
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t"}"#),
            Some(DEFAULT_TOKEN_LIFETIME)
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":null}"#),
            Some(DEFAULT_TOKEN_LIFETIME)
        );
        assert_eq!(lifetime(r#"{"access_token":""}"#), None);

        let after = |value: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            if let Ok(value) = value.parse() {
                headers.insert(reqwest::header::RETRY_AFTER, value);
            }
            retry_after(&headers)
        };
        assert_eq!(after("7"), Some(Duration::from_secs(7)));
        assert_eq!(after("18446744073709551615"), Some(MAX_RETRY_AFTER));
        assert_eq!(after("99999999999999999999999"), None);
        assert_eq!(after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn provider_text_is_one_short_line() {
        let text = provider_text("a\nERROR forged\r\x1b[31m");
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(provider_text(&"x".repeat(10_000)).chars().count() <= 301);
    }
}
