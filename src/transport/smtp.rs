//! The SMTP transport's side of the seam: MAIL FROM with the parameters the upstream
//! offers, the check of a kept connection before it carries a transaction, and the end of
//! data (terminator, then the verdict). The dialogue itself is `upstream::SmtpClient`.

use super::{MailRequest, TransportError};
use crate::smtp::reply::Reply;
use crate::upstream::pool::refuses_authentication;
use crate::upstream::Upstream;

/// The MAIL FROM line for `request`, with only the parameters the upstream offered.
pub fn mail_line(upstream: &Upstream, request: &MailRequest<'_>) -> String {
    let capabilities = upstream.capabilities();
    let mut line = format!("MAIL FROM:<{}>", request.from);
    if let Some(size) = request.size {
        if capabilities.size.is_some() {
            line.push_str(&format!(" SIZE={size}"));
        }
    }
    if request.eight_bit && capabilities.eight_bit_mime {
        line.push_str(" BODY=8BITMIME");
    }
    // The session refuses SMTPUTF8 before asking when the upstream lacks it.
    if request.smtputf8 && capabilities.smtputf8 {
        line.push_str(" SMTPUTF8");
    }
    line
}

pub async fn mail(
    upstream: &mut Upstream,
    request: &MailRequest<'_>,
) -> Result<Reply, TransportError> {
    let line = mail_line(upstream, request);
    Ok(upstream.command(&line).await?)
}

/// The terminator, then the upstream's verdict. A failed write of the terminator is not a
/// possible duplicate: the provider never saw it (a TLS record arrives whole or is
/// useless, and the dot's is the last one), so it discards the partial message like any
/// other cut-off DATA. A verdict that never comes after it is.
pub async fn finish(upstream: &mut Upstream) -> Result<Reply, TransportError> {
    upstream.send_terminator().await?;
    upstream
        .final_reply()
        .await
        .map_err(|err| TransportError::SmtpVerdictLost(Box::new(err)))
}

/// Why a kept connection cannot carry the next transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// No answer to RSET or MAIL: the connection is dead.
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
    pub fn as_str(self) -> &'static str {
        match self {
            Unusable::Dead => "no answer to RSET or MAIL",
            Unusable::ResetRefused => "RSET refused",
            Unusable::AuthenticationRefused { .. } => "MAIL refused for authentication",
        }
    }
}

/// RSET and MAIL FROM on a kept connection; Err when the connection is not usable.
pub async fn mail_on_reused(
    upstream: &mut Upstream,
    request: &MailRequest<'_>,
) -> Result<Reply, Unusable> {
    let mail = mail_line(upstream, request);
    let reply = if upstream.capabilities().pipelining {
        let replies = upstream
            .pipeline(&["RSET", &mail])
            .await
            .map_err(|_| Unusable::Dead)?;
        let mut replies = replies.into_iter();
        let reset = replies.next().ok_or(Unusable::Dead)?;
        if !reset.is_positive() {
            return Err(Unusable::ResetRefused);
        }
        replies.next().ok_or(Unusable::Dead)?
    } else {
        let reset = upstream.command("RSET").await.map_err(|_| Unusable::Dead)?;
        if !reset.is_positive() {
            return Err(Unusable::ResetRefused);
        }
        upstream.command(&mail).await.map_err(|_| Unusable::Dead)?
    };
    if refuses_authentication(&reply) {
        return Err(Unusable::AuthenticationRefused {
            token_refused: matches!(reply.code, 530 | 535),
        });
    }
    Ok(reply)
}
