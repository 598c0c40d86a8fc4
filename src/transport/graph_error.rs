//! What Microsoft Graph's answers mean for a message (issue 13): Graph's JSON error body
//! (`{"error": {"code", "message"}}`) read defensively, and every non-2xx status sorted
//! into a [`GraphError`] that `replies.rs` turns into the SMTP reply. The permission a
//! 403 points at is named here, so the log line tells the operator what to grant.

use crate::oauth::http::provider_text;
use crate::oauth::token::TokenError;

/// The longest `Retry-After` believed (seconds); the client retries on its own schedule
/// anyway, this only keeps a log line sane.
const MAX_RETRY_AFTER_SECS: u64 = 3600;

/// Why Graph did not take a message; each maps to one reply in `replies.rs`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// No access token (the token endpoint refused or is down).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// 401 even with a freshly refreshed token.
    #[error("Microsoft Graph refused the access token for {mailbox} (HTTP 401 {code}: {message})")]
    Unauthorized {
        mailbox: String,
        code: String,
        message: String,
    },
    /// 403: the token lacks a permission (or admin consent, or the application access
    /// policy leaves this mailbox out).
    #[error(
        "Microsoft Graph denied {mailbox} (HTTP 403 {code}: {message}); the {kind} needs the \
         permission {permission}{consent}"
    )]
    Forbidden {
        mailbox: String,
        code: String,
        message: String,
        permission: &'static str,
        kind: &'static str,
        consent: &'static str,
    },
    /// 429, or 503 with `Retry-After`: throttled for this mailbox.
    #[error("Microsoft Graph throttled {mailbox} (HTTP {status}, retry after {retry_after:?} s)")]
    Throttled {
        mailbox: String,
        status: u16,
        retry_after: Option<u64>,
    },
    /// 413 or `ErrorMessageSizeExceeded`.
    #[error("Microsoft Graph refused the message as too large (HTTP {status} {code}: {message})")]
    TooLarge {
        status: u16,
        code: String,
        message: String,
    },
    /// Over the single-request threshold, and the asset does not allow the draft path.
    #[error(
        "the message ({size} bytes) is over {limit} bytes, the most Microsoft Graph takes in one \
         request, and graph_large_messages is off"
    )]
    NeedsLargeMessages { size: u64, limit: u64 },
    /// 400: Graph refuses this message; sending it again will not help.
    #[error("Microsoft Graph rejected the message (HTTP 400 {code}: {message})")]
    Rejected { code: String, message: String },
    /// Any other status (5xx without Retry-After, unexpected codes).
    #[error("Microsoft Graph failed (HTTP {status} {code}: {message})")]
    Failed {
        status: u16,
        code: String,
        message: String,
    },
    /// No answer: timeout, refused or broken connection. `possible_duplicate` when the
    /// request that sends the mail may have reached Graph.
    #[error("Microsoft Graph request ({step}) failed: {reason}")]
    Transport {
        step: &'static str,
        reason: String,
        possible_duplicate: bool,
    },
    /// No request slot for the mailbox in time (`graph_concurrency`).
    #[error("no Microsoft Graph request slot for {mailbox} within {secs} s (graph_concurrency)")]
    Busy { mailbox: String, secs: u64 },
    /// The relay could not read its own spool or parse the message for the draft path.
    #[error("cannot prepare the message for Microsoft Graph: {reason}")]
    Local { reason: String },
}

impl GraphError {
    /// Whether the client should hear that a duplicate is possible.
    pub fn possible_duplicate(&self) -> bool {
        matches!(
            self,
            GraphError::Transport {
                possible_duplicate: true,
                ..
            }
        )
    }

    /// A short outcome label for the per-message log line and metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            GraphError::Token(_) => "token",
            GraphError::Unauthorized { .. } => "unauthorized",
            GraphError::Forbidden { .. } => "forbidden",
            GraphError::Throttled { .. } => "throttled",
            GraphError::TooLarge { .. } | GraphError::NeedsLargeMessages { .. } => "too_large",
            GraphError::Rejected { .. } => "rejected",
            GraphError::Failed { .. } => "provider_error",
            GraphError::Transport {
                possible_duplicate: true,
                ..
            } => "possible_duplicate",
            GraphError::Transport { .. } => "unreachable",
            GraphError::Busy { .. } => "busy",
            GraphError::Local { .. } => "local_error",
        }
    }
}

/// Graph's error body, as far as it can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphErrorBody {
    pub code: String,
    pub message: String,
}

/// Reads `{"error": {"code": …, "message": …}}`; anything else becomes a description of
/// the body's size (never its text, which could be anything).
pub fn parse_error_body(body: &[u8]) -> GraphErrorBody {
    #[derive(serde::Deserialize)]
    struct Outer {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Outer>(body) {
        Ok(outer) => GraphErrorBody {
            code: provider_text(&outer.error.code),
            message: provider_text(&outer.error.message),
        },
        Err(_) => GraphErrorBody {
            code: "unknown".to_string(),
            message: format!("{} bytes that are not a Graph error", body.len()),
        },
    }
}

/// `Retry-After` in seconds (an HTTP date is not believed).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(secs.min(MAX_RETRY_AFTER_SECS))
}

/// Which request a status came from: the permission a 403 points at depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphStep {
    /// `sendMail` (Mail.Send).
    SendMail,
    /// Draft, attachments, upload session (Mail.ReadWrite).
    Draft,
    /// Sending a draft (Mail.Send).
    SendDraft,
}

impl GraphStep {
    pub fn label(self) -> &'static str {
        match self {
            GraphStep::SendMail => "sendMail",
            GraphStep::Draft => "draft",
            GraphStep::SendDraft => "send draft",
        }
    }
}

/// A non-2xx answer as a [`GraphError`] (401 is classified too, for the caller that has
/// already used its one retry).
pub fn classify(
    mailbox: &str,
    step: GraphStep,
    app_only: bool,
    status: u16,
    retry: Option<u64>,
    body: &GraphErrorBody,
) -> GraphError {
    let code = body.code.clone();
    let message = body.message.clone();
    let too_large = code.eq_ignore_ascii_case("ErrorMessageSizeExceeded");
    match status {
        413 => GraphError::TooLarge {
            status,
            code,
            message,
        },
        _ if too_large => GraphError::TooLarge {
            status,
            code,
            message,
        },
        429 => GraphError::Throttled {
            mailbox: mailbox.to_string(),
            status,
            retry_after: retry,
        },
        503 if retry.is_some() => GraphError::Throttled {
            mailbox: mailbox.to_string(),
            status,
            retry_after: retry,
        },
        401 => GraphError::Unauthorized {
            mailbox: mailbox.to_string(),
            code,
            message,
        },
        403 => GraphError::Forbidden {
            mailbox: mailbox.to_string(),
            code,
            message,
            permission: match step {
                GraphStep::SendMail | GraphStep::SendDraft => "Mail.Send",
                GraphStep::Draft => "Mail.ReadWrite (graph_large_messages)",
            },
            kind: if app_only {
                "app (application permission)"
            } else {
                "user (delegated permission)"
            },
            consent: if app_only {
                " with admin consent, and an application access policy / RBAC scope that includes \
                 the mailbox"
            } else {
                "; run `authorize` again after adding it"
            },
        },
        400 => GraphError::Rejected { code, message },
        _ => GraphError::Failed {
            status,
            code,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str) -> GraphErrorBody {
        parse_error_body(
            format!(r#"{{"error":{{"code":"{code}","message":"m\r\nforged"}}}}"#).as_bytes(),
        )
    }

    #[test]
    fn statuses_are_classified() {
        let c = |status, retry, code| {
            classify(
                "a@x.org",
                GraphStep::SendMail,
                true,
                status,
                retry,
                &body(code),
            )
        };
        assert!(matches!(c(413, None, "x"), GraphError::TooLarge { .. }));
        assert!(matches!(
            c(400, None, "ErrorMessageSizeExceeded"),
            GraphError::TooLarge { .. }
        ));
        assert!(matches!(c(429, None, "x"), GraphError::Throttled { .. }));
        assert!(matches!(c(503, Some(5), "x"), GraphError::Throttled { .. }));
        assert!(matches!(c(503, None, "x"), GraphError::Failed { .. }));
        assert!(matches!(c(500, None, "x"), GraphError::Failed { .. }));
        assert!(matches!(c(401, None, "x"), GraphError::Unauthorized { .. }));
        assert!(matches!(
            c(400, None, "ErrorInvalidRecipients"),
            GraphError::Rejected { .. }
        ));
        let forbidden = c(403, None, "ErrorAccessDenied");
        let text = forbidden.to_string();
        assert!(
            text.contains("Mail.Send") && text.contains("admin consent"),
            "{text}"
        );
        assert!(!text.contains('\n') && !text.contains('\r'), "{text}");
    }

    #[test]
    fn odd_bodies_are_described_not_repeated() {
        let odd = parse_error_body(b"<html>secret-ish</html>");
        assert_eq!(odd.code, "unknown");
        assert!(!odd.message.contains("secret"));
    }

    /// Every Graph failure's reply (the mapping lives in `replies.rs`).
    #[test]
    fn graph_failures_map_to_replies() {
        use crate::config::CredentialFailure;
        use crate::replies::Say;
        let wire = |say: Say| String::from_utf8_lossy(&say.reply().to_wire()).into_owned();
        let temporary = CredentialFailure::Temporary;
        let cases = [
            (
                GraphError::Unauthorized {
                    mailbox: "m@x.org".into(),
                    code: "InvalidAuthenticationToken".into(),
                    message: "m".into(),
                },
                "454 4.7.0 Sending account \"a\" needs re-authorization by the relay operator\r\n",
            ),
            (
                GraphError::Throttled {
                    mailbox: "m@x.org".into(),
                    status: 429,
                    retry_after: Some(3),
                },
                "451 4.7.0 sending rate limit of m@x.org reached; try again later\r\n",
            ),
            (
                GraphError::TooLarge {
                    status: 413,
                    code: "x".into(),
                    message: "m".into(),
                },
                "552 5.3.4 Message too large for Microsoft Graph; message not sent\r\n",
            ),
            (
                GraphError::Rejected {
                    code: "ErrorInvalidRecipients".into(),
                    message: "At least one recipient isn't valid.".into(),
                },
                "554 5.6.0 Message refused by the provider: At least one recipient isn't valid.\r\n",
            ),
            (
                GraphError::Failed {
                    status: 500,
                    code: "x".into(),
                    message: "m".into(),
                },
                "451 4.4.2 Microsoft Graph did not accept the message, try again later\r\n",
            ),
            (
                GraphError::Transport {
                    step: "sendMail",
                    reason: "reset".into(),
                    possible_duplicate: true,
                },
                "451 4.4.2 Upstream connection lost before it confirmed the message; try again (a duplicate is possible)\r\n",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(
                wire(Say::for_graph(&error, "a", temporary)),
                expected,
                "{error}"
            );
        }
        let needs = wire(Say::for_graph(
            &GraphError::NeedsLargeMessages { size: 5, limit: 4 },
            "a",
            temporary,
        ));
        assert!(
            needs.starts_with("552 5.3.4 ") && needs.contains("graph_large_messages"),
            "{needs}"
        );
    }
}
