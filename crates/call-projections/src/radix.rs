//! Sorting an index builder's `(integer value, id)` entries by a least-significant-digit radix
//! sort: the date-times', the change feed's and the relationships' entries of a rebuild or an
//! import, a million of them a set at a million calls.
//!
//! A comparison sort of a million entries compares each about twenty times; a radix sort reads
//! and writes each once per byte that varies among them (a date-time within a few years varies
//! in five of its eight, an id below sixteen million in three), and leaves out the bytes every
//! entry shares.

/// A value whose order is the order of an unsigned 64-bit integer made from it.
pub(crate) trait RadixKey: Copy {
    /// The unsigned integer with this value's order.
    fn radix_key(self) -> u64;
}

impl RadixKey for u64 {
    fn radix_key(self) -> u64 {
        self
    }
}

impl RadixKey for i64 {
    fn radix_key(self) -> u64 {
        // Flipping the sign bit maps i64::MIN..=i64::MAX onto 0..=u64::MAX in order.
        (self as u64) ^ (1 << 63)
    }
}

/// Below this many entries a comparison sort is as quick, without the radix sort's buffer.
const SMALL: usize = 512;

/// Sorts `entries` by value, then id (as `sort_unstable` orders them).
pub(crate) fn sort_entries<K: RadixKey>(entries: &mut Vec<(K, u64)>) {
    if entries.len() < SMALL {
        entries.sort_unstable_by_key(|(value, id)| (value.radix_key(), *id));
        return;
    }
    // Many sets come in order already: a replay adds its calls in the order of their ids, and
    // the positions, creation times and ids of calls the log created one after another rise
    // with them. One look at each pair spares those the counting pass and the passes over
    // every varying byte.
    let key = |(value, id): &(K, u64)| (value.radix_key(), *id);
    if entries
        .windows(2)
        .all(|pair| key(&pair[0]) <= key(&pair[1]))
    {
        return;
    }
    // Digit d (0..16) is byte d % 8 of the id for d < 8, of the value's key after: the
    // least significant first, so each stable pass keeps the order of the ones before it.
    let digit = |entry: &(K, u64), d: usize| -> usize {
        let word = if d < 8 { entry.1 } else { entry.0.radix_key() };
        ((word >> ((d % 8) * 8)) & 0xff) as usize
    };
    let mut counts = vec![[0usize; 256]; 16];
    for entry in entries.iter() {
        for (d, count) in counts.iter_mut().enumerate() {
            count[digit(entry, d)] += 1;
        }
    }
    let len = entries.len();
    let mut from = std::mem::take(entries);
    // Every slot of `to` is written by each pass; it starts as a copy (the workspace forbids
    // the unsafe writes into spare capacity that would skip it).
    let mut to = from.clone();
    for (d, count) in counts.iter().enumerate() {
        // A byte every entry shares orders nothing.
        if count.contains(&len) {
            continue;
        }
        let mut starts = [0usize; 256];
        let mut next = 0;
        for (start, n) in starts.iter_mut().zip(count) {
            *start = next;
            next += n;
        }
        for entry in &from {
            let slot = &mut starts[digit(entry, d)];
            to[*slot] = *entry;
            *slot += 1;
        }
        std::mem::swap(&mut from, &mut to);
    }
    *entries = from;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sorted_set::tests::numbers;

    fn check<K: RadixKey + Ord + std::fmt::Debug>(mut entries: Vec<(K, u64)>) {
        let mut expected = entries.clone();
        expected.sort_unstable();
        sort_entries(&mut entries);
        assert_eq!(entries, expected);
    }

    #[test]
    fn it_sorts_as_a_comparison_sort_does() {
        for (seed, len) in [
            (1, 0),
            (2, 1),
            (3, 7),
            (4, 511),
            (5, 512),
            (6, 513),
            (7, 5000),
        ] {
            let draws: Vec<u64> = numbers(seed).take(3 * len).collect();
            // Date-times around now and before 1970, negative and positive; ids unique, then
            // repeated values and ids (a set holds an id once, but the sort must not care).
            let times: Vec<(i64, u64)> = (0..len)
                .map(|i| {
                    let at = (draws[3 * i] % 200_000_000_000) as i64 - 50_000_000_000;
                    (at, i as u64)
                })
                .collect();
            check(times.clone());
            check(times.iter().rev().copied().collect());
            // In order already, and in order but for its last entry.
            let mut ordered = times.clone();
            ordered.sort_unstable();
            check(ordered.clone());
            if let Some(first) = ordered.first().copied() {
                ordered.push((first.0 - 1, first.1));
                check(ordered);
            }
            let few: Vec<(i64, u64)> = (0..len)
                .map(|i| ((draws[3 * i + 1] % 5) as i64 - 2, draws[3 * i + 2] % 7))
                .collect();
            check(few);
            let wide: Vec<(u64, u64)> =
                (0..len).map(|i| (draws[3 * i], draws[3 * i + 1])).collect();
            check(wide);
            let extremes: Vec<(i64, u64)> = (0..len)
                .map(|i| {
                    let value = [i64::MIN, -1, 0, 1, i64::MAX][i % 5];
                    (value, u64::MAX - (i as u64 % 3))
                })
                .collect();
            check(extremes);
        }
    }

    #[test]
    fn entries_sharing_every_byte_stay_as_they_are() {
        check(vec![(42i64, 7u64); 2000]);
    }
}
