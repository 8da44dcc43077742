//! A segment file: named after the sequence number of its first record,
//! it starts with a magic header, then holds records back to back, then the
//! zeros written ahead of them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The first 8 bytes of every segment.
pub(super) const MAGIC: &[u8; 8] = b"TIWAL\0\0\x01";
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// A segment file and how many of its records still wait for a commit.
pub(super) struct Segment {
    pub(super) path: PathBuf,
    /// Where its records end: the header and every record written.
    pub(super) bytes: u64,
    pub(super) uncommitted: u64,
}

/// Fills `[from, to)` of `file` with zeros; returns where the zeros end.
pub(super) fn zero_ahead(file: &File, from: u64, to: u64) -> io::Result<u64> {
    let mut at = from;
    while at < to {
        let chunk = (to - at).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..chunk as usize], at)?;
        at += chunk;
    }
    Ok(at.max(from))
}

/// The file name of the segment whose first record is `first_seq`.
pub(super) fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

/// The first sequence number a segment's file name stands for; `None`
/// for a file that is not a segment.
pub(super) fn first_seq_of(path: &Path) -> Option<u64> {
    path.file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_suffix(".wal"))
        .and_then(|stem| stem.parse::<u64>().ok())
}

/// `fsync`s a directory, so that the files created or deleted in it are.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
