//! The one SMTP client of the tests: writes exactly the bytes a test asks for and shows it
//! every reply. Over TCP (`Client`) or over an in-memory pipe straight into a session
//! (`MemoryClient`, Stalwart's TestSession idea), with one-line steps that check the code:
//! `client.mail_from(addr, 250)`, `client.rcpt_to(addr, 250)`, `client.data(msg, 250)`.

use std::net::SocketAddr;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use smtp_oauth_relay::sandbox::pki::TestPki;
use smtp_oauth_relay::session::Session;
use smtp_oauth_relay::smtp::reply::{parse_reply, Reply, ReplyParse};
use smtp_oauth_relay::stream::MaybeTls;

use super::Env;

pub trait ExpectCode {
    fn expect_code(self, code: u16) -> Reply;
}

impl ExpectCode for Reply {
    #[track_caller]
    fn expect_code(self, code: u16) -> Reply {
        assert_eq!(self.code, code, "unexpected reply: {self}");
        self
    }
}

/// A minimal SMTP client that shows every reply to the test.
pub struct Client<IO = TcpStream> {
    stream: MaybeTls<IO>,
    buf: Vec<u8>,
    pub greeting: Reply,
}

/// A client wired to a session in memory: the relay sees whatever peer address the test
/// chooses, so tests can play a non-loopback client without leaving 127.0.0.1.
pub type MemoryClient = Client<DuplexStream>;

impl Client<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        Client::greeted(MaybeTls::Plain(stream)).await
    }

    /// Connects from a chosen local address (any of 127/8 works on Linux), so a test can
    /// play a second loopback client that the relay sees as another address.
    pub async fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        Client::greeted(MaybeTls::Plain(stream)).await
    }

    /// Connects with TLS from the first byte (the implicit-TLS listener).
    pub async fn connect_tls(addr: SocketAddr, pki: &TestPki) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(pki.client_config().unwrap());
        let name = ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        Client::greeted(MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Client(
            tls,
        ))))
        .await
    }
}

impl MemoryClient {
    /// Runs a session of `env`'s relay as if the client were at `peer` ("192.0.2.10:40000")
    /// and reads its greeting.
    pub async fn start(env: &Env, peer: &str) -> MemoryClient {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = peer.parse().unwrap();
        let session = Session::new(
            env.relay.clone(),
            MaybeTls::Plain(server),
            peer,
            CancellationToken::new(),
        );
        tokio::spawn(session.run());
        Client::greeted(MaybeTls::Plain(client)).await
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Client<IO> {
    async fn greeted(stream: MaybeTls<IO>) -> Client<IO> {
        let mut client = Client {
            stream,
            buf: Vec::new(),
            greeting: Reply::new(0, None, ""),
        };
        client.greeting = client.read_reply().await;
        client
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.write(format!("{line}\r\n").as_bytes()).await;
        self.read_reply().await
    }

    pub async fn read_reply(&mut self) -> Reply {
        self.try_read_reply()
            .await
            .unwrap_or_else(|| panic!("connection closed while waiting for a reply"))
    }

    /// None when the server closed the connection.
    pub async fn try_read_reply(&mut self) -> Option<Reply> {
        loop {
            match parse_reply(&self.buf, 4096, 100).unwrap() {
                ReplyParse::Complete { reply, consumed } => {
                    self.buf.drain(..consumed);
                    return Some(reply);
                }
                ReplyParse::Incomplete => {}
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk))
                .await
                .expect("no reply within 30 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn ehlo(&mut self) -> Reply {
        self.cmd("EHLO client.test").await.expect_code(250)
    }

    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Reply {
        use base64::Engine;
        let response =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.cmd(&format!("AUTH PLAIN {response}")).await
    }

    pub async fn starttls(&mut self, pki: &TestPki) {
        self.cmd("STARTTLS").await.expect_code(220);
        let Some(plain) = self.stream.take_plain() else {
            panic!("already TLS");
        };
        let connector = tokio_rustls::TlsConnector::from(pki.client_config().unwrap());
        let name = ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, plain).await.unwrap();
        self.stream = MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Client(tls)));
    }

    /// `MAIL FROM:<from>`, expecting `code`.
    pub async fn mail_from(&mut self, from: &str, code: u16) -> Reply {
        self.cmd(&format!("MAIL FROM:<{from}>"))
            .await
            .expect_code(code)
    }

    /// `RCPT TO:<to>`, expecting `code`.
    pub async fn rcpt_to(&mut self, to: &str, code: u16) -> Reply {
        self.cmd(&format!("RCPT TO:<{to}>")).await.expect_code(code)
    }

    /// DATA (expecting 354), the message (`body` in wire form without the terminator),
    /// then the terminator; the final reply, expecting `code`.
    pub async fn data(&mut self, body: &[u8], code: u16) -> Reply {
        self.data_reply(body).await.expect_code(code)
    }

    async fn data_reply(&mut self, body: &[u8]) -> Reply {
        self.cmd("DATA").await.expect_code(354);
        self.write(body).await;
        self.write(b".\r\n").await;
        self.read_reply().await
    }

    /// MAIL, RCPT..., DATA and the message (`body` in wire form without the terminator);
    /// returns the final reply. Panics if MAIL, any RCPT or DATA is refused.
    pub async fn send_mail(&mut self, from: &str, to: &[&str], body: &[u8]) -> Reply {
        self.mail_from(from, 250).await;
        for rcpt in to {
            self.rcpt_to(rcpt, 250).await;
        }
        self.data_reply(body).await
    }

    pub async fn quit(mut self) {
        let _ = self.cmd("QUIT").await;
    }
}
