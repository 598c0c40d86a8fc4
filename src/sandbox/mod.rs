//! An embedded, Gmail-like upstream for running and testing the relay without a Google account.
//!
//! The pieces are real network services (real TLS, real SMTP, real HTTP) so that the relay's
//! production code paths are exercised unchanged: [`pki`] makes a throwaway CA and server
//! certificate, [`token_issuer`] is a fake OAuth 2.0 token endpoint and [`gmail`] a fake
//! `smtp.gmail.com`. [`SandboxUpstream`] wires all three together for `serve --sandbox`.

pub mod gmail;
pub mod gmail_api;
pub mod graph;
pub mod jwt;
pub mod pki;
pub mod token_issuer;

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Errors raised while setting up the sandbox services.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A socket or file operation failed.
    #[error("sandbox I/O error while {context}: {source}")]
    Io {
        /// What the sandbox was doing when the error happened.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// rustls rejected the generated certificate, key or protocol settings.
    #[error("sandbox TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),
    /// rcgen could not create the throwaway CA or server certificate.
    #[error("sandbox certificate generation failed: {0}")]
    CertGen(#[from] rcgen::Error),
}

impl SandboxError {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> SandboxError {
        move |source| SandboxError::Io { context, source }
    }
}

/// Everything `serve --sandbox` needs: starts a PKI, a token issuer and a fake Gmail (STARTTLS on
/// port 587-style) on 127.0.0.1:0 with one account, saving mail to `mail_dir` when given.
pub struct SandboxUpstream {
    pub gmail: gmail::FakeGmail,
    /// The fake Microsoft Graph (`--sandbox-transport graph`), with an app registered for
    /// the client-credentials grant (`graph_client_id`, `graph_client_secret`).
    pub graph: graph::FakeGraph,
    pub graph_client_id: String,
    pub graph_client_secret: String,
    /// The Gmail API fake (HTTPS with the same CA), for `--sandbox-transport gmail-api`.
    pub gmail_api: gmail_api::FakeGmailApi,
    pub issuer: token_issuer::TokenIssuer,
    pub pki: pki::TestPki,
    pub email: String,
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
}

/// The sandbox account's e-mail address.
pub const SANDBOX_EMAIL: &str = "sandbox@example.com";

impl SandboxUpstream {
    pub async fn start(
        mail_dir: Option<PathBuf>,
        shutdown: CancellationToken,
    ) -> Result<Self, SandboxError> {
        // Both "localhost" and the literal IP so the relay can be pointed at either form.
        let pki = pki::TestPki::generate(&["localhost", "127.0.0.1"])?;
        let tokens = token_issuer::AccessTokens::new();

        // Shapes mimic Google's so log output and config files look like the real thing.
        let account = token_issuer::IssuerAccount {
            client_id: format!(
                "{}-{}.apps.googleusercontent.com",
                random_digits(12),
                random_hex(16)
            ),
            client_secret: format!("GOCSPX-sandbox-{}", random_hex(12)),
            refresh_token: format!("1//0sandbox-{}", random_hex(24)),
            email: SANDBOX_EMAIL.to_owned(),
        };

        let issuer_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(SandboxError::io("binding the sandbox token issuer"))?;
        let issuer = token_issuer::TokenIssuer::start(
            issuer_listener,
            vec![account.clone()],
            tokens.clone(),
            shutdown.clone(),
        )
        .await?;

        let gmail_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(SandboxError::io("binding the sandbox SMTP server"))?;
        let api_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(SandboxError::io("binding the sandbox Gmail API"))?;
        let gmail_api = gmail_api::FakeGmailApi::start(
            api_listener,
            pki.server_config()?,
            tokens.clone(),
            mail_dir.clone(),
            shutdown.clone(),
        )
        .await?;
        let mut config = gmail::FakeGmailConfig::new(pki.server_config()?, tokens);
        config.mail_dir = mail_dir.clone();
        let gmail = gmail::FakeGmail::start(gmail_listener, config, shutdown.clone()).await?;

        // Microsoft Graph: an app with Mail.Send and Mail.ReadWrite (admin consent given).
        let graph_client_id = format!("sandbox-graph-{}", random_hex(8));
        let graph_client_secret = format!("sandbox~graph~{}", random_hex(16));
        issuer.add_app(token_issuer::apps::AppRegistration {
            client_id: graph_client_id.clone(),
            client_secret: graph_client_secret.clone(),
            permissions: vec![
                format!("{}/Mail.Send", token_issuer::apps::GRAPH_RESOURCE),
                format!("{}/Mail.ReadWrite", token_issuer::apps::GRAPH_RESOURCE),
            ],
            mailboxes: Vec::new(),
        });
        let graph_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(SandboxError::io("binding the sandbox Graph server"))?;
        let graph = graph::FakeGraph::start(
            graph_listener,
            graph::FakeGraphConfig {
                tls: pki.server_config()?,
                tokens: issuer.tokens().clone(),
                mail_dir: mail_dir.clone(),
            },
            shutdown,
        )
        .await?;

        Ok(SandboxUpstream {
            gmail,
            graph,
            graph_client_id,
            graph_client_secret,
            gmail_api,
            issuer,
            pki,
            email: account.email,
            client_id: account.client_id,
            client_secret: account.client_secret,
            refresh_token: account.refresh_token,
        })
    }
}

impl fmt::Debug for SandboxUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxUpstream")
            .field("gmail", &self.gmail)
            .field("graph", &self.graph)
            .field("gmail_api", &self.gmail_api)
            .field("issuer", &self.issuer)
            .field("pki", &self.pki)
            .field("email", &self.email)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("refresh_token", &"<redacted>")
            .finish()
    }
}

/// Fills `buf` with unpredictable bytes.
///
/// Uses the same ring RNG as rustls so no extra crate is needed. The fallback only exists because
/// the RNG API is fallible; it is good enough for a sandbox's demo credentials.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    let provider = rustls::crypto::ring::default_provider();
    if provider.secure_random.fill(buf).is_ok() {
        return;
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    for chunk in buf.chunks_mut(8) {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let bytes = hasher.finish().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// `n` random bytes as lowercase hex (2n characters).
pub(crate) fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    random_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_digits(n: usize) -> String {
    let mut buf = vec![0u8; n];
    random_bytes(&mut buf);
    buf.iter().map(|b| char::from(b'0' + b % 10)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure
mod tests {
    use super::*;

    #[test]
    fn random_hex_has_requested_length_and_varies() {
        let a = random_hex(16);
        let b = random_hex(16);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn sandbox_upstream_end_to_end() {
        use base64::Engine as _;
        use gmail::tests::Client;
        use tokio::net::TcpStream;

        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let sandbox = SandboxUpstream::start(Some(dir.path().to_path_buf()), shutdown.clone())
            .await
            .unwrap();
        assert_eq!(sandbox.email, SANDBOX_EMAIL);
        let debug = format!("{sandbox:?}");
        assert!(!debug.contains(&sandbox.client_secret));
        assert!(!debug.contains(&sandbox.refresh_token));

        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", sandbox.client_id, sandbox.client_secret));
        let resp = reqwest::Client::new()
            .post(sandbox.issuer.token_url())
            .header("authorization", format!("Basic {basic}"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", sandbox.refresh_token.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        let token = body["access_token"].as_str().unwrap().to_owned();

        let mut c = Client::new(TcpStream::connect(sandbox.gmail.addr()).await.unwrap());
        assert_eq!(c.reply().await.0, 220);
        assert_eq!(c.cmd("EHLO relay.local").await.0, 250);
        assert_eq!(c.cmd("STARTTLS").await.0, 220);
        let connector = tokio_rustls::TlsConnector::from(sandbox.pki.client_config().unwrap());
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = Client::new(connector.connect(name, c.into_inner()).await.unwrap());
        assert_eq!(c.cmd("EHLO relay.local").await.0, 250);
        let auth = gmail::xoauth2_response(&sandbox.email, &token);
        assert_eq!(c.cmd(&format!("AUTH XOAUTH2 {auth}")).await.0, 235);
        assert_eq!(c.cmd("MAIL FROM:<sandbox@example.com>").await.0, 250);
        assert_eq!(c.cmd("RCPT TO:<someone@example.org>").await.0, 250);
        assert_eq!(c.cmd("DATA").await.0, 354);
        assert_eq!(c.cmd("Subject: sandbox\r\n\r\nhello\r\n.").await.0, 250);
        assert_eq!(c.cmd("QUIT").await.0, 221);

        assert!(
            sandbox
                .gmail
                .wait_for_messages(1, std::time::Duration::from_secs(2))
                .await
        );
        assert_eq!(sandbox.gmail.messages()[0].auth_user, SANDBOX_EMAIL);
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1);

        // After shutdown nothing accepts connections any more.
        shutdown.cancel();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let refused = match TcpStream::connect(sandbox.gmail.addr()).await {
            Err(_) => true,
            Ok(stream) => {
                let mut c = Client::new(stream);
                c.closed().await
            }
        };
        assert!(refused);
    }
}
