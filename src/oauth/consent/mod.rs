//! The first consent: OAuth 2.0 authorization-code flow with PKCE (RFC 6749 §4.1,
//! RFC 7636, RFC 8252 for the loopback redirect), the core of `authorize ASSET`.
//!
//! [`obtain_consent`] builds the consent URL ([`consent_url`]: PKCE S256, a random
//! `state`, the asset's scopes, and for Google `access_type=offline` + `prompt=consent` so a
//! refresh token comes back even on re-consent), then gets the authorization code one of
//! two ways:
//!
//! - **Loopback** (the default): a one-shot HTTP listener on the redirect URI's host and
//!   port (`http://127.0.0.1:<free port>/callback` unless the asset names one) serves the
//!   browser's redirect, checks `state`, answers a small page and stops listening. A
//!   request with another `state` gets 400 and the listener keeps waiting (until the
//!   timeout): a stray or forged request cannot end the user's authorization.
//! - **Paste** (`no_browser`, for headless machines and for Web clients whose redirect URI
//!   is not on this machine): the user opens the URL anywhere, and pastes the address the
//!   browser was sent to (or just the code) back into the terminal.
//!
//! The code is then exchanged with the PKCE verifier, and [`verify_account`] proves the
//! grant belongs to the asset's account (`login_hint` asks the provider for that account
//! in the first place) before the caller stores it over an earlier grant. Nothing secret (client secret,
//! verifier, code, tokens) is ever written to the output or put in an error message.

use std::borrow::Cow;
use std::convert::Infallible;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::url::{form_urlencoded, Host, Url};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, HttpClientError,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, TokenResponse,
    TokenUrl,
};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Asset, Config, Provider};
use crate::credentials::secret::Secret;
use crate::upstream::{Upstream, UpstreamError, UpstreamSettings};

/// How long the user has to approve in the browser (or paste) before we give up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The token request: generous, as in `check`, but not forever.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// The path of the default loopback redirect URI.
const DEFAULT_CALLBACK_PATH: &str = "/callback";
/// A pasted redirect URL: real ones are well under 2 KiB; a longer line is not one.
const MAX_PASTE_LEN: usize = 8 * 1024;
/// How often the loopback wait prints the time left.
const COUNTDOWN_INTERVAL: Duration = Duration::from_secs(30);
/// How long the browser gets to read the final page before the listener goes away.
const PAGE_FLUSH_GRACE: Duration = Duration::from_secs(2);

const GOOGLE_PERMISSIONS_URL: &str = "https://myaccount.google.com/permissions";

#[derive(Debug, Clone)]
pub struct ConsentOptions {
    /// Headless: print the URL, read the pasted redirect URL (or bare code) from `input`.
    pub no_browser: bool,
    /// Try to open a browser (`$BROWSER`, `xdg-open`, `open`) when not headless; false in tests.
    pub open_browser: bool,
    /// How long to wait for the browser's redirect or the paste.
    pub timeout: Duration,
}

impl Default for ConsentOptions {
    fn default() -> Self {
        ConsentOptions {
            no_browser: false,
            open_browser: true,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// What a successful consent yields.
#[derive(Debug)]
pub struct Consent {
    pub refresh_token: Secret,
    pub access_token: Secret,
    pub expires_in: Option<Duration>,
    /// Granted scopes: the token response's `scope`, else the requested ones.
    pub scopes: Vec<String>,
    /// The redirect URI the code was issued for (with the real port of the listener).
    pub redirect_uri: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizeError {
    #[error(
        "the redirect's state parameter does not match the one this run sent: the response \
         belongs to another (older, or forged) authorization attempt; run authorize again and \
         use only the URL it prints"
    )]
    StateMismatch,
    #[error(
        "access was denied on the consent screen ({description}); run authorize again and \
         choose \"Allow\" (for Google Workspace, an administrator may have to allow the app)"
    )]
    AccessDenied { description: String },
    /// Any other error the authorization server sent back in the redirect.
    #[error(
        "the authorization server refused the request ({error}: {description}); check the \
         asset's client_id, scope and auth_url against the provider console"
    )]
    Authorization { error: String, description: String },
    #[error("the token endpoint returned no refresh token: {hint}")]
    NoRefreshToken { hint: String },
    #[error("the token endpoint refused the authorization code ({error}: {description}); {hint}")]
    Exchange {
        error: String,
        description: String,
        hint: String,
    },
    #[error(
        "the redirect URI {redirect_uri} is not registered for this OAuth client \
         ({description}); register exactly this URI in the provider console (Google: APIs & \
         Services > Credentials; Microsoft: App registration > Authentication) or set the \
         asset's redirect_uri to one that is; \"Desktop app\" clients accept any loopback port"
    )]
    RedirectUriMismatch {
        redirect_uri: String,
        description: String,
    },
    #[error(
        "no answer within {secs} s, so the consent was abandoned (the listener is closed); run \
         authorize again and approve in the browser in time, or give it a longer --timeout-secs"
    )]
    Timeout { secs: u64 },
    #[error(
        "cannot listen on {addr} for the browser's redirect: {source}; choose another port in \
         the asset's redirect_uri (port 0 or none means any free port), or use --no-browser"
    )]
    Listener {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the redirect URI \"{uri}\" cannot be used: {reason}")]
    BadRedirectUri { uri: String, reason: String },
    #[error("the asset's {field} \"{url}\" is not a usable URL: {reason}")]
    BadEndpoint {
        field: &'static str,
        url: String,
        reason: String,
    },
    #[error("{reason}")]
    BadInput { reason: String },
    #[error("cannot reach the token endpoint: {0}; check network access to the asset's token_url")]
    Http(String),
    #[error("cannot write to the terminal: {0}")]
    Output(#[source] std::io::Error),
    #[error(
        "the consent was given by another account than {email}: {reason}; nothing was stored \
         (an earlier grant stays in use). Run authorize again and sign in as {email} (a \
         browser signed in to several accounts may pick another one)"
    )]
    WrongAccount { email: String, reason: String },
    #[error(
        "cannot verify that the consent was given by {email} ({reason}), so nothing was \
         stored (an earlier grant stays in use); make sure the asset's upstream is reachable \
         from here and run authorize again"
    )]
    Unverified { email: String, reason: String },
}

/// Runs the whole consent: builds the URL, gets the code (loopback listener, or paste),
/// checks `state`, exchanges the code with the PKCE verifier.
pub async fn obtain_consent<R, W>(
    asset: &Asset,
    options: &ConsentOptions,
    input: R,
    output: &mut W,
) -> Result<Consent, AuthorizeError>
where
    R: AsyncBufRead + Unpin,
    W: Write,
{
    let deadline = Instant::now() + options.timeout;
    let plan = plan_redirect(asset, options.no_browser).await?;
    let (url, state, verifier) = consent_url(asset, &plan.redirect_uri)?;
    let out =
        |output: &mut W, text: &str| writeln!(output, "{text}").map_err(AuthorizeError::Output);

    let code = match plan.receiver {
        Receiver::Listen { listeners, path } => {
            out(
                output,
                &format!(
                    "Open this URL in a browser and approve access for {}:",
                    asset.email
                ),
            )?;
            out(output, "")?;
            out(output, url.as_str())?;
            out(output, "")?;
            if options.open_browser {
                if open_browser(url.as_str()) {
                    out(
                        output,
                        "(a browser was started; if none appeared, open the URL above yourself)",
                    )?;
                } else {
                    out(
                        output,
                        "(no browser could be started here: open the URL above yourself)",
                    )?;
                }
            }
            out(
                output,
                &format!(
                    "Waiting for the browser to come back to {} ({} left)...",
                    plan.redirect_uri,
                    minutes(options.timeout)
                ),
            )?;
            output.flush().map_err(AuthorizeError::Output)?;
            let code =
                wait_for_redirect(listeners, path, &state, deadline, options, output).await?;
            out(
                output,
                "Authorization received; exchanging the code for tokens...",
            )?;
            code
        }
        Receiver::Paste => {
            out(
                output,
                &format!(
                    "Open this URL in a browser (on any machine) and approve access for {}:",
                    asset.email
                ),
            )?;
            out(output, "")?;
            out(output, url.as_str())?;
            out(output, "")?;
            out(
                output,
                &format!(
                    "After approving, your browser is sent to {}... which may fail to load on \
                     this machine: copy the full address from the browser's address bar and \
                     paste it here ({} left).",
                    plan.redirect_uri,
                    minutes(options.timeout)
                ),
            )?;
            write!(output, "Redirect URL (or code): ").map_err(AuthorizeError::Output)?;
            output.flush().map_err(AuthorizeError::Output)?;
            let line = read_paste(input, deadline, options.timeout).await?;
            match parse_paste(&line)? {
                Pasted::Redirect(params) => check_callback(&params, &state)?,
                Pasted::BareCode(code) => {
                    out(
                        output,
                        "warning: a bare code carries no state, so it could not be verified that \
                         it comes from this run's consent; paste the full address next time",
                    )?;
                    code
                }
            }
        }
    };

    let consent = exchange(asset, code, verifier, &plan.redirect_uri).await?;
    out(output, "Tokens received.")?;
    Ok(consent)
}

/// The consent URL, its `state` and the PKCE verifier, separated so they can be unit-tested.
pub fn consent_url(
    asset: &Asset,
    redirect_uri: &str,
) -> Result<(Url, CsrfToken, PkceCodeVerifier), AuthorizeError> {
    let client = oauth_client(asset, redirect_uri)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(asset.scopes.iter().cloned().map(Scope::new))
        .set_pkce_challenge(challenge)
        // Google and Microsoft pre-select this account (OpenID Connect Core §3.1.2.1), so
        // a browser signed in to several accounts offers the right one.
        .add_extra_param("login_hint", asset.email.clone());
    if asset.provider == Provider::Google {
        // Without these Google returns a refresh token only on the very first consent.
        request = request
            .add_extra_param("access_type", "offline")
            .add_extra_param("prompt", "consent");
    }
    let (url, state) = request.url();
    Ok((url, state, verifier))
}

type Client = BasicClient<
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn oauth_client(asset: &Asset, redirect_uri: &str) -> Result<Client, AuthorizeError> {
    let auth_url =
        AuthUrl::new(asset.auth_url.clone()).map_err(|err| AuthorizeError::BadEndpoint {
            field: "auth_url",
            url: asset.auth_url.clone(),
            reason: err.to_string(),
        })?;
    let token_url =
        TokenUrl::new(asset.token_url.clone()).map_err(|err| AuthorizeError::BadEndpoint {
            field: "token_url",
            url: asset.token_url.clone(),
            reason: err.to_string(),
        })?;
    let redirect = RedirectUrl::new(redirect_uri.to_string()).map_err(|err| {
        AuthorizeError::BadRedirectUri {
            uri: redirect_uri.to_string(),
            reason: err.to_string(),
        }
    })?;
    Ok(BasicClient::new(ClientId::new(asset.client_id.clone()))
        .set_client_secret(ClientSecret::new(asset.client_secret.expose().to_string()))
        .set_auth_uri(auth_url)
        .set_token_uri(token_url)
        .set_redirect_uri(redirect)
        // Google and Microsoft both accept credentials in the form body (as in token.rs).
        .set_auth_type(AuthType::RequestBody))
}

// ---------------------------------------------------------------------------------------
// Redirect URI: where the browser goes, and how we get the code
// ---------------------------------------------------------------------------------------

struct RedirectPlan {
    /// The URI sent in the consent URL and the token request, with the real port.
    redirect_uri: String,
    receiver: Receiver,
}

enum Receiver {
    /// Serve one request on `path` on these sockets (two for `localhost`: IPv4 and IPv6).
    Listen {
        listeners: Vec<TcpListener>,
        path: String,
    },
    /// Read the redirect URL (or code) from the input.
    Paste,
}

/// Works out the redirect URI and, for the loopback flow, binds its listener (so port 0
/// becomes a real port before the URI is sent anywhere).
async fn plan_redirect(asset: &Asset, no_browser: bool) -> Result<RedirectPlan, AuthorizeError> {
    let Some(configured) = &asset.redirect_uri else {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let port = local_port(&listener)?;
        let redirect_uri = format!("http://127.0.0.1:{port}{DEFAULT_CALLBACK_PATH}");
        let receiver = if no_browser {
            // Nothing listens: the browser's redirect fails to load and the user copies the
            // address. The port only has to be one a Desktop client accepts.
            drop(listener);
            Receiver::Paste
        } else {
            Receiver::Listen {
                listeners: vec![listener],
                path: DEFAULT_CALLBACK_PATH.to_string(),
            }
        };
        return Ok(RedirectPlan {
            redirect_uri,
            receiver,
        });
    };

    let bad = |reason: &str| AuthorizeError::BadRedirectUri {
        uri: configured.clone(),
        reason: reason.to_string(),
    };
    let url = Url::parse(configured).map_err(|err| bad(&format!("not a URL ({err})")))?;
    if url.fragment().is_some() {
        return Err(bad(
            "a redirect URI must not have a #fragment (RFC 6749 §3.1.2)",
        ));
    }
    if no_browser {
        return Ok(RedirectPlan {
            redirect_uri: configured.clone(),
            receiver: Receiver::Paste,
        });
    }
    let Some(hosts) = loopback_hosts(&url) else {
        return Err(bad(
            "it is not a loopback address (127.0.0.1, [::1] or localhost), so this machine \
             cannot receive the browser's redirect; use --no-browser and paste the address the \
             browser ends up on, or use a Desktop-app client with the default loopback redirect",
        ));
    };
    if url.scheme() != "http" {
        return Err(bad(
            "the relay's one-shot listener speaks plain http (RFC 8252 loopback redirects are \
             http); use http://127.0.0.1:PORT/..., or --no-browser",
        ));
    }
    // No port (or port 0): any free port, as loopback redirects of Desktop-app clients
    // (Google "installed" and Microsoft "public client") match regardless of the port.
    let wanted_port = url.port().unwrap_or(0);
    let first = bind(SocketAddr::new(hosts[0], wanted_port)).await?;
    let port = local_port(&first)?;
    let mut listeners = vec![first];
    for host in &hosts[1..] {
        // localhost: the browser may resolve it to ::1; best effort on the same port.
        if let Ok(extra) = TcpListener::bind(SocketAddr::new(*host, port)).await {
            listeners.push(extra);
        }
    }
    let mut redirect = url.clone();
    redirect
        .set_port(Some(port))
        .map_err(|()| bad("cannot set a port on it"))?;
    let path = match url.path() {
        "" => "/".to_string(),
        path => path.to_string(),
    };
    Ok(RedirectPlan {
        redirect_uri: redirect.to_string(),
        receiver: Receiver::Listen { listeners, path },
    })
}

/// The addresses to listen on for a loopback redirect URI, or `None` if it is not one.
fn loopback_hosts(url: &Url) -> Option<Vec<IpAddr>> {
    match url.host()? {
        Host::Ipv4(ip) if ip.is_loopback() => Some(vec![IpAddr::V4(ip)]),
        Host::Ipv6(ip) if ip.is_loopback() => Some(vec![IpAddr::V6(ip)]),
        Host::Domain(name) if name.eq_ignore_ascii_case("localhost") => Some(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]),
        _ => None,
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AuthorizeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AuthorizeError::Listener {
            addr: addr.to_string(),
            source,
        })
}

fn local_port(listener: &TcpListener) -> Result<u16, AuthorizeError> {
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|source| AuthorizeError::Listener {
            addr: "127.0.0.1".to_string(),
            source,
        })
}

// ---------------------------------------------------------------------------------------
// The callback's parameters, from the listener or a paste
// ---------------------------------------------------------------------------------------

/// The query of the redirect (RFC 6749 §4.1.2): `code` + `state`, or `error` + `state`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

fn parse_query(query: &str) -> Result<CallbackParams, AuthorizeError> {
    let mut params = CallbackParams::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match key.as_ref() {
            "code" => &mut params.code,
            "state" => &mut params.state,
            "error" => &mut params.error,
            "error_description" => &mut params.error_description,
            _ => continue,
        };
        if slot.is_some() {
            // RFC 6749 §3.1: parameters must not be repeated.
            return Err(AuthorizeError::BadInput {
                reason: format!(
                    "the redirect repeats the parameter \"{key}\"; run authorize again"
                ),
            });
        }
        *slot = Some(value.into_owned());
    }
    Ok(params)
}

/// Checks `state` first (an answer to someone else's request is not looked at further),
/// then turns an error or a missing code into the matching [`AuthorizeError`].
fn check_callback(
    params: &CallbackParams,
    expected: &CsrfToken,
) -> Result<AuthorizationCode, AuthorizeError> {
    let state_ok = params
        .state
        .as_deref()
        .is_some_and(|state| constant_time_eq(state.as_bytes(), expected.secret().as_bytes()));
    if !state_ok {
        return Err(AuthorizeError::StateMismatch);
    }
    if let Some(error) = &params.error {
        let description = params
            .error_description
            .clone()
            .unwrap_or_else(|| "no description".to_string());
        return Err(if error == "access_denied" {
            AuthorizeError::AccessDenied { description }
        } else {
            AuthorizeError::Authorization {
                error: error.clone(),
                description,
            }
        });
    }
    match params.code.as_deref().filter(|code| !code.is_empty()) {
        Some(code) => Ok(AuthorizationCode::new(code.to_string())),
        None => Err(AuthorizeError::BadInput {
            reason: "the redirect carries neither a code nor an error; copy the complete \
                     address (including everything after \"?\") and run authorize again"
                .to_string(),
        }),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length of a state is no secret; its content is compared without early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

enum Pasted {
    Redirect(CallbackParams),
    BareCode(AuthorizationCode),
}

/// A pasted line: the full redirect URL, just its query (`code=...&state=...`), or a bare code.
fn parse_paste(line: &str) -> Result<Pasted, AuthorizeError> {
    let text = line.trim();
    if text.is_empty() {
        return Err(AuthorizeError::BadInput {
            reason: "nothing was pasted; run authorize again and paste the address the browser \
                     was sent to"
                .to_string(),
        });
    }
    if text.contains("://") {
        let url = Url::parse(text).map_err(|err| AuthorizeError::BadInput {
            reason: format!(
                "the pasted text is not a valid URL ({err}); copy the complete address from the \
                 browser's address bar"
            ),
        })?;
        let params = parse_query(url.query().unwrap_or(""))?;
        return Ok(Pasted::Redirect(params));
    }
    let query = text.strip_prefix('?').unwrap_or(text);
    if query.contains('=') {
        return Ok(Pasted::Redirect(parse_query(query)?));
    }
    let plausible = text.len() <= 2048 && text.bytes().all(|b| b.is_ascii_graphic());
    if !plausible {
        return Err(AuthorizeError::BadInput {
            reason: "the pasted text is neither a URL nor an authorization code; copy the \
                     complete address from the browser's address bar"
                .to_string(),
        });
    }
    // Codes are pasted as seen in the address bar, i.e. percent-encoded (Google's "4/0A..."
    // shows as "4%2F0A...").
    let code = form_urlencoded::parse(format!("code={text}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_else(|| text.to_string());
    Ok(Pasted::BareCode(AuthorizationCode::new(code)))
}

/// Reads one non-blank line of at most [`MAX_PASTE_LEN`] bytes before `deadline`.
async fn read_paste<R>(
    mut input: R,
    deadline: Instant,
    timeout: Duration,
) -> Result<String, AuthorizeError>
where
    R: AsyncBufRead + Unpin,
{
    let read = async {
        loop {
            let mut line = Vec::new();
            let limit = u64::try_from(MAX_PASTE_LEN + 1).unwrap_or(u64::MAX);
            let n = (&mut input)
                .take(limit)
                .read_until(b'\n', &mut line)
                .await
                .map_err(|err| AuthorizeError::BadInput {
                    reason: format!("cannot read the pasted address: {err}"),
                })?;
            if n == 0 {
                return Err(AuthorizeError::BadInput {
                    reason: "the input ended before a redirect URL was pasted".to_string(),
                });
            }
            if line.len() > MAX_PASTE_LEN {
                return Err(AuthorizeError::BadInput {
                    reason: format!(
                        "the pasted line is longer than {MAX_PASTE_LEN} bytes, which no redirect \
                         URL is; copy just the browser's address"
                    ),
                });
            }
            let text = String::from_utf8(line).map_err(|_| AuthorizeError::BadInput {
                reason: "the pasted text is not UTF-8; copy the browser's address again"
                    .to_string(),
            })?;
            if !text.trim().is_empty() {
                return Ok(text);
            }
        }
    };
    match tokio::time::timeout_at(deadline, read).await {
        Ok(result) => result,
        Err(_) => Err(AuthorizeError::Timeout {
            secs: timeout.as_secs(),
        }),
    }
}

// ---------------------------------------------------------------------------------------
// The one-shot loopback listener
// ---------------------------------------------------------------------------------------

type HttpResponse = Response<Full<Bytes>>;
type Outcome = Result<AuthorizationCode, AuthorizeError>;

/// What one request to the listener meant for the flow.
enum Event {
    /// The callback of this run: the flow ends with it.
    Done(Outcome),
    /// A callback whose `state` is not this run's (an old tab, or a forged request from
    /// anything that can reach the port). Refused with 400, and the flow keeps waiting:
    /// otherwise anyone could end the user's authorization by sending one request.
    WrongState,
}

/// Serves until one request on `path` arrives (other paths get 404), prints a countdown
/// every [`COUNTDOWN_INTERVAL`], and stops listening when it returns.
async fn wait_for_redirect<W: Write>(
    listeners: Vec<TcpListener>,
    path: String,
    state: &CsrfToken,
    deadline: Instant,
    options: &ConsentOptions,
    output: &mut W,
) -> Result<AuthorizationCode, AuthorizeError> {
    let (tx, mut rx) = mpsc::channel::<Event>(1);
    let expected = Arc::new(Callback {
        path,
        state: state.clone(),
    });
    let addr = listeners
        .first()
        .and_then(|listener| listener.local_addr().ok())
        .map_or_else(
            || "the loopback address".to_string(),
            |addr| addr.to_string(),
        );
    // Dropping the set aborts the accept loops and any connection still open (a browser's
    // keep-alive or pre-connect), which is what "stop listening" means here.
    let mut tasks = JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept_loop(listener, Arc::clone(&expected), tx.clone()));
    }
    drop(tx);

    let mut next_tick = Instant::now() + COUNTDOWN_INTERVAL;
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(Event::Done(outcome)) => return outcome,
                Some(Event::WrongState) => {
                    writeln!(
                        output,
                        "a request with a state that does not belong to this run was refused; \
                         still waiting for the browser ({} left)...",
                        minutes(deadline.saturating_duration_since(Instant::now()))
                    )
                    .and_then(|()| output.flush())
                    .map_err(AuthorizeError::Output)?;
                }
                // Every accept loop ended: only possible if accepting keeps failing.
                None => {
                    return Err(AuthorizeError::Listener {
                        addr,
                        source: std::io::Error::other("the listener stopped unexpectedly"),
                    })
                }
            },
            () = tokio::time::sleep_until(next_tick.min(deadline)) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(AuthorizeError::Timeout { secs: options.timeout.as_secs() });
                }
                writeln!(output, "waiting for the browser... {} left", minutes(deadline - now))
                    .and_then(|()| output.flush())
                    .map_err(AuthorizeError::Output)?;
                next_tick += COUNTDOWN_INTERVAL;
            }
        }
    }
}

struct Callback {
    path: String,
    state: CsrfToken,
}

async fn accept_loop(listener: TcpListener, expected: Arc<Callback>, tx: mpsc::Sender<Event>) {
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                connections.spawn(serve_connection(stream, Arc::clone(&expected), tx.clone()));
            }
            Err(err) => {
                // EMFILE and the like; back off instead of spinning.
                tracing::debug!(error = %err, "authorize listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One browser connection. The callback's outcome is reported only once the connection is
/// done, i.e. after the page was written (the response says `Connection: close`).
async fn serve_connection(
    stream: tokio::net::TcpStream,
    expected: Arc<Callback>,
    tx: mpsc::Sender<Event>,
) {
    let outcome: Arc<Mutex<Option<Event>>> = Arc::new(Mutex::new(None));
    let answered = Arc::new(Notify::new());
    let service = {
        let outcome = Arc::clone(&outcome);
        let answered = Arc::clone(&answered);
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (response, result) = handle_request(&req, &expected);
            if let Some(result) = result {
                outcome
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert(result);
                answered.notify_one();
            }
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "authorize listener: connection error");
            }
        }
        // A browser that does not read the page must not hold the code back.
        () = async {
            answered.notified().await;
            tokio::time::sleep(PAGE_FLUSH_GRACE).await;
        } => {}
    }
    let result = outcome
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(result) = result {
        let _ = tx.send(result).await;
    }
}

/// The page for one request, and what it means for the flow if it was a callback.
fn handle_request(req: &Request<Incoming>, expected: &Callback) -> (HttpResponse, Option<Event>) {
    if req.uri().path() != expected.path {
        return (
            page(StatusCode::NOT_FOUND, "Not found", "Nothing here."),
            None,
        );
    }
    if req.method() != Method::GET {
        let mut response = page(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "Only GET is served here.",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return (response, None);
    }
    let outcome = parse_query(req.uri().query().unwrap_or(""))
        .and_then(|params| check_callback(&params, &expected.state));
    if matches!(outcome, Err(AuthorizeError::StateMismatch)) {
        let mut response = page(
            StatusCode::BAD_REQUEST,
            "Not this authorization",
            "This answer does not belong to the authorization the terminal is waiting for (its \
             state differs): it was ignored. Open the URL the terminal printed to authorize.",
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return (response, Some(Event::WrongState));
    }
    let mut response = match &outcome {
        Ok(_) => page(
            StatusCode::OK,
            "Authorization complete",
            "Authorization complete \u{2014} you can close this tab and return to the terminal.",
        ),
        Err(err) => page(
            StatusCode::BAD_REQUEST,
            "Authorization failed",
            &format!(
                "Authorization failed: {err}. You can close this tab; the terminal says the same."
            ),
        ),
    };
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    (response, Some(Event::Done(outcome)))
}

fn page(status: StatusCode, title: &str, text: &str) -> HttpResponse {
    let body = format!(
        "<!DOCTYPE html>\n<html lang=en><meta charset=utf-8><title>{}</title>\
         <body style=\"font-family: sans-serif; margin: 3em\"><p>{}</p></body></html>\n",
        html_escape(title),
        html_escape(text)
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The page must not pass the code-bearing URL on to anything it links to.
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

fn html_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

// ---------------------------------------------------------------------------------------
// The token request
// ---------------------------------------------------------------------------------------

type HttpError = HttpClientError<reqwest::Error>;
type BasicRequestError = RequestTokenError<HttpError, oauth2::basic::BasicErrorResponse>;

async fn exchange(
    asset: &Asset,
    code: AuthorizationCode,
    verifier: PkceCodeVerifier,
    redirect_uri: &str,
) -> Result<Consent, AuthorizeError> {
    let client = oauth_client(asset, redirect_uri)?;
    let redirect = RedirectUrl::new(redirect_uri.to_string()).map_err(|err| {
        AuthorizeError::BadRedirectUri {
            uri: redirect_uri.to_string(),
            reason: err.to_string(),
        }
    })?;
    let http = reqwest::Client::builder()
        // The oauth2 crate requires redirects off: a redirect could leak the credentials.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(EXCHANGE_TIMEOUT)
        .connect_timeout(EXCHANGE_TIMEOUT)
        .build()
        .map_err(|err| AuthorizeError::Http(format!("cannot build the HTTP client: {err}")))?;
    let response = client
        .exchange_code(code)
        .set_pkce_verifier(verifier)
        .set_redirect_uri(Cow::Owned(redirect))
        .request_async(&http)
        .await
        .map_err(|err| classify(asset, redirect_uri, err))?;

    let Some(refresh_token) = response.refresh_token() else {
        return Err(AuthorizeError::NoRefreshToken {
            hint: no_refresh_token_hint(asset.provider).to_string(),
        });
    };
    let scopes = match response.scopes() {
        Some(granted) if !granted.is_empty() => granted.iter().map(|s| s.to_string()).collect(),
        _ => asset.scopes.clone(),
    };
    Ok(Consent {
        refresh_token: Secret::new(refresh_token.secret().clone()),
        access_token: Secret::new(response.access_token().secret().clone()),
        expires_in: response.expires_in(),
        scopes,
        redirect_uri: redirect_uri.to_string(),
    })
}

/// Proves that the new grant belongs to the asset's account before it replaces anything:
/// the provider's SMTP server must accept the new access token for the asset's address
/// (the XOAUTH2 login `check` and the relay do). A token of another account is refused
/// there, as Gmail refuses a user name that does not match the token.
pub async fn verify_account(
    config: &Config,
    asset: &Asset,
    consent: &Consent,
) -> Result<(), AuthorizeError> {
    let settings = UpstreamSettings::from_config(config);
    let unverified = |err: UpstreamError| AuthorizeError::Unverified {
        email: asset.email.clone(),
        reason: err.to_string(),
    };
    let mut upstream = Upstream::connect(&asset.upstream, &settings)
        .await
        .map_err(unverified)?;
    let login = upstream
        .authenticate(&asset.email, &consent.access_token)
        .await;
    upstream.quit().await;
    match login {
        Ok(()) => Ok(()),
        Err(err) if err.is_credential_rejection() => Err(AuthorizeError::WrongAccount {
            email: asset.email.clone(),
            reason: err.to_string(),
        }),
        Err(err) => Err(unverified(err)),
    }
}

fn no_refresh_token_hint(provider: Provider) -> String {
    match provider {
        Provider::Google => format!(
            "Google sends one only when it shows the consent screen, and the app apparently \
             already had consent without prompt=consent being honoured; revoke the app's access \
             at {GOOGLE_PERMISSIONS_URL} and run authorize again"
        ),
        Provider::Microsoft => "Microsoft sends one only for the offline_access scope; add \
                                offline_access to the asset's scope and run authorize again"
            .to_string(),
        Provider::Custom => "the provider probably needs offline access requested explicitly \
                             (an offline_access scope, or access_type=offline); check its \
                             documentation and the asset's scope"
            .to_string(),
    }
}

fn classify(asset: &Asset, redirect_uri: &str, err: BasicRequestError) -> AuthorizeError {
    match err {
        RequestTokenError::ServerResponse(response) => {
            let error = response.error().to_string();
            let description = response
                .error_description()
                .cloned()
                .unwrap_or_else(|| "no description".to_string());
            let hint = match response.error() {
                BasicErrorResponseType::Extension(ext) if ext == "redirect_uri_mismatch" => {
                    return AuthorizeError::RedirectUriMismatch {
                        redirect_uri: redirect_uri.to_string(),
                        description,
                    };
                }
                BasicErrorResponseType::InvalidGrant => {
                    "the code expired or was already used, or the redirect URI or PKCE verifier \
                     differ from the consent request; run authorize again and finish within a \
                     few minutes"
                        .to_string()
                }
                BasicErrorResponseType::InvalidClient
                | BasicErrorResponseType::UnauthorizedClient => format!(
                    "check the client_id and client_secret of asset \"{}\" against the provider \
                     console, and the client type (\"Desktop app\" for the loopback redirect; a \
                     \"Web application\" client needs its exact redirect URI registered)",
                    asset.name
                ),
                _ => "check the asset's client settings and scope against the provider console"
                    .to_string(),
            };
            AuthorizeError::Exchange {
                error,
                description,
                hint,
            }
        }
        RequestTokenError::Request(HttpClientError::Reqwest(err)) => {
            AuthorizeError::Http(if err.is_timeout() {
                "the request timed out".to_string()
            } else if err.is_connect() {
                "cannot connect".to_string()
            } else {
                err.without_url().to_string()
            })
        }
        RequestTokenError::Request(other) => AuthorizeError::Http(other.to_string()),
        RequestTokenError::Parse(_, body) => AuthorizeError::Http(format!(
            "unexpected response ({} bytes that are not an OAuth token reply)",
            body.len()
        )),
        RequestTokenError::Other(reason) => AuthorizeError::Http(reason),
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// `4:30` for four and a half minutes.
fn minutes(d: Duration) -> String {
    let secs = d.as_secs();
    format!("{}:{:02}", secs / 60, secs % 60)
}

/// Starts a browser on `url` without waiting for it: `$BROWSER` (first entry, `%s` is the
/// URL), else `xdg-open` (or `open` on macOS). Returns whether a program could be started.
fn open_browser(url: &str) -> bool {
    let mut candidates: Vec<(String, Vec<String>)> = Vec::new();
    if let Ok(browser) = std::env::var("BROWSER") {
        if let Some(first) = browser.split(':').find(|entry| !entry.trim().is_empty()) {
            let mut words = first.split_whitespace().map(str::to_string);
            if let Some(program) = words.next() {
                let mut args: Vec<String> = words.map(|w| w.replace("%s", url)).collect();
                if !first.contains("%s") {
                    args.push(url.to_string());
                }
                candidates.push((program, args));
            }
        }
    }
    let fallback = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    candidates.push((fallback.to_string(), vec![url.to_string()]));
    for (program, args) in candidates {
        let spawned = std::process::Command::new(&program)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Ok(mut child) = spawned {
            // Reap it whenever it exits, so it does not linger as a zombie.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            return true;
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    /// A syntactically valid argon2id PHC string (never checked here).
    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                        0VbV0jU5dEbWgZ5y3ZL4q3nSxRvLwUg8n6tQ3h2QW6I";

    fn asset(provider: &str, extra: &str) -> Asset {
        let text = format!(
            r#"
[[user]]
name = "app"
password_hash = "{HASH}"
assets = ["*"]

[[asset]]
name = "box"
email = "box@example.com"
provider = "{provider}"
client_id = "client-123"
client_secret = "client-secret-XYZ"
refresh_token = "placeholder"
senders = ["box@example.com"]
auth_url = "https://auth.example.test/authorize"
token_url = "https://auth.example.test/token"
upstream = "127.0.0.1:1"
{extra}
"#
        );
        let config = crate::config::parse(&text, Path::new("t.toml")).unwrap();
        config.assets[0].as_ref().clone()
    }

    fn query(url: &Url) -> HashMap<String, String> {
        url.query_pairs().into_owned().collect()
    }

    #[test]
    fn consent_url_has_every_parameter_with_s256() {
        let asset = asset("custom", "scope = \"a b\"");
        let (url, state, verifier) = consent_url(&asset, "http://127.0.0.1:4321/callback").unwrap();
        assert!(url
            .as_str()
            .starts_with("https://auth.example.test/authorize?"));
        let q = query(&url);
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "client-123");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:4321/callback");
        assert_eq!(q["scope"], "a b");
        assert_eq!(q["state"], *state.secret());
        assert_eq!(q["code_challenge_method"], "S256");
        let expected = PkceCodeChallenge::from_code_verifier_sha256(&verifier);
        assert_eq!(q["code_challenge"], expected.as_str());
        assert_eq!(q["login_hint"], "box@example.com");
        assert!(!q.contains_key("access_type"));
        assert!(!q.contains_key("prompt"));
        // Nothing secret in the URL.
        assert!(!url.as_str().contains("client-secret-XYZ"));
        assert!(!url.as_str().contains(verifier.secret().as_str()));
        // Fresh randomness every time.
        let (_, state2, verifier2) = consent_url(&asset, "http://127.0.0.1:4321/callback").unwrap();
        assert_ne!(state.secret(), state2.secret());
        assert_ne!(verifier.secret(), verifier2.secret());
    }

    #[test]
    fn google_asks_for_offline_access_and_the_consent_screen() {
        let asset = asset("google", "");
        let (url, _, _) = consent_url(&asset, "http://127.0.0.1:1/callback").unwrap();
        let q = query(&url);
        assert_eq!(q["access_type"], "offline");
        assert_eq!(q["prompt"], "consent");
        assert_eq!(q["scope"], "https://mail.google.com/");
    }

    #[test]
    fn microsoft_gets_nothing_extra() {
        let asset = asset("microsoft", "");
        let (url, _, _) = consent_url(&asset, "http://127.0.0.1:1/callback").unwrap();
        let q = query(&url);
        assert!(!q.contains_key("access_type"));
        assert!(!q.contains_key("prompt"));
        assert!(q["scope"].split(' ').any(|s| s == "offline_access"));
    }

    #[tokio::test]
    async fn redirect_plans() {
        // Default: an ephemeral loopback port, listened on.
        let plan = plan_redirect(&asset("custom", "scope = \"s\""), false)
            .await
            .unwrap();
        let url = Url::parse(&plan.redirect_uri).unwrap();
        assert_eq!(url.host_str(), Some("127.0.0.1"));
        assert_ne!(url.port(), None);
        assert_eq!(url.path(), "/callback");
        assert!(matches!(plan.receiver, Receiver::Listen { ref path, .. } if path == "/callback"));

        // Port 0 in a configured loopback URI becomes the real port; the path is kept.
        let plan = plan_redirect(
            &asset(
                "custom",
                "scope = \"s\"\nredirect_uri = \"http://localhost:0/oauth/cb\"",
            ),
            false,
        )
        .await
        .unwrap();
        let url = Url::parse(&plan.redirect_uri).unwrap();
        assert_eq!(url.host_str(), Some("localhost"));
        assert_ne!(url.port().unwrap_or(0), 0);
        assert!(matches!(plan.receiver, Receiver::Listen { ref path, .. } if path == "/oauth/cb"));

        // A Web client's URI cannot be listened on...
        let web = asset(
            "custom",
            "scope = \"s\"\nredirect_uri = \"https://relay.example/callback\"",
        );
        let err = plan_redirect(&web, false).await.err().unwrap();
        assert!(matches!(err, AuthorizeError::BadRedirectUri { .. }));
        assert!(err.to_string().contains("--no-browser"), "{err}");
        // ...but is fine for the paste flow, unchanged.
        let plan = plan_redirect(&web, true).await.unwrap();
        assert_eq!(plan.redirect_uri, "https://relay.example/callback");
        assert!(matches!(plan.receiver, Receiver::Paste));

        let tls_loopback = asset(
            "custom",
            "scope = \"s\"\nredirect_uri = \"https://127.0.0.1:8443/cb\"",
        );
        let err = plan_redirect(&tls_loopback, false).await.err().unwrap();
        assert!(matches!(err, AuthorizeError::BadRedirectUri { .. }));
    }

    #[test]
    fn state_is_checked_before_anything_else() {
        let state = CsrfToken::new("s-123".to_string());
        let params = |q: &str| parse_query(q).unwrap();
        assert_eq!(
            check_callback(&params("code=c1&state=s-123"), &state)
                .unwrap()
                .secret(),
            "c1"
        );
        for q in [
            "code=c1&state=s-124",
            "code=c1",
            "error=access_denied&state=x",
        ] {
            assert!(matches!(
                check_callback(&params(q), &state),
                Err(AuthorizeError::StateMismatch)
            ));
        }
        assert!(matches!(
            check_callback(&params("error=access_denied&state=s-123"), &state),
            Err(AuthorizeError::AccessDenied { .. })
        ));
        assert!(matches!(
            check_callback(&params("error=invalid_scope&state=s-123"), &state),
            Err(AuthorizeError::Authorization { .. })
        ));
        assert!(matches!(
            check_callback(&params("state=s-123"), &state),
            Err(AuthorizeError::BadInput { .. })
        ));
        assert!(matches!(
            parse_query("code=a&code=b"),
            Err(AuthorizeError::BadInput { .. })
        ));
    }

    #[test]
    fn pastes() {
        match parse_paste("  http://127.0.0.1:9/callback?state=s&code=4%2F0Ab&scope=x \n").unwrap()
        {
            Pasted::Redirect(p) => {
                assert_eq!(p.code.as_deref(), Some("4/0Ab"));
                assert_eq!(p.state.as_deref(), Some("s"));
            }
            Pasted::BareCode(_) => panic!("a URL is not a bare code"),
        }
        match parse_paste("?code=abc&state=s").unwrap() {
            Pasted::Redirect(p) => assert_eq!(p.code.as_deref(), Some("abc")),
            Pasted::BareCode(_) => panic!("a query is not a bare code"),
        }
        match parse_paste("4%2F0Ab-cd\n").unwrap() {
            Pasted::BareCode(code) => assert_eq!(code.secret(), "4/0Ab-cd"),
            Pasted::Redirect(_) => panic!("a code is not a URL"),
        }
        assert!(parse_paste("   ").is_err());
        assert!(parse_paste("two words").is_err());
        assert!(parse_paste("http://[bad").is_err());
    }

    #[tokio::test]
    async fn paste_reading_is_bounded_and_skips_blank_lines() {
        let far = Instant::now() + Duration::from_secs(5);
        let line = read_paste(&b"\n\r\n  code\nrest\n"[..], far, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(line.trim(), "code");
        let long = vec![b'a'; MAX_PASTE_LEN + 10];
        let err = read_paste(&long[..], far, Duration::from_secs(5))
            .await
            .err();
        assert!(matches!(err, Some(AuthorizeError::BadInput { .. })));
        let err = read_paste(&b""[..], far, Duration::from_secs(5))
            .await
            .err();
        assert!(matches!(err, Some(AuthorizeError::BadInput { .. })));
        let (_keep_open, silent) = tokio::io::duplex(64);
        let silent = tokio::io::BufReader::new(silent);
        let err = read_paste(
            silent,
            Instant::now() + Duration::from_millis(50),
            Duration::from_secs(1),
        )
        .await
        .err();
        assert!(matches!(err, Some(AuthorizeError::Timeout { secs: 1 })));
    }

    #[test]
    fn helpers() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert_eq!(minutes(Duration::from_secs(270)), "4:30");
        assert_eq!(minutes(Duration::from_secs(5)), "0:05");
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn hints_name_the_fix() {
        assert!(no_refresh_token_hint(Provider::Google).contains(GOOGLE_PERMISSIONS_URL));
        assert!(no_refresh_token_hint(Provider::Microsoft).contains("offline_access"));
        let err = AuthorizeError::RedirectUriMismatch {
            redirect_uri: "http://127.0.0.1:5/cb".into(),
            description: "Bad Request".into(),
        };
        assert!(err.to_string().contains("Desktop app"));
        assert!(AuthorizeError::Timeout { secs: 300 }
            .to_string()
            .contains("300 s"));
    }
}
