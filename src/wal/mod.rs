//! The write-ahead log behind `ack = wal`: a ticket is answered `202` only
//! once its record is on disk and `fdatasync`ed, so an acknowledged ticket
//! survives a crash of the process or of the host.
//!
//! # On-disk format
//!
//! `wal_dir` holds segment files named after the sequence number of their
//! first record, `00000000000000000001.wal`, each at most about
//! `wal_segment_bytes` long. A segment starts with the 8-byte magic
//! `TIWAL\0\0\x01`, then records, back to back, then zeros:
//!
//! ```text
//! u32 LE  payload length
//! u32 LE  CRC32C of the payload
//! payload:
//!   u64 LE  sequence number (strictly increasing across segments)
//!   [16]    ticket id (UUIDv7)
//!   i64 LE  received_at, Unix nanoseconds
//!   u16 LE  idempotency key length, 0xFFFF for none
//!   [..]    idempotency key (UTF-8)
//!   [..]    raw body, to the end of the payload
//! ```
//!
//! # Guarantees
//!
//! - **Group commit**: one appender thread owns the files. It takes every
//!   record pending, writes them with one `write`, `fdatasync`s once, then
//!   answers all of them: it wakes the first append still waiting, which
//!   wakes the others from its runtime thread (one wake-up across threads
//!   per group). A failed write or sync answers every record of that group
//!   with an error (the request gets `503`, never a false `202`).
//! - **Cheap syncs**: the active segment is filled with zeros ahead of its
//!   records, 1 MiB at a time once fewer than 512 KiB are left, so that
//!   nearly every `fdatasync` overwrites blocks that exist and flushes the
//!   data alone, not the file size too. A record header of zeros is the
//!   end of the log.
//! - **Recovery**: at start every segment is read back. The first record
//!   whose length is impossible, whose payload is cut short or whose CRC does
//!   not match ends the segment: the file is truncated there (a torn tail
//!   after a crash), logged with file and offset, and counted. Recovery never
//!   fails on bad content, so a damaged log cannot cause a crash loop.
//! - **Checkpointing**: writers report the sequence numbers they committed.
//!   A segment that is no longer the active one is deleted as soon as every
//!   record in it is committed. The directory is `fsync`ed after a segment is
//!   created or deleted, so a deletion never outlives a crash that the
//!   commit it depends on did not.
//! - **Bounded**: past `wal_max_bytes` on disk, or on a full disk, appends
//!   are refused and requests get `503` + `Retry-After`.
//! - **A failing disk** (full, or I/O errors): a segment that cannot be
//!   created is removed again, never left behind; while there is no
//!   usable segment, appends are refused at once and the disk is tried
//!   again at most once per [`RETRY_EVERY`], by the next append or by the
//!   appender itself when idle. [`Wal::failure`] says what failed until a
//!   write succeeds again (`/readyz` reports it).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::metrics::Metrics;

/// What the log hands on once its record is durable (to the queue given to
/// [`Wal::open`]), told the record's sequence number first.
pub trait Logged: Send + 'static {
    fn logged_as(&mut self, seq: u64);
}

/// A log whose appends hand nothing on (tools and tests).
impl Logged for () {
    fn logged_as(&mut self, _seq: u64) {}
}

/// A record written to the file, waiting for its `fdatasync`.
struct Pending<J> {
    seq: u64,
    /// Queued once the record is durable.
    job: Option<J>,
    reply: Reply,
}

type Reply = oneshot::Sender<Delivery>;

/// What the appender sends to one waiting append per group, its leader:
/// its own outcome, and the rest of the group's, which the leader hands
/// out from its runtime thread. One wake-up crosses threads per group
/// rather than one per record: a wake-up from the runtime's own thread
/// costs no system call and no idle thread woken for each record.
struct Delivery {
    own: Result<u64, WalError>,
    followers: Followers,
}

/// The outcomes a group's leader hands out. Handed out when dropped, so
/// that a leader cancelled meanwhile (its client hung up) still does.
struct Followers(Vec<(Reply, Result<u64, WalError>)>);

impl Drop for Followers {
    fn drop(&mut self) {
        for (reply, own) in self.0.drain(..) {
            let _ = reply.send(Delivery { own, followers: Followers(Vec::new()) });
        }
    }
}

/// Sends a group's outcomes to its first append still waiting, which
/// hands out the others.
fn deliver(outcomes: Vec<(Reply, Result<u64, WalError>)>) {
    let mut outcomes = outcomes.into_iter();
    while let Some((leader, own)) = outcomes.next() {
        if leader.is_closed() {
            continue;
        }
        // Should the leader have gone just now, the delivery comes back
        // and is dropped here, handing out the followers' outcomes.
        let _ = leader.send(Delivery { own, followers: Followers(outcomes.collect()) });
        return;
    }
}

const MAGIC: &[u8; 8] = b"TIWAL\0\0\x01";
const FRAME_HEADER: usize = 8;
const FIXED_PAYLOAD: usize = 8 + 16 + 8 + 2;
const NO_KEY: u16 = u16::MAX;
/// No record is larger: bodies are limited far below this.
const MAX_PAYLOAD: usize = 256 * 1024 * 1024;
/// A group stops growing past this many bytes, so one write stays bounded.
const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;
/// How far ahead of the records the active segment is filled with zeros.
/// Overwriting blocks that already exist lets `fdatasync` flush the data
/// alone; appending would also flush the file size every time.
const ZERO_AHEAD: u64 = 1024 * 1024;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
/// How often a failing disk is tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// One ticket as the log keeps it: enough to rebuild and store it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub id: Uuid,
    pub received_at: OffsetDateTime,
    pub idempotency_key: Option<String>,
    pub raw: Bytes,
}

/// A record read back at start, to be written to the database again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub seq: u64,
    pub record: WalRecord,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log is full ({0} bytes on disk)")]
    Full(u64),
    #[error("write-ahead log I/O error: {0}")]
    Io(String),
    #[error("write-ahead log is closed")]
    Closed,
}

// Appends are nearly every message: boxing them to shrink the rare ones
// would cost an allocation per ticket.
#[allow(clippy::large_enum_variant)]
enum Message<J> {
    Append { record: WalRecord, job: Option<J>, reply: Reply },
    Committed(Vec<u64>),
    ReadBack { seqs: Vec<u64>, reply: oneshot::Sender<Vec<Recovered>> },
    Shutdown,
}

/// The handle requests and writers use; cheap to clone. `J` is what an
/// append hands on to the queue once its record is durable.
pub struct Wal<J> {
    sender: Sender<Message<J>>,
    bytes_on_disk: Arc<AtomicU64>,
    max_bytes: u64,
    /// The last write's error, until a write succeeds again.
    failure: Arc<Mutex<Option<String>>>,
}

/// What the log still held when it stopped: records not known to be
/// committed, replayed at the next start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leftover {
    pub records: u64,
    pub segments: usize,
    pub bytes: u64,
}

/// The appender thread; [`WalThread::stop`] flushes and joins it.
pub struct WalThread<J> {
    sender: Sender<Message<J>>,
    handle: JoinHandle<Leftover>,
}

impl<J> Clone for Wal<J> {
    fn clone(&self) -> Self {
        Wal {
            sender: self.sender.clone(),
            bytes_on_disk: Arc::clone(&self.bytes_on_disk),
            max_bytes: self.max_bytes,
            failure: Arc::clone(&self.failure),
        }
    }
}

impl<J: Logged> Wal<J> {
    /// Recovers `dir` (creating it if needed), starts the appender thread,
    /// and returns the records that were not committed yet, in order.
    /// Jobs appended with their record go to `queue` once it is durable.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        max_bytes: u64,
        metrics: Arc<Metrics>,
        queue: Option<Sender<J>>,
    ) -> io::Result<(Wal<J>, WalThread<J>, Vec<Recovered>)> {
        fs::create_dir_all(dir)?;
        let recovery = recover(dir, &metrics)?;
        let bytes_on_disk = Arc::new(AtomicU64::new(0));
        let failure = Arc::new(Mutex::new(None));
        let mut appender = Appender::new(dir, segment_bytes, Arc::clone(&bytes_on_disk), metrics, recovery.next_seq);
        appender.queue = queue;
        appender.failure = Arc::clone(&failure);
        for (first_seq, segment) in recovery.segments {
            appender.adopt(first_seq, segment);
        }
        appender.delete_committed_segments();
        appender.open_active_segment()?;
        let (sender, receiver) = crossbeam_channel::unbounded();
        let handle =
            std::thread::Builder::new().name("wal-appender".to_string()).spawn(move || appender.run(receiver))?;
        let wal = Wal { sender: sender.clone(), bytes_on_disk, max_bytes, failure };
        Ok((wal, WalThread { sender, handle }, recovery.records))
    }

    /// Appends `record`; resolves with its sequence number once it is on
    /// disk. `job` is queued for the writers then, by the appender: it gets
    /// there even if the caller stops waiting (a client that hung up).
    pub async fn append(&self, record: WalRecord, job: Option<J>) -> Result<u64, WalError> {
        let on_disk = self.bytes_on_disk.load(Ordering::Relaxed);
        if on_disk >= self.max_bytes {
            return Err(WalError::Full(on_disk));
        }
        let (reply, answer) = oneshot::channel();
        self.sender.send(Message::Append { record, job, reply }).map_err(|_| WalError::Closed)?;
        let Delivery { own, followers } = answer.await.map_err(|_| WalError::Closed)?;
        // Leading the group: answer the others from this thread.
        drop(followers);
        own
    }

    /// Records that these sequence numbers are committed in the database.
    pub fn committed(&self, seqs: Vec<u64>) {
        if !seqs.is_empty() {
            // Only fails once the appender stopped; replay covers it then.
            let _ = self.sender.send(Message::Committed(seqs));
        }
    }

    /// Reads back the records of these sequence numbers, still in the log
    /// (not yet reported committed), in order: to write them again.
    pub async fn read_back(&self, seqs: Vec<u64>) -> Result<Vec<Recovered>, WalError> {
        let (reply, records) = oneshot::channel();
        self.sender.send(Message::ReadBack { seqs, reply }).map_err(|_| WalError::Closed)?;
        records.await.map_err(|_| WalError::Closed)
    }

    pub fn bytes_on_disk(&self) -> u64 {
        self.bytes_on_disk.load(Ordering::Relaxed)
    }

    pub fn is_full(&self) -> bool {
        self.bytes_on_disk() >= self.max_bytes
    }

    /// Why the last write failed, if no write has succeeded since.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl<J> WalThread<J> {
    /// Stops the appender after everything sent before; deletes the
    /// segments whose records are all committed, and says what is left.
    pub fn stop(self) -> Leftover {
        let _ = self.sender.send(Message::Shutdown);
        match self.handle.join() {
            Ok(leftover) => leftover,
            Err(_) => {
                tracing::error!(message = "the WAL appender thread panicked");
                Leftover::default()
            }
        }
    }
}

/// A segment file and how many of its records still wait for a commit.
struct Segment {
    path: PathBuf,
    bytes: u64,
    uncommitted: u64,
}

struct Appender<J> {
    dir: PathBuf,
    segment_bytes: u64,
    next_seq: u64,
    /// Every segment on disk by first sequence number; the last is active.
    segments: BTreeMap<u64, Segment>,
    active: Option<File>,
    /// The active segment is zero-filled up to here (records end before).
    zeroed_to: u64,
    buffer: Vec<u8>,
    /// Sequence number of the first record in `buffer`, while it holds any:
    /// a segment opened for them must be named after it.
    buffer_first_seq: Option<u64>,
    bytes_on_disk: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    /// Where the jobs of durable records go.
    queue: Option<Sender<J>>,
    /// Shared with [`Wal::failure`].
    failure: Arc<Mutex<Option<String>>>,
    /// While the disk fails and no segment is usable: when to try again.
    retry_at: Option<Instant>,
}

impl<J: Logged> Appender<J> {
    fn new(
        dir: &Path,
        segment_bytes: u64,
        bytes_on_disk: Arc<AtomicU64>,
        metrics: Arc<Metrics>,
        next_seq: u64,
    ) -> Self {
        Appender {
            dir: dir.to_path_buf(),
            segment_bytes,
            next_seq,
            segments: BTreeMap::new(),
            active: None,
            zeroed_to: 0,
            buffer: Vec::with_capacity(64 * 1024),
            buffer_first_seq: None,
            bytes_on_disk,
            metrics,
            queue: None,
            failure: Arc::new(Mutex::new(None)),
            retry_at: None,
        }
    }

    fn adopt(&mut self, first_seq: u64, segment: Segment) {
        self.bytes_on_disk.fetch_add(segment.bytes, Ordering::Relaxed);
        self.metrics.wal_records.inc_by(segment.uncommitted as i64);
        self.segments.insert(first_seq, segment);
    }

    fn run(mut self, receiver: Receiver<Message<J>>) -> Leftover {
        let mut group: Vec<Pending<J>> = Vec::new();
        loop {
            let first = match self.retry_at {
                // Failing and idle: try the disk again in time, so that
                // readiness comes back without waiting for a request.
                Some(retry_at) => match receiver.recv_deadline(retry_at) {
                    Ok(message) => message,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        self.try_disk_again();
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                },
                None => match receiver.recv() {
                    Ok(message) => message,
                    Err(_) => break,
                },
            };
            let mut stop = self.take(first, &mut group);
            while !stop && self.buffer.len() < MAX_GROUP_BYTES {
                match receiver.try_recv() {
                    Ok(message) => stop = self.take(message, &mut group),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.write_group(&mut group);
            }
            self.delete_committed_segments();
            if stop {
                break;
            }
        }
        self.seal_active();
        self.delete_committed_segments();
        self.leftover()
    }

    /// Records still waiting for a commit, and the segments holding them.
    fn leftover(&self) -> Leftover {
        let mut leftover = Leftover::default();
        for segment in self.segments.values().filter(|segment| segment.uncommitted > 0) {
            leftover.records += segment.uncommitted;
            leftover.segments += 1;
            leftover.bytes += segment.bytes;
        }
        leftover
    }

    /// Handles one message; `true` for shutdown.
    fn take(&mut self, message: Message<J>, group: &mut Vec<Pending<J>>) -> bool {
        match message {
            Message::Append { record, job, reply } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.buffer_first_seq.get_or_insert(seq);
                encode(&mut self.buffer, seq, &record);
                group.push(Pending { seq, job, reply });
                false
            }
            Message::Committed(seqs) => {
                for seq in seqs {
                    self.mark_committed(seq);
                }
                false
            }
            Message::ReadBack { mut seqs, reply } => {
                seqs.sort_unstable();
                let _ = reply.send(self.read_back(&seqs));
                false
            }
            Message::Shutdown => true,
        }
    }

    /// Opens a segment again after a failure, if it is time to.
    fn try_disk_again(&mut self) {
        if self.active.is_some() || self.retry_at.is_some_and(|retry_at| Instant::now() < retry_at) {
            return;
        }
        match self.open_active_segment() {
            Ok(()) => {
                tracing::info!(message = "WAL disk usable again");
                self.retry_at = None;
                self.set_failure(None);
            }
            Err(error) => {
                self.retry_at = Some(Instant::now() + RETRY_EVERY);
                self.set_failure(Some(error.to_string()));
            }
        }
    }

    fn set_failure(&self, failure: Option<String>) {
        *self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = failure;
    }

    /// One write and one `fdatasync` for the whole group, then the answers.
    fn write_group(&mut self, group: &mut Vec<Pending<J>>) {
        let started = Instant::now();
        let result = self.write_buffer();
        // The buffer's records are on disk or refused: a segment opened from
        // here on is for the records after them.
        self.buffer_first_seq = None;
        self.metrics.wal_append_duration_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                if self.retry_at.take().is_some()
                    || self.failure.lock().map(|failure| failure.is_some()).unwrap_or(true)
                {
                    self.set_failure(None);
                }
                let Some(first_seq) = group.first().map(|pending| pending.seq) else { return };
                let count = group.len() as u64;
                if let Some((_, segment)) = self.segments.range_mut(..=first_seq).next_back() {
                    segment.uncommitted += count;
                }
                self.metrics.wal_records.inc_by(count as i64);
                let mut outcomes = Vec::with_capacity(group.len());
                for Pending { seq, job, reply } in group.drain(..) {
                    if let Some(job) = job {
                        self.hand_to_writers(seq, job);
                    }
                    outcomes.push((reply, Ok(seq)));
                }
                deliver(outcomes);
                self.rotate_if_full();
            }
            Err(error) => {
                tracing::error!(message = "WAL write failed, refusing the group", records = group.len(), %error);
                // Best effort: cut what part of the group reached the file, so
                // that refused records are not replayed.
                if let (Some(file), Some(segment)) = (self.active.as_ref(), self.segments.values().next_back()) {
                    let _ = file.set_len(segment.bytes);
                }
                self.metrics.wal_errors.inc();
                // Dropping the jobs gives their admission permits back.
                let refused = WalError::Io(error.to_string());
                deliver(group.drain(..).map(|pending| (pending.reply, Err(refused.clone()))).collect());
                self.set_failure(Some(error.to_string()));
                // The file may hold part of the group: start a fresh segment
                // so that the next group does not follow a torn record.
                if self.active.is_some() {
                    self.seal_active();
                    self.retry_at = None;
                    self.try_disk_again();
                }
            }
        }
        self.buffer.clear();
    }

    /// The queue is as large as the admission budget, so it only refuses a
    /// permitted ticket once the writers are gone (shutdown): the record
    /// stays in the log and the next start replays it.
    fn hand_to_writers(&self, seq: u64, mut job: J) {
        job.logged_as(seq);
        let queued = self.queue.as_ref().is_some_and(|queue| queue.try_send(job).is_ok());
        if !queued {
            tracing::warn!(message = "ticket logged but not queued, it is replayed at the next start", seq);
        }
    }

    fn write_buffer(&mut self) -> io::Result<()> {
        if self.active.is_none() {
            self.try_disk_again();
        }
        if self.active.is_none() {
            let failure = self.failure.lock().ok().and_then(|failure| failure.clone()).unwrap_or_default();
            return Err(io::Error::other(format!("no usable WAL segment ({failure}), retrying every second")));
        }
        let (Some(file), Some(segment)) = (self.active.as_ref(), self.segments.values_mut().next_back()) else {
            return Err(io::Error::other("no active WAL segment"));
        };
        let end = segment.bytes + self.buffer.len() as u64;
        file.write_all_at(&self.buffer, segment.bytes)?;
        // Zeros go down a whole ZERO_AHEAD at a time, once the records come
        // within half of it: only the group that lays them down extends the
        // file, every other one overwrites blocks that exist.
        if self.zeroed_to < end + ZERO_AHEAD / 2 {
            self.zeroed_to = zero_ahead(file, self.zeroed_to.max(end), (end + ZERO_AHEAD).min(self.segment_bytes))?;
        }
        let synced = Instant::now();
        file.sync_data()?;
        self.metrics.wal_fsync_duration_seconds.observe(synced.elapsed().as_secs_f64());
        let written = self.buffer.len() as u64;
        segment.bytes = end;
        self.bytes_on_disk.fetch_add(written, Ordering::Relaxed);
        self.metrics.wal_bytes.set(self.bytes_on_disk.load(Ordering::Relaxed) as i64);
        Ok(())
    }

    fn rotate_if_full(&mut self) {
        let full = self.segments.values().next_back().is_some_and(|segment| segment.bytes >= self.segment_bytes);
        if full {
            self.seal_active();
            if let Err(error) = self.open_active_segment() {
                tracing::error!(message = "cannot open a new WAL segment", %error);
            }
        }
    }

    /// Creates the segment that receives the next records — named after
    /// the first of them: the records waiting in the buffer, if any, else
    /// the next one — never over an existing file; on failure, removes
    /// what it created.
    fn open_active_segment(&mut self) -> io::Result<()> {
        let first_seq = self.buffer_first_seq.unwrap_or(self.next_seq);
        let path = self.dir.join(segment_name(first_seq));
        // An existing file is never truncated: it may hold records.
        let mut file = OpenOptions::new().create_new(true).write(true).open(&path)?;
        let prepared = file.write_all(MAGIC).and_then(|()| {
            let zeroed_to = zero_ahead(&file, MAGIC.len() as u64, ZERO_AHEAD.min(self.segment_bytes))?;
            file.sync_all()?;
            sync_dir(&self.dir)?;
            Ok(zeroed_to)
        });
        let zeroed_to = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                let _ = fs::remove_file(&path);
                let _ = sync_dir(&self.dir);
                return Err(error);
            }
        };
        self.zeroed_to = zeroed_to;
        self.bytes_on_disk.fetch_add(MAGIC.len() as u64, Ordering::Relaxed);
        self.segments.insert(first_seq, Segment { path, bytes: MAGIC.len() as u64, uncommitted: 0 });
        self.active = Some(file);
        Ok(())
    }

    fn seal_active(&mut self) {
        if let Some(file) = self.active.take() {
            if let Err(error) = file.sync_all() {
                tracing::error!(message = "WAL segment sync failed at seal", %error);
            }
        }
    }

    fn mark_committed(&mut self, seq: u64) {
        match self.segments.range_mut(..=seq).next_back() {
            Some((_, segment)) if segment.uncommitted > 0 => {
                segment.uncommitted -= 1;
                self.metrics.wal_records.dec();
            }
            _ => tracing::warn!(message = "commit reported for an unknown WAL record", seq),
        }
    }

    /// The records of `seqs` (sorted) found in the segments on disk. A
    /// record is on disk before its job reaches the writers, so every
    /// record reported committed is; reading does not change a file.
    fn read_back(&self, seqs: &[u64]) -> Vec<Recovered> {
        let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else { return Vec::new() };
        let mut found = Vec::with_capacity(seqs.len());
        let starts: Vec<u64> = self.segments.range(..=last).map(|(start, _)| *start).collect();
        for (index, start) in starts.iter().enumerate() {
            let next_start = starts.get(index + 1).copied().unwrap_or(u64::MAX);
            if next_start <= first {
                continue;
            }
            let Some(segment) = self.segments.get(start) else { continue };
            let data = match fs::read(&segment.path) {
                Ok(data) => data,
                Err(error) => {
                    tracing::error!(message = "cannot read a WAL segment back", path = %segment.path.display(), %error);
                    continue;
                }
            };
            let mut offset = MAGIC.len();
            while offset < data.len() && !is_zero_fill(&data[offset..]) {
                let Ok((recovered, next)) = read_record(&data, offset) else { break };
                if seqs.binary_search(&recovered.seq).is_ok() {
                    found.push(recovered);
                }
                offset = next;
            }
        }
        found
    }

    /// Deletes every sealed segment whose records are all committed.
    fn delete_committed_segments(&mut self) {
        let active_first = if self.active.is_some() { self.segments.keys().next_back().copied() } else { None };
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(first, segment)| segment.uncommitted == 0 && Some(**first) != active_first)
            .map(|(first, _)| *first)
            .collect();
        if done.is_empty() {
            return;
        }
        for first in done {
            let Some(segment) = self.segments.remove(&first) else { continue };
            match fs::remove_file(&segment.path) {
                Ok(()) => {
                    self.bytes_on_disk
                        .fetch_sub(segment.bytes.min(self.bytes_on_disk.load(Ordering::Relaxed)), Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::error!(message = "cannot delete WAL segment", path = %segment.path.display(), %error)
                }
            }
        }
        if let Err(error) = sync_dir(&self.dir) {
            tracing::error!(message = "WAL directory sync failed", %error);
        }
        self.metrics.wal_bytes.set(self.bytes_on_disk.load(Ordering::Relaxed) as i64);
    }
}

/// Fills `[from, to)` of `file` with zeros; returns where the zeros end.
fn zero_ahead(file: &File, from: u64, to: u64) -> io::Result<u64> {
    let mut at = from;
    while at < to {
        let chunk = (to - at).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..chunk as usize], at)?;
        at += chunk;
    }
    Ok(at.max(from))
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Appends one framed record to `buffer`.
fn encode(buffer: &mut Vec<u8>, seq: u64, record: &WalRecord) {
    let key = record.idempotency_key.as_deref().map(str::as_bytes).filter(|key| key.len() < NO_KEY as usize);
    let payload_len = FIXED_PAYLOAD + key.map_or(0, <[u8]>::len) + record.raw.len();
    buffer.reserve(FRAME_HEADER + payload_len);
    let header_at = buffer.len();
    buffer.extend_from_slice(&(payload_len as u32).to_le_bytes());
    buffer.extend_from_slice(&[0; 4]);
    let payload_at = buffer.len();
    buffer.extend_from_slice(&seq.to_le_bytes());
    buffer.extend_from_slice(record.id.as_bytes());
    let nanos = i64::try_from(record.received_at.unix_timestamp_nanos()).unwrap_or(i64::MAX);
    buffer.extend_from_slice(&nanos.to_le_bytes());
    match key {
        Some(key) => {
            buffer.extend_from_slice(&(key.len() as u16).to_le_bytes());
            buffer.extend_from_slice(key);
        }
        None => buffer.extend_from_slice(&NO_KEY.to_le_bytes()),
    }
    buffer.extend_from_slice(&record.raw);
    let crc = crc32c::crc32c(&buffer[payload_at..]);
    buffer[header_at + 4..header_at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads one payload back; `None` if it is not a well-formed record.
fn decode(payload: &[u8]) -> Option<(u64, WalRecord)> {
    let seq = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
    let id = Uuid::from_slice(payload.get(8..24)?).ok()?;
    let nanos = i64::from_le_bytes(payload.get(24..32)?.try_into().ok()?);
    let received_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).ok()?;
    let key_len = u16::from_le_bytes(payload.get(32..34)?.try_into().ok()?);
    let (idempotency_key, raw_at) = if key_len == NO_KEY {
        (None, FIXED_PAYLOAD)
    } else {
        let end = FIXED_PAYLOAD + key_len as usize;
        let key = std::str::from_utf8(payload.get(FIXED_PAYLOAD..end)?).ok()?;
        (Some(key.to_string()), end)
    };
    let raw = Bytes::copy_from_slice(payload.get(raw_at..)?);
    Some((seq, WalRecord { id, received_at, idempotency_key, raw }))
}

/// What recovery found on disk.
struct Recovery {
    records: Vec<Recovered>,
    segments: Vec<(u64, Segment)>,
    next_seq: u64,
}

fn recover(dir: &Path, metrics: &Metrics) -> io::Result<Recovery> {
    let mut names: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let first_seq = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".wal"))
            .and_then(|stem| stem.parse::<u64>().ok());
        if let Some(first_seq) = first_seq {
            names.push((first_seq, path));
        }
    }
    names.sort();
    let mut recovery = Recovery { records: Vec::new(), segments: Vec::new(), next_seq: 1 };
    for (first_seq, path) in names {
        let (records, bytes) = read_segment(&path, metrics)?;
        let uncommitted = records.len() as u64;
        if let Some(last) = records.last() {
            recovery.next_seq = recovery.next_seq.max(last.seq + 1);
        }
        recovery.next_seq = recovery.next_seq.max(first_seq);
        recovery.records.extend(records);
        recovery.segments.push((first_seq, Segment { path, bytes, uncommitted }));
    }
    metrics.wal_replayed.inc_by(recovery.records.len() as u64);
    Ok(recovery)
}

/// Reads a segment's valid records, truncating it at the first bad one.
fn read_segment(path: &Path, metrics: &Metrics) -> io::Result<(Vec<Recovered>, u64)> {
    let data = fs::read(path)?;
    let mut records = Vec::new();
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        truncate_at(path, 0, "missing segment header", metrics)?;
        return Ok((records, 0));
    }
    let mut offset = MAGIC.len();
    while offset < data.len() {
        if is_zero_fill(&data[offset..]) {
            break; // the end of the log: zeros written ahead of the records
        }
        match read_record(&data, offset) {
            Ok((recovered, next)) => {
                records.push(recovered);
                offset = next;
            }
            Err(reason) => {
                truncate_at(path, offset as u64, reason, metrics)?;
                break;
            }
        }
    }
    Ok((records, offset as u64))
}

/// A record header of zeros: nothing was ever written from here on.
fn is_zero_fill(rest: &[u8]) -> bool {
    rest.iter().take(FRAME_HEADER).all(|&byte| byte == 0)
}

fn read_record(data: &[u8], offset: usize) -> Result<(Recovered, usize), &'static str> {
    let header = data.get(offset..offset + FRAME_HEADER).ok_or("torn record header")?;
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(FIXED_PAYLOAD..=MAX_PAYLOAD).contains(&length) {
        return Err("impossible record length");
    }
    let start = offset + FRAME_HEADER;
    let payload = data.get(start..start + length).ok_or("torn record payload")?;
    if crc32c::crc32c(payload) != crc {
        return Err("CRC mismatch");
    }
    let (seq, record) = decode(payload).ok_or("malformed record")?;
    Ok((Recovered { seq, record }, start + length))
}

fn truncate_at(path: &Path, offset: u64, reason: &str, metrics: &Metrics) -> io::Result<()> {
    tracing::warn!(message = "WAL segment truncated", file = %path.display(), offset, reason);
    metrics.wal_truncations.inc();
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(offset)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8) -> WalRecord {
        WalRecord {
            id: Uuid::now_v7(),
            received_at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789 + i128::from(n))
                .expect("valid time"),
            idempotency_key: (n % 2 == 0).then(|| format!("key-{n}")),
            raw: Bytes::from(format!("Order: {n}\n\nproduct,product_id,price\nCafé,c,2\n")),
        }
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wal-test-{}", Uuid::now_v7().simple()));
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn open(dir: &Path, segment_bytes: u64) -> (Wal<()>, WalThread<()>, Vec<Recovered>) {
        Wal::open(dir, segment_bytes, u64::MAX, Arc::new(Metrics::new()), None).expect("wal opens")
    }

    fn append_all(wal: &Wal<()>, records: &[WalRecord]) -> Vec<u64> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        records.iter().map(|record| runtime.block_on(wal.append(record.clone(), None)).expect("append")).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .expect("dir")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| path.extension().is_some_and(|extension| extension == "wal"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn a_group_is_answered_through_its_first_waiting_append_even_if_that_one_goes_away() {
        let (closed, gone) = oneshot::channel::<Delivery>();
        drop(gone);
        let (leader, mut leader_answer) = oneshot::channel();
        let (follower, mut follower_answer) = oneshot::channel();

        deliver(vec![(closed, Ok(1)), (leader, Ok(2)), (follower, Ok(3))]);

        let follower_early = follower_answer.try_recv();
        assert!(follower_early.is_err(), "the follower is answered by the leader, not by the appender");
        let delivery = leader_answer.try_recv().expect("the first append still waiting leads");
        assert_eq!(delivery.own.as_ref().ok(), Some(&2));
        drop(delivery); // a leader cancelled before handing out
        assert_eq!(follower_answer.try_recv().expect("handed out on drop").own.ok(), Some(3));
    }

    #[test]
    fn every_record_acknowledged_around_a_failed_rotation_is_replayed() {
        let dir = temp_dir();
        let (wal, thread, _) = open(&dir, 50);
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        // Every record fills a segment; the one after the first cannot be
        // created for a while: a directory holds its name.
        let blocker = dir.join(segment_name(2));
        fs::create_dir(&blocker).expect("blocker");
        let mut acknowledged = Vec::new();
        for n in 0..6 {
            if n == 3 {
                fs::remove_dir(&blocker).expect("unblock");
                std::thread::sleep(RETRY_EVERY + std::time::Duration::from_millis(100));
            }
            if let Ok(seq) = runtime.block_on(wal.append(record(n), None)) {
                acknowledged.push(seq);
            }
        }
        let leftover = thread.stop();

        let (_wal, thread, recovered) = open(&dir, 50);
        let replayed: Vec<u64> = recovered.iter().map(|recovered| recovered.seq).collect();
        assert!(acknowledged.len() >= 4, "acknowledged: {acknowledged:?}");
        for seq in &acknowledged {
            assert!(replayed.contains(seq), "record {seq} was acknowledged, not replayed: {replayed:?}");
        }
        assert_eq!(leftover.records as usize, acknowledged.len());
        thread.stop();
    }

    #[test]
    fn records_round_trip_through_a_restart() {
        let dir = temp_dir();
        let written: Vec<WalRecord> = (0..10).map(record).collect();
        let (wal, thread, recovered) = open(&dir, 1 << 20);
        assert!(recovered.is_empty());
        let seqs = append_all(&wal, &written);
        assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());
        thread.stop();

        let (_wal, thread, recovered) = open(&dir, 1 << 20);
        let records: Vec<WalRecord> = recovered.iter().map(|r| r.record.clone()).collect();
        assert_eq!(records, written);
        assert_eq!(recovered.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs);
        thread.stop();
    }

    #[test]
    fn zeros_written_ahead_end_the_log_cleanly_and_a_torn_record_before_them_is_cut() {
        let dir = temp_dir();
        let (wal, thread, _) = open(&dir, 1 << 20);
        append_all(&wal, &[record(1), record(2)]);
        thread.stop();
        let file = segment_files(&dir).pop().expect("one segment");
        let mut data = fs::read(&file).expect("read");
        let (_, second_start) = read_record(&data, MAGIC.len()).expect("first record");
        let (_, end) = read_record(&data, second_start).expect("second record");
        assert!(data.len() > end + FRAME_HEADER && data[end..].iter().all(|&byte| byte == 0), "zero-filled ahead");

        let metrics = Arc::new(Metrics::new());
        let (_, thread, recovered) =
            Wal::<()>::open(&dir, 1 << 20, u64::MAX, Arc::clone(&metrics), None).expect("reopen");
        thread.stop();
        assert_eq!(recovered.len(), 2);
        assert_eq!(metrics.wal_truncations.get(), 0, "the zeros are not damage");

        // The second record torn by a crash, its tail still zeros.
        data[end - 3..end].fill(0);
        fs::write(&file, &data).expect("write");
        let metrics = Arc::new(Metrics::new());
        let (_, thread, recovered) =
            Wal::<()>::open(&dir, 1 << 20, u64::MAX, Arc::clone(&metrics), None).expect("reopen");
        thread.stop();
        assert_eq!(recovered.len(), 1);
        assert_eq!(metrics.wal_truncations.get(), 1);
        assert_eq!(fs::metadata(&file).expect("meta").len(), second_start as u64);
    }

    #[test]
    fn small_groups_overwrite_the_zeros_and_leave_the_file_size_alone() {
        let dir = temp_dir();
        let (wal, thread, _) = open(&dir, 64 << 20);
        let length = || fs::metadata(segment_files(&dir)[0].as_path()).expect("meta").len();
        append_all(&wal, &[record(1)]);
        let laid_down = length();
        append_all(&wal, &(2..100).map(record).collect::<Vec<_>>());
        assert_eq!(length(), laid_down, "99 groups, no size change to flush");

        let large = WalRecord { raw: Bytes::from(vec![b'x'; 300 * 1024]), ..record(100) };
        append_all(&wal, &[large.clone(), large]);
        assert!(length() >= laid_down + ZERO_AHEAD / 2, "records near the end of the zeros lay down more");
        thread.stop();
    }

    #[test]
    fn sequence_numbers_continue_after_a_restart() {
        let dir = temp_dir();
        let (wal, thread, _) = open(&dir, 1 << 20);
        append_all(&wal, &[record(1), record(2)]);
        thread.stop();
        let (wal, thread, _) = open(&dir, 1 << 20);
        assert_eq!(append_all(&wal, &[record(3)]), vec![3]);
        thread.stop();
    }

    #[test]
    fn a_torn_tail_at_every_byte_offset_of_the_last_record_is_truncated_and_the_rest_survives() {
        let dir = temp_dir();
        let (wal, thread, _) = open(&dir, 1 << 20);
        append_all(&wal, &[record(1), record(2), record(3)]);
        thread.stop();
        let file = segment_files(&dir).pop().expect("one segment");
        let full = fs::read(&file).expect("read");
        let mut last_start = MAGIC.len();
        for _ in 0..2 {
            let (_, next) = read_record(&full, last_start).expect("valid record");
            last_start = next;
        }
        let (_, last_end) = read_record(&full, last_start).expect("last record");
        for cut in last_start..last_end {
            let case = temp_dir();
            fs::write(case.join(file.file_name().expect("name")), &full[..cut]).expect("write");
            let (_, thread, recovered) = open(&case, 1 << 20);
            assert_eq!(recovered.len(), 2, "cut at {cut}");
            thread.stop();
        }
    }

    #[test]
    fn a_corrupt_record_in_the_middle_ends_its_segment_without_failing_recovery() {
        let dir = temp_dir();
        let (wal, thread, _) = open(&dir, 1 << 20);
        append_all(&wal, &[record(1), record(2), record(3)]);
        thread.stop();
        let file = segment_files(&dir).pop().expect("one segment");
        let mut data = fs::read(&file).expect("read");
        let (_, second_start) = read_record(&data, MAGIC.len()).expect("first record");
        data[second_start + FRAME_HEADER + 10] ^= 0xFF;
        fs::write(&file, &data).expect("write");

        let (_, thread, recovered) = open(&dir, 1 << 20);
        assert_eq!(recovered.len(), 1);
        assert_eq!(fs::metadata(&file).expect("meta").len(), second_start as u64);
        thread.stop();
    }

    #[test]
    fn segments_rotate_and_are_deleted_only_once_every_record_is_committed() {
        let dir = temp_dir();
        let (wal, thread, _) = open(&dir, 200);
        let seqs = append_all(&wal, &(0..6).map(record).collect::<Vec<_>>());
        assert!(segment_files(&dir).len() >= 2, "rotation happened: {:?}", segment_files(&dir));

        wal.committed(seqs[..5].to_vec());
        thread.stop();
        let (_, thread, recovered) = open(&dir, 200);
        // The first segment (1..=3) is gone; the second still holds an
        // uncommitted record, so all of it is replayed (inserts are idempotent).
        assert_eq!(recovered.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5, 6]);
        thread.stop();
    }

    #[test]
    fn records_still_in_the_log_are_read_back_by_sequence_number_across_segments() {
        let dir = temp_dir();
        let (wal, thread, _) = open(&dir, 200);
        let written: Vec<WalRecord> = (0..6).map(record).collect();
        let seqs = append_all(&wal, &written);
        assert!(segment_files(&dir).len() >= 2, "rotation happened: {:?}", segment_files(&dir));
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");

        let read = runtime.block_on(wal.read_back(vec![seqs[4], seqs[0], seqs[2]])).expect("read back");

        assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![seqs[0], seqs[2], seqs[4]]);
        let records: Vec<WalRecord> = read.into_iter().map(|r| r.record).collect();
        assert_eq!(records, vec![written[0].clone(), written[2].clone(), written[4].clone()]);
        thread.stop();
    }

    #[test]
    fn everything_committed_leaves_no_records_to_replay() {
        let dir = temp_dir();
        let (wal, thread, _) = open(&dir, 1 << 20);
        let seqs = append_all(&wal, &[record(1), record(2)]);
        wal.committed(seqs);
        thread.stop();
        let (wal, thread, recovered) = open(&dir, 1 << 20);
        assert!(recovered.is_empty());
        assert_eq!(segment_files(&dir).len(), 1, "only the new active segment");
        assert_eq!(wal.bytes_on_disk(), MAGIC.len() as u64);
        thread.stop();
    }

    #[test]
    fn a_full_log_refuses_appends() {
        let dir = temp_dir();
        let (wal, thread, _) = Wal::<()>::open(&dir, 1 << 20, 50, Arc::new(Metrics::new()), None).expect("opens");
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(wal.append(record(1), None)).expect("first fits");
        let refused = runtime.block_on(wal.append(record(2), None));
        assert!(matches!(refused, Err(WalError::Full(_))), "{refused:?}");
        thread.stop();
    }

    #[test]
    fn a_file_that_is_not_a_segment_is_emptied_not_trusted() {
        let dir = temp_dir();
        fs::write(dir.join(segment_name(7)), b"garbage that is not a WAL").expect("write");
        let (wal, thread, recovered) = open(&dir, 1 << 20);
        assert!(recovered.is_empty());
        assert_eq!(append_all(&wal, &[record(1)]), vec![7]);
        thread.stop();
    }

    proptest::proptest! {
        /// Whatever a crash or a bad disk leaves in a segment, recovery
        /// neither panics nor fails, and every record before the damage
        /// survives. `PROPTEST_CASES=100000 cargo test --release --lib wal::`
        /// runs it longer.
        #[test]
        fn recovery_survives_any_damage_and_keeps_the_records_before_it(
            records in 1usize..6,
            damage in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..6),
            cut in proptest::option::of(proptest::prelude::any::<usize>()),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let dir = temp_dir();
            let (wal, thread, _) = open(&dir, 1 << 20);
            append_all(&wal, &(0..records as u8).map(record).collect::<Vec<_>>());
            thread.stop();
            let file = segment_files(&dir).pop().expect("one segment");
            let mut data = fs::read(&file).expect("read");
            let mut first_damage = data.len();
            for (position, value) in &damage {
                let at = position % data.len();
                if data[at] != *value {
                    data[at] = *value;
                    first_damage = first_damage.min(at);
                }
            }
            if let Some(cut) = cut {
                let at = cut % (data.len() + 1);
                data.truncate(at);
                first_damage = first_damage.min(at);
            }
            data.extend_from_slice(&tail);
            fs::write(&file, &data).expect("write");

            let (_, thread, recovered) = open(&dir, 1 << 20);
            thread.stop();

            let mut intact = 0;
            let mut offset = MAGIC.len();
            if first_damage >= MAGIC.len() {
                let original = &data[..first_damage];
                while let Ok((_, next)) = read_record(original, offset) {
                    intact += 1;
                    offset = next;
                }
            }
            proptest::prop_assert!(recovered.len() >= intact, "{} recovered, {} intact", recovered.len(), intact);
            let _ = fs::remove_dir_all(&dir);
        }
    }
}
