//! Reading an upstream server's EHLO reply.

use super::reply::Reply;

/// The ESMTP extensions the relay cares about, as advertised by a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub starttls: bool,
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub enhanced_status_codes: bool,
    pub chunking: bool,
    /// "SIZE 35882577"; "SIZE" alone => Some(0) meaning no fixed limit.
    pub size: Option<u64>,
    /// Upper-cased, without duplicates, in the order advertised.
    pub auth_mechanisms: Vec<String>,
}

impl Capabilities {
    /// From a 250 reply to EHLO: the first line is the greeting, the rest are
    /// keywords (case-insensitive). Any other reply yields no capabilities.
    /// Unknown keywords are ignored.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        if reply.code != 250 {
            return caps;
        }
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(first) = words.next() else {
                continue;
            };
            // Old servers (and Microsoft's, for old clients) also send the
            // pre-standard "AUTH=LOGIN PLAIN" form; the mechanisms after the
            // '=' count the same.
            let (keyword, glued) = match first.split_once('=') {
                Some((k, v)) => (k, Some(v).filter(|v| !v.is_empty())),
                None => (first, None),
            };
            let keyword = keyword.to_ascii_uppercase();
            match keyword.as_str() {
                "STARTTLS" => caps.starttls = true,
                "PIPELINING" => caps.pipelining = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "CHUNKING" => caps.chunking = true,
                // An unparsable size is treated like a bare "SIZE": the
                // server will still enforce its limit with a 552.
                "SIZE" => {
                    caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
                }
                "AUTH" => {
                    for mech in glued.into_iter().chain(words) {
                        let mech = mech.to_ascii_uppercase();
                        if !caps.auth_mechanisms.contains(&mech) {
                            caps.auth_mechanisms.push(mech);
                        }
                    }
                }
                _ => {}
            }
        }
        caps
    }

    /// Whether the server advertised `mechanism` (case-insensitive).
    pub fn supports_auth(&self, mechanism: &str) -> bool {
        self.auth_mechanisms
            .iter()
            .any(|m| m.eq_ignore_ascii_case(mechanism))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::smtp::reply::{parse_reply, ReplyParse};
    use proptest::prelude::*;

    fn caps_from_wire(wire: &str) -> Capabilities {
        match parse_reply(wire.as_bytes(), 512, 100).unwrap() {
            ReplyParse::Complete { reply, consumed } => {
                assert_eq!(consumed, wire.len());
                Capabilities::from_ehlo(&reply)
            }
            ReplyParse::Incomplete => panic!("incomplete"),
        }
    }

    fn mechs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gmail_after_starttls() {
        let caps = caps_from_wire(
            "250-smtp.gmail.com at your service, [1.2.3.4]\r\n\
             250-SIZE 35882577\r\n\
             250-8BITMIME\r\n\
             250-AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH\r\n\
             250-ENHANCEDSTATUSCODES\r\n\
             250-PIPELINING\r\n\
             250-CHUNKING\r\n\
             250 SMTPUTF8\r\n",
        );
        assert_eq!(
            caps,
            Capabilities {
                starttls: false,
                pipelining: true,
                eight_bit_mime: true,
                smtputf8: true,
                enhanced_status_codes: true,
                chunking: true,
                size: Some(35882577),
                auth_mechanisms: mechs(&[
                    "LOGIN",
                    "PLAIN",
                    "XOAUTH2",
                    "PLAIN-CLIENTTOKEN",
                    "OAUTHBEARER",
                    "XOAUTH"
                ]),
            }
        );
        assert!(caps.supports_auth("XOAUTH2"));
        assert!(caps.supports_auth("xoauth2"));
        assert!(!caps.supports_auth("CRAM-MD5"));
        assert!(!caps.supports_auth(""));
    }

    #[test]
    fn gmail_before_starttls() {
        let caps = caps_from_wire(
            "250-smtp.gmail.com at your service, [1.2.3.4]\r\n\
             250-SIZE 35882577\r\n\
             250-8BITMIME\r\n\
             250-STARTTLS\r\n\
             250-ENHANCEDSTATUSCODES\r\n\
             250-PIPELINING\r\n\
             250-CHUNKING\r\n\
             250 SMTPUTF8\r\n",
        );
        assert_eq!(
            caps,
            Capabilities {
                starttls: true,
                pipelining: true,
                eight_bit_mime: true,
                smtputf8: true,
                enhanced_status_codes: true,
                chunking: true,
                size: Some(35882577),
                auth_mechanisms: vec![],
            }
        );
        assert!(!caps.supports_auth("PLAIN"));
    }

    #[test]
    fn office365_after_starttls() {
        let caps = caps_from_wire(
            "250-SN4PR0201CA0047.outlook.office365.com Hello [1.2.3.4]\r\n\
             250-SIZE 157286400\r\n\
             250-PIPELINING\r\n\
             250-DSN\r\n\
             250-ENHANCEDSTATUSCODES\r\n\
             250-AUTH LOGIN XOAUTH2\r\n\
             250-8BITMIME\r\n\
             250-BINARYMIME\r\n\
             250-CHUNKING\r\n\
             250 SMTPUTF8\r\n",
        );
        assert_eq!(caps.size, Some(157286400));
        assert_eq!(caps.auth_mechanisms, mechs(&["LOGIN", "XOAUTH2"]));
        assert!(caps.chunking && caps.pipelining && !caps.starttls);
    }

    /// (EHLO keyword lines after the greeting, expected capabilities)
    #[test]
    fn keyword_table() {
        let cases: Vec<(&[&str], Capabilities)> = vec![
            (&[], Capabilities::default()),
            (
                &["size"],
                Capabilities {
                    size: Some(0),
                    ..Default::default()
                },
            ),
            (
                &["SIZE   1000  "],
                Capabilities {
                    size: Some(1000),
                    ..Default::default()
                },
            ),
            (
                &["SIZE lots"],
                Capabilities {
                    size: Some(0),
                    ..Default::default()
                },
            ),
            (
                &["auth=login plain"],
                Capabilities {
                    auth_mechanisms: mechs(&["LOGIN", "PLAIN"]),
                    ..Default::default()
                },
            ),
            (
                &["AUTH LOGIN PLAIN", "AUTH=LOGIN PLAIN"],
                Capabilities {
                    auth_mechanisms: mechs(&["LOGIN", "PLAIN"]),
                    ..Default::default()
                },
            ),
            (&["AUTH"], Capabilities::default()),
            (&["AUTH="], Capabilities::default()),
            (
                &["starttls", "Pipelining", "8bitmime", "smtputf8"],
                Capabilities {
                    starttls: true,
                    pipelining: true,
                    eight_bit_mime: true,
                    smtputf8: true,
                    ..Default::default()
                },
            ),
            (
                &[
                    "",
                    "  ",
                    "X-EXPS GSSAPI NTLM",
                    "DSN",
                    "STARTTLSX",
                    "XCHUNKING",
                ],
                Capabilities::default(),
            ),
        ];
        for (keywords, want) in cases {
            let mut lines = vec!["mx.example.com greets you".to_string()];
            lines.extend(keywords.iter().map(|s| s.to_string()));
            let reply = Reply::multi(250, None, lines);
            assert_eq!(Capabilities::from_ehlo(&reply), want, "{keywords:?}");
        }
    }

    #[test]
    fn greeting_line_and_errors_are_not_keywords() {
        let one_line = Reply::new(250, None, "STARTTLS");
        assert_eq!(Capabilities::from_ehlo(&one_line), Capabilities::default());
        let refused = Reply::multi(502, None, vec!["x".into(), "STARTTLS".into()]);
        assert_eq!(Capabilities::from_ehlo(&refused), Capabilities::default());
    }

    proptest! {
        #[test]
        fn never_panics(lines in proptest::collection::vec(any::<String>(), 0..8)) {
            let caps = Capabilities::from_ehlo(&Reply::multi(250, None, lines));
            for m in &caps.auth_mechanisms {
                prop_assert!(caps.supports_auth(m));
                prop_assert_eq!(m.clone(), m.to_ascii_uppercase());
            }
        }
    }
}
