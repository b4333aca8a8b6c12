//! Sorting a sortable string's gathered `(value, id)` entries into its set's order (no value
//! first, then by value, then by id), comparing a key of each value's bytes held beside it
//! before the values themselves.
//!
//! A million entries sorted by comparing the strings read each string's bytes behind its
//! pointer, a cache miss, about twenty times an entry: three quarters of building a rebuild's
//! indexes once its replay ended. The key is the fifteen bytes after the prefix every value
//! shares, then how many bytes follow that prefix (up to 15): a recording's address differs
//! only past its forty bytes of host and path, and a phone number, a state or an outcome ends
//! within its key, so equal keys of a short value are equal values. Only values longer than
//! their key, with equal keys, compare the strings.

use std::cmp::Ordering;

use crate::index::{compare_shared, Shared};

/// Sorts `entries` as a set of sortable strings orders them.
pub(crate) fn sort_text_entries(entries: &mut Vec<(Option<Shared>, u64)>) {
    let shared_prefix = shared_prefix(entries);
    let mut keyed: Vec<Keyed> = entries
        .drain(..)
        .map(|(value, id)| (window(value.as_deref(), shared_prefix), value, id))
        .collect();
    let by_value = |(key_a, a, _): &Keyed, (key_b, b, _): &Keyed| {
        a.is_some()
            .cmp(&b.is_some())
            .then(key_a.cmp(key_b))
            .then_with(|| match (a, b) {
                (Some(a), Some(b)) if longer_than_key(*key_a) => compare_shared(a, b),
                _ => Ordering::Equal,
            })
    };
    sort_by_value_then_id(&mut keyed, |(_, _, id)| *id, by_value);
    entries.extend(keyed.into_iter().map(|(_, value, id)| (value, id)));
}

/// Sorts a string set's entries by value, then id: where they come in id order (a bulk build
/// adds its calls so), by a stable sort on the value alone, which leaves each value's ids in
/// order. Ids compared as the last key made every entry distinct, which kept the sort from its
/// shortcut for runs of equal values: a string of few values (a state, an outcome, a tag) was
/// sorted as if every call held its own, about a tenth of a rebuild's instructions.
pub(crate) fn sort_by_value_then_id<T>(
    entries: &mut [T],
    id: impl Fn(&T) -> u64,
    by_value: impl Fn(&T, &T) -> Ordering,
) {
    if entries.is_sorted_by_key(&id) {
        entries.sort_by(by_value);
    } else {
        entries.sort_unstable_by(|a, b| by_value(a, b).then_with(|| id(a).cmp(&id(b))));
    }
}

/// An entry with its value's key ([`window`]) before it.
type Keyed = (u128, Option<Shared>, u64);

/// How many leading bytes every value shares.
fn shared_prefix(entries: &[(Option<Shared>, u64)]) -> usize {
    let mut values = entries.iter().filter_map(|(value, _)| value.as_deref());
    let Some(first) = values.next() else {
        return 0;
    };
    let mut shared = first.len();
    for value in values {
        shared = first.as_bytes()[..shared]
            .iter()
            .zip(value.as_bytes())
            .take_while(|(a, b)| a == b)
            .count();
        if shared == 0 {
            break;
        }
    }
    shared
}

/// The bytes of a key that are the value's.
const KEY_BYTES: usize = 15;

/// The [`KEY_BYTES`] bytes of `value` after `skip`, zeros past its end, then how many bytes it
/// has after `skip` (at most [`KEY_BYTES`]), big-endian. Where two keys differ, the values differ
/// in the same order: by a byte, or one ends first within its key (its zeros matched the other's
/// bytes, so it is a prefix of the other, and sorts first, as its smaller count does). Equal keys
/// whose count is below [`KEY_BYTES`] are equal values; others say nothing.
fn window(value: Option<&str>, skip: usize) -> u128 {
    let mut bytes = [0u8; 16];
    if let Some(rest) = value.and_then(|value| value.as_bytes().get(skip..)) {
        let n = rest.len().min(KEY_BYTES);
        bytes[..n].copy_from_slice(&rest[..n]);
        bytes[KEY_BYTES] = n as u8;
    }
    u128::from_be_bytes(bytes)
}

/// Whether a value's key leaves bytes of it out, so that equal keys must compare the values.
fn longer_than_key(key: u128) -> bool {
    key as u8 as usize == KEY_BYTES
}

#[cfg(test)]
mod tests {
    use super::sort_text_entries;
    use crate::index::Shared;

    #[test]
    fn entries_sort_as_their_values_and_ids_do() {
        let values = [
            None,
            Some("https://recordings.example.com/calls/2024/05/09/b.mp3"),
            Some("https://recordings.example.com/calls/2024/05/09/a.mp3"),
            Some("https://recordings.example.com/calls/2024/05/09/a.mp3\0"),
            Some("https://recordings.example.com/calls/2024/05/09/a.mp"),
            Some("https://recordings.example.com/calls/2024/05/09/a.mp3"),
            Some("https://recordings.example.com/"),
            Some("https://recordings.example.com/calls/2024/05/09/a.mp3zzz"),
            Some("https://recordings.example.com/calls/2024/05/09/a.mp4"),
            Some("é"),
            Some(""),
            Some("\0"),
            Some("\0\0"),
            None,
        ];
        let mut entries: Vec<(Option<Shared>, u64)> = values
            .iter()
            .enumerate()
            .map(|(id, value)| (value.map(Shared::from), 100 - id as u64))
            .collect();
        let mut expected = entries.clone();
        expected
            .sort_by(|(a, x), (b, y)| a.is_some().cmp(&b.is_some()).then(a.cmp(b)).then(x.cmp(y)));
        sort_text_entries(&mut entries);
        assert_eq!(entries, expected);
        // Every value sharing a long prefix, and one value alone.
        for values in [
            vec!["+12065550001", "+12065550000", "+1206555", "+12065550001"],
            vec!["x"],
            vec![
                "0123456789abcdefA",
                "0123456789abcdeB",
                "0123456789abcdef",
                "0123456789abcde",
            ],
            vec![
                "ab",
                "ab\0",
                "ab\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0z",
                "ab\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
            ],
        ] {
            let mut entries: Vec<(Option<Shared>, u64)> = values
                .iter()
                .map(|value| (Some(Shared::from(*value)), 1))
                .collect();
            let mut expected = entries.clone();
            expected.sort();
            sort_text_entries(&mut entries);
            assert_eq!(entries, expected);
        }
    }

    #[test]
    fn random_entries_sort_as_their_values_do() {
        // Few letters, NULs among them, lengths around the key's: every kind of tie.
        let mut numbers = crate::sorted_set::tests::numbers(0x9e37_79b9_7f4a_7c15);
        let mut next = move || numbers.next().unwrap_or_default();
        for _ in 0..500 {
            let prefix = "p".repeat((next() % 3) as usize);
            let entries: Vec<(Option<Shared>, u64)> = (0..40)
                .map(|id| {
                    let len = (next() % 20) as usize;
                    let text: String = (0..len)
                        .map(|_| ['a', 'b', '\0'][(next() % 3) as usize])
                        .collect();
                    let value = (next() % 8 != 0).then(|| Shared::from(format!("{prefix}{text}")));
                    (value, next() % 5 + id % 2)
                })
                .collect();
            // As gathered from calls in any order, and in id order (sorted by value alone).
            let mut in_id_order = entries.clone();
            in_id_order.sort_by_key(|(_, id)| *id);
            for mut entries in [entries, in_id_order] {
                let mut expected = entries.clone();
                expected.sort_by(|(a, x), (b, y)| {
                    a.is_some().cmp(&b.is_some()).then(a.cmp(b)).then(x.cmp(y))
                });
                sort_text_entries(&mut entries);
                assert_eq!(entries, expected);
            }
        }
    }
}
