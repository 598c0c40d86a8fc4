//! The Assets page (`/`): one row per asset with what an operator needs to see first —
//! is it working, and if not, why and what to do — plus its token times, the expiry
//! forecast, the last 24 hours of messages and the last error. It reloads itself.
//!
//! [`health`] is the verdict the Asset page shows too.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{html, Markup};

use super::forecast::{forecast, Forecast};
use super::pages::{page, span, utc, when};
use super::App;
use crate::config::{Asset, Provider};
use crate::credentials::store::{StoredToken, TokenStore};
use crate::oauth::token::TokenError;
use crate::relay::Relay;

/// What the console says about one asset.
#[derive(Debug, Clone)]
pub struct Health {
    pub ok: bool,
    /// Why it needs attention, in words.
    pub reason: Option<String>,
    /// What to do about it, in words.
    pub fix: Option<String>,
    pub access_valid_for: Option<Duration>,
    pub last_refresh: Option<SystemTime>,
    /// The grant in the token store (store assets only).
    pub stored: Option<StoredToken>,
    pub forecast: Option<Forecast>,
    /// The last refresh error, also a temporary one.
    pub last_error: Option<String>,
    /// "Over the provider's limit until …" (issue 16): its mail is answered 451 locally.
    pub over_limit: Option<crate::limits::OverLimit>,
}

/// The token store's entries, or why it cannot be read (shown, never guessed around).
pub async fn stored_tokens(relay: &Relay) -> Result<BTreeMap<String, StoredToken>, String> {
    if let Some(shared) = &relay.shared {
        // `[state] backend = "redis"`: the entries are in Redis, one key per asset.
        let mut entries = BTreeMap::new();
        for asset in relay.config.assets.iter().filter(|a| a.uses_store()) {
            if let Some(entry) = shared
                .tokens()
                .get(&asset.name)
                .await
                .map_err(|err| err.to_string())?
            {
                entries.insert(asset.name.clone(), entry);
            }
        }
        return Ok(entries);
    }
    let store = TokenStore::new(
        relay.config.tokens.path.clone(),
        relay.config.tokens.key.clone(),
    );
    match tokio::task::spawn_blocking(move || store.load()).await {
        Ok(Ok(entries)) => Ok(entries),
        Ok(Err(err)) => Err(err.to_string()),
        Err(err) => Err(err.to_string()),
    }
}

fn uses_store(asset: &Asset) -> bool {
    asset.uses_store()
}

/// The fix for a token error, with the console's own way to re-authorize.
fn fix_for(asset: &Asset, error: &TokenError) -> String {
    let hint = error.hint();
    match error {
        TokenError::NeedsReauthorization { .. } | TokenError::NotAuthorized { .. }
            if asset.service_account.is_none() =>
        {
            format!(
                "Click \"Generate Token\" on the asset's page and sign in as {} (or: {hint})",
                asset.email
            )
        }
        _ => hint,
    }
}

pub async fn health(
    relay: &Relay,
    asset: &Asset,
    store: &Result<BTreeMap<String, StoredToken>, String>,
) -> Health {
    let status = relay.tokens.status(&asset.name).await;
    let stored = match store {
        Ok(entries) if uses_store(asset) => entries.get(&asset.name).cloned(),
        _ => None,
    };
    let mut health = Health {
        ok: true,
        reason: None,
        fix: None,
        access_valid_for: status.as_ref().and_then(|s| s.access_token_valid_for),
        last_refresh: status.as_ref().and_then(|s| s.last_refresh),
        forecast: forecast(asset, status.as_ref(), stored.as_ref()),
        stored,
        last_error: status
            .as_ref()
            .and_then(|s| s.last_error.as_ref())
            .map(ToString::to_string),
        over_limit: relay
            .limits
            .over_limit(&asset.name, crate::limits::unix_now())
            .await,
    };
    let operator_error = status
        .and_then(|s| s.last_error)
        .filter(TokenError::needs_operator);
    if let Some(error) = operator_error {
        health.ok = false;
        health.reason = Some(error.to_string());
        health.fix = Some(fix_for(asset, &error));
    } else if let Some(problem) = crate::alerts::reported_by_another_replica(relay, asset).await {
        health.ok = false;
        health.reason = Some(problem);
        health.fix = Some(format!(
            "Click \"Generate Token\" on the asset's page and sign in as {} (or run `smtp-oauth-relay authorize {}`).",
            asset.email, asset.name
        ));
    } else if uses_store(asset) {
        match store {
            Err(reason) => {
                health.ok = false;
                health.reason = Some(format!("the token store cannot be read: {reason}"));
                health.fix =
                    Some("Fix the token store file named above ([tokens] path).".to_string());
            }
            Ok(_) if health.stored.is_none() => {
                health.ok = false;
                health.reason =
                    Some("no refresh token stored yet: the asset was never authorized".to_string());
                health.fix = Some(format!(
                    "Click \"Generate Token\" on the asset's page and sign in as {} (or run `smtp-oauth-relay authorize {}`).",
                    asset.email, asset.name
                ));
            }
            Ok(_) => {}
        }
    }
    health
}

pub fn provider_name(provider: Provider) -> &'static str {
    match provider {
        Provider::Google => "Google",
        Provider::Microsoft => "Microsoft",
        Provider::Custom => "custom",
    }
}

/// The verdict cell: `ok`, or `needs attention` with the reason and the fix.
pub fn status_cell(health: &Health) -> Markup {
    html! {
        @if let (true, Some(mark)) = (health.ok, &health.over_limit) {
            span.bad.status { "over the provider's limit until " (crate::limits::format_time(mark.until)) }
            div.reason { "The provider said: " (mark.reason) }
            div.fix { "Nothing is lost: mail for this asset is answered 451 (clients retry) until then." }
        } @else if health.ok {
            span.ok.status { "ok" }
        } @else {
            span.bad.status { "needs attention" }
            @if let Some(reason) = &health.reason { div.reason { (reason) } }
            @if let Some(fix) = &health.fix { div.fix { "Fix: " (fix) } }
        }
    }
}

/// "obtained 3 d ago, rotated 1 h ago", or where the token comes from instead.
pub fn grant_cell(asset: &Asset, health: &Health) -> Markup {
    let from_secs = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    html! {
        @if asset.service_account.is_some() {
            "service account (no refresh token)"
        } @else if let Some(stored) = &health.stored {
            "obtained " (when(Some(from_secs(stored.obtained_at))))
            br;
            "last rotated " (when(Some(from_secs(stored.updated_at))))
        } @else if uses_store(asset) {
            "—"
        } @else {
            "from " (asset.refresh_token.describe())
        }
    }
}

pub fn forecast_cell(health: &Health) -> Markup {
    html! {
        @match &health.forecast {
            Some(f) => { span title=(utc(f.expires_at)) { (super::pages::relative(f.expires_at)) } " " span.fix { (f.reason) } }
            None => { "not known" }
        }
    }
}

/// `GET /`.
pub async fn page_handler(app: &App, headers: &HeaderMap) -> Response {
    let session = match app.session(headers) {
        Ok(view) => view,
        Err(response) => return *response,
    };
    let relay = app.relay();
    let store = stored_tokens(&relay).await;
    let mut rows = Vec::new();
    for asset in &relay.config.assets {
        let health = health(&relay, asset, &store).await;
        rows.push((asset.clone(), health, relay.recent.last_day(&asset.name)));
    }
    let refresh = app.settings().map(|s| s.refresh_secs).filter(|&s| s > 0);
    // Several replicas: whether this one shares state through Redis right now.
    let state = match &relay.shared {
        Some(shared) => Some(crate::state::describe_health(shared).await),
        None => None,
    };
    let body = html! {
        p { "Every mailbox the relay sends through. This page reloads itself"
            @if let Some(secs) = refresh { " every " (secs) " s" } "." }
        @if let Some(state) = &state { p #state { (state) } }
        table #assets {
            thead { tr {
                th { "Asset" } th { "Email" } th { "Provider" } th { "Transport" } th { "Status" }
                th { "Access token valid for" } th { "Last refresh" } th { "Refresh token" }
                th { "Expiry forecast" } th { "Messages (24 h)" } th { "Last error" }
            } }
            tbody {
                @for (asset, health, day) in &rows {
                    tr.asset data-asset=(asset.name) {
                        td { a href=(app.href(&format!("/assets/{}", path_segment(&asset.name)))) { (asset.name) } }
                        td { (asset.email) }
                        td { (provider_name(asset.provider)) }
                        td { (transport_cell(asset)) }
                        td { (status_cell(health)) }
                        td { @match health.access_valid_for {
                            Some(d) if !d.is_zero() => { (d.as_secs()) " s (" (span(d)) ")" }
                            _ => { "—" }
                        } }
                        td { (when(health.last_refresh)) }
                        td { (grant_cell(asset, health)) }
                        td { (forecast_cell(health)) }
                        td { (day.delivered) " delivered, " (day.deferred) " deferred, " (day.refused) " refused" }
                        td { @match &health.last_error { Some(e) => { (e) } None => { "—" } } }
                    }
                }
            }
        }
    };
    page(app, StatusCode::OK, "Assets", Some(&session), refresh, body)
}

pub async fn index(State(app): State<App>, headers: HeaderMap) -> Response {
    page_handler(&app, &headers).await
}

/// An asset name as one URL path segment (names may hold anything TOML allows).
pub fn path_segment(name: &str) -> String {
    oauth2::url::form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The transport column: SMTP with its server, or the HTTPS API the asset posts to.
pub fn transport_cell(asset: &Asset) -> String {
    use crate::config::AssetTransport;
    match &asset.transport {
        AssetTransport::Smtp => format!("SMTP {}", asset.upstream),
        AssetTransport::GmailApi(api) => format!("Gmail API {}", api.api_url),
        AssetTransport::Graph(graph) => format!("Microsoft Graph {}", graph.api_url),
    }
}
