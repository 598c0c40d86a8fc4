//! The Asset page (`/assets/{name}`): every setting of the asset an operator compares
//! with the provider's console (the seed's email-asset page: name, email, authentication
//! type, server/port/security, client id, masked client secret, the callback URL to
//! register, authorization URL, scope, token URL), read-only because the config file
//! stays the source of truth; its health; and the two actions, "Generate Token" and
//! "Send test message", with the result of the last one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{html, Markup};

use super::assets::{forecast_cell, grant_cell, health, provider_name, status_cell, stored_tokens};
use super::pages::{message_page, page, span, when};
use super::App;
use crate::config::{Asset, RefreshTokenSource};
use crate::credentials::secret::Secret;

/// The outcome of the last action on an asset (Generate Token, test message), shown on
/// its page. Texts are built by the console from errors that carry no secret.
#[derive(Debug, Clone)]
pub struct Note {
    pub at: SystemTime,
    pub ok: bool,
    pub action: &'static str,
    pub text: String,
    pub hint: Option<String>,
}

#[derive(Default)]
pub struct Notes(Mutex<HashMap<String, Note>>);

impl Notes {
    pub fn set(&self, asset: &str, note: Note) {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(asset.to_string(), note);
    }

    pub fn get(&self, asset: &str) -> Option<Note> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(asset)
            .cloned()
    }
}

/// A secret as the page may show it: whether it is set, never what it is.
pub fn masked(secret: &Secret) -> &'static str {
    if secret.expose().is_empty() {
        "(not set)"
    } else {
        "•••••••• (set; see the config)"
    }
}

/// A fingerprint of a token: the first 12 hex digits of its SHA-256, enough to tell two
/// grants apart, useless to anyone who wants the token.
pub fn fingerprint(secret: &Secret) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.expose().as_bytes());
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}…")
}

fn auth_type(asset: &Asset) -> String {
    match (&asset.service_account, &asset.refresh_token) {
        (Some(key), _) => format!(
            "OAuth 2.0 service account {} (domain-wide delegation)",
            key.client_email
        ),
        (None, RefreshTokenSource::Store) => {
            "OAuth 2.0 authorization code (PKCE); refresh token in the token store".to_string()
        }
        (None, source) => format!(
            "OAuth 2.0 authorization code; refresh token from {}",
            source.describe()
        ),
    }
}

pub fn note_box(note: &Note) -> Markup {
    html! {
        div.note.(if note.ok { "ok" } else { "bad" }) id="result" {
            strong { (note.action) ": " } (note.text)
            @if let Some(hint) = &note.hint { div.fix { "What to do: " (hint) } }
            div.fix { (when(Some(note.at))) }
        }
    }
}

/// `GET /assets/{name}`.
pub async fn show(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let session = match app.session(&headers) {
        Ok(view) => view,
        Err(response) => return *response,
    };
    let relay = app.relay();
    let Some(asset) = relay.config.asset(&name).cloned() else {
        return message_page(
            &app,
            StatusCode::NOT_FOUND,
            "No such asset",
            "No asset has this name in the current config.",
        );
    };
    let store = stored_tokens(&relay).await;
    let health = health(&relay, &asset, &store).await;
    let segment = super::assets::path_segment(&asset.name);
    let note = app.console.notes.get(&asset.name);
    let upstream = &asset.upstream;
    let security = match upstream.tls {
        crate::config::UpstreamTls::Starttls => "STARTTLS",
        crate::config::UpstreamTls::Implicit => "SSL/TLS (implicit)",
    };
    let body = html! {
        @if let Some(note) = &note { (note_box(note)) }
        h2 { "Status" }
        dl #health {
            dt { "Status" } dd { (status_cell(&health)) }
            dt { "Access token valid for" } dd { @match health.access_valid_for {
                Some(d) if !d.is_zero() => { (d.as_secs()) " s (" (span(d)) ")" }
                _ => { "—" } } }
            dt { "Last refresh" } dd { (when(health.last_refresh)) }
            dt { "Refresh token" } dd {
                (grant_cell(&asset, &health))
                @if let Some(stored) = &health.stored { br; "fingerprint " code { (fingerprint(&stored.refresh_token)) } }
            }
            dt { "Expiry forecast" } dd { (forecast_cell(&health)) }
            dt { "Last error" } dd { @match &health.last_error { Some(e) => { (e) } None => { "—" } } }
        }
        h2 { "Settings" }
        p.fix { "Read-only: the config file is the source of truth." }
        dl #settings {
            dt { "Asset name" } dd { (asset.name) }
            dt { "Email" } dd { (asset.email) }
            dt { "Provider" } dd { (provider_name(asset.provider)) }
            dt { "Authentication type" } dd { (auth_type(&asset)) }
            @if matches!(asset.transport, crate::config::AssetTransport::Smtp) {
                dt { "SMTP server" } dd { (upstream.host) }
                dt { "Port" } dd { (upstream.port) }
                dt { "Security" } dd { (security) }
            } @else {
                dt { "Transport" } dd { (super::assets::transport_cell(&asset)) }
            }
            @if asset.service_account.is_none() && asset.grant == crate::config::Grant::RefreshToken {
                dt { "Client id" } dd { code { (asset.client_id) } }
                dt { "Client secret" } dd { (masked(&asset.client_secret)) }
                dt { "Callback URL" } dd { code #callback { (app.callback_url()) }
                    div.fix { "Register exactly this redirect URI for the OAuth client (Google: APIs & Services > Credentials; Microsoft: App registration > Authentication), or set [admin] public_url to the address you open this console at." } }
                dt { "Authorization URL" } dd { code { (asset.auth_url) } }
            }
            dt { "Scope" } dd { code { (asset.scopes.join(" ")) } }
            dt { "Token URL" } dd { code { (asset.token_url) } }
        }
        @if asset.service_account.is_none() && asset.grant == crate::config::Grant::RefreshToken {
            h2 { "Generate Token" }
            p { "Signs in at the provider as " (asset.email) " and stores the new refresh token (as "
                code { "smtp-oauth-relay authorize " (asset.name) } " does), then checks the asset." }
            form method="post" action=(app.href(&format!("/assets/{segment}/generate"))) {
                input type="hidden" name="csrf" value=(session.csrf);
                button type="submit" id="generate" { "Generate Token" }
            }
        }
        h2 { "Send test message" }
        form method="post" action=(app.href(&format!("/assets/{segment}/test"))) {
            input type="hidden" name="csrf" value=(session.csrf);
            label { "To " input type="email" name="to" id="test-to" required placeholder="you@example.com"; }
            " "
            button type="submit" id="send-test" { "Send test message" }
        }
    };
    page(
        &app,
        StatusCode::OK,
        &format!("Asset {}", asset.name),
        Some(&session),
        None,
        body,
    )
}
