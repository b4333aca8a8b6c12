//! The durable head recorded beside the database (`durable-head` in the log's directory), so
//! that a log sled recovered shorter than it was is refused instead of served.
//!
//! sled, reopening a file damaged in the middle, recovers up to the damage and silently drops
//! every record after it. The writer records the durable head here at most once a second while
//! it appends (with flush durability) and when it closes; at open, a recovered head below the
//! recorded one is [`LogError::Damaged`]. The record may lag the true head by up to a second
//! (a crash), so only losses reaching further back are found; those are what damage causes.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{LogError, Position};

/// The file's name in the log's directory.
const FILE: &str = "durable-head";
/// The longest the record lags while appending.
const EVERY: Duration = Duration::from_secs(1);

/// The writer's record of the durable head.
pub(crate) struct DurableMark {
    path: PathBuf,
    recorded: Position,
    at: Instant,
}

impl DurableMark {
    /// The record in `dir`, checked against the head sled recovered.
    pub(crate) fn open(dir: &Path, recovered: Position) -> Result<DurableMark, LogError> {
        let path = dir.join(FILE);
        let recorded = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<Position>().map_err(|_| {
                LogError::Damaged(format!("{} does not hold a position", path.display()))
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(LogError::Io(error)),
        };
        if recovered < recorded {
            return Err(LogError::Damaged(format!(
                "the log in {} ends at position {recovered}, but position {recorded} was durable: \
                 sled dropped what follows a damaged part of its file",
                dir.display()
            )));
        }
        Ok(DurableMark {
            path,
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

    /// Records `head` (durable now), atomically: a temporary file, fsync, rename.
    pub(crate) fn record(&mut self, head: Position) {
        if head <= self.recorded {
            return;
        }
        let temporary = self.path.with_extension("tmp");
        let written = File::create(&temporary)
            .and_then(|mut file| {
                writeln!(file, "{head}")?;
                file.sync_all()
            })
            .and_then(|()| fs::rename(&temporary, &self.path))
            .and_then(|()| match self.path.parent() {
                Some(dir) => File::open(dir)?.sync_all(),
                None => Ok(()),
            });
        match written {
            Ok(()) => {
                self.recorded = head;
                self.at = Instant::now();
            }
            // Only the check at the next open is weaker for it.
            Err(error) => {
                tracing::warn!(%error, path = %self.path.display(), "cannot record the durable head")
            }
        }
    }
}
