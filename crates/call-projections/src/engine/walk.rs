//! Iterators over the in-memory indexes: the ids under one value, the entries within bounds,
//! a k-way merge in id order, and the group-by-group walk of a multi-key order.

use super::order::{column_value, directed, Order, RowKey, SortVal};
use crate::grouped::EntryRange;
use crate::index::Shared;
use crate::index::{Indexes, SortCol, NULL_TIME};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Bound::{self, Excluded, Included, Unbounded};

pub(crate) type IdIter<'a> = Box<dyn Iterator<Item = u64> + 'a>;
/// A bound on index entries `(value, id)`.
pub(crate) type EntryBound = Bound<(SortVal, u64)>;
pub(crate) type EntryIter<'a> = Box<dyn Iterator<Item = (SortVal, u64)> + 'a>;

/// The ids stored under `key` within `lo..=hi`, in id order.
pub(crate) fn ids_of<'a, K: Ord + Clone + 'a>(
    set: &'a impl EntryRange<K>,
    key: K,
    lo: u64,
    hi: u64,
    descending: bool,
) -> IdIter<'a> {
    if lo > hi {
        return Box::new(std::iter::empty());
    }
    let range = set.id_range(Included((key.clone(), lo)), Included((key, hi)));
    if descending {
        Box::new(range.rev())
    } else {
        Box::new(range)
    }
}

/// The ids of the entries within bounds, in entry order.
pub(crate) fn ids_in<'a, K: Ord + 'a>(
    set: &'a impl EntryRange<K>,
    lower: Bound<(K, u64)>,
    upper: Bound<(K, u64)>,
    descending: bool,
) -> IdIter<'a> {
    if crossed(&lower, &upper) {
        return Box::new(std::iter::empty());
    }
    let range = set.id_range(lower, upper);
    if descending {
        Box::new(range.rev())
    } else {
        Box::new(range)
    }
}

/// Whether the bounds cross, so that nothing is within them.
fn crossed<K: Ord>(lower: &Bound<(K, u64)>, upper: &Bound<(K, u64)>) -> bool {
    match (lower, upper) {
        (Included(a), Included(b)) => a > b,
        (Included(a) | Excluded(a), Included(b) | Excluded(b)) => a >= b,
        _ => false,
    }
}

/// The entries within bounds, in entry order (or reversed), with their values shown as
/// [`SortVal`]. Empty when the bounds are crossed.
pub(crate) fn entries_in<'a, K: Ord + 'a>(
    set: &'a impl EntryRange<K>,
    lower: Bound<(K, u64)>,
    upper: Bound<(K, u64)>,
    descending: bool,
    show: impl Fn(&K) -> SortVal + 'static,
) -> EntryIter<'a> {
    if crossed(&lower, &upper) {
        return Box::new(std::iter::empty());
    }
    let range = set.entry_range(lower, upper, show);
    if descending {
        Box::new(range.rev())
    } else {
        Box::new(range)
    }
}

/// The tighter of two lower bounds.
pub(crate) fn max_lower<T: Ord>(a: Bound<T>, b: Bound<T>) -> Bound<T> {
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
pub(crate) fn min_upper<T: Ord>(a: Bound<T>, b: Bound<T>) -> Bound<T> {
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
pub(crate) struct MergeIds<'a> {
    heap: BinaryHeap<(u64, usize)>,
    iters: Vec<IdIter<'a>>,
    descending: bool,
    last: Option<u64>,
}

impl<'a> MergeIds<'a> {
    pub(crate) fn new(mut iters: Vec<IdIter<'a>>, descending: bool) -> MergeIds<'a> {
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
pub(crate) struct GroupWalk<'a> {
    pub(crate) indexes: &'a Indexes,
    pub(crate) order: &'a Order,
    pub(crate) backward: bool,
    /// Groups whose size is at most this are sorted in memory.
    pub(crate) sort_limit: usize,
    /// The first key's index range still to walk.
    pub(crate) lower: Bound<(SortVal, u64)>,
    pub(crate) upper: Bound<(SortVal, u64)>,
    /// The first key's index is walked ascending.
    pub(crate) ascending: bool,
    /// The value bounds the filters put on the second key.
    pub(crate) second: (Bound<SortVal>, Bound<SortVal>),
    /// Where the walk starts: within the first group only.
    pub(crate) start: Option<RowKey>,
    pub(crate) current: IdIter<'a>,
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
        let members: Vec<u64> = sorted_ids(
            self.indexes,
            first.col,
            Included((value.clone(), 0)),
            Included((value.clone(), u64::MAX)),
            false,
        )
        .take(self.sort_limit + 1)
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
                sorted_ids(indexes, second.col, lower, upper, !ascending)
                    .filter(move |id| column_value(indexes, col, *id) == value),
            ));
        }
        let members = if members.len() > self.sort_limit {
            // No index gives this order: the whole group is sorted.
            sorted_ids(
                self.indexes,
                first.col,
                Included((value.clone(), 0)),
                Included((value, u64::MAX)),
                false,
            )
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

/// Value bounds as bounds on index entries `(value, id)`: a bound value includes (or excludes)
/// all of its ids.
pub(crate) fn entry_bounds(
    lower: &Bound<SortVal>,
    upper: &Bound<SortVal>,
) -> (EntryBound, EntryBound) {
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

/// A date-time sort index's bound from a sort value's; `None` for a value of another type.
fn time_key(v: SortVal) -> Option<i64> {
    match v {
        SortVal::Null => Some(NULL_TIME),
        SortVal::Int(n) => Some(n),
        SortVal::Text(_) => None,
    }
}

/// A string sort index's bound from a sort value's; `None` for a value of another type.
fn text_key(v: SortVal) -> Option<Option<Shared>> {
    match v {
        SortVal::Null => Some(None),
        SortVal::Text(text) => Some(Some(text)),
        SortVal::Int(_) => None,
    }
}

/// A sort index's entries within entry bounds, ascending or descending.
pub(crate) fn sorted_entries(
    indexes: &Indexes,
    col: SortCol,
    lower: Bound<(SortVal, u64)>,
    upper: Bound<(SortVal, u64)>,
    descending: bool,
) -> EntryIter<'_> {
    match col {
        SortCol::Time(i) => match (map_bound(lower, time_key), map_bound(upper, time_key)) {
            (Some(lower), Some(upper)) => {
                entries_in(&indexes.times[i], lower, upper, descending, |m| match *m {
                    NULL_TIME => SortVal::Null,
                    millis => SortVal::Int(millis),
                })
            }
            _ => Box::new(std::iter::empty()),
        },
        SortCol::Text(i) => match (map_bound(lower, text_key), map_bound(upper, text_key)) {
            (Some(lower), Some(upper)) => entries_in(
                &indexes.sort_texts[i],
                lower,
                upper,
                descending,
                |text: &Option<Shared>| match text {
                    Some(text) => SortVal::Text(Shared::clone(text)),
                    None => SortVal::Null,
                },
            ),
            _ => Box::new(std::iter::empty()),
        },
    }
}

/// The ids of [`sorted_entries`], without reading their values.
pub(crate) fn sorted_ids(
    indexes: &Indexes,
    col: SortCol,
    lower: Bound<(SortVal, u64)>,
    upper: Bound<(SortVal, u64)>,
    descending: bool,
) -> IdIter<'_> {
    match col {
        SortCol::Time(i) => match (map_bound(lower, time_key), map_bound(upper, time_key)) {
            (Some(lower), Some(upper)) => ids_in(&indexes.times[i], lower, upper, descending),
            _ => Box::new(std::iter::empty()),
        },
        SortCol::Text(i) => match (map_bound(lower, text_key), map_bound(upper, text_key)) {
            (Some(lower), Some(upper)) => ids_in(&indexes.sort_texts[i], lower, upper, descending),
            _ => Box::new(std::iter::empty()),
        },
    }
}

/// Converts an entry bound's value; `None` when the value has the wrong type.
pub(crate) fn map_bound<K>(
    bound: Bound<(SortVal, u64)>,
    key: impl Fn(SortVal) -> Option<K>,
) -> Option<Bound<(K, u64)>> {
    Some(match bound {
        Included((v, id)) => Included((key(v)?, id)),
        Excluded((v, id)) => Excluded((key(v)?, id)),
        Unbounded => Unbounded,
    })
}
