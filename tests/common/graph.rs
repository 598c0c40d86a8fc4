//! A relay [`Env`] with a Microsoft Graph asset (`graph`, app-only, `transport =
//! "graph"`) in front of the sandbox's fake Graph, and the messages the Graph tests send.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Env, Options};
use smtp_oauth_relay::sandbox::graph::{FakeGraph, FakeGraphConfig};
use smtp_oauth_relay::sandbox::token_issuer::apps::AppRegistration;

pub const GRAPH_EMAIL: &str = "alerts@contoso.example";
pub const GRAPH_SECRET: &str = "graph-app-secret-Rr31~x";

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
"#,
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

/// A message of `size` bytes or more whose attachment has `attachment` bytes.
pub fn big_message(attachment: &[u8], size: usize) -> Vec<u8> {
    use base64::Engine as _;
    let mut m = format!(
        "From: <{GRAPH_EMAIL}>\r\nTo: <ops@example.net>\r\nSubject: big\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\n"
    )
    .into_bytes();
    // Text filler up to the wanted size (after the attachment's base64).
    let encoded = base64::engine::general_purpose::STANDARD.encode(attachment);
    let attachment_wire = encoded.len() + encoded.len() / 76 * 2 + 400;
    while m.len() + attachment_wire < size {
        m.extend_from_slice(b"filler text line of a large report, seventy-odd characters long\r\n");
    }
    m.extend_from_slice(
        b"--zz\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n\
Content-Disposition: attachment; filename=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    );
    for line in encoded.as_bytes().chunks(76) {
        m.extend_from_slice(line);
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"--zz--\r\n");
    m
}

pub fn attachment(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

