//! A webhook receiver on 127.0.0.1 for the alert tests: a real HTTP/1.1 server (hyper)
//! that records every request and answers 500 to the first few, 204 to the rest.
// Each test binary that includes it uses part of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Upper bound for anything a test waits for: generous, never a performance claim.
pub const WAIT: Duration = Duration::from_secs(20);

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub body: String,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A webhook receiver on 127.0.0.1: records every POST, answers 500 to the first
/// `failures` of them and 204 to the rest.
pub struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    count: watch::Receiver<usize>,
    stop: CancellationToken,
}

impl Receiver {
    pub async fn start(failures: usize) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
        let stop = CancellationToken::new();
        let (store, stopped) = (received.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    _ = stopped.cancelled() => return,
                };
                let (store, count_tx) = (store.clone(), count_tx.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let (store, count_tx) = (store.clone(), count_tx.clone());
                            async move {
                                let path = request.uri().path().to_string();
                                let body = request.into_body().collect().await.unwrap().to_bytes();
                                let seen = {
                                    let mut all = store.lock().unwrap();
                                    all.push(Received {
                                        path,
                                        body: String::from_utf8_lossy(&body).into_owned(),
                                    });
                                    all.len()
                                };
                                count_tx.send_replace(seen);
                                let status = if seen <= failures {
                                    StatusCode::INTERNAL_SERVER_ERROR
                                } else {
                                    StatusCode::NO_CONTENT
                                };
                                let mut response = Response::new(Full::new(Bytes::new()));
                                *response.status_mut() = status;
                                Ok::<_, Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            received,
            count,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits (bounded) until `n` requests arrived; returns them all.
    pub async fn wait_for(&mut self, n: usize) -> Vec<Received> {
        let arrived = tokio::time::timeout(WAIT, self.count.wait_for(|count| *count >= n))
            .await
            .is_ok();
        let all = self.all();
        assert!(arrived, "expected {n} webhook requests, got {all:#?}");
        all
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The JSON payloads whose `event` is `event`.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.all()
            .iter()
            .map(Received::json)
            .filter(|json| json["event"] == event)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
