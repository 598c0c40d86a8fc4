//! What every console page shares: the layout (navigation, logout form), the security
//! headers, and the formatting of times and durations. maud escapes every interpolated
//! value, so a hostile asset name or sender shows as text, never as markup.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::session::SessionView;
use super::App;

/// Plain CSS, inline (the CSP allows no other source).
const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center}\
header a{color:#fff;text-decoration:none}header .who{margin-left:auto}\
header form{display:inline}main{padding:1em 1.2em}\
table{border-collapse:collapse;background:#fff;width:100%}\
th,td{border:1px solid #d5d9e0;padding:.35em .5em;text-align:left;vertical-align:top;font-size:.92em}\
th{background:#eceff3}.ok{color:#0a6b2d;font-weight:600}.bad{color:#a3151b;font-weight:600}\
.fix{color:#444;font-size:.9em}.note{background:#fff;border-left:4px solid #3a6fd8;padding:.6em 1em;margin:1em 0}\
.note.bad{border-color:#a3151b;font-weight:normal;color:inherit}\
dl{display:grid;grid-template-columns:max-content auto;gap:.3em 1em;background:#fff;padding:1em}\
dt{font-weight:600}dd{margin:0;word-break:break-all}code{font-size:.95em}\
button{padding:.35em .9em;cursor:pointer}input{padding:.3em}";

/// The security headers every console response carries: no scripts, no framing, no
/// caching, and no Referer (the callback URL carries a code and a state).
pub fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A whole page: status, title, body; `session` adds the navigation and logout button.
/// `refresh_secs` makes the browser reload it (no JavaScript needed).
pub fn page(
    app: &App,
    status: StatusCode,
    title: &str,
    session: Option<&SessionView>,
    refresh_secs: Option<u64>,
    body: Markup,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(secs) = refresh_secs {
                    meta http-equiv="refresh" content=(secs);
                }
                title { (title) " — smtp-oauth-relay" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { "smtp-oauth-relay" }
                    @if let Some(session) = session {
                        a href=(app.href("/")) { "Assets" }
                        a href=(app.href("/messages")) { "Messages" }
                        a href=(app.href("/spool")) { "Spool" }
                        span.who {
                            "Signed in as " (session.user) " "
                            form method="post" action=(app.href("/logout")) {
                                input type="hidden" name="csrf" value=(session.csrf);
                                button type="submit" id="logout" { "Log out" }
                            }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    secure((status, markup).into_response())
}

/// A page that only says something (errors, refusals).
pub fn message_page(app: &App, status: StatusCode, title: &str, text: &str) -> Response {
    page(
        app,
        status,
        title,
        None,
        None,
        html! {
            p.note { (text) }
            p { a href=(app.href("/")) { "Back to the console" } }
        },
    )
}

/// `2026-12-04 10:30:00 UTC`.
pub fn utc(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let text = mail_parser::DateTime::from_timestamp(secs).to_rfc3339();
    // 2026-12-04T10:30:00Z → 2026-12-04 10:30:00 UTC
    text.replacen('T', " ", 1).replace('Z', " UTC")
}

/// `3 min ago`, `in 2 d`.
pub fn relative(at: SystemTime) -> String {
    match SystemTime::now().duration_since(at) {
        Ok(ago) => format!("{} ago", span(ago)),
        Err(ahead) => format!("in {}", span(ahead.duration())),
    }
}

/// `45 s`, `12 min`, `5 h`, `3 d`.
pub fn span(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        7200..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
    }
}

/// The time with how long ago it was, or a dash.
pub fn when(at: Option<SystemTime>) -> Markup {
    match at {
        Some(at) => html! { span title=(utc(at)) { (relative(at)) } },
        None => html! { "—" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_well() {
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(86_400 + 61)),
            "1970-01-02 00:01:01 UTC"
        );
        assert_eq!(span(Duration::from_secs(3599)), "59 min");
        assert_eq!(span(Duration::from_secs(45)), "45 s");
        assert_eq!(span(Duration::from_secs(3 * 86_400)), "3 d");
    }
}
