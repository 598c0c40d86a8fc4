//! A fake Gmail API: `POST /upload/gmail/v1/users/me/messages/send?uploadType=media` over
//! real TLS (the sandbox CA), the bearer token checked against the sandbox token issuer's
//! [`AccessTokens`], recipients derived from To/Cc/Bcc, Bcc stripped, and the message saved
//! as `.eml` (always to disk: a 20 MiB message is never held in memory). `GET|POST
//! /tokeninfo` answers like Google's token introspection with a configurable scope.
//! Failures can be switched on for tests ([`ApiFault`]).
//!
//! It shares no parsing code with the relay (an oracle must not share the code it checks):
//! its header reading is its own, deliberately simple and strict.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::token_issuer::AccessTokens;
use super::SandboxError;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

/// Google's `mediaUpload.maxSize` for messages.send.
pub const MAX_UPLOAD: u64 = 36_700_160;
/// The scope `/tokeninfo` reports unless told otherwise.
pub const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/gmail.send";

/// A failure the fake answers the next upload with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiFault {
    /// An HTTP error with Google's JSON error document.
    Status {
        code: u16,
        status: &'static str,
        reason: &'static str,
        message: &'static str,
    },
    /// Read the whole body, then never answer.
    Hang,
    /// Read the whole body, then drop the connection without an answer.
    CutAfterBody,
}

impl ApiFault {
    pub fn status(
        code: u16,
        status: &'static str,
        reason: &'static str,
        message: &'static str,
    ) -> ApiFault {
        ApiFault::Status {
            code,
            status,
            reason,
            message,
        }
    }
}

/// A message the fake accepted.
#[derive(Debug, Clone)]
pub struct ApiMessage {
    pub id: String,
    /// The account whose token sent it.
    pub account: String,
    /// Lowercase addresses from To, Cc and Bcc.
    pub recipients: Vec<String>,
    /// The message as delivered (Bcc removed), on disk.
    pub path: PathBuf,
}

struct State {
    faults: VecDeque<ApiFault>,
    messages: Vec<ApiMessage>,
    uploads: usize,
    scope: String,
    counter: u64,
}

struct Shared {
    tokens: AccessTokens,
    dir: PathBuf,
    /// Kept alive while the fake runs when it made its own directory.
    _own_dir: Option<tempfile::TempDir>,
    state: Mutex<State>,
    shutdown: CancellationToken,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Handle of a running fake Gmail API.
#[derive(Clone)]
pub struct FakeGmailApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeGmailApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGmailApi")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeGmailApi {
    /// Serves on `listener` with `tls` until `shutdown`; messages go to `mail_dir` (or a
    /// private temporary directory).
    pub async fn start(
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        tokens: AccessTokens,
        mail_dir: Option<PathBuf>,
        shutdown: CancellationToken,
    ) -> Result<FakeGmailApi, SandboxError> {
        let addr = listener
            .local_addr()
            .map_err(SandboxError::io("reading the Gmail API address"))?;
        let (dir, own_dir) = match mail_dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .map_err(SandboxError::io("creating the mail directory"))?;
                (dir, None)
            }
            None => {
                let own =
                    tempfile::tempdir().map_err(SandboxError::io("creating a mail directory"))?;
                (own.path().to_path_buf(), Some(own))
            }
        };
        let shared = Arc::new(Shared {
            tokens,
            dir,
            _own_dir: own_dir,
            state: Mutex::new(State {
                faults: VecDeque::new(),
                messages: Vec::new(),
                uploads: 0,
                scope: DEFAULT_SCOPE.to_string(),
                counter: 0,
            }),
            shutdown,
        });
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(Arc::new(tls)),
            shared.clone(),
        ));
        Ok(FakeGmailApi { addr, shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `api_url` to configure.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// The `tokeninfo_url` to configure.
    pub fn tokeninfo_url(&self) -> String {
        format!("{}/tokeninfo", self.url())
    }

    /// Answers the next upload with `fault` (queued; each is used once).
    pub fn push_fault(&self, fault: ApiFault) {
        self.shared.state().faults.push_back(fault);
    }

    /// The scope `/tokeninfo` reports.
    pub fn set_scope(&self, scope: &str) {
        self.shared.state().scope = scope.to_string();
    }

    pub fn messages(&self) -> Vec<ApiMessage> {
        self.shared.state().messages.clone()
    }

    /// Upload requests seen (accepted or not).
    pub fn uploads(&self) -> usize {
        self.shared.state().uploads
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(30), acceptor.accept(stream)).await
            else {
                return;
            };
            let service_shared = shared.clone();
            let service = hyper::service::service_fn(move |request| {
                let shared = service_shared.clone();
                async move { handle(&shared, request).await }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                _ = conn => {}
                () = shared.shutdown.cancelled() => {}
            }
        });
    }
}

type HttpResponse = Response<Full<Bytes>>;

/// An error from the service makes hyper drop the connection without an answer.
#[derive(Debug)]
struct Cut;
impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection cut on purpose")
    }
}
impl std::error::Error for Cut {}

async fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Result<HttpResponse, Cut> {
    let path = request.uri().path().to_string();
    if path == "/tokeninfo" {
        return Ok(tokeninfo(shared, request).await);
    }
    if path != "/upload/gmail/v1/users/me/messages/send" || request.method() != hyper::Method::POST
    {
        return Ok(google_error(404, "NOT_FOUND", "notFound", "Not Found"));
    }
    if request.uri().query() != Some("uploadType=media") {
        return Ok(google_error(
            400,
            "INVALID_ARGUMENT",
            "invalidArgument",
            "uploadType must be media",
        ));
    }
    let bearer = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let content_type_ok = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"message/rfc822"));
    shared.state().uploads += 1;
    // The body is read (to disk) before anything is decided, as Google does.
    let spooled = match receive(shared, request.into_body()).await {
        Ok(spooled) => spooled,
        Err(Received::TooBig) => {
            return Ok(google_error(
                413,
                "INVALID_ARGUMENT",
                "uploadTooLarge",
                "Request payload size exceeds the limit",
            ))
        }
        Err(Received::Broken) => return Err(Cut),
    };
    let fault = shared.state().faults.pop_front();
    match fault {
        Some(ApiFault::Hang) => {
            let _ = std::fs::remove_file(&spooled.path);
            shared.shutdown.cancelled().await;
            return Err(Cut);
        }
        Some(ApiFault::CutAfterBody) => {
            let _ = std::fs::remove_file(&spooled.path);
            return Err(Cut);
        }
        Some(ApiFault::Status {
            code,
            status,
            reason,
            message,
        }) => {
            let _ = std::fs::remove_file(&spooled.path);
            return Ok(google_error(code, status, reason, message));
        }
        None => {}
    }
    let Some(account) = bearer
        .as_deref()
        .and_then(|token| shared.tokens.owner(token))
    else {
        let _ = std::fs::remove_file(&spooled.path);
        return Ok(google_error(
            401,
            "UNAUTHENTICATED",
            "authError",
            "Request had invalid authentication credentials.",
        ));
    };
    if !content_type_ok {
        let _ = std::fs::remove_file(&spooled.path);
        return Ok(google_error(
            400,
            "INVALID_ARGUMENT",
            "invalidArgument",
            "Media type not supported",
        ));
    }
    if spooled.recipients.is_empty() {
        let _ = std::fs::remove_file(&spooled.path);
        return Ok(google_error(
            400,
            "INVALID_ARGUMENT",
            "invalidArgument",
            "Recipient address required",
        ));
    }
    let id = {
        let mut state = shared.state();
        state.counter += 1;
        let id = format!("18c{:013x}", state.counter);
        state.messages.push(ApiMessage {
            id: id.clone(),
            account,
            recipients: spooled.recipients,
            path: spooled.path,
        });
        id
    };
    Ok(json(
        200,
        format!(r#"{{"id":"{id}","threadId":"{id}","labelIds":["SENT"]}}"#),
    ))
}

struct Spooled {
    path: PathBuf,
    recipients: Vec<String>,
}

enum Received {
    TooBig,
    Broken,
}

/// Streams the body to `<dir>/<n>.eml`, dropping Bcc fields from the header block.
async fn receive(shared: &Shared, mut body: Incoming) -> Result<Spooled, Received> {
    let n = {
        let mut state = shared.state();
        state.counter += 1;
        state.counter
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let path = shared.dir.join(format!("{stamp}-api-{n}.eml"));
    let mut file = std::fs::File::create(&path).map_err(|_| Received::Broken)?;
    let mut head: Vec<u8> = Vec::new();
    let mut header_done = false;
    let mut recipients = Vec::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            let _ = std::fs::remove_file(&path);
            return Err(Received::Broken);
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > MAX_UPLOAD {
            let _ = std::fs::remove_file(&path);
            return Err(Received::TooBig);
        }
        if header_done {
            file.write_all(&data).map_err(|_| Received::Broken)?;
            continue;
        }
        head.extend_from_slice(&data);
        if let Some(end) = find(&head, b"\r\n\r\n") {
            let (headers, rest) = head.split_at(end + 4);
            let (kept, found) = strip_bcc(headers);
            recipients = found;
            file.write_all(&kept)
                .and_then(|()| file.write_all(rest))
                .map_err(|_| Received::Broken)?;
            header_done = true;
            head = Vec::new();
        }
    }
    if !header_done {
        let (kept, found) = strip_bcc(&head);
        recipients = found;
        file.write_all(&kept).map_err(|_| Received::Broken)?;
    }
    Ok(Spooled { path, recipients })
}

/// The header block without Bcc fields, and the addresses of To/Cc/Bcc. A simple reader:
/// unfolds lines, takes what is inside <...> or else each comma-separated item with '@'.
fn strip_bcc(headers: &[u8]) -> (Vec<u8>, Vec<String>) {
    let text = String::from_utf8_lossy(headers);
    let mut fields: Vec<String> = Vec::new();
    for line in text.split_inclusive("\r\n") {
        if (line.starts_with(' ') || line.starts_with('\t')) && !fields.is_empty() {
            if let Some(last) = fields.last_mut() {
                last.push_str(line);
            }
        } else {
            fields.push(line.to_string());
        }
    }
    let mut kept = Vec::new();
    let mut recipients = Vec::new();
    for field in fields {
        let name = field
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if matches!(name.as_str(), "to" | "cc" | "bcc") {
            let value = field.split_once(':').map(|(_, v)| v).unwrap_or_default();
            for address in addresses(value) {
                if !recipients.contains(&address) {
                    recipients.push(address);
                }
            }
        }
        if name != "bcc" {
            kept.extend_from_slice(field.as_bytes());
        }
    }
    (kept, recipients)
}

fn addresses(value: &str) -> Vec<String> {
    let mut found = Vec::new();
    // Group syntax: "Name: a, b;" — the part after the first ':' of each group.
    let value = value.replace(['\r', '\n'], " ");
    for item in value.split([',', ';']) {
        let item = item.rsplit_once(':').map_or(item, |(_, after)| after);
        let address = match (item.rfind('<'), item.rfind('>')) {
            (Some(open), Some(close)) if open < close => &item[open + 1..close],
            _ => item
                .split_whitespace()
                .find(|w| w.contains('@'))
                .unwrap_or_default(),
        };
        let address = address.trim().to_lowercase();
        if address.contains('@') {
            found.push(address);
        }
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn tokeninfo(shared: &Shared, request: Request<Incoming>) -> HttpResponse {
    let query = request.uri().query().unwrap_or_default().to_string();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let form = String::from_utf8_lossy(&body).into_owned();
    let token = [query.as_str(), form.as_str()]
        .iter()
        .flat_map(|s| s.split('&'))
        .find_map(|pair| pair.strip_prefix("access_token="))
        .map(str::to_string);
    let Some(account) = token.and_then(|token| shared.tokens.owner(&token)) else {
        return json(
            400,
            r#"{"error":"invalid_token","error_description":"Invalid Value"}"#.to_string(),
        );
    };
    let scope = shared.state().scope.clone();
    json(
        200,
        format!(
            r#"{{"azp":"sandbox","aud":"sandbox","scope":"{scope}","exp":"0","expires_in":"3599","email":"{account}","email_verified":"true","access_type":"offline"}}"#
        ),
    )
}

fn google_error(code: u16, status: &str, reason: &str, message: &str) -> HttpResponse {
    json(
        code,
        format!(
            r#"{{"error":{{"code":{code},"message":"{message}","errors":[{{"message":"{message}","domain":"global","reason":"{reason}"}}],"status":"{status}"}}}}"#
        ),
    )
}

fn json(code: u16, body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = "application/json; charset=UTF-8".parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
