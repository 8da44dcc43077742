//! The ranges and the cross-key rules of the settings, checked once they
//! are read; an error names the key at fault.

use super::{ConfigError, Settings};

impl Settings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        at_most("http_threads", self.http_threads as u64, 256)?;
        at_least("db_pool_size", self.db_pool_size as u64, 1)?;
        at_least("queue_capacity", self.queue_capacity as u64, 1)?;
        at_least("queue_max_bytes", self.queue_max_bytes as u64, self.max_body_bytes as u64).map_err(|_| {
            ConfigError::OutOfRange { key: "queue_max_bytes", reason: "must be at least max_body_bytes".to_string() }
        })?;
        at_least("writers", self.writers as u64, 1)?;
        at_most("writers", self.writers as u64, 64)?;
        at_least("batch_max_tickets", self.batch_max_tickets as u64, 1)?;
        at_most("batch_max_wait_ms", self.batch_max_wait_ms, 60_000)?;
        at_least("batch_max_bytes", self.batch_max_bytes as u64, 1)?;
        at_least("max_body_bytes", self.max_body_bytes as u64, 1)?;
        at_most("max_body_bytes", self.max_body_bytes as u64, 64 * 1024 * 1024)?;
        at_least("max_headers", self.max_headers as u64, 8)?;
        // hyper refuses (panics on) a buffer below 8 KiB.
        at_least("max_head_bytes", self.max_head_bytes as u64, 8192)?;
        // Above 64 KiB a request target longer than hyper's 65 534 bytes
        // would get hyper's 414 rather than the 431 openapi.yaml documents.
        at_most("max_head_bytes", self.max_head_bytes as u64, 64 * 1024)?;
        at_least("max_connections", self.max_connections as u64, 1)?;
        at_least("receive_max_bytes", self.receive_max_bytes as u64, self.max_body_bytes as u64).map_err(|_| {
            ConfigError::OutOfRange { key: "receive_max_bytes", reason: "must be at least max_body_bytes".to_string() }
        })?;
        at_least("receive_max_bytes_per_peer", self.receive_max_bytes_per_peer as u64, 1)?;
        at_least("body_min_bytes_per_s", self.body_min_bytes_per_s, 1)?;
        at_least("idempotency_retention_hours", self.idempotency_retention_hours, 1)?;
        at_most("idempotency_retention_hours", self.idempotency_retention_hours, 100 * 365 * 24)?;
        // A body from a busy address (a proxy) must still get through alone.
        at_least(
            "receive_max_bytes_per_peer",
            self.receive_max_bytes_per_peer as u64,
            self.max_body_bytes as u64 + 1024,
        )
        .map_err(|_| ConfigError::OutOfRange {
            key: "receive_max_bytes_per_peer",
            reason: "must be at least max_body_bytes + 1024 (the gzip slack)".to_string(),
        })?;
        at_least("header_read_timeout_ms", self.header_read_timeout_ms, 1)?;
        at_least("body_read_timeout_ms", self.body_read_timeout_ms, 1)?;
        // Deadlines are the clock plus these: keep them far from its range.
        at_most("header_read_timeout_ms", self.header_read_timeout_ms, 3_600_000)?;
        at_most("body_read_timeout_ms", self.body_read_timeout_ms, 3_600_000)?;
        at_most("shutdown_grace_ms", self.shutdown_grace_ms, 3_600_000)?;
        at_least("retry_after_s", self.retry_after_s as u64, 1)?;
        at_least("wal_segment_bytes", self.wal_segment_bytes, 4096)?;
        at_least("wal_max_bytes", self.wal_max_bytes, self.wal_segment_bytes).map_err(|_| ConfigError::OutOfRange {
            key: "wal_max_bytes",
            reason: "must be at least wal_segment_bytes".to_string(),
        })?;
        at_least("wal_standbys_flushed", self.wal_standbys_flushed as u64, 1)?;
        at_least("admin_db_pool_size", self.admin_db_pool_size as u64, 1)?;
        at_most("admin_db_pool_size", self.admin_db_pool_size as u64, 64)?;
        at_least("admin_statement_timeout_ms", self.admin_statement_timeout_ms, 1)?;
        at_least("partition_premake", self.partition_premake as u64, 1)?;
        at_most("partition_premake", self.partition_premake as u64, 1_000)?;
        if !self.partition_retention.trim().is_empty() && !is_retention(&self.partition_retention) {
            let reason = "must be a number and a unit (days, weeks, months, years), such as \"90 days\", or empty to keep every partition".to_string();
            return Err(ConfigError::OutOfRange { key: "partition_retention", reason });
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(ConfigError::OutOfRange { key: "log_level", reason: error.to_string() });
        }
        Ok(())
    }
}

/// `90 days`, `1 month`, `2 years`: what `partition_retention` takes (a
/// subset of PostgreSQL's interval syntax, checked before it reaches the
/// database).
fn is_retention(text: &str) -> bool {
    let mut words = text.split_whitespace();
    let (Some(number), Some(unit), None) = (words.next(), words.next(), words.next()) else { return false };
    number.parse::<u32>().is_ok_and(|number| number > 0)
        && ["day", "days", "week", "weeks", "month", "months", "year", "years"].contains(&unit)
}

fn at_least(key: &'static str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::OutOfRange { key, reason: format!("{value} is below the minimum {min}") });
    }
    Ok(())
}

fn at_most(key: &'static str, value: u64, max: u64) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::OutOfRange { key, reason: format!("{value} is above the maximum {max}") });
    }
    Ok(())
}
