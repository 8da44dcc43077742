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
//!
//! # Layout
//!
//! - `mod.rs`: the handle ([`Wal`]), what an append hands on ([`Logged`])
//!   and how a group's answers reach the appends waiting (`deliver`)
//! - `record.rs`: a record's frame and payload: encode, decode, CRC check
//! - `segment.rs`: a segment file: its name, its header, the zeros ahead
//! - `appender.rs`: the appender thread: group commit, rotation, deletion
//!   once committed, read-back, a failing disk tried again
//! - `recovery.rs`: every segment read back at start, torn tails truncated

mod appender;
mod record;
mod recovery;
mod segment;

use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use tokio::sync::oneshot;

pub use appender::RETRY_EVERY;
pub use record::{Recovered, WalRecord};

use crate::metrics::Metrics;
use appender::Appender;
use recovery::recover;

/// What the log hands on once its record is durable (to the queue given to
/// [`Wal::open`]), told the record's sequence number first.
pub trait Logged: Send + 'static {
    fn logged_as(&mut self, seq: u64);
}

/// A log whose appends hand nothing on (tools and tests).
impl Logged for () {
    fn logged_as(&mut self, _seq: u64) {}
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
        let mut appender = Appender::new(
            dir,
            segment_bytes,
            Arc::clone(&bytes_on_disk),
            metrics,
            recovery.next_seq,
            queue,
            Arc::clone(&failure),
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::path::PathBuf;
    use time::OffsetDateTime;
    use uuid::Uuid;

    // Shared by the tests of every file of the log.

    pub(super) fn record(n: u8) -> WalRecord {
        WalRecord {
            id: Uuid::now_v7(),
            received_at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789 + i128::from(n))
                .expect("valid time"),
            idempotency_key: (n % 2 == 0).then(|| format!("key-{n}")),
            raw: Bytes::from(format!("Order: {n}\n\nproduct,product_id,price\nCafé,c,2\n")),
        }
    }

    pub(super) fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wal-test-{}", Uuid::now_v7().simple()));
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    pub(super) fn open(dir: &Path, segment_bytes: u64) -> (Wal<()>, WalThread<()>, Vec<Recovered>) {
        Wal::open(dir, segment_bytes, u64::MAX, Arc::new(Metrics::new()), None).expect("wal opens")
    }

    pub(super) fn append_all(wal: &Wal<()>, records: &[WalRecord]) -> Vec<u64> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        records.iter().map(|record| runtime.block_on(wal.append(record.clone(), None)).expect("append")).collect()
    }

    pub(super) fn segment_files(dir: &Path) -> Vec<PathBuf> {
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
    fn a_full_log_refuses_appends() {
        let dir = temp_dir();
        let (wal, thread, _) = Wal::<()>::open(&dir, 1 << 20, 50, Arc::new(Metrics::new()), None).expect("opens");
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(wal.append(record(1), None)).expect("first fits");
        let refused = runtime.block_on(wal.append(record(2), None));
        assert!(matches!(refused, Err(WalError::Full(_))), "{refused:?}");
        thread.stop();
    }
}
