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
use prometheus_client::registry::{Metric, Registry, Unit};

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

/// Every metric, each field named as it is exported (after the
/// `ticket_ingest_` prefix, before a counter's `_total`).
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration_seconds: HistogramFamily<RouteLabels>,
    pub tickets_accepted: Family<StatusLabels, Counter>,
    pub signature_failures: Counter,
    pub duplicates: Counter,
    pub idempotency_keys_unchecked: Counter,
    pub idempotency_keys_taken: Counter,
    pub idempotency_keys_expired: Counter,
    pub refused: Family<KindLabels, Counter>,
    pub in_flight: Gauge,
    pub in_flight_capacity: Gauge,
    pub in_flight_bytes: Gauge,
    pub in_flight_capacity_bytes: Gauge,
    pub queue_depth: Gauge,
    pub receiving_bytes: Gauge,
    pub connections: Gauge,
    pub batch_max_tickets: Gauge,
    pub batch_max_bytes: Gauge,
    pub batch_max_wait_seconds: Gauge<f64, AtomicU64>,
    pub batch_size: Histogram,
    pub batches: Family<WriterLabels, Counter>,
    pub flush_duration_seconds: Histogram,
    pub tickets_written: Counter,
    pub lines_written: Counter,
    pub products_written: Counter,
    pub history_written: Counter,
    pub db_errors: Family<KindLabels, Counter>,
    pub retries: Counter,
    pub poison_tickets: Counter,
    pub wal_append_duration_seconds: Histogram,
    pub wal_fsync_duration_seconds: Histogram,
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

/// Registers `metric` under `name` with its `help`, and hands it back.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// [`registered`] with a unit: `name` is exported with the unit's suffix.
fn registered_in<M: Metric + Clone>(registry: &mut Registry, name: &str, unit: Unit, help: &str, metric: M) -> M {
    registry.register_with_unit(name, help, unit, metric.clone());
    metric
}

impl Metrics {
    /// Creates, registers and documents every metric, one expression each.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ticket_ingest");
        let r = &mut registry;
        use Unit::{Bytes, Seconds};
        let requests = registered(r, "requests", "HTTP requests by route and status code", Family::default());
        let request_duration_seconds = registered_in(
            r,
            "request_duration",
            Seconds,
            "Time from request head to response, by route",
            Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        );
        let tickets_accepted =
            registered(r, "tickets_accepted", "Tickets answered 202, by parse status", Family::default());
        let signature_failures = registered(
            r,
            "signature_failures",
            "Requests refused with 401: missing, stale or wrong webhook signature",
            Counter::default(),
        );
        let duplicates = registered(
            r,
            "duplicates",
            "Requests answered 202 for an idempotency key already seen",
            Counter::default(),
        );
        let idempotency_keys_unchecked = registered(
            r,
            "idempotency_keys_unchecked",
            "Tickets accepted with an idempotency key the database could not be asked about (only the keys held in memory were compared)",
            Counter::default(),
        );
        let idempotency_keys_taken = registered(
            r,
            "idempotency_keys_taken",
            "Tickets stored under an idempotency key that already stood for another ticket",
            Counter::default(),
        );
        let idempotency_keys_expired = registered(
            r,
            "idempotency_keys_expired",
            "Idempotency keys deleted after idempotency_retention_hours",
            Counter::default(),
        );
        let refused = registered(r, "refused", "Tickets refused with 503, by reason", Family::default());
        let in_flight = registered(
            r,
            "in_flight",
            "Admission budget in use: tickets accepted, not yet committed",
            Gauge::default(),
        );
        let in_flight_capacity =
            registered(r, "in_flight_capacity", "Admission budget size (queue_capacity)", Gauge::default());
        let in_flight_bytes = registered_in(
            r,
            "in_flight",
            Bytes,
            "Admission budget in use, in bytes: bodies and parsed lines in flight",
            Gauge::default(),
        );
        let in_flight_capacity_bytes = registered_in(
            r,
            "in_flight_capacity",
            Bytes,
            "Admission budget size in bytes (queue_max_bytes)",
            Gauge::default(),
        );
        let queue_depth = registered(r, "queue_depth", "Tickets waiting in the queue for a writer", Gauge::default());
        let receiving_bytes = registered_in(
            r,
            "receiving",
            Bytes,
            "Reception budget in use: bytes of request bodies being received",
            Gauge::default(),
        );
        let connections =
            registered(r, "connections", "Open HTTP connections (at most max_connections)", Gauge::default());
        let batch_max_tickets = registered(r, "batch_max_tickets", "Batch size trigger in force", Gauge::default());
        let batch_max_bytes = registered_in(r, "batch_max", Bytes, "Batch bytes trigger in force", Gauge::default());
        let batch_max_wait_seconds =
            registered_in(r, "batch_max_wait", Seconds, "Batch deadline trigger in force", Gauge::default());
        let batch_size =
            registered(r, "batch_size", "Tickets per flushed batch", Histogram::new(exponential_buckets(1.0, 2.0, 14)));
        let batches = registered(
            r,
            "batches",
            "Batches flushed, by writer (1 and up only help with a backlog)",
            Family::default(),
        );
        let flush_duration_seconds = registered_in(
            r,
            "flush_duration",
            Seconds,
            "Time to write and commit one batch, retries included",
            latency_histogram(),
        );
        let tickets_written = registered(r, "tickets_written", "Ticket rows committed", Counter::default());
        let lines_written = registered(r, "lines_written", "Ticket line rows committed", Counter::default());
        let products_written =
            registered(r, "products_written", "Product rows inserted or updated", Counter::default());
        let history_written = registered(
            r,
            "history_written",
            "Product history rows (product id, name, price) inserted or updated",
            Counter::default(),
        );
        let db_errors = registered(r, "db_errors", "Database errors, by kind (transient or data)", Family::default());
        let retries = registered(r, "retries", "Batch flushes retried after a transient error", Counter::default());
        let poison_tickets =
            registered(r, "poison_tickets", "Tickets the database refused, stored as invalid", Counter::default());
        let wal_append_duration_seconds = registered_in(
            r,
            "wal_append_duration",
            Seconds,
            "Time to write and fdatasync one group of WAL records",
            latency_histogram(),
        );
        let wal_fsync_duration_seconds =
            registered_in(r, "wal_fsync_duration", Seconds, "Time of one WAL fdatasync", latency_histogram());
        let wal_bytes = registered_in(r, "wal", Bytes, "Bytes of WAL segments on disk", Gauge::default());
        let wal_records = registered(
            r,
            "wal_records",
            "Acknowledged tickets in the WAL not yet committed to PostgreSQL, or committed on the primary and not yet known flushed on the standbys (replayed at the next start if the service stops)",
            Gauge::default(),
        );
        let wal_records_held_for_standbys = registered(
            r,
            "wal_records_held_for_standbys",
            "WAL records committed on the primary, kept until enough standbys flushed their commit (wal_hold_for_standbys)",
            Gauge::default(),
        );
        let wal_records_written_again = registered(
            r,
            "wal_records_written_again",
            "WAL records written again on a new primary (another timeline or system identifier) that may lack them",
            Counter::default(),
        );
        let wal_replayed = registered(r, "wal_replayed", "WAL records replayed at start", Counter::default());
        let wal_truncations =
            registered(r, "wal_truncations", "WAL segments truncated at a torn or corrupt record", Counter::default());
        let wal_errors =
            registered(r, "wal_errors", "WAL write or sync failures, each refusing a group", Counter::default());
        Metrics {
            registry,
            requests,
            request_duration_seconds,
            tickets_accepted,
            signature_failures,
            duplicates,
            idempotency_keys_unchecked,
            idempotency_keys_taken,
            idempotency_keys_expired,
            refused,
            in_flight,
            in_flight_capacity,
            in_flight_bytes,
            in_flight_capacity_bytes,
            queue_depth,
            receiving_bytes,
            connections,
            batch_max_tickets,
            batch_max_bytes,
            batch_max_wait_seconds,
            batch_size,
            batches,
            flush_duration_seconds,
            tickets_written,
            lines_written,
            products_written,
            history_written,
            db_errors,
            retries,
            poison_tickets,
            wal_append_duration_seconds,
            wal_fsync_duration_seconds,
            wal_bytes,
            wal_records,
            wal_records_held_for_standbys,
            wal_records_written_again,
            wal_replayed,
            wal_truncations,
            wal_errors,
        }
    }

    pub fn record_request(&self, route: &'static str, code: u16, seconds: f64) {
        self.requests.get_or_create(&RequestLabels { route, code }).inc();
        self.request_duration_seconds.get_or_create(&RouteLabels { route }).observe(seconds);
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
