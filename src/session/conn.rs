//! The client leg of a session: a stream with a read buffer, replies queued until the
//! session is about to wait (RFC 2920 pipelining), and every read and write bounded by a
//! deadline so a slow or silent client cannot hold its connection slot forever.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::smtp::reply::Reply;
use crate::stream::MaybeTls;

/// How much we read from the client at once; also bounds the chunks sent upstream.
pub(super) const READ_CHUNK: usize = 32 * 1024;

/// What reading the next line from the client produced.
pub(super) enum Input {
    Line(Vec<u8>),
    /// The line passed the limit; answer it. What follows of it, up to its line end, is
    /// dropped by the next read.
    TooLong,
    /// An overlong line's end did not come within `line_end_secs`.
    LineNotEnded,
    /// The client went away, or a write to it failed or timed out.
    Closed,
    TimedOut,
    ShutDown,
}

/// The client leg: a stream, a read buffer, and replies waiting to be flushed.
pub(super) struct ClientConnection<IO> {
    pub(super) stream: MaybeTls<IO>,
    pub(super) read_buf: BytesMut,
    write_buf: Vec<u8>,
    /// Every write to the client is bounded by this: one that does not read its replies
    /// would otherwise hold the session, and its connection slot, forever.
    write_timeout: Duration,
    /// Set once a write timed out: nothing more is written (each try would wait again).
    pub(super) write_timed_out: bool,
    /// How long the end of an overlong line may take.
    line_end_timeout: Duration,
    /// While the rest of an already answered overlong line is being dropped: the instant
    /// its line end must have come by.
    discard_until: Option<Instant>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ClientConnection<IO> {
    pub(super) fn new(
        stream: MaybeTls<IO>,
        write_timeout: Duration,
        line_end_timeout: Duration,
    ) -> Self {
        ClientConnection {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: Vec::with_capacity(1024),
            write_timeout,
            write_timed_out: false,
            line_end_timeout,
            discard_until: None,
        }
    }

    pub(super) fn queue(&mut self, reply: &Reply) {
        reply.write_to(&mut self.write_buf);
    }

    /// Replies are queued and written only when we are about to wait for the client, so a
    /// pipelining client gets its replies in one packet (RFC 2920).
    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        if self.write_timed_out {
            return Err(write_timed_out());
        }
        if self.write_buf.is_empty() {
            // Every write below ends in a complete flush, so with nothing queued there is
            // nothing to flush: no timer, no call into the stream (each DATA read comes here).
            return Ok(());
        }
        let write = async {
            if !self.write_buf.is_empty() {
                self.stream.write_all(&self.write_buf).await?;
                self.write_buf.clear();
            }
            self.stream.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(written) => written,
            Err(_) => {
                self.write_timed_out = true;
                Err(write_timed_out())
            }
        }
    }

    /// The last flush and the close (a TLS close_notify is a write too), both bounded.
    pub(super) async fn close(&mut self) {
        if self.flush().await.is_ok() {
            let _ = tokio::time::timeout(self.write_timeout, self.stream.shutdown()).await;
        }
    }

    /// Reads more bytes into the buffer; Ok(false) when the client closed the connection.
    pub(super) async fn fill(&mut self, deadline: Instant) -> Result<bool, Input> {
        if self.flush().await.is_err() {
            return Err(Input::Closed);
        }
        self.read_buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.read_buf)).await {
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(_)) => Err(Input::Closed),
            Err(_) => Err(Input::TimedOut),
        }
    }

    /// The next line without its CRLF (or bare LF). A line longer than `max` (counting
    /// its CRLF) is reported as TooLong as soon as it passes the limit, without buffering
    /// it, so the client hears about it at once; the next call drops the rest of it up to
    /// its line end, which must come within the line-end timeout.
    pub(super) async fn read_line(
        &mut self,
        max: usize,
        timeout: Duration,
        shutdown: Option<&CancellationToken>,
    ) -> Input {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line_end_by) = self.discard_until {
                if let Some(newline) = memchr::memchr(b'\n', &self.read_buf) {
                    self.read_buf.advance(newline + 1);
                    self.discard_until = None;
                    continue;
                }
                self.read_buf.clear();
                match self
                    .fill_or_shutdown(line_end_by.min(deadline), shutdown)
                    .await
                {
                    Ok(true) => continue,
                    Ok(false) => return Input::Closed,
                    Err(Input::TimedOut) if line_end_by <= deadline => return Input::LineNotEnded,
                    Err(input) => return input,
                }
            }
            if let Some(newline) = memchr::memchr(b'\n', &self.read_buf) {
                if newline + 1 > max {
                    self.read_buf.advance(newline + 1);
                    return Input::TooLong;
                }
                let end = match newline.checked_sub(1) {
                    Some(cr) if self.read_buf[cr] == b'\r' => cr,
                    _ => newline,
                };
                let line = self.read_buf[..end].to_vec();
                self.read_buf.advance(newline + 1);
                return Input::Line(line);
            }
            // No line end yet, and with one the line would be longer than `max`.
            if self.read_buf.len() >= max {
                self.read_buf.clear();
                self.discard_until = Some(Instant::now() + self.line_end_timeout);
                return Input::TooLong;
            }
            match self.fill_or_shutdown(deadline, shutdown).await {
                Ok(true) => {}
                Ok(false) => return Input::Closed,
                Err(input) => return input,
            }
        }
    }

    /// The complete lines the client has already sent (pipelined, RFC 2920) and that the
    /// next reads will return, without their line ends and without consuming them; stops at
    /// the first line longer than `max` (that one is answered when it is read).
    pub(super) fn buffered_lines(&self, max: usize) -> Vec<&[u8]> {
        let mut lines = Vec::new();
        if self.discard_until.is_some() {
            return lines;
        }
        let mut rest: &[u8] = &self.read_buf;
        while let Some(newline) = memchr::memchr(b'\n', rest) {
            if newline + 1 > max {
                break;
            }
            let (line, after) = rest.split_at(newline + 1);
            rest = after;
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            lines.push(line.strip_suffix(b"\r").unwrap_or(line));
        }
        lines
    }

    async fn fill_or_shutdown(
        &mut self,
        deadline: Instant,
        shutdown: Option<&CancellationToken>,
    ) -> Result<bool, Input> {
        match shutdown {
            Some(shutdown) => tokio::select! {
                filled = self.fill(deadline) => filled,
                _ = shutdown.cancelled() => Err(Input::ShutDown),
            },
            None => self.fill(deadline).await,
        }
    }
}

fn write_timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the client does not read its replies",
    )
}
