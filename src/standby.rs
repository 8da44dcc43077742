//! Records held for the standbys: `ack = wal` across an asynchronous
//! failover.
//!
//! With asynchronous streaming replication, a commit the primary
//! acknowledged may not have reached any standby yet; promoted, that
//! standby does not have it. A record trimmed from the write-ahead log as
//! soon as the primary committed it would then be a `202` for a ticket no
//! server holds. So, with `wal_hold_for_standbys` (`auto`, the default, or
//! `always`), a record leaves the log only once its commit is known
//! flushed on `wal_standbys_flushed` standbys.
//!
//! # How
//!
//! - **Writers report, nothing more.** A writer hands the sequence numbers
//!   its batch committed to the [`StandbyGate`] (a push under a mutex): no
//!   query per batch, no extra round trip.
//! - **One task looks at the primary** every [`LOOK_EVERY`], on a
//!   connection of its own: its identity (system identifier and timeline),
//!   `pg_current_wal_insert_lsn()` and the standbys' `flush_lsn` in
//!   `pg_stat_replication` (streaming or catching up; logical walsenders
//!   left out), one query. The records reported before the look was sent
//!   were committed before it, so their commit records end at or before
//!   the insert LSN it reads: they are stamped with it. A record is
//!   released (reported to the log, which deletes a segment once all its
//!   records are) once the `wal_standbys_flushed`-th highest flush LSN
//!   reaches its stamp.
//! - **Fewer standbys than needed**: `auto` releases at once (a primary
//!   without standbys cannot lose a commit to a promotion; the next look
//!   that finds enough of them holds again); `always` holds, and the log
//!   fills up to `wal_max_bytes`, then refuses with `503`. A standby that
//!   stops taking WAL while still connected holds the log in both, until
//!   PostgreSQL drops it (`wal_sender_timeout`).
//! - **Another primary** (a look finds another timeline or system
//!   identifier): every record held, and every one reported meanwhile, is
//!   read back from the log and written again under its id by the writers
//!   (the careful path skips those the new primary has). A record whose
//!   writer opened its connection before that look may have been committed
//!   on the old primary too ([`StandbyGate::epoch`]): written again as
//!   well. While a record is on its way again, its key's repeats are
//!   answered from memory with its id.
//! - **Shutdown**: once the writers stopped, [`StandbyWatch::finish`] keeps
//!   looking for at most [`FINAL_WAIT`]; what is still held stays in the
//!   log, and the next start writes it again (skipped where stored).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::PgConnection;
use tokio::sync::watch;

use crate::config::{AckMode, HoldForStandbys, Settings};
use crate::database_url::DatabaseUrl;
use crate::http::AppState;
use crate::idempotency::Answer;
use crate::job::Job;
use crate::startup;
use crate::store;
use crate::ticket::ParsedTicket;
use crate::wal::Wal;

/// How often the primary's standbys are looked at.
pub const LOOK_EVERY: Duration = Duration::from_millis(150);
/// How long a look may take before the connection is given up.
const LOOK_TIMEOUT: Duration = Duration::from_secs(2);
/// At shutdown, how long the last looks may go on releasing records.
pub const FINAL_WAIT: Duration = Duration::from_secs(1);
/// Records read back from the log at a time, when written again.
const WRITE_AGAIN_CHUNK: usize = 2_000;

/// Where the writers report what they committed; cheap to clone.
#[derive(Clone)]
pub struct StandbyGate {
    inner: Arc<Gate>,
}

struct Gate {
    hold: HoldForStandbys,
    wal: Wal<Job>,
    reported: Mutex<Reported>,
    /// `auto`, and the last look found fewer standbys than needed: a
    /// commit is released at once.
    release_at_once: AtomicBool,
    /// Bumped each time a look finds another primary.
    epoch: AtomicU64,
}

/// Committed, not yet stamped with an LSN.
#[derive(Default)]
struct Reported {
    /// Each batch with the epoch its connection was opened in: a report
    /// made just before a look found another primary is told stale at the
    /// next look, by its epoch.
    current: Vec<(u64, Vec<u64>)>,
    /// On a connection opened before the last change of primary: maybe
    /// on the old one.
    stale: Vec<u64>,
}

impl Reported {
    fn len(&self) -> usize {
        self.current.iter().map(|(_, seqs)| seqs.len()).sum::<usize>() + self.stale.len()
    }
}

impl StandbyGate {
    pub fn new(settings: &Settings, wal: Wal<Job>) -> StandbyGate {
        // Only `ack = wal` logs tickets; nothing to hold otherwise.
        let hold = match settings.ack {
            AckMode::Wal => settings.wal_hold_for_standbys,
            AckMode::Commit | AckMode::Memory => HoldForStandbys::Off,
        };
        StandbyGate {
            inner: Arc::new(Gate {
                hold,
                wal,
                reported: Mutex::new(Reported::default()),
                release_at_once: AtomicBool::new(hold == HoldForStandbys::Off),
                epoch: AtomicU64::new(0),
            }),
        }
    }

    /// The log the records are released to.
    pub fn wal(&self) -> &Wal<Job> {
        &self.inner.wal
    }

    /// Whether records are held for the standbys at all.
    pub fn holds(&self) -> bool {
        self.inner.hold != HoldForStandbys::Off
    }

    /// The current epoch: a writer reads it before it opens a connection
    /// and reports its commits with it.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// These records are committed on the primary the writer reached
    /// through a connection opened in `connected_in`.
    pub fn committed(&self, seqs: Vec<u64>, connected_in: u64) {
        if seqs.is_empty() {
            return;
        }
        let stale = connected_in < self.epoch();
        if !stale && self.inner.release_at_once.load(Ordering::Acquire) {
            self.inner.wal.committed(seqs);
            return;
        }
        let mut reported = self.reported();
        if stale {
            reported.stale.extend(seqs);
        } else {
            reported.current.push((connected_in, seqs));
        }
    }

    fn reported(&self) -> MutexGuard<'_, Reported> {
        self.inner.reported.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take_reported(&self) -> Reported {
        std::mem::take(&mut *self.reported())
    }

    /// Puts back what a failed look took.
    fn put_back(&self, taken: Reported) {
        let mut reported = self.reported();
        reported.current.extend(taken.current);
        reported.stale.extend(taken.stale);
    }
}

/// The looking task; [`StandbyWatch::finish`] ends it.
pub struct StandbyWatch {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<u64>,
}

impl StandbyWatch {
    /// Starts looking at the primary, when records are held for standbys.
    pub fn spawn(gate: StandbyGate, state: Arc<AppState>) -> anyhow::Result<Option<StandbyWatch>> {
        if !gate.holds() {
            return Ok(None);
        }
        let database = state.settings.database()?.clone();
        let needed = state.settings.wal_standbys_flushed.max(1);
        let (stop, stopping) = watch::channel(false);
        let watcher = Watcher {
            gate,
            state,
            database,
            needed,
            connection: None,
            primary: None,
            held: VecDeque::new(),
            warned_hidden: false,
        };
        Ok(Some(StandbyWatch { stop, handle: tokio::spawn(watcher.run(stopping)) }))
    }

    /// Once the writers stopped: looks on for at most [`FINAL_WAIT`], until
    /// nothing is held; returns how many records are still held (they stay
    /// in the log).
    pub async fn finish(self) -> u64 {
        let _ = self.stop.send(true);
        self.handle.await.unwrap_or(0)
    }
}

/// A primary, as told apart from another: promoted, a standby keeps the
/// system identifier and starts a new timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    system_identifier: i64,
    timeline: String,
}

/// What one look found.
struct Look {
    primary: Identity,
    insert_lsn: i64,
    /// The standbys' flush LSNs, highest first.
    flushed: Vec<i64>,
    /// Walsenders whose positions this role may not see.
    hidden: i64,
}

const LOOK: &str = "SELECT (SELECT system_identifier FROM pg_control_system()),
       substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8),
       (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8,
       ARRAY(SELECT (r.flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_stat_replication r
             WHERE r.state IN ('streaming', 'catchup') AND r.flush_lsn IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM pg_replication_slots s
                               WHERE s.active_pid = r.pid AND s.slot_type = 'logical')
             ORDER BY r.flush_lsn DESC),
       (SELECT count(*) FROM pg_stat_replication WHERE state IS NULL)";

async fn look(connection: &mut PgConnection) -> Result<Look, sqlx::Error> {
    let (system_identifier, timeline, insert_lsn, flushed, hidden): (i64, String, i64, Vec<i64>, i64) =
        sqlx::query_as(LOOK).fetch_one(connection).await?;
    Ok(Look { primary: Identity { system_identifier, timeline }, insert_lsn, flushed, hidden })
}

struct Watcher {
    gate: StandbyGate,
    state: Arc<AppState>,
    database: DatabaseUrl,
    needed: usize,
    connection: Option<PgConnection>,
    /// The primary of the last look.
    primary: Option<Identity>,
    /// Records committed on `primary`, by the insert LSN read after their
    /// commit (increasing), not yet flushed on enough standbys.
    held: VecDeque<(i64, Vec<u64>)>,
    warned_hidden: bool,
}

impl Watcher {
    async fn run(mut self, mut stopping: watch::Receiver<bool>) -> u64 {
        loop {
            self.look_once().await;
            if *stopping.borrow() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(LOOK_EVERY) => {}
                _ = stopping.changed() => {}
            }
        }
        // The writers are done: release what the standbys flush meanwhile.
        let deadline = tokio::time::Instant::now() + FINAL_WAIT;
        while self.still_held() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(LOOK_EVERY.min(deadline - tokio::time::Instant::now())).await;
            self.look_once().await;
        }
        self.still_held()
    }

    fn still_held(&self) -> u64 {
        let held: usize = self.held.iter().map(|(_, seqs)| seqs.len()).sum();
        (held + self.gate.reported().len()) as u64
    }

    async fn look_once(&mut self) {
        // Taken before the query is sent: committed before it.
        let reported = self.gate.take_reported();
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => match tokio::time::timeout(LOOK_TIMEOUT, store::connect(&self.database)).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => {
                    tracing::debug!(message = "cannot reach the primary to look at the standbys, trying again", %error);
                    return self.looked_in_vain(reported);
                }
                Err(_) => return self.looked_in_vain(reported),
            },
        };
        let found = tokio::time::timeout(LOOK_TIMEOUT, look(&mut connection)).await;
        if matches!(found, Ok(Ok(_))) {
            self.connection = Some(connection);
        }
        let look = match found {
            Ok(Ok(look)) => look,
            Ok(Err(error)) => {
                tracing::debug!(message = "cannot look at the standbys, trying again", %error);
                return self.looked_in_vain(reported);
            }
            Err(_) => {
                tracing::debug!(message = "looking at the standbys timed out, trying again");
                return self.looked_in_vain(reported);
            }
        };
        if look.hidden > 0 && !self.warned_hidden {
            self.warned_hidden = true;
            tracing::error!(
                message = "the database role may not see the standbys' positions (pg_stat_replication): grant it pg_monitor; those standbys are not counted for wal_hold_for_standbys",
                walsenders = look.hidden
            );
        }
        let Reported { current: batches, mut stale } = reported;
        let epoch = self.gate.epoch();
        let mut current = Vec::new();
        for (connected_in, seqs) in batches {
            if connected_in < epoch {
                stale.extend(seqs);
            } else {
                current.extend(seqs);
            }
        }
        let changed = self.primary.as_ref().is_some_and(|known| *known != look.primary);
        if changed {
            // Committed on the previous primary, maybe not here.
            for (_, seqs) in self.held.drain(..) {
                stale.extend(seqs);
            }
            stale.extend(current);
            tracing::warn!(
                message = "on another primary: writing again every record committed on the previous one and not known flushed on a standby",
                records = stale.len(),
                timeline = %look.primary.timeline
            );
            self.gate.inner.epoch.fetch_add(1, Ordering::AcqRel);
        } else if !current.is_empty() {
            self.held.push_back((look.insert_lsn, current));
        }
        self.primary = Some(look.primary);
        if !stale.is_empty() {
            self.state.metrics.wal_records_written_again.inc_by(stale.len() as u64);
            tokio::spawn(write_again(stale, Arc::clone(&self.state)));
        }
        self.release(&look.flushed);
    }

    fn looked_in_vain(&mut self, reported: Reported) {
        self.connection = None;
        self.gate.put_back(reported);
        self.count_held();
    }

    /// Releases the records flushed on enough standbys — or all of them,
    /// with `auto` and fewer standbys than needed.
    fn release(&mut self, flushed: &[i64]) {
        let enough = flushed.len() >= self.needed;
        let at_once = !enough && self.gate.inner.hold == HoldForStandbys::Auto;
        self.gate.inner.release_at_once.store(at_once, Ordering::Release);
        let flushed_by_enough = enough.then(|| flushed[self.needed - 1]);
        let mut released = Vec::new();
        while let Some((lsn, _)) = self.held.front() {
            if !(at_once || flushed_by_enough.is_some_and(|flushed| *lsn <= flushed)) {
                break;
            }
            if let Some((_, seqs)) = self.held.pop_front() {
                released.extend(seqs);
            }
        }
        self.gate.inner.wal.committed(released);
        self.count_held();
    }

    fn count_held(&self) {
        self.state.metrics.wal_records_held_for_standbys.set(self.still_held() as i64);
    }
}

/// Reads `seqs` back from the log and feeds them to the writers, under
/// their ids; a key's repeats are answered from memory meanwhile.
async fn write_again(mut seqs: Vec<u64>, state: Arc<AppState>) {
    seqs.sort_unstable();
    for chunk in seqs.chunks(WRITE_AGAIN_CHUNK) {
        let records = match state.wal.read_back(chunk.to_vec()).await {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(message = "cannot read records back to write them again; they stay in the log for the next start", %error);
                return;
            }
        };
        if records.len() < chunk.len() {
            tracing::error!(
                message = "records to write again not found in the log",
                wanted = chunk.len(),
                found = records.len()
            );
        }
        let mut jobs = Vec::with_capacity(records.len());
        for recovered in records {
            let on_its_way = recovered.record.idempotency_key.as_deref().map(|key| {
                let record = &recovered.record;
                let answer = Answer { id: record.id, status: ParsedTicket::parse(&record.raw).status };
                state.recent_keys.on_its_way_again(key, answer, &record.raw)
            });
            jobs.push((recovered, on_its_way));
        }
        if startup::feed_to_writers(jobs, &state.admission, &state.queue).await.is_err() {
            tracing::warn!(
                message = "shutting down while writing records again; the rest stays in the log for the next start"
            );
            return;
        }
    }
}
