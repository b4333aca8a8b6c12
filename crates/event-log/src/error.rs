//! The typed errors of the log: [`LogError`] for storage failures and
//! [`AppendError`], which keeps rejected appends apart from failed ones.

use std::path::PathBuf;

use crate::{ExpectedVersion, StreamId, StreamTarget, Version};

/// A failure of the log itself: the request may be fine, but the storage is
/// not available or not readable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// Another [`EventLog`](crate::EventLog), in this process or another,
    /// holds the data directory.
    #[error("data directory {path} is in use by another process")]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// The engine's storage reported an error (i/o, its own corruption
    /// check, a bug, an unreachable server), in its words.
    #[error("storage error: {0}")]
    Storage(String),
    /// A stored key or value does not have the layout this crate writes.
    /// The string names the key and what is wrong.
    #[error("corrupt log record at key {0}")]
    Corrupt(String),
    /// The engine's storage is damaged (its own checksums failed, or reading it made the engine
    /// fail): nothing is read or served from it. The string says what the engine found.
    #[error(
        "the event log's storage is damaged ({0}); nothing is read from it. Restore the data \
         directory from a copy taken while it was healthy (a copy of the stopped ledger's \
         directory, or a `callledger export` imported into a new one)"
    )]
    Damaged(String),
    /// The log's writer has stopped, so nothing more can be appended.
    #[error("the log is closed")]
    Closed,
    /// An i/o error outside the engine's storage (creating the directory, the
    /// lock file).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl LogError {
    /// A copy of this error for each request of a failed group. `io::Error`
    /// is not `Clone`, so it is copied by kind and message.
    pub(crate) fn duplicate(&self) -> LogError {
        match self {
            LogError::Locked { path } => LogError::Locked { path: path.clone() },
            LogError::Storage(e) => LogError::Storage(e.clone()),
            LogError::Corrupt(what) => LogError::Corrupt(what.clone()),
            LogError::Damaged(what) => LogError::Damaged(what.clone()),
            LogError::Closed => LogError::Closed,
            LogError::Io(e) => LogError::Io(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// Why [`EventLog::append`](crate::EventLog::append) did not append.
///
/// All variants but [`AppendError::Log`] are rejections of the request
/// (see [`AppendError::is_rejection`]); `Log` is a failure of the log, and
/// then the outcome is unknown: the records may still become durable, so
/// callers retry with the same idempotency key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The stream is not at the expected version; nothing was appended.
    #[error("stream {stream:?}: expected version {expected:?}, but it is at {actual:?}")]
    WrongExpectedVersion {
        /// The target as given in the request.
        stream: StreamTarget,
        /// The expectation as given in the request.
        expected: ExpectedVersion,
        /// The stream's current last version; `None` for no records.
        actual: Option<Version>,
    },
    /// The idempotency key was used before with a different fingerprint.
    #[error("idempotency key {key:?} was already used for a different request")]
    IdempotencyKeyReused {
        /// The key.
        key: String,
    },
    /// [`StreamTarget::Existing`] names an id the log never allocated.
    #[error("stream {0} does not exist")]
    StreamNotFound(StreamId),
    /// [`StreamTarget::Restored`] names 0, which is no stream's id.
    #[error("stream id {0} cannot be restored: ids start at 1")]
    InvalidStreamId(StreamId),
    /// The request had no payloads.
    #[error("an append needs at least one payload")]
    Empty,
    /// The log failed; see [`LogError`].
    #[error(transparent)]
    Log(#[from] LogError),
}

impl AppendError {
    /// `true` when the request was refused for what it asked (a conflict or
    /// a bad request) and retrying it unchanged cannot succeed; `false` when
    /// the log failed.
    pub fn is_rejection(&self) -> bool {
        !matches!(self, AppendError::Log(_))
    }
}

/// A sled error as the contract's [`LogError::Storage`]: the sled type stays inside the engine.
pub(crate) fn storage(error: sled::Error) -> LogError {
    match error {
        sled::Error::Corruption { at, .. } => LogError::Damaged(match at {
            Some(at) => format!("sled found corrupted data at {at:?}"),
            None => "sled found corrupted data".into(),
        }),
        other => LogError::Storage(other.to_string()),
    }
}

/// Runs `read` and turns a panic inside it (sled panics on some damaged files instead of
/// returning an error) into [`LogError::Damaged`], saying what was being read.
pub(crate) fn unpanicked<T>(
    what: &str,
    read: impl FnOnce() -> Result<T, LogError>,
) -> Result<T, LogError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(LogError::Damaged(format!(
                "sled failed while {what}: {message}"
            )))
        }
    }
}
