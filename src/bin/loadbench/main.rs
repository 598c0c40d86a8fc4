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
//!     [--upstream-rtt-ms N] [--client-pipelining]
//! target/release/loadbench --targets [--repeat N]     # issue 11's target table
//! target/release/loadbench --profile-secs S           # hold 8 × 10 KB through the relay
//! ```
//!
//! `main` runs the list: `scenarios` (what is measured), `setup` (issuer, PKI, relay config),
//! `runs` (one measured run, the memory tests), `relay_process`, `procfs` (CPU and memory),
//! `client` (the SMTP load client), `results` and `report` (the Markdown tables).
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark tool: setup failures abort with a clear message

mod burst;
mod client;
mod delay;
mod procfs;
mod relay_process;
mod report;
mod results;
mod runs;
mod scenarios;
mod setup;
mod targets;

use std::time::Duration;

use procfs::ensure_fd_limit;
use report::{print_header, print_results};
use scenarios::{full_scenarios, quick_scenarios, Mode, Scenario, Target};
use setup::Bench;

const EMAIL: &str = "bench@example.com";
const RCPT: &str = "someone@example.org";
const USER: &str = "bench";
const PASSWORD: &str = "bench-password-1";
const CLIENT_ID: &str = "bench-client.apps.googleusercontent.com";
const CLIENT_SECRET: &str = "GOCSPX-bench-secret";
const REFRESH_TOKEN: &str = "1//0bench-refresh-token";
/// Messages per client connection before QUIT and a new connection, for relay and direct
/// alike. The relay itself no longer limits messages per connection by default
/// (`max_transactions = 0`); 100 is its former default, kept so runs stay comparable with
/// the earlier ones in docs/benchmarks.md.
const REUSE_LIMIT: usize = 100;
/// Longest wait for any one reply; a stuck run fails instead of hanging.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// Thread name prefixes, to split this process's CPU time between the roles.
const CLIENT_THREADS: &str = "bench-client";
const UPSTREAM_THREADS: &str = "bench-upstream";

/// The command line.
struct Args {
    quick: bool,
    targets: bool,
    memory: bool,
    pipelining: bool,
    repeat: usize,
    rtt_ms: u64,
    profile_secs: Option<u64>,
}

const USAGE: &str = "usage: loadbench [--quick] [--upstream-rtt-ms N] [--client-pipelining] \
                     | --targets [--repeat N] | --profile-secs S | --memory";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        targets: false,
        memory: false,
        pipelining: false,
        repeat: 1,
        rtt_ms: 0,
        profile_secs: None,
    };
    let mut it = std::env::args().skip(1);
    let number = |it: &mut dyn Iterator<Item = String>, flag: &str| -> Result<u64, String> {
        it.next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{flag} needs a number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--targets" => args.targets = true,
            "--memory" => args.memory = true,
            "--client-pipelining" => args.pipelining = true,
            "--repeat" => args.repeat = number(&mut it, "--repeat")?.max(1) as usize,
            "--upstream-rtt-ms" => args.rtt_ms = number(&mut it, "--upstream-rtt-ms")?,
            "--profile-secs" => args.profile_secs = Some(number(&mut it, "--profile-secs")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("{USAGE}\n{err}");
            std::process::exit(2);
        }
    };
    let quick = args.quick;
    let command = std::env::args()
        .skip(1)
        .fold("target/release/loadbench".to_string(), |c, a| c + " " + &a);
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

    let mut bench = client_rt.block_on(Bench::setup(upstream_rt.handle().clone()));
    let mode = if args.targets {
        "targets"
    } else if args.profile_secs.is_some() {
        "profile"
    } else if quick {
        "quick"
    } else {
        "full"
    };
    print_header(&bench, mode, &fd_note);

    if args.memory {
        targets::memory_only(&bench, &client_rt);
        client_rt.block_on(async { bench.shutdown.cancel() });
        return;
    }
    if args.targets {
        targets::run(&bench, &client_rt, args.repeat);
        client_rt.block_on(async { bench.shutdown.cancel() });
        return;
    }
    if let Some(secs) = args.profile_secs {
        // Only the relay run: a profiler attaches to the pid printed on stderr.
        bench.announce_pid = true;
        let scenario = Scenario::timed(8, 10 * KIB, Mode::Persistent, secs as f64)
            .with_rtt(args.rtt_ms)
            .pipelined(args.pipelining);
        let relay = client_rt.block_on(bench.run(&scenario, Target::Relay));
        println!(
            "profile run {}: {} messages in {:.1} s ({:.1}/s), relay CPU {:.3} ms/msg, {} errors",
            scenario.name,
            relay.messages,
            relay.elapsed.as_secs_f64(),
            relay.rate(),
            relay.relay_cpu_ms(),
            relay.errors
        );
        client_rt.block_on(async { bench.shutdown.cancel() });
        return;
    }

    let scenarios: Vec<Scenario> = if quick {
        quick_scenarios()
    } else {
        full_scenarios()
    }
    .into_iter()
    .map(|s| s.with_rtt(args.rtt_ms).pipelined(args.pipelining))
    .collect();
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
