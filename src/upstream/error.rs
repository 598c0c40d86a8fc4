//! What can go wrong on the provider leg, and how to classify it: a refusal of the
//! credentials (worth a fresh token, then an operator) versus trouble with TLS or the
//! connection. Turning these into client replies is not done here (see `error`/`replies`).

use crate::smtp::reply::Reply;
use crate::smtp::xoauth2::ErrorChallenge;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("TLS with {target} failed: {reason}")]
    Tls { target: String, reason: String },
    #[error("{target} does not offer STARTTLS; credentials are never sent without TLS")]
    NoStartTls { target: String },
    #[error("{target} does not offer AUTH XOAUTH2 (it offers: {offered})")]
    NoXoauth2 { target: String, offered: String },
    #[error("{target} refused the access token: {reply}{}", challenge.as_ref().map(|c| format!(" (challenge: {c})")).unwrap_or_default())]
    AuthRejected {
        target: String,
        reply: Reply,
        challenge: Option<ErrorChallenge>,
    },
    #[error("{target} answered \"{reply}\" to {step}")]
    Unexpected {
        target: String,
        step: Step,
        reply: Reply,
    },
    #[error("connection to {target} lost: {reason}")]
    Lost { target: String, reason: String },
    #[error("{target} did not answer within {secs} s")]
    Timeout { target: String, secs: u64 },
    #[error("{target} sent a malformed reply: {reason}")]
    Protocol { target: String, reason: String },
}

/// Where in the connection setup an upstream answered something unexpected; callers
/// match on it (STARTTLS trouble is logged as needing attention), so it is a type, not text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Greeting,
    Ehlo,
    StartTls,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Greeting => "the greeting",
            Step::Ehlo => "EHLO",
            Step::StartTls => "STARTTLS",
        })
    }
}

impl UpstreamError {
    /// A refusal of the credentials themselves (as opposed to a temporary 4xx or trouble
    /// with the connection).
    pub fn is_credential_rejection(&self) -> bool {
        match self {
            UpstreamError::AuthRejected {
                reply, challenge, ..
            } => challenge.is_some() || reply.code == 535,
            _ => false,
        }
    }

    /// The connection could not be secured (no STARTTLS, STARTTLS refused, a failed
    /// handshake). Like a refused credential, this rarely fixes itself: an operator has to
    /// look at the asset's upstream settings or the provider's certificate.
    pub fn is_tls_trouble(&self) -> bool {
        matches!(
            self,
            UpstreamError::NoStartTls { .. }
                | UpstreamError::Tls { .. }
                | UpstreamError::Unexpected {
                    step: Step::StartTls,
                    ..
                }
        )
    }
}
