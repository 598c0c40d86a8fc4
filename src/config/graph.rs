//! `transport = "graph"` (issue 13): Microsoft Graph's `sendMail` instead of SMTP. Its
//! settings (`api_url`, `graph_large_messages`, `graph_concurrency`), the providers it
//! works with (microsoft, or custom with `api_url`), and the scope each grant asks for.

use toml::Spanned;

use super::problems::Checker;
use super::raw::RawAsset;
use super::types::{Grant, Provider};

/// Microsoft Graph, the default `api_url`.
pub const GRAPH_API_URL: &str = "https://graph.microsoft.com";
/// Outlook serves 4 concurrent requests per app and mailbox; more are throttled.
pub const DEFAULT_GRAPH_CONCURRENCY: usize = 4;

/// Delegated: send as the signed-in mailbox, and a refresh token.
pub const GRAPH_DELEGATED_SCOPE: &str = "https://graph.microsoft.com/Mail.Send offline_access";
/// Delegated with the draft path: Mail.ReadWrite on top (read access to the whole mailbox).
pub const GRAPH_DELEGATED_LARGE_SCOPE: &str = "https://graph.microsoft.com/Mail.Send \
    https://graph.microsoft.com/Mail.ReadWrite offline_access";
/// App-only: the application permissions an admin consented to for Graph.
pub const GRAPH_APP_SCOPE: &str = "https://graph.microsoft.com/.default";

/// The Graph transport's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSettings {
    /// Without a trailing slash.
    pub api_url: String,
    /// `graph_large_messages`: the draft + upload-session path (needs Mail.ReadWrite).
    pub large_messages: bool,
    /// `graph_concurrency`: sends to the mailbox at once.
    pub concurrency: usize,
}

impl GraphSettings {
    /// The scope the asset asks for when it sets none.
    pub fn default_scope(&self, grant: Grant) -> &'static str {
        match (grant, self.large_messages) {
            (Grant::ClientCredentials, _) => GRAPH_APP_SCOPE,
            (Grant::RefreshToken, false) => GRAPH_DELEGATED_SCOPE,
            (Grant::RefreshToken, true) => GRAPH_DELEGATED_LARGE_SCOPE,
        }
    }
}

/// The keys only `transport = "graph"` reads; refused on the other transports.
pub(super) fn refuse_graph_keys(
    raw: &RawAsset,
    field: &dyn Fn(&str) -> String,
    check: &mut Checker,
) {
    if let Some(value) = &raw.graph_large_messages {
        check.at(
            value,
            field("graph_large_messages"),
            "graph_large_messages only applies to transport = \"graph\"",
        );
    }
    if let Some(value) = &raw.graph_concurrency {
        check.at(
            value,
            field("graph_concurrency"),
            "graph_concurrency only applies to transport = \"graph\"",
        );
    }
}

/// Checks a Graph asset: provider, `api_url` (checked by the caller: `api_url`), the
/// options; `None` when a problem was recorded.
pub(super) fn validate_graph(
    raw: &RawAsset,
    provider: Provider,
    api_url: Option<Option<String>>,
    field: &dyn Fn(&str) -> String,
    check: &mut Checker,
) -> Option<GraphSettings> {
    let at = raw.transport.as_ref();
    let api_url = match (provider, api_url?) {
        (Provider::Microsoft, url) => Some(url.unwrap_or_else(|| GRAPH_API_URL.to_string())),
        (Provider::Custom, Some(url)) => Some(url),
        (Provider::Custom, None) => {
            if let Some(at) = at {
                check.at(
                    at,
                    field("api_url"),
                    "transport \"graph\" with provider \"custom\" needs api_url",
                );
            }
            None
        }
        (Provider::Google, _) => {
            if let Some(at) = at {
                check.at(
                    at,
                    field("transport"),
                    "transport \"graph\" needs provider \"microsoft\" (or \"custom\" with api_url)",
                );
            }
            None
        }
    };
    let mut concurrency = DEFAULT_GRAPH_CONCURRENCY;
    if let Some(value) = &raw.graph_concurrency {
        if *value.get_ref() == 0 {
            check.at(
                value,
                field("graph_concurrency"),
                "graph_concurrency must be at least 1",
            );
            return None;
        }
        concurrency = *value.get_ref();
    }
    Some(GraphSettings {
        api_url: api_url?,
        large_messages: raw
            .graph_large_messages
            .as_ref()
            .is_some_and(|v| *Spanned::get_ref(v)),
        concurrency,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::Path;

    use super::super::{parse_with_env, AssetTransport, ConfigError};
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
{asset}
"#
        )
    }

    fn fields(asset: &str) -> Vec<String> {
        match parse_with_env(&config(asset), Path::new("t.toml"), |_| None) {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.into_iter().map(|p| p.field).collect()
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("accepted: {asset}"),
        }
    }

    #[test]
    fn scopes_follow_the_transport_and_the_grant() {
        let cases = [
            ("transport = \"graph\"", vec![GRAPH_DELEGATED_SCOPE]),
            (
                "transport = \"graph\"\ngraph_large_messages = true",
                vec![GRAPH_DELEGATED_LARGE_SCOPE],
            ),
            (
                "transport = \"graph\"\ngrant = \"client_credentials\"",
                vec![GRAPH_APP_SCOPE],
            ),
            (
                "grant = \"client_credentials\"",
                vec!["https://outlook.office365.com/.default"],
            ),
            (
                "",
                vec!["https://outlook.office.com/SMTP.Send offline_access"],
            ),
        ];
        for (keys, scope) in cases {
            let text = config(&format!("provider = \"microsoft\"\n{keys}"));
            let parsed = parse_with_env(&text, Path::new("t.toml"), |_| None).unwrap();
            let expected: Vec<String> = scope
                .iter()
                .flat_map(|s| s.split_whitespace())
                .map(str::to_string)
                .collect();
            assert_eq!(parsed.assets[0].scopes, expected, "{keys}");
        }
        let text = config(
            "provider = \"microsoft\"\ntransport = \"graph\"\ngraph_concurrency = 2\napi_url = \"http://127.0.0.1:9\"",
        );
        let parsed = parse_with_env(&text, Path::new("t.toml"), |_| None).unwrap();
        let AssetTransport::Graph(graph) = &parsed.assets[0].transport else {
            panic!("not graph");
        };
        assert_eq!(graph.api_url, "http://127.0.0.1:9");
        assert_eq!(graph.concurrency, 2);
        assert!(!graph.large_messages);
    }

    #[test]
    fn wrong_combinations_are_config_errors() {
        assert!(fields("transport = \"graph\"").contains(&"asset[0].transport".to_string()));
        assert!(fields("provider = \"custom\"\nscope = \"x\"\ntoken_url = \"https://t.example\"\nauth_url = \"https://t.example\"\ntransport = \"graph\"")
            .contains(&"asset[0].api_url".to_string()));
        assert!(fields(
            "provider = \"microsoft\"\ntransport = \"graph\"\nupstream = \"smtp.example:587\""
        )
        .contains(&"asset[0].upstream".to_string()));
        assert!(
            fields("provider = \"microsoft\"\ngraph_large_messages = true")
                .contains(&"asset[0].graph_large_messages".to_string())
        );
        assert!(
            fields("provider = \"microsoft\"\ntransport = \"graph\"\ngraph_concurrency = 0")
                .contains(&"asset[0].graph_concurrency".to_string())
        );
        assert!(fields(
            "provider = \"microsoft\"\ntransport = \"graph\"\napi_url = \"http://graph.example\""
        )
        .contains(&"asset[0].api_url".to_string()));
    }
}
