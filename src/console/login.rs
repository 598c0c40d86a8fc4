//! Logging in and out. Console users are `[[user]]`s named in `[admin] users`; their
//! password goes through the same argon2 check, the same failed-login throttle (per
//! address, per address and name, per name) and lockout as SMTP AUTH, shared with it, so
//! guessing on the console counts against the same limits as guessing over SMTP.
//!
//! The login form is protected by a double-submit token (a cookie and a hidden field that
//! must match), since there is no session yet to hold a CSRF token. Over plain HTTP a
//! password is only accepted from a loopback peer, unless `[admin] allow_plaintext`.

use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use super::pages::{message_page, page, secure};
use super::session::{self, random_token, same_token, LOGIN_COOKIE, SESSION_COOKIE};
use super::{redirect, App, Peer};
use crate::credentials::secret::Secret;
use crate::logsafe::Untrusted;
use crate::smtp::sasl::Credentials;
use crate::throttle::Verdict;

/// How long a login form may be left open before it must be reloaded.
const LOGIN_FORM_SECS: u64 = 600;

/// Whether a password may be sent over this connection.
fn plaintext_refused(app: &App, peer: Peer) -> bool {
    let allowed = app.settings().is_some_and(|s| s.allow_plaintext);
    !app.tls && !allowed && !peer.0.ip().to_canonical().is_loopback()
}

fn plaintext_page(app: &App) -> Response {
    message_page(
        app,
        StatusCode::FORBIDDEN,
        "Log in over HTTPS",
        "This console is served over plain HTTP and you are not on this machine, so a \
         password sent from here could be read on the way. Give [admin] a tls_cert and \
         tls_key (or tls = true to reuse [server]'s), use an SSH tunnel to reach it on \
         127.0.0.1, or, behind a TLS-terminating proxy, set [admin] allow_plaintext = true.",
    )
}

/// `GET /login`.
pub async fn form(
    State(app): State<App>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    if app.session(&headers).is_ok() {
        return redirect(&app.href("/"));
    }
    if plaintext_refused(&app, peer) {
        return plaintext_page(&app);
    }
    login_page(&app, StatusCode::OK, None)
}

fn login_page(app: &App, status: StatusCode, problem: Option<&str>) -> Response {
    let Some(token) = random_token() else {
        return message_page(
            app,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Login unavailable",
            "The system random number generator failed.",
        );
    };
    let body = html! {
        @if let Some(problem) = problem {
            p.note.bad id="problem" { (problem) }
        }
        form method="post" action=(app.href("/login")) {
            input type="hidden" name="csrf" value=(token);
            p { label { "User " input type="text" name="user" id="user" autocomplete="username" required; } }
            p { label { "Password " input type="password" name="password" id="password" autocomplete="current-password" required; } }
            p { button type="submit" id="login" { "Log in" } }
        }
    };
    let mut response = page(app, status, "Log in", None, None, body);
    let cookie = session::set_cookie(
        LOGIN_COOKIE,
        &token,
        &cookie_path(app),
        app.secure_cookies(),
        Some(LOGIN_FORM_SECS),
    );
    if let Ok(value) = cookie.parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

pub fn cookie_path(app: &App) -> String {
    let prefix = App::prefix(&app.relay().config);
    if prefix.is_empty() {
        "/".to_string()
    } else {
        prefix
    }
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    csrf: Option<String>,
}

/// `POST /login`.
pub async fn submit(
    State(app): State<App>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(settings) = app.settings() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if plaintext_refused(&app, peer) {
        tracing::warn!(peer = %peer.0, "console login over plain HTTP from another host refused");
        return plaintext_page(&app);
    }
    let expected = session::cookie(&headers, LOGIN_COOKIE);
    let csrf_ok =
        matches!((expected, form.csrf.as_deref()), (Some(a), Some(b)) if same_token(a, b));
    if !csrf_ok {
        return message_page(
            &app,
            StatusCode::FORBIDDEN,
            "Request refused",
            "The login form was not sent by this console's page, or it has expired (CSRF \
             check failed). Reload the login page and try again.",
        );
    }
    let relay = app.relay();
    let ip = peer.0.ip();
    let user = form.user;
    let throttle = &relay.auth_throttle;
    if throttle.check(ip, &user) == Verdict::LockedOut {
        tracing::warn!(user = %Untrusted(&user), peer = %peer.0, "console login refused: locked out after too many failures");
        relay.metrics.limit_hit("auth_lockout");
        return login_page(
            &app,
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many failed logins: this address and user name are locked out for a while. Try again later."),
        );
    }
    let credentials = Credentials {
        username: user.clone(),
        password: Secret::new(form.password),
    };
    let verified = relay.users.verify(credentials).await;
    let Some(verified) = verified else {
        let (delay, locked_out) = throttle.failed(ip, &user);
        tracing::warn!(user = %Untrusted(&user), peer = %peer.0, locked_out, "console login failed");
        tokio::time::sleep(delay).await;
        relay.metrics.auth_failures.inc();
        return login_page(
            &app,
            StatusCode::UNAUTHORIZED,
            Some("Wrong user name or password."),
        );
    };
    throttle.succeeded(ip, &user);
    if !settings.allows(&verified.name) {
        tracing::warn!(user = %verified.name, "console login refused: not in [admin] users");
        return login_page(
            &app,
            StatusCode::FORBIDDEN,
            Some("This user may send mail but not use the console (it is not in [admin] users)."),
        );
    }
    let Some(cookie) = app
        .console
        .sessions
        .create(&verified.name, settings.session_idle)
    else {
        return message_page(
            &app,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Login unavailable",
            "The system random number generator failed.",
        );
    };
    tracing::info!(user = %verified.name, peer = %peer.0, "console login");
    let path = cookie_path(&app);
    let mut response = redirect(&app.href("/"));
    for value in [
        session::set_cookie(SESSION_COOKIE, &cookie, &path, app.secure_cookies(), None),
        session::set_cookie(LOGIN_COOKIE, "", &path, app.secure_cookies(), Some(0)),
    ] {
        if let Ok(value) = value.parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    secure(response)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    pub csrf: Option<String>,
}

/// `POST /logout`.
pub async fn logout(
    State(app): State<App>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let view = match app.session_with_csrf(&headers, form.csrf.as_deref()) {
        Ok(view) => view,
        Err(response) => return *response,
    };
    if let Some(cookie) = session::cookie(&headers, SESSION_COOKIE) {
        app.console.sessions.remove(cookie);
    }
    tracing::info!(user = %view.user, "console logout");
    let mut response = redirect(&app.href("/login"));
    let cleared = session::set_cookie(
        SESSION_COOKIE,
        "",
        &cookie_path(&app),
        app.secure_cookies(),
        Some(0),
    );
    if let Ok(value) = cleared.parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    secure(response)
}
