//! `call-projections` owns the current view of every call, folded from the event log: the stored
//! views with their checkpoint, the change feed and the deletions, the in-memory secondary
//! indexes, the query engine (get, list with filters, sorts and keyset cursors, changes since a
//! position), and rebuild and verify.
//!
//! Architecture invariant: the projection is derived data. Everything in it can be rebuilt from
//! the log, and [`Projection::verify`] checks that a rebuild gives exactly what is there. It
//! never writes to the log, and applying events never flushes: each applied chunk is one sled
//! batch holding the view changes and the checkpoint together, which sled recovers all or
//! nothing, and a view that is ahead of the log or unreadable is rebuilt when opened. (A rebuild
//! flushes once, before it switches to the new view.)
//!
//! The secondary indexes live in memory, kept current as batches are applied, under the same
//! lock that readers take, so a list never sees an index and a view that disagree. Closing
//! writes them to a snapshot file, which the next open reads instead of decoding every stored
//! call when it is of the view opened (brought up to the view from the log where it is older,
//! after a crash); otherwise (a rebuild, a damaged file) they are built from the stored views.
//!
//! API boundary: [`Projection`] and the query types in [`query`]. Parsing a query string into a
//! [`ListQuery`] and writing JSON:API documents belong to the edge.

#![warn(missing_docs)]

mod bulk;
mod codec;
mod column;
mod column_order;
mod diff;
mod engine;
mod error;
mod grouped;
mod index;
mod live_ids;
mod pack_cache;
mod projection;
pub mod query;
mod radix;
mod snapshot;
mod sorted_set;
mod store;
mod text_cells;
mod text_sort;

#[cfg(test)]
mod tests;

pub use bulk::Appending;
pub use error::{ProjectionError, QueryError};
pub use index::{IdHasher, IdMap};
pub use pack_cache::HeldPacks;
pub use projection::{
    Projection, ProjectionOptions, ProjectionStats, RebuildReport, VerifyReport,
    BULK_PROJECTION_CACHE_BYTES, DEFAULT_PROJECTION_CACHE_BYTES, MIN_PROJECTION_CACHE_BYTES,
};
pub use query::{
    ChangesPage, Condition, Deletion, Filter, FilterTarget, FilterValue, ListPage, ListQuery,
    PageCursor, SortField, SortKey, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE,
};

/// What `sort` accepts, as the API names it: `id`, then every sortable attribute of the model
/// ([`call_model::Field::is_sortable`]), comma-separated. Error messages quote it.
pub fn sortable_names() -> String {
    std::iter::once("id")
        .chain(call_model::Field::sortable().map(call_model::Field::name))
        .collect::<Vec<_>>()
        .join(", ")
}
