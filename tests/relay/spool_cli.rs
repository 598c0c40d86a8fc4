//! `smtp-oauth-relay spool …` (the real binary) while a relay serves the same spool:
//! list (text and --json), show (envelope and headers, not the body), drop, retry ID,
//! retry --all, requeue-dead; nothing they print or the spool keeps holds a secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::*;
use crate::spool::{files_in, spool_options, until};
use smtp_oauth_relay::sandbox::gmail::Behaviour;

/// Runs the CLI against the env's config; (exit success, stdout, stderr).
async fn cli(env: &Env, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_smtp-oauth-relay"))
        .arg("--config")
        .arg(env.path("relay.toml"))
        .arg("spool")
        .args(args)
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn list(env: &Env) -> Vec<serde_json::Value> {
    let (ok, out, err) = cli(env, &["list", "--json"]).await;
    assert!(ok, "{err}");
    serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap()
}

async fn queue_one(env: &Env, to: &str, subject: &str) -> String {
    let reply = env.send_as(SCANNER, SUPPORT_EMAIL, to, subject).await;
    let text = reply.to_string();
    reply.expect_code(250);
    text.split("queued as ").nth(1).unwrap().trim().to_string()
}

#[tokio::test]
async fn spool_commands_work_while_the_relay_serves() {
    let env = Env::with(spool_options("[3600]", "")).await;
    env.gmail.set_behaviour(Behaviour {
        greeting: Some("421 4.7.0 Try again later".into()),
        ..Behaviour::default()
    });
    let first = queue_one(&env, "one@example.net", "cli-one").await;
    let second = queue_one(&env, "two@example.net", "cli-two").await;
    // Both tried once (and failed) by the running worker.
    let mut entries = Vec::new();
    for _ in 0..200 {
        entries = list(&env).await;
        if entries.len() == 2
            && entries
                .iter()
                .all(|e| e["attempts"] == 1 && !e["last_error"].is_null())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["id"], first.as_str());
    assert_eq!(entries[0]["state"], "queued");
    assert_eq!(entries[0]["asset"], "support");
    assert_eq!(entries[0]["sender"], SUPPORT_EMAIL);
    assert_eq!(entries[0]["recipients"][0]["address"], "one@example.net");
    assert!(entries[0]["next_try_in_secs"].as_u64().unwrap() > 3000);

    let (ok, text, _) = cli(&env, &["list"]).await;
    assert!(ok);
    assert!(text.contains(&first) && text.contains(&second), "{text}");
    assert!(text.contains("2 message(s)"), "{text}");

    let (ok, shown, _) = cli(&env, &["show", &first]).await;
    assert!(ok);
    assert!(shown.contains("Subject: cli-one"), "{shown}");
    assert!(
        shown.contains("\"sender\": \"support@example.com\""),
        "{shown}"
    );
    assert!(
        !shown.contains("Hello from the test."),
        "the body is not shown: {shown}"
    );

    let (ok, _, err) = cli(&env, &["show", "../../etc/passwd"]).await;
    assert!(!ok && err.contains("not a spool id"), "{err}");

    let (ok, out, err) = cli(&env, &["drop", &first]).await;
    assert!(ok, "{err}");
    assert!(out.contains("dropped"), "{out}");
    assert_eq!(list(&env).await.len(), 1);

    // The provider is back; `retry` makes the one-hour wait a no-wait.
    env.gmail.set_behaviour(Behaviour::default());
    let (ok, _, err) = cli(&env, &["retry", &second]).await;
    assert!(ok, "{err}");
    assert!(
        env.gmail
            .wait_for_messages(1, Duration::from_secs(20))
            .await
    );
    assert!(String::from_utf8_lossy(&env.gmail.messages()[0].data).contains("Subject: cli-two"));
    until("the queue to empty", Duration::from_secs(10), || {
        files_in(&env.path("spool/queue")).is_empty()
    })
    .await;
    let (ok, _, err) = cli(&env, &["retry", "--all"]).await;
    assert!(ok, "{err}");

    // A dead letter, put back after the operator fixed things.
    env.gmail.set_behaviour(Behaviour {
        reject_recipients: vec!["gone@example.net".into()],
        ..Behaviour::default()
    });
    let dead = queue_one(&env, "gone@example.net", "cli-dead").await;
    until("the dead letter", Duration::from_secs(20), || {
        files_in(&env.path("spool/dead")).len() == 2
    })
    .await;
    let entries = list(&env).await;
    assert_eq!(entries[0]["state"], "dead", "{entries:?}");
    let (ok, _, err) = cli(&env, &["retry", &dead]).await;
    assert!(!ok && err.contains("requeue-dead"), "{err}");
    env.gmail.set_behaviour(Behaviour::default());
    let before = env.gmail.messages().len();
    let (ok, _, err) = cli(&env, &["requeue-dead", &dead]).await;
    assert!(ok, "{err}");
    assert!(
        env.gmail
            .wait_for_messages(before + 1, Duration::from_secs(20))
            .await
    );
    let last = env.gmail.messages().last().cloned().unwrap();
    assert_eq!(last.rcpt_to, vec!["gone@example.net".to_string()]);
    until("the spool to empty", Duration::from_secs(10), || {
        files_in(&env.path("spool/queue")).is_empty()
            && files_in(&env.path("spool/dead")).is_empty()
    })
    .await;

    // No secret in what the spool keeps or the CLI prints.
    let (_, listed, _) = cli(&env, &["list", "--json"]).await;
    let mut kept = listed + &shown;
    for dir in ["queue", "dead", "corrupt", "tmp"] {
        for name in files_in(&env.path(&format!("spool/{dir}"))) {
            kept.push_str(&String::from_utf8_lossy(
                &std::fs::read(env.path(&format!("spool/{dir}/{name}"))).unwrap(),
            ));
        }
    }
    for secret in [
        SUPPORT_SECRET,
        SUPPORT_REFRESH,
        SCANNER.1,
        SALES_SECRET,
        SALES_REFRESH,
    ] {
        assert!(!kept.contains(secret), "secret {secret} leaked");
    }
    env.stop().await;
}
