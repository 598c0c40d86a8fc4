//! "Send test message": a short message from the asset's own address to one the operator
//! types, through the same authenticated upstream login the relay uses, so a green result
//! proves the whole path. The outcome shows on the asset page and in the Messages list.

use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::asset::Note;
use super::pages::message_page;
use super::recent::{Ended, MessageRecord};
use super::{redirect, App};
use crate::config::Asset;
use crate::relay::Relay;
use crate::smtp::address::canonical;
use crate::upstream::Connector;

#[derive(Deserialize)]
pub struct TestForm {
    csrf: Option<String>,
    #[serde(default)]
    to: String,
}

/// The message, in wire form (CRLF lines, none starting with a dot).
fn message(asset: &Asset, to: &str, user: &str, hostname: &str) -> String {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let date = mail_parser::DateTime::from_timestamp(secs as i64).to_rfc822();
    let id = super::session::random_token().unwrap_or_else(|| secs.to_string());
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: smtp-oauth-relay test message ({asset})\r\n\
         Date: {date}\r\nMessage-ID: <{id}@{hostname}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         This is a test message sent from the smtp-oauth-relay console by {user}\r\n\
         through asset {asset} ({from}).\r\n",
        from = asset.email,
        asset = asset.name,
    )
}

/// Sends it; the final reply text, or why not.
async fn deliver(relay: &Relay, asset: &Asset, to: &str, body: &str) -> Result<String, String> {
    let mut upstream = Connector::new(&relay.tokens, &relay.upstream)
        .open(asset)
        .await
        .map_err(|err| format!("{err} — {}", err.hint()))?;
    let steps = [
        format!("MAIL FROM:<{}>", asset.email),
        format!("RCPT TO:<{to}>"),
    ];
    for line in &steps {
        let reply = upstream.command(line).await.map_err(|e| e.to_string())?;
        if reply.code / 100 != 2 {
            upstream.quit().await;
            return Err(format!(
                "the provider refused {}: {reply}",
                line.split(':').next().unwrap_or(line.as_str())
            ));
        }
    }
    let reply = upstream.command("DATA").await.map_err(|e| e.to_string())?;
    if reply.code != 354 {
        upstream.quit().await;
        return Err(format!("the provider refused DATA: {reply}"));
    }
    upstream
        .send_data(body.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    upstream
        .send_terminator()
        .await
        .map_err(|e| e.to_string())?;
    let reply = upstream.final_reply().await.map_err(|e| e.to_string())?;
    upstream.quit().await;
    if reply.code / 100 == 2 {
        Ok(reply.to_string())
    } else {
        Err(format!("the provider refused the message: {reply}"))
    }
}

/// `POST /assets/{name}/test`.
pub async fn send(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<TestForm>,
) -> Response {
    let session = match app.session_with_csrf(&headers, form.csrf.as_deref()) {
        Ok(view) => view,
        Err(response) => return *response,
    };
    let relay = app.relay();
    let Some(asset) = relay.config.asset(&name).cloned() else {
        return message_page(
            &app,
            StatusCode::NOT_FOUND,
            "No such asset",
            "No asset has this name in the current config.",
        );
    };
    let back = app.href(&format!(
        "/assets/{}",
        super::assets::path_segment(&asset.name)
    ));
    let to = match canonical(form.to.trim()) {
        Ok(address) if !address.as_str().is_empty() => address.as_str().to_string(),
        _ => {
            app.console.notes.set(
                &asset.name,
                Note {
                    at: SystemTime::now(),
                    ok: false,
                    action: "Send test message",
                    text: "that is not an e-mail address such as someone@example.com".to_string(),
                    hint: None,
                },
            );
            return redirect(&back);
        }
    };
    let body = message(&asset, &to, &session.user, &relay.config.server.hostname);
    let result = deliver(&relay, &asset, &to, &body).await;
    let (ok, text, reply) = match &result {
        Ok(reply) => (
            true,
            format!("sent to {to}; the provider said: {reply}"),
            reply.clone(),
        ),
        Err(why) => (false, format!("not sent to {to}: {why}"), why.clone()),
    };
    tracing::info!(asset = %asset.name, user = %session.user, ok, "console: test message");
    relay.recent.record(MessageRecord {
        at: SystemTime::now(),
        user: format!("{} (console test)", session.user),
        sender: asset.email.clone(),
        recipients: 1,
        size: body.len() as u64,
        asset: asset.name.clone(),
        outcome: if ok {
            Ended::Delivered
        } else {
            Ended::Deferred
        },
        reply,
    });
    app.console.notes.set(
        &asset.name,
        Note {
            at: SystemTime::now(),
            ok,
            action: "Send test message",
            text,
            hint: None,
        },
    );
    redirect(&back)
}
