//! The one-shot loopback listener (RFC 8252 §7.3): serves the browser's redirect, refuses
//! a request with another `state` and keeps waiting, answers a small page, prints a
//! countdown, and stops listening when the flow has its answer.

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use oauth2::{AuthorizationCode, CsrfToken};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::callback::{check_callback, parse_query};
use super::{minutes, AuthorizeError, ConsentOptions};

/// How often the loopback wait prints the time left.
pub(super) const COUNTDOWN_INTERVAL: Duration = Duration::from_secs(30);
/// How long the browser gets to read the final page before the listener goes away.
pub(super) const PAGE_FLUSH_GRACE: Duration = Duration::from_secs(2);

pub(super) type HttpResponse = Response<Full<Bytes>>;
pub(super) type Outcome = Result<AuthorizationCode, AuthorizeError>;

/// What one request to the listener meant for the flow.
pub(super) enum Event {
    /// The callback of this run: the flow ends with it.
    Done(Outcome),
    /// A callback whose `state` is not this run's (an old tab, or a forged request from
    /// anything that can reach the port). Refused with 400, and the flow keeps waiting:
    /// otherwise anyone could end the user's authorization by sending one request.
    WrongState,
}

/// Serves until one request on `path` arrives (other paths get 404), prints a countdown
/// every [`COUNTDOWN_INTERVAL`], and stops listening when it returns.
pub(super) async fn wait_for_redirect<W: Write>(
    listeners: Vec<TcpListener>,
    path: String,
    state: &CsrfToken,
    deadline: Instant,
    options: &ConsentOptions,
    output: &mut W,
) -> Result<AuthorizationCode, AuthorizeError> {
    let (tx, mut rx) = mpsc::channel::<Event>(1);
    let expected = Arc::new(Callback {
        path,
        state: state.clone(),
    });
    let addr = listeners
        .first()
        .and_then(|listener| listener.local_addr().ok())
        .map_or_else(
            || "the loopback address".to_string(),
            |addr| addr.to_string(),
        );
    // Dropping the set aborts the accept loops and any connection still open (a browser's
    // keep-alive or pre-connect), which is what "stop listening" means here.
    let mut tasks = JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept_loop(listener, Arc::clone(&expected), tx.clone()));
    }
    drop(tx);

    let mut next_tick = Instant::now() + COUNTDOWN_INTERVAL;
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(Event::Done(outcome)) => return outcome,
                Some(Event::WrongState) => {
                    writeln!(
                        output,
                        "a request with a state that does not belong to this run was refused; \
                         still waiting for the browser ({} left)...",
                        minutes(deadline.saturating_duration_since(Instant::now()))
                    )
                    .and_then(|()| output.flush())
                    .map_err(AuthorizeError::Output)?;
                }
                // Every accept loop ended: only possible if accepting keeps failing.
                None => {
                    return Err(AuthorizeError::Listener {
                        addr,
                        source: std::io::Error::other("the listener stopped unexpectedly"),
                    })
                }
            },
            () = tokio::time::sleep_until(next_tick.min(deadline)) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(AuthorizeError::Timeout { secs: options.timeout.as_secs() });
                }
                writeln!(output, "waiting for the browser... {} left", minutes(deadline - now))
                    .and_then(|()| output.flush())
                    .map_err(AuthorizeError::Output)?;
                next_tick += COUNTDOWN_INTERVAL;
            }
        }
    }
}

pub(super) struct Callback {
    path: String,
    state: CsrfToken,
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    expected: Arc<Callback>,
    tx: mpsc::Sender<Event>,
) {
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                connections.spawn(serve_connection(stream, Arc::clone(&expected), tx.clone()));
            }
            Err(err) => {
                // EMFILE and the like; back off instead of spinning.
                tracing::debug!(error = %err, "authorize listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One browser connection. The callback's outcome is reported only once the connection is
/// done, i.e. after the page was written (the response says `Connection: close`).
pub(super) async fn serve_connection(
    stream: tokio::net::TcpStream,
    expected: Arc<Callback>,
    tx: mpsc::Sender<Event>,
) {
    let outcome: Arc<Mutex<Option<Event>>> = Arc::new(Mutex::new(None));
    let answered = Arc::new(Notify::new());
    let service = {
        let outcome = Arc::clone(&outcome);
        let answered = Arc::clone(&answered);
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (response, result) = handle_request(&req, &expected);
            if let Some(result) = result {
                outcome
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert(result);
                answered.notify_one();
            }
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "authorize listener: connection error");
            }
        }
        // A browser that does not read the page must not hold the code back.
        () = async {
            answered.notified().await;
            tokio::time::sleep(PAGE_FLUSH_GRACE).await;
        } => {}
    }
    let result = outcome
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(result) = result {
        let _ = tx.send(result).await;
    }
}

/// The page for one request, and what it means for the flow if it was a callback.
pub(super) fn handle_request(
    req: &Request<Incoming>,
    expected: &Callback,
) -> (HttpResponse, Option<Event>) {
    if req.uri().path() != expected.path {
        return (
            page(StatusCode::NOT_FOUND, "Not found", "Nothing here."),
            None,
        );
    }
    if req.method() != Method::GET {
        let mut response = page(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "Only GET is served here.",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return (response, None);
    }
    let outcome = parse_query(req.uri().query().unwrap_or(""))
        .and_then(|params| check_callback(&params, &expected.state));
    if matches!(outcome, Err(AuthorizeError::StateMismatch)) {
        let mut response = page(
            StatusCode::BAD_REQUEST,
            "Not this authorization",
            "This answer does not belong to the authorization the terminal is waiting for (its \
             state differs): it was ignored. Open the URL the terminal printed to authorize.",
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return (response, Some(Event::WrongState));
    }
    let mut response = match &outcome {
        Ok(_) => page(
            StatusCode::OK,
            "Authorization complete",
            "Authorization complete \u{2014} you can close this tab and return to the terminal.",
        ),
        Err(err) => page(
            StatusCode::BAD_REQUEST,
            "Authorization failed",
            &format!(
                "Authorization failed: {err}. You can close this tab; the terminal says the same."
            ),
        ),
    };
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    (response, Some(Event::Done(outcome)))
}

pub(super) fn page(status: StatusCode, title: &str, text: &str) -> HttpResponse {
    let body = format!(
        "<!DOCTYPE html>\n<html lang=en><meta charset=utf-8><title>{}</title>\
         <body style=\"font-family: sans-serif; margin: 3em\"><p>{}</p></body></html>\n",
        html_escape(title),
        html_escape(text)
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The page must not pass the code-bearing URL on to anything it links to.
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

pub(super) fn html_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}
