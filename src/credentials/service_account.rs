//! Google service-account keys, for domain-wide delegation.
//!
//! With a service account that a Workspace admin has granted domain-wide delegation, the
//! relay needs no refresh token at all: it signs a short-lived JWT assertion saying "I am
//! this service account, acting as mailbox X, wanting scope Y" and exchanges it at the token
//! endpoint with the JWT-bearer grant (RFC 7523). This module reads the key file Google
//! Cloud Console hands out and makes those assertions; the HTTP exchange lives elsewhere.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde::Serialize;
use serde_json::Value;

use crate::credentials::secret::{Secret, REDACTED};

/// Used when the key file has no `token_uri`; every key Google issues names this one.
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// Google accepts assertions valid for at most one hour.
const ASSERTION_LIFETIME_SECS: u64 = 3600;

/// Messages name the file and never contain key material: JSON errors are reported by
/// position only and key errors by ring's fixed descriptions.
#[derive(Debug, thiserror::Error)]
pub enum ServiceAccountError {
    #[error("cannot read the service-account key file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the service-account key file {} is not valid: {reason}", path.display())]
    Json { path: PathBuf, reason: String },
    #[error(
        "{} is not a Google service-account key (its \"type\" is not \"service_account\"); \
         create a JSON key for the service account in Google Cloud Console (IAM & Admin → \
         Service accounts → Keys)",
        path.display()
    )]
    NotServiceAccount { path: PathBuf },
    #[error("the private_key in the service-account key file {} is unusable: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("cannot sign the JWT assertion: {0}")]
    Sign(String),
}

pub struct ServiceAccountKey {
    /// The service account's address: the JWT issuer.
    pub client_email: String,
    /// Where to exchange assertions; normally Google's token endpoint.
    pub token_uri: String,
    /// Identifies the key among the service account's keys; sent as the JWT `kid`.
    pub private_key_id: Option<String>,
    key_pair: RsaKeyPair,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("private_key_id", &self.private_key_id)
            .field("private_key", &REDACTED)
            .finish()
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    sub: &'a str,
}

impl ServiceAccountKey {
    /// Whether `other` is the same key of the same service account (as after a config
    /// reload that re-read an unchanged key file): compares the public half, so no secret
    /// material is compared or kept around for it.
    pub fn same_key(&self, other: &ServiceAccountKey) -> bool {
        self.client_email == other.client_email
            && self.token_uri == other.token_uri
            && self.private_key_id == other.private_key_id
            && self.key_pair.public().as_ref() == other.key_pair.public().as_ref()
    }

    /// The JSON file Google Cloud Console gives for a service-account key.
    pub fn from_file(path: &Path) -> Result<Self, ServiceAccountError> {
        // Read as a Secret right away: the text holds the private key.
        let text = std::fs::read_to_string(path)
            .map(Secret::new)
            .map_err(|source| ServiceAccountError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_json(text.expose(), path)
    }

    /// Parses the key file's text; `path_for_errors` only names the source in errors.
    pub fn from_json(text: &str, path_for_errors: &Path) -> Result<Self, ServiceAccountError> {
        let path = path_for_errors;
        let json_error = |reason: String| ServiceAccountError::Json {
            path: path.to_path_buf(),
            reason,
        };
        // Parsed as a generic Value and picked apart by hand, so that no serde message can
        // quote a value (the private key) back: syntax errors carry only a position.
        let value: Value = serde_json::from_str(text).map_err(|error| {
            json_error(format!(
                "not JSON (line {}, column {})",
                error.line(),
                error.column()
            ))
        })?;
        let Some(object) = value.as_object() else {
            return Err(json_error("not a JSON object".to_string()));
        };
        if object.get("type").and_then(Value::as_str) != Some("service_account") {
            return Err(ServiceAccountError::NotServiceAccount {
                path: path.to_path_buf(),
            });
        }
        let string = |field: &str| -> Result<Option<&str>, ServiceAccountError> {
            match object.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => Ok(Some(text.as_str())),
                Some(_) => Err(json_error(format!("\"{field}\" is not a string"))),
            }
        };
        let required = |field: &str| -> Result<&str, ServiceAccountError> {
            match string(field)? {
                Some(text) if !text.trim().is_empty() => Ok(text),
                _ => Err(json_error(format!("\"{field}\" is missing or empty"))),
            }
        };

        let client_email = required("client_email")?.to_string();
        let token_uri = string("token_uri")?
            .filter(|uri| !uri.trim().is_empty())
            .unwrap_or(GOOGLE_TOKEN_URI)
            .to_string();
        let private_key_id = string("private_key_id")?
            .filter(|id| !id.is_empty())
            .map(str::to_string);
        let key_pair = parse_private_key(required("private_key")?, path)?;
        Ok(ServiceAccountKey {
            client_email,
            token_uri,
            private_key_id,
            key_pair,
        })
    }

    /// RS256-signed JWT assertion for the JWT-bearer grant (RFC 7523, Google's rules):
    /// header `{"alg":"RS256","typ":"JWT","kid":private_key_id}`; claims `iss`=client_email,
    /// `scope`, `aud`=audience (the token URL), `iat`=now, `exp`=now+3600, `sub`=subject (the
    /// mailbox to act as; left out when empty, which asks for a token of the service account
    /// itself). Base64url without padding.
    ///
    /// The result is a bearer credential for its hour of validity, hence a [`Secret`].
    pub fn assertion(
        &self,
        subject: &str,
        scope: &str,
        audience: &str,
        now_unix: u64,
    ) -> Result<Secret, ServiceAccountError> {
        let header = Header {
            alg: "RS256",
            typ: "JWT",
            kid: self.private_key_id.as_deref(),
        };
        let claims = Claims {
            iss: &self.client_email,
            scope,
            aud: audience,
            iat: now_unix,
            exp: now_unix.saturating_add(ASSERTION_LIFETIME_SECS),
            sub: subject,
        };
        let signing_input = format!("{}.{}", base64url_json(&header)?, base64url_json(&claims)?);

        let mut signature = vec![0u8; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| ServiceAccountError::Sign("RSA signing failed".to_string()))?;
        Ok(Secret::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }
}

fn base64url_json(value: &impl Serialize) -> Result<String, ServiceAccountError> {
    serde_json::to_vec(value)
        .map(|json| URL_SAFE_NO_PAD.encode(json))
        .map_err(|error| ServiceAccountError::Sign(format!("cannot encode JSON: {error}")))
}

fn parse_private_key(pem: &str, path: &Path) -> Result<RsaKeyPair, ServiceAccountError> {
    let key_error = |reason: String| ServiceAccountError::Key {
        path: path.to_path_buf(),
        reason,
    };
    if pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
        // Google always issues PKCS#8; a PKCS#1 key means someone converted or pasted one.
        return Err(key_error(
            "it is a PKCS#1 \"RSA PRIVATE KEY\"; convert it with `openssl pkcs8 -topk8 -nocrypt` \
             or download a new JSON key"
                .to_string(),
        ));
    }
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|error| {
        // pem::Error texts describe structure (missing section, bad base64), not content.
        key_error(format!(
            "not a PEM \"PRIVATE KEY\" (PKCS#8) block ({error})"
        ))
    })?;
    RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|rejected| key_error(format!("not an RSA key ring accepts ({rejected})")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

    /// A throwaway RSA-2048 key generated with `openssl genpkey` for these tests only; it
    /// never belonged to a Google service account and grants access to nothing.
    const TEST_KEY_PEM: &str = include_str!("../../tests/fixtures/sa-unit-test-key.pem");

    fn key_json() -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": "relay-test",
            "private_key_id": "0123456789abcdef",
            "private_key": TEST_KEY_PEM,
            "client_email": "relay@relay-test.iam.gserviceaccount.com",
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": "https://oauth2.googleapis.com/token",
        })
        .to_string()
    }

    fn path() -> &'static Path {
        Path::new("/etc/relay/sa.json")
    }

    fn decode_part(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn parses_a_console_key_file() {
        let key = ServiceAccountKey::from_json(&key_json(), path()).unwrap();
        assert_eq!(key.client_email, "relay@relay-test.iam.gserviceaccount.com");
        assert_eq!(key.token_uri, "https://oauth2.googleapis.com/token");
        assert_eq!(key.private_key_id.as_deref(), Some("0123456789abcdef"));
    }

    #[test]
    fn assertion_is_a_correctly_signed_jwt() {
        let key = ServiceAccountKey::from_json(&key_json(), path()).unwrap();
        let scope = "https://mail.google.com/";
        let audience = "https://oauth2.googleapis.com/token";
        let jwt = key
            .assertion("alice@example.com", scope, audience, 1_700_000_000)
            .unwrap();
        let parts: Vec<&str> = jwt.expose().split('.').collect();
        assert_eq!(parts.len(), 3);
        for part in &parts {
            assert!(!part.contains('='), "base64url without padding: {part}");
        }

        assert_eq!(
            decode_part(parts[0]),
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "0123456789abcdef"})
        );
        assert_eq!(
            decode_part(parts[1]),
            serde_json::json!({
                "iss": "relay@relay-test.iam.gserviceaccount.com",
                "scope": scope,
                "aud": audience,
                "iat": 1_700_000_000u64,
                "exp": 1_700_003_600u64,
                "sub": "alice@example.com",
            })
        );

        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(signature.len(), 256);
        let public =
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.key_pair.public().as_ref());
        let signed = format!("{}.{}", parts[0], parts[1]);
        public.verify(signed.as_bytes(), &signature).unwrap();
        // And it really covers the claims: a changed claim set does not verify.
        let forged = format!("{}.{}x", parts[0], parts[1]);
        assert!(public.verify(forged.as_bytes(), &signature).is_err());
    }

    #[test]
    fn kid_and_sub_are_left_out_when_absent() {
        let mut json: Value = serde_json::from_str(&key_json()).unwrap();
        json.as_object_mut().unwrap().remove("private_key_id");
        json.as_object_mut().unwrap().remove("token_uri");
        let key = ServiceAccountKey::from_json(&json.to_string(), path()).unwrap();
        assert_eq!(key.token_uri, GOOGLE_TOKEN_URI);
        let jwt = key.assertion("", "s", "a", 10).unwrap();
        let parts: Vec<&str> = jwt.expose().split('.').collect();
        assert_eq!(
            decode_part(parts[0]),
            serde_json::json!({"alg": "RS256", "typ": "JWT"})
        );
        assert!(decode_part(parts[1]).get("sub").is_none());
    }

    fn error_for(json: &str) -> ServiceAccountError {
        ServiceAccountKey::from_json(json, path()).unwrap_err()
    }

    fn assert_names_file_without_key(error: &ServiceAccountError) {
        let text = error.to_string();
        assert!(text.contains("/etc/relay/sa.json"), "{text}");
        assert!(!text.contains("MII"), "{text}");
        let body_line = TEST_KEY_PEM.lines().nth(3).unwrap();
        assert!(!text.contains(body_line), "{text}");
    }

    #[test]
    fn bad_json_is_a_json_error_naming_the_file() {
        let truncated = &key_json()[..200];
        let error = error_for(truncated);
        assert!(
            matches!(error, ServiceAccountError::Json { .. }),
            "{error:?}"
        );
        assert_names_file_without_key(&error);

        let error = error_for("[1, 2]");
        assert!(
            matches!(error, ServiceAccountError::Json { .. }),
            "{error:?}"
        );

        let mut json: Value = serde_json::from_str(&key_json()).unwrap();
        json["client_email"] = Value::from(42);
        let error = error_for(&json.to_string());
        assert!(
            matches!(error, ServiceAccountError::Json { ref reason, .. } if reason.contains("client_email"))
        );
        json.as_object_mut().unwrap().remove("client_email");
        let error = error_for(&json.to_string());
        assert!(
            matches!(error, ServiceAccountError::Json { ref reason, .. } if reason.contains("client_email"))
        );
    }

    #[test]
    fn wrong_type_is_not_a_service_account() {
        let oauth_client = r#"{"installed":{"client_id":"x","client_secret":"y"}}"#;
        let error = error_for(oauth_client);
        assert!(
            matches!(error, ServiceAccountError::NotServiceAccount { .. }),
            "{error:?}"
        );
        assert_names_file_without_key(&error);

        let mut json: Value = serde_json::from_str(&key_json()).unwrap();
        json["type"] = Value::from("authorized_user");
        let error = error_for(&json.to_string());
        assert!(
            matches!(error, ServiceAccountError::NotServiceAccount { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn bad_keys_are_key_errors_without_key_material() {
        let mut json: Value = serde_json::from_str(&key_json()).unwrap();
        let pkcs1 = TEST_KEY_PEM.replace("PRIVATE KEY", "RSA PRIVATE KEY");
        let mangled_body = TEST_KEY_PEM.replacen("MII", "MIX", 1);
        let cases = [
            "not a pem".to_string(),
            pkcs1,
            mangled_body,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_string(),
        ];
        for pem in cases {
            json["private_key"] = Value::from(pem.clone());
            let error = error_for(&json.to_string());
            assert!(
                matches!(error, ServiceAccountError::Key { .. }),
                "{pem}: {error:?}"
            );
            assert_names_file_without_key(&error);
        }
        json.as_object_mut().unwrap().remove("private_key");
        assert!(matches!(
            error_for(&json.to_string()),
            ServiceAccountError::Json { .. }
        ));
    }

    #[test]
    fn from_file_reads_and_names_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sa.json");
        std::fs::write(&file, key_json()).unwrap();
        let key = ServiceAccountKey::from_file(&file).unwrap();
        assert_eq!(key.client_email, "relay@relay-test.iam.gserviceaccount.com");

        let missing = dir.path().join("missing.json");
        let error = ServiceAccountKey::from_file(&missing).unwrap_err();
        assert!(matches!(error, ServiceAccountError::Read { .. }));
        assert!(error.to_string().contains("missing.json"));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let key = ServiceAccountKey::from_json(&key_json(), path()).unwrap();
        let text = format!("{key:?}");
        assert!(
            text.contains("relay@relay-test.iam.gserviceaccount.com"),
            "{text}"
        );
        assert!(text.contains(REDACTED), "{text}");
        assert!(!text.contains("MII") && !text.contains("modulus"), "{text}");
        let jwt = key.assertion("a@b", "s", "a", 1).unwrap();
        assert_eq!(format!("{jwt:?}"), REDACTED);
    }
}
