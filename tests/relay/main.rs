//! The relay in process: a real `server::run` on loopback ports in front of the embedded
//! fake Gmail and token issuer (tests/common), or a session driven in memory. One test
//! binary, so the crate links once for all of them; each module is one concern.
//!
//! Shared process state: the password hashes of tests/common (made once), and the global
//! tracing dispatcher that log-capturing tests install (`common::capture_logs`).

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod alerts;
mod app_only;
mod client_abuse;
mod faults;
mod gmail_api;
mod graph;
mod hardening;
mod limits;
mod limits_alerts;
mod pool;
mod relay;
mod reload;
mod replicas;
mod replicas_alerts;
mod replicas_import;
mod replicas_slots;
mod replicas_spool;
mod replicas_support;
mod secrets;
mod sender_spelling;
mod spool;
mod spool_bench;
mod spool_cli;
mod spool_crash;
mod spool_limits;
mod spool_ops;
mod store;
mod tokens;
mod upstream_dialogue;
