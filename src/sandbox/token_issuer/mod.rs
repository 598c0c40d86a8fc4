//! A fake OAuth 2.0 authorization server that answers like Google's: the token endpoint
//! `https://oauth2.googleapis.com/token` (`POST /token`: `refresh_token`, `authorization_code`
//! with PKCE, the service-account JWT bearer grant of RFC 7523, and Microsoft's app-only
//! `client_credentials` grant in `apps`) and the authorization
//! endpoint `https://accounts.google.com/o/oauth2/v2/auth` (`GET /auth`, whose consent step is
//! played automatically), with switchable failure modes for tests.
//!
//! This file holds the handle ([`TokenIssuer`]), its accounts, tokens and modes; `grants` answers
//! `POST /token`, `consent` answers `GET /auth`, and `http` is the server plumbing under both.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::jwt;
use super::SandboxError;

pub mod apps;
mod consent;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure
mod consent_tests;
mod grants;
mod http;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure
mod tests;

use apps::{AppRegistration, AppToken};
use http::accept_loop;

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
    /// Answer every request with `400 invalid_grant` whose `error_description` repeats the
    /// request's refresh token and client secret, as a careless provider might: the relay
    /// must never pass such text on (logs, alerts, pages).
    InvalidGrantEcho,
}

/// Shared registry of valid access tokens, consulted by the fake Gmail.
#[derive(Clone, Default)]
pub struct AccessTokens {
    // token -> email it was issued for
    inner: Arc<Mutex<HashMap<String, String>>>,
    /// Issued tokens are padded to at least this many characters (0: no padding), to
    /// imitate the 1-2 KB JWTs of Microsoft and service accounts.
    min_len: Arc<std::sync::atomic::AtomicUsize>,
    /// App-only tokens (client-credentials grant, `apps.rs`) and what they allow.
    apps: Arc<Mutex<HashMap<String, AppToken>>>,
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
    /// and has not been revoked. An app-only token counts for SMTP when it carries
    /// `SMTP.SendAsApp` for Exchange Online and its app may act for `email`.
    pub fn is_valid(&self, email: &str, token: &str) -> bool {
        lock(&self.inner)
            .get(token)
            .is_some_and(|owner| owner.eq_ignore_ascii_case(email))
            || self.app_token(token).is_some_and(|app| {
                app.allows(apps::OUTLOOK_RESOURCE, apps::SMTP_SEND_AS_APP, email)
            })
    }

    /// Records `token` as issued for `email` (a JWT-shaped delegated token, `apps.rs`).
    pub fn register(&self, token: &str, email: &str) {
        lock(&self.inner).insert(token.to_owned(), email.to_owned());
    }

    /// Records an app-only token issued by the client-credentials grant.
    pub fn register_app(&self, token: &str, app: AppToken) {
        lock(&self.apps).insert(token.to_owned(), app);
    }

    /// Every app-only token issued and not revoked (for tests that look for leaks).
    pub fn app_tokens(&self) -> Vec<String> {
        lock(&self.apps).keys().cloned().collect()
    }

    /// What an app-only token allows, when `token` is one and is not revoked.
    pub fn app_token(&self, token: &str) -> Option<AppToken> {
        lock(&self.apps).get(token).cloned()
    }

    /// The account `token` was issued for, if it is valid (the fake Gmail API's `me`).
    pub fn owner(&self, token: &str) -> Option<String> {
        lock(&self.inner).get(token).cloned()
    }

    /// Makes later tokens at least `len` characters long.
    pub fn set_min_token_len(&self, len: usize) {
        self.min_len
            .store(len, std::sync::atomic::Ordering::Relaxed);
    }

    /// Invalidates every token issued so far, simulating expiry or revocation.
    pub fn revoke_all(&self) {
        lock(&self.inner).clear();
        lock(&self.apps).clear();
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
    /// A time-limited grant (Google's Testing-mode apps: 7 days) dies at this instant; its
    /// refresh and code-exchange answers carry `refresh_token_expires_in`.
    expires_at: Option<Instant>,
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
    /// Apps for the client-credentials grant (`apps.rs`).
    apps: Vec<AppRegistration>,
    /// Lifetime of grants issued from now on (`None`: unlimited, Google's production apps).
    refresh_token_lifetime: Option<Duration>,
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
            apps: Vec::new(),
            refresh_token_lifetime: None,
        }
    }
}

impl RefreshGrant {
    fn configured(account: &IssuerAccount) -> Self {
        RefreshGrant {
            token: account.refresh_token.clone(),
            client_id: account.client_id.clone(),
            email: account.email.clone(),
            expires_at: None,
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

    /// Makes refresh tokens time-limited grants, as Google does for an External app in
    /// Testing status (7 days): grants issued from now on live `lifetime`, and so do, from
    /// now, the grants that are valid and unlimited now. Their token answers carry
    /// `refresh_token_expires_in`; after it, refreshes get `invalid_grant`. `None` makes
    /// later grants unlimited again (earlier ones keep their expiry).
    pub fn set_refresh_token_lifetime(&self, lifetime: Option<Duration>) {
        let mut auth = lock(&self.shared.auth);
        auth.refresh_token_lifetime = lifetime;
        if let Some(lifetime) = lifetime {
            let expires_at = Instant::now() + lifetime;
            for grant in &mut auth.refresh_grants {
                grant.expires_at.get_or_insert(expires_at);
            }
        }
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

    /// Registers an app for the client-credentials grant (app-only tokens).
    pub fn add_app(&self, app: AppRegistration) {
        lock(&self.shared.auth).apps.push(app);
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
