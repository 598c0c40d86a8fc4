//! The fake Graph against a plain reqwest client: the oracle's own rules hold.

use base64::Engine as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::sandbox::pki::TestPki;
use crate::sandbox::token_issuer::apps::AppToken;

struct Fixture {
    graph: FakeGraph,
    http: reqwest::Client,
    tokens: AccessTokens,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn fixture() -> Fixture {
    let pki = TestPki::generate(&["localhost", "127.0.0.1"]).unwrap();
    let tokens = AccessTokens::new();
    let shutdown = CancellationToken::new();
    let graph = FakeGraph::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        FakeGraphConfig {
            tls: pki.server_config().unwrap(),
            tokens: tokens.clone(),
            mail_dir: None,
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    Fixture {
        graph,
        http,
        tokens,
        _shutdown: shutdown.drop_guard(),
    }
}

fn app(roles: &[&str], mailboxes: &[&str]) -> AppToken {
    AppToken {
        client_id: "app".into(),
        audience: "https://graph.microsoft.com".into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        mailboxes: mailboxes.iter().map(|r| r.to_string()).collect(),
    }
}

#[tokio::test]
async fn send_mail_takes_base64_mime_and_checks_the_token() {
    let f = fixture().await;
    let url = format!("{}/v1.0/users/a%40x.org/sendMail", f.graph.api_url());
    let mime = b"To: b@y.org\r\nBcc: c@z.org\r\nSubject: s\r\n\r\nhi\r\n";
    let body = base64::engine::general_purpose::STANDARD.encode(mime);
    let post = |token: &str| {
        f.http
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "text/plain")
            .body(body.clone())
            .send()
    };
    assert_eq!(post("nope").await.unwrap().status(), 401);
    let delegated = f.tokens.issue("a@x.org");
    assert_eq!(post(&delegated).await.unwrap().status(), 202);
    let delivered = f.graph.delivered();
    assert_eq!(delivered[0].mime, mime.to_vec());
    assert_eq!(delivered[0].recipients, ["b@y.org", "c@z.org"]);

    f.tokens
        .register_app("app-read", app(&["Mail.ReadWrite"], &[]));
    assert_eq!(post("app-read").await.unwrap().status(), 403);
    f.tokens
        .register_app("app-other", app(&["Mail.Send"], &["other@x.org"]));
    assert_eq!(post("app-other").await.unwrap().status(), 403);
    f.tokens
        .register_app("app-send", app(&["Mail.Send"], &["A@x.org"]));
    assert_eq!(post("app-send").await.unwrap().status(), 202);
    assert!(f.graph.delivered()[1].app_only);

    let big = "A".repeat(MAX_REQUEST_BYTES + 4);
    let resp = f
        .http
        .post(&url)
        .bearer_auth(&delegated)
        .header("content-type", "text/plain")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn upload_sessions_check_every_range() {
    let f = fixture().await;
    let token = f.tokens.issue("a@x.org");
    let base = format!("{}/v1.0/users/a@x.org/messages", f.graph.api_url());
    let draft: serde_json::Value = f
        .http
        .post(&base)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(serde_json::json!({"subject": "big", "toRecipients": [{"emailAddress": {"address": "b@y.org"}}]}).to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let id = draft["id"].as_str().unwrap();
    let size = 700 * 1024;
    let session: serde_json::Value = f
        .http
        .post(format!("{base}/{id}/attachments/createUploadSession"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(serde_json::json!({"AttachmentItem": {"attachmentType": "file", "name": "a.bin", "size": size}}).to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let upload_url = session["uploadUrl"].as_str().unwrap();
    let put = |first: usize, last: usize, bearer: bool| {
        let mut req = f
            .http
            .put(upload_url)
            .header("content-range", format!("bytes {first}-{last}/{size}"))
            .body(vec![7u8; last + 1 - first]);
        if bearer {
            req = req.bearer_auth(&token);
        }
        req.send()
    };
    assert_eq!(put(0, 320 * 1024 - 1, true).await.unwrap().status(), 401);
    // Not a multiple of 320 KiB and not the last range.
    assert_eq!(put(0, 1000, false).await.unwrap().status(), 400);
    assert_eq!(put(0, 320 * 1024 - 1, false).await.unwrap().status(), 200);
    // A gap.
    assert_eq!(
        put(640 * 1024, size - 1, false).await.unwrap().status(),
        400
    );
    assert_eq!(
        put(320 * 1024, size - 1, false).await.unwrap().status(),
        201
    );
    let sent = f
        .http
        .post(format!("{base}/{id}/send"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let delivered = f.graph.delivered();
    assert_eq!(delivered[0].attachments[0].bytes, vec![7u8; size]);
    assert!(delivered[0].attachments[0].uploaded);
}
