//! Spool figures for docs/benchmarks.md (not a test: `#[ignore]`, no assertion on time):
//! `cargo test --test relay spool_bench -- --ignored --nocapture`. Measures the cost of
//! making one message durable (the intake's fsyncs and renames, alone), the spooled
//! intake rate seen by clients and the delivery rate of the worker, against the sandbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::spool::{files_in, until};
use smtp_oauth_relay::spool::entry::{new_id, Entry, RcptState, Recipient, FORMAT_VERSION};
use smtp_oauth_relay::spool::store::Dirs;

const MESSAGES: usize = 400;
const CONNECTIONS: usize = 4;

fn entry(id: &str) -> Entry {
    Entry {
        version: FORMAT_VERSION,
        id: id.to_string(),
        asset: "support".into(),
        user: "bench".into(),
        client: "127.0.0.1".into(),
        sender: SUPPORT_EMAIL.into(),
        recipients: vec![Recipient {
            address: "r@example.net".into(),
            state: RcptState::Pending,
            reply: None,
        }],
        arrived_ms: 0,
        size: 0,
        message_id: None,
        eight_bit: false,
        smtputf8: false,
        attempts: 0,
        next_try_ms: 0,
        last_error: None,
        waiting_for_credentials: false,
        sending: false,
        dead_reason: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn spool_bench() {
    // 1. The durable commit alone (write .eml, fsync, write .json, fsync, 2 renames,
    //    fsync dir) against the same commit without any fsync.
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let dirs = Dirs::new(&dir.path().join("spool"));
    dirs.create().unwrap();
    let body = message("bench").repeat(4);
    let started = Instant::now();
    for _ in 0..200 {
        let id = new_id();
        let (path, mut file) = dirs.tmp_file(&format!("{id}.eml")).unwrap();
        file.write_all(&body).unwrap();
        dirs.commit_new(&path, file, &entry(&id)).unwrap();
    }
    let durable = started.elapsed() / 200;
    let started = Instant::now();
    for _ in 0..200 {
        let id = new_id();
        let (path, mut file) = dirs.tmp_file(&format!("{id}.eml")).unwrap();
        file.write_all(&body).unwrap();
        drop(file);
        std::fs::write(dirs.tmp.join(format!("{id}.json")), entry(&id).to_json()).unwrap();
        std::fs::rename(&path, dirs.queue.join(format!("{id}.eml"))).unwrap();
        std::fs::rename(
            dirs.tmp.join(format!("{id}.json")),
            dirs.queue.join(format!("{id}.json")),
        )
        .unwrap();
    }
    let unsynced = started.elapsed() / 200;
    println!(
        "commit per message: {durable:?} durable, {unsynced:?} without fsync; fsync cost {:?}",
        durable.saturating_sub(unsynced)
    );

    // 2. Clients through the relay (trusted network, spooled), provider down so the
    //    intake is measured alone; then the provider back, the worker's delivery rate.
    let env = Env::with(Options {
        server: "trusted_networks = [\"127.0.0.1/32\"]\ntrusted_assets = [\"support\"]\ntrusted_delivery = \"spool\"".into(),
        pool: "enabled = true".into(),
        spool: "dir = \"@DIR@/spool\"\nretry_secs = [1]\nconcurrency = 8".into(),
        ..Options::default()
    })
    .await;
    env.gmail
        .set_behaviour(smtp_oauth_relay::sandbox::gmail::Behaviour {
            greeting: Some("421 4.7.0 down for the benchmark".into()),
            ..Default::default()
        });
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|conn| {
            let addr = env.relay_addr;
            tokio::spawn(async move {
                let acked = crate::spool_crash::sender(addr, 0, conn, MESSAGES / CONNECTIONS).await;
                assert_eq!(acked.len(), MESSAGES / CONNECTIONS);
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let intake = started.elapsed();
    env.gmail.set_behaviour(Default::default());
    let started = Instant::now();
    assert!(
        env.gmail
            .wait_for_messages(MESSAGES, Duration::from_secs(300))
            .await
    );
    let delivery = started.elapsed();
    until("the queue to empty", Duration::from_secs(60), || {
        files_in(&env.path("spool/queue")).is_empty()
    })
    .await;
    println!(
        "{MESSAGES} messages over {CONNECTIONS} connections: spooled in {intake:?} ({:.0}/s), delivered by the worker in {delivery:?} ({:.0}/s)",
        MESSAGES as f64 / intake.as_secs_f64(),
        MESSAGES as f64 / delivery.as_secs_f64(),
    );
    env.stop().await;
}
