//! [`RelationMap`]: a map keyed by [`Relation`], held as its entries in order in one short
//! vector, in which a call keeps its relationships and a write its changes to them.
//!
//! A call has one to three of its seventeen relationships, typically its prospect: a `BTreeMap`
//! allocated a whole leaf of eleven slots for them (about 470 bytes for a reference each), and
//! a walk of its nodes to drop or move them, for every call a replay folds and every write
//! decoded. A vector of the few entries there are is one small allocation, found in a few
//! comparisons. It reads like the `BTreeMap` it replaced: the same method names, entries in
//! [`Relation`]'s order.

use crate::fields::Relation;
use std::fmt;

/// A map from [`Relation`] to `V`: see the module's documentation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RelationMap<V> {
    /// Ordered by relation, each relation at most once.
    entries: Vec<(Relation, V)>,
}

impl<V> RelationMap<V> {
    /// An empty map (it allocates nothing until an entry is inserted).
    pub const fn new() -> RelationMap<V> {
        RelationMap {
            entries: Vec::new(),
        }
    }

    /// Where `relation`'s entry is, or would go.
    fn find(&self, relation: &Relation) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|(held, _)| held.cmp(relation))
    }

    /// The value of `relation`, if it has one.
    pub fn get(&self, relation: &Relation) -> Option<&V> {
        let at = self.find(relation).ok()?;
        Some(&self.entries[at].1)
    }

    /// The value of `relation`, mutably, if it has one.
    pub fn get_mut(&mut self, relation: &Relation) -> Option<&mut V> {
        let at = self.find(relation).ok()?;
        Some(&mut self.entries[at].1)
    }

    /// Sets `relation` to `value`, returning the value it replaced.
    pub fn insert(&mut self, relation: Relation, value: V) -> Option<V> {
        match self.find(&relation) {
            Ok(at) => Some(std::mem::replace(&mut self.entries[at].1, value)),
            Err(at) => {
                self.entries.insert(at, (relation, value));
                None
            }
        }
    }

    /// Clears `relation`, returning its value.
    pub fn remove(&mut self, relation: &Relation) -> Option<V> {
        let at = self.find(relation).ok()?;
        Some(self.entries.remove(at).1)
    }

    /// Whether `relation` has a value.
    pub fn contains_key(&self, relation: &Relation) -> bool {
        self.find(relation).is_ok()
    }

    /// How many relations have a value.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no relation has a value.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The relations with a value and their values, in order.
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            entries: self.entries.iter(),
        }
    }

    /// The relations with a value, in order.
    pub fn keys(&self) -> impl Iterator<Item = &Relation> + '_ {
        self.entries.iter().map(|(relation, _)| relation)
    }

    /// The values, in their relations' order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, value)| value)
    }

    /// Keeps only the entries `keep` says to.
    pub fn retain(&mut self, mut keep: impl FnMut(&Relation, &mut V) -> bool) {
        self.entries
            .retain_mut(|(relation, value)| keep(relation, value));
    }
}

impl<V> RelationMap<Option<V>> {
    /// The relations set to a value, with their values: a map of changes (`None` clearing a
    /// relation) made the map of what they set, in the same allocation.
    pub fn into_present(self) -> RelationMap<V> {
        RelationMap {
            entries: self
                .entries
                .into_iter()
                .filter_map(|(relation, value)| Some((relation, value?)))
                .collect(),
        }
    }
}

impl<V> Default for RelationMap<V> {
    fn default() -> RelationMap<V> {
        RelationMap::new()
    }
}

impl<V: fmt::Debug> fmt::Debug for RelationMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> Extend<(Relation, V)> for RelationMap<V> {
    fn extend<I: IntoIterator<Item = (Relation, V)>>(&mut self, entries: I) {
        for (relation, value) in entries {
            self.insert(relation, value);
        }
    }
}

impl<V> FromIterator<(Relation, V)> for RelationMap<V> {
    fn from_iter<I: IntoIterator<Item = (Relation, V)>>(entries: I) -> RelationMap<V> {
        let mut map = RelationMap::new();
        map.extend(entries);
        map
    }
}

/// The entries of a [`RelationMap`], borrowed, in order.
pub struct Iter<'a, V> {
    entries: std::slice::Iter<'a, (Relation, V)>,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a Relation, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        self.entries
            .next()
            .map(|(relation, value)| (relation, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl<V> ExactSizeIterator for Iter<'_, V> {}

impl<'a, V> IntoIterator for &'a RelationMap<V> {
    type Item = (&'a Relation, &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

impl<V> IntoIterator for RelationMap<V> {
    type Item = (Relation, V);
    type IntoIter = std::vec::IntoIter<(Relation, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// `map[&relation]`, for tests that know the relation is there (it panics where it is not, as
/// a `BTreeMap` does); the service looks entries up with [`RelationMap::get`].
#[cfg(test)]
impl<V> std::ops::Index<&Relation> for RelationMap<V> {
    type Output = V;

    fn index(&self, relation: &Relation) -> &V {
        self.get(relation).expect("the relation has a value")
    }
}
