//! What is measured: the scenarios (clients × message size × connection mode) of the full
//! and the quick run, and the two targets each runs against.

use std::time::Duration;

use crate::{KIB, MIB};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Target {
    Relay,
    Direct,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// Many messages per connection (up to [`REUSE_LIMIT`]).
    Persistent,
    /// One message per connection, as printers and cron jobs send.
    PerConnection,
}

pub(crate) struct Scenario {
    pub(crate) name: String,
    pub(crate) clients: usize,
    pub(crate) size: usize,
    pub(crate) mode: Mode,
    /// The measured phase ends at this time or after `max_messages`, whichever comes first.
    pub(crate) duration: Duration,
    pub(crate) max_messages: u64,
    /// Round-trip time between the relay (or the direct client) and the fake Gmail, added
    /// by the delay proxy (`delay.rs`); zero = plain loopback, no proxy.
    pub(crate) rtt: Duration,
    /// The clients pipeline MAIL, RCPT and DATA (RFC 2920).
    pub(crate) pipelining: bool,
}

impl Scenario {
    pub(crate) fn timed(clients: usize, size: usize, mode: Mode, secs: f64) -> Scenario {
        Scenario {
            name: scenario_name(clients, size, mode),
            clients,
            size,
            mode,
            duration: Duration::from_secs_f64(secs),
            max_messages: u64::MAX,
            rtt: Duration::ZERO,
            pipelining: false,
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
            rtt: Duration::ZERO,
            pipelining: false,
        }
    }

    /// The same scenario with clients that pipeline the envelope.
    pub(crate) fn pipelined(mut self, on: bool) -> Scenario {
        self.pipelining = on;
        if on {
            self.name = format!("{}, pipelining client", self.name);
        }
        self
    }

    /// The same scenario with an upstream round-trip time of `rtt_ms` (0 = none).
    pub(crate) fn with_rtt(mut self, rtt_ms: u64) -> Scenario {
        self.rtt = Duration::from_millis(rtt_ms);
        if rtt_ms > 0 {
            self.name = format!("{}, RTT {rtt_ms} ms", self.name);
        }
        self
    }
}

fn scenario_name(clients: usize, size: usize, mode: Mode) -> String {
    let mode = match mode {
        Mode::Persistent => "",
        Mode::PerConnection => ", 1 msg/conn",
    };
    format!("{clients} cl × {}{mode}", human_size(size))
}

pub(crate) fn human_size(size: usize) -> String {
    if size >= MIB && size.is_multiple_of(MIB) {
        format!("{} MB", size / MIB)
    } else if size >= KIB && size.is_multiple_of(KIB) {
        format!("{} KB", size / KIB)
    } else {
        format!("{size} B")
    }
}

pub(crate) fn full_scenarios() -> Vec<Scenario> {
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

pub(crate) fn quick_scenarios() -> Vec<Scenario> {
    vec![
        Scenario::timed(1, 100 * KIB, Mode::Persistent, 1.0),
        Scenario::timed(8, 10 * KIB, Mode::Persistent, 2.0),
        Scenario::timed(8, MIB, Mode::Persistent, 2.0),
        Scenario::timed(8, 10 * KIB, Mode::PerConnection, 2.0),
    ]
}
