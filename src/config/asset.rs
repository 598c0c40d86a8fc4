//! One `[[asset]]`: a mailbox, the OAuth client that gets its tokens and the provider
//! server mail goes to. Checked in three parts that each collect their own problems:
//! [`credentials`] (client id and secret, refresh token, or a service-account key),
//! [`endpoints`] (token and consent URLs, scopes, redirect) and [`upstream_target`]
//! (host, port, TLS). Whatever an asset leaves out comes from a file it names or from
//! its provider's preset ([`super::provider`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use toml::Spanned;

use super::grant::{preset_for_grant, validate_grant};
use super::problems::Checker;
use super::provider::{preset, GoogleClientFile, ProviderPreset};
use super::raw::RawAsset;
use super::transport::{validate_transport, AssetTransport};
use super::types::{Asset, Provider, RefreshTokenSource, UpstreamTarget, UpstreamTls};
use crate::credentials::secret::Secret;
use crate::credentials::service_account::ServiceAccountKey;
use crate::tls;

/// `asset[<index>].<key>`, the name problems give a field of this asset.
type Field<'a> = &'a dyn Fn(&str) -> String;

/// Checks one `[[asset]]`; `None` when a part it cannot work without is missing (the
/// problems recorded say which).
pub(super) fn validate_asset(raw: &RawAsset, index: usize, check: &mut Checker) -> Option<Asset> {
    let field = |name: &str| format!("asset[{index}].{name}");
    let name = raw.name.get_ref().clone();
    if name.is_empty() || name == "*" {
        check.at(
            &raw.name,
            field("name"),
            "an asset needs a name (and \"*\" is reserved)",
        );
    }
    let email = raw.email.get_ref().clone();
    if !email.contains('@') {
        check.at(
            &raw.email,
            field("email"),
            format!("\"{email}\" is not an email address"),
        );
    }
    let provider = raw.provider.unwrap_or(Provider::Google);
    let grant = validate_grant(raw, provider, &field, check);
    let preset =
        preset(provider, raw.tenant.as_deref()).map(|preset| preset_for_grant(preset, grant));

    // Every part is checked before any failure ends the asset, so all its problems show.
    let files = credential_files(raw, &field, check);
    let credentials = credentials(raw, &files, &field, check);
    let transport = validate_transport(raw, provider, &field, check);
    let default_scope = match &transport {
        Some(AssetTransport::Graph(graph)) => Some(graph.default_scope(grant)),
        other => other.as_ref().and_then(AssetTransport::default_scope),
    };
    let endpoints = endpoints(raw, &files, preset.as_ref(), default_scope, &field, check);
    let upstream = match &transport {
        // API transports send over HTTPS; the target only carries the TLS roots.
        Some(AssetTransport::GmailApi(api)) => api_target(raw, &api.api_url, &field, check),
        Some(AssetTransport::Graph(graph)) => api_target(raw, &graph.api_url, &field, check),
        _ => upstream_target(raw, preset.as_ref(), &field, check),
    };
    let sending =
        super::sending::validate_sending(raw, provider, transport.as_ref(), &field, check);
    let credentials = credentials?;
    let endpoints = endpoints?;
    let transport = transport?;
    Some(Asset {
        name,
        email,
        provider,
        client_id: credentials.client_id,
        client_secret: credentials.client_secret,
        refresh_token: credentials.refresh_token,
        service_account: files.service_account,
        auth_url: endpoints.auth_url,
        token_url: endpoints.token_url,
        scopes: endpoints.scopes,
        redirect_uri: endpoints.redirect_uri,
        upstream: upstream?,
        transport,
        header_recipients: raw
            .header_recipients
            .as_ref()
            .map(|value| *value.get_ref())
            .unwrap_or_default(),
        grant,
        client_secret_expires: raw.client_secret_expires.as_ref().and_then(|date| {
            super::alerts::parse_date(date, field("client_secret_expires"), check)
        }),
        sending,
    })
}

/// The files an asset may name instead of writing its OAuth client into the config.
struct CredentialFiles {
    /// `client_json`: Google's OAuth client file.
    client: Option<GoogleClientFile>,
    /// `service_account_json`: a key that signs its own token requests.
    service_account: Option<Arc<ServiceAccountKey>>,
}

/// Reads `client_json` and `service_account_json`, and refuses keys that would say the
/// same thing twice.
fn credential_files(raw: &RawAsset, field: Field<'_>, check: &mut Checker) -> CredentialFiles {
    let client = match &raw.client_json {
        Some(path) => match GoogleClientFile::load(path.get_ref()) {
            Ok(file) => {
                for (set, key) in [
                    (raw.client_id.is_some(), "client_id"),
                    (raw.client_secret.is_some(), "client_secret"),
                    (raw.client_secret_file.is_some(), "client_secret_file"),
                ] {
                    if set {
                        check.at(
                            path,
                            field(key),
                            format!("{key} comes from client_json; set one or the other"),
                        );
                    }
                }
                check.secret_file(path.get_ref(), &field("client_json"));
                Some(file)
            }
            Err(message) => {
                check.at(path, field("client_json"), message);
                None
            }
        },
        None => None,
    };
    let service_account = match &raw.service_account_json {
        Some(path) => match ServiceAccountKey::from_file(path.get_ref()) {
            Ok(key) => {
                check.secret_file(path.get_ref(), &field("service_account_json"));
                Some(Arc::new(key))
            }
            Err(err) => {
                check.at(path, field("service_account_json"), err.to_string());
                None
            }
        },
        None => None,
    };
    if let (Some(path), true) = (
        &raw.service_account_json,
        raw.client_json.is_some()
            || raw.client_id.is_some()
            || raw.refresh_token.is_some()
            || raw.refresh_token_file.is_some(),
    ) {
        check.at(
            path,
            field("service_account_json"),
            "a service-account asset needs no client_json, client_id or refresh token",
        );
    }
    CredentialFiles {
        client,
        service_account,
    }
}

/// What the token manager presents to the provider for this asset.
struct Credentials {
    client_id: String,
    client_secret: Secret,
    refresh_token: RefreshTokenSource,
}

/// The client id and secret (from the config, a secret file or `client_json`; empty for a
/// service account) and where the refresh token lives.
fn credentials(
    raw: &RawAsset,
    files: &CredentialFiles,
    field: Field<'_>,
    check: &mut Checker,
) -> Option<Credentials> {
    let name = raw.name.get_ref();
    let client_id = if raw.service_account_json.is_some() {
        Some(String::new())
    } else if let Some(file) = &files.client {
        Some(file.client_id.clone())
    } else {
        match &raw.client_id {
            Some(id) if !id.get_ref().is_empty() => Some(id.get_ref().clone()),
            _ => {
                check.at(
                    &raw.name,
                    field("client_id"),
                    format!("asset \"{name}\" needs a client_id (or client_json, or service_account_json)"),
                );
                None
            }
        }
    };
    let client_secret = match (&raw.client_secret, &raw.client_secret_file) {
        _ if raw.service_account_json.is_some() => Some(Secret::default()),
        _ if files.client.is_some() => files.client.as_ref().map(|f| f.client_secret.clone()),
        (Some(secret), None) => Some(Secret::new(secret.get_ref().clone())),
        (None, Some(path)) => read_secret_file(path, field("client_secret_file"), check),
        (Some(secret), Some(_)) => {
            check.at(
                secret,
                field("client_secret"),
                "set client_secret or client_secret_file, not both",
            );
            None
        }
        (None, None) => {
            check.at(
                &raw.name,
                field("client_secret"),
                format!(
                    "asset \"{name}\" needs client_secret or client_secret_file (or client_json)"
                ),
            );
            None
        }
    };
    let refresh_token = match (&raw.refresh_token, &raw.refresh_token_file) {
        (Some(token), None) => Some(RefreshTokenSource::Inline(Secret::new(
            token.get_ref().clone(),
        ))),
        (None, Some(path)) => read_secret_file(path, field("refresh_token_file"), check)
            .map(|_| RefreshTokenSource::File(path.get_ref().clone())),
        (Some(token), Some(_)) => {
            check.at(
                token,
                field("refresh_token"),
                "set refresh_token or refresh_token_file, not both",
            );
            None
        }
        // The usual case: `authorize` puts the token in the store.
        (None, None) => Some(RefreshTokenSource::Store),
    };
    Some(Credentials {
        client_id: client_id?,
        client_secret: client_secret?,
        refresh_token: refresh_token?,
    })
}

/// Where the asset's tokens and consent come from.
struct Endpoints {
    auth_url: String,
    token_url: String,
    scopes: Vec<String>,
    redirect_uri: Option<String>,
}

/// The token and consent URLs, the scopes and the redirect. A URL the asset does not set
/// comes from a file it names (checked like one written in the config: a key file from
/// elsewhere must not send credentials over plain http) or from the provider preset.
fn endpoints(
    raw: &RawAsset,
    files: &CredentialFiles,
    preset: Option<&ProviderPreset>,
    transport_scope: Option<&str>,
    field: Field<'_>,
    check: &mut Checker,
) -> Option<Endpoints> {
    let from_client_json = |url: &str| {
        raw.client_json
            .as_ref()
            .map(|path| UrlSource::File(path, "client_json", url.to_string()))
    };
    let from_key_file = |url: &str| {
        raw.service_account_json
            .as_ref()
            .map(|path| UrlSource::File(path, "service_account_json", url.to_string()))
    };
    let from_preset = |url: &str| Some(UrlSource::Preset(url.to_string()));
    let token_url = pick_url(
        &raw.token_url,
        files
            .client
            .as_ref()
            .and_then(|f| from_client_json(&f.token_uri))
            .or_else(|| {
                files
                    .service_account
                    .as_ref()
                    .and_then(|key| from_key_file(&key.token_uri))
            })
            .or_else(|| preset.and_then(|p| from_preset(&p.token_url))),
        &field("token_url"),
        &raw.name,
        check,
    );
    let auth_url = pick_url(
        &raw.auth_url,
        files
            .client
            .as_ref()
            .and_then(|f| from_client_json(&f.auth_uri))
            .or_else(|| preset.and_then(|p| from_preset(&p.auth_url))),
        &field("auth_url"),
        &raw.name,
        check,
    );
    let scope = match (&raw.scope, preset) {
        (Some(scope), _) => Some(scope.clone()),
        // The transport's scope (gmail.send for the Gmail API) before the provider's.
        (None, _) if transport_scope.is_some() => transport_scope.map(str::to_string),
        (None, Some(preset)) => Some(preset.scope.to_string()),
        (None, None) => {
            check.at(
                &raw.name,
                field("scope"),
                "provider \"custom\" needs a scope",
            );
            None
        }
    };
    let redirect_uri = raw
        .redirect_uri
        .as_ref()
        .map(|uri| uri.get_ref().clone())
        .or_else(|| {
            files
                .client
                .as_ref()
                .and_then(|f| f.loopback_redirect.clone())
        });
    Some(Endpoints {
        auth_url: auth_url?,
        token_url: token_url?,
        scopes: scope?.split_whitespace().map(str::to_string).collect(),
        redirect_uri,
    })
}

/// The provider's SMTP server: `upstream` or the preset's, STARTTLS unless the port is
/// 465, trusting the web PKI plus `upstream_ca`.
fn upstream_target(
    raw: &RawAsset,
    preset: Option<&ProviderPreset>,
    field: Field<'_>,
    check: &mut Checker,
) -> Option<UpstreamTarget> {
    let (host, port) = match &raw.upstream {
        Some(upstream) => match split_host_port(upstream.get_ref()) {
            Some(host_port) => host_port,
            None => {
                check.at(
                    upstream,
                    field("upstream"),
                    format!("\"{}\" is not host:port", upstream.get_ref()),
                );
                return None;
            }
        },
        None => match preset {
            Some(preset) => (preset.host.to_string(), preset.port),
            None => {
                check.at(
                    &raw.name,
                    field("upstream"),
                    "provider \"custom\" needs upstream = \"host:port\"",
                );
                return None;
            }
        },
    };
    let upstream_tls = raw.upstream_tls.unwrap_or(if port == 465 {
        UpstreamTls::Implicit
    } else {
        UpstreamTls::Starttls
    });
    let client_config =
        match tls::client_config(raw.upstream_ca.as_ref().map(|ca| ca.get_ref().as_path())) {
            Ok(config) => config,
            Err(err) => {
                match &raw.upstream_ca {
                    Some(ca) => check.at(ca, field("upstream_ca"), err.to_string()),
                    None => check.general(field("upstream_ca"), err.to_string()),
                }
                return None;
            }
        };
    Some(UpstreamTarget {
        host,
        port,
        tls: upstream_tls,
        client_config,
    })
}

/// The TLS side of an API transport: `api_url`'s host, trusting the web PKI plus
/// `upstream_ca` (which applies to `api_url` and `tokeninfo_url` too).
fn api_target(
    raw: &RawAsset,
    api_url: &str,
    field: Field<'_>,
    check: &mut Checker,
) -> Option<UpstreamTarget> {
    let parsed = reqwest::Url::parse(api_url).ok()?;
    let client_config =
        match tls::client_config(raw.upstream_ca.as_ref().map(|ca| ca.get_ref().as_path())) {
            Ok(config) => config,
            Err(err) => {
                match &raw.upstream_ca {
                    Some(ca) => check.at(ca, field("upstream_ca"), err.to_string()),
                    None => check.general(field("upstream_ca"), err.to_string()),
                }
                return None;
            }
        };
    Some(UpstreamTarget {
        host: parsed.host_str().unwrap_or_default().to_string(),
        port: parsed.port_or_known_default().unwrap_or(443),
        tls: UpstreamTls::Implicit,
        client_config,
    })
}

fn read_secret_file(path: &Spanned<PathBuf>, field: String, check: &mut Checker) -> Option<Secret> {
    match std::fs::read_to_string(path.get_ref()) {
        Ok(text) => {
            let value = text.trim();
            if value.is_empty() {
                check.at(
                    path,
                    field,
                    format!("{} is empty", path.get_ref().display()),
                );
                None
            } else {
                check.secret_file(path.get_ref(), &field);
                Some(Secret::new(value))
            }
        }
        Err(err) => {
            check.at(
                path,
                field,
                format!("cannot read {}: {err}", path.get_ref().display()),
            );
            None
        }
    }
}

/// Where an OAuth endpoint URL the asset does not set itself comes from.
enum UrlSource<'a> {
    /// A file the asset names (`client_json`, `service_account_json`): the field and the URL.
    File(&'a Spanned<PathBuf>, &'static str, String),
    /// The provider's preset.
    Preset(String),
}

/// An OAuth endpoint: https, or plain http only on a loopback address (tests, the sandbox),
/// whatever its source.
fn pick_url(
    value: &Option<Spanned<String>>,
    fallback: Option<UrlSource<'_>>,
    field: &str,
    asset_name: &Spanned<String>,
    check: &mut Checker,
) -> Option<String> {
    let Some(value) = value else {
        return match fallback {
            None => {
                check.at(asset_name, field, "provider \"custom\" needs this URL");
                None
            }
            Some(UrlSource::File(path, file_field, url)) => match check_endpoint_url(&url) {
                Ok(()) => Some(url),
                Err(message) => {
                    check.at(
                        path,
                        format!("{field} (from {file_field})"),
                        format!("{} ({file_field}): {message}", path.get_ref().display()),
                    );
                    None
                }
            },
            Some(UrlSource::Preset(url)) => match check_endpoint_url(&url) {
                Ok(()) => Some(url),
                Err(message) => {
                    check.at(asset_name, field, message);
                    None
                }
            },
        };
    };
    match check_endpoint_url(value.get_ref()) {
        Ok(()) => Some(value.get_ref().clone()),
        Err(message) => {
            check.at(value, field, message);
            None
        }
    }
}

/// Whether `url` may receive credentials: https, or plain http to a loopback address.
pub fn check_endpoint_url(url: &str) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|err| format!("\"{url}\" is not a URL: {err}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(parsed.host_str()) => Ok(()),
        "http" => Err(format!(
            "\"{url}\": plain http is only allowed on loopback addresses; use https"
        )),
        other => Err(format!("\"{url}\": scheme \"{other}\" is not https")),
    }
}

pub(super) fn is_loopback_host(host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

fn split_host_port(value: &str) -> Option<(String, u16)> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Some((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = value.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    if host.parse::<IpAddr>().is_err() && host.contains(':') {
        return None;
    }
    Some((host.to_string(), port))
}
