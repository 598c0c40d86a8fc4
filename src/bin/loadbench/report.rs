//! The Markdown report: the header (machine, commit, relay binary and its pool settings),
//! the throughput, details and memory tables, and the verdict on each target of issue 6.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::results::{mib, BigMessage, IdleSessions, RunResult};
use crate::scenarios::{Mode, Scenario};
use crate::setup::Bench;
use crate::{KIB, MIB, REUSE_LIMIT};

pub(crate) fn print_header(bench: &Bench, mode: &str, fd_note: &str) {
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
    println!("mode: {mode}");
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

pub(crate) fn print_results(
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
