//! The `Received:` trace header the relay prepends (RFC 5321 §4.4, RFC 3848 protocol names).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Trace<'a> {
    pub helo: &'a str,
    pub peer: IpAddr,
    pub hostname: &'a str,
    pub esmtp: bool,
    pub tls: bool,
    pub authenticated: bool,
    pub id: &'a str,
    /// Named only for a single recipient: with several, listing them would disclose Bcc.
    pub single_recipient: Option<&'a str>,
}

impl Trace<'_> {
    /// The header field, folded, ending in CRLF.
    pub fn header(&self, now: SystemTime) -> String {
        let protocol = match (self.esmtp, self.tls, self.authenticated) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let seconds = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let date = mail_parser::DateTime::from_timestamp(seconds).to_rfc822();
        // Built in one buffer (once per message, on the DATA path).
        let mut out = String::with_capacity(200 + self.helo.len().min(255) + date.len());
        out.push_str("Received: from ");
        push_printable(&mut out, self.helo);
        let _ = write!(
            out,
            " ([{peer}])\r\n\tby {host} (smtp-oauth-relay) with {protocol} id {id}",
            peer = self.peer,
            host = self.hostname,
            id = self.id,
        );
        if let Some(rcpt) = self.single_recipient {
            out.push_str("\r\n\tfor <");
            push_printable(&mut out, rcpt);
            out.push('>');
        }
        out.push_str(";\r\n\t");
        out.push_str(&date);
        out.push_str("\r\n");
        out
    }
}

/// Appends client-supplied text made safe for a header: printable ASCII, bounded length.
fn push_printable(out: &mut String, text: &str) {
    let start = out.len();
    out.extend(
        text.chars()
            .take(255)
            .map(|c| if c.is_ascii_graphic() { c } else { '?' }),
    );
    if out.len() == start {
        out.push_str("unknown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn header_is_folded_and_names_the_protocol() {
        let trace = Trace {
            helo: "printer\r\nBcc: evil",
            peer: "127.0.0.1".parse().unwrap(),
            hostname: "relay.example",
            esmtp: true,
            tls: true,
            authenticated: true,
            id: "ABC.1",
            single_recipient: Some("to@example.net"),
        };
        let header = trace.header(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!(
            header,
            "Received: from printer??Bcc:?evil ([127.0.0.1])\r\n\tby relay.example (smtp-oauth-relay) with ESMTPSA id ABC.1\r\n\tfor <to@example.net>;\r\n\tTue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
        assert!(header.lines().all(|line| line.len() < 998));
    }
}
