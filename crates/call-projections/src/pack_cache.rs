//! The projection's own cache of packs: the stored packs a read found, kept by their range of
//! ids so that the next read of a call in that range does not descend sled's tree.
//!
//! Why: a list at a million calls reads its page's 50 views from packs spread over the whole
//! tree, and each lookup descends it (its index nodes, sled's page table, the leaf), a chain of
//! cache misses that a ledger of ten thousand calls does not pay: such a list cost 1.6 times
//! the same list at ten thousand calls, about all of the difference sled's descent.
//!
//! Why it cannot go stale: a pack is never rewritten nor removed while its view lives (a later
//! change of a packed call is its `c` row, read before or instead of the pack, store.rs), and
//! the cache belongs to one view: a rebuild's new view starts with an empty one. A pack that
//! is not there yet is not cached, so a replay that writes it later is seen.
//!
//! A pack held here shares its bytes with sled's cache (both hold the same reference-counted
//! value), so until sled evicts that page it costs only the entry. The bytes held are bounded:
//! past the bound an arbitrary pack of the same shard makes room. `serve` warms it after open
//! ([`crate::Projection::warm_packs`]): a list at ten million calls otherwise reads most of its
//! packs for the first time for hours.

use crate::index::IdMap;
use sled::IVec;
use std::sync::{Mutex, PoisonError};

/// Shards, each under its own lock: readers on both cores rarely meet on one.
const SHARDS: usize = 64;

/// The packs a view's reads found, by range of ids, at most `budget` bytes of them.
pub(crate) struct PackCache {
    shards: Box<[Mutex<Shard>]>,
    /// The bytes each shard may hold.
    shard_budget: usize,
}

#[derive(Default)]
struct Shard {
    /// Where each cached range's pack is in `packs` (ranges are ids shifted: the id hash
    /// suits them).
    slots: IdMap<usize>,
    packs: Vec<(u64, IVec)>,
    bytes: usize,
    /// Picks the pack that makes room (xorshift).
    victim: u64,
}

impl PackCache {
    /// A cache holding at most `budget` bytes of packs (0: none).
    pub(crate) fn new(budget: u64) -> PackCache {
        PackCache {
            shards: (0..SHARDS)
                .map(|shard| {
                    Mutex::new(Shard {
                        victim: 0x9E37_79B9_7F4A_7C15 ^ shard as u64,
                        ..Shard::default()
                    })
                })
                .collect(),
            shard_budget: usize::try_from(budget / SHARDS as u64).unwrap_or(usize::MAX),
        }
    }

    fn shard(&self, range: u64) -> std::sync::MutexGuard<'_, Shard> {
        // Only this module's own code runs under the lock, which cannot panic in between.
        self.shards[range as usize % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The pack of `range`, if cached.
    pub(crate) fn get(&self, range: u64) -> Option<IVec> {
        let shard = self.shard(range);
        let slot = *shard.slots.get(&range)?;
        Some(shard.packs[slot].1.clone())
    }

    /// Keeps `pack`, the stored pack of `range`, making room for it.
    pub(crate) fn insert(&self, range: u64, pack: &IVec) {
        if pack.len() > self.shard_budget {
            return;
        }
        let mut shard = self.shard(range);
        if shard.slots.contains_key(&range) {
            return;
        }
        while shard.bytes + pack.len() > self.shard_budget {
            shard.evict_one();
        }
        shard.push(range, pack);
    }

    /// Keeps `pack`, the stored pack of `range`, where that takes no other's room; false when
    /// its shard is full.
    pub(crate) fn insert_if_room(&self, range: u64, pack: &IVec) -> bool {
        let mut shard = self.shard(range);
        if shard.bytes + pack.len() > self.shard_budget {
            return false;
        }
        if !shard.slots.contains_key(&range) {
            shard.push(range, pack);
        }
        true
    }

    /// What it holds.
    pub(crate) fn held(&self) -> HeldPacks {
        let (packs, bytes) = self.shards.iter().fold((0, 0), |(packs, bytes), shard| {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            (packs + shard.packs.len(), bytes + shard.bytes as u64)
        });
        HeldPacks {
            packs,
            bytes,
            budget: self.shard_budget as u64 * SHARDS as u64,
        }
    }
}

/// What a view's cache of packs holds (`$SRV.STATS` shows it under `list`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldPacks {
    /// The packs held.
    pub packs: usize,
    /// Their bytes.
    pub bytes: u64,
    /// The most it holds.
    pub budget: u64,
}

impl Shard {
    fn push(&mut self, range: u64, pack: &IVec) {
        self.slots.insert(range, self.packs.len());
        self.packs.push((range, pack.clone()));
        self.bytes += pack.len();
    }

    /// Drops a pack picked at random (a shard holds at least one when over its budget, since no
    /// pack larger than the budget is kept).
    fn evict_one(&mut self) {
        self.victim ^= self.victim << 13;
        self.victim ^= self.victim >> 7;
        self.victim ^= self.victim << 17;
        let len = self.packs.len();
        if len == 0 {
            self.bytes = 0;
            return;
        }
        let slot = (self.victim % len as u64) as usize;
        let (range, pack) = self.packs.swap_remove(slot);
        self.slots.remove(&range);
        self.bytes -= pack.len();
        if let Some((moved, _)) = self.packs.get(slot) {
            self.slots.insert(*moved, slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_packs_within_its_budget_and_finds_them_by_range() {
        let cache = PackCache::new(SHARDS as u64 * 100);
        let pack = IVec::from(vec![7u8; 40]);
        cache.insert(1, &pack);
        assert_eq!(cache.get(1).as_deref(), Some(&[7u8; 40][..]));
        assert_eq!(cache.get(2), None);
        // Ranges 1, 65, 129 share a shard of 100 bytes: the third makes room.
        cache.insert(1 + SHARDS as u64, &pack);
        cache.insert(1 + 2 * SHARDS as u64, &pack);
        let held = cache.held();
        assert_eq!((held.packs, held.bytes), (2, 80));
        assert!(
            cache.get(1 + 2 * SHARDS as u64).is_some(),
            "the newest stays"
        );
        let kept = [1, 1 + SHARDS as u64]
            .iter()
            .filter(|range| cache.get(**range).is_some())
            .count();
        assert_eq!(kept, 1);
        // Larger than a shard's budget: not kept.
        cache.insert(3, &IVec::from(vec![0u8; 101]));
        assert_eq!(cache.get(3), None);
        // Warming takes only free room.
        let warm = PackCache::new(SHARDS as u64 * 100);
        assert!(warm.insert_if_room(1, &pack) && warm.insert_if_room(1 + SHARDS as u64, &pack));
        assert!(!warm.insert_if_room(1 + 2 * SHARDS as u64, &pack));
        assert_eq!(warm.held().packs, 2);
        // No budget: nothing kept.
        let none = PackCache::new(0);
        none.insert(1, &pack);
        assert_eq!((none.held().packs, none.held().budget), (0, 0));
    }
}
