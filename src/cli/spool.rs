//! `smtp-oauth-relay spool …`: look at and act on the durable spool (issue 15), also
//! while `serve` runs. Every change takes the entry's lock first (the worker holds it
//! while delivering), and is written the same durable way the worker writes, so the two
//! processes never overwrite each other's work. The running worker notices a change at
//! its next scan (within a second).

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use crate::cli::error::CliError;
use crate::cli::load_config;
use crate::spool::dsn::header_block;
use crate::spool::entry::{now_ms, valid_id, Entry, RcptState};
use crate::spool::store::{Dirs, Place};

#[derive(Debug, Clone, Subcommand)]
pub enum SpoolAction {
    /// Waiting messages and dead letters: id, age, asset, sender, recipients, attempts,
    /// next try, last error.
    List {
        /// One JSON array for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Try a waiting message now (or every waiting message with --all).
    Retry {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Delete a waiting message or a dead letter for good.
    Drop { id: String },
    /// The envelope, state and header block of a message (not its body).
    Show { id: String },
    /// Put a dead letter back in the queue; its refused recipients are tried again.
    RequeueDead { id: String },
}

pub fn spool(config_path: PathBuf, action: SpoolAction) -> Result<(), CliError> {
    let config = load_config(&config_path)?;
    let dirs = Dirs::new(&config.spool.dir);
    if !dirs.queue.is_dir() {
        return Err(CliError::failed(format!(
            "no spool at {} (is [spool] dir right, and has `serve` run with it?)",
            config.spool.dir.display()
        )));
    }
    let mut out = std::io::stdout().lock();
    match action {
        SpoolAction::List { json } => list(&dirs, json, &mut out),
        SpoolAction::Retry { id: Some(id), .. } => retry(&dirs, &id, &mut out),
        SpoolAction::Retry {
            id: None,
            all: true,
        } => {
            let mut busy = 0;
            for id in dirs.ids(Place::Queue).map_err(CliError::failed)? {
                if retry(&dirs, &id, &mut out).is_err() {
                    busy += 1;
                }
            }
            if busy > 0 {
                return Err(CliError::failed(format!(
                    "{busy} message(s) could not be changed now"
                )));
            }
            Ok(())
        }
        SpoolAction::Retry { .. } => Err(CliError::config("spool retry needs an ID or --all")),
        SpoolAction::Drop { id } => drop_entry(&dirs, &id, &mut out),
        SpoolAction::Show { id } => show(&dirs, &id, &mut out),
        SpoolAction::RequeueDead { id } => requeue_dead(&dirs, &id, &mut out),
    }
}

fn checked(id: &str) -> Result<&str, CliError> {
    if valid_id(id) {
        Ok(id)
    } else {
        Err(CliError::failed(format!("\"{id}\" is not a spool id")))
    }
}

/// Where the entry is, or an error naming the id.
fn find(dirs: &Dirs, id: &str) -> Result<Place, CliError> {
    let id = checked(id)?;
    for place in [Place::Queue, Place::Dead] {
        if dirs.json(place, id).exists() {
            return Ok(place);
        }
    }
    Err(CliError::failed(format!("no spooled message {id}")))
}

/// Locks and reads the entry; then runs `change` with it.
fn with_locked<T>(
    dirs: &Dirs,
    place: Place,
    id: &str,
    change: impl FnOnce(Entry) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let lock = dirs
        .try_lock(place, id)
        .map_err(|err| CliError::failed(format!("{id}: {err}")))?
        .ok_or_else(|| {
            CliError::failed(format!(
                "{id} is being delivered right now; try again in a moment"
            ))
        })?;
    let entry = dirs
        .read(place, id)
        .map_err(|err| CliError::failed(format!("{id}: {err}")))?;
    let result = change(entry);
    drop(lock);
    result
}

fn list(dirs: &Dirs, json: bool, out: &mut impl std::io::Write) -> Result<(), CliError> {
    let mut rows = Vec::new();
    for place in [Place::Queue, Place::Dead] {
        for id in dirs.ids(place).map_err(CliError::failed)? {
            // An entry removed (delivered) between the listing and the read is skipped.
            if let Ok(entry) = dirs.read(place, &id) {
                rows.push((place, entry));
            }
        }
    }
    let now = now_ms();
    if json {
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|(place, e)| {
                serde_json::json!({
                    "id": e.id,
                    "state": if *place == Place::Dead { "dead" } else { "queued" },
                    "age_secs": now.saturating_sub(e.arrived_ms) / 1000,
                    "asset": e.asset,
                    "user": e.user,
                    "sender": e.sender,
                    "recipients": e.recipients,
                    "attempts": e.attempts,
                    "next_try_in_secs": e.next_try_ms.saturating_sub(now) / 1000,
                    "last_error": e.last_error,
                    "waiting_for_credentials": e.waiting_for_credentials,
                    "size": e.size,
                    "dead_reason": e.dead_reason,
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&items).map_err(CliError::failed)?;
        writeln!(out, "{text}").map_err(CliError::failed)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<22} {:<6} {:>8} {:<12} {:<28} {:<36} {:>8} {:>9}  LAST ERROR",
        "ID", "STATE", "AGE", "ASSET", "SENDER", "RECIPIENTS", "ATTEMPTS", "NEXT TRY"
    )
    .map_err(CliError::failed)?;
    for (place, e) in &rows {
        let recipients: Vec<String> = e
            .recipients
            .iter()
            .map(|r| match r.state {
                RcptState::Pending => r.address.clone(),
                RcptState::Delivered => format!("{} (sent)", r.address),
                RcptState::Failed => format!("{} (refused)", r.address),
            })
            .collect();
        let next = match place {
            Place::Dead => "-".to_string(),
            Place::Queue => human(Duration::from_millis(e.next_try_ms.saturating_sub(now))),
        };
        let sender = if e.sender.is_empty() { "<>" } else { &e.sender };
        writeln!(
            out,
            "{:<22} {:<6} {:>8} {:<12} {:<28} {:<36} {:>8} {:>9}  {}",
            e.id,
            if *place == Place::Dead {
                "dead"
            } else {
                "queued"
            },
            human(Duration::from_millis(now.saturating_sub(e.arrived_ms))),
            e.asset,
            sender,
            recipients.join(","),
            e.attempts,
            next,
            e.dead_reason
                .as_deref()
                .or(e.last_error.as_deref())
                .unwrap_or("")
        )
        .map_err(CliError::failed)?;
    }
    writeln!(out, "{} message(s)", rows.len()).map_err(CliError::failed)?;
    Ok(())
}

fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

fn retry(dirs: &Dirs, id: &str, out: &mut impl std::io::Write) -> Result<(), CliError> {
    let place = find(dirs, id)?;
    if place == Place::Dead {
        return Err(CliError::failed(format!(
            "{id} is a dead letter; use `spool requeue-dead {id}`"
        )));
    }
    with_locked(dirs, place, id, |mut entry| {
        entry.next_try_ms = 0;
        dirs.write_state(Place::Queue, &entry)
            .map_err(|err| CliError::failed(format!("{id}: {err}")))
    })
    .inspect_err(|err| {
        let _ = writeln!(out, "{id}: {err}");
    })?;
    writeln!(out, "{id}: will be tried now").map_err(CliError::failed)
}

fn drop_entry(dirs: &Dirs, id: &str, out: &mut impl std::io::Write) -> Result<(), CliError> {
    let place = find(dirs, id)?;
    with_locked(dirs, place, id, |_| {
        dirs.remove(place, id)
            .map_err(|err| CliError::failed(format!("{id}: {err}")))
    })?;
    writeln!(out, "{id}: dropped").map_err(CliError::failed)
}

fn show(dirs: &Dirs, id: &str, out: &mut impl std::io::Write) -> Result<(), CliError> {
    let place = find(dirs, id)?;
    let entry = dirs
        .read(place, id)
        .map_err(|err| CliError::failed(format!("{id}: {err}")))?;
    let head =
        read_head(&dirs.eml(place, id)).map_err(|err| CliError::failed(format!("{id}: {err}")))?;
    let state = if place == Place::Dead {
        "dead"
    } else {
        "queued"
    };
    writeln!(out, "state: {state}").map_err(CliError::failed)?;
    out.write_all(&entry.to_json()).map_err(CliError::failed)?;
    writeln!(out).map_err(CliError::failed)?;
    out.write_all(&header_block(&head))
        .map_err(CliError::failed)
}

/// The start of the message: enough for any header block the relay accepted.
fn read_head(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)?
        .take(128 * 1024)
        .read_to_end(&mut head)?;
    Ok(head)
}

fn requeue_dead(dirs: &Dirs, id: &str, out: &mut impl std::io::Write) -> Result<(), CliError> {
    let place = find(dirs, id)?;
    if place != Place::Dead {
        return Err(CliError::failed(format!("{id} is not a dead letter")));
    }
    with_locked(dirs, Place::Dead, id, |mut entry| {
        for recipient in &mut entry.recipients {
            if recipient.state == RcptState::Failed {
                recipient.state = RcptState::Pending;
            }
        }
        entry.dead_reason = None;
        entry.sending = false;
        entry.next_try_ms = 0;
        // A requeued message gets a new lease of max_age_secs.
        entry.arrived_ms = now_ms();
        dirs.move_entry(Place::Dead, Place::Queue, &entry)
            .map_err(|err| CliError::failed(format!("{id}: {err}")))
    })?;
    writeln!(out, "{id}: back in the queue, tried now").map_err(CliError::failed)
}
