//! The Graph transport against the sandbox's fake Graph and token issuer, over real
//! HTTPS: byte-exact sendMail, the draft path with an upload session, every error
//! mapping, the retry after a 401, draft clean-up, and the concurrency cap.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::graph::{FileSource, GraphMessage, GraphPath, GraphTimeouts, GraphTransport};
use super::graph_error::GraphError;
use crate::config::GraphSettings;
use crate::oauth::token::TokenManager;
use crate::sandbox::graph::{FakeGraph, FakeGraphConfig, FaultKind, GraphFault, Route};
use crate::sandbox::pki::TestPki;
use crate::sandbox::token_issuer::apps::AppRegistration;
use crate::sandbox::token_issuer::{AccessTokens, TokenIssuer};

const MAILBOX: &str = "alerts@contoso.example";
const SECRET: &str = "graph-app-secret-Pn4";

struct Fixture {
    graph: FakeGraph,
    issuer: TokenIssuer,
    tokens: TokenManager,
    config: crate::config::Config,
    dir: tempfile::TempDir,
    _shutdown: tokio_util::sync::DropGuard,
}

impl Fixture {
    async fn new(permissions: &[&str]) -> Fixture {
        crate::tls::install_default_provider();
        let shutdown = CancellationToken::new();
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate(&["localhost", "127.0.0.1"]).unwrap();
        let access = AccessTokens::new();
        let issuer = TokenIssuer::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Vec::new(),
            access.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        issuer.add_app(AppRegistration {
            client_id: "graph-app".into(),
            client_secret: SECRET.into(),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
            mailboxes: vec![MAILBOX.into()],
        });
        let graph = FakeGraph::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            FakeGraphConfig {
                tls: pki.server_config().unwrap(),
                tokens: access,
                mail_dir: None,
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &pki.ca_cert_pem).unwrap();
        let text = format!(
            r#"
[[user]]
name = "u"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$ZHVtbXloYXNoZHVtbXloYXNoZHVtbXloYXNoZHVtbXk"
assets = ["m365"]

[[asset]]
name = "m365"
email = "{MAILBOX}"
provider = "custom"
grant = "client_credentials"
client_id = "graph-app"
client_secret = "{SECRET}"
scope = "https://graph.microsoft.com/.default"
token_url = "{token_url}"
auth_url = "{token_url}"
upstream = "127.0.0.1:1"
upstream_ca = "{ca}"
senders = ["{MAILBOX}"]
"#,
            token_url = issuer.token_url(),
            ca = ca.display(),
        );
        let config = crate::config::parse(&text, &dir.path().join("relay.toml")).unwrap();
        let tokens = TokenManager::new(&config).unwrap();
        Fixture {
            graph,
            issuer,
            tokens,
            config,
            dir,
            _shutdown: shutdown.drop_guard(),
        }
    }

    fn transport(
        &self,
        large_messages: bool,
        concurrency: usize,
        final_secs: u64,
    ) -> GraphTransport {
        let asset = Arc::clone(&self.config.assets[0]);
        let http = super::http::client_for(&asset, Duration::from_secs(5)).unwrap();
        GraphTransport::new(
            asset,
            GraphSettings {
                api_url: self.graph.api_url(),
                large_messages,
                concurrency,
            },
            GraphTimeouts {
                command: Duration::from_secs(5),
                final_reply: Duration::from_secs(final_secs),
            },
            http,
        )
    }

    fn source(&self, name: &str, content: &[u8]) -> FileSource {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        FileSource {
            prefix: PREFIX.to_vec(),
            path,
            file_len: content.len() as u64,
        }
    }
}

const PREFIX: &[u8] = b"Received: from client by relay.test; Fri, 4 Dec 2026 10:00:00 +0000\r\n";

fn small_message() -> Vec<u8> {
    b"From: alerts@contoso.example\r\nTo: ops@example.net\r\nSubject: disk\r\n\r\nfull\r\n.. dot\r\n"
        .to_vec()
}

async fn send(
    f: &Fixture,
    transport: &GraphTransport,
    content: &[u8],
) -> Result<GraphPath, GraphError> {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut source = f.source(&format!("spool-{n}.eml"), content);
    let recipients = vec!["ops@example.net".to_string()];
    transport
        .send(
            &f.tokens,
            &mut GraphMessage {
                source: &mut source,
                recipients: &recipients,
            },
        )
        .await
}

const SEND: &str = "https://graph.microsoft.com/Mail.Send";
const READ_WRITE: &str = "https://graph.microsoft.com/Mail.ReadWrite";

#[tokio::test]
async fn a_small_message_arrives_byte_exact_through_send_mail() {
    let f = Fixture::new(&[SEND]).await;
    let t = f.transport(false, 4, 10);
    assert_eq!(
        send(&f, &t, &small_message()).await,
        Ok(GraphPath::SendMail)
    );
    let delivered = f.graph.delivered();
    let mut expected = PREFIX.to_vec();
    expected.extend_from_slice(&small_message());
    assert_eq!(delivered[0].mime, expected);
    assert!(delivered[0].app_only);
    assert_eq!(delivered[0].mailbox, MAILBOX);
    // A second message reuses the cached token.
    assert_eq!(
        send(&f, &t, &small_message()).await,
        Ok(GraphPath::SendMail)
    );
    assert_eq!(f.issuer.refresh_count(), 1);
}

/// A message with `attachment` (through an upload session when it is big) and a 1.5 MB
/// second attachment that is posted whole.
fn large_message(attachment: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let mut m = b"From: alerts@contoso.example\r\nTo: ops@example.net\r\nSubject: big report\r\n\
Message-ID: <big-1@contoso.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n\
--zz\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n--zz\r\n\
Content-Type: application/octet-stream; name=\"report.bin\"\r\nContent-Disposition: attachment; filename=\"report.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    let encoded = base64::engine::general_purpose::STANDARD.encode(attachment);
    for line in encoded.as_bytes().chunks(76) {
        m.extend_from_slice(line);
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"--zz\r\nContent-Type: text/plain; name=\"small.txt\"\r\nContent-Disposition: attachment; filename=\"small.txt\"\r\nContent-Transfer-Encoding: base64\r\n\r\n");
    let small = base64::engine::general_purpose::STANDARD.encode(small_attachment());
    for line in small.as_bytes().chunks(76) {
        m.extend_from_slice(line);
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"--zz--\r\n");
    m
}

fn small_attachment() -> Vec<u8> {
    (0..1_500_000).map(|i| b'a' + (i % 26) as u8).collect()
}

fn attachment_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

#[tokio::test]
async fn large_messages_need_the_option_and_then_take_the_draft_path() {
    let f = Fixture::new(&[SEND, READ_WRITE]).await;
    // A 10 MiB message with a 6 MiB attachment.
    let attachment = attachment_bytes(6 * 1024 * 1024);
    let message = large_message(&attachment);
    assert!(message.len() > 10 * 1024 * 1024, "{}", message.len());
    let off = f.transport(false, 4, 10);
    assert!(matches!(
        send(&f, &off, &message).await,
        Err(GraphError::NeedsLargeMessages { .. })
    ));
    assert_eq!(f.graph.requests(Route::SendMail), 0, "nothing was sent");

    let on = f.transport(true, 4, 10);
    assert_eq!(send(&f, &on, &message).await, Ok(GraphPath::Draft));
    let delivered = f.graph.delivered();
    let sent = &delivered[0];
    let names: Vec<_> = sent.attachments.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["report.bin", "small.txt"]);
    assert_eq!(
        sent.attachments[0].bytes, attachment,
        "attachment bytes identical"
    );
    assert!(sent.attachments[0].uploaded);
    assert!(!sent.attachments[1].uploaded);
    assert_eq!(sent.attachments[1].bytes, small_attachment());
    assert_eq!(sent.attachments[1].content_type, "text/plain");
    let draft = sent.draft.as_ref().unwrap();
    assert_eq!(draft["subject"], "big report");
    assert_eq!(draft["internetMessageId"], "<big-1@contoso.example>");
    assert_eq!(sent.recipients, ["ops@example.net"]);
    assert!(f.graph.requests(Route::Upload) >= 2);
    assert_eq!(f.graph.open_drafts(), 0);
}

#[tokio::test]
async fn a_failed_draft_send_deletes_the_draft() {
    let f = Fixture::new(&[SEND, READ_WRITE]).await;
    let t = f.transport(true, 4, 10);
    f.graph.add_fault(GraphFault::status(
        Some(Route::Send),
        500,
        "ErrorInternalServerError",
        1,
    ));
    let message = large_message(&attachment_bytes(3_000_000));
    assert!(matches!(
        send(&f, &t, &message).await,
        Err(GraphError::Failed { status: 500, .. })
    ));
    assert_eq!(f.graph.deleted_drafts(), 1);
    assert_eq!(f.graph.open_drafts(), 0);
    assert!(f.graph.delivered().is_empty());
}

#[tokio::test]
async fn a_refused_token_is_refreshed_once_and_the_body_replayed() {
    let f = Fixture::new(&[SEND]).await;
    let t = f.transport(false, 4, 10);
    f.graph.add_fault(GraphFault::status(
        Some(Route::SendMail),
        401,
        "InvalidAuthenticationToken",
        1,
    ));
    assert_eq!(
        send(&f, &t, &small_message()).await,
        Ok(GraphPath::SendMail)
    );
    assert_eq!(f.issuer.refresh_count(), 2);
    assert_eq!(f.graph.delivered().len(), 1);
    assert!(f.graph.delivered()[0].mime.ends_with(b".. dot\r\n"));
    // Twice in a row: the client hears 454 (Unauthorized).
    f.graph.add_fault(GraphFault::status(
        Some(Route::SendMail),
        401,
        "InvalidAuthenticationToken",
        2,
    ));
    assert!(matches!(
        send(&f, &t, &small_message()).await,
        Err(GraphError::Unauthorized { .. })
    ));
}

#[tokio::test]
async fn every_graph_answer_maps_to_its_error() {
    let f = Fixture::new(&[SEND]).await;
    let t = f.transport(false, 4, 1);
    let fault = |status: u16, code: &str, retry_after: Option<u64>| GraphFault {
        route: Some(Route::SendMail),
        kind: FaultKind::Status {
            status,
            code: code.into(),
            message: format!("{code} from the test"),
            retry_after,
        },
        times: 1,
    };
    type Expect = fn(&GraphError) -> bool;
    let cases: Vec<(GraphFault, Expect)> = vec![
        (fault(429, "ApplicationThrottled", Some(7)), |e| {
            matches!(
                e,
                GraphError::Throttled {
                    status: 429,
                    retry_after: Some(7),
                    ..
                }
            )
        }),
        (fault(503, "ServiceUnavailable", Some(3)), |e| {
            matches!(e, GraphError::Throttled { status: 503, .. })
        }),
        (fault(413, "ErrorRequestEntityTooLarge", None), |e| {
            matches!(e, GraphError::TooLarge { .. })
        }),
        (fault(400, "ErrorMessageSizeExceeded", None), |e| {
            matches!(e, GraphError::TooLarge { .. })
        }),
        (
            fault(400, "ErrorInvalidRecipients", None),
            |e| matches!(e, GraphError::Rejected { message, .. } if message.contains("ErrorInvalidRecipients from the test")),
        ),
        (fault(500, "ErrorInternalServerError", None), |e| {
            matches!(e, GraphError::Failed { status: 500, .. })
        }),
        (fault(503, "ServiceUnavailable", None), |e| {
            matches!(e, GraphError::Failed { status: 503, .. })
        }),
        (
            GraphFault {
                route: Some(Route::SendMail),
                kind: FaultKind::Hang,
                times: 1,
            },
            |e| e.possible_duplicate(),
        ),
        (
            GraphFault {
                route: Some(Route::SendMail),
                kind: FaultKind::CloseAfterBody,
                times: 1,
            },
            |e| e.possible_duplicate(),
        ),
    ];
    for (fault, expected) in cases {
        let label = format!("{fault:?}");
        f.graph.add_fault(fault);
        let result = send(&f, &t, &small_message()).await;
        match result {
            Err(error) => assert!(expected(&error), "{label}: {error:?}"),
            Ok(path) => panic!("{label}: delivered via {path:?}"),
        }
    }
    assert!(f.graph.delivered().is_empty(), "no false success");
}

#[tokio::test]
async fn a_missing_permission_is_named() {
    // The app has Mail.Send but no Mail.ReadWrite: the draft path is refused with 403.
    let f = Fixture::new(&[SEND]).await;
    let t = f.transport(true, 4, 10);
    let error = send(&f, &t, &large_message(&attachment_bytes(3_000_000)))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, GraphError::Forbidden { .. }), "{error:?}");
    assert!(
        text.contains("Mail.ReadWrite") && text.contains("admin consent"),
        "{text}"
    );
    // Without any permission sendMail is refused the same way.
    let f = Fixture::new(&[]).await;
    let t = f.transport(false, 4, 10);
    let error = send(&f, &t, &small_message()).await.unwrap_err();
    assert!(error.to_string().contains("Mail.Send"), "{error}");
}

#[tokio::test]
async fn sends_per_asset_are_capped_and_waiting_is_bounded() {
    let f = Fixture::new(&[SEND]).await;
    f.graph.set_delay(Duration::from_millis(200));
    let t = f.transport(false, 2, 10);
    let content = small_message();
    let recipients = vec!["ops@example.net".to_string()];
    let send_one = |n: usize| {
        let mut source = f.source(&format!("s{n}.eml"), &content);
        let t = &t;
        let recipients = &recipients;
        let tokens = &f.tokens;
        async move {
            t.send(
                tokens,
                &mut GraphMessage {
                    source: &mut source,
                    recipients,
                },
            )
            .await
        }
    };
    let sends = (0..6).map(send_one);
    for result in futures_util::future::join_all(sends).await {
        assert_eq!(result, Ok(GraphPath::SendMail));
    }
    assert_eq!(f.graph.max_in_flight(), 2);

    // One slot, a slow Graph, and a wait bounded by the command timeout.
    f.graph.set_delay(Duration::from_millis(1500));
    let mut t = f.transport(false, 1, 10);
    t.timeouts.command = Duration::from_millis(300);
    let (a, b) = tokio::join!(send(&f, &t, &content), send(&f, &t, &content));
    let busy = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(GraphError::Busy { .. })))
        .count();
    assert_eq!(busy, 1, "{a:?} {b:?}");
}

#[tokio::test]
async fn check_reads_the_permissions_of_the_token() {
    let f = Fixture::new(&[SEND]).await;
    let summary = super::graph_check::prove(&f.tokens, &f.config.assets[0], false)
        .await
        .unwrap();
    assert!(
        summary.contains("app-only token with Mail.Send"),
        "{summary}"
    );
    // With the draft path on, Mail.ReadWrite is missing.
    let error = super::graph_check::prove(&f.tokens, &f.config.assets[0], true)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("Mail.ReadWrite") && error.contains("admin consent"),
        "{error}"
    );
    // No permission consented: the token has no roles.
    let f = Fixture::new(&[]).await;
    let error = super::graph_check::prove(&f.tokens, &f.config.assets[0], false)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no permission"), "{error}");
    assert!(!error.contains(SECRET));
}

/// A log sink for the secrecy test.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// A current-thread runtime: the relay's side and the fakes log on this thread.
#[tokio::test]
async fn no_secret_or_token_reaches_a_trace_log() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();

    let f = Fixture::new(&[SEND, READ_WRITE]).await;
    let t = f.transport(true, 4, 10);
    // A send, a refused token and its retry, a refusal, the draft path with a failed send
    // (and the draft deleted).
    assert!(send(&f, &t, &small_message()).await.is_ok());
    f.graph.add_fault(GraphFault::status(
        Some(Route::SendMail),
        401,
        "InvalidAuthenticationToken",
        1,
    ));
    assert!(send(&f, &t, &small_message()).await.is_ok());
    f.graph.add_fault(GraphFault::status(
        Some(Route::SendMail),
        403,
        "ErrorAccessDenied",
        1,
    ));
    assert!(send(&f, &t, &small_message()).await.is_err());
    f.graph.add_fault(GraphFault::status(
        Some(Route::Send),
        503,
        "ServiceUnavailable",
        1,
    ));
    assert!(send(&f, &t, &large_message(&attachment_bytes(3_000_000)))
        .await
        .is_err());
    let authorization = f.graph.last_authorization().unwrap();
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("refreshing once"),
        "logs were captured: {logs}"
    );
    assert!(!logs.contains(SECRET), "client secret logged");
    let token = authorization.trim_start_matches("Bearer ");
    let signature = token.rsplit('.').next().unwrap();
    assert!(!logs.contains(signature), "access token logged");
}
