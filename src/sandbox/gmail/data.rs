//! The message itself: DATA (dot-stuffed, read by [`super::wire`]) and BDAT chunks (RFC 3030),
//! then the behaviour switches that end a transaction badly, and delivery: the message is kept
//! in memory for tests and optionally written to the mail directory.

use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite};

use super::session::Session;
use super::wire::{multiline, normalize_reply};
use super::{lock, unix_now, Delivered, MAX_MESSAGE_BYTES};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<'_, S> {
    /// Returns false when the connection must be dropped.
    pub(super) async fn data(&mut self, args: &str) -> io::Result<bool> {
        if !self.require_tls().await? {
            return Ok(true);
        }
        if !args.is_empty() {
            let text = format!("501 5.5.4 Syntax error in parameters {}", self.tag());
            self.reply(&text).await?;
            return Ok(true);
        }
        if self.txn.bdat.is_some() {
            let text = format!("503 5.5.1 DATA not allowed after BDAT. {}", self.tag());
            self.reply(&text).await?;
            return Ok(true);
        }
        if !self.require_recipients().await? {
            return Ok(true);
        }
        let text = format!("354  Go ahead {}", self.tag());
        self.reply(&text).await?;

        if self.behaviour().close_during_data {
            if self.buf.is_empty() {
                self.read_more().await?;
            }
            tracing::info!(
                peer = %self.peer,
                conn = self.conn_no,
                "sandbox Gmail: dropping connection during DATA (behaviour)",
            );
            return Ok(false);
        }
        if self.behaviour().stall_during_data {
            if self.buf.is_empty() {
                self.read_more().await?;
            }
            tracing::info!(
                peer = %self.peer,
                conn = self.conn_no,
                "sandbox Gmail: stalling during DATA (behaviour)",
            );
            // Until shutdown: the caller's select! ends the connection then.
            std::future::pending::<()>().await;
        }

        let Some((data, too_big)) = self.read_data().await? else {
            return Ok(false);
        };
        tracing::debug!(
            peer = %self.peer,
            conn = self.conn_no,
            bytes = data.len(),
            "C: <message data> .",
        );
        self.finish_message(data, too_big).await
    }

    /// BDAT (RFC 3030): exactly `size` octets follow, no dot-stuffing. Returns false when the
    /// connection must be dropped.
    pub(super) async fn bdat(&mut self, args: &str) -> io::Result<bool> {
        let mut parts = args.split_whitespace();
        let size = parts.next().and_then(|s| s.parse::<u64>().ok());
        let last = match parts.next() {
            None => false,
            Some(word) if word.eq_ignore_ascii_case("LAST") => true,
            Some(_) => {
                let text = format!("501 5.5.4 Syntax error in parameters {}", self.tag());
                self.reply(&text).await?;
                return Ok(true);
            }
        };
        let Some(size) = size.filter(|_| parts.next().is_none()) else {
            // Without a valid size the chunk cannot be skipped, so the stream is out of sync.
            let text = format!("501 5.5.4 Syntax error in parameters {}", self.tag());
            self.reply(&text).await?;
            return Ok(false);
        };
        if self.behaviour().no_chunking {
            // Not offered, so not understood: the octets that follow are read as commands,
            // as a server without CHUNKING would.
            let text = format!("502 5.5.1 Unrecognized command. {}", self.tag());
            self.reply(&text).await?;
            return Ok(true);
        }
        if self.behaviour().close_during_data || self.behaviour().stall_during_data {
            if self.buf.is_empty() {
                self.read_more().await?;
            }
            if self.behaviour().stall_during_data {
                tracing::info!(peer = %self.peer, conn = self.conn_no, "sandbox Gmail: stalling during BDAT (behaviour)");
                std::future::pending::<()>().await;
            }
            tracing::info!(peer = %self.peer, conn = self.conn_no, "sandbox Gmail: dropping connection during BDAT (behaviour)");
            return Ok(false);
        }
        // The chunk must be consumed even when it is going to be refused.
        let in_sequence = self.tls && self.txn.mail_from.is_some() && !self.txn.rcpt_to.is_empty();
        let mut chunk = Vec::new();
        let mut keep = in_sequence && !self.txn.bdat_too_big;
        let current = self.txn.bdat.as_ref().map_or(0, Vec::len) as u64;
        if keep && current + size > MAX_MESSAGE_BYTES as u64 {
            keep = false;
            self.txn.bdat_too_big = true;
        }
        let mut remaining = size;
        while remaining > 0 {
            if self.buf.is_empty() && self.read_more().await? == 0 {
                return Ok(false);
            }
            let take = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            if keep {
                chunk.extend_from_slice(&self.buf[..take]);
            }
            self.buf.advance(take);
            remaining -= take as u64;
        }
        tracing::debug!(
            peer = %self.peer,
            conn = self.conn_no,
            bytes = size,
            last,
            "C: <BDAT chunk>",
        );
        if !in_sequence {
            if !self.require_tls().await? {
                return Ok(true);
            }
            self.require_recipients().await?;
            return Ok(true);
        }
        let data = self.txn.bdat.get_or_insert_with(Vec::new);
        data.extend_from_slice(&chunk);
        if !last && self.behaviour().close_between_chunks {
            tracing::info!(
                peer = %self.peer,
                conn = self.conn_no,
                "sandbox Gmail: dropping connection between BDAT chunks (behaviour)",
            );
            return Ok(false);
        }
        if !last {
            let text = format!("250 2.0.0 OK {size} octets received {}", self.tag());
            self.reply(&text).await?;
            return Ok(true);
        }
        let data = self.txn.bdat.take().unwrap_or_default();
        let too_big = self.txn.bdat_too_big;
        self.finish_message(data, too_big).await
    }

    /// Applies the behaviour switches, stores the message and sends the final reply. Returns
    /// false when the connection must be dropped.
    async fn finish_message(&mut self, data: Vec<u8>, too_big: bool) -> io::Result<bool> {
        let behaviour = self.behaviour();
        let txn = std::mem::take(&mut self.txn);
        if behaviour.close_after_dot {
            tracing::info!(
                peer = %self.peer,
                conn = self.conn_no,
                "sandbox Gmail: dropping connection after end of data (behaviour)",
            );
            return Ok(false);
        }
        if too_big {
            let text = size_exceeded(&self.tag());
            self.reply(&text).await?;
            return Ok(true);
        }
        let override_reply = behaviour.data_reply.map(|r| normalize_reply(&r));
        let deliver = override_reply.as_ref().is_none_or(|r| r.starts_with('2'));
        if deliver {
            let (mail_from, mail_params) = txn.mail_from.unwrap_or_default();
            let message = Delivered {
                auth_user: self.auth_user.clone().unwrap_or_default(),
                mail_from,
                mail_params,
                rcpt_to: txn.rcpt_to,
                data,
            };
            if let Err(err) = self.save(&message).await {
                tracing::error!(error = %err, "sandbox Gmail: could not save message");
                let text = format!(
                    "451 4.3.0 Mail server temporarily rejected message. {}",
                    self.tag()
                );
                self.reply(&text).await?;
                return Ok(true);
            }
            tracing::info!(
                peer = %self.peer,
                conn = self.conn_no,
                from = %message.mail_from,
                rcpt = ?message.rcpt_to,
                bytes = message.data.len(),
                "sandbox Gmail: message accepted"
            );
            let count = {
                let mut messages = lock(&self.shared.messages);
                messages.push(message);
                messages.len()
            };
            self.shared.message_count.send_replace(count);
        }
        let text = match override_reply {
            Some(reply) => reply,
            None => format!("250 2.0.0 OK  {} {}", unix_now().as_secs(), self.tag()),
        };
        self.reply(&text).await?;
        Ok(!behaviour.close_after_reply)
    }

    async fn save(&self, message: &Delivered) -> io::Result<()> {
        let Some(dir) = &self.shared.config.mail_dir else {
            return Ok(());
        };
        let n = self.shared.file_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let name = format!("{}-{n}.eml", unix_now().as_millis());
        write_atomically(dir, &name, &message.data).await
    }
}

/// Writes via a temporary name and renames, so a watcher never sees a half-written .eml.
async fn write_atomically(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(".{name}.tmp"));
    tokio::fs::write(&tmp, data).await?;
    tokio::fs::rename(&tmp, dir.join(name)).await
}

pub(super) fn size_exceeded(tag: &str) -> String {
    multiline(
        "552",
        &[
            "5.3.4 Your message exceeded Google's message size limits. For more".to_owned(),
            format!(
                "5.3.4 information, go to  https://support.google.com/mail/?p=MaxSizeError {tag}"
            ),
        ],
    )
}
