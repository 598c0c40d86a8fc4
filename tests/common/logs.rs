//! Capturing what the relay logs, for tests that assert on log lines.
//!
//! All tests of a binary share one process, and tracing caches each callsite's interest
//! process-wide, computed on whichever thread hits it first: a sibling test's thread with no
//! subscriber could cache "never", and the events would not reach a test's capture.
//! [`capture_logs`] therefore installs an inert global subscriber (so every thread has one)
//! before the test's own, and rebuilds the cache.

use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;

/// A log sink for tests that assert on what the relay logs.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Makes `subscriber` this thread's subscriber until the guard drops. Use it in a
/// current-thread runtime (plain `#[tokio::test]`): every task of the relay and its fakes
/// then runs on this thread, so the subscriber sees all their events.
pub fn capture_logs(subscriber: impl tracing::Subscriber + Send + Sync + 'static) -> DefaultGuard {
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    let guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    guard
}

/// The usual capture: plain-text lines up to `level`, this thread's subscriber until the
/// guard drops (see [`capture_logs`]).
pub fn capture_logs_at(level: tracing::Level) -> (Captured, DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let guard = capture_logs(subscriber);
    (captured, guard)
}
