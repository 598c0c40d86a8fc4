//! The measured runs: one scenario against one target (warm-up, then the measured phase,
//! with /proc snapshots around it), a 50 MB message and 1000 idle sessions.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::net::TcpStream;
use tokio::sync::Barrier;

use smtp_oauth_relay::sandbox::gmail::xoauth2_response;

use crate::client::{client, connect, wire_message, ClientStats, Plan, Smtp};
use crate::procfs::{status_kib, RssSampler, Snapshot};
use crate::results::{BigMessage, IdleSessions, RunResult};
use crate::scenarios::{Mode, Scenario, Target};
use crate::setup::Bench;
use crate::{delay, EMAIL, KIB, PASSWORD, USER};

impl Bench {
    /// One scenario against one target: warm-up (one 1 KB message per client, not
    /// measured), then the measured phase.
    pub(crate) async fn run(&self, scenario: &Scenario, target: Target) -> RunResult {
        let (gmail, stop_gmail) = self.start_gmail().await;
        // With an RTT, the relay's upstream connections and the direct client both go
        // through the delay proxy; it stops with the fake Gmail.
        let upstream = if scenario.rtt.is_zero() {
            gmail.addr()
        } else {
            delay::start(
                &self.upstream_rt,
                gmail.addr(),
                scenario.rtt,
                stop_gmail.clone(),
            )
            .await
        };
        let mut relay = match target {
            Target::Relay => Some(self.spawn_relay(upstream).await),
            Target::Direct => None,
        };
        let plan = Arc::new(Plan {
            target,
            addr: relay.as_ref().map_or(upstream, |r| r.addr),
            mode: scenario.mode,
            pipelining: scenario.pipelining,
            warmup_message: wire_message(KIB),
            message: wire_message(scenario.size),
            auth_plain: base64::engine::general_purpose::STANDARD
                .encode(format!("\0{USER}\0{PASSWORD}")),
            xoauth2: xoauth2_response(EMAIL, &self.access_token),
            tls: self.direct_tls.clone(),
            duration: scenario.duration,
            max_messages: scenario.max_messages,
            started: AtomicU64::new(0),
            go: OnceLock::new(),
            warm: Barrier::new(scenario.clients + 1),
            start: Barrier::new(scenario.clients + 1),
            first_error: Mutex::new(None),
        });
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..scenario.clients {
            clients.spawn(client(plan.clone()));
        }
        plan.warm.wait().await;
        let relay_pid = relay.as_ref().map(|r| r.pid);
        if let (Some(pid), true) = (relay_pid, self.announce_pid) {
            // For `--profile-secs`: a profiler attaches to this pid now.
            eprintln!(
                "PROFILE relay pid {pid}: measured phase of {:?} starts",
                scenario.duration
            );
        }
        let before = Snapshot::take(relay_pid, self.clk_tck);
        let upstream_conns_before = gmail.connections();
        let t0 = Instant::now();
        let _ = plan.go.set(t0);
        plan.start.wait().await;
        let mut stats = ClientStats::default();
        while let Some(joined) = clients.join_next().await {
            stats.merge(joined.expect("a load client panicked"));
        }
        let elapsed = t0.elapsed();
        let after = Snapshot::take(relay_pid, self.clk_tck);
        let upstream_conns = gmail.connections() - upstream_conns_before;
        let relay_hwm_kib = relay_pid.and_then(|pid| status_kib(pid, "VmHWM"));
        let relay_rss_end_kib = after.relay_rss_kib;
        let relay_rss_start_kib = before.relay_rss_kib;
        if let Some(relay) = relay.as_mut() {
            relay.stop();
        }
        stop_gmail.cancel();
        stats.latencies.sort_unstable();
        let first_error = plan
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        RunResult {
            messages: stats.messages,
            errors: stats.errors,
            first_error,
            elapsed,
            latencies: stats.latencies,
            size: scenario.size,
            relay_cpu: match (before.relay_cpu, after.relay_cpu) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
            relay_hwm_kib,
            relay_rss_start_kib,
            relay_rss_end_kib,
            client_cpu: after.client_cpu.saturating_sub(before.client_cpu),
            upstream_cpu: after.upstream_cpu.saturating_sub(before.upstream_cpu),
            upstream_conns,
        }
    }

    /// A 50 MB message through a fresh relay after a 1 KB warm-up message on the same
    /// connection; the relay's RSS is sampled every 5 ms during the transfer.
    pub(crate) async fn big_message(&self, size: usize) -> BigMessage {
        let (gmail, stop_gmail) = self.start_gmail().await;
        let mut relay = self.spawn_relay(gmail.addr()).await;
        let plan = self.memory_plan(relay.addr);
        let message = wire_message(size);
        let mut conn = connect(&plan).await.expect("cannot log in to the relay");
        conn.send_message(&plan.warmup_message)
            .await
            .expect("the warm-up message failed");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_before = status_kib(relay.pid, "VmRSS").unwrap_or(0);
        let hwm_before = status_kib(relay.pid, "VmHWM").unwrap_or(0);
        let sampler = RssSampler::start(relay.pid);
        let t0 = Instant::now();
        let outcome = conn.send_message(&message).await;
        let elapsed = t0.elapsed();
        let rss_peak = sampler.stop().max(rss_before);
        let hwm_after = status_kib(relay.pid, "VmHWM").unwrap_or(0);
        let _ = conn.quit().await;
        relay.stop();
        stop_gmail.cancel();
        BigMessage {
            size,
            outcome: outcome.map(|_| ()),
            elapsed,
            rss_before,
            rss_peak,
            hwm_before,
            hwm_after,
        }
    }

    /// `n` connections to a fresh relay, each greeted and past EHLO, then held.
    pub(crate) async fn idle_sessions(&self, n: usize) -> IdleSessions {
        let (gmail, stop_gmail) = self.start_gmail().await;
        let mut relay = self.spawn_relay(gmail.addr()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_before = status_kib(relay.pid, "VmRSS").unwrap_or(0);
        let addr = relay.addr;
        let mut held = Vec::with_capacity(n);
        let mut failures = 0usize;
        let mut first_error = None;
        // In batches, so the listen backlog never overflows.
        for batch in (0..n).collect::<Vec<_>>().chunks(50) {
            let mut set = tokio::task::JoinSet::new();
            for _ in batch {
                set.spawn(async move {
                    let tcp = TcpStream::connect(addr)
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    let mut conn = Smtp::new(tcp);
                    conn.expect(220).await?;
                    conn.command("EHLO idle.loadbench", 250).await?;
                    Ok::<_, String>(conn)
                });
            }
            while let Some(joined) = set.join_next().await {
                match joined.expect("an idle client panicked") {
                    Ok(conn) => held.push(conn),
                    Err(err) => {
                        failures += 1;
                        first_error.get_or_insert(err);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_after = status_kib(relay.pid, "VmRSS").unwrap_or(0);
        let hwm = status_kib(relay.pid, "VmHWM").unwrap_or(0);
        let open = held.len();
        drop(held);
        relay.stop();
        stop_gmail.cancel();
        IdleSessions {
            requested: n,
            open,
            failures,
            first_error,
            rss_before,
            rss_after,
            hwm,
        }
    }

    pub(crate) fn memory_plan(&self, addr: SocketAddr) -> Plan {
        Plan {
            target: Target::Relay,
            addr,
            mode: Mode::Persistent,
            pipelining: false,
            warmup_message: wire_message(KIB),
            message: Vec::new(),
            auth_plain: base64::engine::general_purpose::STANDARD
                .encode(format!("\0{USER}\0{PASSWORD}")),
            xoauth2: String::new(),
            tls: self.direct_tls.clone(),
            duration: Duration::ZERO,
            max_messages: 0,
            started: AtomicU64::new(0),
            go: OnceLock::new(),
            warm: Barrier::new(1),
            start: Barrier::new(1),
            first_error: Mutex::new(None),
        }
    }
}
