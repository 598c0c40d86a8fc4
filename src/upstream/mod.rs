//! The provider leg of a message: the SMTP [`client`] (STARTTLS or implicit TLS, then
//! `AUTH XOAUTH2`) and the warm [`pool`] of authenticated connections sessions share.

pub mod client;
pub mod pool;

pub use client::{Step, Upstream, UpstreamError, UpstreamSettings};
