//! Sorting a sortable string's gathered `(value, id)` entries into its set's order (no value
//! first, then by value, then by id), comparing a window of each value's bytes held beside it
//! before the values themselves.
//!
//! A million entries sorted by comparing the strings read each string's bytes behind its
//! pointer, a cache miss, about twenty times an entry: three quarters of building a rebuild's
//! indexes once its replay ended. The window is the sixteen bytes after the prefix that every
//! value shares (a recording's address differs only past its forty bytes of host and path; a
//! phone number is a dozen bytes), so most comparisons end on it; only equal windows compare
//! the strings.

use std::cmp::Ordering;

use crate::index::{compare_shared, Shared};

/// Sorts `entries` as a set of sortable strings orders them.
pub(crate) fn sort_text_entries(entries: &mut Vec<(Option<Shared>, u64)>) {
    let shared_prefix = shared_prefix(entries);
    let mut keyed: Vec<(u128, Option<Shared>, u64)> = entries
        .drain(..)
        .map(|(value, id)| (window(value.as_deref(), shared_prefix), value, id))
        .collect();
    keyed.sort_unstable_by(|(window_a, a, id_a), (window_b, b, id_b)| {
        a.is_some()
            .cmp(&b.is_some())
            .then(window_a.cmp(window_b))
            .then_with(|| match (a, b) {
                (Some(a), Some(b)) => compare_shared(a, b),
                _ => Ordering::Equal,
            })
            .then(id_a.cmp(id_b))
    });
    entries.extend(keyed.into_iter().map(|(_, value, id)| (value, id)));
}

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

/// The sixteen bytes of `value` after `skip`, big-endian, zeros past its end: where two
/// windows differ, the values differ in the same order (a value that ends first is a prefix of
/// the other, and sorts first, as its zeros do); equal windows say nothing.
fn window(value: Option<&str>, skip: usize) -> u128 {
    let mut bytes = [0u8; 16];
    if let Some(rest) = value.and_then(|value| value.as_bytes().get(skip..)) {
        let n = rest.len().min(16);
        bytes[..n].copy_from_slice(&rest[..n]);
    }
    u128::from_be_bytes(bytes)
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
            Some("é"),
            Some(""),
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
        for values in [vec!["+12065550001", "+12065550000", "+1206555"], vec!["x"]] {
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
}
