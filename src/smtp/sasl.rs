//! SASL PLAIN (RFC 4616) and LOGIN decoding for the relay's own AUTH command: pure, no
//! I/O, fuzzed (`fuzz/fuzz_targets/auth.rs`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::credentials::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("the client cancelled the exchange")]
    Cancelled,
    #[error("the response is not valid base64 or not in the mechanism's format")]
    Malformed,
}

/// Credentials as a client presented them.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// Decodes one client line of a SASL exchange (RFC 4954: "*" cancels, "=" is empty).
pub fn decode_response(line: &str) -> Result<Vec<u8>, SaslError> {
    let line = line.trim();
    match line {
        "*" => Err(SaslError::Cancelled),
        "=" | "" => Ok(Vec::new()),
        _ => STANDARD.decode(line).map_err(|_| SaslError::Malformed),
    }
}

/// PLAIN (RFC 4616): `authzid NUL authcid NUL password`. An authorization identity other
/// than the user itself is refused: nobody may act on behalf of another user here.
pub fn decode_plain(decoded: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = decoded.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let authzid = std::str::from_utf8(authzid).map_err(|_| SaslError::Malformed)?;
    let username = std::str::from_utf8(authcid).map_err(|_| SaslError::Malformed)?;
    let password = std::str::from_utf8(password).map_err(|_| SaslError::Malformed)?;
    if username.is_empty() || (!authzid.is_empty() && authzid != username) {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials {
        username: username.to_string(),
        password: Secret::new(password),
    })
}

/// One LOGIN step's decoded text (user name or password).
pub fn decode_login_text(decoded: Vec<u8>) -> Result<String, SaslError> {
    String::from_utf8(decoded).map_err(|_| SaslError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_decoding_table() {
        let ok = |bytes: &[u8]| decode_plain(bytes).map(|c| (c.username, c.password));
        assert_eq!(
            ok(b"\0scanner\0pw").unwrap(),
            ("scanner".to_string(), Secret::new("pw"))
        );
        assert_eq!(
            ok(b"scanner\0scanner\0pw").unwrap().0,
            "scanner".to_string()
        );
        for bad in [
            &b"other\0scanner\0pw"[..],
            b"\0\0pw",
            b"scanner\0pw",
            b"\0a\0b\0c",
            b"\0\xff\0pw",
        ] {
            assert_eq!(
                decode_plain(bad).err(),
                Some(SaslError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn response_lines() {
        assert_eq!(decode_response("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_response("="), Ok(Vec::new()));
        assert_eq!(decode_response("dXNlcg=="), Ok(b"user".to_vec()));
        assert_eq!(decode_response("not base64!"), Err(SaslError::Malformed));
    }
}
