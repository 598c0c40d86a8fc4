//! The "expiry forecast" column: when the asset's refresh token is expected to stop
//! working. The console asks the same pure forecast the alerts and `check` use
//! (`alerts::forecast`), so the three never disagree; this file only turns it into the
//! words of a table cell.

use std::time::SystemTime;

use crate::alerts::{forecast as alert_forecast, grant_facts};
use crate::config::Asset;
use crate::credentials::store::StoredToken;
use crate::oauth::token::TokenStatus;

/// A known or estimated end of the asset's grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forecast {
    pub expires_at: SystemTime,
    /// Why, in words ("Microsoft drops refresh tokens unused for 90 days").
    pub reason: String,
}

/// The forecast for `asset`, given the token manager's status and the store's entry;
/// `None` for assets without a refresh token (service accounts, app-only credentials).
pub fn forecast(
    asset: &Asset,
    status: Option<&TokenStatus>,
    stored: Option<&StoredToken>,
) -> Option<Forecast> {
    let facts = grant_facts(asset, status, stored);
    alert_forecast::forecast(&facts).map(|forecast| Forecast {
        expires_at: forecast.expires_at,
        reason: forecast.cause.describe().to_string(),
    })
}
