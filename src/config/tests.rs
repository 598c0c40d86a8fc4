//! Unit tests for `${VAR}` expansion and the loader; the config example and the
//! problem reports are covered by `tests/config_example.rs`.

use std::path::Path;

use super::*;
use crate::credentials::secret::Secret;

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
    let hash = crate::users::hash_password(&Secret::new("pw")).unwrap();
    let text = format!(
        r#"
[[user]]
name = "u"
password_hash = "{hash}"
assets = ["a"]

[[asset]]
name = "a"
email = "a@example.com"
client_id = "id"
client_secret = "${{SMTP_OAUTH_RELAY_TEST_SECRET}}"
refresh_token = "rt"
senders = ["a@example.com"]
"#
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
