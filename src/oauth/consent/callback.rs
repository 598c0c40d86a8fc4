//! The callback's parameters (RFC 6749 §4.1.2), from the listener or a paste: parsing the
//! redirect's query or a pasted address, and the `state` check before anything else.

use std::time::Duration;

use oauth2::url::{form_urlencoded, Url};
use oauth2::{AuthorizationCode, CsrfToken};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};
use tokio::time::Instant;

use super::AuthorizeError;

/// A pasted redirect URL: real ones are well under 2 KiB; a longer line is not one.
pub(super) const MAX_PASTE_LEN: usize = 8 * 1024;

/// The query of the redirect (RFC 6749 §4.1.2): `code` + `state`, or `error` + `state`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

pub fn parse_query(query: &str) -> Result<CallbackParams, AuthorizeError> {
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
pub fn check_callback(
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

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length of a state is no secret; its content is compared without early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) enum Pasted {
    Redirect(CallbackParams),
    BareCode(AuthorizationCode),
}

/// A pasted line: the full redirect URL, just its query (`code=...&state=...`), or a bare code.
pub(super) fn parse_paste(line: &str) -> Result<Pasted, AuthorizeError> {
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
pub(super) async fn read_paste<R>(
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
