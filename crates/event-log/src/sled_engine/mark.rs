//! The durable head recorded beside the database (`durable-head` in the log's directory), so
//! that a log sled recovered shorter than it was is refused instead of served.
//!
//! sled, reopening a file damaged in the middle, recovers up to the damage and silently drops
//! every record after it. The writer records the durable head here at most once a second while
//! it appends (with flush durability) and when it closes; at open, a recovered head below the
//! recorded one is [`LogError::Damaged`]. The record may lag the true head by up to a second
//! (a crash), so only losses reaching further back are found; those are what damage causes.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::position_file::{read_position, PositionFile, PositionFileError};
use crate::{LogError, Position};

/// The file's name in the log's directory.
const FILE: &str = "durable-head";
/// The longest the record lags while appending.
const EVERY: Duration = Duration::from_secs(1);

/// The writer's record of the durable head.
pub(crate) struct DurableMark {
    file: PositionFile,
    recorded: Position,
    at: Instant,
}

impl DurableMark {
    /// The record in `dir`, checked against the head sled recovered.
    pub(crate) fn open(dir: &Path, recovered: Position) -> Result<DurableMark, LogError> {
        let path = dir.join(FILE);
        let recorded = match read_position(&path) {
            Ok(recorded) => recorded.unwrap_or(0),
            Err(error @ PositionFileError::Garbled { .. }) => {
                return Err(LogError::Damaged(error.to_string()))
            }
            Err(PositionFileError::Io { source, .. }) => return Err(LogError::Io(source)),
        };
        if recovered < recorded {
            return Err(LogError::Damaged(format!(
                "the log in {} ends at position {recovered}, but position {recorded} was durable: \
                 sled dropped what follows a damaged part of its file",
                dir.display()
            )));
        }
        Ok(DurableMark {
            file: PositionFile::new(path),
            recorded,
            at: Instant::now(),
        })
    }

    /// Records `head` if the last record is a second old.
    pub(crate) fn record_now_and_then(&mut self, head: Position) {
        if self.at.elapsed() >= EVERY {
            self.record(head);
        }
    }

    /// Records `head` (durable now), in place (see [`PositionFile`]).
    pub(crate) fn record(&mut self, head: Position) {
        if head <= self.recorded {
            return;
        }
        match self.file.record(head) {
            Ok(()) => {
                self.recorded = head;
                self.at = Instant::now();
            }
            // Only the check at the next open is weaker for it.
            Err(error) => {
                tracing::warn!(%error, path = %self.file.path().display(), "cannot record the durable head")
            }
        }
    }
}
