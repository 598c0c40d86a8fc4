//! The binary and its commands: `serve` (with SIGTERM and SIGHUP), `check`, `authorize`
//! (also its consent flow in process), `token`, `hash-password`, and the config files they
//! read (the example config, config errors, secret file modes). One test binary, so the
//! crate links once for all of them.
//!
//! Shared process state: `secret_modes` sets one environment variable of its own
//! (`SECRET_MODES_TEST_SECRET`), read by no other test.

#[path = "../common/mod.rs"]
mod common;

mod app_only_cli;
mod authorize;
mod authorize_cli;
mod binary;
mod config_example;
mod limits_restart;
mod reload;
mod sandbox_graph;
#[cfg(unix)]
mod secret_modes;
mod serve_alerts;
