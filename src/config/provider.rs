//! Where an asset's client and endpoints come from when the config does not spell them
//! out: the provider presets (Google, Microsoft; "custom" has none) and the OAuth client
//! file Google Cloud Console hands out.

use std::path::Path;

use serde::Deserialize;

use super::asset::is_loopback_host;
use super::types::Provider;
use crate::credentials::secret::Secret;

/// What a provider fixes for every mailbox it hosts; an asset's own keys override it.
pub(super) struct ProviderPreset {
    pub(super) host: &'static str,
    pub(super) port: u16,
    pub(super) auth_url: String,
    pub(super) token_url: String,
    pub(super) scope: &'static str,
}

pub(super) fn preset(provider: Provider, tenant: Option<&str>) -> Option<ProviderPreset> {
    match provider {
        Provider::Google => Some(ProviderPreset {
            host: "smtp.gmail.com",
            port: 587,
            auth_url: "https://accounts.google.com/o/oauth2/auth".into(),
            token_url: "https://oauth2.googleapis.com/token".into(),
            // The only Google scope that allows SMTP.
            scope: "https://mail.google.com/",
        }),
        Provider::Microsoft => {
            // "common" works for multi-tenant apps; single-tenant apps must name their tenant.
            let tenant = tenant.unwrap_or("common");
            Some(ProviderPreset {
                host: "smtp.office365.com",
                port: 587,
                auth_url: format!(
                    "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize"
                ),
                token_url: format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"),
                scope: "https://outlook.office.com/SMTP.Send offline_access",
            })
        }
        Provider::Custom => None,
    }
}

/// The file Google Cloud Console's "Download JSON" gives for an OAuth client, of either kind.
#[derive(Debug, Clone)]
pub(super) struct GoogleClientFile {
    pub(super) client_id: String,
    pub(super) client_secret: Secret,
    pub(super) auth_uri: String,
    pub(super) token_uri: String,
    /// The first registered loopback redirect, for Web clients; Desktop ("installed")
    /// clients accept any loopback port, so none is needed.
    pub(super) loopback_redirect: Option<String>,
}

impl GoogleClientFile {
    pub(super) fn load(path: &Path) -> Result<GoogleClientFile, String> {
        #[derive(Deserialize)]
        struct Outer {
            web: Option<Inner>,
            installed: Option<Inner>,
        }
        #[derive(Deserialize)]
        struct Inner {
            client_id: String,
            client_secret: String,
            auth_uri: String,
            token_uri: String,
            #[serde(default)]
            redirect_uris: Vec<String>,
        }
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        let outer: Outer = serde_json::from_str(&text).map_err(|err| {
            format!(
                "{} is not a Google OAuth client file: {err}",
                path.display()
            )
        })?;
        let (inner, web) = match (outer.web, outer.installed) {
            (Some(web), None) => (web, true),
            (None, Some(installed)) => (installed, false),
            _ => {
                return Err(format!(
                    "{} must hold exactly one of \"web\" or \"installed\"",
                    path.display()
                ))
            }
        };
        let loopback_redirect = if web {
            inner
                .redirect_uris
                .iter()
                .find(|uri| {
                    reqwest::Url::parse(uri)
                        .map(|url| url.scheme() == "http" && is_loopback_host(url.host_str()))
                        .unwrap_or(false)
                })
                .cloned()
        } else {
            None
        };
        Ok(GoogleClientFile {
            client_id: inner.client_id,
            client_secret: Secret::new(inner.client_secret),
            auth_uri: inner.auth_uri,
            token_uri: inner.token_uri,
            loopback_redirect,
        })
    }
}
