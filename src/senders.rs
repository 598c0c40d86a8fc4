//! Which asset (Gmail account) sends for which envelope sender.
//!
//! Each asset lists the senders it serves: exact addresses, `@domain` for a whole domain,
//! or `*` for everything else. The most specific claim wins (address, then domain, then
//! `*`), and two assets claiming the same pattern is a config error, so the answer never
//! depends on the order of the file. Matching ignores ASCII case: mail systems treat
//! addresses that way in practice even though RFC 5321 lets local parts be case-sensitive.

use std::collections::HashMap;

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
                Ok(SenderPattern::Address(text.to_ascii_lowercase()))
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

    /// The asset serving `sender` (an envelope address without brackets), if any.
    pub fn lookup(&self, sender: &str) -> Option<&str> {
        let sender = sender.to_ascii_lowercase();
        if let Some(asset) = self.addresses.get(&sender) {
            return Some(asset);
        }
        if let Some((_, domain)) = sender.rsplit_once('@') {
            if let Some(asset) = self.domains.get(domain) {
                return Some(asset);
            }
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
            assert_eq!(map.lookup(sender), expected, "{sender}");
        }
    }

    #[test]
    fn unserved_sender_has_no_asset() {
        let map = map(&[("@example.com", "a")]);
        assert_eq!(map.lookup("x@example.org"), None);
        assert_eq!(map.lookup(""), None);
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
        for bad in ["", "@", "user", "a b@example.com", "@exa@mple"] {
            assert!(SenderPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
