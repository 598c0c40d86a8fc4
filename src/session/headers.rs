//! The header block of a message: held back until complete (the header gate), read once
//! for the Message-ID, and checked against the header-From policy before anything of the
//! message reaches the upstream.

use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;
use crate::config::{Asset, HeaderFromPolicy};
use crate::logsafe::Untrusted;
use crate::replies::Say;
use crate::senders::SenderMap;
use crate::smtp::address::{self, CanonicalAddress};

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    /// Reads the header block once: the Message-ID for the log, and the header-From
    /// policy (every From: address must be served).
    pub(super) fn inspect_headers(
        &self,
        headers: &[u8],
        complete: bool,
        asset: &Asset,
    ) -> (Option<Say>, Option<String>) {
        let message_id = message_id(headers);
        let refusal = header_from_refusal(
            headers,
            complete,
            &asset.name,
            &self.relay.config.senders,
            self.params.header_from,
        );
        (refusal, message_id)
    }
}

/// The Message-ID for the log: the msg-id of the first Message-ID field, without its
/// angle brackets (RFC 5322 §3.6.4), read straight from the raw header block. Only this one
/// field is looked at (a full header parse per message was a hot spot in the profile);
/// a value without brackets is logged as its first word.
fn message_id(headers: &[u8]) -> Option<String> {
    let fields = address::header_fields(headers, "Message-ID");
    let value = fields.first()?.trim();
    let id = match value.strip_prefix('<') {
        Some(rest) => rest.split_once('>').map_or(rest, |(id, _)| id),
        None => value.split_ascii_whitespace().next().unwrap_or(""),
    };
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// The header-From policy: the refusal for a message from `asset` whose header block is
/// `headers` (`complete`: its end was seen), or None to send it. The From fields are read
/// from the raw header block, not from mail-parser: it returns only the last From field,
/// and reduces spellings such as `"boss"@example.com` to something that matched a domain
/// claim. Every From field is read as an RFC 5322 mailbox list and each address looked up
/// by its canonical form, the same form the envelope sender is looked up by.
pub(super) fn header_from_refusal(
    headers: &[u8],
    complete: bool,
    asset: &str,
    senders: &SenderMap,
    policy: HeaderFromPolicy,
) -> Option<Say> {
    if policy == HeaderFromPolicy::Off {
        return None;
    }
    let enforce = policy == HeaderFromPolicy::Enforce;
    // A From: hidden behind 100 KiB of padding must not slip through.
    if !complete {
        tracing::warn!(asset = %asset, "header block too large to check the From: address");
        return enforce.then_some(Say::HeaderBlockTooLarge);
    }
    let fields = address::header_fields(headers, "From");
    if fields.len() > 1 {
        // Readers differ on which of several From fields they show.
        tracing::warn!(
            asset = %asset,
            fields = fields.len(),
            policy = ?policy,
            "message has more than one From: header"
        );
        if enforce {
            return Some(Say::HeaderFromRepeated);
        }
    }
    let mut addresses: Vec<CanonicalAddress> = Vec::new();
    for field in &fields {
        match address::mailbox_list(field) {
            Ok(list) => addresses.extend(list),
            Err(err) => {
                tracing::warn!(
                    asset = %asset,
                    from = %Untrusted(field.trim()),
                    problem = %err,
                    policy = ?policy,
                    "From: header cannot be read as a plain mailbox list"
                );
                if enforce {
                    return Some(Say::HeaderFromUnreadable);
                }
            }
        }
    }
    if addresses.is_empty() {
        tracing::warn!(asset = %asset, "message has no From: header address");
        return enforce.then_some(Say::HeaderFromMissing);
    }
    let stranger = addresses
        .iter()
        .find(|address| senders.lookup(address) != Some(asset))?;
    tracing::warn!(
        asset = %asset,
        from = %Untrusted(stranger.as_str()),
        policy = ?policy,
        "From: header address is not served by the sending asset"
    );
    match policy {
        HeaderFromPolicy::Enforce => Some(Say::HeaderFromNotServed {
            from: stranger.as_str().to_string(),
        }),
        HeaderFromPolicy::Log | HeaderFromPolicy::Off => None,
    }
}

/// The header block is at most this big before we decide anyway (Postfix's
/// header_size_limit is 100 KiB; what is not a header by then never will be).
const MAX_HEADER_BLOCK: usize = 100 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum GateState {
    /// Still reading headers; nothing may be forwarded yet.
    Collecting,
    /// The header block is complete (or as large as we look at): check it, then
    /// forward it. The flag says whether its end was seen.
    Decide(Vec<u8>, bool),
    /// Past the headers (or no policy): forward as it comes.
    Open,
}

/// Holds back the header block until it is complete, so it is parsed once (Message-ID for
/// the log) and a header-From policy can act before anything of the message reaches the
/// upstream.
pub(super) struct HeaderGate {
    collected: Option<Vec<u8>>,
}

impl HeaderGate {
    pub(super) fn new() -> Self {
        HeaderGate {
            collected: Some(Vec::new()),
        }
    }

    /// Takes this round's output while collecting; hands the block back when complete.
    pub(super) fn pass(&mut self, out: &mut Vec<u8>, finished: bool) -> GateState {
        let Some(collected) = &mut self.collected else {
            return GateState::Open;
        };
        let searched_from = collected.len().saturating_sub(3);
        collected.append(out);
        let complete = collected[searched_from..]
            .windows(4)
            .any(|window| window == b"\r\n\r\n");
        if complete || finished || collected.len() > MAX_HEADER_BLOCK {
            let block = std::mem::take(collected);
            self.collected = None;
            return GateState::Decide(block, complete || finished);
        }
        GateState::Collecting
    }
}

#[cfg(test)]
mod tests {
    use super::message_id;

    #[test]
    fn message_id_is_the_first_fields_id_without_brackets() {
        let block = b"From: a@example.com\r\nMessage-ID:\r\n <abc.123@host.example> (comment)\r\nmessage-id: <second@x>\r\n\r\nbody Message-ID: <no@x>";
        assert_eq!(message_id(block).as_deref(), Some("abc.123@host.example"));
        assert_eq!(
            message_id(b"Message-Id: bare@id more\r\n\r\n").as_deref(),
            Some("bare@id")
        );
        assert_eq!(message_id(b"Message-ID: <>\r\n\r\n"), None);
        assert_eq!(
            message_id(b"Subject: x\r\n\r\nMessage-ID: <body@x>\r\n"),
            None
        );
    }
}
