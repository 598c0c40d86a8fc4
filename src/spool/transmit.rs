//! Sending one stored message through the asset's transport: a [`Link`] from the pool
//! or newly opened (token, connect, XOAUTH2 — or the Gmail API / Graph), then MAIL, one
//! RCPT per recipient still pending, DATA, the stored wire form and the final dot, with a
//! verdict per recipient. The same SMTP-shaped calls the session makes, so every
//! transport works without a branch here.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::config::{Asset, AssetTransport, CredentialFailure};
use crate::limits;
use crate::relay::Relay;
use crate::replies::Say;
use crate::smtp::reply::Reply;
use crate::transport::{ApiFailure, Link, TransportError};

/// Bytes read from the `.eml` per write to the provider.
const CHUNK: usize = 64 * 1024;
/// How often a delivery waiting for an `upstream_connections` slot looks again.
const SLOT_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// What one recipient got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Try again later; the text says why.
    Temporary(String),
    /// Refused for good; the provider's reply.
    Permanent(String),
}

/// The message to send: a spooled `.eml` (wire form) or bytes in memory (a DSN).
pub enum Body {
    File(PathBuf),
    Wire(Vec<u8>),
}

/// The envelope of one transmission.
pub struct Envelope<'a> {
    pub from: &'a str,
    pub to: &'a [String],
    pub size: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
}

pub struct Transmitted {
    /// One per recipient of the envelope, in order.
    pub verdicts: Vec<Verdict>,
    /// The failure was the asset's credentials (a new grant should retry at once).
    pub credentials: bool,
    /// The provider may have accepted the message although no 250 was seen.
    pub possible_duplicate: bool,
    /// MAIL FROM itself was refused (for the DSN's choice of sender).
    pub mail_refused: bool,
}

impl Transmitted {
    fn all(count: usize, verdict: Verdict) -> Transmitted {
        Transmitted {
            verdicts: vec![verdict; count],
            credentials: false,
            possible_duplicate: false,
            mail_refused: false,
        }
    }
}

fn verdict_of(reply: &Reply) -> Verdict {
    match reply.code / 100 {
        2 | 3 => Verdict::Accepted,
        5 => Verdict::Permanent(reply.to_string()),
        _ => Verdict::Temporary(reply.to_string()),
    }
}

/// A provider reply's verdict, where a quota refusal (`550 5.4.5` and the like) is never
/// permanent: the asset is marked over the provider's limit (issue 16) and the message
/// waits for the mark to end, instead of becoming a dead letter.
async fn judged(relay: &Relay, asset: &Asset, reply: &Reply) -> Verdict {
    match limits::quota::smtp_quota(reply) {
        Some(quota) => over_quota(relay, asset, &quota, &reply.to_string()).await,
        None => verdict_of(reply),
    }
}

async fn over_quota(
    relay: &Relay,
    asset: &Asset,
    quota: &limits::ProviderQuota,
    said: &str,
) -> Verdict {
    let mark = relay
        .limits
        .provider_refused(asset, quota, limits::unix_now())
        .await;
    tracing::error!(
        asset = %asset.name,
        until = %limits::format_time(mark.until),
        provider_said = %mark.reason,
        "asset over the provider's sending limit: spooled mail waits until then"
    );
    relay.metrics.limit_hit("provider_quota");
    Verdict::Temporary(format!(
        "over the provider's sending limit until {}: {said}",
        limits::format_time(mark.until)
    ))
}

/// A slot for a new SMTP connection of an asset with `upstream_connections` (issue 16),
/// waiting up to `upstream_connect_secs` like a session; Err when none came free.
async fn connection_slot(relay: &Relay, asset: &Asset) -> Result<Option<limits::Slot>, String> {
    let cap = match asset.transport {
        AssetTransport::Smtp => asset.sending.upstream_connections,
        _ => 0,
    };
    let deadline = Instant::now() + relay.config.timeouts.upstream_connect;
    loop {
        if let Some(slot) = relay.limits.slots.try_take(&asset.name, cap).await {
            return Ok(slot);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "all {cap} upstream_connections of asset {} in use",
                asset.name
            ));
        }
        tokio::time::sleep(SLOT_POLL).await;
    }
}

/// Sends `body` for `envelope` through `asset`.
pub async fn transmit(
    relay: &Relay,
    asset: &Arc<Asset>,
    envelope: &Envelope<'_>,
    body: &Body,
) -> Transmitted {
    let count = envelope.to.len();
    let cx = relay.transport_context();
    let mut pooled = relay.pool.take(&asset.name);
    let mut link = loop {
        let (mut link, reused) = match pooled.take() {
            Some(link) => (link, true),
            None => {
                let slot = match connection_slot(relay, asset).await {
                    Ok(slot) => slot,
                    Err(busy) => return Transmitted::all(count, Verdict::Temporary(busy)),
                };
                match Link::open(&cx, asset).await {
                    Ok(mut link) => {
                        if let Link::Smtp(connection) = &mut link {
                            connection.hold_slot(slot);
                        }
                        (link, false)
                    }
                    Err(err) => {
                        let mut failed =
                            Transmitted::all(count, Verdict::Temporary(err.to_string()));
                        failed.credentials = err.needs_operator();
                        return failed;
                    }
                }
            }
        };
        let mail = match mail_line(&link, envelope) {
            Ok(line) => line,
            Err(refusal) => {
                let mut refused = Transmitted::all(count, Verdict::Permanent(refusal));
                refused.mail_refused = true;
                return refused;
            }
        };
        if link.transaction_open() && !link.reset().await {
            if reused {
                continue;
            }
            return Transmitted::all(count, Verdict::Temporary("RSET refused".into()));
        }
        match link.command(&mail).await {
            Ok(reply) if reply.is_positive() => break link,
            Ok(reply) => {
                let mut refused = Transmitted::all(count, judged(relay, asset, &reply).await);
                refused.mail_refused = reply.code / 100 == 5;
                // A pooled link may refuse MAIL because its session ended (token expiry):
                // a new one is tried; a new link's refusal is the provider's answer.
                if reused {
                    continue;
                }
                park(relay, asset, link).await;
                return refused;
            }
            Err(err) if reused => {
                tracing::debug!(asset = %asset.name, error = %err, "pooled link unusable for a spooled message, opening a new one");
                continue;
            }
            Err(err) => return Transmitted::all(count, Verdict::Temporary(err.to_string())),
        }
    };
    let mut verdicts = Vec::with_capacity(count);
    for to in envelope.to {
        match link.command(&format!("RCPT TO:<{to}>")).await {
            Ok(reply) => verdicts.push(judged(relay, asset, &reply).await),
            Err(err) => return Transmitted::all(count, Verdict::Temporary(err.to_string())),
        }
    }
    if !verdicts.contains(&Verdict::Accepted) {
        if link.reset().await {
            park(relay, asset, link).await;
        }
        return Transmitted {
            verdicts,
            credentials: false,
            possible_duplicate: false,
            mail_refused: false,
        };
    }
    let accepted_only = |verdicts: &[Verdict], outcome: Verdict| -> Vec<Verdict> {
        verdicts
            .iter()
            .map(|v| match v {
                Verdict::Accepted => outcome.clone(),
                other => other.clone(),
            })
            .collect()
    };
    match link.command("DATA").await {
        Ok(reply) if reply.code == 354 => {}
        Ok(reply) => {
            return Transmitted {
                verdicts: accepted_only(&verdicts, judged(relay, asset, &reply).await),
                credentials: false,
                possible_duplicate: false,
                mail_refused: false,
            }
        }
        Err(err) => {
            return Transmitted {
                verdicts: accepted_only(&verdicts, Verdict::Temporary(err.to_string())),
                credentials: false,
                possible_duplicate: false,
                mail_refused: false,
            }
        }
    }
    if let Err(err) = send_body(&mut link, body).await {
        return Transmitted {
            verdicts: accepted_only(&verdicts, Verdict::Temporary(err)),
            credentials: false,
            possible_duplicate: false,
            mail_refused: false,
        };
    }
    match link.final_reply(&cx).await {
        Ok(reply) => {
            let outcome = judged(relay, asset, &reply).await;
            park(relay, asset, link).await;
            Transmitted {
                verdicts: accepted_only(&verdicts, outcome),
                credentials: false,
                possible_duplicate: false,
                mail_refused: false,
            }
        }
        Err(err) => {
            let possible_duplicate = err.possible_duplicate();
            let credentials = matches!(
                err,
                TransportError::Token(_)
                    | TransportError::Api(ApiFailure::Unauthorized { .. })
                    | TransportError::Api(ApiFailure::Forbidden { .. })
            );
            let reply =
                Say::for_transport_failure(&err, &asset.name, CredentialFailure::Temporary).reply();
            let outcome = if let Some(quota) = limits::quota::transport_quota(&err) {
                over_quota(relay, asset, &quota, &err.to_string()).await
            } else if reply.code / 100 == 5 && !possible_duplicate {
                Verdict::Permanent(format!("{reply} ({err})"))
            } else {
                Verdict::Temporary(err.to_string())
            };
            Transmitted {
                verdicts: accepted_only(&verdicts, outcome),
                credentials,
                possible_duplicate,
                mail_refused: false,
            }
        }
    }
}

/// MAIL FROM with the parameters the provider offers; Err when it cannot take the
/// message at all (SMTPUTF8 needed, not offered).
fn mail_line(link: &Link, envelope: &Envelope<'_>) -> Result<String, String> {
    let capabilities = link.capabilities();
    let mut line = format!("MAIL FROM:<{}>", envelope.from);
    if capabilities.size.is_some() {
        line.push_str(&format!(" SIZE={}", envelope.size));
    }
    if envelope.eight_bit && capabilities.eight_bit_mime {
        line.push_str(" BODY=8BITMIME");
    }
    if envelope.smtputf8 {
        if !capabilities.smtputf8 {
            return Err(Say::Utf8NotSupportedUpstream.reply().to_string());
        }
        line.push_str(" SMTPUTF8");
    }
    Ok(line)
}

/// The wire form, the last chunk with the terminator in the same write.
async fn send_body(link: &mut Link, body: &Body) -> Result<(), String> {
    match body {
        Body::Wire(bytes) => {
            let mut last = bytes.clone();
            last.extend_from_slice(b".\r\n");
            link.send_data_end(&last).await.map_err(|e| e.to_string())
        }
        Body::File(path) => {
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(|e| format!("cannot read the spooled message: {e}"))?;
            let mut current = Vec::with_capacity(CHUNK);
            let mut next = vec![0u8; CHUNK];
            loop {
                let read = file
                    .read(&mut next)
                    .await
                    .map_err(|e| format!("cannot read the spooled message: {e}"))?;
                if read == 0 {
                    current.extend_from_slice(b".\r\n");
                    return link
                        .send_data_end(&current)
                        .await
                        .map_err(|e| e.to_string());
                }
                if current.len() >= CHUNK {
                    link.send_wire(&current).await.map_err(|e| e.to_string())?;
                    current.clear();
                }
                current.extend_from_slice(&next[..read]);
            }
        }
    }
}

/// Gives a link that finished its transaction back to the pool (or closes it).
async fn park(relay: &Relay, asset: &Asset, link: Link) {
    if let Some(unwanted) = relay.pool.put(&asset.name, link, Instant::now()) {
        unwanted.quit().await;
    }
}
