//! `[admin]`: the console's settings, their defaults, and the problems reported for them.

use std::path::Path;
use std::time::Duration;

use super::super::{parse_with_env, ConfigError};

const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$9xcj0CdcYylCDQXd8INdMQ$JzoPhFCC0Ez1jEAxOLed/tM/3z66S0h5zBI+uPwZeXM";

fn config(admin: &str) -> Result<crate::config::Config, ConfigError> {
    let text = format!(
        "[[user]]\nname = \"ops\"\npassword_hash = \"{HASH}\"\nassets = [\"*\"]\n\
         [[user]]\nname = \"scanner\"\npassword_hash = \"{HASH}\"\nassets = [\"*\"]\n\
         [[asset]]\nname = \"office\"\nemail = \"a@example.com\"\nprovider = \"google\"\n\
         client_id = \"id\"\nclient_secret = \"secret\"\nrefresh_token = \"1//rt\"\nsenders = [\"*\"]\n\
         [admin]\n{admin}\n"
    );
    parse_with_env(&text, Path::new("relay.toml"), |_| None)
}

#[test]
fn console_is_off_without_users() {
    let config = config("listen = \"127.0.0.1:9025\"").unwrap();
    assert!(config.admin.console.is_none());
    assert!(config.admin.tls.is_none());
}

#[test]
fn console_defaults() {
    let config = config("listen = \"127.0.0.1:9025\"\nusers = [\"ops\"]").unwrap();
    let console = config.admin.console.unwrap();
    assert_eq!(console.users, ["ops"]);
    assert!(console.allows("ops") && !console.allows("scanner"));
    assert_eq!(console.session_idle, Duration::from_secs(1800));
    assert!(!console.allow_plaintext);
    assert_eq!(console.public_url, None);
    assert_eq!(console.consent_timeout, Duration::from_secs(600));
}

#[test]
fn console_settings_are_read() {
    let config = config(
        "listen = \"127.0.0.1:9025\"\nusers = [\"ops\"]\nsession_idle_secs = 60\n\
         allow_plaintext = true\npublic_url = \"https://relay.example.com/admin/\"",
    )
    .unwrap();
    let console = config.admin.console.unwrap();
    assert_eq!(console.session_idle, Duration::from_secs(60));
    assert!(console.allow_plaintext);
    assert_eq!(
        console.public_url.as_deref(),
        Some("https://relay.example.com/admin")
    );
}

#[test]
fn problems_are_reported() {
    for (admin, field) in [
        (
            "listen = \"127.0.0.1:9025\"\nusers = [\"nobody\"]",
            "admin.users",
        ),
        ("users = [\"ops\"]", "admin.users"),
        ("listen = \"127.0.0.1:9025\"\ntls = true", "admin.tls"),
        (
            "listen = \"127.0.0.1:9025\"\ntls_cert = \"x.pem\"",
            "admin.tls_key",
        ),
        (
            "listen = \"127.0.0.1:9025\"\nusers = [\"ops\"]\npublic_url = \"relay/admin\"",
            "admin.public_url",
        ),
        (
            "listen = \"127.0.0.1:9025\"\nusers = [\"ops\"]\nsession_idle_secs = 0",
            "admin.session_idle_secs",
        ),
        ("listen = \"127.0.0.1:9025\"\nsurprise = 1", "surprise"),
    ] {
        let err = config(admin).expect_err(admin).to_string();
        assert!(err.contains(field), "{admin}: {err}");
    }
}
