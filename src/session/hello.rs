//! EHLO, HELO and STARTTLS: what the client says about itself, what we offer, and the
//! switch to TLS (after which it all starts over).

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Client, Flow, Session};
use crate::replies::Say;
use crate::stream::MaybeTls;

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    pub(super) async fn hello(&mut self, domain: String, extended: bool) -> Flow {
        // RFC 5321 §4.1.4: EHLO/HELO in the middle of a transaction resets it.
        self.end_transaction().await;
        let hostname = &self.params.hostname;
        let reply = if extended {
            let mut lines = vec![
                format!("{hostname} Hello {domain} [{}]", self.peer.ip()),
                "PIPELINING".to_string(),
                format!("SIZE {}", self.params.max_message_size),
                "8BITMIME".to_string(),
                "SMTPUTF8".to_string(),
                "ENHANCEDSTATUSCODES".to_string(),
            ];
            if self.auth_allowed() {
                lines.push("AUTH PLAIN LOGIN".to_string());
            }
            if self.params.tls_configured && !self.conn.stream.is_tls() {
                lines.push("STARTTLS".to_string());
            }
            Say::Ehlo { lines }.reply()
        } else {
            Say::Helo {
                hostname: hostname.clone(),
                client: domain.clone(),
            }
            .reply()
        };
        self.client.helo = Some(domain);
        self.client.esmtp = extended;
        self.send(&reply);
        Flow::Continue
    }

    /// RFC 4954 §4: passwords in the clear only on loopback, unless the operator allows it.
    pub(super) fn auth_allowed(&self) -> bool {
        self.conn.stream.is_tls()
            || self.peer.ip().is_loopback()
            || self.params.allow_plaintext_auth
    }

    pub(super) async fn starttls(&mut self) -> Flow {
        if self.conn.stream.is_tls() {
            return self.reject(Say::TlsAlreadyActive);
        }
        let Some(acceptor) = self.relay.tls_acceptor.clone() else {
            return self.reject(Say::TlsNotAvailable);
        };
        self.say(Say::StartTls);
        if self.conn.flush().await.is_err() {
            return Flow::Close;
        }
        // CVE-2011-0411: commands pipelined after STARTTLS arrived in the clear and must
        // not be executed inside the TLS session.
        if !self.conn.read_buf.is_empty() {
            tracing::warn!(
                bytes = self.conn.read_buf.len(),
                "discarding data the client sent before the TLS handshake"
            );
            self.conn.read_buf.clear();
        }
        let Some(plain) = self.conn.stream.take_plain() else {
            return Flow::Close;
        };
        let handshake =
            tokio::time::timeout(self.params.command_timeout, acceptor.accept(plain)).await;
        match handshake {
            Ok(Ok(tls)) => {
                self.conn.stream = MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)));
                // RFC 3207 §4.2: the client must start over with EHLO.
                self.end_transaction().await;
                self.client = Client::default();
                tracing::debug!("STARTTLS done");
                Flow::Continue
            }
            Ok(Err(err)) => {
                tracing::info!(error = %err, "client TLS handshake failed");
                Flow::Close
            }
            Err(_) => {
                tracing::info!("client TLS handshake timed out");
                Flow::Close
            }
        }
    }
}
