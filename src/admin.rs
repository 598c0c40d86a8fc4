//! The admin HTTP listener: `/healthz`, `/readyz`, `/metrics` for orchestrators and
//! monitoring (unauthenticated; they serve no secrets), and the operator console
//! ([`crate::console`]) on every other path when `[admin] users` is set. Plain HTTP on a
//! loopback (or pod-local) address, or HTTPS with `[admin]` TLS.

use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::console;
use crate::server::RelayHandle;
use crate::stream::MaybeTls;

type HttpResponse = Response<Full<Bytes>>;

/// Serves until `shutdown`; `relays` gives the current config and state (it follows
/// reloads). With `[admin] tls_cert`/`tls_key` (or `tls = true`) every connection is
/// HTTPS, probes included. The operator console ([`crate::console`]) answers every path
/// but the probes when `[admin] users` is set.
pub async fn serve(listener: TcpListener, relays: RelayHandle, shutdown: CancellationToken) {
    let local = match listener.local_addr() {
        Ok(addr) => addr,
        Err(err) => {
            tracing::error!(error = %err, "admin listener has no address");
            return;
        }
    };
    let tls = relays
        .current()
        .config
        .admin
        .tls
        .clone()
        .map(tokio_rustls::TlsAcceptor::from);
    let console = relays.current().config.admin.console.is_some();
    tracing::info!(addr = %local, tls = tls.is_some(), console, "admin listener (healthz, readyz, metrics{})", if console { ", console" } else { "" });
    let app = console::App {
        relays: relays.clone(),
        console: Arc::new(console::Console::default()),
        tls: tls.is_some(),
        local,
    };
    let router = console::router(app);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let relays = relays.clone();
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let relays = relays.clone();
                let router = router.clone();
                async move { Ok::<_, Infallible>(dispatch(&relays, router, peer, request).await) }
            });
            let stream = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::from(tls))),
                        _ => return,
                    }
                }
                None => MaybeTls::Plain(stream),
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            // Probes and pages are small; a client that stalls is simply dropped. (A
            // console request that waits for the provider is bounded by its own timeouts.)
            let _ = tokio::time::timeout(Duration::from_secs(120), connection).await;
        });
    }
}

/// How long a TLS handshake on the admin listener may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The probes as before; everything else to the console when it is on.
async fn dispatch(
    relays: &RelayHandle,
    router: axum::Router,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<axum::body::Body> {
    let probe = matches!(
        request.uri().path(),
        "/healthz" | "/livez" | "/readyz" | "/metrics"
    );
    if probe || relays.current().config.admin.console.is_none() {
        return route(relays, &request).await.map(axum::body::Body::new);
    }
    let mut request = request.map(axum::body::Body::new);
    request.extensions_mut().insert(console::Peer(peer));
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

async fn route(relays: &RelayHandle, request: &Request<Incoming>) -> HttpResponse {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_string());
    }
    let relay = relays.current();
    match request.uri().path() {
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n".to_string()),
        "/readyz" => {
            let mut body = String::new();
            let mut usable = 0;
            for asset in &relay.config.assets {
                let status = relay.tokens.status(&asset.name).await;
                let problem = status
                    .and_then(|s| s.last_error)
                    .filter(|error| error.needs_operator());
                let locally_fine = problem.is_none();
                match problem {
                    Some(error) => {
                        let _ = writeln!(body, "asset {}: needs attention: {error}", asset.name);
                    }
                    None => {
                        usable += 1;
                        // Still ready: the mark is the mailbox's, another replica or a
                        // restart would not send either (issue 16).
                        let now = crate::limits::unix_now();
                        match relay.limits.over_limit(&asset.name, now).await {
                            Some(mark) => {
                                let until = crate::limits::format_time(mark.until);
                                let _ = writeln!(
                                    body,
                                    "asset {}: over the provider's limit until {until}",
                                    asset.name
                                );
                            }
                            None => {
                                let _ = writeln!(body, "asset {}: ok", asset.name);
                            }
                        }
                    }
                }
                // Several replicas: what the one that refreshed last saw (shared health).
                if let (true, Some(shared)) = (locally_fine, &relay.shared) {
                    if let Some(problem) = shared.asset_problem(&asset.name).await {
                        let _ = writeln!(
                            body,
                            "asset {}: another replica reports: {problem}",
                            asset.name
                        );
                    }
                }
            }
            if let Some(shared) = &relay.shared {
                // Redis down does not make the replica unready: it serves from memory.
                let _ = writeln!(body, "{}", crate::state::describe_health(shared).await);
            }
            // Issue 15: a spool that still accepts keeps the relay useful (spooled mail
            // waits for the asset); over 90 % of max_bytes is said, full is not ready.
            let spool_accepts = relay.spool.as_ref().is_some_and(|spool| {
                let (used, max) = (spool.used(), spool.max_bytes());
                let state = if !spool.has_room(1) {
                    "full"
                } else if spool.nearly_full() {
                    "nearly full (over 90 % of max_bytes)"
                } else {
                    "ok"
                };
                let _ = writeln!(body, "spool: {state} ({used} of {max} bytes)");
                spool.has_room(1)
            });
            // Ready unless every asset is unusable: one broken mailbox must not take
            // the whole pod out of service.
            let status = if usable > 0 || spool_accepts {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, body)
        }
        "/metrics" => {
            // The sending-limit gauges move as the windows roll, not only when mail is
            // sent: brought up to date for each scrape.
            let now = crate::limits::unix_now();
            for asset in &relay.config.assets {
                relay.limits.publish(asset, now).await;
            }
            let mut response = Response::new(Full::new(Bytes::from(relay.metrics.render())));
            if let Ok(value) = "application/openmetrics-text; version=1.0.0; charset=utf-8".parse()
            {
                response
                    .headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, value);
            }
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_string()),
    }
}

fn text(status: StatusCode, body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = "text/plain; charset=utf-8".parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
