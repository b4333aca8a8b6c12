//! The entries `(value, id)` of one index in value order, with each value that many calls hold
//! kept once over the set of their ids.
//!
//! Most indexed attributes hold a few values over many calls (a direction, an outcome, a flag, a
//! note's template, and null wherever an attribute is unset), where an entry of value and id
//! took 16 bytes for what an id says in 4. A value held by [`GROUP_AT`] calls or more moves to
//! a group of its own; one held by fewer stays as entries, so that values nearly every call
//! holds alone (a time, a phone number, a recording's address) pay no group's overhead. A group
//! holds its ids in 4 bytes each: the log hands ids out from 1, so a ledger's first four billion
//! calls fit, and an id past that stays an entry beside its value's group. Walks see one
//! sequence of `(&value, id)` in order, whichever way each entry is kept.

use crate::sorted_set::{self, Packer, SortedSet};
use std::collections::BTreeMap;
use std::ops::Bound::{self, Excluded, Included, Unbounded};

/// How many calls a value's entries reach before they become a group.
const GROUP_AT: usize = 64;

/// How few calls a group keeps before its ids go back to entries (a gap below [`GROUP_AT`],
/// so that a value hovering about it does not move back and forth).
const UNGROUP_BELOW: usize = GROUP_AT / 4;

/// An index's entries, as described in the module's notes.
#[derive(Clone)]
pub(crate) struct Grouped<V> {
    /// The entries of values held by few calls.
    sparse: SortedSet<(V, u64)>,
    /// The ids of each value held by many (those that fit in 4 bytes; see the module's notes).
    groups: BTreeMap<V, SortedSet<GroupId>>,
    len: usize,
}

/// An id in a group.
type GroupId = u32;

impl<V> Default for Grouped<V> {
    fn default() -> Self {
        Grouped {
            sparse: SortedSet::new(),
            groups: BTreeMap::new(),
            len: 0,
        }
    }
}

/// Something that lists its `(value, id)` entries between two bounds, in order: a set of
/// entries or a [`Grouped`].
pub(crate) trait EntryRange<V> {
    /// The entries within the bounds, each value shown by `show`, walkable from either end;
    /// empty where the bounds cross. (A value is shown where it is read: a packed column does
    /// not hold its values as such, so it lends each to `show` rather than a reference.)
    fn entry_range<'s, T: 's>(
        &'s self,
        lower: Bound<(V, u64)>,
        upper: Bound<(V, u64)>,
        show: impl Fn(&V) -> T + 's,
    ) -> Box<dyn DoubleEndedIterator<Item = (T, u64)> + 's>;

    /// The ids of the entries within the bounds. Where the values are kept apart from the ids
    /// (a [`crate::column_order::ColumnOrder`]) it reads no value; elsewhere the values are at
    /// hand and shown as nothing.
    fn id_range(
        &self,
        lower: Bound<(V, u64)>,
        upper: Bound<(V, u64)>,
    ) -> Box<dyn DoubleEndedIterator<Item = u64> + '_> {
        Box::new(self.entry_range(lower, upper, |_| ()).map(|((), id)| id))
    }
}

impl<V: Ord> EntryRange<V> for SortedSet<(V, u64)> {
    fn entry_range<'s, T: 's>(
        &'s self,
        lower: Bound<(V, u64)>,
        upper: Bound<(V, u64)>,
        show: impl Fn(&V) -> T + 's,
    ) -> Box<dyn DoubleEndedIterator<Item = (T, u64)> + 's> {
        Box::new(
            self.range((lower, upper))
                .map(move |(value, id)| (show(value), *id)),
        )
    }
}

impl<V: Ord + Clone> EntryRange<V> for Grouped<V> {
    fn entry_range<'s, T: 's>(
        &'s self,
        lower: Bound<(V, u64)>,
        upper: Bound<(V, u64)>,
        show: impl Fn(&V) -> T + 's,
    ) -> Box<dyn DoubleEndedIterator<Item = (T, u64)> + 's> {
        Box::new(
            self.range(lower, upper)
                .map(move |(value, id)| (show(value), id)),
        )
    }
}

/// The ids of a group within the bounds on entries, where the group's value is `value`.
fn ids_within<'a, V: Ord>(
    ids: &'a SortedSet<GroupId>,
    value: &V,
    lower: &Bound<(V, u64)>,
    upper: &Bound<(V, u64)>,
) -> sorted_set::Iter<'a, GroupId> {
    // An id past a group id's range: nothing in the group is above it, everything below it.
    let low = match lower {
        Included((v, id)) if v == value => match GroupId::try_from(*id) {
            Ok(id) => Included(id),
            Err(_) => return ids.nothing(),
        },
        Excluded((v, id)) if v == value => match GroupId::try_from(*id) {
            Ok(id) => Excluded(id),
            Err(_) => return ids.nothing(),
        },
        _ => Unbounded,
    };
    let high = match upper {
        Included((v, id)) | Excluded((v, id)) if v == value && *id > u64::from(GroupId::MAX) => {
            Unbounded
        }
        Included((v, id)) if v == value => Included(*id as GroupId),
        Excluded((v, id)) if v == value => Excluded(*id as GroupId),
        _ => Unbounded,
    };
    ids.range((low, high))
}

/// A bound on entries as a bound on values, inclusive: the value of an excluded entry may still
/// hold other ids.
fn value_bound<V>(bound: &Bound<(V, u64)>) -> Bound<&V> {
    match bound {
        Included((value, _)) | Excluded((value, _)) => Included(value),
        Unbounded => Unbounded,
    }
}

impl<V: Ord + Clone> Grouped<V> {
    pub(crate) fn new() -> Self {
        Grouped::default()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The ids of `value` where it is a group; `None` where its calls are few (or none).
    #[cfg(test)]
    fn group(&self, value: &V) -> Option<&SortedSet<GroupId>> {
        self.groups.get(value)
    }

    pub(crate) fn contains(&self, entry: &(V, u64)) -> bool {
        match (self.groups.get(&entry.0), GroupId::try_from(entry.1)) {
            (Some(ids), Ok(id)) => ids.contains(&id),
            _ => self.sparse.contains(entry),
        }
    }

    /// Adds an entry; false when it was there already.
    pub(crate) fn insert(&mut self, (value, id): (V, u64)) -> bool {
        let small = GroupId::try_from(id);
        match (self.groups.get_mut(&value), small) {
            (Some(ids), Ok(small)) => {
                let added = ids.insert(small);
                self.len += usize::from(added);
                return added;
            }
            // An id past a group id's range, beside its value's group.
            (Some(_), Err(_)) => {
                let added = self.sparse.insert((value, id));
                self.len += usize::from(added);
                return added;
            }
            (None, _) => {}
        }
        if !self.sparse.insert((value.clone(), id)) {
            return false;
        }
        self.len += 1;
        // One search: the walk to the end of the set is made without finding its end.
        let in_group_range =
            |(held, id): &&(V, u64)| *held == value && *id <= u64::from(GroupId::MAX);
        let held = self
            .sparse
            .range((value.clone(), 0)..)
            .take_while(in_group_range)
            .take(GROUP_AT)
            .count();
        if held >= GROUP_AT {
            let ids: Vec<GroupId> = self
                .sparse
                .range((value.clone(), 0)..)
                .take_while(in_group_range)
                .map(|(_, id)| *id as GroupId)
                .collect();
            for id in &ids {
                self.sparse.remove(&(value.clone(), u64::from(*id)));
            }
            self.groups.insert(value, ids.into_iter().collect());
        }
        true
    }

    /// Removes an entry; false when it was not there.
    pub(crate) fn remove(&mut self, entry: &(V, u64)) -> bool {
        let (value, id) = entry;
        let removed = match (self.groups.get_mut(value), GroupId::try_from(*id)) {
            (Some(ids), Ok(small)) => {
                let removed = ids.remove(&small);
                if ids.len() < UNGROUP_BELOW {
                    if let Some(ids) = self.groups.remove(value) {
                        for id in ids {
                            self.sparse.insert((value.clone(), u64::from(id)));
                        }
                    }
                }
                removed
            }
            _ => self.sparse.remove(entry),
        };
        self.len -= usize::from(removed);
        removed
    }

    /// Every entry, in order.
    pub(crate) fn iter(&self) -> Entries<'_, V> {
        self.range(Unbounded, Unbounded)
    }

    /// The entries within the bounds, in order; empty where the bounds cross.
    pub(crate) fn range(&self, lower: Bound<(V, u64)>, upper: Bound<(V, u64)>) -> Entries<'_, V> {
        let crossed = match (&lower, &upper) {
            (Included(a), Included(b)) => a > b,
            (Included(a) | Excluded(a), Included(b) | Excluded(b)) => a >= b,
            _ => false,
        };
        if crossed {
            return Entries {
                sparse: self.sparse.nothing(),
                front: None,
                back: None,
                groups: Vec::new(),
                first_group: 0,
                end_group: 0,
            };
        }
        let groups: Vec<(&V, sorted_set::Iter<'_, GroupId>)> = self
            .groups
            .range((value_bound(&lower), value_bound(&upper)))
            .map(|(value, ids)| (value, ids_within(ids, value, &lower, &upper)))
            .collect();
        let end_group = groups.len();
        Entries {
            sparse: self.sparse.range((lower, upper)),
            front: None,
            back: None,
            groups,
            first_group: 0,
            end_group,
        }
    }

    /// The bytes of the entries and the groups (not of what the values point at).
    pub(crate) fn heap_bytes(&self) -> usize {
        // The map of groups: a B-tree node holds up to eleven values and sets, with a parent
        // link and lengths.
        let group_slot = std::mem::size_of::<(V, SortedSet<GroupId>)>() + 8;
        self.sparse.heap_bytes()
            + self
                .groups
                .values()
                .map(|ids| ids.heap_bytes() + group_slot)
                .sum::<usize>()
    }
}

impl<V: Ord + Clone> FromIterator<(V, u64)> for Grouped<V> {
    /// Builds the groups as runs of one value come, when the entries come in order (a
    /// snapshot, a builder's sorted entries); sorts them first otherwise.
    fn from_iter<I: IntoIterator<Item = (V, u64)>>(entries: I) -> Self {
        let mut entries = entries.into_iter();
        let mut building = Building::default();
        while let Some(entry) = entries.next() {
            if let Err(entry) = building.push(entry) {
                // Out of order: everything as entries, sorted.
                let mut all: Vec<(V, u64)> = building.finish().iter_owned();
                all.push(entry);
                all.extend(entries);
                all.sort_unstable();
                all.dedup();
                let mut sorted = Building::default();
                for entry in all {
                    // In order now: no entry is refused.
                    let _ = sorted.push(entry);
                }
                return sorted.finish();
            }
        }
        building.finish()
    }
}

impl<V: Ord + Clone> Grouped<V> {
    /// Every entry, owned.
    fn iter_owned(&self) -> Vec<(V, u64)> {
        self.iter().map(|(value, id)| (value.clone(), id)).collect()
    }
}

impl<'a, V: Ord + Clone> IntoIterator for &'a Grouped<V> {
    type Item = (&'a V, u64);
    type IntoIter = Entries<'a, V>;

    fn into_iter(self) -> Entries<'a, V> {
        self.iter()
    }
}

/// A [`Grouped`] being built from entries in ascending order: the current value's run of ids
/// is held until the value changes, then kept as a group or as entries.
struct Building<V> {
    sparse: Packer<(V, u64)>,
    groups: BTreeMap<V, SortedSet<GroupId>>,
    run: Option<(V, Vec<u64>)>,
    len: usize,
}

impl<V> Default for Building<V> {
    fn default() -> Self {
        Building {
            sparse: Packer::default(),
            groups: BTreeMap::new(),
            run: None,
            len: 0,
        }
    }
}

impl<V: Ord + Clone> Building<V> {
    /// Adds the next entry, or gives it back when it is not above the last.
    fn push(&mut self, (value, id): (V, u64)) -> Result<(), (V, u64)> {
        match &mut self.run {
            Some((current, ids)) if *current == value => {
                if ids.last().is_some_and(|last| *last >= id) {
                    return Err((value, id));
                }
                ids.push(id);
            }
            Some((current, _)) if *current > value => return Err((value, id)),
            _ => {
                self.end_run();
                self.run = Some((value, vec![id]));
            }
        }
        self.len += 1;
        Ok(())
    }

    fn end_run(&mut self) {
        if let Some((value, ids)) = self.run.take() {
            // The ids come in order: those that fit a group first.
            let fit = ids.partition_point(|id| GroupId::try_from(*id).is_ok());
            let rest = if fit >= GROUP_AT {
                let group = ids[..fit].iter().map(|id| *id as GroupId).collect();
                self.groups.insert(value.clone(), group);
                &ids[fit..]
            } else {
                &ids[..]
            };
            for id in rest {
                self.sparse.push((value.clone(), *id));
            }
        }
    }

    fn finish(mut self) -> Grouped<V> {
        self.end_run();
        Grouped {
            sparse: self.sparse.finish(),
            groups: self.groups,
            len: self.len,
        }
    }
}

/// A walk of a [`Grouped`]'s entries within bounds: its entries and its groups merged by value
/// (a value is in one or the other), from either end.
pub(crate) struct Entries<'a, V> {
    sparse: sorted_set::Iter<'a, (V, u64)>,
    /// The next entry from the front and from the back, taken from `sparse` to compare.
    front: Option<(&'a V, u64)>,
    back: Option<(&'a V, u64)>,
    /// The groups within the bounds, in value order, each with its ids within them.
    groups: Vec<(&'a V, sorted_set::Iter<'a, GroupId>)>,
    /// The groups not yet walked from either end: `first_group..end_group`.
    first_group: usize,
    end_group: usize,
}

impl<'a, V: Ord> Entries<'a, V> {
    fn fill_front(&mut self) {
        if self.front.is_none() {
            self.front = self
                .sparse
                .next()
                .map(|(value, id)| (value, *id))
                .or_else(|| self.back.take());
        }
        while self.first_group < self.end_group && self.groups[self.first_group].1.is_over() {
            self.first_group += 1;
        }
    }

    fn fill_back(&mut self) {
        if self.back.is_none() {
            self.back = self
                .sparse
                .next_back()
                .map(|(value, id)| (value, *id))
                .or_else(|| self.front.take());
        }
        while self.end_group > self.first_group && self.groups[self.end_group - 1].1.is_over() {
            self.end_group -= 1;
        }
    }
}

impl<'a, V: Ord> Entries<'a, V> {
    /// The next entry of the first group not walked, without taking it.
    fn group_front(&self) -> Option<(&'a V, u64)> {
        let (value, ids) = self.groups.get(self.first_group)?;
        (self.first_group < self.end_group)
            .then(|| ids.peek().map(|id| (*value, u64::from(*id))))
            .flatten()
    }

    /// The last entry of the last group not walked, without taking it.
    fn group_back(&self) -> Option<(&'a V, u64)> {
        let (value, ids) = self.groups.get(self.end_group.checked_sub(1)?)?;
        (self.end_group > self.first_group)
            .then(|| ids.peek_back().map(|id| (*value, u64::from(*id))))
            .flatten()
    }
}

impl<'a, V: Ord> Iterator for Entries<'a, V> {
    type Item = (&'a V, u64);

    fn next(&mut self) -> Option<(&'a V, u64)> {
        self.fill_front();
        // A value's group and its entries past a group id's range both come in (value, id)
        // order: the smaller of the two is next.
        match (self.front, self.group_front()) {
            (Some(entry), Some(grouped)) if grouped < entry => {
                self.groups[self.first_group].1.next();
                Some(grouped)
            }
            (Some(entry), _) => {
                self.front = None;
                Some(entry)
            }
            (None, Some(grouped)) => {
                self.groups[self.first_group].1.next();
                Some(grouped)
            }
            (None, None) => None,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let grouped: usize = self.groups[self.first_group..self.end_group]
            .iter()
            .map(|(_, ids)| ids.len())
            .sum();
        let left = self.sparse.len()
            + usize::from(self.front.is_some())
            + usize::from(self.back.is_some())
            + grouped;
        (left, Some(left))
    }
}

impl<V: Ord> DoubleEndedIterator for Entries<'_, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.fill_back();
        match (self.back, self.group_back()) {
            (Some(entry), Some(grouped)) if grouped > entry => {
                self.groups[self.end_group - 1].1.next_back();
                Some(grouped)
            }
            (Some(entry), _) => {
                self.back = None;
                Some(entry)
            }
            (None, Some(grouped)) => {
                self.groups[self.end_group - 1].1.next_back();
                Some(grouped)
            }
            (None, None) => None,
        }
    }
}

impl<V: Ord> ExactSizeIterator for Entries<'_, V> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Values 0..8 held by many calls, 100.. held by one or two.
    fn entries() -> Vec<(i64, u64)> {
        (0..3_000u64)
            .map(|id| {
                let value = match id % 10 {
                    0..=5 => (id % 4) as i64,
                    6 => i64::MIN,
                    _ => 100 + (id * 7919 % 1_500) as i64,
                };
                (value, id)
            })
            .collect()
    }

    fn check(set: &Grouped<i64>, model: &BTreeSet<(i64, u64)>) {
        assert_eq!(set.len(), model.len());
        assert!(set.iter().eq(model.iter().map(|(v, id)| (v, *id))));
        assert!(set
            .iter()
            .rev()
            .eq(model.iter().rev().map(|(v, id)| (v, *id))));
        assert_eq!(set.iter().len(), model.len());
    }

    #[test]
    fn ranges_agree_with_one_set_of_every_entry_from_either_end() {
        let model: BTreeSet<(i64, u64)> = entries().into_iter().collect();
        let set: Grouped<i64> = entries().into_iter().collect();
        assert!(set.groups.len() >= 4, "{} groups", set.groups.len());
        check(&set, &model);
        let bounds = [
            Unbounded,
            Included((i64::MIN, 0)),
            Excluded((i64::MIN, 706)),
            Included((1, 0)),
            Included((1, 1_301)),
            Excluded((2, 1_302)),
            Included((2, u64::MAX)),
            Excluded((400, 2_000)),
            Included((900, 0)),
        ];
        for lower in &bounds {
            for upper in &bounds {
                let crossed = match (lower, upper) {
                    (Included(a), Included(b)) => a > b,
                    (Included(a) | Excluded(a), Included(b) | Excluded(b)) => a >= b,
                    _ => false,
                };
                let expected: Vec<(i64, u64)> = if crossed {
                    Vec::new()
                } else {
                    model.range((*lower, *upper)).copied().collect()
                };
                let got: Vec<(i64, u64)> =
                    set.range(*lower, *upper).map(|(v, id)| (*v, id)).collect();
                assert_eq!(got, expected, "{lower:?} {upper:?}");
                let mut walk = set.range(*lower, *upper);
                assert_eq!(walk.len(), expected.len());
                // From both ends at once.
                let (mut front, mut back) = (Vec::new(), Vec::new());
                while let Some((v, id)) = walk.next() {
                    front.push((*v, id));
                    match walk.next_back() {
                        Some((v, id)) => back.push((*v, id)),
                        None => break,
                    }
                }
                front.extend(back.into_iter().rev());
                assert_eq!(front, expected, "{lower:?} {upper:?} from both ends");
            }
        }
    }

    #[test]
    fn random_inserts_and_removes_agree_with_one_set_of_every_entry() {
        let mut numbers = crate::sorted_set::tests::numbers(0x2545_f491_4f6c_dd1d);
        let mut next = move || numbers.next().unwrap_or_default();
        let mut model = BTreeSet::new();
        let mut set = Grouped::new();
        for step in 0..60_000 {
            let n = next();
            // A few values many calls hold, and many values few do.
            let value = if n % 3 == 0 {
                (n >> 8) % 4
            } else {
                10 + (n >> 8) % 5_000
            } as i64;
            // Some ids straddle the end of a group id's range.
            let past = if n.is_multiple_of(7) {
                u64::from(GroupId::MAX) - 1_000
            } else {
                0
            };
            let entry = (value, past + (n >> 24) % 2_000);
            if step % 5 < 3 {
                assert_eq!(set.insert(entry), model.insert(entry), "insert {entry:?}");
            } else {
                assert_eq!(set.remove(&entry), model.remove(&entry), "remove {entry:?}");
            }
            if step % 10_000 == 0 {
                check(&set, &model);
            }
        }
        check(&set, &model);
        for _ in 0..200 {
            let (a, b) = (next(), next());
            let id = |n: u64| {
                let past = if n.is_multiple_of(3) {
                    u64::from(GroupId::MAX) - 1_000
                } else {
                    0
                };
                past + (n >> 32) % 2_000
            };
            let lower = ((a % 5_010) as i64, id(a));
            let upper = ((b % 5_010) as i64, id(b));
            if lower > upper {
                continue;
            }
            let got: Vec<_> = set
                .range(Included(lower), Excluded(upper))
                .rev()
                .map(|(v, id)| (*v, id))
                .collect();
            let expected: Vec<_> = model.range(lower..upper).rev().copied().collect();
            assert_eq!(got, expected, "{lower:?}..{upper:?}");
            assert!(set.contains(&lower) == model.contains(&lower));
            let forward: Vec<_> = set
                .range(Excluded(lower), Included(upper))
                .map(|(v, id)| (*v, id))
                .collect();
            let expected: Vec<_> = model
                .range((Excluded(lower), Included(upper)))
                .copied()
                .collect();
            assert_eq!(forward, expected, "({lower:?})..={upper:?}");
        }
    }

    #[test]
    fn values_become_groups_and_back_as_calls_come_and_go() {
        let mut model = BTreeSet::new();
        let mut set = Grouped::new();
        for id in 0..200u64 {
            let entry = ((id % 3) as i64, id);
            assert_eq!(set.insert(entry), model.insert(entry));
        }
        assert!(!set.insert((0, 0)));
        assert_eq!(set.groups.len(), 3);
        check(&set, &model);
        for id in 0..200u64 {
            if id % 3 == 0 && id > 20 {
                let entry = (0, id);
                assert_eq!(set.remove(&entry), model.remove(&entry));
                assert!(!set.remove(&entry));
            }
        }
        assert!(set.group(&0).is_none(), "value 0 went back to entries");
        assert!(set.contains(&(0, 3)) && set.contains(&(1, 1)) && !set.contains(&(0, 30)));
        check(&set, &model);
        let unsorted: Grouped<i64> = model.iter().rev().copied().collect();
        check(&unsorted, &model);
    }
}
