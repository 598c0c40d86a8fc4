//! The XOAUTH2 SASL mechanism as Google and Microsoft define it.
//!
//! The client response is `base64("user=" USER "\x01auth=Bearer " TOKEN "\x01\x01")`. On
//! failure the server does not answer 535 at once: it sends a 334 challenge carrying a
//! base64 JSON error, waits for an empty line and only then sends the final reply.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;

/// The base64 client response for `user` (the mailbox address) and an access token.
pub fn client_response(user: &str, access_token: &str) -> String {
    STANDARD.encode(format!("user={user}\x01auth=Bearer {access_token}\x01\x01"))
}

/// The JSON error inside a failure challenge, e.g.
/// `{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ErrorChallenge {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub schemes: String,
    #[serde(default)]
    pub scope: String,
}

impl ErrorChallenge {
    /// Decodes the text of a 334 challenge; None when it is not base64 JSON.
    pub fn decode(challenge: &str) -> Option<ErrorChallenge> {
        let json = STANDARD.decode(challenge.trim()).ok()?;
        serde_json::from_slice(&json).ok()
    }
}

impl std::fmt::Display for ErrorChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {} (schemes {}, scope {})",
            self.status, self.schemes, self.scope
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Google's published example (developers.google.com/gmail/imap/xoauth2-protocol).
    #[test]
    fn known_answer_from_google_documentation() {
        let response = client_response(
            "someuser@example.com",
            "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg",
        );
        assert_eq!(
            response,
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
    }

    #[test]
    fn decodes_gmail_error_challenge() {
        let challenge = ErrorChallenge::decode(
            "eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==",
        );
        assert_eq!(
            challenge,
            Some(ErrorChallenge {
                status: "400".into(),
                schemes: "Bearer".into(),
                scope: "https://mail.google.com/".into(),
            })
        );
        assert_eq!(ErrorChallenge::decode("not base64!"), None);
        assert_eq!(ErrorChallenge::decode(""), None);
    }
}
