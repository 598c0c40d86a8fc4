#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_oauth_relay::smtp::{parse_command, Command};

/// Bytes that make up SMTP command lines. Random bytes almost never form a
/// verb followed by a plausible path, so every byte outside this set is
/// mapped into it; bytes already in it (e.g. the seed corpus) stay as they
/// are. '"', '[' , ']' and '\\' reach quoted local parts and address literals.
const ALPHABET: &[u8] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:=-<>,.@; \r\n\"[]\\";

fn check(line: &[u8]) {
    let first = parse_command(line);
    // Parsing is pure: the same line always gives the same answer.
    assert_eq!(first, parse_command(line));
    match first {
        Ok(Command::Mail { from: addr, params }) | Ok(Command::Rcpt { to: addr, params }) => {
            assert!(addr.len() <= 256, "path longer than RFC 5321 allows");
            assert!(!addr.contains(['<', '>', ' ', '\r', '\n']) || addr.starts_with('"'));
            for p in params {
                assert!(!p.keyword.is_empty());
                assert_eq!(p.keyword, p.keyword.to_ascii_uppercase());
                assert!(p
                    .value
                    .is_none_or(|v| !v.is_empty() && !v.contains([' ', '='])));
            }
        }
        Ok(Command::Auth { mechanism, .. }) => {
            assert_eq!(mechanism, mechanism.to_ascii_uppercase());
        }
        Ok(Command::Helo { domain }) | Ok(Command::Ehlo { domain }) => {
            assert!(!domain.is_empty() && !domain.contains([' ', '\r', '\n']));
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    // The raw bytes exercise the UTF-8 and control-character checks.
    check(data);
    let mapped: Vec<u8> = data
        .iter()
        .map(|&b| {
            if ALPHABET.contains(&b) {
                b
            } else {
                ALPHABET[usize::from(b) % ALPHABET.len()]
            }
        })
        .collect();
    check(&mapped);
});
