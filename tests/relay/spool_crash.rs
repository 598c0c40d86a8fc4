//! Crash safety of the spool (issue 15): the relay binary is killed with SIGKILL at a
//! random point of a burst of 200 spooled messages, 20 times in a row over the same
//! spool; then every message a client heard `250 queued` for must have reached the
//! provider exactly once, except ones the relay logged as `possible_duplicate`. The
//! messages come from a trusted network (`trusted_delivery = "spool"`), no AUTH, so a
//! round takes a fraction of a second.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;
use crate::spool::{files_in, until};

const ROUNDS: usize = 20;
const BURST: usize = 200;
const CONNECTIONS: usize = 4;

/// A small deterministic generator (seed printed), so a failing run can be repeated.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The env's config for the binary: its own port, a trusted loopback that spools, the
/// pool on, and the spool in the env's directory.
fn binary_config(env: &Env, addr: SocketAddr) -> String {
    let spool = env.path("spool");
    env.config_text
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!(
                "listen = \"{addr}\"\ntrusted_networks = [\"127.0.0.1/32\"]\ntrusted_assets = [\"support\"]\ntrusted_delivery = \"spool\""
            ),
        )
        .replace("[pool]\nenabled = false", "[pool]\nenabled = true")
        + &format!(
            "\n[spool]\ndir = \"{}\"\nretry_secs = [1]\nconcurrency = 8\n",
            spool.display()
        )
}

async fn start_relay(env: &Env, round: usize) -> (tokio::process::Child, SocketAddr) {
    let addr = free_port();
    let config = env.path(&format!("crash-{round}.toml"));
    std::fs::write(&config, binary_config(env, addr)).unwrap();
    let log = std::fs::File::create(env.path(&format!("crash-{round}.log"))).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_smtp-oauth-relay"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return (child, addr);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("relay round {round} did not start");
}

/// A client that survives the relay dying under it (the harness's `Client` panics):
/// one command, its reply's last line; None once the connection is gone.
pub struct Raw(pub tokio::io::BufReader<tokio::net::TcpStream>);

impl Raw {
    pub async fn reply(&mut self) -> Option<String> {
        use tokio::io::AsyncBufReadExt;
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(Duration::from_secs(30), self.0.read_line(&mut line))
                .await
                .ok()?
                .ok()?;
            if read == 0 {
                return None;
            }
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Some(line.trim_end().to_string());
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Option<String> {
        use tokio::io::AsyncWriteExt;
        self.0.get_mut().write_all(bytes).await.ok()?;
        self.reply().await
    }
}

/// Sends `count` messages on one connection; returns (subject, spool id) of each one the
/// relay acknowledged, until the connection dies.
pub async fn sender(
    addr: SocketAddr,
    round: usize,
    conn: usize,
    count: usize,
) -> Vec<(String, String)> {
    let mut acked = Vec::new();
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return acked;
    };
    let mut client = Raw(tokio::io::BufReader::new(stream));
    if client.reply().await.is_none() || client.send(b"EHLO crash.test\r\n").await.is_none() {
        return acked;
    }
    for n in 0..count {
        let subject = format!("crash-{round}-{conn}-{n}");
        let steps = [
            format!("MAIL FROM:<{SUPPORT_EMAIL}>\r\n").into_bytes(),
            b"RCPT TO:<r@example.net>\r\n".to_vec(),
            b"DATA\r\n".to_vec(),
            [message(&subject), b".\r\n".to_vec()].concat(),
        ];
        let mut last = None;
        for step in &steps {
            last = client.send(step).await;
            match &last {
                Some(reply) if reply.starts_with('2') || reply.starts_with("354") => {}
                Some(reply) => panic!("unexpected reply {reply}"),
                None => return acked,
            }
        }
        let reply = last.unwrap_or_default();
        let id = reply
            .split("queued as ")
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string();
        assert!(!id.is_empty(), "{reply}");
        acked.push((subject, id));
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_bursts_loses_nothing_and_duplicates_only_what_it_logs() {
    let env = Env::with(Options::default()).await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut random = XorShift(seed);
    let mut acked: Vec<(String, String)> = Vec::new();
    let started = std::time::Instant::now();
    for round in 0..ROUNDS {
        let (mut child, addr) = start_relay(&env, round).await;
        let senders: Vec<_> = (0..CONNECTIONS)
            .map(|conn| tokio::spawn(sender(addr, round, conn, BURST / CONNECTIONS)))
            .collect();
        // Anywhere in the burst: before the first message, in the middle, or after it.
        let delay = Duration::from_millis(random.next() % 400);
        tokio::time::sleep(delay).await;
        child.start_kill().unwrap();
        let _ = child.wait().await;
        for task in senders {
            acked.extend(task.await.unwrap());
        }
    }
    println!("bursts done after {:?}", started.elapsed());
    // A last start delivers what is left; SIGTERM then ends it gracefully.
    let (mut child, _) = start_relay(&env, ROUNDS).await;
    let queue = env.path("spool/queue");
    let wanted: HashSet<&str> = acked.iter().map(|(subject, _)| subject.as_str()).collect();
    let delivered_subjects = || -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for message in env.gmail.messages() {
            let text = String::from_utf8_lossy(&message.data);
            if let Some(subject) = text.lines().find_map(|line| line.strip_prefix("Subject: ")) {
                *counts.entry(subject.to_string()).or_insert(0) += 1;
            }
        }
        counts
    };
    until(
        "every accepted message to be delivered",
        Duration::from_secs(120),
        || {
            let counts = delivered_subjects();
            // An .eml without its .json is an intake the kill cut before its commit:
            // never acknowledged, cleaned once a minute old.
            wanted.iter().all(|subject| counts.contains_key(*subject))
                && !files_in(&queue).iter().any(|name| name.ends_with(".json"))
        },
    )
    .await;
    println!("all delivered after {:?}", started.elapsed());
    let _ = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().unwrap().to_string())
        .status()
        .await;
    // SIGTERM: the relay stops accepting, lets deliveries finish and exits cleanly.
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the relay exits within its grace period after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");

    // SPOOL_CRASH_LOGS=dir keeps the relay's logs of a run for a look.
    if let Ok(keep) = std::env::var("SPOOL_CRASH_LOGS") {
        for round in 0..=ROUNDS {
            let name = format!("crash-{round}.log");
            let _ = std::fs::copy(env.path(&name), std::path::Path::new(&keep).join(name));
        }
    }
    // Which spool ids the relay said might be sent twice.
    let mut logged_duplicates = HashSet::new();
    for round in 0..=ROUNDS {
        let log =
            std::fs::read_to_string(env.path(&format!("crash-{round}.log"))).unwrap_or_default();
        for line in log
            .lines()
            .filter(|line| line.contains("possible_duplicate"))
        {
            if let Some(id) = line
                .split("spool_id=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
            {
                logged_duplicates.insert(id.to_string());
            }
        }
    }
    let counts = delivered_subjects();
    let mut duplicates = 0;
    for (subject, id) in &acked {
        let count = counts.get(subject).copied().unwrap_or(0);
        assert!(count >= 1, "accepted message {subject} ({id}) was lost");
        if count > 1 {
            duplicates += 1;
            assert!(
                logged_duplicates.contains(id),
                "{subject} ({id}) delivered {count} times without a possible_duplicate log line"
            );
        }
    }
    println!(
        "{} rounds, {} messages accepted, {} delivered in all, {} duplicates (logged), {} possible duplicates logged",
        ROUNDS,
        acked.len(),
        env.gmail.messages().len(),
        duplicates,
        logged_duplicates.len()
    );
    assert!(
        acked.len() > BURST,
        "the bursts got messages through: {}",
        acked.len()
    );
    // What a kill cut mid-intake stays in tmp/ until it is a minute old (a live intake
    // must not be cleaned away); none of it was ever acknowledged. (An .eml left in
    // queue/ without its .json is a removal cut after its commit, or one still running.)
    for name in files_in(&env.path("spool/tmp")) {
        assert!(
            !acked
                .iter()
                .any(|(_, id)| name == format!("{id}.eml") || name == format!("{id}.json")),
            "acknowledged message {name} only in tmp/"
        );
    }
    assert!(files_in(&env.path("spool/corrupt")).is_empty());
    env.stop().await;
}
