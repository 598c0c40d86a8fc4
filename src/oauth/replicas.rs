//! The token manager's side of `[state] backend = "redis"`: single flight across
//! replicas and the token store on Redis (the Redis operations are `crate::state`'s).
//!
//! Within a replica the asset's mutex already makes one session refresh while the others
//! wait (`token.rs`). Across replicas, under that mutex:
//!
//! 1. a token another replica published (`access:<asset>`) with more than the expiry
//!    margin left is taken as is;
//! 2. otherwise the replica takes `lock:<asset>` (`SET NX PX`); the winner refreshes and
//!    publishes (fenced by the lock), then releases it (compare-and-delete);
//! 3. a loser polls for the published token until the lock's TTL has passed, then tries
//!    the lock again (its holder failed or died).
//!
//! Redis down: a cached token is used until it really expires (not only until the
//! margin), and an asset whose refresh token lives in the shared store is not refreshed —
//! the session gets [`TokenError::Unavailable`], which the reply table answers with 454.
//! Other assets (refresh-token files, service accounts, app-only) refresh on their own:
//! their credentials cannot conflict, only the token endpoint sees one request more.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::state::{AssetState, Cached, StoreMark};
use super::token::{AccessToken, AssetSlot, TokenError, TokenManager, EXPIRY_MARGIN};
use crate::config::Asset;
use crate::credentials::secret::Secret;
use crate::credentials::store::StoredToken;
use crate::oauth::http::unix_now;
use crate::state::flight::FlightLock;
use crate::state::tokens::RedisStoreError;
use crate::state::RedisState;

/// How often a replica waiting for another one's refresh looks for its token.
const POLL: Duration = Duration::from_millis(50);

/// The outcome of joining the replicas' single flight.
pub(super) enum Joined {
    /// Refresh now; with the lock, or without one (Redis down, an asset that may).
    Refresh(Option<FlightLock>),
    /// A token from another replica, or the refusal to refresh.
    Done(Result<AccessToken, TokenError>),
}

impl TokenManager {
    /// Step 1: another replica's published token, or (Redis down) this replica's cached
    /// one until its real expiry. `None`: go on towards a refresh.
    pub(super) async fn shared_token(
        &self,
        shared: &Arc<RedisState>,
        slot: &AssetSlot,
        state: &mut AssetState,
    ) -> Option<Result<AccessToken, TokenError>> {
        match shared.shared_access_token(&slot.asset.name).await {
            Ok(found) => found
                .and_then(|(token, expires_at)| adopt(state, token, expires_at))
                .map(Ok),
            Err(_) => cached_until_expiry(shared, state),
        }
    }

    /// Step 2 and 3: the refresh lock, or the token its holder published meanwhile.
    pub(super) async fn join_flight(
        &self,
        shared: &Arc<RedisState>,
        slot: &AssetSlot,
        state: &mut AssetState,
    ) -> Joined {
        let asset = &slot.asset;
        let deadline = Instant::now() + self.lock_ttl;
        loop {
            match shared.try_lock(&asset.name, self.lock_ttl).await {
                Ok(Some(lock)) => {
                    // A holder may have published and released just before.
                    if let Ok(Some((token, expires_at))) =
                        shared.shared_access_token(&asset.name).await
                    {
                        if let Some(token) = adopt(state, token, expires_at) {
                            let _ = shared.release(lock).await;
                            return Joined::Done(Ok(token));
                        }
                    }
                    return Joined::Refresh(Some(lock));
                }
                Ok(None) => {}
                Err(_) => return down(shared, asset, state),
            }
            if Instant::now() >= deadline {
                return Joined::Done(Err(TokenError::Unavailable {
                    asset: asset.name.clone(),
                    reason: "another replica is refreshing the access token and has not finished"
                        .to_string(),
                }));
            }
            tokio::time::sleep(POLL).await;
            match shared.shared_access_token(&asset.name).await {
                Ok(Some((token, expires_at))) => {
                    if let Some(token) = adopt(state, token, expires_at) {
                        return Joined::Done(Ok(token));
                    }
                }
                Ok(None) => {}
                Err(_) => return down(shared, asset, state),
            }
        }
    }

    /// The Redis entry's write counter, the "did `authorize` store a new grant" check.
    pub(super) async fn shared_store_mark(
        &self,
        shared: &Arc<RedisState>,
        asset: &Asset,
    ) -> Option<StoreMark> {
        shared
            .tokens()
            .version(&asset.name)
            .await
            .ok()
            .flatten()
            .map(StoreMark::Version)
    }
}

/// After the refresh: publish the token (fenced by the lock) or the asset's problem,
/// and release the lock.
pub(super) async fn land(
    shared: &RedisState,
    lock: FlightLock,
    result: Result<&AccessToken, &TokenError>,
) {
    // Asset health for every replica's `/readyz` and console: what the holder saw.
    let problem = result.err().filter(|error| error.needs_operator());
    shared
        .set_asset_problem(lock.asset(), problem.map(ToString::to_string))
        .await;
    if let Ok(token) = result {
        let expires_at =
            SystemTime::now() + token.expires_at.saturating_duration_since(Instant::now());
        match shared
            .publish_access_token(&lock, &token.token, expires_at)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "the refresh outlasted its lock; the new access token is used by this replica only"
            ),
            Err(_) => shared.fallback("access token: not shared with the other replicas"),
        }
    }
    // An unreleased lock expires by itself; nothing else to do on failure.
    let _ = shared.release(lock).await;
}

pub(super) async fn shared_stored_token(
    shared: &RedisState,
    asset: &Asset,
) -> Result<StoredToken, TokenError> {
    match shared.tokens().get(&asset.name).await {
        Ok(Some(stored)) => Ok(stored),
        Ok(None) => Err(TokenError::NotAuthorized {
            asset: asset.name.clone(),
        }),
        // Redis itself failing is temporary (454), not a store an operator must fix.
        Err(RedisStoreError::Backend(err)) => Err(TokenError::Unavailable {
            asset: asset.name.clone(),
            reason: err.to_string(),
        }),
        Err(err) => Err(TokenError::Store {
            asset: asset.name.clone(),
            reason: err.to_string(),
        }),
    }
}

pub(super) async fn shared_save_rotated(
    shared: &RedisState,
    asset: &Asset,
    previous: &Secret,
    rotated: Secret,
) -> Result<bool, TokenError> {
    shared
        .tokens()
        .replace_rotated(&asset.name, previous, rotated, unix_now())
        .await
        .map_err(|err| TokenError::Store {
            asset: asset.name.clone(),
            reason: format!("cannot save the rotated refresh token: {err}"),
        })
}

/// Takes a published token into the local cache when it has more than the margin left.
fn adopt(state: &mut AssetState, token: Secret, expires_at: SystemTime) -> Option<AccessToken> {
    let left = expires_at.duration_since(SystemTime::now()).ok()?;
    if left <= EXPIRY_MARGIN {
        return None;
    }
    let expires_at = Instant::now() + left;
    state.cached = Some(Cached {
        token: token.clone(),
        expires_at,
    });
    Some(AccessToken {
        token,
        fresh: false,
        expires_at,
    })
}

/// Redis down: the cached token while it is still valid at all.
fn cached_until_expiry(
    shared: &RedisState,
    state: &AssetState,
) -> Option<Result<AccessToken, TokenError>> {
    let cached = state.cached.as_ref()?;
    if Instant::now() >= cached.expires_at {
        return None;
    }
    shared.fallback("access tokens: this replica's cache, until they expire");
    Some(Ok(AccessToken {
        token: cached.token.clone(),
        fresh: false,
        expires_at: cached.expires_at,
    }))
}

/// Redis down while joining the flight.
fn down(shared: &RedisState, asset: &Asset, state: &AssetState) -> Joined {
    if let Some(outcome) = cached_until_expiry(shared, state) {
        return Joined::Done(outcome);
    }
    if !asset.uses_store() {
        shared.fallback("token refresh: without the shared lock (credentials not shared)");
        return Joined::Refresh(None);
    }
    shared.fallback("token refresh: refused (454), the refresh token lives in Redis");
    Joined::Done(Err(TokenError::Unavailable {
        asset: asset.name.clone(),
        reason: "the shared state (Redis) is unreachable and refreshing needs its lock".to_string(),
    }))
}
