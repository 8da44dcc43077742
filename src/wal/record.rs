//! The record format: one ticket framed as payload length, CRC32C of the
//! payload and the payload (laid out in the docs of [`crate::wal`]),
//! encoded into the appender's buffer and read back, checked, from a
//! segment at start or for [`crate::wal::Wal::read_back`].

use bytes::Bytes;
use time::OffsetDateTime;
use uuid::Uuid;

pub(super) const FRAME_HEADER: usize = 8;
const FIXED_PAYLOAD: usize = 8 + 16 + 8 + 2;
const NO_KEY: u16 = u16::MAX;
/// No record is larger: bodies are limited far below this.
const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

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

/// Appends one framed record to `buffer`.
pub(super) fn encode(buffer: &mut Vec<u8>, seq: u64, record: &WalRecord) {
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

/// A record header of zeros: nothing was ever written from here on.
pub(super) fn is_zero_fill(rest: &[u8]) -> bool {
    rest.iter().take(FRAME_HEADER).all(|&byte| byte == 0)
}

/// Reads the framed record at `offset` of `data`; returns it with the
/// offset of the next one, or why it is not a record.
pub(super) fn read_record(data: &[u8], offset: usize) -> Result<(Recovered, usize), &'static str> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::tests::{append_all, open, record, temp_dir};

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
}
