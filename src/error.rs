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
    /// An API transport's own trouble (`check`: a token without the needed scope).
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
}

impl RelayError {
    /// True when only an operator can fix it (re-authorize, fix the client credentials).
    pub fn needs_operator(&self) -> bool {
        match self {
            RelayError::Token(err) => err.needs_operator(),
            RelayError::Upstream(err) => err.is_credential_rejection(),
            RelayError::Transport(err) => err.needs_operator(),
        }
    }

    /// What the operator should do, for the log line.
    pub fn hint(&self) -> String {
        let text = match self {
            RelayError::Token(err) => return err.hint(),
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
            RelayError::Transport(crate::transport::TransportError::Api(
                crate::transport::ApiFailure::Forbidden { scope, .. },
            )) => {
                return format!(
                    "authorize the asset again with the scope {scope} (`smtp-oauth-relay authorize ASSET`;                      for a service account, allow that scope in the domain-wide delegation)"
                )
            }
            RelayError::Transport(err) if err.needs_operator() => {
                "re-authorize the asset (`smtp-oauth-relay authorize`) and check the API is enabled in the Google Cloud project"
            }
            RelayError::Transport(_) => "the client was told to retry later",
        };
        text.to_string()
    }
}
