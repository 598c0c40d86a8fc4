//! Mail addresses reduced to one spelling, for the decisions made on them.
//!
//! RFC 5321 and RFC 5322 give one mailbox many spellings: `"boss"@example.com`,
//! `"bo\ss"@example.com`, `boss(the boss)@example.com`, `boss @ Example.COM` and
//! `<@relay.example:boss@example.com>` all name `boss@example.com`. The sender → asset map
//! and the header-From policy must look at the mailbox, not at its spelling: otherwise a
//! spelling that no claim lists literally falls through to a domain (or `*`) claim and
//! escapes the exact claim of another asset.
//!
//! [`canonical`] reads one addr-spec, [`mailbox_list`] a `From:` field body (display
//! names, comments, obsolete routes and all), and both give [`CanonicalAddress`]es:
//!
//! - the local part is the content of its words (quoted-pairs decoded, comments and
//!   folding dropped, `word . word` joined with dots); when that content is a dot-atom it
//!   is written bare, otherwise as a quoted string that escapes only `"` and `\`, so two
//!   spellings of one local part always give the same text and a quoted local part can
//!   never equal a bare one;
//! - the domain is its labels joined with dots and ASCII-lowercased (an address literal
//!   keeps its brackets, without whitespace);
//! - routes and display names are dropped.
//!
//! Anything this module cannot read unambiguously is an error, never a guess: control
//! characters, unbalanced comments or quotes, groups, encoded words inside an address,
//! domains that are not host names, text that is not UTF-8 (U+FFFD). Callers treat an error
//! as "not a mailbox we can vouch for". The canonical text contains no control characters,
//! so it is safe to log and to send in a command line.
//!
//! Pure and synchronous (no I/O) so it can be unit-, property- and fuzz-tested.

use std::fmt;

/// RFC 1035 label length limit.
const MAX_LABEL: usize = 63;
/// RFC 5321 §4.5.3.1.2: a domain is at most 255 octets.
const MAX_DOMAIN: usize = 255;

/// A mailbox in its one canonical spelling (see the module documentation). Compare these
/// ASCII-case-insensitively, as the sender map does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CanonicalAddress {
    text: String,
    /// Index of the '@' that separates local part and domain.
    at: usize,
}

impl CanonicalAddress {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The local part as written in the canonical form (quoted when it is not a dot-atom).
    pub fn local_part(&self) -> &str {
        &self.text[..self.at]
    }

    /// The domain, ASCII-lowercased.
    pub fn domain(&self) -> &str {
        &self.text[self.at + 1..]
    }

    /// Whether the local part had to stay quoted (its content is not a dot-atom).
    pub fn is_quoted(&self) -> bool {
        self.text.starts_with('"')
    }

    /// Builds the canonical form from the local part's content (quoted-pairs already
    /// decoded) and the domain as read.
    fn from_parts(local: &str, domain: &str) -> Result<CanonicalAddress, AddressError> {
        let mut text = String::with_capacity(local.len() + domain.len() + 3);
        if is_dot_atom(local) {
            text.push_str(local);
        } else {
            text.push('"');
            for c in local.chars() {
                if !is_qcontent(c) {
                    return Err(AddressError::BadCharacter);
                }
                if c == '"' || c == '\\' {
                    text.push('\\');
                }
                text.push(c);
            }
            text.push('"');
        }
        let at = text.len();
        text.push('@');
        text.push_str(domain);
        Ok(CanonicalAddress { text, at })
    }
}

impl fmt::Display for CanonicalAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a text is not a mailbox this module can vouch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressError {
    /// Nothing that could be an address.
    Empty,
    /// A control character, a non-UTF-8 byte (U+FFFD), or a character that has no place
    /// where it stands.
    BadCharacter,
    /// A quoted string, comment or address literal that does not end.
    Unterminated,
    /// The tokens do not form a mailbox (or mailbox list) where one is required.
    Syntax,
    /// A group (`name: a@b, c@d;`): RFC 5322 allows none in From.
    Group,
    /// An RFC 2047 encoded word inside an address, which it must never be (§5); a reader
    /// that decoded it anyway would show another address than the one checked.
    EncodedWord,
    /// The domain is not a host name or an address literal.
    BadDomain,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressError::Empty => "no address",
            AddressError::BadCharacter => "a character that cannot appear there",
            AddressError::Unterminated => "an unterminated quoted string, comment or literal",
            AddressError::Syntax => "not a mailbox",
            AddressError::Group => "a group, which From: cannot hold",
            AddressError::EncodedWord => "an encoded word inside an address",
            AddressError::BadDomain => "a domain that is not a host name",
        })
    }
}

impl std::error::Error for AddressError {}

/// The canonical form of one addr-spec (`local@domain`, as in MAIL FROM without the angle
/// brackets, or a sender claim in the config). Comments and folding whitespace are
/// allowed, as RFC 5322 allows them; display names, angle brackets and routes are not.
pub fn canonical(text: &str) -> Result<CanonicalAddress, AddressError> {
    let mut parser = Parser::new(tokenize(text)?);
    if parser.at_end() {
        return Err(AddressError::Empty);
    }
    let address = parser.addr_spec()?;
    if !parser.at_end() {
        return Err(AddressError::Syntax);
    }
    Ok(address)
}

/// Every mailbox of a `From:` field body (RFC 5322 mailbox-list, with the obsolete forms:
/// empty list elements, routes, CFWS around dots). The body is unfolded (see
/// [`header_fields`]). An empty list is `Ok(vec![])`; a group is an error.
pub fn mailbox_list(value: &str) -> Result<Vec<CanonicalAddress>, AddressError> {
    let mut parser = Parser::new(tokenize(value)?);
    let mut mailboxes = Vec::new();
    loop {
        // obs-mbox-list: empty elements between commas are allowed.
        while parser.eat(Special::Comma) {}
        if parser.at_end() {
            return Ok(mailboxes);
        }
        mailboxes.push(parser.mailbox()?);
        if parser.at_end() {
            return Ok(mailboxes);
        }
        if !parser.eat(Special::Comma) {
            return Err(AddressError::Syntax);
        }
    }
}

/// The unfolded bodies of every field called `name` (ASCII case-insensitive) in the header
/// block at the start of `block`, in order. The block ends at the first empty line (what
/// follows is the body); a field name may be followed by whitespace before its colon
/// (RFC 5322 obs-optional), so `From :` counts as From. Bytes that are not UTF-8 become
/// U+FFFD, which no address may contain.
pub fn header_fields(block: &[u8], name: &str) -> Vec<String> {
    let mut found: Vec<Vec<u8>> = Vec::new();
    // Whether the last field started was one of ours, so its continuation lines belong to
    // the last entry of `found`.
    let mut in_match = false;
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if in_match {
                if let Some(last) = found.last_mut() {
                    // Unfolding removes the line break and keeps the whitespace.
                    last.extend(without_bare_cr(line));
                }
            }
            continue;
        }
        in_match = false;
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let field_name = trim_trailing_wsp(&line[..colon]);
        if field_name.eq_ignore_ascii_case(name.as_bytes()) {
            in_match = true;
            found.push(without_bare_cr(&line[colon + 1..]).collect());
        }
    }
    found
        .into_iter()
        .map(|value| String::from_utf8_lossy(&value).into_owned())
        .collect()
}

/// A bare CR inside a line (one not before LF) becomes a space: a field value never
/// carries a line-break character, whatever the client sent (found by the `address` fuzz
/// target). A value with a space where a CR was fails to parse as a mailbox just as the CR
/// would, so nothing is let through that was refused before.
fn without_bare_cr(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    bytes.iter().map(|&b| if b == b'\r' { b' ' } else { b })
}

fn trim_trailing_wsp(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

// ---------------------------------------------------------------- tokens

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    Open,
    Close,
    At,
    Comma,
    Semicolon,
    Colon,
    Dot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Atom(String),
    /// A quoted string's content, quoted-pairs decoded.
    Quoted(String),
    /// An address literal's content without brackets and whitespace.
    Literal(String),
    Special(Special),
}

/// Splits `text` into RFC 5322 lexical tokens, dropping whitespace and comments.
fn tokenize(text: &str) -> Result<Vec<Token>, AddressError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        let special = match c {
            ' ' | '\t' => {
                chars.next();
                continue;
            }
            '(' => {
                chars.next();
                skip_comment(&mut chars)?;
                continue;
            }
            '"' => {
                chars.next();
                tokens.push(Token::Quoted(quoted_string(&mut chars)?));
                continue;
            }
            '[' => {
                chars.next();
                tokens.push(Token::Literal(literal(&mut chars)?));
                continue;
            }
            '<' => Special::Open,
            '>' => Special::Close,
            '@' => Special::At,
            ',' => Special::Comma,
            ';' => Special::Semicolon,
            ':' => Special::Colon,
            '.' => Special::Dot,
            c if is_atext(c) => {
                let mut atom = String::new();
                while let Some(&c) = chars.peek() {
                    if !is_atext(c) {
                        break;
                    }
                    atom.push(c);
                    chars.next();
                }
                tokens.push(Token::Atom(atom));
                continue;
            }
            // ')', ']', '\\', controls, DEL, non-ASCII whitespace and U+FFFD.
            _ => return Err(AddressError::BadCharacter),
        };
        chars.next();
        tokens.push(Token::Special(special));
    }
    Ok(tokens)
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// After the opening '('; comments nest, and a backslash escapes the next character.
fn skip_comment(chars: &mut Chars<'_>) -> Result<(), AddressError> {
    let mut depth = 1usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) if !is_forbidden_control(escaped) => {}
                Some(_) => return Err(AddressError::BadCharacter),
                None => return Err(AddressError::Unterminated),
            },
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
            }
            c if is_forbidden_control(c) => return Err(AddressError::BadCharacter),
            _ => {}
        }
    }
    Err(AddressError::Unterminated)
}

/// After the opening '"': the content with quoted-pairs decoded.
fn quoted_string(chars: &mut Chars<'_>) -> Result<String, AddressError> {
    let mut content = String::new();
    while let Some(c) = chars.next() {
        let c = match c {
            '"' => return Ok(content),
            '\\' => chars.next().ok_or(AddressError::Unterminated)?,
            c => c,
        };
        if is_forbidden_control(c) {
            return Err(AddressError::BadCharacter);
        }
        content.push(c);
    }
    Err(AddressError::Unterminated)
}

/// After the opening '[': printable ASCII other than '[', ']' and '\'; whitespace dropped.
fn literal(chars: &mut Chars<'_>) -> Result<String, AddressError> {
    let mut content = String::new();
    for c in chars.by_ref() {
        match c {
            ']' => {
                return if content.is_empty() {
                    Err(AddressError::BadDomain)
                } else {
                    Ok(content)
                };
            }
            ' ' | '\t' => {}
            '!'..='Z' | '^'..='~' => content.push(c),
            _ => return Err(AddressError::BadCharacter),
        }
    }
    Err(AddressError::Unterminated)
}

/// Control characters have no place in an address, a display name or a comment (a tab is
/// whitespace). Line breaks are gone after unfolding; one left over is an error.
fn is_forbidden_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// RFC 5322 atext, with RFC 6532 UTF-8. Unicode whitespace and controls are kept out, as
/// is U+FFFD (a byte that was not UTF-8): each would make the address ambiguous.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace() && c != '\u{FFFD}')
}

/// What a canonical quoted local part may contain: printable ASCII and space, and the
/// non-ASCII characters atext allows.
fn is_qcontent(c: char) -> bool {
    (' '..='~').contains(&c) || (!c.is_ascii() && is_atext(c))
}

fn is_dot_atom(text: &str) -> bool {
    text.split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// `=?charset?encoding?text?=`, which RFC 2047 §5 forbids inside an addr-spec.
fn looks_encoded(atom: &str) -> bool {
    atom.len() >= 8 && atom.starts_with("=?") && atom.ends_with("?=")
}

// ---------------------------------------------------------------- grammar

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn new(tokens: Vec<Token>) -> Self {
        Parser { tokens, pos: 0 }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.tokens.len()
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<&Token> {
        let token = self.tokens.get(self.pos);
        self.pos += 1;
        token
    }

    fn eat(&mut self, special: Special) -> bool {
        if self.peek() == Some(&Token::Special(special)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, special: Special) -> Result<(), AddressError> {
        if self.eat(special) {
            Ok(())
        } else {
            Err(AddressError::Syntax)
        }
    }

    /// name-addr (`[display-name] <[route] addr-spec>`) or a bare addr-spec.
    fn mailbox(&mut self) -> Result<CanonicalAddress, AddressError> {
        let start = self.pos;
        // A display name: words, and (obs-phrase) dots after the first word.
        let mut words = 0usize;
        loop {
            match self.peek() {
                Some(Token::Atom(_) | Token::Quoted(_)) => words += 1,
                Some(Token::Special(Special::Dot)) if words > 0 => {}
                _ => break,
            }
            self.pos += 1;
        }
        match self.peek() {
            Some(Token::Special(Special::Open)) => {
                self.pos += 1;
                self.angle_addr_rest()
            }
            Some(Token::Special(Special::Colon)) if words > 0 => Err(AddressError::Group),
            _ => {
                self.pos = start;
                self.addr_spec()
            }
        }
    }

    /// After '<': an optional obsolete route (`@a,@b:`), the addr-spec and '>'.
    fn angle_addr_rest(&mut self) -> Result<CanonicalAddress, AddressError> {
        if matches!(
            self.peek(),
            Some(Token::Special(Special::At | Special::Comma))
        ) {
            // obs-domain-list: *("," / CFWS) "@" domain *("," [CFWS] ["@" domain]) ":"
            while self.eat(Special::Comma) {}
            self.expect(Special::At)?;
            self.domain()?;
            while self.eat(Special::Comma) {
                if self.eat(Special::At) {
                    self.domain()?;
                }
            }
            self.expect(Special::Colon)?;
        }
        let address = self.addr_spec()?;
        self.expect(Special::Close)?;
        Ok(address)
    }

    /// local-part "@" domain, the local part being words joined by dots (obs-local-part
    /// covers dot-atom and quoted-string).
    fn addr_spec(&mut self) -> Result<CanonicalAddress, AddressError> {
        let mut local = String::new();
        loop {
            match self.next() {
                Some(Token::Atom(atom)) => {
                    if looks_encoded(atom) {
                        return Err(AddressError::EncodedWord);
                    }
                    local.push_str(atom);
                }
                Some(Token::Quoted(content)) => local.push_str(content),
                _ => return Err(AddressError::Syntax),
            }
            if !self.eat(Special::Dot) {
                break;
            }
            local.push('.');
        }
        self.expect(Special::At)?;
        let domain = self.domain()?;
        CanonicalAddress::from_parts(&local, &domain)
    }

    /// A host name (labels joined by dots, CFWS between them allowed) or an address
    /// literal; ASCII-lowercased.
    fn domain(&mut self) -> Result<String, AddressError> {
        let domain = match self.next() {
            Some(Token::Literal(content)) => format!("[{content}]"),
            Some(Token::Atom(first)) => {
                let mut domain = first.clone();
                while self.eat(Special::Dot) {
                    match self.next() {
                        Some(Token::Atom(label)) => {
                            domain.push('.');
                            domain.push_str(label);
                        }
                        _ => return Err(AddressError::BadDomain),
                    }
                }
                if !is_host_name(&domain) {
                    return Err(AddressError::BadDomain);
                }
                domain
            }
            _ => return Err(AddressError::BadDomain),
        };
        if domain.len() > MAX_DOMAIN {
            return Err(AddressError::BadDomain);
        }
        Ok(domain.to_ascii_lowercase())
    }
}

/// Dot-separated labels of letters, digits and inner hyphens (U-labels allowed), as the
/// envelope parser accepts them.
fn is_host_name(domain: &str) -> bool {
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && is_atext(c)))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(text: &str) -> Result<String, AddressError> {
        canonical(text).map(|address| address.to_string())
    }

    fn list(value: &str) -> Result<Vec<String>, AddressError> {
        mailbox_list(value).map(|list| list.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn spellings_of_one_mailbox_have_one_canonical_form() {
        let cases = [
            "boss@example.com",
            "boss@EXAMPLE.com",
            "\"boss\"@example.com",
            "\"bo\\ss\"@example.com",
            "boss(the boss)@example.com",
            "boss@(comment)example.com",
            "(x)boss@example.com(y)",
            "boss (nested (comment)) @ example . com",
            "boss@example(a).com",
            "\"boss\"(x)@example.com",
        ];
        for text in cases {
            assert_eq!(canon(text).as_deref(), Ok("boss@example.com"), "{text}");
        }
    }

    #[test]
    fn quoted_words_joined_by_dots_are_one_local_part() {
        assert_eq!(canon("\"first\".last@x.org").unwrap(), "first.last@x.org");
        assert_eq!(canon("\"first.last\"@x.org").unwrap(), "first.last@x.org");
        assert_eq!(canon("first . last@x.org").unwrap(), "first.last@x.org");
    }

    #[test]
    fn local_parts_that_are_not_dot_atoms_stay_quoted_and_minimally_escaped() {
        let cases = [
            ("\"john doe\"@example.com", "\"john doe\"@example.com"),
            ("\"bo\\\"ss\"@example.com", "\"bo\\\"ss\"@example.com"),
            (
                "\"back\\\\slash\"@example.com",
                "\"back\\\\slash\"@example.com",
            ),
            ("\"a..b\"@example.com", "\"a..b\"@example.com"),
            ("\".boss\"@example.com", "\".boss\"@example.com"),
            ("\"boss.\"@example.com", "\"boss.\"@example.com"),
            ("\"\"@example.com", "\"\"@example.com"),
            ("\"a@b\"@example.com", "\"a@b\"@example.com"),
            ("\"j\\ d\"@example.com", "\"j d\"@example.com"),
        ];
        for (text, expected) in cases {
            let address = canonical(text).unwrap();
            assert_eq!(address.as_str(), expected, "{text}");
            assert!(address.is_quoted(), "{text}");
            assert_eq!(address.domain(), "example.com");
        }
    }

    #[test]
    fn utf8_addresses_are_kept() {
        assert_eq!(
            canon("\"j\u{f6}rg\"@B\u{fc}cher.DE").unwrap(),
            "j\u{f6}rg@b\u{fc}cher.de"
        );
    }

    #[test]
    fn address_literals_keep_their_brackets() {
        assert_eq!(canon("a@[192.0.2.1]").unwrap(), "a@[192.0.2.1]");
        assert_eq!(
            canon("a@[ IPv6:2001:DB8::1 ]").unwrap(),
            "a@[ipv6:2001:db8::1]"
        );
        assert_eq!(canon("a@[]"), Err(AddressError::BadDomain));
        assert_eq!(canon("a@[a\\]b]"), Err(AddressError::BadCharacter));
        assert_eq!(canon("a@[abc"), Err(AddressError::Unterminated));
    }

    #[test]
    fn malformed_addresses_are_errors() {
        let cases = [
            ("", AddressError::Empty),
            ("   (only a comment)", AddressError::Empty),
            ("boss", AddressError::Syntax),
            ("@example.com", AddressError::Syntax),
            ("boss@", AddressError::BadDomain),
            ("bo ss@example.com", AddressError::Syntax),
            // Two words without a dot between them are not a local part.
            ("\"b\"\"oss\"@example.com", AddressError::Syntax),
            ("boss@example..com", AddressError::BadDomain),
            ("boss@-example.com", AddressError::BadDomain),
            ("boss@exa!mple.com", AddressError::BadDomain),
            ("a.@example.com", AddressError::Syntax),
            ("boss@example.com extra", AddressError::Syntax),
            ("<boss@example.com>", AddressError::Syntax),
            ("\"boss@example.com", AddressError::Unterminated),
            ("boss(x@example.com", AddressError::Unterminated),
            ("boss)@example.com", AddressError::BadCharacter),
            ("bo\\ss@example.com", AddressError::BadCharacter),
            ("bo\u{7}ss@example.com", AddressError::BadCharacter),
            ("\"bo\u{0}ss\"@example.com", AddressError::BadCharacter),
            ("\"bo\\\u{0}ss\"@example.com", AddressError::BadCharacter),
            ("\"bo\tss\"@example.com", AddressError::BadCharacter),
            ("bo\u{fffd}ss@example.com", AddressError::BadCharacter),
            ("\"bo\u{fffd}ss\"@example.com", AddressError::BadCharacter),
            ("bo\u{a0}ss@example.com", AddressError::BadCharacter),
            ("boss@example.com\r\n", AddressError::BadCharacter),
            ("=?utf-8?q?boss?=@example.com", AddressError::EncodedWord),
        ];
        for (text, expected) in cases {
            assert_eq!(canon(text), Err(expected), "{text:?}");
        }
        let long_label = format!("a@{}.com", "x".repeat(64));
        assert_eq!(canon(&long_label), Err(AddressError::BadDomain));
    }

    #[test]
    fn from_fields_give_every_mailbox() {
        let cases: &[(&str, &[&str])] = &[
            (" boss@example.com", &["boss@example.com"]),
            (" Boss <boss@example.com>", &["boss@example.com"]),
            (" \"Boss, The\" <boss@example.com>", &["boss@example.com"]),
            (" John Q. Public <john@example.com>", &["john@example.com"]),
            (" <\"boss\"@example.com>", &["boss@example.com"]),
            (" boss(x)@example.com", &["boss@example.com"]),
            (
                " Boss <@relay.example:boss@example.com>",
                &["boss@example.com"],
            ),
            (
                " <@a.example,,@b.example:boss@example.com>",
                &["boss@example.com"],
            ),
            (" <,@a.example:boss@example.com>", &["boss@example.com"]),
            (
                " =?utf-8?q?J=C3=B6rg_B?= <jorg@example.com>",
                &["jorg@example.com"],
            ),
            (
                " =?utf-8?B?SsO2cmc=?= <jorg@example.com>",
                &["jorg@example.com"],
            ),
            (" a@x.org, B <b@y.org>", &["a@x.org", "b@y.org"]),
            (" a@x.org,, ,b@y.org,", &["a@x.org", "b@y.org"]),
            (" a@x.org (Alice)", &["a@x.org"]),
            (" \"bo\\\"ss\"@example.com", &["\"bo\\\"ss\"@example.com"]),
            ("", &[]),
            ("  (nobody) ", &[]),
        ];
        for (value, expected) in cases {
            let got = list(value).unwrap_or_else(|err| panic!("{value:?}: {err}"));
            assert_eq!(&got, expected, "{value:?}");
        }
    }

    #[test]
    fn unreadable_from_fields_are_errors() {
        let cases = [
            (" Team: a@x.org, b@y.org;", AddressError::Group),
            (" undisclosed-recipients:;", AddressError::Group),
            (" boss@example.com <evil@x.org>", AddressError::Syntax),
            (" <boss@example.com> evil@x.org", AddressError::Syntax),
            (" <boss@example.com", AddressError::Syntax),
            (" <>", AddressError::Syntax),
            (
                " Boss <@relay.example boss@example.com>",
                AddressError::Syntax,
            ),
            (" a@x.org b@y.org", AddressError::Syntax),
            (" =?utf-8?q?boss?=@example.com", AddressError::EncodedWord),
            (" Boss <boss@example.com>)", AddressError::BadCharacter),
            (" \"Boss <boss@example.com>", AddressError::Unterminated),
        ];
        for (value, expected) in cases {
            assert_eq!(list(value), Err(expected), "{value:?}");
        }
    }

    #[test]
    fn header_fields_finds_every_from_and_stops_at_the_body() {
        let block = b"Received: from x\r\n\tby y\r\nFrom: a@x.org\r\nSubject: s\r\nfrom : b@y.org\r\nFROM:\r\n c@z.org,\r\n\td@z.org\r\nX-From: e@x.org\r\nFrom e@x.org no colon\r\n\r\nFrom: body@x.org\r\n";
        assert_eq!(
            header_fields(block, "From"),
            vec![" a@x.org", " b@y.org", " c@z.org,\td@z.org"]
        );
        assert_eq!(
            header_fields(b"Subject: x\r\n", "From"),
            Vec::<String>::new()
        );
        assert_eq!(
            header_fields(b"From: \xffboss@example.com\r\n\r\n", "From"),
            vec![" \u{fffd}boss@example.com"]
        );
        // A continuation line at the very start belongs to no field.
        assert_eq!(
            header_fields(b" From: a@x.org\r\n", "From"),
            Vec::<String>::new()
        );
    }

    /// The `address` fuzz target's first find (crash-ec2b5ada…): a bare CR inside a From
    /// field came back in the unfolded value.
    #[test]
    fn regression_bare_cr_inside_a_from_field_is_not_kept() {
        let block = b"Receiv\r\nfrom : biv\r\0\0\nfro@y.org\r\n\r\n";
        let fields = header_fields(block, "From");
        assert_eq!(fields, vec![" biv \0\0"]);
        assert!(mailbox_list(&fields[0]).is_err());
        assert_eq!(
            header_fields(b"From: bo\rss@example.com\r\n\tx\r\n\r\n", "From"),
            vec![" bo ss@example.com\tx"]
        );
    }

    fn atom() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}"
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?"
    }

    fn domain() -> impl Strategy<Value = String> {
        proptest::collection::vec(label(), 1..4).prop_map(|labels| labels.join("."))
    }

    fn dot_atom() -> impl Strategy<Value = String> {
        proptest::collection::vec(atom(), 1..4).prop_map(|atoms| atoms.join("."))
    }

    /// A quoted string whose content is `content`, with arbitrary (needless) escapes.
    fn quote(content: &str, escape_all: bool) -> String {
        let mut quoted = String::from("\"");
        for c in content.chars() {
            if escape_all || c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        quoted
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,80}") {
            let _ = canonical(&text);
            let _ = mailbox_list(&text);
        }

        #[test]
        fn never_panics_on_address_alphabet(text in "[a-c@.<>,;:()\\[\\]\" \\\\=?]{0,40}") {
            let _ = canonical(&text);
            let _ = mailbox_list(&text);
        }

        #[test]
        fn canonical_form_is_a_fixed_point(text in "[a-c@.<>,;:()\\[\\]\" \\\\=?-]{0,40}") {
            for address in canonical(&text).into_iter().chain(mailbox_list(&text).into_iter().flatten()) {
                let again = canonical(address.as_str());
                prop_assert_eq!(again.as_ref(), Ok(&address));
                prop_assert!(!address.as_str().chars().any(char::is_control));
            }
        }

        #[test]
        fn quoting_a_dot_atom_changes_nothing(
            local in dot_atom(),
            domain in domain(),
            escape_all in any::<bool>(),
            comment in any::<bool>(),
        ) {
            let plain = canonical(&format!("{local}@{domain}")).unwrap();
            let comment = if comment { "(c)" } else { "" };
            let quoted = format!("{}{comment}@{}", quote(&local, escape_all), domain.to_uppercase());
            prop_assert_eq!(canonical(&quoted).unwrap(), plain.clone());
            let routed = format!(" Name <@relay.example:{quoted}>");
            prop_assert_eq!(mailbox_list(&routed).unwrap(), vec![plain]);
        }

        #[test]
        fn quoted_local_parts_never_equal_bare_ones(
            content in "[ -~]{0,12}",
            domain in domain(),
            escape_all in any::<bool>(),
        ) {
            let address = canonical(&format!("{}@{domain}", quote(&content, escape_all))).unwrap();
            prop_assert_eq!(address.is_quoted(), !is_dot_atom(&content));
            prop_assert_eq!(canonical(address.as_str()).unwrap(), address);
        }
    }
}
