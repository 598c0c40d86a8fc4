//! The Messages page: the last `[admin] messages_kept` per-message outcomes (time, user,
//! sender, recipient count, size, asset, outcome, the final reply), newest first.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;

use super::pages::{page, utc};
use super::App;

/// `GET /messages`.
pub async fn index(State(app): State<App>, headers: HeaderMap) -> Response {
    let session = match app.session(&headers) {
        Ok(view) => view,
        Err(response) => return *response,
    };
    let relay = app.relay();
    let records = relay.recent.latest();
    let kept = app.settings().map_or(0, |s| s.messages_kept);
    let body = html! {
        p { "The last " (kept) " messages since the relay started (kept in memory only)." }
        table #messages {
            thead { tr {
                th { "Time" } th { "User" } th { "Sender" } th { "Recipients" } th { "Size" }
                th { "Asset" } th { "Outcome" } th { "Reply" }
            } }
            tbody {
                @if records.is_empty() { tr { td colspan="8" { "No messages yet." } } }
                @for r in &records {
                    tr {
                        td { (utc(r.at)) } td { (r.user) } td { (r.sender) } td { (r.recipients) }
                        td { (r.size) " bytes" } td { (r.asset) }
                        td.(if r.outcome == super::recent::Ended::Delivered { "ok" } else { "bad" }) { (r.outcome.label()) }
                        td { code { (r.reply) } }
                    }
                }
            }
        }
    };
    page(
        &app,
        StatusCode::OK,
        "Messages",
        Some(&session),
        app.settings().map(|s| s.refresh_secs).filter(|&s| s > 0),
        body,
    )
}
