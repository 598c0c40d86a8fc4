//! When an asset's refresh token will die, as far as anyone can tell beforehand. Pure: the
//! facts go in ([`GrantFacts`], gathered by [`super::asset_forecast`]), a [`Forecast`]
//! comes out, so `check`, the console and the alerts all show the same one.
//!
//! What is foreseeable (protocol-facts.md, provider-facts.md):
//! - a time-limited grant: the token endpoint says `refresh_token_expires_in` (Google for an
//!   External app in "Testing" status: 7 days; time-based access);
//! - Google: a refresh token unused for six months dies;
//! - Microsoft: a refresh token unused for 90 days dies (every use replaces it).
//!
//! Revocation, a password change and Google's per-client token budget are not foreseeable;
//! they show up as `asset_needs_attention` when they happen. An asset without a refresh
//! token (a service account, a client-credentials grant) has no forecast.

use std::time::{Duration, SystemTime};

use crate::config::Provider;

const DAY: u64 = 24 * 3600;
/// Google: "The refresh token has not been used for six months" (a little over 182 days;
/// the shorter reading is the safe one).
pub const GOOGLE_UNUSED_LIMIT: Duration = Duration::from_secs(182 * DAY);
/// Microsoft identity platform: refresh tokens live 90 days (renewed on every use).
pub const MICROSOFT_UNUSED_LIMIT: Duration = Duration::from_secs(90 * DAY);

/// What is known about one asset's grant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantFacts {
    /// `None` for a custom provider: no inactivity rule is known.
    pub provider: Option<Provider>,
    /// False for assets that get tokens without a refresh token (service accounts,
    /// client credentials): they have nothing to expire.
    pub has_refresh_token: bool,
    /// When the grant was obtained (the token store's `obtained_at`), if known.
    pub obtained_at: Option<SystemTime>,
    /// The last time the refresh token was used or replaced, if known: the relay's last
    /// refresh, or the store's `updated_at` (a rotation is a use).
    pub last_used: Option<SystemTime>,
    /// The end the provider stated (`refresh_token_expires_in` at the last refresh).
    pub stated_expiry: Option<SystemTime>,
}

/// Why the refresh token is foreseen to die at [`Forecast::expires_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryCause {
    /// The provider said so: a time-limited grant.
    Stated,
    /// Google's six months without use.
    GoogleUnused,
    /// Microsoft's 90 days without use.
    MicrosoftUnused,
}

impl ExpiryCause {
    /// True when using the token (a refresh) pushes the end back.
    pub fn renewed_by_use(self) -> bool {
        !matches!(self, ExpiryCause::Stated)
    }

    /// The cause in words, for `check`, pages and alerts.
    pub fn describe(self) -> &'static str {
        match self {
            ExpiryCause::Stated => {
                "the provider issued a time-limited grant (Google: an External app in \"Testing\" status lives 7 days)"
            }
            ExpiryCause::GoogleUnused => "Google drops refresh tokens unused for six months",
            ExpiryCause::MicrosoftUnused => "Microsoft drops refresh tokens unused for 90 days",
        }
    }

    /// What to do about it.
    pub fn fix(self) -> &'static str {
        match self {
            ExpiryCause::Stated => {
                "authorize the asset again before then (`smtp-oauth-relay authorize`, or Generate Token in the \
                 console); to stop it recurring, set the Google OAuth consent screen's publishing status to \
                 \"In production\" (or use an Internal app)"
            }
            ExpiryCause::GoogleUnused | ExpiryCause::MicrosoftUnused => {
                "send a message through the asset, or run `smtp-oauth-relay check`, before then: any refresh \
                 renews the token (the running relay refreshes it by itself when it gets close)"
            }
        }
    }
}

/// The earliest foreseeable end of an asset's refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forecast {
    pub expires_at: SystemTime,
    pub cause: ExpiryCause,
}

impl Forecast {
    /// Time left at `now`; zero once past.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires_at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// Whether the end is `warning` or less away at `now`.
    pub fn within(&self, warning: Duration, now: SystemTime) -> bool {
        self.remaining(now) <= warning
    }

    /// One line: when, how far off, and why, e.g. "refresh token expires 2026-12-11
    /// 10:00 UTC (in 6 d 23 h): the provider issued a time-limited grant (…)".
    pub fn describe(&self, now: SystemTime) -> String {
        let when = super::format::utc_minutes(self.expires_at);
        let verb = if self.cause.renewed_by_use() {
            "expires if unused until"
        } else {
            "expires"
        };
        format!(
            "refresh token {verb} {when} (in {}): {}",
            approximate(self.remaining(now)),
            self.cause.describe()
        )
    }
}

/// The earliest foreseeable end of the grant `facts` describe, if any.
pub fn forecast(facts: &GrantFacts) -> Option<Forecast> {
    if !facts.has_refresh_token {
        return None;
    }
    let stated = facts.stated_expiry.map(|expires_at| Forecast {
        expires_at,
        cause: ExpiryCause::Stated,
    });
    let unused = match facts.provider {
        Some(Provider::Google) => Some((GOOGLE_UNUSED_LIMIT, ExpiryCause::GoogleUnused)),
        Some(Provider::Microsoft) => Some((MICROSOFT_UNUSED_LIMIT, ExpiryCause::MicrosoftUnused)),
        Some(Provider::Custom) | None => None,
    }
    .and_then(|(limit, cause)| {
        let last_used = match (facts.last_used, facts.obtained_at) {
            (Some(used), Some(obtained)) => Some(used.max(obtained)),
            (used, obtained) => used.or(obtained),
        }?;
        Some(Forecast {
            expires_at: last_used.checked_add(limit)?,
            cause,
        })
    });
    match (stated, unused) {
        (Some(a), Some(b)) => Some(if b.expires_at < a.expires_at { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// Whole days from `now` until the start of `date` (UTC); negative once past.
pub fn days_until(date: time::Date, now: SystemTime) -> i64 {
    let today = time::OffsetDateTime::from(now).date();
    i64::from(date.to_julian_day()) - i64::from(today.to_julian_day())
}

/// "6 d 23 h", "5 h 12 min", "40 s": a duration as an operator reads it.
pub fn approximate(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        s if s >= DAY => format!("{} d {} h", s / DAY, (s % DAY) / 3600),
        s if s >= 3600 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_800_000_000);

    fn at(secs_after_t0: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs_after_t0)
    }

    fn google() -> GrantFacts {
        GrantFacts {
            provider: Some(Provider::Google),
            has_refresh_token: true,
            ..GrantFacts::default()
        }
    }

    #[test]
    fn no_refresh_token_no_forecast() {
        let facts = GrantFacts {
            has_refresh_token: false,
            stated_expiry: Some(at(10)),
            last_used: Some(at(0)),
            ..google()
        };
        assert_eq!(forecast(&facts), None);
    }

    #[test]
    fn nothing_known_nothing_foreseen() {
        assert_eq!(forecast(&google()), None);
        let custom = GrantFacts {
            provider: Some(Provider::Custom),
            last_used: Some(at(0)),
            ..google()
        };
        assert_eq!(forecast(&custom), None);
    }

    #[test]
    fn a_stated_end_beats_a_later_inactivity_end() {
        let facts = GrantFacts {
            stated_expiry: Some(at(7 * DAY)),
            last_used: Some(at(0)),
            ..google()
        };
        assert_eq!(
            forecast(&facts),
            Some(Forecast {
                expires_at: at(7 * DAY),
                cause: ExpiryCause::Stated
            })
        );
    }

    #[test]
    fn inactivity_counts_from_the_latest_use() {
        let microsoft = GrantFacts {
            provider: Some(Provider::Microsoft),
            obtained_at: Some(at(0)),
            last_used: Some(at(5 * DAY)),
            ..google()
        };
        assert_eq!(
            forecast(&microsoft),
            Some(Forecast {
                expires_at: at(95 * DAY),
                cause: ExpiryCause::MicrosoftUnused
            })
        );
        let google_obtained_only = GrantFacts {
            obtained_at: Some(at(0)),
            ..google()
        };
        let forecast = forecast(&google_obtained_only).unwrap();
        assert_eq!(forecast.expires_at, at(182 * DAY));
        assert!(forecast.cause.renewed_by_use());
        assert!(!forecast.within(Duration::from_secs(DAY), at(180 * DAY)));
        assert!(forecast.within(Duration::from_secs(DAY), at(181 * DAY + 1)));
        assert_eq!(forecast.remaining(at(200 * DAY)), Duration::ZERO);
        let text = forecast.describe(at(181 * DAY));
        assert!(
            text.contains("if unused until") && text.contains("(in 1 d 0 h)"),
            "{text}"
        );
    }

    #[test]
    fn days_and_durations_read_well() {
        let date = time::Date::from_calendar_date(2027, time::Month::March, 31).unwrap();
        let noon_before = time::OffsetDateTime::new_utc(
            time::Date::from_calendar_date(2027, time::Month::March, 17).unwrap(),
            time::Time::from_hms(12, 0, 0).unwrap(),
        );
        assert_eq!(days_until(date, noon_before.into()), 14);
        assert_eq!(approximate(Duration::from_secs(3 * DAY + 7200)), "3 d 2 h");
        assert_eq!(
            approximate(Duration::from_secs(3 * 3600 + 120)),
            "3 h 2 min"
        );
        assert_eq!(approximate(Duration::from_secs(59)), "59 s");
    }
}
