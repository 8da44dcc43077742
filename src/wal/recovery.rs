//! Reading the log back at start: every segment, in order of sequence
//! number. A record header of zeros ends a segment cleanly; the first record
//! that is not whole and intact ends it too, and the file is truncated there.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::record::{is_zero_fill, read_record, Recovered};
use super::segment::{first_seq_of, Segment, MAGIC};
use crate::metrics::Metrics;

/// What recovery found on disk.
pub(super) struct Recovery {
    /// The records not known to be committed, in order.
    pub(super) records: Vec<Recovered>,
    /// Every segment by first sequence number, with its records counted uncommitted.
    pub(super) segments: Vec<(u64, Segment)>,
    /// The sequence number of the next record appended.
    pub(super) next_seq: u64,
}

/// Reads every segment of `dir` back, in order, truncating each at its
/// first bad record.
pub(super) fn recover(dir: &Path, metrics: &Metrics) -> io::Result<Recovery> {
    let mut names: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(first_seq) = first_seq_of(&path) {
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
    use crate::wal::record::FRAME_HEADER;
    use crate::wal::segment::segment_name;
    use crate::wal::tests::{append_all, open, record, segment_files, temp_dir};
    use crate::wal::Wal;
    use std::sync::Arc;

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
