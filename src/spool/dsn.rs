//! The delivery status notification (RFC 3464) a dead letter's sender receives: a
//! `multipart/report; report-type=delivery-status` with a human part, the
//! `message/delivery-status` part (one per-recipient block for each failed recipient)
//! and the original message's header block (`text/rfc822-headers`, RFC 6522). Pure:
//! bytes in, bytes out; the worker sends it.

use std::fmt::Write as _;
use std::time::SystemTime;

use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

/// One recipient the report is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub address: String,
    /// The provider's reply (e.g. `550 5.1.1 no such user`) or the relay's reason.
    pub diagnostic: String,
}

/// What the report says.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// The relay's host name (Reporting-MTA).
    pub reporting_mta: &'a str,
    /// The mailbox the report comes from (the asset's account).
    pub from: &'a str,
    /// The original envelope sender, who receives the report.
    pub to: &'a str,
    pub spool_id: &'a str,
    pub arrived: SystemTime,
    pub now: SystemTime,
    pub failed: &'a [Failed],
    /// The original header block (un-stuffed, CRLF lines, without the blank line).
    pub original_headers: &'a [u8],
    /// True when the message expired (`max_age_secs`) rather than being refused.
    pub expired: bool,
}

/// The report as a complete message (CRLF lines, not dot-stuffed).
pub fn build(report: &Report<'_>) -> Vec<u8> {
    let boundary = format!("=_spool_dsn_{}", report.spool_id);
    let date = http_date(report.now);
    let mut out = String::new();
    let _ = write!(
        out,
        "From: Mail Delivery System <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n \
         boundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated delivery status notification.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n",
        from = report.from,
        to = report.to,
        id = report.spool_id,
        mta = report.reporting_mta,
    );
    let why = if report.expired {
        "could not be delivered in the time the relay keeps messages"
    } else {
        "was refused by the provider"
    };
    let _ = write!(
        out,
        "This is the mail relay at {mta}.\r\n\
         \r\n\
         Your message (spool id {id}) {why} for the following recipient(s):\r\n\
         \r\n",
        mta = report.reporting_mta,
        id = report.spool_id,
    );
    for failed in report.failed {
        let _ = write!(
            out,
            "  <{}>: {}\r\n",
            failed.address,
            one_line(&failed.diagnostic)
        );
    }
    let _ = write!(
        out,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {mta}\r\n\
         X-Spool-Id: {id}\r\n\
         Arrival-Date: {arrived}\r\n",
        mta = report.reporting_mta,
        id = report.spool_id,
        arrived = http_date(report.arrived),
    );
    for failed in report.failed {
        let status = status_of(&failed.diagnostic, report.expired);
        let _ = write!(
            out,
            "\r\nFinal-Recipient: rfc822; {address}\r\n\
             Action: failed\r\n\
             Status: {status}\r\n\
             Diagnostic-Code: smtp; {diagnostic}\r\n\
             Last-Attempt-Date: {date}\r\n",
            address = failed.address,
            diagnostic = one_line(&failed.diagnostic),
        );
    }
    let _ = write!(
        out,
        "\r\n--{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n"
    );
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(report.original_headers);
    if !report.original_headers.ends_with(b"\r\n") && !report.original_headers.is_empty() {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// The RFC 3463 status for the report: the reply's enhanced code when it has one, else
/// one from its class; 4.4.7 ("delivery time expired") for an expired message.
fn status_of(diagnostic: &str, expired: bool) -> String {
    if expired {
        return "4.4.7".to_string();
    }
    // "550 5.1.1 text" or a multi-line "550-5.1.1 text".
    let enhanced = diagnostic
        .split_whitespace()
        .take(2)
        .map(|word| word.split_once('-').map_or(word, |(_, rest)| rest))
        .find(|word| {
            let parts: Vec<&str> = word.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "2" | "4" | "5")
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        });
    match enhanced {
        Some(code) => code.to_string(),
        None if diagnostic.starts_with('4') => "4.0.0".to_string(),
        None => "5.0.0".to_string(),
    }
}

/// A provider's multi-line reply on one header line.
fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn http_date(at: SystemTime) -> String {
    OffsetDateTime::from(at)
        .format(&Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".to_string())
}

/// The header block of a wire-form message, un-stuffed (up to the first empty line).
pub fn header_block(wire: &[u8]) -> Vec<u8> {
    let end = wire
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(wire.len(), |at| at + 2);
    let mut out = Vec::with_capacity(end);
    let mut line_start = true;
    for &byte in &wire[..end] {
        if line_start && byte == b'.' {
            line_start = false;
            continue;
        }
        out.push(byte);
        line_start = byte == b'\n';
    }
    out
}

/// Dot-stuffs a message for SMTP DATA (RFC 5321 §4.5.2).
pub fn stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut line_start = true;
    for &byte in message {
        if line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        line_start = byte == b'\n';
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn report_is_a_multipart_report_with_one_block_per_recipient() {
        use mail_parser::MimeHeaders;
        let failed = [
            Failed {
                address: "gone@example.net".into(),
                diagnostic: "550-5.1.1 The email account does not exist.\r\n550 5.1.1 see help"
                    .into(),
            },
            Failed {
                address: "full@example.net".into(),
                diagnostic: "552 mailbox full".into(),
            },
        ];
        let bytes = build(&Report {
            reporting_mta: "relay.test",
            from: "support@example.com",
            to: "scan@example.com",
            spool_id: "ABC123",
            arrived: SystemTime::UNIX_EPOCH,
            now: SystemTime::UNIX_EPOCH,
            failed: &failed,
            original_headers: b"From: scan@example.com\r\nSubject: scan\r\n",
            expired: false,
        });
        let message = mail_parser::MessageParser::default().parse(&bytes).unwrap();
        let content_type = message.content_type().unwrap();
        assert_eq!(content_type.ctype(), "multipart");
        assert_eq!(content_type.subtype(), Some("report"));
        assert_eq!(
            content_type.attribute("report-type"),
            Some("delivery-status")
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("Content-Type: message/delivery-status\r\n"));
        assert!(text.contains(
            "Final-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(text.contains(
            "Final-Recipient: rfc822; full@example.net\r\nAction: failed\r\nStatus: 5.0.0\r\n"
        ));
        assert!(text.contains("Diagnostic-Code: smtp; 550-5.1.1 The email account does not exist. 550 5.1.1 see help\r\n"));
        assert!(text.contains(
            "Content-Type: text/rfc822-headers\r\n\r\nFrom: scan@example.com\r\nSubject: scan\r\n"
        ));
        assert!(text.ends_with("--=_spool_dsn_ABC123--\r\n"));
    }

    #[test]
    fn expired_reports_say_4_4_7() {
        assert_eq!(status_of("451 4.3.0 later", true), "4.4.7");
        assert_eq!(status_of("451 later", false), "4.0.0");
        assert_eq!(status_of("554 5.6.0 bad", false), "5.6.0");
    }

    #[test]
    fn header_block_is_unstuffed_and_stuffing_round_trips() {
        let wire = b"Received: x\r\n..Odd: y\r\n\r\nbody\r\n";
        assert_eq!(header_block(wire), b"Received: x\r\n.Odd: y\r\n");
        assert_eq!(stuff(b".a\r\nb\r\n.\r\n"), b"..a\r\nb\r\n..\r\n");
    }
}
