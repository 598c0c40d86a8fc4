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
