//! The in-memory engine: the log's contract with nothing stored, for tests that exercise what
//! is above the log (commands, projections, the API) without a data directory, and as the
//! second implementation that keeps the contract honest: the contract tests run on both.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use crate::engine::{check_expected, check_restored, replay, HeadWatch, LogEngine};
use crate::{
    Append, AppendError, Appended, LogError, LogStats, Position, Record, StreamId, StreamTarget,
    Version,
};

/// A log kept in memory: acknowledged means applied, and nothing survives the process.
#[derive(Debug)]
pub struct MemoryLog {
    state: Mutex<State>,
    head_tx: watch::Sender<Position>,
}

#[derive(Debug, Default)]
struct State {
    /// Every record, position `i + 1` at index `i`.
    records: Vec<Record>,
    /// The positions of each stream's records, in version order.
    streams: HashMap<StreamId, Vec<Position>>,
    /// The original result of each idempotency key, with its fingerprint.
    keys: HashMap<String, (Appended, [u8; 32])>,
    /// The highest stream id given so far: a new stream gets the next (restored streams may
    /// leave ids below it unused).
    allocated: StreamId,
}

impl Default for MemoryLog {
    fn default() -> MemoryLog {
        MemoryLog::new()
    }
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> MemoryLog {
        MemoryLog {
            state: Mutex::new(State::default()),
            head_tx: watch::channel(0).0,
        }
    }

    /// The highest stream id given so far: the next new stream's id is one more.
    pub fn streams_allocated(&self) -> StreamId {
        self.state().allocated
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is only changed after every check passed, so a panic elsewhere cannot
        // have left it half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LogEngine for MemoryLog {
    fn append(&self, append: Append) -> Result<Appended, AppendError> {
        let mut state = self.state();
        if let Some(idempotency) = &append.idempotency {
            if let Some((original, fingerprint)) = state.keys.get(&idempotency.key) {
                return replay(idempotency, *original, *fingerprint);
            }
        }
        let first_position = state.records.len() as u64 + 1;
        let version_of = |id: StreamId| {
            state
                .streams
                .get(&id)
                .map(|positions| positions.len() as u64)
        };
        let (stream, current) = match append.stream {
            StreamTarget::New => (state.allocated + 1, None),
            StreamTarget::Existing(id) => match version_of(id) {
                Some(current) => (id, Some(current)),
                None => return Err(AppendError::StreamNotFound(id)),
            },
            StreamTarget::Restored(id) => {
                check_restored(&append, id, version_of(id))?;
                (id, None)
            }
        };
        check_expected(&append, current)?;
        state.allocated = state.allocated.max(stream);
        let first_version = current.unwrap_or(0) + 1;
        for (offset, payload) in (0..).zip(append.payloads) {
            let position = first_position + offset;
            state.records.push(Record {
                position,
                stream,
                version: first_version + offset,
                payload,
            });
            state.streams.entry(stream).or_default().push(position);
        }
        let last_position = state.records.len() as u64;
        let appended = Appended {
            stream,
            first_version,
            last_version: first_version + (last_position - first_position),
            first_position,
            last_position,
            duplicate: false,
        };
        if let Some(idempotency) = append.idempotency {
            state
                .keys
                .insert(idempotency.key, (appended, idempotency.fingerprint));
        }
        drop(state);
        self.head_tx.send_replace(last_position);
        Ok(appended)
    }

    fn head(&self) -> Position {
        self.state().records.len() as u64
    }

    fn watch_head(&self) -> HeadWatch {
        HeadWatch::new(self.head_tx.subscribe())
    }

    fn read_from(&self, after: Position, limit: usize) -> Result<Vec<Record>, LogError> {
        let state = self.state();
        let start = usize::try_from(after).unwrap_or(usize::MAX);
        Ok(state
            .records
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take(limit)
            .cloned()
            .collect())
    }

    fn read_stream(&self, stream: StreamId) -> Result<Vec<Record>, LogError> {
        let state = self.state();
        Ok(state
            .streams
            .get(&stream)
            .map(|positions| {
                positions
                    .iter()
                    .map(|position| state.records[(*position - 1) as usize].clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    fn stream_version(&self, stream: StreamId) -> Result<Option<Version>, LogError> {
        Ok(self
            .state()
            .streams
            .get(&stream)
            .map(|positions| positions.len() as u64))
    }

    fn idempotent_result(&self, key: &str) -> Result<Option<(Appended, [u8; 32])>, LogError> {
        Ok(self.state().keys.get(key).map(|(appended, fingerprint)| {
            (
                Appended {
                    duplicate: true,
                    ..*appended
                },
                *fingerprint,
            )
        }))
    }

    fn stats(&self) -> Result<LogStats, LogError> {
        let state = self.state();
        let head = state.records.len() as u64;
        Ok(LogStats {
            events: head,
            streams: state.streams.len() as u64,
            head,
            size_on_disk: 0,
        })
    }

    fn flush(&self) -> Result<(), LogError> {
        Ok(())
    }
}
