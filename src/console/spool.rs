//! The Spool page (issue 15): what waits in the durable spool and the dead letters, read
//! from the spool directory as `spool list` reads it. Read-only: acting on an entry is
//! the CLI's (`spool retry|drop|requeue-dead`), which takes the entry's lock.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;

use super::pages::{page, span};
use super::App;
use crate::spool::entry::{now_ms, Entry, RcptState};
use crate::spool::store::{Dirs, Place};

/// At most this many rows per table: the page stays small when the spool is not.
const ROWS: usize = 200;

fn entries(dirs: &Dirs, place: Place) -> Vec<Entry> {
    dirs.ids(place)
        .unwrap_or_default()
        .iter()
        .take(ROWS)
        .filter_map(|id| dirs.read(place, id).ok())
        .collect()
}

/// `GET /spool`.
pub async fn index(State(app): State<App>, headers: HeaderMap) -> Response {
    let session = match app.session(&headers) {
        Ok(view) => view,
        Err(response) => return *response,
    };
    let relay = app.relay();
    let Some(spool) = relay.spool.clone() else {
        let body = html! { p { "No spool is configured (no user has delivery = \"spool\")." } };
        return page(&app, StatusCode::OK, "Spool", Some(&session), None, body);
    };
    let dirs = spool.dirs.clone();
    let (queued, dead) = tokio::task::spawn_blocking(move || {
        (entries(&dirs, Place::Queue), entries(&dirs, Place::Dead))
    })
    .await
    .unwrap_or_default();
    let now = now_ms();
    let age = |e: &Entry| {
        span(std::time::Duration::from_millis(
            now.saturating_sub(e.arrived_ms),
        ))
    };
    let recipients = |e: &Entry| {
        e.recipients
            .iter()
            .map(|r| match r.state {
                RcptState::Pending => r.address.clone(),
                RcptState::Delivered => format!("{} (sent)", r.address),
                RcptState::Failed => format!("{} (refused)", r.address),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let body = html! {
        p #spool-summary {
            (queued.len()) " waiting, " (dead.len()) " dead letters; "
            (spool.used()) " of " (spool.max_bytes()) " bytes used"
            @if spool.nearly_full() { " — " strong.bad { "over 90 % full" } }
            "."
        }
        h2 { "Waiting" }
        table #spool-queue {
            thead { tr {
                th { "Id" } th { "Age" } th { "Asset" } th { "Sender" } th { "Recipients" }
                th { "Attempts" } th { "Next try" } th { "Last error" }
            } }
            tbody {
                @if queued.is_empty() { tr { td colspan="8" { "Nothing waits." } } }
                @for e in &queued {
                    tr {
                        td { code { (e.id) } } td { (age(e)) } td { (e.asset) } td { (e.sender) }
                        td { (recipients(e)) } td { (e.attempts) }
                        td { (span(std::time::Duration::from_millis(e.next_try_ms.saturating_sub(now)))) }
                        td { (e.last_error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        h2 { "Dead letters" }
        p { "Kept in " code { "dead/" } " until an operator acts: "
            code { "smtp-oauth-relay spool requeue-dead ID" } " or " code { "spool drop ID" } "." }
        table #spool-dead {
            thead { tr {
                th { "Id" } th { "Age" } th { "Asset" } th { "Sender" } th { "Recipients" } th { "Reason" }
            } }
            tbody {
                @if dead.is_empty() { tr { td colspan="6" { "No dead letters." } } }
                @for e in &dead {
                    tr {
                        td { code { (e.id) } } td { (age(e)) } td { (e.asset) } td { (e.sender) }
                        td { (recipients(e)) } td.bad { (e.dead_reason.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    };
    page(
        &app,
        StatusCode::OK,
        "Spool",
        Some(&session),
        app.settings().map(|s| s.refresh_secs).filter(|&s| s > 0),
        body,
    )
}
