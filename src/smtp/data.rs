//! The DATA-phase scanner.
//!
//! This is where SMTP smuggling is stopped. The relay accepts end-of-data only
//! as `<CRLF>.<CRLF>`, and it makes sure that nothing it forwards can look like
//! end-of-data to a next hop that is more lenient (one that also accepts bare
//! LF or bare CR line endings): every forwarded line ends in CRLF, and a lone
//! "." line that was not the real terminator is forwarded stuffed as "..".

/// What to do with a LF not preceded by CR, or a CR not followed by LF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareLineEndings {
    /// Turn each one into CRLF.
    Normalize,
    /// Flag the message (RFC 5321 section 2.3.8 forbids them).
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataLimits {
    /// Longest allowed line, counting its CRLF (RFC 5321 says 1000).
    pub max_line_len: usize,
    pub bare_line_endings: BareLineEndings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    LineTooLong,
    BareLineEnding,
}

/// Result of one [`DataScanner::feed`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Input bytes used. Less than the input only when `finished`: the rest
    /// follows the terminator and belongs to the next command.
    pub consumed: usize,
    pub finished: bool,
}

/// Incremental scanner for the bytes a client sends after the 354 reply.
///
/// See [`DataScanner::feed`] for the exact contract.
#[derive(Debug, Clone)]
pub struct DataScanner {
    limits: DataLimits,
    /// Content of the current line received in earlier `feed` calls, kept only
    /// while it is within the line limit and no problem has been seen.
    line: Vec<u8>,
    /// Content octets of the current line seen so far (keeps counting after
    /// the line stops being buffered).
    line_len: usize,
    /// Whether the current line starts with '.'.
    leading_dot: bool,
    /// Whether the current line began right after a real CRLF; the 354 reply
    /// counts as one, so this starts true.
    after_crlf: bool,
    /// The last byte fed was a CR whose meaning depends on the next byte.
    pending_cr: bool,
    problem: Option<DataProblem>,
    content_len: u64,
    finished: bool,
}

impl DataScanner {
    pub fn new(limits: DataLimits) -> Self {
        DataScanner {
            limits,
            line: Vec::new(),
            line_len: 0,
            leading_dot: false,
            after_crlf: true,
            pending_cr: false,
            problem: None,
            content_len: 0,
            finished: false,
        }
    }

    /// Longest line content (without its CRLF) that is within the limit.
    fn max_content(&self) -> usize {
        self.limits.max_line_len.saturating_sub(2)
    }

    /// Consumes bytes of the DATA section from `input` and appends to `out`
    /// the bytes to forward upstream, in SMTP wire form.
    ///
    /// * Every forwarded line ends in CRLF; dot-stuffing is kept exactly as
    ///   the client sent it ("..x" stays "..x").
    /// * End-of-data is recognised only as `<CRLF>.<CRLF>` (the 354 reply
    ///   counts as the first CRLF) and is not written to `out`. When it is
    ///   found, `finished` is set and the bytes after it are not consumed.
    /// * A bare LF or bare CR is a line ending. With
    ///   [`BareLineEndings::Normalize`] it is written as CRLF; with
    ///   [`BareLineEndings::Reject`] it sets [`DataProblem::BareLineEnding`].
    ///   A CR at the very end of `input` is consumed and decided on the next
    ///   call.
    /// * A line whose content is "." but which is not the real terminator
    ///   (e.g. "\n.\n", "\r\n.\n", "\n.\r\n") is written as "..\r\n", so no
    ///   next hop can see an end-of-data the client did not send.
    /// * A line longer than `max_line_len` (counting CRLF) sets
    ///   [`DataProblem::LineTooLong`].
    /// * After the first problem nothing more is written to `out`, but
    ///   scanning continues so the terminator is still found.
    ///
    /// Memory use is bounded by `max_line_len`: only the unfinished last line
    /// of `input` is kept, and not once it exceeds the limit.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Scan {
        if self.finished {
            return Scan {
                consumed: 0,
                finished: true,
            };
        }
        let mut i = 0usize;
        if self.pending_cr {
            let Some(&first) = input.first() else {
                return Scan {
                    consumed: 0,
                    finished: false,
                };
            };
            self.pending_cr = false;
            if first == b'\n' {
                i = 1;
                self.end_line(&[], true, out);
            } else {
                self.end_line(&[], false, out);
            }
            if self.finished {
                return Scan {
                    consumed: i,
                    finished: true,
                };
            }
        }

        // Ordinary CRLF lines are not copied one by one: they accumulate in a
        // run of input that is copied with one extend_from_slice when a line
        // needing different treatment (or the end of input) is reached.
        let mut run_start = i;
        let max_content = self.max_content();
        if self.problem.is_none() {
            // One allocation for the common case of a chunk forwarded as is.
            out.reserve(input.len().saturating_sub(i));
        }
        while let Some(rest) = input.get(i..).filter(|r| !r.is_empty()) {
            // SIMD search for the next CR or LF (issue 11); everything up to it
            // is line content, whatever its bytes.
            let Some(k) = memchr::memchr2(b'\r', b'\n', rest) else {
                self.flush_run(input, run_start, i, out);
                self.append_partial(rest);
                i = input.len();
                run_start = i;
                break;
            };
            let seg = rest.get(..k).unwrap_or_default();
            let (ending_len, crlf) = match (rest.get(k), rest.get(k + 1)) {
                (Some(b'\n'), _) => (1, false),
                (_, Some(b'\n')) => (2, true),
                (_, Some(_)) => (1, false),
                (_, None) => {
                    // CR as the last byte: bare or half of a CRLF, unknown yet.
                    self.flush_run(input, run_start, i, out);
                    self.append_partial(seg);
                    self.pending_cr = true;
                    i = input.len();
                    run_start = i;
                    break;
                }
            };
            let next = i + k + ending_len;
            let plain = crlf
                && self.line_len == 0
                && self.problem.is_none()
                && seg != b"."
                && seg.len() <= max_content;
            if plain {
                // Forwarded verbatim as part of the run.
                self.count_line(seg.len(), seg.first() == Some(&b'.'));
                self.after_crlf = true;
            } else {
                self.flush_run(input, run_start, i, out);
                self.end_line(seg, crlf, out);
                run_start = next;
                if self.finished {
                    return Scan {
                        consumed: next,
                        finished: true,
                    };
                }
            }
            i = next;
        }
        self.flush_run(input, run_start, i, out);
        Scan {
            consumed: input.len(),
            finished: false,
        }
    }

    /// The first problem seen, if any.
    pub fn problem(&self) -> Option<DataProblem> {
        self.problem
    }

    /// Size of the message so far as the recipient will see it (dot-unstuffed,
    /// CRLF counted), also counted after a problem.
    pub fn content_len(&self) -> u64 {
        self.content_len
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn flush_run(&self, input: &[u8], start: usize, end: usize, out: &mut Vec<u8>) {
        if start < end && self.problem.is_none() {
            out.extend_from_slice(input.get(start..end).unwrap_or_default());
        }
    }

    fn set_problem(&mut self, p: DataProblem) {
        if self.problem.is_none() {
            self.problem = Some(p);
            // Nothing buffered will ever be written now.
            self.line = Vec::new();
        }
    }

    /// Adds content bytes of a line whose ending has not arrived yet.
    fn append_partial(&mut self, seg: &[u8]) {
        let Some(&first) = seg.first() else {
            return;
        };
        if self.line_len == 0 {
            self.leading_dot = first == b'.';
        }
        self.line_len = self.line_len.saturating_add(seg.len());
        let max_content = self.max_content();
        if self.line_len > max_content {
            // A lone "." may still turn out to be the terminator, which is
            // not a line and so cannot be too long.
            if !(self.line_len == 1 && self.leading_dot) {
                self.set_problem(DataProblem::LineTooLong);
            }
        } else if self.problem.is_none() {
            // Grow to at most the limit so a tiny first chunk followed by
            // more does not double the allocation past max_line_len.
            let needed = self.line.len() + seg.len();
            if needed > self.line.capacity() {
                let target = needed
                    .max(self.line.capacity().saturating_mul(2))
                    .min(max_content);
                self.line
                    .reserve_exact(target.saturating_sub(self.line.len()));
            }
            self.line.extend_from_slice(seg);
        }
    }

    /// Finishes the current line: buffered content plus `seg`, ended by a
    /// real CRLF (`crlf`) or a bare CR/LF.
    fn end_line(&mut self, seg: &[u8], crlf: bool, out: &mut Vec<u8>) {
        let total = self.line_len.saturating_add(seg.len());
        let leading_dot = if self.line_len == 0 {
            seg.first() == Some(&b'.')
        } else {
            self.leading_dot
        };
        let lone_dot = total == 1 && leading_dot;
        if lone_dot && self.after_crlf && crlf {
            self.finished = true;
            self.reset_line(true);
            return;
        }
        if total > self.max_content() {
            self.set_problem(DataProblem::LineTooLong);
        }
        if !crlf && self.limits.bare_line_endings == BareLineEndings::Reject {
            self.set_problem(DataProblem::BareLineEnding);
        }
        if self.problem.is_none() {
            if lone_dot {
                out.extend_from_slice(b"..\r\n");
            } else {
                out.extend_from_slice(&self.line);
                out.extend_from_slice(seg);
                out.extend_from_slice(b"\r\n");
            }
        }
        self.count_line(total, leading_dot);
        if lone_dot {
            // We forward ".." which the recipient unstuffs to ".".
            self.content_len = self.content_len.saturating_add(1);
        }
        self.reset_line(crlf);
    }

    fn count_line(&mut self, content: usize, leading_dot: bool) {
        let seen = content
            .saturating_sub(usize::from(leading_dot))
            .saturating_add(2);
        self.content_len = self.content_len.saturating_add(seen as u64);
    }

    fn reset_line(&mut self, after_crlf: bool) {
        self.line.clear();
        self.line_len = 0;
        self.leading_dot = false;
        self.after_crlf = after_crlf;
    }
}

/// Converts message content to DATA wire form: every line ending (CRLF, bare
/// LF or bare CR) becomes CRLF, a line starting with '.' gets a second '.',
/// and non-empty content that does not end in a line ending gets a final
/// CRLF, so appending ".\r\n" always yields exactly one correct terminator.
/// The terminator itself is not added.
pub fn dot_stuff(content: &[u8], out: &mut Vec<u8>) {
    out.reserve(content.len() + content.len() / 64 + 2);
    let mut rest = content;
    while !rest.is_empty() {
        if rest.first() == Some(&b'.') {
            out.push(b'.');
        }
        match memchr::memchr2(b'\r', b'\n', rest) {
            None => {
                out.extend_from_slice(rest);
                out.extend_from_slice(b"\r\n");
                return;
            }
            Some(k) => {
                out.extend_from_slice(rest.get(..k).unwrap_or_default());
                out.extend_from_slice(b"\r\n");
                let ending = if rest.get(k..k + 2) == Some(b"\r\n") {
                    2
                } else {
                    1
                };
                rest = rest.get(k + ending..).unwrap_or_default();
            }
        }
    }
}

#[cfg(test)]
mod reference;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NORMALIZE: DataLimits = DataLimits {
        max_line_len: 1000,
        bare_line_endings: BareLineEndings::Normalize,
    };
    const REJECT: DataLimits = DataLimits {
        max_line_len: 1000,
        bare_line_endings: BareLineEndings::Reject,
    };

    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        out: Vec<u8>,
        consumed: usize,
        finished: bool,
        problem: Option<DataProblem>,
        content_len: u64,
    }

    fn run_chunks(limits: DataLimits, chunks: &[&[u8]]) -> Outcome {
        let mut s = DataScanner::new(limits);
        let mut out = Vec::new();
        let mut consumed = 0;
        for chunk in chunks {
            let scan = s.feed(chunk, &mut out);
            consumed += scan.consumed;
            assert_eq!(scan.finished, s.is_finished());
            if scan.finished {
                break;
            }
            assert_eq!(scan.consumed, chunk.len());
        }
        Outcome {
            out,
            consumed,
            finished: s.is_finished(),
            problem: s.problem(),
            content_len: s.content_len(),
        }
    }

    fn run(limits: DataLimits, input: &[u8]) -> Outcome {
        run_chunks(limits, &[input])
    }

    /// (input, expected output, consumed, finished) in Normalize mode.
    #[test]
    fn normalize_table() {
        let cases: &[(&[u8], &[u8], usize, bool)] = &[
            (b".\r\n", b"", 3, true),
            (b".\r\nMAIL", b"", 3, true),
            (b"a\r\n.\r\n", b"a\r\n", 6, true),
            (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", 6, true),
            (b"a\r\nb\r\n", b"a\r\nb\r\n", 6, false),
            (b"..x\r\n.\r\n", b"..x\r\n", 8, true),
            (b"..\r\n.\r\n", b"..\r\n", 7, true),
            (b".x\r\n.\r\n", b".x\r\n", 7, true),
            (b"\r\n.\r\n", b"\r\n", 5, true),
            (b"a\nb\n", b"a\r\nb\r\n", 4, false),
            (b"a\rb\r\n", b"a\r\nb\r\n", 5, false),
            (b"a\r\rb\r\n", b"a\r\n\r\nb\r\n", 6, false),
            // Smuggling attempts: a "." line not delimited by CRLF on both sides.
            (
                b"a\n.\nMAIL FROM:<x@y>\r\n",
                b"a\r\n..\r\nMAIL FROM:<x@y>\r\n",
                21,
                false,
            ),
            (b"a\r\n.\nb\r\n", b"a\r\n..\r\nb\r\n", 8, false),
            (b"a\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n", 8, false),
            (b"a\r.\rb\r\n", b"a\r\n..\r\nb\r\n", 7, false),
            (b"a\r.\r\nb\r\n", b"a\r\n..\r\nb\r\n", 8, false),
            (b"a\r\n.\r.\r\n", b"a\r\n..\r\n..\r\n", 8, false),
            (b".\n.\r\n", b"..\r\n..\r\n", 5, false),
            (b"\n.\r\n.\r\n", b"\r\n..\r\n", 7, true),
            (b"a\r\n.\r\n\r\n.\r\n", b"a\r\n", 6, true),
            (b"a\r", b"", 2, false),
            (b"a", b"", 1, false),
            (b"", b"", 0, false),
        ];
        for &(input, want, consumed, finished) in cases {
            let got = run(NORMALIZE, input);
            assert_eq!(
                (got.out.as_slice(), got.consumed, got.finished, got.problem),
                (want, consumed, finished, None),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// (input, problem, consumed, finished) in Reject mode.
    #[test]
    fn reject_table() {
        let cases: &[(&[u8], Option<DataProblem>, usize, bool)] = &[
            (b"a\r\n.\r\n", None, 6, true),
            (b"a\nb\r\n.\r\n", Some(DataProblem::BareLineEnding), 8, true),
            (b"a\rb\r\n.\r\n", Some(DataProblem::BareLineEnding), 8, true),
            (b"a\n.\n.\r\nX", Some(DataProblem::BareLineEnding), 8, false),
            (
                b"a\r\n.\n\r\n.\r\nX",
                Some(DataProblem::BareLineEnding),
                10,
                true,
            ),
            (b"\n.\r\n", Some(DataProblem::BareLineEnding), 4, false),
        ];
        for &(input, problem, consumed, finished) in cases {
            let got = run(REJECT, input);
            assert_eq!(
                (got.problem, got.consumed, got.finished),
                (problem, consumed, finished),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn output_stops_after_problem() {
        let got = run(REJECT, b"ok\r\nbad\nmore\r\n.\r\n");
        assert_eq!(got.out, b"ok\r\n");
        assert_eq!(got.problem, Some(DataProblem::BareLineEnding));
        assert!(got.finished);
        assert_eq!(got.content_len, 4 + 5 + 6);
    }

    #[test]
    fn line_length_limit() {
        let limits = DataLimits {
            max_line_len: 7,
            bare_line_endings: BareLineEndings::Reject,
        };
        let ok = run(limits, b"12345\r\n.\r\n");
        assert_eq!((ok.problem, ok.out.as_slice()), (None, &b"12345\r\n"[..]));
        let long = run(limits, b"12345\r\n123456\r\nabc\r\n.\r\nNEXT");
        assert_eq!(long.problem, Some(DataProblem::LineTooLong));
        assert_eq!(long.out, b"12345\r\n");
        assert!(long.finished);
        assert_eq!(long.consumed, 23);
        assert_eq!(long.content_len, 7 + 8 + 5);

        // Byte at a time: the partial line must not be buffered past the limit.
        let input = [b"x".repeat(10_000).as_slice(), b"\r\n.\r\n"].concat();
        let mut s = DataScanner::new(limits);
        let mut out = Vec::new();
        for b in &input {
            s.feed(std::slice::from_ref(b), &mut out);
            assert!(s.line.capacity() <= 7);
        }
        assert!(s.is_finished());
        assert_eq!(s.problem(), Some(DataProblem::LineTooLong));
        assert!(out.is_empty());

        // The first problem wins.
        let both = run(limits, b"1234567\n.\r\n");
        assert_eq!(both.problem, Some(DataProblem::LineTooLong));
    }

    #[test]
    fn content_len_counts_unstuffed() {
        assert_eq!(run(NORMALIZE, b"..x\r\n.\r\n").content_len, 4);
        assert_eq!(run(NORMALIZE, b"abc\r\n\r\n.\r\n").content_len, 7);
        assert_eq!(run(NORMALIZE, b"a\nb\n.\r\n").content_len, 9);
        assert_eq!(run(NORMALIZE, b"\n.\n.\r\n").content_len, 8);
        assert_eq!(run(NORMALIZE, b".\r\n").content_len, 0);
    }

    #[test]
    fn split_terminator_across_feeds() {
        let parts: &[&[u8]] = &[b"hello\r", b"\n", b".", b"\r", b"\nQUIT\r\n"];
        let got = run_chunks(NORMALIZE, parts);
        assert_eq!(got.out, b"hello\r\n");
        assert!(got.finished);
        assert_eq!(got.consumed, 10);
    }

    #[test]
    fn feed_after_finish_consumes_nothing() {
        let mut s = DataScanner::new(NORMALIZE);
        let mut out = Vec::new();
        assert!(s.feed(b".\r\n", &mut out).finished);
        assert_eq!(
            s.feed(b"MAIL", &mut out),
            Scan {
                consumed: 0,
                finished: true
            }
        );
        assert!(out.is_empty());
    }

    #[test]
    fn dot_stuff_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"a\r\n", b"a\r\n"),
            (b".\r\n", b"..\r\n"),
            (b"a\r\n.\r\n.b\r\n", b"a\r\n..\r\n..b\r\n"),
            (b"no newline", b"no newline\r\n"),
            (b"a\n.\n", b"a\r\n..\r\n"),
            (b"a\r.\rb", b"a\r\n..\r\nb\r\n"),
            (b"\r\n", b"\r\n"),
            (b"x.\r\n", b"x.\r\n"),
        ];
        for &(input, want) in cases {
            let mut out = Vec::new();
            dot_stuff(input, &mut out);
            assert_eq!(out, want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    fn data_bytes() -> impl Strategy<Value = Vec<u8>> {
        // Biased toward the bytes that matter so interesting sequences occur.
        proptest::collection::vec(
            prop_oneof![
                4 => prop::sample::select(vec![b'\r', b'\n', b'.', b'a']),
                1 => any::<u8>(),
            ],
            0..200,
        )
    }

    fn limits_strategy() -> impl Strategy<Value = DataLimits> {
        (
            prop_oneof![Just(1000usize), 0usize..12],
            prop_oneof![
                Just(BareLineEndings::Normalize),
                Just(BareLineEndings::Reject)
            ],
        )
            .prop_map(|(max_line_len, bare_line_endings)| DataLimits {
                max_line_len,
                bare_line_endings,
            })
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// Feeds `chunks` to the scanner and to the pre-issue-11 reference, in step,
    /// and asserts identical results after every call (also after the end).
    fn assert_same_as_reference(limits: DataLimits, chunks: &[&[u8]]) {
        let mut new = DataScanner::new(limits);
        let mut old = reference::RefScanner::new(limits);
        let (mut new_out, mut old_out) = (Vec::new(), Vec::new());
        for (n, chunk) in chunks.iter().enumerate() {
            let got = new.feed(chunk, &mut new_out);
            let want = old.feed(chunk, &mut old_out);
            let at = || format!("chunk {n} of {chunks:?} with {limits:?}");
            assert_eq!(got, want, "{}", at());
            assert_eq!(new_out, old_out, "{}", at());
            assert_eq!(new.problem(), old.problem(), "{}", at());
            assert_eq!(new.content_len(), old.content_len(), "{}", at());
            assert_eq!(new.is_finished(), old.is_finished(), "{}", at());
        }
    }

    /// Cuts `input` at the given offsets (taken modulo its length, any order).
    fn cut_at<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        at.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for c in at {
            chunks.push(&input[from..c]);
            from = c;
        }
        chunks.push(&input[from..]);
        chunks
    }

    /// DATA streams built from the pieces that matter (CRLF, bare CR/LF, dots, the
    /// terminator, long runs of ordinary text), so that cuts often fall inside them.
    fn token_stream() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            4 => Just(b"\r\n".to_vec()),
            2 => Just(b"\r\n.\r\n".to_vec()),
            2 => Just(b".".to_vec()),
            2 => Just(b"\r".to_vec()),
            2 => Just(b"\n".to_vec()),
            1 => Just(b"..".to_vec()),
            4 => (1usize..120).prop_map(|n| vec![b'x'; n]),
            1 => proptest::collection::vec(any::<u8>(), 0..40),
        ];
        proptest::collection::vec(token, 0..40).prop_map(|t| t.concat())
    }

    #[test]
    fn matches_reference_at_every_split() {
        let inputs: &[&[u8]] = &[
            b"a\r\n.\r\nNEXT",
            b"\r\n.\r\n",
            b".\r\n",
            b"ab\r\r\n.\r.\n.\r\n",
            b"..\r\n.\n\n.\r\r\n.\r\n",
            b"12345\r\n123456\r\n.\r\n",
            b"x\ry\n\r\n..\r\n.\r\nQUIT\r\n",
        ];
        for limits in [
            NORMALIZE,
            REJECT,
            DataLimits {
                max_line_len: 7,
                ..REJECT
            },
        ] {
            for input in inputs {
                assert_same_as_reference(limits, &[input]);
                for a in 0..=input.len() {
                    for b in a..=input.len() {
                        assert_same_as_reference(limits, &[&input[..a], &input[a..b], &input[b..]]);
                    }
                }
                let bytewise: Vec<&[u8]> = input.chunks(1).collect();
                assert_same_as_reference(limits, &bytewise);
            }
        }
    }

    proptest! {
        #[test]
        fn split_invariance(input in data_bytes(), limits in limits_strategy(), a in 0usize..200, b in 0usize..200) {
            let whole = run(limits, &input);
            let (a, b) = (a.min(input.len()), b.min(input.len()));
            let (a, b) = (a.min(b), a.max(b));
            let split = run_chunks(limits, &[&input[..a], &input[a..b], &input[b..]]);
            prop_assert_eq!(&split, &whole);
            let bytewise: Vec<&[u8]> = input.chunks(1).collect();
            prop_assert_eq!(&run_chunks(limits, &bytewise), &whole);
        }

        #[test]
        fn matches_reference(
            input in prop_oneof![data_bytes(), token_stream()],
            limits in limits_strategy(),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            assert_same_as_reference(limits, &cut_at(&input, &cuts));
        }

        #[test]
        fn output_is_safe_wire_form(input in data_bytes(), limits in limits_strategy()) {
            let got = run(limits, &input);
            // The 354 reply's CRLF precedes the output, the relay's ".\r\n" follows.
            let framed = [b"\r\n".as_slice(), &got.out].concat();
            prop_assert!(!contains(&framed, b"\r\n.\r\n"));
            prop_assert!(!contains(&framed, b"\n.\n") && !contains(&framed, b"\r.\r"));
            prop_assert!(!contains(&framed, b"\n.\r") && !contains(&framed, b"\r.\n"));
            prop_assert!(got.out.is_empty() || got.out.ends_with(b"\r\n"));
            // Every CR is followed by LF and every LF preceded by CR.
            for (i, &c) in got.out.iter().enumerate() {
                if c == b'\r' { prop_assert_eq!(got.out.get(i + 1), Some(&b'\n')); }
                if c == b'\n' { prop_assert!(i > 0 && got.out[i - 1] == b'\r'); }
            }
            if got.problem.is_none() {
                for line in got.out.split_inclusive(|&b| b == b'\n') {
                    prop_assert!(line.len() <= limits.max_line_len.max(4));
                }
            }
            // Finished exactly when the input holds a real terminator.
            let framed_in = [b"\r\n".as_slice(), &input].concat();
            let term = framed_in.windows(5).position(|w| w == b"\r\n.\r\n");
            prop_assert_eq!(got.finished, term.is_some());
            if let Some(p) = term {
                prop_assert_eq!(got.consumed, p + 3);
            }
        }

        #[test]
        fn dot_stuffed_content_round_trips(content in data_bytes(), trailing in data_bytes()) {
            let mut wire = Vec::new();
            dot_stuff(&content, &mut wire);
            let stuffed_len = wire.len();
            wire.extend_from_slice(b".\r\n");
            wire.extend_from_slice(&trailing);
            let got = run(REJECT, &wire);
            prop_assert!(got.finished);
            prop_assert_eq!(got.problem, None);
            prop_assert_eq!(got.consumed, stuffed_len + 3);
            prop_assert_eq!(&got.out[..], &wire[..stuffed_len]);
            let unstuffed: usize = wire[..stuffed_len]
                .split_inclusive(|&b| b == b'\n')
                .map(|l| l.len() - usize::from(l.first() == Some(&b'.')))
                .sum();
            prop_assert_eq!(got.content_len, unstuffed as u64);
        }

        #[test]
        fn normalize_keeps_crlf_content_verbatim(content in data_bytes()) {
            // Content that is already clean wire form passes through unchanged.
            let mut wire = Vec::new();
            dot_stuff(&content, &mut wire);
            let got = run(NORMALIZE, &wire);
            prop_assert_eq!(got.out, wire);
            prop_assert!(!got.finished);
        }
    }
}
