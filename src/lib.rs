//! ticket-ingest: cash-register tickets from a webhook into PostgreSQL.
//!
//! # Layout
//! - [`console`]   the review desk: second listener, token auth, JSON API (`/api/v1`)
//! - [`config`]    settings: defaults → file → `TICKET_INGEST_*` env → flags, parsed once into the values used
//!   - `mod.rs` the keys (`Settings`), loading, `check-config`'s output; `environment.rs` the
//!     `TICKET_INGEST_*` layer; `validate.rs` ranges; `values.rs` ack mode, admin tokens, addresses
//! - [`database_url`] `database_url` parsed as libpq does: host list, `target_session_attrs`
//! - [`telemetry`] tracing subscriber (pretty | json)
//! - [`startup`]   `Application::build` / `run_until_stopped`; shutdown order
//! - [`signal`]    SIGINT and SIGTERM start the shutdown
//! - [`http`]      hyper routes, limits, refusals → status codes
//! - [`listener`]  the accept loop both listeners run: connection slots, hyper's limits, drain
//! - [`signature`] Standard Webhooks signature check (`signing_secrets`)
//! - [`ticket`]    `ParsedTicket::parse`: raw body → status, fields, lines, problems
//! - [`idempotency`] recent `Idempotency-Key`s: a repeat waits for its first's answer
//! - [`key_lookup`] the keys not remembered, looked up in the database in batches
//! - [`admission`] in-flight budget: a permit per ticket until it is committed
//! - [`job`]       a ticket in flight: accepted, not yet committed, and its outcome
//! - [`writer`]    batch writer threads: collect → flush (retry / bisect) → report
//! - [`store`]     SQL: one statement per table per batch, migrations; in `src/store/`:
//!   - `batch.rs`   the batch statements: fast path, careful path (`write_batch`)
//!   - `columns.rs` a batch as UNNEST arrays; products and history merged, sorted
//!   - `keys.rs`    idempotency keys: claimed when written, looked up, expired
//!   - `connect.rs` the host list tried in order; a pool that follows the primary
//!   - `failure.rs` transient or data, refusals, the unreachable
//!   - `retry.rs`   the backoff, and one retry loop (migrations, `reprocess`)
//! - [`partition`] `tickets` and `ticket_lines` partitioned by time with pg_partman: convert, maintain
//! - [`wal`]       write-ahead log for `ack = wal`: group commit, replay, checkpoints
//!   - `wal/mod.rs`      the handle: `Wal::append`, what it hands on, a group's answers delivered
//!   - `wal/record.rs`   a record's frame: `WalRecord`, encode, decode, CRC32C check
//!   - `wal/segment.rs`  a segment file: name, magic header, zeros written ahead
//!   - `wal/appender.rs` the appender thread: group commit, rotation, deletion once committed
//!   - `wal/recovery.rs` segments read back at start, torn tails truncated
//! - [`standby`]   records kept in the log until the standbys flushed their commit; rewrite on a new primary
//! - [`metrics`]   Prometheus metrics, OpenMetrics text
//! - [`live`]      the numbers of the moment (budgets, queue, WAL), for `/metrics` and the desk
//! - [`reload`]    SIGHUP: batch triggers and log level changed at run time
//! - [`reprocess`] re-parse stored tickets with today's parser (`reprocess` command)

pub mod admission;
pub mod config;
pub mod console;
pub mod database_url;
pub mod http;
pub mod idempotency;
pub mod job;
pub mod key_lookup;
pub mod listener;
pub mod live;
pub mod metrics;
pub mod partition;
pub mod reload;
pub mod reprocess;
pub mod signal;
pub mod signature;
pub mod standby;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod ticket;
pub mod wal;
pub mod writer;
