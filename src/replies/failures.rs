//! The one place where failures become replies: failures towards the provider
//! ([`Say::for_failure`], [`Say::for_transport_failure`], [`Say::for_graph`]), commands the
//! parser refuses ([`Say::for_command_error`]) and the spool's intake
//! ([`for_spool_failure`]). Exhaustive matches, so a new error variant cannot compile
//! without a reply. The texts are in the table of `replies.rs`.

use super::Say;
use crate::config::CredentialFailure;
use crate::error::RelayError;
use crate::smtp::command::CommandError;
use crate::transport::graph_error::GraphError;
use crate::transport::{ApiFailure, TransportError};
use crate::upstream::UpstreamError;

impl Say {
    /// The reply for a client whose transaction needed `asset` and could not get an
    /// upstream. Reviewed against RFC 5321's rule that 4xx keeps the mail in the client's
    /// queue: only credential refusals may bounce, and only when the operator chose
    /// `credential_failure = "permanent"`.
    pub fn for_failure(error: &RelayError, asset: &str, mode: CredentialFailure) -> Say {
        if error.needs_operator() {
            // A store or file the relay cannot use says nothing about the mail: it stays
            // queued whatever `credential_failure` says.
            let mode = match error {
                RelayError::Token(err) if !err.is_credential_refusal() => {
                    CredentialFailure::Temporary
                }
                _ => mode,
            };
            return Say::CredentialsNeedReauthorization {
                asset: asset.to_string(),
                mode,
            };
        }
        match error {
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
            RelayError::Transport(err) => Say::for_transport_failure(err, asset, mode),
        }
    }

    /// The reply for a transaction whose transport failed after the message began (see
    /// [`TransportError`]): never 2xx, 4xx whenever the provider may take it later.
    pub fn for_transport_failure(
        error: &TransportError,
        asset: &str,
        mode: CredentialFailure,
    ) -> Say {
        match error {
            TransportError::Token(err) => {
                Say::for_failure(&RelayError::Token(err.clone()), asset, mode)
            }
            TransportError::HeaderBlockTooLarge => Say::HeaderBlockTooLarge,
            TransportError::UnwritableRecipient { address } => Say::UnwritableRecipient {
                address: address.clone(),
            },
            TransportError::Smtp(_) => Say::UpstreamLost,
            TransportError::SmtpVerdictLost(_) => Say::PossibleDuplicate,
            TransportError::Spool(_) => Say::SpoolFailed,
            TransportError::TooBig { limit, .. } => Say::MessageTooBig { limit: *limit },
            TransportError::UndeclaredRecipients { addresses } => Say::UndeclaredRecipients {
                addresses: addresses.clone(),
            },
            TransportError::Api(failure) => match failure {
                ApiFailure::Unauthorized { .. } => Say::CredentialsNeedReauthorization {
                    asset: asset.to_string(),
                    mode,
                },
                // A missing scope is fixed by re-authorizing; the mail waits meanwhile.
                ApiFailure::Forbidden { .. } => Say::CredentialsNeedReauthorization {
                    asset: asset.to_string(),
                    mode: CredentialFailure::Temporary,
                },
                ApiFailure::RateLimited { email, .. } => Say::ApiRateLimited {
                    email: email.clone(),
                },
                ApiFailure::Invalid { message, .. } => Say::ApiRefused {
                    message: crate::oauth::http::provider_text(message),
                },
                ApiFailure::Deferred { .. } => Say::ApiDeferred,
                ApiFailure::Unavailable { .. } => Say::UpstreamLost,
                ApiFailure::VerdictLost { .. } => Say::PossibleDuplicate,
            },
            TransportError::Graph(error) => Say::for_graph(error, asset, mode),
        }
    }

    /// The reply for a message Microsoft Graph did not take (issue 13): 401 after the one
    /// retry and 403 are the operator's (454); throttling and busy slots 451 4.7.0; size
    /// 552 5.3.4; 400 554 5.6.0 with Graph's message; anything without an answer 451
    /// 4.4.2, saying so when a duplicate is possible. Never a 2xx.
    pub fn for_graph(error: &GraphError, asset: &str, mode: CredentialFailure) -> Say {
        match error {
            GraphError::Token(err) => {
                Say::for_failure(&RelayError::Token(err.clone()), asset, mode)
            }
            // Only an operator can fix these; the mail waits meanwhile (issue 13: 454).
            GraphError::Unauthorized { .. } | GraphError::Forbidden { .. } => {
                Say::CredentialsNeedReauthorization {
                    asset: asset.to_string(),
                    mode: CredentialFailure::Temporary,
                }
            }
            GraphError::Throttled { mailbox, .. } => Say::ApiRateLimited {
                email: mailbox.clone(),
            },
            GraphError::Busy { mailbox, .. } => Say::GraphBusy {
                mailbox: mailbox.clone(),
            },
            GraphError::TooLarge { .. } => Say::GraphTooLarge,
            GraphError::NeedsLargeMessages { limit, .. } => {
                Say::GraphNeedsLargeMessages { limit: *limit }
            }
            GraphError::Rejected { message, .. } => Say::ApiRefused {
                message: message.clone(),
            },
            GraphError::Transport {
                possible_duplicate: true,
                ..
            } => Say::PossibleDuplicate,
            GraphError::Transport { .. } | GraphError::Failed { .. } => Say::GraphFailed,
            GraphError::Local { .. } => Say::SpoolFailed,
        }
    }

    /// The reply for a command line the parser refused (`smtp` stays free of reply texts).
    pub fn for_command_error(error: &CommandError) -> Say {
        match error {
            CommandError::Unrecognized => Say::UnknownCommand,
            CommandError::Syntax(detail) => Say::Syntax { detail },
            CommandError::BadSenderAddress => Say::BadSenderSyntax,
            CommandError::BadRecipientAddress => Say::BadRecipientSyntax,
        }
    }
}

/// The reply when the spool cannot keep a message (the one mapping for intake failures).
pub fn for_spool_failure(error: &crate::spool::IntakeError) -> Say {
    match error {
        crate::spool::IntakeError::Full { .. } => Say::SpoolFull,
        crate::spool::IntakeError::Io(_) => Say::SpoolUnavailable,
    }
}
