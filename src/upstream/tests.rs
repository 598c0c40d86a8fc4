//! The upstream dialogue over `tokio::io::duplex`, against a scripted server: every byte
//! the client writes is compared with what Gmail expects, and nothing more may follow.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use super::{SmtpClient, Step, UpstreamError, UpstreamSettings};
use crate::credentials::secret::Secret;

/// One turn of the conversation, seen from the server.
enum Turn {
    /// The server writes these bytes.
    Says(&'static [u8]),
    /// The client must have written exactly these bytes.
    Hears(Vec<u8>),
}
use Turn::{Hears, Says};

fn hears(bytes: &[u8]) -> Turn {
    Hears(bytes.to_vec())
}

const GREETING: &[u8] = b"220 smtp.gmail.test ESMTP ready\r\n";
const EHLO: &[u8] = b"EHLO relay.test\r\n";
const EHLO_REPLY: &[u8] = b"250-smtp.gmail.test at your service\r\n\
250-SIZE 35882577\r\n\
250-8BITMIME\r\n\
250-AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH\r\n\
250-ENHANCEDSTATUSCODES\r\n\
250-PIPELINING\r\n\
250 SMTPUTF8\r\n";
const USER: &str = "relay@example.com";
/// base64("user=relay@example.com\x01auth=Bearer ya29.token\x01\x01"), worked out by hand.
const INLINE_AUTH: &[u8] =
    b"AUTH XOAUTH2 dXNlcj1yZWxheUBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnRva2VuAQE=\r\n";
/// Gmail's failure challenge: base64 of
/// `{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`.
const ERROR_CHALLENGE: &[u8] =
    b"334 eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==\r\n";
const BAD_CREDENTIALS: &[u8] =
    b"535-5.7.8 Username and Password not accepted. For more information, go to\r\n\
535 5.7.8  https://support.google.com/mail/?p=BadCredentials x-gsmtp\r\n";

fn settings() -> UpstreamSettings {
    UpstreamSettings {
        ehlo_name: "relay.test".into(),
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        final_reply_timeout: Duration::from_secs(30),
    }
}

/// A client on one end of a duplex pipe, a server playing `script` on the other. The
/// server task returns whatever the client wrote after the script ended.
fn start(script: Vec<Turn>) -> (SmtpClient<DuplexStream>, JoinHandle<Vec<u8>>) {
    let (ours, mut theirs) = duplex(64 * 1024);
    let server = tokio::spawn(async move {
        for turn in script {
            match turn {
                Says(bytes) => theirs.write_all(bytes).await.unwrap(),
                Hears(expected) => {
                    let mut got = vec![0; expected.len()];
                    theirs.read_exact(&mut got).await.unwrap();
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&expected)
                    );
                }
            }
        }
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).await.unwrap();
        rest
    });
    (
        SmtpClient::new(ours, "smtp.gmail.test:587", &settings()),
        server,
    )
}

/// Closes the client's end and checks that the server heard nothing beyond its script.
async fn finish<T>(client: SmtpClient<T>, server: JoinHandle<Vec<u8>>) {
    drop(client);
    let rest = server.await.unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), "", "unexpected bytes");
}

fn token(text: &str) -> Secret {
    Secret::new(text.to_string())
}

/// Greeting and EHLO with Gmail's capabilities, then `rest`.
fn after_ehlo(rest: Vec<Turn>) -> Vec<Turn> {
    let mut script = vec![Says(GREETING), hears(EHLO), Says(EHLO_REPLY)];
    script.extend(rest);
    script
}

/// Logs in with `secret` against `script`; the result of `authenticate`.
async fn login(script: Vec<Turn>, secret: &Secret) -> Result<(), UpstreamError> {
    let (mut client, server) = start(script);
    client.handshake("relay.test").await.unwrap();
    let result = client.authenticate(USER, secret).await;
    finish(client, server).await;
    result
}

#[tokio::test]
async fn inline_xoauth2_login() {
    let script = after_ehlo(vec![hears(INLINE_AUTH), Says(b"235 2.7.0 Accepted\r\n")]);
    login(script, &token("ya29.token")).await.unwrap();
}

#[tokio::test]
async fn gmail_error_challenge_is_answered_with_an_empty_line() {
    let script = after_ehlo(vec![
        hears(INLINE_AUTH),
        Says(ERROR_CHALLENGE),
        hears(b"\r\n"),
        Says(BAD_CREDENTIALS),
    ]);
    let err = login(script, &token("ya29.token")).await.unwrap_err();
    assert!(err.is_credential_rejection());
    let UpstreamError::AuthRejected {
        reply,
        challenge: Some(challenge),
        ..
    } = &err
    else {
        panic!("not a rejection with a challenge: {err:?}");
    };
    assert_eq!(reply.code, 535);
    assert_eq!(challenge.status, "400");
    assert_eq!(challenge.scope, "https://mail.google.com/");
}

/// A token too long for one 512-byte command line goes in the two-step form: the script
/// up to the server's answer to the response line, and the token.
fn two_step(answer: Vec<Turn>) -> (Vec<Turn>, Secret) {
    let text = format!("ya29.{}", "a".repeat(600));
    let mut response = STANDARD
        .encode(format!("user={USER}\x01auth=Bearer {text}\x01\x01"))
        .into_bytes();
    response.extend_from_slice(b"\r\n");
    let mut script = vec![
        hears(b"AUTH XOAUTH2\r\n"),
        Says(b"334 \r\n"),
        Hears(response),
    ];
    script.extend(answer);
    (after_ehlo(script), token(&text))
}

#[tokio::test]
async fn long_token_uses_the_two_step_form() {
    let (script, secret) = two_step(vec![Says(b"235 2.7.0 Accepted\r\n")]);
    login(script, &secret).await.unwrap();
}

#[tokio::test]
async fn two_step_form_with_the_error_challenge() {
    let (script, secret) = two_step(vec![
        Says(ERROR_CHALLENGE),
        hears(b"\r\n"),
        Says(BAD_CREDENTIALS),
    ]);
    let err = login(script, &secret).await.unwrap_err();
    assert!(err.is_credential_rejection(), "{err}");
}

#[tokio::test]
async fn two_step_form_refused_before_the_token_is_sent() {
    let (_, secret) = two_step(Vec::new());
    let script = after_ehlo(vec![
        hears(b"AUTH XOAUTH2\r\n"),
        Says(b"454 4.7.0 Temporary authentication failure\r\n"),
    ]);
    let err = login(script, &secret).await.unwrap_err();
    assert!(
        matches!(&err, UpstreamError::AuthRejected { reply, challenge: None, .. } if reply.code == 454)
    );
    // A temporary refusal is not a verdict on the token.
    assert!(!err.is_credential_rejection());
}

#[tokio::test]
async fn no_token_goes_to_a_server_without_xoauth2() {
    let script = vec![
        Says(GREETING),
        hears(EHLO),
        Says(b"250-smtp.example.test\r\n250 AUTH PLAIN LOGIN\r\n"),
    ];
    let err = login(script, &token("ya29.token")).await.unwrap_err();
    assert!(
        matches!(&err, UpstreamError::NoXoauth2 { offered, .. } if offered == "PLAIN LOGIN"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_refusing_greeting_is_reported_as_such() {
    let (mut client, server) = start(vec![Says(b"554 5.3.2 go away\r\n")]);
    let err = client.handshake("relay.test").await.unwrap_err();
    finish(client, server).await;
    assert!(matches!(
        &err,
        UpstreamError::Unexpected {
            step: Step::Greeting,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "smtp.gmail.test:587 answered \"554 5.3.2 go away\" to the greeting"
    );
}

#[tokio::test]
async fn starttls_hands_over_the_stream_and_drops_what_came_with_the_220() {
    let (mut client, server) = start(vec![
        Says(GREETING),
        hears(EHLO),
        Says(b"250-smtp.gmail.test\r\n250 STARTTLS\r\n"),
        hears(b"STARTTLS\r\n"),
        // CVE-2011-0411: a reply injected in the clear behind the 220.
        Says(b"220 2.0.0 Ready to start TLS\r\n250 injected\r\n"),
        // Stands in for the TLS handshake: the client speaks first.
        hears(b"ClientHello"),
        Says(b"220 after the handshake\r\n"),
        hears(EHLO),
        Says(EHLO_REPLY),
    ]);
    client.handshake("relay.test").await.unwrap();
    let mut stream = client.starttls().await.unwrap();
    stream.write_all(b"ClientHello").await.unwrap();
    // The dialogue starts over on the (here still plain) stream: the first reply it
    // reads is what came after the handshake, not the injected line.
    let mut after = SmtpClient::new(stream, "smtp.gmail.test:587", &settings());
    after.handshake("relay.test").await.unwrap();
    assert!(after.capabilities().supports_auth("XOAUTH2"));
    finish(after, server).await;
}

#[tokio::test]
async fn starttls_not_offered_or_refused_is_tls_trouble() {
    let (mut client, server) = start(vec![
        Says(GREETING),
        hears(EHLO),
        Says(b"250-smtp.gmail.test\r\n250 AUTH XOAUTH2\r\n"),
    ]);
    client.handshake("relay.test").await.unwrap();
    let Err(err) = client.starttls().await else {
        panic!("STARTTLS without the capability");
    };
    assert!(matches!(err, UpstreamError::NoStartTls { .. }));
    assert!(err.is_tls_trouble());
    assert_eq!(server.await.unwrap(), b"");

    let (mut client, server) = start(vec![
        Says(GREETING),
        hears(EHLO),
        Says(b"250-smtp.gmail.test\r\n250 STARTTLS\r\n"),
        hears(b"STARTTLS\r\n"),
        Says(b"454 4.7.0 TLS not available\r\n"),
    ]);
    client.handshake("relay.test").await.unwrap();
    let Err(err) = client.starttls().await else {
        panic!("STARTTLS refused");
    };
    assert!(matches!(
        err,
        UpstreamError::Unexpected {
            step: Step::StartTls,
            ..
        }
    ));
    assert!(err.is_tls_trouble());
    assert!(!err.is_credential_rejection());
    assert_eq!(server.await.unwrap(), b"");
}

#[tokio::test]
async fn transaction_bytes_on_the_wire() {
    let (mut client, server) = start(after_ehlo(vec![
        hears(b"RSET\r\nMAIL FROM:<a@example.com> SIZE=12\r\n"),
        Says(b"250 2.1.5 Flushed\r\n250 2.1.0 OK\r\n"),
        hears(b"RCPT TO:<b@example.org>\r\n"),
        Says(b"250 2.1.5 OK\r\n"),
        hears(b"DATA\r\n"),
        Says(b"354 Go ahead\r\n"),
        hears(b"Subject: x\r\n\r\n..dot\r\n.\r\n"),
        Says(b"250 2.0.0 OK 1700000000 x-gsmtp\r\n"),
        hears(b"QUIT\r\n"),
        Says(b"221 2.0.0 closing connection\r\n"),
    ]));
    client.handshake("relay.test").await.unwrap();
    let replies = client
        .pipeline(&["RSET", "MAIL FROM:<a@example.com> SIZE=12"])
        .await
        .unwrap();
    assert_eq!(
        replies.iter().map(|r| r.code).collect::<Vec<_>>(),
        [250, 250]
    );
    let rcpt = client.command("RCPT TO:<b@example.org>").await.unwrap();
    assert!(rcpt.is_positive());
    assert_eq!(client.command("DATA").await.unwrap().code, 354);
    client
        .send_data(b"Subject: x\r\n\r\n..dot\r\n")
        .await
        .unwrap();
    client.send_terminator().await.unwrap();
    assert_eq!(client.final_reply().await.unwrap().code, 250);
    client.quit().await;
    assert_eq!(server.await.unwrap(), b"");
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_times_out() {
    let (ours, _theirs) = duplex(1024);
    let mut client = SmtpClient::new(ours, "smtp.gmail.test:587", &settings());
    let err = client.handshake("relay.test").await.unwrap_err();
    assert!(
        matches!(&err, UpstreamError::Timeout { secs: 5, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn bdat_chunks_not_waited_for_are_answered_before_the_last_and_a_refusal_wins() {
    let (mut client, server) = start(vec![
        hears(b"MAIL FROM:<a@example.com>\r\n"),
        Says(b"250 2.1.0 OK\r\n"),
        hears(b"BDAT 3\r\nabcBDAT 2 LAST\r\nde"),
        Says(b"250 2.0.0 OK 3 octets received\r\n250 2.0.0 OK 1700000000 x-gsmtp\r\n"),
        hears(b"BDAT 1\r\nxBDAT 0 LAST\r\n"),
        Says(b"552 5.3.4 too big\r\n554 5.3.4 message refused\r\n"),
    ]);
    client.command("MAIL FROM:<a@example.com>").await.unwrap();
    assert!(client.transaction_open());
    assert_eq!(
        client
            .send_bdat_chunk(b"BDAT 3\r\nabc", false)
            .await
            .unwrap(),
        None
    );
    client.send_bdat_last(b"BDAT 2 LAST\r\nde").await.unwrap();
    assert_eq!(client.final_reply().await.unwrap().code, 250);
    // The reply to the end of the message ends the transaction: no RSET needed.
    assert!(!client.transaction_open());
    client.send_bdat_chunk(b"BDAT 1\r\nx", false).await.unwrap();
    client.send_bdat_last(b"BDAT 0 LAST\r\n").await.unwrap();
    assert_eq!(client.final_reply().await.unwrap().code, 552);
    drop(client);
    assert_eq!(server.await.unwrap(), b"");
}

#[tokio::test]
async fn a_bdat_chunk_waited_for_returns_its_refusal() {
    let (mut client, server) = start(vec![
        hears(b"BDAT 3\r\nabc"),
        Says(b"250 2.0.0 OK\r\n"),
        hears(b"BDAT 3\r\ndef"),
        Says(b"552 5.3.4 too big\r\n"),
    ]);
    assert_eq!(
        client
            .send_bdat_chunk(b"BDAT 3\r\nabc", true)
            .await
            .unwrap(),
        None
    );
    let refused = client
        .send_bdat_chunk(b"BDAT 3\r\ndef", true)
        .await
        .unwrap();
    assert_eq!(refused.map(|reply| reply.code), Some(552));
    drop(client);
    assert_eq!(server.await.unwrap(), b"");
}

#[tokio::test]
async fn a_kept_connection_is_quiet_until_the_server_says_something_or_closes() {
    let (ours, mut theirs) = duplex(1024);
    let mut client = SmtpClient::new(ours, "smtp.gmail.test:587", &settings());
    assert!(client.quiet_since_last_reply().await);
    theirs
        .write_all(b"421 4.4.2 Timeout - closing connection\r\n")
        .await
        .unwrap();
    assert!(!client.quiet_since_last_reply().await);
    let (ours, theirs) = duplex(1024);
    let mut client = SmtpClient::new(ours, "smtp.gmail.test:587", &settings());
    drop(theirs);
    assert!(!client.quiet_since_last_reply().await);
}
