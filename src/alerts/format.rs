//! An [`Alert`] as bytes for each channel: our JSON object, Slack's and Teams' incoming
//! webhook shapes around the same text, and a short mail. Every payload passes
//! [`redact`] with the asset's secrets last, so even a provider that repeated a secret in
//! its error text cannot put it into a chat channel or a mailbox.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::event::Alert;
use crate::config::WebhookFormat;
use crate::credentials::secret::redact;

/// `2026-12-04T10:06:49Z`: RFC 3339 in UTC, whole seconds.
pub fn rfc3339(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    at.format(format)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// `2026-12-11 10:00 UTC`, for sentences.
pub fn utc_minutes(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    at.format(format)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// The console's page for `asset` under `base` (the console's external URL), the asset
/// name percent-encoded as one path segment.
pub fn console_link(base: &str, asset: &str) -> String {
    let mut url = base.trim_end_matches('/').to_string();
    url.push_str("/assets/");
    for byte in asset.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            url.push(char::from(byte));
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url
}

/// The issue's JSON object: `event`, `asset`, `email`, `reason`, `fix`, `console_url`
/// (when the console is on), `at`; plus `expires_at` for the `*_expiring` events.
pub fn json_object(alert: &Alert) -> Value {
    let mut object = json!({
        "event": alert.event.name(),
        "asset": alert.asset,
        "email": alert.email,
        "reason": alert.reason,
        "fix": alert.fix,
        "at": rfc3339(alert.at),
    });
    if let Some(url) = &alert.console_url {
        object["console_url"] = Value::String(url.clone());
    }
    if let Some(expires_at) = alert.expires_at {
        object["expires_at"] = Value::String(rfc3339(expires_at));
    }
    object
}

/// One headline: "smtp-oauth-relay: asset support needs attention".
pub fn headline(alert: &Alert) -> String {
    format!(
        "smtp-oauth-relay: asset {} ({}) {}",
        alert.asset,
        alert.email,
        alert.event.headline()
    )
}

/// The text of chat messages and mails: headline, reason, fix, link.
pub fn text(alert: &Alert) -> String {
    let mut text = format!(
        "{}\nWhat happened: {}\nWhat to do: {}\n",
        headline(alert),
        alert.reason,
        alert.fix
    );
    if let Some(url) = &alert.console_url {
        text.push_str(&format!("Console: {url}\n"));
    }
    text.push_str(&format!("At: {}\n", rfc3339(alert.at)));
    text
}

/// The webhook body for `format`, with `secrets` redacted.
pub fn webhook_body(alert: &Alert, format: WebhookFormat, secrets: &[&str]) -> String {
    let body = match format {
        WebhookFormat::Json => json_object(alert),
        // Slack incoming webhooks: `text` (mrkdwn; our text has no markup to escape but
        // Slack's three control characters).
        WebhookFormat::Slack => json!({ "text": slack_escape(&text(alert)) }),
        // Teams (Workflows "post to a channel when a webhook request is received", and the
        // older incoming webhooks): a message with one Adaptive Card.
        WebhookFormat::Teams => teams_card(alert),
    };
    let escaped = json_escaped(secrets);
    let secrets: Vec<&str> = escaped.iter().map(|secret| secret.as_ref()).collect();
    redact(&body.to_string(), &secrets)
}

/// The mail an `email` channel sends: headers and body with CRLF line ends, dot-stuffed
/// for DATA, with `secrets` redacted.
pub fn mail(alert: &Alert, from: &str, to: &str, message_id: &str, secrets: &[&str]) -> Vec<u8> {
    let subject: String = headline(alert)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let date = time::OffsetDateTime::from(alert.at)
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let mut message = format!(
        "From: smtp-oauth-relay <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: {date}\r\n\
         Message-ID: <{message_id}>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    );
    for line in text(alert).lines() {
        // RFC 5321 §4.5.2: a line starting with "." gets one more.
        if line.starts_with('.') {
            message.push('.');
        }
        message.push_str(line);
        message.push_str("\r\n");
    }
    redact(&message, secrets).into_bytes()
}

fn teams_card(alert: &Alert) -> Value {
    let mut body = vec![
        json!({ "type": "TextBlock", "text": headline(alert), "weight": "Bolder", "wrap": true }),
        json!({ "type": "TextBlock", "text": format!("What happened: {}", alert.reason), "wrap": true }),
        json!({ "type": "TextBlock", "text": format!("What to do: {}", alert.fix), "wrap": true }),
    ];
    if let Some(url) = &alert.console_url {
        body.push(json!({ "type": "TextBlock", "text": format!("[Open in the console]({url})"), "wrap": true }));
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            }
        }]
    })
}

/// Slack's mrkdwn escapes: `&`, `<`, `>`.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Each secret as it would appear inside a JSON string, besides as itself, so redaction
/// works on serialized bodies (a refresh token's `/` may be written `\/`, quotes escaped).
fn json_escaped<'a>(secrets: &[&'a str]) -> Vec<std::borrow::Cow<'a, str>> {
    let mut out: Vec<std::borrow::Cow<'a, str>> = Vec::new();
    for secret in secrets {
        out.push(std::borrow::Cow::Borrowed(secret));
        let quoted = Value::String((*secret).to_string()).to_string();
        let inner = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .unwrap_or_default()
            .to_string();
        if inner != *secret {
            out.push(std::borrow::Cow::Owned(inner));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::alerts::event::EventKind;
    use std::time::Duration;

    fn alert() -> Alert {
        Alert {
            event: EventKind::AssetNeedsAttention,
            asset: "support & co".into(),
            email: "support@example.com".into(),
            reason: "refused (invalid_grant: Token s3cr3t\"x has been revoked)".into(),
            fix: "run authorize".into(),
            console_url: Some(console_link(
                "https://relay.example.com:9025/",
                "support & co",
            )),
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_378_809),
            expires_at: None,
        }
    }

    #[test]
    fn json_has_the_issues_fields() {
        let body = webhook_body(&alert(), WebhookFormat::Json, &[]);
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["event"], "asset_needs_attention");
        assert_eq!(value["asset"], "support & co");
        assert_eq!(value["email"], "support@example.com");
        assert_eq!(value["fix"], "run authorize");
        assert_eq!(value["at"], "2026-12-04T10:06:49Z");
        assert_eq!(
            value["console_url"],
            "https://relay.example.com:9025/assets/support%20%26%20co"
        );
        assert!(value.get("expires_at").is_none());
    }

    #[test]
    fn every_format_redacts_secrets_even_json_escaped() {
        for format in [
            WebhookFormat::Json,
            WebhookFormat::Slack,
            WebhookFormat::Teams,
        ] {
            let body = webhook_body(&alert(), format, &["s3cr3t\"x"]);
            assert!(!body.contains("s3cr3t"), "{format:?}: {body}");
            assert!(body.contains("<redacted>"), "{format:?}: {body}");
            let _: Value = serde_json::from_str(&body).unwrap();
        }
        let mail =
            String::from_utf8(mail(&alert(), "a@x", "b@y", "id@relay", &["s3cr3t\"x"])).unwrap();
        assert!(
            !mail.contains("s3cr3t")
                && mail.contains("Subject: smtp-oauth-relay: asset support & co")
        );
    }

    #[test]
    fn slack_and_teams_shapes() {
        let slack: Value =
            serde_json::from_str(&webhook_body(&alert(), WebhookFormat::Slack, &[])).unwrap();
        assert!(slack["text"].as_str().unwrap().contains("support &amp; co"));
        let teams: Value =
            serde_json::from_str(&webhook_body(&alert(), WebhookFormat::Teams, &[])).unwrap();
        assert_eq!(teams["type"], "message");
        let card = &teams["attachments"][0];
        assert_eq!(
            card["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(card["content"]["type"], "AdaptiveCard");
        assert!(card["content"]["body"][1]["text"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"));
    }
}
