//! Access tokens: one cache per asset, refreshed ahead of expiry, one refresh at a time.
//!
//! Every session that needs a token for an asset goes through [`TokenManager::access_token`].
//! The per-asset mutex is held across the HTTP refresh, so when a hundred sessions arrive at
//! the moment the token expires, one of them refreshes and the rest wait and reuse its result
//! (single flight) instead of hammering the token endpoint. Failures are classified (in
//! [`super::request`]) so the session can tell the client "temporary, try later" and the
//! operator what to fix; no failure ever discards a refresh token.
//!
//! The per-asset state ([`super::state`]: cache, single-flight lock, unsaved rotation,
//! back-off) lives in an `Arc` that a config reload hands to the new manager when the
//! asset's credentials did not change ([`TokenManager::reloaded`]), and `/readyz` reads a
//! snapshot of it that is never held across a refresh ([`TokenManager::status`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::{Asset, Config, Grant as ConfigGrant, RefreshTokenSource};
use crate::credentials::secret::Secret;
use crate::credentials::service_account::ServiceAccountKey;
use crate::credentials::store::{StoredToken, TokenStore};
use crate::metrics::Metrics;
use crate::oauth::http::{self, unix_now};
use crate::oauth::replicas::{land, shared_save_rotated, shared_stored_token, Joined};
use crate::oauth::request::{token_request, GrantKind, Refusal};
use crate::oauth::sources::{configured_refresh_token, same_credentials};
use crate::oauth::state::{AssetState, Cached, Failure, PendingRotation, SlotState, StoreMark};
use crate::state::Shared;

pub use crate::oauth::error::TokenError;
pub use crate::oauth::request::{MAX_RETRY_AFTER, MAX_TOKEN_LIFETIME};

/// Refresh this long before the provider's expiry, so a token never dies mid-session.
pub(super) const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// A usable access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret,
    /// Whether this call fetched it (as opposed to the cache); a refused cached token is
    /// worth one fresh retry, a refused fresh one is not.
    pub fresh: bool,
    pub expires_at: Instant,
}

pub(super) struct AssetSlot {
    pub(super) asset: Arc<Asset>,
    pub(super) shared: Arc<SlotState>,
}

/// What `token` and `check` show about an asset's credentials.
#[derive(Debug, Clone)]
pub struct TokenStatus {
    pub source: String,
    pub access_token_valid_for: Option<Duration>,
    pub last_refresh: Option<SystemTime>,
    pub last_error: Option<TokenError>,
    /// When the refresh token dies, as the provider said at the last refresh (a
    /// time-limited grant); see [`crate::alerts::forecast`] for what else is foreseeable.
    pub refresh_token_expires_at: Option<SystemTime>,
    /// Why the provider refused a freshly refreshed token at the last login, if it did.
    pub provider_refusal: Option<String>,
}

impl TokenStatus {
    /// True when retrying cannot help until an operator acts: the token endpoint refused
    /// the credentials (or there are none), or the provider refuses fresh tokens.
    pub fn needs_operator(&self) -> bool {
        self.provider_refusal.is_some()
            || self
                .last_error
                .as_ref()
                .is_some_and(TokenError::needs_operator)
    }
}

pub struct TokenManager {
    http: reqwest::Client,
    slots: HashMap<String, AssetSlot>,
    store: Arc<TokenStore>,
    retry_after: Duration,
    metrics: Option<Arc<Metrics>>,
    /// `[state] backend = "redis"`: store, access token and refresh lock shared (replicas.rs).
    pub(super) shared: Shared,
    /// How long a replica's refresh lock lives (it frees itself if the replica dies).
    pub(super) lock_ttl: Duration,
}

/// What can stop a relay from being built: its HTTP client, or its shared-state client.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientInitError {
    #[error("cannot build the HTTP client for token requests: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

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
        let http = http::client(config.timeouts.token_request)?;
        let store = TokenStore::new(config.tokens.path.clone(), config.tokens.key.clone());
        // Same `[state]`: same connection; another backend is another store (fresh state).
        let old_shared = previous.map(|previous| previous.shared.as_ref());
        let shared = crate::state::for_config(config, old_shared.flatten())?;
        let same_backend = old_shared.is_none_or(|old| match (old, &shared) {
            (None, None) => true,
            (Some(old), Some(new)) => Arc::ptr_eq(old, new),
            _ => false,
        });
        let slots = config
            .assets
            .iter()
            .map(|asset| {
                let kept = previous.and_then(|previous| {
                    let old = previous.slots.get(&asset.name)?;
                    if same_backend && same_credentials(&old.asset, &previous.store, asset, &store) {
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
            shared,
            lock_ttl: config.timeouts.token_request * 2 + Duration::from_secs(5),
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

    /// The shared state this manager uses (`None`: local).
    pub fn shared(&self) -> &Shared {
        &self.shared
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
        // Several replicas: the token another one published, if any.
        if let Some(shared) = &self.shared {
            if let Some(outcome) = self.shared_token(shared, slot, &mut state).await {
                slot.shared.publish(&state);
                return outcome;
            }
        }
        let uses_store = slot.asset.uses_store();
        let fingerprint = match (&self.shared, uses_store) {
            (_, false) => None,
            (None, true) => self.store.fingerprint().map(StoreMark::File),
            (Some(shared), true) => self.shared_store_mark(shared, &slot.asset).await,
        };
        if let Some(failure) = &state.failure {
            let store_changed = uses_store && fingerprint != failure.store_seen;
            if !store_changed && failure.at.elapsed() < failure.back_off {
                return Err(failure.error.clone());
            }
        }
        // ... and the lock that makes this replica the one that refreshes.
        let mut flight = None;
        if let Some(shared) = &self.shared {
            match self.join_flight(shared, slot, &mut state).await {
                Joined::Refresh(lock) => flight = lock,
                Joined::Done(outcome) => {
                    slot.shared.publish(&state);
                    return outcome;
                }
            }
        }
        let result = self.refresh(&slot.asset, &mut state).await;
        if let (Some(shared), Some(lock)) = (&self.shared, flight) {
            land(shared, lock, result.as_ref().map_err(|r| &r.error)).await;
        }
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
            if let Some(shared) = &self.shared {
                // Best effort: other replicas stop using it too.
                let _ = shared.forget_access_token(asset, token).await;
            }
        }
    }

    /// Records the provider's answer to a login with a freshly refreshed token: `Some(reason)`
    /// when it refused it (only an operator can fix that), `None` when it accepted one.
    /// Called by whatever logs in with the asset's tokens (the SMTP connector, HTTPS
    /// transports); `status` and the alerts read it.
    pub fn note_provider_login(&self, asset: &str, refusal: Option<String>) {
        if let Some(slot) = self.slots.get(asset) {
            let mut held = slot
                .shared
                .provider_refusal
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if held.is_some() || refusal.is_some() {
                *held = refusal;
            }
        }
    }

    /// The asset's state as of the last change. Never waits for a refresh in flight.
    pub async fn status(&self, asset: &str) -> Option<TokenStatus> {
        let slot = self.slots.get(asset)?;
        let snapshot = slot.shared.snapshot();
        let source = match (&slot.asset.service_account, slot.asset.grant) {
            (Some(key), _) => format!("service account {}", key.client_email),
            (None, ConfigGrant::ClientCredentials) => {
                "client credentials (app-only, no refresh token)".to_string()
            }
            (None, ConfigGrant::RefreshToken) => slot.asset.refresh_token.describe(),
        };
        Some(TokenStatus {
            source,
            access_token_valid_for: snapshot
                .expires_at
                .map(|expires_at| expires_at.saturating_duration_since(Instant::now())),
            last_refresh: snapshot.last_refresh,
            last_error: snapshot.last_error,
            refresh_token_expires_at: snapshot.refresh_token_expires_at,
            provider_refusal: slot
                .shared
                .provider_refusal
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
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
        let grant = match (&asset.service_account, asset.grant) {
            (Some(key), _) => self.service_account_grant(asset, key).await?,
            (None, ConfigGrant::ClientCredentials) => self.client_credentials_grant(asset).await?,
            (None, ConfigGrant::RefreshToken) => self.refresh_token_grant(asset, state).await?,
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
        let now = SystemTime::now();
        state.last_refresh = Some(now);
        // Each answer says it anew: a new grant may be unlimited where the old one was not.
        state.refresh_token_expires_at = grant
            .refresh_token_lifetime
            .and_then(|lifetime| now.checked_add(lifetime));
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
        let response = token_request(&self.http, asset, &form, GrantKind::RefreshToken).await?;

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
            refresh_token_lifetime: response.refresh_token_lifetime,
        })
    }

    async fn stored_token(&self, asset: &Asset) -> Result<StoredToken, TokenError> {
        if let Some(shared) = &self.shared {
            return shared_stored_token(shared, asset).await;
        }
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
        if let Some(shared) = &self.shared {
            return shared_save_rotated(shared, asset, previous, rotated).await;
        }
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

    /// RFC 6749 §4.4 client-credentials grant (Microsoft's app-only tokens): no refresh
    /// token to read, rotate or store; the same cache and single flight as the others.
    async fn client_credentials_grant(&self, asset: &Asset) -> Result<Grant, Refusal> {
        let scope = asset.scopes.join(" ");
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", asset.client_id.as_str()),
            ("client_secret", asset.client_secret.expose()),
            ("scope", scope.as_str()),
        ];
        let response =
            token_request(&self.http, asset, &form, GrantKind::ClientCredentials).await?;
        Ok(Grant {
            access_token: response.access_token,
            lifetime: response.lifetime,
            refresh_token_lifetime: None,
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
        let response = token_request(&self.http, asset, &form, GrantKind::ServiceAccount).await?;
        Ok(Grant {
            access_token: response.access_token,
            lifetime: response.lifetime,
            // A service account has no refresh token to expire.
            refresh_token_lifetime: None,
        })
    }
}

struct Grant {
    access_token: Secret,
    lifetime: Duration,
    refresh_token_lifetime: Option<Duration>,
}
