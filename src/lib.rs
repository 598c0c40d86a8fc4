//! smtp-oauth-relay: lets mail software that only knows a user name and a password send
//! through Gmail / Google Workspace (and other OAuth-only providers) by speaking
//! `AUTH XOAUTH2` upstream on its behalf.
//!
//! # Architecture
//!
//! A message travels: client → [`server`] (listeners, connection limit, shutdown) →
//! [`session`] (the SMTP dialogue state machine) → [`upstream`] (TLS + XOAUTH2 client) →
//! the provider. Alongside:
//!
//! - [`smtp`]: pure protocol code with no I/O: command parser, reply type and parser, the
//!   DATA scanner that finds the end of a message and stops SMTP smuggling, EHLO
//!   capabilities. This is what the fuzz targets exercise.
//! - [`replies`]: every reply text the relay writes itself; [`error`] maps failures
//!   towards the provider onto those replies in one place.
//! - [`config`]: TOML → validated [`config::Config`], every problem reported with file,
//!   line and field before anything binds. [`senders`] maps envelope senders to assets.
//! - [`auth`]: local users (argon2id) and SASL PLAIN/LOGIN decoding.
//! - [`token`]: per-asset access-token cache with single-flight refresh (oauth2 crate).
//! - [`xoauth2`]: the SASL XOAUTH2 encoding and its JSON error challenge.
//! - [`tls`], [`stream`]: rustls configuration and a plain-or-TLS stream.
//! - [`relay`]: the state all sessions share. [`received`]: the trace header.
//! - [`logsafe`]: client-supplied values escaped and capped for log lines.
//! - [`sandbox`]: an embedded Gmail-like server and token issuer (`serve --sandbox`,
//!   tests, benchmarks); [`demo`] wires it into a ready-made config. [`check`]: the
//!   `check` command.
//!
//! Secrets live in [`secret::Secret`], which never prints its value.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod authorize;
pub mod check;
pub mod config;
pub mod demo;
pub mod error;
pub mod logsafe;
pub mod metrics;
pub mod pool;
pub mod received;
pub mod relay;
pub mod replies;
pub mod sandbox;
pub mod secret;
pub mod senders;
pub mod server;
pub mod service_account;
pub mod session;
pub mod smtp;
pub mod store;
pub mod stream;
pub mod throttle;
pub mod tls;
pub mod token;
pub mod upstream;
pub mod xoauth2;
