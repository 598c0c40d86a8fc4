//! A relay [`Env`] with a Microsoft Graph asset (`graph`, app-only, `transport =
//! "graph"`) in front of the sandbox's fake Graph, and the messages the Graph tests send.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Env, Options};
use smtp_oauth_relay::sandbox::graph::{FakeGraph, FakeGraphConfig};
use smtp_oauth_relay::sandbox::token_issuer::apps::AppRegistration;

pub const GRAPH_EMAIL: &str = "alerts@contoso.example";
pub const GRAPH_SECRET: &str = "graph-app-secret-Rr31~x";
/// The sender the delegated Graph asset (`graph-user`, the support mailbox) serves.
pub const GRAPH_USER_SENDER: &str = "graph-user@example.com";

/// An [`Env`] with a Graph asset (`graph`, app-only) and the fake Graph behind it.
pub struct GraphEnv {
    pub env: Env,
    pub graph: FakeGraph,
    _shutdown: tokio_util::sync::DropGuard,
}

pub struct GraphOptions {
    pub large: bool,
    pub concurrency: usize,
    pub permissions: Vec<&'static str>,
    /// Extra [timeouts] lines.
    pub timeouts: String,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions {
            large: false,
            concurrency: 4,
            permissions: vec![
                "https://graph.microsoft.com/Mail.Send",
                "https://graph.microsoft.com/Mail.ReadWrite",
            ],
            timeouts: String::new(),
        }
    }
}

pub async fn graph_env(options: GraphOptions) -> GraphEnv {
    // The fake starts after the Env (it shares the Env's token registry), on a port known
    // now so the config can name it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let env = Env::with(Options {
        extra_assets: format!(
            r#"
[[asset]]
name = "graph"
email = "{GRAPH_EMAIL}"
provider = "microsoft"
transport = "graph"
grant = "client_credentials"
client_id = "graph-app"
client_secret_file = "@DIR@/graph.secret"
token_url = "@TOKEN_URL@"
api_url = "https://{addr}"
upstream_ca = "@CA@"
senders = ["{GRAPH_EMAIL}"]
graph_large_messages = {large}
graph_concurrency = {concurrency}

# Delegated (refresh token, as `authorize` would store it) for the support mailbox.
[[asset]]
name = "graph-user"
email = "{support}"
provider = "microsoft"
transport = "graph"
client_id = "support-client"
client_secret = "{support_secret}"
refresh_token_file = "@DIR@/support.refresh"
token_url = "@TOKEN_URL@"
api_url = "https://{addr}"
upstream_ca = "@CA@"
senders = ["{GRAPH_USER_SENDER}"]
"#,
            support = super::SUPPORT_EMAIL,
            support_secret = super::SUPPORT_SECRET,
            large = options.large,
            concurrency = options.concurrency,
        ),
        files: vec![("graph.secret".into(), GRAPH_SECRET.into())],
        limits: "max_message_size = 41943040".into(),
        timeouts: options.timeouts.clone(),
        ..Options::default()
    })
    .await;
    env.issuer.add_app(AppRegistration {
        client_id: "graph-app".into(),
        client_secret: GRAPH_SECRET.into(),
        permissions: options.permissions.iter().map(|p| p.to_string()).collect(),
        mailboxes: vec![GRAPH_EMAIL.into()],
    });
    let shutdown = CancellationToken::new();
    let graph = FakeGraph::start(
        listener,
        FakeGraphConfig {
            tls: env.pki.server_config().unwrap(),
            tokens: env.tokens.clone(),
            mail_dir: Some(env.path("graph-mail")),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    GraphEnv {
        env,
        graph,
        _shutdown: shutdown.drop_guard(),
    }
}

pub fn graph_message(subject: &str) -> Vec<u8> {
    format!(
        "From: <{GRAPH_EMAIL}>\r\nTo: <ops@example.net>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@client.test>\r\n\r\nbody line\r\n..a stuffed dot line\r\n"
    )
    .into_bytes()
}

/// A message of `size` bytes or more: a short text body, `attachment` as report.pdf, and
/// a text attachment (notes.txt, posted whole) that makes up the size.
pub fn big_message(attachment: &[u8], size: usize) -> Vec<u8> {
    use base64::Engine as _;
    let encode = |bytes: &[u8], out: &mut Vec<u8>| {
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        for line in encoded.as_bytes().chunks(76) {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    };
    let mut m = format!(
        "From: <{GRAPH_EMAIL}>\r\nTo: <ops@example.net>\r\nSubject: big\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\n\
         The report is attached.\r\n--zz\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    encode(attachment, &mut m);
    m.extend_from_slice(
        b"--zz\r\nContent-Type: text/plain; name=\"notes.txt\"\r\n\
Content-Disposition: attachment; filename=\"notes.txt\"\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    );
    // base64 with line breaks: 78 bytes per 57 raw.
    let missing = (size + 1024).saturating_sub(m.len() + 10);
    encode(&notes(missing / 78 * 57), &mut m);
    m.extend_from_slice(b"--zz--\r\n");
    m
}

/// The filler attachment's bytes.
pub fn notes(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

pub fn attachment(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// The delivered MIME split as the relay builds it: the inserted `Bcc:` field (empty when
/// none), the Received header, and the client's message.
pub fn split_graph_mime(mime: &[u8]) -> (String, String, Vec<u8>) {
    let mut bcc = String::new();
    let mut rest = mime;
    if rest.len() >= 4 && rest[..4].eq_ignore_ascii_case(b"bcc:") {
        // The field and its folded lines.
        let mut end = 0;
        loop {
            let line_end = rest[end..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .map_or(rest.len(), |p| end + p + 2);
            end = line_end;
            if end >= rest.len() || !matches!(rest[end], b' ' | b'\t') {
                break;
            }
        }
        bcc = String::from_utf8_lossy(&rest[..end]).into_owned();
        rest = &rest[end..];
    }
    let (received, message) = super::split_received(rest);
    (bcc, received, message)
}
