//! The log as a contract: [`LogEngine`], what every engine does (the sled engine here, the
//! JetStream engine in its own crate), and [`EventLog`], the handle every caller holds.
//!
//! Architecture invariant: no storage type appears in this contract. Callers append with an
//! expected version and an idempotency key, read forward from a position or one stream, ask
//! for the original result of a key, follow the durable head, and flush; how and where the
//! records are kept is the engine's business, and so are its options.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{
    Append, AppendError, Appended, ExpectedVersion, Idempotency, LogError, LogOptions, LogStats,
    Position, Record, SledLog, StreamId, Version,
};

/// What an engine of the log does. Every method blocks (storage or network underneath):
/// async callers run them on a blocking thread. Readers see only durable records: nothing
/// past [`LogEngine::head`].
pub trait LogEngine: Send + Sync + 'static {
    /// Appends the payloads to one stream, all or nothing, after checking the idempotency key
    /// (first) and the expected version; returns once the records are durable (as the engine
    /// defines it) and visible to readers.
    fn append(&self, append: Append) -> Result<Appended, AppendError>;

    /// Appends each of `appends` as [`LogEngine::append`] would and answers in the same order.
    /// They are not atomic together: each is checked after the ones before it and succeeds or
    /// fails alone. An engine may let them share its round trips to storage (the sled engine
    /// commits up to 4096 with one batch and one flush); this default appends them one by one.
    fn append_all(&self, appends: Vec<Append>) -> Vec<Result<Appended, AppendError>> {
        appends
            .into_iter()
            .map(|append| self.append(append))
            .collect()
    }

    /// The last durable position; 0 when the log is empty.
    fn head(&self) -> Position;

    /// A follower of the head, told of every new durable head after this call.
    fn watch_head(&self) -> HeadWatch;

    /// Up to `limit` durable records with positions greater than `after`, in position order.
    fn read_from(&self, after: Position, limit: usize) -> Result<Vec<Record>, LogError>;

    /// The stream's durable records in version order; empty for a stream without records.
    fn read_stream(&self, stream: StreamId) -> Result<Vec<Record>, LogError>;

    /// The stream's last durable version; `None` for a stream without durable records.
    fn stream_version(&self, stream: StreamId) -> Result<Option<Version>, LogError>;

    /// The durable original result of the append that used `key`, with its fingerprint;
    /// `duplicate` is `true` in it, as `append` would answer a retry.
    fn idempotent_result(&self, key: &str) -> Result<Option<(Appended, [u8; 32])>, LogError>;

    /// Counts of durable records and streams, the head and the size on disk.
    fn stats(&self) -> Result<LogStats, LogError>;

    /// Makes everything acknowledged so far durable, where the engine's options let it be
    /// acknowledged before (the sled engine's `Durability::Buffered`).
    fn flush(&self) -> Result<(), LogError>;

    /// The head of record, once this instance's reads have reached it: for an engine whose
    /// reads come from a local replica of a shared log, everything acknowledged anywhere before
    /// the call is readable here after it (read-your-writes across instances). An engine whose
    /// reads are the log itself answers its head.
    fn sync(&self) -> Result<Position, LogError> {
        Ok(self.head())
    }

    /// How long the engine's storage work in progress (a group being written and flushed) has
    /// gone without finishing; `None` while it is idle, or for an engine that does not tell.
    /// A watchdog reads it to tell storage that stopped answering from a quiet log
    /// ([`crate::StallClock`]).
    fn busy_for(&self) -> Option<Duration> {
        None
    }
}

/// Follows the log's durable head.
#[derive(Clone, Debug)]
pub struct HeadWatch {
    receiver: watch::Receiver<Position>,
}

impl HeadWatch {
    /// A follower of the heads an engine sends on `receiver`.
    pub fn new(receiver: watch::Receiver<Position>) -> HeadWatch {
        HeadWatch { receiver }
    }

    /// The latest head it was told of.
    pub fn current(&self) -> Position {
        *self.receiver.borrow()
    }

    /// The latest head it was told of, marking it seen: [`HeadWatch::changed`] then waits for
    /// a later one. (Mark, then look at the log: no append is missed in between.)
    pub fn mark_seen(&mut self) -> Position {
        *self.receiver.borrow_and_update()
    }

    /// Whether a head not yet seen has arrived (`false` once the log is gone).
    pub fn has_changed(&self) -> bool {
        self.receiver.has_changed().unwrap_or(false)
    }

    /// Waits until the head reaches `position`; fails with [`LogError::Closed`] once the log
    /// is gone.
    pub async fn wait_for(&mut self, position: Position) -> Result<Position, LogError> {
        let head = self
            .receiver
            .wait_for(|head| *head >= position)
            .await
            .map_err(|_| LogError::Closed)?;
        Ok(*head)
    }

    /// Waits until the head moves past what was last seen, and returns it; fails with
    /// [`LogError::Closed`] once the log is gone.
    pub async fn changed(&mut self) -> Result<Position, LogError> {
        self.receiver
            .changed()
            .await
            .map_err(|_| LogError::Closed)?;
        Ok(*self.receiver.borrow_and_update())
    }
}

/// The log, whatever engine keeps it. Cheap to clone; every clone is the same log.
#[derive(Clone)]
pub struct EventLog {
    engine: Arc<dyn LogEngine>,
}

impl fmt::Debug for EventLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLog")
            .field("head", &self.head())
            .finish_non_exhaustive()
    }
}

impl EventLog {
    /// The embedded default: the sled engine in `dir` (see [`SledLog::open`]).
    pub fn open(dir: &Path, options: LogOptions) -> Result<EventLog, LogError> {
        Ok(EventLog::from_engine(SledLog::open(dir, options)?))
    }

    /// The log kept by `engine`.
    pub fn from_engine(engine: impl LogEngine) -> EventLog {
        EventLog {
            engine: Arc::new(engine),
        }
    }

    /// See [`LogEngine::append`]. Concurrent calls share the engine's round trips to storage
    /// (the sled engine's group commit), so throughput grows with the number of callers.
    pub fn append(&self, append: Append) -> Result<Appended, AppendError> {
        self.engine.append(append)
    }

    /// See [`LogEngine::append_all`]: many appends sharing the engine's round trips, for a
    /// caller with many at hand (the importer).
    pub fn append_all(&self, appends: Vec<Append>) -> Vec<Result<Appended, AppendError>> {
        self.engine.append_all(appends)
    }

    /// See [`LogEngine::head`].
    pub fn head(&self) -> Position {
        self.engine.head()
    }

    /// See [`LogEngine::watch_head`].
    pub fn watch_head(&self) -> HeadWatch {
        self.engine.watch_head()
    }

    /// See [`LogEngine::read_from`].
    pub fn read_from(&self, after: Position, limit: usize) -> Result<Vec<Record>, LogError> {
        self.engine.read_from(after, limit)
    }

    /// See [`LogEngine::read_stream`].
    pub fn read_stream(&self, stream: StreamId) -> Result<Vec<Record>, LogError> {
        self.engine.read_stream(stream)
    }

    /// See [`LogEngine::stream_version`].
    pub fn stream_version(&self, stream: StreamId) -> Result<Option<Version>, LogError> {
        self.engine.stream_version(stream)
    }

    /// See [`LogEngine::idempotent_result`].
    pub fn idempotent_result(&self, key: &str) -> Result<Option<(Appended, [u8; 32])>, LogError> {
        self.engine.idempotent_result(key)
    }

    /// See [`LogEngine::stats`].
    pub fn stats(&self) -> Result<LogStats, LogError> {
        self.engine.stats()
    }

    /// See [`LogEngine::flush`].
    pub fn flush(&self) -> Result<(), LogError> {
        self.engine.flush()
    }

    /// See [`LogEngine::busy_for`].
    pub fn busy_for(&self) -> Option<Duration> {
        self.engine.busy_for()
    }

    /// See [`LogEngine::sync`].
    pub fn sync(&self) -> Result<Position, LogError> {
        self.engine.sync()
    }
}

/// The contract's rule for a key found used: the same fingerprint is a retry, answered with the
/// original result marked `duplicate`; another fingerprint is a reused key. Every engine applies
/// it, before anything else.
pub fn replay(
    idempotency: &Idempotency,
    original: Appended,
    fingerprint: [u8; 32],
) -> Result<Appended, AppendError> {
    if fingerprint == idempotency.fingerprint {
        Ok(Appended {
            duplicate: true,
            ..original
        })
    } else {
        Err(AppendError::IdempotencyKeyReused {
            key: idempotency.key.clone(),
        })
    }
}

/// The contract's rule for a [`crate::StreamTarget::Restored`] id: not 0, and not taken
/// (`current`, the stream's last version, is `None`).
pub fn check_restored(
    append: &Append,
    id: StreamId,
    current: Option<Version>,
) -> Result<(), AppendError> {
    if id == 0 {
        return Err(AppendError::InvalidStreamId(id));
    }
    if current.is_some() {
        return Err(AppendError::WrongExpectedVersion {
            stream: append.stream,
            expected: append.expected,
            actual: current,
        });
    }
    Ok(())
}

/// The contract's rule for the expected version, against the stream's `current` last version
/// (`None`: no records); then that an append carries payloads.
pub fn check_expected(append: &Append, current: Option<Version>) -> Result<(), AppendError> {
    let matches = match append.expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => current.is_none(),
        ExpectedVersion::Exact(expected) => current == Some(expected),
    };
    if !matches {
        return Err(AppendError::WrongExpectedVersion {
            stream: append.stream,
            expected: append.expected,
            actual: current,
        });
    }
    if append.payloads.is_empty() {
        return Err(AppendError::Empty);
    }
    Ok(())
}
