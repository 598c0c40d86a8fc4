//! The operator console: HTML pages on the admin listener (`[admin] listen`), beside the
//! unauthenticated probes, for the people who run the relay.
//!
//! - [`login`]: `[admin] users` log in with their `[[user]]` password, behind the same
//!   argon2 check, failed-login throttle and lockout as SMTP AUTH; plain-HTTP logins from
//!   other hosts are refused unless `[admin] allow_plaintext`.
//! - [`session`]: the session cookie, the CSRF token every POST carries, the idle timeout.
//! - [`assets`] (the Assets page: one row per asset, its health and the fix) and
//!   [`asset`] (one asset's settings, read-only, with Generate Token and Send test message).
//! - [`consent`]: Generate Token: the PKCE + `state` consent of `authorize`, coming back to
//!   `/oauth/callback` here; that request is authorized by its single-use, short-lived
//!   `state` (bound to the console session that started it), since the SameSite=Strict
//!   cookie is not sent on the way back from the provider.
//! - [`messages`]: the last per-message outcomes ([`recent`] keeps them).
//! - [`pages`]: the layout and formatting every page shares (maud escapes every value).
//!
//! The console exists only when `[admin] users` is set; the probes are not part of it.
//! Pages never show a secret: client secrets are masked, tokens at most fingerprinted.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::config::{Config, ConsoleSettings};
use crate::relay::Relay;
use crate::server::RelayHandle;

pub mod asset;
pub mod assets;
pub mod consent;
pub mod forecast;
pub mod login;
pub mod messages;
pub mod pages;
pub mod recent;
pub mod session;
pub mod spool;
pub mod test_message;

use session::{SessionView, Sessions};

/// The peer of the admin connection, set by the listener on every request.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// State that outlives config reloads: sessions, pending consents, the last results.
#[derive(Default)]
pub struct Console {
    pub sessions: Sessions,
    pub consents: consent::PendingConsents,
    pub notes: asset::Notes,
}

/// What every handler gets.
#[derive(Clone)]
pub struct App {
    pub relays: RelayHandle,
    pub console: Arc<Console>,
    /// The admin listener speaks TLS (cookies are Secure, logins from anywhere allowed).
    pub tls: bool,
    /// The listener's own address, for the callback URL when no `public_url` is set.
    pub local: SocketAddr,
}

impl App {
    pub fn relay(&self) -> Arc<Relay> {
        self.relays.current()
    }

    /// The console settings of the current config; None when the console is off.
    pub fn settings(&self) -> Option<ConsoleSettings> {
        self.relay().config.admin.console.clone()
    }

    /// Cookies get `Secure` when this listener speaks TLS, or when a TLS-terminating proxy
    /// serves the console (`public_url` is https).
    pub fn secure_cookies(&self) -> bool {
        self.tls
            || self
                .settings()
                .and_then(|s| s.public_url)
                .is_some_and(|url| url.starts_with("https://"))
    }

    /// The path prefix the console is reached under (from `public_url`), "" at the root.
    pub fn prefix(config: &Config) -> String {
        config
            .admin
            .console
            .as_ref()
            .and_then(|console| console.public_url.as_deref())
            .and_then(|url| oauth2::url::Url::parse(url).ok())
            .map(|url| url.path().trim_end_matches('/').to_string())
            .unwrap_or_default()
    }

    /// `path` under the console's prefix.
    pub fn href(&self, path: &str) -> String {
        format!("{}{path}", App::prefix(&self.relay().config))
    }

    /// The external base URL: `public_url`, else this listener's address (an unspecified
    /// bind address shown as 127.0.0.1, the address a Desktop OAuth client accepts).
    pub fn base_url(&self) -> String {
        if let Some(url) = self.settings().and_then(|s| s.public_url) {
            return url;
        }
        let scheme = if self.tls { "https" } else { "http" };
        let mut addr = self.local;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("{scheme}://{addr}")
    }

    /// The redirect URI to register with the provider for "Generate Token".
    pub fn callback_url(&self) -> String {
        format!("{}/oauth/callback", self.base_url())
    }

    /// The live session of this request, or the redirect to the login page.
    pub fn session(&self, headers: &HeaderMap) -> Result<SessionView, Box<Response>> {
        let idle = self.settings().map(|s| s.session_idle).unwrap_or_default();
        session::cookie(headers, session::SESSION_COOKIE)
            .and_then(|cookie| self.console.sessions.touch(cookie, idle))
            .ok_or_else(|| Box::new(redirect(&self.href("/login"))))
    }

    /// The session, and the form's CSRF token checked against it (403 when missing or wrong).
    pub fn session_with_csrf(
        &self,
        headers: &HeaderMap,
        csrf: Option<&str>,
    ) -> Result<SessionView, Box<Response>> {
        let view = self.session(headers)?;
        match csrf {
            Some(token) if session::same_token(token, &view.csrf) => Ok(view),
            _ => Err(Box::new(csrf_refused(self))),
        }
    }
}

/// The routes of the console (the listener handles the probes before these).
pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets", get(assets::index))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/assets/{name}", get(asset::show))
        .route("/assets/{name}/generate", post(consent::start))
        .route("/assets/{name}/test", post(test_message::send))
        .route("/oauth/callback", get(consent::callback))
        .route("/messages", get(messages::index))
        .route("/spool", get(spool::index))
        .fallback(not_found)
        .with_state(app)
}

async fn not_found(axum::extract::State(app): axum::extract::State<App>) -> Response {
    pages::message_page(
        &app,
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such page.",
    )
}

/// 303 to `location` (after a POST, the browser GETs it).
pub fn redirect(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn csrf_refused(app: &App) -> Response {
    pages::message_page(
        app,
        StatusCode::FORBIDDEN,
        "Request refused",
        "The form was not sent by this console's page, or it has expired (CSRF check \
         failed). Go back, reload the page and try again.",
    )
}
