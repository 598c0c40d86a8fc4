//! The opt-in durable spool (issue 15): for clients that cannot retry (scan-to-email
//! printers, alarm panels), the relay answers `250 2.0.0 queued as <id>` once the message
//! is safe on disk and delivers it itself, retrying through provider outages and dead
//! tokens.
//!
//! # On disk (`[spool] dir`, 0700)
//!
//! ```text
//! tmp/            being written; removed when older than a minute (a dead process's)
//! queue/<id>.eml  the message as the provider receives it in DATA: the relay's
//!                 Received: header, then the client's message, CRLF lines, dot-stuffed,
//!                 without the final "." line; written once, never changed
//! queue/<id>.json the envelope and delivery state (`entry::Entry`): sender, recipients
//!                 each pending/delivered/failed, asset, user, client, arrival, attempts,
//!                 next try, last error; replaced whole (tmp → fsync → rename → fsync dir)
//! dead/           dead letters, same two files, kept until an operator acts
//! corrupt/        entries that could not be read, set aside and reported
//! ```
//!
//! An entry exists exactly when its `.json` is in `queue/` (or `dead/`): intake writes
//! the `.eml` to `tmp/`, fsyncs it, writes and fsyncs the `.json`, renames the `.eml`
//! and then the `.json` into `queue/` and fsyncs the directory before the client hears
//! 250. Delivery removes the `.json` first. A crash at any point leaves either a whole
//! entry or nothing acknowledged (`store::Dirs::repair` cleans the rest).
//!
//! # Who touches an entry
//!
//! The worker (`worker`, one per `serve`) and the `spool` CLI commands, possibly at the
//! same time: each takes the entry's lock (an exclusive `flock` on its `.eml`) before
//! changing it, so no second process ever writes over a delivery's outcome.
//!
//! - `entry`: the `.json` format; `store`: the directory operations; `deliver`: one
//!   attempt through the asset's transport; `worker`: scheduling, shutdown;
//!   `dsn`: the RFC 3464 report to the sender; `metrics`: the Prometheus series.

pub mod deliver;
pub mod dsn;
pub mod entry;
pub mod metrics;
pub mod store;
pub mod transmit;
pub mod worker;

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::alerts::event::Alert;
use crate::config::SpoolSettings;
use entry::Entry;
use store::Dirs;

/// Why a message could not be kept; `replies` maps these to the client's 4xx.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// `max_bytes` would be passed (452 4.3.1).
    #[error("the spool is full ({used} of {max} bytes)")]
    Full { used: u64, max: u64 },
    /// Writing, fsyncing or renaming failed (disk full, I/O error).
    #[error("cannot write to the spool: {0}")]
    Io(#[from] io::Error),
}

/// The spool the sessions write to and the worker delivers from; shared across reloads.
pub struct Spool {
    pub dirs: Dirs,
    max_bytes: u64,
    /// Bytes held (queue, dead letters, intakes in progress), kept in step by intake and
    /// delivery and recounted by each worker scan (the CLI may remove entries).
    used: AtomicU64,
    /// Wakes the worker: a new entry, or a shutdown.
    pub wake: Notify,
    /// Dead-letter alerts for the alert task to send (it owns the channels).
    alerts: Mutex<Vec<Alert>>,
}

impl Spool {
    /// Opens (creating) the spool directory.
    pub fn open(settings: &SpoolSettings) -> io::Result<Arc<Spool>> {
        let dirs = Dirs::new(&settings.dir);
        dirs.create()?;
        let used = dirs.bytes_used()?;
        Ok(Arc::new(Spool {
            dirs,
            max_bytes: settings.max_bytes,
            used: AtomicU64::new(used),
            wake: Notify::new(),
            alerts: Mutex::new(Vec::new()),
        }))
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Whether `more` bytes still fit under `max_bytes`.
    pub fn has_room(&self, more: u64) -> bool {
        self.used().saturating_add(more) <= self.max_bytes
    }

    /// Over 90 % of `max_bytes`: `/readyz` and the metrics say so.
    pub fn nearly_full(&self) -> bool {
        self.used().saturating_mul(10) > self.max_bytes.saturating_mul(9)
    }

    pub(crate) fn set_used(&self, bytes: u64) {
        self.used.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    /// Reserves `bytes` if they fit.
    fn reserve(&self, bytes: u64) -> Result<(), IntakeError> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                let after = used.checked_add(bytes)?;
                (after <= self.max_bytes).then_some(after)
            })
            .map(|_| ())
            .map_err(|used| IntakeError::Full {
                used,
                max: self.max_bytes,
            })
    }

    /// Starts keeping a message: a fresh id and its temporary file.
    pub fn intake(self: &Arc<Self>) -> Result<Intake, IntakeError> {
        let id = entry::new_id();
        let (path, file) = self.dirs.tmp_file(&format!("{id}.eml"))?;
        Ok(Intake {
            spool: self.clone(),
            id,
            path,
            file: Some(file),
            written: 0,
            failed: None,
            committed: false,
        })
    }

    /// Makes the message durable as `entry` (whose `id` and `size` the intake sets);
    /// returns only when it is, or with nothing of it left.
    pub async fn commit(
        &self,
        mut intake: Intake,
        mut entry: Entry,
    ) -> Result<String, IntakeError> {
        if let Some(err) = intake.failed.take() {
            return Err(IntakeError::Io(err));
        }
        let Some(file) = intake.file.take() else {
            return Err(IntakeError::Io(io::Error::other("intake already used")));
        };
        entry.id = intake.id.clone();
        entry.size = intake.written;
        // The .json is small; counting the .eml is what keeps the bound honest.
        let bytes = intake.written + 1024;
        self.reserve(bytes)?;
        let dirs = self.dirs.clone();
        let path = intake.path.clone();
        let committed = tokio::task::spawn_blocking(move || dirs.commit_new(&path, file, &entry))
            .await
            .unwrap_or_else(|err| Err(io::Error::other(err.to_string())));
        match committed {
            Ok(()) => {
                intake.committed = true;
                self.wake.notify_one();
                Ok(intake.id.clone())
            }
            Err(err) => {
                self.release(bytes);
                Err(IntakeError::Io(err))
            }
        }
    }

    /// The spool's series in the relay's metrics.
    pub(crate) fn metrics<'a>(&self, relay: &'a crate::relay::Relay) -> &'a metrics::SpoolMetrics {
        &relay.metrics.spool
    }

    /// Queues a dead-letter alert for the alert task.
    pub(crate) fn push_alert(&self, alert: Alert) {
        self.alerts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(alert);
    }

    /// The dead-letter alerts not yet handed to the alert channels.
    pub fn take_alerts(&self) -> Vec<Alert> {
        std::mem::take(&mut *self.alerts.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A message being received into the spool. Dropped without a commit, its temporary file
/// is removed: nothing half-written stays.
pub struct Intake {
    spool: Arc<Spool>,
    pub id: String,
    path: PathBuf,
    file: Option<File>,
    written: u64,
    failed: Option<io::Error>,
    committed: bool,
}

impl Intake {
    /// Appends message bytes (wire form). Errors are remembered and reported at commit,
    /// so the session still reads the client's message to its end.
    pub fn write(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if let Some(file) = &mut self.file {
            match file.write_all(bytes) {
                Ok(()) => self.written += bytes.len() as u64,
                Err(err) => self.failed = Some(err),
            }
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether the message written so far still fits in the spool.
    pub fn fits(&self) -> bool {
        self.spool.has_room(self.written)
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        if !self.committed {
            self.file = None;
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
