//! The OAuth side of the relay: the per-asset access-token [`token`] manager (refresh,
//! rotation, back-off, single flight) and the one-time browser [`consent`] that
//! `authorize` runs to obtain a refresh token.
//!
//! - [`token`]: the manager, its cache and single flight; [`state`]: one asset's state;
//!   [`request`]: one token-endpoint request, its answer classified and its durations
//!   clamped; [`error`]: [`error::TokenError`] and the operator's hints.
//! - [`http`]: what the token manager and the consent share (the client, error texts, the
//!   clock).
//! - [`consent`]: authorization URL + PKCE, the loopback listener or the paste, the code
//!   exchange and the account check.

pub mod consent;
pub mod error;
pub mod http;
mod replicas;
mod request;
mod sources;
mod state;
pub mod token;
