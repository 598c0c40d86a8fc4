//! Client-supplied values made safe to log.
//!
//! Anything a client sends (an AUTH user name, an EHLO name, envelope and header addresses,
//! a Message-ID) ends up in log lines that operators and tools such as fail2ban read line by
//! line. A raw newline in such a value forges a whole log line ("authentication failed …
//! peer=203.0.113.99") and gets an innocent address banned; an ANSI escape rewrites the
//! operator's terminal; 9 KB of user name floods the log. [`Untrusted`] is the one way such
//! a value is written to a log: control and invisible characters escaped, length capped,
//! and quoted when it could be mistaken for further `key=value` fields.

use std::fmt::{self, Write as _};

/// At most this many bytes of a client value are logged (RFC 5321 paths are at most 256
/// octets, so no legitimate address is cut); the rest is summarized as a byte count.
pub const MAX_LOGGED: usize = 256;

/// A client-supplied string, for logging: `tracing::info!(user = %Untrusted(&name), …)`.
///
/// The output is a single line: C0 and C1 controls, DEL, Unicode line and paragraph
/// separators and invisible formatting characters (bidi overrides, zero-width) are written
/// as escapes (`\n`, `\r`, `\t`, `\u{…}`), a backslash as `\\`, so an escape in the log
/// always means the client sent that character. A value that is empty or contains a space,
/// `"` or `=` is quoted, so it cannot pose as another field of the line. Values longer than
/// [`MAX_LOGGED`] bytes are cut (on a character boundary) and end in `...(+N bytes)`.
#[derive(Debug, Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.0;
        let mut cut = value.len().min(MAX_LOGGED);
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        let (shown, rest) = value.split_at(cut);
        let quoted = shown.is_empty() || shown.contains([' ', '"', '=']);
        if quoted {
            f.write_char('"')?;
        }
        for c in shown.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\\' => f.write_str("\\\\")?,
                '"' if quoted => f.write_str("\\\"")?,
                c if needs_escape(c) => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        if quoted {
            f.write_char('"')?;
        }
        if !rest.is_empty() {
            write!(f, "...(+{} bytes)", rest.len())?;
        }
        Ok(())
    }
}

/// Characters that must not reach a log line as they are: controls (C0, DEL, C1), and
/// characters that break or disguise a line in viewers (line/paragraph separators, bidi
/// controls, zero-width characters, the byte-order mark).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(value: &str) -> String {
        Untrusted(value).to_string()
    }

    #[test]
    fn plain_values_are_unchanged() {
        assert_eq!(show("scanner"), "scanner");
        assert_eq!(show("boss@example.com"), "boss@example.com");
        assert_eq!(show("<abc.123@host.example>"), "<abc.123@host.example>");
        assert_eq!(show("jürgen@bücher.example"), "jürgen@bücher.example");
    }

    #[test]
    fn line_breaks_and_controls_are_escaped() {
        assert_eq!(show("a\r\nb"), "a\\r\\nb");
        assert_eq!(show("a\tb"), "a\\tb");
        assert_eq!(show("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(show("nul\0del\u{7f}"), "nul\\u{0}del\\u{7f}");
        assert_eq!(show("c1\u{85}"), "c1\\u{85}");
        assert_eq!(show("ls\u{2028}ps\u{2029}"), "ls\\u{2028}ps\\u{2029}");
        assert_eq!(
            show("rlo\u{202e}zw\u{200b}bom\u{feff}"),
            "rlo\\u{202e}zw\\u{200b}bom\\u{feff}"
        );
        // A literal backslash cannot pose as an escape.
        assert_eq!(show("a\\nb"), "a\\\\nb");
    }

    #[test]
    fn values_that_look_like_more_fields_are_quoted() {
        assert_eq!(show("x peer=203.0.113.99"), "\"x peer=203.0.113.99\"");
        assert_eq!(show("a=b"), "\"a=b\"");
        assert_eq!(show("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(show(""), "\"\"");
    }

    #[test]
    fn the_output_never_contains_a_line_break_or_control() {
        let every_char: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        for chunk in every_char.as_bytes().chunks(200) {
            let Ok(text) = std::str::from_utf8(chunk) else {
                continue;
            };
            let shown = show(text);
            assert!(!shown.chars().any(needs_escape), "{shown:?}");
        }
        let shown = show(&every_char);
        assert!(!shown.chars().any(needs_escape));
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let long = "a".repeat(9000);
        let shown = show(&long);
        assert_eq!(
            shown,
            format!(
                "{}...(+{} bytes)",
                "a".repeat(MAX_LOGGED),
                9000 - MAX_LOGGED
            )
        );
        // 'ü' is two bytes: the cut falls inside one at an odd offset.
        let umlauts = format!("x{}", "ü".repeat(300));
        let shown = show(&umlauts);
        assert!(shown.starts_with('x'));
        let kept = shown.split("...(+").next().unwrap_or_default();
        assert!(kept.len() <= MAX_LOGGED, "{}", kept.len());
        assert!(shown.ends_with(&format!("{} bytes)", umlauts.len() - kept.len())));
        assert_eq!(show(&"b".repeat(MAX_LOGGED)), "b".repeat(MAX_LOGGED));
    }
}
