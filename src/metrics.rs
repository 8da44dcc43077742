//! Prometheus metrics, all in one struct that registers itself.
//!
//! Served at `GET /metrics` as OpenMetrics text; every name carries the
//! `ticket_ingest_` prefix (counters also get the `_total` suffix).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of [`Metrics::encode_prometheus_text`]'s output.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// A fixed route name (`/ticket`, …, `other`), never the raw path.
    pub route: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriterLabels {
    pub writer: usize,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: HistogramFamily<RouteLabels>,
    pub tickets_accepted: Family<StatusLabels, Counter>,
    pub duplicates: Counter,
    pub keys_unchecked: Counter,
    pub keys_taken: Counter,
    pub keys_expired: Counter,
    pub signature_failures: Counter,
    pub refused: Family<KindLabels, Counter>,
    pub in_flight: Gauge,
    pub in_flight_capacity: Gauge,
    pub in_flight_bytes: Gauge,
    pub in_flight_bytes_capacity: Gauge,
    pub queue_depth: Gauge,
    pub receiving_bytes: Gauge,
    pub connections: Gauge,
    pub batch_max_tickets: Gauge,
    pub batch_max_bytes: Gauge,
    pub batch_max_wait: Gauge<f64, AtomicU64>,
    pub batch_size: Histogram,
    pub batches: Family<WriterLabels, Counter>,
    pub flush_duration: Histogram,
    pub tickets_written: Counter,
    pub lines_written: Counter,
    pub products_written: Counter,
    pub history_written: Counter,
    pub db_errors: Family<KindLabels, Counter>,
    pub retries: Counter,
    pub poison_tickets: Counter,
    pub wal_append_duration: Histogram,
    pub wal_fsync_duration: Histogram,
    pub wal_bytes: Gauge,
    pub wal_records: Gauge,
    pub wal_records_held_for_standbys: Gauge,
    pub wal_records_written_again: Counter,
    pub wal_replayed: Counter,
    pub wal_truncations: Counter,
    pub wal_errors: Counter,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~6.5 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ticket_ingest");
        let metrics = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            tickets_accepted: Family::default(),
            duplicates: Counter::default(),
            keys_unchecked: Counter::default(),
            keys_taken: Counter::default(),
            keys_expired: Counter::default(),
            signature_failures: Counter::default(),
            refused: Family::default(),
            in_flight: Gauge::default(),
            in_flight_capacity: Gauge::default(),
            in_flight_bytes: Gauge::default(),
            in_flight_bytes_capacity: Gauge::default(),
            queue_depth: Gauge::default(),
            receiving_bytes: Gauge::default(),
            connections: Gauge::default(),
            batch_max_tickets: Gauge::default(),
            batch_max_bytes: Gauge::default(),
            batch_max_wait: Gauge::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            batches: Family::default(),
            flush_duration: latency_histogram(),
            tickets_written: Counter::default(),
            lines_written: Counter::default(),
            products_written: Counter::default(),
            history_written: Counter::default(),
            db_errors: Family::default(),
            retries: Counter::default(),
            poison_tickets: Counter::default(),
            wal_append_duration: latency_histogram(),
            wal_fsync_duration: latency_histogram(),
            wal_bytes: Gauge::default(),
            wal_records: Gauge::default(),
            wal_records_held_for_standbys: Gauge::default(),
            wal_records_written_again: Counter::default(),
            wal_replayed: Counter::default(),
            wal_truncations: Counter::default(),
            wal_errors: Counter::default(),
            registry: Registry::default(),
        };
        metrics.register(&mut registry);
        Metrics { registry, ..metrics }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register("requests", "HTTP requests by route and status code", self.requests.clone());
        registry.register_with_unit(
            "request_duration",
            "Time from request head to response, by route",
            Unit::Seconds,
            self.request_duration.clone(),
        );
        registry.register("tickets_accepted", "Tickets answered 202, by parse status", self.tickets_accepted.clone());
        registry.register(
            "signature_failures",
            "Requests refused with 401: missing, stale or wrong webhook signature",
            self.signature_failures.clone(),
        );
        registry.register(
            "duplicates",
            "Requests answered 202 for an idempotency key already seen",
            self.duplicates.clone(),
        );
        registry.register(
            "idempotency_keys_unchecked",
            "Tickets accepted with an idempotency key the database could not be asked about (only the keys held in memory were compared)",
            self.keys_unchecked.clone(),
        );
        registry.register(
            "idempotency_keys_taken",
            "Tickets stored under an idempotency key that already stood for another ticket",
            self.keys_taken.clone(),
        );
        registry.register(
            "idempotency_keys_expired",
            "Idempotency keys deleted after idempotency_retention_hours",
            self.keys_expired.clone(),
        );
        registry.register("refused", "Tickets refused with 503, by reason", self.refused.clone());
        registry.register(
            "in_flight",
            "Admission budget in use: tickets accepted, not yet committed",
            self.in_flight.clone(),
        );
        registry.register(
            "in_flight_capacity",
            "Admission budget size (queue_capacity)",
            self.in_flight_capacity.clone(),
        );
        registry.register_with_unit(
            "in_flight",
            "Admission budget in use, in bytes: bodies and parsed lines in flight",
            Unit::Bytes,
            self.in_flight_bytes.clone(),
        );
        registry.register_with_unit(
            "in_flight_capacity",
            "Admission budget size in bytes (queue_max_bytes)",
            Unit::Bytes,
            self.in_flight_bytes_capacity.clone(),
        );
        registry.register("queue_depth", "Tickets waiting in the queue for a writer", self.queue_depth.clone());
        registry.register_with_unit(
            "receiving",
            "Reception budget in use: bytes of request bodies being received",
            Unit::Bytes,
            self.receiving_bytes.clone(),
        );
        registry.register("connections", "Open HTTP connections (at most max_connections)", self.connections.clone());
        registry.register("batch_max_tickets", "Batch size trigger in force", self.batch_max_tickets.clone());
        registry.register_with_unit(
            "batch_max",
            "Batch bytes trigger in force",
            Unit::Bytes,
            self.batch_max_bytes.clone(),
        );
        registry.register_with_unit(
            "batch_max_wait",
            "Batch deadline trigger in force",
            Unit::Seconds,
            self.batch_max_wait.clone(),
        );
        registry.register("batch_size", "Tickets per flushed batch", self.batch_size.clone());
        registry.register(
            "batches",
            "Batches flushed, by writer (1 and up only help with a backlog)",
            self.batches.clone(),
        );
        registry.register_with_unit(
            "flush_duration",
            "Time to write and commit one batch, retries included",
            Unit::Seconds,
            self.flush_duration.clone(),
        );
        registry.register("tickets_written", "Ticket rows committed", self.tickets_written.clone());
        registry.register("lines_written", "Ticket line rows committed", self.lines_written.clone());
        registry.register("products_written", "Product rows inserted or updated", self.products_written.clone());
        registry.register(
            "history_written",
            "Product history rows (product id, name, price) inserted or updated",
            self.history_written.clone(),
        );
        registry.register("db_errors", "Database errors, by kind (transient or data)", self.db_errors.clone());
        registry.register("retries", "Batch flushes retried after a transient error", self.retries.clone());
        registry.register(
            "poison_tickets",
            "Tickets the database refused, stored as invalid",
            self.poison_tickets.clone(),
        );
        registry.register_with_unit(
            "wal_append_duration",
            "Time to write and fdatasync one group of WAL records",
            Unit::Seconds,
            self.wal_append_duration.clone(),
        );
        registry.register_with_unit(
            "wal_fsync_duration",
            "Time of one WAL fdatasync",
            Unit::Seconds,
            self.wal_fsync_duration.clone(),
        );
        registry.register_with_unit("wal", "Bytes of WAL segments on disk", Unit::Bytes, self.wal_bytes.clone());
        registry.register(
            "wal_records",
            "Acknowledged tickets in the WAL not yet committed to PostgreSQL, or committed on the primary and not yet known flushed on the standbys (replayed at the next start if the service stops)",
            self.wal_records.clone(),
        );
        registry.register(
            "wal_records_held_for_standbys",
            "WAL records committed on the primary, kept until enough standbys flushed their commit (wal_hold_for_standbys)",
            self.wal_records_held_for_standbys.clone(),
        );
        registry.register(
            "wal_records_written_again",
            "WAL records written again on a new primary (another timeline or system identifier) that may lack them",
            self.wal_records_written_again.clone(),
        );
        registry.register("wal_replayed", "WAL records replayed at start", self.wal_replayed.clone());
        registry.register(
            "wal_truncations",
            "WAL segments truncated at a torn or corrupt record",
            self.wal_truncations.clone(),
        );
        registry.register("wal_errors", "WAL write or sync failures, each refusing a group", self.wal_errors.clone());
    }

    pub fn record_request(&self, route: &'static str, code: u16, seconds: f64) {
        self.requests.get_or_create(&RequestLabels { route, code }).inc();
        self.request_duration.get_or_create(&RouteLabels { route }).observe(seconds);
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(message = "metrics encoding failed", %error);
        }
        text
    }

    /// The same metrics in the Prometheus text format 0.0.4, for clients
    /// that do not ask for OpenMetrics (curl, `promtool check metrics`):
    /// counter families are named with their `_total` suffix, and the
    /// OpenMetrics-only `# UNIT` and `# EOF` lines are left out.
    pub fn encode_prometheus_text(&self) -> String {
        let openmetrics = self.encode();
        let mut text = String::with_capacity(openmetrics.len());
        let mut counters = Vec::new();
        for line in openmetrics.lines() {
            if let Some(family) = line.strip_prefix("# TYPE ").and_then(|rest| rest.strip_suffix(" counter")) {
                counters.push(family);
            }
        }
        for line in openmetrics.lines() {
            if line.starts_with("# UNIT ") || line == "# EOF" {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (family, tail) = rest.split_once(' ')?;
                counters.contains(&family).then(|| format!("{prefix}{family}_total {tail}"))
            });
            text.push_str(renamed.as_deref().unwrap_or(line));
            text.push('\n');
        }
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
