//! The OAuth side of the relay: the per-asset access-token [`token`] manager (refresh,
//! rotation, back-off, single flight) and the one-time browser [`consent`] that
//! `authorize` runs to obtain a refresh token.

pub mod consent;
pub mod token;
