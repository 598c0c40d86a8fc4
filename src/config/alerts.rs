//! `[alerts]` and `[[alert]]`: where the relay says that an asset needs an operator (or
//! works again, or is about to stop working), and how often. The TOML shapes, their
//! checks and the validated [`AlertSettings`] live together here, so the alerts feature
//! touches the shared config files only with one line each.
//!
//! ```toml
//! [alerts]
//! interval_secs = 3600        # at most one alert per asset and event kind per hour
//!
//! [[alert]]
//! kind = "webhook"
//! url = "https://hooks.slack.com/services/…"
//! format = "slack"            # "json" (default) | "slack" | "teams"
//!
//! [[alert]]
//! kind = "email"
//! to = "ops@example.com"
//! asset = "support"           # sent through this asset, only while it is healthy
//! ```

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::asset::check_endpoint_url;
use super::problems::Checker;

/// At most one alert per asset and event kind per hour: an operator who is told at once
/// and then reminded hourly notices, one who gets a message a minute mutes the channel.
const DEFAULT_INTERVAL_SECS: u64 = 3600;
/// Reading the assets' state is in-memory and cheap; half a minute is fast enough for
/// "the relay knows first" and far faster than any mail client's retry.
const DEFAULT_CHECK_SECS: u64 = 30;
/// A day's notice before a refresh token is foreseen to die: enough to re-authorize in
/// working hours (the issue's 24 h).
const DEFAULT_REFRESH_TOKEN_WARNING_SECS: u64 = 24 * 3600;
/// Two weeks to order a new client secret, and a last call three days before.
const DEFAULT_CLIENT_SECRET_WARNING_DAYS: [u32; 2] = [14, 3];
/// Attempts per alert and channel: with the back-off below they span about 15 minutes,
/// which rides out a webhook receiver's deploy or a short outage.
const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// First pause between attempts; each further one doubles it.
const DEFAULT_RETRY_SECS: u64 = 30;
/// A webhook receiver answers in well under a second; ten leave room for a slow one
/// without a stalled one holding the queue.
const DEFAULT_TIMEOUT_SECS: u64 = 10;
/// Alerts waiting to be sent; beyond it new ones are dropped (and logged), so a dead
/// channel cannot grow memory without bound.
const DEFAULT_QUEUE: usize = 256;

/// `[alerts]` as serde reads it.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    interval_secs: Option<u64>,
    check_secs: Option<u64>,
    refresh_token_warning_secs: Option<u64>,
    client_secret_warning_days: Option<Vec<u32>>,
    max_attempts: Option<u32>,
    retry_secs: Option<u64>,
    timeout_secs: Option<u64>,
    queue: Option<usize>,
}

/// One `[[alert]]` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlert {
    kind: AlertKind,
    url: Option<Spanned<String>>,
    format: Option<WebhookFormat>,
    to: Option<Spanned<String>>,
    asset: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AlertKind {
    Webhook,
    Email,
}

/// The body a webhook gets: our own JSON object, or the text wrapped in the incoming-webhook
/// shape of Slack or Microsoft Teams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    Json,
    Slack,
    Teams,
}

/// Where one `[[alert]]` sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertChannel {
    /// An HTTP POST; `url` is https, or http on a loopback address.
    Webhook { url: String, format: WebhookFormat },
    /// A short mail to `to`, sent through `asset` while that asset is healthy.
    Email { to: String, asset: String },
}

impl AlertChannel {
    /// A name for logs and metrics that holds no secret: a webhook URL often carries its
    /// token in the path (Slack, Teams), so only the scheme and host are shown.
    pub fn describe(&self) -> String {
        match self {
            AlertChannel::Webhook { url, .. } => match reqwest::Url::parse(url) {
                Ok(parsed) => format!(
                    "webhook {}://{}",
                    parsed.scheme(),
                    parsed.host_str().unwrap_or("?")
                ),
                Err(_) => "webhook".to_string(),
            },
            AlertChannel::Email { to, asset } => format!("email to {to} via {asset}"),
        }
    }

    /// `webhook` or `email`, the metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            AlertChannel::Webhook { .. } => "webhook",
            AlertChannel::Email { .. } => "email",
        }
    }
}

/// The validated `[alerts]` and `[[alert]]` settings. Without channels nothing is sent and
/// no alert task runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSettings {
    pub channels: Vec<AlertChannel>,
    /// At most one alert per asset and event kind per this (`interval_secs`).
    pub interval: Duration,
    /// How often the assets' health and forecasts are looked at (`check_secs`).
    pub check_every: Duration,
    /// `refresh_token_expiring` this long before a foreseen expiry.
    pub refresh_token_warning: Duration,
    /// `client_secret_expiring` this many days before `client_secret_expires`, largest first.
    pub client_secret_warning_days: Vec<u32>,
    pub max_attempts: u32,
    /// The first pause between attempts; it doubles each time.
    pub retry_delay: Duration,
    /// One webhook request, or one mail (connect to end of data).
    pub timeout: Duration,
    pub queue: usize,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            channels: Vec::new(),
            interval: Duration::from_secs(DEFAULT_INTERVAL_SECS),
            check_every: Duration::from_secs(DEFAULT_CHECK_SECS),
            refresh_token_warning: Duration::from_secs(DEFAULT_REFRESH_TOKEN_WARNING_SECS),
            client_secret_warning_days: DEFAULT_CLIENT_SECRET_WARNING_DAYS.to_vec(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_delay: Duration::from_secs(DEFAULT_RETRY_SECS),
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            queue: DEFAULT_QUEUE,
        }
    }
}

/// Checks `[alerts]` and every `[[alert]]`; `asset_names` are the configured assets (an
/// email channel must name one).
pub(super) fn validate_alerts(
    raw: Option<RawAlerts>,
    raw_channels: &[Spanned<RawAlert>],
    asset_names: &HashSet<String>,
    smtp_assets: &HashSet<String>,
    check: &mut Checker,
) -> AlertSettings {
    let raw = raw.unwrap_or_default();
    let defaults = AlertSettings::default();
    let mut secs = |field: &str, value: Option<u64>, default: Duration| match value {
        Some(0) => {
            check.general(field, "must be at least 1");
            default
        }
        Some(secs) => Duration::from_secs(secs),
        None => default,
    };
    let interval = secs("alerts.interval_secs", raw.interval_secs, defaults.interval);
    let check_every = secs("alerts.check_secs", raw.check_secs, defaults.check_every);
    let refresh_token_warning = secs(
        "alerts.refresh_token_warning_secs",
        raw.refresh_token_warning_secs,
        defaults.refresh_token_warning,
    );
    let retry_delay = secs("alerts.retry_secs", raw.retry_secs, defaults.retry_delay);
    let timeout = secs("alerts.timeout_secs", raw.timeout_secs, defaults.timeout);
    let max_attempts = match raw.max_attempts {
        Some(0) => {
            check.general("alerts.max_attempts", "must be at least 1");
            defaults.max_attempts
        }
        Some(attempts) => attempts,
        None => defaults.max_attempts,
    };
    let queue = match raw.queue {
        Some(0) => {
            check.general("alerts.queue", "must be at least 1");
            defaults.queue
        }
        Some(queue) => queue,
        None => defaults.queue,
    };
    let mut client_secret_warning_days = raw
        .client_secret_warning_days
        .unwrap_or(defaults.client_secret_warning_days);
    client_secret_warning_days.sort_unstable_by(|a, b| b.cmp(a));
    client_secret_warning_days.dedup();

    let channels = raw_channels
        .iter()
        .enumerate()
        .filter_map(|(index, raw)| validate_channel(raw, index, asset_names, smtp_assets, check))
        .collect();
    AlertSettings {
        channels,
        interval,
        check_every,
        refresh_token_warning,
        client_secret_warning_days,
        max_attempts,
        retry_delay,
        timeout,
        queue,
    }
}

fn validate_channel(
    spanned: &Spanned<RawAlert>,
    index: usize,
    asset_names: &HashSet<String>,
    smtp_assets: &HashSet<String>,
    check: &mut Checker,
) -> Option<AlertChannel> {
    let raw = spanned.get_ref();
    let field = |name: &str| format!("alert[{index}].{name}");
    let stray = |check: &mut Checker, set: bool, key: &str, kind: &str| {
        if set {
            check.at(
                spanned,
                field(key),
                format!("{key} does not apply to kind = \"{kind}\""),
            );
        }
    };
    match raw.kind {
        AlertKind::Webhook => {
            stray(check, raw.to.is_some(), "to", "webhook");
            stray(check, raw.asset.is_some(), "asset", "webhook");
            let Some(url) = &raw.url else {
                check.at(spanned, field("url"), "a webhook alert needs a url");
                return None;
            };
            if let Err(message) = check_endpoint_url(url.get_ref()) {
                // The message quotes the URL, which may hold the webhook's token: say
                // only what is wrong with it.
                let message = message.replace(url.get_ref(), "the url");
                check.at(url, field("url"), message);
                return None;
            }
            Some(AlertChannel::Webhook {
                url: url.get_ref().clone(),
                format: raw.format.unwrap_or(WebhookFormat::Json),
            })
        }
        AlertKind::Email => {
            stray(check, raw.url.is_some(), "url", "email");
            stray(check, raw.format.is_some(), "format", "email");
            let to = match &raw.to {
                Some(to) if is_plain_address(to.get_ref()) => Some(to.get_ref().clone()),
                Some(to) => {
                    check.at(
                        to,
                        field("to"),
                        format!("\"{}\" is not an email address", to.get_ref()),
                    );
                    None
                }
                None => {
                    check.at(
                        spanned,
                        field("to"),
                        "an email alert needs to = \"address\"",
                    );
                    None
                }
            };
            let asset = match &raw.asset {
                Some(asset) if smtp_assets.contains(asset.get_ref()) => {
                    Some(asset.get_ref().clone())
                }
                Some(asset) if asset_names.contains(asset.get_ref()) => {
                    check.at(
                        asset,
                        field("asset"),
                        format!(
                            "asset \"{}\" does not send over SMTP: email alerts need an asset with transport = \"smtp\"",
                            asset.get_ref()
                        ),
                    );
                    None
                }
                Some(asset) => {
                    check.at(
                        asset,
                        field("asset"),
                        format!("no asset is named \"{}\"", asset.get_ref()),
                    );
                    None
                }
                None => {
                    check.at(
                        spanned,
                        field("asset"),
                        "an email alert needs asset = \"name\": the asset it is sent through",
                    );
                    None
                }
            };
            Some(AlertChannel::Email {
                to: to?,
                asset: asset?,
            })
        }
    }
}

/// `"YYYY-MM-DD"`, as `client_secret_expires` is written.
pub(super) fn parse_date(
    value: &Spanned<String>,
    field: String,
    check: &mut Checker,
) -> Option<time::Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    match time::Date::parse(value.get_ref().trim(), format) {
        Ok(date) => Some(date),
        Err(_) => {
            check.at(
                value,
                field,
                format!(
                    "\"{}\" is not a date such as \"2027-03-31\"",
                    value.get_ref()
                ),
            );
            None
        }
    }
}

/// `local@domain` with nothing that could break out of an SMTP path or a header.
fn is_plain_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && address.len() <= 254
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | '"'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::{parse_with_env, ConfigError, Problem};
    use std::path::Path;

    fn config(asset_extra: &str, alerts: &str) -> String {
        format!(
            r#"
[[user]]
name = "u"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$ZHVtbXloYXNoZHVtbXloYXNoZHVtbXloYXNoZHVtbXk"
assets = ["a"]

[[asset]]
name = "a"
email = "a@example.com"
senders = ["a@example.com"]
client_id = "id"
client_secret = "s"
refresh_token = "rt"
{asset_extra}

{alerts}
"#
        )
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse_with_env(text, Path::new("t.toml"), |_| None) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("accepted:\n{text}"),
        }
    }

    #[test]
    fn defaults_and_a_full_config() {
        let none = parse_with_env(&config("", ""), Path::new("t.toml"), |_| None).unwrap();
        assert_eq!(none.alerts, AlertSettings::default());
        assert_eq!(none.alerts.interval, Duration::from_secs(3600));
        let text = config(
            "client_secret_expires = \"2027-03-31\"",
            r#"
[alerts]
interval_secs = 600
client_secret_warning_days = [3, 30, 14]

[[alert]]
kind = "webhook"
url = "https://hooks.example.com/x"
format = "teams"

[[alert]]
kind = "webhook"
url = "http://127.0.0.1:9/hook"

[[alert]]
kind = "email"
to = "ops@example.com"
asset = "a"
"#,
        );
        let config = parse_with_env(&text, Path::new("t.toml"), |_| None).unwrap();
        assert_eq!(config.alerts.interval, Duration::from_secs(600));
        assert_eq!(config.alerts.client_secret_warning_days, [30, 14, 3]);
        assert_eq!(
            config.alerts.channels,
            [
                AlertChannel::Webhook {
                    url: "https://hooks.example.com/x".into(),
                    format: WebhookFormat::Teams
                },
                AlertChannel::Webhook {
                    url: "http://127.0.0.1:9/hook".into(),
                    format: WebhookFormat::Json
                },
                AlertChannel::Email {
                    to: "ops@example.com".into(),
                    asset: "a".into()
                },
            ]
        );
        assert_eq!(
            config.assets[0].client_secret_expires,
            Some(time::Date::from_calendar_date(2027, time::Month::March, 31).unwrap())
        );
    }

    #[test]
    fn every_mistake_is_reported_with_its_field() {
        let text = config(
            "client_secret_expires = \"31.03.2027\"",
            r#"
[alerts]
interval_secs = 0

[[alert]]
kind = "webhook"
url = "http://hooks.example.com/T0/B0/tokenpart"

[[alert]]
kind = "webhook"
to = "x@example.com"

[[alert]]
kind = "email"
to = "not an address"
asset = "nope"
format = "json"
"#,
        );
        let found = problems(&text);
        let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
        for field in [
            "asset[0].client_secret_expires",
            "alerts.interval_secs",
            "alert[0].url",
            "alert[1].to",
            "alert[1].url",
            "alert[2].to",
            "alert[2].asset",
            "alert[2].format",
        ] {
            assert!(fields.contains(&field), "{field} missing from {found:#?}");
        }
        // The webhook's token is not repeated in the message.
        assert!(
            found.iter().all(|p| !p.message.contains("tokenpart")),
            "{found:#?}"
        );
        let unknown = problems(&config("", "[alerts]\nintervall_secs = 5\n"));
        assert!(
            unknown[0].message.contains("intervall_secs"),
            "{unknown:#?}"
        );
        let bad_kind = problems(&config("", "[[alert]]\nkind = \"pager\"\n"));
        assert!(bad_kind[0].message.contains("pager"), "{bad_kind:#?}");
    }

    #[test]
    fn plain_addresses() {
        assert!(is_plain_address("ops@example.com"));
        for bad in ["ops", "@x", "a@", "a b@x", "a@x>", "a@x\r\nRCPT TO:<b@y>"] {
            assert!(!is_plain_address(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_webhook_is_named_without_its_path() {
        let channel = AlertChannel::Webhook {
            url: "https://hooks.slack.com/services/T000/B000/XXXXsecret".into(),
            format: WebhookFormat::Slack,
        };
        assert_eq!(channel.describe(), "webhook https://hooks.slack.com");
    }

    #[test]
    fn email_alerts_need_an_asset_that_sends_over_smtp() {
        let text = config(
            "provider = \"google\"\ntransport = \"gmail-api\"",
            r#"
[[alert]]
kind = "email"
to = "ops@example.com"
asset = "a"
"#,
        );
        let found = problems(&text);
        assert!(
            found
                .iter()
                .any(|p| p.field == "alert[0].asset" && p.message.contains("transport = \"smtp\"")),
            "{found:?}"
        );
    }
}
