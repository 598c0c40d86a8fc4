//! Bodies of the command-line commands; `main.rs` only parses arguments and dispatches.

pub mod check;
pub mod demo;
