//! `event-log` owns the append-only, durable log of opaque records as a contract:
//! global positions, streams with per-stream versions, expected-version checks,
//! idempotency keys and a durable head that readers can tail ([`LogEngine`], held
//! through [`EventLog`]), and its embedded engine on sled ([`SledLog`], with group
//! commit), and an in-memory one ([`MemoryLog`]) for tests. The replicated engine on NATS
//! JetStream lives in a crate of its own.
//!
//! The crate knows nothing about calls, NATS or JSON: a record is a byte
//! string.
//!
//! The API is synchronous and blocking. [`EventLog::append`] returns only when
//! the records are durable (as the engine defines it: for the sled engine, with
//! [`Durability::Flush`], on disk); readers only ever see records at or below
//! [`EventLog::head`].

#![warn(missing_docs)]

mod damaged;
mod engine;
mod error;
mod memory;
mod position_file;
mod sled_engine;
mod stall;

#[cfg(test)]
mod tests;

pub use damaged::set_aside_damaged;
pub use engine::{check_expected, check_restored, replay, EventLog, HeadWatch, LogEngine};
pub use error::{AppendError, LogError};
pub use memory::MemoryLog;
pub use position_file::{read_position, PositionFile, PositionFileError};
pub use sled_engine::SledLog;
pub use stall::{Busy, StallClock};

/// Benchmark baselines of the sled engine, beside which the benches print the log's own
/// figures. Not part of the contract: behind the `bench` feature.
#[cfg(feature = "bench")]
pub mod bench {
    pub use crate::sled_engine::baseline::{
        raw_sled_batch_ceiling, RawSledRows, CEILING_CACHE_BYTES,
    };
}

/// A global position in the log. Positions start at 1 and have no gaps;
/// 0 means "before the first record".
pub type Position = u64;

/// The id of a stream. Ids are allocated by the log, start at 1, increase
/// and are never reused, not even after a crash.
pub type StreamId = u64;

/// The version of a record within its stream. Versions start at 1 per
/// stream and have no gaps.
pub type Version = u64;

/// Counts and sizes, for monitoring and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogStats {
    /// Durable records; positions have no gaps, so this is also the head.
    pub events: u64,
    /// Streams with durable records.
    pub streams: u64,
    /// The last durable position.
    pub head: Position,
    /// Bytes the engine keeps on disk (0 for an engine that keeps none locally).
    pub size_on_disk: u64,
}

/// When the sled engine's append returns (an option of the sled engine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `append` returns only after the records were flushed to disk (sled
    /// `flush`, which fsyncs). Concurrent appends share one flush. This is
    /// the durable choice, see [`LogOptions::durable`].
    Flush,
    /// `append` returns after the records were applied in memory, without a
    /// flush of its own; the sled engine flushes in the background about every
    /// 500 ms.
    /// A crash (even of the process alone) loses acknowledged appends from
    /// roughly the last flush interval. Meant for bulk imports and
    /// benchmarks that can be redone.
    Buffered,
}

/// How to open the sled engine ([`SledLog::open`], [`EventLog::open`]).
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// When `append` returns; see [`Durability`].
    pub durability: Durability,
    /// Appends are refused (a storage error, which servers answer 503) while the disk holding
    /// the log has fewer bytes free than this; they resume by themselves once space is freed.
    /// 0 turns the guard off.
    pub disk_reserve: u64,
    /// sled's page cache for the log, in bytes: [`DEFAULT_LOG_CACHE_BYTES`] for a process that
    /// serves, [`BULK_WRITE_LOG_CACHE_BYTES`] for one that writes the log in bulk and exits.
    pub cache_bytes: u64,
}

/// The default [`LogOptions::disk_reserve`]: 64 MiB.
pub const DEFAULT_DISK_RESERVE: u64 = 64 << 20;

/// The default [`LogOptions::cache_bytes`]: 1 MiB. sled's own default (1 GiB) keeps every page
/// written until it is full, so a serving process grew with its log (the soak: 30 to 52 MiB in
/// three minutes, on its way to a gibibyte); the log is read at its tail (the projection, the
/// outbox) and by stream (a command's call), which the operating system's page cache serves as
/// well. 8 MiB still grew a serving process for minutes as the cache filled with nodes copied
/// by every append (twice the soak's growth of 1 MiB, docs/operations.md); appends write at the
/// tail, which stays cached.
pub const DEFAULT_LOG_CACHE_BYTES: u64 = 1 << 20;

/// [`LogOptions::cache_bytes`] for a process that writes the log in bulk and then exits (the
/// offline `import` and `restore`): with batches of hundreds of appends, a 1 MiB cache evicts the
/// trees' inner nodes and sled reads them back for the next batch (an import of 100,000 calls: 2.06
/// and 2.09 s at 64 MiB, 2.50 and 2.52 s at 1 MiB); what it keeps is given back when the process
/// exits.
pub const BULK_WRITE_LOG_CACHE_BYTES: u64 = 64 << 20;

impl LogOptions {
    /// Options where an acknowledged append survives a crash
    /// ([`Durability::Flush`]), with the default disk reserve and page cache.
    pub fn durable() -> Self {
        LogOptions {
            durability: Durability::Flush,
            disk_reserve: DEFAULT_DISK_RESERVE,
            cache_bytes: DEFAULT_LOG_CACHE_BYTES,
        }
    }
}

/// Which stream an [`Append`] goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamTarget {
    /// Start a new stream under the next [`StreamId`]: one more than the highest id given.
    New,
    /// Append to a stream started earlier.
    Existing(StreamId),
    /// Start a new stream under the id that another log gave it, for `restore`, which writes a
    /// log's records at their own positions and ids. The id must not be taken, and not be 0
    /// ([`AppendError::InvalidStreamId`]); later new streams get greater ids. Restoring
    /// streams in the order of their first records keeps a log's ids as dense as they were.
    Restored(StreamId),
}

/// The optimistic-concurrency condition of an [`Append`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream's current version is.
    Any,
    /// The stream must have no records yet.
    NoStream,
    /// The stream's current last version must be exactly this (>= 1).
    Exact(Version),
}

/// An idempotency key with the fingerprint of the request it was used for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    /// The caller's key; the caller keeps it at most 255 characters.
    pub key: String,
    /// A digest of the request, so that a reused key with a different
    /// request is told apart from a retry.
    pub fingerprint: [u8; 32],
}

/// One append request: one or more payloads for one stream, written
/// together or not at all.
#[derive(Clone, Debug)]
pub struct Append {
    /// The stream to append to.
    pub stream: StreamTarget,
    /// The condition on the stream's current version.
    pub expected: ExpectedVersion,
    /// If set, a retry with the same key and fingerprint returns the
    /// original result instead of appending again.
    pub idempotency: Option<Idempotency>,
    /// The opaque records, in order; at least one.
    pub payloads: Vec<Vec<u8>>,
}

/// The result of a successful [`EventLog::append`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The stream written to (the new id for [`StreamTarget::New`]).
    pub stream: StreamId,
    /// The version of the first payload.
    pub first_version: Version,
    /// The version of the last payload.
    pub last_version: Version,
    /// The position of the first payload.
    pub first_position: Position,
    /// The position of the last payload.
    pub last_position: Position,
    /// `true` when the idempotency key had been used with the same
    /// fingerprint: nothing was appended and the other fields describe the
    /// original append.
    pub duplicate: bool,
}

impl Appended {
    /// A new append of one record: `version` of `stream`, at `position`.
    pub fn one(stream: StreamId, version: Version, position: Position) -> Appended {
        Appended {
            stream,
            first_version: version,
            last_version: version,
            first_position: position,
            last_position: position,
            duplicate: false,
        }
    }
}

/// One stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The record's global position.
    pub position: Position,
    /// The stream it belongs to.
    pub stream: StreamId,
    /// Its version within the stream.
    pub version: Version,
    /// The opaque payload.
    pub payload: Vec<u8>,
}
