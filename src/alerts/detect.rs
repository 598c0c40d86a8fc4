//! Which alerts are due: each check turns every asset's [`AssetView`] (health, forecast,
//! client-secret date) into events, remembering per asset what was said and when, so that
//!
//! - `asset_needs_attention` goes out when an asset breaks, and again as a reminder while
//!   it stays broken, at most once per `interval_secs`;
//! - `asset_recovered` goes out once when an asset that was announced broken works again;
//! - `refresh_token_expiring` goes out once when the forecast comes within the warning
//!   window, and again only after it left the window (a new grant) and came back;
//! - `client_secret_expiring` goes out once per warning threshold crossed (14 and 3 days);
//! - and no asset gets more than one alert of a kind per `interval_secs`, whatever flaps.
//!
//! Pure apart from the clock values passed in; the memory lives as long as the alert task
//! (a restart may repeat an alert once, never lose one that is still true).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::event::{Alert, EventKind};
use super::forecast::{days_until, Forecast};

/// How an asset is doing, as the token manager and the provider last said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Working, or not tried yet.
    Ok,
    /// Only an operator can fix it.
    NeedsAttention { reason: String, fix: String },
}

/// Everything the detector needs to know about one asset at one check.
#[derive(Debug, Clone)]
pub struct AssetView {
    pub name: String,
    pub email: String,
    pub health: Health,
    pub forecast: Option<Forecast>,
    pub client_secret_expires: Option<time::Date>,
    pub console_url: Option<String>,
    /// The provider's "over the sending limit" mark, while it holds (issue 16).
    pub over_limit: Option<crate::limits::OverLimit>,
}

/// The detector's settings (from `[alerts]`).
#[derive(Debug, Clone)]
pub struct Rules {
    pub interval: Duration,
    pub refresh_token_warning: Duration,
    /// Largest first.
    pub client_secret_warning_days: Vec<u32>,
}

#[derive(Debug, Default)]
struct Memory {
    /// The last alert about this asset's health said "needs attention".
    announced_broken: bool,
    /// A `refresh_token_expiring` went out for the forecast's current stay in the window.
    announced_expiring: bool,
    /// The smallest client-secret threshold (days) announced.
    announced_secret_days: Option<u32>,
    /// The end of the over-limit mark last announced.
    announced_over_limit: Option<u64>,
    last_sent: HashMap<EventKind, Instant>,
}

impl Memory {
    fn may_send(&self, kind: EventKind, interval: Duration, now: Instant) -> bool {
        self.last_sent
            .get(&kind)
            .is_none_or(|last| now.saturating_duration_since(*last) >= interval)
    }
}

/// Remembers, per asset, what was announced and when.
#[derive(Debug, Default)]
pub struct Detector {
    assets: HashMap<String, Memory>,
}

impl Detector {
    pub fn new() -> Detector {
        Detector::default()
    }

    /// The alerts due for `view` now; `now` rates them, `wall` dates them.
    pub fn check(
        &mut self,
        view: &AssetView,
        rules: &Rules,
        now: Instant,
        wall: SystemTime,
    ) -> Vec<Alert> {
        let memory = self.assets.entry(view.name.clone()).or_default();
        let mut alerts = Vec::new();
        let mut emit = |memory: &mut Memory,
                        event: EventKind,
                        reason: String,
                        fix: String,
                        expires_at: Option<SystemTime>| {
            memory.last_sent.insert(event, now);
            alerts.push(Alert {
                event,
                asset: view.name.clone(),
                email: view.email.clone(),
                reason,
                fix,
                console_url: view.console_url.clone(),
                at: wall,
                expires_at,
            });
        };

        match &view.health {
            Health::NeedsAttention { reason, fix } => {
                // The first time, and as a reminder every interval while it lasts.
                if memory.may_send(EventKind::AssetNeedsAttention, rules.interval, now) {
                    memory.announced_broken = true;
                    emit(
                        memory,
                        EventKind::AssetNeedsAttention,
                        reason.clone(),
                        fix.clone(),
                        None,
                    );
                }
            }
            Health::Ok => {
                if memory.announced_broken
                    && memory.may_send(EventKind::AssetRecovered, rules.interval, now)
                {
                    memory.announced_broken = false;
                    emit(
                        memory,
                        EventKind::AssetRecovered,
                        "the asset's credentials work again".to_string(),
                        "nothing to do".to_string(),
                        None,
                    );
                }
            }
        }

        // A broken asset's forecast is moot: it already failed.
        let expiring = view
            .forecast
            .filter(|forecast| forecast.within(rules.refresh_token_warning, wall))
            .filter(|_| view.health == Health::Ok);
        match expiring {
            None => memory.announced_expiring = false,
            Some(forecast) => {
                if !memory.announced_expiring
                    && memory.may_send(EventKind::RefreshTokenExpiring, rules.interval, now)
                {
                    memory.announced_expiring = true;
                    emit(
                        memory,
                        EventKind::RefreshTokenExpiring,
                        forecast.describe(wall),
                        forecast.cause.fix().to_string(),
                        Some(forecast.expires_at),
                    );
                }
            }
        }

        if let Some(date) = view.client_secret_expires {
            let days_left = days_until(date, wall);
            // The smallest threshold crossed: one alert even if several were crossed at once
            // (a config written late, a relay that was down).
            let crossed = rules
                .client_secret_warning_days
                .iter()
                .copied()
                .filter(|days| days_left <= i64::from(*days))
                .min();
            if let Some(threshold) = crossed {
                let new = memory
                    .announced_secret_days
                    .is_none_or(|announced| threshold < announced);
                if new && memory.may_send(EventKind::ClientSecretExpiring, rules.interval, now) {
                    memory.announced_secret_days = Some(threshold);
                    let when = if days_left >= 0 {
                        format!("in {days_left} day(s)")
                    } else {
                        format!("{} day(s) ago", -days_left)
                    };
                    emit(
                        memory,
                        EventKind::ClientSecretExpiring,
                        format!("the OAuth client secret expires on {date} ({when}), as client_secret_expires says"),
                        "create a new client secret in the provider's console, put it into the asset's config \
                         (client_secret, client_secret_file or client_json), set client_secret_expires to its new \
                         end and reload the relay (SIGHUP)"
                            .to_string(),
                        Some(date.midnight().assume_utc().into()),
                    );
                }
            } else {
                memory.announced_secret_days = None;
            }
        }
        match &view.over_limit {
            None => memory.announced_over_limit = None,
            Some(mark) => {
                // Once per mark (a new refusal with a new end is a new alert).
                if memory.announced_over_limit != Some(mark.until)
                    && memory.may_send(EventKind::AssetOverProviderLimit, rules.interval, now)
                {
                    memory.announced_over_limit = Some(mark.until);
                    let until = crate::limits::format_time(mark.until);
                    emit(
                        memory,
                        EventKind::AssetOverProviderLimit,
                        format!("the provider refused mail for quota ({}); the relay answers the asset's mail with 451 until {until}", mark.reason),
                        "nothing is lost: clients keep their mail and retry after that time; to avoid it, set the asset's \
                         daily_messages / daily_recipients below the provider's limits or spread the senders over more assets"
                            .to_string(),
                        Some(std::time::UNIX_EPOCH + Duration::from_secs(mark.until)),
                    );
                }
            }
        }
        alerts
    }

    /// Forgets assets no longer configured (after a reload).
    pub fn retain(&mut self, names: &[&str]) {
        self.assets.retain(|name, _| names.contains(&name.as_str()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::alerts::forecast::ExpiryCause;

    const HOUR: Duration = Duration::from_secs(3600);

    fn rules() -> Rules {
        Rules {
            interval: HOUR,
            refresh_token_warning: 24 * HOUR,
            client_secret_warning_days: vec![14, 3],
        }
    }

    fn view(health: Health) -> AssetView {
        AssetView {
            name: "support".into(),
            email: "support@example.com".into(),
            health,
            forecast: None,
            client_secret_expires: None,
            console_url: None,
            over_limit: None,
        }
    }

    #[test]
    fn an_over_limit_mark_is_announced_once_per_mark() {
        let mut detector = Detector::new();
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut view = view(Health::Ok);
        view.over_limit = Some(crate::limits::OverLimit {
            until: 1_900_000_000,
            since: 1_899_990_000,
            reason: "550 5.4.5 Daily user sending limit exceeded".into(),
        });
        let alerts = detector.check(&view, &rules(), now, wall);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].event, EventKind::AssetOverProviderLimit);
        assert!(alerts[0].reason.contains("5.4.5"), "{}", alerts[0].reason);
        // The same mark, later: nothing new.
        assert!(detector
            .check(&view, &rules(), now + 2 * HOUR, wall)
            .is_empty());
    }

    fn broken() -> Health {
        Health::NeedsAttention {
            reason: "revoked".into(),
            fix: "authorize".into(),
        }
    }

    fn kinds(alerts: &[Alert]) -> Vec<EventKind> {
        alerts.iter().map(|alert| alert.event).collect()
    }

    #[test]
    fn broken_once_then_reminders_then_recovered_once() {
        let mut detector = Detector::new();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let ok = view(Health::Ok);
        let bad = view(broken());
        assert!(detector.check(&ok, &rules(), t0, wall).is_empty());
        let first = detector.check(&bad, &rules(), t0, wall);
        assert_eq!(kinds(&first), [EventKind::AssetNeedsAttention]);
        assert_eq!(first[0].reason, "revoked");
        for minutes in [1, 30, 59] {
            let later = t0 + Duration::from_secs(60 * minutes);
            assert!(detector.check(&bad, &rules(), later, wall).is_empty());
        }
        let reminder = detector.check(&bad, &rules(), t0 + HOUR, wall);
        assert_eq!(kinds(&reminder), [EventKind::AssetNeedsAttention]);
        let recovered = detector.check(&ok, &rules(), t0 + HOUR * 2, wall);
        assert_eq!(kinds(&recovered), [EventKind::AssetRecovered]);
        assert!(detector
            .check(&ok, &rules(), t0 + HOUR * 9, wall)
            .is_empty());
    }

    #[test]
    fn flapping_is_rate_limited_per_kind() {
        let mut detector = Detector::new();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut sent = Vec::new();
        for step in 0..20u64 {
            let health = if step % 2 == 0 { broken() } else { Health::Ok };
            let now = t0 + Duration::from_secs(60 * step);
            sent.extend(kinds(&detector.check(&view(health), &rules(), now, wall)));
        }
        assert_eq!(
            sent,
            [EventKind::AssetNeedsAttention, EventKind::AssetRecovered]
        );
    }

    #[test]
    fn expiring_once_per_entry_into_the_window() {
        let mut detector = Detector::new();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut expiring = view(Health::Ok);
        expiring.forecast = Some(Forecast {
            expires_at: wall + 23 * HOUR,
            cause: ExpiryCause::Stated,
        });
        let first = detector.check(&expiring, &rules(), t0, wall);
        assert_eq!(kinds(&first), [EventKind::RefreshTokenExpiring]);
        assert_eq!(first[0].expires_at, Some(wall + 23 * HOUR));
        assert!(
            first[0].reason.contains("time-limited"),
            "{}",
            first[0].reason
        );
        assert!(detector
            .check(&expiring, &rules(), t0 + HOUR * 5, wall)
            .is_empty());
        // A new grant far from its end, then that one comes close again.
        let mut renewed = expiring.clone();
        renewed.forecast = Some(Forecast {
            expires_at: wall + 200 * HOUR,
            cause: ExpiryCause::Stated,
        });
        assert!(detector
            .check(&renewed, &rules(), t0 + HOUR * 6, wall)
            .is_empty());
        assert_eq!(
            kinds(&detector.check(&expiring, &rules(), t0 + HOUR * 7, wall)),
            [EventKind::RefreshTokenExpiring]
        );
    }

    #[test]
    fn client_secret_at_14_and_3_days() {
        let mut detector = Detector::new();
        let t0 = Instant::now();
        let today = time::OffsetDateTime::now_utc().date();
        let wall = SystemTime::now();
        let mut asset = view(Health::Ok);
        asset.client_secret_expires = Some(today + time::Duration::days(20));
        assert!(detector.check(&asset, &rules(), t0, wall).is_empty());
        asset.client_secret_expires = Some(today + time::Duration::days(14));
        let alerts = detector.check(&asset, &rules(), t0, wall);
        assert_eq!(kinds(&alerts), [EventKind::ClientSecretExpiring]);
        assert!(
            alerts[0].reason.contains("in 14 day(s)"),
            "{}",
            alerts[0].reason
        );
        asset.client_secret_expires = Some(today + time::Duration::days(5));
        assert!(detector
            .check(&asset, &rules(), t0 + HOUR * 2, wall)
            .is_empty());
        asset.client_secret_expires = Some(today + time::Duration::days(3));
        assert_eq!(
            kinds(&detector.check(&asset, &rules(), t0 + HOUR * 3, wall)),
            [EventKind::ClientSecretExpiring]
        );
        assert!(detector
            .check(&asset, &rules(), t0 + HOUR * 9, wall)
            .is_empty());
    }
}
