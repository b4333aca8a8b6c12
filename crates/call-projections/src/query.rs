//! The list query: filters, sort keys and keyset cursors, as the query engine takes them.
//! (Parsing the wire's query string into a [`ListQuery`] is the edge's job, in call-api.)

use call_model::{Call, Field, Relation, Timestamp};

/// The largest page the engine serves.
pub const MAX_PAGE_SIZE: usize = 1000;
/// The page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: usize = 50;

/// What a filter looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FilterTarget {
    /// The call's id.
    Id,
    /// An attribute (any but `note`-like free text may be filtered exactly; `tags` means "has any of").
    Attr(Field),
    /// The id of a to-one relationship, e.g. `filter[prospect][id]`.
    Related(Relation),
}

/// One value in a filter, typed as the target holds it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FilterValue {
    /// An id (the call's or a related resource's).
    Int(i64),
    /// A string attribute's value, or a tag.
    Text(String),
    /// A date-time attribute's value.
    Time(Timestamp),
    /// `shouldRecordCall`.
    Bool(bool),
}

/// What the target must satisfy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Equal to any of these values (for `tags`: has any of these tags).
    AnyOf(Vec<FilterValue>),
    /// Null (`__null__`).
    Null,
    /// Not null (`__notnull__`).
    NotNull,
    /// Within inclusive bounds; `None` is an open end.
    Range {
        /// Lowest allowed value, inclusive.
        lower: Option<FilterValue>,
        /// Highest allowed value, inclusive.
        upper: Option<FilterValue>,
    },
}

/// One filter; a query's filters combine with AND.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Filter {
    /// What it looks at.
    pub target: FilterTarget,
    /// What must hold.
    pub condition: Condition,
}

/// What a sort key orders by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SortField {
    /// The call's id.
    Id,
    /// A sortable attribute: createdAt, updatedAt, state, outcome, from, to, recordingUrl,
    /// userCallType, or any date-time attribute.
    Attr(Field),
}

/// One sort key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SortKey {
    /// What it orders by.
    pub field: SortField,
    /// Descending (`-field`) rather than ascending.
    pub descending: bool,
}

/// Where a page starts: just after, or just before, the row an opaque cursor names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PageCursor {
    /// `page[after]=<cursor>`: the rows following it.
    After(String),
    /// `page[before]=<cursor>`: the rows preceding it.
    Before(String),
}

/// A list query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuery {
    /// Filters, combined with AND.
    pub filters: Vec<Filter>,
    /// Sort keys, most significant first; empty means `id` ascending. `id` always breaks ties, in the direction of the last key.
    pub sort: Vec<SortKey>,
    /// Rows per page, 1 to [`MAX_PAGE_SIZE`].
    pub page_size: usize,
    /// Where to start; `None` is the first page.
    pub cursor: Option<PageCursor>,
    /// Whether to count every matching row (costs a walk of all of them).
    pub count: bool,
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    /// The rows, in the query's sort order (also for a `page[before]` walk).
    pub calls: Vec<Call>,
    /// Whether rows follow the last one.
    pub more_after: bool,
    /// Whether rows precede the first one.
    pub more_before: bool,
    /// Every matching row, when counting was asked for.
    pub count: Option<u64>,
}

/// A call deleted since a position, for incremental sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    /// The call's id.
    pub id: u64,
    /// When the deletion was recorded.
    pub deleted_at: Timestamp,
    /// The log position of its CallDeleted event.
    pub position: u64,
}

/// The calls created, changed or deleted after a log position, in log order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangesPage {
    /// Live calls whose latest event lies after the position, in the order of those events.
    pub calls: Vec<Call>,
    /// Calls deleted after the position, in log order.
    pub deleted: Vec<Deletion>,
    /// The position to ask from next time (`after=` of the next request).
    pub next_after: u64,
    /// Whether the limit cut the page short (ask again at once).
    pub more: bool,
}
