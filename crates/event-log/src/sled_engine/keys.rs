//! The layout of keys and values in the log's single sled tree, and their
//! checked decoding (a malformed entry is a [`LogError::Corrupt`], never a
//! panic).
//!
//! | key                                  | value                                            |
//! |--------------------------------------|--------------------------------------------------|
//! | `L` position                         | packed records from that position, each linked to its stream's record before it (`rows`), or, in logs written before 2026-12-06, one record: stream, version (top bit set), CRC-32, payload |
//! | `F` first stream id of a run         | the positions of the first records of the run's streams |
//! | `T` stream                           | its last version and the position of its last record |
//! | `S` stream version                   | position, in logs written before 2026-12-06: no longer written |
//! | `I` idempotency key (UTF-8)          | stream, first/last version, first/last position, fingerprint |
//! | `Mstreams`                           | how many streams there are                       |
//! | `V` stream (logs written before 2026-12) | last version, no longer written              |
//! | `Mnext_stream` (likewise)            | the next stream id, no longer written            |
//!
//! Stream ids are handed out from 1 without gaps, so new streams form runs of consecutive ids,
//! and the positions of their first records are written as one `F` row per run, keyed by its
//! first id (a group's run holds up to 256; the next group extends the last run, rewriting its
//! row, while it holds fewer than 64): the `F` row at or below an id, if the id falls in its
//! run, gives the stream's first record. Every append that leaves its stream at a version an
//! `F` row does not tell (a later version, or the first of a stream restored out of order)
//! rewrites the stream's `T` row; each record links to the stream's record before it, so a
//! stream is read from its `T` row back along the links. A stream's version is its `T` row,
//! else 1 if an `F` row places its first record.
//!
//! So a group of creates writes its records (packed several to a row, see `rows`) and rewrites
//! one `F` row, and an update rewrites its stream's `T` row. Every event used to add two rows:
//! a row per event was most of the log writer's time in sled (`apply_batch`) and of the memory
//! sled keeps for the pages it wrote, which grows with every key a tree ever held.
//!
//! Logs written before 2026-12-06 hold an `S` row for every record no `F` row places: the
//! later versions of every stream, the first records of streams started before 2026-12-05
//! (when every record had one), and those of streams restored out of order. Their streams
//! are read from the `S` rows, and where a stream's links reach one of their records (a row of
//! one record, which has no link), the rest of it is read from its `S` rows.
//!
//! `Mstreams` is rewritten by each batch that starts a stream. A log without it (written before
//! 2026-12-05) counts its streams as its highest id, from `S`, `V` and `Mnext_stream`.
//!
//! All integers are big-endian `u64`, so sled's byte order is numeric order.
//!
//! A record's CRC-32 covers the key of its position, its stream and version and its payload, so
//! a flipped bit in any of them (or a record under another position) is found when it is read, and refused as
//! [`LogError::Damaged`] rather than returned: sled checks its own framing, not every byte a
//! damaged file can hold. Records written before the checksum (top bit of the version clear)
//! are still read, unchecked.

use crate::{Appended, LogError, Position, StreamId, Version};

/// Prefix of the records, by position.
pub(crate) const LOG: u8 = b'L';
/// Prefix of the runs of streams' first records, by their first stream id.
pub(crate) const FIRST: u8 = b'F';
/// Prefix of the per-stream index, by stream and version.
pub(crate) const STREAM: u8 = b'S';
/// Prefix of each stream's last version, in logs written before 2026-12.
pub(crate) const VERSION: u8 = b'V';
/// Prefix of each stream's tail: its last version and the position of its last record.
pub(crate) const TAIL: u8 = b'T';
/// Prefix of the idempotency keys.
pub(crate) const IDEMPOTENCY: u8 = b'I';
/// The persisted stream-id counter of logs written before 2026-12.
pub(crate) const NEXT_STREAM: &[u8] = b"Mnext_stream";
/// The number of streams.
pub(crate) const STREAM_COUNT: &[u8] = b"Mstreams";

const IDEMPOTENCY_VALUE_LEN: usize = 5 * 8 + 32;

pub(crate) fn log_key(position: Position) -> [u8; 9] {
    prefixed(LOG, position)
}

pub(crate) fn stream_prefix(stream: StreamId) -> [u8; 9] {
    prefixed(STREAM, stream)
}

/// The key of the `F` row of the run of streams from `first`.
pub(crate) fn first_key(first: StreamId) -> [u8; 9] {
    prefixed(FIRST, first)
}

/// The value of an `F` row: the positions, in the order of the run's ids.
pub(crate) fn first_value(positions: &[Position]) -> Vec<u8> {
    positions.iter().flat_map(|p| p.to_be_bytes()).collect()
}

/// The first stream id of an `F` key.
pub(crate) fn decode_first_key(key: &[u8]) -> Result<StreamId, LogError> {
    if key.len() != 9 || key[0] != FIRST {
        return Err(corrupt(key, "not a first-records key"));
    }
    u64_at(key, 1, key, "not a first-records key")
}

/// How many streams the `F` row under `key` places.
pub(crate) fn first_value_len(key: &[u8], value: &[u8]) -> Result<u64, LogError> {
    if value.is_empty() || !value.len().is_multiple_of(8) {
        return Err(corrupt(
            key,
            "first-records value is not a list of positions",
        ));
    }
    Ok((value.len() / 8) as u64)
}

/// The position of the `index`-th stream of the run whose `F` row is `key`, `value`.
pub(crate) fn first_position_at(
    key: &[u8],
    value: &[u8],
    index: u64,
) -> Result<Option<Position>, LogError> {
    if index >= first_value_len(key, value)? {
        return Ok(None);
    }
    let at = usize::try_from(index * 8).map_err(|_| corrupt(key, "run too long"))?;
    u64_at(
        value,
        at,
        key,
        "first-records value is not a list of positions",
    )
    .map(Some)
}

pub(crate) fn stream_key(stream: StreamId, version: Version) -> [u8; 17] {
    let mut key = [0; 17];
    key[0] = STREAM;
    key[1..9].copy_from_slice(&stream.to_be_bytes());
    key[9..].copy_from_slice(&version.to_be_bytes());
    key
}

/// The key of `stream`'s tail row.
pub(crate) fn tail_key(stream: StreamId) -> [u8; 9] {
    prefixed(TAIL, stream)
}

/// A tail row's value: the stream's last version and its last record's position.
pub(crate) fn tail_value(version: Version, position: Position) -> [u8; 16] {
    let mut value = [0; 16];
    value[..8].copy_from_slice(&version.to_be_bytes());
    value[8..].copy_from_slice(&position.to_be_bytes());
    value
}

/// The last version and position in the tail row `key`, `value`.
pub(crate) fn decode_tail_value(key: &[u8], value: &[u8]) -> Result<(Version, Position), LogError> {
    const WHAT: &str = "tail value is not 16 bytes";
    if value.len() != 16 {
        return Err(corrupt(key, WHAT));
    }
    Ok((u64_at(value, 0, key, WHAT)?, u64_at(value, 8, key, WHAT)?))
}

/// The stream id in a `T` key.
pub(crate) fn decode_tail_key(key: &[u8]) -> Result<StreamId, LogError> {
    if key.len() != 9 || key[0] != TAIL {
        return Err(corrupt(key, "not a tail key"));
    }
    u64_at(key, 1, key, "not a tail key")
}

#[cfg(test)]
pub(crate) fn version_key(stream: StreamId) -> [u8; 9] {
    prefixed(VERSION, stream)
}

pub(crate) fn idempotency_key(key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len());
    out.push(IDEMPOTENCY);
    out.extend_from_slice(key.as_bytes());
    out
}

fn prefixed(prefix: u8, n: u64) -> [u8; 9] {
    let mut key = [0; 9];
    key[0] = prefix;
    key[1..].copy_from_slice(&n.to_be_bytes());
    key
}

/// The top bit of a record's stored version: a CRC-32 follows the version.
const CHECKSUMMED: u64 = 1 << 63;

/// A record's value under `key` in a row of its own (as logs written before 2026-12-06 stored
/// every record): stream, version (marked), the CRC-32, the payload.
#[cfg(test)]
pub(crate) fn log_value(key: &[u8], stream: StreamId, version: Version, payload: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(20 + payload.len());
    value.extend_from_slice(&stream.to_be_bytes());
    value.extend_from_slice(&(version | CHECKSUMMED).to_be_bytes());
    value.extend_from_slice(&record_checksum(key, &value[..16], payload).to_be_bytes());
    value.extend_from_slice(payload);
    value
}

/// The CRC-32 of a record: its key, its stream and version, its payload.
pub(crate) fn record_checksum(key: &[u8], header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

pub(crate) fn idempotency_value(
    appended: &Appended,
    fingerprint: &[u8; 32],
) -> [u8; IDEMPOTENCY_VALUE_LEN] {
    let mut value = [0; IDEMPOTENCY_VALUE_LEN];
    let fields = [
        appended.stream,
        appended.first_version,
        appended.last_version,
        appended.first_position,
        appended.last_position,
    ];
    for (slot, field) in value.chunks_exact_mut(8).zip(fields) {
        slot.copy_from_slice(&field.to_be_bytes());
    }
    value[40..].copy_from_slice(fingerprint);
    value
}

/// Reads the big-endian `u64` at `at`, or reports `key` as corrupt.
fn u64_at(bytes: &[u8], at: usize, key: &[u8], what: &str) -> Result<u64, LogError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(key, what))
}

pub(crate) fn corrupt(key: &[u8], what: &str) -> LogError {
    LogError::Corrupt(format!("{}: {what}", describe(key)))
}

/// The position in an `L` key.
pub(crate) fn decode_log_key(key: &[u8]) -> Result<Position, LogError> {
    if key.len() != 9 || key[0] != LOG {
        return Err(corrupt(key, "not a record key"));
    }
    u64_at(key, 1, key, "not a record key")
}

/// The stream, version and payload in an `L` value.
pub(crate) fn decode_log_value<'v>(
    key: &[u8],
    value: &'v [u8],
) -> Result<(StreamId, Version, &'v [u8]), LogError> {
    let stream = u64_at(value, 0, key, "record value shorter than 16 bytes")?;
    let version = u64_at(value, 8, key, "record value shorter than 16 bytes")?;
    if version & CHECKSUMMED == 0 {
        return Ok((stream, version, &value[16..]));
    }
    let (Some(stored), Some(payload)) = (value.get(16..20), value.get(20..)) else {
        return Err(corrupt(
            key,
            "checksummed record value shorter than 20 bytes",
        ));
    };
    let stored = u32::from_be_bytes([stored[0], stored[1], stored[2], stored[3]]);
    if record_checksum(key, &value[..16], payload) != stored {
        return Err(LogError::Damaged(format!(
            "the record at {} fails its checksum",
            describe(key)
        )));
    }
    Ok((stream, version & !CHECKSUMMED, payload))
}

/// The version in an `S` key.
pub(crate) fn decode_stream_key_version(key: &[u8]) -> Result<Version, LogError> {
    if key.len() != 17 || key[0] != STREAM {
        return Err(corrupt(key, "not a stream index key"));
    }
    u64_at(key, 9, key, "not a stream index key")
}

/// The stream id in an `S` key.
pub(crate) fn decode_stream_key_stream(key: &[u8]) -> Result<StreamId, LogError> {
    if key.len() != 17 || key[0] != STREAM {
        return Err(corrupt(key, "not a stream index key"));
    }
    u64_at(key, 1, key, "not a stream index key")
}

/// The stream id in a `V` key.
pub(crate) fn decode_version_key(key: &[u8]) -> Result<StreamId, LogError> {
    if key.len() != 9 || key[0] != VERSION {
        return Err(corrupt(key, "not a stream version key"));
    }
    u64_at(key, 1, key, "not a stream version key")
}

/// A value that is exactly one `u64` (`S`, `V` and `M` values).
pub(crate) fn decode_u64_value(key: &[u8], value: &[u8]) -> Result<u64, LogError> {
    if value.len() != 8 {
        return Err(corrupt(key, "value is not 8 bytes"));
    }
    u64_at(value, 0, key, "value is not 8 bytes")
}

/// The original result and fingerprint in an `I` value.
pub(crate) fn decode_idempotency_value(
    key: &[u8],
    value: &[u8],
) -> Result<(Appended, [u8; 32]), LogError> {
    const WHAT: &str = "idempotency value is not 72 bytes";
    if value.len() != IDEMPOTENCY_VALUE_LEN {
        return Err(corrupt(key, WHAT));
    }
    let field = |i: usize| u64_at(value, i * 8, key, WHAT);
    let appended = Appended {
        stream: field(0)?,
        first_version: field(1)?,
        last_version: field(2)?,
        first_position: field(3)?,
        last_position: field(4)?,
        duplicate: true,
    };
    let fingerprint = value[40..].try_into().map_err(|_| corrupt(key, WHAT))?;
    Ok((appended, fingerprint))
}

/// A readable name for a key, for error messages: `L/42`, `F/40`, `S/3/7`, `V/3`, `T/3`,
/// `I/"key"`, `M/next_stream`, `M/streams`, or hex for anything else.
pub(crate) fn describe(key: &[u8]) -> String {
    let n = |at: usize| {
        key.get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    };
    match (key.first(), key.len()) {
        (Some(&LOG), 9) => format!("L/{}", n(1).unwrap_or_default()),
        (Some(&FIRST), 9) => format!("F/{}", n(1).unwrap_or_default()),
        (Some(&VERSION), 9) => format!("V/{}", n(1).unwrap_or_default()),
        (Some(&TAIL), 9) => format!("T/{}", n(1).unwrap_or_default()),
        (Some(&STREAM), 17) => format!(
            "S/{}/{}",
            n(1).unwrap_or_default(),
            n(9).unwrap_or_default()
        ),
        (Some(&IDEMPOTENCY), _) => format!("I/{:?}", String::from_utf8_lossy(&key[1..])),
        _ if key == NEXT_STREAM => "M/next_stream".to_string(),
        _ if key == STREAM_COUNT => "M/streams".to_string(),
        _ => key.iter().map(|b| format!("{b:02x}")).collect(),
    }
}
