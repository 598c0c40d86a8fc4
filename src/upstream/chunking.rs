//! The parts of the provider dialogue that save round trips: the message as BDAT chunks
//! (RFC 3030 CHUNKING) instead of DATA + 354 + dot, chunks not waited for one by one when
//! the server pipelines (RFC 2920), and a look at a kept connection before it is used
//! without RSET.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::client::SmtpClient;
use super::error::UpstreamError;
use crate::smtp::reply::Reply;

impl<T: AsyncRead + AsyncWrite + Unpin> SmtpClient<T> {
    /// Sends one BDAT chunk that is not the last (`framed`: command line and chunk, from
    /// [`ChunkBuffer::framed`](crate::smtp::bdat::ChunkBuffer::framed)). With `wait` (the
    /// server does not pipeline) its reply is read now and a refusal returned; otherwise
    /// the reply is read by [`final_reply`](Self::final_reply).
    pub async fn send_bdat_chunk(
        &mut self,
        framed: &[u8],
        wait: bool,
    ) -> Result<Option<Reply>, UpstreamError> {
        tracing::trace!(upstream = %self.target(), bytes = framed.len(), "C: BDAT chunk");
        self.write_all(framed).await?;
        if !wait {
            self.bdat_unanswered += 1;
            return Ok(None);
        }
        self.flush().await?;
        let reply = self.read_reply(self.command_timeout()).await?;
        Ok((!reply.is_positive()).then_some(reply))
    }

    /// Sends the last BDAT chunk (`BDAT <n> LAST` and its octets in one write). Like the
    /// terminator of DATA: a failure here means the server never had the whole message.
    pub async fn send_bdat_last(&mut self, framed: &[u8]) -> Result<(), UpstreamError> {
        tracing::trace!(upstream = %self.target(), bytes = framed.len(), "C: BDAT LAST chunk");
        self.write_all(framed).await?;
        self.flush().await
    }

    /// Whether a kept connection looks usable without sending anything: nothing arrived
    /// while it sat idle (a server ending an idle session sends `421` and closes), and it
    /// is not closed. Read without waiting; what did arrive makes the connection unusable.
    pub async fn quiet_since_last_reply(&mut self) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        let mut chunk = [0u8; 512];
        // A zero timeout still polls the read once: it answers only what is already there.
        match tokio::time::timeout(Duration::ZERO, self.stream.read(&mut chunk)).await {
            Err(_elapsed) => true,
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.read_buf
                    .extend_from_slice(chunk.get(..n).unwrap_or_default());
                false
            }
        }
    }
}
