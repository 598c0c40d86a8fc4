//! SMTP replies: building them for our own clients and parsing the ones an
//! upstream server sends us.

use std::fmt;

/// RFC 5321 section 4.5.3.1.5: a reply line is at most 512 octets including CRLF.
const MAX_REPLY_LINE: usize = 512;

/// RFC 3463 enhanced status code, e.g. `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }

    /// Parses a leading "D.DDD.DDD" (1-3 digits per part) that is followed by a
    /// space or ends the text. Returns the code and the text after it (with
    /// the separating space removed).
    fn parse_prefix(text: &str) -> Option<(EnhancedCode, &str)> {
        let (class, rest) = take_digits(text)?;
        let rest = rest.strip_prefix('.')?;
        let (subject, rest) = take_digits(rest)?;
        let rest = rest.strip_prefix('.')?;
        let (detail, rest) = take_digits(rest)?;
        let rest = if rest.is_empty() {
            rest
        } else {
            rest.strip_prefix(' ')?
        };
        let class = u8::try_from(class).ok()?;
        Some((EnhancedCode::new(class, subject, detail), rest))
    }
}

/// Up to three leading ASCII digits as a number, and the remaining text.
fn take_digits(s: &str) -> Option<(u16, &str)> {
    let n = s.bytes().take(4).take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 3 {
        return None;
    }
    let (digits, rest) = s.split_at(n);
    Some((digits.parse().ok()?, rest))
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// An SMTP reply: a three-digit code, an optional enhanced status code shared
/// by all lines, and one or more lines of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<EnhancedCode>,
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply.
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply. An empty `lines` is stored as one empty line, since
    /// a reply on the wire always has at least one line.
    pub fn multi(code: u16, enhanced: Option<EnhancedCode>, lines: Vec<String>) -> Reply {
        let lines = if lines.is_empty() {
            vec![String::new()]
        } else {
            lines
        };
        Reply {
            code,
            enhanced,
            lines,
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Appends the wire form to `out`.
    ///
    /// Every line is `CODE-[ENH ]text\r\n` except the last, `CODE[ ENH][ text]\r\n`.
    /// A line with empty text and no enhanced code is `CODE-\r\n` / `CODE\r\n`
    /// (both allowed by the RFC 5321 Reply-line grammar). Control characters in
    /// the text become spaces so a reply can never inject a line; a line that
    /// would exceed 512 octets is wrapped onto further lines with the same codes.
    /// A code above 999 is clamped to 999 to keep the line parseable.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let clamped = self.code.min(999);
        let digits = [
            b'0' + (clamped / 100) as u8,
            b'0' + (clamped / 10 % 10) as u8,
            b'0' + (clamped % 10) as u8,
        ];
        // The enhanced code formatted on the stack: every reply to every command comes
        // through here, so the common case allocates nothing.
        let mut enhanced_buf = [0u8; 32];
        let enhanced_len = self.enhanced.map(|e| {
            let mut cursor = std::io::Cursor::new(&mut enhanced_buf[..]);
            let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{e}"));
            cursor.position() as usize
        });
        let enhanced: Option<&[u8]> = enhanced_len.map(|len| &enhanced_buf[..len]);
        let prefix_len = digits.len() + 1 + enhanced.map_or(0, |e| e.len() + 1);
        // prefix_len is at most 4 + 16, so the budget is always comfortably positive.
        let budget = MAX_REPLY_LINE.saturating_sub(prefix_len + 2).max(1);

        // Fast path: no line needs sanitizing or wrapping, so each is written as it is
        // (exactly what the general path below produces for such lines).
        if !self.lines.is_empty()
            && self
                .lines
                .iter()
                .all(|l| l.len() <= budget && !l.chars().any(char::is_control))
        {
            let last = self.lines.len() - 1;
            for (i, text) in self.lines.iter().enumerate() {
                write_line(out, &digits, enhanced, text, i == last);
            }
            return;
        }

        let mut wire_lines: Vec<String> = Vec::with_capacity(self.lines.len());
        for line in &self.lines {
            wrap_into(&sanitize(line), budget, &mut wire_lines);
        }
        if wire_lines.is_empty() {
            wire_lines.push(String::new());
        }

        let last = wire_lines.len() - 1;
        for (i, text) in wire_lines.iter().enumerate() {
            write_line(out, &digits, enhanced, text, i == last);
        }
    }

    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.lines.iter().map(|l| l.len() + 16).sum());
        self.write_to(&mut out);
        out
    }

    /// All lines joined with a space.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        let text = sanitize(&self.text());
        if !text.is_empty() {
            write!(f, " {text}")?;
        }
        Ok(())
    }
}

/// One wire line: `CODE-[ENH ]text` or, for the last, `CODE[ ENH][ text]`, then CRLF.
fn write_line(out: &mut Vec<u8>, code: &[u8], enhanced: Option<&[u8]>, text: &str, last: bool) {
    out.extend_from_slice(code);
    let mut sep = if last { b' ' } else { b'-' };
    if let Some(e) = enhanced {
        out.push(sep);
        out.extend_from_slice(e);
        sep = b' ';
    }
    if !text.is_empty() {
        out.push(sep);
        out.extend_from_slice(text.as_bytes());
    } else if !last && enhanced.is_none() {
        out.push(b'-');
    }
    out.extend_from_slice(b"\r\n");
}

/// Replaces every control character (including CR, LF, NUL, DEL and the C1
/// range) with a space.
fn sanitize(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Splits `text` into pieces of at most `budget` octets, on char boundaries,
/// preferring to break at a space (which is then dropped).
fn wrap_into(text: &str, budget: usize, out: &mut Vec<String>) {
    let mut rest = text;
    while rest.len() > budget {
        let mut cut = budget;
        while cut > 0 && !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut == 0 {
            // A single char wider than the budget cannot happen with a budget
            // of hundreds of octets; bail out rather than loop forever.
            break;
        }
        let head = rest.get(..cut).unwrap_or(rest);
        // Only break at a space in the second half, so a long unbroken token
        // does not produce a string of tiny lines.
        match head.rfind(' ').filter(|&sp| sp >= cut / 2) {
            Some(sp) => {
                out.push(rest.get(..sp).unwrap_or_default().to_owned());
                rest = rest.get(sp + 1..).unwrap_or_default();
            }
            None => {
                out.push(head.to_owned());
                rest = rest.get(cut..).unwrap_or_default();
            }
        }
    }
    out.push(rest.to_owned());
}

/// Result of [`parse_reply`] on a buffer that may hold only part of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyParse {
    /// A whole reply; `consumed` bytes (through its final line ending) were used.
    Complete { reply: Reply, consumed: usize },
    /// More bytes are needed.
    Incomplete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// A line is not `DDD`, `DDD text`, or `DDD-text` with a 2xx-5xx code.
    Malformed,
    /// A line (including its line ending) exceeds `max_line`.
    LineTooLong,
    /// The reply has more than `max_lines` lines.
    TooManyLines,
    /// Lines of one reply carry different codes.
    InconsistentCode,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplyError::Malformed => "malformed SMTP reply",
            ReplyError::LineTooLong => "SMTP reply line too long",
            ReplyError::TooManyLines => "SMTP reply has too many lines",
            ReplyError::InconsistentCode => "SMTP reply lines have different codes",
        })
    }
}

impl std::error::Error for ReplyError {}

/// Parses one (possibly multi-line) reply from the start of `buf`.
///
/// Lines end in CRLF; a bare LF is accepted too. `max_line` bounds one line
/// including its line ending and `max_lines` the number of lines, so a hostile
/// upstream cannot make the caller buffer without limit. Non-UTF-8 text is
/// decoded lossily: upstream text is only ever logged or quoted, and the
/// reply writer sanitises it again.
///
/// The enhanced status code is taken from the first line when its text starts
/// with `D.DDD.DDD` (followed by a space or nothing) whose class equals the
/// reply code's first digit; it is then stripped from every line that starts
/// with the same code.
pub fn parse_reply(
    buf: &[u8],
    max_line: usize,
    max_lines: usize,
) -> Result<ReplyParse, ReplyError> {
    let mut pos = 0usize;
    let mut code: Option<u16> = None;
    let mut texts: Vec<String> = Vec::new();
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            // No line could fit once its LF arrives.
            if rest.len() >= max_line {
                return Err(ReplyError::LineTooLong);
            }
            return Ok(ReplyParse::Incomplete);
        };
        if lf + 1 > max_line {
            return Err(ReplyError::LineTooLong);
        }
        if texts.len() >= max_lines {
            return Err(ReplyError::TooManyLines);
        }
        let raw = rest.get(..lf).unwrap_or_default();
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        pos += lf + 1;

        let (line_code, last, text) = parse_line(raw)?;
        match code {
            None => code = Some(line_code),
            Some(c) if c != line_code => return Err(ReplyError::InconsistentCode),
            Some(_) => {}
        }
        texts.push(text);
        if last {
            break;
        }
        // Another line is due; refuse now rather than wait for it.
        if texts.len() >= max_lines {
            return Err(ReplyError::TooManyLines);
        }
    }
    let code = code.ok_or(ReplyError::Malformed)?;

    let class_digit = code / 100;
    let enhanced = texts
        .first()
        .and_then(|t| EnhancedCode::parse_prefix(t))
        .map(|(e, _)| e)
        .filter(|e| u16::from(e.class) == class_digit);
    if let Some(enh) = enhanced {
        for text in &mut texts {
            if let Some((e, after)) = EnhancedCode::parse_prefix(text) {
                if e == enh {
                    *text = after.to_owned();
                }
            }
        }
    }

    Ok(ReplyParse::Complete {
        reply: Reply {
            code,
            enhanced,
            lines: texts,
        },
        consumed: pos,
    })
}

/// One reply line without its line ending: (code, is last line, text).
fn parse_line(raw: &[u8]) -> Result<(u16, bool, String), ReplyError> {
    let (digits, rest) = match raw {
        [a, b, c, rest @ ..] => ([*a, *b, *c], rest),
        _ => return Err(ReplyError::Malformed),
    };
    if !(b'2'..=b'5').contains(&digits[0]) || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ReplyError::Malformed);
    }
    let code = digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    let (last, text) = match rest {
        [] => (true, &[][..]),
        [b' ', text @ ..] => (true, text),
        [b'-', text @ ..] => (false, text),
        _ => return Err(ReplyError::Malformed),
    };
    Ok((code, last, String::from_utf8_lossy(text).into_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
