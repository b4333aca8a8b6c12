//! An ordered set kept as sorted chunks of up to [`CHUNK`] entries, one allocation each: the
//! lookups and ordered walks of a B-tree at the memory of a vector.
//!
//! The indexes hold a million calls' entries in a few dozen sets. `BTreeSet` spends a parent
//! pointer and lengths per node of eleven entries, child pointers per internal node and, filled by
//! random inserts, a third of its leaves empty: 19 to 38 bytes per 16- or 24-byte entry. Here a
//! set read back from its snapshot or built in bulk is packed full, chunks are split in two only
//! when an insert lands inside a full one, and entries appended past the end (positions, ids and
//! creation times only grow) open a new chunk rather than splitting, so such sets stay full too.

use std::cmp::Ordering;
use std::fmt;
use std::ops::{Bound, RangeBounds};

/// The most entries a chunk holds. Finding an entry is a binary search over the chunks' last
/// entries (kept side by side in [`SortedSet::lasts`]), then one within its chunk; inserting
/// moves at most a chunk's entries.
pub(crate) const CHUNK: usize = 256;

/// A set of `K` in order; see the module's notes.
#[derive(Clone)]
pub(crate) struct SortedSet<K> {
    /// Non-empty, each sorted, each at most [`CHUNK`] long, every entry of one below every entry
    /// of the next.
    chunks: Vec<Vec<K>>,
    /// A copy of each chunk's last entry, in one allocation: the search over the chunks reads
    /// these in place, where reading each probed chunk's last entry took a cache miss per probe
    /// (about a microsecond per insert into a set of a million entries, thirty sets per change).
    lasts: Vec<K>,
    len: usize,
}

impl<K> Default for SortedSet<K> {
    fn default() -> Self {
        SortedSet {
            chunks: Vec::new(),
            lasts: Vec::new(),
            len: 0,
        }
    }
}

/// Where an entry is, or would go: a chunk and a slot in it. `chunk == chunks.len()` is past
/// the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct At {
    chunk: usize,
    slot: usize,
}

/// What a set's owner keeps beside each chunk's last entry (its value in a column, say), told
/// of every change to which entry is a chunk's last.
pub(crate) trait Lasts<K> {
    /// Chunk `chunk` is new, and `last` its last entry; the chunks from there on move up one.
    fn inserted(&mut self, chunk: usize, last: &K);
    /// Chunk `chunk`'s last entry is now `last`.
    fn replaced(&mut self, chunk: usize, last: &K);
    /// Chunk `chunk` is gone; the chunks after it move down one.
    fn removed(&mut self, chunk: usize);
}

/// Nothing kept beside the lasts.
impl<K> Lasts<K> for () {
    fn inserted(&mut self, _: usize, _: &K) {}
    fn replaced(&mut self, _: usize, _: &K) {}
    fn removed(&mut self, _: usize) {}
}

impl<K> SortedSet<K> {
    pub(crate) fn new() -> Self {
        SortedSet::default()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn end(&self) -> At {
        At {
            chunk: self.chunks.len(),
            slot: 0,
        }
    }

    /// The place of the first entry `before` is false of, where it is true of every entry
    /// before it and of none after.
    fn place(&self, before: impl Fn(&K) -> bool) -> At {
        self.locate(|chunk| before(&self.lasts[chunk]), &before)
    }

    /// [`SortedSet::place`] where `chunk_before(i)` tells `before` of chunk `i`'s last entry
    /// from what its owner keeps beside it ([`Lasts`]), without reading the entry's value.
    pub(crate) fn locate(
        &self,
        chunk_before: impl Fn(usize) -> bool,
        before: impl Fn(&K) -> bool,
    ) -> At {
        let chunks = self.chunks.len();
        // Past the last entry first: a new call's creation time, position and id go there, and
        // one comparison then stands for a search's dozen or more.
        if chunks == 0 || chunk_before(chunks - 1) {
            return self.end();
        }
        // The first chunk whose last entry `before` is false of; the last chunk's is.
        let (mut low, mut high) = (0, chunks - 1);
        while low < high {
            let middle = low + (high - low) / 2;
            if chunk_before(middle) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        At {
            chunk: low,
            slot: self.chunks[low].partition_point(before),
        }
    }

    /// Each chunk's last entry, in order.
    pub(crate) fn lasts(&self) -> &[K] {
        &self.lasts
    }

    /// The entries from the first `before_start` is false of to just before the first
    /// `before_end` is false of, in an order the caller keeps (as [`SortedSet::insert_by`]'s):
    /// a range of a set ordered by something other than its entries' own order.
    pub(crate) fn range_where(
        &self,
        before_start: impl Fn(&K) -> bool,
        before_end: impl Fn(&K) -> bool,
    ) -> Iter<'_, K> {
        self.between(self.place(before_start), self.place(before_end))
    }

    fn between(&self, front: At, back: At) -> Iter<'_, K> {
        if (front.chunk, front.slot) >= (back.chunk, back.slot) {
            return Iter::empty(self);
        }
        Iter {
            set: self,
            front,
            back,
        }
    }

    /// A walk of no entries.
    pub(crate) fn nothing(&self) -> Iter<'_, K> {
        Iter::empty(self)
    }

    /// Every entry, in order.
    pub(crate) fn iter(&self) -> Iter<'_, K> {
        Iter {
            set: self,
            front: At { chunk: 0, slot: 0 },
            back: self.end(),
        }
    }

    /// The bytes the entries and the chunks' headers take (`size_of::<K>()` per slot allocated),
    /// not what the entries point at.
    pub(crate) fn heap_bytes(&self) -> usize {
        let slots: usize =
            self.chunks.iter().map(Vec::capacity).sum::<usize>() + self.lasts.capacity();
        slots * std::mem::size_of::<K>() + self.chunks.capacity() * std::mem::size_of::<Vec<K>>()
    }
}

impl<K: Ord> SortedSet<K> {
    /// The place of the first entry not below `key` (`inclusive`) or above it (not).
    fn seek(&self, key: &K, inclusive: bool) -> At {
        self.place(|entry: &K| match entry.cmp(key) {
            Ordering::Less => true,
            Ordering::Equal => !inclusive,
            Ordering::Greater => false,
        })
    }

    /// The place of the first entry at or after `bound`, as a lower bound.
    fn lower(&self, bound: Bound<&K>) -> At {
        match bound {
            Bound::Unbounded => At { chunk: 0, slot: 0 },
            Bound::Included(key) => self.seek(key, true),
            Bound::Excluded(key) => self.seek(key, false),
        }
    }

    /// The place just past the last entry within `bound`, as an upper bound.
    fn upper(&self, bound: Bound<&K>) -> At {
        match bound {
            Bound::Unbounded => self.end(),
            Bound::Included(key) => self.seek(key, false),
            Bound::Excluded(key) => self.seek(key, true),
        }
    }

    /// The first entry `before` is false of, where it is true of every entry before it and
    /// of none after.
    pub(crate) fn first_from(&self, before: impl Fn(&K) -> bool) -> Option<&K> {
        let at = self.place(before);
        self.chunks.get(at.chunk)?.get(at.slot)
    }

    pub(crate) fn contains(&self, key: &K) -> bool {
        let at = self.seek(key, true);
        self.chunks
            .get(at.chunk)
            .and_then(|chunk| chunk.get(at.slot))
            .is_some_and(|entry| entry == key)
    }

    /// The entries within `range`, in order; empty where its bounds are crossed.
    pub(crate) fn range<R: RangeBounds<K>>(&self, range: R) -> Iter<'_, K> {
        self.between(
            self.lower(range.start_bound()),
            self.upper(range.end_bound()),
        )
    }
}

impl<K: Ord + Clone> SortedSet<K> {
    /// Adds `key`; false when it was there already.
    pub(crate) fn insert(&mut self, key: K) -> bool {
        self.insert_by(key, K::cmp)
    }

    /// Removes `key`; false when it was not there.
    pub(crate) fn remove(&mut self, key: &K) -> bool {
        self.remove_by(key, K::cmp)
    }
}

impl<K: Clone> SortedSet<K> {
    /// Adds `key` where `order` places it; false when an entry `order` finds equal is there
    /// already. A set is kept in one order for its whole life.
    pub(crate) fn insert_by(&mut self, key: K, order: impl Fn(&K, &K) -> Ordering) -> bool {
        let at = self.place(|entry| order(entry, &key) == Ordering::Less);
        self.insert_at(at, key, order, &mut ())
    }

    /// Adds `key` at `at`, where [`SortedSet::locate`] placed it by `order`, telling `lasts`
    /// of the chunks' new lasts; false when an entry `order` finds equal is there already.
    pub(crate) fn insert_at(
        &mut self,
        at: At,
        key: K,
        order: impl Fn(&K, &K) -> Ordering,
        lasts: &mut impl Lasts<K>,
    ) -> bool {
        if at.chunk == self.chunks.len() {
            // Past every entry: onto the last chunk, or a new one once that is full.
            match self.chunks.last_mut() {
                Some(last) if last.len() < CHUNK => {
                    push_within(last, key.clone());
                    lasts.replaced(self.lasts.len() - 1, &key);
                    if let Some(copy) = self.lasts.last_mut() {
                        *copy = key;
                    }
                }
                _ => {
                    let mut chunk = Vec::with_capacity(CHUNK);
                    chunk.push(key.clone());
                    lasts.inserted(self.chunks.len(), &key);
                    self.chunks.push(chunk);
                    self.lasts.push(key);
                }
            }
            self.len += 1;
            return true;
        }
        if order(&self.chunks[at.chunk][at.slot], &key) == Ordering::Equal {
            return false;
        }
        if at.slot == 0 && at.chunk > 0 && self.chunks[at.chunk - 1].len() < CHUNK {
            // Between two chunks: onto the end of the one before, where there is room.
            push_within(&mut self.chunks[at.chunk - 1], key.clone());
            lasts.replaced(at.chunk - 1, &key);
            self.lasts[at.chunk - 1] = key;
            self.len += 1;
            return true;
        }
        // The entry goes before the chunk's last, which stays its last.
        let chunk = &mut self.chunks[at.chunk];
        if chunk.len() < CHUNK {
            chunk.insert(at.slot, key);
        } else {
            // A full chunk splits in two halves, each with room for a chunk's entries.
            let mut upper = Vec::with_capacity(CHUNK);
            upper.extend(chunk.drain(CHUNK / 2..));
            if at.slot <= CHUNK / 2 {
                chunk.insert(at.slot, key);
            } else {
                upper.insert(at.slot - CHUNK / 2, key);
            }
            let lower_last = chunk.last().cloned();
            self.chunks.insert(at.chunk + 1, upper);
            if let Some(last) = lower_last {
                lasts.inserted(at.chunk, &last);
                self.lasts.insert(at.chunk, last);
            }
        }
        self.len += 1;
        true
    }

    /// Removes the entry `order` finds equal to `key`; false when there is none.
    pub(crate) fn remove_by(&mut self, key: &K, order: impl Fn(&K, &K) -> Ordering) -> bool {
        let at = self.place(|entry| order(entry, key) == Ordering::Less);
        self.remove_at(at, key, order, &mut ())
    }

    /// Removes the entry at `at`, where [`SortedSet::locate`] placed `key` by `order`, if
    /// `order` finds it equal to `key`, telling `lasts` of the chunks' new lasts; false when it
    /// is not.
    pub(crate) fn remove_at(
        &mut self,
        at: At,
        key: &K,
        order: impl Fn(&K, &K) -> Ordering,
        lasts: &mut impl Lasts<K>,
    ) -> bool {
        let Some(chunk) = self.chunks.get_mut(at.chunk) else {
            return false;
        };
        if chunk
            .get(at.slot)
            .is_none_or(|entry| order(entry, key) != Ordering::Equal)
        {
            return false;
        }
        chunk.remove(at.slot);
        self.len -= 1;
        match chunk.last() {
            None => {
                self.chunks.remove(at.chunk);
                self.lasts.remove(at.chunk);
                lasts.removed(at.chunk);
            }
            Some(last) => {
                if at.slot == chunk.len() {
                    lasts.replaced(at.chunk, last);
                    self.lasts[at.chunk] = last.clone();
                }
                if chunk.len() < CHUNK / 4 {
                    self.merge_around(at.chunk, lasts);
                }
            }
        }
        true
    }

    /// Joins a chunk that deletions have left nearly empty to a neighbour it fits in with (the
    /// one before first), so that deleting many calls does not leave a long run of nearly empty
    /// chunks.
    fn merge_around(&mut self, chunk: usize, lasts: &mut impl Lasts<K>) {
        let len = self.chunks[chunk].len();
        // The joined chunk's last is the later one's: the earlier one's copy goes.
        if chunk > 0 && self.chunks[chunk - 1].len() + len <= CHUNK {
            let emptied = self.chunks.remove(chunk);
            extend_within(&mut self.chunks[chunk - 1], emptied);
            self.lasts.remove(chunk - 1);
            lasts.removed(chunk - 1);
        } else if self
            .chunks
            .get(chunk + 1)
            .is_some_and(|next| next.len() + len <= CHUNK)
        {
            let next = self.chunks.remove(chunk + 1);
            extend_within(&mut self.chunks[chunk], next);
            self.lasts.remove(chunk);
            lasts.removed(chunk);
        }
    }

    /// The set of entries already in the order the set is kept in (strictly ascending), packed
    /// full.
    pub(crate) fn from_ordered(entries: impl Iterator<Item = K>) -> Self {
        let mut set = SortedSet::new();
        let mut chunk = Vec::with_capacity(CHUNK);
        for key in entries {
            if chunk.len() == CHUNK {
                set.push_chunk(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
            }
            chunk.push(key);
            set.len += 1;
        }
        if !chunk.is_empty() {
            chunk.shrink_to_fit();
            set.push_chunk(chunk);
        }
        set.lasts.shrink_to_fit();
        set
    }

    /// Adds a full or final chunk after every other, with the copy of its last entry.
    fn push_chunk(&mut self, chunk: Vec<K>) {
        if let Some(last) = chunk.last() {
            self.lasts.push(last.clone());
            self.chunks.push(chunk);
        }
    }
}

/// Pushes onto a chunk with room for it, growing its allocation to a whole chunk's at most
/// (a packed set's last chunk is allocated to its length, and doubling would pass [`CHUNK`]).
fn push_within<K>(chunk: &mut Vec<K>, key: K) {
    if chunk.len() == chunk.capacity() {
        chunk.reserve_exact(CHUNK - chunk.len());
    }
    chunk.push(key);
}

/// Appends `more` to a chunk they fit in, within a whole chunk's allocation.
fn extend_within<K>(chunk: &mut Vec<K>, more: Vec<K>) {
    if chunk.len() + more.len() > chunk.capacity() {
        chunk.reserve_exact(CHUNK - chunk.len());
    }
    chunk.extend(more);
}

impl<K: Ord + Clone> FromIterator<K> for SortedSet<K> {
    fn from_iter<I: IntoIterator<Item = K>>(entries: I) -> Self {
        let mut packer = Packer::default();
        for key in entries {
            packer.push(key);
        }
        packer.finish()
    }
}

/// Packs entries into full chunks as they come, so that a set read back in order (a snapshot,
/// a builder's sorted entries) takes no second copy of its entries while it is made; entries
/// out of order are sorted and deduplicated at the end.
pub(crate) struct Packer<K> {
    set: SortedSet<K>,
    chunk: Vec<K>,
    ascending: bool,
}

impl<K> Default for Packer<K> {
    fn default() -> Self {
        Packer {
            set: SortedSet::new(),
            chunk: Vec::new(),
            ascending: true,
        }
    }
}

impl<K: Ord + Clone> Packer<K> {
    pub(crate) fn push(&mut self, key: K) {
        let last = self.chunk.last().or_else(|| self.set.chunks.last()?.last());
        if last.is_some_and(|last| *last >= key) {
            self.ascending = false;
        }
        if self.chunk.len() == CHUNK {
            let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
            self.set.push_chunk(full);
        } else if self.chunk.capacity() == 0 {
            self.chunk.reserve_exact(CHUNK);
        }
        self.chunk.push(key);
        self.set.len += 1;
    }

    pub(crate) fn finish(mut self) -> SortedSet<K> {
        if !self.ascending {
            let mut entries: Vec<K> = std::mem::take(&mut self.set)
                .into_iter()
                .chain(self.chunk)
                .collect();
            entries.sort_unstable();
            entries.dedup();
            return SortedSet::from_ordered(entries.into_iter());
        }
        if !self.chunk.is_empty() {
            self.chunk.shrink_to_fit();
            self.set.push_chunk(self.chunk);
        }
        self.set.lasts.shrink_to_fit();
        self.set
    }
}

impl<K> IntoIterator for SortedSet<K> {
    type Item = K;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<K>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.chunks.into_iter().flatten()
    }
}

impl<'a, K> IntoIterator for &'a SortedSet<K> {
    type Item = &'a K;
    type IntoIter = Iter<'a, K>;

    fn into_iter(self) -> Iter<'a, K> {
        self.iter()
    }
}

impl<K: Ord> PartialEq for SortedSet<K> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<K: Ord + fmt::Debug> fmt::Debug for SortedSet<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// The entries between two places, walked from either end.
///
/// Both places are kept in one form (a slot within its chunk, or the start of the chunk after),
/// so that the walk is over when they meet; how many entries are left is counted only when
/// asked, so that making a walk of a large set is two searches whatever its length.
pub(crate) struct Iter<'a, K> {
    set: &'a SortedSet<K>,
    /// The next entry from the front.
    front: At,
    /// Just past the next entry from the back.
    back: At,
}

impl<'a, K> Iter<'a, K> {
    fn empty(set: &'a SortedSet<K>) -> Self {
        Iter {
            set,
            front: At { chunk: 0, slot: 0 },
            back: At { chunk: 0, slot: 0 },
        }
    }

    /// The next entry from the front, without taking it.
    pub(crate) fn peek(&self) -> Option<&'a K> {
        (self.front != self.back).then(|| &self.set.chunks[self.front.chunk][self.front.slot])
    }

    /// The next entry from the back, without taking it.
    pub(crate) fn peek_back(&self) -> Option<&'a K> {
        let at = self.back_place()?;
        Some(&self.set.chunks[at.chunk][at.slot])
    }

    /// The place of the next entry from the back, if any is left.
    fn back_place(&self) -> Option<At> {
        if self.front == self.back {
            return None;
        }
        let mut back = self.back;
        if back.slot == 0 {
            back.chunk -= 1;
            back.slot = self.set.chunks[back.chunk].len();
        }
        back.slot -= 1;
        Some(back)
    }

    /// Whether the walk is over (without counting what is left).
    pub(crate) fn is_over(&self) -> bool {
        self.front == self.back
    }

    /// The entries between the two places: the chunks between them are whole.
    fn left(&self) -> usize {
        let (front, back) = (self.front, self.back);
        if front == back {
            return 0;
        }
        let chunks = &self.set.chunks;
        if front.chunk == back.chunk {
            return back.slot - front.slot;
        }
        let whole: usize = chunks[front.chunk + 1..back.chunk.min(chunks.len())]
            .iter()
            .map(Vec::len)
            .sum();
        chunks[front.chunk].len() - front.slot + whole + back.slot
    }
}

impl<'a, K> Iterator for Iter<'a, K> {
    type Item = &'a K;

    fn next(&mut self) -> Option<&'a K> {
        if self.front == self.back {
            return None;
        }
        let chunk = &self.set.chunks[self.front.chunk];
        let entry = &chunk[self.front.slot];
        self.front.slot += 1;
        if self.front.slot == chunk.len() {
            self.front = At {
                chunk: self.front.chunk + 1,
                slot: 0,
            };
        }
        Some(entry)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.left();
        (left, Some(left))
    }
}

impl<K> DoubleEndedIterator for Iter<'_, K> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let at = self.back_place()?;
        self.back = at;
        Some(&self.set.chunks[at.chunk][at.slot])
    }
}

impl<K> ExactSizeIterator for Iter<'_, K> {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// A small xorshift, so that the sequence is the same every run.
    pub(crate) fn numbers(seed: u64) -> impl Iterator<Item = u64> {
        let mut state = seed;
        std::iter::repeat_with(move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        })
    }

    fn check(set: &SortedSet<u64>, model: &BTreeSet<u64>) {
        assert_eq!(set.len(), model.len());
        assert!(set.iter().eq(model.iter()));
        assert!(set.iter().rev().eq(model.iter().rev()));
        for chunk in &set.chunks {
            assert!(!chunk.is_empty() && chunk.len() <= CHUNK);
        }
        let lasts: Vec<u64> = set
            .chunks
            .iter()
            .filter_map(|c| c.last().copied())
            .collect();
        assert_eq!(set.lasts, lasts, "each chunk's last entry, side by side");
    }

    #[test]
    fn inserts_and_removes_agree_with_a_btree_set() {
        let mut set = SortedSet::new();
        let mut model = BTreeSet::new();
        for (step, n) in numbers(7).take(40_000).enumerate() {
            let key = n % 5_000;
            if step % 3 == 2 {
                assert_eq!(set.remove(&key), model.remove(&key), "remove {key}");
            } else {
                assert_eq!(set.insert(key), model.insert(key), "insert {key}");
            }
            assert_eq!(set.contains(&(n % 5_000)), model.contains(&(n % 5_000)));
        }
        check(&set, &model);
        for n in numbers(11).take(20_000) {
            let key = n % 5_000;
            assert_eq!(set.remove(&key), model.remove(&key));
        }
        check(&set, &model);
    }

    #[test]
    fn ranges_agree_with_a_btree_set_from_either_end() {
        let model: BTreeSet<u64> = numbers(3).take(3_000).map(|n| n % 10_000).collect();
        let set: SortedSet<u64> = model.iter().copied().collect();
        check(&set, &model);
        for (a, b) in numbers(5)
            .map(|n| (n % 10_100, (n >> 20) % 10_100))
            .take(300)
        {
            let (lo, hi) = (a.min(b), a.max(b));
            assert!(set.range(lo..=hi).eq(model.range(lo..=hi)), "{lo}..={hi}");
            assert!(set.range(lo..hi).rev().eq(model.range(lo..hi).rev()));
            assert!(set.range(lo..).eq(model.range(lo..)));
            assert!(set.range(..hi).rev().eq(model.range(..hi).rev()));
            assert_eq!(set.range(lo..=hi).len(), model.range(lo..=hi).count());
            let mut both = set.range(lo..=hi);
            let mut model_both = model.range(lo..=hi);
            loop {
                let (a, b) = (both.next(), model_both.next());
                assert_eq!(a, b);
                let (c, d) = (both.next_back(), model_both.next_back());
                assert_eq!(c, d);
                if a.is_none() || c.is_none() {
                    break;
                }
            }
        }
        // Crossed bounds are an empty range, not a panic.
        assert_eq!(
            set.range((Bound::Included(5), Bound::Included(4))).count(),
            0
        );
    }

    #[test]
    fn entries_appended_in_order_fill_their_chunks() {
        let mut set = SortedSet::new();
        for key in 0..(10 * CHUNK as u64) {
            set.insert(key);
        }
        assert_eq!(set.chunks.len(), 10);
        let built: SortedSet<u64> = (0..(10 * CHUNK as u64)).rev().collect();
        assert!(built.iter().eq(set.iter()));
        assert_eq!(built.chunks.len(), 10);
    }

    #[test]
    fn deletions_merge_emptied_chunks() {
        let mut set: SortedSet<u64> = (0..(8 * CHUNK as u64)).collect();
        for key in 0..(8 * CHUNK as u64) {
            if key % 16 != 0 {
                set.remove(&key);
            }
        }
        assert_eq!(set.len(), CHUNK / 2);
        assert!(set.chunks.len() <= 2, "{} chunks", set.chunks.len());
    }
}
