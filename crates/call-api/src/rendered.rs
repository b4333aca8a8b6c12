//! The rendered documents of calls recently got, each kept with the log position its call was
//! at, so that a get of an unchanged call writes no document and reads no row.
//!
//! A get renders the call's stored view: a row read in the view's tree, a decode and a JSON
//! document, about two thirds of what the service spends on a get (docs/benchmarks.md). The
//! document of a call changes only when an event of that call is applied, which moves the
//! call's latest position (the projection's change feed, in memory). So an entry rendered at
//! position `p` is served while the call's latest position is still `p`; an entry of a call
//! changed or deleted since is never served, only evicted (or replaced). Only documents of the default read
//! (no sparse fieldset, no meta flags) are kept: they depend on nothing else but the subject
//! prefix, which is fixed for the API's life.
//!
//! The cache holds at most its budget of document bytes, evicting by CLOCK (an entry served
//! since the hand last passed it gets a second chance), so it is bounded whatever the ledger's
//! size and keeps what is read again.

use std::collections::VecDeque;
use std::sync::Mutex;

use call_projections::IdMap;

/// The default budget of document bytes kept: 64 MiB, some fifty thousand documents of about
/// 1.1 KB, the calls a team reads again over weeks; a sixteenth of the projection's own default
/// cache (`call_projections::DEFAULT_PROJECTION_CACHE_BYTES`).
pub const DEFAULT_RENDERED_GETS_BYTES: usize = 64 << 20;

/// What an entry costs beside its document: the map's slot, the ring's, the allocation.
const ENTRY_OVERHEAD: usize = 64;

/// A get's document of one call, as rendered at one log position.
struct Entry {
    position: u64,
    version: u64,
    body: Box<[u8]>,
    /// Served since the clock's hand last passed it.
    referenced: bool,
}

impl Entry {
    fn cost(&self) -> usize {
        self.body.len() + ENTRY_OVERHEAD
    }
}

#[derive(Default)]
struct Entries {
    by_id: IdMap<Entry>,
    /// Every id of `by_id` once, in the order the clock's hand visits them.
    ring: VecDeque<u64>,
    bytes: usize,
}

/// See the module's documentation.
pub(crate) struct RenderedGets {
    budget: usize,
    entries: Mutex<Entries>,
}

impl RenderedGets {
    /// A cache of at most `budget` bytes; 0 keeps nothing.
    pub(crate) fn new(budget: usize) -> RenderedGets {
        RenderedGets {
            budget,
            entries: Mutex::new(Entries::default()),
        }
    }

    /// The document and version of call `id` rendered at `position`, if kept.
    pub(crate) fn get(&self, id: u64, position: u64) -> Option<(Vec<u8>, u64)> {
        if self.budget == 0 {
            return None;
        }
        let mut entries = self.lock();
        let entry = entries.by_id.get_mut(&id)?;
        if entry.position != position {
            return None;
        }
        entry.referenced = true;
        Some((entry.body.to_vec(), entry.version))
    }

    /// Keeps the document of call `id` rendered at `position` (replacing an older one), then
    /// evicts until the budget holds.
    pub(crate) fn put(&self, id: u64, position: u64, version: u64, body: &[u8]) {
        let entry = Entry {
            position,
            version,
            body: body.into(),
            referenced: false,
        };
        if entry.cost() > self.budget {
            return;
        }
        let mut entries = self.lock();
        let entries = &mut *entries;
        if entries
            .by_id
            .get(&id)
            .is_some_and(|kept| kept.position > position)
        {
            // A slower reader rendered an older state: keep the newer one.
            return;
        }
        entries.bytes += entry.cost();
        match entries.by_id.insert(id, entry) {
            Some(replaced) => entries.bytes -= replaced.cost(),
            None => entries.ring.push_back(id),
        }
        // Every id kept is in the ring once, so a lap of the hand evicts or spares each.
        while entries.bytes > self.budget {
            let Some(oldest) = entries.ring.pop_front() else {
                break;
            };
            let Some(entry) = entries.by_id.get_mut(&oldest) else {
                continue;
            };
            if entry.referenced {
                entry.referenced = false;
                entries.ring.push_back(oldest);
            } else if let Some(evicted) = entries.by_id.remove(&oldest) {
                entries.bytes -= evicted.cost();
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
    fn a_zero_budget_keeps_nothing() {
        let cache = RenderedGets::new(0);
        cache.put(1, 1, 1, b"doc");
        assert_eq!(cache.get(1, 1), None);
        assert_eq!(cache.bytes(), 0);
    }
}
