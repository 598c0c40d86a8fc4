//! Native load benchmark of the relay (issue 6).
//!
//! In this one process: the fake token issuer and a fake Gmail (real STARTTLS, real XOAUTH2
//! check) from the library's sandbox, on their own tokio runtime ("bench-upstream" threads),
//! and a native SMTP load client on another ("bench-client" threads). The relay runs as a
//! separate child process, the release `smtp-oauth-relay` binary next to this one, with a
//! generated config, so its CPU time (`/proc/PID/stat`) and memory (`/proc/PID/status`) are
//! measured on their own. Every scenario runs twice: through the relay (plain SMTP + AUTH PLAIN
//! on loopback), and directly against the fake Gmail with the client doing STARTTLS and
//! AUTH XOAUTH2 itself (the reference). Each run gets a fresh fake Gmail (it keeps delivered
//! messages in memory) and a fresh relay process (so VmHWM is that run's peak).
//!
//! ```sh
//! cargo build --release --bins && cargo run --release --bin loadbench -- [--quick]
//! ```
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark tool: setup failures abort with a clear message

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Buf, BytesMut};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

use smtp_oauth_relay::sandbox::gmail::{xoauth2_response, FakeGmail, FakeGmailConfig};
use smtp_oauth_relay::sandbox::pki::TestPki;
use smtp_oauth_relay::sandbox::token_issuer::{AccessTokens, IssuerAccount, TokenIssuer};
use smtp_oauth_relay::secret::Secret;
use smtp_oauth_relay::smtp::reply::{parse_reply, Reply, ReplyParse};

const EMAIL: &str = "bench@example.com";
const RCPT: &str = "someone@example.org";
const USER: &str = "bench";
const PASSWORD: &str = "bench-password-1";
const CLIENT_ID: &str = "bench-client.apps.googleusercontent.com";
const CLIENT_SECRET: &str = "GOCSPX-bench-secret";
const REFRESH_TOKEN: &str = "1//0bench-refresh-token";
/// Messages per client connection before QUIT and a new connection, for relay and direct
/// alike: the relay's default `max_transactions`.
const REUSE_LIMIT: usize = 100;
/// Longest wait for any one reply; a stuck run fails instead of hanging.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// Thread name prefixes, to split this process's CPU time between the roles.
const CLIENT_THREADS: &str = "bench-client";
const UPSTREAM_THREADS: &str = "bench-upstream";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(bad) = args.iter().find(|a| *a != "--quick") {
        eprintln!("usage: loadbench [--quick]   (unknown argument {bad:?})");
        std::process::exit(2);
    }
    let command = format!(
        "cargo build --release --bins && cargo run --release --bin loadbench{}",
        if quick { " -- --quick" } else { "" }
    );
    println!("# smtp-oauth-relay load benchmark\n");
    println!("command: `{command}`");

    smtp_oauth_relay::tls::install_default_provider();
    let fd_note = ensure_fd_limit(4096);
    let upstream_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(UPSTREAM_THREADS)
        .enable_all()
        .build()
        .expect("cannot build the upstream runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()
        .expect("cannot build the client runtime");

    let bench = client_rt.block_on(Bench::setup(upstream_rt.handle().clone()));
    print_header(&bench, quick, &fd_note);

    let scenarios = if quick {
        quick_scenarios()
    } else {
        full_scenarios()
    };
    let mut rows = Vec::new();
    for scenario in &scenarios {
        eprintln!("running {} ...", scenario.name);
        let relay = client_rt.block_on(bench.run(scenario, Target::Relay));
        let direct = client_rt.block_on(bench.run(scenario, Target::Direct));
        rows.push((scenario, relay, direct));
    }
    eprintln!("running memory: one 50 MB message ...");
    let big = client_rt.block_on(bench.big_message(50_000_000));
    let idle_sessions = 1000;
    eprintln!("running memory: {idle_sessions} idle sessions ...");
    let idle = client_rt.block_on(bench.idle_sessions(idle_sessions));

    print_results(&rows, &big, &idle);
    client_rt.block_on(async { bench.shutdown.cancel() });
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Relay,
    Direct,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Many messages per connection (up to [`REUSE_LIMIT`]).
    Persistent,
    /// One message per connection, as printers and cron jobs send.
    PerConnection,
}

struct Scenario {
    name: String,
    clients: usize,
    size: usize,
    mode: Mode,
    /// The measured phase ends at this time or after `max_messages`, whichever comes first.
    duration: Duration,
    max_messages: u64,
}

impl Scenario {
    fn timed(clients: usize, size: usize, mode: Mode, secs: f64) -> Scenario {
        Scenario {
            name: scenario_name(clients, size, mode),
            clients,
            size,
            mode,
            duration: Duration::from_secs_f64(secs),
            max_messages: u64::MAX,
        }
    }

    fn counted(clients: usize, size: usize, messages: u64) -> Scenario {
        Scenario {
            name: scenario_name(clients, size, Mode::Persistent),
            clients,
            size,
            mode: Mode::Persistent,
            duration: Duration::from_secs(120),
            max_messages: messages,
        }
    }
}

fn scenario_name(clients: usize, size: usize, mode: Mode) -> String {
    let mode = match mode {
        Mode::Persistent => "",
        Mode::PerConnection => ", 1 msg/conn",
    };
    format!("{clients} cl × {}{mode}", human_size(size))
}

fn human_size(size: usize) -> String {
    if size >= MIB && size.is_multiple_of(MIB) {
        format!("{} MB", size / MIB)
    } else if size >= KIB && size.is_multiple_of(KIB) {
        format!("{} KB", size / KIB)
    } else {
        format!("{size} B")
    }
}

fn full_scenarios() -> Vec<Scenario> {
    let mut list = Vec::new();
    for clients in [1, 8, 64] {
        list.push(Scenario::timed(clients, KIB, Mode::Persistent, 5.0));
        list.push(Scenario::timed(clients, 100 * KIB, Mode::Persistent, 5.0));
        let count = match clients {
            1 => 8,
            8 => 24,
            _ => 64,
        };
        list.push(Scenario::counted(clients, 10 * MIB, count));
    }
    list.push(Scenario::timed(8, 10 * KIB, Mode::Persistent, 5.0));
    list.push(Scenario::timed(8, MIB, Mode::Persistent, 4.0));
    list.push(Scenario::timed(8, 10 * KIB, Mode::PerConnection, 5.0));
    list
}

fn quick_scenarios() -> Vec<Scenario> {
    vec![
        Scenario::timed(1, 100 * KIB, Mode::Persistent, 1.0),
        Scenario::timed(8, 10 * KIB, Mode::Persistent, 2.0),
        Scenario::timed(8, MIB, Mode::Persistent, 2.0),
        Scenario::timed(8, 10 * KIB, Mode::PerConnection, 2.0),
    ]
}

// ---------------------------------------------------------------------------------------
// The shared setup: PKI, token issuer, relay config pieces
// ---------------------------------------------------------------------------------------

struct Bench {
    upstream_rt: tokio::runtime::Handle,
    shutdown: CancellationToken,
    pki: TestPki,
    tokens: AccessTokens,
    issuer: TokenIssuer,
    dir: ScratchDir,
    relay_exe: PathBuf,
    password_hash: String,
    /// For the direct runs, fetched from the fake issuer once.
    access_token: String,
    direct_tls: tokio_rustls::TlsConnector,
    clk_tck: u64,
    /// Relay runs so far, to name each run's config and log file.
    run_no: AtomicU64,
}

impl Bench {
    async fn setup(upstream_rt: tokio::runtime::Handle) -> Bench {
        let relay_exe = std::env::current_exe()
            .expect("cannot find this program's path")
            .with_file_name("smtp-oauth-relay");
        if !relay_exe.is_file() {
            eprintln!(
                "error: {} not found; build it first: cargo build --release --bins",
                relay_exe.display()
            );
            std::process::exit(1);
        }
        let shutdown = CancellationToken::new();
        let pki = TestPki::generate(&["localhost", "127.0.0.1"]).expect("cannot generate the PKI");
        let tokens = AccessTokens::new();
        let issuer = {
            let tokens = tokens.clone();
            let shutdown = shutdown.clone();
            upstream_rt
                .spawn(async move {
                    let listener = TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("cannot bind the token issuer");
                    TokenIssuer::start(
                        listener,
                        vec![IssuerAccount {
                            client_id: CLIENT_ID.into(),
                            client_secret: CLIENT_SECRET.into(),
                            refresh_token: REFRESH_TOKEN.into(),
                            email: EMAIL.into(),
                        }],
                        tokens,
                        shutdown,
                    )
                    .await
                    .expect("cannot start the token issuer")
                })
                .await
                .expect("token issuer setup panicked")
        };
        let dir = ScratchDir::create();
        std::fs::write(dir.path().join("ca.pem"), &pki.ca_cert_pem).expect("cannot write ca.pem");
        let password_hash = smtp_oauth_relay::auth::hash_password(&Secret::new(PASSWORD))
            .expect("cannot hash the password");
        let access_token = fetch_token(&issuer.token_url()).await;
        let direct_tls =
            tokio_rustls::TlsConnector::from(pki.client_config().expect("client TLS config"));
        Bench {
            upstream_rt,
            shutdown,
            pki,
            tokens,
            issuer,
            dir,
            relay_exe,
            password_hash,
            access_token,
            direct_tls,
            clk_tck: clock_ticks(),
            run_no: AtomicU64::new(0),
        }
    }

    /// A fresh fake Gmail on the upstream runtime, stopped by the returned token.
    async fn start_gmail(&self) -> (FakeGmail, CancellationToken) {
        let stop = self.shutdown.child_token();
        let config = FakeGmailConfig::new(
            self.pki.server_config().expect("server TLS config"),
            self.tokens.clone(),
        );
        let token = stop.clone();
        let gmail = self
            .upstream_rt
            .spawn(async move {
                let listener = TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("cannot bind the fake Gmail");
                FakeGmail::start(listener, config, token)
                    .await
                    .expect("cannot start the fake Gmail")
            })
            .await
            .expect("fake Gmail setup panicked");
        (gmail, stop)
    }

    /// The relay config for an upstream at `upstream`, listening on `listen`. No [pool]
    /// table: the relay runs with the repo's defaults there.
    fn relay_config(&self, listen: SocketAddr, upstream: SocketAddr) -> String {
        format!(
            r#"[server]
listen = "{listen}"
hostname = "relay.loadbench"

[limits]
max_connections = 1000
max_connections_per_ip = 1000
max_message_size = {max_size}

[[user]]
name = "{USER}"
password_hash = "{hash}"
assets = ["bench"]

[[asset]]
name = "bench"
email = "{EMAIL}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
refresh_token = "{REFRESH_TOKEN}"
senders = ["{EMAIL}"]
upstream = "{upstream}"
upstream_tls = "starttls"
upstream_ca = "{ca}"
token_url = "{token_url}"
"#,
            max_size = 64 * MIB,
            hash = self.password_hash,
            ca = self.dir.path().join("ca.pem").display(),
            token_url = self.issuer.token_url(),
        )
    }

    /// The pool settings the relay runs with, as its own config parser reads the generated
    /// config (so the defaults of whatever this build is).
    fn pool_settings(&self) -> String {
        let probe: SocketAddr = "127.0.0.1:1".parse().expect("literal address");
        let text = self.relay_config(probe, probe);
        let path = self.dir.path().join("probe.toml");
        match smtp_oauth_relay::config::parse(&text, &path) {
            Ok(config) => {
                let debug = format!("{config:?}");
                let found = debug_fields(&debug, "pool");
                if found.is_empty() {
                    "none (this build's config has no pool settings)".to_string()
                } else {
                    found.join("; ")
                }
            }
            Err(err) => format!("unknown: the generated config does not parse: {err}"),
        }
    }

    async fn spawn_relay(&self, upstream: SocketAddr) -> RelayProcess {
        let n = self.run_no.fetch_add(1, Ordering::Relaxed);
        let listen = free_port().await;
        let config = self.dir.path().join(format!("relay-{n}.toml"));
        std::fs::write(&config, self.relay_config(listen, upstream))
            .expect("cannot write the relay config");
        let log_path = self.dir.path().join(format!("relay-{n}.log"));
        let log = std::fs::File::create(&log_path).expect("cannot create the relay log");
        let child = Command::new(&self.relay_exe)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env_remove("SMTP_OAUTH_RELAY_CONFIG")
            .env_remove("SMTP_OAUTH_RELAY_LISTEN")
            .env_remove("SMTP_OAUTH_RELAY_ADMIN_LISTEN")
            .env_remove("SMTP_OAUTH_RELAY_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot share the log file"))
            .stderr(log)
            .spawn()
            .expect("cannot start the relay");
        let mut relay = RelayProcess {
            pid: child.id(),
            child,
            addr: listen,
            log: log_path,
        };
        relay.wait_ready().await;
        relay
    }

    /// One scenario against one target: warm-up (one 1 KB message per client, not
    /// measured), then the measured phase.
    async fn run(&self, scenario: &Scenario, target: Target) -> RunResult {
        let (gmail, stop_gmail) = self.start_gmail().await;
        let mut relay = match target {
            Target::Relay => Some(self.spawn_relay(gmail.addr()).await),
            Target::Direct => None,
        };
        let plan = Arc::new(Plan {
            target,
            addr: relay.as_ref().map_or(gmail.addr(), |r| r.addr),
            mode: scenario.mode,
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
    async fn big_message(&self, size: usize) -> BigMessage {
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
    async fn idle_sessions(&self, n: usize) -> IdleSessions {
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

    fn memory_plan(&self, addr: SocketAddr) -> Plan {
        Plan {
            target: Target::Relay,
            addr,
            mode: Mode::Persistent,
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

/// A private directory under the system temp dir for configs and relay logs, removed on drop.
/// (`tempfile` is only a dev-dependency, so not available to binaries.)
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> ScratchDir {
        use std::os::unix::fs::DirBuilderExt as _;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("loadbench-{}-{nanos:09}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .expect("cannot create a scratch directory");
        ScratchDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Gets an access token from the fake issuer with the refresh-token grant, as the relay does.
async fn fetch_token(token_url: &str) -> String {
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    let response = reqwest::Client::new()
        .post(token_url)
        .header("authorization", format!("Basic {basic}"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", REFRESH_TOKEN),
        ])
        .send()
        .await
        .expect("token request failed");
    let body = response.text().await.expect("token response unreadable");
    let json: serde_json::Value = serde_json::from_str(&body).expect("token response is not JSON");
    json["access_token"]
        .as_str()
        .expect("token response has no access_token")
        .to_owned()
}

async fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("cannot find a free port");
    listener.local_addr().expect("listener address")
}

/// The `field: Value { ... }` parts of a Debug rendering whose name contains `name`.
fn debug_fields(debug: &str, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(pos) = debug[from..].find(name) {
        let start = from + pos;
        let mut depth = 0i32;
        let mut end = debug.len();
        for (i, ch) in debug[start..].char_indices() {
            match ch {
                '{' | '[' | '(' => depth += 1,
                '}' | ']' | ')' if depth == 0 => {
                    end = start + i;
                    break;
                }
                '}' | ']' | ')' => depth -= 1,
                ',' if depth == 0 => {
                    end = start + i;
                    break;
                }
                _ => {}
            }
        }
        found.push(debug[start..end].trim().to_string());
        from = end.max(start + name.len());
    }
    found
}

// ---------------------------------------------------------------------------------------
// The relay child process
// ---------------------------------------------------------------------------------------

struct RelayProcess {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    log: PathBuf,
}

impl RelayProcess {
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the relay exited during startup ({status}); its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(tcp) = TcpStream::connect(self.addr).await {
                // Read the greeting so the probe is a complete (if short) session.
                let mut conn = Smtp::new(tcp);
                if conn.expect(220).await.is_ok() {
                    let _ = conn.quit().await;
                    // Let the relay release the probe's connection slot.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the relay did not accept connections within 15 s; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------
// /proc measurements
// ---------------------------------------------------------------------------------------

/// CPU and memory at one moment: the relay process's, and this process's split by thread
/// role (load client, fake upstream + issuer).
struct Snapshot {
    relay_cpu: Option<Duration>,
    relay_rss_kib: Option<u64>,
    client_cpu: Duration,
    upstream_cpu: Duration,
}

impl Snapshot {
    fn take(relay: Option<u32>, clk_tck: u64) -> Snapshot {
        let ticks = |t: u64| Duration::from_nanos(t.saturating_mul(1_000_000_000) / clk_tck);
        let relay_cpu = relay
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .and_then(|stat| stat_cpu_ticks(&stat))
            .map(|(_, t)| ticks(t));
        let mut client = 0u64;
        let mut upstream = 0u64;
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                    continue;
                };
                if let Some((comm, t)) = stat_cpu_ticks(&stat) {
                    if comm.starts_with(CLIENT_THREADS) {
                        client += t;
                    } else if comm.starts_with(UPSTREAM_THREADS) {
                        upstream += t;
                    }
                }
            }
        }
        Snapshot {
            relay_cpu,
            relay_rss_kib: relay.and_then(|pid| status_kib(pid, "VmRSS")),
            client_cpu: ticks(client),
            upstream_cpu: ticks(upstream),
        }
    }
}

/// (comm, utime + stime in clock ticks) from a `/proc/.../stat` line.
fn stat_cpu_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    // After "pid (comm) ": state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// A `kB` line of `/proc/PID/status` (VmRSS, VmHWM), in KiB.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Samples a process's VmRSS every 5 ms on its own thread until stopped; returns the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-sampler".into())
            .spawn(move || {
                let mut peak = 0;
                while !flag.load(Ordering::Relaxed) {
                    peak = peak.max(status_kib(pid, "VmRSS").unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(5));
                }
                peak.max(status_kib(pid, "VmRSS").unwrap_or(0))
            })
            .expect("cannot start the RSS sampler");
        RssSampler { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// Makes sure this process (and so the relay it starts) may open `want` descriptors: the
/// idle-session test holds 1000 connections on each side. Raises the soft limit with the
/// `prlimit` command when needed (no unsafe code here). Returns a note for the header.
fn ensure_fd_limit(want: u64) -> String {
    let read = || -> Option<(u64, String)> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        let mut words = line["Max open files".len()..].split_whitespace();
        let soft = words.next()?;
        let hard = words.next()?.to_string();
        Some((soft.parse().unwrap_or(u64::MAX), hard))
    };
    let Some((soft, hard)) = read() else {
        return "fd limit: unknown (no /proc/self/limits)".to_string();
    };
    if soft >= want {
        return format!("fd limit (RLIMIT_NOFILE, inherited by the relay): {soft}");
    }
    let target = match hard.parse::<u64>() {
        Ok(hard) => want.min(hard),
        Err(_) => want, // "unlimited"
    };
    let raised = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={target}:{hard}"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    match read() {
        Some((now, _)) if raised && now >= want => {
            format!("fd limit (RLIMIT_NOFILE, inherited by the relay): {now}, raised from {soft} with prlimit")
        }
        Some((now, _)) => format!(
            "fd limit (RLIMIT_NOFILE): {now}, below {want}; run `ulimit -n {want}` first, or the \
             idle-session test fails"
        ),
        None => "fd limit: unknown".to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// The load client
// ---------------------------------------------------------------------------------------

/// What all clients of one run share.
struct Plan {
    target: Target,
    addr: SocketAddr,
    mode: Mode,
    warmup_message: Vec<u8>,
    message: Vec<u8>,
    auth_plain: String,
    xoauth2: String,
    tls: tokio_rustls::TlsConnector,
    duration: Duration,
    max_messages: u64,
    /// Messages begun in the measured phase.
    started: AtomicU64,
    /// When the measured phase started.
    go: OnceLock<Instant>,
    /// Clients + the coordinator: every client finished its warm-up.
    warm: Barrier,
    /// Clients + the coordinator: the measured phase begins.
    start: Barrier,
    first_error: Mutex<Option<String>>,
}

impl Plan {
    /// Whether the client may begin another message in the measured phase.
    fn claim(&self) -> bool {
        let in_time = self.go.get().is_some_and(|go| go.elapsed() < self.duration);
        in_time && self.started.fetch_add(1, Ordering::Relaxed) < self.max_messages
    }

    fn error(&self, stats: &mut ClientStats, err: String) {
        stats.errors += 1;
        self.first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(err);
    }
}

#[derive(Default)]
struct ClientStats {
    messages: u64,
    errors: u64,
    latencies: Vec<Duration>,
}

impl ClientStats {
    fn merge(&mut self, other: ClientStats) {
        self.messages += other.messages;
        self.errors += other.errors;
        self.latencies.extend(other.latencies);
    }
}

/// One load client: a warm-up message, then messages until the plan says stop.
async fn client(plan: Arc<Plan>) -> ClientStats {
    let mut stats = ClientStats::default();
    let mut conn = match connect(&plan).await {
        Ok(mut conn) => match conn.send_message(&plan.warmup_message).await {
            Ok(_) if plan.mode == Mode::Persistent => Some(conn),
            Ok(_) => {
                let _ = conn.quit().await;
                None
            }
            Err(err) => {
                plan.error(&mut stats, format!("warm-up: {err}"));
                None
            }
        },
        Err(err) => {
            plan.error(&mut stats, format!("warm-up: {err}"));
            None
        }
    };
    plan.warm.wait().await;
    plan.start.wait().await;
    // Messages sent on `conn` so far (the warm-up counts, as the relay counts it).
    let mut on_conn = usize::from(conn.is_some());
    while plan.claim() {
        let began = Instant::now();
        let mut current = match conn.take() {
            Some(current) if on_conn < REUSE_LIMIT => current,
            old => {
                if let Some(mut old) = old {
                    let _ = old.quit().await;
                }
                on_conn = 0;
                match connect(&plan).await {
                    Ok(fresh) => fresh,
                    Err(err) => {
                        plan.error(&mut stats, err);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
            }
        };
        match current.send_message(&plan.message).await {
            Ok(latency) => {
                stats.messages += 1;
                // One message per connection: the sender waits for the whole session.
                stats.latencies.push(match plan.mode {
                    Mode::Persistent => latency,
                    Mode::PerConnection => began.elapsed(),
                });
                on_conn += 1;
                match plan.mode {
                    Mode::Persistent => conn = Some(current),
                    Mode::PerConnection => {
                        let _ = current.quit().await;
                    }
                }
            }
            Err(err) => plan.error(&mut stats, err),
        }
    }
    if let Some(mut conn) = conn {
        let _ = conn.quit().await;
    }
    stats
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Connects and logs in: to the relay with AUTH PLAIN on plain loopback SMTP, or directly
/// to the fake Gmail with STARTTLS and AUTH XOAUTH2.
async fn connect(plan: &Plan) -> Result<Smtp<Box<dyn Io>>, String> {
    let tcp = TcpStream::connect(plan.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let mut conn = Smtp::new(tcp);
    conn.expect(220).await?;
    conn.command("EHLO loadbench.local", 250).await?;
    match plan.target {
        Target::Relay => {
            let mut conn = conn.boxed();
            conn.command(&format!("AUTH PLAIN {}", plan.auth_plain), 235)
                .await?;
            Ok(conn)
        }
        Target::Direct => {
            conn.command("STARTTLS", 220).await?;
            if !conn.buf.is_empty() {
                return Err("bytes after the STARTTLS reply".into());
            }
            let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let tls = plan
                .tls
                .connect(name, conn.io)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            let mut conn = Smtp::new(Box::new(tls) as Box<dyn Io>);
            conn.command("EHLO loadbench.local", 250).await?;
            conn.command(&format!("AUTH XOAUTH2 {}", plan.xoauth2), 235)
                .await?;
            Ok(conn)
        }
    }
}

/// A minimal SMTP client connection: one command, one reply, no pipelining (as printers,
/// scanners and most small mailers send).
struct Smtp<S> {
    io: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Smtp<S> {
    fn new(io: S) -> Smtp<S> {
        Smtp {
            io,
            buf: BytesMut::with_capacity(4096),
        }
    }

    fn boxed(self) -> Smtp<Box<dyn Io>> {
        Smtp {
            io: Box::new(self.io),
            buf: self.buf,
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, String> {
        loop {
            match parse_reply(&self.buf, 4096, 100) {
                Ok(ReplyParse::Complete { reply, consumed }) => {
                    self.buf.advance(consumed);
                    return Ok(reply);
                }
                Ok(ReplyParse::Incomplete) => {}
                Err(err) => return Err(format!("bad reply: {err}")),
            }
            self.buf.reserve(4096);
            match tokio::time::timeout(REPLY_TIMEOUT, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) => return Err("connection closed by the server".into()),
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(format!("read: {err}")),
                Err(_) => return Err("timed out waiting for a reply".into()),
            }
        }
    }

    async fn expect(&mut self, code: u16) -> Result<Reply, String> {
        let reply = self.read_reply().await?;
        if reply.code == code {
            Ok(reply)
        } else {
            Err(format!("expected {code}, got: {reply}"))
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.io
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.io.flush().await.map_err(|e| format!("flush: {e}"))
    }

    async fn command(&mut self, line: &str, code: u16) -> Result<Reply, String> {
        let mut wire = Vec::with_capacity(line.len() + 2);
        wire.extend_from_slice(line.as_bytes());
        wire.extend_from_slice(b"\r\n");
        self.write(&wire).await?;
        self.expect(code).await
    }

    /// One transaction; returns the time from MAIL to the final 250.
    async fn send_message(&mut self, wire_message: &[u8]) -> Result<Duration, String> {
        let t0 = Instant::now();
        self.command(&format!("MAIL FROM:<{EMAIL}>"), 250).await?;
        self.command(&format!("RCPT TO:<{RCPT}>"), 250).await?;
        self.command("DATA", 354).await?;
        self.write(wire_message).await?;
        self.expect(250).await?;
        Ok(t0.elapsed())
    }

    async fn quit(&mut self) -> Result<(), String> {
        let _ = self.command("QUIT", 221).await;
        self.io
            .shutdown()
            .await
            .map_err(|e| format!("shutdown: {e}"))
    }
}

/// A message of `size` content bytes in DATA wire form (76-character lines, none starting
/// with '.'), followed by the terminator.
fn wire_message(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 8);
    let _ = write!(
        Text(&mut out),
        "From: <{EMAIL}>\r\nTo: <{RCPT}>\r\nSubject: loadbench {}\r\n\
         Message-ID: <loadbench-{size}@example.com>\r\n\r\n",
        human_size(size)
    );
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut line = 0usize;
    while out.len() < size {
        let len = (size - out.len()).saturating_sub(2).min(76);
        out.extend((0..len).map(|i| alphabet[(line + i) % alphabet.len()]));
        out.extend_from_slice(b"\r\n");
        line += 1;
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// `fmt::Write` into a byte buffer.
struct Text<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

struct RunResult {
    messages: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    /// Sorted.
    latencies: Vec<Duration>,
    size: usize,
    relay_cpu: Option<Duration>,
    relay_hwm_kib: Option<u64>,
    relay_rss_start_kib: Option<u64>,
    relay_rss_end_kib: Option<u64>,
    client_cpu: Duration,
    upstream_cpu: Duration,
    upstream_conns: usize,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn mb_per_sec(&self) -> f64 {
        self.rate() * self.size as f64 / 1e6
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies.len()) - 1;
        self.latencies[index].as_secs_f64() * 1e3
    }

    fn per_message_ms(&self, cpu: Duration) -> f64 {
        if self.messages == 0 {
            return f64::NAN;
        }
        cpu.as_secs_f64() * 1e3 / self.messages as f64
    }

    fn relay_cpu_ms(&self) -> f64 {
        self.relay_cpu.map_or(f64::NAN, |c| self.per_message_ms(c))
    }

    fn client_cpu_ms(&self) -> f64 {
        self.per_message_ms(self.client_cpu)
    }

    fn upstream_cpu_ms(&self) -> f64 {
        self.per_message_ms(self.upstream_cpu)
    }
}

struct BigMessage {
    size: usize,
    outcome: Result<(), String>,
    elapsed: Duration,
    rss_before: u64,
    rss_peak: u64,
    hwm_before: u64,
    hwm_after: u64,
}

struct IdleSessions {
    requested: usize,
    open: usize,
    failures: usize,
    first_error: Option<String>,
    rss_before: u64,
    rss_after: u64,
    hwm: u64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_header(bench: &Bench, quick: bool, fd_note: &str) {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let git = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("mode: {}", if quick { "quick" } else { "full" });
    println!("date: {date}; commit: {git}");
    println!("machine: {cores} cores, {cpu_model}");
    println!(
        "relay: {} (pid per run, default RUST_LOG=info, log to a file)",
        bench.relay_exe.display()
    );
    warn_if_stale(&bench.relay_exe);
    println!("relay pool settings (its own parser on the generated config, no [pool] table = defaults): {}", bench.pool_settings());
    println!("{fd_note}");
    println!(
        "client: native tokio + rustls, 1 command at a time (no pipelining), reconnects every \
         {REUSE_LIMIT} messages; relay clients: plain SMTP + AUTH PLAIN on loopback; direct \
         clients: STARTTLS + AUTH XOAUTH2 (token fetched once)"
    );
    println!();
}

/// `cargo run --bin loadbench` rebuilds the library and this binary, not the relay binary:
/// warn when the relay binary is older than the newest build of the library.
fn warn_if_stale(relay: &Path) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(relay_time) = modified(relay) else {
        return;
    };
    let newest_lib = relay
        .parent()
        .map(|dir| dir.join("deps"))
        .and_then(|deps| std::fs::read_dir(deps).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libsmtp_oauth_relay-") && name.ends_with(".rlib")
        })
        .filter_map(|entry| modified(&entry.path()))
        .max();
    if let Some(lib_time) = newest_lib {
        if relay_time + Duration::from_secs(2) < lib_time {
            println!(
                "WARNING: the relay binary is older than the library it should contain; run \
                 `cargo build --release --bins` so it has the current code"
            );
        }
    }
}

fn print_results(
    rows: &[(&Scenario, RunResult, RunResult)],
    big: &BigMessage,
    idle: &IdleSessions,
) {
    println!("## Throughput and latency (relay vs direct)\n");
    println!(
        "| scenario | msgs/s relay | msgs/s direct | ratio | p50/p99 ms relay | p50/p99 ms direct \
         | relay CPU ms/msg | direct client CPU ms/msg | relay peak RSS MiB | errors r/d |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (scenario, relay, direct) in rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.3} | {:.3} | {:.1} | {}/{} |",
            scenario.name,
            relay.rate(),
            direct.rate(),
            relay.rate() / direct.rate(),
            relay.percentile_ms(50.0),
            relay.percentile_ms(99.0),
            direct.percentile_ms(50.0),
            direct.percentile_ms(99.0),
            relay.relay_cpu_ms(),
            direct.client_cpu_ms(),
            relay.relay_hwm_kib.map_or(f64::NAN, mib),
            relay.errors,
            direct.errors,
        );
    }
    println!(
        "\nrelay CPU = utime+stime of the relay process (/proc/PID/stat) during the measured \
         phase / messages. direct client CPU = CPU of this process's load-client threads during \
         the direct run / messages: its SMTP, TLS (handshakes included) and XOAUTH2, not the \
         fake Gmail's threads. Peak RSS = the relay's VmHWM at the end of the run (fresh process \
         per run: startup, warm-up and the measured phase).\n"
    );

    println!("## Details\n");
    println!(
        "| scenario | MB/s relay | MB/s direct | msgs relay/direct | client CPU ms/msg relay run \
         | fake Gmail CPU ms/msg relay/direct | upstream conns/msg relay | relay RSS start/end MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (scenario, relay, direct) in rows {
        println!(
            "| {} | {:.1} | {:.1} | {}/{} | {:.3} | {:.3} / {:.3} | {:.3} | {:.1} / {:.1} |",
            scenario.name,
            relay.mb_per_sec(),
            direct.mb_per_sec(),
            relay.messages,
            direct.messages,
            relay.client_cpu_ms(),
            relay.upstream_cpu_ms(),
            direct.upstream_cpu_ms(),
            relay.upstream_conns as f64 / (relay.messages.max(1)) as f64,
            relay.relay_rss_start_kib.map_or(f64::NAN, mib),
            relay.relay_rss_end_kib.map_or(f64::NAN, mib),
        );
    }
    let errors: Vec<String> = rows
        .iter()
        .flat_map(|(s, r, d)| {
            [("relay", r), ("direct", d)]
                .into_iter()
                .filter_map(move |(who, run)| {
                    run.first_error
                        .as_ref()
                        .map(|e| format!("- {} ({who}): {} errors, first: {e}", s.name, run.errors))
                })
        })
        .collect();
    if !errors.is_empty() {
        println!("\nErrors:\n{}", errors.join("\n"));
    }

    println!("\n## Memory\n");
    let big_delta = big.rss_peak.saturating_sub(big.rss_before);
    match &big.outcome {
        Ok(()) => println!(
            "- one {} MB message through the relay: accepted in {:.2} s; relay RSS {:.1} MiB \
             before, {:.1} MiB peak (sampled every 5 ms) → +{:.1} MiB; VmHWM {:.1} → {:.1} MiB",
            big.size / 1_000_000,
            big.elapsed.as_secs_f64(),
            mib(big.rss_before),
            mib(big.rss_peak),
            mib(big_delta),
            mib(big.hwm_before),
            mib(big.hwm_after),
        ),
        Err(err) => println!(
            "- one {} MB message through the relay: FAILED: {err}",
            big.size / 1_000_000
        ),
    }
    let idle_delta = idle.rss_after.saturating_sub(idle.rss_before);
    println!(
        "- {} idle sessions (connected, greeted, EHLO, held): {} open, {} failed; relay RSS \
         {:.1} MiB before, {:.1} MiB with them open → +{:.1} MiB ({:.1} KiB per session); \
         VmHWM {:.1} MiB",
        idle.requested,
        idle.open,
        idle.failures,
        mib(idle.rss_before),
        mib(idle.rss_after),
        mib(idle_delta),
        idle_delta as f64 / idle.open.max(1) as f64,
        mib(idle.hwm),
    );
    if let Some(err) = &idle.first_error {
        println!("  first failure: {err}");
    }

    println!("\n## Targets of issue 6\n");
    let find = |clients: usize, size: usize, mode: Mode| {
        rows.iter()
            .find(|(s, _, _)| s.clients == clients && s.size == size && s.mode == mode)
    };
    let verdict = |ok: bool| if ok { "MET" } else { "NOT MET" };
    let cpu_rows: Vec<String> = rows
        .iter()
        .map(|(s, r, d)| {
            format!(
                "{} {:.3} vs {:.3} {}",
                s.name,
                r.relay_cpu_ms(),
                d.client_cpu_ms(),
                if r.relay_cpu_ms() <= d.client_cpu_ms() {
                    "ok"
                } else {
                    "over"
                }
            )
        })
        .collect();
    let cpu_met = rows
        .iter()
        .filter(|(_, r, d)| r.relay_cpu_ms() <= d.client_cpu_ms())
        .count();
    println!(
        "- relay CPU/msg ≤ direct client CPU/msg: {} in {cpu_met} of {} scenarios ({})",
        verdict(cpu_met == rows.len()),
        rows.len(),
        cpu_rows.join("; ")
    );
    for size in [10 * KIB, MIB] {
        if let Some((s, r, d)) = find(8, size, Mode::Persistent) {
            let ratio = r.rate() / d.rate();
            println!(
                "- throughput ≥ 0.6 × direct at {}: {} ({ratio:.2})",
                s.name,
                verdict(ratio >= 0.6)
            );
        }
    }
    if let Some((s, r, d)) = find(8, 10 * KIB, Mode::PerConnection) {
        let ratio = r.rate() / d.rate();
        println!(
            "- one message per connection, relay ≥ 1.5 × direct at {}: {} ({ratio:.2})",
            s.name,
            verdict(ratio >= 1.5)
        );
    }
    let peak_8 = rows
        .iter()
        .filter(|(s, _, _)| s.clients == 8)
        .filter_map(|(_, r, _)| r.relay_hwm_kib)
        .max();
    if let Some(peak) = peak_8 {
        println!(
            "- peak RSS ≤ 15 MiB under the 8-client load: {} (highest VmHWM of the 8-client runs: {:.1} MiB)",
            verdict(mib(peak) <= 15.0),
            mib(peak)
        );
    }
    println!(
        "- a 50 MB message adds < 5 MiB: {} (+{:.1} MiB)",
        verdict(big.outcome.is_ok() && mib(big_delta) < 5.0),
        mib(big_delta)
    );
    println!(
        "- 1000 idle sessions < 50 MiB: {} (+{:.1} MiB for {} sessions)",
        verdict(idle.open == idle.requested && mib(idle_delta) < 50.0),
        mib(idle_delta),
        idle.open
    );
}
