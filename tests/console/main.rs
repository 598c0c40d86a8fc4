//! The operator console on the admin listener: HTTP-level tests (login, lockout, CSRF,
//! cookie flags, plain-HTTP refusal, idle timeout, escaping, no secret in any page, the
//! consent round trip through the sandbox issuer, the test message) and real-browser
//! tests in Debian's Chromium driven over WebDriver (fantoccini + chromedriver), which
//! also take the README's screenshots. A missing browser skips, except under CI.

#[path = "../common/mod.rs"]
mod common;

mod browser;
mod harness;
mod http;
mod limits;
mod proxy;
mod refusals;
mod secrets;
