//! The query engine: validates a [`ListQuery`], picks a plan that reads candidates in the list's
//! order from the in-memory indexes, and reads only the stored rows it returns.
//!
//! # Plans
//!
//! The order is the sort keys, then `id` (in the direction of the last sort key unless `id` is
//! named). Every plan yields candidate ids already in that order, starting at the cursor, so a
//! page costs about `page size / selectivity` cheap in-memory checks plus `page size` row reads:
//!
//! * **Fixed**: some filter names a small set of calls (a prospect's calls, a few ids, a narrow
//!   date range). Its ids are collected, ordered in memory from the sort columns, and walked
//!   from the cursor. Used when the set is below a limit that grows with the square root of the
//!   number of live calls (where ordering the set costs about what walking the sort index would).
//! * **Merge** (order by id): a k-way merge, in id order, of the per-value ranges of an equality
//!   filter's index (`prospect` in 1,2,3; `direction=inbound`).
//! * **Sorted** (order by an attribute): the first sort key's index, in value order, restricted
//!   to the range its own filters allow. With more sort keys, the calls sharing a first value
//!   form a group: a small group is ordered in memory by the remaining keys; a large one (a
//!   `state` or `outcome` shared by many calls), when the order is two keys, is read from the
//!   second key's index in order, keeping the group's members. Orders of three or more keys
//!   sort large groups in memory, O(group) per page.
//! * **AllIds** (order by id, nothing selective): the live ids in order, within any id range.
//!
//! Each candidate is checked against every filter, in memory where the indexes can answer
//! (columns for sortable attributes, set membership for equality filters) and on the stored row
//! where they cannot (`null` on a filter-only attribute, `tags`, a note's text).

use crate::cursor;
use crate::error::{ProjectionError, QueryError};
use crate::index::{note_hash, relation_slot, slot, Indexes, Slot, NULL_TIME};
use crate::query::{
    Condition, Filter, FilterTarget, FilterValue, ListPage, ListQuery, PageCursor, SortField,
    SortKey, MAX_PAGE_SIZE,
};
use crate::store::{load_call, View};
use call_model::{AttrValue, Call, Field};
use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap};
use std::ops::Bound::{self, Excluded, Included, Unbounded};
use std::sync::Arc;

/// A sort value as the order compares it: null first, then the value. One sort key only ever
/// holds nulls and one of the other variants.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SortVal {
    /// Null.
    Null,
    /// A date-time, in milliseconds.
    Int(i64),
    /// A string.
    Text(Arc<str>),
}

/// Where a sortable attribute's index and column live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SortCol {
    /// `Indexes::times[i]`.
    Time(usize),
    /// `Indexes::sort_texts[i]`.
    Text(usize),
}

/// One sort key before the final `id`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OrderKey {
    pub(crate) field: Field,
    pub(crate) col: SortCol,
    pub(crate) desc: bool,
}

/// A list's normalised order: the attribute keys, then `id`.
#[derive(Clone, Debug)]
pub(crate) struct Order {
    pub(crate) keys: Vec<OrderKey>,
    pub(crate) id_desc: bool,
}

/// A row's place in an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RowKey {
    /// One value per attribute key.
    pub(crate) vals: Vec<SortVal>,
    pub(crate) id: u64,
}

impl Order {
    /// Normalises sort keys: keys after `id` change nothing and are dropped, a repeated key is
    /// dropped, and `id` is added last, in the direction of the last key written, when not named.
    pub(crate) fn of(sort: &[SortKey]) -> Result<Order, QueryError> {
        let mut keys: Vec<OrderKey> = Vec::new();
        // `id` breaks ties in the direction of the last key as written.
        let mut id_desc = false;
        for key in sort {
            id_desc = key.descending;
            match key.field {
                SortField::Id => break,
                SortField::Attr(field) => {
                    let col = match slot(field) {
                        Slot::Time(i) => SortCol::Time(i),
                        Slot::SortText(i) => SortCol::Text(i),
                        _ => return Err(QueryError::InvalidSort(field.name().to_owned())),
                    };
                    if keys.iter().all(|k| k.field != field) {
                        keys.push(OrderKey {
                            field,
                            col,
                            desc: key.descending,
                        });
                    }
                }
            }
        }
        Ok(Order { keys, id_desc })
    }

    /// Ascending id: the default order.
    pub(crate) fn by_id() -> Order {
        Order {
            keys: Vec::new(),
            id_desc: false,
        }
    }

    /// Compares two rows in this order.
    pub(crate) fn cmp(&self, a: &RowKey, b: &RowKey) -> Ordering {
        for (i, key) in self.keys.iter().enumerate() {
            let ordering = a.vals.get(i).cmp(&b.vals.get(i));
            let ordering = if key.desc {
                ordering.reverse()
            } else {
                ordering
            };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        let ordering = a.id.cmp(&b.id);
        if self.id_desc {
            ordering.reverse()
        } else {
            ordering
        }
    }

    /// Whether the first key's index order (value, then id) is exactly this order (or its
    /// reverse), so no in-memory sorting is needed.
    fn index_order_is_exact(&self) -> bool {
        self.keys.len() == 1 && self.keys[0].desc == self.id_desc
    }

    /// The place of call `id`, from the in-memory columns.
    fn key_of(&self, indexes: &Indexes, id: u64) -> RowKey {
        RowKey {
            vals: self
                .keys
                .iter()
                .map(|key| column_value(indexes, key.col, id))
                .collect(),
            id,
        }
    }

    /// The place of `call`.
    pub(crate) fn key_of_call(&self, call: &Call) -> RowKey {
        RowKey {
            vals: self
                .keys
                .iter()
                .map(|key| match key.col {
                    SortCol::Time(_) => call
                        .time(key.field)
                        .map_or(SortVal::Null, |at| SortVal::Int(at.millis())),
                    SortCol::Text(_) => call
                        .text(key.field)
                        .map_or(SortVal::Null, |text| SortVal::Text(Arc::from(text))),
                })
                .collect(),
            id: call.id,
        }
    }
}

fn column_value(indexes: &Indexes, col: SortCol, id: u64) -> SortVal {
    match col {
        SortCol::Time(i) => match *indexes.times[i].col.get(id) {
            NULL_TIME => SortVal::Null,
            millis => SortVal::Int(millis),
        },
        SortCol::Text(i) => match indexes.sort_texts[i].col.get(id) {
            Some(text) => SortVal::Text(Arc::clone(text)),
            None => SortVal::Null,
        },
    }
}

/// Where a filter looks in the indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Id,
    Time(usize),
    SortText(usize),
    Text(usize),
    Tags,
    Flag,
    Note,
    Related(usize),
}

/// A filter value, typed as the indexes hold it (date-times as milliseconds).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Val {
    Int(i64),
    Text(Arc<str>),
    Bool(bool),
}

/// A value read from a call or a column, to compare with a [`Val`].
#[derive(Clone, Copy)]
enum ValRef<'a> {
    Int(i64),
    Text(&'a str),
    Bool(bool),
}

impl ValRef<'_> {
    fn cmp_val(self, other: &Val) -> Option<Ordering> {
        match (self, other) {
            (ValRef::Int(a), Val::Int(b)) => Some(a.cmp(b)),
            (ValRef::Text(a), Val::Text(b)) => Some(a.cmp(&**b)),
            (ValRef::Bool(a), Val::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

enum Cond {
    /// Sorted, without duplicates.
    AnyOf(Vec<Val>),
    Null,
    NotNull,
    Range(Option<Val>, Option<Val>),
}

impl Cond {
    fn holds(&self, value: Option<ValRef<'_>>) -> bool {
        match self {
            Cond::AnyOf(values) => value.is_some_and(|value| {
                values
                    .iter()
                    .any(|v| value.cmp_val(v) == Some(Ordering::Equal))
            }),
            Cond::Null => value.is_none(),
            Cond::NotNull => value.is_some(),
            Cond::Range(lower, upper) => value.is_some_and(|value| {
                lower.as_ref().is_none_or(|lower| {
                    matches!(
                        value.cmp_val(lower),
                        Some(Ordering::Greater | Ordering::Equal)
                    )
                }) && upper.as_ref().is_none_or(|upper| {
                    matches!(value.cmp_val(upper), Some(Ordering::Less | Ordering::Equal))
                })
            }),
        }
    }
}

/// A validated filter.
struct Resolved {
    target: Target,
    source: FilterTarget,
    cond: Cond,
    /// For `note` equality: the hashes its index holds.
    hashes: Vec<u64>,
}

/// What the in-memory indexes can say about a candidate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    Yes,
    No,
    /// Only the stored row can tell.
    Maybe,
}

fn yes_if(holds: bool) -> Check {
    if holds {
        Check::Yes
    } else {
        Check::No
    }
}

fn id_value(id: u64) -> ValRef<'static> {
    ValRef::Int(i64::try_from(id).unwrap_or(i64::MAX))
}

impl Resolved {
    fn new(filter: &Filter) -> Result<Resolved, QueryError> {
        #[derive(Clone, Copy)]
        enum Kind {
            Int,
            Time,
            Text,
            Bool,
        }
        let invalid = |reason: &str| QueryError::InvalidFilter {
            target: match filter.target {
                FilterTarget::Id => "id".to_owned(),
                FilterTarget::Attr(field) => field.name().to_owned(),
                FilterTarget::Related(relation) => format!("{relation}.id"),
            },
            reason: reason.to_owned(),
        };
        let (target, kind, rangeable) = match filter.target {
            FilterTarget::Id => (Target::Id, Kind::Int, true),
            FilterTarget::Attr(field) => match slot(field) {
                Slot::Time(i) => (Target::Time(i), Kind::Time, true),
                Slot::SortText(i) => (Target::SortText(i), Kind::Text, true),
                Slot::Text(i) => (Target::Text(i), Kind::Text, true),
                Slot::Note => (Target::Note, Kind::Text, true),
                Slot::Flag => (Target::Flag, Kind::Bool, false),
                Slot::Tags => (Target::Tags, Kind::Text, false),
            },
            FilterTarget::Related(relation) => match relation_slot(relation) {
                Some(i) => (Target::Related(i), Kind::Int, true),
                None => {
                    return Err(invalid(
                        "this relationship cannot be filtered on (every to-one relationship but associatedId can)",
                    ))
                }
            },
        };
        let convert = |value: &FilterValue| match (kind, value) {
            (Kind::Int, FilterValue::Int(n)) => Ok(Val::Int(*n)),
            (Kind::Time, FilterValue::Time(at)) => Ok(Val::Int(at.millis())),
            (Kind::Text, FilterValue::Text(text)) => Ok(Val::Text(Arc::from(text.as_str()))),
            (Kind::Bool, FilterValue::Bool(flag)) => Ok(Val::Bool(*flag)),
            (Kind::Int, _) => Err(invalid("expected an integer id")),
            (Kind::Time, _) => Err(invalid("expected an RFC 3339 date-time")),
            (Kind::Text, _) => Err(invalid("expected a string")),
            (Kind::Bool, _) => Err(invalid("expected true or false")),
        };
        let cond = match &filter.condition {
            Condition::AnyOf(values) => {
                let mut values = values.iter().map(convert).collect::<Result<Vec<_>, _>>()?;
                values.sort();
                values.dedup();
                Cond::AnyOf(values)
            }
            Condition::Null => Cond::Null,
            Condition::NotNull => Cond::NotNull,
            Condition::Range { lower, upper } => {
                if !rangeable {
                    return Err(invalid(
                        "a range is not allowed here; expected values, __null__ or __notnull__",
                    ));
                }
                Cond::Range(
                    lower.as_ref().map(convert).transpose()?,
                    upper.as_ref().map(convert).transpose()?,
                )
            }
        };
        let hashes = match (&target, &cond) {
            (Target::Note, Cond::AnyOf(values)) => values
                .iter()
                .filter_map(|v| match v {
                    Val::Text(text) => Some(note_hash(text)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(Resolved {
            target,
            source: filter.target,
            cond,
            hashes,
        })
    }

    /// Whether the filter certainly matches nothing.
    fn is_empty(&self) -> bool {
        matches!(&self.cond, Cond::AnyOf(values) if values.is_empty())
            || (self.target == Target::Id && matches!(self.cond, Cond::Null))
    }

    /// What the in-memory indexes say about call `id`.
    fn check_indexes(&self, indexes: &Indexes, id: u64) -> Check {
        let any_text = |contains: &dyn Fn(&str) -> bool| match &self.cond {
            Cond::AnyOf(values) => yes_if(values.iter().any(|v| match v {
                Val::Text(text) => contains(text),
                _ => false,
            })),
            _ => Check::Maybe,
        };
        match self.target {
            Target::Id => yes_if(self.cond.holds(Some(id_value(id)))),
            Target::Time(i) => {
                let millis = *indexes.times[i].col.get(id);
                yes_if(
                    self.cond
                        .holds((millis != NULL_TIME).then_some(ValRef::Int(millis))),
                )
            }
            Target::SortText(i) => yes_if(
                self.cond.holds(
                    indexes.sort_texts[i]
                        .col
                        .get(id)
                        .as_deref()
                        .map(ValRef::Text),
                ),
            ),
            Target::Text(i) => any_text(&|text| indexes.texts[i].contains(text, id)),
            Target::Tags => any_text(&|text| indexes.tags.contains(text, id)),
            Target::Flag => match &self.cond {
                Cond::AnyOf(values) => yes_if(values.iter().any(|v| match v {
                    Val::Bool(flag) => indexes.flags.contains(&(*flag, id)),
                    _ => false,
                })),
                _ => Check::Maybe,
            },
            Target::Note => match &self.cond {
                // A hash hit may be a collision: only the row can confirm it.
                Cond::AnyOf(_) => {
                    if self
                        .hashes
                        .iter()
                        .any(|h| indexes.notes.contains(&(*h, id)))
                    {
                        Check::Maybe
                    } else {
                        Check::No
                    }
                }
                _ => Check::Maybe,
            },
            Target::Related(i) => match &self.cond {
                Cond::AnyOf(values) => yes_if(values.iter().any(|v| match v {
                    Val::Int(target) => indexes.related[i].contains(&(*target, id)),
                    _ => false,
                })),
                _ => Check::Maybe,
            },
        }
    }

    /// Whether the stored call matches: the filter's exact meaning.
    fn check_call(&self, call: &Call) -> bool {
        match self.source {
            FilterTarget::Id => self.cond.holds(Some(id_value(call.id))),
            FilterTarget::Related(relation) => {
                self.cond.holds(call.related_id(relation).map(ValRef::Int))
            }
            FilterTarget::Attr(Field::Tags) => {
                let tags = match call.attribute(Field::Tags) {
                    Some(AttrValue::Tags(tags)) => tags.as_slice(),
                    _ => &[],
                };
                match self.cond {
                    Cond::Null => tags.is_empty(),
                    Cond::NotNull => !tags.is_empty(),
                    _ => tags
                        .iter()
                        .any(|tag| self.cond.holds(Some(ValRef::Text(tag)))),
                }
            }
            FilterTarget::Attr(field) => {
                self.cond
                    .holds(call.attribute(field).and_then(|value| match value {
                        AttrValue::Text(text) => Some(ValRef::Text(text)),
                        AttrValue::Time(at) => Some(ValRef::Int(at.millis())),
                        AttrValue::Bool(flag) => Some(ValRef::Bool(*flag)),
                        AttrValue::Tags(_) => None,
                    }))
            }
        }
    }

    /// Whether the filter's index can list its calls in id order, one range per value.
    fn streams(&self) -> bool {
        match (&self.target, &self.cond) {
            (Target::Id, _) => false,
            (_, Cond::AnyOf(_)) => true,
            (Target::Time(_) | Target::SortText(_), Cond::Null) => true,
            _ => false,
        }
    }

    /// Whether the filter's index holds its calls as one range of values.
    fn ranges(&self) -> bool {
        matches!(
            (&self.target, &self.cond),
            (
                Target::Time(_) | Target::SortText(_) | Target::Text(_) | Target::Related(_),
                Cond::Range(..)
            )
        )
    }

    /// How much a stream over this filter is preferred when several are too big to count:
    /// relationship ids are the most selective in practice, timestamps and notes the least.
    fn stream_rank(&self) -> u8 {
        match self.target {
            Target::Related(_) => 0,
            Target::Text(_) | Target::Tags => 1,
            Target::SortText(_) => 2,
            Target::Flag => 3,
            Target::Time(_) | Target::Note => 4,
            Target::Id => 5,
        }
    }

    /// One iterator per value, each yielding the value's calls in id order within `lo..=hi`.
    fn value_streams<'a>(
        &self,
        indexes: &'a Indexes,
        lo: u64,
        hi: u64,
        descending: bool,
    ) -> Vec<IdIter<'a>> {
        let mut out = Vec::new();
        let mut add = |iter: IdIter<'a>| out.push(iter);
        match (&self.target, &self.cond) {
            (Target::Time(i), Cond::Null) => add(ids_of(
                &indexes.times[*i].set,
                NULL_TIME,
                lo,
                hi,
                descending,
            )),
            (Target::SortText(i), Cond::Null) => add(ids_of(
                &indexes.sort_texts[*i].set,
                None,
                lo,
                hi,
                descending,
            )),
            (_, Cond::AnyOf(values)) => {
                for value in values {
                    match (&self.target, value) {
                        (Target::Time(i), Val::Int(millis)) => {
                            add(ids_of(&indexes.times[*i].set, *millis, lo, hi, descending))
                        }
                        (Target::SortText(i), Val::Text(text)) => {
                            if let Some(shared) = indexes.sort_texts[*i].shared(text) {
                                add(ids_of(
                                    &indexes.sort_texts[*i].set,
                                    Some(shared),
                                    lo,
                                    hi,
                                    descending,
                                ))
                            }
                        }
                        (Target::Text(i), Val::Text(text)) => {
                            if let Some(shared) = indexes.texts[*i].shared(text) {
                                add(ids_of(&indexes.texts[*i].set, shared, lo, hi, descending))
                            }
                        }
                        (Target::Tags, Val::Text(text)) => {
                            if let Some(shared) = indexes.tags.shared(text) {
                                add(ids_of(&indexes.tags.set, shared, lo, hi, descending))
                            }
                        }
                        (Target::Flag, Val::Bool(flag)) => {
                            add(ids_of(&indexes.flags, *flag, lo, hi, descending))
                        }
                        (Target::Related(i), Val::Int(target)) => {
                            add(ids_of(&indexes.related[*i], *target, lo, hi, descending))
                        }
                        _ => {}
                    }
                }
                if self.target == Target::Note {
                    for hash in &self.hashes {
                        add(ids_of(&indexes.notes, *hash, lo, hi, descending));
                    }
                }
            }
            _ => {}
        }
        out
    }

    /// The calls of a range filter, in value order, within `lo..=hi`.
    fn range_ids<'a>(&self, indexes: &'a Indexes, lo: u64, hi: u64) -> IdIter<'a> {
        let Cond::Range(lower, upper) = &self.cond else {
            return Box::new(std::iter::empty());
        };
        let iter: IdIter<'a> = match self.target {
            Target::Time(i) => {
                let int = |v: &Val| match v {
                    Val::Int(n) => Some(*n),
                    _ => None,
                };
                let lower = match lower {
                    Some(v) => int(v).map(|n| Included((n, 0))),
                    // A range never matches null.
                    None => Some(Excluded((NULL_TIME, u64::MAX))),
                };
                let upper = match upper {
                    Some(v) => int(v).map(|n| Included((n, u64::MAX))),
                    None => Some(Unbounded),
                };
                match (lower, upper) {
                    (Some(lower), Some(upper)) => {
                        ids_in(&indexes.times[i].set, lower, upper, false)
                    }
                    _ => Box::new(std::iter::empty()),
                }
            }
            Target::SortText(i) => {
                let lower = match lower {
                    Some(Val::Text(t)) => Included((Some(Arc::clone(t)), 0)),
                    _ => Excluded((None, u64::MAX)),
                };
                let upper = match upper {
                    Some(Val::Text(t)) => Included((Some(Arc::clone(t)), u64::MAX)),
                    _ => Unbounded,
                };
                ids_in(&indexes.sort_texts[i].set, lower, upper, false)
            }
            Target::Text(i) => {
                let lower = match lower {
                    Some(Val::Text(t)) => Included((Arc::clone(t), 0)),
                    _ => Unbounded,
                };
                let upper = match upper {
                    Some(Val::Text(t)) => Included((Arc::clone(t), u64::MAX)),
                    _ => Unbounded,
                };
                ids_in(&indexes.texts[i].set, lower, upper, false)
            }
            Target::Related(i) => {
                let lower = match lower {
                    Some(Val::Int(n)) => Included((*n, 0)),
                    _ => Unbounded,
                };
                let upper = match upper {
                    Some(Val::Int(n)) => Included((*n, u64::MAX)),
                    _ => Unbounded,
                };
                ids_in(&indexes.related[i], lower, upper, false)
            }
            _ => Box::new(std::iter::empty()),
        };
        Box::new(iter.filter(move |id| (lo..=hi).contains(id)))
    }

    /// How many calls the filter's index names (counting up to `cap + 1`), when it can list
    /// them; `None` when it cannot.
    fn count(&self, indexes: &Indexes, lo: u64, hi: u64, cap: usize) -> Option<usize> {
        if let (Target::Id, Cond::AnyOf(values)) = (&self.target, &self.cond) {
            return Some(values.len());
        }
        if self.streams() {
            let mut total = 0;
            for stream in self.value_streams(indexes, lo, hi, false) {
                total += stream.take(cap + 1 - total).count();
                if total > cap {
                    break;
                }
            }
            Some(total)
        } else if self.ranges() {
            Some(self.range_ids(indexes, lo, hi).take(cap + 1).count())
        } else {
            None
        }
    }

    /// Every live call the filter's index names, sorted by id.
    fn collect(&self, indexes: &Indexes, lo: u64, hi: u64) -> Vec<u64> {
        let mut ids: Vec<u64> = match (&self.target, &self.cond) {
            (Target::Id, Cond::AnyOf(values)) => values
                .iter()
                .filter_map(|v| match v {
                    Val::Int(n) => u64::try_from(*n).ok(),
                    _ => None,
                })
                .filter(|id| (lo..=hi).contains(id) && indexes.ids.contains(id))
                .collect(),
            _ if self.streams() => self
                .value_streams(indexes, lo, hi, false)
                .into_iter()
                .flatten()
                .collect(),
            _ => self.range_ids(indexes, lo, hi).collect(),
        };
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

type IdIter<'a> = Box<dyn Iterator<Item = u64> + 'a>;
/// A bound on index entries `(value, id)`.
type EntryBound = Bound<(SortVal, u64)>;
type EntryIter<'a> = Box<dyn Iterator<Item = (SortVal, u64)> + 'a>;

/// The ids stored under `key` within `lo..=hi`, in id order.
fn ids_of<K: Ord + Clone>(
    set: &BTreeSet<(K, u64)>,
    key: K,
    lo: u64,
    hi: u64,
    descending: bool,
) -> IdIter<'_> {
    if lo > hi {
        return Box::new(std::iter::empty());
    }
    let range = set.range((key.clone(), lo)..=(key, hi)).map(|(_, id)| *id);
    if descending {
        Box::new(range.rev())
    } else {
        Box::new(range)
    }
}

/// The ids of the entries within bounds, in entry order.
fn ids_in<K: Ord>(
    set: &BTreeSet<(K, u64)>,
    lower: Bound<(K, u64)>,
    upper: Bound<(K, u64)>,
    descending: bool,
) -> IdIter<'_> {
    Box::new(entries_in(set, lower, upper, descending, |_| SortVal::Null).map(|(_, id)| id))
}

/// The entries within bounds, in entry order (or reversed), with their values shown as
/// [`SortVal`]. Empty when the bounds are crossed (which `BTreeSet::range` would panic on).
fn entries_in<K: Ord>(
    set: &BTreeSet<(K, u64)>,
    lower: Bound<(K, u64)>,
    upper: Bound<(K, u64)>,
    descending: bool,
    show: impl Fn(&K) -> SortVal + 'static,
) -> EntryIter<'_> {
    let crossed = match (&lower, &upper) {
        (Included(a), Included(b)) => a > b,
        (Included(a) | Excluded(a), Included(b) | Excluded(b)) => a >= b,
        _ => false,
    };
    if crossed {
        return Box::new(std::iter::empty());
    }
    let range = set
        .range((lower, upper))
        .map(move |(key, id)| (show(key), *id));
    if descending {
        Box::new(range.rev())
    } else {
        Box::new(range)
    }
}

/// The tighter of two lower bounds.
fn max_lower<T: Ord>(a: Bound<T>, b: Bound<T>) -> Bound<T> {
    match (&a, &b) {
        (Unbounded, _) => b,
        (_, Unbounded) => a,
        (Included(x) | Excluded(x), Included(y) | Excluded(y)) => match x.cmp(y) {
            Ordering::Greater => a,
            Ordering::Less => b,
            Ordering::Equal if matches!(a, Excluded(_)) => a,
            Ordering::Equal => b,
        },
    }
}

/// The tighter of two upper bounds.
fn min_upper<T: Ord>(a: Bound<T>, b: Bound<T>) -> Bound<T> {
    match (&a, &b) {
        (Unbounded, _) => b,
        (_, Unbounded) => a,
        (Included(x) | Excluded(x), Included(y) | Excluded(y)) => match x.cmp(y) {
            Ordering::Less => a,
            Ordering::Greater => b,
            Ordering::Equal if matches!(a, Excluded(_)) => a,
            Ordering::Equal => b,
        },
    }
}

/// A k-way merge of id-ordered iterators, without repeats.
struct MergeIds<'a> {
    heap: BinaryHeap<(u64, usize)>,
    iters: Vec<IdIter<'a>>,
    descending: bool,
    last: Option<u64>,
}

impl<'a> MergeIds<'a> {
    fn new(mut iters: Vec<IdIter<'a>>, descending: bool) -> MergeIds<'a> {
        let mut merge = MergeIds {
            heap: BinaryHeap::with_capacity(iters.len()),
            iters: Vec::new(),
            descending,
            last: None,
        };
        for (i, iter) in iters.iter_mut().enumerate() {
            if let Some(id) = iter.next() {
                merge.heap.push((merge.heap_key(id), i));
            }
        }
        merge.iters = iters;
        merge
    }

    /// The heap is a max-heap: ascending ids are pushed bit-inverted so the smallest pops first.
    fn heap_key(&self, id: u64) -> u64 {
        if self.descending {
            id
        } else {
            !id
        }
    }
}

impl Iterator for MergeIds<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        loop {
            let (key, i) = self.heap.pop()?;
            let id = if self.descending { key } else { !key };
            if let Some(next) = self.iters.get_mut(i).and_then(Iterator::next) {
                let key = self.heap_key(next);
                self.heap.push((key, i));
            }
            if self.last != Some(id) {
                self.last = Some(id);
                return Some(id);
            }
        }
    }
}

/// Yields the calls of a multi-key order (or one whose `id` direction differs from the first
/// key's) group by group of equal first-key values, each group in the whole order.
///
/// A small group is collected and sorted in memory. A large one, when the order is two keys
/// whose second key's index order is exact, is read from the second key's index in order,
/// keeping the group's members (a column check per entry): a page then costs about
/// `page * live / group` cheap checks instead of ordering the whole group.
struct GroupWalk<'a> {
    indexes: &'a Indexes,
    order: &'a Order,
    backward: bool,
    /// Groups whose size is at most this are sorted in memory.
    sort_limit: usize,
    /// The first key's index range still to walk.
    lower: Bound<(SortVal, u64)>,
    upper: Bound<(SortVal, u64)>,
    /// The first key's index is walked ascending.
    ascending: bool,
    /// The value bounds the filters put on the second key.
    second: (Bound<SortVal>, Bound<SortVal>),
    /// Where the walk starts: within the first group only.
    start: Option<RowKey>,
    current: IdIter<'a>,
}

impl<'a> GroupWalk<'a> {
    /// The next group's calls in order, or `None` when no group is left.
    fn next_group(&mut self) -> Option<IdIter<'a>> {
        let first = self.order.keys[0];
        let (value, _) = sorted_entries(
            self.indexes,
            first.col,
            self.lower.clone(),
            self.upper.clone(),
            !self.ascending,
        )
        .next()?;
        // The following group lies beyond every entry of this one.
        if self.ascending {
            self.lower = Excluded((value.clone(), u64::MAX));
        } else {
            self.upper = Excluded((value.clone(), 0));
        }
        let start = self.start.take().filter(|s| s.vals.first() == Some(&value));
        let members: Vec<u64> = sorted_entries(
            self.indexes,
            first.col,
            Included((value.clone(), 0)),
            Included((value.clone(), u64::MAX)),
            false,
        )
        .take(self.sort_limit + 1)
        .map(|(_, id)| id)
        .collect();
        let second_exact =
            self.order.keys.len() == 2 && self.order.keys[1].desc == self.order.id_desc;
        if members.len() > self.sort_limit && second_exact {
            let second = self.order.keys[1];
            let ascending = second.desc == self.backward;
            let from = start.and_then(|s| s.vals.get(1).cloned().map(|v| (v, s.id)));
            let (lower, upper) = entry_bounds(&self.second.0, &self.second.1);
            let (lower, upper) = match from {
                Some(from) if ascending => (max_lower(lower, Included(from)), upper),
                Some(from) => (lower, min_upper(upper, Included(from))),
                None => (lower, upper),
            };
            let (indexes, col) = (self.indexes, first.col);
            return Some(Box::new(
                sorted_entries(indexes, second.col, lower, upper, !ascending)
                    .map(|(_, id)| id)
                    .filter(move |id| column_value(indexes, col, *id) == value),
            ));
        }
        let members = if members.len() > self.sort_limit {
            // No index gives this order: the whole group is sorted.
            sorted_entries(
                self.indexes,
                first.col,
                Included((value.clone(), 0)),
                Included((value, u64::MAX)),
                false,
            )
            .map(|(_, id)| id)
            .collect()
        } else {
            members
        };
        let mut keys: Vec<RowKey> = members
            .into_iter()
            .map(|id| self.order.key_of(self.indexes, id))
            .collect();
        keys.sort_by(|a, b| directed(self.order.cmp(a, b), self.backward));
        Some(Box::new(keys.into_iter().map(|key| key.id)))
    }
}

impl Iterator for GroupWalk<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        loop {
            if let Some(id) = self.current.next() {
                return Some(id);
            }
            self.current = self.next_group()?;
        }
    }
}

fn directed(ordering: Ordering, backward: bool) -> Ordering {
    if backward {
        ordering.reverse()
    } else {
        ordering
    }
}

/// How a list reads its candidates.
enum Plan<'f> {
    /// Every live id within `lo..=hi`.
    AllIds { lo: u64, hi: u64 },
    /// The id-ordered merge of an equality filter's values.
    Merge {
        filter: &'f Resolved,
        lo: u64,
        hi: u64,
    },
    /// The first sort key's index, within these value bounds.
    Sorted {
        lower: Bound<SortVal>,
        upper: Bound<SortVal>,
    },
    /// A small set of ids, ordered in memory.
    Fixed(Vec<u64>),
}

/// With an id order, a filter's calls are collected and ordered in memory up to this many.
/// (Tests use a small limit so that their few hundred calls exercise the other plans too.)
const ID_ORDER_FIXED_LIMIT: usize = if cfg!(test) { 40 } else { 8192 };
/// With an attribute order, never collect more than this many.
const ATTR_ORDER_FIXED_CEILING: usize = 50_000;

/// The largest candidate set an attribute-ordered list collects and orders in memory rather
/// than walking the sort index. Ordering `m` candidates costs about `m` column reads; walking
/// the sort index costs about `page * live / m` in-memory checks (the matches are spread over
/// the index). The two meet at `m = sqrt(page * live)`.
fn fixed_limit(page: usize, live: usize) -> usize {
    let balance = (2.0 * (page as f64 + 1.0) * live as f64).sqrt() as usize;
    balance.clamp(4 * (page + 1), ATTR_ORDER_FIXED_CEILING)
}

/// The ids the filters allow, as one inclusive range (empty when `lo > hi`).
fn id_bounds(filters: &[Resolved]) -> (u64, u64) {
    let (mut lo, mut hi) = (0u64, u64::MAX);
    for filter in filters.iter().filter(|f| f.target == Target::Id) {
        let (low, high) = match &filter.cond {
            Cond::AnyOf(values) => match (values.first(), values.last()) {
                (Some(Val::Int(min)), Some(Val::Int(max))) => (Some(*min), Some(*max)),
                _ => (Some(1), Some(0)),
            },
            Cond::Range(low, high) => (
                low.as_ref().and_then(|v| match v {
                    Val::Int(n) => Some(*n),
                    _ => None,
                }),
                high.as_ref().and_then(|v| match v {
                    Val::Int(n) => Some(*n),
                    _ => None,
                }),
            ),
            Cond::Null => (Some(1), Some(0)),
            Cond::NotNull => (None, None),
        };
        if let Some(low) = low {
            lo = lo.max(u64::try_from(low).unwrap_or(0));
        }
        if let Some(high) = high {
            match u64::try_from(high) {
                Ok(high) => hi = hi.min(high),
                Err(_) => return (1, 0),
            }
        }
    }
    (lo, hi)
}

/// The value bounds the filters put on the first sort key's attribute.
fn value_bounds(filters: &[Resolved], col: SortCol) -> (Bound<SortVal>, Bound<SortVal>) {
    let as_sort = |v: &Val| match v {
        Val::Int(n) => SortVal::Int(*n),
        Val::Text(text) => SortVal::Text(Arc::clone(text)),
        Val::Bool(_) => SortVal::Null,
    };
    let (mut lower, mut upper) = (Unbounded, Unbounded);
    for filter in filters {
        let on_col = matches!(
            (filter.target, col),
            (Target::Time(a), SortCol::Time(b)) | (Target::SortText(a), SortCol::Text(b)) if a == b
        );
        if !on_col {
            continue;
        }
        let (low, high) = match &filter.cond {
            Cond::AnyOf(values) => match (values.first(), values.last()) {
                (Some(min), Some(max)) => (Included(as_sort(min)), Included(as_sort(max))),
                _ => continue,
            },
            Cond::Null => (Included(SortVal::Null), Included(SortVal::Null)),
            Cond::NotNull => (Excluded(SortVal::Null), Unbounded),
            Cond::Range(low, high) => (
                low.as_ref()
                    .map_or(Excluded(SortVal::Null), |v| Included(as_sort(v))),
                high.as_ref().map_or(Unbounded, |v| Included(as_sort(v))),
            ),
        };
        lower = max_lower(lower, low);
        upper = min_upper(upper, high);
    }
    (lower, upper)
}

/// Picks how to read a list's candidates.
fn plan<'f>(filters: &'f [Resolved], order: &Order, indexes: &Indexes, page: usize) -> Plan<'f> {
    let (lo, hi) = id_bounds(filters);
    if lo > hi || filters.iter().any(Resolved::is_empty) {
        return Plan::Fixed(Vec::new());
    }
    let cap = if order.keys.is_empty() {
        ID_ORDER_FIXED_LIMIT
    } else {
        fixed_limit(page, indexes.live())
    };
    // The filter naming the fewest calls, if it names at most `cap`.
    let mut smallest: Option<(usize, &Resolved)> = None;
    for filter in filters {
        let limit = smallest.map_or(cap, |(count, _)| count.saturating_sub(1));
        if let Some(count) = filter.count(indexes, lo, hi, limit) {
            if count <= limit {
                smallest = Some((count, filter));
            }
        }
    }
    if order.keys.is_empty() {
        match smallest {
            Some((_, filter)) if filter.streams() => Plan::Merge { filter, lo, hi },
            Some((_, filter)) => Plan::Fixed(filter.collect(indexes, lo, hi)),
            None => match filters
                .iter()
                .filter(|f| f.streams())
                .min_by_key(|f| f.stream_rank())
            {
                Some(filter) => Plan::Merge { filter, lo, hi },
                None => Plan::AllIds { lo, hi },
            },
        }
    } else {
        match smallest {
            Some((_, filter)) => Plan::Fixed(filter.collect(indexes, lo, hi)),
            None => {
                let (lower, upper) = value_bounds(filters, order.keys[0].col);
                Plan::Sorted { lower, upper }
            }
        }
    }
}

/// Where a walk starts: after (or at, when `inclusive`) a row's place.
#[derive(Clone, Copy)]
struct Start<'k> {
    key: &'k RowKey,
    inclusive: bool,
}

/// One list query against one view.
struct Run<'a> {
    view: &'a View,
    /// The page size asked for.
    page: usize,
    filters: &'a [Resolved],
    order: &'a Order,
    plan: Plan<'a>,
}

impl<'a> Run<'a> {
    /// The candidates in order (`backward`: in reverse order) from `start`. Every plan yields
    /// exactly the list's order; the start is applied approximately here (to skip what it can)
    /// and exactly by the caller.
    fn candidates(&'a self, backward: bool, start: Option<Start<'_>>) -> IdIter<'a> {
        let indexes = &self.view.indexes;
        let order = self.order;
        let id_descending = order.id_desc != backward;
        // Narrows an id range to what lies at or beyond the start.
        let from_start = |lo: u64, hi: u64| match start {
            Some(start) if id_descending => (lo, hi.min(start.key.id)),
            Some(start) => (lo.max(start.key.id), hi),
            None => (lo, hi),
        };
        match &self.plan {
            Plan::AllIds { lo, hi } => {
                let (lo, hi) = from_start(*lo, *hi);
                if lo > hi {
                    return Box::new(std::iter::empty());
                }
                let range = indexes.ids.range(lo..=hi).copied();
                if id_descending {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                }
            }
            Plan::Merge { filter, lo, hi } => {
                let (lo, hi) = from_start(*lo, *hi);
                Box::new(MergeIds::new(
                    filter.value_streams(indexes, lo, hi, id_descending),
                    id_descending,
                ))
            }
            Plan::Fixed(ids) => {
                let mut keys: Vec<RowKey> =
                    ids.iter().map(|id| order.key_of(indexes, *id)).collect();
                keys.sort_by(|a, b| directed(order.cmp(a, b), backward));
                let skip = match start {
                    Some(start) => keys.partition_point(|key| {
                        directed(order.cmp(key, start.key), backward) == Ordering::Less
                    }),
                    None => 0,
                };
                Box::new(keys.into_iter().skip(skip).map(|key| key.id))
            }
            Plan::Sorted { lower, upper } => {
                let first = order.keys[0];
                let ascending = first.desc == backward;
                let (lower, upper) = entry_bounds(lower, upper);
                if order.index_order_is_exact() {
                    // The index order is the list's: start at the cursor's entry itself.
                    let (lower, upper) = match start
                        .and_then(|s| s.key.vals.first().cloned().map(|v| (v, s.key.id)))
                    {
                        Some(from) if ascending => (max_lower(lower, Included(from)), upper),
                        Some(from) => (lower, min_upper(upper, Included(from))),
                        None => (lower, upper),
                    };
                    return Box::new(
                        sorted_entries(indexes, first.col, lower, upper, !ascending)
                            .map(|(_, id)| id),
                    );
                }
                // Start at the cursor's group.
                let (lower, upper) = match start.and_then(|s| s.key.vals.first().cloned()) {
                    Some(value) if ascending => (max_lower(lower, Included((value, 0))), upper),
                    Some(value) => (lower, min_upper(upper, Included((value, u64::MAX)))),
                    None => (lower, upper),
                };
                let second = match order.keys.get(1) {
                    Some(key) => value_bounds(self.filters, key.col),
                    None => (Unbounded, Unbounded),
                };
                Box::new(GroupWalk {
                    indexes,
                    order,
                    backward,
                    // Tests use a small limit so that their groups take the index walk too.
                    sort_limit: if cfg!(test) {
                        8
                    } else {
                        fixed_limit(self.page, indexes.live())
                    },
                    lower,
                    upper,
                    ascending,
                    second,
                    start: start.map(|s| s.key.clone()),
                    current: Box::new(std::iter::empty()),
                })
            }
        }
    }

    /// Walks the matching calls from `start` in order (or reverse order), handing each to
    /// `visit` (with its stored row when `load`) until `visit` returns false.
    fn walk(
        &self,
        backward: bool,
        start: Option<Start<'_>>,
        load: bool,
        mut visit: impl FnMut(u64, Option<Call>) -> bool,
    ) -> Result<(), ProjectionError> {
        let indexes = &self.view.indexes;
        // Candidates come in order, so once one lies beyond the start, all the rest do.
        let mut past_start = start.is_none();
        'candidates: for id in self.candidates(backward, start) {
            if !past_start {
                if let Some(start) = start {
                    let key = self.order.key_of(indexes, id);
                    match directed(self.order.cmp(&key, start.key), backward) {
                        Ordering::Less => continue,
                        Ordering::Equal if !start.inclusive => continue,
                        _ => past_start = true,
                    }
                }
            }
            let mut maybe = false;
            for filter in self.filters {
                match filter.check_indexes(indexes, id) {
                    Check::No => continue 'candidates,
                    Check::Maybe => maybe = true,
                    Check::Yes => {}
                }
            }
            let call = if load || maybe {
                let call =
                    load_call(&self.view.tree, id)?.ok_or_else(|| ProjectionError::Corrupt {
                        key: format!("view of call {id}"),
                        reason: "the indexes name it but it is not stored".to_owned(),
                    })?;
                if maybe && !self.filters.iter().all(|f| f.check_call(&call)) {
                    continue;
                }
                Some(call)
            } else {
                None
            };
            if !visit(id, call.filter(|_| load)) {
                break;
            }
        }
        Ok(())
    }

    /// Up to `limit` matching calls from `start`.
    fn page(
        &self,
        backward: bool,
        start: Option<Start<'_>>,
        limit: usize,
    ) -> Result<Vec<Call>, ProjectionError> {
        let mut calls = Vec::with_capacity(limit.min(MAX_PAGE_SIZE + 1));
        self.walk(backward, start, true, |_, call| {
            calls.extend(call);
            calls.len() < limit
        })?;
        Ok(calls)
    }

    /// Whether any call matches from `start` on.
    fn any(&self, backward: bool, start: Start<'_>) -> Result<bool, ProjectionError> {
        let mut found = false;
        self.walk(backward, Some(start), false, |_, _| {
            found = true;
            false
        })?;
        Ok(found)
    }

    /// Every matching call.
    fn count(&self) -> Result<u64, ProjectionError> {
        if self.filters.is_empty() {
            return Ok(self.view.indexes.live() as u64);
        }
        let mut count = 0u64;
        self.walk(false, None, false, |_, _| {
            count += 1;
            true
        })?;
        Ok(count)
    }
}

/// Value bounds as bounds on index entries `(value, id)`: a bound value includes (or excludes)
/// all of its ids.
fn entry_bounds(lower: &Bound<SortVal>, upper: &Bound<SortVal>) -> (EntryBound, EntryBound) {
    let lower = match lower {
        Included(v) => Included((v.clone(), 0)),
        Excluded(v) => Excluded((v.clone(), u64::MAX)),
        Unbounded => Unbounded,
    };
    let upper = match upper {
        Included(v) => Included((v.clone(), u64::MAX)),
        Excluded(v) => Excluded((v.clone(), 0)),
        Unbounded => Unbounded,
    };
    (lower, upper)
}

/// A sort index's entries within entry bounds, ascending or descending.
fn sorted_entries(
    indexes: &Indexes,
    col: SortCol,
    lower: Bound<(SortVal, u64)>,
    upper: Bound<(SortVal, u64)>,
    descending: bool,
) -> EntryIter<'_> {
    match col {
        SortCol::Time(i) => {
            let key = |v: SortVal| match v {
                SortVal::Null => Some(NULL_TIME),
                SortVal::Int(n) => Some(n),
                SortVal::Text(_) => None,
            };
            match (map_bound(lower, key), map_bound(upper, key)) {
                (Some(lower), Some(upper)) => entries_in(
                    &indexes.times[i].set,
                    lower,
                    upper,
                    descending,
                    |m| match *m {
                        NULL_TIME => SortVal::Null,
                        millis => SortVal::Int(millis),
                    },
                ),
                _ => Box::new(std::iter::empty()),
            }
        }
        SortCol::Text(i) => {
            let key = |v: SortVal| match v {
                SortVal::Null => Some(None),
                SortVal::Text(text) => Some(Some(text)),
                SortVal::Int(_) => None,
            };
            match (map_bound(lower, key), map_bound(upper, key)) {
                (Some(lower), Some(upper)) => entries_in(
                    &indexes.sort_texts[i].set,
                    lower,
                    upper,
                    descending,
                    |text: &Option<Arc<str>>| match text {
                        Some(text) => SortVal::Text(Arc::clone(text)),
                        None => SortVal::Null,
                    },
                ),
                _ => Box::new(std::iter::empty()),
            }
        }
    }
}

/// Converts an entry bound's value; `None` when the value has the wrong type.
fn map_bound<K>(
    bound: Bound<(SortVal, u64)>,
    key: impl Fn(SortVal) -> Option<K>,
) -> Option<Bound<(K, u64)>> {
    Some(match bound {
        Included((v, id)) => Included((key(v)?, id)),
        Excluded((v, id)) => Excluded((key(v)?, id)),
        Unbounded => Unbounded,
    })
}

/// Answers a list query from one view (whose indexes and tree the caller keeps consistent).
pub(crate) fn list(view: &View, query: &ListQuery) -> Result<ListPage, QueryError> {
    let page = query.page_size;
    if page == 0 || page > MAX_PAGE_SIZE {
        return Err(QueryError::PageSize(page));
    }
    let order = Order::of(&query.sort)?;
    let filters = query
        .filters
        .iter()
        .map(Resolved::new)
        .collect::<Result<Vec<_>, _>>()?;
    let fingerprint = cursor::fingerprint(&query.filters, &order);
    let cursor = match &query.cursor {
        None => None,
        Some(PageCursor::After(text)) => Some((false, cursor::decode(text, &fingerprint, &order)?)),
        Some(PageCursor::Before(text)) => Some((true, cursor::decode(text, &fingerprint, &order)?)),
    };
    let run = Run {
        view,
        page,
        filters: &filters,
        order: &order,
        plan: plan(&filters, &order, &view.indexes, page),
    };
    let (calls, more_after, more_before) = match &cursor {
        None => {
            let mut calls = run.page(false, None, page + 1)?;
            let more_after = calls.len() > page;
            calls.truncate(page);
            (calls, more_after, false)
        }
        Some((backward, key)) => {
            let after = Start {
                key,
                inclusive: false,
            };
            let at = Start {
                key,
                inclusive: true,
            };
            let mut calls = run.page(*backward, Some(after), page + 1)?;
            let more = calls.len() > page;
            calls.truncate(page);
            // Whatever lies on the other side of the cursor, the cursor's own row included.
            let other_side = run.any(!backward, at)?;
            if *backward {
                calls.reverse();
                (calls, other_side, more)
            } else {
                (calls, more, other_side)
            }
        }
    };
    let count = if query.count {
        Some(run.count()?)
    } else {
        None
    };
    Ok(ListPage {
        calls,
        more_after,
        more_before,
        count,
    })
}

/// The cursor naming `call`'s place in `query`'s order.
pub(crate) fn cursor_for(query: &ListQuery, call: &Call) -> String {
    // An invalid sort gets a cursor too (the query itself is refused when listed).
    let order = Order::of(&query.sort).unwrap_or_else(|_| Order::by_id());
    let fingerprint = cursor::fingerprint(&query.filters, &order);
    cursor::encode(&order.key_of_call(call), &fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::IndexRow;
    use call_model::{CallState, Event, Relation, Timestamp};

    /// Indexes of `n` calls: prospect `id % 1000`, direction alternating, createdAt = id.
    fn indexes(n: u64) -> Indexes {
        let rows = (1..=n).map(|id| {
            let payload = format!(
                r#"{{"schemaVersion":1,"type":"CallCreated","eventId":"0190a6b2-7c1e-7000-8000-000000000000","idempotencyKey":null,"occurredAt":"2025-01-13T12:00:00.000Z","recordedAt":"{}","actor":"t","data":{{"attributes":{{"direction":"{}"}},"relationships":{{"prospect":{{"type":"prospect","id":{}}}}}}}}}"#,
                Timestamp::from_millis(1_736_769_600_000 + id as i64),
                if id % 2 == 0 { "inbound" } else { "outbound" },
                id % 1000
            );
            let event = Event::decode(id, id, 1, payload.as_bytes()).expect("event");
            let CallState::Live(call) = call_model::evolve(CallState::Absent, &event) else {
                panic!("a created call is live")
            };
            (id, IndexRow::of(&call))
        });
        Indexes::from_rows(rows)
    }

    fn resolved(filters: &[Filter]) -> Vec<Resolved> {
        filters
            .iter()
            .map(|f| Resolved::new(f).expect("valid"))
            .collect()
    }

    fn name(plan: &Plan<'_>) -> &'static str {
        match plan {
            Plan::AllIds { .. } => "all ids",
            Plan::Merge { .. } => "merge",
            Plan::Sorted { .. } => "sorted",
            Plan::Fixed(_) => "fixed",
        }
    }

    fn sort(field: Field, descending: bool) -> Vec<SortKey> {
        vec![SortKey {
            field: SortField::Attr(field),
            descending,
        }]
    }

    #[test]
    fn plans_read_the_fewest_candidates() {
        let indexes = indexes(20_000);
        let prospect = Filter {
            target: FilterTarget::Related(Relation::Prospect),
            condition: Condition::AnyOf(vec![FilterValue::Int(7)]),
        };
        let inbound = Filter {
            target: FilterTarget::Attr(Field::Direction),
            condition: Condition::AnyOf(vec![FilterValue::Text("inbound".into())]),
        };
        let by_id = Order::of(&[]).expect("order");
        let newest = Order::of(&sort(Field::CreatedAt, true)).expect("order");
        let cases = [
            (vec![], &by_id, "all ids"),
            (vec![inbound.clone()], &by_id, "merge"),
            (vec![prospect.clone()], &by_id, "merge"),
            // A prospect's 20 calls are ordered in memory; half the calls are walked in order.
            (vec![prospect.clone()], &newest, "fixed"),
            (vec![inbound.clone()], &newest, "sorted"),
            (vec![inbound, prospect], &newest, "fixed"),
        ];
        for (filters, order, expected) in cases {
            let filters = resolved(&filters);
            assert_eq!(
                name(&plan(&filters, order, &indexes, 50)),
                expected,
                "{filters_len} filters",
                filters_len = filters.len()
            );
        }
    }

    #[test]
    fn crossed_bounds_give_nothing_rather_than_a_panic() {
        let indexes = indexes(100);
        let range = |lower: i64, upper: i64| Filter {
            target: FilterTarget::Attr(Field::CreatedAt),
            condition: Condition::Range {
                lower: Some(FilterValue::Time(Timestamp::from_millis(lower))),
                upper: Some(FilterValue::Time(Timestamp::from_millis(upper))),
            },
        };
        let order = Order::of(&sort(Field::CreatedAt, false)).expect("order");
        let filters = resolved(&[range(2_000_000_000_000, 1_000_000_000_000)]);
        let (lower, upper) = value_bounds(&filters, order.keys[0].col);
        let (lower, upper) = entry_bounds(&lower, &upper);
        assert_eq!(
            sorted_entries(&indexes, order.keys[0].col, lower, upper, false).count(),
            0
        );
        let ids = Filter {
            target: FilterTarget::Id,
            condition: Condition::Range {
                lower: Some(FilterValue::Int(50)),
                upper: Some(FilterValue::Int(-3)),
            },
        };
        assert_eq!(id_bounds(&resolved(&[ids])), (1, 0));
    }
}
