//! smtp-oauth-relay: lets mail software that only knows a user name and a password send
//! through Gmail / Google Workspace and Microsoft 365 by speaking `AUTH XOAUTH2` upstream
//! on its behalf.
//!
//! # The path of a message
//!
//! ```text
//! client ──▶ server ──▶ session ─────────────▶ upstream ──▶ provider
//!            listeners   EHLO/AUTH/MAIL/DATA     client, pool
//!            limits      users, senders          (TLS + XOAUTH2)
//!                        replies                 ▲
//!                                  oauth::token ─┘ access tokens
//!                                  credentials     (store, secrets, service accounts)
//!                                  config          (validated settings, beside all)
//! ```
//!
//! - [`server`]: listeners, connection limits, drain on shutdown; hands each connection
//!   to a [`session`], the SMTP dialogue with one client (one file per verb family).
//! - [`users`]: local users and argon2id; [`senders`]: envelope sender → asset;
//!   [`throttle`]: failed-login counting; [`received`]: the trace header.
//! - [`transport`]: the seam between a session and its provider: a `Link` per asset,
//!   SMTP (an [`upstream`] connection) or an HTTPS API (the Gmail API; Microsoft Graph's
//!   `sendMail` and draft paths in `graph*.rs`), spooling the
//!   un-stuffed message for the APIs and classifying their failures (`TransportError`),
//!   which `replies` maps to client replies.
//! - [`upstream`]: the provider leg over SMTP: the SMTP dialogue generic over its stream
//!   (`client`), TCP/TLS and the one `Connector` (token → connect → XOAUTH2) that the
//!   session and `check` share (`connect`), BDAT chunks (`chunking`), errors and their
//!   classification, the warm connection pool.
//! - [`oauth`]: the access-token manager (refresh, rotation, back-off) and the consent
//!   flow `authorize` runs; [`credentials`]: secrets, the encrypted token store, service
//!   account keys.
//! - [`limits`]: per-mailbox provider sending limits (rolling 24 h / 1 min windows,
//!   "over the provider's limit" marks, `upstream_connections` slots) behind the
//!   `LimitStore` trait (local file, or Redis); sessions ask it at MAIL and
//!   RCPT and tell it what the provider accepted or refused for quota.
//! - [`state`]: what several replicas share with `[state] backend = "redis"` — the token
//!   store (compare-and-swap rotations), the access token and its refresh lock (single
//!   flight across replicas), login lockouts, sending counters, asset health — and the
//!   explicit fallback to local memory while Redis is down. Keys and TTLs: `state/mod.rs`.
//! - [`replies`]: every reply text the relay writes itself, and the one mapping from
//!   failures (towards the provider, [`error::RelayError`]; refused command lines) onto
//!   those replies; [`error`] says why a transaction got no upstream, with operator hints.
//! - [`smtp`]: pure protocol code with no I/O (commands, replies, the DATA scanner, EHLO
//!   capabilities, addresses, SASL, XOAUTH2). This is what the fuzz targets exercise.
//! - [`config`]: TOML → validated [`config::Config`], every problem reported with file,
//!   line and field before anything binds.
//! - [`relay`]: the state all sessions share; [`admin`], [`metrics`]: probes and
//!   Prometheus counters; [`console`]: the operator's web pages on the admin listener;
//!   [`alerts`]: credential alerts (webhook, mail) and the refresh-token expiry forecast;
//!   [`tls`], [`stream`]: rustls configs and a plain-or-TLS stream;
//!   [`logsafe`]: client-supplied values escaped for log lines.
//! - [`spool`]: the opt-in durable spool for clients that cannot retry: intake (from the
//!   session's DATA), the delivery worker, dead letters and their DSNs.
//! - [`cli`]: the command bodies (`serve`, `check`, `authorize`, `token`, `hash-password`)
//!   returning one `CliError`; `main.rs` is only wiring. [`sandbox`]: an embedded
//!   Gmail-like server and token issuer (`serve --sandbox`, tests, benchmarks).
//!
//! # Layering rules
//!
//! - `smtp/` is pure: no I/O, no imports from the crate but leaf value types
//!   ([`credentials::secret::Secret`]). What is fuzzed is what is in `smtp/`.
//! - `config/` holds value types only and never imports a runtime service (pool,
//!   upstream client, token manager, session).
//! - Only `replies` turns failures into reply text; connection code returns errors.
//! - The `sandbox` fakes never share parsing code with production: an oracle must not
//!   share the code it checks.

#![forbid(unsafe_code)]

pub mod admin;
pub mod alerts;
pub mod cli;
pub mod config;
pub mod console;
pub mod credentials;
pub mod error;
pub mod limits;
pub mod logsafe;
pub mod metrics;
pub mod oauth;
pub mod received;
pub mod relay;
pub mod replies;
pub mod sandbox;
pub mod senders;
pub mod server;
pub mod session;
pub mod smtp;
pub mod spool;
pub mod state;
pub mod stream;
pub mod throttle;
pub mod tls;
pub mod transport;
pub mod upstream;
pub mod users;
