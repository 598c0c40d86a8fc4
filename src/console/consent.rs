//! "Generate Token": the consent of `authorize` (PKCE S256 + `state`, the asset's scopes,
//! `login_hint`, Google's offline access) with the redirect coming back to this console's
//! `/oauth/callback`.
//!
//! The session cookie is SameSite=Strict, so the browser does not send it when the
//! provider sends it back here. The callback is authorized by its `state` instead: random,
//! kept only on the server, usable once, valid for `[admin] consent_timeout_secs`, and
//! bound to the console session that started it (which must still be live). The grant is
//! then proven to be the asset's account, stored exactly as `authorize` stores it
//! ([`crate::oauth::consent::store_grant`]), and the asset re-checked as `check` does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use maud::html;
use oauth2::{CsrfToken, PkceCodeVerifier};
use tokio::time::Instant;

use super::asset::{note_box, Note};
use super::login::CsrfForm;
use super::pages::{message_page, page};
use super::{redirect, App};
use crate::cli::check::check_asset;
use crate::config::RefreshTokenSource;
use crate::oauth::consent::{
    check_callback, consent_url, exchange, parse_query, store_grant, verify_account, AuthorizeError,
};

/// Consents waiting for their callback, at most; the oldest goes first. Each needs a
/// logged-in operator's click, so this only bounds a runaway.
pub const MAX_PENDING: usize = 100;

struct Pending {
    asset: String,
    session: u64,
    state: CsrfToken,
    verifier: PkceCodeVerifier,
    redirect_uri: String,
    started: Instant,
}

#[derive(Default)]
pub struct PendingConsents(Mutex<HashMap<String, Pending>>);

impl PendingConsents {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn insert(&self, pending: Pending, timeout: std::time::Duration) {
        let mut map = self.lock();
        map.retain(|_, p| p.started.elapsed() < timeout);
        if map.len() >= MAX_PENDING {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(state, _)| state.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(pending.state.secret().clone(), pending);
    }

    /// Removes and returns the consent with this `state` (single use), if still valid.
    fn take(&self, state: &str, timeout: std::time::Duration) -> Option<Pending> {
        let pending = self.lock().remove(state)?;
        (pending.started.elapsed() < timeout).then_some(pending)
    }
}

/// `POST /assets/{name}/generate`: 303 to the provider's consent page.
pub async fn start(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match app.session_with_csrf(&headers, form.csrf.as_deref()) {
        Ok(view) => view,
        Err(response) => return *response,
    };
    let Some(settings) = app.settings() else {
        return redirect(&app.href("/login"));
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
    if asset.service_account.is_some() {
        return message_page(
            &app,
            StatusCode::BAD_REQUEST,
            "No consent needed",
            "This asset uses a service account: it needs no consent.",
        );
    }
    let redirect_uri = app.callback_url();
    let (url, state, verifier) = match consent_url(&asset, &redirect_uri) {
        Ok(parts) => parts,
        Err(err) => {
            return message_page(
                &app,
                StatusCode::BAD_REQUEST,
                "Cannot start the consent",
                &err.to_string(),
            );
        }
    };
    tracing::info!(asset = %asset.name, user = %session.user, %redirect_uri, "console: consent started");
    app.console.consents.insert(
        Pending {
            asset: asset.name.clone(),
            session: session.id,
            state,
            verifier,
            redirect_uri,
            started: Instant::now(),
        },
        settings.consent_timeout,
    );
    redirect(url.as_str())
}

/// `GET /oauth/callback?code=..&state=..`: finishes the consent `state` names.
pub async fn callback(State(app): State<App>, RawQuery(query): RawQuery) -> Response {
    let Some(settings) = app.settings() else {
        return redirect(&app.href("/login"));
    };
    let refused =
        |text: &str| message_page(&app, StatusCode::BAD_REQUEST, "Consent not accepted", text);
    let params = match parse_query(query.as_deref().unwrap_or("")) {
        Ok(params) => params,
        Err(err) => return refused(&err.to_string()),
    };
    let pending = params
        .state
        .as_deref()
        .and_then(|state| app.console.consents.take(state, settings.consent_timeout));
    let Some(pending) = pending else {
        tracing::warn!("console: OAuth callback with an unknown, used or expired state refused");
        return refused(
            "This answer from the provider does not belong to a consent this console is \
             waiting for (unknown, already used or expired state). Open the asset's page \
             and click Generate Token again.",
        );
    };
    let Pending {
        asset: asset_name,
        session,
        state,
        verifier,
        redirect_uri,
        ..
    } = pending;
    if !app.console.sessions.alive(session, settings.session_idle) {
        return message_page(
            &app,
            StatusCode::FORBIDDEN,
            "Consent not accepted",
            "The console session that started this consent has ended (logged out or idle). \
             Log in and click Generate Token again.",
        );
    }
    let relay = app.relay();
    let Some(asset) = relay.config.asset(&asset_name).cloned() else {
        return refused("The asset is no longer in the config.");
    };
    let result: Result<String, AuthorizeError> = async {
        let code = check_callback(&params, &state)?;
        let consent = exchange(&asset, code, verifier, &redirect_uri).await?;
        // Only a grant proven to be the asset's account may replace the stored one.
        verify_account(&relay.config, &asset, &consent).await?;
        store_grant(&relay.config, &asset, &consent)
            .await
            .map_err(|err| AuthorizeError::BadInput {
                reason: format!(
                    "the consent worked but the refresh token could not be stored: {err}"
                ),
            })?;
        Ok(consent.scopes.join(" "))
    }
    .await;
    let note = match result {
        Ok(scopes) => {
            tracing::info!(asset = %asset.name, "console: new refresh token stored");
            if asset.refresh_token != RefreshTokenSource::Store {
                Note {
                    at: SystemTime::now(),
                    ok: false,
                    action: "Generate Token",
                    text: format!(
                        "the new refresh token was stored (scopes {scopes}), but this asset reads its refresh token from {}, so the relay does not use it",
                        asset.refresh_token.describe()
                    ),
                    hint: Some("remove refresh_token / refresh_token_file from the asset and reload the config".to_string()),
                }
            } else {
                let check = check_asset(&relay.config, &relay.tokens, &asset).await;
                match check.result {
                    Ok(summary) => Note {
                        at: SystemTime::now(),
                        ok: true,
                        action: "Generate Token",
                        text: format!("new refresh token stored; {summary}"),
                        hint: None,
                    },
                    Err(err) => Note {
                        at: SystemTime::now(),
                        ok: false,
                        action: "Generate Token",
                        text: format!("new refresh token stored, but the check failed: {err}"),
                        hint: Some(err.hint()),
                    },
                }
            }
        }
        Err(err) => {
            tracing::warn!(asset = %asset.name, error = %err, "console: consent failed");
            Note {
                at: SystemTime::now(),
                ok: false,
                action: "Generate Token",
                text: err.to_string(),
                hint: Some("nothing was stored; an earlier grant stays in use".to_string()),
            }
        }
    };
    app.console.notes.set(&asset.name, note.clone());
    let status = if note.ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    let back = app.href(&format!(
        "/assets/{}",
        super::assets::path_segment(&asset.name)
    ));
    // No redirect: after a cross-site arrival the Strict cookie would be missing on it;
    // the link below is a same-site navigation that carries it.
    let body = html! {
        (note_box(&note))
        p { a href=(back) id="back" { "Back to asset " (asset.name) } " · " a href=(app.href("/")) { "All assets" } }
    };
    page(
        &app,
        status,
        &format!("Generate Token: {}", asset.name),
        None,
        None,
        body,
    )
}
