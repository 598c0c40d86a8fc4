//! What the two HTTP callers of this module — the token manager's refreshes and the
//! consent's code exchange — share: one way to build the client, one way to say why a
//! request failed, and the clock the token store and JWT assertions count in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A client for token endpoints. Redirects are off: a redirect could carry the credentials
/// in the form somewhere else (and the oauth2 crate requires it). `timeout` bounds both the
/// connection and the whole request, so a stalled endpoint cannot hold a session or the
/// terminal forever.
pub fn client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
}

/// Why a request got no answer, for errors and logs: a timeout or a refused connection in
/// a few words; anything else with its whole cause chain ("connection refused" says more
/// than reqwest's summary). Callers strip the URL first (`without_url`): it is in the
/// config, and the text stays short.
pub fn describe_error(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "request timed out".to_string()
    } else if err.is_connect() {
        "cannot connect".to_string()
    } else {
        let mut text = String::new();
        let mut source: Option<&dyn std::error::Error> = Some(err);
        while let Some(err) = source {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&err.to_string());
            source = err.source();
        }
        text
    }
}

/// Provider text for logs and errors: control characters replaced (no forged log lines),
/// at most 300 characters.
pub fn provider_text(text: &str) -> String {
    const MAX_CHARS: usize = 300;
    let mut out: String = text
        .chars()
        .take(MAX_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Seconds since the Unix epoch, as the token store's timestamps and JWT `iat` count them;
/// a clock before 1970 reads as 0 rather than failing.
pub fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// [`unix_secs`] of now.
pub fn unix_now() -> u64 {
    unix_secs(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_text_is_one_short_line() {
        let text = provider_text("a\nERROR forged\r\x1b[31m");
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(provider_text(&"x".repeat(10_000)).chars().count() <= 301);
    }

    #[test]
    fn unix_time_before_the_epoch_is_zero() {
        assert_eq!(unix_secs(UNIX_EPOCH + Duration::from_secs(5)), 5);
        assert_eq!(unix_secs(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }
}
