//! A string that must never reach a log line, an error message or a panic.
//!
//! Passwords, client secrets, refresh tokens and access tokens all live in [`Secret`]. Its
//! `Debug` and `Display` print a fixed placeholder, so `tracing::debug!(?config)` or an error
//! that wraps a value can never leak one; the only way to the text is the explicit
//! [`Secret::expose`], which is easy to grep for.

use std::fmt;

/// What every redacted value prints as.
pub const REDACTED: &str = "<redacted>";

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret text, for the one place that must send it (a token request, an AUTH line).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

/// `text` with every occurrence of each of `secrets` replaced by [`REDACTED`]: for text
/// from elsewhere (a provider's error description, an upstream reply) that may repeat a
/// secret the relay sent. Empty secrets are skipped.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|secret| !secret.is_empty()) {
        if out.contains(secret) {
            out = out.replace(secret, REDACTED);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("ya29.very-secret");
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(format!("{:?}", Some(&secret)), format!("Some({REDACTED})"));
        assert_eq!(secret.expose(), "ya29.very-secret");
    }

    #[test]
    fn redact_replaces_every_occurrence() {
        assert_eq!(
            redact("a s3cr3t b s3cr3t tok", &["s3cr3t", "", "tok"]),
            format!("a {REDACTED} b {REDACTED} {REDACTED}")
        );
    }
}
