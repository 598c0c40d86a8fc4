//! One delivery attempt of one spooled entry, under the entry's lock: admission, the
//! durable "sending" mark, the transmission, and the record of each recipient's verdict
//! (accepted recipients are never sent again), then the entry's fate: removed when done,
//! rescheduled by `retry_secs`, or a dead letter with a DSN to the sender.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::dsn;
use super::entry::{now_ms, Entry, RcptState};
use super::metrics::Attempt;
use super::store::Place;
use super::transmit::{transmit, Body, Envelope, Transmitted, Verdict};
use super::Spool;
use crate::alerts::event::{Alert, EventKind};
use crate::config::Asset;
use crate::limits;
use crate::logsafe::Untrusted;
use crate::relay::Relay;

/// Whether a delivery attempt may start now.
pub enum Admission {
    /// Go, holding the message's place against the asset's sending limits until the
    /// provider has answered (counted when it accepted, given back otherwise).
    Go(limits::Admission),
    /// Not now: look again after this long (no attempt is counted).
    Later(Duration),
}

/// THE one place a spooled delivery attempt is admitted: the asset's sending limits
/// (issue 16). Where a direct client hears `451 4.7.0`, a spooled message waits until the
/// limit frees up (or the provider's "over the limit" mark ends), without an attempt
/// being counted, so a limit never turns into a dead letter.
pub async fn admit_delivery(relay: &Relay, asset: &Asset, entry: &Entry) -> Admission {
    let pending = entry
        .recipients
        .iter()
        .filter(|r| r.state == RcptState::Pending)
        .count() as u64;
    let now = limits::unix_now();
    match relay.limits.admit(asset, pending, now).await {
        Ok(admission) => Admission::Go(admission),
        Err(hit) => {
            tracing::info!(
                spool_id = %entry.id,
                asset = %asset.name,
                limit = hit.limit.key(),
                frees_at = %limits::format_time(hit.frees_at),
                "spooled message waits for the asset's sending limit"
            );
            Admission::Later(Duration::from_secs(hit.frees_at.saturating_sub(now).max(1)))
        }
    }
}

/// How an attempt ended, for the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Delivered,
    Rescheduled,
    Dead,
    /// Another holder has the entry's lock, or it is gone or not due.
    Skipped,
}

/// Runs blocking spool I/O off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| Err(std::io::Error::other(err.to_string())))
}

/// One attempt at entry `id` (in `queue/`); `force`: even before its next try (a new
/// grant arrived for an entry that waits for credentials).
pub async fn attempt(relay: Arc<Relay>, spool: Arc<Spool>, id: String, force: bool) -> Ended {
    let dirs = spool.dirs.clone();
    let lock_id = id.clone();
    let locked = blocking(move || {
        let Some(lock) = dirs.try_lock(Place::Queue, &lock_id)? else {
            return Ok(None);
        };
        // Read under the lock: a CLI command may have changed it since the scan.
        let entry = dirs
            .read(Place::Queue, &lock_id)
            .map_err(|err| std::io::Error::other(err.to_string()))?;
        Ok(Some((lock, entry)))
    })
    .await;
    let (lock, mut entry) = match locked {
        Ok(Some(found)) => found,
        Ok(None) => return Ended::Skipped,
        Err(err) => {
            tracing::debug!(spool_id = %id, error = %err, "spool entry not taken");
            return Ended::Skipped;
        }
    };
    let now = now_ms();
    if entry.next_try_ms > now && !force {
        return Ended::Skipped;
    }
    let settings = relay.config.spool.clone();
    let Some(asset) = relay.config.asset(&entry.asset).cloned() else {
        // The config no longer has the asset: keep the message until it is back (or an
        // operator drops it), trying again at the schedule's pace.
        entry.last_error = Some(format!("asset \"{}\" is not configured", entry.asset));
        entry.next_try_ms = now + settings.retry_after(entry.attempts).as_millis() as u64;
        tracing::warn!(spool_id = %id, asset = %entry.asset, "spooled message for an asset that is not configured; kept");
        let _ = save(&spool, Place::Queue, entry).await;
        return Ended::Rescheduled;
    };
    let age = Duration::from_millis(now.saturating_sub(entry.arrived_ms));
    if age > settings.max_age {
        for recipient in &mut entry.recipients {
            if recipient.state == RcptState::Pending {
                recipient.state = RcptState::Failed;
                recipient.reply = Some(format!(
                    "not delivered within {} seconds; last error: {}",
                    settings.max_age.as_secs(),
                    entry.last_error.as_deref().unwrap_or("none")
                ));
            }
        }
        let ended = finish(&relay, &spool, &asset, entry, true).await;
        drop(lock);
        return ended;
    }
    let mut admission = match admit_delivery(&relay, &asset, &entry).await {
        Admission::Go(admission) => admission,
        Admission::Later(wait) => {
            entry.next_try_ms = now + wait.as_millis() as u64;
            let _ = save(&spool, Place::Queue, entry).await;
            return Ended::Rescheduled;
        }
    };
    let possible_duplicate = entry.sending;
    if possible_duplicate {
        // The last attempt was cut (a crash, a kill) after it may have reached the
        // provider: this one may deliver a second copy.
        spool.metrics(&relay).possible_duplicates.inc();
        tracing::warn!(spool_id = %id, asset = %asset.name, possible_duplicate = true, "delivering a spooled message whose last attempt was interrupted; the recipients may receive it twice");
    }
    entry.attempts += 1;
    entry.sending = true;
    entry = match save(&spool, Place::Queue, entry).await {
        Ok(entry) => entry,
        Err(err) => {
            tracing::error!(spool_id = %id, error = %err, "cannot record a delivery attempt; not sending");
            return Ended::Skipped;
        }
    };
    let pending: Vec<usize> = entry
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| r.state == RcptState::Pending)
        .map(|(index, _)| index)
        .collect();
    let to: Vec<String> = pending
        .iter()
        .map(|&i| entry.recipients[i].address.clone())
        .collect();
    let envelope = Envelope {
        from: &entry.sender,
        to: &to,
        size: entry.size,
        eight_bit: entry.eight_bit,
        smtputf8: entry.smtputf8,
    };
    let body = Body::File(spool.dirs.eml(Place::Queue, &id));
    let sent: Transmitted = transmit(&relay, &asset, &envelope, &body).await;
    // The limits count what the provider accepted; the rest of the place is given back.
    let accepted = sent
        .verdicts
        .iter()
        .filter(|v| **v == Verdict::Accepted)
        .count() as u64;
    let refused = admission.recipients().saturating_sub(accepted);
    relay.limits.drop_recipients(&mut admission, refused);
    if accepted > 0 {
        relay
            .limits
            .commit(admission, &asset, limits::unix_now())
            .await;
    } else {
        drop(admission);
    }
    let mut temporary = None;
    for (&index, verdict) in pending.iter().zip(&sent.verdicts) {
        let recipient = &mut entry.recipients[index];
        match verdict {
            Verdict::Accepted => {
                recipient.state = RcptState::Delivered;
                recipient.reply = None;
            }
            Verdict::Permanent(reply) => {
                recipient.state = RcptState::Failed;
                recipient.reply = Some(reply.clone());
            }
            Verdict::Temporary(why) => {
                recipient.reply = Some(why.clone());
                temporary.get_or_insert_with(|| why.clone());
            }
        }
    }
    if sent.possible_duplicate {
        spool.metrics(&relay).possible_duplicates.inc();
        tracing::warn!(spool_id = %id, asset = %asset.name, possible_duplicate = true, "provider connection lost after the end of data; the spooled message is tried again and may arrive twice");
    }
    entry.sending = false;
    entry.waiting_for_credentials = sent.credentials;
    let metrics = spool.metrics(&relay);
    if !entry.has_pending() {
        let ended = finish(&relay, &spool, &asset, entry, false).await;
        drop(lock);
        return ended;
    }
    let wait = settings.retry_after(entry.attempts);
    entry.next_try_ms = now_ms() + wait.as_millis() as u64;
    entry.last_error = temporary;
    metrics.attempt(Attempt::Deferred);
    tracing::warn!(
        spool_id = %id,
        asset = %asset.name,
        attempts = entry.attempts,
        retry_in_secs = wait.as_secs(),
        waiting_for_credentials = entry.waiting_for_credentials,
        error = %Untrusted(entry.last_error.as_deref().unwrap_or("")),
        "spooled message deferred"
    );
    if let Err(err) = save(&spool, Place::Queue, entry).await {
        tracing::error!(spool_id = %id, error = %err, "cannot record the outcome of a delivery attempt");
    }
    drop(lock);
    Ended::Rescheduled
}

/// Writes the entry's state durably; hands it back.
async fn save(spool: &Spool, place: Place, entry: Entry) -> std::io::Result<Entry> {
    let dirs = spool.dirs.clone();
    blocking(move || dirs.write_state(place, &entry).map(|()| entry)).await
}

/// No recipient is pending any more: remove the entry (all delivered, or some delivered
/// and the refused ones told by DSN), or make it a dead letter (none delivered).
async fn finish(
    relay: &Arc<Relay>,
    spool: &Arc<Spool>,
    asset: &Arc<Asset>,
    mut entry: Entry,
    expired: bool,
) -> Ended {
    let metrics = spool.metrics(relay);
    let failed: Vec<dsn::Failed> = entry
        .recipients
        .iter()
        .filter(|r| r.state == RcptState::Failed)
        .map(|r| dsn::Failed {
            address: r.address.clone(),
            diagnostic: r.reply.clone().unwrap_or_default(),
        })
        .collect();
    let delivered = entry.count(RcptState::Delivered);
    let id = entry.id.clone();
    if !failed.is_empty() {
        send_dsn(relay, spool, asset, &entry, &failed, expired).await;
    }
    if failed.is_empty() || delivered > 0 {
        let dirs = spool.dirs.clone();
        let removing = id.clone();
        match blocking(move || dirs.remove(Place::Queue, &removing)).await {
            Ok(()) => spool.release(entry.size + 1024),
            Err(err) => {
                tracing::error!(spool_id = %id, error = %err, "cannot remove a delivered spool entry; it may be sent again");
            }
        }
        metrics.attempt(Attempt::Delivered);
        tracing::info!(
            spool_id = %id,
            asset = %asset.name,
            from = %Untrusted(&entry.sender),
            delivered,
            refused = failed.len(),
            attempts = entry.attempts,
            message_id = %Untrusted(entry.message_id.as_deref().unwrap_or("")),
            "spooled message delivered"
        );
        return Ended::Delivered;
    }
    let reason = if expired {
        format!(
            "not delivered within {} seconds",
            relay.config.spool.max_age.as_secs()
        )
    } else {
        "refused by the provider for every recipient".to_string()
    };
    entry.dead_reason = Some(reason.clone());
    entry.sending = false;
    let dirs = spool.dirs.clone();
    let moving = entry.clone();
    if let Err(err) = blocking(move || dirs.move_entry(Place::Queue, Place::Dead, &moving)).await {
        tracing::error!(spool_id = %id, error = %err, "cannot move a dead letter to dead/");
    }
    metrics.attempt(Attempt::Failed);
    metrics.dead_letters.inc();
    let recipients: Vec<&str> = failed.iter().map(|f| f.address.as_str()).collect();
    tracing::warn!(
        event = "spool_dead_letter",
        spool_id = %id,
        asset = %asset.name,
        from = %Untrusted(&entry.sender),
        recipients = %Untrusted(&recipients.join(", ")),
        %reason,
        "spooled message is a dead letter (kept in dead/; `smtp-oauth-relay spool requeue-dead {id}` tries it again)"
    );
    spool.push_alert(Alert {
        event: EventKind::SpoolDeadLetter,
        asset: asset.name.clone(),
        email: asset.email.clone(),
        reason: format!(
            "spooled message {id} from <{}> to {} is a dead letter: {reason}; last reply: {}",
            entry.sender,
            recipients.join(", "),
            failed.first().map_or("", |f| f.diagnostic.as_str())
        ),
        fix: format!(
            "check the recipients and the asset, then `smtp-oauth-relay spool requeue-dead {id}` or `spool drop {id}`"
        ),
        console_url: None,
        at: SystemTime::now(),
        expires_at: None,
    });
    Ended::Dead
}

/// The report to the envelope sender, through the same asset: from the null sender
/// `<>` where the provider takes it, else from the account's own address. None for a
/// null-sender message (no bounce of a bounce).
async fn send_dsn(
    relay: &Relay,
    spool: &Spool,
    asset: &Arc<Asset>,
    entry: &Entry,
    failed: &[dsn::Failed],
    expired: bool,
) {
    if entry.sender.is_empty() {
        return;
    }
    let eml = spool.dirs.eml(Place::Queue, &entry.id);
    let head = tokio::fs::read(&eml).await.unwrap_or_default();
    let headers = dsn::header_block(&head[..head.len().min(100 * 1024)]);
    let arrived = UNIX_EPOCH + Duration::from_millis(entry.arrived_ms);
    let report = dsn::build(&dsn::Report {
        reporting_mta: &relay.config.server.hostname,
        from: &asset.email,
        to: &entry.sender,
        spool_id: &entry.id,
        arrived,
        now: SystemTime::now(),
        failed,
        original_headers: &headers,
        expired,
    });
    let wire = dsn::stuff(&report);
    let to = vec![entry.sender.clone()];
    let mut sent = None;
    for from in ["", asset.email.as_str()] {
        let envelope = Envelope {
            from,
            to: &to,
            size: wire.len() as u64,
            eight_bit: true,
            smtputf8: false,
        };
        let result = transmit(relay, asset, &envelope, &Body::Wire(wire.clone())).await;
        let retry_as_account = result.mail_refused && from.is_empty();
        sent = Some((from, result));
        if !retry_as_account {
            break;
        }
    }
    match sent {
        Some((from, result)) if result.verdicts.iter().all(|v| *v == Verdict::Accepted) => {
            tracing::info!(spool_id = %entry.id, asset = %asset.name, to = %Untrusted(&entry.sender), dsn_from = if from.is_empty() { "<>" } else { from }, "delivery status notification sent");
        }
        Some((_, result)) => {
            tracing::warn!(spool_id = %entry.id, asset = %asset.name, to = %Untrusted(&entry.sender), verdict = ?result.verdicts.first(), "delivery status notification not sent");
        }
        None => {}
    }
}
