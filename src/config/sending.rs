//! An asset's sending limits (issue 16 §1): `account`, `daily_messages`,
//! `daily_recipients`, `messages_per_minute`, `upstream_connections`. Each comes from the
//! preset for the asset's provider, account kind and transport unless the asset sets it;
//! 0 means no limit. The presets are the providers' published limits (README "Sending
//! limits"); an operator whose tenant has others sets the keys.

use serde::Deserialize;

use super::problems::Checker;
use super::raw::RawAsset;
use super::transport::AssetTransport;
use super::types::Provider;

/// `account`: which Google account kind the mailbox is (their limits differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    /// Google Workspace: 2,000 messages and 10,000 recipients a day.
    #[default]
    Workspace,
    /// A consumer gmail.com account: about 500 recipients a day.
    Consumer,
}

/// The validated limits of one asset; 0 = no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendingLimits {
    pub account: AccountKind,
    /// Messages in any rolling 24 hours.
    pub daily_messages: u64,
    /// Recipients (summed over messages) in any rolling 24 hours.
    pub daily_recipients: u64,
    /// Messages in any rolling minute.
    pub messages_per_minute: u64,
    /// Upstream SMTP sessions open at once (pooled ones included): Exchange Online
    /// refuses a fourth with `432 4.3.2`. Graph has its own `graph_concurrency`.
    pub upstream_connections: usize,
}

impl SendingLimits {
    /// The provider's published limits for a mailbox of this kind on this transport.
    pub fn preset(provider: Provider, account: AccountKind, transport: &AssetTransport) -> Self {
        let none = SendingLimits {
            account,
            ..SendingLimits::default()
        };
        match (provider, account, transport) {
            (Provider::Google, AccountKind::Workspace, transport) => SendingLimits {
                daily_messages: 2_000,
                daily_recipients: 10_000,
                messages_per_minute: gmail_api_rate(transport),
                ..none
            },
            (Provider::Google, AccountKind::Consumer, transport) => SendingLimits {
                daily_messages: 500,
                daily_recipients: 500,
                messages_per_minute: gmail_api_rate(transport),
                ..none
            },
            (Provider::Microsoft, _, transport) => SendingLimits {
                daily_recipients: 10_000,
                messages_per_minute: 30,
                upstream_connections: match transport {
                    AssetTransport::Smtp => 3,
                    _ => 0,
                },
                ..none
            },
            (Provider::Custom, _, _) => none,
        }
    }

    /// Whether any counted limit is set (the relay then counts the asset's sends).
    pub fn counts(&self) -> bool {
        self.daily_messages != 0 || self.daily_recipients != 0 || self.messages_per_minute != 0
    }
}

/// The Gmail API's quota: 15,000 units a user a minute, 100 a send.
fn gmail_api_rate(transport: &AssetTransport) -> u64 {
    match transport {
        AssetTransport::GmailApi(_) => 150,
        _ => 0,
    }
}

/// The asset's limits: its preset with the keys it sets on top.
pub(super) fn validate_sending(
    raw: &RawAsset,
    provider: Provider,
    transport: Option<&AssetTransport>,
    field: &dyn Fn(&str) -> String,
    check: &mut Checker,
) -> SendingLimits {
    let account = match &raw.account {
        Some(account) if provider != Provider::Google => {
            check.at(
                account,
                field("account"),
                "account only applies to provider = \"google\" (\"workspace\" or \"consumer\")",
            );
            AccountKind::default()
        }
        Some(account) => *account.get_ref(),
        None => AccountKind::default(),
    };
    let transport = transport.cloned().unwrap_or_default();
    let mut limits = SendingLimits::preset(provider, account, &transport);
    let set = |value: &Option<toml::Spanned<u64>>, into: &mut u64| {
        if let Some(value) = value {
            *into = *value.get_ref();
        }
    };
    set(&raw.daily_messages, &mut limits.daily_messages);
    set(&raw.daily_recipients, &mut limits.daily_recipients);
    set(&raw.messages_per_minute, &mut limits.messages_per_minute);
    if let Some(value) = &raw.upstream_connections {
        if !matches!(transport, AssetTransport::Smtp) && *value.get_ref() != 0 {
            check.at(
                value,
                field("upstream_connections"),
                "upstream_connections only applies to transport = \"smtp\" (Graph has graph_concurrency)",
            );
        }
        limits.upstream_connections = usize::try_from(*value.get_ref()).unwrap_or(usize::MAX);
    }
    limits
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::Path;

    use super::super::{parse_with_env, ConfigError};
    use super::*;

    fn config(asset: &str) -> String {
        format!(
            r#"
[[user]]
name = "u"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$ZHVtbXloYXNoZHVtbXloYXNoZHVtbXloYXNoZHVtbXk"
assets = ["a"]

[[asset]]
name = "a"
email = "alerts@contoso.example"
senders = ["alerts@contoso.example"]
client_id = "id"
client_secret = "s"
refresh_token = "r"
{asset}
"#
        )
    }

    fn limits(asset: &str) -> SendingLimits {
        let parsed = parse_with_env(&config(asset), Path::new("t.toml"), |_| None).unwrap();
        parsed.assets[0].sending
    }

    #[test]
    fn presets_follow_provider_account_and_transport() {
        let workspace = limits("");
        assert_eq!(
            (workspace.daily_messages, workspace.daily_recipients),
            (2_000, 10_000)
        );
        assert_eq!(workspace.messages_per_minute, 0);
        assert_eq!(limits("account = \"consumer\"").daily_recipients, 500);
        assert_eq!(limits("transport = \"gmail-api\"").messages_per_minute, 150);
        let microsoft = limits("provider = \"microsoft\"");
        assert_eq!(microsoft.messages_per_minute, 30);
        assert_eq!(microsoft.daily_recipients, 10_000);
        assert_eq!(microsoft.upstream_connections, 3);
        let graph = limits("provider = \"microsoft\"\ntransport = \"graph\"");
        assert_eq!(graph.upstream_connections, 0);
        assert_eq!(graph.messages_per_minute, 30);
    }

    #[test]
    fn every_value_is_overridable_and_zero_means_none() {
        let set = limits("daily_messages = 5\ndaily_recipients = 0\nmessages_per_minute = 7\nupstream_connections = 2");
        assert_eq!(set.daily_messages, 5);
        assert_eq!(set.daily_recipients, 0);
        assert_eq!(set.messages_per_minute, 7);
        assert_eq!(set.upstream_connections, 2);
    }

    #[test]
    fn keys_that_do_not_apply_are_config_errors() {
        for (asset, expected) in [
            (
                "provider = \"microsoft\"\naccount = \"consumer\"",
                "asset[0].account",
            ),
            (
                "provider = \"microsoft\"\ntransport = \"graph\"\nupstream_connections = 2",
                "asset[0].upstream_connections",
            ),
            ("account = \"business\"", ""),
            ("daily_messages = -1", ""),
        ] {
            match parse_with_env(&config(asset), Path::new("t.toml"), |_| None) {
                Err(ConfigError::Invalid { problems, .. }) => {
                    // Type errors are serde's, reported without a field of ours.
                    assert!(
                        expected.is_empty() || problems.iter().any(|p| p.field == expected),
                        "{asset}: {problems:?}"
                    );
                }
                other => panic!("{asset}: {:?}", other.map(|_| ())),
            }
        }
    }
}
