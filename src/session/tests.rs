//! Unit tests for the pure pieces of the session: MAIL parameters, the header gate, the
//! header-From policy and the choice of the asset that sends for a sender. The dialogue
//! itself is driven end to end by the integration tests (`tests/relay.rs`, `hardening.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use super::headers::{header_from_refusal, GateState, HeaderGate};
use super::mail::{choose_asset, MailParams};
use crate::config::{AssetAccess, Config, HeaderFromPolicy, User};
use crate::replies::Say;
use crate::smtp::address;
use crate::smtp::command::Param;

// ------------------------------------------------------------------ MAIL parameters

fn params(list: &[(&str, Option<&str>)]) -> Vec<Param> {
    list.iter()
        .map(|(keyword, value)| Param {
            keyword: keyword.to_string(),
            value: value.map(str::to_string),
        })
        .collect()
}

fn envelope(size: Option<u64>, eight_bit: bool, smtputf8: bool) -> Result<MailParams, Say> {
    Ok(MailParams {
        size,
        eight_bit,
        smtputf8,
    })
}

fn unsupported(keyword: &str) -> Result<MailParams, Say> {
    Err(Say::UnsupportedParameter {
        keyword: keyword.to_string(),
    })
}

#[test]
fn mail_parameters() {
    let cases = [
        (params(&[]), envelope(None, false, false)),
        (
            params(&[("SIZE", Some("1000"))]),
            envelope(Some(1000), false, false),
        ),
        (
            params(&[("SIZE", Some("0"))]),
            envelope(Some(0), false, false),
        ),
        (
            params(&[("SIZE", Some("1001"))]),
            Err(Say::MessageTooBigDeclared { limit: 1000 }),
        ),
        (
            params(&[("SIZE", Some("99999999999999999999999"))]),
            Err(Say::Syntax {
                detail: "SIZE needs a number",
            }),
        ),
        (
            params(&[("SIZE", Some("ten"))]),
            Err(Say::Syntax {
                detail: "SIZE needs a number",
            }),
        ),
        (params(&[("SIZE", None)]), unsupported("SIZE")),
        (
            params(&[("BODY", Some("8BITMIME"))]),
            envelope(None, true, false),
        ),
        (
            params(&[("BODY", Some("8bitmime"))]),
            envelope(None, true, false),
        ),
        (
            params(&[("BODY", Some("7BIT"))]),
            envelope(None, false, false),
        ),
        (params(&[("BODY", Some("BINARYMIME"))]), unsupported("BODY")),
        (params(&[("BODY", None)]), unsupported("BODY")),
        (params(&[("SMTPUTF8", None)]), envelope(None, false, true)),
        (
            params(&[("SMTPUTF8", Some("yes"))]),
            unsupported("SMTPUTF8"),
        ),
        // RFC 4954 §5: informational, with or without a value.
        (
            params(&[("AUTH", Some("<>"))]),
            envelope(None, false, false),
        ),
        (params(&[("AUTH", None)]), envelope(None, false, false)),
        (params(&[("RET", Some("HDRS"))]), unsupported("RET")),
        (
            params(&[
                ("SIZE", Some("10")),
                ("BODY", Some("8BITMIME")),
                ("SMTPUTF8", None),
            ]),
            envelope(Some(10), true, true),
        ),
        // The first bad parameter is the one reported.
        (
            params(&[("SIZE", Some("10")), ("ENVID", Some("x")), ("RET", None)]),
            unsupported("ENVID"),
        ),
    ];
    for (list, expected) in cases {
        assert_eq!(MailParams::parse(&list, 1000), expected, "{list:?}");
    }
}

#[test]
fn mail_parameter_refusals_keep_their_wording() {
    let too_big = MailParams::parse(&params(&[("SIZE", Some("2000"))]), 1000).unwrap_err();
    assert_eq!(
        too_big.reply().to_string(),
        "552 5.3.4 Message size exceeds fixed limit of 1000 bytes"
    );
    let unknown = MailParams::parse(&params(&[("MT-PRIORITY", Some("3"))]), 1000).unwrap_err();
    assert_eq!(
        unknown.reply().to_string(),
        "555 5.5.4 Unsupported parameter MT-PRIORITY"
    );
}

// ------------------------------------------------------------------ the header gate

fn decide(gate: &mut HeaderGate, chunk: &[u8], finished: bool) -> GateState {
    let mut out = chunk.to_vec();
    let state = gate.pass(&mut out, finished);
    // While the gate collects, nothing of this round may be forwarded.
    assert!(out.is_empty() || state == GateState::Open);
    state
}

#[test]
fn header_gate_hands_back_the_complete_block_once() {
    let mut gate = HeaderGate::new();
    let message = b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n";
    assert_eq!(
        decide(&mut gate, message, false),
        GateState::Decide(message.to_vec(), true)
    );
    assert_eq!(decide(&mut gate, b"more body\r\n", false), GateState::Open);
}

#[test]
fn header_gate_finds_the_blank_line_across_chunks() {
    // Every place the CRLFCRLF can be cut between two rounds.
    let message = b"From: a@example.com\r\n\r\nbody\r\n";
    let blank_line = 19;
    for cut in blank_line..blank_line + 4 {
        let mut gate = HeaderGate::new();
        assert_eq!(
            decide(&mut gate, &message[..cut], false),
            GateState::Collecting,
            "cut at {cut}"
        );
        assert_eq!(
            decide(&mut gate, &message[cut..], false),
            GateState::Decide(message.to_vec(), true),
            "cut at {cut}"
        );
    }
}

#[test]
fn header_gate_decides_at_the_end_of_a_message_without_body() {
    let mut gate = HeaderGate::new();
    assert_eq!(
        decide(&mut gate, b"From: a@example.com\r\n", false),
        GateState::Collecting
    );
    assert_eq!(
        decide(&mut gate, b"Subject: x\r\n", true),
        GateState::Decide(b"From: a@example.com\r\nSubject: x\r\n".to_vec(), true)
    );
}

#[test]
fn header_gate_stops_collecting_past_100_kib() {
    let mut gate = HeaderGate::new();
    let padding = format!("X-Pad: {}\r\n", "a".repeat(1000));
    let mut sent = Vec::new();
    loop {
        sent.extend_from_slice(padding.as_bytes());
        match decide(&mut gate, padding.as_bytes(), false) {
            GateState::Collecting => assert!(sent.len() <= 100 * 1024),
            GateState::Decide(block, complete) => {
                assert!(!complete, "no blank line was sent");
                assert!(block.len() > 100 * 1024);
                assert_eq!(block, sent);
                break;
            }
            GateState::Open => panic!("the gate opened without deciding"),
        }
    }
    assert_eq!(decide(&mut gate, b"\r\n", false), GateState::Open);
}

// ------------------------------------------------------------------ header-From policy

#[test]
fn header_from_policy() {
    use HeaderFromPolicy::{Enforce, Log, Off};
    // `a` claims a@example.com and @example.com, `b` claims b@example.org.
    let map = config().senders;
    let not_served = |from: &str| {
        Some(Say::HeaderFromNotServed {
            from: from.to_string(),
        })
    };
    let cases: [(&str, bool, HeaderFromPolicy, Option<Say>); 16] = [
        ("From: x@example.com\r\n\r\n", true, Enforce, None),
        ("From: X <x@EXAMPLE.com>\r\n\r\n", true, Enforce, None),
        (
            "From: x@example.com, y@example.com\r\n\r\n",
            true,
            Enforce,
            None,
        ),
        (
            "From: x@elsewhere.net\r\n\r\n",
            true,
            Enforce,
            not_served("x@elsewhere.net"),
        ),
        // Served, but by another asset.
        (
            "From: b@example.org\r\n\r\n",
            true,
            Enforce,
            not_served("b@example.org"),
        ),
        // One stranger in a mailbox list is enough.
        (
            "From: x@example.com, y@elsewhere.net\r\n\r\n",
            true,
            Enforce,
            not_served("y@elsewhere.net"),
        ),
        // A quoted spelling is looked up by its canonical form.
        (
            "From: \"Boss\" <\"x\"@example.com>\r\n\r\n",
            true,
            Enforce,
            None,
        ),
        ("From: x@elsewhere.net\r\n\r\n", true, Log, None),
        ("From: x@elsewhere.net\r\n\r\n", true, Off, None),
        (
            "From: x@example.com\r\nFrom: y@example.com\r\n\r\n",
            true,
            Enforce,
            Some(Say::HeaderFromRepeated),
        ),
        (
            "From: x@example.com\r\nFrom: y@example.com\r\n\r\n",
            true,
            Log,
            None,
        ),
        (
            "Subject: x\r\n\r\n",
            true,
            Enforce,
            Some(Say::HeaderFromMissing),
        ),
        ("Subject: x\r\n\r\n", true, Log, None),
        (
            "From: undisclosed:;\r\n\r\n",
            true,
            Enforce,
            Some(Say::HeaderFromUnreadable),
        ),
        (
            "From: x@example.com\r\n",
            false,
            Enforce,
            Some(Say::HeaderBlockTooLarge),
        ),
        ("From: x@example.com\r\n", false, Log, None),
    ];
    for (headers, complete, policy, expected) in cases {
        assert_eq!(
            header_from_refusal(headers.as_bytes(), complete, "a", &map, policy),
            expected,
            "{headers:?} {policy:?}"
        );
    }
}

// ------------------------------------------------------------------ sender → asset

/// A valid argon2id PHC string: the config checks that it parses, nothing here logs in.
const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$9xcj0CdcYylCDQXd8INdMQ$JzoPhFCC0Ez1jEAxOLed/tM/3z66S0h5zBI+uPwZeXM";

fn config() -> Config {
    let text = format!(
        r#"
[[user]]
name = "both"
password_hash = "{HASH}"
assets = ["a", "b"]

[[user]]
name = "solo"
password_hash = "{HASH}"
assets = ["b"]

[[asset]]
name = "a"
email = "a@example.com"
client_id = "id"
client_secret = "secret"
refresh_token = "rt"
senders = ["a@example.com", "@example.com"]

[[asset]]
name = "b"
email = "b@example.org"
client_id = "id"
client_secret = "secret"
refresh_token = "rt"
senders = ["b@example.org"]
"#
    );
    crate::config::parse(&text, Path::new("t.toml")).unwrap()
}

fn choose(config: &Config, sender: &str, user: &User) -> Result<String, Say> {
    let canonical = (!sender.is_empty()).then(|| address::canonical(sender).unwrap());
    choose_asset(config, canonical.as_ref(), user).map(|asset| asset.name.clone())
}

#[test]
fn sender_chooses_the_asset() {
    let config = config();
    let both = config.users["both"].clone();
    let solo = config.users["solo"].clone();
    let every = User {
        name: "every".to_string(),
        password_hash: HASH.to_string(),
        assets: AssetAccess::All,
        delivery: Default::default(),
    };
    let not_served = |sender: &str| {
        Err(Say::SenderNotServed {
            sender: sender.to_string(),
        })
    };
    let cases = [
        ("a@example.com", &*both, Ok("a".to_string())),
        ("other@example.com", &*both, Ok("a".to_string())),
        // Routed by the canonical form, so a spelling reaches the same asset.
        ("\"a\"@example.com", &*both, Ok("a".to_string())),
        ("b@example.org", &*both, Ok("b".to_string())),
        ("b@example.org", &*solo, Ok("b".to_string())),
        ("b@example.org", &every, Ok("b".to_string())),
        (
            "a@example.com",
            &*solo,
            Err(Say::SenderNotOwned {
                sender: "a@example.com".to_string(),
                user: "solo".to_string(),
            }),
        ),
        ("x@example.net", &*both, not_served("x@example.net")),
        ("other@example.org", &*solo, not_served("other@example.org")),
        // The null sender goes out as the user's only asset, if there is exactly one.
        ("", &*solo, Ok("b".to_string())),
        ("", &*both, Err(Say::NullSenderNoAsset)),
        ("", &every, Err(Say::NullSenderNoAsset)),
    ];
    for (sender, user, expected) in cases {
        assert_eq!(
            choose(&config, sender, user),
            expected,
            "{sender} as {}",
            user.name
        );
    }
}

#[test]
fn null_sender_of_an_all_assets_user_needs_a_single_asset() {
    let mut config = config();
    config.assets.retain(|asset| asset.name == "b");
    let every = User {
        name: "every".to_string(),
        password_hash: HASH.to_string(),
        assets: AssetAccess::All,
        delivery: Default::default(),
    };
    assert_eq!(choose(&config, "", &every), Ok("b".to_string()));
}

#[test]
fn sender_refusals_keep_their_wording() {
    let config = config();
    let solo = config.users["solo"].clone();
    let cases = [
        (
            "a@example.com",
            "553 5.7.1 <a@example.com>: Sender address rejected: not owned by user solo",
        ),
        (
            "x@example.net",
            "550 5.7.1 <x@example.net>: Sender address rejected: no account of this relay sends as this address",
        ),
    ];
    for (sender, expected) in cases {
        let refusal = choose(&config, sender, &solo).unwrap_err();
        assert_eq!(refusal.reply().to_string(), expected);
    }
}
