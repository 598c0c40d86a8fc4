//! The DATA scanner as it was before issue 11, kept only as the reference for the
//! differential test in `data.rs`: it finds line ends with `Iterator::position`, one byte
//! at a time. Do not change it to follow `DataScanner`; the point is that it stays put.

use super::{BareLineEndings, DataLimits, DataProblem, Scan};

/// Incremental scanner for the bytes a client sends after the 354 reply.
///
/// See `feed` for the exact contract.
#[derive(Debug, Clone)]
pub struct RefScanner {
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

impl RefScanner {
    pub fn new(limits: DataLimits) -> Self {
        RefScanner {
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
        while let Some(rest) = input.get(i..).filter(|r| !r.is_empty()) {
            let Some(k) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
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
