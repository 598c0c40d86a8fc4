//! Envelope recipients against header recipients, for transports that deliver to the
//! addresses in `To`, `Cc` and `Bcc` instead of an envelope (the Gmail API, Microsoft
//! Graph). Pure: the header block in, two lists out.
//!
//! Addresses are read with mail-parser (groups, display names, comments, encoded words,
//! folded lines) and compared case-insensitively as a whole, as Gmail and Exchange treat
//! them. An envelope recipient the headers do not name must be added (in a `Bcc:` the
//! transport inserts); a header address that is not an envelope recipient would get mail
//! the client did not ask for.

use mail_parser::{HeaderName, HeaderValue, MessageParser};

/// How the envelope and the header block differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecipientCheck {
    /// Envelope recipients not named in To/Cc/Bcc, in envelope order, as the client
    /// spelled them: they go into an inserted `Bcc:`.
    pub missing: Vec<String>,
    /// To/Cc/Bcc addresses that are not envelope recipients (lowercase, in header order,
    /// each once).
    pub undeclared: Vec<String>,
}

/// The lowercase addresses of every To, Cc and Bcc field of `headers` (a header block, or
/// a whole message: parsing stops at the blank line), each once, in order.
pub fn header_recipients(headers: &[u8]) -> Vec<String> {
    let Some(message) = MessageParser::new().parse_headers(headers) else {
        return Vec::new();
    };
    let mut found: Vec<String> = Vec::new();
    for header in message.headers() {
        if !matches!(
            header.name,
            HeaderName::To | HeaderName::Cc | HeaderName::Bcc
        ) {
            continue;
        }
        let HeaderValue::Address(address) = &header.value else {
            continue;
        };
        for addr in address.iter() {
            let Some(address) = addr.address.as_deref() else {
                continue;
            };
            let address = normalize(address);
            if !address.is_empty() && !found.contains(&address) {
                found.push(address);
            }
        }
    }
    found
}

/// Compares the envelope recipients with the header block's.
pub fn compare(envelope: &[String], headers: &[u8]) -> RecipientCheck {
    let in_headers = header_recipients(headers);
    let in_envelope: Vec<String> = envelope.iter().map(|r| normalize(r)).collect();
    let mut check = RecipientCheck::default();
    for (spelled, normalized) in envelope.iter().zip(&in_envelope) {
        if !in_headers.contains(normalized)
            && !check.missing.iter().any(|m| normalize(m) == *normalized)
        {
            check.missing.push(spelled.clone());
        }
    }
    for address in in_headers {
        if !in_envelope.contains(&address) {
            check.undeclared.push(address);
        }
    }
    check
}

/// The `Bcc:` field that adds `missing` (CRLF-ended, folded one address a line), or
/// nothing when there is none to add. Each address is written so that a header reader
/// gives back exactly it: `<address>`, or with its local part quoted when the plain form
/// would be read as something else (an envelope local part may hold `=?...?=`, which a
/// reader decodes as an encoded word). An address no form carries is the error: the
/// message must not go, as a Bcc would deliver to someone else.
pub fn bcc_field(missing: &[String]) -> Result<Vec<u8>, String> {
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: Vec<String> = missing.iter().map(|a| normalize(a)).collect();
    let plain = |address: &String| format!("<{address}>");
    let quoted = |address: &String| match address.rsplit_once('@') {
        Some((local, domain)) => format!(
            "<\"{}\"@{domain}>",
            local.replace('\\', "\\\\").replace('"', "\\\"")
        ),
        None => plain(address),
    };
    // The whole field must read back as the list: an encoded word may also span addresses.
    for form in [&plain as &dyn Fn(&String) -> String, &quoted] {
        let list: Vec<String> = missing.iter().map(form).collect();
        let field = format!("Bcc: {}\r\n", list.join(",\r\n "));
        let mut block = field.clone().into_bytes();
        block.extend_from_slice(b"\r\n");
        if header_recipients(&block) == wanted {
            return Ok(field.into_bytes());
        }
    }
    let suspect = missing
        .iter()
        .find(|a| a.contains("=?") || a.contains("?="))
        .or(missing.first());
    Err(suspect.cloned().unwrap_or_default())
}

fn normalize(address: &str) -> String {
    address
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_lists_groups_names_and_encoded_words() {
        let headers = b"From: a@example.com\r\n\
To: \"Doe, Jane\" <Jane@Example.COM>, bob@example.org\r\n\
Cc: Team: carol@example.net, =?UTF-8?Q?D=C3=A9sir=C3=A9e?= <desiree@example.net>;\r\n\
Bcc: (hidden) eve@example.com\r\n\
To: second-to@example.com,\r\n folded@example.com\r\n\
Subject: To: not-an-address@example.com\r\n\
\r\n\
To: body@example.com\r\n";
        assert_eq!(
            header_recipients(headers),
            vec![
                "jane@example.com",
                "bob@example.org",
                "carol@example.net",
                "desiree@example.net",
                "eve@example.com",
                "second-to@example.com",
                "folded@example.com",
            ]
        );
    }

    #[test]
    fn envelope_only_recipients_are_missing_and_header_only_ones_undeclared() {
        let headers = b"To: A@example.com, b@example.com\r\n\r\n";
        let check = compare(&envelope(&["a@EXAMPLE.com", "c@example.com"]), headers);
        assert_eq!(check.missing, vec!["c@example.com"]);
        assert_eq!(check.undeclared, vec!["b@example.com"]);
        let check = compare(&envelope(&["a@example.com", "b@example.com"]), headers);
        assert_eq!(check, RecipientCheck::default());
        // No recipient header at all: everyone goes in Bcc.
        let check = compare(
            &envelope(&["x@example.com", "X@example.com"]),
            b"Subject: s\r\n\r\n",
        );
        assert_eq!(check.missing, vec!["x@example.com"]);
    }

    #[test]
    fn bcc_field_is_folded_and_empty_when_nothing_is_missing() {
        assert!(bcc_field(&[]).unwrap().is_empty());
        assert_eq!(
            bcc_field(&envelope(&["a@x.org", "b@y.org"])).unwrap(),
            b"Bcc: <a@x.org>,\r\n <b@y.org>\r\n".to_vec()
        );
        let parsed = header_recipients(&bcc_field(&envelope(&["a@x.org", "b@y.org"])).unwrap());
        assert_eq!(parsed, vec!["a@x.org", "b@y.org"]);
        // Found by the fuzz target: an encoded word in an envelope local part must not
        // turn into another address in the Bcc.
        let tricky = envelope(&["=?UTF-8?Q?D=C3=A9?=a@x.org"]);
        match bcc_field(&tricky) {
            Ok(field) => assert_eq!(header_recipients(&field), vec![tricky[0].to_lowercase()]),
            Err(address) => assert_eq!(address, tricky[0]),
        }
    }

    proptest::proptest! {
        /// Whatever the header block, every envelope recipient ends up either named in
        /// the headers or in `missing`, and `undeclared` holds only header addresses.
        #[test]
        fn every_envelope_recipient_is_delivered(
            headers in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            recipients in proptest::collection::vec("[a-c]{1,2}@[xy]\\.org", 0..4),
        ) {
            let named = header_recipients(&headers);
            let check = compare(&recipients, &headers);
            for r in &recipients {
                let n = r.to_lowercase();
                proptest::prop_assert!(named.contains(&n) || check.missing.iter().any(|m| m.to_lowercase() == n));
            }
            for u in &check.undeclared {
                proptest::prop_assert!(named.contains(u));
            }
        }
    }
}
