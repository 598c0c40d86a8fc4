//! The checks serde cannot make: names that refer to each other (users → assets,
//! trusted assets), addresses, listeners, limits and timeouts, the token store. Every
//! problem goes to the [`Checker`]; assets are checked in [`super::asset`].

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::asset::validate_asset;
use super::defaults::{DEFAULT_LISTEN, DEFAULT_TOKEN_STORE};
use super::env::STORE_KEY_ENV;
use super::problems::Checker;
use super::raw::RawUpstream;
use super::raw::{
    OneOrMany, RawAsset, RawBareLineEndings, RawConfig, RawLimits, RawServer, RawTimeouts,
    RawTokens, RawUser,
};
use super::types::UpstreamDialogue;
use super::types::{
    AssetAccess, Config, CredentialFailure, HeaderFromPolicy, Limits, PoolSettings, ServerSettings,
    Timeouts, TokenSettings, User,
};
use crate::credentials::store::StoreKey;
use crate::senders::{SenderMap, SenderPattern};
use crate::smtp::data::BareLineEndings;
use crate::tls;

/// Checks everything serde cannot and builds the settings; `None` only when a problem was
/// recorded. `env` answers for the process environment (the store key).
pub(super) fn validate(
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
    check: &mut Checker,
) -> Option<Config> {
    let limits = validate_limits(raw.limits.unwrap_or_default(), check);
    let timeouts = validate_timeouts(raw.timeouts.unwrap_or_default(), check);

    let mut assets = Vec::new();
    let mut asset_names = HashSet::new();
    for (index, raw_asset) in raw.assets.iter().enumerate() {
        let name = raw_asset.get_ref().name.get_ref().clone();
        if !asset_names.insert(name.clone()) {
            check.at(
                &raw_asset.get_ref().name,
                format!("asset[{index}].name"),
                format!("asset name \"{name}\" is used twice"),
            );
        }
        if let Some(asset) = validate_asset(raw_asset.get_ref(), index, check) {
            assets.push(Arc::new(asset));
        }
    }
    if raw.assets.is_empty() {
        check.general(
            "asset",
            "no [[asset]] is configured: the relay would have nowhere to send mail",
        );
    }

    let spool_used =
        raw.users
            .iter()
            .any(|user| user.get_ref().delivery == super::spool::Delivery::Spool)
            || raw.server.as_ref().is_some_and(|server| {
                server.trusted_delivery == Some(super::spool::Delivery::Spool)
            });
    let spool = super::spool::validate_spool(raw.spool, spool_used, check);
    let server = validate_server(raw.server.unwrap_or_default(), &asset_names, check);
    // Mail alerts go out over the asset's SMTP login (alerts/send.rs), so an email
    // channel may only name an asset whose transport is SMTP.
    let smtp_assets: HashSet<String> = assets
        .iter()
        .filter(|asset| matches!(asset.transport, super::transport::AssetTransport::Smtp))
        .map(|asset| asset.name.clone())
        .collect();
    let alerts = super::alerts::validate_alerts(
        raw.alerts,
        &raw.alert_channels,
        &asset_names,
        &smtp_assets,
        check,
    );
    let senders = build_sender_map(&raw.assets, check);
    let tokens = validate_tokens(raw.tokens.unwrap_or_default(), env, check);
    let admin_listen = raw
        .admin
        .as_ref()
        .and_then(|a| a.listen.clone())
        .and_then(|listen| match listen.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                check.at(
                    &listen,
                    "admin.listen",
                    format!(
                        "\"{}\" is not an IP address and port such as \"127.0.0.1:9025\"",
                        listen.get_ref()
                    ),
                );
                None
            }
        });

    let mut users = HashMap::new();
    for (index, raw_user) in raw.users.iter().enumerate() {
        if let Some(user) = validate_user(raw_user.get_ref(), index, &asset_names, check) {
            if users.contains_key(&user.name) {
                check.at(
                    &raw_user.get_ref().name,
                    format!("user[{index}].name"),
                    format!("user name \"{}\" is used twice", user.name),
                );
            }
            users.insert(user.name.clone(), Arc::new(user));
        }
    }
    if raw.users.is_empty() {
        check.general(
            "user",
            "no [[user]] is configured: no client could authenticate",
        );
    }

    let admin = super::admin::validate_admin(
        raw.admin.unwrap_or_default(),
        &users,
        server.as_ref().and_then(|server| server.tls.as_ref()),
        check,
    );

    let state = super::state::validate_state(raw.state.unwrap_or_default(), check);

    Some(Config {
        server: server?,
        limits,
        timeouts,
        users,
        assets,
        senders,
        tokens,
        admin_listen,
        admin,
        pool: {
            let raw = raw.pool.unwrap_or_default();
            let defaults = PoolSettings::default();
            PoolSettings {
                enabled: raw.enabled.unwrap_or(defaults.enabled),
                size: raw.size.unwrap_or(defaults.size),
                idle_timeout: raw
                    .idle_secs
                    .map(Duration::from_secs)
                    .unwrap_or(defaults.idle_timeout),
            }
        },
        upstream: validate_upstream(raw.upstream.unwrap_or_default(), check),
        alerts,
        state,
        warnings: Vec::new(),
        spool,
    })
}

/// `[upstream]`: two switches, each `true` or `false`.
fn validate_upstream(raw: RawUpstream, check: &mut Checker) -> UpstreamDialogue {
    let defaults = UpstreamDialogue::default();
    let mut switch = |value: Option<Spanned<toml::Value>>, field: &str, default: bool| {
        let Some(value) = value else {
            return default;
        };
        match value.get_ref() {
            toml::Value::Boolean(on) => *on,
            other => {
                check.at(
                    &value,
                    format!("upstream.{field}"),
                    format!("must be true or false, not {other}"),
                );
                default
            }
        }
    };
    UpstreamDialogue {
        pipelining: switch(raw.pipelining, "pipelining", defaults.pipelining),
        chunking: switch(raw.chunking, "chunking", defaults.chunking),
    }
}

fn validate_tokens(
    raw: RawTokens,
    env: &dyn Fn(&str) -> Option<String>,
    check: &mut Checker,
) -> TokenSettings {
    let key = match &raw.key_file {
        Some(path) => match StoreKey::from_file(path.get_ref()) {
            Ok(key) => Some(key),
            Err(err) => {
                check.at(path, "tokens.key_file", err.to_string());
                None
            }
        },
        None => match env(STORE_KEY_ENV) {
            Some(text) if !text.trim().is_empty() => match StoreKey::parse(&text) {
                Ok(key) => Some(key),
                Err(err) => {
                    check.general(STORE_KEY_ENV, err.to_string());
                    None
                }
            },
            _ => None,
        },
    };
    TokenSettings {
        path: raw
            .path
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_STORE)),
        key,
    }
}

fn parse_listen(
    value: Option<OneOrMany>,
    default: Option<&str>,
    field: &str,
    check: &mut Checker,
) -> Vec<SocketAddr> {
    let Some(value) = value else {
        return default
            .and_then(|addr| addr.parse().ok())
            .into_iter()
            .collect();
    };
    let mut addrs = Vec::new();
    for entry in value.into_vec() {
        match entry.parse::<SocketAddr>() {
            Ok(addr) => addrs.push(addr),
            Err(_) => check.general(
                field,
                format!(
                    "\"{entry}\" is not an IP address and port such as \"127.0.0.1:2525\" or \"[::1]:2525\""
                ),
            ),
        }
    }
    addrs
}

fn validate_server(
    raw: RawServer,
    asset_names: &HashSet<String>,
    check: &mut Checker,
) -> Option<ServerSettings> {
    let mut trusted_networks = Vec::new();
    for network in &raw.trusted_networks {
        let text = network.get_ref();
        // A bare address is a network of one host.
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => trusted_networks.push(net),
            Err(_) => check.at(
                network,
                "server.trusted_networks",
                format!("\"{text}\" is not a network like \"192.168.1.0/24\" or an address"),
            ),
        }
    }
    let trusted_assets = asset_access(
        &raw.trusted_assets,
        "server.trusted_assets",
        asset_names,
        check,
    );
    if !trusted_networks.is_empty() && raw.trusted_assets.is_empty() {
        check.general(
            "server.trusted_assets",
            "trusted_networks is set, so name the assets they may send through (or \"*\")",
        );
    }
    let listen = parse_listen(raw.listen, Some(DEFAULT_LISTEN), "server.listen", check);
    let listen_tls = parse_listen(raw.listen_tls, None, "server.listen_tls", check);
    let tls = match (&raw.tls_cert, &raw.tls_key) {
        (Some(cert), Some(key)) => match tls::server_config(cert.get_ref(), key.get_ref()) {
            Ok(config) => Some(config),
            Err(err) => {
                check.at(cert, "server.tls_cert", err.to_string());
                None
            }
        },
        (Some(cert), None) => {
            check.at(
                cert,
                "server.tls_key",
                "tls_cert is set but tls_key is missing",
            );
            None
        }
        (None, Some(key)) => {
            check.at(
                key,
                "server.tls_cert",
                "tls_key is set but tls_cert is missing",
            );
            None
        }
        (None, None) => None,
    };
    if !listen_tls.is_empty() && tls.is_none() && raw.tls_cert.is_none() {
        check.general(
            "server.listen_tls",
            "an implicit-TLS listener needs tls_cert and tls_key",
        );
    }
    if listen.is_empty() && listen_tls.is_empty() {
        check.general("server.listen", "no listen address is configured");
    }
    let hostname = raw.hostname.unwrap_or_else(default_hostname);
    if hostname.is_empty()
        || hostname
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        check.general(
            "server.hostname",
            format!("\"{hostname}\" is not a usable host name"),
        );
    }
    Some(ServerSettings {
        listen,
        listen_tls,
        hostname,
        tls,
        credential_failure: raw
            .credential_failure
            .unwrap_or(CredentialFailure::Temporary),
        bare_line_endings: match raw.bare_line_endings {
            None | Some(RawBareLineEndings::Normalize) => BareLineEndings::Normalize,
            Some(RawBareLineEndings::Reject) => BareLineEndings::Reject,
        },
        allow_plaintext_auth: raw.allow_plaintext_auth.unwrap_or(false),
        trusted_networks,
        trusted_assets,
        header_from: raw.header_from.unwrap_or(HeaderFromPolicy::Off),
        log_format: raw.log_format,
        trusted_delivery: raw.trusted_delivery.unwrap_or_default(),
    })
}

/// The machine's name when it has one we can read without a dependency, else "localhost".
fn default_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty() && !name.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".to_string())
}

fn validate_limits(raw: RawLimits, check: &mut Checker) -> Limits {
    let defaults = Limits::default();
    let limits = Limits {
        max_connections: raw.max_connections.unwrap_or(defaults.max_connections),
        max_message_size: raw.max_message_size.unwrap_or(defaults.max_message_size),
        max_recipients: raw.max_recipients.unwrap_or(defaults.max_recipients),
        max_command_line: raw.max_command_line.unwrap_or(defaults.max_command_line),
        max_data_line: raw.max_data_line.unwrap_or(defaults.max_data_line),
        max_auth_line: raw.max_auth_line.unwrap_or(defaults.max_auth_line),
        max_errors: raw.max_errors.unwrap_or(defaults.max_errors),
        max_junk_commands: raw.max_junk_commands.unwrap_or(defaults.max_junk_commands),
        max_transactions: raw.max_transactions.unwrap_or(defaults.max_transactions),
        max_password_checks: raw
            .max_password_checks
            .unwrap_or(defaults.max_password_checks),
        max_connections_per_ip: raw
            .max_connections_per_ip
            .unwrap_or(defaults.max_connections_per_ip),
        auth_max_failures: raw.auth_max_failures.unwrap_or(defaults.auth_max_failures),
        auth_lockout: raw
            .auth_lockout_secs
            .map(Duration::from_secs)
            .unwrap_or(defaults.auth_lockout),
        auth_failure_delay: raw
            .auth_failure_delay_ms
            .map(Duration::from_millis)
            .unwrap_or(defaults.auth_failure_delay),
        auth_throttle_entries: raw
            .auth_throttle_entries
            .unwrap_or(defaults.auth_throttle_entries),
    };
    // A slice, not a counted array: adding a limit is adding a line.
    let minimums: &[(&str, u64, u64)] = &[
        (
            "limits.max_connections_per_ip",
            limits.max_connections_per_ip as u64,
            1,
        ),
        (
            "limits.auth_max_failures",
            limits.auth_max_failures as u64,
            1,
        ),
        ("limits.max_connections", limits.max_connections as u64, 1),
        ("limits.max_message_size", limits.max_message_size, 1024),
        ("limits.max_recipients", limits.max_recipients as u64, 1),
        // RFC 5321 minimums: clients may rely on them.
        (
            "limits.max_command_line",
            limits.max_command_line as u64,
            512,
        ),
        ("limits.max_data_line", limits.max_data_line as u64, 1000),
        ("limits.max_auth_line", limits.max_auth_line as u64, 512),
        ("limits.max_errors", limits.max_errors as u64, 1),
        (
            "limits.max_junk_commands",
            limits.max_junk_commands as u64,
            1,
        ),
        // max_transactions has no minimum: 0 means unlimited.
        (
            "limits.max_password_checks",
            limits.max_password_checks as u64,
            1,
        ),
        (
            "limits.auth_throttle_entries",
            limits.auth_throttle_entries as u64,
            1,
        ),
    ];
    for &(field, value, minimum) in minimums {
        if value < minimum {
            check.general(field, format!("{value} is below the minimum of {minimum}"));
        }
    }
    limits
}

fn validate_timeouts(raw: RawTimeouts, check: &mut Checker) -> Timeouts {
    let defaults = Timeouts::default();
    let mut pick = |field: &str, value: Option<u64>, default: Duration| match value {
        Some(0) => {
            check.general(field, "a timeout of 0 seconds would fail every operation");
            default
        }
        Some(secs) => Duration::from_secs(secs),
        None => default,
    };
    let command = pick("timeouts.command_secs", raw.command_secs, defaults.command);
    Timeouts {
        command,
        // Unset, writes get the same bound as reads.
        client_write: pick("timeouts.client_write_secs", raw.client_write_secs, command),
        line_end: pick(
            "timeouts.line_end_secs",
            raw.line_end_secs,
            defaults.line_end,
        ),
        data_block: pick(
            "timeouts.data_block_secs",
            raw.data_block_secs,
            defaults.data_block,
        ),
        data_total: pick(
            "timeouts.data_total_secs",
            raw.data_total_secs,
            defaults.data_total,
        ),
        upstream_connect: pick(
            "timeouts.upstream_connect_secs",
            raw.upstream_connect_secs,
            defaults.upstream_connect,
        ),
        upstream_command: pick(
            "timeouts.upstream_command_secs",
            raw.upstream_command_secs,
            defaults.upstream_command,
        ),
        upstream_final_reply: pick(
            "timeouts.upstream_final_reply_secs",
            raw.upstream_final_reply_secs,
            defaults.upstream_final_reply,
        ),
        token_request: pick(
            "timeouts.token_request_secs",
            raw.token_request_secs,
            defaults.token_request,
        ),
        token_retry: raw
            .token_retry_secs
            .map(Duration::from_secs)
            .unwrap_or(defaults.token_retry),
        shutdown_grace: pick(
            "timeouts.shutdown_grace_secs",
            raw.shutdown_grace_secs,
            defaults.shutdown_grace,
        ),
    }
}

fn validate_user(
    raw: &RawUser,
    index: usize,
    asset_names: &HashSet<String>,
    check: &mut Checker,
) -> Option<User> {
    let name = raw.name.get_ref().clone();
    if name.is_empty() {
        check.at(
            &raw.name,
            format!("user[{index}].name"),
            "a user name must not be empty",
        );
    }
    let hash = raw.password_hash.get_ref().clone();
    if let Err(err) = argon2::PasswordHash::new(&hash) {
        check.at(
            &raw.password_hash,
            format!("user[{index}].password_hash"),
            format!(
                "not a valid argon2 hash ({err}); make one with `smtp-oauth-relay hash-password`"
            ),
        );
    }
    let assets = asset_access(
        &raw.assets,
        &format!("user[{index}].assets"),
        asset_names,
        check,
    );
    if raw.assets.is_empty() {
        check.at(
            &raw.name,
            format!("user[{index}].assets"),
            format!("user \"{name}\" may use no asset; list asset names or \"*\""),
        );
    }
    Some(User {
        name,
        password_hash: hash,
        assets,
        delivery: raw.delivery,
    })
}

/// A list of asset names, or "*" for all of them.
fn asset_access(
    names: &[Spanned<String>],
    field: &str,
    asset_names: &HashSet<String>,
    check: &mut Checker,
) -> AssetAccess {
    let mut allowed = HashSet::new();
    for name in names {
        let text = name.get_ref();
        if text == "*" {
            return AssetAccess::All;
        }
        if asset_names.contains(text) {
            allowed.insert(text.clone());
        } else {
            check.at(name, field, format!("no asset is named \"{text}\""));
        }
    }
    AssetAccess::Only(allowed)
}

fn build_sender_map(raw_assets: &[Spanned<RawAsset>], check: &mut Checker) -> SenderMap {
    let mut map = SenderMap::default();
    for (index, raw_asset) in raw_assets.iter().enumerate() {
        let asset = raw_asset.get_ref();
        let asset_name = asset.name.get_ref();
        if asset.senders.is_empty() {
            check.at(
                &asset.name,
                format!("asset[{index}].senders"),
                format!(
                    "asset \"{asset_name}\" serves no sender; list addresses, \"@domain\" or \"*\""
                ),
            );
        }
        for sender in &asset.senders {
            let field = format!("asset[{index}].senders");
            match SenderPattern::parse(sender.get_ref()) {
                Ok(pattern) => {
                    if let Err(previous) = map.insert(pattern, asset_name) {
                        check.at(
                            sender,
                            field,
                            format!(
                                "sender \"{}\" is already served by asset \"{previous}\"",
                                sender.get_ref()
                            ),
                        );
                    }
                }
                Err(message) => check.at(sender, field, message),
            }
        }
    }
    map
}
