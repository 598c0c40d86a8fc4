//! Drives the fake Gmail over real sockets with a minimal SMTP client (also used by the sandbox
//! end-to-end test): STARTTLS, XOAUTH2, delivery, pipelining, BDAT and every behaviour switch.

use base64::Engine as _;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::*;
use crate::sandbox::pki::TestPki;

/// A minimal line-oriented SMTP client for driving the fake in tests.
pub(crate) struct Client<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub(crate) fn new(stream: S) -> Self {
        Client {
            io: BufReader::new(stream),
        }
    }

    pub(crate) async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    /// Reads one (possibly multi-line) reply: (code, lines without the code prefix).
    pub(crate) async fn reply(&mut self) -> (u16, Vec<String>) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "connection closed while awaiting a reply");
            let line = line.strip_suffix("\r\n").unwrap();
            let code: u16 = line[..3].parse().unwrap();
            lines.push(line[4..].to_owned());
            if line.as_bytes().get(3) == Some(&b' ') {
                return (code, lines);
            }
            assert_eq!(line.as_bytes()[3], b'-');
        }
    }

    pub(crate) async fn cmd(&mut self, line: &str) -> (u16, Vec<String>) {
        self.send(line).await;
        self.reply().await
    }

    /// True if the server closed the connection without sending anything more.
    pub(crate) async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.io.read_to_end(&mut rest)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    pub(crate) fn into_inner(self) -> S {
        self.io.into_inner()
    }
}

pub(crate) struct Fixture {
    pub(crate) gmail: FakeGmail,
    pub(crate) tokens: AccessTokens,
    pub(crate) pki: TestPki,
    _shutdown: tokio_util::sync::DropGuard,
}

pub(crate) async fn fixture_with(configure: impl FnOnce(&mut FakeGmailConfig)) -> Fixture {
    let pki = TestPki::generate(&["localhost", "127.0.0.1"]).unwrap();
    let tokens = AccessTokens::new();
    let mut config = FakeGmailConfig::new(pki.server_config().unwrap(), tokens.clone());
    configure(&mut config);
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gmail = FakeGmail::start(listener, config, shutdown.clone())
        .await
        .unwrap();
    Fixture {
        gmail,
        tokens,
        pki,
        _shutdown: shutdown.drop_guard(),
    }
}

async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

type TlsClient = Client<tokio_rustls::client::TlsStream<TcpStream>>;

async fn tls_upgrade(f: &Fixture, tcp: TcpStream, name: &str) -> TlsClient {
    let connector = tokio_rustls::TlsConnector::from(f.pki.client_config().unwrap());
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    Client::new(connector.connect(server_name, tcp).await.unwrap())
}

/// Connects, checks the greeting and EHLO, and upgrades with STARTTLS.
async fn connect_starttls(f: &Fixture) -> TlsClient {
    let tcp = TcpStream::connect(f.gmail.addr()).await.unwrap();
    let mut plain = Client::new(tcp);
    let (code, greeting) = plain.reply().await;
    assert_eq!(code, 220);
    assert!(greeting[0].starts_with("smtp.gmail.com ESMTP "));
    assert!(greeting[0].ends_with(" - gsmtp"));
    let (code, ext) = plain.cmd("EHLO client.example").await;
    assert_eq!(code, 250);
    assert_eq!(ext[0], "smtp.gmail.com at your service, [127.0.0.1]");
    assert!(ext.contains(&"STARTTLS".to_owned()));
    assert!(!ext.iter().any(|e| e.starts_with("AUTH")));
    let (code, text) = plain.cmd("STARTTLS").await;
    assert_eq!((code, text[0].as_str()), (220, "2.0.0 Ready to start TLS"));
    let mut tls = tls_upgrade(f, plain.into_inner(), "localhost").await;
    let (code, ext) = tls.cmd("EHLO client.example").await;
    assert_eq!(code, 250);
    assert!(
        ext.contains(&"AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH".to_owned())
    );
    assert!(!ext.contains(&"STARTTLS".to_owned()));
    tls
}

async fn authed(f: &Fixture) -> TlsClient {
    let mut c = connect_starttls(f).await;
    let token = f.tokens.issue("user@example.com");
    let (code, _) = c
        .cmd(&format!(
            "AUTH XOAUTH2 {}",
            xoauth2_response("user@example.com", &token)
        ))
        .await;
    assert_eq!(code, 235);
    c
}

#[tokio::test]
async fn starttls_xoauth2_initial_response_and_delivery() {
    let f = fixture().await;
    let mut c = authed(&f).await;
    assert_eq!(
        c.cmd("MAIL FROM:<user@example.com> SIZE=100 BODY=8BITMIME")
            .await
            .0,
        250
    );
    let (code, text) = c.cmd("RCPT TO:<a@example.net>").await;
    assert_eq!(code, 250);
    assert!(text[0].starts_with("2.1.5 OK"));
    let (code, text) = c.cmd("DATA").await;
    assert_eq!(code, 354);
    assert!(text[0].starts_with(" Go ahead"));
    c.send_raw(
        b"Subject: hi\r\n\r\n..leading dot\r\n..\r\nnot end\n.\nstill body\r\nlast\r\n.\r\n",
    )
    .await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 250);
    assert!(text[0].starts_with("2.0.0 OK  "));
    assert_eq!(c.cmd("QUIT").await.0, 221);

    assert!(f.gmail.wait_for_messages(1, Duration::from_secs(1)).await);
    let msgs = f.gmail.messages();
    assert_eq!(
        msgs,
        vec![Delivered {
            auth_user: "user@example.com".into(),
            mail_from: "user@example.com".into(),
            mail_params: vec!["SIZE=100".into(), "BODY=8BITMIME".into()],
            rcpt_to: vec!["a@example.net".into()],
            data: b"Subject: hi\r\n\r\n.leading dot\r\n.\r\nnot end\n.\nstill body\r\nlast\r\n"
                .to_vec(),
        }]
    );
    assert_eq!(f.gmail.connections(), 1);
    assert_eq!(f.gmail.auth_attempts(), 1);
}

#[tokio::test]
async fn xoauth2_two_step_form() {
    let f = fixture().await;
    let mut c = connect_starttls(&f).await;
    let token = f.tokens.issue("user@example.com");
    let (code, text) = c.cmd("AUTH XOAUTH2").await;
    assert_eq!((code, text[0].as_str()), (334, ""));
    let (code, text) = c.cmd(&xoauth2_response("USER@example.com", &token)).await;
    assert_eq!((code, text[0].as_str()), (235, "2.7.0 Accepted"));
}

#[tokio::test]
async fn bad_token_gets_json_challenge_then_535() {
    let f = fixture().await;
    let mut c = connect_starttls(&f).await;
    let token = f.tokens.issue("other@example.com");
    let (code, text) = c
        .cmd(&format!(
            "AUTH XOAUTH2 {}",
            xoauth2_response("user@example.com", &token)
        ))
        .await;
    assert_eq!((code, text[0].as_str()), (334, XOAUTH2_ERROR_CHALLENGE));
    let json = base64::engine::general_purpose::STANDARD
        .decode(XOAUTH2_ERROR_CHALLENGE)
        .unwrap();
    assert_eq!(
        json,
        br#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#
    );
    let (code, text) = c.cmd("").await;
    assert_eq!(code, 535);
    assert_eq!(text.len(), 2);
    assert!(text[0].starts_with("5.7.8 Username and Password not accepted."));
    assert!(text[1].starts_with("5.7.8  https://support.google.com/mail/?p=BadCredentials "));

    // Revoked tokens fail the same way; other mechanisms and garbage are refused.
    let (code, _) = c.cmd("AUTH PLAIN AHVzZXIAcGFzcw==").await;
    assert_eq!(code, 504);
    let (code, text) = c.cmd("AUTH XOAUTH2 !!!notbase64").await;
    assert_eq!(
        (code, text[0].starts_with("5.5.2 Cannot Decode response")),
        (501, true)
    );
    let (code, _) = c.cmd("MAIL FROM:<user@example.com>").await;
    assert_eq!(code, 530);
    assert_eq!(f.gmail.auth_attempts(), 3);
}

#[tokio::test]
async fn plaintext_auth_and_mail_are_refused_and_pipelined_bytes_after_starttls_are_dropped() {
    let f = fixture().await;
    let tcp = TcpStream::connect(f.gmail.addr()).await.unwrap();
    let mut c = Client::new(tcp);
    assert_eq!(c.reply().await.0, 220);
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 530);
    assert_eq!(c.cmd("EHLO x").await.0, 250);
    let (code, text) = c.cmd("MAIL FROM:<a@b>").await;
    assert_eq!(code, 530);
    assert!(text[0].starts_with("5.7.0 Must issue a STARTTLS command first."));
    assert_eq!(c.cmd("AUTH XOAUTH2").await.0, 530);
    assert_eq!(c.cmd("FOO").await.0, 502);
    // Injected command must not be executed inside TLS (CVE-2011-0411).
    c.send_raw(b"STARTTLS\r\nRSET\r\n").await;
    assert_eq!(c.reply().await.0, 220);
    let mut tls = tls_upgrade(&f, c.into_inner(), "127.0.0.1").await;
    // Had RSET been kept, its 250 would arrive before the NOOP's reply: check the text.
    let (code, text) = tls.cmd("NOOP").await;
    assert_eq!(code, 250);
    assert!(text[0].starts_with("2.0.0 OK"), "{text:?}");
    // State was reset: EHLO is required again.
    let (code, _) = tls.cmd("AUTH XOAUTH2").await;
    assert_eq!(code, 503);
}

#[tokio::test]
async fn recipient_rejection_is_multiline_and_other_recipients_still_deliver() {
    let f = fixture_with(|c| {
        c.behaviour.reject_recipients = vec!["Nobody@Example.com".into()];
    })
    .await;
    let mut c = authed(&f).await;
    assert_eq!(c.cmd("MAIL FROM:<user@example.com>").await.0, 250);
    let (code, text) = c.cmd("RCPT TO:<nobody@example.com>").await;
    assert_eq!(code, 550);
    assert_eq!(text.len(), 4);
    assert!(text[0].starts_with("5.1.1 The email account that you tried to reach does not exist."));
    assert_eq!(c.cmd("DATA").await.0, 503);
    assert_eq!(c.cmd("RCPT TO:<ok@example.com>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    let (code, _) = c.cmd("hello\r\n.").await;
    assert_eq!(code, 250);
    let msgs = f.gmail.messages();
    assert_eq!(msgs[0].rcpt_to, vec!["ok@example.com".to_owned()]);
    assert_eq!(msgs[0].data, b"hello\r\n");
}

#[tokio::test]
async fn pipelined_transaction_and_size_and_long_lines() {
    let f = fixture().await;
    let mut c = authed(&f).await;
    let (code, text) = c
        .cmd(&format!("MAIL FROM:<a@b> SIZE={}", GMAIL_SIZE_LIMIT + 1))
        .await;
    assert_eq!((code, text[0].starts_with("5.3.4")), (552, true));
    let long = format!("NOOP {}", "x".repeat(600));
    assert_eq!(c.cmd(&long).await.0, 555);
    c.send_raw(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\n")
        .await;
    for expected in [250, 250, 250, 354] {
        assert_eq!(c.reply().await.0, expected);
    }
    c.send_raw(b".\r\nRSET\r\nNOOP\r\n").await;
    for expected in [250, 250, 250] {
        assert_eq!(c.reply().await.0, expected);
    }
    let msgs = f.gmail.messages();
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].data.is_empty());
    assert_eq!(msgs[0].rcpt_to.len(), 2);
}

#[tokio::test]
async fn bdat_chunks_are_concatenated_without_unstuffing() {
    let f = fixture().await;
    let mut c = authed(&f).await;
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<c@d>").await.0, 250);
    c.send_raw(b"BDAT 6\r\n.a\r\nb\r").await;
    assert_eq!(c.reply().await.0, 250);
    c.send_raw(b"BDAT 3 LAST\r\n\n.\n").await;
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(f.gmail.messages()[0].data, b".a\r\nb\r\n.\n");
}

#[tokio::test]
async fn behaviour_switches() {
    let f = fixture().await;

    f.gmail.set_behaviour(Behaviour {
        data_reply: Some("552 5.3.4 Message too big".into()),
        ..Behaviour::default()
    });
    let mut c = authed(&f).await;
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<c@d>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    let (code, text) = c.cmd("x\r\n.").await;
    assert_eq!((code, text[0].as_str()), (552, "5.3.4 Message too big"));

    f.gmail.set_behaviour(Behaviour {
        close_after_dot: true,
        ..Behaviour::default()
    });
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<c@d>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send("x\r\n.").await;
    assert!(c.closed().await);

    f.gmail.set_behaviour(Behaviour {
        close_during_data: true,
        ..Behaviour::default()
    });
    let mut c = authed(&f).await;
    assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<c@d>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send_raw(b"Subject: partial\r\n").await;
    assert!(c.closed().await);
    assert!(f.gmail.messages().is_empty());
}

#[tokio::test]
async fn no_starttls_is_neither_advertised_nor_accepted() {
    let f = fixture_with(|c| c.behaviour.no_starttls = true).await;
    let mut c = Client::new(TcpStream::connect(f.gmail.addr()).await.unwrap());
    assert_eq!(c.reply().await.0, 220);
    let (code, ext) = c.cmd("EHLO x").await;
    assert_eq!(code, 250);
    assert!(!ext.iter().any(|e| e == "STARTTLS" || e.starts_with("AUTH")));
    assert_eq!(c.cmd("STARTTLS").await.0, 502);
    assert_eq!(c.cmd("AUTH XOAUTH2").await.0, 530);
}

#[tokio::test]
async fn implicit_tls_offers_auth_immediately() {
    let f = fixture_with(|c| c.implicit_tls = true).await;
    let tcp = TcpStream::connect(f.gmail.addr()).await.unwrap();
    let mut c = tls_upgrade(&f, tcp, "127.0.0.1").await;
    assert_eq!(c.reply().await.0, 220);
    let (code, ext) = c.cmd("EHLO x").await;
    assert_eq!(code, 250);
    assert!(!ext.contains(&"STARTTLS".to_owned()));
    assert!(ext
        .iter()
        .any(|e| e.starts_with("AUTH ") && e.contains("XOAUTH2")));
    let token = f.tokens.issue("user@example.com");
    let (code, _) = c
        .cmd(&format!(
            "AUTH XOAUTH2 {}",
            xoauth2_response("user@example.com", &token)
        ))
        .await;
    assert_eq!(code, 235);
}

#[tokio::test]
async fn messages_are_written_to_mail_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mail_dir = dir.path().join("nested/mail");
    let f = fixture_with(|c| c.mail_dir = Some(mail_dir.clone())).await;
    let mut c = authed(&f).await;
    for _ in 0..2 {
        assert_eq!(c.cmd("MAIL FROM:<a@b>").await.0, 250);
        assert_eq!(c.cmd("RCPT TO:<c@d>").await.0, 250);
        assert_eq!(c.cmd("DATA").await.0, 354);
        assert_eq!(c.cmd("Subject: saved\r\n\r\nbody\r\n.").await.0, 250);
    }
    let mut names: Vec<String> = std::fs::read_dir(&mail_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2);
    assert!(names.iter().all(|n| n.ends_with(".eml")));
    let content = std::fs::read(mail_dir.join(&names[0])).unwrap();
    assert_eq!(content, b"Subject: saved\r\n\r\nbody\r\n");
}
