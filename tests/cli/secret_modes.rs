//! Secret files the config names (and the config itself, when it holds a secret) are
//! checked like the token store: a warning when group or others can read them, naming
//! the file and its mode, never its content.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::{capture_logs, Captured};
use smtp_oauth_relay::config;
use smtp_oauth_relay::credentials::secret::Secret;

const CLIENT_SECRET: &str = "GOCSPX-file-secret-Hh41";
const REFRESH: &str = "1//refresh-in-a-file-Tt09";
const INLINE_SECRET: &str = "GOCSPX-inline-secret-Jj52";

/// Loads the config at `path` and returns it with everything logged meanwhile.
fn load_logged(path: &Path) -> (config::Config, String) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let guard = capture_logs(subscriber);
    let config = config::load_with_env(path, environment).unwrap();
    drop(guard);
    let log = captured.text();
    (config, log)
}

/// The environment the configs here are loaded with: only the variable the last test
/// expands, so no test changes the process environment.
fn environment(name: &str) -> Option<String> {
    (name == "SECRET_MODES_TEST_SECRET").then(|| INLINE_SECRET.to_string())
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A config whose asset reads its client secret and refresh token from files; `secret` is
/// `client_secret_file = ...` or an inline `client_secret = ...`.
fn config_text(secret: &str, refresh_file: &Path) -> String {
    let hash = smtp_oauth_relay::users::hash_password(&Secret::new("pw")).unwrap();
    format!(
        r#"
[[user]]
name = "app"
password_hash = "{hash}"
assets = ["*"]

[[asset]]
name = "box"
email = "box@example.com"
provider = "custom"
client_id = "client-1"
{secret}
refresh_token_file = "{refresh}"
senders = ["box@example.com"]
auth_url = "http://127.0.0.1:1/auth"
token_url = "http://127.0.0.1:1/token"
scope = "s"
upstream = "127.0.0.1:1"
"#,
        refresh = refresh_file.display()
    )
}

#[test]
fn a_readable_client_secret_file_is_warned_about_by_name_only() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "client-secret", CLIENT_SECRET, 0o644);
    let refresh = write(dir.path(), "refresh-token", REFRESH, 0o600);
    let text = config_text(
        &format!("client_secret_file = \"{}\"", secret.display()),
        &refresh,
    );
    let config_path = write(dir.path(), "relay.toml", &text, 0o644);

    let (config, log) = load_logged(&config_path);
    let secret_name = secret.display().to_string();
    let warned: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("WARN") && line.contains(&secret_name))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("asset[0].client_secret_file"), "{log}");
    assert!(warned[0].contains("644"), "{log}");
    assert!(warned[0].contains("chmod 600"), "{log}");
    assert!(
        !log.contains(CLIENT_SECRET) && !log.contains(REFRESH),
        "{log}"
    );
    // The 0600 refresh token file is fine; the 0644 config holds no secret itself.
    assert!(!log.contains("refresh-token"), "{log}");
    assert!(!log.contains("relay.toml"), "{log}");
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);

    // Made private, the same config loads without a word.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (config, log) = load_logged(&config_path);
    assert!(!log.contains("WARN"), "{log}");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn readable_refresh_token_and_json_files_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "client-secret", CLIENT_SECRET, 0o600);
    let refresh = write(dir.path(), "refresh-token", REFRESH, 0o604);
    let text = config_text(
        &format!("client_secret_file = \"{}\"", secret.display()),
        &refresh,
    );
    let config_path = write(dir.path(), "relay.toml", &text, 0o600);
    let (config, log) = load_logged(&config_path);
    assert_eq!(config.warnings.len(), 1, "{log}");
    assert!(
        config.warnings[0].contains("asset[0].refresh_token_file")
            && config.warnings[0].contains(&refresh.display().to_string()),
        "{:?}",
        config.warnings
    );
    assert!(!log.contains(REFRESH), "{log}");

    // client_json, the Google Cloud Console download.
    let client_json = write(
        dir.path(),
        "client.json",
        &format!(
            r#"{{"installed":{{"client_id":"c.apps.googleusercontent.com","client_secret":"{CLIENT_SECRET}","auth_uri":"http://127.0.0.1:1/auth","token_uri":"http://127.0.0.1:1/token"}}}}"#
        ),
        0o640,
    );
    // Group-readable by a group the test itself is in is what Kubernetes' fsGroup does:
    // not a warning. Others reading it is.
    let text = config_text(
        &format!("client_json = \"{}\"", client_json.display()),
        &secret,
    )
    .replace("client_id = \"client-1\"\n", "");
    let config_path = write(dir.path(), "relay2.toml", &text, 0o600);
    let (config, _) = load_logged(&config_path);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    std::fs::set_permissions(&client_json, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (config, log) = load_logged(&config_path);
    assert_eq!(config.warnings.len(), 1, "{log}");
    assert!(config.warnings[0].contains("asset[0].client_json"), "{log}");
    assert!(!log.contains(CLIENT_SECRET), "{log}");
}

#[test]
fn a_readable_config_is_warned_about_only_when_it_holds_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let refresh = write(dir.path(), "refresh-token", REFRESH, 0o600);
    let text = config_text(&format!("client_secret = \"{INLINE_SECRET}\""), &refresh);
    let config_path = write(dir.path(), "relay.toml", &text, 0o644);
    let (config, log) = load_logged(&config_path);
    assert_eq!(config.warnings.len(), 1, "{log}");
    assert!(
        config.warnings[0].contains(&config_path.display().to_string()),
        "{:?}",
        config.warnings
    );
    assert!(log.contains("WARN") && log.contains("relay.toml"), "{log}");
    assert!(!log.contains(INLINE_SECRET), "{log}");

    std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (config, _) = load_logged(&config_path);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);

    // A secret from the environment is not in the file.
    let text = config_text("client_secret = \"${SECRET_MODES_TEST_SECRET}\"", &refresh);
    let config_path = write(dir.path(), "relay-env.toml", &text, 0o644);
    let (config, _) = load_logged(&config_path);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

/// `check` shows the warnings with its report.
#[test]
fn check_prints_the_warning() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write(dir.path(), "client-secret", CLIENT_SECRET, 0o644);
    let refresh = write(dir.path(), "refresh-token", REFRESH, 0o600);
    let text = config_text(
        &format!("client_secret_file = \"{}\"", secret.display()),
        &refresh,
    );
    let config_path = write(dir.path(), "relay.toml", &text, 0o600);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-oauth-relay"))
        .args(["check", "--config"])
        .arg(&config_path)
        .env_remove("SMTP_OAUTH_RELAY_CONFIG")
        .env_remove("SMTP_OAUTH_RELAY_STORE_KEY")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warning = stdout
        .lines()
        .find(|line| line.starts_with("warning: "))
        .unwrap_or_else(|| panic!("no warning:\n{stdout}\n{stderr}"));
    assert!(warning.contains(&secret.display().to_string()), "{warning}");
    assert!(!stdout.contains(CLIENT_SECRET) && !stderr.contains(CLIENT_SECRET));
}
