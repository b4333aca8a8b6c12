//! The entries `(value, id)` of a sortable attribute's index in value order, nulls first, with
//! the calls whose value is null kept as their ids alone.
//!
//! A sort index holds every live call, so that ordering by an attribute walks the calls without
//! it too; where most calls have none (`state` before a call is dialed, `returnedAt`,
//! `recordingUrl`), an entry of a null and an id took 16 or 24 bytes for what an id says in 8.
//! Walks see one sequence of `(&value, id)`, the nulls (all equal, below every value) first.

use crate::index::Shared;
use crate::index::NULL_TIME;
use crate::sorted_set::{self, Packer, SortedSet};
use std::ops::Bound::{self, Excluded, Included, Unbounded};

/// A value type with a null that orders below every other value.
pub(crate) trait NullValue: Ord + Clone {
    fn null() -> Self;

    fn is_null(&self) -> bool;
}

impl NullValue for i64 {
    fn null() -> i64 {
        NULL_TIME
    }

    fn is_null(&self) -> bool {
        *self == NULL_TIME
    }
}

impl NullValue for Option<Shared> {
    fn null() -> Option<Shared> {
        None
    }

    fn is_null(&self) -> bool {
        self.is_none()
    }
}

/// An index's entries, as described in the module's notes.
#[derive(Clone)]
pub(crate) struct NullsFirst<V> {
    /// The ids whose value is null.
    nulls: SortedSet<u64>,
    /// The other entries.
    values: SortedSet<(V, u64)>,
    /// The null value, which walks show with each of `nulls`.
    null: V,
}

/// Something that lists its `(value, id)` entries between two bounds, in order: a set of
/// entries or a [`NullsFirst`].
pub(crate) trait EntryRange<V> {
    /// The entries within the bounds, walkable from either end; empty where the bounds cross.
    fn entry_range(
        &self,
        lower: Bound<(V, u64)>,
        upper: Bound<(V, u64)>,
    ) -> Box<dyn DoubleEndedIterator<Item = (&V, u64)> + '_>;
}

impl<V: Ord> EntryRange<V> for SortedSet<(V, u64)> {
    fn entry_range(
        &self,
        lower: Bound<(V, u64)>,
        upper: Bound<(V, u64)>,
    ) -> Box<dyn DoubleEndedIterator<Item = (&V, u64)> + '_> {
        Box::new(self.range((lower, upper)).map(|(value, id)| (value, *id)))
    }
}

impl<V: NullValue> EntryRange<V> for NullsFirst<V> {
    fn entry_range(
        &self,
        lower: Bound<(V, u64)>,
        upper: Bound<(V, u64)>,
    ) -> Box<dyn DoubleEndedIterator<Item = (&V, u64)> + '_> {
        Box::new(self.range(lower, upper))
    }
}

/// Where a bound on entries falls: among the nulls (on an id), or among the values.
enum Side<V> {
    Nulls(Bound<u64>),
    Values(Bound<(V, u64)>),
}

fn side<V: NullValue>(bound: Bound<(V, u64)>) -> Side<V> {
    match bound {
        Included((value, id)) if value.is_null() => Side::Nulls(Included(id)),
        Excluded((value, id)) if value.is_null() => Side::Nulls(Excluded(id)),
        other => Side::Values(other),
    }
}

impl<V: NullValue> Default for NullsFirst<V> {
    fn default() -> Self {
        NullsFirst {
            nulls: SortedSet::new(),
            values: SortedSet::new(),
            null: V::null(),
        }
    }
}

impl<V: NullValue> NullsFirst<V> {
    pub(crate) fn new() -> Self {
        NullsFirst::default()
    }

    /// Entries, nulls included.
    pub(crate) fn len(&self) -> usize {
        self.nulls.len() + self.values.len()
    }

    /// The entries whose value is not null.
    pub(crate) fn values(&self) -> &SortedSet<(V, u64)> {
        &self.values
    }

    pub(crate) fn insert(&mut self, (value, id): (V, u64)) -> bool {
        if value.is_null() {
            self.nulls.insert(id)
        } else {
            self.values.insert((value, id))
        }
    }

    pub(crate) fn remove(&mut self, entry: &(V, u64)) -> bool {
        if entry.0.is_null() {
            self.nulls.remove(&entry.1)
        } else {
            self.values.remove(entry)
        }
    }

    /// Every entry, nulls first.
    pub(crate) fn iter(&self) -> Entries<'_, V> {
        self.range(Unbounded, Unbounded)
    }

    /// The entries within the bounds, nulls first; empty where the bounds cross.
    pub(crate) fn range(&self, lower: Bound<(V, u64)>, upper: Bound<(V, u64)>) -> Entries<'_, V> {
        // A lower bound among the values is above every null; an upper bound among the nulls is
        // below every value.
        let (nulls_lower, values_lower) = match side(lower) {
            Side::Nulls(id) => (Some(id), Unbounded),
            Side::Values(Unbounded) => (Some(Unbounded), Unbounded),
            Side::Values(bound) => (None, bound),
        };
        let (nulls_upper, values_upper) = match side(upper) {
            Side::Nulls(id) => (id, None),
            Side::Values(bound) => (Unbounded, Some(bound)),
        };
        Entries {
            null: &self.null,
            nulls: match nulls_lower {
                Some(lo) => self.nulls.range((lo, nulls_upper)),
                None => self.nulls.nothing(),
            },
            values: match values_upper {
                Some(hi) => self.values.range((values_lower, hi)),
                None => self.values.nothing(),
            },
        }
    }

    /// The bytes of the two sets (not of what the values point at).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.nulls.heap_bytes() + self.values.heap_bytes()
    }
}

impl<V: NullValue> FromIterator<(V, u64)> for NullsFirst<V> {
    fn from_iter<I: IntoIterator<Item = (V, u64)>>(entries: I) -> Self {
        let (mut nulls, mut values) = (Packer::default(), Packer::default());
        for (value, id) in entries {
            if value.is_null() {
                nulls.push(id);
            } else {
                values.push((value, id));
            }
        }
        NullsFirst {
            nulls: nulls.finish(),
            values: values.finish(),
            null: V::null(),
        }
    }
}

/// A walk of a [`NullsFirst`]'s entries: its nulls, then its values.
pub(crate) struct Entries<'a, V> {
    null: &'a V,
    nulls: sorted_set::Iter<'a, u64>,
    values: sorted_set::Iter<'a, (V, u64)>,
}

impl<'a, V> Iterator for Entries<'a, V> {
    type Item = (&'a V, u64);

    fn next(&mut self) -> Option<(&'a V, u64)> {
        match self.nulls.next() {
            Some(id) => Some((self.null, *id)),
            None => self.values.next().map(|(value, id)| (value, *id)),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.nulls.len() + self.values.len();
        (left, Some(left))
    }
}

impl<V> DoubleEndedIterator for Entries<'_, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self.values.next_back() {
            Some((value, id)) => Some((value, *id)),
            None => self.nulls.next_back().map(|id| (self.null, *id)),
        }
    }
}

impl<V> ExactSizeIterator for Entries<'_, V> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn ranges_agree_with_one_set_of_every_entry() {
        let entries: Vec<(i64, u64)> = (0..2_000u64)
            .map(|id| {
                let value = match id % 5 {
                    0 | 1 => NULL_TIME,
                    k => (id * 7919 % 101) as i64 + k as i64,
                };
                (value, id)
            })
            .collect();
        let model: BTreeSet<(i64, u64)> = entries.iter().copied().collect();
        let set: NullsFirst<i64> = entries.iter().copied().collect();
        assert_eq!(set.len(), model.len());
        assert!(set.iter().eq(model.iter().map(|(v, id)| (v, *id))));
        let bounds = [
            Unbounded,
            Included((NULL_TIME, 0)),
            Included((NULL_TIME, 700)),
            Excluded((NULL_TIME, 700)),
            Excluded((NULL_TIME, u64::MAX)),
            Included((40, 0)),
            Excluded((40, 900)),
            Included((150, u64::MAX)),
        ];
        for lower in &bounds {
            for upper in &bounds {
                let expected: Vec<(i64, u64)> = match (lower, upper) {
                    (Included(a) | Excluded(a), Included(b) | Excluded(b))
                        if a > b
                            || (a == b
                                && !matches!((lower, upper), (Included(_), Included(_)))) =>
                    {
                        Vec::new()
                    }
                    _ => model.range((*lower, *upper)).copied().collect(),
                };
                let got: Vec<(i64, u64)> =
                    set.range(*lower, *upper).map(|(v, id)| (*v, id)).collect();
                assert_eq!(got, expected, "{lower:?} {upper:?}");
                let back: Vec<(i64, u64)> = set
                    .range(*lower, *upper)
                    .rev()
                    .map(|(v, id)| (*v, id))
                    .collect();
                assert!(
                    back.iter().rev().eq(expected.iter()),
                    "{lower:?} {upper:?} reversed"
                );
            }
        }
    }

    #[test]
    fn nulls_are_kept_as_ids() {
        let mut set = NullsFirst::<Option<Shared>>::new();
        assert!(set.insert((None, 3)));
        assert!(set.insert((Some(Shared::from("a")), 2)));
        assert!(!set.insert((None, 3)));
        assert_eq!(set.values().len(), 1);
        let all: Vec<_> = set.iter().map(|(v, id)| (v.clone(), id)).collect();
        assert_eq!(all, [(None, 3), (Some(Shared::from("a")), 2)]);
        assert!(set.remove(&(None, 3)));
        assert!(!set.remove(&(None, 3)));
        assert_eq!(set.len(), 1);
    }
}
