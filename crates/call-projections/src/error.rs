//! The typed errors of the projection: [`ProjectionError`] when the projection or its log fails,
//! [`QueryError`] when a list query is refused (a client's mistake) or cannot be answered.

/// A failure of the projection: its storage, the log it folds, or an event it cannot read.
///
/// None of these is the caller's fault; a server answers them as "unavailable".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// sled failed (i/o, its own corruption check). Another process holding the projection
    /// directory also shows up here, as sled's lock error.
    #[error("projection storage error: {0}")]
    Storage(#[from] sled::Error),
    /// The event log failed.
    #[error("event log error: {0}")]
    Log(#[from] event_log::LogError),
    /// A stored row does not have the layout this crate writes. `rebuild` replaces the view.
    #[error("corrupt projection row {key}: {reason}; run `callledger rebuild`")]
    Corrupt {
        /// The row, named for people (e.g. `view of call 7`).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An event in the log cannot be read by this build; the projection stops before it rather
    /// than skip it.
    #[error("{0}; the projection stops before it (is this build older than the data?)")]
    Event(#[from] call_model::EventDecodeError),
    /// `wait_for` was asked for a position the log does not hold (yet).
    #[error("log position {position} is beyond the log's durable head {head}")]
    BeyondHead {
        /// The position asked for.
        position: u64,
        /// The log's durable head.
        head: u64,
    },
    /// A thread panicked while changing the in-memory indexes, so they can no longer be trusted.
    #[error(
        "the projection's in-memory indexes were left half-updated by a panic; restart the process"
    )]
    Poisoned,
    /// An i/o error outside sled (the scratch directory of `verify`).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a list query got no page.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The cursor is not one this engine wrote (garbled, truncated or made up).
    #[error("the page cursor is not valid; use a cursor from a `links` member of an earlier page")]
    InvalidCursor,
    /// The cursor was made for a list with another sort or other filters.
    #[error("the page cursor belongs to a list with another sort or other filters; start again from the first page")]
    CursorMismatch,
    /// The page size is outside 1 to [`MAX_PAGE_SIZE`](crate::MAX_PAGE_SIZE).
    #[error("page size {0} is out of range: expected 1 to {max}", max = crate::MAX_PAGE_SIZE)]
    PageSize(usize),
    /// A sort key names something the list cannot be sorted by.
    #[error("cannot sort by {0}: expected one of {sortable}", sortable = crate::sortable_names())]
    InvalidSort(String),
    /// A filter does not fit its target (a value of the wrong type, a range on tags, a
    /// relationship that cannot be filtered).
    #[error("invalid filter on {target}: {reason}")]
    InvalidFilter {
        /// The filter's target as the API names it.
        target: String,
        /// What was expected.
        reason: String,
    },
    /// The projection failed.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}
