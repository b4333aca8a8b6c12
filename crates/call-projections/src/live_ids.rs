//! The live call ids, in id order: 4 bytes each while every id fits in four bytes (a ledger's
//! first four billion calls, as the log hands ids out from 1), 8 from the first that does not
//! (a restored call can carry any id).

use crate::sorted_set::{Packer, SortedSet};

/// The live call ids.
pub(crate) enum LiveIds {
    Narrow(SortedSet<u32>),
    Wide(SortedSet<u64>),
}

/// A walk of ids from either end.
pub(crate) type IdWalk<'a> = Box<dyn DoubleEndedIterator<Item = u64> + 'a>;

impl Default for LiveIds {
    fn default() -> Self {
        LiveIds::Narrow(SortedSet::new())
    }
}

impl LiveIds {
    pub(crate) fn len(&self) -> usize {
        match self {
            LiveIds::Narrow(ids) => ids.len(),
            LiveIds::Wide(ids) => ids.len(),
        }
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        match self {
            LiveIds::Narrow(ids) => u32::try_from(id).is_ok_and(|id| ids.contains(&id)),
            LiveIds::Wide(ids) => ids.contains(&id),
        }
    }

    pub(crate) fn insert(&mut self, id: u64) {
        match (&mut *self, u32::try_from(id)) {
            (LiveIds::Narrow(ids), Ok(narrow)) => {
                ids.insert(narrow);
            }
            (LiveIds::Narrow(ids), Err(_)) => {
                let mut wide: SortedSet<u64> = ids.iter().map(|id| u64::from(*id)).collect();
                wide.insert(id);
                *self = LiveIds::Wide(wide);
            }
            (LiveIds::Wide(ids), _) => {
                ids.insert(id);
            }
        }
    }

    pub(crate) fn remove(&mut self, id: u64) {
        match self {
            LiveIds::Narrow(ids) => {
                if let Ok(id) = u32::try_from(id) {
                    ids.remove(&id);
                }
            }
            LiveIds::Wide(ids) => {
                ids.remove(&id);
            }
        }
    }

    /// The ids from `lo` to `hi`, both included.
    pub(crate) fn range(&self, lo: u64, hi: u64) -> IdWalk<'_> {
        match self {
            LiveIds::Narrow(ids) => {
                let Ok(lo) = u32::try_from(lo) else {
                    return Box::new(std::iter::empty());
                };
                let hi = u32::try_from(hi).unwrap_or(u32::MAX);
                Box::new(ids.range(lo..=hi).map(|id| u64::from(*id)))
            }
            LiveIds::Wide(ids) => Box::new(ids.range(lo..=hi).copied()),
        }
    }

    /// Every id, in order.
    pub(crate) fn iter(&self) -> IdWalk<'_> {
        self.range(0, u64::MAX)
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            LiveIds::Narrow(ids) => ids.heap_bytes(),
            LiveIds::Wide(ids) => ids.heap_bytes(),
        }
    }
}

impl FromIterator<u64> for LiveIds {
    /// Packs the ids as they come, in four bytes until one does not fit.
    fn from_iter<I: IntoIterator<Item = u64>>(ids: I) -> Self {
        let mut ids = ids.into_iter();
        let mut narrow = Packer::default();
        for id in ids.by_ref() {
            match u32::try_from(id) {
                Ok(id) => narrow.push(id),
                Err(_) => {
                    let mut wide = Packer::default();
                    for id in narrow.finish() {
                        wide.push(u64::from(id));
                    }
                    wide.push(id);
                    for id in ids {
                        wide.push(id);
                    }
                    return LiveIds::Wide(wide.finish());
                }
            }
        }
        LiveIds::Narrow(narrow.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sorted_set::tests::numbers;
    use std::collections::BTreeSet;

    #[test]
    fn ids_agree_with_a_set_before_and_after_one_too_wide_for_four_bytes() {
        let mut ids = LiveIds::default();
        let mut model = BTreeSet::new();
        for (step, n) in numbers(0x51ed_2701_a3c4_9b1f).take(4000).enumerate() {
            // Past the halfway mark, some ids no longer fit in four bytes.
            let id = if step > 2000 && n % 7 == 0 {
                n >> 8
            } else {
                n % 5000
            };
            if n % 3 == 0 {
                ids.remove(id);
                model.remove(&id);
            } else {
                ids.insert(id);
                model.insert(id);
            }
            assert_eq!(ids.len(), model.len());
            assert_eq!(ids.contains(id), model.contains(&id));
        }
        assert!(matches!(ids, LiveIds::Wide(_)));
        assert!(ids.iter().eq(model.iter().copied()));
        assert!(ids
            .range(100, 4000)
            .rev()
            .eq(model.range(100..=4000).rev().copied()));
        let narrow: LiveIds = (1..=5000u64).collect();
        assert!(matches!(narrow, LiveIds::Narrow(_)));
        assert!(narrow.range(4990, u64::MAX).eq(4990..=5000));
        assert!(narrow
            .range(u64::from(u32::MAX) + 1, u64::MAX)
            .next()
            .is_none());
    }
}
