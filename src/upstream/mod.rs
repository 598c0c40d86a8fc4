//! The provider leg of a message: the SMTP [`client`] dialogue (generic over its stream),
//! [`connect`] (TCP, STARTTLS or implicit TLS, and the [`Connector`] that logs in with an
//! asset's access token), the [`error`]s and their classification, and the warm [`pool`]
//! of authenticated connections sessions share; [`chunking`] the round-trip savers (BDAT
//! chunks, pipelined chunks, the quiet check of a kept connection).

pub mod chunking;
pub mod client;
pub mod connect;
pub mod error;
pub mod pool;

#[cfg(test)]
mod tests;

pub use client::{SmtpClient, UpstreamSettings};
pub use connect::{Connector, Upstream, UpstreamStream};
pub use error::{Step, UpstreamError};
