//! Unit tests for `${VAR}` expansion and the loader; the config example and the
//! problem reports are covered by `tests/config_example.rs`.

use std::path::Path;

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "SECRET" => Some("s3\"cr\\et".to_string()),
        "PORT" => Some("2525".to_string()),
        "BROKEN" => Some("a\nb".to_string()),
        _ => None,
    }
}

#[test]
fn env_expansion_table() {
    let cases = [
        ("a = \"${PORT}\"\n", Ok("a = \"2525\"\n")),
        ("a = ${PORT}\n", Ok("a = 2525\n")),
        // Escaped for a basic string, raw in a literal string.
        ("a = \"${SECRET}\"", Ok("a = \"s3\\\"cr\\\\et\"")),
        ("a = '${PORT}'", Ok("a = '2525'")),
        ("a = \"$${PORT}\"", Ok("a = \"${PORT}\"")),
        (
            "# ${UNSET} in a comment stays\n",
            Ok("# ${UNSET} in a comment stays\n"),
        ),
        ("a = 1 # ${UNSET}", Ok("a = 1 # ${UNSET}")),
        (
            "a = \"# not a comment ${PORT}\"",
            Ok("a = \"# not a comment 2525\""),
        ),
    ];
    for (input, expected) in cases {
        let got = expand_env(input, env).map_err(|p| p.len());
        assert_eq!(got, expected.map(str::to_string), "{input:?}");
    }
    let problems = expand_env(
        "x = 1\na = \"${UNSET}\"\nb = \"${BROKEN}\"\nc = \"${OPEN\"",
        env,
    )
    .unwrap_err();
    let lines: Vec<_> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [Some(2), Some(3), Some(4)]);
    assert!(problems[0].message.contains("UNSET is not set"));
}

#[test]
fn expanded_secret_reaches_the_config() {
    let text = config_text(
        "client_id = \"id\"\nclient_secret = \"${SMTP_OAUTH_RELAY_TEST_SECRET}\"\nrefresh_token = \"rt\"",
        "",
    );
    let env = |name: &str| {
        (name == "SMTP_OAUTH_RELAY_TEST_SECRET").then(|| "from-the-environment".to_string())
    };
    let config = parse_with_env(&text, Path::new("t.toml"), env).unwrap();
    assert_eq!(
        config.assets[0].client_secret.expose(),
        "from-the-environment"
    );
}

/// A config with one user and one asset; `asset` adds keys to the asset, `extra` adds
/// tables after it. The password hash is a fixed PHC string: these tests are about the
/// other fields, and argon2 parses it without hashing anything.
fn config_text(asset: &str, extra: &str) -> String {
    format!(
        r#"
[[user]]
name = "u"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$ZHVtbXloYXNoZHVtbXloYXNoZHVtbXloYXNoZHVtbXk"
assets = ["a"]

[[asset]]
name = "a"
email = "a@example.com"
senders = ["a@example.com"]
{asset}
{extra}
"#
    )
}

fn problems(text: &str, env: impl Fn(&str) -> Option<String>) -> Vec<Problem> {
    match parse_with_env(text, Path::new("t.toml"), env) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("accepted:\n{text}"),
    }
}

fn fields(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.field.as_str()).collect()
}

const GOOGLE_CLIENT: &str = "client_id = \"id\"\nclient_secret = \"s\"";

#[test]
fn a_minimal_config_parses_without_the_process_environment() {
    let config = parse_with_env(&config_text(GOOGLE_CLIENT, ""), Path::new("t.toml"), |_| {
        None
    })
    .unwrap();
    let asset = &config.assets[0];
    assert_eq!(asset.upstream.to_string(), "smtp.gmail.com:587 (STARTTLS)");
    assert_eq!(asset.refresh_token, RefreshTokenSource::Store);
    assert_eq!(config.pool, PoolSettings::default());
    assert!(config.tokens.key.is_none());
}

#[test]
fn the_store_key_comes_from_the_lookup() {
    let text = config_text(GOOGLE_CLIENT, "");
    let bad_key = |name: &str| (name == STORE_KEY_ENV).then(|| "not a key".to_string());
    assert_eq!(fields(&problems(&text, bad_key)), [STORE_KEY_ENV]);
    let good_key = |name: &str| (name == STORE_KEY_ENV).then(|| "ab".repeat(32));
    let config = parse_with_env(&text, Path::new("t.toml"), good_key).unwrap();
    assert!(config.tokens.key.is_some());
}

#[test]
fn every_limit_below_its_minimum_is_reported() {
    let text = config_text(
        GOOGLE_CLIENT,
        "[limits]\nmax_command_line = 100\nmax_errors = 0\nmax_data_line = 1000",
    );
    let problems = problems(&text, |_| None);
    assert_eq!(
        fields(&problems),
        ["limits.max_command_line", "limits.max_errors"]
    );
    assert_eq!(problems[0].message, "100 is below the minimum of 512");
}

#[test]
fn unlimited_transactions_and_at_least_one_password_check() {
    let config = parse_with_env(&config_text(GOOGLE_CLIENT, ""), Path::new("t.toml"), |_| {
        None
    })
    .unwrap();
    assert_eq!(config.limits.max_transactions, 0, "default: unlimited");
    assert_eq!(config.limits.max_password_checks, 2);
    let text = config_text(
        GOOGLE_CLIENT,
        "[limits]\nmax_transactions = 0\nmax_password_checks = 0",
    );
    let problems = problems(&text, |_| None);
    assert_eq!(fields(&problems), ["limits.max_password_checks"]);
    assert_eq!(problems[0].message, "0 is below the minimum of 1");
    let text = config_text(
        GOOGLE_CLIENT,
        "[limits]\nmax_transactions = 5000\nmax_password_checks = 1",
    );
    let config = parse_with_env(&text, Path::new("t.toml"), |_| None).unwrap();
    assert_eq!(config.limits.max_transactions, 5000);
    assert_eq!(config.limits.max_password_checks, 1);
}

/// The three parts of an asset (credentials, endpoints, upstream target) each report their
/// problems, in that order, even when an earlier part already failed.
#[test]
fn a_custom_asset_reports_every_missing_part() {
    let text = config_text("provider = \"custom\"", "");
    let problems = problems(&text, |_| None);
    assert_eq!(
        fields(&problems),
        [
            "asset[0].client_id",
            "asset[0].client_secret",
            "asset[0].token_url",
            "asset[0].auth_url",
            "asset[0].scope",
            "asset[0].upstream",
        ]
    );
    // Each problem names the asset's line.
    assert!(problems.iter().all(|p| p.line.is_some()), "{problems:?}");
}

#[test]
fn the_upstream_port_picks_the_tls_mode() {
    for (upstream, expected) in [
        (
            "smtp.example.com:465",
            "smtp.example.com:465 (implicit TLS)",
        ),
        ("smtp.example.com:587", "smtp.example.com:587 (STARTTLS)"),
        ("[::1]:2525", "::1:2525 (STARTTLS)"),
    ] {
        let text = config_text(&format!("{GOOGLE_CLIENT}\nupstream = \"{upstream}\""), "");
        let config = parse_with_env(&text, Path::new("t.toml"), |_| None).unwrap();
        assert_eq!(config.assets[0].upstream.to_string(), expected);
    }
    let text = config_text(&format!("{GOOGLE_CLIENT}\nupstream = \"no port\""), "");
    assert_eq!(fields(&problems(&text, |_| None)), ["asset[0].upstream"]);
}

#[test]
fn upstream_switches_default_on_and_turn_off() {
    let config = parse_with_env(&config_text(GOOGLE_CLIENT, ""), Path::new("t.toml"), |_| {
        None
    })
    .unwrap();
    assert_eq!(config.upstream, UpstreamDialogue::default());
    assert!(config.upstream.pipelining && config.upstream.chunking);
    let text = config_text(
        GOOGLE_CLIENT,
        "[upstream]\npipelining = false\nchunking = false",
    );
    let config = parse_with_env(&text, Path::new("t.toml"), |_| None).unwrap();
    assert!(!config.upstream.pipelining && !config.upstream.chunking);
}

#[test]
fn upstream_switches_are_reported_with_line_and_field() {
    let text = config_text(
        GOOGLE_CLIENT,
        "[upstream]\npipelining = \"yes\"\nchunking = 1",
    );
    let found = problems(&text, |_| None);
    assert_eq!(fields(&found), ["upstream.pipelining", "upstream.chunking"]);
    let line_of = |key: &str| {
        text.lines()
            .position(|line| line.starts_with(key))
            .map(|i| i + 1)
    };
    assert_eq!(found[0].line, line_of("pipelining"));
    assert_eq!(found[1].line, line_of("chunking"));
    assert!(
        found[0].message.contains("true or false"),
        "{}",
        found[0].message
    );
    let rendered = ConfigError::Invalid {
        path: "t.toml".into(),
        problems: found,
    }
    .to_string();
    assert!(
        rendered.contains(&format!(
            "t.toml:{}: upstream.pipelining:",
            line_of("pipelining").unwrap()
        )),
        "{rendered}"
    );
    // An unknown key is a problem too, with its line.
    let text = config_text(GOOGLE_CLIENT, "[upstream]\npipelineing = true");
    let unknown = problems(&text, |_| None);
    assert!(unknown[0].message.contains("pipelineing"), "{:?}", unknown);
    assert!(unknown[0].line.is_some());
}
