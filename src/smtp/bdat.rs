//! BDAT chunks (RFC 3030 CHUNKING): a buffer that collects message octets behind room for
//! the `BDAT <n>[ LAST]` command line, so the command and its chunk leave in one write
//! (one TLS record run, one syscall) without copying the chunk again to put the command
//! in front of it.

use crate::smtp::unstuff::Unstuffer;

/// Room kept in front of the chunk for its command line: `BDAT ` + 20 digits (u64::MAX)
/// + ` LAST` + CRLF = 32 octets.
pub const HEADER_ROOM: usize = 32;

/// One BDAT chunk being collected. Reused from chunk to chunk and message to message: its
/// allocation stays with the session.
#[derive(Debug, Clone)]
pub struct ChunkBuffer {
    /// `HEADER_ROOM` octets of room, then the chunk's octets.
    buf: Vec<u8>,
}

impl Default for ChunkBuffer {
    fn default() -> Self {
        ChunkBuffer::new()
    }
}

impl ChunkBuffer {
    pub fn new() -> Self {
        ChunkBuffer {
            buf: vec![0; HEADER_ROOM],
        }
    }

    /// Octets collected for the chunk (without its command line).
    pub fn len(&self) -> usize {
        self.buf.len().saturating_sub(HEADER_ROOM)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the message octets of `wire` (the DATA stream's dot-stuffed form), undoing
    /// the dot-stuffing: BDAT carries the message as it is.
    pub fn extend_unstuffed(&mut self, unstuffer: &mut Unstuffer, wire: &[u8]) {
        unstuffer.feed(wire, &mut self.buf);
    }

    /// Appends octets that are already the message itself.
    pub fn extend_raw(&mut self, octets: &[u8]) {
        self.buf.extend_from_slice(octets);
    }

    /// Writes the command line in front of the chunk and returns command and chunk
    /// together, ready to send.
    pub fn framed(&mut self, last: bool) -> &[u8] {
        let command = if last {
            format!("BDAT {} LAST\r\n", self.len())
        } else {
            format!("BDAT {}\r\n", self.len())
        };
        // At most HEADER_ROOM octets by construction; `saturating_sub` keeps a broken
        // assumption from panicking (it would then only frame wrongly, and tests would see).
        let start = HEADER_ROOM.saturating_sub(command.len());
        if let Some(room) = self.buf.get_mut(start..HEADER_ROOM) {
            room.copy_from_slice(command.as_bytes());
        }
        self.buf.get(start..).unwrap_or_default()
    }

    /// Empties the chunk for the next one, keeping the allocation.
    pub fn clear(&mut self) {
        self.buf.truncate(HEADER_ROOM);
    }

    /// Gives memory back when a message made the buffer larger than `keep` octets.
    pub fn shrink_to(&mut self, keep: usize) {
        if self.buf.capacity() > keep + HEADER_ROOM {
            self.buf.shrink_to(keep + HEADER_ROOM);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_and_chunk_are_one_slice() {
        let mut chunk = ChunkBuffer::new();
        assert!(chunk.is_empty());
        chunk.extend_raw(b"hello\r\n");
        assert_eq!(chunk.framed(false), b"BDAT 7\r\nhello\r\n");
        assert_eq!(chunk.framed(true), b"BDAT 7 LAST\r\nhello\r\n");
        chunk.clear();
        assert_eq!(chunk.framed(true), b"BDAT 0 LAST\r\n");
    }

    #[test]
    fn dot_stuffing_is_undone_across_feeds() {
        let mut chunk = ChunkBuffer::new();
        let mut unstuffer = Unstuffer::new();
        chunk.extend_unstuffed(&mut unstuffer, b"a\r\n..b\r\n");
        chunk.extend_unstuffed(&mut unstuffer, b"..c\r\n");
        assert_eq!(chunk.framed(true), b"BDAT 11 LAST\r\na\r\n.b\r\n.c\r\n");
    }

    #[test]
    fn the_longest_command_line_fits_the_room() {
        assert_eq!(format!("BDAT {} LAST\r\n", u64::MAX).len(), HEADER_ROOM);
    }
}
