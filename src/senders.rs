//! Which asset (Gmail account) sends for which envelope sender.
//!
//! Each asset lists the senders it serves: exact addresses, `@domain` for a whole domain,
//! or `*` for everything else. The most specific claim wins (address, then domain, then
//! `*`), and two assets claiming the same pattern is a config error, so the answer never
//! depends on the order of the file. Matching ignores ASCII case: mail systems treat
//! addresses that way in practice even though RFC 5321 lets local parts be case-sensitive.
//!
//! Claims and lookups both use the canonical form of an address ([`CanonicalAddress`]):
//! `"boss"@example.com` and `boss(x)@example.com` are `boss@example.com`, so a spelling
//! cannot slip past an exact claim into a domain claim. A quoted local part that is not a
//! dot-atom (`"john doe"@example.com`) stays quoted in its canonical form; it is routed by
//! that form rather than refused, because it is a real, distinct mailbox of its domain
//! (a domain claim covers every local part) and a quoted canonical form can never equal a
//! bare one, so it can never reach another asset's exact claim.

use std::collections::HashMap;

use crate::smtp::address::{self, CanonicalAddress};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SenderPattern {
    Address(String),
    Domain(String),
    Any,
}

impl SenderPattern {
    pub fn parse(text: &str) -> Result<SenderPattern, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(SenderPattern::Any);
        }
        if let Some(domain) = text.strip_prefix('@') {
            if domain.is_empty() || domain.contains('@') || domain.contains(char::is_whitespace) {
                return Err(format!(
                    "\"{text}\" is not a domain pattern like \"@example.com\""
                ));
            }
            return Ok(SenderPattern::Domain(domain.to_ascii_lowercase()));
        }
        match text.rsplit_once('@') {
            Some((local, domain))
                if !local.is_empty()
                    && !domain.is_empty()
                    && !text.contains(char::is_whitespace) =>
            {
                // Stored canonical, as lookups are: a claim of "boss"@example.com is a
                // claim of boss@example.com.
                match address::canonical(text) {
                    Ok(address) => Ok(SenderPattern::Address(
                        address.as_str().to_ascii_lowercase(),
                    )),
                    Err(err) => Err(format!("\"{text}\" is not an address ({err})")),
                }
            }
            _ => Err(format!(
                "\"{text}\" is not an address, \"@domain\" or \"*\""
            )),
        }
    }
}

/// The sender → asset-name table built from the config.
#[derive(Debug, Clone, Default)]
pub struct SenderMap {
    addresses: HashMap<String, String>,
    domains: HashMap<String, String>,
    any: Option<String>,
}

impl SenderMap {
    /// Adds a claim; on a duplicate returns the asset that claimed it first.
    pub fn insert(&mut self, pattern: SenderPattern, asset: &str) -> Result<(), String> {
        let slot = match pattern {
            SenderPattern::Address(address) => self.addresses.entry(address),
            SenderPattern::Domain(domain) => self.domains.entry(domain),
            SenderPattern::Any => {
                return match &self.any {
                    Some(previous) => Err(previous.clone()),
                    None => {
                        self.any = Some(asset.to_string());
                        Ok(())
                    }
                };
            }
        };
        match slot {
            std::collections::hash_map::Entry::Occupied(previous) => Err(previous.get().clone()),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(asset.to_string());
                Ok(())
            }
        }
    }

    /// The asset serving `sender`, if any. Taking the canonical form (not text) makes
    /// every caller canonicalize first: the envelope sender and each header From address
    /// are decided on the same form.
    pub fn lookup(&self, sender: &CanonicalAddress) -> Option<&str> {
        if let Some(asset) = self.addresses.get(&sender.as_str().to_ascii_lowercase()) {
            return Some(asset);
        }
        if let Some(asset) = self.domains.get(sender.domain()) {
            return Some(asset);
        }
        self.any.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(claims: &[(&str, &str)]) -> SenderMap {
        let mut map = SenderMap::default();
        for (pattern, asset) in claims {
            map.insert(SenderPattern::parse(pattern).unwrap(), asset)
                .unwrap();
        }
        map
    }

    #[test]
    fn most_specific_claim_wins() {
        let map = map(&[
            ("@example.com", "domain"),
            ("boss@example.com", "boss"),
            ("*", "fallback"),
        ]);
        let cases = [
            ("boss@example.com", Some("boss")),
            ("BOSS@Example.COM", Some("boss")),
            ("other@example.com", Some("domain")),
            ("x@sub.example.com", Some("fallback")),
            ("x@elsewhere.net", Some("fallback")),
        ];
        for (sender, expected) in cases {
            assert_eq!(lookup(&map, sender), expected, "{sender}");
        }
    }

    fn lookup<'a>(map: &'a SenderMap, sender: &str) -> Option<&'a str> {
        map.lookup(&address::canonical(sender).unwrap())
    }

    #[test]
    fn spellings_of_an_exactly_claimed_address_find_its_asset() {
        let map = map(&[
            ("@example.com", "domain"),
            ("boss@example.com", "boss"),
            ("\"odd\"@example.org", "odd"),
        ]);
        for sender in [
            "\"boss\"@example.com",
            "\"bo\\ss\"@example.com",
            "boss(comment)@EXAMPLE.com",
            "\"BOSS\"@example.com",
        ] {
            assert_eq!(lookup(&map, sender), Some("boss"), "{sender}");
        }
        // Other mailboxes of the domain, quoted or not, belong to the domain claim.
        for sender in [
            "\"bo\\\"ss\"@example.com",
            "\"boss \"@example.com",
            "\"boss.\"@example.com",
        ] {
            assert_eq!(lookup(&map, sender), Some("domain"), "{sender}");
        }
        // A claim spelled with quotes is the plain address.
        assert_eq!(lookup(&map, "odd@example.org"), Some("odd"));
    }

    #[test]
    fn unserved_sender_has_no_asset() {
        let map = map(&[("@example.com", "a")]);
        assert_eq!(lookup(&map, "x@example.org"), None);
    }

    #[test]
    fn duplicate_claims_are_reported_with_the_first_owner() {
        let mut map = map(&[("a@example.com", "first"), ("@example.com", "first")]);
        let again = SenderPattern::parse("A@example.com").unwrap();
        assert_eq!(map.insert(again, "second"), Err("first".to_string()));
        let domain = SenderPattern::parse("@EXAMPLE.com").unwrap();
        assert_eq!(map.insert(domain, "second"), Err("first".to_string()));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for bad in [
            "",
            "@",
            "user",
            "a b@example.com",
            "@exa@mple",
            "a..b@example.com",
            "boss@exa!mple.com",
        ] {
            assert!(SenderPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
