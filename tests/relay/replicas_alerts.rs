//! Alerts with several replicas on Redis (issue 16: asset health is shared): when the
//! grant dies, every replica sees the asset needing an operator — the one that refreshed
//! from its own token endpoint answer, the others from Redis — and the operator gets one
//! `asset_needs_attention`, not one per replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::alerts::receiver::Receiver;
use crate::common::*;
use crate::replicas::authorize_through_replica_config;
use crate::replicas_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_send_one_alert_for_a_dead_grant() {
    let mut receiver = Receiver::start(0).await;
    let env = Env::with(Options {
        support_from_store: true,
        files: vec![redis_password_file()],
        extra_assets: format!(
            "[alerts]\ncheck_secs = 1\nretry_secs = 1\n\n[[alert]]\nkind = \"webhook\"\nurl = \"{}\"\nformat = \"json\"\n",
            receiver.url("/hook")
        ),
        ..Options::default()
    })
    .await;
    let redis = RedisServer::start(env.dir.path(), None).await;
    let state = plain_redis_state(&env, &redis);
    let replicas = start_replicas(&env, &state, 3).await;
    authorize_through_replica_config(&env).await;

    // The grant dies; one replica finds out when it refreshes.
    env.issuer.revoke_all_refresh_tokens();
    let mut client = scanner_session(replicas[0].addr).await;
    assert_eq!(send_one(&mut client, "revoked").await, 454);
    client.quit().await;

    let first = receiver.wait_for(1).await;
    assert_eq!(first[0].json()["event"], "asset_needs_attention");
    // Every replica's alert task looks each second; give them a few rounds to (not) send.
    let log_says_other =
        |replica: &Replica| replica.log_text().contains("alert sent by another replica");
    for _ in 0..100 {
        if replicas.iter().filter(|r| log_says_other(r)).count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        replicas.iter().filter(|r| log_says_other(r)).count(),
        2,
        "the two other replicas saw the shared health and left the alert to the first"
    );
    let all = receiver.events("asset_needs_attention");
    assert_eq!(all.len(), 1, "one alert, not one per replica: {all:#?}");
    drop(replicas);
    drop(redis);
    env.stop().await;
}
