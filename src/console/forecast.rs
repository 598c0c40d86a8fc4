//! The "expiry forecast" column: when the asset's refresh token is expected to stop
//! working, as far as the relay knows.
//!
//! Integration point: the alerts work (`[[alert]]`, `refresh_token_expiring`) computes the
//! same forecast in `alerts::forecast`, also for `check`; when both are merged,
//! [`forecast`] should return that one's answer so the console and the alerts never
//! disagree. Until then it knows the one rule the token store alone can tell: Microsoft
//! ends a refresh token after 90 days without use, counted from its last rotation.

use std::time::{Duration, SystemTime};

use crate::config::{Asset, Provider, RefreshTokenSource};
use crate::credentials::store::StoredToken;

/// Microsoft's inactivity window for refresh tokens.
pub const MICROSOFT_INACTIVITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// A known or estimated end of the asset's grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forecast {
    pub expires_at: SystemTime,
    /// Why, in words ("90 days without use (Microsoft)").
    pub reason: String,
}

/// The forecast for `asset`, given what the token store holds for it.
pub fn forecast(asset: &Asset, stored: Option<&StoredToken>) -> Option<Forecast> {
    if asset.service_account.is_some() || asset.refresh_token != RefreshTokenSource::Store {
        return None;
    }
    let stored = stored?;
    match asset.provider {
        Provider::Microsoft => Some(Forecast {
            expires_at: SystemTime::UNIX_EPOCH
                + Duration::from_secs(stored.updated_at)
                + MICROSOFT_INACTIVITY,
            reason: "if unused for 90 days (Microsoft)".to_string(),
        }),
        Provider::Google | Provider::Custom => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::credentials::secret::Secret;

    const CONFIG: &str = r#"
[[user]]
name = "u"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$9xcj0CdcYylCDQXd8INdMQ$JzoPhFCC0Ez1jEAxOLed/tM/3z66S0h5zBI+uPwZeXM"
assets = ["*"]
[[asset]]
name = "ms"
email = "a@example.com"
provider = "microsoft"
tenant = "common"
client_id = "id"
client_secret = "s"
senders = ["a@example.com"]
[[asset]]
name = "g"
email = "b@example.com"
provider = "google"
client_id = "id"
client_secret = "s"
senders = ["b@example.com"]
"#;

    #[test]
    fn microsoft_grants_end_90_days_after_the_last_rotation() {
        let config =
            crate::config::parse_with_env(CONFIG, std::path::Path::new("r.toml"), |_| None)
                .unwrap();
        let stored = StoredToken {
            refresh_token: Secret::new("rt"),
            account: None,
            scopes: vec![],
            obtained_at: 1_000,
            updated_at: 2_000,
        };
        let ms = forecast(config.asset("ms").unwrap(), Some(&stored)).unwrap();
        assert_eq!(
            ms.expires_at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(2_000) + MICROSOFT_INACTIVITY
        );
        assert_eq!(forecast(config.asset("g").unwrap(), Some(&stored)), None);
        assert_eq!(forecast(config.asset("ms").unwrap(), None), None);
    }
}
