//! App-only assets (`grant = "client_credentials"`) through the real binary: `authorize`
//! refuses them with a message saying why, and `check` proves them with a token from the
//! fake issuer's client-credentials grant and an XOAUTH2 login, touching no token store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::common::*;
use smtp_oauth_relay::sandbox::token_issuer::apps::AppRegistration;

const BIN: &str = env!("CARGO_BIN_EXE_smtp-oauth-relay");
const APP_SECRET: &str = "cli-app-secret-Hh52";

async fn run(args: &[&str]) -> (bool, String) {
    let child = Command::new(BIN)
        .args(args)
        .env_remove("SMTP_OAUTH_RELAY_CONFIG")
        .env_remove("SMTP_OAUTH_RELAY_STORE_KEY")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the command ends")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn authorize_is_refused_and_check_proves_the_app() {
    let env = Env::with(Options {
        extra_assets: r#"
[[asset]]
name = "m365app"
email = "alerts@contoso.example"
provider = "microsoft"
grant = "client_credentials"
client_id = "cli-app"
client_secret_file = "@DIR@/app.secret"
senders = ["alerts@contoso.example"]
upstream = "@UPSTREAM@"
upstream_tls = "@UPSTREAM_TLS@"
upstream_ca = "@CA@"
token_url = "@TOKEN_URL@"
"#
        .into(),
        files: vec![("app.secret".into(), APP_SECRET.into())],
        ..Options::default()
    })
    .await;
    env.issuer.add_app(AppRegistration {
        client_id: "cli-app".into(),
        client_secret: APP_SECRET.into(),
        permissions: vec!["https://outlook.office365.com/SMTP.SendAsApp".into()],
        mailboxes: vec![],
    });
    let config = env.path("relay.toml");
    let config = config.to_str().unwrap();

    let (ok, text) = run(&["--config", config, "authorize", "m365app", "--no-browser"]).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("client_credentials") && text.contains("nothing to consent"),
        "{text}"
    );
    assert!(!text.contains(APP_SECRET));

    let (ok, text) = run(&["--config", config, "check"]).await;
    assert!(ok, "{text}");
    assert!(text.contains("asset m365app: OK"), "{text}");
    assert!(!text.contains(APP_SECRET));
    assert!(
        !env.path("tokens.json").exists(),
        "no token store was written"
    );
    env.stop().await;
}
