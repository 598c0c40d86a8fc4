//! Just enough JWT (RFC 7519) and key handling for the sandbox token issuer to verify the RS256
//! assertions of the service-account grant (RFC 7523), as Google's token endpoint does.
//!
//! Nothing here is used on the relay's production path; it only checks what a client sends to
//! the fake. The DER reader understands the few structures needed to find an RSA public key in a
//! PEM file (SPKI `PUBLIC KEY`, PKCS#1 `RSA PUBLIC KEY` or an X.509 `CERTIFICATE`).

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

/// Why a PEM file did not yield an RSA public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No `-----BEGIN PUBLIC KEY-----`, `RSA PUBLIC KEY` or `CERTIFICATE` block was found.
    #[error("no PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE PEM block found")]
    NoPemBlock,
    /// The PEM body was not valid base64.
    #[error("the PEM block is not valid base64")]
    Base64,
    /// The DER inside the PEM block did not have the expected structure.
    #[error("malformed DER in the PEM block")]
    Der,
    /// The key is not an RSA key (e.g. EC or Ed25519).
    #[error("the public key is not an RSA key")]
    NotRsa,
}

/// Why a JWT was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts, or a part is not a JSON object.
    #[error("malformed JWT: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not `RS256`.
    #[error("unsupported JWT algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// The signature does not verify with the given key.
    #[error("invalid JWT signature")]
    BadSignature,
}

/// A JWT split into its parts, not yet verified.
#[derive(Debug, Clone)]
pub struct UnverifiedJwt {
    /// The decoded JOSE header.
    pub header: serde_json::Map<String, serde_json::Value>,
    /// The decoded claims set.
    pub claims: serde_json::Map<String, serde_json::Value>,
    signing_input: String,
    signature: Vec<u8>,
}

/// base64url, with or without padding (RFC 7515 says without; be lenient like most servers).
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl UnverifiedJwt {
    /// Splits and decodes a compact-serialised JWS (`header.claims.signature`).
    pub fn parse(token: &str) -> Result<Self, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("expected three dot-separated parts"));
        };
        let header = decode_json_object(h, "header")?;
        let claims = decode_json_object(c, "claims")?;
        let signature = B64URL
            .decode(s)
            .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
        Ok(UnverifiedJwt {
            header,
            claims,
            signing_input: format!("{h}.{c}"),
            signature,
        })
    }

    /// Checks `alg == "RS256"` and the signature against a PKCS#1 `RSAPublicKey` (DER), as
    /// returned by [`rsa_public_key_from_pem`].
    pub fn verify_rs256(&self, rsa_public_key_der: &[u8]) -> Result<(), JwtError> {
        match self.header.get("alg").and_then(|v| v.as_str()) {
            Some("RS256") => {}
            Some(other) => return Err(JwtError::UnsupportedAlgorithm(other.to_owned())),
            None => return Err(JwtError::Malformed("header has no alg")),
        }
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, rsa_public_key_der)
            .verify(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| JwtError::BadSignature)
    }
}

fn decode_json_object(
    part: &str,
    what: &'static str,
) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
    let bytes = B64URL.decode(part).map_err(|_| {
        JwtError::Malformed(if what == "header" {
            "header is not base64url"
        } else {
            "claims are not base64url"
        })
    })?;
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed(if what == "header" {
            "header is not a JSON object"
        } else {
            "claims are not a JSON object"
        })),
    }
}

/// Finds the first PEM block labelled `label` and returns its decoded contents.
pub fn pem_block(pem: &str, label: &str) -> Option<Result<Vec<u8>, KeyError>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let len = pem[start..].find(&end)?;
    let body: String = pem[start..start + len]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| KeyError::Base64),
    )
}

/// Extracts the PKCS#1 DER `RSAPublicKey` that ring wants from a PEM `PUBLIC KEY` (SPKI),
/// `RSA PUBLIC KEY` (PKCS#1) or `CERTIFICATE` (X.509, as Google publishes service-account keys).
pub fn rsa_public_key_from_pem(pem: &str) -> Result<Vec<u8>, KeyError> {
    if let Some(der) = pem_block(pem, "PUBLIC KEY") {
        return rsa_key_from_spki(&der?).map(<[u8]>::to_vec);
    }
    if let Some(der) = pem_block(pem, "RSA PUBLIC KEY") {
        let der = der?;
        // Must be a SEQUENCE of two INTEGERs; ring checks the rest.
        let tlv = read_tlv(&der).ok_or(KeyError::Der)?;
        if tlv.tag != TAG_SEQUENCE || !tlv.rest.is_empty() {
            return Err(KeyError::Der);
        }
        return Ok(der);
    }
    if let Some(der) = pem_block(pem, "CERTIFICATE") {
        return rsa_key_from_certificate(&der?).map(<[u8]>::to_vec);
    }
    Err(KeyError::NoPemBlock)
}

const TAG_SEQUENCE: u8 = 0x30;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_INTEGER: u8 = 0x02;
const TAG_CONTEXT_0: u8 = 0xA0;
/// 1.2.840.113549.1.1.1 (rsaEncryption).
const OID_RSA_ENCRYPTION: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];

/// One DER element and what follows it.
struct Tlv<'a> {
    tag: u8,
    contents: &'a [u8],
    /// The whole element, header included.
    whole: &'a [u8],
    rest: &'a [u8],
}

/// Reads one DER TLV. Single-byte tags, definite lengths up to 4 length bytes.
fn read_tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, after_tag) = input.split_first()?;
    let (&first, mut after_len) = after_tag.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || after_len.len() < n {
            return None;
        }
        let (len_bytes, rest) = after_len.split_at(n);
        after_len = rest;
        len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if after_len.len() < len {
        return None;
    }
    let header_len = input.len() - after_len.len();
    let (contents, rest) = after_len.split_at(len);
    Some(Tlv {
        tag,
        contents,
        whole: &input[..header_len + len],
        rest,
    })
}

fn expect_tlv(input: &[u8], tag: u8) -> Result<Tlv<'_>, KeyError> {
    match read_tlv(input) {
        Some(tlv) if tlv.tag == tag => Ok(tlv),
        _ => Err(KeyError::Der),
    }
}

/// SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }
fn rsa_key_from_spki(spki: &[u8]) -> Result<&[u8], KeyError> {
    let spki = expect_tlv(spki, TAG_SEQUENCE)?.contents;
    let alg = expect_tlv(spki, TAG_SEQUENCE)?;
    let oid = expect_tlv(alg.contents, TAG_OID)?.contents;
    if oid != OID_RSA_ENCRYPTION {
        return Err(KeyError::NotRsa);
    }
    let bits = expect_tlv(alg.rest, TAG_BIT_STRING)?.contents;
    match bits.split_first() {
        Some((0, key)) => Ok(key),
        _ => Err(KeyError::Der),
    }
}

/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }
fn rsa_key_from_certificate(cert: &[u8]) -> Result<&[u8], KeyError> {
    let cert = expect_tlv(cert, TAG_SEQUENCE)?.contents;
    let mut tbs = expect_tlv(cert, TAG_SEQUENCE)?.contents;
    if tbs.first() == Some(&TAG_CONTEXT_0) {
        tbs = expect_tlv(tbs, TAG_CONTEXT_0)?.rest;
    }
    tbs = expect_tlv(tbs, TAG_INTEGER)?.rest; // serialNumber
    for _ in 0..4 {
        // signature, issuer, validity, subject
        tbs = expect_tlv(tbs, TAG_SEQUENCE)?.rest;
    }
    rsa_key_from_spki(expect_tlv(tbs, TAG_SEQUENCE)?.whole)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure
mod tests {
    use super::*;

    const PUB: &str = include_str!("../../tests/fixtures/service-account-test-pub.pem");
    const CERT: &str = include_str!("../../tests/fixtures/service-account-test-cert.pem");
    const KEY: &str = include_str!("../../tests/fixtures/service-account-test-key.pem");

    #[test]
    fn spki_and_certificate_yield_the_same_rsa_key() {
        let from_spki = rsa_public_key_from_pem(PUB).unwrap();
        let from_cert = rsa_public_key_from_pem(CERT).unwrap();
        assert_eq!(from_spki, from_cert);
        // A PKCS#1 block is accepted as is.
        let pkcs1 = format!(
            "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&from_spki)
        );
        assert_eq!(rsa_public_key_from_pem(&pkcs1).unwrap(), from_spki);
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert_eq!(rsa_public_key_from_pem(KEY), Err(KeyError::NoPemBlock));
        assert_eq!(rsa_public_key_from_pem(""), Err(KeyError::NoPemBlock));
        assert_eq!(
            rsa_public_key_from_pem("-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----"),
            Err(KeyError::Base64)
        );
        assert_eq!(
            rsa_public_key_from_pem("-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----"),
            Err(KeyError::Der)
        );
        // An EC P-256 SPKI (id-ecPublicKey) is not RSA.
        let ec = "-----BEGIN PUBLIC KEY-----\n\
            MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEpEyZEj2OGAXvqDfP8yFUPo4IxwEt\n\
            CCqyTOv6RWxrLkNvqynU3j/GD7OT3LdY/Gai0VTvKwOo/iAGVRTbGPCt5Q==\n\
            -----END PUBLIC KEY-----\n";
        assert_eq!(rsa_public_key_from_pem(ec), Err(KeyError::NotRsa));
        // Truncated DER never panics.
        let der = pem_block(PUB, "PUBLIC KEY").unwrap().unwrap();
        for n in 0..der.len() {
            assert!(rsa_key_from_spki(&der[..n]).is_err());
        }
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        assert!(matches!(
            UnverifiedJwt::parse("a.b"),
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(
            UnverifiedJwt::parse("a.b.c.d"),
            Err(JwtError::Malformed(_))
        ));
        let h = B64URL.encode(br#"{"alg":"HS256"}"#);
        let c = B64URL.encode(br#"{"iss":"x"}"#);
        let jwt = UnverifiedJwt::parse(&format!("{h}.{c}.AAAA")).unwrap();
        assert_eq!(jwt.claims["iss"], "x");
        let key = rsa_public_key_from_pem(PUB).unwrap();
        assert_eq!(
            jwt.verify_rs256(&key),
            Err(JwtError::UnsupportedAlgorithm("HS256".into()))
        );
        let h = B64URL.encode(br#"{"alg":"RS256"}"#);
        let jwt = UnverifiedJwt::parse(&format!("{h}.{c}.AAAA")).unwrap();
        assert_eq!(jwt.verify_rs256(&key), Err(JwtError::BadSignature));
        let arr = B64URL.encode(b"[1]");
        assert!(UnverifiedJwt::parse(&format!("{h}.{arr}.AAAA")).is_err());
    }
}
