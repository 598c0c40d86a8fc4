//! The admin HTTP listener: `/healthz`, `/readyz`, `/metrics` for orchestrators and
//! monitoring. Plain HTTP on a loopback (or pod-local) address; it serves no secrets.

use std::convert::Infallible;
use std::fmt::Write;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::RelayHandle;

type HttpResponse = Response<Full<Bytes>>;

/// Serves until `shutdown`; `relays` gives the current config and state (it follows
/// reloads).
pub async fn serve(listener: TcpListener, relays: RelayHandle, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listener (healthz, readyz, metrics)");
    }
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let relays = relays.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let relays = relays.clone();
                async move { Ok::<_, Infallible>(route(&relays, &request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            // Probes are tiny; a client that stalls is simply dropped.
            let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
        });
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
                match problem {
                    Some(error) => {
                        let _ = writeln!(body, "asset {}: needs attention: {error}", asset.name);
                    }
                    None => {
                        usable += 1;
                        let _ = writeln!(body, "asset {}: ok", asset.name);
                    }
                }
            }
            // Ready unless every asset is unusable: one broken mailbox must not take
            // the whole pod out of service.
            let status = if usable > 0 {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, body)
        }
        "/metrics" => {
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
