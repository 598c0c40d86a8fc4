//! How an asset's mail reaches its provider (`transport = "smtp" | "gmail-api"`), checked
//! per provider: the settings each transport needs, and the keys that make no sense with
//! it refused with file, line and field.

use serde::Deserialize;
use toml::Spanned;

use super::asset::check_endpoint_url;
use super::graph::{refuse_graph_keys, validate_graph, GraphSettings};
use super::problems::Checker;
use super::raw::RawAsset;
use super::types::Provider;

/// Google's Gmail API, the default `api_url`.
pub const GMAIL_API_URL: &str = "https://gmail.googleapis.com";
/// Google's token introspection endpoint, the default `tokeninfo_url`.
pub const GOOGLE_TOKENINFO_URL: &str = "https://oauth2.googleapis.com/tokeninfo";
/// Send-only: the scope the Gmail API transport needs, and its default (Google classes it
/// sensitive, not restricted like `https://mail.google.com/`).
pub const GMAIL_SEND_SCOPE: &str = "https://www.googleapis.com/auth/gmail.send";
/// The largest message the Gmail API takes (`mediaUpload.maxSize`, 35 MiB).
pub const GMAIL_API_MAX_MESSAGE: u64 = 36_700_160;

/// The `transport` key as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportName {
    Smtp,
    GmailApi,
    Graph,
}

/// The validated transport of an asset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AssetTransport {
    /// SMTP with XOAUTH2 to `upstream` (the default).
    #[default]
    Smtp,
    /// `POST {api_url}/upload/gmail/v1/users/me/messages/send`.
    GmailApi(GmailApiSettings),
    /// `POST {api_url}/v1.0/users/{email}/sendMail` (issue 13, `config/graph.rs`).
    Graph(GraphSettings),
}

impl AssetTransport {
    /// The name as the config spells it, for logs and `check`.
    pub fn name(&self) -> &'static str {
        match self {
            AssetTransport::Smtp => "smtp",
            AssetTransport::GmailApi(_) => "gmail-api",
            AssetTransport::Graph(_) => "graph",
        }
    }

    /// The scope an asset on this transport gets when it sets none (None: the provider's).
    pub fn default_scope(&self) -> Option<&'static str> {
        match self {
            AssetTransport::Smtp => None,
            AssetTransport::GmailApi(_) => Some(GMAIL_SEND_SCOPE),
            // Depends on the grant: `GraphSettings::default_scope`.
            AssetTransport::Graph(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GmailApiSettings {
    /// Without a trailing slash.
    pub api_url: String,
    pub tokeninfo_url: String,
}

/// What to do with a To/Cc/Bcc address that is not an envelope recipient, on transports
/// that take their recipients from the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HeaderRecipients {
    /// Refuse the message (550 5.7.1): it would reach people the client did not ask for.
    #[default]
    Refuse,
    /// Log at WARN and send anyway.
    Deliver,
}

/// Checks `transport` and the keys that go with it.
pub(super) fn validate_transport(
    raw: &RawAsset,
    provider: Provider,
    field: &dyn Fn(&str) -> String,
    check: &mut Checker,
) -> Option<AssetTransport> {
    let name = raw
        .transport
        .as_ref()
        .map_or(TransportName::Smtp, |t| *t.get_ref());
    let url = |value: &Option<Spanned<String>>,
               key: &str,
               check: &mut Checker|
     -> Option<Option<String>> {
        match value {
            None => Some(None),
            Some(url) => match check_endpoint_url(url.get_ref()) {
                Ok(()) => Some(Some(url.get_ref().trim_end_matches('/').to_string())),
                Err(message) => {
                    check.at(url, field(key), message);
                    None
                }
            },
        }
    };
    if name != TransportName::Graph {
        refuse_graph_keys(raw, field, check);
    }
    match name {
        TransportName::Graph => {
            let api_url = url(&raw.api_url, "api_url", check);
            let refuse =
                "makes no sense with transport = \"graph\" (mail goes over HTTPS to api_url)";
            let mut ok = true;
            if let Some(upstream) = &raw.upstream {
                check.at(upstream, field("upstream"), format!("upstream {refuse}"));
                ok = false;
            }
            if raw.upstream_tls.is_some() {
                check.at(
                    &raw.name,
                    field("upstream_tls"),
                    format!("upstream_tls {refuse}"),
                );
                ok = false;
            }
            if let Some(value) = &raw.tokeninfo_url {
                check.at(
                    value,
                    field("tokeninfo_url"),
                    format!("tokeninfo_url {refuse}"),
                );
                ok = false;
            }
            let settings = validate_graph(raw, provider, api_url, field, check);
            if !ok {
                return None;
            }
            settings.map(AssetTransport::Graph)
        }
        TransportName::Smtp => {
            for (value, key) in [
                (&raw.api_url, "api_url"),
                (&raw.tokeninfo_url, "tokeninfo_url"),
            ] {
                if let Some(value) = value {
                    check.at(
                        value,
                        field(key),
                        format!(
                            "{key} only applies to an API transport (transport = \"gmail-api\")"
                        ),
                    );
                }
            }
            if let Some(value) = &raw.header_recipients {
                check.at(
                    value,
                    field("header_recipients"),
                    "header_recipients only applies to an API transport (transport = \"gmail-api\"); SMTP delivers to the envelope",
                );
            }
            Some(AssetTransport::Smtp)
        }
        TransportName::GmailApi => {
            let at = raw.transport.as_ref();
            let mut ok = true;
            let refuse =
                "makes no sense with transport = \"gmail-api\" (mail goes over HTTPS to api_url)";
            if let Some(upstream) = &raw.upstream {
                check.at(upstream, field("upstream"), format!("upstream {refuse}"));
                ok = false;
            }
            if raw.upstream_tls.is_some() {
                check.at(
                    &raw.name,
                    field("upstream_tls"),
                    format!("upstream_tls {refuse}"),
                );
                ok = false;
            }
            let api_url = url(&raw.api_url, "api_url", check);
            let tokeninfo_url = url(&raw.tokeninfo_url, "tokeninfo_url", check);
            let api_url = match (provider, api_url) {
                (_, None) => None,
                (Provider::Google, Some(url)) => {
                    Some(url.unwrap_or_else(|| GMAIL_API_URL.to_string()))
                }
                (Provider::Custom, Some(Some(url))) => Some(url),
                (Provider::Custom, Some(None)) => {
                    if let Some(at) = at {
                        check.at(
                            at,
                            field("api_url"),
                            "transport \"gmail-api\" with provider \"custom\" needs api_url",
                        );
                    }
                    None
                }
                (Provider::Microsoft, Some(_)) => {
                    if let Some(at) = at {
                        check.at(
                            at,
                            field("transport"),
                            "transport \"gmail-api\" needs provider \"google\" (or \"custom\" with api_url)",
                        );
                    }
                    None
                }
            };
            let tokeninfo_url = tokeninfo_url?.unwrap_or_else(|| GOOGLE_TOKENINFO_URL.to_string());
            if !ok {
                return None;
            }
            Some(AssetTransport::GmailApi(GmailApiSettings {
                api_url: api_url?,
                tokeninfo_url,
            }))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{parse, ConfigError};

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0VbV0jU5dEbWgZ5y3ZL4q3nSxRvLwUg8n6tQ3h2QW6I";

    fn load(asset_lines: &str) -> Result<crate::config::Config, ConfigError> {
        let text = format!(
            "[[user]]\nname = \"app\"\npassword_hash = \"{HASH}\"\nassets = [\"*\"]\n\n\
             [[asset]]\nname = \"box\"\nemail = \"box@example.com\"\nclient_id = \"c\"\n\
             client_secret = \"s\"\nrefresh_token = \"r\"\nsenders = [\"box@example.com\"]\n\
             {asset_lines}\n"
        );
        parse(&text, Path::new("relay.toml"))
    }

    fn problems(asset_lines: &str) -> Vec<String> {
        match load(asset_lines) {
            Ok(_) => panic!("accepted: {asset_lines}"),
            Err(ConfigError::Invalid { problems, .. }) => problems
                .iter()
                .map(|p| format!("{}:{}: {}", p.line.unwrap_or(0), p.field, p.message))
                .collect(),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn gmail_api_on_google_gets_defaults_and_the_send_scope() {
        let config = load("provider = \"google\"\ntransport = \"gmail-api\"").unwrap();
        let asset = &config.assets[0];
        assert_eq!(
            asset.transport,
            AssetTransport::GmailApi(GmailApiSettings {
                api_url: GMAIL_API_URL.to_string(),
                tokeninfo_url: GOOGLE_TOKENINFO_URL.to_string(),
            })
        );
        assert_eq!(asset.scopes, vec![GMAIL_SEND_SCOPE.to_string()]);
        assert_eq!(asset.header_recipients, HeaderRecipients::Refuse);
        // SMTP keeps the full-mailbox scope.
        let config = load("provider = \"google\"").unwrap();
        assert_eq!(config.assets[0].transport, AssetTransport::Smtp);
        assert_eq!(
            config.assets[0].scopes,
            vec!["https://mail.google.com/".to_string()]
        );
    }

    #[test]
    fn wrong_combinations_are_config_errors_with_line_and_field() {
        let found = problems("transport = \"gmail-api\"\nupstream = \"smtp.gmail.com:587\"\nupstream_tls = \"starttls\"");
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("14:asset[0].upstream: upstream makes no sense")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.contains("asset[0].upstream_tls")),
            "{found:?}"
        );
        let found = problems("provider = \"microsoft\"\ntransport = \"gmail-api\"");
        assert!(
            found.iter().any(|p| p
                .contains("asset[0].transport: transport \"gmail-api\" needs provider \"google\"")),
            "{found:?}"
        );
        let found = problems("provider = \"custom\"\ntransport = \"gmail-api\"\nauth_url = \"https://a.example/auth\"\ntoken_url = \"https://a.example/token\"");
        assert!(
            found.iter().any(|p| p.contains(
                "asset[0].api_url: transport \"gmail-api\" with provider \"custom\" needs api_url"
            )),
            "{found:?}"
        );
        let found = problems("transport = \"gmail-api\"\napi_url = \"http://gmail.example.com\"");
        assert!(
            found
                .iter()
                .any(|p| p.contains("asset[0].api_url") && p.contains("plain http")),
            "{found:?}"
        );
        let found =
            problems("api_url = \"https://gmail.googleapis.com\"\nheader_recipients = \"deliver\"");
        assert!(
            found
                .iter()
                .any(|p| p.contains("asset[0].api_url: api_url only applies")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("asset[0].header_recipients")),
            "{found:?}"
        );
        let found = problems("transport = \"pigeon\"");
        assert!(!found.is_empty());
    }

    #[test]
    fn custom_gmail_api_on_loopback_is_accepted() {
        let config = load(
            "provider = \"custom\"\ntransport = \"gmail-api\"\napi_url = \"http://127.0.0.1:9/\"\n\
             auth_url = \"https://a.example/auth\"\ntoken_url = \"https://a.example/token\"\nheader_recipients = \"deliver\"",
        )
        .unwrap();
        let AssetTransport::GmailApi(api) = &config.assets[0].transport else {
            panic!("not gmail-api");
        };
        assert_eq!(api.api_url, "http://127.0.0.1:9");
        assert_eq!(
            config.assets[0].header_recipients,
            HeaderRecipients::Deliver
        );
    }
}
