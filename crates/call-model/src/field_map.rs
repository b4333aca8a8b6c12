//! [`FieldMap`]: a map keyed by [`Field`], held as one slot per field, in which a call keeps its
//! attributes and a write its changes.
//!
//! A call has at most [`Field::ALL`]'s two dozen attributes, so a slot for each costs one
//! allocation, where a `BTreeMap` took two or three nodes, a search per lookup and a walk per
//! drop; folding events into calls, their index rows and their stored views do little else
//! (a tenth of a rebuild's time was B-tree work). It reads like the `BTreeMap` it replaced:
//! the same method names, entries in [`Field::ALL`]'s order (which is `Field`'s `Ord`).

use crate::fields::Field;
use std::fmt;

/// The number of attributes a call can have.
const FIELDS: usize = Field::ALL.len();

/// A map from [`Field`] to `V`: see the module's documentation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FieldMap<V> {
    /// [`FIELDS`] slots, a field's at its position in [`Field::ALL`]. A slice rather than an
    /// array: an array is built on the stack and copied into its box, and moved back out of it
    /// to be taken apart, two copies of some 700 bytes for every event a replay folds.
    slots: Box<[Option<V>]>,
}

impl<V> FieldMap<V> {
    /// An empty map.
    pub fn new() -> FieldMap<V> {
        FieldMap {
            slots: std::iter::repeat_with(|| None).take(FIELDS).collect(),
        }
    }

    /// The value of `field`, if it has one.
    pub fn get(&self, field: &Field) -> Option<&V> {
        self.slots[*field as usize].as_ref()
    }

    /// The value of `field`, mutably, if it has one.
    pub fn get_mut(&mut self, field: &Field) -> Option<&mut V> {
        self.slots[*field as usize].as_mut()
    }

    /// Sets `field`; returns the value it replaced.
    pub fn insert(&mut self, field: Field, value: V) -> Option<V> {
        self.slots[field as usize].replace(value)
    }

    /// Takes `field`'s value out.
    pub fn remove(&mut self, field: &Field) -> Option<V> {
        self.slots[*field as usize].take()
    }

    /// Whether `field` has a value.
    pub fn contains_key(&self, field: &Field) -> bool {
        self.slots[*field as usize].is_some()
    }

    /// How many fields have a value.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|slot| slot.is_some()).count()
    }

    /// Whether no field has a value.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// The fields with a value and their values, in [`Field::ALL`]'s order.
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            slots: self.slots.iter().enumerate(),
        }
    }

    /// The fields with a value, in order.
    pub fn keys(&self) -> impl Iterator<Item = &'static Field> + '_ {
        self.iter().map(|(field, _)| field)
    }

    /// The values, in their fields' order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.slots.iter().flatten()
    }

    /// Keeps only the entries `keep` says to.
    pub fn retain(&mut self, mut keep: impl FnMut(&Field, &mut V) -> bool) {
        for (field, slot) in Field::ALL.iter().zip(self.slots.iter_mut()) {
            if let Some(value) = slot {
                if !keep(field, value) {
                    *slot = None;
                }
            }
        }
    }
}

impl<V> FieldMap<Option<V>> {
    /// The fields set to a value, with their values: a map of changes (`None` clearing a field)
    /// made the map of what they set, in the same allocation.
    pub fn into_present(self) -> FieldMap<V> {
        FieldMap {
            slots: self
                .slots
                .into_vec()
                .into_iter()
                .map(Option::flatten)
                .collect(),
        }
    }
}

impl<V> Default for FieldMap<V> {
    fn default() -> FieldMap<V> {
        FieldMap::new()
    }
}

impl<V: fmt::Debug> fmt::Debug for FieldMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> Extend<(Field, V)> for FieldMap<V> {
    fn extend<I: IntoIterator<Item = (Field, V)>>(&mut self, entries: I) {
        for (field, value) in entries {
            self.insert(field, value);
        }
    }
}

impl<V> FromIterator<(Field, V)> for FieldMap<V> {
    fn from_iter<I: IntoIterator<Item = (Field, V)>>(entries: I) -> FieldMap<V> {
        let mut map = FieldMap::new();
        map.extend(entries);
        map
    }
}

/// The entries of a [`FieldMap`], borrowed, in order.
pub struct Iter<'a, V> {
    slots: std::iter::Enumerate<std::slice::Iter<'a, Option<V>>>,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'static Field, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        self.slots
            .find_map(|(index, slot)| Some((&Field::ALL[index], slot.as_ref()?)))
    }
}

impl<'a, V> IntoIterator for &'a FieldMap<V> {
    type Item = (&'static Field, &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

/// The entries of a [`FieldMap`], owned, in order.
pub struct IntoIter<V> {
    slots: std::iter::Enumerate<std::vec::IntoIter<Option<V>>>,
}

impl<V> Iterator for IntoIter<V> {
    type Item = (Field, V);

    fn next(&mut self) -> Option<(Field, V)> {
        self.slots
            .find_map(|(index, slot)| Some((Field::ALL[index], slot?)))
    }
}

impl<V> IntoIterator for FieldMap<V> {
    type Item = (Field, V);
    type IntoIter = IntoIter<V>;

    fn into_iter(self) -> IntoIter<V> {
        IntoIter {
            slots: self.slots.into_vec().into_iter().enumerate(),
        }
    }
}

/// Where a map's slots are allocated: a test tells by it that a conversion kept them in place.
#[cfg(test)]
impl<V> FieldMap<V> {
    pub(crate) fn allocation(&self) -> usize {
        self.slots.as_ptr() as usize
    }
}
