//! /proc measurements: CPU time of the relay process and of this process's threads by role,
//! the relay's RSS and high-water mark, an RSS sampler, and the open-file limit.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{CLIENT_THREADS, UPSTREAM_THREADS};

/// CPU and memory at one moment: the relay process's, and this process's split by thread
/// role (load client, fake upstream + issuer).
pub(crate) struct Snapshot {
    pub(crate) relay_cpu: Option<Duration>,
    pub(crate) relay_rss_kib: Option<u64>,
    pub(crate) client_cpu: Duration,
    pub(crate) upstream_cpu: Duration,
}

impl Snapshot {
    pub(crate) fn take(relay: Option<u32>, clk_tck: u64) -> Snapshot {
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
pub(crate) fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

pub(crate) fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Samples a process's VmRSS (or another `kB` line of its status) every 5 ms on its own
/// thread until stopped; returns the peak.
pub(crate) struct RssSampler {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    pub(crate) fn start(pid: u32) -> RssSampler {
        RssSampler::start_key(pid, "VmRSS")
    }

    /// `RssAnon`: the process's own memory (heap, stacks), without the pages of its
    /// executable and libraries mapped from the page cache, which VmRSS also counts.
    pub(crate) fn start_key(pid: u32, key: &'static str) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-sampler".into())
            .spawn(move || {
                let mut peak = 0;
                while !flag.load(Ordering::Relaxed) {
                    peak = peak.max(status_kib(pid, key).unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(5));
                }
                peak.max(status_kib(pid, key).unwrap_or(0))
            })
            .expect("cannot start the RSS sampler");
        RssSampler { stop, thread }
    }

    pub(crate) fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// Makes sure this process (and so the relay it starts) may open `want` descriptors: the
/// idle-session test holds 1000 connections on each side. Raises the soft limit with the
/// `prlimit` command when needed (no unsafe code here). Returns a note for the header.
pub(crate) fn ensure_fd_limit(want: u64) -> String {
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
