//! A position recorded durably in a small file, rewritten in place (its one home): the log's
//! durable head and the outbox's checkpoint, each written about once a second while work goes
//! on.
//!
//! The file holds two slots of [`SLOT`] bytes, written in turn, each a line of text: the
//! position (20 digits), a space, the CRC-32 of the digits (8 hex digits), padding. A write
//! is one `pwrite` of one slot and one `fdatasync`; a write torn by a crash spoils only the slot
//! it was writing, and the other still holds the position before it. Reading takes the highest
//! position of a slot whose checksum holds.
//!
//! It replaced a new file per write (a temporary file, fsync, rename, fsync of the directory).
//! On ext4 without a journal, creating a file scans for an inode not recently deleted; where
//! many files had been deleted (a machine running tests) that took tens of milliseconds of
//! CPU per write, and the gateway bench measured the outbox's checkpoint at 17% of a core while
//! creates ran (perf, 2026-12-05). A file written by that older code, a bare number, still reads.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::Position;

/// The bytes of one slot.
const SLOT: usize = 32;
/// The digits of a position in a slot.
const DIGITS: usize = 20;

/// Why a position file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PositionFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file holds no valid slot and is not a bare number either.
    #[error("{path} does not hold a position")]
    Garbled {
        /// The file.
        path: PathBuf,
    },
}

/// The position recorded in `path`; `None` when there is no file.
pub fn read_position(path: &Path) -> Result<Option<Position>, PositionFileError> {
    let mut bytes = Vec::with_capacity(2 * SLOT);
    match File::open(path).and_then(|mut file| file.read_to_end(&mut bytes)) {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PositionFileError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let slots = bytes.chunks(SLOT).filter_map(decode_slot).max();
    let legacy = || {
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.trim().parse::<Position>().ok())
    };
    match slots.or_else(legacy) {
        Some(position) => Ok(Some(position)),
        None => Err(PositionFileError::Garbled {
            path: path.to_path_buf(),
        }),
    }
}

/// A position file open for writing.
#[derive(Debug)]
pub struct PositionFile {
    path: PathBuf,
    file: Option<File>,
    /// The slot the next write goes to.
    next_slot: u64,
}

impl PositionFile {
    /// The file at `path`, created (with a durable directory entry) by the first write.
    pub fn new(path: PathBuf) -> PositionFile {
        PositionFile {
            path,
            file: None,
            next_slot: 0,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `position` durably: once this returns, a crash leaves it or a later one.
    pub fn record(&mut self, position: Position) -> io::Result<()> {
        if self.file.is_none() {
            self.file = Some(self.create()?);
        }
        let Some(file) = &self.file else {
            unreachable!("opened above");
        };
        let written = file
            .write_all_at(&encode_slot(position), self.next_slot * SLOT as u64)
            .and_then(|()| file.sync_data());
        if written.is_err() {
            // Opened again next time, in case the handle is what failed.
            self.file = None;
        }
        written?;
        self.next_slot = 1 - self.next_slot;
        Ok(())
    }

    /// Opens the file for writing, making a new file's directory entry durable. A file of the
    /// older form (a bare number) is rewritten whole, so that no text of it is left beside a slot.
    fn create(&self) -> io::Result<File> {
        let existed = self.path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        let length = file.metadata()?.len();
        if length != 2 * SLOT as u64 {
            let carried = read_position(&self.path).ok().flatten().unwrap_or(0);
            file.set_len(0)?;
            let slot = encode_slot(carried);
            file.write_all_at(&slot, 0)?;
            file.write_all_at(&slot, SLOT as u64)?;
            file.sync_all()?;
        }
        if !existed {
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok(file)
    }
}

fn encode_slot(position: Position) -> [u8; SLOT] {
    let digits = format!("{position:0DIGITS$}");
    let line = format!("{digits} {:08x}", crc32fast::hash(digits.as_bytes()));
    let mut slot = [b' '; SLOT];
    slot[..line.len()].copy_from_slice(line.as_bytes());
    slot[SLOT - 1] = b'\n';
    slot
}

fn decode_slot(slot: &[u8]) -> Option<Position> {
    if slot.len() != SLOT || slot[SLOT - 1] != b'\n' || slot[DIGITS] != b' ' {
        return None;
    }
    let digits = slot.get(..DIGITS)?;
    let checksum = std::str::from_utf8(slot.get(DIGITS + 1..DIGITS + 9)?).ok()?;
    if u32::from_str_radix(checksum, 16).ok()? != crc32fast::hash(digits) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_position_survives_a_torn_write_and_an_older_file_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mark");
        assert_eq!(read_position(&path).unwrap(), None);
        let mut file = PositionFile::new(path.clone());
        for position in [1, 2, 3, 1_000_000_007] {
            file.record(position).unwrap();
            assert_eq!(read_position(&path).unwrap(), Some(position));
        }
        // A torn write of the slot being written: the other slot holds the position before.
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 2 * SLOT);
        bytes[0..10].copy_from_slice(b"9999999999");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_position(&path).unwrap(), Some(1_000_000_007));

        // A file of the older form, a bare number, reads, and the next write replaces it.
        std::fs::write(&path, "42\n").unwrap();
        assert_eq!(read_position(&path).unwrap(), Some(42));
        let mut file = PositionFile::new(path.clone());
        file.record(43).unwrap();
        assert_eq!(read_position(&path).unwrap(), Some(43));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * SLOT as u64);

        std::fs::write(&path, "forty-two").unwrap();
        assert!(matches!(
            read_position(&path),
            Err(PositionFileError::Garbled { .. })
        ));
    }
}
