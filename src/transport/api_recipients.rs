//! What every API transport does before it sends (Gmail API, Microsoft Graph): the APIs
//! deliver to the To/Cc/Bcc headers, not to an envelope, so the spooled message's header
//! block is compared with the envelope ([`crate::smtp::recipients`]). Envelope recipients
//! the headers do not name go into a `Bcc:` field the relay inserts (the returned prefix);
//! header-only recipients refuse the message unless the asset says
//! `header_recipients = "deliver"`.

use super::body::BodySpool;
use super::gmail_api::MAX_HEADER_BLOCK;
use super::{Envelope, TransportError};
use crate::config::{Asset, HeaderRecipients};
use crate::logsafe::Untrusted;
use crate::smtp::recipients;

/// The bytes to send in front of the spooled message (an inserted `Bcc:`, or nothing).
pub fn recipients_prefix(
    asset: &Asset,
    envelope: &Envelope,
    spool: &mut BodySpool,
) -> Result<Vec<u8>, TransportError> {
    let head = spool.head(MAX_HEADER_BLOCK + 4)?;
    let headers = match memchr::memmem::find(&head, b"\r\n\r\n").map(|at| at + 4) {
        Some(end) => head.get(..end).unwrap_or(&head),
        // The API would read recipients we cannot see.
        None if head.len() > MAX_HEADER_BLOCK => return Err(TransportError::HeaderBlockTooLarge),
        None => &head,
    };
    let check = recipients::compare(&envelope.recipients, headers);
    if !check.undeclared.is_empty() {
        match asset.header_recipients {
            HeaderRecipients::Refuse => {
                return Err(TransportError::UndeclaredRecipients {
                    addresses: check.undeclared,
                })
            }
            HeaderRecipients::Deliver => {
                tracing::warn!(
                    asset = %asset.name,
                    recipients = %Untrusted(&check.undeclared.join(", ")),
                    "To/Cc/Bcc name recipients that are not in the envelope; sending anyway (header_recipients = \"deliver\")"
                );
            }
        }
    }
    if !check.missing.is_empty() {
        tracing::debug!(asset = %asset.name, added = check.missing.len(), "envelope recipients added in a Bcc header");
    }
    recipients::bcc_field(&check.missing)
        .map_err(|address| TransportError::UnwritableRecipient { address })
}
