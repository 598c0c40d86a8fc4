//! Why a transaction could not get an upstream: token trouble or upstream trouble, and
//! what the operator should do about it.
//!
//! What the client is told is decided in one place, `replies.rs`
//! ([`Say::for_failure`](crate::replies::Say::for_failure)), next to the reply texts.

use crate::oauth::token::TokenError;
use crate::upstream::UpstreamError;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The token works but lacks a permission the asset needs (`check` on a Graph asset
    /// reads it from the token, issue 13).
    #[error("asset \"{asset}\": {detail}")]
    MissingPermission { asset: String, detail: String },
}

impl RelayError {
    /// True when only an operator can fix it (re-authorize, fix the client credentials).
    pub fn needs_operator(&self) -> bool {
        match self {
            RelayError::Token(err) => err.needs_operator(),
            RelayError::Upstream(err) => err.is_credential_rejection(),
            RelayError::MissingPermission { .. } => true,
        }
    }

    /// What the operator should do, for the log line.
    pub fn hint(&self) -> String {
        let text = match self {
            RelayError::Token(err) => return err.hint(),
            RelayError::MissingPermission { .. } => {
                "grant the permission in Microsoft Entra (application permissions need admin consent; \
                 delegated ones a new `authorize`)"
            }
            RelayError::Upstream(err) if err.is_credential_rejection() => {
                "the provider refused a freshly refreshed token: check that the asset's email is the \
                 account that consented, that the scope includes SMTP (Google: https://mail.google.com/), \
                 and that SMTP AUTH is enabled for the mailbox"
            }
            RelayError::Upstream(UpstreamError::NoStartTls { .. }) => {
                "the upstream (or something in between) did not offer STARTTLS: possible STARTTLS stripping"
            }
            RelayError::Upstream(UpstreamError::Tls { .. }) => {
                "check the upstream host name and, for a private CA, the asset's upstream_ca"
            }
            RelayError::Upstream(_) => "the client was told to retry later",
        };
        text.to_string()
    }
}
