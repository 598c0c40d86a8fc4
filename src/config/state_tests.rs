//! `[state]` validation: backends, URL rules (TLS off loopback), where the password comes
//! from, and that no message repeats it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::super::problems::{Checker, LineIndex};
use super::*;

fn check(text: &str) -> (StateSettings, Vec<String>) {
    let raw: RawState = toml::from_str(text).unwrap();
    let mut checker = Checker {
        lines: LineIndex::new(text),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let settings = validate_state(raw, &mut checker);
    let problems = checker
        .problems
        .iter()
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect();
    (settings, problems)
}

fn redis(text: &str) -> RedisSettings {
    match check(text) {
        (StateSettings::Redis(settings), problems) if problems.is_empty() => settings,
        other => panic!("not a valid redis state: {:?}", other.1),
    }
}

#[test]
fn local_is_the_default() {
    let (settings, problems) = check("");
    assert!(matches!(settings, StateSettings::Local));
    assert!(problems.is_empty());
    let (_, problems) = check("url = \"rediss://h:1/0\"");
    assert_eq!(problems.len(), 1, "{problems:?}");
}

#[test]
fn urls() {
    let settings = redis("backend = \"redis\"\nurl = \"rediss://redis.internal:6380/2\"");
    assert!(settings.tls);
    assert_eq!(
        (settings.host.as_str(), settings.port, settings.db),
        ("redis.internal", 6380, 2)
    );
    assert_eq!(settings.prefix, DEFAULT_STATE_PREFIX);
    assert_eq!(settings.display_url(), "rediss://redis.internal:6380/2");

    let settings = redis("backend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nprefix = \"x:\"");
    assert!(!settings.tls);
    assert_eq!((settings.db, settings.prefix.as_str()), (0, "x:"));
    redis("backend = \"redis\"\nurl = \"redis://[::1]:6379/0\"");
    redis("backend = \"redis\"\nurl = \"redis://localhost:6379/0\"");

    for (text, wanted) in [
        ("backend = \"redis\"", "needs url"),
        (
            "backend = \"redis\"\nurl = \"redis://redis.internal:6379/0\"",
            "loopback",
        ),
        (
            "backend = \"redis\"\nurl = \"http://127.0.0.1/\"",
            "neither rediss nor redis",
        ),
        (
            "backend = \"redis\"\nurl = \"rediss://h:1/x\"",
            "database number",
        ),
        ("backend = \"memcached\"", "not a backend"),
    ] {
        let (_, problems) = check(text);
        assert!(
            problems.iter().any(|p| p.contains(wanted)),
            "{text}: {problems:?}"
        );
    }
}

#[test]
fn the_password_from_the_url_or_a_file_never_in_a_message() {
    let settings = redis("backend = \"redis\"\nurl = \"rediss://user:p%40ss-Secret9@h:6380/0\"");
    assert_eq!(settings.username.as_deref(), Some("user"));
    assert_eq!(settings.password.as_ref().unwrap().expose(), "p@ss-Secret9");
    assert!(!format!("{settings:?}").contains("Secret9"));
    assert!(!settings.display_url().contains("Secret9"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "from-File-Secret7\n").unwrap();
    let text = format!(
        "backend = \"redis\"\nurl = \"rediss://h:6380/0\"\npassword_file = \"{}\"",
        file.display()
    );
    let settings = redis(&text);
    assert_eq!(
        settings.password.as_ref().unwrap().expose(),
        "from-File-Secret7"
    );

    // Both at once is refused; a bad URL is reported without repeating it.
    let text = format!(
        "backend = \"redis\"\nurl = \"rediss://:In-Url-Secret5@h:6380/0\"\npassword_file = \"{}\"",
        file.display()
    );
    let (_, problems) = check(&text);
    assert!(
        problems.iter().any(|p| p.contains("one place")),
        "{problems:?}"
    );
    let (_, problems) =
        check("backend = \"redis\"\nurl = \"redis://:Bad-Secret3@redis.internal:6379/0\"");
    assert!(!problems.is_empty());
    assert!(
        problems.iter().all(|p| !p.contains("Bad-Secret3")),
        "{problems:?}"
    );
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("p%40ss%2Fw"), "p@ss/w");
    assert_eq!(percent_decode("plain"), "plain");
    assert_eq!(percent_decode("bad%zz%4"), "bad%zz%4");
}
