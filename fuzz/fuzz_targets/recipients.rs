#![no_main]

//! `smtp::recipients`: envelope against To/Cc/Bcc. Properties, not just "no panic": every
//! envelope recipient is either named in the headers or listed as missing (so it gets the
//! inserted Bcc), every undeclared address is a header address that is no envelope
//! recipient, and the inserted Bcc field parses back to exactly the missing addresses (or
//! the addresses it cannot carry are refused).

use libfuzzer_sys::fuzz_target;
use smtp_oauth_relay::smtp::recipients::{bcc_field, compare, header_recipients};

fuzz_target!(|data: &[u8]| {
    // The first line (if any) lists envelope recipients, comma-separated; the rest is the
    // header block.
    let (first, headers) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&data[..0], data),
    };
    let envelope: Vec<String> = String::from_utf8_lossy(first)
        .split(',')
        .map(|r| r.trim().to_string())
        .filter(|r| {
            // Envelope addresses passed RCPT syntax: local@domain, no spaces or brackets.
            r.contains('@') && !r.chars().any(|c| c.is_whitespace() || c.is_control() || "<>,;:\"()[]\\".contains(c))
        })
        .collect();
    let named = header_recipients(headers);
    let check = compare(&envelope, headers);
    for recipient in &envelope {
        let lower = recipient.to_lowercase();
        assert!(
            named.contains(&lower) || check.missing.iter().any(|m| m.to_lowercase() == lower),
            "{recipient} neither named nor missing"
        );
    }
    for address in &check.undeclared {
        assert!(named.contains(address));
        assert!(!envelope.iter().any(|r| r.to_lowercase() == *address));
    }
    // The inserted Bcc carries exactly the missing addresses, or is refused.
    if let Ok(bcc) = bcc_field(&check.missing) {
        let mut block = bcc.clone();
        block.extend_from_slice(b"\r\n");
        let reparsed = header_recipients(&block);
        let expected: Vec<String> = check.missing.iter().map(|m| m.to_lowercase()).collect();
        assert_eq!(reparsed, expected, "inserted Bcc does not parse back: {:?}", String::from_utf8_lossy(&bcc));
    }
});
