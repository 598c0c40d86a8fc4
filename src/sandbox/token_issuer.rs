//! A fake OAuth 2.0 token endpoint (RFC 6749 `refresh_token` grant) that answers like Google's
//! `https://oauth2.googleapis.com/token`, with switchable failure modes for tests.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use oauth2::url::form_urlencoded;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::SandboxError;

/// Request bodies larger than this are refused with 413; a real refresh request is < 1 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The `expires_in` Google returns for fresh access tokens.
pub const DEFAULT_EXPIRES_IN: u64 = 3599;
/// The scope reported back for every token, as Google does for Gmail SMTP.
pub const GMAIL_SCOPE: &str = "https://mail.google.com/";
/// How long an in-flight connection may take to finish once shutdown has been requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct IssuerAccount {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    pub email: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuerMode {
    /// Validate credentials and issue tokens.
    Normal,
    /// Answer every request with `400 invalid_grant`, as when the user revoked access.
    InvalidGrant,
    /// Answer every request with an HTML `503`, as Google's front end does during outages.
    ServerError,
    /// Accept the request and never answer (until shutdown), to exercise client timeouts.
    Hang,
}

/// Shared registry of valid access tokens, consulted by the fake Gmail.
#[derive(Clone, Default)]
pub struct AccessTokens {
    // token -> email it was issued for
    inner: Arc<Mutex<HashMap<String, String>>>,
    /// Issued tokens are padded to at least this many characters (0: no padding), to
    /// imitate the 1-2 KB JWTs of Microsoft and service accounts.
    min_len: Arc<std::sync::atomic::AtomicUsize>,
}

impl AccessTokens {
    pub fn new() -> Self {
        Self::default()
    }

    /// Issues a new token for `email` (`ya29.sandbox-<random>`); earlier tokens stay valid, as
    /// with Google, until they are revoked.
    pub fn issue(&self, email: &str) -> String {
        let mut token = format!("ya29.sandbox-{}", super::random_hex(24));
        let min_len = self.min_len.load(std::sync::atomic::Ordering::Relaxed);
        while token.len() < min_len {
            token.push_str(&super::random_hex(32));
        }
        lock(&self.inner).insert(token.clone(), email.to_owned());
        token
    }

    /// Whether `token` was issued for `email` (compared case-insensitively, as addresses are)
    /// and has not been revoked.
    pub fn is_valid(&self, email: &str, token: &str) -> bool {
        lock(&self.inner)
            .get(token)
            .is_some_and(|owner| owner.eq_ignore_ascii_case(email))
    }

    /// Makes later tokens at least `len` characters long.
    pub fn set_min_token_len(&self, len: usize) {
        self.min_len
            .store(len, std::sync::atomic::Ordering::Relaxed);
    }

    /// Invalidates every token issued so far, simulating expiry or revocation.
    pub fn revoke_all(&self) {
        lock(&self.inner).clear();
    }

    /// Number of currently valid tokens.
    pub fn len(&self) -> usize {
        lock(&self.inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessTokens")
            .field("valid_tokens", &self.len())
            .finish()
    }
}

/// Handle to a running fake token endpoint; clones share the same server.
#[derive(Clone)]
pub struct TokenIssuer {
    shared: Arc<IssuerShared>,
}

struct IssuerShared {
    addr: SocketAddr,
    accounts: Mutex<Vec<IssuerAccount>>,
    tokens: AccessTokens,
    mode: Mutex<IssuerMode>,
    expires_in: AtomicU64,
    delay: Mutex<Duration>,
    refresh_count: AtomicUsize,
    shutdown: CancellationToken,
}

impl TokenIssuer {
    pub async fn start(
        listener: TcpListener,
        accounts: Vec<IssuerAccount>,
        tokens: AccessTokens,
        shutdown: CancellationToken,
    ) -> Result<TokenIssuer, SandboxError> {
        let addr = listener
            .local_addr()
            .map_err(SandboxError::io("reading the token issuer's address"))?;
        let shared = Arc::new(IssuerShared {
            addr,
            accounts: Mutex::new(accounts),
            tokens,
            mode: Mutex::new(IssuerMode::Normal),
            expires_in: AtomicU64::new(DEFAULT_EXPIRES_IN),
            delay: Mutex::new(Duration::ZERO),
            refresh_count: AtomicUsize::new(0),
            shutdown,
        });
        tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        tracing::info!(%addr, "sandbox token issuer listening");
        Ok(TokenIssuer { shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.shared.addr)
    }

    /// Number of `POST /token` requests received (all outcomes).
    pub fn refresh_count(&self) -> usize {
        self.shared.refresh_count.load(Ordering::SeqCst)
    }

    pub fn set_mode(&self, mode: IssuerMode) {
        *lock(&self.shared.mode) = mode;
    }

    pub fn set_expires_in(&self, secs: u64) {
        self.shared.expires_in.store(secs, Ordering::SeqCst);
    }

    /// Artificial latency per request, e.g. to make concurrent refreshes overlap.
    pub fn set_delay(&self, d: Duration) {
        *lock(&self.shared.delay) = d;
    }

    pub fn add_account(&self, account: IssuerAccount) {
        lock(&self.shared.accounts).push(account);
    }

    pub fn tokens(&self) -> &AccessTokens {
        &self.shared.tokens
    }
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("addr", &self.shared.addr)
            .field("mode", &*lock(&self.shared.mode))
            .field("refresh_count", &self.refresh_count())
            .finish_non_exhaustive()
    }
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, shared: Arc<IssuerShared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(serve_connection(stream, peer, Arc::clone(&shared)));
            }
            Err(err) => {
                // Typically EMFILE; pausing avoids a hot loop while descriptors are exhausted.
                tracing::warn!(error = %err, "sandbox token issuer: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::debug!("sandbox token issuer stopped");
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<IssuerShared>,
) {
    let service_state = Arc::clone(&shared);
    let service = hyper::service::service_fn(move |req| {
        let state = Arc::clone(&service_state);
        async move { Ok::<_, Infallible>(handle(&state, req).await) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "sandbox token issuer: connection error");
    }
}

type HttpResponse = Response<Full<Bytes>>;

async fn handle(shared: &IssuerShared, req: Request<Incoming>) -> HttpResponse {
    if req.uri().path() != "/token" {
        return plain(StatusCode::NOT_FOUND, "Not Found");
    }
    if req.method() != Method::POST {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    shared.refresh_count.fetch_add(1, Ordering::SeqCst);

    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            if err.is::<http_body_util::LengthLimitError>() {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large");
            }
            tracing::debug!(error = %err, "sandbox token issuer: reading request body failed");
            return plain(StatusCode::BAD_REQUEST, "Bad Request");
        }
    };

    let delay = *lock(&shared.delay);
    if !delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.shutdown.cancelled() => return server_error(),
        }
    }

    let mode = *lock(&shared.mode);
    match mode {
        IssuerMode::Normal => {}
        IssuerMode::InvalidGrant => {
            tracing::info!(outcome = "invalid_grant (forced)", "sandbox token request");
            return invalid_grant();
        }
        IssuerMode::ServerError => {
            tracing::info!(outcome = "503 (forced)", "sandbox token request");
            return server_error();
        }
        IssuerMode::Hang => {
            tracing::info!(outcome = "hang (forced)", "sandbox token request");
            shared.shutdown.cancelled().await;
            return server_error();
        }
    }

    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Request content type must be application/x-www-form-urlencoded.",
        );
    }

    let mut form: HashMap<String, String> = HashMap::new();
    for (key, value) in form_urlencoded::parse(&body) {
        // RFC 6749 §3.2: parameters must not be repeated.
        if form
            .insert(key.clone().into_owned(), value.into_owned())
            .is_some()
        {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("Duplicate parameter: {key}"),
            );
        }
    }

    match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("Invalid grant_type: {other}"),
            )
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing required parameter: grant_type",
            )
        }
    }

    let basic = match parts.headers.get(header::AUTHORIZATION) {
        Some(value) => match parse_basic(value) {
            Some(creds) => Some(creds),
            None => return invalid_client(None),
        },
        None => None,
    };
    let form_creds = form.get("client_id").map(|id| {
        (
            id.clone(),
            form.get("client_secret").cloned().unwrap_or_default(),
        )
    });
    let (client_id, client_secret) = match (basic, form_creds) {
        (Some(creds), None) | (None, Some(creds)) => creds,
        (Some(_), Some(_)) => {
            // RFC 6749 §2.3: a client must use exactly one authentication method.
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Client authentication must use only one method.",
            );
        }
        (None, None) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Could not determine client ID from request.",
            )
        }
    };

    let Some(refresh_token) = form.get("refresh_token").filter(|t| !t.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: refresh_token",
        );
    };

    let email = {
        let accounts = lock(&shared.accounts);
        let clients: Vec<&IssuerAccount> = accounts
            .iter()
            .filter(|a| a.client_id == client_id && a.client_secret == client_secret)
            .collect();
        if clients.is_empty() {
            return invalid_client(Some(&client_id));
        }
        match clients.iter().find(|a| &a.refresh_token == refresh_token) {
            Some(account) => account.email.clone(),
            None => {
                tracing::info!(%client_id, outcome = "invalid_grant", "sandbox token request");
                return invalid_grant();
            }
        }
    };

    let access_token = shared.tokens.issue(&email);
    tracing::info!(%client_id, %email, outcome = "issued", "sandbox token request");
    let body = serde_json::json!({
        "access_token": access_token,
        "expires_in": shared.expires_in.load(Ordering::SeqCst),
        "scope": GMAIL_SCOPE,
        "token_type": "Bearer",
    });
    json(StatusCode::OK, &body)
}

/// Decodes `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

fn form_decode(s: &str) -> String {
    // Reuse the form parser's percent/plus decoding on a single pseudo-pair.
    form_urlencoded::parse(format!("v={}", s.replace('&', "%26").replace('=', "%3D")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn invalid_client(client_id: Option<&str>) -> HttpResponse {
    tracing::info!(
        client_id = client_id.unwrap_or("<unparseable>"),
        outcome = "invalid_client",
        "sandbox token request"
    );
    oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "The OAuth client was not found.",
    )
}

fn invalid_grant() -> HttpResponse {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "Token has been expired or revoked.",
    )
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    json(
        status,
        &serde_json::json!({ "error": error, "error_description": description }),
    )
}

fn json(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    // Token responses must not be cached (RFC 6749 §5.1).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

fn plain(status: StatusCode, text: &'static str) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn server_error() -> HttpResponse {
    const BODY: &str = "<!DOCTYPE html>\n<html lang=en><meta charset=utf-8>\
        <title>Error 503 (Service Unavailable)!!1</title>\
        <p><b>503.</b> <ins>That\u{2019}s an error.</ins>\
        <p>The service is currently unavailable. <ins>That\u{2019}s all we know.</ins>\n";
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=UTF-8"),
    );
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure
mod tests {
    use super::*;

    struct Fixture {
        issuer: TokenIssuer,
        tokens: AccessTokens,
        client: reqwest::Client,
        _shutdown: tokio_util::sync::DropGuard,
    }

    fn account() -> IssuerAccount {
        IssuerAccount {
            client_id: "123-abc.apps.googleusercontent.com".into(),
            client_secret: "GOCSPX-s3cr&t=+/:x".into(),
            refresh_token: "1//0refresh".into(),
            email: "user@example.com".into(),
        }
    }

    async fn fixture() -> Fixture {
        let shutdown = CancellationToken::new();
        let tokens = AccessTokens::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer =
            TokenIssuer::start(listener, vec![account()], tokens.clone(), shutdown.clone())
                .await
                .unwrap();
        Fixture {
            issuer,
            tokens,
            client: reqwest::Client::new(),
            _shutdown: shutdown.drop_guard(),
        }
    }

    fn basic_header(id: &str, secret: &str) -> String {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let raw = format!("{}:{}", enc(id), enc(secret));
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    async fn post_form(
        f: &Fixture,
        auth: Option<String>,
        form: &[(&str, &str)],
    ) -> (StatusCode, Option<String>, serde_json::Value) {
        let mut req = f.client.post(f.issuer.token_url()).form(form);
        if let Some(auth) = auth {
            req = req.header(header::AUTHORIZATION, auth);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, ctype, json)
    }

    #[tokio::test]
    async fn basic_auth_refresh_issues_registered_token() {
        let f = fixture().await;
        let a = account();
        let (status, ctype, body) = post_form(
            &f,
            Some(basic_header(&a.client_id, &a.client_secret)),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &a.refresh_token),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.unwrap().starts_with("application/json"));
        let token = body["access_token"].as_str().unwrap();
        assert!(token.starts_with("ya29."));
        assert_eq!(body["expires_in"], 3599);
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["scope"], GMAIL_SCOPE);
        assert!(f.tokens.is_valid("user@example.com", token));
        assert!(!f.tokens.is_valid("other@example.com", token));
        assert_eq!(f.issuer.refresh_count(), 1);
    }

    #[tokio::test]
    async fn form_auth_refresh_succeeds_and_expires_in_is_configurable() {
        let f = fixture().await;
        f.issuer.set_expires_in(60);
        let a = account();
        let (status, _, body) = post_form(
            &f,
            None,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &a.refresh_token),
                ("client_id", &a.client_id),
                ("client_secret", &a.client_secret),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["expires_in"], 60);
        assert!(f
            .tokens
            .is_valid(&a.email, body["access_token"].as_str().unwrap()));
    }

    #[tokio::test]
    async fn wrong_refresh_token_is_invalid_grant() {
        let f = fixture().await;
        let a = account();
        let (status, _, body) = post_form(
            &f,
            Some(basic_header(&a.client_id, &a.client_secret)),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", "1//0nope"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(
            body["error_description"],
            "Token has been expired or revoked."
        );
        assert!(f.tokens.is_empty());
    }

    #[tokio::test]
    async fn unknown_client_or_wrong_secret_is_invalid_client() {
        let f = fixture().await;
        let a = account();
        for (id, secret) in [
            ("nope", a.client_secret.as_str()),
            (a.client_id.as_str(), "wrong"),
        ] {
            let (status, _, body) = post_form(
                &f,
                Some(basic_header(id, secret)),
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &a.refresh_token),
                ],
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(body["error"], "invalid_client");
            assert_eq!(body["error_description"], "The OAuth client was not found.");
        }
        assert_eq!(f.issuer.refresh_count(), 2);
    }

    #[tokio::test]
    async fn forced_modes_override_valid_credentials() {
        let f = fixture().await;
        let a = account();
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", a.refresh_token.as_str()),
        ];
        let auth = basic_header(&a.client_id, &a.client_secret);

        f.issuer.set_mode(IssuerMode::ServerError);
        let (status, ctype, _) = post_form(&f, Some(auth.clone()), &form).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(ctype.unwrap().starts_with("text/html"));

        f.issuer.set_mode(IssuerMode::InvalidGrant);
        let (status, _, body) = post_form(&f, Some(auth.clone()), &form).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "invalid_grant");

        f.issuer.set_mode(IssuerMode::Hang);
        let hung = tokio::time::timeout(
            Duration::from_millis(300),
            post_form(&f, Some(auth.clone()), &form),
        )
        .await;
        assert!(hung.is_err(), "Hang mode must not answer");

        f.issuer.set_mode(IssuerMode::Normal);
        let (status, _, _) = post_form(&f, Some(auth), &form).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(f.issuer.refresh_count(), 4);
        assert_eq!(f.tokens.len(), 1);
    }

    #[tokio::test]
    async fn delay_is_applied_per_request() {
        let f = fixture().await;
        f.issuer.set_delay(Duration::from_millis(200));
        let a = account();
        let started = std::time::Instant::now();
        let (status, _, _) = post_form(
            &f,
            Some(basic_header(&a.client_id, &a.client_secret)),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &a.refresh_token),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn routing_and_protocol_errors() {
        let f = fixture().await;
        let base = format!("http://{}", f.issuer.addr());
        let resp = f.client.post(format!("{base}/other")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let resp = f.client.get(f.issuer.token_url()).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        let resp = f
            .client
            .post(f.issuer.token_url())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(vec![b'a'; MAX_BODY_BYTES + 1])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

        let a = account();
        let (status, _, body) = post_form(
            &f,
            Some(basic_header(&a.client_id, &a.client_secret)),
            &[("grant_type", "password")],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "unsupported_grant_type");

        // Added accounts are honoured immediately.
        f.issuer.add_account(IssuerAccount {
            refresh_token: "1//0second".into(),
            email: "second@example.com".into(),
            ..account()
        });
        let (status, _, body) = post_form(
            &f,
            Some(basic_header(&a.client_id, &a.client_secret)),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", "1//0second"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(f
            .tokens
            .is_valid("second@example.com", body["access_token"].as_str().unwrap()));
        f.tokens.revoke_all();
        assert!(f.tokens.is_empty());
    }
}
