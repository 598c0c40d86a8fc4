//! `check` for the API transports: prove the asset without sending mail. A token refresh,
//! then Google's tokeninfo endpoint (`tokeninfo_url`) says which scopes the token carries;
//! a token without `gmail.send` (or the full `https://mail.google.com/`) is the failure it
//! is. What this cannot prove: that the Gmail API is enabled in the Cloud project, that
//! Google will accept the From address (the account or a verified send-as alias), or the
//! mailbox's sending quota; only a real message shows those.

use std::time::Duration;

use tokio::time::Instant;

use super::error::{ApiFailure, TransportError};
use super::Context;
use crate::config::{Asset, GmailApiSettings, GMAIL_SEND_SCOPE};
use crate::error::RelayError;
use crate::oauth::http::{describe_error, provider_text};

/// The full-mailbox scope also allows sending.
const FULL_SCOPE: &str = "https://mail.google.com/";

/// Refreshes the token and reads its scopes from tokeninfo.
pub async fn check_gmail_api(
    cx: &Context<'_>,
    asset: &Asset,
    settings: &GmailApiSettings,
) -> Result<String, RelayError> {
    let mut token = cx.tokens.access_token(&asset.name).await?;
    if !token.fresh {
        // `check` proves the refresh too, as it does for SMTP assets.
        cx.tokens.invalidate(&asset.name, &token.token).await;
        token = cx.tokens.access_token(&asset.name).await?;
    }
    let valid_secs = token
        .expires_at
        .saturating_duration_since(Instant::now())
        .as_secs();
    let unavailable = |message: String| {
        RelayError::Transport(TransportError::Api(ApiFailure::Unavailable {
            api: "tokeninfo",
            message,
        }))
    };
    let http = cx.apis.get(asset, cx.settings.connect_timeout);
    // The token goes in the form body, never in a URL that could be logged.
    let response = http
        .post(&settings.tokeninfo_url)
        .form(&[("access_token", token.token.expose())])
        .timeout(cx.settings.command_timeout.max(Duration::from_secs(5)))
        .send()
        .await
        .map_err(|err| unavailable(describe_error(&err.without_url())))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|err| unavailable(describe_error(&err.without_url())))?;
    if !status.is_success() {
        return Err(unavailable(format!(
            "HTTP {}: {}",
            status.as_u16(),
            provider_text(&text)
        )));
    }
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| unavailable("answer is not JSON".into()))?;
    let scopes: Vec<&str> = value["scope"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    if !scopes
        .iter()
        .any(|s| *s == GMAIL_SEND_SCOPE || *s == FULL_SCOPE)
    {
        return Err(RelayError::Transport(TransportError::Api(
            ApiFailure::Forbidden {
                api: "Gmail API",
                scope: GMAIL_SEND_SCOPE.to_string(),
                message: format!(
                    "the token grants only: {}",
                    provider_text(&scopes.join(" "))
                ),
            },
        )));
    }
    Ok(format!(
        "token refreshed (valid {valid_secs} s), tokeninfo grants {} for {} (Gmail API {}); not proven without sending: the API is enabled, the From address is allowed, the sending quota",
        if scopes.contains(&GMAIL_SEND_SCOPE) { "gmail.send" } else { "https://mail.google.com/ (full mailbox; gmail.send is enough)" },
        asset.email,
        settings.api_url
    ))
}
