//! Graph's path for messages too big for one `sendMail` request (issue 13, opt-in with
//! `graph_large_messages`, which needs Mail.ReadWrite): the MIME is parsed (mail-parser),
//! a draft is created from its headers and body, each attachment is added — whole when
//! its base64 fits one request, else through an upload session (`createUploadSession`,
//! then `PUT` ranges of at most 4 MiB, multiples of 320 KiB, with `Content-Range` and no
//! bearer token, as Microsoft's large-attachment guide shows) — and the draft is sent.
//! A draft left behind by a failure is deleted (best effort, logged).
//!
//! What the draft keeps: Subject, the HTML body (else the text body), attachments with
//! their names, content types, content ids and inline flag, Message-ID
//! (`internetMessageId`), Reply-To, In-Reply-To and References (as the MAPI properties
//! `PidTagInReplyToId` / `PidTagInternetReferences`). Recipients come from the envelope:
//! To and Cc as the headers name them, every other envelope recipient as Bcc. What Graph
//! rewrites: From and Sender (the mailbox), Date, the MIME structure and transfer
//! encodings, a text part next to an HTML one, and any other header.
//!
//! Memory: the parse needs the message in memory, so one large message is parsed at a
//! time per process ([`LARGE_PARSES`]); the bytes are dropped before the uploads end.

use std::collections::HashSet;

use base64::Engine as _;
use mail_parser::{MessageParser, MimeHeaders as _};
use tokio::sync::Semaphore;

use super::graph::{read_all, read_bounded, Bearer, GraphMessage, GraphTransport};
use super::graph_error::{GraphError, GraphStep};

/// Attachments whose raw size is below this are posted whole: their base64 inside the JSON
/// must stay under Graph's 4 MB request limit (2,800,000 → 3,733,336 base64 bytes).
/// Anything larger, and every attachment of 3 MB or more, goes through an upload session.
pub const INLINE_ATTACHMENT_MAX: usize = 2_800_000;

/// One `PUT` of an upload session: the largest multiple of 320 KiB not over 4 MiB.
pub const UPLOAD_CHUNK: usize = 12 * 320 * 1024;

/// One large message parsed at a time: each parse holds a whole message in memory.
static LARGE_PARSES: Semaphore = Semaphore::const_new(1);

/// One attachment as the draft path sends it.
struct Attachment {
    name: String,
    content_type: String,
    content_id: Option<String>,
    inline: bool,
    bytes: Vec<u8>,
}

/// What the draft is built from.
struct Draft {
    resource: serde_json::Value,
    attachments: Vec<Attachment>,
}

fn recipient(address: &str) -> serde_json::Value {
    serde_json::json!({"emailAddress": {"address": address}})
}

/// The draft resource and attachments of `raw`, recipients from `envelope`.
fn build_draft(raw: &[u8], envelope: &[String]) -> Result<Draft, GraphError> {
    let message = MessageParser::default()
        .parse(raw)
        .ok_or_else(|| GraphError::Local {
            reason: "the message cannot be parsed as MIME".to_string(),
        })?;
    let named = |addresses: Option<&mail_parser::Address<'_>>| -> HashSet<String> {
        addresses
            .map(|list| {
                list.iter()
                    .filter_map(|addr| addr.address())
                    .map(str::to_ascii_lowercase)
                    .collect()
            })
            .unwrap_or_default()
    };
    let to_header = named(message.to());
    let cc_header = named(message.cc());
    let (mut to, mut cc, mut bcc) = (Vec::new(), Vec::new(), Vec::new());
    for rcpt in envelope {
        let lower = rcpt.to_ascii_lowercase();
        if to_header.contains(&lower) {
            to.push(recipient(rcpt));
        } else if cc_header.contains(&lower) {
            cc.push(recipient(rcpt));
        } else {
            bcc.push(recipient(rcpt));
        }
    }
    let html = message
        .html_bodies()
        .find(|part| part.is_text_html())
        .and_then(|part| part.text_contents());
    let (body_type, body) = match html {
        Some(html) => ("HTML", html.to_string()),
        None => (
            "Text",
            message
                .text_bodies()
                .find(|part| part.is_text() && !part.is_text_html())
                .and_then(|part| part.text_contents())
                .unwrap_or_default()
                .to_string(),
        ),
    };
    let mut resource = serde_json::json!({
        "subject": message.subject().unwrap_or_default(),
        "body": {"contentType": body_type, "content": body},
        "toRecipients": to,
        "ccRecipients": cc,
        "bccRecipients": bcc,
    });
    if let Some(id) = message.message_id() {
        resource["internetMessageId"] = format!("<{id}>").into();
    }
    if let Some(reply_to) = message.reply_to() {
        let list: Vec<_> = reply_to
            .iter()
            .filter_map(|addr| addr.address())
            .map(recipient)
            .collect();
        resource["replyTo"] = list.into();
    }
    let ids = |value: &mail_parser::HeaderValue<'_>| {
        value
            .as_text_list()
            .map(|ids| {
                ids.iter()
                    .map(|id| format!("<{id}>"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|text| !text.is_empty())
    };
    let mut properties = Vec::new();
    if let Some(in_reply_to) = ids(message.in_reply_to()) {
        properties.push(serde_json::json!({"id": "String 0x1042", "value": in_reply_to}));
    }
    if let Some(references) = ids(message.references()) {
        properties.push(serde_json::json!({"id": "String 0x1039", "value": references}));
    }
    if !properties.is_empty() {
        resource["singleValueExtendedProperties"] = properties.into();
    }
    let attachments = message
        .attachments()
        .enumerate()
        .map(|(n, part)| {
            let content_type = part.content_type().map_or_else(
                || "application/octet-stream".to_string(),
                |ct| match ct.subtype() {
                    Some(sub) => format!("{}/{sub}", ct.ctype()),
                    None => ct.ctype().to_string(),
                },
            );
            Attachment {
                name: part
                    .attachment_name()
                    .map_or_else(|| format!("attachment-{}", n + 1), str::to_string),
                content_type,
                content_id: part.content_id().map(str::to_string),
                inline: part.content_disposition().is_some_and(|d| d.is_inline()),
                bytes: part.contents().to_vec(),
            }
        })
        .collect();
    Ok(Draft {
        resource,
        attachments,
    })
}

impl GraphTransport {
    /// The draft path: create, attach, send; the draft is deleted if anything fails.
    pub(super) async fn send_large(
        &self,
        bearer: &Bearer,
        message: &mut GraphMessage<'_>,
    ) -> Result<(), GraphError> {
        let draft = {
            let _parse = LARGE_PARSES
                .acquire()
                .await
                .map_err(|_| GraphError::Local {
                    reason: "the parse gate is closed".to_string(),
                })?;
            let len = message.source.len();
            let raw = read_all(message.source, len)
                .await
                .map_err(|err| GraphError::Local {
                    reason: format!("cannot read the spooled message: {err}"),
                })?;
            build_draft(&raw, message.recipients)?
        };
        // The draft itself (headers and body, no attachment) must fit one request.
        let resource = json_bytes(&draft.resource);
        if resource.len() as u64 > super::graph::SEND_MAIL_MAX_MIME {
            return Err(GraphError::TooLarge {
                status: 413,
                code: "BodyTooLarge".to_string(),
                message: format!(
                    "the message body ({} bytes as JSON) is over what one Graph request takes",
                    resource.len()
                ),
            });
        }
        let created = self
            .call(
                self.http
                    .post(format!("{}/messages", self.user_url()))
                    .bearer_auth(bearer.token.expose())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(resource),
                GraphStep::Draft,
                bearer,
                false,
            )
            .await?;
        let body = read_bounded(created, 1024 * 1024).await;
        let id = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("id")?.as_str().map(str::to_string))
            .ok_or_else(|| GraphError::Failed {
                status: 201,
                code: "unknown".to_string(),
                message: "the created draft has no id".to_string(),
            })?;
        let result = self.fill_and_send(bearer, &id, draft.attachments).await;
        if let Err(error) = &result {
            // A draft left behind would sit in the mailbox's Drafts folder.
            let deleted = self
                .call(
                    self.http
                        .delete(format!("{}/messages/{id}", self.user_url()))
                        .bearer_auth(bearer.token.expose()),
                    GraphStep::Draft,
                    bearer,
                    false,
                )
                .await;
            match deleted {
                Ok(_) => {
                    tracing::info!(asset = %self.asset.name, %error, "large message not sent; its draft was deleted")
                }
                Err(err) => {
                    tracing::warn!(asset = %self.asset.name, %error, delete_error = %err, "large message not sent; its draft could not be deleted and stays in Drafts")
                }
            }
        }
        result
    }

    async fn fill_and_send(
        &self,
        bearer: &Bearer,
        id: &str,
        attachments: Vec<Attachment>,
    ) -> Result<(), GraphError> {
        let message_url = format!("{}/messages/{id}", self.user_url());
        for attachment in attachments {
            if attachment.bytes.len() < INLINE_ATTACHMENT_MAX {
                let mut item = serde_json::json!({
                    "@odata.type": "#microsoft.graph.fileAttachment",
                    "name": attachment.name,
                    "contentType": attachment.content_type,
                    "isInline": attachment.inline,
                    "contentBytes": base64::engine::general_purpose::STANDARD.encode(&attachment.bytes),
                });
                if let Some(cid) = &attachment.content_id {
                    item["contentId"] = cid.clone().into();
                }
                self.call(
                    self.http
                        .post(format!("{message_url}/attachments"))
                        .bearer_auth(bearer.token.expose())
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(json_bytes(&item)),
                    GraphStep::Draft,
                    bearer,
                    false,
                )
                .await?;
            } else {
                self.upload(bearer, &message_url, attachment).await?;
            }
        }
        self.call(
            self.http
                .post(format!("{message_url}/send"))
                .bearer_auth(bearer.token.expose())
                .header(reqwest::header::CONTENT_LENGTH, 0),
            GraphStep::SendDraft,
            bearer,
            true,
        )
        .await?;
        Ok(())
    }

    async fn upload(
        &self,
        bearer: &Bearer,
        message_url: &str,
        attachment: Attachment,
    ) -> Result<(), GraphError> {
        let size = attachment.bytes.len();
        let mut item = serde_json::json!({
            "attachmentType": "file",
            "name": attachment.name,
            "size": size,
            "contentType": attachment.content_type,
            "isInline": attachment.inline,
        });
        if let Some(cid) = &attachment.content_id {
            item["contentId"] = cid.clone().into();
        }
        let session = self
            .call(
                self.http
                    .post(format!("{message_url}/attachments/createUploadSession"))
                    .bearer_auth(bearer.token.expose())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(json_bytes(&serde_json::json!({ "AttachmentItem": item }))),
                GraphStep::Draft,
                bearer,
                false,
            )
            .await?;
        let body = read_bounded(session, 64 * 1024).await;
        let upload_url = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("uploadUrl")?.as_str().map(str::to_string))
            .ok_or_else(|| GraphError::Failed {
                status: 201,
                code: "unknown".to_string(),
                message: "the upload session has no uploadUrl".to_string(),
            })?;
        // The upload URL must be the API's own origin: it is trusted with message bytes.
        if !same_origin(&upload_url, &self.options.api_url) {
            return Err(GraphError::Failed {
                status: 201,
                code: "unknown".to_string(),
                message: "the upload session points to another host".to_string(),
            });
        }
        let mut first = 0usize;
        for chunk in attachment.bytes.chunks(UPLOAD_CHUNK) {
            let last = first + chunk.len() - 1;
            // No Authorization header: the upload URL carries its own (Microsoft refuses both).
            self.call(
                self.http
                    .put(&upload_url)
                    .header(
                        reqwest::header::CONTENT_RANGE,
                        format!("bytes {first}-{last}/{size}"),
                    )
                    .body(chunk.to_vec()),
                GraphStep::Draft,
                bearer,
                false,
            )
            .await?;
            first = last + 1;
        }
        Ok(())
    }
}

fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// Whether `url` has the scheme, host and port of `api_url`, or is an Outlook host
/// (Graph's real upload URLs point to `outlook.office.com`).
fn same_origin(url: &str, api_url: &str) -> bool {
    let (Ok(url), Ok(api)) = (reqwest::Url::parse(url), reqwest::Url::parse(api_url)) else {
        return false;
    };
    let outlook = url.scheme() == "https"
        && url
            .host_str()
            .is_some_and(|h| h == "outlook.office.com" || h == "outlook.office365.com");
    outlook
        || (url.scheme() == api.scheme()
            && url.host_str() == api.host_str()
            && url.port_or_known_default() == api.port_or_known_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // Microsoft's rules for upload ranges, checked when this compiles.
    const _: () = assert!(UPLOAD_CHUNK.is_multiple_of(320 * 1024));
    const _: () = assert!(UPLOAD_CHUNK <= 4 * 1024 * 1024);

    #[test]
    fn inline_attachments_fit_one_request() {
        assert!(super::super::graph::base64_len(INLINE_ATTACHMENT_MAX as u64) < 4_000_000);
    }

    #[test]
    fn the_draft_keeps_what_the_module_says() {
        let raw = b"From: a@x.org\r\nTo: B <b@y.org>\r\nCc: c@y.org\r\nReply-To: r@x.org\r\n\
Subject: Report\r\nMessage-ID: <m1@x.org>\r\nIn-Reply-To: <p@x.org>\r\nReferences: <o@x.org> <p@x.org>\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Type: text/html\r\n\r\n<p>hi</p>\r\n--b\r\nContent-Type: image/png; name=x.png\r\n\
Content-ID: <img1>\r\nContent-Disposition: inline; filename=x.png\r\nContent-Transfer-Encoding: base64\r\n\r\n\
AAECAw==\r\n--b--\r\n";
        let envelope = [
            "B@y.org".to_string(),
            "c@y.org".into(),
            "hidden@z.org".into(),
        ];
        let draft = build_draft(raw, &envelope).unwrap();
        let r = &draft.resource;
        assert_eq!(r["subject"], "Report");
        assert_eq!(r["body"]["contentType"], "HTML");
        assert_eq!(r["toRecipients"][0]["emailAddress"]["address"], "B@y.org");
        assert_eq!(r["ccRecipients"][0]["emailAddress"]["address"], "c@y.org");
        assert_eq!(
            r["bccRecipients"][0]["emailAddress"]["address"],
            "hidden@z.org"
        );
        assert_eq!(r["internetMessageId"], "<m1@x.org>");
        assert_eq!(r["replyTo"][0]["emailAddress"]["address"], "r@x.org");
        assert_eq!(r["singleValueExtendedProperties"][0]["value"], "<p@x.org>");
        assert_eq!(
            r["singleValueExtendedProperties"][1]["value"],
            "<o@x.org> <p@x.org>"
        );
        let a = &draft.attachments[0];
        assert_eq!(
            (a.name.as_str(), a.content_type.as_str()),
            ("x.png", "image/png")
        );
        assert_eq!(a.content_id.as_deref(), Some("img1"));
        assert!(a.inline);
        assert_eq!(a.bytes, [0, 1, 2, 3]);
    }

    #[test]
    fn upload_urls_stay_with_the_api() {
        assert!(same_origin(
            "https://127.0.0.1:4443/upload/x",
            "https://127.0.0.1:4443"
        ));
        assert!(!same_origin(
            "https://127.0.0.1:9/upload/x",
            "https://127.0.0.1:4443"
        ));
        assert!(same_origin(
            "https://outlook.office.com/api/v2.0/Users('x')/Messages('y')/AttachmentSessions('z')?authtoken=t",
            "https://graph.microsoft.com"
        ));
        assert!(!same_origin(
            "http://evil.example/upload",
            "https://graph.microsoft.com"
        ));
    }
}
