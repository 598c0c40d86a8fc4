//! The fake issuer's HTTP plumbing: the accept loop, one hyper connection per client (ended
//! gracefully on shutdown), routing to `/token` and `/auth`, form and HTTP Basic decoding, and
//! the response builders (JSON with `no-store`, plain text, Google's HTML 503 page).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use oauth2::url::form_urlencoded;
use tokio::net::TcpListener;

use super::consent::handle_auth;
use super::grants::handle_token;
use super::{IssuerShared, SHUTDOWN_GRACE};

pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<IssuerShared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(serve_connection(stream, peer, Arc::clone(&shared)));
            }
            Err(err) => {
                // Typically EMFILE; pausing avoids a hot loop while descriptors are exhausted.
                tracing::warn!(error = %err, "sandbox token issuer: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::debug!("sandbox token issuer stopped");
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<IssuerShared>,
) {
    let service_state = Arc::clone(&shared);
    let service = hyper::service::service_fn(move |req| {
        let state = Arc::clone(&service_state);
        async move { Ok::<_, Infallible>(handle(&state, req).await) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "sandbox token issuer: connection error");
    }
}

pub(super) type HttpResponse = Response<Full<Bytes>>;

async fn handle(shared: &IssuerShared, req: Request<Incoming>) -> HttpResponse {
    match req.uri().path() {
        "/token" => handle_token(shared, req).await,
        "/auth" => handle_auth(shared, &req),
        _ => plain(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// Parses `application/x-www-form-urlencoded` data; a repeated key is refused (RFC 6749 §3.1,
/// §3.2), reported as `Err(key)`.
pub(super) fn parse_params(data: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut params: HashMap<String, String> = HashMap::new();
    for (key, value) in form_urlencoded::parse(data) {
        if params
            .insert(key.clone().into_owned(), value.into_owned())
            .is_some()
        {
            return Err(key.into_owned());
        }
    }
    Ok(params)
}

/// Decodes `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
pub(super) fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

fn form_decode(s: &str) -> String {
    // Reuse the form parser's percent/plus decoding on a single pseudo-pair.
    form_urlencoded::parse(format!("v={}", s.replace('&', "%26").replace('=', "%3D")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

pub(super) fn oauth_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    json(
        status,
        &serde_json::json!({ "error": error, "error_description": description }),
    )
}

pub(super) fn json(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    // Token responses must not be cached (RFC 6749 §5.1).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

pub(super) fn plain(status: StatusCode, text: &'static str) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub(super) fn server_error() -> HttpResponse {
    const BODY: &str = "<!DOCTYPE html>\n<html lang=en><meta charset=utf-8>\
        <title>Error 503 (Service Unavailable)!!1</title>\
        <p><b>503.</b> <ins>That\u{2019}s an error.</ins>\
        <p>The service is currently unavailable. <ins>That\u{2019}s all we know.</ins>\n";
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=UTF-8"),
    );
    resp
}
