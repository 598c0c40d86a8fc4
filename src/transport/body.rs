//! The message as an HTTP API transport sends it: un-stuffed (RFC 5321 §4.5.2, via
//! [`Unstuffer`]) as it arrives, with the relay's `Received:` header in front (the
//! session's first bytes), spooled so memory stays bounded whatever the size.
//!
//! Small messages stay in memory; past [`MEMORY_LIMIT`] the spool moves to a private
//! temporary file (mode 0600, created already unlinked, so it disappears whatever the
//! outcome, even if the process dies). A spooled body can be read again, which is what
//! lets a transport retry an upload once after a refused token.

use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;

use bytes::Bytes;
use futures_core::Stream;

use crate::smtp::unstuff::Unstuffer;

/// Messages up to this size are kept in memory; larger ones go to a file.
pub const MEMORY_LIMIT: usize = 256 * 1024;
/// Read size when streaming a spooled file.
const READ_CHUNK: usize = 64 * 1024;

enum Store {
    Memory(Vec<u8>),
    File(std::fs::File),
}

/// One message being received, and then sent (possibly twice).
pub struct BodySpool {
    unstuffer: Unstuffer,
    store: Store,
    /// Bytes of the message (after un-stuffing) kept so far.
    len: u64,
    /// Stop keeping bytes past this (the transport's own limit); counting goes on.
    keep_limit: u64,
    /// Where the temporary file goes; the system default when None.
    dir: Option<PathBuf>,
    scratch: Vec<u8>,
}

impl BodySpool {
    /// A spool that keeps at most `keep_limit` bytes (past that, [`over_limit`] says so
    /// and nothing more is written).
    pub fn new(keep_limit: u64, dir: Option<PathBuf>) -> BodySpool {
        BodySpool {
            unstuffer: Unstuffer::new(),
            store: Store::Memory(Vec::new()),
            len: 0,
            keep_limit,
            dir,
            scratch: Vec::new(),
        }
    }

    /// Appends one chunk of SMTP wire form (dot-stuffed lines, no terminator).
    pub fn write_wire(&mut self, wire: &[u8]) -> std::io::Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.unstuffer.feed(wire, &mut scratch);
        let result = self.write_content(&scratch);
        self.scratch = scratch;
        result
    }

    /// Appends message octets as they are (already un-stuffed; BDAT chunks).
    pub fn write_content(&mut self, content: &[u8]) -> std::io::Result<()> {
        let before = self.len;
        self.len += content.len() as u64;
        if before >= self.keep_limit {
            return Ok(());
        }
        let room = (self.keep_limit - before).min(content.len() as u64) as usize;
        let content = content.get(..room).unwrap_or(content);
        if let Store::Memory(memory) = &mut self.store {
            if memory.len() + content.len() <= MEMORY_LIMIT {
                memory.extend_from_slice(content);
                return Ok(());
            }
            let mut file = match &self.dir {
                Some(dir) => tempfile::tempfile_in(dir)?,
                None => tempfile::tempfile()?,
            };
            file.write_all(memory)?;
            self.store = Store::File(file);
        }
        if let Store::File(file) = &mut self.store {
            file.write_all(content)?;
        }
        Ok(())
    }

    /// The message size so far (counting what was not kept).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether more arrived than `keep_limit`: the message cannot be sent.
    pub fn over_limit(&self) -> bool {
        self.len > self.keep_limit
    }

    /// Whether the message went to a temporary file.
    pub fn on_disk(&self) -> bool {
        matches!(self.store, Store::File(_))
    }

    /// The first `max` bytes (the header block lives there), for parsing before sending.
    pub fn head(&mut self, max: usize) -> std::io::Result<Vec<u8>> {
        match &mut self.store {
            Store::Memory(memory) => Ok(memory
                .get(..max.min(memory.len()))
                .unwrap_or_default()
                .to_vec()),
            Store::File(file) => {
                use std::io::Read;
                file.flush()?;
                file.seek(SeekFrom::Start(0))?;
                let mut head = Vec::with_capacity(max.min(READ_CHUNK));
                Read::by_ref(file).take(max as u64).read_to_end(&mut head)?;
                Ok(head)
            }
        }
    }

    /// The body as a stream of chunks for an HTTP request: `prefix` (e.g. an inserted
    /// header), then the spooled message from its start. Can be called again for a retry.
    pub fn stream(
        &mut self,
        prefix: Vec<u8>,
    ) -> std::io::Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
        let source = match &mut self.store {
            Store::Memory(memory) => Source::Memory(Some(Bytes::copy_from_slice(memory))),
            Store::File(file) => {
                file.flush()?;
                let mut copy = file.try_clone()?;
                copy.seek(SeekFrom::Start(0))?;
                Source::File(Some(copy))
            }
        };
        Ok(ChunkStream {
            prefix: (!prefix.is_empty()).then(|| Bytes::from(prefix)),
            source,
        })
    }

    /// Bytes [`stream`](Self::stream) yields with a prefix of `prefix_len`.
    pub fn stream_len(&self, prefix_len: usize) -> u64 {
        self.len.min(self.keep_limit) + prefix_len as u64
    }
}

enum Source {
    Memory(Option<Bytes>),
    /// Read on the blocking pool in chunks; None once exhausted.
    File(Option<std::fs::File>),
}

struct ChunkStream {
    prefix: Option<Bytes>,
    source: Source,
}

impl Stream for ChunkStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::io::Read;
        use std::task::Poll;
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(prefix)));
        }
        match &mut self.source {
            Source::Memory(bytes) => Poll::Ready(bytes.take().filter(|b| !b.is_empty()).map(Ok)),
            Source::File(file) => {
                let Some(reader) = file.as_mut() else {
                    return Poll::Ready(None);
                };
                // A local file read of 64 KiB: short enough to do inline, as tokio's own
                // fs does for small reads on a page-cached file.
                let mut chunk = vec![0u8; READ_CHUNK];
                match reader.read(&mut chunk) {
                    Ok(0) => {
                        *file = None;
                        Poll::Ready(None)
                    }
                    Ok(n) => {
                        chunk.truncate(n);
                        Poll::Ready(Some(Ok(Bytes::from(chunk))))
                    }
                    Err(err) => {
                        *file = None;
                        Poll::Ready(Some(Err(err)))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn collect(spool: &mut BodySpool, prefix: &[u8]) -> Vec<u8> {
        use std::pin::pin;
        use std::task::{Context, Poll, Waker};
        let mut stream = pin!(spool.stream(prefix.to_vec()).unwrap());
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(chunk)) = stream.as_mut().poll_next(&mut cx) {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[test]
    fn unstuffs_and_replays_from_memory_and_disk() {
        for size in [10usize, MEMORY_LIMIT * 3] {
            let mut spool = BodySpool::new(u64::MAX, None);
            let mut expected = Vec::new();
            let line = b"..dot line\r\nplain\r\n";
            while expected.len() < size {
                spool.write_wire(line).unwrap();
                expected.extend_from_slice(b".dot line\r\nplain\r\n");
            }
            assert_eq!(spool.on_disk(), size > MEMORY_LIMIT);
            assert_eq!(spool.len(), expected.len() as u64);
            let mut with_prefix = b"Bcc: a@b\r\n".to_vec();
            with_prefix.extend_from_slice(&expected);
            assert_eq!(collect(&mut spool, b"Bcc: a@b\r\n"), with_prefix);
            // A second read gives the same bytes (a retry after a refused token).
            assert_eq!(collect(&mut spool, b""), expected);
            assert_eq!(spool.head(5).unwrap(), expected[..5].to_vec());
        }
    }

    #[test]
    fn stops_keeping_past_the_limit() {
        let mut spool = BodySpool::new(8, None);
        spool.write_wire(b"0123456789\r\n").unwrap();
        assert!(spool.over_limit());
        assert_eq!(spool.len(), 12);
        assert_eq!(collect(&mut spool, b""), b"01234567");
    }
}
