//! What can go wrong on a transport once a transaction is under way, whatever the
//! transport. The session logs these and `replies` turns them into client replies
//! ([`Say::for_transport_failure`](crate::replies::Say::for_transport_failure)); nothing
//! here knows a reply text.

use crate::upstream::UpstreamError;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The SMTP upstream failed before the message was complete there (a failed command,
    /// a failed write, or the terminator not sent): the provider discards what it had.
    #[error(transparent)]
    Smtp(Box<UpstreamError>),
    /// The SMTP upstream had the whole message (the terminator went out) and then gave no
    /// verdict: delivered or not, nobody knows.
    #[error("{0} after the end of data")]
    SmtpVerdictLost(Box<UpstreamError>),
    /// The relay could not keep the message it was given (the temporary spool file).
    #[error("cannot spool the message: {0}")]
    Spool(#[from] std::io::Error),
    /// The message is larger than the transport accepts; nothing was sent.
    #[error("message of at least {size} bytes is over the transport's limit of {limit} bytes")]
    TooBig { size: u64, limit: u64 },
    /// The message names To/Cc/Bcc addresses the client did not give as recipients, on a
    /// transport that delivers to the headers (`header_recipients = "refuse"`).
    #[error("the header names recipients that are not in the envelope: {}", addresses.join(", "))]
    UndeclaredRecipients { addresses: Vec<String> },
    /// An envelope recipient that no `Bcc:` spelling carries unchanged (a header reader
    /// would decode it into another address); nothing was sent.
    #[error("recipient {address} cannot be written in a Bcc header unchanged")]
    UnwritableRecipient { address: String },
    /// The header block is too large to find every recipient in; nothing was sent.
    #[error("the header block is too large to read its recipients")]
    HeaderBlockTooLarge,
    /// A fresh access token (after the provider refused one) could not be had.
    #[error(transparent)]
    Token(#[from] crate::oauth::token::TokenError),
    /// A provider's HTTP API refused or failed the message (see [`ApiFailure`]).
    #[error("{0}")]
    Api(#[from] ApiFailure),
    /// Microsoft Graph did not take the message (issue 13; its own mapping in
    /// `Say::for_graph`: the draft path's size rules and slots have no SMTP equivalent).
    #[error(transparent)]
    Graph(#[from] super::graph_error::GraphError),
}

/// How an HTTP mail API (Gmail API, Microsoft Graph) failed a message, classified once so
/// the reply mapping is the same for every API transport.
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    /// The access token was refused, also after one fresh token (or the body could not be
    /// replayed): only an operator can fix it.
    #[error("{api} refused the access token: {message}")]
    Unauthorized { api: &'static str, message: String },
    /// The token lacks the scope the API needs (operator must re-authorize with `scope`).
    #[error("{api} refused the request for lack of permission (needs scope {scope}): {message}")]
    Forbidden {
        api: &'static str,
        scope: String,
        message: String,
    },
    /// The mailbox's sending rate limit.
    #[error("{api} rate limit reached for {email}: {message}")]
    RateLimited {
        api: &'static str,
        email: String,
        message: String,
        /// The daily quota (`dailyLimitExceeded`), not the per-minute rate: the mailbox
        /// is left alone for a day rather than a minute (issue 16).
        daily: bool,
    },
    /// The provider refused this message for good (malformed, invalid argument).
    #[error("{api} refused the message: {message}")]
    Invalid { api: &'static str, message: String },
    /// The provider refused for now (a failed precondition that often clears).
    #[error("{api} deferred the message: {message}")]
    Deferred { api: &'static str, message: String },
    /// A 5xx, a timeout or a broken connection before the whole message was sent: the
    /// provider cannot have accepted it.
    #[error("{api} unavailable: {message}")]
    Unavailable { api: &'static str, message: String },
    /// The whole message was sent and then the answer was lost (timeout, broken
    /// connection): it may have been accepted.
    #[error("{api} did not answer after the whole message was sent: {message}")]
    VerdictLost { api: &'static str, message: String },
}

impl TransportError {
    /// Whether the provider may have accepted the message although the client is not
    /// told so (the `possible_duplicate` outcome).
    pub fn possible_duplicate(&self) -> bool {
        match self {
            TransportError::Graph(error) => error.possible_duplicate(),
            _ => matches!(
                self,
                TransportError::SmtpVerdictLost(_)
                    | TransportError::Api(ApiFailure::VerdictLost { .. })
            ),
        }
    }

    /// A refusal by the relay's own rules (nothing was sent): counted as policy.
    pub fn is_policy(&self) -> bool {
        matches!(
            self,
            TransportError::TooBig { .. }
                | TransportError::UndeclaredRecipients { .. }
                | TransportError::HeaderBlockTooLarge
                | TransportError::Graph(super::graph_error::GraphError::NeedsLargeMessages { .. })
                | TransportError::UnwritableRecipient { .. }
        )
    }

    /// Whether only an operator can fix it (the asset's health is marked).
    pub fn needs_operator(&self) -> bool {
        match self {
            TransportError::Api(ApiFailure::Unauthorized { .. } | ApiFailure::Forbidden { .. }) => {
                true
            }
            TransportError::Token(err) => err.needs_operator(),
            TransportError::Graph(
                super::graph_error::GraphError::Unauthorized { .. }
                | super::graph_error::GraphError::Forbidden { .. },
            ) => true,
            TransportError::Graph(super::graph_error::GraphError::Token(err)) => {
                err.needs_operator()
            }
            _ => false,
        }
    }
}
