//! The spool and the sending limits together (issues 15 and 16): where a direct client
//! hears `451 4.7.0`, a spooled message waits for the limit to free up, and a provider's
//! quota refusal marks the asset and keeps the message instead of making a dead letter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use crate::spool::{files_in, queued_id, smtplib_send, spool_dir, spool_options, until};
use smtp_oauth_relay::sandbox::gmail::Behaviour;
use smtp_oauth_relay::spool::entry::Entry;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The queued entry `id`, if it is there and readable.
fn queued_entry(dir: &Path, id: &str) -> Option<Entry> {
    let text = std::fs::read_to_string(dir.join("queue").join(format!("{id}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

/// Waits (bounded) until the entry is rescheduled at least an hour ahead, and returns it.
async fn rescheduled_for_hours(env: &Env, id: &str) -> Entry {
    let dir = spool_dir(env);
    until(
        "the entry to wait for hours",
        Duration::from_secs(20),
        || queued_entry(&dir, id).is_some_and(|e| e.next_try_ms > now_ms() + 3_600_000),
    )
    .await;
    queued_entry(&dir, id).unwrap()
}

#[tokio::test]
async fn spooled_mail_waits_for_the_daily_limit_instead_of_being_refused() {
    let env = Env::with(Options {
        support_extra: "daily_messages = 1".into(),
        ..spool_options("[1]", "")
    })
    .await;
    let first = smtplib_send(&env, SUPPORT_EMAIL, &["a@example.net"], &message("one")).await;
    queued_id(&first);
    assert!(
        env.gmail
            .wait_for_messages(1, Duration::from_secs(20))
            .await
    );
    // The second is accepted into the spool like the first (a scanner cannot retry a 451),
    // then waits for the limit's window instead of being tried every second.
    let second = smtplib_send(&env, SUPPORT_EMAIL, &["b@example.net"], &message("two")).await;
    let id = queued_id(&second);
    let entry = rescheduled_for_hours(&env, &id).await;
    assert_eq!(entry.attempts, 0, "waiting for a limit is not an attempt");
    assert_eq!(env.gmail.messages().len(), 1, "the provider never saw it");
    assert!(files_in(&spool_dir(&env).join("dead")).is_empty());
    env.stop().await;
}

#[tokio::test]
async fn a_provider_quota_refusal_keeps_the_spooled_message_and_marks_the_asset() {
    let env = Env::with(spool_options("[1]", "")).await;
    env.gmail.set_behaviour(Behaviour {
        data_reply: Some("550 5.4.5 Daily user sending limit exceeded.".into()),
        ..Behaviour::default()
    });
    let reply = smtplib_send(&env, SUPPORT_EMAIL, &["a@example.net"], &message("quota")).await;
    let id = queued_id(&reply);
    // A 5xx would make a dead letter and a DSN; a quota 5xx is temporary: the message
    // waits for the mark (24 h without a time in the reply), not bounced.
    let entry = rescheduled_for_hours(&env, &id).await;
    assert!(
        entry.last_error.as_deref().unwrap_or("").contains("5.4.5"),
        "{entry:?}"
    );
    assert!(files_in(&spool_dir(&env).join("dead")).is_empty());
    assert!(env.gmail.messages().is_empty(), "no message, no DSN");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(env.relay.limits.over_limit("support", now).await.is_some());
    env.stop().await;
}
