//! The rendered documents of calls recently got, each kept with the log position its call was
//! at, so that a get of an unchanged call writes no document and reads no row.
//!
//! A get renders the call's stored view: a row read in the view's tree, a decode and a JSON
//! document, about two thirds of what the service spends on a get (docs/benchmarks.md). The
//! document of a call changes only when an event of that call is applied, which moves the
//! call's latest position (the projection's change feed, in memory). So an entry rendered at
//! position `p` is served while the call's latest position is still `p`; an entry of a call
//! changed or deleted since is never served, only replaced or dropped. Only documents of the
//! default read (no sparse fieldset, no meta flags) are kept: they depend on nothing else but
//! the subject prefix, which is fixed for the API's life.
//!
//! The cache holds at most its budget of document bytes, evicting by CLOCK (an entry served
//! since the hand last passed it gets a second chance), so it is bounded whatever the ledger's
//! size and keeps what is read again. Each new document also sweeps a few entries, dropping
//! those whose call changed or was deleted since, so that documents nobody can be served do
//! not sit in the budget until it is full.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use call_projections::IdMap;

/// The default budget of document bytes kept: 64 MiB, some fifty thousand documents of about
/// 1.1 KB, the calls a team reads again over weeks; a sixteenth of the projection's own default
/// cache (`call_projections::DEFAULT_PROJECTION_CACHE_BYTES`).
pub const DEFAULT_RENDERED_GETS_BYTES: usize = 64 << 20;

/// What an entry costs beside its document: the map's slot, the ring's, the allocation.
const ENTRY_OVERHEAD: usize = 64;

/// How many entries [`RenderedGets::sweep`] checks per call.
const SWEEP_PER_PUT: usize = 4;

/// A get's document of one call, as rendered at one log position.
struct Entry {
    /// Which ring slot is this entry's: slots of an entry removed and kept again are stale.
    slot: u64,
    position: u64,
    version: u64,
    body: Box<[u8]>,
    /// Served since the clock's hand last passed it.
    referenced: bool,
}

impl Entry {
    fn cost(&self) -> usize {
        cost_of(&self.body)
    }
}

/// What keeping `body` counts against the budget: its bytes and the entry's bookkeeping.
fn cost_of(body: &[u8]) -> usize {
    body.len() + ENTRY_OVERHEAD
}

#[derive(Default)]
struct Entries {
    by_id: IdMap<Entry>,
    /// Each entry's slot, in the order the clock's hand visits them, and the slots of entries
    /// gone since, skipped when the hand meets them.
    ring: VecDeque<(u64, u64)>,
    bytes: usize,
    next_slot: u64,
}

/// What the kept get documents did since the API started, for operators (`$SRV.STATS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenderedGetsStats {
    /// Gets answered from a kept document.
    pub hits: u64,
    /// Gets of a live call that had none kept at its latest position, rendered from its view.
    pub misses: u64,
    /// Documents kept now.
    pub entries: usize,
    /// Their bytes, with each entry's bookkeeping.
    pub bytes: usize,
    /// The most bytes kept (`--rendered-gets-mb`).
    pub budget: usize,
}

/// See the module's documentation.
pub(crate) struct RenderedGets {
    budget: usize,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl RenderedGets {
    /// A cache of at most `budget` bytes; 0 keeps nothing.
    pub(crate) fn new(budget: usize) -> RenderedGets {
        RenderedGets {
            budget,
            entries: Mutex::new(Entries::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The document and version of call `id` rendered at `position`, if kept.
    pub(crate) fn get(&self, id: u64, position: u64) -> Option<(Vec<u8>, u64)> {
        if self.budget == 0 {
            return None;
        }
        let kept = {
            let mut entries = self.lock();
            entries
                .by_id
                .get_mut(&id)
                .filter(|entry| entry.position == position)
                .map(|entry| {
                    entry.referenced = true;
                    (entry.body.to_vec(), entry.version)
                })
        };
        let counter = if kept.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        kept
    }

    /// The counts and sizes, as they stand.
    pub(crate) fn stats(&self) -> RenderedGetsStats {
        let (entries, bytes) = {
            let entries = self.lock();
            (entries.by_id.len(), entries.bytes)
        };
        RenderedGetsStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries,
            bytes,
            budget: self.budget,
        }
    }

    /// Keeps the document of call `id` rendered at `position` (replacing an older one), then
    /// evicts until the budget holds.
    pub(crate) fn put(&self, id: u64, position: u64, version: u64, body: &[u8]) {
        if cost_of(body) > self.budget {
            return;
        }
        let mut entry = Entry {
            slot: 0,
            position,
            version,
            body: body.into(),
            referenced: false,
        };
        let mut entries = self.lock();
        let entries = &mut *entries;
        match entries.by_id.get(&id) {
            // A slower reader rendered an older state: keep the newer one.
            Some(kept) if kept.position > position => return,
            Some(kept) => entry.slot = kept.slot,
            None => {
                entries.next_slot += 1;
                entry.slot = entries.next_slot;
                entries.ring.push_back((id, entry.slot));
            }
        }
        entries.bytes += entry.cost();
        if let Some(replaced) = entries.by_id.insert(id, entry) {
            entries.bytes -= replaced.cost();
        }
        // Every entry has its slot in the ring, so a lap of the hand evicts or spares each.
        while entries.bytes > self.budget {
            let Some((oldest, slot)) = entries.ring.pop_front() else {
                break;
            };
            let Some(entry) = entries.by_id.get_mut(&oldest).filter(|e| e.slot == slot) else {
                continue;
            };
            if entry.referenced {
                entry.referenced = false;
                entries.ring.push_back((oldest, slot));
            } else if let Some(evicted) = entries.by_id.remove(&oldest) {
                entries.bytes -= evicted.cost();
            }
        }
    }

    /// Drops the entries of calls changed or deleted since they were rendered, checking the
    /// next [`SWEEP_PER_PUT`] entries of the ring with `is_current(id, position)`.
    ///
    /// A changed call's entry is replaced by its next get, but a deleted call is seldom got
    /// again: without this its entry would stay until the budget evicted it, and a ledger that
    /// deletes as it creates would fill the budget with documents nobody can be served. Called
    /// after each `put`, it laps the ring faster than puts add to it. `is_current` runs without
    /// the cache's lock held (it takes the projection's).
    pub(crate) fn sweep(&self, is_current: impl Fn(u64, u64) -> bool) {
        let visited: Vec<(u64, u64)> = {
            let mut entries = self.lock();
            let entries = &mut *entries;
            let mut visited = Vec::with_capacity(SWEEP_PER_PUT);
            for _ in 0..SWEEP_PER_PUT.min(entries.ring.len()) {
                let Some((id, slot)) = entries.ring.pop_front() else {
                    break;
                };
                if let Some(entry) = entries.by_id.get(&id).filter(|e| e.slot == slot) {
                    visited.push((id, entry.position));
                    entries.ring.push_back((id, slot));
                }
            }
            visited
        };
        let stale: Vec<(u64, u64)> = visited
            .into_iter()
            .filter(|&(id, position)| !is_current(id, position))
            .collect();
        if stale.is_empty() {
            return;
        }
        let mut entries = self.lock();
        for (id, position) in stale {
            if entries
                .by_id
                .get(&id)
                .is_some_and(|entry| entry.position == position)
            {
                if let Some(gone) = entries.by_id.remove(&id) {
                    entries.bytes -= gone.cost();
                }
                // Its slot is dropped when the hand reaches it.
            }
        }
    }

    /// The document bytes kept, with the entries' overhead.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while the lock was held cannot leave an entry half written: each change is
        // one insert or remove; the byte count is at worst off until the entry goes.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_served_only_at_its_position() {
        let cache = RenderedGets::new(1 << 20);
        assert_eq!(cache.get(7, 10), None);
        cache.put(7, 10, 1, b"v1");
        assert_eq!(cache.get(7, 10), Some((b"v1".to_vec(), 1)));
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
        assert_eq!(stats.bytes, 2 + ENTRY_OVERHEAD);
        assert_eq!(stats.budget, 1 << 20);
        assert_eq!(cache.get(7, 12), None, "the call changed since");
        cache.put(7, 12, 2, b"v2");
        assert_eq!(cache.get(7, 12), Some((b"v2".to_vec(), 2)));
        cache.put(7, 10, 1, b"v1");
        assert_eq!(
            cache.get(7, 12),
            Some((b"v2".to_vec(), 2)),
            "an older rendering does not replace a newer one"
        );
    }

    #[test]
    fn the_budget_holds_and_what_is_read_again_stays() {
        let body = vec![b'x'; 1000];
        let cost = body.len() + ENTRY_OVERHEAD;
        let cache = RenderedGets::new(10 * cost);
        for id in 0..10 {
            cache.put(id, id, 1, &body);
        }
        assert_eq!(cache.bytes(), 10 * cost);
        assert!(cache.get(0, 0).is_some());
        for id in 10..15 {
            cache.put(id, id, 1, &body);
            assert!(cache.bytes() <= 10 * cost);
        }
        assert!(cache.get(0, 0).is_some(), "read since the hand passed");
        assert!(cache.get(1, 1).is_none(), "the oldest unread goes first");
        assert!(cache.get(14, 14).is_some(), "the newest stays");
    }

    #[test]
    fn the_sweep_drops_what_is_no_longer_current() {
        let cache = RenderedGets::new(1 << 20);
        for id in 1..=6 {
            cache.put(id, id * 10, 1, b"doc");
        }
        // Calls 2 and 3 were deleted, call 4 changed since.
        let current = |id: u64, position: u64| match id {
            2 | 3 => false,
            4 => position == 41,
            _ => true,
        };
        cache.sweep(current);
        cache.sweep(current);
        for id in [1, 5, 6] {
            assert!(cache.get(id, id * 10).is_some(), "call {id} is current");
        }
        for id in [2, 3, 4] {
            assert!(cache.get(id, id * 10).is_none(), "call {id} is not");
        }
        assert_eq!(cache.bytes(), 3 * (3 + ENTRY_OVERHEAD));
        // A call swept out and kept again is served, and its stale slot does no harm.
        cache.put(2, 50, 2, b"doc2");
        for _ in 0..4 {
            cache.sweep(|id, _| id != 3);
        }
        assert_eq!(cache.get(2, 50), Some((b"doc2".to_vec(), 2)));
    }

    #[test]
    fn slots_left_by_the_sweep_do_not_pile_up() {
        let cache = RenderedGets::new(1 << 20);
        for position in 1..1000 {
            cache.put(1, position, position, b"doc");
            cache.put(2, position, position, b"doc");
            cache.sweep(|id, _| id == 2);
            assert!(cache.lock().ring.len() <= 4, "{}", cache.lock().ring.len());
        }
        assert_eq!(cache.get(2, 999), Some((b"doc".to_vec(), 999)));
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let cache = RenderedGets::new(0);
        cache.put(1, 1, 1, b"doc");
        assert_eq!(cache.get(1, 1), None);
        assert_eq!(cache.bytes(), 0);
    }
}
