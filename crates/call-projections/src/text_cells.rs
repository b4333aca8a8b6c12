//! How a column keeps a chunk of strings: one-byte codes into the chunk's own few values, or,
//! where its values are many (numbers, recording URLs), their bytes one after another after the
//! prefix they all share; and [`TextRef`], what reading one gives.

use crate::column::{Cell, CHUNK_LEN};
use crate::index::Shared;
use std::cmp::Ordering;
use std::fmt;

/// The most values a chunk of strings keeps as one-byte codes. Few enough that finding a
/// value's code is a short scan (mostly a pointer comparison: an index shares one copy of each
/// value), where a chunk of nearly unique strings would scan and compare far more before it
/// gives up on codes.
const DICTIONARY_MAX: usize = 64;

// A one-byte code names every value of a full list.
const _: () = assert!(DICTIONARY_MAX <= u8::MAX as usize + 1);

/// A chunk of strings: each call's value as a one-byte code into the chunk's own list of the
/// values it holds, while it holds few (a state, an outcome, a call type: a byte a call where a
/// shared string takes eight), else the values' bytes in the chunk ([`Inline`]).
pub(crate) enum Dictionary {
    Coded {
        /// Code 0 is null; a value no call holds any more stays until the list fills.
        values: Vec<Option<Shared>>,
        codes: Box<[u8]>,
    },
    Inline(Inline),
}

/// A string as a column reads it: null, a string the index shares, or a chunk's prefix and the
/// rest of the value after it. Compared and ordered as the one string it stands for, so that a
/// value kept in two parts and the same value held whole are equal.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TextRef<'a> {
    Null,
    Held(&'a Shared),
    Split(&'a str, &'a str),
}

impl<'a> TextRef<'a> {
    /// `text` itself, to compare read values with.
    pub(crate) fn whole(text: &'a str) -> TextRef<'a> {
        TextRef::Split(text, "")
    }

    /// The string as its two parts; `None` for null.
    pub(crate) fn parts(self) -> Option<(&'a str, &'a str)> {
        match self {
            TextRef::Null => None,
            TextRef::Held(text) => Some((text, "")),
            TextRef::Split(head, tail) => Some((head, tail)),
        }
    }

    pub(crate) fn is_null(self) -> bool {
        matches!(self, TextRef::Null)
    }

    /// The value as one shared string: the index's own copy where it holds one, else a new one.
    pub(crate) fn to_shared(self) -> Option<Shared> {
        match self {
            TextRef::Null => None,
            TextRef::Held(text) => Some(Shared::clone(text)),
            TextRef::Split(head, "") => Some(Shared::from(head)),
            TextRef::Split(head, tail) => Some(Shared::from(format!("{head}{tail}"))),
        }
    }
}

impl<'a> From<&'a Option<Shared>> for TextRef<'a> {
    fn from(value: &'a Option<Shared>) -> TextRef<'a> {
        match value {
            Some(text) => TextRef::Held(text),
            None => TextRef::Null,
        }
    }
}

/// Orders two strings, each given in two parts, as the strings they make (bytewise, which is
/// how `str` orders).
fn compare_parts((a, a_tail): (&str, &str), (b, b_tail): (&str, &str)) -> Ordering {
    let (mut a, mut a_tail) = (a.as_bytes(), a_tail.as_bytes());
    let (mut b, mut b_tail) = (b.as_bytes(), b_tail.as_bytes());
    loop {
        if a.is_empty() && !a_tail.is_empty() {
            a = std::mem::take(&mut a_tail);
        }
        if b.is_empty() && !b_tail.is_empty() {
            b = std::mem::take(&mut b_tail);
        }
        if a.is_empty() || b.is_empty() {
            return a.len().cmp(&b.len());
        }
        let n = a.len().min(b.len());
        match a[..n].cmp(&b[..n]) {
            Ordering::Equal => (a, b) = (&a[n..], &b[n..]),
            other => return other,
        }
    }
}

impl Ord for TextRef<'_> {
    /// Null first, as the list query orders it.
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.parts(), other.parts()) {
            (Some(a), Some(b)) => compare_parts(a, b),
            (a, b) => a.is_some().cmp(&b.is_some()),
        }
    }
}

impl PartialOrd for TextRef<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for TextRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self.parts(), other.parts()) {
            (Some(a), Some(b)) => {
                a.0.len() + a.1.len() == b.0.len() + b.1.len()
                    && compare_parts(a, b) == Ordering::Equal
            }
            (a, b) => a.is_none() && b.is_none(),
        }
    }
}

impl Eq for TextRef<'_> {}

impl fmt::Display for TextRef<'_> {
    /// Quoted, or `null`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parts() {
            Some((head, tail)) => write!(f, "{:?}", format!("{head}{tail}")),
            None => f.write_str("null"),
        }
    }
}

/// A chunk of many distinct strings, kept as their bytes: the prefix every value of the chunk
/// starts with once (a recording URL's scheme, host and path, a number's country code), then
/// each value's rest in one buffer, found by its span. A call whose value would be a shared
/// string of its own (an allocation of its bytes and a header, and an eight-byte slot) costs the
/// bytes of its rest and a three-byte span (eight in a chunk past 64 KiB or with a rest past
/// 255 bytes).
///
/// A value is written at the buffer's end, so that a chunk filled in any order (a snapshot is
/// read in value order, not id order) costs a copy of each value once; a value replaced leaves
/// its old bytes behind until they are as many as the live ones, when the chunk is laid out
/// again.
pub(crate) struct Inline {
    prefix: Box<str>,
    /// The slots' rests, each where its span says; bytes no span covers are `stale`.
    rest: String,
    spans: Spans,
    stale: usize,
    /// One bit per slot: null.
    nulls: [u64; CHUNK_LEN / 64],
}

/// Where each slot's rest lies in [`Inline::rest`]: start and length.
enum Spans {
    /// While every start fits in 16 bits and every length in 8.
    Narrow { starts: Box<[u16]>, lens: Box<[u8]> },
    Wide {
        starts: Box<[u32]>,
        lens: Box<[u32]>,
    },
}

impl Spans {
    fn narrow() -> Spans {
        Spans::Narrow {
            starts: vec![0; CHUNK_LEN].into_boxed_slice(),
            lens: vec![0; CHUNK_LEN].into_boxed_slice(),
        }
    }

    fn get(&self, i: usize) -> std::ops::Range<usize> {
        let (start, len) = match self {
            Spans::Narrow { starts, lens } => (usize::from(starts[i]), usize::from(lens[i])),
            Spans::Wide { starts, lens } => (starts[i] as usize, lens[i] as usize),
        };
        start..start + len
    }

    fn set(&mut self, i: usize, span: std::ops::Range<usize>) {
        if let Spans::Narrow { starts, lens } = self {
            match (u16::try_from(span.start), u8::try_from(span.len())) {
                (Ok(start), Ok(len)) => {
                    (starts[i], lens[i]) = (start, len);
                    return;
                }
                _ => {
                    *self = Spans::Wide {
                        starts: starts.iter().map(|start| u32::from(*start)).collect(),
                        lens: lens.iter().map(|len| u32::from(*len)).collect(),
                    };
                }
            }
        }
        if let Spans::Wide { starts, lens } = self {
            // A sortable string is at most 255 characters, and a chunk's bytes at most twice
            // its 1,024 values' (stale bytes are laid out again before): far below 4 GiB.
            (starts[i], lens[i]) = (span.start as u32, span.len() as u32);
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Spans::Narrow { .. } => CHUNK_LEN * 3,
            Spans::Wide { .. } => CHUNK_LEN * 8,
        }
    }
}

/// How many leading bytes `a` and `b` share, cut back to a character's start.
fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(a, b)| a == b).count();
    while !a.is_char_boundary(n) {
        n -= 1;
    }
    n
}

impl Inline {
    /// A chunk of these values, slot by slot.
    fn of(values: &[Option<&str>]) -> Inline {
        let mut prefix: Option<&str> = None;
        for text in values.iter().flatten() {
            prefix = Some(match prefix {
                None => text,
                Some(prefix) => &prefix[..common_prefix(prefix, text)],
            });
        }
        let prefix = prefix.unwrap_or("");
        let bytes = values
            .iter()
            .flatten()
            .map(|text| text.len() - prefix.len())
            .sum();
        let mut chunk = Inline {
            prefix: prefix.into(),
            rest: String::with_capacity(bytes),
            spans: Spans::narrow(),
            stale: 0,
            nulls: [0; CHUNK_LEN / 64],
        };
        for (i, value) in values.iter().enumerate() {
            match value {
                Some(text) => chunk.push(i, &text[prefix.len()..]),
                None => chunk.nulls[i / 64] |= 1 << (i % 64),
            }
        }
        chunk
    }

    fn is_null(&self, i: usize) -> bool {
        self.nulls[i / 64] & (1 << (i % 64)) != 0
    }

    fn get(&self, i: usize) -> TextRef<'_> {
        if self.is_null(i) {
            TextRef::Null
        } else {
            TextRef::Split(&self.prefix, &self.rest[self.spans.get(i)])
        }
    }

    /// Lays the live values out again one after another, with only the first `keep` bytes of
    /// the prefix kept as the prefix (the rest of it moves into every value).
    fn lay_out(&mut self, keep: usize) {
        let moved = &self.prefix[keep..];
        let live = (0..CHUNK_LEN).filter(|at| !self.is_null(*at));
        let bytes = live
            .clone()
            .map(|at| moved.len() + self.spans.get(at).len())
            .sum();
        let mut rest = String::with_capacity(bytes);
        let mut spans = Spans::narrow();
        for at in live {
            let start = rest.len();
            rest.push_str(moved);
            rest.push_str(&self.rest[self.spans.get(at)]);
            spans.set(at, start..rest.len());
        }
        self.prefix = self.prefix[..keep].into();
        (self.rest, self.spans, self.stale) = (rest, spans, 0);
    }

    fn set(&mut self, i: usize, value: Option<&str>) {
        let Some(text) = value else {
            if !self.is_null(i) {
                self.stale += self.spans.get(i).len();
                self.spans.set(i, 0..0);
                self.nulls[i / 64] |= 1 << (i % 64);
            }
            return;
        };
        if !text.starts_with(&*self.prefix) {
            // Every value gets back the part of the prefix this one does not share, which a
            // prefix can go through at most once per byte it had.
            self.lay_out(common_prefix(&self.prefix, text));
        }
        let rest = &text[self.prefix.len()..];
        let old = self.spans.get(i);
        if !self.is_null(i) && old.len() == rest.len() {
            self.rest.replace_range(old, rest);
            return;
        }
        if !self.is_null(i) {
            self.stale += old.len();
            self.nulls[i / 64] |= 1 << (i % 64);
            if self.stale >= self.rest.len() - self.stale {
                self.lay_out(self.prefix.len());
            }
        }
        self.nulls[i / 64] &= !(1 << (i % 64));
        self.push(i, rest);
    }

    /// Writes `rest` at the end of the bytes as slot `i`'s, growing them by an eighth at a time
    /// where they must grow (doubling would leave a chunk up to half empty, and chunks are many).
    fn push(&mut self, i: usize, rest: &str) {
        let start = self.rest.len();
        if start + rest.len() > self.rest.capacity() {
            self.rest.reserve_exact(rest.len().max(start / 8));
        }
        self.rest.push_str(rest);
        self.spans.set(i, start..start + rest.len());
    }

    fn bytes(&self) -> usize {
        self.prefix.len()
            + self.rest.capacity()
            + self.spans.bytes()
            + std::mem::size_of_val(&self.nulls)
    }
}

impl Dictionary {
    /// The shared strings a coded chunk's list holds (an inline chunk's bytes are its own).
    pub(crate) fn held(&self) -> impl Iterator<Item = &Shared> {
        let values = match self {
            Dictionary::Coded { values, .. } => &values[..],
            Dictionary::Inline(_) => &[],
        };
        values.iter().flatten()
    }

    fn get(&self, i: usize) -> TextRef<'_> {
        match self {
            Dictionary::Coded { values, codes } => TextRef::from(&values[usize::from(codes[i])]),
            Dictionary::Inline(inline) => inline.get(i),
        }
    }

    fn set(&mut self, i: usize, value: Option<Shared>) {
        let Dictionary::Coded { values, codes } = self else {
            if let Dictionary::Inline(inline) = self {
                inline.set(i, value.as_deref());
            }
            return;
        };
        // The index's own copy first, by address; then by content.
        let same = |held: &Option<Shared>| match (held, &value) {
            (Some(held), Some(value)) => Shared::ptr_eq(held, value),
            (None, None) => true,
            _ => false,
        };
        let known = values
            .iter()
            .position(same)
            .or_else(|| values.iter().position(|held| *held == value));
        if let Some(code) = known {
            codes[i] = code as u8;
            return;
        }
        if values.len() < DICTIONARY_MAX {
            codes[i] = values.len() as u8;
            values.push(value);
            return;
        }
        // The list is full: drop the values no call holds any more, or, where every one is
        // held, keep the values' bytes instead.
        let mut held = [false; DICTIONARY_MAX];
        held[0] = true;
        for code in codes.iter() {
            held[usize::from(*code)] = true;
        }
        if held.iter().all(|held| *held) {
            let mut all: Vec<Option<&str>> = codes
                .iter()
                .map(|code| values[usize::from(*code)].as_deref())
                .collect();
            all[i] = value.as_deref();
            *self = Dictionary::Inline(Inline::of(&all));
            return;
        }
        let mut renumbered = [0u8; DICTIONARY_MAX];
        let mut kept = Vec::with_capacity(DICTIONARY_MAX);
        for (code, value) in values.drain(..).enumerate() {
            if held[code] {
                renumbered[code] = kept.len() as u8;
                kept.push(value);
            }
        }
        for code in codes.iter_mut() {
            *code = renumbered[usize::from(*code)];
        }
        *values = kept;
        codes[i] = values.len() as u8;
        values.push(value);
    }
}

impl Cell for Option<Shared> {
    type Slots = Dictionary;
    type Read<'a> = TextRef<'a>;

    fn slots(null: &Option<Shared>) -> Dictionary {
        Dictionary::Coded {
            values: vec![null.clone()],
            codes: vec![0; CHUNK_LEN].into_boxed_slice(),
        }
    }

    fn read<'a>(slots: &'a Dictionary, i: usize, _: &'a Option<Shared>) -> TextRef<'a> {
        slots.get(i)
    }

    fn write(slots: &mut Dictionary, i: usize, value: Option<Shared>, _: &Option<Shared>) {
        slots.set(i, value);
    }

    fn as_read(&self) -> TextRef<'_> {
        TextRef::from(self)
    }

    fn owned(read: TextRef<'_>) -> Option<Shared> {
        read.to_shared()
    }

    fn lend<R>(read: TextRef<'_>, f: impl FnOnce(&Option<Shared>) -> R) -> R {
        f(&read.to_shared())
    }

    /// Code 0 names null in a coded chunk (its list starts with null and keeps it first); an
    /// inline chunk has a bit for it.
    fn is_null(slots: &Dictionary, i: usize, _: &Option<Shared>) -> bool {
        match slots {
            Dictionary::Coded { codes, .. } => codes[i] == 0,
            Dictionary::Inline(inline) => inline.is_null(i),
        }
    }

    /// A coded chunk's strings are shared with the index's other chunks and entries, and are
    /// counted with the index; an inline chunk's bytes are its own.
    fn slots_bytes(slots: &Dictionary) -> usize {
        match slots {
            Dictionary::Coded { values, .. } => {
                CHUNK_LEN + values.capacity() * std::mem::size_of::<Option<Shared>>()
            }
            Dictionary::Inline(inline) => inline.bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::column::Column;
    use crate::sorted_set::tests::numbers;

    /// A value of about one in `distinct`: nulls, the empty string, values sharing a long
    /// prefix, values sharing only part of it (cut inside a two-byte character) and values
    /// sharing nothing.
    fn value(n: u64, distinct: u64) -> Option<Shared> {
        let k = n % distinct;
        match (k, k % 5) {
            (0, _) => None,
            (1, _) => Some(Shared::from("")),
            (_, 0) => Some(Shared::from(format!("https://réc.example.com/{k}"))),
            (_, 1) => Some(Shared::from(format!("https://rèc.example.com/{k}.mp3"))),
            (_, 2) => Some(Shared::from(format!("+1415555{k:04}"))),
            (_, 3) => Some(Shared::from(format!("{k}"))),
            _ => Some(Shared::from(format!(
                "https://rec.example.com/calls/{k}.mp3"
            ))),
        }
    }

    #[test]
    fn string_chunks_read_back_every_value_as_codes_or_as_their_bytes() {
        let mut numbers = numbers(0x9e37_79b9_7f4a_7c15);
        let mut next = move || numbers.next().unwrap_or_default();
        for (round, distinct) in [3u64, 40, 64, 65, 500, 5000].into_iter().enumerate() {
            let mut column: Column<Option<Shared>> = Column::new(None);
            let mut model = std::collections::BTreeMap::new();
            for _ in 0..3000 {
                let id = next() % (2 * CHUNK_LEN as u64);
                // Equal values in separate copies too, as a caller may hand them.
                let value = value(next(), distinct);
                column.set(id, value.clone());
                match value {
                    None => model.remove(&id),
                    Some(value) => model.insert(id, value),
                };
            }
            for id in 0..2 * CHUNK_LEN as u64 {
                let read = column.get(id);
                assert_eq!(
                    read.to_shared().as_ref(),
                    model.get(&id),
                    "round {round}, call {id}"
                );
                let whole = model
                    .get(&id)
                    .map_or(TextRef::Null, |text| TextRef::whole(text));
                assert_eq!(read, whole, "round {round}, call {id}");
            }
            // Replaced values' bytes are laid out again before they outgrow the live ones.
            for slots in column.chunk_slots() {
                if let Dictionary::Inline(inline) = slots {
                    assert!(
                        inline.stale <= inline.rest.len() - inline.stale,
                        "round {round}"
                    );
                }
            }
            let coded = column
                .chunk_slots()
                .all(|slots| matches!(slots, Dictionary::Coded { .. }));
            assert_eq!(
                coded,
                distinct <= DICTIONARY_MAX as u64,
                "{distinct} values"
            );
        }
    }

    #[test]
    fn strings_in_two_parts_order_as_the_strings_they_make() {
        let texts = ["", "a", "ab", "abc", "abd", "b", "é", "éa", "ea", "z"];
        for a in texts {
            for b in texts {
                for cut_a in (0..=a.len()).filter(|at| a.is_char_boundary(*at)) {
                    for cut_b in (0..=b.len()).filter(|at| b.is_char_boundary(*at)) {
                        let ra = TextRef::Split(&a[..cut_a], &a[cut_a..]);
                        let rb = TextRef::Split(&b[..cut_b], &b[cut_b..]);
                        assert_eq!(ra.cmp(&rb), a.cmp(b), "{a:?} at {cut_a}, {b:?} at {cut_b}");
                        assert_eq!(ra == rb, a == b);
                    }
                }
            }
            assert!(TextRef::Null < TextRef::whole(a));
        }
        assert_eq!(TextRef::Null, TextRef::Null);
    }

    #[test]
    fn a_chunk_past_64_kib_of_bytes_keeps_its_spans_wide() {
        let long = |n: usize| Some(Shared::from(format!("{n:x}{}", "-".repeat(100))));
        let mut column: Column<Option<Shared>> = Column::new(None);
        for id in 0..CHUNK_LEN as u64 {
            column.set(id, long(id as usize));
        }
        let slots = column.chunk_slots().next().expect("one chunk");
        assert!(matches!(
            slots,
            Dictionary::Inline(Inline {
                spans: Spans::Wide { .. },
                ..
            })
        ));
        // Emptied again in the middle, moved and read back.
        column.set(500, None);
        column.set(7, long(9_999));
        for id in 0..CHUNK_LEN as u64 {
            let want = match id {
                500 => None,
                7 => long(9_999),
                _ => long(id as usize),
            };
            assert_eq!(column.get(id).to_shared(), want, "call {id}");
        }
    }

    #[test]
    fn a_value_without_the_chunks_prefix_shortens_it_and_every_value_reads_back() {
        let url = |n: u64| Shared::from(format!("https://rec.example.com/calls/{n}.mp3"));
        let mut column: Column<Option<Shared>> = Column::new(None);
        let mut model = std::collections::BTreeMap::new();
        let mut set = |column: &mut Column<Option<Shared>>, id: u64, text: Shared| {
            column.set(id, Some(Shared::clone(&text)));
            model.insert(id, text);
            for (id, text) in &model {
                assert_eq!(column.get(*id), TextRef::whole(text), "call {id}");
            }
        };
        for id in 0..100 {
            set(&mut column, id, url(id));
        }
        let prefix = |column: &Column<Option<Shared>>| match column.chunk_slots().next() {
            Some(Dictionary::Inline(inline)) => inline.prefix.to_string(),
            _ => panic!("a chunk of 100 values keeps their bytes"),
        };
        assert_eq!(prefix(&column), "https://rec.example.com/calls/");
        set(&mut column, 100, Shared::from("https://réc.example.com/"));
        assert_eq!(prefix(&column), "https://r");
        set(&mut column, 3, Shared::from("+14155550100"));
        assert_eq!(prefix(&column), "");
        set(&mut column, 4, url(4_000));
    }
}
