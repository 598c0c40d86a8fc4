//! The fake Graph's HTTP side: TLS accept loop, hyper connections, routing, bearer checks,
//! the concurrency limit, faults, and one handler per route.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::drafts::{add_attachment, create_draft, create_upload_session, send_draft, upload};
use super::mime::{header_recipients, strip_bcc};
use super::{
    lock, FaultKind, GraphDelivered, Route, Shared, MAX_CONCURRENT_PER_MAILBOX, MAX_REQUEST_BYTES,
    MAX_UPLOAD_RANGE,
};
use crate::sandbox::token_issuer::apps::GRAPH_RESOURCE;

pub(super) type HttpResponse = Response<Full<Bytes>>;

/// Dropping the connection without an answer (a hyper service error does exactly that).
#[derive(Debug)]
struct Drop;

impl std::fmt::Display for Drop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for Drop {}

pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), shared.acceptor.accept(stream)).await
            else {
                return;
            };
            let state = Arc::clone(&shared);
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { handle(&state, req).await }
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

/// Graph's JSON error body.
pub(super) fn graph_error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(super) fn empty(status: StatusCode) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

pub(super) fn json(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The route and its path parameters: mailbox, message id, upload session.
pub(super) struct Target {
    pub(super) route: Route,
    pub(super) mailbox: String,
    pub(super) message: Option<String>,
    pub(super) session: Option<String>,
}

fn route(method: &Method, path: &str) -> Option<Target> {
    if let Some(session) = path.strip_prefix("/upload/") {
        return (method == Method::PUT).then(|| Target {
            route: Route::Upload,
            mailbox: String::new(),
            message: None,
            session: Some(session.to_string()),
        });
    }
    let rest = path.strip_prefix("/v1.0/users/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let mailbox = percent_decode(parts.first()?);
    let target = |route, message: Option<&str>| {
        Some(Target {
            route,
            mailbox: mailbox.clone(),
            message: message.map(str::to_string),
            session: None,
        })
    };
    match (method, parts.as_slice()) {
        (&Method::POST, [_, "sendMail"]) => target(Route::SendMail, None),
        (&Method::POST, [_, "messages"]) => target(Route::CreateDraft, None),
        (&Method::POST, [_, "messages", id, "attachments"]) => target(Route::Attachment, Some(id)),
        (&Method::POST, [_, "messages", id, "attachments", "createUploadSession"]) => {
            target(Route::CreateUploadSession, Some(id))
        }
        (&Method::POST, [_, "messages", id, "send"]) => target(Route::Send, Some(id)),
        (&Method::DELETE, [_, "messages", id]) => target(Route::Delete, Some(id)),
        _ => None,
    }
}

fn percent_decode(text: &str) -> String {
    oauth2::url::form_urlencoded::parse(format!("v={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<HttpResponse, Drop> {
    let Some(target) = route(req.method(), req.uri().path()) else {
        return Ok(graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Unsupported request.",
        ));
    };
    *lock(&shared.state)
        .requests
        .entry(target.route)
        .or_default() += 1;
    let (parts, body) = req.into_parts();
    let limit = if target.route == Route::Upload {
        MAX_UPLOAD_RANGE as usize + 1024
    } else {
        MAX_REQUEST_BYTES
    };
    let body = match Limited::new(body, limit).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return Ok(graph_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "ErrorRequestEntityTooLarge",
                "The request entity is too large.",
            ))
        }
        Err(_) => return Err(Drop),
    };
    // Faults come after the body was read, so "the request arrived" holds for them.
    let fault = {
        let mut state = lock(&shared.state);
        let found = state
            .faults
            .iter_mut()
            .find(|f| f.times > 0 && f.route.is_none_or(|r| r == target.route));
        found.map(|f| {
            f.times -= 1;
            f.kind.clone()
        })
    };
    let delay = *lock(&shared.delay);
    match fault {
        Some(FaultKind::Hang) => {
            shared.shutdown.cancelled().await;
            return Err(Drop);
        }
        Some(FaultKind::CloseAfterBody) => return Err(Drop),
        Some(FaultKind::Status {
            status,
            code,
            message,
            retry_after,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut resp = graph_error(status, &code, &message);
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            return Ok(resp);
        }
        None => {}
    }
    if target.route == Route::Upload {
        // The upload URL carries its own authorization: a bearer token is refused.
        if parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Do not send an Authorization header to the upload URL.",
            ));
        }
        return Ok(upload(shared, &target, &parts.headers, &body));
    }
    let app_only = match authorize(shared, &target, &parts.headers) {
        Ok(app_only) => app_only,
        Err(resp) => return Ok(*resp),
    };
    // Outlook allows 4 concurrent requests per app and mailbox.
    let over = {
        let mut state = lock(&shared.state);
        let n = state.in_flight.entry(target.mailbox.clone()).or_default();
        *n += 1;
        let now = *n;
        state.max_in_flight = state.max_in_flight.max(now);
        now > MAX_CONCURRENT_PER_MAILBOX
    };
    let resp = if over {
        let mut resp = graph_error(
            StatusCode::TOO_MANY_REQUESTS,
            "ApplicationThrottled",
            "Application is over its MailboxConcurrency limit.",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        resp
    } else {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        respond(shared, &target, &parts.headers, &body, app_only).await
    };
    if let Some(n) = lock(&shared.state).in_flight.get_mut(&target.mailbox) {
        *n = n.saturating_sub(1);
    }
    Ok(resp)
}

/// The bearer token: a delegated token of the mailbox, or an app token for Graph whose
/// app may act for it. Drafts need Mail.ReadWrite on top of Mail.Send for app tokens.
fn authorize(
    shared: &Shared,
    target: &Target,
    headers: &hyper::HeaderMap,
) -> Result<bool, Box<HttpResponse>> {
    let unauthorized = || {
        Box::new(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty or invalid.",
        ))
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    lock(&shared.state).last_authorization = Some(value.to_string());
    let token = value.strip_prefix("Bearer ").ok_or_else(unauthorized)?;
    let tokens = &shared.config.tokens;
    if tokens.is_valid(&target.mailbox, token) && tokens.app_token(token).is_none() {
        return Ok(false);
    }
    let app = tokens
        .app_token(token)
        .filter(|app| app.audience == GRAPH_RESOURCE)
        .ok_or_else(unauthorized)?;
    let needed: &[&str] = match target.route {
        Route::SendMail => &["Mail.Send"],
        Route::Send => &["Mail.Send", "Mail.ReadWrite"],
        _ => &["Mail.ReadWrite"],
    };
    if !needed.iter().all(|role| app.has_role(role)) || !app.may_act_for(&target.mailbox) {
        return Err(Box::new(graph_error(
            StatusCode::FORBIDDEN,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        )));
    }
    Ok(true)
}

async fn respond(
    shared: &Shared,
    target: &Target,
    headers: &hyper::HeaderMap,
    body: &[u8],
    app_only: bool,
) -> HttpResponse {
    match target.route {
        Route::SendMail => send_mail(shared, target, headers, body, app_only).await,
        Route::CreateDraft => create_draft(shared, target, body),
        Route::Attachment => add_attachment(shared, target, body),
        Route::CreateUploadSession => create_upload_session(shared, target, body),
        Route::Send => send_draft(shared, target, app_only).await,
        Route::Delete => {
            let removed = target
                .message
                .as_ref()
                .and_then(|id| lock(&shared.state).drafts.remove(id));
            match removed {
                Some(_) => {
                    lock(&shared.state).deleted_drafts += 1;
                    empty(StatusCode::NO_CONTENT)
                }
                None => not_found(),
            }
        }
        Route::Upload => not_found(),
    }
}

pub(super) fn not_found() -> HttpResponse {
    graph_error(
        StatusCode::NOT_FOUND,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

async fn send_mail(
    shared: &Shared,
    target: &Target,
    headers: &hyper::HeaderMap,
    body: &[u8],
    app_only: bool,
) -> HttpResponse {
    let is_text = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !is_text {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            "MIME content must be sent with Content-Type text/plain.",
        );
    }
    let Ok(mime) = base64::engine::general_purpose::STANDARD.decode(body) else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorMimeContentInvalidBase64String",
            "Invalid base64 string for MIME content.",
        );
    };
    let recipients = header_recipients(&mime);
    if recipients.is_empty() {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRecipients",
            "At least one recipient isn't valid.",
        );
    }
    let eml = strip_bcc(&mime);
    deliver(
        shared,
        GraphDelivered {
            mailbox: target.mailbox.clone(),
            mime,
            recipients,
            draft: None,
            attachments: Vec::new(),
            app_only,
        },
        &eml,
    )
    .await;
    empty(StatusCode::ACCEPTED)
}

pub(super) async fn deliver(shared: &Shared, message: GraphDelivered, eml: &[u8]) {
    if let Some(dir) = &shared.config.mail_dir {
        let n = shared.file_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let name = format!("{millis}-graph-{n}.eml");
        let tmp = dir.join(format!(".{name}.tmp"));
        let written = async {
            tokio::fs::write(&tmp, eml).await?;
            tokio::fs::rename(&tmp, dir.join(&name)).await
        }
        .await;
        if let Err(err) = written {
            tracing::warn!(error = %err, "sandbox Graph: cannot save .eml");
        }
    }
    tracing::info!(mailbox = %message.mailbox, recipients = message.recipients.len(), "sandbox Graph accepted a message");
    let count = {
        let mut state = lock(&shared.state);
        state.delivered.push(message);
        state.delivered.len()
    };
    shared.count.send_replace(count);
}

pub(super) fn bad_request(message: &str) -> HttpResponse {
    graph_error(StatusCode::BAD_REQUEST, "ErrorInvalidRequest", message)
}
