//! The service's numbers of the moment — budgets, connections, queue, WAL,
//! batch triggers — read in one place: `/metrics` exports them as gauges,
//! the review desk's overview shows them.

use std::sync::Arc;

use crossbeam_channel::Sender;
use tokio::sync::Semaphore;

use crate::admission::{Admission, Reception};
use crate::job::Job;
use crate::metrics::Metrics;
use crate::wal::Wal;
use crate::writer::BatchTuning;

/// Where the numbers are read.
#[derive(Clone)]
pub struct Live {
    pub admission: Arc<Admission>,
    pub reception: Arc<Reception>,
    /// One permit per open connection, `max_connections` in all.
    pub connection_slots: Arc<Semaphore>,
    pub max_connections: usize,
    pub queue: Sender<Job>,
    pub wal: Wal<Job>,
    pub wal_max_bytes: u64,
    pub tuning: Arc<BatchTuning>,
    /// Set from the numbers at every [`Live::sample`]; also the source of
    /// `wal_records`, which the WAL keeps there.
    pub metrics: Arc<Metrics>,
}

/// The numbers, read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveNumbers {
    /// Tickets admitted and not yet written (the admission budget in use).
    pub in_flight: usize,
    pub in_flight_capacity: usize,
    pub in_flight_bytes: usize,
    pub in_flight_capacity_bytes: usize,
    /// Bytes of bodies being received.
    pub receiving_bytes: usize,
    pub connections: usize,
    /// Tickets waiting in the writers' queue.
    pub queue_depth: usize,
    /// WAL records not known to be committed.
    pub wal_records: i64,
    pub wal_bytes: u64,
    pub wal_max_bytes: u64,
    pub batch_max_tickets: usize,
    pub batch_max_bytes: usize,
    pub batch_max_wait_ms: u64,
}

impl Live {
    /// Reads every number now and sets its gauge.
    pub fn sample(&self) -> LiveNumbers {
        let batch = self.tuning.get();
        let numbers = LiveNumbers {
            in_flight: self.admission.in_flight(),
            in_flight_capacity: self.admission.capacity(),
            in_flight_bytes: self.admission.bytes(),
            in_flight_capacity_bytes: self.admission.max_bytes(),
            receiving_bytes: self.reception.bytes(),
            connections: self.max_connections.saturating_sub(self.connection_slots.available_permits()),
            queue_depth: self.queue.len(),
            wal_records: self.metrics.wal_records.get(),
            wal_bytes: self.wal.bytes_on_disk(),
            wal_max_bytes: self.wal_max_bytes,
            batch_max_tickets: batch.batch_max_tickets,
            batch_max_bytes: batch.batch_max_bytes,
            batch_max_wait_ms: batch.batch_max_wait_ms,
        };
        let metrics = &self.metrics;
        metrics.in_flight.set(numbers.in_flight as i64);
        metrics.in_flight_capacity.set(numbers.in_flight_capacity as i64);
        metrics.in_flight_bytes.set(numbers.in_flight_bytes as i64);
        metrics.in_flight_capacity_bytes.set(numbers.in_flight_capacity_bytes as i64);
        metrics.receiving_bytes.set(numbers.receiving_bytes as i64);
        metrics.connections.set(numbers.connections as i64);
        metrics.queue_depth.set(numbers.queue_depth as i64);
        metrics.wal_bytes.set(numbers.wal_bytes as i64);
        metrics.batch_max_tickets.set(numbers.batch_max_tickets as i64);
        metrics.batch_max_bytes.set(numbers.batch_max_bytes as i64);
        metrics.batch_max_wait_seconds.set(numbers.batch_max_wait_ms as f64 / 1000.0);
        numbers
    }
}
