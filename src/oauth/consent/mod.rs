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
//!
//! The flow's pieces, in the order a run meets them: [`url`] (the consent URL and PKCE),
//! [`redirect`] (the redirect URI, and whether it is listened on or pasted), [`loopback`]
//! (the one-shot listener), [`callback`] (the redirect's parameters, the `state` check, the
//! paste), [`exchange`] (code → tokens, then [`verify_account`]), [`save`] (the grant into
//! the token store: [`store_grant`], shared with the console's "Generate Token").

use std::io::Write;
use std::time::Duration;

use tokio::io::AsyncBufRead;
use tokio::time::Instant;

use crate::config::Asset;
use crate::credentials::secret::Secret;

mod callback;
mod exchange;
mod loopback;
mod redirect;
mod save;
mod url;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

pub use callback::{check_callback, parse_query, CallbackParams};
use callback::{parse_paste, read_paste, Pasted};
pub use exchange::exchange;
pub use exchange::verify_account;
use loopback::wait_for_redirect;
use redirect::{plan_redirect, Receiver};
pub use save::{store_grant, SaveError};
pub use url::consent_url;

/// How long the user has to approve in the browser (or paste) before we give up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

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
