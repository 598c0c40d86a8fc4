//! The Microsoft Graph transport (issue 13): a message goes to
//! `POST {api_url}/v1.0/users/{email}/sendMail` as base64 MIME (`Content-Type:
//! text/plain`), streamed from the spool file so memory stays bounded, and `202 Accepted`
//! is the only success. Messages too big for one request take the draft path in
//! `graph_large` when the asset allows it (`graph_large_messages`).
//!
//! Every send holds one of the asset's `graph_concurrency` slots (Graph serves 4
//! concurrent requests per mailbox; more are throttled), waiting at most
//! `upstream_command_secs` for it. A 401 gets one fresh token and one retry (the body is
//! replayed from the spool); every other answer is classified in `graph_error`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::io::AsyncReadExt as _;
use tokio::sync::Semaphore;

use super::graph_error::{classify, parse_error_body, retry_after, GraphError, GraphStep};
use crate::config::{Asset, Grant, GraphSettings};
use crate::credentials::secret::Secret;
use crate::oauth::http::describe_error;
use crate::oauth::token::TokenManager;

/// The largest message (after the relay's Received header and any inserted Bcc) sent in
/// one `sendMail` request. Graph refuses request bodies over 4 MB; base64 grows the MIME
/// by 4/3, so 2,900,000 bytes become 3,866,668, under 4,000,000 (the stricter, decimal
/// reading of "4 MB") with about 130 KB to spare. Field reports see `sendMail` fail from
/// about 3 MB of MIME, which is this limit seen from the other side.
pub const SEND_MAIL_MAX_MIME: u64 = 2_900_000;

/// Bytes of an error body read at most (Graph's are a few hundred).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// `base64(n bytes)`'s length.
pub fn base64_len(n: u64) -> u64 {
    n.div_ceil(3) * 4
}

/// Timeouts of the Graph requests.
#[derive(Debug, Clone, Copy)]
pub struct GraphTimeouts {
    /// Each request but the final send; also the wait for a slot.
    pub command: Duration,
    /// The request that sends the mail.
    pub final_reply: Duration,
}

/// A boxed stream of message chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// The message as the transport reads it — whole, from its start, with the relay's
/// `Received:` header and any inserted `Bcc:` in front — possibly twice (after a refused
/// token). The session's spool implements it; [`FileSource`] reads a file.
pub trait MessageSource: Send {
    /// Length in bytes of what [`chunks`](Self::chunks) yields.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The message from its start.
    fn chunks(&mut self) -> std::io::Result<ByteStream>;
}

/// A prefix and a file, read in chunks (tests, and any caller with a spool file).
pub struct FileSource {
    pub prefix: Vec<u8>,
    pub path: std::path::PathBuf,
    pub file_len: u64,
}

impl MessageSource for FileSource {
    fn len(&self) -> u64 {
        self.prefix.len() as u64 + self.file_len
    }

    fn chunks(&mut self) -> std::io::Result<ByteStream> {
        let file = std::fs::File::open(&self.path)?;
        let file = tokio::fs::File::from_std(file);
        let prefix = futures_util::stream::iter([Ok(Bytes::from(self.prefix.clone()))]);
        let rest = futures_util::stream::unfold(file, |mut file| async move {
            let mut buf = vec![0u8; 64 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), file))
                }
                Err(err) => Some((Err(err), file)),
            }
        });
        Ok(Box::pin(prefix.chain(rest)))
    }
}

/// One message and its envelope recipients (the draft path's Bcc list).
pub struct GraphMessage<'a> {
    pub source: &'a mut dyn MessageSource,
    pub recipients: &'a [String],
}

/// How Graph took the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphPath {
    SendMail,
    Draft,
}

/// The Graph leg of one asset; shared by all sessions (the slots are per asset).
pub struct GraphTransport {
    pub(super) http: reqwest::Client,
    pub(super) asset: Arc<Asset>,
    pub(super) options: GraphSettings,
    pub(super) timeouts: GraphTimeouts,
    slots: Arc<Semaphore>,
}

/// A token for one attempt, and whether it came fresh from the token endpoint.
pub(super) struct Bearer {
    pub(super) token: Secret,
    pub(super) app_only: bool,
}

impl GraphTransport {
    /// The transport of `asset` (whose transport is Graph, with `options`), sending with
    /// `http` (the asset's client from [`super::http`]: its roots, no redirects).
    pub fn new(
        asset: Arc<Asset>,
        options: GraphSettings,
        timeouts: GraphTimeouts,
        http: reqwest::Client,
    ) -> GraphTransport {
        let slots = Arc::new(Semaphore::new(options.concurrency.max(1)));
        GraphTransport {
            http,
            asset,
            options,
            timeouts,
            slots,
        }
    }

    pub fn api_url(&self) -> &str {
        &self.options.api_url
    }

    /// Whether the draft path is on (`graph_large_messages`).
    pub fn large_messages(&self) -> bool {
        self.options.large_messages
    }

    pub fn mailbox(&self) -> &str {
        &self.asset.email
    }

    /// `{api_url}/v1.0/users/{email}` with the address percent-encoded.
    pub(super) fn user_url(&self) -> String {
        let mailbox: String =
            oauth2::url::form_urlencoded::byte_serialize(self.asset.email.as_bytes()).collect();
        format!(
            "{}/v1.0/users/{mailbox}",
            self.options.api_url.trim_end_matches('/')
        )
    }

    /// Sends `message`; `Ok` only on Graph's 2xx for the request that sends it.
    pub async fn send(
        &self,
        tokens: &TokenManager,
        message: &mut GraphMessage<'_>,
    ) -> Result<GraphPath, GraphError> {
        let size = message.source.len();
        let large = size > SEND_MAIL_MAX_MIME;
        if large && !self.options.large_messages {
            return Err(GraphError::NeedsLargeMessages {
                size,
                limit: SEND_MAIL_MAX_MIME,
            });
        }
        let _slot = tokio::time::timeout(self.timeouts.command, self.slots.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| GraphError::Busy {
                mailbox: self.asset.email.clone(),
                secs: self.timeouts.command.as_secs(),
            })?;
        let mut refreshed = false;
        loop {
            let access = tokens.access_token(&self.asset.name).await?;
            let bearer = Bearer {
                token: access.token.clone(),
                app_only: self.asset.grant == Grant::ClientCredentials,
            };
            let result = if large {
                self.send_large(&bearer, message)
                    .await
                    .map(|()| GraphPath::Draft)
            } else {
                self.send_mail(&bearer, message)
                    .await
                    .map(|()| GraphPath::SendMail)
            };
            match result {
                // One fresh token and one more try: the body is replayed from the spool.
                Err(GraphError::Unauthorized { .. }) if !refreshed => {
                    tracing::info!(asset = %self.asset.name, "Microsoft Graph refused the access token; refreshing once and retrying");
                    tokens.invalidate(&self.asset.name, &access.token).await;
                    refreshed = true;
                }
                other => return other,
            }
        }
    }

    async fn send_mail(
        &self,
        bearer: &Bearer,
        message: &mut GraphMessage<'_>,
    ) -> Result<(), GraphError> {
        let chunks = message.source.chunks().map_err(|err| GraphError::Local {
            reason: format!("cannot read the spooled message: {err}"),
        })?;
        let request = self
            .http
            .post(format!("{}/sendMail", self.user_url()))
            .bearer_auth(bearer.token.expose())
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .header(
                reqwest::header::CONTENT_LENGTH,
                base64_len(message.source.len()),
            )
            .body(reqwest::Body::wrap_stream(base64_stream(chunks)));
        self.call(request, GraphStep::SendMail, bearer, true)
            .await?;
        Ok(())
    }

    /// One request: bounded in time, its non-2xx answer classified. `sends` marks the
    /// request that sends the mail (its timeout is `upstream_final_reply_secs`, and an
    /// answer lost after it may have arrived is a possible duplicate).
    pub(super) async fn call(
        &self,
        request: reqwest::RequestBuilder,
        step: GraphStep,
        bearer: &Bearer,
        sends: bool,
    ) -> Result<reqwest::Response, GraphError> {
        let limit = if sends {
            self.timeouts.final_reply
        } else {
            self.timeouts.command
        };
        let transport = |reason: String, may_have_arrived: bool| GraphError::Transport {
            step: step.label(),
            reason,
            possible_duplicate: sends && may_have_arrived,
        };
        let response = match tokio::time::timeout(limit, request.send()).await {
            Err(_) => {
                return Err(transport(
                    format!("no answer within {} s", limit.as_secs()),
                    true,
                ))
            }
            Ok(Err(err)) => {
                let may_have_arrived = !err.is_connect();
                return Err(transport(
                    describe_error(&err.without_url()),
                    may_have_arrived,
                ));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry = retry_after(response.headers());
        let body = read_bounded(response, MAX_ERROR_BODY).await;
        let body = parse_error_body(&body);
        let error = classify(
            &self.asset.email,
            step,
            bearer.app_only,
            status.as_u16(),
            retry,
            &body,
        );
        Err(error)
    }
}

/// At most `limit` bytes of a response body (an error body is only described).
pub(super) async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    body
}

/// The base64 of a byte stream, as a stream: 3-byte groups split across chunks are
/// carried over, so only the end carries padding; nothing is held but one chunk.
pub fn base64_stream(inner: ByteStream) -> ByteStream {
    struct State {
        inner: ByteStream,
        carry: Vec<u8>,
        done: bool,
    }
    let state = State {
        inner,
        carry: Vec::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            match st.inner.next().await {
                Some(Ok(chunk)) => {
                    st.carry.extend_from_slice(&chunk);
                    let whole = st.carry.len() / 3 * 3;
                    if whole == 0 {
                        continue;
                    }
                    let encoded = base64::engine::general_purpose::STANDARD
                        .encode(st.carry.get(..whole).unwrap_or_default());
                    st.carry.drain(..whole);
                    return Some((Ok(Bytes::from(encoded)), st));
                }
                Some(Err(err)) => {
                    st.done = true;
                    return Some((Err(err), st));
                }
                None => {
                    st.done = true;
                    if st.carry.is_empty() {
                        return None;
                    }
                    let encoded = base64::engine::general_purpose::STANDARD.encode(&st.carry);
                    return Some((Ok(Bytes::from(encoded)), st));
                }
            }
        }
    });
    Box::pin(stream)
}

/// The whole message in memory (the draft path's parse), at most `limit` bytes.
pub(super) async fn read_all(
    source: &mut dyn MessageSource,
    limit: u64,
) -> std::io::Result<Vec<u8>> {
    let mut chunks = source.chunks()?;
    let mut all = Vec::with_capacity(source.len().min(limit) as usize);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if all.len() as u64 + chunk.len() as u64 > limit {
            return Err(std::io::Error::other(
                "the message is larger than announced",
            ));
        }
        all.extend_from_slice(&chunk);
    }
    Ok(all)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_fits_graphs_limit() {
        assert!(base64_len(SEND_MAIL_MAX_MIME) < 4_000_000);
        assert_eq!(base64_len(0), 0);
        assert_eq!(base64_len(1), 4);
        assert_eq!(base64_len(3), 4);
        assert_eq!(base64_len(4), 8);
    }

    #[tokio::test]
    async fn the_streamed_body_is_the_base64_of_prefix_and_file() {
        let dir = tempfile::tempdir().unwrap();
        for (prefix_len, file_len) in [(0, 0), (5, 0), (0, 7), (100, 200_001), (70_000, 10)] {
            let prefix: Vec<u8> = (0..prefix_len).map(|i| (i % 251) as u8).collect();
            let content: Vec<u8> = (0..file_len).map(|i| (i % 241) as u8).collect();
            let path = dir.path().join("spool");
            std::fs::write(&path, &content).unwrap();
            let mut source = FileSource {
                prefix: prefix.clone(),
                path,
                file_len: file_len as u64,
            };
            let mut stream = base64_stream(source.chunks().unwrap());
            let mut encoded = Vec::new();
            while let Some(chunk) = stream.next().await {
                encoded.extend_from_slice(&chunk.unwrap());
            }
            let mut whole = prefix.clone();
            whole.extend_from_slice(&content);
            let expected = base64::engine::general_purpose::STANDARD.encode(&whole);
            assert_eq!(String::from_utf8(encoded).unwrap(), expected);
            assert_eq!(expected.len() as u64, base64_len(source.len()));
            assert_eq!(read_all(&mut source, u64::MAX).await.unwrap(), whole);
        }
    }

    #[tokio::test]
    async fn chunks_that_split_groups_of_three_encode_the_same() {
        let parts: Vec<std::io::Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"a")),
            Ok(Bytes::from_static(b"bcde")),
            Ok(Bytes::from_static(b"")),
            Ok(Bytes::from_static(b"fg")),
        ];
        let mut stream = base64_stream(Box::pin(futures_util::stream::iter(parts)));
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(out, b"YWJjZGVmZw==");
    }
}
