//! Memory under a login burst (issue 11 item 5, measured for `--targets`): N clients log in
//! to a fresh relay at the same moment (each a first login, so each needs an argon2id
//! check), send one 1 KB message and quit; the relay's VmHWM afterwards is the burst peak.
//! Then a steady load of 8 persistent clients × 10 KB runs long enough for the relay's idle
//! argon2 buffers to be freed (they outlive the last check by 30 s), and the relay's VmRSS
//! is sampled over the last seconds of it: memory returned, not kept.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Barrier;

use crate::client::{client, connect, wire_message, ClientStats, Plan};
use crate::procfs::{status_kib, RssSampler};
use crate::scenarios::Mode;
use crate::setup::Bench;
use crate::KIB;

pub(crate) struct Burst {
    pub(crate) logins: usize,
    pub(crate) login_failures: usize,
    pub(crate) first_error: Option<String>,
    /// How long the burst took (all logins and their one message each).
    pub(crate) burst_time: Duration,
    /// VmHWM right after the burst.
    pub(crate) hwm_kib: u64,
    /// Peak RssAnon during the burst (sampled every 5 ms): VmHWM without the executable's
    /// and libraries' file pages.
    pub(crate) anon_peak_kib: u64,
    /// RssFile right after the burst: the executable's and libraries' pages.
    pub(crate) file_kib: u64,
    /// VmRSS 2 s into the steady load (buffers not freed yet).
    pub(crate) early_rss_kib: u64,
    /// Peak VmRSS over the last `SAMPLE` of the steady load.
    pub(crate) steady_rss_kib: u64,
    pub(crate) steady: Duration,
    pub(crate) steady_messages: u64,
    pub(crate) steady_errors: u64,
}

/// The tail of the steady phase over which VmRSS is sampled.
const SAMPLE: Duration = Duration::from_secs(5);

impl Bench {
    /// `logins` simultaneous first logins, then `clients` × 10 KB for `steady` (≥ 10 s).
    pub(crate) async fn login_burst(
        &self,
        logins: usize,
        clients: usize,
        steady: Duration,
    ) -> Burst {
        let (gmail, stop_gmail) = self.start_gmail().await;
        let mut relay = self.spawn_relay(gmail.addr()).await;
        let plan = Arc::new(self.memory_plan(relay.addr));
        let gate = Arc::new(Barrier::new(logins));
        let anon = RssSampler::start_key(relay.pid, "RssAnon");
        let t0 = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..logins {
            let plan = plan.clone();
            let gate = gate.clone();
            set.spawn(async move {
                gate.wait().await;
                let mut conn = connect(&plan).await?;
                conn.send_message(&plan.warmup_message).await?;
                let _ = conn.quit().await;
                Ok::<_, String>(())
            });
        }
        let mut login_failures = 0;
        let mut first_error = None;
        while let Some(joined) = set.join_next().await {
            if let Err(err) = joined.expect("a burst client panicked") {
                login_failures += 1;
                first_error.get_or_insert(err);
            }
        }
        let burst_time = t0.elapsed();
        let hwm_kib = status_kib(relay.pid, "VmHWM").unwrap_or(0);
        let anon_peak_kib = anon.stop();
        let file_kib = status_kib(relay.pid, "RssFile").unwrap_or(0);

        let steady_plan = Arc::new(Plan {
            target: plan.target,
            addr: relay.addr,
            mode: Mode::Persistent,
            pipelining: false,
            warmup_message: wire_message(KIB),
            message: wire_message(10 * KIB),
            auth_plain: plan.auth_plain.clone(),
            xoauth2: String::new(),
            tls: self.direct_tls.clone(),
            duration: steady,
            max_messages: u64::MAX,
            started: AtomicU64::new(0),
            go: OnceLock::new(),
            warm: Barrier::new(clients + 1),
            start: Barrier::new(clients + 1),
            first_error: Mutex::new(None),
        });
        let mut load = tokio::task::JoinSet::new();
        for _ in 0..clients {
            load.spawn(client(steady_plan.clone()));
        }
        steady_plan.warm.wait().await;
        let _ = steady_plan.go.set(Instant::now());
        steady_plan.start.wait().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let early_rss_kib = status_kib(relay.pid, "VmRSS").unwrap_or(0);
        tokio::time::sleep(steady.saturating_sub(SAMPLE + Duration::from_secs(2))).await;
        let sampler = RssSampler::start(relay.pid);
        let mut stats = ClientStats::default();
        while let Some(joined) = load.join_next().await {
            stats.merge(joined.expect("a load client panicked"));
        }
        let steady_rss_kib = sampler.stop();
        relay.stop();
        stop_gmail.cancel();
        if first_error.is_none() {
            first_error = steady_plan
                .first_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
        }
        Burst {
            logins,
            login_failures,
            first_error,
            burst_time,
            hwm_kib,
            anon_peak_kib,
            file_kib,
            early_rss_kib,
            steady_rss_kib,
            steady,
            steady_messages: stats.messages,
            steady_errors: stats.errors,
        }
    }
}
