//! Counters for `/metrics`, in the Prometheus text format (prometheus-client crate).
//!
//! One `Metrics` lives for the whole process and survives config reloads, so counters
//! never jump back to zero while the relay runs.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// How a transaction ended, as counted in `smtp_oauth_relay_transactions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream accepted the message.
    Delivered,
    /// Refused by the relay's own policy (sender, size, header From, smuggling).
    PolicyRejected,
    /// Not sent; the client got 4xx and keeps the mail.
    TempFailed,
    /// The upstream refused it permanently (5xx passed on).
    PermFailed,
    /// The upstream vanished after the final dot: delivered or not, nobody knows.
    PossibleDuplicate,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::PolicyRejected => "rejected_by_policy",
            Outcome::TempFailed => "temp_failed",
            Outcome::PermFailed => "perm_failed",
            Outcome::PossibleDuplicate => "possible_duplicate",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub sessions_current: Gauge,
    pub sessions_total: Counter,
    transactions: Family<Labels, Counter>,
    pub bytes_relayed: Counter,
    pub upstream_connect_seconds: Histogram,
    pub upstream_auth_seconds: Histogram,
    token_refreshes: Family<Labels, Counter>,
    pub auth_failures: Counter,
    limit_hits: Family<Labels, Counter>,
    asset_ready: Family<Labels, Gauge>,
    alerts: Family<Labels, Counter>,
    // Issue 16: sending limits per asset.
    asset_sent_24h: Family<Labels, Gauge>,
    asset_limit_remaining: Family<Labels, Gauge>,
    asset_over_limit: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("smtp_oauth_relay");
        let sessions_current = Gauge::default();
        registry.register(
            "sessions_current",
            "Client sessions open now",
            sessions_current.clone(),
        );
        let sessions_total = Counter::default();
        registry.register(
            "sessions",
            "Client sessions accepted",
            sessions_total.clone(),
        );
        let transactions = Family::<Labels, Counter>::default();
        registry.register(
            "transactions",
            "Mail transactions by outcome",
            transactions.clone(),
        );
        let bytes_relayed = Counter::default();
        registry.register(
            "relayed_bytes",
            "Message bytes accepted by the upstream",
            bytes_relayed.clone(),
        );
        // 5 ms .. ~40 s: TLS to Google is ~50-200 ms; anything near the top is an outage.
        let latency = || Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let upstream_connect_seconds = latency();
        registry.register(
            "upstream_connect_seconds",
            "Time to connect and secure an upstream session (TCP, TLS, EHLO)",
            upstream_connect_seconds.clone(),
        );
        let upstream_auth_seconds = latency();
        registry.register(
            "upstream_auth_seconds",
            "Time for AUTH XOAUTH2 upstream",
            upstream_auth_seconds.clone(),
        );
        let token_refreshes = Family::<Labels, Counter>::default();
        registry.register(
            "token_refreshes",
            "Access-token refreshes per asset and result",
            token_refreshes.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Failed client logins",
            auth_failures.clone(),
        );
        let limit_hits = Family::<Labels, Counter>::default();
        registry.register(
            "limit_hits",
            "Times a configured limit refused something",
            limit_hits.clone(),
        );
        let asset_ready = Family::<Labels, Gauge>::default();
        registry.register(
            "asset_ready",
            "1 while the asset's credentials work (or are untried), 0 while it needs an operator",
            asset_ready.clone(),
        );
        let alerts = Family::<Labels, Counter>::default();
        registry.register(
            "alerts",
            "Alerts per channel kind, event and result (sent, or failed after every attempt)",
            alerts.clone(),
        );
        let asset_sent_24h = Family::<Labels, Gauge>::default();
        registry.register(
            "asset_sent_messages_24h",
            "Messages the asset sent in the last 24 hours (rolling)",
            asset_sent_24h.clone(),
        );
        let asset_limit_remaining = Family::<Labels, Gauge>::default();
        registry.register(
            "asset_limit_remaining",
            "What the asset may still send under each configured sending limit",
            asset_limit_remaining.clone(),
        );
        let asset_over_limit = Family::<Labels, Gauge>::default();
        registry.register(
            "asset_over_provider_limit",
            "1 while the provider has said the asset is over its sending limit",
            asset_over_limit.clone(),
        );
        Metrics {
            asset_sent_24h,
            asset_limit_remaining,
            asset_over_limit,
            alerts,
            registry,
            sessions_current,
            sessions_total,
            transactions,
            bytes_relayed,
            upstream_connect_seconds,
            upstream_auth_seconds,
            token_refreshes,
            auth_failures,
            limit_hits,
            asset_ready,
        }
    }

    pub fn transaction(&self, outcome: Outcome) {
        self.transactions
            .get_or_create(&vec![("outcome", outcome.label().to_string())])
            .inc();
    }

    pub fn token_refresh(&self, asset: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.token_refreshes
            .get_or_create(&vec![
                ("asset", asset.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    pub fn limit_hit(&self, limit: &'static str) {
        self.limit_hits
            .get_or_create(&vec![("limit", limit.to_string())])
            .inc();
    }

    pub fn set_asset_ready(&self, asset: &str, ready: bool) {
        self.asset_ready
            .get_or_create(&vec![("asset", asset.to_string())])
            .set(i64::from(ready));
    }

    /// One alert on one channel: sent, or given up on.
    pub fn set_asset_sent_24h(&self, asset: &str, messages: u64) {
        let labels = vec![("asset", asset.to_string())];
        let value = i64::try_from(messages).unwrap_or(i64::MAX);
        self.asset_sent_24h.get_or_create(&labels).set(value);
    }

    pub fn set_asset_limit_remaining(&self, asset: &str, limit: &'static str, remaining: u64) {
        let labels = vec![("asset", asset.to_string()), ("limit", limit.to_string())];
        let value = i64::try_from(remaining).unwrap_or(i64::MAX);
        self.asset_limit_remaining.get_or_create(&labels).set(value);
    }

    pub fn set_asset_over_limit(&self, asset: &str, over: bool) {
        let labels = vec![("asset", asset.to_string())];
        self.asset_over_limit
            .get_or_create(&labels)
            .set(i64::from(over));
    }

    pub fn alert(&self, channel: &str, event: &str, sent: bool) {
        let result = if sent { "sent" } else { "failed" };
        self.alerts
            .get_or_create(&vec![
                ("channel", channel.to_string()),
                ("event", event.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    pub fn observe(histogram: &Histogram, took: Duration) {
        histogram.observe(took.as_secs_f64());
    }

    /// The text exposition for `/metrics`.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::new();
        metrics.sessions_total.inc();
        metrics.transaction(Outcome::Delivered);
        metrics.transaction(Outcome::PossibleDuplicate);
        metrics.token_refresh("support", true);
        metrics.limit_hit("message_size");
        metrics.set_asset_ready("support", false);
        Metrics::observe(&metrics.upstream_connect_seconds, Duration::from_millis(30));
        let text = metrics.render();
        for expected in [
            "smtp_oauth_relay_sessions_total 1",
            "smtp_oauth_relay_transactions_total{outcome=\"delivered\"} 1",
            "smtp_oauth_relay_transactions_total{outcome=\"possible_duplicate\"} 1",
            "smtp_oauth_relay_token_refreshes_total{asset=\"support\",result=\"ok\"} 1",
            "smtp_oauth_relay_limit_hits_total{limit=\"message_size\"} 1",
            "smtp_oauth_relay_asset_ready{asset=\"support\"} 0",
            "smtp_oauth_relay_upstream_connect_seconds_count 1",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
