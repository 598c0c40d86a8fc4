//! Credential alerts: the relay notices first that an asset cannot send (or soon will
//! not), and says so through the `[[alert]]` channels, in the background.
//!
//! ```text
//!  every check_secs:  TokenManager::status ─┐
//!                     token store dates ────┼─▶ AssetView ─▶ Detector ─▶ Alert ─▶ Outbox
//!                     forecast (pure) ──────┘   (health,     (what is    (log)    one task per
//!                     client_secret_expires      forecast)    due, dedup)          channel, retries
//! ```
//!
//! - [`forecast`]: when a refresh token is foreseen to die (pure; also used by `check` and
//!   the console through [`asset_forecast`]).
//! - [`detect`]: which events are due, with the per-asset, per-kind `interval_secs` limit.
//! - [`event`], [`format`]: what an alert says, and as JSON / Slack / Teams / mail.
//! - [`send`]: webhook and mail delivery with retries, metrics and logs.
//!
//! The task only reads state the sessions already keep (the token manager's snapshot, the
//! provider's last verdict) and never takes a lock a session waits on, so it cannot delay
//! mail. The one request it makes itself is the keep-alive: a refresh token foreseen to die
//! of disuse within the warning window is used once (a refresh), which renews it.

pub mod detect;
pub mod event;
pub mod forecast;
pub mod format;
pub mod send;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Asset, Config, RefreshTokenSource};
use crate::credentials::secret::Secret;
use crate::credentials::store::{StoredToken, TokenStore};
use crate::oauth::token::{TokenManager, TokenStatus};
use crate::relay::Relay;
use crate::server::RelayHandle;
use detect::{AssetView, Detector, Health, Rules};
use event::{Alert, EventKind};
use forecast::{forecast, Forecast, GrantFacts};
use send::{Outbox, Outgoing};

/// What the alert task needs besides the config.
#[derive(Debug, Clone, Default)]
pub struct AlertOptions {
    /// The console's external base URL (`[admin] public_url`, or the admin listener's URL)
    /// when the console is on: alerts then link to the asset's page.
    pub console_base: Option<String>,
}

/// Whether the asset gets its tokens with a refresh token (and so may see it expire).
/// Service accounts (and client-credentials grants) do not.
pub fn uses_refresh_token(asset: &Asset) -> bool {
    // Service accounts sign an assertion and app-only assets send their client secret:
    // neither holds a refresh token that could die.
    asset.service_account.is_none() && asset.grant == crate::config::Grant::RefreshToken
}

/// The facts a forecast is made from: the token manager's status (last refresh, the
/// provider's stated end) and the store's entry (obtained, last rotated). Pure.
pub fn grant_facts(
    asset: &Asset,
    status: Option<&TokenStatus>,
    stored: Option<&StoredToken>,
) -> GrantFacts {
    let from_unix = |secs: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let last_used = [
        status.and_then(|status| status.last_refresh),
        stored.map(|stored| from_unix(stored.updated_at)),
    ]
    .into_iter()
    .flatten()
    .max();
    GrantFacts {
        provider: Some(asset.provider),
        has_refresh_token: uses_refresh_token(asset),
        obtained_at: stored.map(|stored| from_unix(stored.obtained_at)),
        last_used,
        stated_expiry: status.and_then(|status| status.refresh_token_expires_at),
    }
}

/// The asset's refresh-token forecast as the running relay (or `check`) knows it: what
/// `check` prints and the console shows. Reads the token store (off the async threads)
/// for a store asset; `None` when nothing is foreseeable.
pub async fn asset_forecast(
    tokens: &TokenManager,
    config: &Config,
    asset: &Asset,
) -> Option<Forecast> {
    let status = tokens.status(&asset.name).await;
    let stored = match tokens.shared() {
        // `[state] backend = "redis"`: the grant lives in Redis.
        Some(shared) if asset.uses_store() => shared.tokens().get(&asset.name).await.ok().flatten(),
        _ => stored_entry(config, asset).await,
    };
    forecast(&grant_facts(asset, status.as_ref(), stored.as_ref()))
}

/// The store's entry for a store asset; `None` for other assets or when it cannot be read
/// (the token manager reports that as the asset's error).
async fn stored_entry(config: &Config, asset: &Asset) -> Option<StoredToken> {
    if !uses_refresh_token(asset) || asset.refresh_token != RefreshTokenSource::Store {
        return None;
    }
    let store = TokenStore::new(config.tokens.path.clone(), config.tokens.key.clone());
    let name = asset.name.clone();
    tokio::task::spawn_blocking(move || store.get(&name).ok().flatten())
        .await
        .ok()
        .flatten()
}

/// What the provider's refusal of a fresh token asks of the operator.
const PROVIDER_REFUSAL_FIX: &str = "check that the asset's email is the account that consented, that the \
     scope includes SMTP (Google: https://mail.google.com/), and that SMTP AUTH is enabled for the mailbox; \
     then authorize again";

/// The asset's health from its token status.
pub fn health(status: Option<&TokenStatus>) -> Health {
    let Some(status) = status else {
        return Health::Ok;
    };
    if let Some(error) = status.last_error.as_ref().filter(|e| e.needs_operator()) {
        return Health::NeedsAttention {
            reason: error.to_string(),
            fix: error.hint(),
        };
    }
    match &status.provider_refusal {
        Some(refusal) => Health::NeedsAttention {
            reason: format!("the provider refused a freshly refreshed access token: {refusal}"),
            fix: PROVIDER_REFUSAL_FIX.to_string(),
        },
        None => Health::Ok,
    }
}

/// Runs the alert task until `shutdown`: follows config reloads through `relays`.
pub async fn run(relays: RelayHandle, shutdown: CancellationToken, options: AlertOptions) {
    let mut detector = Detector::new();
    let mut outbox: Option<Outbox> = None;
    loop {
        let relay = relays.current();
        let settings = &relay.config.alerts;
        if outbox.as_ref().is_none_or(|o| o.settings() != settings) {
            // The old tasks finish what they hold and end when their queues close.
            outbox = Some(Outbox::start(settings, relays.clone(), shutdown.clone()));
        }
        let rules = Rules {
            interval: settings.interval,
            refresh_token_warning: settings.refresh_token_warning,
            client_secret_warning_days: settings.client_secret_warning_days.clone(),
        };
        for asset in &relay.config.assets {
            let view = asset_view(&relay, asset, &rules, &options).await;
            for alert in detector.check(&view, &rules, Instant::now(), SystemTime::now()) {
                let secrets = secrets_of(&relay, asset).await;
                let reason = crate::credentials::secret::redact(
                    &alert.reason,
                    &secrets.iter().map(Secret::expose).collect::<Vec<_>>(),
                );
                if !claimed_by_this_replica(&relay, &alert, settings.interval).await {
                    tracing::info!(event = alert.event.name(), asset = %alert.asset, "alert sent by another replica");
                    continue;
                }
                tracing::warn!(event = alert.event.name(), asset = %alert.asset, %reason, "alert");
                if let Some(outbox) = &outbox {
                    outbox.send(Outgoing { alert, secrets });
                }
            }
        }
        // Dead letters of the spool (issue 15): told as they come, once each.
        if let Some(spool) = &relay.spool {
            for alert in spool.take_alerts() {
                let Some(asset) = relay.config.asset(&alert.asset) else {
                    continue;
                };
                let secrets = secrets_of(&relay, asset).await;
                if let Some(outbox) = &outbox {
                    outbox.send(Outgoing { alert, secrets });
                }
            }
        }
        let names: Vec<&str> = relay
            .config
            .assets
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        detector.retain(&names);
        let pause = settings.check_every;
        drop(relay);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// With replicas on Redis: why another replica found the asset needing an operator when
/// it last refreshed (issue 16: asset health is shared), though this one has not tried.
pub async fn reported_by_another_replica(relay: &Relay, asset: &Asset) -> Option<String> {
    let problem = relay.shared.as_ref()?.asset_problem(&asset.name).await?;
    Some(format!("another replica reports: {problem}"))
}

/// With replicas on Redis, whether this one sends `alert` (one replica per event and
/// interval); always true with the local backend.
async fn claimed_by_this_replica(relay: &Relay, alert: &Alert, interval: Duration) -> bool {
    let Some(shared) = &relay.shared else {
        return true;
    };
    let opposite = match alert.event {
        EventKind::AssetNeedsAttention => Some(EventKind::AssetRecovered),
        EventKind::AssetRecovered => Some(EventKind::AssetNeedsAttention),
        _ => None,
    };
    shared
        .claim_alert(
            &alert.asset,
            alert.event.name(),
            opposite.map(EventKind::name),
            interval,
        )
        .await
}

/// One asset as the detector sees it, after a keep-alive refresh if one was due.
async fn asset_view(
    relay: &Arc<Relay>,
    asset: &Asset,
    rules: &Rules,
    options: &AlertOptions,
) -> AssetView {
    let mut status = relay.tokens.status(&asset.name).await;
    let stored = stored_entry(&relay.config, asset).await;
    let mut forecast = forecast(&grant_facts(asset, status.as_ref(), stored.as_ref()));
    let keep_alive = forecast.is_some_and(|f| {
        f.cause.renewed_by_use() && f.within(rules.refresh_token_warning, SystemTime::now())
    });
    if keep_alive && health(status.as_ref()) == Health::Ok {
        // Using the token renews it: better than telling someone it will die of disuse.
        match relay.tokens.access_token(&asset.name).await {
            Ok(_) => {
                tracing::info!(asset = %asset.name, "refresh token used to keep it from expiring unused")
            }
            Err(err) => {
                tracing::warn!(asset = %asset.name, error = %err, "keep-alive refresh failed")
            }
        }
        status = relay.tokens.status(&asset.name).await;
        forecast = self::forecast::forecast(&grant_facts(asset, status.as_ref(), stored.as_ref()));
    }
    let console_url = options
        .console_base
        .as_deref()
        .map(|base| format::console_link(base, &asset.name));
    let mut health = health(status.as_ref());
    if health == Health::Ok {
        if let Some(problem) = reported_by_another_replica(relay, asset).await {
            health = Health::NeedsAttention {
                reason: problem,
                fix: format!(
                    "authorize the asset again (`smtp-oauth-relay authorize {}`)",
                    asset.name
                ),
            };
        }
    }
    if let (Health::NeedsAttention { fix, .. }, Some(_)) = (&mut health, &console_url) {
        fix.push_str(" (or open the asset's console page and use Generate Token)");
    }
    AssetView {
        name: asset.name.clone(),
        email: asset.email.clone(),
        health,
        forecast,
        client_secret_expires: asset.client_secret_expires,
        console_url,
        over_limit: relay
            .limits
            .over_limit(&asset.name, crate::limits::unix_now())
            .await,
    }
}

/// The asset's secrets a payload must not hold: the client secret and the refresh token
/// (from the config, its file, or the store).
async fn secrets_of(relay: &Relay, asset: &Asset) -> Vec<Secret> {
    let mut secrets = vec![asset.client_secret.clone()];
    match &asset.refresh_token {
        RefreshTokenSource::Inline(token) => secrets.push(token.clone()),
        RefreshTokenSource::File(path) => {
            if let Ok(text) = tokio::fs::read_to_string(path).await {
                secrets.push(Secret::new(text.trim()));
            }
        }
        RefreshTokenSource::Store => {
            if let Some(stored) = stored_entry(&relay.config, asset).await {
                secrets.push(stored.refresh_token);
            }
        }
    }
    secrets.retain(|secret| !secret.is_empty());
    secrets
}
