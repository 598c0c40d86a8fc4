#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_oauth_relay::smtp::sasl::{decode_login_text, decode_plain, decode_response, SaslError};

/// What the session does with one AUTH PLAIN / LOGIN line the client sent.
fn check_line(line: &str) {
    let trimmed = line.trim();
    match decode_response(line) {
        Ok(decoded) => {
            // Only strict, canonical base64 is accepted (or "=" / nothing for empty), so
            // encoding the result gives the line back.
            if decoded.is_empty() {
                assert!(
                    matches!(trimmed, "" | "="),
                    "{trimmed:?} decoded to nothing"
                );
            } else {
                assert_eq!(base64_encode(&decoded), trimmed);
            }
            check_payload(&decoded);
        }
        Err(SaslError::Cancelled) => assert_eq!(trimmed, "*"),
        Err(SaslError::Malformed) => assert!(!matches!(trimmed, "" | "=" | "*")),
    }
}

/// A decoded SASL payload, as PLAIN and as one LOGIN step.
fn check_payload(decoded: &[u8]) {
    if let Ok(credentials) = decode_plain(decoded) {
        let username = credentials.username.as_str();
        let password = credentials.password.expose();
        assert!(!username.is_empty());
        assert!(!username.contains('\0') && !password.contains('\0'));
        // authzid is empty or the user itself: nobody acts on behalf of another user.
        let own = [b"\0", username.as_bytes(), b"\0", password.as_bytes()].concat();
        let named = [username.as_bytes(), &own].concat();
        assert!(decoded == own.as_slice() || decoded == named.as_slice());
    } else {
        // Refused: not three NUL-separated UTF-8 parts, or an empty user, or an authzid of
        // someone else.
        let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
        let acceptable = parts.len() == 3
            && parts.iter().all(|p| std::str::from_utf8(p).is_ok())
            && !parts[1].is_empty()
            && (parts[0].is_empty() || parts[0] == parts[1]);
        assert!(!acceptable, "valid PLAIN payload refused");
    }
    let login = decode_login_text(decoded.to_vec());
    assert_eq!(login.is_ok(), std::str::from_utf8(decoded).is_ok());
    if let Ok(text) = login {
        assert_eq!(text.as_bytes(), decoded);
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // The session only hands UTF-8 lines to decode_response.
    if let Ok(line) = std::str::from_utf8(data) {
        check_line(line);
    }
    // The raw bytes as an already decoded payload reach the paths base64 rarely produces.
    check_payload(data);
});
