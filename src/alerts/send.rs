//! Getting alerts out, in the background: one task and one bounded queue per `[[alert]]`
//! channel, so a slow or dead receiver never delays mail, the detector or another channel.
//! Each alert is tried up to `max_attempts` times with a doubling pause; the outcome is
//! logged and counted (`smtp_oauth_relay_alerts_total{channel,event,result}`). Webhook URLs
//! often hold their token in the path, so logs name only their scheme and host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::event::Alert;
use super::format;
use crate::config::{AlertChannel, AlertSettings};
use crate::credentials::secret::Secret;
use crate::server::RelayHandle;
use crate::upstream::Connector;

/// An alert on its way, with the secrets its payload must not contain.
#[derive(Debug)]
pub struct Outgoing {
    pub alert: Alert,
    pub secrets: Vec<Secret>,
}

/// The queues of the running channel tasks. Dropping it lets each task finish what it
/// holds and end.
pub struct Outbox {
    settings: AlertSettings,
    queues: Vec<(AlertChannel, mpsc::Sender<Arc<Outgoing>>)>,
    relays: RelayHandle,
}

impl Outbox {
    /// Starts one task per channel of `settings`.
    pub fn start(
        settings: &AlertSettings,
        relays: RelayHandle,
        shutdown: CancellationToken,
    ) -> Outbox {
        let http = reqwest::Client::builder()
            // A redirect would send the alert somewhere the config does not name.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .build();
        let http = match http {
            Ok(http) => Some(http),
            Err(err) => {
                tracing::error!(error = %err, "cannot build the HTTP client for webhook alerts");
                None
            }
        };
        let queues = settings
            .channels
            .iter()
            .map(|channel| {
                let (sender, receiver) = mpsc::channel(settings.queue);
                let worker = Worker {
                    channel: channel.clone(),
                    settings: settings.clone(),
                    relays: relays.clone(),
                    http: http.clone(),
                };
                tokio::spawn(worker.run(receiver, shutdown.clone()));
                (channel.clone(), sender)
            })
            .collect();
        Outbox {
            settings: settings.clone(),
            queues,
            relays,
        }
    }

    /// The settings the tasks run with (a reload with other settings starts a new outbox).
    pub fn settings(&self) -> &AlertSettings {
        &self.settings
    }

    /// Queues `outgoing` on every channel; a full queue drops it there (logged, counted).
    pub fn send(&self, outgoing: Outgoing) {
        let outgoing = Arc::new(outgoing);
        for (channel, queue) in &self.queues {
            if queue.try_send(outgoing.clone()).is_err() {
                tracing::error!(
                    channel = %channel.describe(),
                    event = outgoing.alert.event.name(),
                    asset = %outgoing.alert.asset,
                    "alert dropped: the channel's queue is full (its receiver has been failing)"
                );
                self.relays.current().metrics.alert(
                    channel.kind(),
                    outgoing.alert.event.name(),
                    false,
                );
            }
        }
    }
}

/// Whether an attempt may be repeated.
enum Failure {
    Temporary(String),
    Permanent(String),
}

struct Worker {
    channel: AlertChannel,
    settings: AlertSettings,
    relays: RelayHandle,
    http: Option<reqwest::Client>,
}

impl Worker {
    async fn run(self, mut queue: mpsc::Receiver<Arc<Outgoing>>, shutdown: CancellationToken) {
        loop {
            let next = tokio::select! {
                next = queue.recv() => next,
                _ = shutdown.cancelled() => return,
            };
            let Some(outgoing) = next else { return };
            tokio::select! {
                _ = self.deliver(&outgoing) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Tries until it is sent, refused for good, or out of attempts; logs and counts.
    async fn deliver(&self, outgoing: &Outgoing) {
        let alert = &outgoing.alert;
        let channel = self.channel.describe();
        let mut pause = self.settings.retry_delay;
        let mut attempt = 1;
        let reason = loop {
            match self.attempt(outgoing).await {
                Ok(()) => {
                    tracing::info!(%channel, event = alert.event.name(), asset = %alert.asset, attempt, "alert sent");
                    self.relays.current().metrics.alert(
                        self.channel.kind(),
                        alert.event.name(),
                        true,
                    );
                    return;
                }
                Err(Failure::Permanent(reason)) => break reason,
                Err(Failure::Temporary(reason)) if attempt >= self.settings.max_attempts => {
                    break reason
                }
                Err(Failure::Temporary(reason)) => {
                    tracing::warn!(%channel, event = alert.event.name(), asset = %alert.asset, attempt, retry_in_secs = pause.as_secs(), %reason, "alert not sent yet, retrying");
                    tokio::time::sleep(pause).await;
                    pause = pause.saturating_mul(2).min(Duration::from_secs(3600));
                    attempt += 1;
                }
            }
        };
        tracing::error!(%channel, event = alert.event.name(), asset = %alert.asset, attempts = attempt, %reason, "alert could not be sent");
        self.relays
            .current()
            .metrics
            .alert(self.channel.kind(), alert.event.name(), false);
    }

    async fn attempt(&self, outgoing: &Outgoing) -> Result<(), Failure> {
        let secrets: Vec<&str> = outgoing.secrets.iter().map(Secret::expose).collect();
        match &self.channel {
            AlertChannel::Webhook { url, format } => {
                let body = format::webhook_body(&outgoing.alert, *format, &secrets);
                self.post(url, body).await
            }
            AlertChannel::Email { to, asset } => {
                self.mail(&outgoing.alert, to, asset, &secrets).await
            }
        }
    }

    async fn post(&self, url: &str, body: String) -> Result<(), Failure> {
        let Some(http) = &self.http else {
            return Err(Failure::Permanent("no HTTP client".to_string()));
        };
        let response = http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            // Without the URL: it may hold the webhook's token.
            .map_err(|err| {
                Failure::Temporary(crate::oauth::http::describe_error(&err.without_url()))
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
        {
            Err(Failure::Temporary(format!("HTTP {status}")))
        } else {
            Err(Failure::Permanent(format!("HTTP {status}")))
        }
    }

    /// A short mail through `asset`, the way the relay sends any message: access token,
    /// TLS, XOAUTH2, MAIL/RCPT/DATA; only while the asset is healthy.
    async fn mail(
        &self,
        alert: &Alert,
        to: &str,
        asset_name: &str,
        secrets: &[&str],
    ) -> Result<(), Failure> {
        let relay = self.relays.current();
        let Some(asset) = relay.config.asset(asset_name).cloned() else {
            return Err(Failure::Permanent(format!(
                "asset \"{asset_name}\" is no longer configured"
            )));
        };
        if relay
            .tokens
            .status(asset_name)
            .await
            .is_some_and(|status| status.needs_operator())
        {
            return Err(Failure::Temporary(format!(
                "asset \"{asset_name}\" needs attention itself; mail alerts go through it only while it is healthy"
            )));
        }
        let connector = Connector::new(&relay.tokens, &relay.upstream).with_metrics(&relay.metrics);
        let mut upstream = connector
            .open(&asset)
            .await
            .map_err(|err| Failure::Temporary(err.to_string()))?;
        let message_id = message_id(&relay.config.server.hostname);
        let message = format::mail(alert, &asset.email, to, &message_id, secrets);
        let result = async {
            let expect = |reply: crate::smtp::reply::Reply, positive: bool| {
                let text = format!("{} {}", reply.code, reply.text());
                match reply.code {
                    _ if positive => Ok(()),
                    400..=499 => Err(Failure::Temporary(text)),
                    _ => Err(Failure::Permanent(text)),
                }
            };
            let temporary =
                |err: crate::upstream::UpstreamError| Failure::Temporary(err.to_string());
            let reply = upstream
                .command(&format!("MAIL FROM:<{}>", asset.email))
                .await
                .map_err(temporary)?;
            let positive = reply.is_positive();
            expect(reply, positive)?;
            let reply = upstream
                .command(&format!("RCPT TO:<{to}>"))
                .await
                .map_err(temporary)?;
            let positive = reply.is_positive();
            expect(reply, positive)?;
            let reply = upstream.command("DATA").await.map_err(temporary)?;
            let positive = reply.is_intermediate();
            expect(reply, positive)?;
            upstream.send_data(&message).await.map_err(temporary)?;
            upstream.send_terminator().await.map_err(temporary)?;
            let reply = upstream.final_reply().await.map_err(temporary)?;
            let positive = reply.is_positive();
            expect(reply, positive)
        }
        .await;
        upstream.quit().await;
        result
    }
}

/// `<unix nanos>.<counter>.alert@<hostname>`: unique without a random source.
fn message_id(hostname: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{nanos}.{}.alert@{hostname}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
