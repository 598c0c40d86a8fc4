//! Why a transaction could not get an upstream, and what the client is told about it.
//!
//! This is the one place where failures towards the provider become SMTP replies: token
//! trouble and upstream trouble both end up here, so the mapping can be read (and
//! reviewed against RFC 5321's "4xx keeps the mail in the client's queue") in one screen.

use crate::config::CredentialFailure;
use crate::oauth::token::TokenError;
use crate::replies::Say;
use crate::upstream::UpstreamError;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl RelayError {
    /// True when only an operator can fix it (re-authorize, fix the client credentials).
    pub fn needs_operator(&self) -> bool {
        match self {
            RelayError::Token(err) => err.needs_operator(),
            RelayError::Upstream(err) => err.is_credential_rejection(),
        }
    }

    /// The reply for the client whose transaction needed `asset`.
    pub fn client_reply<'a>(&self, asset: &'a str, mode: CredentialFailure) -> Say<'a> {
        if self.needs_operator() {
            // A store or file the relay cannot use says nothing about the mail: it stays
            // queued whatever `credential_failure` says.
            let mode = match self {
                RelayError::Token(err) if !err.is_credential_refusal() => {
                    CredentialFailure::Temporary
                }
                _ => mode,
            };
            return Say::CredentialsNeedReauthorization { asset, mode };
        }
        match self {
            RelayError::Token(_) => Say::CredentialsUnavailable,
            RelayError::Upstream(err) => match err {
                UpstreamError::AuthRejected { .. } | UpstreamError::NoXoauth2 { .. } => {
                    Say::CredentialsUnavailable
                }
                UpstreamError::Connect { .. }
                | UpstreamError::Timeout { .. }
                | UpstreamError::Unexpected { .. } => Say::UpstreamUnavailable,
                UpstreamError::Tls { .. } => Say::UpstreamTlsFailed,
                UpstreamError::NoStartTls { .. } => Say::UpstreamNoTls,
                UpstreamError::Lost { .. } | UpstreamError::Protocol { .. } => Say::UpstreamLost,
            },
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
        };
        text.to_string()
    }
}
