//! Batch writers: OS threads that move tickets from the queue into
//! PostgreSQL.
//!
//! Each writer owns one database connection and a small single-threaded
//! tokio runtime. Writer 0 always writes; the others are spares that only
//! take a batch while a full one (`batch_max_tickets` or `batch_max_bytes`)
//! is already waiting:
//! for the small batches of live traffic one writer is faster (a second
//! one competes for the two cores and for the hot products' rows), while a
//! backlog or heavy tickets need them all. A writer repeats one step: **collect** a batch (block for the
//! first ticket, then take more until `batch_max_tickets`, `batch_max_bytes`
//! or `batch_max_wait_ms` after the first), **flush** it in one transaction
//! ([`store::write_batch`]), **report** (answer the `ack = commit` requests,
//! give the admission permits back).
//!
//! A flush never gives up on a ticket:
//! - a transient error (connection lost, I/O, serialization failure,
//!   deadlock, server shutting down, anything not caused by the data)
//!   retries the same batch with capped exponential backoff and jitter. The
//!   permits stay held, so a long outage turns into `503`s at the front door;
//! - a data error (SQLSTATE class 22 or 23) splits the batch in halves until
//!   the ticket at fault is alone; that ticket is stored as `invalid` with
//!   its raw body and the database's message.
//!
//! After the flush, the batch's WAL sequence numbers are reported to the
//! log, which deletes a segment once all its records are committed.
//!
//! At shutdown the writers keep going until the admission budget is closed
//! and every permit was given back, i.e. every accepted ticket is committed —
//! except that a batch whose tickets are all in the WAL is not retried once
//! the service is shutting down: the database may be down for long, and the
//! next start replays those tickets.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use sqlx::{Connection, PgConnection};
use tokio::sync::oneshot;

use crate::admission::{Admission, Permit};
use crate::config::Settings;
use crate::metrics::{KindLabels, Metrics, WriterLabels};
use crate::store::{self, NewTicket, Written};
use crate::ticket::{Problem, Status};
use crate::wal::Wal;

/// How often an idle writer checks whether the service is shutting down.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// How often an idle spare writer looks at the queue's depth.
const SPARE_POLL: Duration = Duration::from_millis(5);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One accepted ticket on its way to the database.
#[derive(Debug)]
pub struct Job {
    pub ticket: NewTicket,
    /// Given back (dropped) once the ticket is committed.
    pub permit: Permit,
    /// Answered after commit when `ack = commit`.
    pub reply: Option<oneshot::Sender<()>>,
    /// The ticket's WAL record, reported committed after the flush.
    pub wal_seq: Option<u64>,
}

/// The batch triggers, shared by every writer and changed at run time by a
/// SIGHUP reload; each batch reads them afresh.
#[derive(Debug)]
pub struct BatchTuning {
    max_tickets: AtomicUsize,
    max_wait_ms: AtomicU64,
    max_bytes: AtomicUsize,
}

impl BatchTuning {
    pub fn new(settings: &Settings) -> Arc<BatchTuning> {
        let tuning = BatchTuning {
            max_tickets: AtomicUsize::new(0),
            max_wait_ms: AtomicU64::new(0),
            max_bytes: AtomicUsize::new(0),
        };
        tuning.set(settings);
        Arc::new(tuning)
    }

    /// Takes the batch triggers of `settings`.
    pub fn set(&self, settings: &Settings) {
        self.max_tickets.store(settings.batch_max_tickets, Ordering::Relaxed);
        self.max_wait_ms.store(settings.batch_max_wait_ms, Ordering::Relaxed);
        self.max_bytes.store(settings.batch_max_bytes, Ordering::Relaxed);
    }

    pub fn max_tickets(&self) -> usize {
        self.max_tickets.load(Ordering::Relaxed)
    }

    pub fn max_wait_ms(&self) -> u64 {
        self.max_wait_ms.load(Ordering::Relaxed)
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes.load(Ordering::Relaxed)
    }
}

/// The running writer threads.
#[derive(Debug)]
pub struct Writers {
    handles: Vec<JoinHandle<()>>,
}

impl Writers {
    pub fn spawn(
        settings: &Settings,
        database_url: &str,
        queue: Receiver<Job>,
        admission: Arc<Admission>,
        wal: Wal,
        tuning: Arc<BatchTuning>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Writers> {
        let mut handles = Vec::with_capacity(settings.writers);
        for number in 0..settings.writers {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let writer = Writer {
                number,
                queue: queue.clone(),
                admission: Arc::clone(&admission),
                wal: wal.clone(),
                metrics: Arc::clone(&metrics),
                database_url: database_url.to_string(),
                tuning: Arc::clone(&tuning),
                connection: None,
                not_committed: Vec::new(),
                in_wal: false,
                runtime,
            };
            let handle = std::thread::Builder::new().name(format!("writer-{number}")).spawn(move || writer.run())?;
            handles.push(handle);
        }
        Ok(Writers { handles })
    }

    /// Blocks until every writer has drained the queue and stopped.
    pub fn join(self) {
        for handle in self.handles {
            if handle.join().is_err() {
                tracing::error!(message = "a writer thread panicked");
            }
        }
    }
}

struct Writer {
    number: usize,
    queue: Receiver<Job>,
    admission: Arc<Admission>,
    wal: Wal,
    metrics: Arc<Metrics>,
    database_url: String,
    tuning: Arc<BatchTuning>,
    connection: Option<PgConnection>,
    /// Tickets of the current batch that were not committed (unstorable, or
    /// left to the next start at shutdown); their WAL records are kept.
    not_committed: Vec<uuid::Uuid>,
    /// Every ticket of the current batch is in the WAL.
    in_wal: bool,
    runtime: tokio::runtime::Runtime,
}

/// Why a write did not commit.
enum WriteError {
    /// Worth retrying as is: the data is not at fault.
    Transient(sqlx::Error),
    /// The database refused the data.
    Data(sqlx::Error),
}

impl Writer {
    fn run(mut self) {
        tracing::debug!(message = "writer started", writer = self.number);
        while let Some(batch) = self.collect_batch() {
            self.flush(&batch);
            self.report(batch);
        }
        tracing::debug!(message = "writer stopped", writer = self.number);
    }

    /// Blocks for a first ticket, then gathers more until the batch is full
    /// (in tickets or in bytes) or its deadline passed. `None` once the
    /// service is drained. The byte bound keeps the batch's columns and
    /// encoded statement small when tickets are large: 500 tickets of 1 500
    /// lines would be 750 000 rows encoded at once.
    fn collect_batch(&self) -> Option<Vec<Job>> {
        let first = loop {
            if self.stands_by() {
                std::thread::sleep(SPARE_POLL);
                continue;
            }
            match self.queue.recv_timeout(IDLE_POLL) {
                Ok(job) => break job,
                Err(RecvTimeoutError::Timeout) if self.admission.is_drained() => return None,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        };
        let (max_tickets, max_bytes) = (self.tuning.max_tickets(), self.tuning.max_bytes());
        let wait = Duration::from_millis(self.tuning.max_wait_ms());
        let deadline = Instant::now() + wait;
        let mut bytes = first.permit.bytes();
        let mut batch = Vec::with_capacity(max_tickets.min(1024));
        batch.push(first);
        while batch.len() < max_tickets && bytes < max_bytes {
            // Not `recv_deadline` with a deadline already due: crossbeam
            // backs off (spins, then `sched_yield`s) before it looks at the
            // deadline — thousands of system calls a second under load.
            let next =
                if wait.is_zero() { self.queue.try_recv().ok() } else { self.queue.recv_deadline(deadline).ok() };
            let Some(job) = next else { break };
            bytes += job.permit.bytes();
            batch.push(job);
        }
        Some(batch)
    }

    /// A spare writer waits while less than a full batch is queued — until
    /// shutdown, when every writer helps drain the queue. Full in tickets,
    /// or in bytes: the tickets in flight hold two batches' worth, one
    /// being written and one waiting (large tickets fill the byte budget
    /// long before `batch_max_tickets` of them are queued).
    fn stands_by(&self) -> bool {
        let backlog = self.queue.len() >= self.tuning.max_tickets()
            || self.admission.bytes() >= self.tuning.max_bytes().saturating_mul(2);
        self.number > 0 && !backlog && !self.admission.is_closed()
    }

    fn flush(&mut self, batch: &[Job]) {
        let started = Instant::now();
        let tickets: Vec<&NewTicket> = batch.iter().map(|job| &job.ticket).collect();
        self.in_wal = batch.iter().all(|job| job.wal_seq.is_some());
        self.write_until_stored(&tickets);
        self.metrics.batch_size.observe(batch.len() as f64);
        self.metrics.batches.get_or_create(&WriterLabels { writer: self.number }).inc();
        self.metrics.flush_duration.observe(started.elapsed().as_secs_f64());
    }

    /// Writes `tickets`, retrying transient errors and bisecting data errors.
    fn write_until_stored(&mut self, tickets: &[&NewTicket]) {
        let mut attempt: u32 = 0;
        loop {
            match self.try_write(tickets) {
                Ok(written) => return self.count_written(written),
                Err(WriteError::Transient(error)) if self.in_wal && self.admission.is_closed() => {
                    // Shutting down and the database is unavailable: these
                    // tickets are in the WAL, the next start writes them.
                    tracing::warn!(message = "database unavailable at shutdown, batch left in the WAL for the next start", tickets = tickets.len(), %error);
                    self.not_committed.extend(tickets.iter().map(|ticket| ticket.id));
                    return;
                }
                Err(WriteError::Transient(error)) => {
                    attempt = attempt.saturating_add(1);
                    self.wait_before_retry(attempt, &error);
                }
                Err(WriteError::Data(error)) => {
                    self.metrics.db_errors.get_or_create(&KindLabels { kind: "data" }).inc();
                    return self.bisect(tickets, &error);
                }
            }
        }
    }

    fn bisect(&mut self, tickets: &[&NewTicket], error: &sqlx::Error) {
        if let [poison] = tickets {
            return self.store_poison(poison, error);
        }
        let (left, right) = tickets.split_at(tickets.len() / 2);
        tracing::warn!(message = "batch refused for its data, splitting it", writer = self.number, tickets = tickets.len(), %error);
        self.write_until_stored(left);
        self.write_until_stored(right);
    }

    /// Stores a ticket the database refused as `invalid`, with its raw body
    /// and the database's message, and without lines.
    fn store_poison(&mut self, ticket: &NewTicket, cause: &sqlx::Error) {
        self.metrics.poison_tickets.inc();
        tracing::warn!(message = "ticket refused by the database, stored as invalid", id = %ticket.id, error = %cause);
        // Keep only what cannot be at fault: ids, time, key, raw bytes.
        let mut poison = ticket.clone();
        poison.parsed.status = Status::Invalid;
        poison.parsed.lines.clear();
        poison.parsed.order_id = None;
        poison.parsed.vat = None;
        poison.parsed.total = None;
        poison.parsed.problems.push(Problem {
            line: 0,
            code: "database_rejected",
            message: format!("PostgreSQL refused the ticket: {cause}"),
        });
        let mut attempt: u32 = 0;
        loop {
            match self.try_write(&[&poison]) {
                Ok(written) => return self.count_written(written),
                Err(WriteError::Transient(error)) => {
                    attempt = attempt.saturating_add(1);
                    self.wait_before_retry(attempt, &error);
                }
                Err(WriteError::Data(error)) => {
                    // Only the raw body and fixed columns are left: this is
                    // a schema problem, not the ticket's. Keep it loud.
                    self.metrics.db_errors.get_or_create(&KindLabels { kind: "unstorable" }).inc();
                    tracing::error!(message = "ticket could not be stored even as invalid, kept in the WAL", id = %ticket.id, %error);
                    self.not_committed.push(ticket.id);
                    return;
                }
            }
        }
    }

    fn try_write(&mut self, tickets: &[&NewTicket]) -> Result<Written, WriteError> {
        let runtime = &self.runtime;
        let connection = &mut self.connection;
        let database_url = &self.database_url;
        runtime.block_on(async {
            let mut open = match connection.take() {
                Some(open) => open,
                None => PgConnection::connect(database_url).await.map_err(WriteError::Transient)?,
            };
            let result = store::write_batch(&mut open, tickets).await.map_err(classify);
            *connection = Some(open);
            result
        })
    }

    fn wait_before_retry(&mut self, attempt: u32, error: &sqlx::Error) {
        self.metrics.retries.inc();
        self.metrics.db_errors.get_or_create(&KindLabels { kind: "transient" }).inc();
        // The connection may be broken or mid-transaction: start afresh.
        self.connection = None;
        let delay = backoff(attempt);
        tracing::warn!(message = "database write failed, retrying", writer = self.number, attempt, delay_ms = delay.as_millis() as u64, %error);
        std::thread::sleep(delay);
    }

    /// Tells the WAL what is committed, answers the `ack = commit`
    /// requests; dropping the jobs gives their permits back.
    fn report(&mut self, batch: Vec<Job>) {
        let mut committed = Vec::with_capacity(batch.len());
        for job in batch {
            if let Some(seq) = job.wal_seq {
                if !self.not_committed.contains(&job.ticket.id) {
                    committed.push(seq);
                }
            }
            if let Some(reply) = job.reply {
                // The client may have gone away; its ticket is stored all the same.
                let _ = reply.send(());
            }
        }
        self.not_committed.clear();
        self.wal.committed(committed);
    }

    fn count_written(&self, written: Written) {
        self.metrics.tickets_written.inc_by(written.tickets);
        self.metrics.lines_written.inc_by(written.lines);
        self.metrics.products_written.inc_by(written.products);
    }
}

/// Only data errors (classes 22 and 23) are the batch's fault; everything
/// else — I/O, connection, serialization, deadlock, shutdown, resources, a
/// dropped table — is retried, because dropping tickets is never an option.
fn classify(error: sqlx::Error) -> WriteError {
    let is_data = match &error {
        sqlx::Error::Database(database) => {
            database.code().is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
        }
        sqlx::Error::Encode(_) => true,
        _ => false,
    };
    if is_data {
        WriteError::Data(error)
    } else {
        WriteError::Transient(error)
    }
}

/// 50 ms doubling up to 5 s, with up to 50 % random jitter so that writers
/// do not retry in lockstep.
fn backoff(attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    let base = BACKOFF_FIRST.saturating_mul(1 << exponent).min(BACKOFF_MAX);
    let jitter_fraction = (RandomState::new().hash_one(attempt) % 500) as u32;
    base + base * jitter_fraction / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_stays_capped() {
        assert!(backoff(1) >= BACKOFF_FIRST && backoff(1) < BACKOFF_FIRST * 2);
        assert!(backoff(3) >= BACKOFF_FIRST * 4);
        assert!(backoff(40) >= BACKOFF_MAX && backoff(40) <= BACKOFF_MAX * 3 / 2);
    }
}
