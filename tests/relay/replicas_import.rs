//! `import-tokens` (issue 16): a relay that kept its grants in the token store file moves
//! to replicas on Redis without a new consent. The real binary copies the file's grants
//! into Redis, a replica then relays with them, and a second import keeps the (newer)
//! grant Redis holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use smtp_oauth_relay::credentials::secret::Secret;
use smtp_oauth_relay::credentials::store::{StoredToken, TokenStore};

use crate::common::*;
use crate::replicas_support::*;

fn import(config: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_smtp-oauth-relay"))
        .args(["import-tokens", "--config"])
        .arg(config)
        .args(extra)
        .env_remove("SMTP_OAUTH_RELAY_STORE_KEY")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_in_the_token_file_move_to_redis_without_a_new_consent() {
    let env = Env::with(Options {
        support_from_store: true,
        files: vec![redis_password_file()],
        ..Options::default()
    })
    .await;
    // The single relay's grant, as `authorize` left it in the file.
    TokenStore::new(env.path("tokens.json"), None)
        .put(
            "support",
            StoredToken::new(
                Secret::new(SUPPORT_REFRESH),
                Some(SUPPORT_EMAIL.to_string()),
                vec!["https://mail.google.com/".to_string()],
                1_700_000_000,
            ),
        )
        .unwrap();
    let redis = RedisServer::start(env.dir.path(), None).await;
    let state = plain_redis_state(&env, &redis);
    let config = env.path("replicas.toml");
    std::fs::write(&config, format!("{}\n[state]\n{state}\n", env.config_text)).unwrap();

    // A config without [state] has nothing to import into.
    let (ok, out) = import(&env.path("relay.toml"), &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("[state] backend = \"redis\""), "{out}");

    let (ok, out) = import(&config, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("asset support: copied to"), "{out}");
    assert!(out.contains("1 copied, 0 kept, 0 failed"), "{out}");
    assert!(!out.contains(SUPPORT_REFRESH), "{out}");

    // A replica on Redis relays with the imported grant.
    let replicas = start_replicas(&env, &state, 1).await;
    let mut client = scanner_session(replicas[0].addr).await;
    assert_eq!(send_one(&mut client, "imported").await, 250);
    client.quit().await;
    assert_eq!(env.gmail.messages().len(), 1);

    // Again: Redis's grant is kept unless --overwrite.
    let (ok, out) = import(&config, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("0 copied, 1 kept"), "{out}");
    let (ok, out) = import(&config, &["--overwrite"]);
    assert!(ok, "{out}");
    assert!(out.contains("1 copied, 0 kept"), "{out}");
    drop(replicas);
    drop(redis);
    env.stop().await;
}
