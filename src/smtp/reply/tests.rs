//! Reply parsing and writing: unit tests and properties (round trips, line limits).

use super::*;
use proptest::prelude::*;

fn complete(buf: &[u8]) -> (Reply, usize) {
    match parse_reply(buf, 512, 100).unwrap() {
        ReplyParse::Complete { reply, consumed } => (reply, consumed),
        ReplyParse::Incomplete => panic!("incomplete: {:?}", String::from_utf8_lossy(buf)),
    }
}

const E: fn(u8, u16, u16) -> Option<EnhancedCode> = |a, b, c| Some(EnhancedCode::new(a, b, c));

#[test]
fn write_table() {
    let cases: Vec<(Reply, &str)> = vec![
        (Reply::new(250, None, "OK"), "250 OK\r\n"),
        (Reply::new(250, E(2, 0, 0), "OK"), "250 2.0.0 OK\r\n"),
        (Reply::new(250, None, ""), "250\r\n"),
        (Reply::new(250, E(2, 1, 5), ""), "250 2.1.5\r\n"),
        (
            Reply::new(550, E(5, 1, 1), "no\r\nMAIL FROM:<x>"),
            "550 5.1.1 no  MAIL FROM:<x>\r\n",
        ),
        (Reply::new(421, None, "a\0b\x7fc\u{85}d"), "421 a b c d\r\n"),
        (
            Reply::multi(
                250,
                None,
                vec!["host".into(), "PIPELINING".into(), "SIZE 10".into()],
            ),
            "250-host\r\n250-PIPELINING\r\n250 SIZE 10\r\n",
        ),
        (
            Reply::multi(250, None, vec!["".into(), "".into()]),
            "250-\r\n250\r\n",
        ),
        (
            Reply::multi(451, E(4, 7, 0), vec!["".into(), "try later".into()]),
            "451-4.7.0\r\n451 4.7.0 try later\r\n",
        ),
        (Reply::multi(220, None, vec![]), "220\r\n"),
        (Reply::new(5, None, "x"), "005 x\r\n"),
        (Reply::new(1234, None, "x"), "999 x\r\n"),
    ];
    for (reply, wire) in cases {
        assert_eq!(
            String::from_utf8(reply.to_wire()).unwrap(),
            wire,
            "{reply:?}"
        );
    }
}

#[test]
fn control_characters_and_mixed_lines_take_the_general_path() {
    let wire = |r: Reply| String::from_utf8(r.to_wire()).unwrap();
    assert_eq!(wire(Reply::new(250, None, "a\r\nb")), "250 a  b\r\n");
    assert_eq!(
        wire(Reply::multi(
            550,
            E(5, 7, 1),
            vec!["ok".into(), "x\0y".into()]
        )),
        "550-5.7.1 ok\r\n550 5.7.1 x y\r\n"
    );
    // One short line and one that needs wrapping: the short one is written as is.
    let long = "z".repeat(600);
    let text = wire(Reply::multi(250, None, vec!["first".into(), long.clone()]));
    assert!(text.starts_with("250-first\r\n250-"), "{text}");
    assert_eq!(
        text.lines().skip(1).map(|l| &l[4..]).collect::<String>(),
        long
    );
}

#[test]
fn display_and_text() {
    let r = Reply::multi(550, E(5, 1, 1), vec!["no such".into(), "user".into()]);
    assert_eq!(r.to_string(), "550 5.1.1 no such user");
    assert_eq!(r.text(), "no such user");
    assert_eq!(Reply::new(250, None, "").to_string(), "250");
    assert_eq!(Reply::new(250, None, "a\r\nb").to_string(), "250 a  b");
    assert_eq!(EnhancedCode::new(4, 7, 0).to_string(), "4.7.0");
}

#[test]
fn classes() {
    let r = |c| Reply::new(c, None, "");
    assert!(r(250).is_positive() && !r(250).is_intermediate());
    assert!(r(354).is_intermediate());
    assert!(r(421).is_transient() && !r(421).is_permanent());
    assert!(r(554).is_permanent());
    assert!(!r(199).is_positive() && !r(600).is_permanent());
}

#[test]
fn long_lines_are_wrapped() {
    let words: Vec<String> = (0..200).map(|i| format!("word{i}")).collect();
    let r = Reply::new(250, E(2, 0, 0), words.join(" "));
    let wire = r.to_wire();
    let lines: Vec<&[u8]> = wire.split_inclusive(|&b| b == b'\n').collect();
    assert!(lines.len() > 1);
    assert!(lines.iter().all(|l| l.len() <= 512));
    let (back, consumed) = complete(&wire);
    assert_eq!(consumed, wire.len());
    assert_eq!(back.text(), words.join(" "));

    let blob = "x".repeat(2000);
    let wire = Reply::new(250, None, blob.clone()).to_wire();
    assert!(wire
        .split_inclusive(|&b| b == b'\n')
        .all(|l| l.len() <= 512));
    assert_eq!(complete(&wire).0.lines.concat(), blob);

    let wide = "é".repeat(600);
    let wire = Reply::new(250, None, wide.clone()).to_wire();
    assert!(wire
        .split_inclusive(|&b| b == b'\n')
        .all(|l| l.len() <= 512));
    assert_eq!(complete(&wire).0.lines.concat(), wide);
}

#[test]
fn parse_table() {
    let r = |code, enh, lines: &[&str]| Reply {
        code,
        enhanced: enh,
        lines: lines.iter().map(|s| s.to_string()).collect(),
    };
    let cases: Vec<(&[u8], Reply, usize)> = vec![
        (b"250 OK\r\n", r(250, None, &["OK"]), 8),
        (b"250 OK\n", r(250, None, &["OK"]), 7),
        (b"250\r\n", r(250, None, &[""]), 5),
        (b"250 \r\n", r(250, None, &[""]), 6),
        (b"250 2.0.0 OK\r\n", r(250, E(2, 0, 0), &["OK"]), 14),
        (b"250 2.0.0\r\n", r(250, E(2, 0, 0), &[""]), 11),
        (b"550 5.7.1 a\r\nMORE", r(550, E(5, 7, 1), &["a"]), 13),
        (b"550 4.7.1 a\r\n", r(550, None, &["4.7.1 a"]), 13),
        (b"550 5.7.1x a\r\n", r(550, None, &["5.7.1x a"]), 14),
        (b"550 5.7.1234 a\r\n", r(550, None, &["5.7.1234 a"]), 16),
        (b"450 4.123.456 x\r\n", r(450, E(4, 123, 456), &["x"]), 17),
        (
            b"250-mx.example\r\n250-SIZE 10\r\n250 8BITMIME\r\n",
            r(250, None, &["mx.example", "SIZE 10", "8BITMIME"]),
            43,
        ),
        (
            b"550-5.1.1 one\r\n550-5.1.1 two\r\n550 5.1.1 three\r\n",
            r(550, E(5, 1, 1), &["one", "two", "three"]),
            47,
        ),
        (
            b"550-5.1.1 one\r\n550-two\r\n550 5.2.0 three\r\n",
            r(550, E(5, 1, 1), &["one", "two", "5.2.0 three"]),
            41,
        ),
        (b"250-\r\n250 x\r\n", r(250, None, &["", "x"]), 13),
        (
            b"250 caf\xc3\xa9 \xff\r\n",
            r(250, None, &["caf\u{e9} \u{fffd}"]),
            13,
        ),
    ];
    for (buf, want, consumed) in cases {
        assert_eq!(
            parse_reply(buf, 512, 100),
            Ok(ReplyParse::Complete {
                reply: want,
                consumed
            }),
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    }
}

#[test]
fn parse_errors_table() {
    let cases: Vec<(&[u8], Result<ReplyParse, ReplyError>)> = vec![
        (b"", Ok(ReplyParse::Incomplete)),
        (b"250 O", Ok(ReplyParse::Incomplete)),
        (b"250-a\r\n", Ok(ReplyParse::Incomplete)),
        (b"250-a\r\n250", Ok(ReplyParse::Incomplete)),
        (b"\r\n", Err(ReplyError::Malformed)),
        (b"25\r\n", Err(ReplyError::Malformed)),
        (b"150 x\r\n", Err(ReplyError::Malformed)),
        (b"650 x\r\n", Err(ReplyError::Malformed)),
        (b"2a0 x\r\n", Err(ReplyError::Malformed)),
        (b"250x\r\n", Err(ReplyError::Malformed)),
        (b"250_x\r\n", Err(ReplyError::Malformed)),
        (b"250-a\r\nxyz\r\n", Err(ReplyError::Malformed)),
        (b"250-a\r\n251 b\r\n", Err(ReplyError::InconsistentCode)),
    ];
    for (buf, want) in cases {
        assert_eq!(
            parse_reply(buf, 512, 100),
            want,
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    }
}

#[test]
fn parse_limits() {
    assert_eq!(parse_reply(b"250 abcdef\r\n", 12, 5).map(|_| ()), Ok(()));
    assert_eq!(
        parse_reply(b"250 abcdefg\r\n", 12, 5),
        Err(ReplyError::LineTooLong)
    );
    assert_eq!(
        parse_reply(b"250 abcdefg", 12, 5),
        Ok(ReplyParse::Incomplete)
    );
    assert_eq!(
        parse_reply(b"250 abcdefgh", 12, 5),
        Err(ReplyError::LineTooLong)
    );
    assert_eq!(
        parse_reply(b"250-a\r\n250-b\r\n250 c\r\n", 512, 3).map(|_| ()),
        Ok(())
    );
    assert_eq!(
        parse_reply(b"250-a\r\n250-b\r\n250-c\r\n250 d\r\n", 512, 3),
        Err(ReplyError::TooManyLines)
    );
    // An endless continuation is refused before it is complete.
    assert_eq!(
        parse_reply(b"250-a\r\n250-b\r\n250-c\r\n250-d", 512, 3),
        Err(ReplyError::TooManyLines)
    );
    assert_eq!(
        parse_reply(b"250 a\r\n", 512, 0),
        Err(ReplyError::TooManyLines)
    );
}

fn text_strategy() -> impl Strategy<Value = String> {
    // Must not start with a digit, or it could read as an enhanced code.
    "([a-zA-Z .,:;<>@()\u{e9}\u{4e16}-][a-zA-Z0-9 .,:;<>@()\u{e9}\u{4e16}-]{0,60})?"
}

fn reply_strategy() -> impl Strategy<Value = Reply> {
    (2u16..=5, 0u16..100, any::<bool>(), 0u16..1000, 0u16..1000).prop_flat_map(
        |(class, rest, has_enh, s, d)| {
            let code = class * 100 + rest;
            let enh = has_enh.then(|| EnhancedCode::new(class as u8, s, d));
            proptest::collection::vec(text_strategy(), 1..5)
                .prop_map(move |lines| Reply::multi(code, enh, lines))
        },
    )
}

proptest! {
    #[test]
    fn write_parse_round_trip(reply in reply_strategy(), trailing in proptest::collection::vec(any::<u8>(), 0..20)) {
        let mut wire = reply.to_wire();
        let len = wire.len();
        wire.extend_from_slice(&trailing);
        match parse_reply(&wire, 512, 10).unwrap() {
            ReplyParse::Complete { reply: back, consumed } => {
                prop_assert_eq!(back, reply);
                prop_assert_eq!(consumed, len);
            }
            ReplyParse::Incomplete => prop_assert!(false, "incomplete"),
        }
        // Every proper prefix is incomplete.
        for cut in 0..len {
            prop_assert_eq!(parse_reply(&wire[..cut], 512, 10), Ok(ReplyParse::Incomplete));
        }
    }

    #[test]
    fn written_lines_are_safe(code in 200u16..600, text in any::<String>(), n in 1usize..4) {
        let reply = Reply::multi(code, None, vec![text; n]);
        let wire = reply.to_wire();
        prop_assert!(wire.ends_with(b"\r\n"));
        for line in wire.split_inclusive(|&b| b == b'\n') {
            prop_assert!(line.len() <= 512);
            prop_assert!(line.ends_with(b"\r\n"));
            let body = &line[..line.len() - 2];
            prop_assert!(!body.contains(&b'\r') && !body.contains(&b'\n'));
        }
        let whole = matches!(
            parse_reply(&wire, 512, 1000),
            Ok(ReplyParse::Complete { consumed, .. }) if consumed == wire.len()
        );
        prop_assert!(whole);
    }

    #[test]
    fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..300), max_line in 0usize..600, max_lines in 0usize..10) {
        if let Ok(ReplyParse::Complete { consumed, reply }) = parse_reply(&buf, max_line, max_lines) {
            prop_assert!(consumed <= buf.len());
            prop_assert!(!reply.lines.is_empty() && reply.lines.len() <= max_lines);
        }
    }

    #[test]
    fn parse_never_panics_reply_alphabet(s in "([2-5][0-9][0-9][ -]?([0-9]\\.[0-9]{1,3}\\.[0-9]{1,3} )?[a-z ]{0,5}\r?\n){0,5}[0-9 a-z.\r\n-]{0,10}") {
        let _ = parse_reply(s.as_bytes(), 64, 4);
    }
}
