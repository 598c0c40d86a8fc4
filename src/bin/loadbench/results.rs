//! What one run measured, and the numbers the report derives from it (rate, percentiles,
//! CPU per message).

use std::time::Duration;

pub(crate) struct RunResult {
    pub(crate) messages: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
    /// Sorted.
    pub(crate) latencies: Vec<Duration>,
    pub(crate) size: usize,
    pub(crate) relay_cpu: Option<Duration>,
    pub(crate) relay_hwm_kib: Option<u64>,
    pub(crate) relay_rss_start_kib: Option<u64>,
    pub(crate) relay_rss_end_kib: Option<u64>,
    pub(crate) client_cpu: Duration,
    pub(crate) upstream_cpu: Duration,
    pub(crate) upstream_conns: usize,
}

impl RunResult {
    pub(crate) fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn mb_per_sec(&self) -> f64 {
        self.rate() * self.size as f64 / 1e6
    }

    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
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

    pub(crate) fn relay_cpu_ms(&self) -> f64 {
        self.relay_cpu.map_or(f64::NAN, |c| self.per_message_ms(c))
    }

    pub(crate) fn client_cpu_ms(&self) -> f64 {
        self.per_message_ms(self.client_cpu)
    }

    pub(crate) fn upstream_cpu_ms(&self) -> f64 {
        self.per_message_ms(self.upstream_cpu)
    }
}

pub(crate) struct BigMessage {
    pub(crate) size: usize,
    pub(crate) outcome: Result<(), String>,
    pub(crate) elapsed: Duration,
    pub(crate) rss_before: u64,
    pub(crate) rss_peak: u64,
    pub(crate) hwm_before: u64,
    pub(crate) hwm_after: u64,
}

pub(crate) struct IdleSessions {
    pub(crate) requested: usize,
    pub(crate) open: usize,
    pub(crate) failures: usize,
    pub(crate) first_error: Option<String>,
    pub(crate) rss_before: u64,
    pub(crate) rss_after: u64,
    pub(crate) hwm: u64,
}

pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
