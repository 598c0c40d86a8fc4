//! The spool's Prometheus series, registered into the relay's one registry by
//! `Metrics::new` so they render with the rest of `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
pub struct SpoolMetrics {
    pub messages: Gauge,
    pub bytes: Gauge,
    pub oldest_age_seconds: Gauge,
    /// 1 while the spool holds more than 90 % of `max_bytes`.
    pub nearly_full: Gauge,
    pub dead_letters: Counter,
    pub possible_duplicates: Counter,
    /// Intakes refused (`full` at `max_bytes`, `error` for I/O failures).
    refused: Family<Labels, Counter>,
    deliveries: Family<Labels, Counter>,
}

/// How one delivery attempt ended, as counted in `spool_deliveries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    Deferred,
    Failed,
}

impl SpoolMetrics {
    pub fn register(registry: &mut Registry) -> SpoolMetrics {
        let metrics = SpoolMetrics::default();
        registry.register(
            "spool_messages",
            "Messages waiting in the spool",
            metrics.messages.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes the spool holds (queue and dead letters)",
            metrics.bytes.clone(),
        );
        registry.register(
            "spool_oldest_age_seconds",
            "Age of the oldest waiting message",
            metrics.oldest_age_seconds.clone(),
        );
        registry.register(
            "spool_nearly_full",
            "1 while the spool holds more than 90 % of max_bytes",
            metrics.nearly_full.clone(),
        );
        registry.register(
            "spool_dead_letters",
            "Messages that became dead letters",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "spool_possible_duplicates",
            "Deliveries that may repeat one the provider already accepted",
            metrics.possible_duplicates.clone(),
        );
        registry.register(
            "spool_refused",
            "Messages the spool could not take, by reason",
            metrics.refused.clone(),
        );
        registry.register(
            "spool_deliveries",
            "Spooled delivery attempts by outcome",
            metrics.deliveries.clone(),
        );
        metrics
    }

    pub fn attempt(&self, outcome: Attempt) {
        let label = match outcome {
            Attempt::Delivered => "delivered",
            Attempt::Deferred => "deferred",
            Attempt::Failed => "failed",
        };
        self.deliveries
            .get_or_create(&vec![("outcome", label.to_string())])
            .inc();
    }

    pub fn refused(&self, full: bool) {
        let label = if full { "full" } else { "error" };
        self.refused
            .get_or_create(&vec![("reason", label.to_string())])
            .inc();
    }
}
