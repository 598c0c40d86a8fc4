//! `smtp-oauth-relay check`: prove each asset works without sending mail.

use std::io::Write;
use std::time::SystemTime;

use tokio::time::Instant;

use crate::alerts::forecast::Forecast;
use crate::config::{Asset, AssetTransport, Config};
use crate::error::RelayError;
use crate::oauth::token::TokenManager;
use crate::transport::check::check_gmail_api;
use crate::transport::graph_check::{self, GraphCheckError};
use crate::transport::{ApiClients, ApiFailure, Context, TransportError};
use crate::upstream::{Connector, UpstreamSettings};

/// The outcome for one asset, printable as one line.
pub struct AssetCheck {
    pub asset: String,
    pub result: Result<String, RelayError>,
    /// When its refresh token is foreseen to die, as the console and alerts show it.
    pub forecast: Option<Forecast>,
}

/// Refreshes a token and opens an authenticated upstream session for every asset.
pub async fn check_assets(config: &Config, tokens: &TokenManager) -> Vec<AssetCheck> {
    let mut results = Vec::new();
    for asset in &config.assets {
        results.push(check_asset(config, tokens, asset).await);
    }
    results
}

/// The same for one asset.
pub async fn check_asset(config: &Config, tokens: &TokenManager, asset: &Asset) -> AssetCheck {
    let settings = UpstreamSettings::from_config(config);
    if let AssetTransport::Graph(graph) = &asset.transport {
        // Mail.Send allows no read call: the proof is the token and what it carries.
        let result = graph_check::prove(tokens, asset, graph.large_messages)
            .await
            .map_err(|err| match err {
                GraphCheckError::Token(err) => RelayError::Token(err),
                GraphCheckError::Permission(err) => {
                    RelayError::Transport(TransportError::Api(ApiFailure::Forbidden {
                        api: "Microsoft Graph",
                        scope: graph.default_scope(asset.grant).to_string(),
                        message: err.to_string(),
                    }))
                }
            });
        return AssetCheck {
            asset: asset.name.clone(),
            result,
            forecast: crate::alerts::asset_forecast(tokens, config, asset).await,
        };
    }
    if let AssetTransport::GmailApi(api) = &asset.transport {
        let apis = ApiClients::new(config).unwrap_or_default();
        let cx = Context {
            tokens,
            settings: &settings,
            metrics: None,
            apis: &apis,
        };
        return AssetCheck {
            asset: asset.name.clone(),
            result: check_gmail_api(&cx, asset, api).await,
            forecast: crate::alerts::asset_forecast(tokens, config, asset).await,
        };
    }
    let result = async {
        // The same login as the relay's, refreshing once if a cached token is refused.
        let upstream = Connector::new(tokens, &settings).open(asset).await?;
        let valid_secs = upstream.token_expires_at().map_or(0, |expires_at| {
            expires_at
                .saturating_duration_since(Instant::now())
                .as_secs()
        });
        upstream.quit().await;
        Ok::<_, RelayError>(format!(
            "token refreshed (valid {valid_secs} s), {} accepted XOAUTH2 for {}",
            asset.upstream, asset.email
        ))
    }
    .await;
    AssetCheck {
        asset: asset.name.clone(),
        result,
        forecast: crate::alerts::asset_forecast(tokens, config, asset).await,
    }
}

/// Prints the shared-state backend's health (`[state] backend = "redis"`); true when it
/// is local or reachable.
pub async fn report_state(tokens: &TokenManager) -> bool {
    let Some(shared) = tokens.shared() else {
        return true;
    };
    println!("{}", crate::state::describe_health(shared).await);
    shared.health().down.is_none()
}

/// Prints the results; true when every asset is fine.
pub fn report(results: &[AssetCheck], out: &mut impl Write) -> bool {
    let mut all_ok = true;
    for check in results {
        let _ = match &check.result {
            Ok(summary) => writeln!(out, "asset {}: OK: {summary}", check.asset),
            Err(err) => {
                all_ok = false;
                writeln!(
                    out,
                    "asset {}: FAILED: {err}\n    what to do: {}",
                    check.asset,
                    err.hint()
                )
            }
        };
        if let Some(forecast) = &check.forecast {
            let _ = writeln!(
                out,
                "    {}\n    before then: {}",
                forecast.describe(SystemTime::now()),
                forecast.cause.fix()
            );
        }
    }
    all_ok
}

/// Prints each asset's use of its sending limits (issue 16), from the same store `serve`
/// counts in (the local `limits.json`, or Redis), and the provider's "over the limit"
/// mark when one holds. Information, not a failure: the mark ends by itself.
pub async fn report_limits(config: &Config, tokens: &TokenManager, out: &mut impl Write) {
    let store = crate::state::limit_store(config, tokens.shared());
    let now = crate::limits::unix_now();
    for asset in &config.assets {
        let limits = &asset.sending;
        let of = |used: u64, limit: u64| match limit {
            0 => format!("{used} (no limit)"),
            limit => format!("{used} of {limit}"),
        };
        let totals = match store.usage(&asset.name, now).await {
            Ok(usage) => usage.totals(now),
            Err(err) => {
                let _ = writeln!(
                    out,
                    "asset {}: sending counters unreadable: {err}",
                    asset.name
                );
                continue;
            }
        };
        let _ = writeln!(
            out,
            "asset {}: last 24 h: {} messages, {} recipients; last minute: {} messages",
            asset.name,
            of(totals.messages_day, limits.daily_messages),
            of(totals.recipients_day, limits.daily_recipients),
            of(totals.messages_minute, limits.messages_per_minute),
        );
        if let Ok(Some(mark)) = store.over_limit(&asset.name, now).await {
            let _ = writeln!(
                out,
                "    warning: over the provider's sending limit until {} (the provider said: {}); \
                 its mail is answered 451 until then",
                crate::limits::format_time(mark.until),
                mark.reason
            );
        }
    }
}
