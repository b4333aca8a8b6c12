//! An index of a column's values: its calls in `(value, id)` order, kept as the calls' ids
//! alone, each compared by its value in the index's column.
//!
//! The column (id -> value) is needed anyway: a filter on the attribute checks another index's
//! candidates against it, and a sort by it orders them. An ordered set of `(value, id)` entries
//! beside it held every value twice, 16 bytes a call in the set (a date-time and an id, or a
//! shared string and an id) beside 8 in the column; the ids alone take 4. What it costs is a
//! column lookup per comparison: a search of a million calls reads about twenty values from the
//! column instead of from its entries.

use crate::column::{Cell, Column};
use crate::grouped::{EntryRange, Grouped};
use crate::sorted_set::{self, At, Lasts, SortedSet};
use std::cmp::Ordering;
use std::ops::Bound::{self, Excluded, Included, Unbounded};

/// The value a column holds for a call without one, and for an id not live.
pub(crate) trait Null {
    fn null() -> Self;
}

/// A column and its calls in `(value, id)` order: every call given a value (a sort index gives
/// every live call one, null included; a relationship's index only the calls that have one).
pub(crate) struct ColumnOrder<V: Cell> {
    order: Order<V>,
    /// id -> value, [`Null::null`] for a live call without a value and for an id not live.
    pub(crate) col: Column<V>,
}

/// The calls in `(value, id)` order.
enum Order<V> {
    /// Their ids, compared by `(column value, id)`: every id fits in four bytes, as every id the
    /// log hands out from 1 does for a ledger's first four billion calls.
    Ids(IdOrder<V>),
    /// `(value, id)` entries, once a call whose id does not fit is added (a restored call can
    /// carry any id): the general form, kept from then on.
    Entries(Grouped<V>),
}

/// The place of `id` in an [`Order::Ids`]: by its value in `col`, then by id.
fn by_value<V: Ord + Cell>(col: &Column<V>) -> impl Fn(&u32, &u32) -> Ordering + '_ {
    move |a, b| {
        let (a, b) = (u64::from(*a), u64::from(*b));
        col.get(a).cmp(&col.get(b)).then(a.cmp(&b))
    }
}

/// The ids of an [`Order::Ids`], with the column's value of each chunk's last id beside it: a
/// search over the chunks then compares values in place, where reading each probed id's value
/// from the column took a cache miss per probe, about half of a search's at a million calls. A
/// create searches some thirteen orders; its index update at a million calls took about a
/// quarter less time for it (29 us to 22 us a create, alternating runs of 100,000 creates).
struct IdOrder<V> {
    ids: SortedSet<u32>,
    /// `last_values[i]` is the column's value of `ids.lasts()[i]`.
    last_values: Vec<V>,
}

/// Keeps [`IdOrder::last_values`] in step with the set's lasts, reading their values from the
/// column (which holds an inserted id's new value, and a removed id's old one, by then).
struct LastValues<'a, V: Cell> {
    values: &'a mut Vec<V>,
    col: &'a Column<V>,
}

impl<V: Cell> Lasts<u32> for LastValues<'_, V> {
    fn inserted(&mut self, chunk: usize, last: &u32) {
        let value = V::owned(self.col.get(u64::from(*last)));
        self.values.insert(chunk, value);
    }

    fn replaced(&mut self, chunk: usize, last: &u32) {
        self.values[chunk] = V::owned(self.col.get(u64::from(*last)));
    }

    fn removed(&mut self, chunk: usize) {
        self.values.remove(chunk);
    }
}

impl<V: Ord + Cell> IdOrder<V> {
    /// The order of `ids`, whose values `col` holds.
    fn new(ids: SortedSet<u32>, col: &Column<V>) -> Self {
        let last_values = ids
            .lasts()
            .iter()
            .map(|id| V::owned(col.get(u64::from(*id))))
            .collect();
        IdOrder { ids, last_values }
    }

    /// Where `(value, id)` is or would go, `value` as read from `col`.
    fn place<'a>(&'a self, col: &'a Column<V>, value: V::Read<'a>, id: u32) -> At {
        let lasts = self.ids.lasts();
        self.ids.locate(
            |chunk| (self.last_values[chunk].as_read(), lasts[chunk]) < (value, id),
            |entry| (col.get(u64::from(*entry)), *entry) < (value, id),
        )
    }

    /// Adds `id`, whose value `col` holds.
    fn insert(&mut self, col: &Column<V>, id: u32) {
        let at = self.place(col, col.get(u64::from(id)), id);
        let mut lasts = LastValues {
            values: &mut self.last_values,
            col,
        };
        self.ids.insert_at(at, id, by_value(col), &mut lasts);
    }

    /// Removes `id`, whose value `col` still holds.
    fn remove(&mut self, col: &Column<V>, id: u32) {
        let at = self.place(col, col.get(u64::from(id)), id);
        let mut lasts = LastValues {
            values: &mut self.last_values,
            col,
        };
        self.ids.remove_at(at, &id, by_value(col), &mut lasts);
    }

    fn heap_bytes(&self) -> usize {
        self.ids.heap_bytes() + self.last_values.capacity() * std::mem::size_of::<V>()
    }
}

impl<V: Ord + Cell + Null> ColumnOrder<V> {
    pub(crate) fn new() -> Self {
        ColumnOrder {
            order: Order::Ids(IdOrder {
                ids: SortedSet::new(),
                last_values: Vec::new(),
            }),
            col: Column::new(V::null()),
        }
    }
}

impl<V: Ord + Cell> ColumnOrder<V> {
    /// How many calls it holds.
    pub(crate) fn len(&self) -> usize {
        match &self.order {
            Order::Ids(ids) => ids.ids.len(),
            Order::Entries(entries) => entries.len(),
        }
    }

    /// Moves call `id`, live before or not (`was_live`), to `new` (`None`: not live). The
    /// column holds a live call's value, so its old place needs no other telling.
    pub(crate) fn set_value(&mut self, id: u64, was_live: bool, new: Option<V>) {
        let narrow = u32::try_from(id).ok();
        if narrow.is_none() {
            self.widen();
        }
        let null = self.col.null().clone();
        let Self { order, col } = self;
        // The column says where an id is: the old entry goes before the column changes, the
        // new one after.
        match (order, narrow) {
            (Order::Ids(ids), Some(narrow)) => {
                if was_live {
                    ids.remove(col, narrow);
                }
                let live = new.is_some();
                col.set(id, new.unwrap_or(null));
                if live {
                    ids.insert(col, narrow);
                }
            }
            (Order::Entries(entries), _) => {
                if was_live {
                    entries.remove(&(V::owned(col.get(id)), id));
                }
                col.set(id, new.clone().unwrap_or(null));
                if let Some(value) = new {
                    entries.insert((value, id));
                }
            }
            (Order::Ids(_), None) => unreachable!("widened above"),
        }
    }

    /// Turns the ids into entries, for an id that does not fit in four bytes.
    fn widen(&mut self) {
        if let Order::Ids(_) = self.order {
            let entries = self
                .entries()
                .map(|(value, id)| (V::owned(value), id))
                .collect();
            self.order = Order::Entries(entries);
        }
    }

    /// Orders the calls of `entries`, given in `(value, id)` order, whose values the column
    /// already holds (an index builder's, which fills the column as it adds calls).
    pub(crate) fn order_from(&mut self, entries: Vec<(V, u64)>) {
        self.order = match entries
            .iter()
            .map(|(_, id)| u32::try_from(*id).ok())
            .collect::<Option<Vec<u32>>>()
        {
            Some(ids) => Order::Ids(IdOrder::new(
                SortedSet::from_ordered(ids.into_iter()),
                &self.col,
            )),
            None => Order::Entries(entries.into_iter().collect()),
        };
    }

    /// The value of the first call `before` is false of (see [`SortedSet::first_from`]) where
    /// `wanted` holds of it: a value some call holds, found in the column. `None` in the
    /// general form, which does not look.
    pub(crate) fn held_value(
        &self,
        before: impl Fn(V::Read<'_>) -> bool,
        wanted: impl Fn(V::Read<'_>) -> bool,
    ) -> Option<V::Read<'_>> {
        match &self.order {
            Order::Ids(ids) => ids
                .ids
                .first_from(|id| before(self.col.get(u64::from(*id))))
                .map(|id| self.col.get(u64::from(*id)))
                .filter(|value| wanted(*value)),
            Order::Entries(_) => None,
        }
    }

    /// Every entry, in order.
    pub(crate) fn entries(&self) -> Entries<'_, V> {
        self.entries_within(Unbounded, Unbounded)
    }

    /// The entries within the bounds, in order; empty where they cross.
    pub(crate) fn entries_within(
        &self,
        lower: Bound<(V, u64)>,
        upper: Bound<(V, u64)>,
    ) -> Entries<'_, V> {
        match &self.order {
            Order::Ids(ids) => Entries::Ids {
                ids: self.ids_within(&ids.ids, &lower, &upper),
                col: &self.col,
            },
            Order::Entries(entries) => Entries::Entries(entries.range(lower, upper)),
        }
    }

    /// The ids of the ids form within the bounds.
    fn ids_within<'a>(
        &'a self,
        ids: &'a SortedSet<u32>,
        lower: &Bound<(V, u64)>,
        upper: &Bound<(V, u64)>,
    ) -> sorted_set::Iter<'a, u32> {
        let col = &self.col;
        let below = |id: &u32, bound: &(V, u64)| {
            let id = u64::from(*id);
            col.get(id).cmp(&bound.0.as_read()).then(id.cmp(&bound.1))
        };
        let before_start = |id: &u32| match lower {
            Included(bound) => below(id, bound) == Ordering::Less,
            Excluded(bound) => below(id, bound) != Ordering::Greater,
            Unbounded => false,
        };
        let before_end = |id: &u32| match upper {
            Included(bound) => below(id, bound) != Ordering::Greater,
            Excluded(bound) => below(id, bound) == Ordering::Less,
            Unbounded => true,
        };
        ids.range_where(before_start, before_end)
    }

    /// The bytes the order and the column take (not what the values point at).
    pub(crate) fn heap_bytes(&self) -> usize {
        let order = match &self.order {
            Order::Ids(ids) => ids.heap_bytes(),
            Order::Entries(entries) => entries.heap_bytes(),
        };
        order + self.col.heap_bytes()
    }
}

/// Entries read back in `(value, id)` order (the snapshot's), column and order at once; any
/// other order is sorted.
impl<V: Ord + Cell + Null> FromIterator<(V, u64)> for ColumnOrder<V> {
    fn from_iter<I: IntoIterator<Item = (V, u64)>>(entries: I) -> Self {
        let mut index = ColumnOrder::new();
        let mut entries = entries.into_iter();
        // The ids are packed as they come while they come in order (no list of a million ids
        // beside the packed set); the first entry out of order, or too wide for the ids form,
        // stops the packing, and everything is then gathered as pairs and ordered at the end.
        // The last entry is kept to compare the next with (reading it back from the column
        // would be a lookup in a chunk far from the next one's).
        let mut last: Option<(V, u64)> = None;
        let mut stopped_at: Option<(V, u64)> = None;
        let col = &mut index.col;
        let packed = SortedSet::from_ordered(std::iter::from_fn(|| {
            let (value, id) = entries.next()?;
            let in_order = last.as_ref().is_none_or(|(last_value, last)| {
                (last_value.as_read(), *last) < (value.as_read(), id)
            });
            match u32::try_from(id) {
                Ok(narrow) if in_order => {
                    col.set(id, value.clone());
                    last = Some((value, id));
                    Some(narrow)
                }
                _ => {
                    stopped_at = Some((value, id));
                    None
                }
            }
        }));
        match stopped_at {
            None => index.order = Order::Ids(IdOrder::new(packed, &index.col)),
            Some(first) => {
                let mut all: Vec<(V, u64)> = packed
                    .iter()
                    .map(|id| (V::owned(index.col.get(u64::from(*id))), u64::from(*id)))
                    .collect();
                drop(packed);
                for (value, id) in std::iter::once(first).chain(entries) {
                    index.col.set(id, value.clone());
                    all.push((value, id));
                }
                all.sort_unstable();
                all.dedup();
                index.order_from(all);
            }
        }
        index
    }
}

impl<V: Ord + Cell> EntryRange<V> for ColumnOrder<V> {
    fn entry_range<'s, T: 's>(
        &'s self,
        lower: Bound<(V, u64)>,
        upper: Bound<(V, u64)>,
        show: impl Fn(&V) -> T + 's,
    ) -> Box<dyn DoubleEndedIterator<Item = (T, u64)> + 's> {
        Box::new(
            self.entries_within(lower, upper)
                .map(move |(value, id)| (V::lend(value, &show), id)),
        )
    }

    fn id_range(
        &self,
        lower: Bound<(V, u64)>,
        upper: Bound<(V, u64)>,
    ) -> Box<dyn DoubleEndedIterator<Item = u64> + '_> {
        match &self.order {
            Order::Ids(ids) => Box::new(
                self.ids_within(&ids.ids, &lower, &upper)
                    .map(|id| u64::from(*id)),
            ),
            Order::Entries(entries) => Box::new(entries.range(lower, upper).map(|(_, id)| id)),
        }
    }
}

/// A walk of a [`ColumnOrder`]'s entries, from either end.
pub(crate) enum Entries<'a, V: Cell> {
    Ids {
        ids: sorted_set::Iter<'a, u32>,
        col: &'a Column<V>,
    },
    Entries(crate::grouped::Entries<'a, V>),
}

/// Call `id`'s entry: its value in the column, and the id.
fn entry<'a, V: Cell>(col: &'a Column<V>, id: &u32) -> (V::Read<'a>, u64) {
    let id = u64::from(*id);
    (col.get(id), id)
}

impl<'a, V: Ord + Cell> Iterator for Entries<'a, V> {
    type Item = (V::Read<'a>, u64);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Entries::Ids { ids, col } => ids.next().map(|id| entry(col, id)),
            Entries::Entries(entries) => entries.next().map(|(value, id)| (value.as_read(), id)),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Entries::Ids { ids, .. } => ids.size_hint(),
            Entries::Entries(entries) => entries.size_hint(),
        }
    }
}

impl<V: Ord + Cell> DoubleEndedIterator for Entries<'_, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            Entries::Ids { ids, col } => ids.next_back().map(|id| entry(col, id)),
            Entries::Entries(entries) => {
                entries.next_back().map(|(value, id)| (value.as_read(), id))
            }
        }
    }
}

impl<V: Ord + Cell> ExactSizeIterator for Entries<'_, V> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::NULL_TIME;
    use crate::sorted_set::tests::numbers;
    use std::collections::BTreeSet;

    fn check(index: &ColumnOrder<i64>, model: &BTreeSet<(i64, u64)>) {
        assert_eq!(index.len(), model.len());
        assert!(index.entries().eq(model.iter().copied()));
        assert!(index.entries().rev().eq(model.iter().rev().copied()));
        for (millis, id) in model {
            assert_eq!(index.col.get(*id), *millis);
        }
        if let Order::Ids(ids) = &index.order {
            let values: Vec<i64> = ids
                .ids
                .lasts()
                .iter()
                .map(|id| index.col.get(u64::from(*id)))
                .collect();
            assert_eq!(
                ids.last_values, values,
                "each chunk's last value, side by side"
            );
        }
        for (a, b) in numbers(9)
            .map(|n| ((n % 120) as i64, ((n >> 32) % 120) as i64))
            .take(200)
        {
            let (lo, hi) = ((a.min(b), 0), (a.max(b), u64::MAX));
            let got: Vec<(i64, u64)> = index
                .entry_range(Included(lo), Excluded(hi), |m| *m)
                .collect();
            let want: Vec<(i64, u64)> = model.range(lo..hi).copied().collect();
            assert_eq!(got, want, "{lo:?}..{hi:?}");
        }
    }

    /// Values and ids moved about at random agree with a set of `(millis, id)`, before and
    /// after an id too wide for four bytes turns the ids into entries.
    #[test]
    fn moves_agree_with_a_set_of_entries_narrow_and_wide() {
        let mut index: ColumnOrder<i64> = ColumnOrder::new();
        let mut model = BTreeSet::new();
        let mut values: std::collections::HashMap<u64, i64> = Default::default();
        let mut step =
            |index: &mut ColumnOrder<i64>, model: &mut BTreeSet<(i64, u64)>, id: u64, n: u64| {
                let old = values.get(&id).copied();
                // A few values many calls hold, nulls among them, and a deletion now and then.
                let new = match n % 7 {
                    0 => None,
                    1 => Some(NULL_TIME),
                    _ => Some((n % 100) as i64),
                };
                index.set_value(id, old.is_some(), new);
                if let Some(old) = old {
                    model.remove(&(old, id));
                }
                match new {
                    Some(millis) => {
                        model.insert((millis, id));
                        values.insert(id, millis);
                    }
                    None => {
                        values.remove(&id);
                    }
                }
            };
        for n in numbers(3).take(20_000) {
            step(&mut index, &mut model, 1 + (n >> 40) % 3_000, n);
        }
        assert!(matches!(index.order, Order::Ids(_)));
        check(&index, &model);
        let wide = u64::from(u32::MAX) + 5;
        step(&mut index, &mut model, wide, 2);
        assert!(matches!(index.order, Order::Entries(_)));
        for n in numbers(5).take(5_000) {
            step(&mut index, &mut model, 1 + (n >> 40) % 3_000, n);
        }
        check(&index, &model);
    }

    /// Read back in order or not, narrow or wide, a set of entries gives the same index.
    #[test]
    fn collected_entries_are_ordered_whatever_their_order() {
        let model: BTreeSet<(i64, u64)> = numbers(11)
            .take(5_000)
            .map(|n| (1 + (n >> 20) % 100_000, (n % 300) as i64))
            .collect::<std::collections::HashMap<u64, i64>>()
            .into_iter()
            .map(|(id, millis)| (millis, id))
            .collect();
        let in_order: ColumnOrder<i64> = model.iter().copied().collect();
        assert!(matches!(in_order.order, Order::Ids(_)));
        check(&in_order, &model);
        let shuffled: ColumnOrder<i64> = model.iter().rev().copied().collect();
        check(&shuffled, &model);
        let mut wide_model = model.clone();
        wide_model.insert((7, u64::MAX - 1));
        let wide: ColumnOrder<i64> = wide_model.iter().copied().collect();
        assert!(matches!(wide.order, Order::Entries(_)));
        check(&wide, &wide_model);
    }
}
