//! The spool with `[state] backend = "redis"` (issues 15 and 16): a grant stored in Redis
//! by `authorize` (or the console) on any machine makes a replica's spool worker try the
//! messages waiting for credentials at once, as a new grant in the token store file does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::*;
use crate::replicas::authorize_through_replica_config;
use crate::replicas_support::*;
use crate::spool::{queued_id, spool_options, until};
use smtp_oauth_relay::spool::entry::Entry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_stored_in_redis_delivers_the_spooled_mail_waiting_for_it() {
    // An hour between tries: only the new grant can deliver the message in this test.
    let env = Env::with(Options {
        support_from_store: true,
        files: vec![redis_password_file()],
        ..spool_options("[3600]", "")
    })
    .await;
    let redis = RedisServer::start(env.dir.path(), None).await;
    let state = plain_redis_state(&env, &redis);
    // The replica gets a spool of its own (the in-process relay of the harness has one
    // in `spool/`): each replica's spool is its own.
    let spool = env.path("spool");
    let replica_spool = env.path("replica-spool");
    let text = format!(
        "{}\n[state]\n{state}\n",
        env.config_text.replace(
            &format!("dir = \"{}\"", spool.display()),
            &format!("dir = \"{}\"", replica_spool.display())
        )
    );
    assert!(text.contains("replica-spool"), "{text}");
    let config = env.path("replica0.toml");
    std::fs::write(&config, text).unwrap();
    let admin = format!("127.0.0.1:{}", free_admin_port()).parse().unwrap();
    let replica = Replica::start(&config, env.path("replica0.log"), admin).await;

    // No grant in Redis: the scanner's message is queued, its first try needs credentials.
    let mut client = scanner_session(replica.addr).await;
    let reply = client
        .send_mail(SUPPORT_EMAIL, &["friend@example.net"], &message("wait"))
        .await;
    let id = queued_id(&reply.to_string());
    client.quit().await;
    until(
        "the first try to fail for credentials",
        Duration::from_secs(20),
        || {
            std::fs::read(replica_spool.join("queue").join(format!("{id}.json")))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Entry>(&bytes).ok())
                .is_some_and(|entry| entry.waiting_for_credentials && entry.attempts == 1)
        },
    )
    .await;
    assert!(env.gmail.messages().is_empty());

    authorize_through_replica_config(&env).await;
    assert!(
        env.gmail
            .wait_for_messages(1, Duration::from_secs(20))
            .await,
        "the new grant in Redis did not trigger a try; log:\n{}",
        replica.log_text()
    );
    assert!(replica.log_text().contains("new grant stored"));
    drop(replica);
    drop(redis);
    env.stop().await;
}

fn free_admin_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}
