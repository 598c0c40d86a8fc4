//! The fake Graph's own reading of MIME headers (recipients, Bcc removal) and its `.eml`
//! for a sent draft. Deliberately simple and separate from the relay's parsing: this is
//! the oracle the relay's output is checked against.

use base64::Engine as _;

use super::GraphAttachment;

/// The header block: everything before the first empty line.
fn header_block(mime: &[u8]) -> &[u8] {
    let end = mime
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(mime.len(), |p| p + 2);
    &mime[..end]
}

/// Unfolded header fields as (lowercased name, value).
fn fields(mime: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(header_block(mime)).into_owned();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    fields
}

/// Addresses in an address-list value: each `<...>`, or bare `a@b` words.
fn addresses(value: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = value;
    let mut outside = String::new();
    while let Some(open) = rest.find('<') {
        outside.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('>') else {
            break;
        };
        found.push(rest[open + 1..open + close].trim().to_ascii_lowercase());
        rest = &rest[open + close + 1..];
    }
    outside.push_str(rest);
    for word in outside.split([',', ' ', ';', ':']) {
        let word = word.trim().trim_matches('"');
        if word.contains('@') && !word.contains('"') {
            found.push(word.to_ascii_lowercase());
        }
    }
    found
}

/// Recipients named in To, Cc and Bcc, lowercased, in header order.
pub(super) fn header_recipients(mime: &[u8]) -> Vec<String> {
    fields(mime)
        .iter()
        .filter(|(name, _)| matches!(name.as_str(), "to" | "cc" | "bcc"))
        .flat_map(|(_, value)| addresses(value))
        .collect()
}

/// The message without its Bcc field(s), as recipients see it.
pub(super) fn strip_bcc(mime: &[u8]) -> Vec<u8> {
    let head_len = header_block(mime).len();
    let mut out = Vec::with_capacity(mime.len());
    let mut skipping = false;
    for line in mime[..head_len].split_inclusive(|b| *b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            skipping = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"bcc:");
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(&mime[head_len..]);
    out
}

fn recipient_list(resource: &serde_json::Value, key: &str) -> Vec<String> {
    resource
        .get(key)
        .and_then(|v| v.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|r| r.pointer("/emailAddress/address")?.as_str())
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default()
}

/// toRecipients, ccRecipients and bccRecipients of a draft.
pub(super) fn draft_recipients(resource: &serde_json::Value) -> Vec<String> {
    ["toRecipients", "ccRecipients", "bccRecipients"]
        .iter()
        .flat_map(|key| recipient_list(resource, key))
        .collect()
}

/// A multipart `.eml` for a sent draft (what Exchange would build, roughly): headers from
/// the resource, the body, then each attachment base64-encoded.
pub(super) fn draft_eml(
    mailbox: &str,
    resource: &serde_json::Value,
    attachments: &[GraphAttachment],
) -> Vec<u8> {
    let text = |pointer: &str| {
        resource
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let boundary = "sandbox-graph-boundary";
    let mut out = String::new();
    out.push_str(&format!("From: {mailbox}\r\n"));
    let to = recipient_list(resource, "toRecipients").join(", ");
    if !to.is_empty() {
        out.push_str(&format!("To: {to}\r\n"));
    }
    let cc = recipient_list(resource, "ccRecipients").join(", ");
    if !cc.is_empty() {
        out.push_str(&format!("Cc: {cc}\r\n"));
    }
    out.push_str(&format!("Subject: {}\r\n", text("/subject")));
    let message_id = text("/internetMessageId");
    if !message_id.is_empty() {
        out.push_str(&format!("Message-ID: {message_id}\r\n"));
    }
    out.push_str(&format!(
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
    ));
    let body_type = if text("/body/contentType").eq_ignore_ascii_case("html") {
        "text/html"
    } else {
        "text/plain"
    };
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: {body_type}; charset=utf-8\r\n\r\n{}\r\n",
        text("/body/content")
    ));
    for attachment in attachments {
        let encoded = base64::engine::general_purpose::STANDARD.encode(&attachment.bytes);
        out.push_str(&format!(
            "--{boundary}\r\nContent-Type: {}; name=\"{}\"\r\nContent-Transfer-Encoding: base64\r\n",
            attachment.content_type, attachment.name
        ));
        if let Some(id) = &attachment.content_id {
            out.push_str(&format!("Content-ID: <{id}>\r\n"));
        }
        let disposition = if attachment.is_inline {
            "inline"
        } else {
            "attachment"
        };
        out.push_str(&format!(
            "Content-Disposition: {disposition}; filename=\"{}\"\r\n\r\n",
            attachment.name
        ));
        for line in encoded.as_bytes().chunks(76) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out.into_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn recipients_and_bcc_removal() {
        let mime = b"To: \"A, B\" <a@x.org>, c@y.org\r\nBcc: hidden@z.org,\r\n more@z.org\r\nSubject: s\r\n\r\nBcc: body@stays\r\n";
        assert_eq!(
            header_recipients(mime),
            ["a@x.org", "c@y.org", "hidden@z.org", "more@z.org"]
        );
        assert_eq!(
            strip_bcc(mime),
            b"To: \"A, B\" <a@x.org>, c@y.org\r\nSubject: s\r\n\r\nBcc: body@stays\r\n".to_vec()
        );
    }
}
