//! The Gmail API transport: `POST {api_url}/upload/gmail/v1/users/me/messages/send
//! ?uploadType=media` with the bearer token and `Content-Type: message/rfc822`, the body
//! being the message as the client sent it (un-stuffed) with the relay's `Received:`
//! header in front, streamed from the spool ([`super::body`]) so memory stays bounded.
//!
//! MAIL and RCPT are answered here (the API has no envelope); the recipients the API
//! delivers to come from To/Cc/Bcc, so before the upload the header block is compared with
//! the envelope ([`super::api_recipients`], shared with Microsoft Graph): missing envelope recipients go into an
//! inserted `Bcc:`, header-only recipients refuse the message unless the asset says
//! `header_recipients = "deliver"`. Google's answer is classified into [`ApiFailure`];
//! `replies.rs` says what the client hears. Never 250 without a 200 from Google.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use tokio::time::Instant;

use super::body::BodySpool;
use super::error::{ApiFailure, TransportError};
use super::{Context, Envelope, MailRequest};
use crate::config::{Asset, GmailApiSettings, GMAIL_API_MAX_MESSAGE, GMAIL_SEND_SCOPE};
use crate::error::RelayError;
use crate::oauth::http::provider_text;
use crate::oauth::token::AccessToken;
use crate::replies::Say;
use crate::smtp::reply::Reply;

const API: &str = "Gmail API";
/// The header block is looked for in this much of the message (the session's header gate
/// holds back the same amount).
pub const MAX_HEADER_BLOCK: usize = 100 * 1024;
/// Google's answers are small JSON documents; more is not read.
const MAX_RESPONSE: usize = 64 * 1024;

/// One asset's link to the Gmail API, carrying one transaction at a time.
pub struct GmailApiLink {
    asset: Arc<Asset>,
    settings: GmailApiSettings,
    http: reqwest::Client,
    token: AccessToken,
    envelope: Envelope,
    /// The envelope as the session's command lines build it (see `face.rs`).
    pub(super) pending: Envelope,
    spool: Option<BodySpool>,
    accepted_id: Option<String>,
}

impl GmailApiLink {
    /// Gets the access token (credential trouble is answered at MAIL FROM, as on SMTP).
    pub async fn open(
        cx: &Context<'_>,
        asset: &Arc<Asset>,
        settings: &GmailApiSettings,
    ) -> Result<GmailApiLink, RelayError> {
        let token = cx.tokens.access_token(&asset.name).await?;
        Ok(GmailApiLink {
            http: cx.apis.get(asset, cx.settings.connect_timeout),
            asset: asset.clone(),
            settings: settings.clone(),
            token,
            envelope: Envelope::default(),
            pending: Envelope::default(),
            spool: None,
            accepted_id: None,
        })
    }

    pub fn token(&self) -> &AccessToken {
        &self.token
    }

    pub fn target(&self) -> &str {
        &self.settings.api_url
    }

    pub fn accepted_id(&self) -> Option<&str> {
        self.accepted_id.as_deref()
    }

    /// MAIL FROM: nothing to ask Google; a declared size over its limit is refused now.
    pub fn mail(&mut self, request: &MailRequest<'_>) -> Reply {
        self.reset();
        if request
            .size
            .is_some_and(|size| size > GMAIL_API_MAX_MESSAGE)
        {
            return Say::MessageTooBigDeclared {
                limit: GMAIL_API_MAX_MESSAGE,
            }
            .reply();
        }
        Say::Ok.reply()
    }

    pub fn reset(&mut self) {
        self.envelope = Envelope::default();
        self.pending = Envelope::default();
        self.spool = None;
        self.accepted_id = None;
    }

    /// DATA: the message will be spooled; recipients are checked at the end.
    pub fn data(&mut self, envelope: &Envelope) -> Reply {
        self.envelope = envelope.clone();
        self.spool = Some(BodySpool::new(GMAIL_API_MAX_MESSAGE, None));
        self.accepted_id = None;
        Say::StartData.reply()
    }

    pub fn send_data(&mut self, wire: &[u8]) -> Result<(), TransportError> {
        match &mut self.spool {
            Some(spool) => Ok(spool.write_wire(wire)?),
            None => Err(TransportError::Spool(std::io::Error::other(
                "no message started",
            ))),
        }
    }

    /// The final dot: check the recipients, upload, and map Google's answer.
    pub async fn finish(&mut self, cx: &Context<'_>) -> Result<Reply, TransportError> {
        let mut spool = self
            .spool
            .take()
            .ok_or_else(|| TransportError::Spool(std::io::Error::other("no message started")))?;
        if spool.over_limit() {
            return Err(TransportError::TooBig {
                size: spool.len(),
                limit: GMAIL_API_MAX_MESSAGE,
            });
        }
        let prefix =
            super::api_recipients::recipients_prefix(&self.asset, &self.envelope, &mut spool)?;
        self.upload_with_retry(cx, &mut spool, &prefix).await
    }

    /// The upload, and after a refused token one fresh token and one more upload.
    async fn upload_with_retry(
        &mut self,
        cx: &Context<'_>,
        spool: &mut BodySpool,
        prefix: &[u8],
    ) -> Result<Reply, TransportError> {
        let mut retried = false;
        loop {
            match self.upload(cx, spool, prefix).await {
                Err(Attempt::TokenRefused(message)) if !retried => {
                    // One fresh token and one more upload: the spool replays the body.
                    tracing::info!(asset = %self.asset.name, message = %message, "access token refused by the Gmail API, refreshing once");
                    cx.tokens
                        .invalidate(&self.asset.name, &self.token.token)
                        .await;
                    self.token = cx.tokens.access_token(&self.asset.name).await?;
                    retried = true;
                }
                Err(Attempt::TokenRefused(message)) => {
                    if let Some(metrics) = cx.metrics {
                        metrics.set_asset_ready(&self.asset.name, false);
                    }
                    return Err(ApiFailure::Unauthorized { api: API, message }.into());
                }
                Err(Attempt::Failed(failure)) => return Err(failure.into()),
                Ok(id) => {
                    let reply = Say::ApiAccepted { id: id.clone() }.reply();
                    self.accepted_id = Some(id);
                    return Ok(reply);
                }
            }
        }
    }

    /// One upload; Ok is the id of the message Google accepted.
    async fn upload(
        &self,
        cx: &Context<'_>,
        spool: &mut BodySpool,
        prefix: &[u8],
    ) -> Result<String, Attempt> {
        let url = format!(
            "{}/upload/gmail/v1/users/me/messages/send?uploadType=media",
            self.settings.api_url
        );
        let length = spool.stream_len(prefix.len());
        let stream = spool.stream(prefix.to_vec()).map_err(|err| {
            Attempt::Failed(ApiFailure::Unavailable {
                api: API,
                message: format!("cannot read the spooled message: {err}"),
            })
        })?;
        let progress = Arc::new(Progress::default());
        let body = reqwest::Body::wrap_stream(Counted {
            inner: Box::pin(stream),
            progress: progress.clone(),
        });
        let request = self
            .http
            .post(url)
            .bearer_auth(self.token.token.expose())
            .header(reqwest::header::CONTENT_TYPE, "message/rfc822")
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(body)
            .send();
        let response = watch(request, &progress, length, cx.settings).await;
        let whole_body_sent = progress.sent.load(Ordering::Relaxed) >= length;
        let lost = |message: String| {
            if whole_body_sent {
                Attempt::Failed(ApiFailure::VerdictLost { api: API, message })
            } else {
                Attempt::Failed(ApiFailure::Unavailable { api: API, message })
            }
        };
        let response = match response {
            Watched::Answered(Ok(response)) => response,
            Watched::Answered(Err(err)) => {
                return Err(lost(crate::oauth::http::describe_error(&err.without_url())))
            }
            Watched::Stalled(secs) => return Err(lost(format!("no progress for {secs} s"))),
            Watched::NoVerdict(secs) => {
                return Err(lost(format!("no answer within {secs} s after the upload")))
            }
        };
        let status = response.status().as_u16();
        let text = match read_limited(response, cx.settings.final_reply_timeout).await {
            Ok(text) => text,
            Err(message) => return Err(lost(message)),
        };
        if status == 200 {
            return Ok(message_id(&text).unwrap_or_else(|| "unknown".to_string()));
        }
        let error = GoogleError::parse(&text);
        tracing::debug!(asset = %self.asset.name, status, reason = %error.reason, message = %provider_text(&error.message), "Gmail API refused the upload");
        Err(classify(status, error, &self.asset.email))
    }
}

/// How one upload went wrong: a refused token is worth one retry.
enum Attempt {
    TokenRefused(String),
    Failed(ApiFailure),
}

/// Google's error document, `{"error": {"code", "message", "status", "errors": [{"reason"}]}}`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GoogleError {
    pub reason: String,
    pub status: String,
    pub message: String,
}

impl GoogleError {
    /// Reads what it can; anything else leaves the fields empty (the HTTP status decides).
    pub fn parse(text: &str) -> GoogleError {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
            return GoogleError {
                message: provider_text(text),
                ..GoogleError::default()
            };
        };
        let error = &value["error"];
        let field = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        GoogleError {
            reason: field(&error["errors"][0]["reason"]),
            status: field(&error["status"]),
            message: provider_text(error["message"].as_str().unwrap_or_default()),
        }
    }
}

/// Google's answer (not 200) as a failure.
fn classify(status: u16, error: GoogleError, email: &str) -> Attempt {
    let message = error.message.clone();
    let reason = error.reason.as_str();
    if status == 401 || reason == "authError" || error.status == "UNAUTHENTICATED" {
        return Attempt::TokenRefused(message);
    }
    let daily = reason == "dailyLimitExceeded";
    let failure = if status == 429
        || daily
        || matches!(reason, "rateLimitExceeded" | "userRateLimitExceeded")
        || error.status == "RESOURCE_EXHAUSTED"
    {
        ApiFailure::RateLimited {
            api: API,
            email: email.to_string(),
            message,
            daily,
        }
    } else if status == 403 {
        ApiFailure::Forbidden {
            api: API,
            scope: GMAIL_SEND_SCOPE.to_string(),
            message,
        }
    } else if reason == "failedPrecondition" || error.status == "FAILED_PRECONDITION" {
        ApiFailure::Deferred { api: API, message }
    } else if (400..500).contains(&status) {
        ApiFailure::Invalid { api: API, message }
    } else {
        ApiFailure::Unavailable {
            api: API,
            message: format!("HTTP {status}: {message}"),
        }
    };
    Attempt::Failed(failure)
}

/// The `id` of Google's message resource.
fn message_id(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let id = value["id"].as_str()?;
    // It goes into a reply line and the log: keep it to what ids are made of.
    id.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        .then(|| id.to_string())
}

async fn read_limited(mut response: reqwest::Response, limit: Duration) -> Result<String, String> {
    let mut body = Vec::new();
    let read = async {
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| crate::oauth::http::describe_error(&err.without_url()))?
        {
            if body.len() < MAX_RESPONSE {
                body.extend_from_slice(&chunk);
            }
        }
        Ok::<_, String>(())
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| format!("answer not complete within {} s", limit.as_secs()))??;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// How far the upload got, as the body stream saw it.
#[derive(Default)]
struct Progress {
    sent: AtomicU64,
    /// Milliseconds since `watch` started, at the last chunk handed over.
    last_ms: AtomicU64,
}

struct Counted<S> {
    inner: std::pin::Pin<Box<S>>,
    progress: Arc<Progress>,
}

impl<S: Stream<Item = std::io::Result<bytes::Bytes>>> Stream for Counted<S> {
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(chunk))) = &polled {
            self.progress
                .sent
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            self.progress.last_ms.store(clock_ms(), Ordering::Relaxed);
        }
        polled
    }
}

fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

enum Watched {
    Answered(reqwest::Result<reqwest::Response>),
    /// The upload made no progress for this many seconds.
    Stalled(u64),
    /// The whole body went out and no answer came within this many seconds.
    NoVerdict(u64),
}

/// Runs the request: while the body goes out, each chunk must be taken within
/// `upstream_command_secs`; once all of it is out, the answer must come within
/// `upstream_final_reply_secs`.
async fn watch(
    request: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
    progress: &Progress,
    length: u64,
    settings: &crate::upstream::UpstreamSettings,
) -> Watched {
    let mut request = std::pin::pin!(request);
    progress.last_ms.store(clock_ms(), Ordering::Relaxed);
    let mut all_sent_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            answered = &mut request => return Watched::Answered(answered),
            _ = tick.tick() => {}
        }
        if progress.sent.load(Ordering::Relaxed) >= length {
            let at = *all_sent_at.get_or_insert_with(Instant::now);
            if at.elapsed() >= settings.final_reply_timeout {
                return Watched::NoVerdict(settings.final_reply_timeout.as_secs());
            }
        } else {
            let idle = clock_ms().saturating_sub(progress.last_ms.load(Ordering::Relaxed));
            if Duration::from_millis(idle) >= settings.command_timeout {
                return Watched::Stalled(settings.command_timeout.as_secs());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_errors_are_read_and_classified() {
        let doc = |code: u16, status: &str, reason: &str| {
            format!(
                r#"{{"error":{{"code":{code},"message":"m {reason}","status":"{status}","errors":[{{"message":"x","domain":"global","reason":"{reason}"}}]}}}}"#
            )
        };
        let kind = |status: u16, text: &str| match classify(
            status,
            GoogleError::parse(text),
            "a@example.com",
        ) {
            Attempt::TokenRefused(_) => "token",
            Attempt::Failed(ApiFailure::RateLimited { .. }) => "rate",
            Attempt::Failed(ApiFailure::Forbidden { .. }) => "forbidden",
            Attempt::Failed(ApiFailure::Invalid { .. }) => "invalid",
            Attempt::Failed(ApiFailure::Deferred { .. }) => "deferred",
            Attempt::Failed(ApiFailure::Unavailable { .. }) => "unavailable",
            Attempt::Failed(_) => "other",
        };
        assert_eq!(
            kind(401, &doc(401, "UNAUTHENTICATED", "authError")),
            "token"
        );
        assert_eq!(
            kind(429, &doc(429, "RESOURCE_EXHAUSTED", "rateLimitExceeded")),
            "rate"
        );
        assert_eq!(
            kind(403, &doc(403, "PERMISSION_DENIED", "userRateLimitExceeded")),
            "rate"
        );
        assert_eq!(
            kind(
                403,
                &doc(403, "PERMISSION_DENIED", "insufficientPermissions")
            ),
            "forbidden"
        );
        assert_eq!(
            kind(400, &doc(400, "INVALID_ARGUMENT", "invalidArgument")),
            "invalid"
        );
        assert_eq!(
            kind(400, &doc(400, "FAILED_PRECONDITION", "failedPrecondition")),
            "deferred"
        );
        assert_eq!(
            kind(500, &doc(500, "INTERNAL", "backendError")),
            "unavailable"
        );
        assert_eq!(kind(502, "<html>bad gateway</html>"), "unavailable");
        assert_eq!(GoogleError::parse("not json\n").message, "not json?");
    }

    #[test]
    fn message_ids_are_plain() {
        assert_eq!(
            message_id(r#"{"id":"18c5f0a1b2","threadId":"t"}"#).as_deref(),
            Some("18c5f0a1b2")
        );
        assert_eq!(message_id(r#"{"id":"a b\r\n250 x"}"#), None);
        assert_eq!(message_id("[]"), None);
    }
}
