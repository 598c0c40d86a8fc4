//! Every reply the relay itself writes to a client, in one table, and the one place where
//! failures become replies.
//!
//! Replies that come from the upstream (MAIL, RCPT and final DATA replies) are passed
//! through instead ([`relayed`]). Keeping our own texts here makes them easy to review
//! against RFC 5321 / RFC 3463 / RFC 4954 and keeps wording consistent. Failures towards
//! the provider ([`Say::for_failure`]) and commands the parser refuses
//! ([`Say::for_command_error`]) are mapped by exhaustive matches, so a new error variant
//! cannot compile without a reply (the rustls `From<&CertificateError> for
//! AlertDescription` idea).

use crate::config::CredentialFailure;
use crate::smtp::reply::{EnhancedCode, Reply};

const fn code(class: u8, subject: u16, detail: u16) -> Option<EnhancedCode> {
    Some(EnhancedCode::new(class, subject, detail))
}

/// A reply of ours; the variants carry (and own) what the text needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Say {
    Greeting {
        hostname: String,
    },
    Helo {
        hostname: String,
        client: String,
    },
    Ehlo {
        lines: Vec<String>,
    },
    Ok,
    ResetOk,
    Bye {
        hostname: String,
    },
    Help,
    Vrfy,
    ExpnDisabled,
    StartTls,
    TlsNotAvailable,
    TlsAlreadyActive,
    AuthSucceeded,
    AuthChallenge {
        challenge: &'static str,
    },
    AuthFailed,
    AuthCancelled,
    AuthBadBase64,
    AuthUnknownMechanism,
    AuthAlreadyDone,
    AuthRequired,
    AuthLineTooLong,
    AuthInTransaction,
    SendHeloFirst,
    NestedMail,
    NeedMail,
    NeedRcpt,
    UnknownCommand,
    Syntax {
        detail: &'static str,
    },
    BadSenderSyntax,
    BadRecipientSyntax,
    CommandLineTooLong,
    UnsupportedParameter {
        keyword: String,
    },
    SenderNotServed {
        sender: String,
    },
    SenderNotOwned {
        sender: String,
        user: String,
    },
    NullSenderNoAsset,
    MessageTooBigDeclared {
        limit: u64,
    },
    MessageTooBig {
        limit: u64,
    },
    DataLineTooLong {
        limit: usize,
    },
    BareLineEnding,
    TooManyRecipients,
    TooManyTransactions,
    Utf8NotSupportedUpstream,
    StartData,
    CredentialsNeedReauthorization {
        asset: String,
        mode: CredentialFailure,
    },
    CredentialsUnavailable,
    UpstreamUnavailable,
    UpstreamLost,
    UpstreamTlsFailed,
    UpstreamNoTls,
    PossibleDuplicate,
    TooManyErrors,
    TooManyJunkCommands,
    CommandTimeout,
    LineNotEnded,
    TooManyConnections,
    ShuttingDown,
    EncryptionRequired,
    AuthLockedOut,
    HeaderFromMissing,
    HeaderBlockTooLarge,
    HeaderFromNotServed {
        from: String,
    },
    /// RFC 5322 §3.6 allows exactly one From: field; readers differ on which of several
    /// they show, so no single one can be checked.
    HeaderFromRepeated,
    /// The From: field is not a plain mailbox list (a group, an encoded word as the
    /// address, unbalanced quotes, bytes that are not UTF-8): nothing to vouch for.
    HeaderFromUnreadable,
    /// An API transport accepted the message; `id` is the provider's message id.
    ApiAccepted {
        id: String,
    },
    /// The spool (memory or temporary file) an API transport keeps the message in failed.
    SpoolFailed,
    ApiRateLimited {
        email: String,
    },
    /// The provider refused the message itself; `message` is its (sanitized) reason.
    ApiRefused {
        message: String,
    },
    ApiDeferred,
    /// An envelope recipient a Bcc header cannot carry unchanged.
    UnwritableRecipient {
        address: String,
    },
    /// To/Cc/Bcc name addresses the client did not give at RCPT.
    UndeclaredRecipients {
        addresses: Vec<String>,
    },
    // Microsoft Graph (issue 13), mapped from `GraphError` by `Say::for_graph`.
    /// No `graph_concurrency` slot for the mailbox in time.
    GraphBusy {
        mailbox: String,
    },
    /// 413 / `ErrorMessageSizeExceeded`.
    GraphTooLarge,
    /// Over one request and `graph_large_messages` is off.
    GraphNeedsLargeMessages {
        limit: u64,
    },
    /// 5xx, timeouts, connection errors (before the request could have arrived).
    GraphFailed,
    // Sending limits (issue 16, `limits/`).
    /// A message the asset's sending limit (or the provider's mark) stops before the
    /// provider sees it; also what a provider's quota refusal becomes (never a bounce).
    SendingLimit {
        hit: crate::limits::LimitHit,
    },
    /// Every `upstream_connections` slot of the asset stayed in use.
    UpstreamConnectionsBusy {
        asset: String,
        limit: usize,
    },
    // The durable spool (issue 15): MAIL and RCPT answered locally, 250 once durable.
    SpoolSenderOk,
    SpoolRecipientOk,
    SpoolQueued {
        id: String,
    },
    /// `[spool] max_bytes` reached.
    SpoolFull,
    /// The spool could not keep the message (I/O error, disk full).
    SpoolUnavailable,
}

impl Say {
    pub fn reply(&self) -> Reply {
        match self {
            Say::Greeting { hostname } => Reply::new(
                220,
                None,
                format!("{hostname} ESMTP smtp-oauth-relay ready"),
            ),
            Say::Helo { hostname, client } => {
                Reply::new(250, None, format!("{hostname} Hello {client}"))
            }
            Say::Ehlo { lines } => Reply::multi(250, None, lines.clone()),
            Say::Ok => Reply::new(250, code(2, 0, 0), "OK"),
            Say::ResetOk => Reply::new(250, code(2, 0, 0), "Reset OK"),
            Say::Bye { hostname } => {
                Reply::new(221, code(2, 0, 0), format!("{hostname} closing connection"))
            }
            Say::Help => Reply::new(
                214,
                code(2, 0, 0),
                "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
            ),
            Say::Vrfy => Reply::new(
                252,
                code(2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            ),
            Say::ExpnDisabled => Reply::new(502, code(5, 5, 1), "EXPN not available"),
            Say::StartTls => Reply::new(220, code(2, 0, 0), "Ready to start TLS"),
            Say::TlsNotAvailable => Reply::new(
                502,
                code(5, 5, 1),
                "STARTTLS not available: no certificate is configured",
            ),
            Say::TlsAlreadyActive => Reply::new(503, code(5, 5, 1), "TLS already active"),
            Say::AuthSucceeded => Reply::new(235, code(2, 7, 0), "Authentication successful"),
            Say::AuthChallenge { challenge } => Reply::new(334, None, *challenge),
            Say::AuthFailed => Reply::new(
                535,
                code(5, 7, 8),
                "Authentication credentials invalid",
            ),
            Say::AuthCancelled => Reply::new(501, code(5, 0, 0), "Authentication cancelled"),
            Say::AuthBadBase64 => Reply::new(
                501,
                code(5, 5, 2),
                "Cannot decode response: invalid base64 or format",
            ),
            Say::AuthUnknownMechanism => Reply::new(
                504,
                code(5, 5, 4),
                "Unrecognized authentication type; use PLAIN or LOGIN",
            ),
            Say::AuthAlreadyDone => Reply::new(503, code(5, 5, 1), "Already authenticated"),
            Say::AuthRequired => Reply::new(530, code(5, 7, 0), "Authentication required"),
            Say::AuthLineTooLong => Reply::new(500, code(5, 5, 6), "Authentication exchange line is too long"),
            Say::AuthInTransaction => Reply::new(
                503,
                code(5, 5, 1),
                "AUTH not allowed during a mail transaction",
            ),
            Say::SendHeloFirst => Reply::new(503, code(5, 5, 1), "Send EHLO or HELO first"),
            Say::NestedMail => Reply::new(503, code(5, 5, 1), "Sender already specified"),
            Say::NeedMail => Reply::new(503, code(5, 5, 1), "Need MAIL command first"),
            Say::NeedRcpt => Reply::new(554, code(5, 5, 1), "No valid recipients"),
            Say::UnknownCommand => Reply::new(500, code(5, 5, 1), "Command not recognized"),
            Say::Syntax { detail } => {
                Reply::new(501, code(5, 5, 4), format!("Syntax error: {detail}"))
            }
            Say::BadSenderSyntax => {
                Reply::new(501, code(5, 1, 7), "Bad sender address syntax")
            }
            Say::BadRecipientSyntax => {
                Reply::new(501, code(5, 1, 3), "Bad recipient address syntax")
            }
            Say::CommandLineTooLong => Reply::new(500, code(5, 5, 6), "Command line too long"),
            Say::UnsupportedParameter { keyword } => Reply::new(
                555,
                code(5, 5, 4),
                format!("Unsupported parameter {keyword}"),
            ),
            Say::SenderNotServed { sender } => Reply::new(
                550,
                code(5, 7, 1),
                format!("<{sender}>: Sender address rejected: no account of this relay sends as this address"),
            ),
            Say::SenderNotOwned { sender, user } => Reply::new(
                553,
                code(5, 7, 1),
                format!("<{sender}>: Sender address rejected: not owned by user {user}"),
            ),
            Say::NullSenderNoAsset => Reply::new(
                550,
                code(5, 7, 1),
                "<>: Null sender needs a user with exactly one asset",
            ),
            Say::MessageTooBigDeclared { limit } => Reply::new(
                552,
                code(5, 3, 4),
                format!("Message size exceeds fixed limit of {limit} bytes"),
            ),
            Say::MessageTooBig { limit } => Reply::new(
                552,
                code(5, 3, 4),
                format!("Message size exceeds fixed limit of {limit} bytes; message not sent"),
            ),
            Say::DataLineTooLong { limit } => Reply::new(
                500,
                code(5, 5, 2),
                format!("Message has a line longer than {limit} bytes (RFC 5321 4.5.3.1.6); message not sent"),
            ),
            Say::BareLineEnding => Reply::new(
                550,
                code(5, 6, 11),
                "Message contains bare CR or LF line endings; use CRLF; message not sent",
            ),
            Say::TooManyRecipients => Reply::new(452, code(4, 5, 3), "Too many recipients"),
            Say::TooManyTransactions => Reply::new(
                421,
                code(4, 7, 0),
                "Too many messages in one session, reconnect to send more",
            ),
            Say::Utf8NotSupportedUpstream => Reply::new(
                555,
                code(5, 6, 7),
                "SMTPUTF8 is not supported by the upstream server",
            ),
            Say::StartData => Reply::new(354, None, "End data with <CR><LF>.<CR><LF>"),
            Say::CredentialsNeedReauthorization { asset, mode } => {
                let text = format!(
                    "Sending account \"{asset}\" needs re-authorization by the relay operator"
                );
                match mode {
                    CredentialFailure::Temporary => Reply::new(454, code(4, 7, 0), text),
                    CredentialFailure::Permanent => Reply::new(535, code(5, 7, 8), text),
                }
            }
            Say::CredentialsUnavailable => Reply::new(
                454,
                code(4, 7, 0),
                "Temporary authentication failure towards the mail provider, try again later",
            ),
            Say::UpstreamUnavailable => Reply::new(
                451,
                code(4, 4, 1),
                "Upstream mail server unavailable, try again later",
            ),
            Say::UpstreamLost => Reply::new(
                451,
                code(4, 4, 2),
                "Connection to the upstream mail server lost, try again later",
            ),
            Say::UpstreamTlsFailed => Reply::new(
                454,
                code(4, 7, 5),
                "TLS towards the upstream mail server failed, try again later",
            ),
            Say::UpstreamNoTls => Reply::new(
                454,
                code(4, 7, 4),
                "Upstream mail server did not offer STARTTLS; refusing to send credentials in the clear",
            ),
            Say::PossibleDuplicate => Reply::new(
                451,
                code(4, 4, 2),
                "Upstream connection lost before it confirmed the message; try again (a duplicate is possible)",
            ),
            Say::TooManyErrors => Reply::new(421, code(4, 7, 0), "Too many errors, closing connection"),
            Say::TooManyJunkCommands => Reply::new(
                421,
                code(4, 7, 0),
                "Too many commands that send no mail, closing connection",
            ),
            Say::CommandTimeout => Reply::new(421, code(4, 4, 2), "Timeout exceeded, closing connection"),
            Say::LineNotEnded => Reply::new(
                421,
                code(4, 4, 2),
                "Overlong line not ended in time, closing connection",
            ),
            Say::TooManyConnections => Reply::new(
                421,
                code(4, 7, 0),
                "Too many connections, try again later",
            ),
            Say::EncryptionRequired => Reply::new(
                538,
                code(5, 7, 11),
                "Encryption required for requested authentication mechanism: use STARTTLS first",
            ),
            Say::AuthLockedOut => Reply::new(
                454,
                code(4, 7, 0),
                "Too many failed logins; try again later",
            ),
            Say::HeaderFromMissing => Reply::new(
                550,
                code(5, 6, 0),
                "Message has no From: header address to check; message not sent",
            ),
            Say::HeaderBlockTooLarge => Reply::new(
                552,
                code(5, 3, 4),
                "Message header block too large to check (over 100 KiB); message not sent",
            ),
            Say::HeaderFromNotServed { from } => Reply::new(
                550,
                code(5, 7, 1),
                format!("From: header address <{from}> is not served by the sending account; message not sent"),
            ),
            Say::HeaderFromRepeated => Reply::new(
                550,
                code(5, 6, 0),
                "Message has more than one From: header; message not sent",
            ),
            Say::HeaderFromUnreadable => Reply::new(
                550,
                code(5, 6, 0),
                "From: header address cannot be read as a plain mailbox list; message not sent",
            ),
            Say::ApiAccepted { id } => Reply::new(250, code(2, 0, 0), format!("OK <{id}>")),
            Say::SpoolFailed => Reply::new(
                451,
                code(4, 3, 0),
                "Local error while keeping the message for sending; try again later",
            ),
            Say::ApiRateLimited { email } => Reply::new(
                451,
                code(4, 7, 0),
                format!("sending rate limit of {email} reached; try again later"),
            ),
            Say::ApiRefused { message } => Reply::new(
                554,
                code(5, 6, 0),
                format!("Message refused by the provider: {message}"),
            ),
            Say::ApiDeferred => Reply::new(
                451,
                code(4, 3, 0),
                "The provider could not take the message now; try again later",
            ),
            Say::UnwritableRecipient { address } => Reply::new(
                550,
                code(5, 1, 3),
                format!("Recipient <{address}> cannot be written in a Bcc header unchanged (the provider takes recipients from the headers); message not sent"),
            ),
            Say::UndeclaredRecipients { addresses } => Reply::new(
                550,
                code(5, 7, 1),
                format!(
                    "To/Cc/Bcc name {} which {} not an envelope recipient (RCPT TO); the message would reach people the client did not ask for; message not sent",
                    addresses.iter().map(|a| format!("<{a}>")).collect::<Vec<_>>().join(", "),
                    if addresses.len() == 1 { "is" } else { "are" }
                ),
            ),
            Say::GraphBusy { mailbox } => Reply::new(
                451,
                code(4, 7, 0),
                format!("Too many messages in flight for {mailbox}; try again later"),
            ),
            Say::GraphTooLarge => Reply::new(
                552,
                code(5, 3, 4),
                "Message too large for Microsoft Graph; message not sent",
            ),
            Say::GraphNeedsLargeMessages { limit } => Reply::new(
                552,
                code(5, 3, 4),
                format!(
                    "Message over {limit} bytes, the most Microsoft Graph takes in one request; \
                     the relay operator can allow larger ones with graph_large_messages = true; message not sent"
                ),
            ),
            Say::GraphFailed => Reply::new(
                451,
                code(4, 4, 2),
                "Microsoft Graph did not accept the message, try again later",
            ),
            Say::SendingLimit { hit } => Reply::new(451, code(4, 7, 0), limits::text(hit)),
            Say::UpstreamConnectionsBusy { asset, limit } => {
                Reply::new(451, code(4, 7, 0), limits::busy_text(asset, *limit))
            }

            Say::SpoolSenderOk => Reply::new(250, code(2, 1, 0), "Sender OK (spooled delivery)"),
            Say::SpoolRecipientOk => Reply::new(250, code(2, 1, 5), "Recipient OK (spooled delivery)"),
            Say::SpoolQueued { id } => Reply::new(250, code(2, 0, 0), format!("queued as {id}")),
            Say::SpoolFull => Reply::new(452, code(4, 3, 1), "Spool full, try again later"),
            Say::SpoolUnavailable => Reply::new(451, code(4, 3, 0), "Cannot keep the message now, try again later"),
            Say::ShuttingDown => Reply::new(
                421,
                code(4, 3, 2),
                "Service shutting down, try again later",
            ),
        }
    }
}

/// An upstream reply as our client should see it: passed through unchanged, except that an
/// enhanced status code is supplied when the upstream sent none, because we advertise
/// ENHANCEDSTATUSCODES and clients may rely on it.
pub fn relayed(mut upstream: Reply) -> Reply {
    if upstream.enhanced.is_none() {
        let class = (upstream.code / 100) as u8;
        if (2..=5).contains(&class) && upstream.code != 354 {
            upstream.enhanced = Some(EnhancedCode::new(class, 0, 0));
        }
    }
    upstream
}

mod failures;
mod limits;

pub use failures::for_spool_failure;
#[cfg(test)]
mod tests;
