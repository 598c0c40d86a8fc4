//! The fake Graph's draft path: creating a draft, attachments posted whole (under 3 MB),
//! upload sessions whose every `PUT` range is checked (the next expected offset, at most
//! 4 MiB, multiples of 320 KiB except the last, no bearer token), sending, as Outlook's
//! large-attachment guide describes them.

use base64::Engine as _;
use hyper::header;
use hyper::StatusCode;

use super::mime::{draft_eml, draft_recipients};
use super::routes::{
    bad_request, deliver, empty, graph_error, json, not_found, HttpResponse, Target,
};
use super::{
    lock, Draft, GraphAttachment, GraphDelivered, Shared, UploadSession, MAX_INLINE_ATTACHMENT,
    MAX_UPLOAD_RANGE, UPLOAD_RANGE_UNIT,
};
use crate::sandbox::random_hex;

pub(super) fn create_draft(shared: &Shared, target: &Target, body: &[u8]) -> HttpResponse {
    let Ok(resource) = serde_json::from_slice::<serde_json::Value>(body) else {
        return bad_request("Unable to read JSON request payload.");
    };
    if !resource.is_object() {
        return bad_request("The message must be a JSON object.");
    }
    let id = format!("AAMk-sandbox-{}", random_hex(12));
    let mut answer = resource.clone();
    answer["id"] = serde_json::Value::String(id.clone());
    answer["isDraft"] = serde_json::Value::Bool(true);
    lock(&shared.state).drafts.insert(
        id,
        Draft {
            mailbox: target.mailbox.clone(),
            resource,
            attachments: Vec::new(),
        },
    );
    json(StatusCode::CREATED, &answer)
}

fn attachment_from(item: &serde_json::Value, bytes: Vec<u8>, uploaded: bool) -> GraphAttachment {
    let text = |key: &str| item.get(key).and_then(|v| v.as_str()).map(str::to_string);
    GraphAttachment {
        name: text("name").unwrap_or_default(),
        content_type: text("contentType").unwrap_or_else(|| "application/octet-stream".into()),
        content_id: text("contentId"),
        is_inline: item
            .get("isInline")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        bytes,
        uploaded,
    }
}

pub(super) fn add_attachment(shared: &Shared, target: &Target, body: &[u8]) -> HttpResponse {
    let Ok(item) = serde_json::from_slice::<serde_json::Value>(body) else {
        return bad_request("Unable to read JSON request payload.");
    };
    if item.get("@odata.type").and_then(|v| v.as_str()) != Some("#microsoft.graph.fileAttachment") {
        return bad_request("Only file attachments are supported here.");
    }
    let content = item
        .get("contentBytes")
        .and_then(|v| v.as_str())
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
    let Some(content) = content else {
        return bad_request("contentBytes must be base64.");
    };
    if content.len() >= MAX_INLINE_ATTACHMENT {
        return graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ErrorRequestEntityTooLarge",
            "Attachments of 3 MB or more need an upload session.",
        );
    }
    let attachment = attachment_from(&item, content, false);
    let mut state = lock(&shared.state);
    let Some(draft) = target
        .message
        .as_ref()
        .and_then(|id| state.drafts.get_mut(id))
        .filter(|d| d.mailbox == target.mailbox)
    else {
        return not_found();
    };
    draft.attachments.push(attachment);
    json(
        StatusCode::CREATED,
        &serde_json::json!({"id": format!("AAMkAtt-{}", random_hex(6))}),
    )
}

pub(super) fn create_upload_session(shared: &Shared, target: &Target, body: &[u8]) -> HttpResponse {
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(body) else {
        return bad_request("Unable to read JSON request payload.");
    };
    let Some(item) = request.get("AttachmentItem") else {
        return bad_request("AttachmentItem is required.");
    };
    let size = item.get("size").and_then(|v| v.as_u64()).unwrap_or(0);
    if item.get("attachmentType").and_then(|v| v.as_str()) != Some("file") || size == 0 {
        return bad_request("AttachmentItem needs attachmentType file and a size.");
    }
    let mut state = lock(&shared.state);
    let Some(draft_id) = target.message.clone().filter(|id| {
        state
            .drafts
            .get(id)
            .is_some_and(|d| d.mailbox == target.mailbox)
    }) else {
        return not_found();
    };
    let session = random_hex(16);
    state.uploads.insert(
        session.clone(),
        UploadSession {
            draft: draft_id,
            attachment: attachment_from(item, Vec::new(), true),
            size,
        },
    );
    json(
        StatusCode::CREATED,
        &serde_json::json!({
            "uploadUrl": format!("https://{}/upload/{session}", shared.addr),
            "expirationDateTime": "2099-01-01T00:00:00Z",
            "nextExpectedRanges": ["0-"],
        }),
    )
}

/// `Content-Range: bytes FIRST-LAST/TOTAL`.
fn content_range(headers: &hyper::HeaderMap) -> Option<(u64, u64, u64)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?, total.parse().ok()?))
}

pub(super) fn upload(
    shared: &Shared,
    target: &Target,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> HttpResponse {
    let invalid =
        |message: &str| graph_error(StatusCode::BAD_REQUEST, "InvalidContentRange", message);
    let Some((first, last, total)) = content_range(headers) else {
        return invalid("Content-Range is missing or malformed.");
    };
    let mut state = lock(&shared.state);
    let Some(session) = target
        .session
        .as_ref()
        .and_then(|id| state.uploads.get_mut(id))
    else {
        return not_found();
    };
    let len = body.len() as u64;
    let expected = session.attachment.bytes.len() as u64;
    if first != expected || last < first || last - first + 1 != len || total != session.size {
        return invalid("The Content-Range does not match the next expected range.");
    }
    let final_range = last + 1 == total;
    if len > MAX_UPLOAD_RANGE || (!final_range && !len.is_multiple_of(UPLOAD_RANGE_UNIT)) {
        return invalid("Ranges must be at most 4 MiB and multiples of 320 KiB except the last.");
    }
    session.attachment.bytes.extend_from_slice(body);
    if !final_range {
        return json(
            StatusCode::OK,
            &serde_json::json!({
                "expirationDateTime": "2099-01-01T00:00:00Z",
                "nextExpectedRanges": [format!("{}-", last + 1)],
            }),
        );
    }
    let Some(id) = target.session.clone() else {
        return not_found();
    };
    let Some(done) = state.uploads.remove(&id) else {
        return not_found();
    };
    match state.drafts.get_mut(&done.draft) {
        Some(draft) => {
            draft.attachments.push(done.attachment);
            empty(StatusCode::CREATED)
        }
        None => not_found(),
    }
}

pub(super) async fn send_draft(shared: &Shared, target: &Target, app_only: bool) -> HttpResponse {
    let draft = {
        let mut state = lock(&shared.state);
        let found = target
            .message
            .as_ref()
            .filter(|id| {
                state
                    .drafts
                    .get(*id)
                    .is_some_and(|d| d.mailbox == target.mailbox)
            })
            .cloned();
        found.and_then(|id| state.drafts.remove(&id))
    };
    let Some(draft) = draft else {
        return not_found();
    };
    let recipients = draft_recipients(&draft.resource);
    if recipients.is_empty() {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRecipients",
            "At least one recipient isn't valid.",
        );
    }
    let eml = draft_eml(&draft.mailbox, &draft.resource, &draft.attachments);
    deliver(
        shared,
        GraphDelivered {
            mailbox: draft.mailbox,
            mime: eml.clone(),
            recipients,
            draft: Some(draft.resource),
            attachments: draft.attachments,
            app_only,
        },
        &eml,
    )
    .await;
    empty(StatusCode::ACCEPTED)
}
