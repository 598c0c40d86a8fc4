//! The message body on its way upstream: the session's reusable body buffers, and the two
//! ways the body leaves: the client's dot-stuffed DATA stream as it is, or BDAT chunks
//! (RFC 3030) of the un-stuffed message. In both, the end of the message (the dot, or
//! `BDAT <n> LAST`) leaves in the same write as the last octets.

use super::conn::READ_CHUNK;
use crate::smtp::bdat::ChunkBuffer;
use crate::smtp::reply::Reply;
use crate::smtp::unstuff::Unstuffer;
use crate::transport::Link;
use crate::upstream::UpstreamError;

/// A BDAT chunk is sent once it holds this much (the last one whatever it holds) when the
/// upstream does not pipeline, so each chunk's round trip carries one client read's worth.
const BDAT_CHUNK: usize = READ_CHUNK;
/// When the upstream pipelines, chunks cost no round trip: one goes out per client read
/// once it holds this much, so the chunk buffer never holds more than one read beyond it
/// (memory per large message), while a client trickling small reads does not turn into a
/// stream of tiny chunks.
const PIPELINED_CHUNK_MIN: usize = 8 * 1024;
/// A message with a large header block (up to 100 KiB is held back for the header gate)
/// may grow the buffers; afterwards they shrink back to this.
const KEEP: usize = READ_CHUNK + 1024;

/// Kept by the session from message to message (allocated at its first DATA), instead of
/// fresh buffers per message.
pub(super) struct BodyBuffers {
    /// The DATA scanner's output for one client read (wire form, dot-stuffed).
    pub(super) wire: Vec<u8>,
    /// The BDAT chunk being collected.
    chunk: ChunkBuffer,
}

impl Default for BodyBuffers {
    fn default() -> Self {
        BodyBuffers {
            wire: Vec::with_capacity(KEEP),
            chunk: ChunkBuffer::new(),
        }
    }
}

impl BodyBuffers {
    /// Empties the buffers for the next message and gives back what a large one added.
    pub(super) fn after_message(&mut self) {
        self.wire.clear();
        if self.wire.capacity() > 2 * KEEP {
            self.wire.shrink_to(KEEP);
        }
        self.chunk.clear();
        self.chunk.shrink_to(2 * BDAT_CHUNK);
    }
}

/// How the message goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyMode {
    /// DATA was answered 354: the wire form, then the dot.
    Data,
    /// BDAT chunks; `wait_each_chunk` when the upstream does not pipeline (RFC 3030 §4.2:
    /// without PIPELINING each chunk's reply comes before the next chunk).
    Bdat { wait_each_chunk: bool },
}

/// Sends one message's body in `mode`.
pub(super) struct BodySender {
    mode: BodyMode,
    unstuffer: Unstuffer,
}

impl BodySender {
    pub(super) fn new(mode: BodyMode) -> Self {
        BodySender {
            mode,
            unstuffer: Unstuffer::new(),
        }
    }

    /// Sends (or, for BDAT, collects) the scanner's output in `body.wire`. Some(reply)
    /// when the upstream refused a BDAT chunk.
    pub(super) async fn send_part(
        &mut self,
        upstream: &mut Link,
        body: &mut BodyBuffers,
    ) -> Result<Option<Reply>, UpstreamError> {
        if body.wire.is_empty() {
            return Ok(None);
        }
        match self.mode {
            BodyMode::Data => upstream.send_wire(&body.wire).await.map(|()| None),
            BodyMode::Bdat { wait_each_chunk } => {
                body.chunk.extend_unstuffed(&mut self.unstuffer, &body.wire);
                let send_at = if wait_each_chunk {
                    BDAT_CHUNK
                } else {
                    PIPELINED_CHUNK_MIN
                };
                if body.chunk.len() < send_at {
                    return Ok(None);
                }
                let sent = upstream
                    .send_bdat_chunk(body.chunk.framed(false), wait_each_chunk)
                    .await;
                body.chunk.clear();
                sent
            }
        }
    }

    /// Sends the last octets (`body.wire`) and the end of the message in one write. A
    /// failure here is not a possible duplicate: the end is in the last TLS record written,
    /// and a record arrives whole or is useless, so the provider never had the whole
    /// message and discards it like any other cut-off transaction.
    pub(super) async fn send_end(
        &mut self,
        upstream: &mut Link,
        body: &mut BodyBuffers,
    ) -> Result<(), UpstreamError> {
        match self.mode {
            BodyMode::Data => {
                body.wire.extend_from_slice(b".\r\n");
                upstream.send_data_end(&body.wire).await
            }
            BodyMode::Bdat { .. } => {
                body.chunk.extend_unstuffed(&mut self.unstuffer, &body.wire);
                let sent = upstream.send_bdat_last(body.chunk.framed(true)).await;
                body.chunk.clear();
                sent
            }
        }
    }
}
