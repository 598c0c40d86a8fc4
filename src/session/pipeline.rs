//! Fewer round trips towards the provider (RFC 2920 PIPELINING): the envelope commands a
//! client has already pipelined behind MAIL or RCPT go upstream in the same flight, and
//! their replies wait in the transaction until the session reaches each command.
//!
//! The session still handles every client command in order, through the same code as in
//! lock-step; only the upstream exchange is done ahead. That is why the look-ahead takes
//! only commands whose local checks cannot refuse them (an RCPT without parameters within
//! the recipient limit, a DATA after at least one RCPT): each of them reaches the upstream
//! exactly as it would have one by one, and the client hears each reply in order and with
//! its meaning (one refused RCPT among accepted ones, `554 No valid recipients` for a DATA
//! without any). Anything else ends the look-ahead and is handled when it is read.

use std::collections::VecDeque;

use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::ClientConnection;
use super::Params;
use crate::smtp::command::{parse_command, Command};
use crate::smtp::reply::Reply;
use crate::upstream::pool::refuses_authentication;
use crate::upstream::{Upstream, UpstreamError};

/// Replies to commands sent ahead, oldest first, each with the command line it answers.
#[derive(Default)]
pub(super) struct Prefetched {
    replies: VecDeque<(String, Reply)>,
}

/// What the transaction already knows about the reply to a command.
pub(super) enum Ahead {
    /// The command went upstream in an earlier flight; this is its reply.
    Reply(Reply),
    /// Not sent yet: send it now.
    NotSent,
    /// The command is not the one sent ahead: the upstream's state no longer matches the
    /// client's (cannot happen while the look-ahead and the session agree; if it does, the
    /// connection is given up).
    OutOfStep,
}

impl Prefetched {
    pub(super) fn new(lines: &[String], replies: impl IntoIterator<Item = Reply>) -> Self {
        Prefetched {
            replies: lines.iter().cloned().zip(replies).collect(),
        }
    }

    pub(super) fn take(&mut self, line: &str) -> Ahead {
        match self.replies.front() {
            None => Ahead::NotSent,
            Some((sent, _)) if sent == line => match self.replies.pop_front() {
                Some((_, reply)) => Ahead::Reply(reply),
                None => Ahead::NotSent,
            },
            Some(_) => Ahead::OutOfStep,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.replies.is_empty()
    }

    /// Whether a DATA sent ahead was answered 354: the upstream then waits for a message
    /// and the connection cannot be used for anything else.
    pub(super) fn holds_data_go_ahead(&self) -> bool {
        self.replies
            .iter()
            .any(|(line, reply)| line == "DATA" && reply.code == 354)
    }
}

/// Upstream command lines for the envelope commands the client pipelined after the one
/// being handled: RCPTs (at most `room`, so the recipient limit cannot refuse one of them)
/// and a final DATA (only when the message goes with DATA, not BDAT, and some RCPT is
/// accepted or in the flight: `accepted` counts those already accepted). Empty unless both
/// the config and the upstream allow pipelining.
pub(super) fn followers<IO: AsyncRead + AsyncWrite + Unpin>(
    params: &Params,
    conn: &ClientConnection<IO>,
    upstream: &Upstream,
    room: usize,
    accepted: usize,
) -> Vec<String> {
    let mut lines = Vec::new();
    if !pipelines(params, upstream) {
        return lines;
    }
    let bdat = uses_bdat(params, upstream);
    let mut recipients = 0;
    for line in conn.buffered_lines(params.max_command_line) {
        match parse_command(line) {
            Ok(Command::Rcpt { to, params }) if params.is_empty() && recipients < room => {
                lines.push(format!("RCPT TO:<{to}>"));
                recipients += 1;
            }
            Ok(Command::Data) if !bdat && recipients + accepted > 0 => {
                lines.push("DATA".to_string());
                break;
            }
            _ => break,
        }
    }
    lines
}

/// Whether a transaction's message goes as BDAT chunks.
pub(super) fn uses_bdat(params: &Params, upstream: &Upstream) -> bool {
    params.chunking && upstream.capabilities().chunking
}

/// Whether commands (and BDAT chunks other than the last) may go without waiting for each
/// reply.
pub(super) fn pipelines(params: &Params, upstream: &Upstream) -> bool {
    params.pipelining && upstream.capabilities().pipelining
}

/// Sends `lines` and returns their replies in order: in one flight when the upstream
/// pipelines, else one by one.
pub(super) async fn exchange(
    upstream: &mut Upstream,
    lines: &[String],
) -> Result<Vec<Reply>, UpstreamError> {
    if lines.len() > 1 && upstream.capabilities().pipelining {
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        return upstream.pipeline(&lines).await;
    }
    let mut replies = Vec::with_capacity(lines.len());
    for line in lines {
        replies.push(upstream.command(line).await?);
    }
    Ok(replies)
}

/// Why a kept connection cannot carry the next transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unusable {
    /// Something arrived while it was idle, it is closed, or no answer to RSET or MAIL.
    Dead,
    /// RSET refused: the connection's state is unknown.
    ResetRefused,
    /// MAIL refused for authentication (`pool::refuses_authentication`): the provider
    /// ended the authenticated session, typically because the token expired.
    /// `token_refused` for 530/535, which name the credentials; a 5.7.x policy refusal
    /// says nothing against the token, so it is not thrown away for one.
    AuthenticationRefused { token_refused: bool },
}

impl Unusable {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Unusable::Dead => "closed, or no answer to RSET or MAIL",
            Unusable::ResetRefused => "RSET refused",
            Unusable::AuthenticationRefused { .. } => "MAIL refused for authentication",
        }
    }
}

/// The envelope flight (`lines`, MAIL first) on a kept connection; Err when the connection
/// is not usable, and nothing was committed on it. RSET goes first only when the
/// connection's last transaction did not end (RFC 5321 §4.1.1.4: the reply to the end of
/// data ends it, as does a refused MAIL); otherwise the MAIL itself shows whether the
/// connection is alive.
pub(super) async fn flight_on_reused(
    upstream: &mut Upstream,
    lines: &[String],
) -> Result<Vec<Reply>, Unusable> {
    if !upstream.quiet_since_last_reply().await {
        return Err(Unusable::Dead);
    }
    let reset = upstream.transaction_open();
    let mut replies = if reset {
        let mut with_reset = Vec::with_capacity(lines.len() + 1);
        with_reset.push("RSET".to_string());
        with_reset.extend_from_slice(lines);
        if upstream.capabilities().pipelining {
            exchange(upstream, &with_reset).await
        } else {
            // Lock-step: the MAIL waits until RSET is known to have worked.
            let reset = upstream.command("RSET").await.map_err(|_| Unusable::Dead)?;
            if !reset.is_positive() {
                return Err(Unusable::ResetRefused);
            }
            exchange(upstream, lines).await.map(|mut replies| {
                replies.insert(0, reset);
                replies
            })
        }
        .map_err(|_| Unusable::Dead)?
    } else {
        exchange(upstream, lines)
            .await
            .map_err(|_| Unusable::Dead)?
    };
    if reset {
        if replies.is_empty() {
            return Err(Unusable::Dead);
        }
        let reset = replies.remove(0);
        if !reset.is_positive() {
            return Err(Unusable::ResetRefused);
        }
    }
    let mail = replies.first().ok_or(Unusable::Dead)?;
    if refuses_authentication(mail) {
        return Err(Unusable::AuthenticationRefused {
            token_refused: matches!(mail.code, 530 | 535),
        });
    }
    // 421: the server is closing this session (idle too long, shutting down); a fresh
    // connection may well be accepted.
    if mail.code == 421 {
        return Err(Unusable::Dead);
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16) -> Reply {
        Reply::new(code, None, "x")
    }

    #[test]
    fn replies_sent_ahead_are_taken_in_order_and_only_for_their_command() {
        let lines = ["RCPT TO:<a@x>".to_string(), "DATA".to_string()];
        let mut ahead = Prefetched::new(&lines, [reply(250), reply(354)]);
        assert!(ahead.holds_data_go_ahead());
        assert!(matches!(ahead.take("DATA"), Ahead::OutOfStep));
        assert!(matches!(ahead.take("RCPT TO:<a@x>"), Ahead::Reply(r) if r.code == 250));
        assert!(matches!(ahead.take("DATA"), Ahead::Reply(r) if r.code == 354));
        assert!(ahead.is_empty());
        assert!(matches!(ahead.take("DATA"), Ahead::NotSent));
        let refused = Prefetched::new(&lines, [reply(550), reply(554)]);
        assert!(!refused.holds_data_go_ahead());
    }
}
