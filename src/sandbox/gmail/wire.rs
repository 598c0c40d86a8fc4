//! The fake's own wire handling: CRLF line reading with a length limit, the dot-stuffed DATA
//! stream, reply writing and logging, and the small parsers for `FROM:<path>` and the XOAUTH2
//! initial response. Deliberately independent of the relay's `smtp/` parsers: an oracle must
//! not share the code it checks.

use std::io;

use base64::Engine as _;
use bytes::Buf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::session::Session;
use super::{lock, Turn, IDLE_TIMEOUT, MAX_MESSAGE_BYTES};

/// Outcome of reading one CRLF-terminated line.
pub(super) enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<'_, S> {
    /// Reads the message up to CRLF.CRLF, dot-unstuffing. Only CRLF counts as a line end: a
    /// bare LF followed by "." must neither terminate nor be unstuffed (SMTP smuggling).
    /// Returns None on EOF.
    pub(super) async fn read_data(&mut self) -> io::Result<Option<(Vec<u8>, bool)>> {
        let mut data = Vec::new();
        let mut too_big = false;
        // The DATA command's own CRLF puts us at the start of a line.
        let mut at_line_start = true;
        loop {
            loop {
                if at_line_start && self.buf.first() == Some(&b'.') {
                    match (self.buf.get(1), self.buf.get(2)) {
                        (Some(b'\r'), Some(b'\n')) => {
                            self.buf.advance(3);
                            return Ok(Some((data, too_big)));
                        }
                        (Some(b'\r'), None) | (None, _) => break, // undecided: need more bytes
                        _ => {
                            self.buf.advance(1); // stuffed dot
                            at_line_start = false;
                        }
                    }
                }
                if self.buf.is_empty() {
                    break;
                }
                let (take, line_end) = match find_crlf(&self.buf) {
                    Some(pos) => (pos + 2, true),
                    // Keep a trailing CR: it may be the first half of a CRLF.
                    None if self.buf.last() == Some(&b'\r') => (self.buf.len() - 1, false),
                    None => (self.buf.len(), false),
                };
                if take == 0 {
                    break;
                }
                if !too_big {
                    if data.len() + take > MAX_MESSAGE_BYTES {
                        too_big = true;
                        data = Vec::new();
                    } else {
                        data.extend_from_slice(&self.buf[..take]);
                    }
                }
                self.buf.advance(take);
                at_line_start = line_end;
            }
            if self.read_more().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads one CRLF-terminated line (CRLF stripped) of at most `limit` octets including CRLF.
    /// An overlong line is consumed up to its CRLF without being buffered whole.
    pub(super) async fn read_line(&mut self, limit: usize) -> io::Result<Line> {
        let mut overlong = false;
        loop {
            if let Some(pos) = find_crlf(&self.buf) {
                let line = self.buf.split_to(pos + 2);
                if overlong || pos + 2 > limit {
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Text(line[..pos].to_vec()));
            }
            if self.buf.len() > limit {
                overlong = true;
                // Keep a trailing CR: it may be the first half of the CRLF.
                let keep = usize::from(self.buf.last() == Some(&b'\r'));
                let drop = self.buf.len() - keep;
                self.buf.advance(drop);
            }
            if self.read_more().await? == 0 {
                return Ok(Line::Eof);
            }
        }
    }

    /// Reads more bytes into the buffer; 0 means EOF. Times out like a real MTA would.
    pub(super) async fn read_more(&mut self) -> io::Result<usize> {
        self.buf.reserve(8192);
        let before = self.buf.len();
        match tokio::time::timeout(IDLE_TIMEOUT, self.stream.read_buf(&mut self.buf)).await {
            Ok(result) => {
                if let (Ok(n), true) = (&result, self.behaviour().record_dialogue) {
                    let read = self
                        .buf
                        .get(before..before + n)
                        .unwrap_or_default()
                        .to_vec();
                    self.record(Turn::Client(read));
                }
                result
            }
            Err(_) => {
                let text = format!("451 4.4.2 Timeout - closing connection. {}", self.tag());
                self.reply(&text).await?;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client idle timeout",
                ))
            }
        }
    }

    /// Sends a (possibly multi-line, CRLF-separated) reply.
    pub(super) async fn reply(&mut self, text: &str) -> io::Result<()> {
        for line in text.split("\r\n") {
            tracing::debug!(peer = %self.peer, conn = self.conn_no, tls = self.tls, "S: {line}");
        }
        let mut out = Vec::with_capacity(text.len() + 2);
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
        if self.behaviour().record_dialogue {
            self.record(Turn::Server(out.clone()));
        }
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    /// Appends to this connection's recorded dialogue, merging with a turn of the same side.
    fn record(&self, turn: Turn) {
        let mut dialogues = lock(&self.shared.dialogues);
        let dialogue = dialogues.entry(self.conn_no).or_default();
        match (dialogue.last_mut(), turn) {
            (Some(Turn::Client(last)), Turn::Client(more))
            | (Some(Turn::Server(last)), Turn::Server(more)) => last.extend_from_slice(&more),
            (_, turn) => dialogue.push(turn),
        }
    }

    pub(super) fn log_client(&self, line: &str) {
        tracing::debug!(peer = %self.peer, conn = self.conn_no, tls = self.tls, "C: {line}");
    }
}

/// `code-line1\r\ncode-line2\r\ncode line3`.
pub(super) fn multiline(code: &str, lines: &[String]) -> String {
    let last = lines.len().saturating_sub(1);
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let sep = if i == last { ' ' } else { '-' };
            format!("{code}{sep}{line}")
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Accepts a configured reply with LF or CRLF line breaks and no trailing newline.
pub(super) fn normalize_reply(reply: &str) -> String {
    reply
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Parses `FROM:<path> params...` / `TO:<path> params...` (keyword case-insensitive, optional
/// space after the colon, as Gmail tolerates). Returns the path without brackets.
pub(super) fn parse_path_arg(args: &str, keyword: &str) -> Option<(String, Vec<String>)> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    let path = &rest[..end];
    if path.contains(['<', ' ']) {
        return None;
    }
    let params = rest[end + 1..]
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    Some((path.to_owned(), params))
}

/// Decodes `base64(user=<email>\x01auth=Bearer <token>\x01\x01)`.
pub(super) fn decode_xoauth2(response: &str) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(response.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let body = text.strip_suffix("\x01\x01")?;
    let mut user = None;
    let mut token = None;
    for field in body.split('\x01') {
        let (key, value) = field.split_once('=')?;
        match key {
            "user" => user = Some(value),
            "auth" => token = Some(value.strip_prefix("Bearer ")?),
            _ => {}
        }
    }
    let user = user.filter(|u| !u.is_empty())?;
    let token = token.filter(|t| !t.is_empty())?;
    Some((user.to_owned(), token.to_owned()))
}

/// Builds an XOAUTH2 initial response, for tests and tools that talk to the fake directly.
pub fn xoauth2_response(user: &str, token: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure
mod tests {
    use super::*;

    #[test]
    fn xoauth2_decoding() {
        let ok = xoauth2_response("u@example.com", "ya29.t");
        assert_eq!(
            decode_xoauth2(&ok),
            Some(("u@example.com".into(), "ya29.t".into()))
        );
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(decode_xoauth2(&b64("user=u\x01auth=Bearer t\x01")), None);
        assert_eq!(decode_xoauth2(&b64("user=u\x01auth=Basic t\x01\x01")), None);
        assert_eq!(decode_xoauth2(&b64("auth=Bearer t\x01\x01")), None);
        assert_eq!(decode_xoauth2("%%%"), None);
    }

    #[test]
    fn path_parsing() {
        assert_eq!(
            parse_path_arg("from:<a@b> SIZE=1", "FROM:"),
            Some(("a@b".into(), vec!["SIZE=1".into()]))
        );
        assert_eq!(
            parse_path_arg("FROM: <>", "FROM:"),
            Some((String::new(), vec![]))
        );
        assert_eq!(parse_path_arg("FROM:a@b", "FROM:"), None);
        assert_eq!(parse_path_arg("TO:<a@b>", "FROM:"), None);
    }
}
