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
//!   deadlock, server shutting down, a standby refusing to write, anything
//!   not caused by the data) retries the same batch with capped exponential
//!   backoff and jitter, on a new connection found through `database_url`'s
//!   host list ([`store::connect`]): after a failover, the promoted standby.
//!   While nothing answers, the backoff is cut short by the first
//!   connection that opens ([`probe_until`]).
//!   The permits stay held, so a long outage turns into `503`s at the front
//!   door;
//! - a data error (SQLSTATE class 22 or 23) splits the batch in halves until
//!   the ticket at fault is alone; that ticket is stored as `invalid` with
//!   its raw body and the database's message.
//!
//! After the flush, the batch's WAL sequence numbers are reported to the
//! [`StandbyGate`], which hands them to the log once the standbys flushed
//! their commit (at once with `wal_hold_for_standbys = off`); the log
//! deletes a segment once all its records are released.
//!
//! A flush returns what it could not write ([`Unwritten`]); the report
//! answers each job with its own outcome ([`Stored`]), so an `ack = commit`
//! request is never answered `202` for a ticket that was not stored.
//!
//! At shutdown the writers keep going until the admission budget is closed
//! and every permit was given back, i.e. every accepted ticket is committed —
//! except for a batch whose every ticket may be abandoned
//! ([`Job::may_be_abandoned`]: in the WAL, or awaited by an `ack = commit`
//! request that then gets `503`). Such a batch is given up at the first
//! failure once the service is shutting down, and any attempt to write it
//! ends `shutdown_grace_ms` after the shutdown began: the database may be
//! down for long, and the next start replays what the log holds. Tickets
//! held in memory alone (`ack = memory`, answered `202`) are written to the
//! WAL once the grace period is over and given up only then, so that an
//! orderly shutdown never loses them and never waits for the database
//! forever (unless the WAL fails too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::admission::Admission;
use crate::config::{BatchLimits, Settings};
use crate::database_url::DatabaseUrl;
use crate::job::{Job, Stored};
use crate::metrics::{KindLabels, Metrics, WriterLabels};
use crate::standby::StandbyGate;
use crate::store::{self, Backoff, DatabaseRefusal, Failure, Written};
use crate::ticket::{NewTicket, Problem, Status};
use crate::wal::{Wal, WalError, WalRecord};

/// How often an idle writer checks whether the service is shutting down.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// How often an idle spare writer looks at the queue's depth.
const SPARE_POLL: Duration = Duration::from_millis(5);

/// The tickets of a batch that a flush did not commit, with why.
#[derive(Debug, Default)]
struct Unwritten {
    tickets: HashMap<Uuid, Stored>,
}

impl Unwritten {
    /// Every ticket was committed.
    fn none() -> Unwritten {
        Unwritten::default()
    }

    /// `tickets` were not committed, for this reason.
    fn all(tickets: &[&NewTicket], why: Stored) -> Unwritten {
        Unwritten { tickets: tickets.iter().map(|ticket| (ticket.id, why)).collect() }
    }

    /// What neither of two parts of a batch could write.
    fn and(mut self, other: Unwritten) -> Unwritten {
        self.tickets.extend(other.tickets);
        self
    }

    fn outcome(&self, id: &Uuid) -> Stored {
        self.tickets.get(id).copied().unwrap_or(Stored::Committed)
    }
}

/// The batch triggers, shared by every writer and changed at run time by a
/// SIGHUP reload; each batch reads them afresh.
#[derive(Debug)]
pub struct BatchTuning {
    limits: Mutex<BatchLimits>,
}

impl BatchTuning {
    pub fn new(limits: BatchLimits) -> Arc<BatchTuning> {
        Arc::new(BatchTuning { limits: Mutex::new(limits) })
    }

    /// Takes new batch triggers: the next batch uses them.
    pub fn set(&self, limits: BatchLimits) {
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner) = limits;
    }

    pub fn get(&self) -> BatchLimits {
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running writer threads.
#[derive(Debug)]
pub struct Writers {
    handles: Vec<JoinHandle<()>>,
}

/// What the writers share with the rest of the service.
pub struct Shared {
    pub admission: Arc<Admission>,
    /// Where commits are reported; it hands them to the log once the
    /// standbys have them.
    pub gate: StandbyGate,
    pub tuning: Arc<BatchTuning>,
    pub metrics: Arc<Metrics>,
    /// Told whether the database refuses the service for good.
    pub refusal: Arc<DatabaseRefusal>,
}

impl Writers {
    pub fn spawn(
        settings: &Settings,
        database: &DatabaseUrl,
        queue: Receiver<Job>,
        shared: Shared,
    ) -> std::io::Result<Writers> {
        let Shared { admission, gate, tuning, metrics, refusal } = shared;
        let mut handles = Vec::with_capacity(settings.writers);
        for number in 0..settings.writers {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let writer = Writer {
                number,
                queue: queue.clone(),
                admission: Arc::clone(&admission),
                wal: gate.wal().clone(),
                gate: gate.clone(),
                metrics: Arc::clone(&metrics),
                database: database.clone(),
                tuning: Arc::clone(&tuning),
                grace: settings.shutdown_grace(),
                refusal: Arc::clone(&refusal),
                connection: None,
                connected_in: 0,
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
    wal: Wal<Job>,
    /// Where commits are reported: the log, once the standbys have them.
    gate: StandbyGate,
    metrics: Arc<Metrics>,
    /// Where to write: the first suitable host of `database_url`,
    /// looked up again at every reconnection.
    database: DatabaseUrl,
    tuning: Arc<BatchTuning>,
    /// How long after the shutdown began a batch that may be abandoned is
    /// still tried (`shutdown_grace_ms`).
    grace: Duration,
    /// Told whether the database refuses us for good (`/healthz`).
    refusal: Arc<DatabaseRefusal>,
    connection: Option<PgConnection>,
    /// The gate's epoch read before `connection` was opened.
    connected_in: u64,
    runtime: tokio::runtime::Runtime,
}

/// Why a write did not commit.
enum WriteError {
    /// Worth retrying as is: the data is not at fault.
    Transient(sqlx::Error),
    /// The database refused the data.
    Data(sqlx::Error),
    /// The shutdown's grace period ran out during the attempt.
    GraceOver,
}

/// What one attempt of [`Writer::write_retrying`] came to.
enum Attempt {
    /// Committed, refused for its data, or given up.
    Ended(Result<Written, Ended>),
    /// Try again at once.
    Again,
    /// A transient failure: try again after the backoff. `bounded`: the
    /// wait ends with the shutdown's grace period.
    Failed { error: sqlx::Error, bounded: bool },
}

/// How a write that did not commit ended.
enum Ended {
    Data(sqlx::Error),
    /// Given up at shutdown, for this reason.
    Abandoned(String),
}

impl Writer {
    fn run(mut self) {
        tracing::debug!(message = "writer started", writer = self.number);
        while let Some(batch) = self.collect_batch() {
            let span = tracing::info_span!("batch", writer = self.number, tickets = batch.len());
            let _entered = span.enter();
            let unwritten = self.flush(&batch);
            self.report(batch, &unwritten);
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
        let limits = self.tuning.get();
        let (max_tickets, max_bytes, wait) = (limits.batch_max_tickets, limits.batch_max_bytes, limits.max_wait());
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
        let limits = self.tuning.get();
        let backlog = self.queue.len() >= limits.batch_max_tickets
            || self.admission.bytes() >= limits.batch_max_bytes.saturating_mul(2);
        self.number > 0 && !backlog && !self.admission.is_closed()
    }

    /// Writes the batch; returns what it could not commit.
    fn flush(&mut self, batch: &[Job]) -> Unwritten {
        let started = Instant::now();
        let tickets: Vec<&NewTicket> = batch.iter().map(|job| &job.ticket).collect();
        let may_be_abandoned = batch.iter().all(Job::may_be_abandoned);
        let unwritten = self.write_until_stored(&tickets, may_be_abandoned);
        self.metrics.batch_size.observe(batch.len() as f64);
        self.metrics.batches.get_or_create(&WriterLabels { writer: self.number }).inc();
        self.metrics.flush_duration_seconds.observe(started.elapsed().as_secs_f64());
        unwritten
    }

    /// Writes `tickets`, bisecting data errors; returns what it could not
    /// write.
    fn write_until_stored(&mut self, tickets: &[&NewTicket], may_be_abandoned: bool) -> Unwritten {
        match self.write_retrying(tickets, may_be_abandoned) {
            Ok(written) => {
                self.count_written(written);
                Unwritten::none()
            }
            Err(Ended::Abandoned(reason)) => self.abandon(tickets, &reason),
            Err(Ended::Data(error)) => {
                self.metrics.db_errors.get_or_create(&KindLabels { kind: "data" }).inc();
                self.bisect(tickets, may_be_abandoned, &error)
            }
        }
    }

    /// Writes `tickets`, retrying transient errors with backoff, until they
    /// are committed or the data is refused — or, shutting down:
    /// - tickets that may be abandoned are given up at the first failure,
    ///   and no attempt outlives the grace period;
    /// - tickets held in memory alone (`ack = memory`) are written to the
    ///   WAL once the grace period is over, and given up only if that
    ///   succeeded: the next start writes them. If the WAL fails too, the
    ///   database is retried for as long as it takes.
    ///
    /// One loop around one step ([`Writer::attempt`]), with the same
    /// [`Backoff`] as every retried operation, but not [`store::retry`]:
    /// whether to try again is decided by the shutdown at every attempt,
    /// the wait is cut short by a connection that opens or by the end of
    /// the grace period, and a refusal is logged at ERROR.
    fn write_retrying(&mut self, tickets: &[&NewTicket], may_be_abandoned: bool) -> Result<Written, Ended> {
        let mut backoff = Backoff::new();
        loop {
            match self.attempt(tickets, may_be_abandoned) {
                Attempt::Ended(ended) => return ended,
                Attempt::Again => {}
                Attempt::Failed { error, bounded } => {
                    let delay = backoff.next_delay();
                    self.wait_before_retry(backoff.attempt(), delay, &error, bounded);
                }
            }
        }
    }

    /// One attempt of [`Writer::write_retrying`], under the shutdown's
    /// rules.
    fn attempt(&mut self, tickets: &[&NewTicket], may_be_abandoned: bool) -> Attempt {
        let grace_over = self.admission.closed_for().is_some_and(|closed_for| closed_for >= self.grace);
        if grace_over && !may_be_abandoned {
            match self.log_for_next_start(tickets) {
                Ok(()) => {
                    return Attempt::Ended(Err(Ended::Abandoned("grace period over, kept in the WAL".to_string())))
                }
                Err(error) => {
                    tracing::error!(message = "shutting down: tickets held in memory could not be written to the WAL either; retrying the database", tickets = tickets.len(), %error)
                }
            }
        }
        // Memory tickets the WAL could not take are retried unbounded.
        let bounded = may_be_abandoned || !grace_over;
        match self.try_write(tickets, bounded) {
            Ok(written) => Attempt::Ended(Ok(written)),
            Err(WriteError::Data(error)) => Attempt::Ended(Err(Ended::Data(error))),
            Err(WriteError::GraceOver) if may_be_abandoned => {
                Attempt::Ended(Err(Ended::Abandoned("grace period over".to_string())))
            }
            // Memory tickets: the next attempt goes to the WAL.
            Err(WriteError::GraceOver) => Attempt::Again,
            Err(WriteError::Transient(error)) if may_be_abandoned && self.admission.is_closed() => {
                Attempt::Ended(Err(Ended::Abandoned(error.to_string())))
            }
            Err(WriteError::Transient(error)) => Attempt::Failed { error, bounded },
        }
    }

    /// Appends `tickets` to the WAL (one group commit for all of them), so
    /// that the next start writes them. A ticket already there is logged
    /// twice, harmlessly: the replay skips an id already stored.
    fn log_for_next_start(&mut self, tickets: &[&NewTicket]) -> Result<(), WalError> {
        let wal = &self.wal;
        self.runtime.block_on(async {
            let mut appends = Vec::with_capacity(tickets.len());
            for ticket in tickets {
                let record = WalRecord::from(*ticket);
                let wal = wal.clone();
                appends.push(tokio::spawn(async move { wal.append(record, None).await }));
            }
            for append in appends {
                append.await.map_err(|_| WalError::Closed)??;
            }
            Ok(())
        })
    }

    /// Gives tickets up at shutdown: those in the WAL stay there for the
    /// next start, the waiting `ack = commit` requests get `503`.
    fn abandon(&self, tickets: &[&NewTicket], reason: &str) -> Unwritten {
        tracing::warn!(message = "database unavailable at shutdown, tickets not written: those in the WAL are written at the next start, waiting requests are refused", tickets = tickets.len(), error = reason);
        Unwritten::all(tickets, Stored::Abandoned)
    }

    /// Writes the halves of `tickets` apart, down to the ticket at fault;
    /// returns what they could not write.
    fn bisect(&mut self, tickets: &[&NewTicket], may_be_abandoned: bool, error: &sqlx::Error) -> Unwritten {
        if let [poison] = tickets {
            return self.store_poison(poison, may_be_abandoned, error);
        }
        let (left, right) = tickets.split_at(tickets.len() / 2);
        tracing::warn!(message = "batch refused for its data, splitting it", writer = self.number, tickets = tickets.len(), %error);
        let left_unwritten = self.write_until_stored(left, may_be_abandoned);
        let right_unwritten = self.write_until_stored(right, may_be_abandoned);
        left_unwritten.and(right_unwritten)
    }

    /// Stores a ticket the database refused as `invalid`, with its raw body
    /// and the database's message, and without lines; returns it if that
    /// failed too.
    fn store_poison(&mut self, ticket: &NewTicket, may_be_abandoned: bool, cause: &sqlx::Error) -> Unwritten {
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
        match self.write_retrying(&[&poison], may_be_abandoned) {
            Ok(written) => {
                self.count_written(written);
                Unwritten::none()
            }
            Err(Ended::Abandoned(reason)) => self.abandon(&[ticket], &reason),
            Err(Ended::Data(error)) => {
                // Only the raw body and fixed columns are left: this is a
                // schema problem, not the ticket's. Keep it loud.
                self.metrics.db_errors.get_or_create(&KindLabels { kind: "unstorable" }).inc();
                tracing::error!(message = "ticket could not be stored even as invalid: kept in the WAL if it is there, refused if its request waits", id = %ticket.id, %error);
                Unwritten::all(&[ticket], Stored::Refused)
            }
        }
    }

    /// One attempt, on the writer's connection (opened first if needed).
    /// `bounded`: ended with [`WriteError::GraceOver`] once the shutdown's
    /// grace period is over — also when the attempt began before the
    /// shutdown (a database that stopped answering without refusing).
    fn try_write(&mut self, tickets: &[&NewTicket], bounded: bool) -> Result<Written, WriteError> {
        let admission = &self.admission;
        let grace = self.grace;
        let runtime = &self.runtime;
        let connection = &mut self.connection;
        let connected_in = &mut self.connected_in;
        let epoch = self.gate.epoch();
        let database = &self.database;
        let refusal = &self.refusal;
        runtime.block_on(async {
            let attempt = async {
                let mut open = match connection.take() {
                    Some(open) => open,
                    None => {
                        *connected_in = epoch;
                        let opened = store::connect(database).await;
                        refusal.observe(opened.as_ref().map(|_| ()));
                        opened.map_err(WriteError::Transient)?
                    }
                };
                let result = store::write_batch(&mut open, tickets).await.map_err(classify);
                *connection = Some(open);
                result
            };
            if !bounded {
                return attempt.await;
            }
            // Dropping the attempt drops its connection, and with it any
            // transaction left open.
            tokio::select! {
                result = attempt => result,
                () = admission.grace_over(grace) => Err(WriteError::GraceOver),
            }
        })
    }

    /// Backs off for `delay` before retry number `attempt`; `bounded`: not
    /// past the shutdown's grace period.
    fn wait_before_retry(&mut self, attempt: u32, delay: Duration, error: &sqlx::Error, bounded: bool) {
        self.metrics.retries.inc();
        self.metrics.db_errors.get_or_create(&KindLabels { kind: "transient" }).inc();
        // The connection may be broken or mid-transaction: start afresh.
        self.connection = None;
        if store::is_refusal(error) {
            tracing::error!(message = "the database refuses this service: fix database_url or the database; retrying meanwhile, /healthz is 503", writer = self.number, attempt, delay_ms = delay.as_millis() as u64, %error);
        } else {
            tracing::warn!(message = "database write failed, retrying", writer = self.number, attempt, delay_ms = delay.as_millis() as u64, %error);
        }
        let probing = store::is_unreachable(error);
        let admission = &self.admission;
        let grace = self.grace;
        let database = &self.database;
        let connection = &mut self.connection;
        // Read before any probe opens a connection.
        self.connected_in = self.gate.epoch();
        self.runtime.block_on(async {
            let wait = async {
                if probing {
                    probe_until(database, tokio::time::Instant::now() + delay).await
                } else {
                    tokio::time::sleep(delay).await;
                    None
                }
            };
            tokio::select! {
                found = wait => *connection = found,
                () = admission.grace_over(grace), if bounded => {}
            }
        });
    }

    /// Tells the WAL what is committed (through the gate, which holds it
    /// until the standbys have it), answers the `ack = commit`
    /// requests with their ticket's outcome; dropping the jobs gives their
    /// permits back.
    fn report(&mut self, batch: Vec<Job>, unwritten: &Unwritten) {
        let mut committed = Vec::with_capacity(batch.len());
        for mut job in batch {
            let outcome = unwritten.outcome(&job.ticket.id);
            if let (Stored::Committed, Some(seq)) = (outcome, job.wal_seq) {
                committed.push(seq);
            }
            job.answer(outcome);
        }
        self.gate.committed(committed, self.connected_in);
        if self.connected_in < self.gate.epoch() {
            // Opened before the service found another primary: its commits
            // are written again, so the next batch takes a fresh connection.
            self.connection = None;
        }
    }

    fn count_written(&self, written: Written) {
        self.metrics.tickets_written.inc_by(written.tickets);
        self.metrics.lines_written.inc_by(written.lines);
        self.metrics.products_written.inc_by(written.products);
        self.metrics.history_written.inc_by(written.history);
        if !written.keys_taken.is_empty() {
            self.metrics.idempotency_keys_taken.inc_by(written.keys_taken.len() as u64);
            tracing::warn!(
                message = "tickets stored under an idempotency key that already stood for another ticket: each was answered 202 with its own id, its key still answers the first one",
                tickets = ?written.keys_taken
            );
        }
    }
}

/// While the database does not answer, how often a backing-off writer
/// tries a connection, and how long it gives each try.
const PROBE_EVERY: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Waits until `until`, trying a connection every [`PROBE_EVERY`]: the
/// first that opens ends the wait and is the next attempt's (the database
/// is back; a backoff grown to seconds during an outage would otherwise
/// hold the first commit after it). A probe is one connection attempt:
/// cheap for a database that refuses, bounded for one that does not answer.
async fn probe_until(database: &DatabaseUrl, until: tokio::time::Instant) -> Option<PgConnection> {
    loop {
        let now = tokio::time::Instant::now();
        if now >= until {
            return None;
        }
        tokio::time::sleep(PROBE_EVERY.min(until - now)).await;
        if tokio::time::Instant::now() >= until {
            return None;
        }
        if let Ok(Ok(connection)) = tokio::time::timeout(PROBE_TIMEOUT, store::connect(database)).await {
            return Some(connection);
        }
    }
}

fn classify(error: sqlx::Error) -> WriteError {
    match store::classify(&error) {
        Failure::Data => WriteError::Data(error),
        Failure::Transient => WriteError::Transient(error),
    }
}
