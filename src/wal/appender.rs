//! The appender thread, which owns the segment files: it takes every record
//! pending, writes the group with one `write` and one `fdatasync`, hands
//! each job on and answers the group; it rotates a full segment, deletes a
//! sealed one once all its records are committed, reads records back on
//! demand, and tries a failing disk again.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::record::{encode, is_zero_fill, read_record, Recovered};
use super::segment::{segment_name, sync_dir, zero_ahead, Segment, MAGIC};
use super::{deliver, Leftover, Logged, Message, Reply, WalError};
use crate::metrics::Metrics;

/// A group stops growing past this many bytes, so one write stays bounded.
const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;
/// How far ahead of the records the active segment is filled with zeros.
/// Overwriting blocks that already exist lets `fdatasync` flush the data
/// alone; appending would also flush the file size every time.
const ZERO_AHEAD: u64 = 1024 * 1024;
/// How often a failing disk is tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A record written to the file, waiting for its `fdatasync`.
struct Pending<J> {
    seq: u64,
    /// Queued once the record is durable.
    job: Option<J>,
    reply: Reply,
}

pub(super) struct Appender<J> {
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
    /// Shared with [`crate::wal::Wal::failure`].
    failure: Arc<Mutex<Option<String>>>,
    /// While the disk fails and no segment is usable: when to try again.
    retry_at: Option<Instant>,
}

impl<J: Logged> Appender<J> {
    pub(super) fn new(
        dir: &Path,
        segment_bytes: u64,
        bytes_on_disk: Arc<AtomicU64>,
        metrics: Arc<Metrics>,
        next_seq: u64,
        queue: Option<Sender<J>>,
        failure: Arc<Mutex<Option<String>>>,
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
            queue,
            failure,
            retry_at: None,
        }
    }

    pub(super) fn adopt(&mut self, first_seq: u64, segment: Segment) {
        self.bytes_on_disk.fetch_add(segment.bytes, Ordering::Relaxed);
        self.metrics.wal_records.inc_by(segment.uncommitted as i64);
        self.segments.insert(first_seq, segment);
    }

    pub(super) fn run(mut self, receiver: Receiver<Message<J>>) -> Leftover {
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
    pub(super) fn open_active_segment(&mut self) -> io::Result<()> {
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
    pub(super) fn delete_committed_segments(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::tests::{append_all, open, record, segment_files, temp_dir};
    use crate::wal::WalRecord;
    use bytes::Bytes;

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
}
