//! The `L` rows that hold the records: since 2026-12-06 a group's records are packed several to
//! a row ([`Pack`]), keyed by the position of the row's first record; a row written before holds
//! one record. [`RowRecords`] reads either kind back, checking each record it returns.
//!
//! A packed value is the mark [`PACKED`] (eight `0xff` bytes, which no stream id is: ids are
//! handed out from 1 without gaps) followed by its records, each `stream`, `version`, `link`
//! (the position of the stream's record before it, 0 for none), CRC-32, payload length (`u32`)
//! and payload. A record's CRC-32 covers the key of its position, its stream, version and link
//! and its payload, so a flipped bit in a pack is found in the record it hit; a flipped length
//! makes the walk fail its next checksum or run off the row, which is refused as well.
//!
//! Why packs: sled's cost is per row. With one row per record, a group of 64 appends spent
//! most of its `apply_batch` on 64 inserts, and sled kept the state of every page they made
//! in memory; one row per 6 KiB of records wrote 1.5 to 2 times as many records a second with
//! a flush per 64 (a sled program of the log's layout), and about seven times fewer rows to
//! keep track of.
//!
//! Why 6 KiB: sled writes a leaf (up to 17 rows before it splits) larger than a quarter of its
//! 512 KiB segment as a blob file of its own, which it does not fsync. Rows of 12 KiB made such
//! blobs in the same program; rows of 6 KiB, at most 17 x 6 KiB a leaf, cannot.

use super::keys;
use crate::{LogError, Position, StreamId, Version};

/// The first eight bytes of a packed row's value.
const PACKED: [u8; 8] = [0xff; 8];

/// The most bytes of records a row is filled to before the next record starts a row of its
/// own (a record larger than this has a row to itself).
pub(crate) const PACK_BYTES: usize = 6 * 1024;

/// A packed record's header: stream, version and link, as its checksum covers them.
const HEADER_BYTES: usize = 8 + 8 + 8;

/// A record's bytes in a pack besides its payload: the header, CRC-32, payload length.
const FRAME_BYTES: usize = HEADER_BYTES + 4 + 4;

fn header(stream: StreamId, version: Version, link: Position) -> [u8; HEADER_BYTES] {
    let mut header = [0; HEADER_BYTES];
    header[..8].copy_from_slice(&stream.to_be_bytes());
    header[8..16].copy_from_slice(&version.to_be_bytes());
    header[16..].copy_from_slice(&link.to_be_bytes());
    header
}

/// The big-endian number in `bytes` (at most eight of them).
fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |n, b| (n << 8) | u64::from(*b))
}

/// The records of one row being filled, from `first`.
#[derive(Debug)]
pub(crate) struct Pack {
    first: Position,
    count: u64,
    value: Vec<u8>,
}

impl Pack {
    /// An empty pack whose first record will be at `first`.
    pub(crate) fn new(first: Position) -> Pack {
        let mut value = Vec::with_capacity(PACK_BYTES + FRAME_BYTES);
        value.extend_from_slice(&PACKED);
        Pack {
            first,
            count: 0,
            value,
        }
    }

    /// The position the next record gets.
    pub(crate) fn next_position(&self) -> Position {
        self.first + self.count
    }

    /// Whether a record of `payload_len` bytes belongs in a row of its own after this one.
    pub(crate) fn is_full_for(&self, payload_len: usize) -> bool {
        self.count > 0 && self.value.len() + FRAME_BYTES + payload_len > PACK_BYTES
    }

    /// Adds the record at [`Pack::next_position`], linked to its stream's record at `link`
    /// (0: none, the stream's first record).
    pub(crate) fn push(
        &mut self,
        stream: StreamId,
        version: Version,
        link: Position,
        payload: &[u8],
    ) {
        let key = keys::log_key(self.next_position());
        let header = header(stream, version, link);
        let crc = keys::record_checksum(&key, &header, payload);
        self.value.extend_from_slice(&header);
        self.value.extend_from_slice(&crc.to_be_bytes());
        // A payload over 4 GiB cannot reach the log: appends are far smaller (the service's
        // limits), and sled keeps a value's length in a u64 it reads back into memory whole.
        self.value
            .extend_from_slice(&(payload.len() as u32).to_be_bytes());
        self.value.extend_from_slice(payload);
        self.count += 1;
    }

    /// The row: its key and value.
    pub(crate) fn into_row(self) -> ([u8; 9], Vec<u8>) {
        (keys::log_key(self.first), self.value)
    }
}

/// One record read from a row.
#[derive(Debug)]
pub(crate) struct RowRecord<'v> {
    pub(crate) position: Position,
    pub(crate) stream: StreamId,
    pub(crate) version: Version,
    /// The position of the stream's record before it (0: none); `None` for a row of one record,
    /// written before records were linked.
    pub(crate) link: Option<Position>,
    pub(crate) payload: &'v [u8],
}

/// A packed record as stored: its header, stored CRC-32 and payload, and where the next record
/// starts.
struct Frame<'v> {
    header: &'v [u8],
    crc: u32,
    payload: &'v [u8],
    next_at: usize,
}

/// The records of one `L` row, in position order, each checked against its checksum as it is
/// returned (and only then: [`RowRecords::skip_to`] passes over the ones before it unchecked).
pub(crate) struct RowRecords<'v> {
    key: &'v [u8],
    value: &'v [u8],
    /// Where the next record starts in a pack; `None` for a row of one record.
    at: Option<usize>,
    next: Position,
    done: bool,
}

impl<'v> RowRecords<'v> {
    /// The records of the row `key`, `value`.
    pub(crate) fn new(key: &'v [u8], value: &'v [u8]) -> Result<RowRecords<'v>, LogError> {
        let first = keys::decode_log_key(key)?;
        let packed = value.starts_with(&PACKED);
        if packed && value.len() == PACKED.len() {
            return Err(keys::corrupt(key, "packed row holds no record"));
        }
        Ok(RowRecords {
            key,
            value,
            at: packed.then_some(PACKED.len()),
            next: first,
            done: false,
        })
    }

    /// The record's frame at `at` in a pack.
    fn frame(&self, at: usize) -> Result<Frame<'v>, LogError> {
        let cut_short = || keys::corrupt(self.key, "packed record cut short");
        let frame = self.value.get(at..at + FRAME_BYTES).ok_or_else(cut_short)?;
        let crc = be(&frame[HEADER_BYTES..HEADER_BYTES + 4]) as u32;
        let len = usize::try_from(be(&frame[HEADER_BYTES + 4..])).map_err(|_| cut_short())?;
        let start = at + FRAME_BYTES;
        let payload = self.value.get(start..start + len).ok_or_else(cut_short)?;
        Ok(Frame {
            header: &frame[..HEADER_BYTES],
            crc,
            payload,
            next_at: start + len,
        })
    }

    /// Passes over the records before `position` without checking them; false when the row
    /// ends before it.
    pub(crate) fn skip_to(&mut self, position: Position) -> Result<bool, LogError> {
        while !self.done && self.next < position {
            match self.at {
                None => {
                    self.next += 1;
                    self.done = true;
                }
                Some(at) => {
                    let next_at = self.frame(at)?.next_at;
                    self.advance(next_at);
                }
            }
        }
        Ok(!self.done)
    }

    fn advance(&mut self, next_at: usize) {
        self.next += 1;
        self.at = Some(next_at);
        self.done = next_at == self.value.len();
    }

    /// The position of the record [`Iterator::next`] returns next (one past the row's last
    /// once it has returned them all).
    pub(crate) fn next_position(&self) -> Position {
        self.next
    }

    /// The position of the row's last record (walking the pack's frames, unchecked).
    pub(crate) fn last_position(mut self) -> Result<Position, LogError> {
        self.skip_to(Position::MAX)?;
        Ok(self.next - 1)
    }
}

impl<'v> Iterator for RowRecords<'v> {
    type Item = Result<RowRecord<'v>, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let position = self.next;
        let Some(at) = self.at else {
            self.next += 1;
            self.done = true;
            return Some(keys::decode_log_value(self.key, self.value).map(
                |(stream, version, payload)| RowRecord {
                    position,
                    stream,
                    version,
                    link: None,
                    payload,
                },
            ));
        };
        let checked = self.frame(at).and_then(|frame| {
            let Frame {
                header,
                crc,
                payload,
                next_at,
            } = frame;
            let key = keys::log_key(position);
            if keys::record_checksum(&key, header, payload) != crc {
                return Err(LogError::Damaged(format!(
                    "the record at {} (in the row {}) fails its checksum",
                    keys::describe(&key),
                    keys::describe(self.key)
                )));
            }
            self.advance(next_at);
            Ok(RowRecord {
                position,
                stream: be(&header[..8]),
                version: be(&header[8..16]),
                link: Some(be(&header[16..])),
                payload,
            })
        });
        if checked.is_err() {
            self.done = true;
        }
        Some(checked)
    }
}

/// The row of `tree` that holds the record at `position`, if any: the `L` row at or below it.
pub(crate) fn row_at_or_below(
    tree: &sled::Tree,
    position: Position,
) -> Result<Option<(sled::IVec, sled::IVec)>, LogError> {
    tree.range(keys::log_key(0)..=keys::log_key(position))
        .next_back()
        .transpose()
        .map_err(crate::error::storage)
}

/// A record read on its own: stream, version, link (see [`RowRecord`]), payload.
pub(crate) struct OwnedRecord {
    pub(crate) stream: StreamId,
    pub(crate) version: Version,
    pub(crate) link: Option<Position>,
    pub(crate) payload: Vec<u8>,
}

/// The record at `position` in `tree`, checked; `None` when no row holds it.
pub(crate) fn record_at(
    tree: &sled::Tree,
    position: Position,
) -> Result<Option<OwnedRecord>, LogError> {
    let Some((key, value)) = row_at_or_below(tree, position)? else {
        return Ok(None);
    };
    let mut records = RowRecords::new(&key, &value)?;
    if !records.skip_to(position)? {
        return Ok(None);
    }
    records.next().transpose().map(|record| {
        record.map(|record| OwnedRecord {
            stream: record.stream,
            version: record.version,
            link: record.link,
            payload: record.payload.to_vec(),
        })
    })
}
