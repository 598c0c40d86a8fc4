//! `upstream_connections` across replicas (issue 16): the cap is the mailbox's (Exchange
//! Online allows 3 SMTP sessions), so three replicas on one Redis share it through leases
//! instead of each allowing the whole cap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::*;
use crate::replicas_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_an_assets_upstream_connections() {
    let env = Env::with(Options {
        support_extra: "upstream_connections = 2".into(),
        timeouts: "upstream_connect_secs = 1\n".into(),
        files: vec![redis_password_file()],
        ..Options::default()
    })
    .await;
    let redis = RedisServer::start(env.dir.path(), None).await;
    let state = plain_redis_state(&env, &redis);
    let replicas = start_replicas(&env, &state, 3).await;
    let mail_from = format!("MAIL FROM:<{SUPPORT_EMAIL}>");

    // Two sessions on two replicas each hold an upstream connection (MAIL went upstream).
    let mut first = scanner_session(replicas[0].addr).await;
    first.cmd(&mail_from).await.expect_code(250);
    let mut second = scanner_session(replicas[1].addr).await;
    second.cmd(&mail_from).await.expect_code(250);

    // The third replica has slots of its own, but the asset's cap is spent.
    let mut third = scanner_session(replicas[2].addr).await;
    let refused = third.cmd(&mail_from).await;
    assert_eq!(refused.code, 451, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("all its 2 provider connections in use"),
        "{refused}"
    );
    assert_eq!(env.gmail.max_open_connections(), 2);

    // One connection closes: its lease goes, and the third replica gets the place.
    first.quit().await;
    let mut code = 0;
    for _ in 0..50 {
        code = third.cmd(&mail_from).await.code;
        if code == 250 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(code, 250);
    assert_eq!(env.gmail.max_open_connections(), 2);
    second.quit().await;
    third.quit().await;
    drop(replicas);
    drop(redis);
    env.stop().await;
}
