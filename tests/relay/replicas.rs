//! Several replicas on one Redis (issue 16 §2/§3): three relay processes, one private
//! `redis-server`, the fake Gmail and a token issuer that rotates refresh tokens on every
//! use (as Microsoft does), so a replica that used a stale refresh token would fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use smtp_oauth_relay::config::{self, StateSettings};
use smtp_oauth_relay::credentials::secret::Secret;
use smtp_oauth_relay::oauth::consent::{store_grant, Consent};

use crate::common::*;
use crate::replicas_support::*;

/// What `authorize` (or the console's "Generate Token") does after consent, with the
/// config of replica 0: the grant lands in Redis, where every replica reads it.
pub async fn authorize_through_replica_config(env: &Env) {
    let path = env.path("replica0.toml");
    let config = config::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    assert!(matches!(config.state, StateSettings::Redis(_)));
    let asset = config.asset("support").unwrap().clone();
    let consent = Consent {
        refresh_token: Secret::new(SUPPORT_REFRESH),
        access_token: Secret::new("unused"),
        expires_in: None,
        scopes: vec!["https://mail.google.com/".to_string()],
        redirect_uri: "http://127.0.0.1/".to_string(),
    };
    let place = store_grant(&config, &asset, &consent).await.unwrap();
    assert!(place.display().to_string().contains("tokens:support"));
}

/// The refresh token Redis holds for `support`, read as a replica reads it.
async fn stored_refresh_token(env: &Env) -> String {
    let path = env.path("replica0.toml");
    let config = config::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    let StateSettings::Redis(settings) = &config.state else {
        panic!("no redis")
    };
    let state = smtp_oauth_relay::state::RedisState::new(settings, None).unwrap();
    let stored = state.tokens().get("support").await.unwrap().unwrap();
    stored.refresh_token.expose().to_string()
}

/// The raw values (hash field `doc`, or string) at `keys`, as another Redis client sees
/// them.
async fn raw_values(env: &Env, keys: &[&str]) -> Vec<String> {
    let path = env.path("replica0.toml");
    let config = config::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    let StateSettings::Redis(settings) = &config.state else {
        panic!("no redis")
    };
    let state = smtp_oauth_relay::state::RedisState::new(settings, None).unwrap();
    let mut values = Vec::new();
    for key in keys {
        let kind: String = state.run(redis::cmd("TYPE").arg(*key)).await.unwrap();
        let value: Option<String> = if kind == "hash" {
            state
                .run(redis::cmd("HGET").arg(*key).arg("doc"))
                .await
                .unwrap()
        } else {
            state.run(redis::cmd("GET").arg(*key)).await.unwrap()
        };
        values.push(value.unwrap_or_default());
    }
    values
}

/// Sends `count` messages in one session; returns how many got 250.
async fn send_many(addr: std::net::SocketAddr, tag: String, count: usize) -> usize {
    let mut client = scanner_session(addr).await;
    let mut sent = 0;
    for i in 0..count {
        if send_one(&mut client, &format!("{tag}-{i}")).await == 250 {
            sent += 1;
        }
    }
    client.quit().await;
    sent
}

/// Sends until one message gets 250 (bounded: 5 s); the last code.
async fn send_until_sent(addr: std::net::SocketAddr, subject: &str) -> u16 {
    let mut code = 0;
    for _ in 0..50 {
        code = send_single(addr, subject).await;
        if code == 250 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    code
}

async fn send_single(addr: std::net::SocketAddr, subject: &str) -> u16 {
    let mut client = scanner_session(addr).await;
    let code = send_one(&mut client, subject).await;
    client.quit().await;
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_tokens_and_rotations_and_survive_redis_going_away() {
    let env = Env::with(Options {
        support_from_store: true,
        files: vec![redis_password_file()],
        ..Options::default()
    })
    .await;
    env.issuer.set_rotate_refresh_tokens(true);
    let mut redis = RedisServer::start(env.dir.path(), None).await;
    let state = plain_redis_state(&env, &redis);
    let replicas = start_replicas(&env, &state, 3).await;

    // No grant yet: the operator must authorize (454, the mail stays queued).
    assert_eq!(send_single(replicas[1].addr, "too-early").await, 454);
    authorize_through_replica_config(&env).await;

    // 300 messages over the three, 4 sessions each, all at once.
    let mut tasks = Vec::new();
    for (r, replica) in replicas.iter().enumerate() {
        for s in 0..4 {
            tasks.push(tokio::spawn(send_many(
                replica.addr,
                format!("r{r}s{s}"),
                25,
            )));
        }
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await.unwrap();
    }
    assert_eq!(sent, 300);
    assert!(
        env.gmail
            .wait_for_messages(300, Duration::from_secs(30))
            .await
    );
    assert_eq!(env.gmail.messages().len(), 300);
    // One refresh for the three replicas, and its rotation is what Redis holds.
    assert_eq!(
        env.issuer.refresh_count(),
        1,
        "each replica refreshed on its own"
    );
    let current = env.issuer.current_refresh_tokens(SUPPORT_EMAIL);
    let stored = stored_refresh_token(&env).await;
    assert_ne!(stored, SUPPORT_REFRESH, "the rotation was not saved");
    assert_eq!(current, vec![stored.clone()]);

    // The provider stops accepting the access token (expiry): one replica refreshes
    // with the rotated refresh token, the others take its new access token.
    env.tokens.revoke_all();
    for (r, replica) in replicas.iter().enumerate() {
        assert_eq!(
            send_single(replica.addr, &format!("expired-{r}")).await,
            250
        );
    }
    assert_eq!(
        env.issuer.refresh_count(),
        2,
        "one refresh per expiry, not per replica"
    );
    assert_ne!(stored_refresh_token(&env).await, stored);

    // Redis goes away: cached tokens keep the mail flowing.
    redis.kill();
    for (r, replica) in replicas.iter().enumerate() {
        assert_eq!(
            send_single(replica.addr, &format!("redis-down-{r}")).await,
            250
        );
    }
    let ready = replicas[0].readyz().await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains("unreachable"), "{ready}");
    // A refresh needs the shared lock: 454, and the token endpoint is not asked.
    env.tokens.revoke_all();
    assert_eq!(send_single(replicas[2].addr, "needs-refresh").await, 454);
    assert_eq!(env.issuer.refresh_count(), 2);

    // Redis comes back (its AOF kept the grant): the replica rejoins without a restart.
    redis.restart().await;
    // (Each replica tries Redis again at most a second after its last failure.)
    assert_eq!(send_until_sent(replicas[2].addr, "redis-back").await, 250);
    assert_eq!(env.issuer.refresh_count(), 3);
    for (r, replica) in replicas.iter().enumerate() {
        assert_eq!(
            send_until_sent(replica.addr, &format!("after-{r}")).await,
            250
        );
    }
    assert_eq!(env.issuer.refresh_count(), 3);
    let ready = replicas[2].readyz().await;
    assert!(ready.contains("state redis redis://127.0.0.1"), "{ready}");
    assert!(ready.contains(": ok"), "{ready}");

    // The grant is revoked: the replica that refreshes sees invalid_grant, and the others
    // show it too (shared asset health) although they have not tried yet.
    env.issuer.revoke_all_refresh_tokens();
    env.tokens.revoke_all();
    assert_eq!(send_single(replicas[0].addr, "revoked").await, 454);
    let ready = replicas[1].readyz().await;
    assert!(
        ready.contains("asset support: another replica reports:"),
        "{ready}"
    );

    // Nothing went to a local token file meanwhile.
    assert!(!env.path("tokens.json").exists());
    let log = replicas[2].log_text();
    assert_eq!(
        log.matches("shared state on Redis is unreachable").count(),
        1,
        "{log}"
    );
    // Each fallback is logged once, however many sessions took it.
    assert_eq!(
        log.matches("fallback=\"token refresh: refused (454)")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("rejoined"), "{log}");
    for replica in &replicas {
        assert!(!replica.log_text().contains(REDIS_PASSWORD));
    }
    drop(replicas);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_redis_with_password_shares_counters_and_lockouts_and_hides_the_password() {
    let mut env = Env::with(Options {
        support_from_store: true,
        // Encrypted at rest in Redis too: the grant and the shared access token.
        files: vec![(
            "store.key".to_string(),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n".to_string(),
        )],
        tokens: "key_file = \"@DIR@/store.key\"".to_string(),
        limits: "auth_max_failures = 3\nauth_lockout_secs = 600\nauth_failure_delay_ms = 1"
            .to_string(),
        ..Options::default()
    })
    .await;
    let tls = (
        env.path("relay.crt"),
        env.path("relay.key"),
        env.path("ca.pem"),
    );
    // The replicas (not the in-process relay) send at most 6 messages a day for support.
    env.config_text = env.config_text.replacen(
        "name = \"support\"\n",
        "name = \"support\"\ndaily_messages = 6\n",
        1,
    );
    let redis = RedisServer::start(env.dir.path(), Some(tls)).await;
    let state = format!(
        "backend = \"redis\"\nurl = \"rediss://:{REDIS_PASSWORD}@127.0.0.1:{}/0\"\nca_file = \"{}\"\nprefix = \"relay-test:\"",
        redis.port,
        env.path("ca.pem").display()
    );
    let replicas = start_replicas(&env, &state, 3).await;
    authorize_through_replica_config(&env).await;
    for (r, replica) in replicas.iter().enumerate() {
        assert_eq!(send_single(replica.addr, &format!("tls-{r}")).await, 250);
    }
    assert_eq!(env.issuer.refresh_count(), 1);
    // What Redis holds is sealed with the store key.
    let raw = raw_values(
        &env,
        &["relay-test:tokens:support", "relay-test:access:support"],
    )
    .await;
    assert!(raw[0].contains("chacha20-poly1305"), "{}", raw[0]);
    assert!(!raw[0].contains(SUPPORT_REFRESH));
    assert!(raw[1].starts_with("v1:"), "{}", raw[1]);
    assert!(!raw[1].contains("expires_at"));
    // Counters add up across replicas: 6 sent in all (2 each), the 7th is refused by
    // whichever replica gets it, before the provider sees it.
    for (r, replica) in replicas.iter().enumerate() {
        assert_eq!(send_single(replica.addr, &format!("count-{r}")).await, 250);
    }
    assert_eq!(send_single(replicas[1].addr, "seventh").await, 451);
    assert_eq!(env.gmail.messages().len(), 6);
    let ready = replicas[0].readyz().await;
    assert!(ready.contains("state redis rediss://127.0.0.1"), "{ready}");
    assert!(ready.contains(": ok"), "{ready}");

    // One wrong password per replica: three failures from this address in all, which
    // locks it out on every replica (alone, each replica counted one).
    for replica in &replicas {
        let mut client = Client::connect(replica.addr).await;
        client.ehlo().await;
        client
            .auth_plain(SCANNER.0, "wrong password")
            .await
            .expect_code(535);
        client.quit().await;
    }
    for replica in &replicas {
        let mut client = Client::connect(replica.addr).await;
        client.ehlo().await;
        client
            .auth_plain(SCANNER.0, SCANNER.1)
            .await
            .expect_code(454);
        client.quit().await;
    }

    // `check` against a Redis with the wrong password: reported, without the password.
    let wrong = "wrong-redis-Pw-4471";
    let text = std::fs::read_to_string(env.path("replica0.toml"))
        .unwrap()
        .replace(REDIS_PASSWORD, wrong);
    std::fs::write(env.path("wrong.toml"), text).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_smtp-oauth-relay"))
        .args(["check", "--config"])
        .arg(env.path("wrong.toml"))
        .env_remove("SMTP_OAUTH_RELAY_STORE_KEY")
        .output()
        .await
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{all}");
    assert!(all.contains("state redis rediss://127.0.0.1"), "{all}");
    assert!(all.contains("unreachable"), "{all}");
    assert!(!all.contains(wrong), "{all}");
    assert!(!all.contains(REDIS_PASSWORD), "{all}");
    for replica in &replicas {
        assert!(!replica.log_text().contains(REDIS_PASSWORD));
    }
    drop(replicas);
    drop(redis);
    env.stop().await;
}

/// The two Redis primitives the replicas rely on, driven directly: compare-and-swap of a
/// rotated refresh token (a stale rotation or one racing a new grant never wins), and the
/// refresh lock (exclusive, fenced, released only by its holder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_compare_and_swap_and_lock_fencing() {
    use smtp_oauth_relay::credentials::store::StoredToken;
    use std::time::SystemTime;

    smtp_oauth_relay::tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path(), None).await;
    let settings = smtp_oauth_relay::config::RedisSettings {
        tls: false,
        host: "127.0.0.1".to_string(),
        port: redis.port,
        db: 0,
        username: None,
        password: Some(Secret::new(REDIS_PASSWORD)),
        ca_file: None,
        prefix: "t:".to_string(),
    };
    let state = smtp_oauth_relay::state::RedisState::new(&settings, None).unwrap();
    let tokens = state.tokens();
    let grant = |token: &str| StoredToken::new(Secret::new(token), None, vec![], 1);
    let current = |t: Option<StoredToken>| t.unwrap().refresh_token.expose().to_string();

    tokens.put("a", grant("A")).await.unwrap();
    assert!(tokens
        .replace_rotated("a", &Secret::new("A"), Secret::new("B"), 2)
        .await
        .unwrap());
    // A second replica rotating the same old token loses.
    assert!(!tokens
        .replace_rotated("a", &Secret::new("A"), Secret::new("C"), 2)
        .await
        .unwrap());
    assert_eq!(current(tokens.get("a").await.unwrap()), "B");
    // A new grant (authorize) meanwhile wins over a rotation based on the older one.
    tokens.put("a", grant("D")).await.unwrap();
    assert!(!tokens
        .replace_rotated("a", &Secret::new("B"), Secret::new("E"), 3)
        .await
        .unwrap());
    assert_eq!(current(tokens.get("a").await.unwrap()), "D");
    assert!(tokens.get("nobody").await.unwrap().is_none());

    let ttl = Duration::from_millis(300);
    let first = state.try_lock("a", ttl).await.unwrap().unwrap();
    assert!(
        state.try_lock("a", ttl).await.unwrap().is_none(),
        "the lock is exclusive"
    );
    state.release(first).await.unwrap();
    let slow = state.try_lock("a", ttl).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The slow holder's lock expired; a successor holds it now.
    let next = state
        .try_lock("a", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let expires = SystemTime::now() + Duration::from_secs(3600);
    assert!(!state
        .publish_access_token(&slow, &Secret::new("stale"), expires)
        .await
        .unwrap());
    assert!(state
        .publish_access_token(&next, &Secret::new("fresh"), expires)
        .await
        .unwrap());
    let (shared, _) = state.shared_access_token("a").await.unwrap().unwrap();
    assert_eq!(shared.expose(), "fresh");
    // The slow holder's release does not free its successor's lock.
    state.release(slow).await.unwrap();
    assert!(state.try_lock("a", ttl).await.unwrap().is_none());
    state.release(next).await.unwrap();
    assert!(state.try_lock("a", ttl).await.unwrap().is_some());
}
