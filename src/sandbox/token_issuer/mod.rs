//! A fake OAuth 2.0 authorization server that answers like Google's: the token endpoint
//! `https://oauth2.googleapis.com/token` (`POST /token`: `refresh_token`, `authorization_code`
//! with PKCE, and the service-account JWT bearer grant of RFC 7523) and the authorization
//! endpoint `https://accounts.google.com/o/oauth2/v2/auth` (`GET /auth`, whose consent step is
//! played automatically), with switchable failure modes for tests.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use oauth2::url::{form_urlencoded, Host, Url};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::jwt::{self, JwtError, UnverifiedJwt};
use super::SandboxError;

/// Request bodies larger than this are refused with 413; a real refresh request is < 1 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The `expires_in` Google returns for fresh access tokens.
pub const DEFAULT_EXPIRES_IN: u64 = 3599;
/// The scope reported back for every token, as Google does for Gmail SMTP.
pub const GMAIL_SCOPE: &str = "https://mail.google.com/";
/// How long an in-flight connection may take to finish once shutdown has been requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How long an authorization code from `GET /auth` can be exchanged (Google: a few minutes;
/// kept short here). Adjustable with [`TokenIssuer::set_authorization_code_lifetime`].
pub const DEFAULT_CODE_LIFETIME: Duration = Duration::from_secs(60);
/// The `grant_type` of the service-account flow (RFC 7523 §2.1).
pub const JWT_BEARER_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Longest lifetime (`exp - iat`) Google accepts for a service-account assertion.
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 3600;
/// Clock skew tolerated for an assertion's `iat` lying in the future.
pub const ASSERTION_CLOCK_SKEW_SECS: i64 = 60;

#[derive(Clone, Debug)]
pub struct IssuerAccount {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    pub email: String,
}

/// How the automatic "consent screen" behind `GET /auth` answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConsentMode {
    /// The user signs in and allows access: redirect with `code`, `state` and `scope`.
    #[default]
    Approve,
    /// The user clicks "Cancel": redirect with `error=access_denied` and `state`.
    Deny,
    /// Approve, but send back a `state` different from the request's (a forged redirect), so
    /// that the client's CSRF check can be tested.
    WrongState,
    /// Approve, but the code exchanges to a response without `refresh_token`, as Google does on
    /// re-consent without `prompt=consent`.
    NoRefreshToken,
}

/// A service account whose RS256-signed assertions the fake accepts (`jwt-bearer` grant).
#[derive(Clone, Debug)]
pub struct ServiceAccount {
    /// The account's e-mail address, expected as the assertion's `iss`.
    pub client_email: String,
    /// Its public key: an SPKI `PUBLIC KEY` PEM, a PKCS#1 `RSA PUBLIC KEY` PEM or an X.509
    /// `CERTIFICATE` PEM (the form Google publishes).
    pub public_key_pem: String,
    /// Mailboxes the account may impersonate via `sub` (domain-wide delegation); compared
    /// case-insensitively.
    pub allowed_subjects: Vec<String>,
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
    /// Answer every request with a JSON OAuth error (`{"error": error}`) and this HTTP
    /// status, e.g. `503 temporarily_unavailable` or `429 rate_limit_exceeded`, as a
    /// provider under load does.
    OAuthError { status: u16, error: &'static str },
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
    /// Never locked while `accounts` is held (and vice versa), so no lock-order issues.
    auth: Mutex<AuthState>,
    tokens: AccessTokens,
    mode: Mutex<IssuerMode>,
    expires_in: AtomicU64,
    delay: Mutex<Duration>,
    refresh_count: AtomicUsize,
    shutdown: CancellationToken,
}

/// A refresh token the fake accepts, and for whom.
struct RefreshGrant {
    token: String,
    client_id: String,
    email: String,
}

/// An authorization code handed out by `GET /auth`, awaiting exchange.
struct PendingCode {
    client_id: String,
    email: String,
    redirect_uri: String,
    code_challenge: String,
    scope: String,
    with_refresh_token: bool,
    expires_at: Instant,
}

struct RegisteredServiceAccount {
    account: ServiceAccount,
    /// PKCS#1 `RSAPublicKey` DER; `None` if the PEM could not be parsed (every assertion then
    /// fails the signature check).
    rsa_key: Option<Vec<u8>>,
}

/// Mutable state of the authorization-server features (beyond plain refresh).
struct AuthState {
    /// Every refresh token currently valid: the configured ones plus those issued since.
    refresh_grants: Vec<RefreshGrant>,
    /// `(client_id, prefix)`: extra redirect URIs registered for a client.
    redirect_prefixes: Vec<(String, String)>,
    codes: HashMap<String, PendingCode>,
    consent: ConsentMode,
    consent_email: Option<String>,
    last_authorization_request: Option<HashMap<String, String>>,
    rotate_refresh_tokens: bool,
    code_lifetime: Duration,
    service_accounts: Vec<RegisteredServiceAccount>,
}

impl AuthState {
    fn new(accounts: &[IssuerAccount]) -> Self {
        AuthState {
            refresh_grants: accounts.iter().map(RefreshGrant::configured).collect(),
            redirect_prefixes: Vec::new(),
            codes: HashMap::new(),
            consent: ConsentMode::default(),
            consent_email: None,
            last_authorization_request: None,
            rotate_refresh_tokens: false,
            code_lifetime: DEFAULT_CODE_LIFETIME,
            service_accounts: Vec::new(),
        }
    }
}

impl RefreshGrant {
    fn configured(account: &IssuerAccount) -> Self {
        RefreshGrant {
            token: account.refresh_token.clone(),
            client_id: account.client_id.clone(),
            email: account.email.clone(),
        }
    }
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
            auth: Mutex::new(AuthState::new(&accounts)),
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

    /// The authorization endpoint, `http://127.0.0.1:PORT/auth`.
    pub fn auth_url(&self) -> String {
        format!("http://{}/auth", self.shared.addr)
    }

    /// Number of `POST /token` requests received (all outcomes and grant types).
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

    /// Registers another account; its refresh token is valid at once.
    pub fn add_account(&self, account: IssuerAccount) {
        let grant = RefreshGrant::configured(&account);
        lock(&self.shared.accounts).push(account);
        lock(&self.shared.auth).refresh_grants.push(grant);
    }

    /// How the next `GET /auth` requests are answered (default [`ConsentMode::Approve`]).
    pub fn set_consent(&self, mode: ConsentMode) {
        lock(&self.shared.auth).consent = mode;
    }

    /// Which user "signs in" at `GET /auth`. By default it is the first account registered with
    /// the request's `client_id`; any address may be chosen (as any Google user could sign in).
    pub fn set_consent_email(&self, email: impl Into<String>) {
        lock(&self.shared.auth).consent_email = Some(email.into());
    }

    /// The query parameters of the most recent `GET /auth` (also of rejected ones).
    pub fn last_authorization_request(&self) -> Option<HashMap<String, String>> {
        lock(&self.shared.auth).last_authorization_request.clone()
    }

    /// Accepts redirect URIs starting with `prefix` for `client_id` (a Web client's registered
    /// URIs), in addition to the loopback URIs (`http://127.0.0.1:ANY/...`,
    /// `http://[::1]:ANY/...`, `http://localhost:ANY/...`) always accepted, as for Google's
    /// Desktop clients.
    pub fn allow_redirect_uri(&self, client_id: &str, prefix: &str) {
        lock(&self.shared.auth)
            .redirect_prefixes
            .push((client_id.to_owned(), prefix.to_owned()));
    }

    /// How long codes from `GET /auth` stay exchangeable (default [`DEFAULT_CODE_LIFETIME`]).
    pub fn set_authorization_code_lifetime(&self, lifetime: Duration) {
        lock(&self.shared.auth).code_lifetime = lifetime;
    }

    /// With `true` (Microsoft's behaviour), every successful `refresh_token` grant returns a new
    /// `refresh_token` and invalidates the one used. Default `false` (Google's behaviour).
    pub fn set_rotate_refresh_tokens(&self, rotate: bool) {
        lock(&self.shared.auth).rotate_refresh_tokens = rotate;
    }

    /// Makes `token` invalid for later refreshes ("Token has been expired or revoked.").
    /// Returns whether it was valid.
    pub fn revoke_refresh_token(&self, token: &str) -> bool {
        let mut auth = lock(&self.shared.auth);
        let before = auth.refresh_grants.len();
        auth.refresh_grants.retain(|g| g.token != token);
        auth.refresh_grants.len() != before
    }

    /// Revokes every refresh token, configured or issued. Accounts added later work again.
    pub fn revoke_all_refresh_tokens(&self) {
        lock(&self.shared.auth).refresh_grants.clear();
    }

    /// The refresh tokens currently valid for `email` (case-insensitive), oldest first.
    pub fn current_refresh_tokens(&self, email: &str) -> Vec<String> {
        let auth = lock(&self.shared.auth);
        let mut tokens: Vec<String> = Vec::new();
        for grant in auth
            .refresh_grants
            .iter()
            .filter(|g| g.email.eq_ignore_ascii_case(email))
        {
            if !tokens.contains(&grant.token) {
                tokens.push(grant.token.clone());
            }
        }
        tokens
    }

    /// Registers a service account for the `jwt-bearer` grant. A key that cannot be parsed is
    /// logged and makes every assertion of that account fail with "Invalid JWT Signature.";
    /// check keys beforehand with [`jwt::rsa_public_key_from_pem`] when that matters.
    pub fn add_service_account(&self, account: ServiceAccount) {
        let rsa_key = match jwt::rsa_public_key_from_pem(&account.public_key_pem) {
            Ok(key) => Some(key),
            Err(err) => {
                tracing::warn!(
                    client_email = %account.client_email,
                    error = %err,
                    "sandbox token issuer: unusable service-account public key"
                );
                None
            }
        };
        lock(&self.shared.auth)
            .service_accounts
            .push(RegisteredServiceAccount { account, rsa_key });
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
    match req.uri().path() {
        "/token" => handle_token(shared, req).await,
        "/auth" => handle_auth(shared, &req),
        _ => plain(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn handle_token(shared: &IssuerShared, req: Request<Incoming>) -> HttpResponse {
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
        IssuerMode::OAuthError { status, error } => {
            tracing::info!(outcome = error, status, "sandbox token request (forced)");
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return oauth_error(status, error, "Forced by the test.");
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

    let form = match parse_params(&body) {
        Ok(form) => form,
        Err(key) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("Duplicate parameter: {key}"),
            )
        }
    };

    match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => refresh_token_grant(shared, &parts.headers, &form),
        Some("authorization_code") => authorization_code_grant(shared, &parts.headers, &form),
        Some(JWT_BEARER_GRANT_TYPE) => jwt_bearer_grant(shared, &form),
        Some(other) => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("Invalid grant_type: {other}"),
        ),
        None => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: grant_type",
        ),
    }
}

/// Parses `application/x-www-form-urlencoded` data; a repeated key is refused (RFC 6749 §3.1,
/// §3.2), reported as `Err(key)`.
fn parse_params(data: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut params: HashMap<String, String> = HashMap::new();
    for (key, value) in form_urlencoded::parse(data) {
        if params
            .insert(key.clone().into_owned(), value.into_owned())
            .is_some()
        {
            return Err(key.into_owned());
        }
    }
    Ok(params)
}

/// The client's credentials, from exactly one of HTTP Basic or the form (RFC 6749 §2.3.1).
fn client_credentials(
    headers: &hyper::HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(String, String), Box<HttpResponse>> {
    let basic = match headers.get(header::AUTHORIZATION) {
        Some(value) => match parse_basic(value) {
            Some(creds) => Some(creds),
            None => return Err(Box::new(invalid_client(None))),
        },
        None => None,
    };
    let form_creds = form.get("client_id").map(|id| {
        (
            id.clone(),
            form.get("client_secret").cloned().unwrap_or_default(),
        )
    });
    match (basic, form_creds) {
        (Some(creds), None) | (None, Some(creds)) => Ok(creds),
        // RFC 6749 §2.3: a client must use exactly one authentication method.
        (Some(_), Some(_)) => Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Client authentication must use only one method.",
        ))),
        (None, None) => Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Could not determine client ID from request.",
        ))),
    }
}

/// Whether some account is registered with this client id and secret.
fn client_is_known(shared: &IssuerShared, client_id: &str, client_secret: &str) -> bool {
    lock(&shared.accounts)
        .iter()
        .any(|a| a.client_id == client_id && a.client_secret == client_secret)
}

/// Google's refresh tokens look like `1//0` followed by ~100 URL-safe characters.
fn new_refresh_token() -> String {
    format!("1//0sandbox-{}", super::random_hex(32))
}

fn refresh_token_grant(
    shared: &IssuerShared,
    headers: &hyper::HeaderMap,
    form: &HashMap<String, String>,
) -> HttpResponse {
    let (client_id, client_secret) = match client_credentials(headers, form) {
        Ok(creds) => creds,
        Err(resp) => return *resp,
    };
    let Some(refresh_token) = form.get("refresh_token").filter(|t| !t.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: refresh_token",
        );
    };
    if !client_is_known(shared, &client_id, &client_secret) {
        return invalid_client(Some(&client_id));
    }

    let (email, rotated) = {
        let mut auth = lock(&shared.auth);
        let rotate = auth.rotate_refresh_tokens;
        let Some(grant) = auth
            .refresh_grants
            .iter_mut()
            .find(|g| g.client_id == client_id && &g.token == refresh_token)
        else {
            tracing::info!(%client_id, outcome = "invalid_grant", "sandbox token request");
            return invalid_grant();
        };
        let rotated = rotate.then(|| {
            grant.token = new_refresh_token();
            grant.token.clone()
        });
        (grant.email.clone(), rotated)
    };

    let access_token = shared.tokens.issue(&email);
    tracing::info!(%client_id, %email, outcome = "issued", "sandbox token request");
    let mut body = serde_json::json!({
        "access_token": access_token,
        "expires_in": shared.expires_in.load(Ordering::SeqCst),
        "scope": GMAIL_SCOPE,
        "token_type": "Bearer",
    });
    if let Some(new_token) = rotated {
        body["refresh_token"] = serde_json::Value::String(new_token);
    }
    json(StatusCode::OK, &body)
}

/// RFC 7636 §4.1: 43-128 characters from the unreserved set.
fn is_valid_code_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `BASE64URL-NOPAD(SHA256(verifier))` (RFC 7636 §4.2, method `S256`).
fn s256_challenge(verifier: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn authorization_code_grant(
    shared: &IssuerShared,
    headers: &hyper::HeaderMap,
    form: &HashMap<String, String>,
) -> HttpResponse {
    let (client_id, client_secret) = match client_credentials(headers, form) {
        Ok(creds) => creds,
        Err(resp) => return *resp,
    };
    if !client_is_known(shared, &client_id, &client_secret) {
        return invalid_client(Some(&client_id));
    }
    let Some(code) = form.get("code").filter(|c| !c.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: code",
        );
    };
    let Some(redirect_uri) = form.get("redirect_uri") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing parameter: redirect_uri",
        );
    };
    // Codes are single-use: any exchange attempt by the right client consumes it.
    let pending = lock(&shared.auth).codes.remove(code.as_str());
    let pending = match pending {
        Some(p) if p.client_id == client_id && p.expires_at > Instant::now() => p,
        other => {
            let why = if other.is_some() {
                "expired or other client's code"
            } else {
                "unknown or used code"
            };
            tracing::info!(%client_id, outcome = "invalid_grant", why, "sandbox code exchange");
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Bad Request");
        }
    };
    if *redirect_uri != pending.redirect_uri {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "redirect_uri mismatch",
        );
    }
    let Some(verifier) = form.get("code_verifier") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Missing code verifier.",
        );
    };
    if !is_valid_code_verifier(verifier) || s256_challenge(verifier) != pending.code_challenge {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid code verifier.",
        );
    }

    let email = pending.email;
    let refresh_token = pending.with_refresh_token.then(|| {
        let token = new_refresh_token();
        lock(&shared.auth).refresh_grants.push(RefreshGrant {
            token: token.clone(),
            client_id: client_id.clone(),
            email: email.clone(),
        });
        token
    });
    let access_token = shared.tokens.issue(&email);
    tracing::info!(%client_id, %email, outcome = "issued", "sandbox code exchange");
    let mut body = serde_json::json!({
        "access_token": access_token,
        "expires_in": shared.expires_in.load(Ordering::SeqCst),
        "scope": pending.scope,
        "token_type": "Bearer",
    });
    if let Some(token) = refresh_token {
        body["refresh_token"] = serde_json::Value::String(token);
    }
    json(StatusCode::OK, &body)
}

/// Google's answer when domain-wide delegation does not cover the subject or scopes.
const UNAUTHORIZED_CLIENT_DESCRIPTION: &str = "Client is unauthorized to retrieve access tokens \
    using this method, or client not authorized for any of the scopes requested.";
/// Google's answer for `iat`/`exp` out of bounds.
const JWT_TIMEFRAME_DESCRIPTION: &str = "Invalid JWT: Token must be a short-lived token \
    (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.";

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A NumericDate claim (RFC 7519 §2): a JSON number, possibly fractional.
fn numeric_date(claims: &serde_json::Map<String, serde_json::Value>, name: &str) -> Option<i64> {
    let value = claims.get(name)?;
    // Truncation of a fractional date is intended; the range is checked by the caller.
    #[allow(clippy::cast_possible_truncation)]
    value
        .as_i64()
        .or_else(|| value.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

fn jwt_bearer_grant(shared: &IssuerShared, form: &HashMap<String, String>) -> HttpResponse {
    let bad_jwt = |description: &str| {
        tracing::info!(
            outcome = "invalid_grant",
            description,
            "sandbox jwt-bearer request"
        );
        oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
    };
    let Some(assertion) = form.get("assertion").filter(|a| !a.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    let jwt = match UnverifiedJwt::parse(assertion) {
        Ok(jwt) => jwt,
        Err(JwtError::Malformed(why)) => return bad_jwt(&format!("Invalid JWT: {why}")),
        Err(_) => return bad_jwt("Invalid JWT: malformed"),
    };
    let Some(iss) = jwt.claims.get("iss").and_then(|v| v.as_str()) else {
        return bad_jwt("Invalid JWT: missing iss claim");
    };
    let found = lock(&shared.auth)
        .service_accounts
        .iter()
        .find(|sa| sa.account.client_email == iss)
        .map(|sa| (sa.rsa_key.clone(), sa.account.allowed_subjects.clone()));
    let Some((rsa_key, allowed_subjects)) = found else {
        return bad_jwt("Invalid grant: account not found");
    };
    match rsa_key.map(|key| jwt.verify_rs256(&key)) {
        Some(Ok(())) => {}
        Some(Err(JwtError::UnsupportedAlgorithm(alg))) => {
            return bad_jwt(&format!("Invalid JWT: unsupported algorithm {alg}"))
        }
        Some(Err(JwtError::Malformed(why))) => return bad_jwt(&format!("Invalid JWT: {why}")),
        Some(Err(JwtError::BadSignature)) | None => return bad_jwt("Invalid JWT Signature."),
    }

    let token_url = format!("http://{}/token", shared.addr);
    if jwt.claims.get("aud").and_then(|v| v.as_str()) != Some(token_url.as_str()) {
        return bad_jwt(&format!(
            "Invalid JWT: Failed audience check. The right audience is {token_url}"
        ));
    }
    let now = now_unix();
    let times = numeric_date(&jwt.claims, "iat").zip(numeric_date(&jwt.claims, "exp"));
    let Some((iat, exp)) = times else {
        return bad_jwt(JWT_TIMEFRAME_DESCRIPTION);
    };
    let lifetime = exp.saturating_sub(iat);
    if iat > now.saturating_add(ASSERTION_CLOCK_SKEW_SECS)
        || exp <= now
        || lifetime <= 0
        || lifetime > MAX_ASSERTION_LIFETIME_SECS
    {
        return bad_jwt(JWT_TIMEFRAME_DESCRIPTION);
    }

    let scope = jwt
        .claims
        .get("scope")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if scope.split_whitespace().next().is_none() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        );
    }
    // Without `sub` Google issues a token for the service account itself (no impersonation).
    let subject = match jwt.claims.get("sub") {
        None => iss.to_owned(),
        Some(sub) => match sub.as_str() {
            Some(sub) if allowed_subjects.iter().any(|a| a.eq_ignore_ascii_case(sub)) => {
                sub.to_owned()
            }
            _ => return unauthorized_client(iss),
        },
    };
    if !scope.split_whitespace().any(|s| s == GMAIL_SCOPE) {
        return unauthorized_client(iss);
    }

    let access_token = shared.tokens.issue(&subject);
    tracing::info!(client_email = %iss, %subject, outcome = "issued", "sandbox jwt-bearer request");
    json(
        StatusCode::OK,
        &serde_json::json!({
            "access_token": access_token,
            "expires_in": shared.expires_in.load(Ordering::SeqCst),
            "token_type": "Bearer",
        }),
    )
}

fn unauthorized_client(client_email: &str) -> HttpResponse {
    tracing::info!(%client_email, outcome = "unauthorized_client", "sandbox jwt-bearer request");
    oauth_error(
        StatusCode::UNAUTHORIZED,
        "unauthorized_client",
        UNAUTHORIZED_CLIENT_DESCRIPTION,
    )
}

/// Whether `uri` may receive the authorization response for `client_id`: loopback `http` with
/// any port (Google's rule for Desktop clients) or a registered prefix. Never with a fragment.
fn redirect_uri_allowed(uri: &str, client_id: &str, prefixes: &[(String, String)]) -> bool {
    let Ok(url) = Url::parse(uri) else {
        return false;
    };
    if url.fragment().is_some() {
        return false;
    }
    let loopback = url.scheme() == "http"
        && match url.host() {
            Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
            Some(Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
            Some(Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
            None => false,
        };
    loopback
        || prefixes
            .iter()
            .any(|(id, prefix)| id == client_id && uri.starts_with(prefix.as_str()))
}

/// `GET /auth`: validates the request like Google's consent screen, then "clicks" according to
/// the [`ConsentMode`] and redirects back to the client.
fn handle_auth(shared: &IssuerShared, req: &Request<Incoming>) -> HttpResponse {
    if req.method() != Method::GET {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    let query = req.uri().query().unwrap_or_default();
    let recorded: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    lock(&shared.auth).last_authorization_request = Some(recorded);
    let params = match parse_params(query.as_bytes()) {
        Ok(params) => params,
        Err(key) => {
            return auth_error_page(
                "invalid_request",
                &format!("Parameter not allowed to be repeated: {key}"),
            )
        }
    };
    let param = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let missing = |name: &str| {
        auth_error_page(
            "invalid_request",
            &format!("Missing required parameter: {name}"),
        )
    };

    let Some(client_id) = param("client_id") else {
        return missing("client_id");
    };
    let default_email = lock(&shared.accounts)
        .iter()
        .find(|a| a.client_id == client_id)
        .map(|a| a.email.clone());
    let Some(default_email) = default_email else {
        tracing::info!(%client_id, outcome = "invalid_client", "sandbox authorization request");
        return auth_error_page_with_code(
            "Error 401: invalid_client",
            "The OAuth client was not found.",
        );
    };
    let Some(redirect_uri) = param("redirect_uri") else {
        return missing("redirect_uri");
    };
    let (consent, consent_email, allowed) = {
        let auth = lock(&shared.auth);
        (
            auth.consent,
            auth.consent_email.clone(),
            redirect_uri_allowed(redirect_uri, client_id, &auth.redirect_prefixes),
        )
    };
    let location = if allowed {
        Url::parse(redirect_uri).ok()
    } else {
        None
    };
    let Some(mut location) = location else {
        tracing::info!(%client_id, %redirect_uri, outcome = "redirect_uri_mismatch", "sandbox authorization request");
        return auth_error_page(
            "redirect_uri_mismatch",
            &format!(
                "You can't sign in to this app because it doesn't comply with Google's OAuth 2.0 \
                 policy. Request details: redirect_uri={redirect_uri}"
            ),
        );
    };

    let Some(response_type) = param("response_type") else {
        return missing("response_type");
    };
    if response_type != "code" {
        return auth_error_page(
            "unsupported_response_type",
            &format!("Unsupported response_type: {response_type}"),
        );
    }
    let Some(scope) = param("scope") else {
        return missing("scope");
    };
    let Some(code_challenge) = param("code_challenge") else {
        return missing("code_challenge");
    };
    if param("code_challenge_method") != Some("S256") {
        return auth_error_page(
            "invalid_request",
            "Invalid code_challenge_method: only S256 is supported.",
        );
    }
    let state = param("state");

    // Google only issues a refresh token for access_type=offline.
    let offline = param("access_type") == Some("offline");
    let mut pairs = location.query_pairs_mut();
    match consent {
        ConsentMode::Deny => {
            pairs.append_pair("error", "access_denied");
            if let Some(state) = state {
                pairs.append_pair("state", state);
            }
        }
        ConsentMode::Approve | ConsentMode::WrongState | ConsentMode::NoRefreshToken => {
            let code = format!("4/0sandbox-{}", super::random_hex(24));
            let email = consent_email.unwrap_or(default_email);
            {
                let mut auth = lock(&shared.auth);
                let expires_at = Instant::now() + auth.code_lifetime;
                auth.codes.insert(
                    code.clone(),
                    PendingCode {
                        client_id: client_id.to_owned(),
                        email,
                        redirect_uri: redirect_uri.to_owned(),
                        code_challenge: code_challenge.to_owned(),
                        scope: scope.to_owned(),
                        with_refresh_token: offline && consent != ConsentMode::NoRefreshToken,
                        expires_at,
                    },
                );
            }
            pairs.append_pair("code", &code);
            if consent == ConsentMode::WrongState {
                pairs.append_pair("state", &format!("forged-{}", super::random_hex(8)));
            } else if let Some(state) = state {
                pairs.append_pair("state", state);
            }
            pairs.append_pair("scope", scope);
        }
    }
    drop(pairs);
    tracing::info!(%client_id, ?consent, outcome = "redirect", "sandbox authorization request");
    let Ok(location) = HeaderValue::from_str(location.as_str()) else {
        return auth_error_page("invalid_request", "Invalid redirect_uri.");
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::FOUND;
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

/// Google's "Access blocked" page for `Error 400: <error>`.
fn auth_error_page(error: &str, detail: &str) -> HttpResponse {
    auth_error_page_with_code(&format!("Error 400: {error}"), detail)
}

/// An HTML error page shown instead of redirecting (the redirect target is not trusted). Always
/// status 400, as Google's page; `heading` carries the OAuth error ("Error 401: invalid_client").
fn auth_error_page_with_code(heading: &str, detail: &str) -> HttpResponse {
    let body = format!(
        "<!DOCTYPE html>\n<html lang=en><meta charset=utf-8>\
         <title>Sign in - Google Accounts</title>\
         <h1>Access blocked: authorization error</h1>\
         <p><b>{}</b></p><p>{}</p>\n",
        html_escape(heading),
        html_escape(detail)
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
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

    // ---- Authorization endpoint and authorization_code grant ----

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const REDIRECT: &str = "http://127.0.0.1:4567/callback";

    fn no_redirect_client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    fn auth_params<'a>(redirect_uri: &'a str, state: &'a str) -> Vec<(&'a str, String)> {
        vec![
            ("response_type", "code".into()),
            ("client_id", account().client_id),
            ("redirect_uri", redirect_uri.into()),
            ("scope", GMAIL_SCOPE.into()),
            ("state", state.into()),
            ("code_challenge", s256_challenge(VERIFIER)),
            ("code_challenge_method", "S256".into()),
            ("access_type", "offline".into()),
            ("prompt", "consent".into()),
        ]
    }

    /// Sends `GET /auth`; returns the status, the parsed `Location` query (if a redirect) and the
    /// body.
    async fn authorize(
        f: &Fixture,
        params: &[(&str, String)],
    ) -> (StatusCode, Option<(Url, HashMap<String, String>)>, String) {
        let resp = no_redirect_client()
            .get(f.issuer.auth_url())
            .query(params)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let location = resp.headers().get(header::LOCATION).map(|v| {
            let url = Url::parse(v.to_str().unwrap()).unwrap();
            let query = url.query_pairs().into_owned().collect();
            (url, query)
        });
        (status, location, resp.text().await.unwrap())
    }

    async fn get_code(f: &Fixture, redirect_uri: &str) -> String {
        let (status, location, _) = authorize(f, &auth_params(redirect_uri, "st")).await;
        assert_eq!(status, StatusCode::FOUND);
        location.unwrap().1["code"].clone()
    }

    async fn exchange(
        f: &Fixture,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> (StatusCode, serde_json::Value) {
        let a = account();
        let (status, _, body) = post_form(
            f,
            Some(basic_header(&a.client_id, &a.client_secret)),
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
            ],
        )
        .await;
        (status, body)
    }

    async fn refresh(f: &Fixture, refresh_token: &str) -> (StatusCode, serde_json::Value) {
        let a = account();
        let (status, _, body) = post_form(
            f,
            Some(basic_header(&a.client_id, &a.client_secret)),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
        .await;
        (status, body)
    }

    #[test]
    fn s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            s256_challenge(VERIFIER),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(is_valid_code_verifier(VERIFIER));
        assert!(!is_valid_code_verifier("short"));
        assert!(!is_valid_code_verifier(&"a b".repeat(20)));
        assert!(!is_valid_code_verifier(&"a".repeat(129)));
    }

    #[test]
    fn redirect_uri_rules() {
        let prefixes = vec![("web".to_owned(), "https://app.example/cb".to_owned())];
        for ok in [
            "http://127.0.0.1:1/",
            "http://127.0.0.1:65000/x?y=1",
            "http://localhost:8080/cb",
            "http://LOCALHOST/cb",
            "http://[::1]:9/",
        ] {
            assert!(redirect_uri_allowed(ok, "desktop", &prefixes), "{ok}");
        }
        for bad in [
            "https://127.0.0.1:1/",
            "http://127.0.0.2:1/",
            "http://localhost.evil.example/",
            "http://127.0.0.1:1/#frag",
            "https://app.example/cb",
            "not a url",
        ] {
            assert!(!redirect_uri_allowed(bad, "desktop", &prefixes), "{bad}");
        }
        assert!(redirect_uri_allowed(
            "https://app.example/cb/done",
            "web",
            &prefixes
        ));
    }

    #[tokio::test]
    async fn auth_redirects_with_code_state_and_scope_then_code_exchanges() {
        let f = fixture().await;
        // An existing query in redirect_uri is kept; values needing encoding are encoded.
        let redirect = "http://localhost:4567/cb?keep=1";
        let (status, location, _) = authorize(&f, &auth_params(redirect, "a b&c=d")).await;
        assert_eq!(status, StatusCode::FOUND);
        let (url, query) = location.unwrap();
        assert_eq!(url.host_str(), Some("localhost"));
        assert_eq!(url.port(), Some(4567));
        assert_eq!(url.path(), "/cb");
        assert_eq!(query["keep"], "1");
        assert_eq!(query["state"], "a b&c=d");
        assert_eq!(query["scope"], GMAIL_SCOPE);
        let code = &query["code"];
        assert!(code.starts_with("4/"));

        let recorded = f.issuer.last_authorization_request().unwrap();
        assert_eq!(recorded["access_type"], "offline");
        assert_eq!(recorded["prompt"], "consent");
        assert_eq!(recorded["redirect_uri"], redirect);

        let (status, body) = exchange(&f, code, redirect, VERIFIER).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["expires_in"], 3599);
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["scope"], GMAIL_SCOPE);
        let access = body["access_token"].as_str().unwrap();
        assert!(f.tokens.is_valid("user@example.com", access));
        let new_refresh = body["refresh_token"].as_str().unwrap();
        assert!(new_refresh.starts_with("1//"));
        assert_eq!(
            f.issuer.current_refresh_tokens("USER@example.com"),
            vec!["1//0refresh".to_owned(), new_refresh.to_owned()]
        );

        // The new refresh token works, and so does the configured one.
        assert_eq!(refresh(&f, new_refresh).await.0, StatusCode::OK);
        assert_eq!(refresh(&f, "1//0refresh").await.0, StatusCode::OK);
        assert_eq!(f.issuer.refresh_count(), 3);
    }

    #[tokio::test]
    async fn form_client_auth_and_consent_email() {
        let f = fixture().await;
        f.issuer.add_account(IssuerAccount {
            refresh_token: "1//0second".into(),
            email: "second@example.com".into(),
            ..account()
        });
        f.issuer.set_consent_email("second@example.com");
        let code = get_code(&f, REDIRECT).await;
        let a = account();
        let (status, _, body) = post_form(
            &f,
            None,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
                ("client_id", &a.client_id),
                ("client_secret", &a.client_secret),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(f
            .tokens
            .is_valid("second@example.com", body["access_token"].as_str().unwrap()));
        assert_eq!(
            f.issuer.current_refresh_tokens("second@example.com").len(),
            2
        );
        assert_eq!(f.issuer.current_refresh_tokens("user@example.com").len(), 1);
    }

    #[tokio::test]
    async fn deny_and_wrong_state() {
        let f = fixture().await;
        f.issuer.set_consent(ConsentMode::Deny);
        let (status, location, _) = authorize(&f, &auth_params(REDIRECT, "s1")).await;
        assert_eq!(status, StatusCode::FOUND);
        let (url, query) = location.unwrap();
        assert_eq!(url.path(), "/callback");
        assert_eq!(query["error"], "access_denied");
        assert_eq!(query["state"], "s1");
        assert!(!query.contains_key("code"));

        f.issuer.set_consent(ConsentMode::WrongState);
        let (status, location, _) = authorize(&f, &auth_params(REDIRECT, "s2")).await;
        assert_eq!(status, StatusCode::FOUND);
        let query = location.unwrap().1;
        assert!(query.contains_key("code"));
        assert_ne!(query["state"], "s2");
    }

    #[tokio::test]
    async fn auth_error_pages() {
        let f = fixture().await;
        f.issuer
            .allow_redirect_uri(&account().client_id, "https://app.example/oauth");

        let mut params = auth_params(REDIRECT, "s");
        params[1].1 = "unknown.apps.googleusercontent.com".into();
        let (status, location, body) = authorize(&f, &params).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(location.is_none());
        assert!(body.contains("Error 401: invalid_client"), "{body}");

        for bad in [
            "https://evil.example/cb",
            "http://192.168.1.2:80/cb",
            "https://app.example/other",
        ] {
            let (status, location, body) = authorize(&f, &auth_params(bad, "s")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(location.is_none());
            assert!(body.contains("Error 400: redirect_uri_mismatch"), "{body}");
            assert_eq!(
                f.issuer.last_authorization_request().unwrap()["redirect_uri"],
                bad
            );
        }
        // A registered prefix is accepted.
        let (status, _, _) = authorize(&f, &auth_params("https://app.example/oauth/cb", "s")).await;
        assert_eq!(status, StatusCode::FOUND);

        // PKCE is mandatory, with S256.
        let no_challenge: Vec<_> = auth_params(REDIRECT, "s")
            .into_iter()
            .filter(|(k, _)| *k != "code_challenge")
            .collect();
        let (status, location, body) = authorize(&f, &no_challenge).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(location.is_none());
        assert!(body.contains("Error 400: invalid_request"), "{body}");
        let mut plain_method = auth_params(REDIRECT, "s");
        plain_method[6].1 = "plain".into();
        let (status, _, body) = authorize(&f, &plain_method).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("invalid_request"), "{body}");

        // User input is escaped in the page.
        let (_, _, body) = authorize(&f, &auth_params("<script>", "s")).await;
        assert!(body.contains("&lt;script&gt;") && !body.contains("<script>"));

        let resp = f.client.post(f.issuer.auth_url()).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(f.issuer.refresh_count(), 0);
    }

    #[tokio::test]
    async fn pkce_code_reuse_redirect_mismatch_and_expiry() {
        let f = fixture().await;

        // Wrong verifier; the attempt consumes the code.
        let code = get_code(&f, REDIRECT).await;
        let wrong = "x".repeat(43);
        let (status, body) = exchange(&f, &code, REDIRECT, &wrong).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(body["error_description"], "Invalid code verifier.");
        let (status, body) = exchange(&f, &code, REDIRECT, VERIFIER).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "invalid_grant");

        // Single use.
        let code = get_code(&f, REDIRECT).await;
        assert_eq!(
            exchange(&f, &code, REDIRECT, VERIFIER).await.0,
            StatusCode::OK
        );
        let (status, body) = exchange(&f, &code, REDIRECT, VERIFIER).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "invalid_grant");

        // redirect_uri must be the one used at /auth.
        let code = get_code(&f, REDIRECT).await;
        let (status, body) = exchange(&f, &code, "http://127.0.0.1:4567/other", VERIFIER).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(body["error_description"], "redirect_uri mismatch");

        // Expired code.
        f.issuer.set_authorization_code_lifetime(Duration::ZERO);
        let code = get_code(&f, REDIRECT).await;
        let (status, body) = exchange(&f, &code, REDIRECT, VERIFIER).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "invalid_grant");

        // Wrong client secret.
        f.issuer
            .set_authorization_code_lifetime(DEFAULT_CODE_LIFETIME);
        let code = get_code(&f, REDIRECT).await;
        let (status, _, body) = post_form(
            &f,
            Some(basic_header(&account().client_id, "wrong")),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "invalid_client");
        // That did not consume the code.
        assert_eq!(
            exchange(&f, &code, REDIRECT, VERIFIER).await.0,
            StatusCode::OK
        );
        assert_eq!(f.issuer.current_refresh_tokens("user@example.com").len(), 3);
    }

    #[tokio::test]
    async fn no_refresh_token_mode_and_online_access() {
        let f = fixture().await;
        f.issuer.set_consent(ConsentMode::NoRefreshToken);
        let code = get_code(&f, REDIRECT).await;
        let (status, body) = exchange(&f, &code, REDIRECT, VERIFIER).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body["access_token"].is_string());
        assert!(body.get("refresh_token").is_none(), "{body}");

        // Without access_type=offline Google never issues a refresh token either.
        f.issuer.set_consent(ConsentMode::Approve);
        let online: Vec<_> = auth_params(REDIRECT, "s")
            .into_iter()
            .filter(|(k, _)| *k != "access_type")
            .collect();
        let (_, location, _) = authorize(&f, &online).await;
        let code = location.unwrap().1["code"].clone();
        let (status, body) = exchange(&f, &code, REDIRECT, VERIFIER).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.get("refresh_token").is_none(), "{body}");
        assert_eq!(f.issuer.current_refresh_tokens("user@example.com").len(), 1);
    }

    #[tokio::test]
    async fn rotation_and_revocation() {
        let f = fixture().await;
        // Without rotation no refresh_token is returned (Google).
        let (status, body) = refresh(&f, "1//0refresh").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.get("refresh_token").is_none());

        f.issuer.set_rotate_refresh_tokens(true);
        let (status, body) = refresh(&f, "1//0refresh").await;
        assert_eq!(status, StatusCode::OK);
        let rotated = body["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(rotated, "1//0refresh");
        assert_eq!(
            f.issuer.current_refresh_tokens("user@example.com"),
            vec![rotated.clone()]
        );
        let (status, body) = refresh(&f, "1//0refresh").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "invalid_grant");
        let (status, body) = refresh(&f, &rotated).await;
        assert_eq!(status, StatusCode::OK);
        let rotated2 = body["refresh_token"].as_str().unwrap().to_owned();

        f.issuer.set_rotate_refresh_tokens(false);
        assert!(f.issuer.revoke_refresh_token(&rotated2));
        assert!(!f.issuer.revoke_refresh_token(&rotated2));
        let (status, body) = refresh(&f, &rotated2).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["error_description"],
            "Token has been expired or revoked."
        );

        // Revoke all: issued tokens too.
        let code = get_code(&f, REDIRECT).await;
        let (_, body) = exchange(&f, &code, REDIRECT, VERIFIER).await;
        let issued = body["refresh_token"].as_str().unwrap().to_owned();
        assert_eq!(refresh(&f, &issued).await.0, StatusCode::OK);
        f.issuer.revoke_all_refresh_tokens();
        assert_eq!(refresh(&f, &issued).await.0, StatusCode::BAD_REQUEST);
        assert!(f
            .issuer
            .current_refresh_tokens("user@example.com")
            .is_empty());
    }

    // ---- Service accounts (JWT bearer) ----

    const SA_EMAIL: &str = "relay@test-project.iam.gserviceaccount.com";
    const SA_KEY: &str = include_str!("../../../tests/fixtures/service-account-test-key.pem");
    const SA_PUB: &str = include_str!("../../../tests/fixtures/service-account-test-pub.pem");
    const SA_CERT: &str = include_str!("../../../tests/fixtures/service-account-test-cert.pem");
    const OTHER_KEY: &str = include_str!("../../../tests/fixtures/other-test-key.pem");

    fn sign_jwt(private_key_pem: &str, claims: &serde_json::Value) -> String {
        use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
        let der = jwt::pem_block(private_key_pem, "PRIVATE KEY")
            .unwrap()
            .unwrap();
        let key = RsaKeyPair::from_pkcs8(&der).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "test-kid"});
        let input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(
            &RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .unwrap();
        format!("{input}.{}", b64.encode(sig))
    }

    fn claims(f: &Fixture, sub: &str) -> serde_json::Value {
        let now = now_unix();
        serde_json::json!({
            "iss": SA_EMAIL,
            "sub": sub,
            "scope": GMAIL_SCOPE,
            "aud": f.issuer.token_url(),
            "iat": now,
            "exp": now + 3600,
        })
    }

    async fn jwt_grant(f: &Fixture, assertion: &str) -> (StatusCode, serde_json::Value) {
        let (status, _, body) = post_form(
            f,
            None,
            &[
                ("grant_type", JWT_BEARER_GRANT_TYPE),
                ("assertion", assertion),
            ],
        )
        .await;
        (status, body)
    }

    async fn sa_fixture(public_key_pem: &str) -> Fixture {
        let f = fixture().await;
        f.issuer.add_service_account(ServiceAccount {
            client_email: SA_EMAIL.into(),
            public_key_pem: public_key_pem.into(),
            allowed_subjects: vec!["Boss@Example.com".into()],
        });
        f
    }

    #[test]
    fn fixture_json_matches_fixture_key() {
        let json: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/service-account.json"))
                .unwrap();
        assert_eq!(json["type"], "service_account");
        assert_eq!(json["client_email"], SA_EMAIL);
        assert_eq!(json["private_key"], SA_KEY);
        assert_eq!(json["token_uri"], "https://oauth2.googleapis.com/token");
    }

    #[tokio::test]
    async fn jwt_bearer_valid_assertion_issues_token_for_subject() {
        for public_key in [SA_PUB, SA_CERT] {
            let f = sa_fixture(public_key).await;
            let assertion = sign_jwt(SA_KEY, &claims(&f, "boss@example.com"));
            let (status, body) = jwt_grant(&f, &assertion).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["token_type"], "Bearer");
            assert_eq!(body["expires_in"], 3599);
            assert!(body.get("refresh_token").is_none());
            let token = body["access_token"].as_str().unwrap();
            assert!(f.tokens.is_valid("boss@example.com", token));
            assert_eq!(f.issuer.refresh_count(), 1);
        }
    }

    #[tokio::test]
    async fn jwt_bearer_rejections() {
        let f = sa_fixture(SA_PUB).await;
        let expect = |(status, body): (StatusCode, serde_json::Value),
                      want_status: StatusCode,
                      error: &str,
                      description: &str| {
            assert_eq!(status, want_status, "{body}");
            assert_eq!(body["error"], error, "{body}");
            let got = body["error_description"].as_str().unwrap();
            assert!(got.starts_with(description), "{got}");
        };

        // Signed with another key.
        let wrong_key = sign_jwt(OTHER_KEY, &claims(&f, "boss@example.com"));
        expect(
            jwt_grant(&f, &wrong_key).await,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid JWT Signature.",
        );
        // Tampered claims.
        let good = sign_jwt(SA_KEY, &claims(&f, "boss@example.com"));
        let parts: Vec<&str> = good.split('.').collect();
        let other_claims = sign_jwt(SA_KEY, &claims(&f, "other@example.com"));
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            other_claims.split('.').nth(1).unwrap(),
            parts[2]
        );
        expect(
            jwt_grant(&f, &tampered).await,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid JWT Signature.",
        );
        // Malformed.
        expect(
            jwt_grant(&f, "not-a-jwt").await,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid JWT: ",
        );
        // Expired.
        let mut c = claims(&f, "boss@example.com");
        c["iat"] = (now_unix() - 7200).into();
        c["exp"] = (now_unix() - 3600).into();
        expect(
            jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token",
        );
        // Too long-lived.
        let mut c = claims(&f, "boss@example.com");
        c["exp"] = (now_unix() + 3601).into();
        expect(
            jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token",
        );
        // Issued in the future.
        let mut c = claims(&f, "boss@example.com");
        c["iat"] = (now_unix() + 600).into();
        c["exp"] = (now_unix() + 1200).into();
        expect(
            jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token",
        );
        // Wrong audience (the real Google URL is not this fake's).
        let mut c = claims(&f, "boss@example.com");
        c["aud"] = "https://oauth2.googleapis.com/token".into();
        expect(
            jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid JWT: Failed audience check.",
        );
        // Subject without delegation.
        expect(
            jwt_grant(&f, &sign_jwt(SA_KEY, &claims(&f, "intruder@example.com"))).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            UNAUTHORIZED_CLIENT_DESCRIPTION,
        );
        // Scope without Gmail.
        let mut c = claims(&f, "boss@example.com");
        c["scope"] = "https://www.googleapis.com/auth/drive".into();
        expect(
            jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Client is unauthorized",
        );
        // No scope at all.
        let mut c = claims(&f, "boss@example.com");
        c.as_object_mut().unwrap().remove("scope");
        expect(
            jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await,
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "Invalid OAuth scope",
        );
        // Unknown issuer.
        let mut c = claims(&f, "boss@example.com");
        c["iss"] = "other@test-project.iam.gserviceaccount.com".into();
        expect(
            jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid grant: account not found",
        );
        // Missing assertion.
        let (status, _, body) = post_form(&f, None, &[("grant_type", JWT_BEARER_GRANT_TYPE)]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "invalid_request");
        assert!(f.tokens.is_empty());

        // Without `sub`, the token is for the service account itself (as with Google).
        let mut c = claims(&f, "");
        c.as_object_mut().unwrap().remove("sub");
        let (status, body) = jwt_grant(&f, &sign_jwt(SA_KEY, &c)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(f
            .tokens
            .is_valid(SA_EMAIL, body["access_token"].as_str().unwrap()));
        assert_eq!(f.issuer.refresh_count(), 13);
    }

    #[tokio::test]
    async fn jwt_bearer_with_unusable_key_fails_signature() {
        let f = sa_fixture("garbage").await;
        let (status, body) =
            jwt_grant(&f, &sign_jwt(SA_KEY, &claims(&f, "boss@example.com"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error_description"], "Invalid JWT Signature.");
    }
}
