//! Parsing of the commands our local SMTP server receives from clients.
//!
//! Strict where it protects the relay (addresses, parameters, control
//! characters) and lenient where real-world clients, notably printers and
//! scanners, are known to deviate from RFC 5321 in harmless ways.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 section 4.5.3.1: size limits, in octets.
const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 255;
/// Includes the angle brackets.
const MAX_PATH: usize = 256;
const MAX_LABEL: usize = 63;
/// RFC 4422 section 3.1.
const MAX_SASL_NAME: usize = 20;

/// An ESMTP parameter of MAIL or RCPT, e.g. `SIZE=123` or `SMTPUTF8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Upper-cased.
    pub keyword: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo {
        domain: String,
    },
    Ehlo {
        domain: String,
    },
    /// `from` is the address without angle brackets; "" for the null reverse-path <>.
    Mail {
        from: String,
        params: Vec<Param>,
    },
    Rcpt {
        to: String,
        params: Vec<Param>,
    },
    Data,
    Rset,
    Noop,
    Quit,
    StartTls,
    Vrfy {
        arg: String,
    },
    Expn {
        arg: String,
    },
    Help {
        topic: Option<String>,
    },
    /// mechanism upper-cased; initial_response exactly as sent ("=" means empty initial response).
    Auth {
        mechanism: String,
        initial_response: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Verb not known at all (-> 500 5.5.1; the texts are in `replies.rs`).
    Unrecognized,
    /// Known verb, bad arguments (-> 501 5.5.4); the str says what is wrong, for the reply text.
    Syntax(&'static str),
    /// MAIL FROM address malformed (-> 501 5.1.7).
    BadSenderAddress,
    /// RCPT TO address malformed (-> 501 5.1.3).
    BadRecipientAddress,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Unrecognized => f.write_str("command not recognized"),
            CommandError::Syntax(what) => f.write_str(what),
            CommandError::BadSenderAddress => f.write_str("bad sender address syntax"),
            CommandError::BadRecipientAddress => f.write_str("bad recipient address syntax"),
        }
    }
}

impl std::error::Error for CommandError {}

/// Parses one command line, given WITHOUT its line terminator.
///
/// A line that is not UTF-8 is a [`CommandError::Syntax`] error whatever its
/// verb; an unknown verb is [`CommandError::Unrecognized`]; control
/// characters (including a stray CR or LF) anywhere after a known verb are a
/// syntax error.
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line)
        .map_err(|_| CommandError::Syntax("Command is not valid UTF-8"))?;
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    let verb = Verb::from_str(verb).ok_or(CommandError::Unrecognized)?;
    if rest.chars().any(char::is_control) {
        return Err(CommandError::Syntax("Control character in command"));
    }
    // Several spaces between the verb and its argument, and trailing spaces,
    // are common client sloppiness with no ambiguity.
    let args = rest.trim_matches(' ');
    match verb {
        Verb::Helo => Ok(Command::Helo {
            domain: parse_helo_domain(args)?,
        }),
        Verb::Ehlo => Ok(Command::Ehlo {
            domain: parse_helo_domain(args)?,
        }),
        Verb::Mail => parse_mail(args),
        Verb::Rcpt => parse_rcpt(args),
        Verb::Data => no_args(args, Command::Data),
        Verb::Rset => no_args(args, Command::Rset),
        Verb::Quit => no_args(args, Command::Quit),
        Verb::StartTls => no_args(args, Command::StartTls),
        // RFC 5321: NOOP may carry a string, which is ignored.
        Verb::Noop => Ok(Command::Noop),
        Verb::Vrfy => Ok(Command::Vrfy {
            arg: required(args)?,
        }),
        Verb::Expn => Ok(Command::Expn {
            arg: required(args)?,
        }),
        Verb::Help => Ok(Command::Help {
            topic: (!args.is_empty()).then(|| args.to_owned()),
        }),
        Verb::Auth => parse_auth(args),
    }
}

#[derive(Clone, Copy)]
enum Verb {
    Helo,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Rset,
    Noop,
    Quit,
    StartTls,
    Vrfy,
    Expn,
    Help,
    Auth,
}

impl Verb {
    fn from_str(s: &str) -> Option<Verb> {
        const VERBS: [(&str, Verb); 13] = [
            ("HELO", Verb::Helo),
            ("EHLO", Verb::Ehlo),
            ("MAIL", Verb::Mail),
            ("RCPT", Verb::Rcpt),
            ("DATA", Verb::Data),
            ("RSET", Verb::Rset),
            ("NOOP", Verb::Noop),
            ("QUIT", Verb::Quit),
            ("STARTTLS", Verb::StartTls),
            ("VRFY", Verb::Vrfy),
            ("EXPN", Verb::Expn),
            ("HELP", Verb::Help),
            ("AUTH", Verb::Auth),
        ];
        VERBS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|&(_, v)| v)
    }
}

fn no_args(args: &str, cmd: Command) -> Result<Command, CommandError> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax("No parameters allowed"))
    }
}

fn required(args: &str) -> Result<String, CommandError> {
    if args.is_empty() {
        Err(CommandError::Syntax("Argument required"))
    } else {
        Ok(args.to_owned())
    }
}

/// Any non-empty token: printers send NetBIOS names, bare hostnames and
/// worse, and the name is only informational. Words after the first are
/// ignored, as many servers do.
fn parse_helo_domain(args: &str) -> Result<String, CommandError> {
    match args.split(' ').next() {
        Some(d) if !d.is_empty() => Ok(d.to_owned()),
        _ => Err(CommandError::Syntax("Domain name required")),
    }
}

fn parse_auth(args: &str) -> Result<Command, CommandError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let mechanism = words
        .next()
        .ok_or(CommandError::Syntax("Mechanism required"))?;
    let valid_mech = mechanism.len() <= MAX_SASL_NAME
        && mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid_mech {
        return Err(CommandError::Syntax("Invalid mechanism name"));
    }
    let initial_response = match words.next() {
        None => None,
        Some(ir) if ir == "=" || is_base64(ir) => Some(ir.to_owned()),
        Some(_) => return Err(CommandError::Syntax("Invalid initial response")),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax("Too many arguments"));
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial_response,
    })
}

/// Base64 alphabet with at most two '=' of padding at the end. Padding is
/// not required: some clients omit it, and decoding is the caller's job.
fn is_base64(s: &str) -> bool {
    let data = s.trim_end_matches('=');
    let padding = s.len() - data.len();
    !data.is_empty()
        && padding <= 2
        && data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Reverse,
    Forward,
}

impl PathKind {
    fn error(self) -> CommandError {
        match self {
            PathKind::Reverse => CommandError::BadSenderAddress,
            PathKind::Forward => CommandError::BadRecipientAddress,
        }
    }
}

fn parse_mail(args: &str) -> Result<Command, CommandError> {
    let rest = strip_prefix_ci(args, "FROM:")
        .ok_or(CommandError::Syntax("Syntax: MAIL FROM:<address>"))?;
    let (from, params) = parse_path_and_params(rest, PathKind::Reverse)?;
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(args: &str) -> Result<Command, CommandError> {
    let rest =
        strip_prefix_ci(args, "TO:").ok_or(CommandError::Syntax("Syntax: RCPT TO:<address>"))?;
    let (to, params) = parse_path_and_params(rest, PathKind::Forward)?;
    Ok(Command::Rcpt { to, params })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

fn parse_path_and_params(rest: &str, kind: PathKind) -> Result<(String, Vec<Param>), CommandError> {
    // A space after the colon is a common deviation that servers accept.
    let rest = rest.trim_start_matches(' ');
    if rest.is_empty() {
        return Err(CommandError::Syntax("Address required"));
    }
    let (address, tail) = if let Some(after) = rest.strip_prefix('<') {
        let close = closing_bracket(after).ok_or(kind.error())?;
        let inner = after.get(..close).ok_or(kind.error())?;
        let tail = after.get(close + 1..).ok_or(kind.error())?;
        if inner.len() + 2 > MAX_PATH {
            return Err(kind.error());
        }
        (parse_bracketed(inner, kind)?, tail)
    } else {
        // Legacy form without brackets (many printers send it): the address
        // runs to the first space, and there is no null path or source route.
        let (token, tail) = rest.split_at(rest.find(' ').unwrap_or(rest.len()));
        if token.len() + 2 > MAX_PATH || !is_mailbox_or_postmaster(token, kind) {
            return Err(kind.error());
        }
        (token.to_owned(), tail)
    };
    if !tail.is_empty() && !tail.starts_with(' ') {
        return Err(CommandError::Syntax("Space required after address"));
    }
    let params = tail
        .split(' ')
        .filter(|p| !p.is_empty())
        .map(parse_param)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((address, params))
}

/// Index of the '>' closing a path, skipping quoted strings in the local part.
fn closing_bracket(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quotes {
            match c {
                '\\' => escaped = true,
                '"' => in_quotes = false,
                _ => {}
            }
        } else {
            match c {
                '"' => in_quotes = true,
                '>' => return Some(i),
                _ => {}
            }
        }
    }
    None
}

/// The text between '<' and '>': null path, optional source route, mailbox.
fn parse_bracketed(inner: &str, kind: PathKind) -> Result<String, CommandError> {
    if inner.is_empty() {
        return match kind {
            PathKind::Reverse => Ok(String::new()),
            PathKind::Forward => Err(kind.error()),
        };
    }
    // RFC 5321 section 4.1.1.3: source routes must be accepted and ignored.
    let mailbox = if inner.starts_with('@') {
        let (route, mailbox) = inner.split_once(':').ok_or(kind.error())?;
        let route_ok = route.split(',').all(|hop| {
            hop.strip_prefix('@')
                .is_some_and(|d| d.len() <= MAX_DOMAIN && is_domain_name(d))
        });
        if !route_ok {
            return Err(kind.error());
        }
        mailbox
    } else {
        inner
    };
    if is_mailbox_or_postmaster(mailbox, kind) {
        Ok(mailbox.to_owned())
    } else {
        Err(kind.error())
    }
}

fn is_mailbox_or_postmaster(s: &str, kind: PathKind) -> bool {
    // RFC 5321 section 4.1.1.3: "<Postmaster>" without a domain is a valid
    // recipient (and only a recipient).
    (kind == PathKind::Forward && s.eq_ignore_ascii_case("postmaster")) || is_mailbox(s)
}

fn is_mailbox(s: &str) -> bool {
    let (local, domain) = if s.starts_with('"') {
        let Some(end) = quoted_end(s) else {
            return false;
        };
        let (local, rest) = s.split_at(end + 1);
        match rest.strip_prefix('@') {
            Some(domain) => (local, domain),
            None => return false,
        }
    } else {
        match s.split_once('@') {
            Some(parts) => parts,
            None => return false,
        }
    };
    let local_ok = local.len() <= MAX_LOCAL_PART
        && if local.starts_with('"') {
            is_quoted_string(local)
        } else {
            is_dot_string(local)
        };
    local_ok && domain.len() <= MAX_DOMAIN && is_domain(domain)
}

/// Index of the closing quote of a quoted string starting at index 0.
fn quoted_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            return Some(i);
        }
    }
    None
}

/// RFC 5321 Quoted-string, with RFC 6531 UTF-8 in qtext.
fn is_quoted_string(s: &str) -> bool {
    let Some(body) = s.strip_prefix('"').and_then(|b| b.strip_suffix('"')) else {
        return false;
    };
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        let ok = match c {
            // quoted-pairSMTP: backslash followed by printable ASCII or space.
            '\\' => chars.next().is_some_and(|e| (' '..='~').contains(&e)),
            '"' => false,
            ' '..='~' => true,
            c => is_utf8_non_ascii(c),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// RFC 5321 Dot-string, with RFC 6531 UTF-8 in atext.
fn is_dot_string(s: &str) -> bool {
    s.split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || is_utf8_non_ascii(c)
}

/// Non-ASCII characters allowed by SMTPUTF8; Unicode controls and spaces
/// are kept out because they make addresses ambiguous in logs and headers.
fn is_utf8_non_ascii(c: char) -> bool {
    !c.is_ascii() && !c.is_control() && !c.is_whitespace()
}

fn is_domain(d: &str) -> bool {
    match d.strip_prefix('[') {
        Some(literal) => literal.strip_suffix(']').is_some_and(is_address_literal),
        None => is_domain_name(d),
    }
}

/// Dot-separated labels of letters, digits and inner hyphens (U-labels allowed).
fn is_domain_name(d: &str) -> bool {
    !d.is_empty()
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || is_utf8_non_ascii(c))
        })
}

/// Contents of `[...]`: IPv4, `IPv6:...`, or a General-address-literal.
fn is_address_literal(s: &str) -> bool {
    if let Some(v6) = strip_prefix_ci(s, "IPv6:") {
        return v6.parse::<Ipv6Addr>().is_ok();
    }
    match s.split_once(':') {
        Some((tag, content)) => {
            // Standardized-tag is an Ldh-str; dcontent is printable ASCII
            // except '[', '\' and ']'. '<' and '>' are refused too (no
            // registered literal uses them) so a forwarded path can never be
            // cut short by a next hop looking for the closing bracket.
            !tag.is_empty()
                && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !tag.ends_with('-')
                && !content.is_empty()
                && content
                    .bytes()
                    .all(|b| matches!(b, 33..=59 | 61 | 63..=90 | 94..=126))
        }
        None => s.parse::<Ipv4Addr>().is_ok(),
    }
}

/// `keyword[=value]`: keyword is alnum and '-' starting alnum; value is
/// printable without '=' (RFC 5321 esmtp-value, UTF-8 per RFC 6531).
fn parse_param(p: &str) -> Result<Param, CommandError> {
    let (keyword, value) = match p.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (p, None),
    };
    let keyword_ok = keyword
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && keyword
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !keyword_ok {
        return Err(CommandError::Syntax("Invalid parameter keyword"));
    }
    if let Some(v) = value {
        let value_ok = !v.is_empty()
            && v.chars()
                .all(|c| matches!(c, '!'..='<' | '>'..='~') || is_utf8_non_ascii(c));
        if !value_ok {
            return Err(CommandError::Syntax("Invalid parameter value"));
        }
    }
    Ok(Param {
        keyword: keyword.to_ascii_uppercase(),
        value: value.map(str::to_owned),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use CommandError::{BadRecipientAddress, BadSenderAddress, Syntax, Unrecognized};

    fn p(keyword: &str, value: Option<&str>) -> Param {
        Param {
            keyword: keyword.into(),
            value: value.map(Into::into),
        }
    }

    fn mail(from: &str, params: Vec<Param>) -> Result<Command, CommandError> {
        Ok(Command::Mail {
            from: from.into(),
            params,
        })
    }

    fn rcpt(to: &str, params: Vec<Param>) -> Result<Command, CommandError> {
        Ok(Command::Rcpt {
            to: to.into(),
            params,
        })
    }

    fn check(cases: &[(&[u8], Result<Command, CommandError>)]) {
        for (input, want) in cases {
            assert_eq!(
                &parse_command(input),
                want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    fn is_syntax(r: &Result<Command, CommandError>) -> bool {
        matches!(r, Err(Syntax(_)))
    }

    #[test]
    fn simple_verbs() {
        check(&[
            (b"DATA", Ok(Command::Data)),
            (b"data", Ok(Command::Data)),
            (b"DaTa   ", Ok(Command::Data)),
            (b"RSET", Ok(Command::Rset)),
            (b"rset ", Ok(Command::Rset)),
            (b"QUIT", Ok(Command::Quit)),
            (b"quit", Ok(Command::Quit)),
            (b"STARTTLS", Ok(Command::StartTls)),
            (b"starttls ", Ok(Command::StartTls)),
            (b"NOOP", Ok(Command::Noop)),
            (b"NOOP anything at all", Ok(Command::Noop)),
            (b"HELP", Ok(Command::Help { topic: None })),
            (b"HELP  ", Ok(Command::Help { topic: None })),
            (
                b"HELP mail",
                Ok(Command::Help {
                    topic: Some("mail".into()),
                }),
            ),
            (
                b"VRFY postmaster",
                Ok(Command::Vrfy {
                    arg: "postmaster".into(),
                }),
            ),
            (
                b"vrfy John Smith",
                Ok(Command::Vrfy {
                    arg: "John Smith".into(),
                }),
            ),
            (
                b"EXPN staff",
                Ok(Command::Expn {
                    arg: "staff".into(),
                }),
            ),
        ]);
    }

    #[test]
    fn simple_verb_errors() {
        for input in [
            &b"DATA x"[..],
            b"RSET now",
            b"QUIT please",
            b"STARTTLS x",
            b"VRFY",
            b"VRFY   ",
            b"EXPN",
            b"NOOP \r",
            b"HELP a\nb",
            b"HELP \x00",
            b"DATA \x7f",
            b"MAIL FROM:<\xff@b.c>",
            b"\xff\xfe",
            b"HELO caf\xc3",
        ] {
            assert!(
                is_syntax(&parse_command(input)),
                "{:?} -> {:?}",
                String::from_utf8_lossy(input),
                parse_command(input)
            );
        }
        check(&[
            (b"", Err(Unrecognized)),
            (b" ", Err(Unrecognized)),
            (b" DATA", Err(Unrecognized)),
            (b"DAT", Err(Unrecognized)),
            (b"DATAX", Err(Unrecognized)),
            (b"DATA\t", Err(Unrecognized)),
            (b"MAILFROM:<a@b>", Err(Unrecognized)),
            (b"XCLIENT ADDR=1.2.3.4", Err(Unrecognized)),
            (b"GET / HTTP/1.1", Err(Unrecognized)),
            (b"\x16\x03\x01", Err(Unrecognized)),
        ]);
    }

    #[test]
    fn helo_ehlo() {
        let ehlo = |d: &str| Ok(Command::Ehlo { domain: d.into() });
        check(&[
            (b"EHLO mail.example.com", ehlo("mail.example.com")),
            (b"ehlo   mail.example.com  ", ehlo("mail.example.com")),
            (b"EHLO [192.0.2.1]", ehlo("[192.0.2.1]")),
            (b"EHLO [IPv6:2001:db8::1]", ehlo("[IPv6:2001:db8::1]")),
            (b"EHLO NPI3A4F2B", ehlo("NPI3A4F2B")),
            (b"EHLO my_printer!", ehlo("my_printer!")),
            (b"EHLO host extra words", ehlo("host")),
            (b"EHLO h\xc3\xb6st", ehlo("h\u{f6}st")),
            (
                b"HELO printer.local",
                Ok(Command::Helo {
                    domain: "printer.local".into(),
                }),
            ),
            (b"EHLO", Err(Syntax("Domain name required"))),
            (b"EHLO ", Err(Syntax("Domain name required"))),
            (b"HELO", Err(Syntax("Domain name required"))),
            (b"EHLO a\rb", Err(Syntax("Control character in command"))),
        ]);
    }

    #[test]
    fn mail_from() {
        check(&[
            (b"MAIL FROM:<a@b.com>", mail("a@b.com", vec![])),
            (b"mail from:<a@b.com>", mail("a@b.com", vec![])),
            (b"MAIL FROM:<>", mail("", vec![])),
            (b"MAIL FROM:<> SIZE=0", mail("", vec![p("SIZE", Some("0"))])),
            (b"MAIL FROM: <a@b.com>", mail("a@b.com", vec![])),
            (b"MAIL  FROM:<a@b.com>  ", mail("a@b.com", vec![])),
            (b"MAIL FROM:a@b.com", mail("a@b.com", vec![])),
            (
                b"MAIL FROM:a@b.com SIZE=5",
                mail("a@b.com", vec![p("SIZE", Some("5"))]),
            ),
            (
                b"MAIL FROM:<a@b.com> SIZE=123 BODY=8BITMIME SMTPUTF8",
                mail(
                    "a@b.com",
                    vec![
                        p("SIZE", Some("123")),
                        p("BODY", Some("8BITMIME")),
                        p("SMTPUTF8", None),
                    ],
                ),
            ),
            (
                b"MAIL FROM:<a@b.com>   size=1   body=7bit  ",
                mail(
                    "a@b.com",
                    vec![p("SIZE", Some("1")), p("BODY", Some("7bit"))],
                ),
            ),
            (
                b"MAIL FROM:<a@b.com> AUTH=<> RET=HDRS ENVID=QQ314159 X-Y=z+2B",
                mail(
                    "a@b.com",
                    vec![
                        p("AUTH", Some("<>")),
                        p("RET", Some("HDRS")),
                        p("ENVID", Some("QQ314159")),
                        p("X-Y", Some("z+2B")),
                    ],
                ),
            ),
            (
                b"MAIL FROM:<@a.com,@b.com:u@c.com>",
                mail("u@c.com", vec![]),
            ),
            (b"MAIL FROM:<@a.com:u@c.com>", mail("u@c.com", vec![])),
            (
                b"MAIL FROM:<\"john doe\"@b.com>",
                mail("\"john doe\"@b.com", vec![]),
            ),
            (
                b"MAIL FROM:<\"a>b\\\"c\"@b.com> SIZE=1",
                mail("\"a>b\\\"c\"@b.com", vec![p("SIZE", Some("1"))]),
            ),
            (
                b"MAIL FROM:<first.last+tag@sub.example.co.uk>",
                mail("first.last+tag@sub.example.co.uk", vec![]),
            ),
            (
                b"MAIL FROM:<!#$%&'*+-/=?^_`{|}~@x>",
                mail("!#$%&'*+-/=?^_`{|}~@x", vec![]),
            ),
            (b"MAIL FROM:<a@[192.0.2.1]>", mail("a@[192.0.2.1]", vec![])),
            (
                b"MAIL FROM:<a@[IPv6:2001:db8::1]>",
                mail("a@[IPv6:2001:db8::1]", vec![]),
            ),
            (
                b"MAIL FROM:<a@[ipv6:::ffff:1.2.3.4]>",
                mail("a@[ipv6:::ffff:1.2.3.4]", vec![]),
            ),
            (b"MAIL FROM:<a@[x-tag:foo]>", mail("a@[x-tag:foo]", vec![])),
            (
                "MAIL FROM:<j\u{f6}rg@b\u{fc}cher.de> SMTPUTF8".as_bytes(),
                mail("j\u{f6}rg@b\u{fc}cher.de", vec![p("SMTPUTF8", None)]),
            ),
            (
                "MAIL FROM:<\u{7528}\u{6237}@\u{4f8b}\u{5b50}.\u{5e7f}\u{544a}>".as_bytes(),
                mail("\u{7528}\u{6237}@\u{4f8b}\u{5b50}.\u{5e7f}\u{544a}", vec![]),
            ),
            (b"MAIL FROM:<a@localhost>", mail("a@localhost", vec![])),
            (b"MAIL FROM:<a@1-2.x-y>", mail("a@1-2.x-y", vec![])),
        ]);
    }

    #[test]
    fn mail_from_errors() {
        let long_local = format!("MAIL FROM:<{}@b.com>", "a".repeat(65));
        let ok_local = format!("MAIL FROM:<{}@b.com>", "a".repeat(64));
        let long_label = format!("MAIL FROM:<a@{}.com>", "b".repeat(64));
        let long_domain = format!("MAIL FROM:<a@{}b.com>", "bbbbbbbbb.".repeat(25));
        let long_path = format!(
            "MAIL FROM:<{}@{}b.com>",
            "a".repeat(60),
            "bbbbbbbbb.".repeat(19)
        );
        assert_eq!(
            parse_command(ok_local.as_bytes()),
            mail(&ok_local[11..ok_local.len() - 1], vec![])
        );
        let cases: Vec<(&[u8], Result<Command, CommandError>)> = vec![
            (b"MAIL", Err(Syntax("Syntax: MAIL FROM:<address>"))),
            (b"MAIL TO:<a@b>", Err(Syntax("Syntax: MAIL FROM:<address>"))),
            (
                b"MAIL FROM <a@b>",
                Err(Syntax("Syntax: MAIL FROM:<address>")),
            ),
            (b"MAIL FROM", Err(Syntax("Syntax: MAIL FROM:<address>"))),
            (b"MAIL FROM:", Err(Syntax("Address required"))),
            (b"MAIL FROM:   ", Err(Syntax("Address required"))),
            (b"MAIL FROM:<a@b.com", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@b.com junk>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@b.com >", Err(BadSenderAddress)),
            (b"MAIL FROM:< a@b.com>", Err(BadSenderAddress)),
            (
                b"MAIL FROM:<a@b.com>x",
                Err(Syntax("Space required after address")),
            ),
            (
                b"MAIL FROM:<a@b.com>>",
                Err(Syntax("Space required after address")),
            ),
            (b"MAIL FROM:<postmaster>", Err(BadSenderAddress)),
            (b"MAIL FROM:<ab.com>", Err(BadSenderAddress)),
            (b"MAIL FROM:<@b.com>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@b@c>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a..b@c>", Err(BadSenderAddress)),
            (b"MAIL FROM:<.a@c>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a.@c>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a b@c>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a(b)@c>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@b..c>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@b.c.>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@-b.c>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@b-.c>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@b_c.d>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@[1.2.3]>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@[1.2.3.256]>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@[IPv6:1.2.3.4]>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@[IPv6:gggg::]>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@[1.2.3.4>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@[x:]>", Err(BadSenderAddress)),
            (b"MAIL FROM:<a@[x:a[b]>", Err(BadSenderAddress)),
            (b"MAIL FROM:a@[x:a>b]", Err(BadSenderAddress)),
            (b"MAIL FROM:a@[x:a<b]", Err(BadSenderAddress)),
            (b"MAIL FROM:<\"unterminated@b.c>", Err(BadSenderAddress)),
            (b"MAIL FROM:<\"a\"b@c>", Err(BadSenderAddress)),
            (b"MAIL FROM:<\"a\"@>", Err(BadSenderAddress)),
            (b"MAIL FROM:<@a.com:>", Err(BadSenderAddress)),
            (b"MAIL FROM:<@a.com>", Err(BadSenderAddress)),
            (b"MAIL FROM:<@a.com,b.com:u@c.com>", Err(BadSenderAddress)),
            (b"MAIL FROM:<@[1.2.3.4]:u@c.com>", Err(BadSenderAddress)),
            (b"MAIL FROM:<<a@b.com>>", Err(BadSenderAddress)),
            (b"MAIL FROM:a@b.com>", Err(BadSenderAddress)),
            (
                b"MAIL FROM:<>junk",
                Err(Syntax("Space required after address")),
            ),
            ("MAIL FROM:<a\u{a0}b@c>".as_bytes(), Err(BadSenderAddress)),
            (
                b"MAIL FROM:<a@b.com> =x",
                Err(Syntax("Invalid parameter keyword")),
            ),
            (
                b"MAIL FROM:<a@b.com> -X",
                Err(Syntax("Invalid parameter keyword")),
            ),
            (
                b"MAIL FROM:<a@b.com> SI_ZE=1",
                Err(Syntax("Invalid parameter keyword")),
            ),
            (
                b"MAIL FROM:<a@b.com> SIZE=",
                Err(Syntax("Invalid parameter value")),
            ),
            (
                b"MAIL FROM:<a@b.com> SIZE=1=2",
                Err(Syntax("Invalid parameter value")),
            ),
            (long_local.as_bytes(), Err(BadSenderAddress)),
            (long_label.as_bytes(), Err(BadSenderAddress)),
            (long_domain.as_bytes(), Err(BadSenderAddress)),
            (long_path.as_bytes(), Err(BadSenderAddress)),
        ];
        check(&cases);
    }

    #[test]
    fn rcpt_to() {
        check(&[
            (b"RCPT TO:<a@b.com>", rcpt("a@b.com", vec![])),
            (b"rcpt to:<a@b.com>", rcpt("a@b.com", vec![])),
            (b"RCPT TO: <a@b.com>", rcpt("a@b.com", vec![])),
            (b"RCPT TO:a@b.com", rcpt("a@b.com", vec![])),
            (b"RCPT TO:<postmaster>", rcpt("postmaster", vec![])),
            (b"RCPT TO:<PostMaster>", rcpt("PostMaster", vec![])),
            (b"RCPT TO:postmaster", rcpt("postmaster", vec![])),
            (
                b"RCPT TO:<Postmaster@example.com>",
                rcpt("Postmaster@example.com", vec![]),
            ),
            (
                b"RCPT TO:<@hop.example:u@example.com>",
                rcpt("u@example.com", vec![]),
            ),
            (
                b"RCPT TO:<a@b.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@b.com",
                rcpt(
                    "a@b.com",
                    vec![
                        p("NOTIFY", Some("SUCCESS,FAILURE")),
                        p("ORCPT", Some("rfc822;a@b.com")),
                    ],
                ),
            ),
            (b"RCPT", Err(Syntax("Syntax: RCPT TO:<address>"))),
            (b"RCPT FROM:<a@b>", Err(Syntax("Syntax: RCPT TO:<address>"))),
            (b"RCPT TO:", Err(Syntax("Address required"))),
            (b"RCPT TO:<>", Err(BadRecipientAddress)),
            (b"RCPT TO:<postmaster@>", Err(BadRecipientAddress)),
            (b"RCPT TO:<postmasters>", Err(BadRecipientAddress)),
            (b"RCPT TO:<a@b.com junk>", Err(BadRecipientAddress)),
            (b"RCPT TO:<a@b.com", Err(BadRecipientAddress)),
            (b"RCPT TO:<a@b..com>", Err(BadRecipientAddress)),
            (b"RCPT TO:a@b.com>", Err(BadRecipientAddress)),
            (
                b"RCPT TO:<a@b.com> NOTIFY",
                rcpt("a@b.com", vec![p("NOTIFY", None)]),
            ),
            (
                b"RCPT TO:<a@b.com> X=\x01",
                Err(Syntax("Control character in command")),
            ),
        ]);
    }

    #[test]
    fn auth() {
        let auth = |m: &str, ir: Option<&str>| {
            Ok(Command::Auth {
                mechanism: m.into(),
                initial_response: ir.map(Into::into),
            })
        };
        check(&[
            (b"AUTH PLAIN", auth("PLAIN", None)),
            (b"auth plain", auth("PLAIN", None)),
            (b"AUTH PLAIN dGVzdA==", auth("PLAIN", Some("dGVzdA=="))),
            (b"AUTH PLAIN dGVzdA", auth("PLAIN", Some("dGVzdA"))),
            (b"AUTH PLAIN =", auth("PLAIN", Some("="))),
            (b"AUTH LOGIN", auth("LOGIN", None)),
            (b"AUTH LOGIN dXNlcg==", auth("LOGIN", Some("dXNlcg=="))),
            (b"AUTH  xoauth2  a+b/c=  ", auth("XOAUTH2", Some("a+b/c="))),
            (b"AUTH CRAM-MD5", auth("CRAM-MD5", None)),
            (b"AUTH SCRAM-SHA-256-PLUS", auth("SCRAM-SHA-256-PLUS", None)),
            (b"AUTH X_Y", auth("X_Y", None)),
            (b"AUTH", Err(Syntax("Mechanism required"))),
            (b"AUTH ", Err(Syntax("Mechanism required"))),
            (b"AUTH PL@IN", Err(Syntax("Invalid mechanism name"))),
            (b"AUTH PLAIN.X", Err(Syntax("Invalid mechanism name"))),
            (
                b"AUTH ABCDEFGHIJKLMNOPQRSTU",
                Err(Syntax("Invalid mechanism name")),
            ),
            (
                b"AUTH PLAIN dGVz!A==",
                Err(Syntax("Invalid initial response")),
            ),
            (b"AUTH PLAIN ==", Err(Syntax("Invalid initial response"))),
            (b"AUTH PLAIN dG===", Err(Syntax("Invalid initial response"))),
            (b"AUTH PLAIN dG=Vz", Err(Syntax("Invalid initial response"))),
            (b"AUTH PLAIN abc def", Err(Syntax("Too many arguments"))),
        ]);
    }

    #[test]
    fn errors_describe_themselves() {
        // The reply texts live in `replies.rs` (`Say::for_command_error`); here only the
        // descriptions for logs.
        for err in [
            Unrecognized,
            Syntax("Argument required"),
            BadSenderAddress,
            BadRecipientAddress,
        ] {
            assert!(!err.to_string().is_empty());
        }
    }

    fn atom() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,10}"
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_command(&line);
        }

        #[test]
        fn never_panics_on_smtp_alphabet(
            verb in prop::sample::select(vec!["MAIL FROM:", "RCPT TO:", "EHLO ", "AUTH ", "HELP ", "mail from: ", "DATA"]),
            rest in "[0-9a-zA-Z:=<>,.@;\" \\[\\]\\\\-]{0,80}",
        ) {
            let line = format!("{verb}{rest}");
            if let Ok(Command::Mail { from, params } | Command::Rcpt { to: from, params }) = parse_command(line.as_bytes()) {
                prop_assert!(from.len() <= MAX_PATH);
                prop_assert!(params.iter().all(|p| p.keyword == p.keyword.to_ascii_uppercase()));
            }
        }

        #[test]
        fn valid_addresses_parse(
            locals in proptest::collection::vec(atom(), 1..4),
            labels in proptest::collection::vec(label(), 1..4),
            bracketed in any::<bool>(),
            space in any::<bool>(),
            size in any::<u32>(),
        ) {
            let addr = format!("{}@{}", locals.join("."), labels.join("."));
            let path = if bracketed { format!("<{addr}>") } else { addr.clone() };
            let sp = if space { " " } else { "" };
            let line = format!("MAIL FROM:{sp}{path} SIZE={size}");
            prop_assert_eq!(parse_command(line.as_bytes()), mail(&addr, vec![p("SIZE", Some(&size.to_string()))]));
            let line = format!("RCPT TO:{sp}{path}");
            prop_assert_eq!(parse_command(line.as_bytes()), rcpt(&addr, vec![]));
        }
    }
}
