//! The local replica of the stream: an event log that records are applied to at their stream
//! sequence, once each, by whichever comes first: the tail (every record of every instance) or
//! this instance's writer (its own records, as soon as they are acknowledged, so that an append
//! does not wait for its record to come back through the tail).
//!
//! It is kept in memory ([`MemoryLog`], folded from the whole stream at every open) or on disk
//! (a [`SledLog`] in its own directory, written behind by `behind.rs`, so that an open reads
//! only what the stream holds beyond it, and memory does not hold every record). A replica on
//! disk is the stream's only if its directory names the stream it was folded from
//! (`stream-of-record`: its name and creation time) and its last record is the stream's at that
//! sequence; otherwise it is removed and folded again (`JetStreamLog::open_with`), and first
//! set aside where its files are damaged.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use event_log::{
    Append, Durability, ExpectedVersion, Idempotency, LogEngine, LogError, LogOptions, MemoryLog,
    Position, SledLog, StreamId, StreamTarget,
};

use crate::behind::WriteBehind;

/// The file in a replica's directory naming the stream it was folded from.
const IDENTITY_FILE: &str = "stream-of-record";

/// The replica's cache of its log's pages: its reads are the projection's catch-up at the tail
/// and a command's stream, as with the sled engine's own log.
const CACHE_BYTES: u64 = event_log::DEFAULT_LOG_CACHE_BYTES;

/// Where the replica's records are kept.
enum Store {
    Memory(MemoryLog),
    Disk(WriteBehind),
}

/// The replica and the lock that keeps "is it the next record?" and "apply it" together.
pub(crate) struct Replica {
    store: Store,
    applying: Mutex<()>,
}

/// One record as the stream stores it, to apply at its sequence.
pub(crate) struct Stored {
    pub(crate) sequence: Position,
    pub(crate) stream: StreamId,
    pub(crate) idempotency: Option<Idempotency>,
    pub(crate) payload: Vec<u8>,
}

/// What applying records at their sequences did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    /// They were the next records (or some were held already), and the replica holds them now.
    Now,
    /// The replica held them already.
    Before,
    /// Records before them are missing: what follows the gap was not applied.
    Gap,
}

impl Deref for Replica {
    type Target = dyn LogEngine;

    fn deref(&self) -> &(dyn LogEngine + 'static) {
        match &self.store {
            Store::Memory(log) => log,
            Store::Disk(log) => log,
        }
    }
}

/// The identity of a stream of record, as a replica's directory records it.
pub(crate) fn identity(name: &str, created: &impl std::fmt::Debug) -> String {
    format!("{name}\n{created:?}\n")
}

impl Replica {
    /// An empty replica in memory.
    pub(crate) fn in_memory() -> Replica {
        Replica {
            store: Store::Memory(MemoryLog::new()),
            applying: Mutex::new(()),
        }
    }

    /// The replica kept in `dir` for the stream `identity` names ([`identity`]): what it holds
    /// when it was folded from that stream, else an empty one (the directory of another stream
    /// is removed first).
    pub(crate) fn on_disk(dir: &Path, identity: &str) -> Result<Replica, LogError> {
        let file = dir.join(IDENTITY_FILE);
        match std::fs::read_to_string(&file) {
            Ok(found) if found == identity => {}
            Ok(_) | Err(_) => {
                if dir.exists() {
                    tracing::warn!(dir = %dir.display(), "the local replica is of another stream (or of none): folding the stream again");
                }
                Replica::clear(dir, identity)?;
            }
        }
        let options = LogOptions {
            // The stream is the log of record: what a crash loses here is folded again.
            durability: Durability::Buffered,
            disk_reserve: event_log::DEFAULT_DISK_RESERVE,
            cache_bytes: CACHE_BYTES,
        };
        let log = match SledLog::open(dir, options.clone()) {
            Err(error) if Replica::is_damage(&error) => {
                // A copy, not the log of record: set aside for a look, and folded again.
                let aside = event_log::set_aside_damaged(dir)?;
                tracing::warn!(
                    dir = %dir.display(),
                    aside = %aside.display(),
                    %error,
                    "the local replica cannot be read: moved it aside to fold the stream again"
                );
                Replica::clear(dir, identity)?;
                SledLog::open(dir, options)?
            }
            opened => opened?,
        };
        Ok(Replica {
            store: Store::Disk(WriteBehind::new(log)?),
            applying: Mutex::new(()),
        })
    }

    /// Removes the replica kept in `dir` and opens an empty one for the stream `identity` names.
    pub(crate) fn reset(self, identity: &str) -> Result<Replica, LogError> {
        let dir = self.dir();
        // Closes the log (its writer flushes and stops) before its files go.
        drop(self);
        match dir {
            Some(dir) => {
                Replica::clear(&dir, identity)?;
                Replica::on_disk(&dir, identity)
            }
            None => Ok(Replica::in_memory()),
        }
    }

    fn dir(&self) -> Option<PathBuf> {
        match &self.store {
            Store::Memory(_) => None,
            Store::Disk(log) => Some(log.disk().dir().to_path_buf()),
        }
    }

    /// Whether `error`, met reading the replica, says that its files are damaged: it is then
    /// folded again from the stream rather than served or trusted.
    pub(crate) fn is_damage(error: &LogError) -> bool {
        matches!(error, LogError::Damaged(_) | LogError::Corrupt(_))
    }

    /// Empties `dir` and records `identity` in it before any record is applied, so that a
    /// directory holding records always names their stream.
    fn clear(dir: &Path, identity: &str) -> Result<(), LogError> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error.into()),
        }
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(IDENTITY_FILE), identity)?;
        Ok(())
    }

    /// The highest stream id given so far: the next new stream's id is one more.
    pub(crate) fn streams_allocated(&self) -> StreamId {
        match &self.store {
            Store::Memory(log) => log.streams_allocated(),
            Store::Disk(log) => log.streams_allocated(),
        }
    }

    /// Waits while a replica on disk has too much not yet written (see `behind.rs`).
    pub(crate) async fn wait_for_room(&self) {
        if let Store::Disk(behind) = &self.store {
            behind.wait_for_room().await;
        }
    }

    /// Applies `records` (in sequence order) from the replica's next one on, as one batch:
    /// those it holds already are skipped, and a gap stops the batch before it. An error means
    /// the stream and the replica disagree. Both stores take them in memory (one on disk may read
    /// its sled log for a stream or key it no longer holds in memory), so it is called from the
    /// engine's tasks.
    pub(crate) fn apply_all(&self, records: Vec<Stored>) -> Result<Applied, String> {
        let _one_at_a_time = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
        let head = self.head();
        let mut next = head + 1;
        let mut gap = false;
        let mut batch = Vec::with_capacity(records.len());
        for record in records {
            if record.sequence < next {
                continue;
            }
            if record.sequence != next {
                gap = true;
                break;
            }
            next += 1;
            batch.push(record);
        }
        if batch.is_empty() {
            return Ok(if gap { Applied::Gap } else { Applied::Before });
        }
        if let Store::Disk(behind) = &self.store {
            let sequences: Vec<Position> = batch.iter().map(|record| record.sequence).collect();
            let held = behind.apply(
                batch
                    .into_iter()
                    .map(|record| (record.stream, record.idempotency, record.payload))
                    .collect(),
            )?;
            if held != sequences {
                return Err(format!(
                    "the records stored at {sequences:?} fold at {held:?}"
                ));
            }
            return Ok(if gap { Applied::Gap } else { Applied::Now });
        }
        // A stream the replica does not hold starts under the id the record carries (ids are
        // counted up here, but a log restored from another engine's keeps that engine's ids).
        let mut started = std::collections::HashSet::new();
        let mut sequences = Vec::with_capacity(batch.len());
        let mut appends = Vec::with_capacity(batch.len());
        for record in batch {
            let held = started.contains(&record.stream)
                || self
                    .stream_version(record.stream)
                    .map_err(|error| format!("the replica cannot be read: {error}"))?
                    .is_some();
            started.insert(record.stream);
            sequences.push((record.sequence, record.stream));
            appends.push(Append {
                stream: if held {
                    StreamTarget::Existing(record.stream)
                } else {
                    StreamTarget::Restored(record.stream)
                },
                expected: ExpectedVersion::Any,
                idempotency: record.idempotency,
                payloads: vec![record.payload],
            });
        }
        let results = self.append_all(appends);
        for ((sequence, stream), result) in sequences.into_iter().zip(results) {
            let appended =
                result.map_err(|error| format!("the replica refused a stored record: {error}"))?;
            if appended.stream != stream || appended.duplicate || appended.last_position != sequence
            {
                return Err(format!(
                    "the record stored at {sequence} of stream {stream} folds at {} of stream {} (duplicate: {})",
                    appended.last_position, appended.stream, appended.duplicate
                ));
            }
        }
        Ok(if gap { Applied::Gap } else { Applied::Now })
    }
}
