#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The shipped example config loads with the real parser, and config errors name the file,
//! the line and the field, all of them at once (as README.md promises).

use std::path::Path;

use smtp_oauth_relay::config::{
    self, AssetAccess, Limits, Provider, RefreshTokenSource, Timeouts, UpstreamTls,
};
use smtp_oauth_relay::smtp::address::canonical;

const EXAMPLE: &str = "config/relay.example.toml";

/// A hash of "change-me", made with `smtp-oauth-relay hash-password`.
const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$9xcj0CdcYylCDQXd8INdMQ$JzoPhFCC0Ez1jEAxOLed/tM/3z66S0h5zBI+uPwZeXM";

#[test]
fn example_config_loads() {
    let config = config::load(Path::new(EXAMPLE)).expect("the example config must load");

    let names: Vec<&str> = config.assets.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["office"]);
    let office = config.asset("office").unwrap();
    assert_eq!(office.email, "scanner@example.com");
    assert_eq!(office.provider, Provider::Google);
    assert_eq!(office.upstream.host, "smtp.gmail.com");
    assert_eq!(office.upstream.port, 587);
    assert_eq!(office.upstream.tls, UpstreamTls::Starttls);
    assert_eq!(office.token_url, "https://oauth2.googleapis.com/token");
    assert_eq!(office.scopes, ["https://mail.google.com/"]);
    // No refresh_token / refresh_token_file: the token `authorize` stores is used.
    assert_eq!(office.refresh_token, RefreshTokenSource::Store);
    assert!(office.service_account.is_none());
    assert_eq!(office.redirect_uri, None);
    assert_eq!(
        config.tokens.path,
        Path::new("state/tokens.json"),
        "[tokens] path default, as the example's comment says"
    );

    assert_eq!(config.users.len(), 2);
    assert_eq!(
        config.users["scanner"].assets,
        AssetAccess::Only(["office".to_string()].into())
    );
    assert_eq!(config.users["postfix"].assets, AssetAccess::All);

    assert_eq!(
        config
            .senders
            .lookup(&canonical("scanner@example.com").unwrap()),
        Some("office")
    );
    assert_eq!(
        config
            .senders
            .lookup(&canonical("Anyone@Example.com").unwrap()),
        Some("office")
    );
    assert_eq!(
        config
            .senders
            .lookup(&canonical("someone@example.net").unwrap()),
        None
    );

    assert_eq!(
        config.server.listen,
        ["127.0.0.1:2525".parse::<std::net::SocketAddr>().unwrap()]
    );
    assert!(config.server.listen_tls.is_empty());
    assert!(config.server.tls.is_none());
}

/// The example claims to show the defaults; keep it honest.
#[test]
fn example_config_shows_the_defaults() {
    let config = config::load(Path::new(EXAMPLE)).unwrap();
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.timeouts, Timeouts::default());
    let minimal = config::parse(&valid(), Path::new("x.toml")).unwrap();
    assert_eq!(
        config.server.credential_failure,
        minimal.server.credential_failure
    );
    assert_eq!(
        config.server.bare_line_endings,
        minimal.server.bare_line_endings
    );
    assert_eq!(config.server.listen, minimal.server.listen);
}

/// The smallest valid config; every bad case below differs from it in one place.
fn valid() -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:2525"

[[asset]]
name = "office"
email = "scanner@example.com"
client_id = "id"
client_secret = "secret"
refresh_token = "token"
senders = ["scanner@example.com"]

[[user]]
name = "scanner"
password_hash = "{HASH}"
assets = ["office"]
"#
    )
}

/// The 1-based line of the one line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(lines.len(), 1, "{needle:?} must occur on exactly one line");
    lines[0]
}

fn error_text(text: &str) -> String {
    match config::parse(text, Path::new("x.toml")) {
        Ok(_) => panic!("config should have been refused:\n{text}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn valid_baseline_parses() {
    let config = config::parse(&valid(), Path::new("x.toml")).unwrap();
    assert_eq!(config.assets.len(), 1);
    assert_eq!(config.users.len(), 1);
}

#[test]
fn each_problem_names_file_line_and_field() {
    let base = valid();
    let second_asset = r#"
[[asset]]
name = "other"
email = "other@example.com"
client_id = "id"
client_secret = "secret"
refresh_token = "token"
senders = ["*", "scanner@example.com"]
"#;
    // (what, config text, line marker (None: no line is known), field, words in the message)
    let cases: Vec<(&str, String, Option<&str>, &str, &str)> = vec![
        (
            "sender claimed by two assets",
            format!("{base}{second_asset}"),
            Some(r#"senders = ["*", "scanner@example.com"]"#),
            "asset[1].senders",
            r#"already served by asset "office""#,
        ),
        (
            "unknown key",
            base.replace("[server]\n", "[server]\ncolour = \"blue\"\n"),
            Some("colour"),
            "",
            "unknown field `colour`",
        ),
        (
            "user names an unknown asset",
            base.replace(r#"assets = ["office"]"#, r#"assets = ["ofice"]"#),
            Some(r#"assets = ["ofice"]"#),
            "user[0].assets",
            r#"no asset is named "ofice""#,
        ),
        (
            "http token_url on a non-loopback host",
            base.replace(
                "senders =",
                "token_url = \"http://tokens.example.com/token\"\nsenders =",
            ),
            Some("token_url"),
            "asset[0].token_url",
            "plain http is only allowed on loopback",
        ),
        (
            "missing client_id",
            base.replace("client_id = \"id\"\n", ""),
            Some(r#"name = "office""#),
            "asset[0].client_id",
            "needs a client_id",
        ),
        (
            "bad listen address",
            base.replace(
                r#"listen = "127.0.0.1:2525""#,
                r#"listen = ["127.0.0.1:2525", "localhost:2525"]"#,
            ),
            None,
            "server.listen",
            "is not an IP address and port",
        ),
        (
            "invalid password hash",
            base.replace(HASH, "secret"),
            Some("password_hash"),
            "user[0].password_hash",
            "not a valid argon2 hash",
        ),
        (
            "a timeout of 0",
            format!("{base}\n[timeouts]\ncommand_secs = 0\n"),
            None,
            "timeouts.command_secs",
            "a timeout of 0 seconds",
        ),
        (
            "limit below the RFC minimum",
            format!("{base}\n[limits]\nmax_data_line = 80\n"),
            None,
            "limits.max_data_line",
            "below the minimum of 1000",
        ),
        (
            "both refresh_token and refresh_token_file",
            base.replace(
                "refresh_token = \"token\"",
                "refresh_token = \"token\"\nrefresh_token_file = \"/nonexistent\"",
            ),
            Some("refresh_token = \"token\""),
            "asset[0].refresh_token",
            "not both",
        ),
        (
            "bad sender pattern",
            base.replace(
                r#"senders = ["scanner@example.com"]"#,
                r#"senders = ["scanner"]"#,
            ),
            Some(r#"senders = ["scanner"]"#),
            "asset[0].senders",
            r#"is not an address, "@domain" or "*""#,
        ),
        (
            "tls_cert without tls_key",
            base.replace("[server]\n", "[server]\ntls_cert = \"certs/relay.crt\"\n"),
            Some("tls_cert"),
            "server.tls_key",
            "tls_key is missing",
        ),
    ];

    for (what, text, marker, field, words) in cases {
        let message = error_text(&text);
        let location = match marker {
            Some(marker) => format!("x.toml:{}:", line_of(&text, marker)),
            None => "x.toml:".to_string(),
        };
        let expected = if field.is_empty() {
            format!("{location} ")
        } else {
            format!("{location} {field}: ")
        };
        let problem_line = message
            .lines()
            .find(|line| line.trim_start().starts_with(&expected))
            .unwrap_or_else(|| panic!("{what}: no line starting {expected:?} in:\n{message}"));
        assert!(
            problem_line.contains(words),
            "{what}: {problem_line:?} should mention {words:?}"
        );
        assert!(
            message.starts_with("1 problem(s) in config file x.toml:"),
            "{what}: exactly one problem expected:\n{message}"
        );
    }
}

#[test]
fn several_problems_are_reported_together() {
    let text = valid()
        .replace(
            r#"listen = "127.0.0.1:2525""#,
            r#"listen = ["127.0.0.1:2525", "nowhere"]"#,
        )
        .replace(r#"assets = ["office"]"#, r#"assets = ["ofice"]"#)
        .replace(HASH, "secret")
        .replace("client_id = \"id\"\n", "")
        + "\n[timeouts]\ntoken_request_secs = 0\n";
    let message = error_text(&text);
    assert!(
        message.starts_with("5 problem(s) in config file x.toml:"),
        "{message}"
    );
    for field in [
        "server.listen",
        "timeouts.token_request_secs",
        "asset[0].client_id",
        "user[0].password_hash",
        "user[0].assets",
    ] {
        assert!(
            message.contains(&format!(" {field}: ")),
            "{field} missing from:\n{message}"
        );
    }
}

#[test]
fn provider_presets() {
    let microsoft = valid().replace(
        "client_id = \"id\"",
        "provider = \"microsoft\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"id\"",
    );
    let config = config::parse(&microsoft, Path::new("x.toml")).unwrap();
    let asset = config.asset("office").unwrap();
    assert_eq!(asset.provider, Provider::Microsoft);
    assert_eq!(
        asset.token_url,
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(
        asset.scopes,
        ["https://outlook.office.com/SMTP.Send", "offline_access"]
    );
    assert_eq!(
        (asset.upstream.host.as_str(), asset.upstream.port),
        ("smtp.office365.com", 587)
    );

    // Port 465 means implicit TLS unless upstream_tls says otherwise.
    let implicit = valid().replace(
        "client_id = \"id\"",
        "upstream = \"smtp.gmail.com:465\"\nclient_id = \"id\"",
    );
    let config = config::parse(&implicit, Path::new("x.toml")).unwrap();
    assert_eq!(
        config.asset("office").unwrap().upstream.tls,
        UpstreamTls::Implicit
    );

    // "custom" has no preset: upstream, URLs and scope are all required.
    let custom = valid().replace(
        "client_id = \"id\"",
        "provider = \"custom\"\nclient_id = \"id\"",
    );
    let message = error_text(&custom);
    for field in [
        "asset[0].upstream",
        "asset[0].token_url",
        "asset[0].auth_url",
        "asset[0].scope",
    ] {
        assert!(message.contains(field), "{field} missing from:\n{message}");
    }

    // http is fine on loopback (tests, a local token service).
    let loopback = valid().replace(
        "senders =",
        "token_url = \"http://127.0.0.1:8080/token\"\nsenders =",
    );
    assert!(config::parse(&loopback, Path::new("x.toml")).is_ok());
}

/// The commented-out `[[asset]]` block that follows the line containing `marker`,
/// uncommented ("# key = ..." → "key = ...", "# # note" → "# note"), up to the next blank line.
fn commented_block(text: &str, marker: &str) -> String {
    let mut lines = text.lines().skip_while(|line| !line.contains(marker));
    assert!(lines.next().is_some(), "no line contains {marker:?}");
    let mut block: Vec<&str> = lines
        .skip_while(|line| line.trim() != "# [[asset]]")
        .take_while(|line| !line.trim().is_empty())
        .map(|line| line.strip_prefix("# ").unwrap_or(line))
        .collect();
    assert!(!block.is_empty(), "no commented [[asset]] after {marker:?}");
    block.push("");
    block.join("\n")
}

/// The example with one of its commented-out assets switched on, parsed by the real parser.
fn example_with(block: &str) -> config::Config {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    // Appended after the users; TOML allows [[asset]] anywhere.
    let combined = format!("{text}\n{block}");
    config::parse(&combined, Path::new(EXAMPLE))
        .unwrap_or_else(|err| panic!("the uncommented block must load:\n{block}\n{err}"))
}

/// The commented alternatives in the example are valid too, once uncommented.
#[test]
fn example_commented_assets_load() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();

    let m365 = commented_block(&text, "A Microsoft 365 mailbox");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("m365-client-secret");
    std::fs::write(&secret, "secret\n").unwrap();
    let m365 = m365.replace("/run/secrets/m365-client-secret", secret.to_str().unwrap());
    let config = example_with(&m365);
    let asset = config.asset("m365").unwrap();
    assert_eq!(asset.provider, Provider::Microsoft);
    assert_eq!(asset.refresh_token, RefreshTokenSource::Store);
    assert_eq!(asset.redirect_uri.as_deref(), Some("http://localhost"));
    assert_eq!(
        asset.token_url,
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );

    let service = commented_block(&text, "service account with domain-wide delegation");
    let service = service.replace(
        "/etc/smtp-oauth-relay/service-account.json",
        "tests/fixtures/service-account.json",
    );
    let config = example_with(&service);
    let asset = config.asset("alerts").unwrap();
    assert!(asset.service_account.is_some());
    assert_eq!(asset.email, "alerts@example.com");
    assert_eq!(asset.token_url, "https://oauth2.googleapis.com/token");
}

/// The example's `client_json` line, pointed at a Desktop ("installed") and a Web client
/// file as Google Cloud Console's "Download JSON" writes them.
#[test]
fn example_client_json_replaces_client_id_and_secret() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let line = text
        .lines()
        .find(|line| line.starts_with("# client_json = "))
        .expect("the example shows client_json");
    let mut by_hand = text
        .lines()
        .filter(|line| line.starts_with("client_id = ") || line.starts_with("client_secret = "));
    let (id_line, secret_line) = (by_hand.next().unwrap(), by_hand.next().unwrap());

    for (kind, redirects, expected_redirect) in [
        ("installed", r#"["http://localhost"]"#, None),
        (
            "web",
            r#"["https://relay.example/cb", "http://127.0.0.1:8765/callback"]"#,
            Some("http://127.0.0.1:8765/callback"),
        ),
    ] {
        let file = dir.path().join(format!("{kind}.json"));
        std::fs::write(
            &file,
            format!(
                r#"{{"{kind}":{{"client_id":"42-abc.apps.googleusercontent.com","project_id":"p",
                "auth_uri":"https://accounts.google.com/o/oauth2/auth",
                "token_uri":"https://oauth2.googleapis.com/token",
                "auth_provider_x509_cert_url":"https://www.googleapis.com/oauth2/v1/certs",
                "client_secret":"GOCSPX-x","redirect_uris":{redirects}}}}}"#
            ),
        )
        .unwrap();
        let edited = text
            .replace(line, &format!("client_json = {:?}", file.to_str().unwrap()))
            .replace(&format!("{id_line}\n"), "")
            .replace(&format!("{secret_line}\n"), "");
        let config = config::parse(&edited, Path::new(EXAMPLE))
            .unwrap_or_else(|err| panic!("{kind}: {err}"));
        let office = config.asset("office").unwrap();
        assert_eq!(office.client_id, "42-abc.apps.googleusercontent.com");
        assert_eq!(office.client_secret.expose(), "GOCSPX-x");
        assert_eq!(office.redirect_uri.as_deref(), expected_redirect, "{kind}");
        assert_eq!(office.refresh_token, RefreshTokenSource::Store);

        // client_json and client_id together is refused.
        let both = text.replace(line, &format!("client_json = {:?}", file.to_str().unwrap()));
        let message = error_text(&both);
        assert!(message.contains("comes from client_json"), "{message}");
    }
}

/// The commented-out alerts block at the end of the example loads once uncommented.
#[test]
fn example_alerts_block_loads() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let block: String = text
        .lines()
        .skip_while(|line| !line.starts_with("# Alerts:"))
        .skip_while(|line| line.trim() != "# [alerts]")
        .map(|line| {
            line.strip_prefix("# ")
                .unwrap_or(line.trim_start_matches('#'))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(block.contains("[[alert]]"), "{block}");
    let config = config::parse(&format!("{text}\n{block}"), Path::new(EXAMPLE))
        .unwrap_or_else(|err| panic!("the uncommented alerts must load:\n{block}\n{err}"));
    assert_eq!(config.alerts.channels.len(), 2);
    assert_eq!(config.alerts.interval, std::time::Duration::from_secs(3600));
}
