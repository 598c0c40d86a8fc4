//! Transports: how a message reaches the provider once the session has it.
//!
//! (Until the transport seam of issue 12 lands, this holds only the Microsoft Graph
//! transport of issue 13.)

pub mod graph;
pub mod graph_check;
pub mod graph_error;
mod graph_large;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on failure
mod graph_tests;
