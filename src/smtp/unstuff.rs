//! Undoing dot-stuffing, chunk by chunk.
//!
//! The DATA scanner forwards the message in SMTP wire form (every line ends in CRLF, a line
//! that starts with '.' carries one extra '.'). Transports that do not speak DATA — BDAT
//! chunks (RFC 3030 takes the octets as they are) and the HTTPS APIs — need the message
//! itself, so RFC 5321 §4.5.2's rule is applied here: the first '.' of every line that
//! starts with one is removed. Chunks may split anywhere, even between CRLF and the dot.

/// Streaming un-stuffer for the scanner's wire output (no terminator in it).
#[derive(Debug, Clone)]
pub struct Unstuffer {
    /// The next byte fed begins a line (the 354 reply counts as a line end).
    at_line_start: bool,
}

impl Default for Unstuffer {
    fn default() -> Self {
        Unstuffer::new()
    }
}

impl Unstuffer {
    pub fn new() -> Self {
        Unstuffer {
            at_line_start: true,
        }
    }

    /// Appends the message octets of `wire` (one chunk of dot-stuffed, CRLF-ended lines)
    /// to `out`.
    pub fn feed(&mut self, wire: &[u8], out: &mut Vec<u8>) {
        out.reserve(wire.len());
        let mut rest = wire;
        if self.at_line_start && rest.first() == Some(&b'.') {
            rest = rest.get(1..).unwrap_or_default();
        }
        // Every "\n." inside the chunk is a line starting with a stuffed dot.
        while let Some(k) = memchr::memmem::find(rest, b"\n.") {
            out.extend_from_slice(rest.get(..=k).unwrap_or_default());
            rest = rest.get(k + 2..).unwrap_or_default();
        }
        out.extend_from_slice(rest);
        if let Some(&last) = wire.last() {
            self.at_line_start = last == b'\n';
        }
    }

    /// Un-stuffs `wire` in place (the output is never longer than the input).
    pub fn feed_in_place(&mut self, wire: &mut Vec<u8>) {
        if !wire.contains(&b'.') {
            if let Some(&last) = wire.last() {
                self.at_line_start = last == b'\n';
            }
            return;
        }
        let mut out = Vec::with_capacity(wire.len());
        self.feed(wire, &mut out);
        *wire = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::data::dot_stuff;
    use proptest::prelude::*;

    fn unstuff_chunks(chunks: &[&[u8]]) -> Vec<u8> {
        let mut unstuffer = Unstuffer::new();
        let mut out = Vec::new();
        for chunk in chunks {
            unstuffer.feed(chunk, &mut out);
        }
        out
    }

    #[test]
    fn table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"a\r\n", b"a\r\n"),
            (b"..\r\n", b".\r\n"),
            (b"..a\r\n...b\r\n", b".a\r\n..b\r\n"),
            (b"x\r\n..\r\ny.z\r\n", b"x\r\n.\r\ny.z\r\n"),
            // A line a lenient client did not stuff: RFC 5321 §4.5.2 drops the dot anyway.
            (b".a\r\n", b"a\r\n"),
        ];
        for (wire, content) in cases {
            assert_eq!(
                unstuff_chunks(&[wire]),
                *content,
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn split_between_line_end_and_dot() {
        assert_eq!(unstuff_chunks(&[b"a\r\n", b"..b\r\n"]), b"a\r\n.b\r\n");
        assert_eq!(
            unstuff_chunks(&[b"a\r", b"\n", b".", b".b\r\n"]),
            b"a\r\n.b\r\n"
        );
        assert_eq!(unstuff_chunks(&[b"a.", b".b\r\n"]), b"a..b\r\n");
    }

    #[test]
    fn in_place_matches_streaming() {
        let mut unstuffer = Unstuffer::new();
        let mut chunk = b"..a\r\nb\r\n".to_vec();
        unstuffer.feed_in_place(&mut chunk);
        assert_eq!(chunk, b".a\r\nb\r\n");
        let mut next = b"..c\r\n".to_vec();
        unstuffer.feed_in_place(&mut next);
        assert_eq!(next, b".c\r\n");
    }

    proptest! {
        /// Stuffing then un-stuffing gives back the content (CRLF-normalized), whatever
        /// the chunking.
        #[test]
        fn round_trips_at_every_split(
            content in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'a')], 0..200),
            cuts in proptest::collection::vec(0usize..220, 0..4),
        ) {
            let mut wire = Vec::new();
            dot_stuff(&content, &mut wire);
            let mut expected = Vec::new();
            // Normalized content: what dot_stuff's lines say, without their stuffing.
            for line in wire.split_inclusive(|&b| b == b'\n') {
                let line = if line.first() == Some(&b'.') { &line[1..] } else { line };
                expected.extend_from_slice(line);
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(wire.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts {
                chunks.push(&wire[start..cut]);
                start = cut;
            }
            chunks.push(&wire[start..]);
            let mut in_place = Unstuffer::new();
            let mut joined = Vec::new();
            for chunk in &chunks {
                let mut owned = chunk.to_vec();
                in_place.feed_in_place(&mut owned);
                joined.extend_from_slice(&owned);
            }
            prop_assert_eq!(&unstuff_chunks(&chunks), &expected);
            prop_assert_eq!(&joined, &expected);
        }
    }
}
