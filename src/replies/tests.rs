//! The reply table's tests: command errors and relay failures mapped to the wire text.

use super::*;
use crate::error::RelayError;
use crate::oauth::token::TokenError;
use crate::smtp::command::CommandError;
use crate::upstream::UpstreamError;

fn wire(say: Say) -> String {
    String::from_utf8_lossy(&say.reply().to_wire()).into_owned()
}

#[test]
fn command_errors_map_to_replies() {
    let cases = [
        (
            CommandError::Unrecognized,
            "500 5.5.1 Command not recognized\r\n",
        ),
        (
            CommandError::Syntax("Argument required"),
            "501 5.5.4 Syntax error: Argument required\r\n",
        ),
        (
            CommandError::BadSenderAddress,
            "501 5.1.7 Bad sender address syntax\r\n",
        ),
        (
            CommandError::BadRecipientAddress,
            "501 5.1.3 Bad recipient address syntax\r\n",
        ),
    ];
    for (error, expected) in cases {
        assert_eq!(wire(Say::for_command_error(&error)), expected, "{error:?}");
    }
}

fn upstream(error: UpstreamError) -> RelayError {
    RelayError::Upstream(error)
}

#[test]
fn failures_map_to_replies() {
    let target = || "smtp.example.com:587".to_string();
    let reauthorize = "Sending account \"a\" needs re-authorization by the relay operator";
    let cases = [
        (
            RelayError::Token(TokenError::Unavailable {
                asset: "a".into(),
                reason: "down".into(),
            }),
            CredentialFailure::Permanent,
            "454 4.7.0 Temporary authentication failure towards the mail provider, try again later\r\n".to_string(),
        ),
        (
            RelayError::Token(TokenError::NotAuthorized { asset: "a".into() }),
            CredentialFailure::Permanent,
            format!("535 5.7.8 {reauthorize}\r\n"),
        ),
        (
            RelayError::Token(TokenError::NotAuthorized { asset: "a".into() }),
            CredentialFailure::Temporary,
            format!("454 4.7.0 {reauthorize}\r\n"),
        ),
        // A store the relay cannot read keeps the mail queued even in permanent mode.
        (
            RelayError::Token(TokenError::Store {
                asset: "a".into(),
                reason: "locked".into(),
            }),
            CredentialFailure::Permanent,
            format!("454 4.7.0 {reauthorize}\r\n"),
        ),
        (
            upstream(UpstreamError::Connect {
                target: target(),
                reason: "refused".into(),
            }),
            CredentialFailure::Permanent,
            "451 4.4.1 Upstream mail server unavailable, try again later\r\n".to_string(),
        ),
        (
            upstream(UpstreamError::NoStartTls { target: target() }),
            CredentialFailure::Temporary,
            "454 4.7.4 Upstream mail server did not offer STARTTLS; refusing to send credentials in the clear\r\n".to_string(),
        ),
        (
            upstream(UpstreamError::Lost {
                target: target(),
                reason: "reset".into(),
            }),
            CredentialFailure::Temporary,
            "451 4.4.2 Connection to the upstream mail server lost, try again later\r\n"
                .to_string(),
        ),
    ];
    for (error, mode, expected) in cases {
        assert_eq!(
            wire(Say::for_failure(&error, "a", mode)),
            expected,
            "{error}"
        );
    }
}
