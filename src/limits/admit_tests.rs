//! The [`Limits`] service on the in-memory store: admissions reserve their place, limits
//! refuse with when they free up, provider marks refuse everything until they end.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::{parse_with_env, Asset};
use crate::limits::quota::ProviderQuota;
use crate::limits::{unix_now, LocalLimitStore};

fn asset(keys: &str) -> Arc<Asset> {
    let text = format!(
        r#"
[[user]]
name = "u"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$ZHVtbXloYXNoZHVtbXloYXNoZHVtbXloYXNoZHVtbXk"
assets = ["a"]

[[asset]]
name = "a"
email = "a@example.com"
senders = ["a@example.com"]
client_id = "id"
client_secret = "s"
refresh_token = "r"
{keys}
"#
    );
    let config = parse_with_env(&text, Path::new("t.toml"), |_| None).unwrap();
    config.assets[0].clone()
}

fn limits() -> Arc<Limits> {
    Limits::new(Arc::new(LocalLimitStore::in_memory()), None)
}

#[tokio::test]
async fn admissions_in_flight_count_against_the_message_limit() {
    let limits = limits();
    let asset = asset("daily_messages = 2");
    let now = unix_now();
    let first = limits.admit(&asset, 0, now).await.unwrap();
    let second = limits.admit(&asset, 0, now).await.unwrap();
    // Neither is sent yet, but both hold their place.
    let hit = limits.admit(&asset, 0, now).await.err().unwrap();
    assert_eq!(hit.limit, Limit::DailyMessages(2));
    assert!(hit.frees_at > now);
    // One given up (not sent): its place is free again.
    drop(second);
    let third = limits.admit(&asset, 0, now).await.unwrap();
    limits.commit(first, &asset, now).await;
    limits.commit(third, &asset, now).await;
    let hit = limits.admit(&asset, 0, now).await.err().unwrap();
    // Both sends leave the window a day (and a bucket) later.
    assert!(hit.frees_at >= now + 24 * 3600, "{hit:?}");
    assert!(hit.frees_at <= now + 24 * 3600 + 60, "{hit:?}");
}

#[tokio::test]
async fn recipients_are_admitted_one_by_one_and_given_back_when_refused() {
    let limits = limits();
    let asset = asset("daily_recipients = 3");
    let now = unix_now();
    let mut admission = limits.admit(&asset, 0, now).await.unwrap();
    assert_eq!(limits.recipient_room(&asset, now).await, 3);
    for _ in 0..3 {
        limits
            .add_recipients(&mut admission, &asset, 1, now)
            .await
            .unwrap();
    }
    let hit = limits
        .add_recipients(&mut admission, &asset, 1, now)
        .await
        .err()
        .unwrap();
    assert_eq!(hit.limit, Limit::DailyRecipients(3));
    limits.drop_recipients(&mut admission, 1);
    assert_eq!(limits.recipient_room(&asset, now).await, 1);
    limits.commit(admission, &asset, now).await;
    assert_eq!(limits.recipient_room(&asset, now).await, 1);
    let totals = limits.usage("a", now).await.totals(now);
    assert_eq!((totals.messages_day, totals.recipients_day), (1, 2));
}

#[tokio::test]
async fn a_provider_mark_refuses_until_it_ends() {
    let limits = limits();
    let asset = asset("daily_messages = 0\ndaily_recipients = 0");
    let now = unix_now();
    let quota = ProviderQuota {
        for_secs: 120,
        reason: "550 5.4.5 Daily user sending limit exceeded".into(),
    };
    limits.provider_refused(&asset, &quota, now).await;
    let hit = limits.admit(&asset, 0, now).await.err().unwrap();
    assert!(matches!(hit.limit, Limit::Provider(ref reason) if reason.contains("5.4.5")));
    assert_eq!(hit.frees_at, now + 120);
    assert_eq!(limits.recipient_room(&asset, now).await, 0);
    // After the mark, mail flows again.
    assert!(limits.admit(&asset, 0, now + 121).await.is_ok());
}

#[tokio::test]
async fn the_per_minute_limit_waits_when_the_window_frees_up_in_time() {
    let limits = limits();
    let asset = asset("messages_per_minute = 1");
    // A send 59 s ago: the minute window frees up within about a second.
    let now = unix_now();
    limits.store().record("a", now - 59, 1, 1).await.unwrap();
    let hit = limits.admit(&asset, 0, now).await.err().unwrap();
    assert_eq!(hit.limit, Limit::MessagesPerMinute(1));
    let waited = limits.admit_within(&asset, 0, Duration::from_secs(5)).await;
    assert!(waited.is_ok(), "{:?}", waited.err());
    // Too short a wait: refused with the time it frees up.
    let limits = self::limits();
    let now = unix_now();
    limits.store().record("a", now, 1, 1).await.unwrap();
    let hit = limits
        .admit_within(&asset, 0, Duration::from_millis(100))
        .await
        .err()
        .unwrap();
    assert_eq!(hit.limit, Limit::MessagesPerMinute(1));
    assert!(hit.frees_at > now);
}

#[tokio::test]
async fn assets_without_counted_limits_record_nothing() {
    let limits = limits();
    let asset = asset("provider = \"custom\"\nupstream = \"127.0.0.1:1\"\ntoken_url = \"http://127.0.0.1:1/t\"\nauth_url = \"http://127.0.0.1:1/a\"\nscope = \"x\"");
    assert!(!asset.sending.counts());
    let now = unix_now();
    let admission = limits.admit(&asset, 5, now).await.unwrap();
    limits.commit(admission, &asset, now).await;
    assert!(limits.usage("a", now).await.day.is_empty());
}
