//! Warm upstream connections shared between client sessions, and their failure cases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::*;
use smtp_oauth_relay::sandbox::gmail::Behaviour;

fn pooled(extra: &str) -> Options {
    Options {
        pool: format!("enabled = true\n{extra}"),
        ..Options::default()
    }
}

/// One message per connection, the way printers and cron jobs send.
async fn send_one(env: &Env, subject: &str) {
    env.send_as(SCANNER, SUPPORT_EMAIL, "x@example.net", subject)
        .await
        .expect_code(250);
}

/// The session hands its upstream to the pool as it ends; wait for that.
async fn wait_for_idle(env: &Env, asset: &str, count: usize) {
    for _ in 0..100 {
        if env.relay.pool.idle_count(asset) == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "pool for {asset} holds {} connections, expected {count}",
        env.relay.pool.idle_count(asset)
    );
}

#[tokio::test]
async fn one_message_sessions_share_one_authenticated_connection() {
    let env = Env::with(pooled("")).await;
    for i in 0..3 {
        send_one(&env, &format!("printer-{i}")).await;
        wait_for_idle(&env, "support", 1).await;
    }
    assert_eq!(env.gmail.messages().len(), 3);
    assert_eq!(
        env.gmail.connections(),
        1,
        "the warm connection was not reused"
    );
    assert_eq!(env.gmail.auth_attempts(), 1);
    assert_eq!(env.issuer.refresh_count(), 1);
    env.stop().await;
}

#[tokio::test]
async fn without_the_pool_every_session_connects() {
    let env = Env::start().await;
    for i in 0..2 {
        send_one(&env, &format!("nopool-{i}")).await;
    }
    assert_eq!(env.gmail.connections(), 2);
    env.stop().await;
}

#[tokio::test]
async fn a_dead_pooled_connection_is_replaced_transparently() {
    let env = Env::with(pooled("")).await;
    // The upstream answers, then closes: the pooled connection is dead when reused.
    env.gmail.set_behaviour(Behaviour {
        close_after_reply: true,
        ..Behaviour::default()
    });
    send_one(&env, "first").await;
    wait_for_idle(&env, "support", 1).await;
    send_one(&env, "second").await;
    assert_eq!(env.gmail.messages().len(), 2);
    // The refused token is invalidated: the fresh connection logs in with a refreshed
    // one at once, instead of trying the revoked token on a third connection.
    assert_eq!(env.gmail.connections(), 2);
    env.stop().await;
}

#[tokio::test]
async fn a_connection_whose_token_is_expiring_is_not_reused() {
    let env = Env::with(pooled("")).await;
    // 62 s tokens: after a couple of seconds less than the 60 s margin is left.
    env.issuer.set_expires_in(62);
    send_one(&env, "first").await;
    wait_for_idle(&env, "support", 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    send_one(&env, "second").await;
    assert_eq!(env.gmail.messages().len(), 2);
    assert_eq!(
        env.gmail.connections(),
        2,
        "re-authenticated on a new connection"
    );
    assert_eq!(env.issuer.refresh_count(), 2);
    env.stop().await;
}

#[tokio::test]
async fn idle_connections_are_let_go_after_the_idle_timeout() {
    let env = Env::with(pooled("idle_secs = 1")).await;
    send_one(&env, "first").await;
    wait_for_idle(&env, "support", 1).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    send_one(&env, "second").await;
    assert_eq!(env.gmail.connections(), 2);
    env.stop().await;
}

#[tokio::test]
async fn pool_exhausted_under_load_still_delivers_everything() {
    let env = Env::with(pooled("size = 2")).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let addr = env.relay_addr;
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            client.ehlo().await;
            client
                .auth_plain(SCANNER.0, SCANNER.1)
                .await
                .expect_code(235);
            client
                .send_mail(
                    SUPPORT_EMAIL,
                    &["x@example.net"],
                    &message(&format!("load-{i}")),
                )
                .await
                .expect_code(250);
            client.quit().await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(env.gmail.messages().len(), 12);
    // Never more than `size` kept idle, whatever the burst.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(env.relay.pool.idle_count("support") <= 2);
    env.stop().await;
}

#[tokio::test]
async fn no_reuse_after_an_ambiguous_failure() {
    let env = Env::with(pooled("")).await;
    env.gmail.set_behaviour(Behaviour {
        close_after_dot: true,
        ..Behaviour::default()
    });
    let mut client = env.logged_in(SCANNER).await;
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("lost"))
        .await
        .expect_code(451);
    client.quit().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.relay.pool.idle_count("support"), 0);
    env.stop().await;
}

/// The connection a session keeps for its own next message follows the pool's rule: one
/// whose token expires within a minute is not used again.
#[tokio::test]
async fn a_sessions_kept_connection_with_an_expiring_token_is_replaced() {
    let env = Env::start().await;
    // Every token lives 30 s, less than the one-minute margin.
    env.issuer.set_expires_in(30);
    let mut client = env.logged_in(SCANNER).await;
    for i in 0..2 {
        client
            .send_mail(
                SUPPORT_EMAIL,
                &["x@example.net"],
                &message(&format!("expiring-{i}")),
            )
            .await
            .expect_code(250);
    }
    assert_eq!(env.gmail.messages().len(), 2);
    assert_eq!(
        env.gmail.connections(),
        2,
        "the kept connection was reused although its token was about to expire"
    );
    env.stop().await;
}

/// ... and so does its idle age (`[pool] idle_secs`, even with the shared pool off).
#[tokio::test]
async fn a_sessions_kept_connection_idle_too_long_is_replaced() {
    let env = Env::with(Options {
        pool: "enabled = false\nidle_secs = 1".into(),
        ..Options::default()
    })
    .await;
    let mut client = env.logged_in(SCANNER).await;
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("idle-0"))
        .await
        .expect_code(250);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("idle-1"))
        .await
        .expect_code(250);
    assert_eq!(env.gmail.connections(), 2);
    env.stop().await;
}

/// A provider that ends an authenticated session when its token expires refuses MAIL with
/// 530 on it. Nothing was committed, so the relay opens a fresh connection and the client
/// never sees the 530.
#[tokio::test]
async fn an_authentication_refusal_of_mail_on_a_sessions_kept_connection_opens_a_fresh_one() {
    let env = Env::start().await;
    env.gmail.set_behaviour(Behaviour {
        session_ends_with_token: true,
        ..Behaviour::default()
    });
    let mut client = env.logged_in(SCANNER).await;
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("before-expiry"))
        .await
        .expect_code(250);
    // The provider now considers the connection's token expired.
    env.tokens.revoke_all();
    client
        .send_mail(SUPPORT_EMAIL, &["x@example.net"], &message("after-expiry"))
        .await
        .expect_code(250);
    assert_eq!(env.gmail.messages().len(), 2);
    // The refused token is invalidated: the fresh connection logs in with a refreshed
    // one at once, instead of trying the revoked token on a third connection.
    assert_eq!(env.gmail.connections(), 2);
    env.stop().await;
}

#[tokio::test]
async fn an_authentication_refusal_of_mail_on_a_pooled_connection_opens_a_fresh_one() {
    let env = Env::with(pooled("")).await;
    env.gmail.set_behaviour(Behaviour {
        session_ends_with_token: true,
        ..Behaviour::default()
    });
    send_one(&env, "pooled-before-expiry").await;
    wait_for_idle(&env, "support", 1).await;
    env.tokens.revoke_all();
    send_one(&env, "pooled-after-expiry").await;
    assert_eq!(env.gmail.messages().len(), 2);
    // The refused token is invalidated: the fresh connection logs in with a refreshed
    // one at once, instead of trying the revoked token on a third connection.
    assert_eq!(env.gmail.connections(), 2);
    env.stop().await;
}
