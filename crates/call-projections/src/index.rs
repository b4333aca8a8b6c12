//! The in-memory secondary indexes of the live calls: one ordered set of `(value, id)` per
//! filterable or sortable target, and a column (id -> value) per sortable attribute.
//!
//! They are derived from the stored views and kept current after every applied batch; at open
//! they are read back from the snapshot the last close wrote (`snapshot`) or, where there is
//! none of that very view, built from the stored views. Ordered sets answer "the calls with this
//! value, in id order" and "the calls in value order"; columns answer "this call's sort value"
//! without reading and decoding its stored row, which is what lets the query engine order and
//! pre-filter candidates cheaply and read only the rows it returns.
//!
//! The sets are [`Grouped`] entries over sorted sets (`sorted_set`): a value many calls hold
//! costs 4 bytes a call, one held by few a 16-byte entry; a column slot is 1 to 8 bytes (see
//! [`Column`]); the live ids are 4 bytes each ([`LiveIds`]); strings are shared per index, so a
//! value shared by many calls (a state, an outcome, a vendor) is stored once.
//! [`Indexes::memory`] estimates what each index holds.

use crate::column::{Cell, Column};
use crate::column_order::{ColumnOrder, Null};
use crate::grouped::Grouped;
use crate::live_ids::LiveIds;
use crate::radix::sort_entries;
use crate::text_cells::{Dictionary, TextRef};
use crate::text_sort::{sort_by_value_then_id, sort_text_entries};
use call_model::{AttrValue, Call, Field, QueryUse, RelValue, Relation, Timestamp};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound::{Included, Unbounded};

/// A string the indexes share between the entries and columns holding it: one word (the length
/// lives with the count in its allocation), where `Arc<str>` takes two, in every entry and
/// column slot of a string index.
pub(crate) type Shared = arcstr::ArcStr;

/// The value a time column and a time index hold for null. Real timestamps are parsed from
/// RFC 3339, whose range (chrono's, about +-262,000 years) is far from `i64::MIN` milliseconds,
/// so no real value collides with it; nulls sort first, as the list query wants.
pub(crate) const NULL_TIME: i64 = i64::MIN;

/// How many attributes the model gives this use.
const fn count_fields(wanted: QueryUse) -> usize {
    let mut count = 0;
    let mut i = 0;
    while i < Field::ALL.len() {
        if Field::ALL[i].query_use() as u8 == wanted as u8 {
            count += 1;
        }
        i += 1;
    }
    count
}

/// The attributes of this use, in the order of [`Field::ALL`]. `N` must be
/// `count_fields(wanted)`; a mismatch fails to compile.
const fn select_fields<const N: usize>(wanted: QueryUse) -> [Field; N] {
    let mut out = [Field::AnsweredAt; N];
    let (mut i, mut n) = (0, 0);
    while i < Field::ALL.len() {
        if Field::ALL[i].query_use() as u8 == wanted as u8 {
            out[n] = Field::ALL[i];
            n += 1;
        }
        i += 1;
    }
    assert!(n == N, "select_fields: N is not the number of such fields");
    out
}

/// The relationships the list query filters on ([`Relation::is_filterable`]).
const fn select_relations<const N: usize>() -> [Relation; N] {
    let mut out = [Relation::User; N];
    let (mut i, mut n) = (0, 0);
    while i < Relation::ALL.len() {
        if Relation::ALL[i].is_filterable() {
            out[n] = Relation::ALL[i];
            n += 1;
        }
        i += 1;
    }
    assert!(
        n == N,
        "select_relations: N is not the number of such relations"
    );
    out
}

const fn count_relations() -> usize {
    let (mut i, mut count) = (0, 0);
    while i < Relation::ALL.len() {
        if Relation::ALL[i].is_filterable() {
            count += 1;
        }
        i += 1;
    }
    count
}

/// The sortable date-time attributes ([`QueryUse::SortTime`]), in the order of
/// [`Indexes::times`].
pub(crate) const TIME_SORT: [Field; count_fields(QueryUse::SortTime)] =
    select_fields(QueryUse::SortTime);

/// The sortable string attributes ([`QueryUse::SortText`]), in the order of
/// [`Indexes::sort_texts`].
pub(crate) const TEXT_SORT: [Field; count_fields(QueryUse::SortText)] =
    select_fields(QueryUse::SortText);

/// The string attributes that can be filtered on but not sorted by ([`QueryUse::FilterText`]),
/// in the order of [`Indexes::texts`].
pub(crate) const TEXT_FILTER: [Field; count_fields(QueryUse::FilterText)] =
    select_fields(QueryUse::FilterText);

/// The relationships whose id can be filtered on ([`Relation::is_filterable`]), in the order of
/// [`Indexes::related`].
pub(crate) const FILTER_RELATIONS: [Relation; count_relations()] = select_relations();

/// Where a sortable attribute's ordered set and column live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SortCol {
    /// `Indexes::times[i]`.
    Time(usize),
    /// `Indexes::sort_texts[i]`.
    Text(usize),
}

/// Where a filter or sort target lives in [`Indexes`]: the one answer to that question, used by
/// the filters, the order and the index walks alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The call's id: [`Indexes::ids`].
    Id,
    /// A sortable attribute.
    Sort(SortCol),
    /// A filter-only string: `texts[i]`.
    Text(usize),
    /// `shouldRecordCall`.
    Flag,
    /// `note`, indexed by a hash of its value.
    Note,
    /// `tags`, one entry per tag.
    Tags,
    /// A filterable relationship: `related[i]`.
    Related(usize),
}

/// The position of `field` in a table built by [`select_fields`] from its own use, which
/// therefore always holds it.
const fn position_of(table: &[Field], field: Field) -> usize {
    let mut i = 0;
    while i < table.len() {
        if table[i] as u8 == field as u8 {
            return i;
        }
        i += 1;
    }
    panic!("a field is missing from the table of its own query use")
}

/// Where each attribute lives, by `Field as usize`, computed when compiling.
const SLOTS: [Slot; Field::ALL.len()] = {
    let mut slots = [Slot::Flag; Field::ALL.len()];
    let mut i = 0;
    while i < Field::ALL.len() {
        let field = Field::ALL[i];
        slots[field as usize] = match field.query_use() {
            QueryUse::SortTime => Slot::Sort(SortCol::Time(position_of(&TIME_SORT, field))),
            QueryUse::SortText => Slot::Sort(SortCol::Text(position_of(&TEXT_SORT, field))),
            QueryUse::FilterText => Slot::Text(position_of(&TEXT_FILTER, field)),
            QueryUse::Flag => Slot::Flag,
            QueryUse::Note => Slot::Note,
            QueryUse::Tags => Slot::Tags,
        };
        i += 1;
    }
    slots
};

/// Where `field` lives in [`Indexes`].
pub(crate) fn slot(field: Field) -> Slot {
    SLOTS[field as usize]
}

/// Where a relationship's id lives in [`Indexes::related`]; `None` when it cannot be filtered.
pub(crate) fn relation_slot(relation: Relation) -> Option<Slot> {
    FILTER_RELATIONS
        .iter()
        .position(|r| *r == relation)
        .map(Slot::Related)
}

/// The hash a note is indexed by. Only equality filters use it, and every hit is confirmed on
/// the stored row, so a collision costs a row read, never a wrong answer. It is written into the
/// index snapshot, so it must not change between builds: FNV-1a (64 bits), spelled out here,
/// rather than the standard library's hasher, whose algorithm is not promised.
pub(crate) fn note_hash(note: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    note.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// How many single string values an [`IndexRow`] holds: the sortable ones, then the filter-only
/// ones.
const ROW_TEXTS: usize = TEXT_SORT.len() + TEXT_FILTER.len();

/// What one call contributes to the indexes: its indexed values, and nothing else.
///
/// Its strings are one buffer: a rebuild keeps a row for every call until it builds the
/// indexes, and a boxed string per value (a dozen allocations per row, each freed again) was a
/// measured share of a rebuild's replay and of its index build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IndexRow {
    /// The position of the call's latest event, for the change feed.
    position: u64,
    times: [i64; TIME_SORT.len()],
    /// The sortable strings, the filter-only strings, then the tags (sorted, without
    /// duplicates), one after another.
    strings: Box<str>,
    /// Where each sortable and filter-only string ends in `strings`.
    ends: [u32; ROW_TEXTS],
    /// Bit `i` set: string `i` is null (its end is the previous one's).
    nulls: u32,
    /// Where each tag ends in `strings`.
    tag_ends: Box<[u32]>,
    flag: Option<bool>,
    note: Option<u64>,
    /// `(slot in FILTER_RELATIONS, id)`, in slot order.
    related: Box<[(u8, i64)]>,
}

// One bit per string in `IndexRow::nulls`.
const _: () = assert!(ROW_TEXTS <= u32::BITS as usize);

/// What the index builder reads of one call: an [`IndexRow`], or the call itself. A replay
/// adds most calls once, straight from the calls it folded: building a row for each, only to
/// read it once, was a quarter of an import's index thread. The call's side is where the
/// indexed values are chosen; a row holds what it reads.
pub(crate) trait Indexed {
    /// The position of the call's latest event, for the change feed.
    fn position(&self) -> u64;
    /// Date-time `i` ([`TIME_SORT`] order) in milliseconds, [`NULL_TIME`] where it has none.
    fn time(&self, i: usize) -> i64;
    /// Sortable string `i` ([`TEXT_SORT`] order).
    fn sort_text(&self, i: usize) -> Option<&str>;
    /// Filter-only string `i` ([`TEXT_FILTER`] order).
    fn text(&self, i: usize) -> Option<&str>;
    /// The tags, sorted, without duplicates.
    fn tags(&self) -> impl Iterator<Item = &str> + Clone + '_;
    /// `shouldRecordCall`.
    fn flag(&self) -> Option<bool>;
    /// The note's [`note_hash`].
    fn note(&self) -> Option<u64>;
    /// `(slot in FILTER_RELATIONS, id)`, in slot order.
    fn related(&self) -> impl Iterator<Item = (u8, i64)> + '_;
}

impl Indexed for Call {
    fn position(&self) -> u64 {
        self.position
    }

    fn time(&self, i: usize) -> i64 {
        Call::time(self, TIME_SORT[i]).map_or(NULL_TIME, Timestamp::millis)
    }

    fn sort_text(&self, i: usize) -> Option<&str> {
        Call::text(self, TEXT_SORT[i])
    }

    fn text(&self, i: usize) -> Option<&str> {
        Call::text(self, TEXT_FILTER[i])
    }

    fn tags(&self) -> impl Iterator<Item = &str> + Clone + '_ {
        let mut tags: Vec<&str> = match self.attribute(Field::Tags) {
            Some(AttrValue::Tags(tags)) => tags.iter().map(|tag| tag.as_str()).collect(),
            _ => Vec::new(),
        };
        tags.sort_unstable();
        tags.dedup();
        tags.into_iter()
    }

    fn flag(&self) -> Option<bool> {
        match self.attribute(Field::ShouldRecordCall) {
            Some(AttrValue::Bool(flag)) => Some(*flag),
            _ => None,
        }
    }

    fn note(&self) -> Option<u64> {
        Call::text(self, Field::Note).map(note_hash)
    }

    fn related(&self) -> impl Iterator<Item = (u8, i64)> + '_ {
        FILTER_RELATIONS
            .iter()
            .enumerate()
            .filter_map(|(slot, relation)| match self.relationships.get(relation) {
                Some(RelValue::One(target)) => Some((slot as u8, target.id)),
                _ => None,
            })
    }
}

impl IndexRow {
    /// The indexed values of `call`.
    pub(crate) fn of(call: &Call) -> IndexRow {
        let texts: [Option<&str>; ROW_TEXTS] =
            std::array::from_fn(|i| match i.checked_sub(TEXT_SORT.len()) {
                None => call.sort_text(i),
                Some(filter) => Indexed::text(call, filter),
            });
        let tags = Indexed::tags(call);
        // One allocation of the final size: growing the buffer string by string reallocated it
        // several times per row, once per call in a rebuild.
        let length = texts
            .iter()
            .flatten()
            .copied()
            .chain(tags.clone())
            .map(str::len)
            .sum();
        let mut strings = String::with_capacity(length);
        let mut ends = [0u32; ROW_TEXTS];
        let mut nulls = 0u32;
        for (i, text) in texts.iter().enumerate() {
            match text {
                Some(text) => strings.push_str(text),
                None => nulls |= 1 << i,
            }
            ends[i] = offset(&strings);
        }
        let tag_ends = tags
            .map(|tag| {
                strings.push_str(tag);
                offset(&strings)
            })
            .collect();
        IndexRow {
            position: call.position,
            times: std::array::from_fn(|i| Indexed::time(call, i)),
            strings: strings.into_boxed_str(),
            ends,
            nulls,
            tag_ends,
            flag: Indexed::flag(call),
            note: Indexed::note(call),
            related: Indexed::related(call).collect(),
        }
    }

    /// String `i` of the row's sortable strings then filter-only strings.
    fn string(&self, i: usize) -> Option<&str> {
        if self.nulls & (1 << i) != 0 {
            return None;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.strings[start as usize..self.ends[i] as usize])
    }
}

impl Indexed for IndexRow {
    fn position(&self) -> u64 {
        self.position
    }

    fn time(&self, i: usize) -> i64 {
        self.times[i]
    }

    fn sort_text(&self, i: usize) -> Option<&str> {
        self.string(i)
    }

    fn text(&self, i: usize) -> Option<&str> {
        self.string(TEXT_SORT.len() + i)
    }

    fn tags(&self) -> impl Iterator<Item = &str> + Clone + '_ {
        let first = self.ends.last().copied().unwrap_or(0);
        let starts = std::iter::once(first).chain(self.tag_ends.iter().copied());
        starts
            .zip(self.tag_ends.iter().copied())
            .map(|(start, end)| &self.strings[start as usize..end as usize])
    }

    fn flag(&self) -> Option<bool> {
        self.flag
    }

    fn note(&self) -> Option<u64> {
        self.note
    }

    fn related(&self) -> impl Iterator<Item = (u8, i64)> + '_ {
        self.related.iter().copied()
    }
}

/// The length of `strings` as an offset: a row's strings are a call's, far below 4 GiB (a
/// write's body is limited to a few megabytes).
fn offset(strings: &str) -> u32 {
    u32::try_from(strings.len()).unwrap_or(u32::MAX)
}

/// Strings shared by the entries of one index, so that a value many calls hold is stored once.
///
/// Hashed with foldhash rather than SipHash (a fifth of building the indexes): its seeds are
/// random per process and per set, which is what keeps values chosen by a writer from colliding
/// on purpose. `C` is what else each string is given: nothing (`()`), or a [`Code`] that names it
/// in a column in four bytes instead of the sixteen of a shared string.
pub(crate) struct Interner<C: Numbering = ()> {
    strings: HashMap<Shared, C, foldhash::fast::RandomState>,
    /// Codes of strings no entry holds any more, handed out again first.
    free: Vec<C>,
}

/// What an [`Interner`] gives each string besides its shared copy.
pub(crate) trait Numbering: Copy {
    /// The number of a new string, where `held` strings are held and `free` numbers are free.
    fn next(held: usize, free: &mut Vec<Self>) -> Self;
}

impl Numbering for () {
    fn next(_: usize, _: &mut Vec<()>) {}
}

/// A string's number in a coded column; [`NO_CODE`] is null. A code is given back when no entry
/// holds its string, so codes stay as few as the distinct values held.
pub(crate) type Code = u32;

/// The code of no value.
pub(crate) const NO_CODE: Code = 0;

impl Numbering for Code {
    fn next(held: usize, free: &mut Vec<Code>) -> Code {
        // Every code from 1 to `held + free.len()` is either held or free.
        free.pop().unwrap_or_else(|| {
            Code::try_from(held + 1)
                .expect("fewer than four billion distinct values in one index (each takes memory)")
        })
    }
}

impl<C: Numbering> Default for Interner<C> {
    fn default() -> Self {
        Interner {
            strings: HashMap::default(),
            free: Vec::new(),
        }
    }
}

/// The bytes a hash table of `capacity` entries of `T` takes (a control byte per bucket, buckets
/// a power of two above the capacity at seven eighths full).
pub(crate) fn table_bytes<T>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity * 8 / 7).next_power_of_two();
    buckets * (std::mem::size_of::<T>() + 1)
}

/// The bytes a shared string's allocation takes: its two counts and its text, in 16-byte steps.
fn arc_str_bytes(text: &str) -> usize {
    (16 + text.len()).next_multiple_of(16)
}

impl<C: Numbering> Interner<C> {
    /// The bytes of the table and of the strings held.
    fn heap_bytes(&self) -> usize {
        let texts: usize = self.strings.keys().map(|text| arc_str_bytes(text)).sum();
        table_bytes::<(Shared, C)>(self.strings.capacity())
            + texts
            + self.free.capacity() * std::mem::size_of::<C>()
    }

    pub(crate) fn intern(&mut self, text: &str) -> Shared {
        match self.strings.get_key_value(text) {
            Some((shared, _)) => Shared::clone(shared),
            None => self.insert_new(text),
        }
    }

    /// The shared copy of `text`, which no entry holds yet (a set read back in order meets each
    /// value once): one hash, where [`Interner::intern`] takes two for a new value.
    pub(crate) fn insert_new(&mut self, text: &str) -> Shared {
        self.insert_numbered(text).0
    }

    /// [`Interner::insert_new`], with the number the string is given.
    fn insert_numbered(&mut self, text: &str) -> (Shared, C) {
        let shared: Shared = Shared::from(text);
        let number = C::next(self.strings.len(), &mut self.free);
        self.strings.insert(Shared::clone(&shared), number);
        (shared, number)
    }

    /// The shared copy of `text` and its number, if any entry holds it.
    fn get_numbered(&self, text: &str) -> Option<(&Shared, C)> {
        self.strings
            .get_key_value(text)
            .map(|(shared, number)| (shared, *number))
    }

    /// The shared copy of `text`, if any entry holds it.
    fn get(&self, text: &str) -> Option<Shared> {
        self.get_numbered(text)
            .map(|(shared, _)| Shared::clone(shared))
    }

    /// Forgets `text` once no entry holds it any more.
    fn release(&mut self, text: &str) {
        if let Some((shared, number)) = self.get_numbered(text) {
            if Shared::strong_count(shared) == Some(1) {
                self.strings.remove(text);
                self.free.push(number);
            }
        }
    }

    /// Forgets every string no entry holds any more ([`Interner::release`] for all at once).
    fn sweep(&mut self) {
        let free = &mut self.free;
        self.strings.retain(|shared, number| {
            let held = Shared::strong_count(shared) != Some(1);
            if !held {
                free.push(*number);
            }
            held
        });
    }
}

impl Interner<Code> {
    /// The code of `text`, if any entry holds it.
    pub(crate) fn code_of(&self, text: &str) -> Option<Code> {
        self.strings.get(text).copied()
    }

    /// Each code's string, by code (for reading a column back as strings).
    fn by_code(&self) -> Vec<Option<&str>> {
        let mut texts = vec![None; self.strings.len() + self.free.len() + 1];
        for (text, code) in &self.strings {
            texts[*code as usize] = Some(&**text);
        }
        texts
    }
}

/// A sortable date-time attribute: every live call, nulls included (as [`NULL_TIME`]).
pub(crate) type TimeIndex = ColumnOrder<i64>;

impl Null for i64 {
    fn null() -> i64 {
        NULL_TIME
    }
}

/// A sortable string attribute: every live call, nulls (`None`, first) included.
///
/// Its column holds each call's value as a string shared by every call that holds it; a value's
/// shared copy is found through the order, which orders the values, so it needs no table of its
/// strings.
pub(crate) type SortTextIndex = ColumnOrder<Option<Shared>>;

/// A filterable relationship's index: each call that has one, by the id of the resource it
/// relates to, as a column (call id -> related id) and the calls' ids in `(related id, id)`
/// order. A call without one is neither in the order nor (past a chunk's other calls) in the
/// column, so a range filter never finds it. Most relationships' ids are held by few calls each
/// (a prospect's, an opportunity's), where an entry of related id and call id took 16 bytes a
/// call: the order and the packed column take about 8.
pub(crate) type RelatedIndex = ColumnOrder<i64>;

/// The column value of a call without the relationship. Related ids are positive (the model
/// refuses any other), so none is taken for it.
pub(crate) const NULL_RELATED: i64 = NULL_TIME;

impl Null for Option<Shared> {
    fn null() -> Self {
        None
    }
}

/// A filter-only string attribute (or the tags): the calls with a value, one entry per value,
/// and for an attribute (one value per call) a column of each call's value.
#[derive(Default)]
pub(crate) struct TextIndex {
    /// `(value, id)` in value order.
    pub(crate) set: Grouped<Shared>,
    /// id -> value, for an attribute; `None` for the tags, which a call holds several of.
    ///
    /// A filter on such an attribute checks each candidate of another index against it: in the
    /// set that is a search of a tree of every call's entry, a third of a list's time at a
    /// million calls, where the column is one lookup. It holds each value's code
    /// ([`NO_CODE`] for none): one byte a call where a chunk's values are few, four where they
    /// are not ([`crate::column::Numbers`]), so that a million calls' column (1 to 4 MB) stays
    /// in the processor's cache where one of shared strings (16 MB) did not.
    pub(crate) col: Option<Column<Code>>,
    /// How many entries each value held by more than one has (a value held once is only in
    /// `strings`), so that the planner can tell a value too common to collect without walking
    /// its entries (a walk of up to ten thousand at a million calls per list). Values held once,
    /// most of them where values are nearly unique (uid, vendorCallId), cost nothing here.
    pub(crate) shared_counts: HashMap<Shared, usize, foldhash::fast::RandomState>,
    pub(crate) strings: Interner<Code>,
}

impl TextIndex {
    /// The index of an attribute, with its column.
    pub(crate) fn attribute() -> TextIndex {
        TextIndex {
            col: Some(Column::new(NO_CODE)),
            ..TextIndex::default()
        }
    }

    /// The index of these entries and strings (as the snapshot stores them, or a builder
    /// gathers them), with what is derived from the set: the column, for an attribute, and the
    /// counts. `strings` holds every value of the set, shared with its entries.
    pub(crate) fn from_set(
        set: Grouped<Shared>,
        strings: Interner<Code>,
        attribute: bool,
    ) -> TextIndex {
        let col = attribute.then(|| {
            let mut col = Column::new(NO_CODE);
            // The set holds each value's entries together: one lookup per value.
            let mut last: Option<(&Shared, Code)> = None;
            for (text, id) in &set {
                let code = match last {
                    Some((shared, code)) if Shared::ptr_eq(shared, text) => code,
                    _ => strings.code_of(text).unwrap_or(NO_CODE),
                };
                last = Some((text, code));
                col.set(id, code);
            }
            col
        });
        let mut index = TextIndex {
            set,
            col,
            shared_counts: HashMap::default(),
            strings,
        };
        index.count_values();
        index
    }

    /// Counts the entries of each value held more than once, from the set.
    fn count_values(&mut self) {
        let mut counts = HashMap::default();
        let mut entries = self.set.iter().peekable();
        while let Some((text, _)) = entries.next() {
            let mut count = 1;
            while entries
                .next_if(|(next, _)| Shared::ptr_eq(next, text) || *next == text)
                .is_some()
            {
                count += 1;
            }
            if count > 1 {
                counts.insert(Shared::clone(text), count);
            }
        }
        self.shared_counts = counts;
    }

    /// The bytes of the set, the column, the counts and the strings.
    fn heap_bytes(&self) -> usize {
        self.set.heap_bytes()
            + self.col.as_ref().map_or(0, Column::heap_bytes)
            + table_bytes::<(Shared, usize)>(self.shared_counts.capacity())
            + self.strings.heap_bytes()
    }

    /// How many entries hold `text`.
    pub(crate) fn count_of(&self, text: &str) -> usize {
        match self.shared_counts.get(text) {
            Some(count) => *count,
            None => usize::from(self.strings.get(text).is_some()),
        }
    }

    fn insert(&mut self, text: &str, id: u64) {
        let (shared, code) = match self.strings.get_numbered(text) {
            Some((shared, code)) => {
                let shared = Shared::clone(shared);
                *self
                    .shared_counts
                    .entry(Shared::clone(&shared))
                    .or_insert(1) += 1;
                (shared, code)
            }
            None => self.strings.insert_numbered(text),
        };
        if let Some(col) = &mut self.col {
            col.set(id, code);
        }
        self.set.insert((shared, id));
    }

    fn remove(&mut self, text: &str, id: u64) {
        if let Some(shared) = self.strings.get(text) {
            if self.set.remove(&(shared, id)) {
                if let Some(count) = self.shared_counts.get_mut(text) {
                    *count -= 1;
                    if *count <= 1 {
                        self.shared_counts.remove(text);
                    }
                }
            }
            // Before the release, which frees a string only once nothing else holds it.
            if let Some(col) = &mut self.col {
                col.set(id, NO_CODE);
            }
            self.strings.release(text);
        }
    }

    /// Whether call `id` holds `text`.
    pub(crate) fn contains(&self, text: &str, id: u64) -> bool {
        match &self.col {
            Some(col) => self
                .strings
                .code_of(text)
                .is_some_and(|code| col.get(id) == code),
            None => self
                .strings
                .get(text)
                .is_some_and(|shared| self.set.contains(&(shared, id))),
        }
    }

    /// The shared copy of `text`, to build range bounds from; `None` when no call holds it.
    pub(crate) fn shared(&self, text: &str) -> Option<Shared> {
        self.strings.get(text)
    }
}

impl SortTextIndex {
    /// Moves call `id` from `old` to `new` (`None`: not live; `Some(None)`: live without a
    /// value). The new string is a copy of its own: a chunk that codes its few values keeps the
    /// copy it already holds of an equal one, and a chunk of many values keeps the bytes. Looking
    /// for the index's own copy first was a second search of the order, each step a column read,
    /// to save one small allocation: a third of a create's index update.
    fn set_text(&mut self, id: u64, old: Option<Option<&str>>, new: Option<Option<&str>>) {
        let new = new.map(|text| text.map(Shared::from));
        self.set_value(id, old.is_some(), new);
    }

    /// A copy of `text`, to build range bounds from: the index's own where it shares one (a
    /// chunk that keeps its values' bytes has none to share, so a new one); `None` when no call
    /// holds it where it is looked for (see [`ColumnOrder::held_value`]: a filter then compares
    /// a copy of its own).
    pub(crate) fn shared(&self, text: &str) -> Option<Shared> {
        self.held_value(
            |value| value < TextRef::whole(text),
            |value| value == TextRef::whole(text),
        )
        .and_then(TextRef::to_shared)
    }
}

/// The change feed: each live call under the position of its latest event, in position order,
/// and each live call's latest position by id (a column, so that telling whether a stored view
/// is its call's latest state is one read, where a search of the feed took a tenth of a list
/// at a million calls). Positions start at 1, so 0 is a call that is not live.
pub(crate) struct Feed {
    /// The latest positions, and the calls in their order: positions are unique, so the order
    /// is the positions'.
    order: ColumnOrder<u64>,
}

/// A call that is not live has no latest position.
impl Null for u64 {
    fn null() -> u64 {
        0
    }
}

impl Default for Feed {
    fn default() -> Feed {
        Feed {
            order: ColumnOrder::new(),
        }
    }
}

/// Read back or built in position order: the column and the order at once.
impl FromIterator<(u64, u64)> for Feed {
    fn from_iter<I: IntoIterator<Item = (u64, u64)>>(by_position: I) -> Feed {
        Feed {
            order: by_position.into_iter().collect(),
        }
    }
}

impl Feed {
    /// How many calls it holds.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// The bytes of the column and the order.
    fn heap_bytes(&self) -> usize {
        self.order.heap_bytes()
    }

    /// Moves call `id` from position `before` to `after` (`None`: not live).
    fn move_call(&mut self, id: u64, before: Option<u64>, after: Option<u64>) {
        self.order.set_value(id, before.is_some(), after);
    }

    /// The position of live call `id`'s latest event.
    pub(crate) fn latest(&self, id: u64) -> Option<u64> {
        Some(self.order.col.get(id)).filter(|position| *position != 0)
    }

    /// `(position, id)` of every live call whose latest event is at `first` or after, in
    /// position order.
    pub(crate) fn since(&self, first: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.order.entries_within(Included((first, 0)), Unbounded)
    }

    /// `(position, id)` of every live call, in position order.
    pub(crate) fn entries(&self) -> impl ExactSizeIterator<Item = (u64, u64)> + '_ {
        self.order.entries()
    }
}

/// Every secondary index of the live calls.
pub(crate) struct Indexes {
    /// The live call ids.
    pub(crate) ids: LiveIds,
    /// The change feed: each live call under the position of its latest event.
    pub(crate) changes: Feed,
    /// The sortable date-times, in [`TIME_SORT`] order.
    pub(crate) times: [TimeIndex; TIME_SORT.len()],
    /// The sortable strings, in [`TEXT_SORT`] order.
    pub(crate) sort_texts: [SortTextIndex; TEXT_SORT.len()],
    /// The filter-only strings, in [`TEXT_FILTER`] order.
    pub(crate) texts: [TextIndex; TEXT_FILTER.len()],
    /// One entry per tag of each call.
    pub(crate) tags: TextIndex,
    /// `shouldRecordCall`.
    pub(crate) flags: Grouped<bool>,
    /// `note`, by [`note_hash`].
    pub(crate) notes: Grouped<u64>,
    /// The filterable relationships' ids, in [`FILTER_RELATIONS`] order.
    pub(crate) related: [RelatedIndex; FILTER_RELATIONS.len()],
}

impl Indexes {
    /// Empty indexes.
    pub(crate) fn new() -> Indexes {
        Indexes {
            ids: LiveIds::default(),
            changes: Feed::default(),
            times: std::array::from_fn(|_| TimeIndex::new()),
            sort_texts: std::array::from_fn(|_| SortTextIndex::new()),
            texts: std::array::from_fn(|_| TextIndex::attribute()),
            tags: TextIndex::default(),
            flags: Grouped::new(),
            notes: Grouped::new(),
            related: std::array::from_fn(|_| RelatedIndex::new()),
        }
    }

    /// Moves in the filter-only sets of `other`, built apart over the same calls.
    fn take_filters(&mut self, other: Indexes) {
        self.texts = other.texts;
        self.tags = other.tags;
        self.flags = other.flags;
        self.notes = other.notes;
        self.related = other.related;
    }

    /// Builds the indexes of these live calls at once (see [`IndexBuilder`]).
    #[cfg(test)]
    pub(crate) fn from_rows(rows: impl IntoIterator<Item = (u64, IndexRow)>) -> Indexes {
        let mut builder = IndexBuilder::default();
        for (id, row) in rows {
            builder.add(id, &row);
        }
        builder.finish()
    }

    /// The heap memory each index takes, estimated from what it holds (entries, columns' chunks,
    /// distinct strings and the tables that find them), by name.
    pub(crate) fn memory(&self) -> Vec<(String, usize)> {
        let mut out = vec![
            ("id".to_owned(), self.ids.heap_bytes()),
            ("changes".to_owned(), self.changes.heap_bytes()),
        ];
        for (field, index) in TIME_SORT.iter().zip(&self.times) {
            out.push((field.to_string(), index.heap_bytes()));
        }
        for (field, index) in TEXT_SORT.iter().zip(&self.sort_texts) {
            // Each distinct value's shared string, once (by address: a string is shared by
            // the chunks holding it), found in the chunks' lists rather than by a walk of every
            // call.
            let mut seen = std::collections::HashSet::new();
            let texts: usize = index
                .col
                .chunk_slots()
                .flat_map(Dictionary::held)
                .filter(|text| seen.insert(text.as_ptr()))
                .map(|text| arc_str_bytes(text))
                .sum();
            let bytes = index.heap_bytes() + texts;
            out.push((field.to_string(), bytes));
        }
        for (field, index) in TEXT_FILTER.iter().zip(&self.texts) {
            out.push((field.to_string(), index.heap_bytes()));
        }
        out.push(("tags".to_owned(), self.tags.heap_bytes()));
        out.push(("shouldRecordCall".to_owned(), self.flags.heap_bytes()));
        out.push(("note".to_owned(), self.notes.heap_bytes()));
        for (relation, index) in FILTER_RELATIONS.iter().zip(&self.related) {
            out.push((relation.to_string(), index.heap_bytes()));
        }
        out
    }

    /// How many calls are live.
    pub(crate) fn live(&self) -> usize {
        self.ids.len()
    }

    /// Moves call `id` from `old` to `new` (`None`: not live), touching only the entries whose
    /// value changed.
    pub(crate) fn update(&mut self, id: u64, old: Option<&IndexRow>, new: Option<&IndexRow>) {
        if old == new {
            return;
        }
        match (old.is_some(), new.is_some()) {
            (false, true) => {
                self.ids.insert(id);
            }
            (true, false) => {
                self.ids.remove(id);
            }
            _ => {}
        }
        let (before, after) = (old.map(|r| r.position), new.map(|r| r.position));
        if before != after {
            self.changes.move_call(id, before, after);
        }
        for (i, index) in self.times.iter_mut().enumerate() {
            let (before, after) = (old.map(|r| r.times[i]), new.map(|r| r.times[i]));
            if before != after {
                index.set_value(id, before.is_some(), after);
            }
        }
        for (i, index) in self.sort_texts.iter_mut().enumerate() {
            let before = old.map(|r| r.sort_text(i));
            let after = new.map(|r| r.sort_text(i));
            if before != after {
                index.set_text(id, before, after);
            }
        }
        for (i, index) in self.texts.iter_mut().enumerate() {
            let before = old.and_then(|r| r.text(i));
            let after = new.and_then(|r| r.text(i));
            if before != after {
                if let Some(text) = before {
                    index.remove(text, id);
                }
                if let Some(text) = after {
                    index.insert(text, id);
                }
            }
        }
        let before = old.into_iter().flat_map(IndexRow::tags);
        let after = new.into_iter().flat_map(IndexRow::tags);
        if !before.clone().eq(after.clone()) {
            for tag in before {
                self.tags.remove(tag, id);
            }
            for tag in after {
                self.tags.insert(tag, id);
            }
        }
        let (before, after) = (old.and_then(|r| r.flag), new.and_then(|r| r.flag));
        if before != after {
            if let Some(flag) = before {
                self.flags.remove(&(flag, id));
            }
            if let Some(flag) = after {
                self.flags.insert((flag, id));
            }
        }
        let (before, after) = (old.and_then(|r| r.note), new.and_then(|r| r.note));
        if before != after {
            if let Some(hash) = before {
                self.notes.remove(&(hash, id));
            }
            if let Some(hash) = after {
                self.notes.insert((hash, id));
            }
        }
        let no_related: &[(u8, i64)] = &[];
        let before = old.map_or(no_related, |r| &r.related);
        let after = new.map_or(no_related, |r| &r.related);
        if before != after {
            // A relationship is to one resource: a call has at most one id per slot.
            for (slot, index) in self.related.iter_mut().enumerate() {
                let held = |pairs: &[(u8, i64)]| {
                    pairs
                        .iter()
                        .find(|(at, _)| usize::from(*at) == slot)
                        .map(|(_, target)| *target)
                };
                let (was, now) = (held(before), held(after));
                if was != now {
                    index.set_value(id, was.is_some(), now);
                }
            }
        }
    }

    /// Adds a line to `out` for every entry that differs between these indexes (`live`) and
    /// `rebuilt`.
    pub(crate) fn diff(&self, rebuilt: &Indexes, out: &mut Differences) {
        diff_sets(
            "live call ids",
            self.ids.iter(),
            rebuilt.ids.iter(),
            out,
            |id| format!("call {id}"),
        );
        diff_sets(
            "change feed",
            self.changes.entries(),
            rebuilt.changes.entries(),
            out,
            |(position, id)| format!("call {id} at position {position}"),
        );
        diff_columns(
            "change feed's latest positions",
            &self.changes.order.col,
            &rebuilt.changes.order.col,
            out,
            |position| position.to_string(),
        );
        for (i, field) in TIME_SORT.iter().enumerate() {
            let (live, fresh) = (&self.times[i], &rebuilt.times[i]);
            let name = format!("{field} index");
            diff_sets(
                &name,
                live.entries(),
                fresh.entries(),
                out,
                |(millis, id)| format!("call {id} at {}", Millis(*millis)),
            );
            diff_columns(
                &format!("{field} column"),
                &live.col,
                &fresh.col,
                out,
                |v| Millis(*v).to_string(),
            );
        }
        for (i, field) in TEXT_SORT.iter().enumerate() {
            let (live, fresh) = (&self.sort_texts[i], &rebuilt.sort_texts[i]);
            let name = format!("{field} index");
            diff_sets(&name, live.entries(), fresh.entries(), out, |(text, id)| {
                format!("call {id} at {text}")
            });
            diff_columns(
                &format!("{field} column"),
                &live.col,
                &fresh.col,
                out,
                |v| Text(v.as_deref()).to_string(),
            );
        }
        for (i, field) in TEXT_FILTER.iter().enumerate() {
            let name = format!("{field} index");
            diff_sets(
                &name,
                &self.texts[i].set,
                &rebuilt.texts[i].set,
                out,
                |(t, id)| format!("call {id} at {}", Text(Some(t))),
            );
            diff_coded_columns(
                &format!("{field} column"),
                &self.texts[i],
                &rebuilt.texts[i],
                out,
            );
            diff_counts(
                &format!("{field} counts"),
                &self.texts[i],
                &rebuilt.texts[i],
                out,
            );
        }
        diff_counts("tags counts", &self.tags, &rebuilt.tags, out);
        diff_sets(
            "tags index",
            &self.tags.set,
            &rebuilt.tags.set,
            out,
            |(t, id)| format!("call {id} at {}", Text(Some(t))),
        );
        diff_sets(
            "shouldRecordCall index",
            &self.flags,
            &rebuilt.flags,
            out,
            |(flag, id)| format!("call {id} at {flag}"),
        );
        diff_sets(
            "note index",
            &self.notes,
            &rebuilt.notes,
            out,
            |(hash, id)| format!("call {id} at note hash {hash:016x}"),
        );
        for (i, relation) in FILTER_RELATIONS.iter().enumerate() {
            let name = format!("{relation} id index");
            diff_sets(
                &name,
                self.related[i].entries(),
                rebuilt.related[i].entries(),
                out,
                |(t, id)| format!("call {id} at {t}"),
            );
        }
    }
}

/// Builds indexes from many calls at once: entries are gathered per set, and each set is sorted
/// once and packed at the end, which is several times faster than inserting entry by entry and
/// fills the sets' chunks.
pub(crate) struct IndexBuilder {
    part: Part,
    indexes: Indexes,
    ids: Vec<u64>,
    changes: Vec<(u64, u64)>,
    times: [Vec<(i64, u64)>; TIME_SORT.len()],
    sort_texts: [Vec<(Option<Shared>, u64)>; TEXT_SORT.len()],
    /// The sortable strings' shared copies while the sets are gathered (a finished
    /// [`SortTextIndex`] keeps the bytes, or a coded chunk's copy, in its column).
    sort_strings: [SortStrings; TEXT_SORT.len()],
    texts: [Vec<(Shared, u64)>; TEXT_FILTER.len()],
    tags: Vec<(Shared, u64)>,
    flags: Vec<(bool, u64)>,
    notes: Vec<(u64, u64)>,
    related: [Vec<(i64, u64)>; FILTER_RELATIONS.len()],
}

/// A sortable string's shared copies while an [`IndexBuilder`] gathers its set: one per value
/// while its values repeat (a state, an outcome), so that a value many calls hold is held once;
/// a copy per call once most of its first [`SortStrings::SAMPLE`] values were new (numbers,
/// recording URLs), which a table of every value would only make slower to gather (a lookup
/// that misses the caches, then an insert, per call: 7% of a rebuild's CPU at a million calls)
/// and larger at its peak. Equal values in copies of their own are still one value to the set,
/// which compares bytes where pointers differ.
#[derive(Default)]
struct SortStrings {
    interner: Interner,
    /// Values looked up, and of those new, until the choice is made.
    looked_up: u32,
    new: u32,
    /// Each value gets its own copy.
    distinct: bool,
}

impl SortStrings {
    /// Values looked up before choosing whether to go on interning. In this crate's tests few,
    /// so that their builds take both ways.
    const SAMPLE: u32 = if cfg!(test) { 8 } else { 4096 };

    fn shared(&mut self, text: &str) -> Shared {
        if self.distinct {
            return Shared::from(text);
        }
        if self.looked_up == Self::SAMPLE {
            return self.interner.intern(text);
        }
        let held = self.interner.strings.len();
        let shared = self.interner.intern(text);
        self.looked_up += 1;
        self.new += u32::from(self.interner.strings.len() > held);
        if self.looked_up == Self::SAMPLE && self.new > Self::SAMPLE / 2 {
            self.distinct = true;
            // The copies handed out stay; the table of them is let go.
            self.interner = Interner::default();
        }
        shared
    }
}

/// The sets an [`IndexBuilder`] fills, so that several threads can build one `Indexes` over the
/// same calls, each a part of the sets ([`SplitBuilder`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// Every set.
    All,
    /// The ids, the change feed and the sortable date-times' sets and columns.
    Times,
    /// The sortable strings' sets, columns and strings: the first half of [`TEXT_SORT`] (`0`) or
    /// the rest (`1`).
    SortTexts(u8),
    /// The filter-only strings, the tags, the flag, the note and the relationships.
    Filters,
}

impl Default for IndexBuilder {
    fn default() -> Self {
        IndexBuilder::new(Part::All)
    }
}

/// Builds indexes on four threads, each filling a part of the sets from the same calls: the
/// sortable strings (interned, then sorted by their bytes) cost about as much as the rest
/// together, so with the sets in two parts one thread went on alone for seconds after the other
/// at a million calls.
pub(crate) struct SplitBuilder {
    times: IndexBuilder,
    sort_texts: [IndexBuilder; 2],
    filters: IndexBuilder,
}

impl Default for SplitBuilder {
    fn default() -> Self {
        SplitBuilder {
            times: IndexBuilder::new(Part::Times),
            sort_texts: [0, 1].map(|half| IndexBuilder::new(Part::SortTexts(half))),
            filters: IndexBuilder::new(Part::Filters),
        }
    }
}

impl SplitBuilder {
    /// Adds the live calls `rows()` yields (each id once, over all calls added).
    pub(crate) fn add_all<'a, I, R>(&mut self, rows: impl Fn() -> I + Sync)
    where
        I: Iterator<Item = (u64, &'a R)>,
        R: Indexed + Sync + 'a,
    {
        let Self {
            times,
            sort_texts: [head, tail],
            filters,
        } = self;
        let rows = &rows;
        both(
            || {
                both(
                    || rows().for_each(|(id, row)| times.add(id, row)),
                    || rows().for_each(|(id, row)| head.add(id, row)),
                )
            },
            || {
                both(
                    || rows().for_each(|(id, row)| tail.add(id, row)),
                    || rows().for_each(|(id, row)| filters.add(id, row)),
                )
            },
        );
    }

    /// Forgets the calls `ids` names, every entry and column value added for them, so that
    /// their final rows can be added instead. A replay adds each call's row as a chunk leaves it,
    /// and the rows of calls a later chunk changed again are replaced once, at the end.
    pub(crate) fn forget(&mut self, ids: &IdSet) {
        if ids.is_empty() {
            return;
        }
        let Self {
            times,
            sort_texts: [head, tail],
            filters,
        } = self;
        both(
            || both(|| times.forget(ids), || head.forget(ids)),
            || both(|| tail.forget(ids), || filters.forget(ids)),
        );
    }

    /// How many calls were added.
    pub(crate) fn len(&self) -> usize {
        self.times.len()
    }

    /// The indexes of every call added.
    pub(crate) fn finish(self) -> Indexes {
        let Self {
            times,
            sort_texts: [head, tail],
            filters,
        } = self;
        let ((mut indexes, head), (tail, filters)) = both(
            || both(|| times.finish(), || head.finish()),
            || both(|| tail.finish(), || filters.finish()),
        );
        for (half, built) in [(0, head), (1, tail)] {
            for (i, index) in built.sort_texts.into_iter().enumerate() {
                if sort_text_half(i) == half {
                    indexes.sort_texts[i] = index;
                }
            }
        }
        indexes.take_filters(filters);
        indexes
    }
}

/// Which half of [`TEXT_SORT`] the sortable string `i` is built in ([`Part::SortTexts`]).
fn sort_text_half(i: usize) -> u8 {
    u8::from(i >= TEXT_SORT.len() / 2)
}

/// Runs `a` here and `b` on another thread.
fn both<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    std::thread::scope(|scope| {
        let b = scope.spawn(b);
        let a = a();
        match b.join() {
            Ok(b) => (a, b),
            // A panic there is a bug, not bad input: keep its behaviour on one thread.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

impl IndexBuilder {
    /// A builder of `part` of the sets.
    pub(crate) fn new(part: Part) -> Self {
        IndexBuilder {
            part,
            indexes: Indexes::new(),
            ids: Vec::new(),
            changes: Vec::new(),
            times: Default::default(),
            sort_texts: Default::default(),
            sort_strings: Default::default(),
            texts: Default::default(),
            tags: Vec::new(),
            flags: Vec::new(),
            notes: Vec::new(),
            related: Default::default(),
        }
    }
}

impl IndexBuilder {
    /// Adds a live call (each id once).
    pub(crate) fn add(&mut self, id: u64, row: &impl Indexed) {
        if matches!(self.part, Part::All | Part::Times) {
            self.add_times(id, row);
        }
        match self.part {
            Part::All => self.add_sort_texts(id, row, None),
            Part::SortTexts(half) => self.add_sort_texts(id, row, Some(half)),
            Part::Times | Part::Filters => {}
        }
        if matches!(self.part, Part::All | Part::Filters) {
            self.add_filters(id, row);
        }
    }

    fn add_times(&mut self, id: u64, row: &impl Indexed) {
        let indexes = &mut self.indexes;
        self.ids.push(id);
        self.changes.push((row.position(), id));
        for (i, times) in self.times.iter_mut().enumerate() {
            let millis = row.time(i);
            times.push((millis, id));
            indexes.times[i].col.set(id, millis);
        }
    }

    /// Adds the sortable strings, of one half (`Some`) or all.
    fn add_sort_texts(&mut self, id: u64, row: &impl Indexed, half: Option<u8>) {
        let indexes = &mut self.indexes;
        for (i, index) in indexes.sort_texts.iter_mut().enumerate() {
            if half.is_some_and(|half| sort_text_half(i) != half) {
                continue;
            }
            let shared = row.sort_text(i).map(|t| self.sort_strings[i].shared(t));
            index.col.set(id, shared.clone());
            self.sort_texts[i].push((shared, id));
        }
    }

    fn add_filters(&mut self, id: u64, row: &impl Indexed) {
        let indexes = &mut self.indexes;
        for (i, index) in indexes.texts.iter_mut().enumerate() {
            if let Some(text) = row.text(i) {
                self.texts[i].push((index.strings.intern(text), id));
            }
        }
        for tag in row.tags() {
            self.tags.push((indexes.tags.strings.intern(tag), id));
        }
        if let Some(flag) = row.flag() {
            self.flags.push((flag, id));
        }
        if let Some(note) = row.note() {
            self.notes.push((note, id));
        }
        for (slot, target) in row.related() {
            self.related[slot as usize].push((target, id));
            indexes.related[slot as usize].col.set(id, target);
        }
    }

    /// How many calls were added (by a builder of the times' part or of all).
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// [`SplitBuilder::forget`] for this builder's part of the sets.
    fn forget(&mut self, ids: &IdSet) {
        let kept = |id: &u64| !ids.contains(id);
        self.ids.retain(kept);
        self.changes.retain(|(_, id)| kept(id));
        for entries in &mut self.times {
            entries.retain(|(_, id)| kept(id));
        }
        for entries in &mut self.sort_texts {
            entries.retain(|(_, id)| kept(id));
        }
        for entries in &mut self.texts {
            entries.retain(|(_, id)| kept(id));
        }
        self.tags.retain(|(_, id)| kept(id));
        self.flags.retain(|(_, id)| kept(id));
        self.notes.retain(|(_, id)| kept(id));
        for entries in &mut self.related {
            entries.retain(|(_, id)| kept(id));
        }
        // The columns filled while adding: the other columns are derived from the sets at the
        // end.
        let indexes = &mut self.indexes;
        for id in ids {
            for index in &mut indexes.times {
                index.col.set(*id, NULL_TIME);
            }
            for index in &mut indexes.sort_texts {
                index.col.set(*id, None);
            }
            for index in &mut indexes.related {
                index.col.set(*id, NULL_RELATED);
            }
        }
        for strings in &mut self.sort_strings {
            strings.interner.sweep();
        }
        for index in &mut indexes.texts {
            index.strings.sweep();
        }
        indexes.tags.strings.sweep();
    }

    /// The indexes of every call added.
    pub(crate) fn finish(self) -> Indexes {
        let mut indexes = self.indexes;
        indexes.ids = self.ids.into_iter().collect();
        let mut changes = self.changes;
        sort_entries(&mut changes);
        indexes.changes = changes.into_iter().collect();
        for (index, mut entries) in indexes.times.iter_mut().zip(self.times) {
            sort_entries(&mut entries);
            index.order_from(entries);
        }
        for (index, mut entries) in indexes.sort_texts.iter_mut().zip(self.sort_texts) {
            sort_text_entries(&mut entries);
            index.order_from(entries);
        }
        // The column and the counts are derived from each set, as when the snapshot is read.
        let from = |index: &mut TextIndex, mut entries: Vec<(Shared, u64)>, attribute: bool| {
            sort_shared(&mut entries);
            let strings = std::mem::take(&mut index.strings);
            *index = TextIndex::from_set(entries.into_iter().collect(), strings, attribute);
        };
        for (index, entries) in indexes.texts.iter_mut().zip(self.texts) {
            from(index, entries, true);
        }
        from(&mut indexes.tags, self.tags, false);
        indexes.flags = self.flags.into_iter().collect();
        indexes.notes = self.notes.into_iter().collect();
        for (index, mut entries) in indexes.related.iter_mut().zip(self.related) {
            sort_entries(&mut entries);
            index.order_from(entries);
        }
        indexes
    }
}

/// Orders two interned strings: one shared copy is one value, so equal values compare by
/// pointer, without reading the bytes (most neighbours in a set share their value).
pub(crate) fn compare_shared(a: &Shared, b: &Shared) -> Ordering {
    if Shared::ptr_eq(a, b) {
        Ordering::Equal
    } else {
        a.cmp(b)
    }
}

/// Sorts `(value, id)` entries as their set orders them, before the set is built from them
/// (a set built from entries in order only checks that they are): a plain sort compares every
/// pair by its bytes.
fn sort_shared(entries: &mut [(Shared, u64)]) {
    sort_by_value_then_id(
        entries,
        |(_, id)| *id,
        |(a, _), (b, _)| compare_shared(a, b),
    );
}

/// A hasher for maps keyed by call id: ids are trusted integers, so a multiply-rotate mix (as in
/// rustc's FxHash) is enough, and much cheaper than SipHash on the hot paths that look a call up
/// per event or per column read.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

const ID_HASH_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(ID_HASH_SEED);
    }
}

/// A hash map keyed by call id.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// A set of call ids.
pub type IdSet = std::collections::HashSet<u64, BuildHasherDefault<IdHasher>>;

/// A capped list of differences found by `verify`.
pub(crate) struct Differences {
    pub(crate) lines: Vec<String>,
    pub(crate) more: usize,
    cap: usize,
}

impl Differences {
    pub(crate) fn new(cap: usize) -> Differences {
        Differences {
            lines: Vec::new(),
            more: 0,
            cap,
        }
    }

    pub(crate) fn push(&mut self, line: String) {
        if self.lines.len() < self.cap {
            self.lines.push(line);
        } else {
            self.more += 1;
        }
    }

    /// The lines, with a last one counting those left out.
    pub(crate) fn finish(mut self) -> Vec<String> {
        if self.more > 0 {
            self.lines
                .push(format!("... and {} more differences", self.more));
        }
        self.lines
    }
}

/// Reports the entries only one of two ordered sets holds.
fn diff_sets<T: Ord>(
    name: &str,
    live: impl IntoIterator<Item = T>,
    rebuilt: impl IntoIterator<Item = T>,
    out: &mut Differences,
    show: impl Fn(&T) -> String,
) {
    let (mut a, mut b) = (live.into_iter().peekable(), rebuilt.into_iter().peekable());
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.cmp(y),
        };
        match order {
            Ordering::Equal => {
                a.next();
                b.next();
            }
            Ordering::Less => {
                if let Some(x) = a.next() {
                    out.push(format!(
                        "{name}: {} is in the live index but not in the rebuilt one",
                        show(&x)
                    ));
                }
            }
            Ordering::Greater => {
                if let Some(y) = b.next() {
                    out.push(format!(
                        "{name}: {} is in the rebuilt index but not in the live one",
                        show(&y)
                    ));
                }
            }
        }
    }
}

/// Every key of either side, once each, in order.
fn keys_of_both<K: Ord>(live: impl Iterator<Item = K>, rebuilt: impl Iterator<Item = K>) -> Vec<K> {
    let mut keys: Vec<K> = live.chain(rebuilt).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Adds a line for every value whose count of entries differs between `live` and `rebuilt`.
fn diff_counts(name: &str, live: &TextIndex, rebuilt: &TextIndex, out: &mut Differences) {
    let values = keys_of_both(live.shared_counts.keys(), rebuilt.shared_counts.keys());
    for value in values {
        let (a, b) = (live.count_of(value), rebuilt.count_of(value));
        if a != b {
            out.push(format!(
                "{name}: {} is counted {a} times live but {b} when rebuilt",
                Text(Some(value))
            ));
        }
    }
}

/// Reports the ids whose column values differ.
fn diff_columns<T: Cell>(
    name: &str,
    live: &Column<T>,
    rebuilt: &Column<T>,
    out: &mut Differences,
    show: impl Fn(&T) -> String,
) {
    diff_columns_as(name, (live, T::clone), (rebuilt, T::clone), out, show);
}

/// Reports the ids whose column values differ once each side's are read as `V` (a coded
/// column's codes as the strings they name in its own index).
fn diff_columns_as<T: Cell, V: PartialEq>(
    name: &str,
    (live, live_value): (&Column<T>, impl Fn(&T) -> V),
    (rebuilt, rebuilt_value): (&Column<T>, impl Fn(&T) -> V),
    out: &mut Differences,
    show: impl Fn(&V) -> String,
) {
    let ids = keys_of_both(
        live.non_null().map(|(id, _)| id),
        rebuilt.non_null().map(|(id, _)| id),
    );
    for id in ids {
        let (a, b) = (
            T::lend(live.get(id), &live_value),
            T::lend(rebuilt.get(id), &rebuilt_value),
        );
        if a != b {
            out.push(format!(
                "{name}: call {id} is {} live but {} when rebuilt",
                show(&a),
                show(&b)
            ));
        }
    }
}

/// Appends where two indexes' coded columns name different strings (their codes differ
/// wherever values came and went in another order).
fn diff_coded_columns(name: &str, live: &TextIndex, rebuilt: &TextIndex, out: &mut Differences) {
    let (Some(live_col), Some(rebuilt_col)) = (&live.col, &rebuilt.col) else {
        return;
    };
    let (live_texts, rebuilt_texts) = (live.strings.by_code(), rebuilt.strings.by_code());
    diff_columns_as(
        name,
        (live_col, |code: &Code| text_of(&live_texts, *code)),
        (rebuilt_col, |code: &Code| text_of(&rebuilt_texts, *code)),
        out,
        |text| Text(*text).to_string(),
    );
}

/// The string of `code` in a table from [`Interner::by_code`].
fn text_of<'a>(texts: &[Option<&'a str>], code: Code) -> Option<&'a str> {
    texts.get(code as usize).copied().flatten()
}

/// Shows a time column value.
struct Millis(i64);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == NULL_TIME {
            f.write_str("null")
        } else {
            write!(f, "{}", Timestamp::from_millis(self.0))
        }
    }
}

/// Shows a string value, or null.
struct Text<'a>(Option<&'a str>);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(text) => write!(f, "{text:?}"),
            None => f.write_str("null"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        sort_shared, Dictionary, Differences, IndexRow, Indexed, Indexes, Interner, Shared,
        SortTextIndex, TextIndex, TextRef, FILTER_RELATIONS, NO_CODE, TEXT_FILTER, TEXT_SORT,
        TIME_SORT,
    };
    use call_model::{AttrValue, Call, Field, RelValue, ResourceRef, Timestamp};

    #[test]
    fn a_sortable_strings_values_are_found_and_shared() {
        let mut index = SortTextIndex::new();
        // Twelve values held by 70 calls each, one held by a single call, and calls with none.
        let values: Vec<String> = (0..12).map(|n| format!("value {n}")).collect();
        let mut id = 0;
        for value in &values {
            for _ in 0..70 {
                id += 1;
                index.set_text(id, None, Some(Some(value)));
            }
        }
        index.set_text(id + 1, None, Some(Some("alone")));
        index.set_text(id + 2, None, Some(None));
        for value in &values {
            let shared = index.shared(value).expect("a held value is found");
            assert_eq!(&*shared, value);
            // The one shared copy: the column holds it too.
            let id = 1 + 70 * values.iter().position(|v| v == value).unwrap() as u64;
            assert!(
                matches!(index.col.get(id), TextRef::Held(held) if Shared::ptr_eq(held, &shared))
            );
        }
        assert_eq!(index.shared("alone").as_deref(), Some("alone"));
        assert_eq!(index.shared("value 99"), None);
        // Moving a call from one value to another keeps both found.
        index.set_text(1, Some(Some("value 0")), Some(Some("alone")));
        assert!(index.shared("value 0").is_some() && index.shared("alone").is_some());
        assert_eq!(index.len() as u64, id + 2);
    }

    /// Calls moved at random between nearly unique strings, shared ones and null (chunks that
    /// keep their values' bytes and coded ones) agree with a set of `(value, id)`: the walk in
    /// order from either end, ranges by value, and the shared copy of a held value.
    #[test]
    fn a_sortable_strings_moves_agree_with_a_set_of_entries_whatever_its_chunks_keep() {
        use std::collections::{BTreeMap, BTreeSet};
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let mut index = SortTextIndex::new();
        let mut model: BTreeSet<(Option<String>, u64)> = BTreeSet::new();
        let mut held: BTreeMap<u64, Option<String>> = BTreeMap::new();
        let text = |n: u64| match n % 9 {
            0 => None,
            1 => Some("Answered".to_owned()),
            2 => Some(format!("+1415555{:04}", n % 10_000)),
            3 => Some(format!("https://réc.example.com/{}", n % 5_000)),
            _ => Some(format!("https://rec.example.com/calls/{}.mp3", n % 50_000)),
        };
        for (step, n) in crate::sorted_set::tests::numbers(21)
            .take(30_000)
            .enumerate()
        {
            let id = 1 + (n >> 40) % 3_000;
            let new = (n % 13 != 0).then(|| text(n >> 8));
            let old = held.get(&id).cloned();
            index.set_text(
                id,
                old.as_ref().map(|text| text.as_deref()),
                new.as_ref().map(|text| text.as_deref()),
            );
            if let Some(old) = old {
                model.remove(&(old, id));
            }
            match new {
                Some(text) => {
                    model.insert((text.clone(), id));
                    held.insert(id, text);
                }
                None => {
                    held.remove(&id);
                }
            }
            if step % 5_000 != 4_999 {
                continue;
            }
            let owned =
                |(text, id): (TextRef<'_>, u64)| (text.to_shared().map(|t| t.to_string()), id);
            assert!(index.entries().map(owned).eq(model.iter().cloned()));
            assert!(index
                .entries()
                .rev()
                .map(owned)
                .eq(model.iter().rev().cloned()));
            for (id, text) in &held {
                let want = text.as_deref().map_or(TextRef::Null, TextRef::whole);
                assert_eq!(index.col.get(*id), want, "call {id}");
                if let Some(text) = text {
                    assert_eq!(index.shared(text).as_deref(), Some(text.as_str()));
                }
            }
            let (lo, hi) = (
                "https://rec.example.com/calls/2",
                "https://rec.example.com/calls/4",
            );
            let got: Vec<_> = index
                .entries_within(
                    Included((Some(Shared::from(lo)), 0)),
                    Excluded((Some(Shared::from(hi)), 0)),
                )
                .map(owned)
                .collect();
            let want: Vec<_> = model
                .range((Some(lo.to_owned()), 0)..(Some(hi.to_owned()), 0))
                .cloned()
                .collect();
            assert_eq!(got, want, "step {step}");
            let nulls = index
                .entries_within(Unbounded, Included((None, u64::MAX)))
                .count();
            assert_eq!(
                nulls,
                model.iter().take_while(|(text, _)| text.is_none()).count()
            );
        }
        assert!(index
            .col
            .chunk_slots()
            .all(|slots| matches!(slots, Dictionary::Inline(_))));
    }

    #[test]
    fn a_rows_strings_read_back_as_the_calls_values_nulls_and_empty_strings_apart() {
        let mut call = Call {
            id: 7,
            version: 1,
            position: 9,
            attributes: Default::default(),
            relationships: Default::default(),
            data_connections: Vec::new(),
        };
        let bare = IndexRow::of(&call);
        for (i, field) in TEXT_SORT.iter().chain(TEXT_FILTER.iter()).enumerate() {
            // Every other one set, the first of them to the empty string.
            if i % 2 == 0 {
                let text = if i == 0 {
                    String::new()
                } else {
                    format!("v{i}é")
                };
                call.attributes.insert(*field, AttrValue::Text(text.into()));
            }
        }
        let tags = ["b", "", "a", "b"].map(String::from).to_vec();
        call.attributes.insert(
            Field::Tags,
            AttrValue::Tags(tags.into_iter().map(Into::into).collect()),
        );
        call.attributes.insert(
            TIME_SORT[1],
            AttrValue::Time(Timestamp::from_millis(86_400_000)),
        );
        call.attributes
            .insert(Field::ShouldRecordCall, AttrValue::Bool(false));
        call.attributes
            .insert(Field::Note, AttrValue::Text("a note".into()));
        let target = ResourceRef {
            kind: "prospect".into(),
            id: 42,
        };
        call.relationships
            .insert(FILTER_RELATIONS[0], RelValue::One(target));
        let row = IndexRow::of(&call);
        for (i, field) in TEXT_SORT.iter().enumerate() {
            assert_eq!(row.sort_text(i), call.text(*field), "{field:?}");
            assert_eq!(bare.sort_text(i), None);
        }
        for (i, field) in TEXT_FILTER.iter().enumerate() {
            assert_eq!(row.text(i), call.text(*field), "{field:?}");
            assert_eq!(bare.text(i), None);
        }
        assert_eq!(row.sort_text(0), Some(""));
        assert_eq!(row.tags().collect::<Vec<_>>(), ["", "a", "b"]);
        assert_eq!(bare.tags().count(), 0);
        assert_ne!(row, bare);
        // The builder reads a call as it reads the call's row.
        for (row, call) in [(&row, &call)] {
            assert_eq!(Indexed::position(row), Indexed::position(call));
            for i in 0..TIME_SORT.len() {
                assert_eq!(Indexed::time(row, i), Indexed::time(call, i));
            }
            for i in 0..TEXT_SORT.len() {
                assert_eq!(Indexed::sort_text(row, i), Indexed::sort_text(call, i));
            }
            for i in 0..TEXT_FILTER.len() {
                assert_eq!(Indexed::text(row, i), Indexed::text(call, i));
            }
            assert!(Indexed::tags(row).eq(Indexed::tags(call)));
            assert_eq!(Indexed::flag(row), Indexed::flag(call));
            assert_eq!(Indexed::note(row), Indexed::note(call));
            assert!(Indexed::related(row).eq(Indexed::related(call)));
        }
    }

    #[test]
    fn shared_entries_sort_by_value_then_id_in_any_order_they_come() {
        let values: Vec<Shared> = ["b", "a", "c", "a\0", ""].map(Shared::from).to_vec();
        let mut numbers = crate::sorted_set::tests::numbers(0x2545_f491_4f6c_dd1d);
        for round in 0..200u64 {
            let mut entries: Vec<(Shared, u64)> = (0..30)
                .map(|_| {
                    let n = numbers.next().unwrap_or_default();
                    // Copies of their own too, as a build that stopped interning holds them.
                    let value = &values[(n % 5) as usize];
                    let value = if n.is_multiple_of(3) {
                        Shared::from(&**value)
                    } else {
                        value.clone()
                    };
                    (value, (n >> 8) % 12)
                })
                .collect();
            if round % 2 == 0 {
                entries.sort_by_key(|(_, id)| *id);
            }
            let mut expected = entries.clone();
            expected.sort();
            sort_shared(&mut entries);
            assert_eq!(entries, expected, "round {round}");
        }
    }

    #[test]
    fn a_build_that_stops_interning_nearly_unique_strings_equals_the_updated_indexes() {
        // Far more calls than the builder samples: the first sortable string is new in nearly
        // every call (its values are copied per call after the sample), the second one of three.
        let rows: Vec<(u64, IndexRow)> = (1..=300u64)
            .map(|id| {
                let mut call = Call {
                    id,
                    version: 1,
                    position: id,
                    attributes: Default::default(),
                    relationships: Default::default(),
                    data_connections: Vec::new(),
                };
                // Every tenth value repeats the one before it.
                let number = id - u64::from(id % 10 == 0);
                call.attributes.insert(
                    TEXT_SORT[0],
                    AttrValue::Text(format!("+1206555{number:04}").into()),
                );
                call.attributes.insert(
                    TEXT_SORT[1],
                    AttrValue::Text(format!("kind {}", id % 3).into()),
                );
                (id, IndexRow::of(&call))
            })
            .collect();
        let built = Indexes::from_rows(rows.iter().cloned());
        let mut updated = Indexes::new();
        for (id, row) in &rows {
            updated.update(*id, None, Some(row));
        }
        let mut differences = Differences::new(10);
        updated.diff(&built, &mut differences);
        assert!(differences.lines.is_empty(), "{:?}", differences.lines);
        assert_eq!(
            built.sort_texts[0].col.get(20),
            TextRef::whole("+12065550019")
        );
        assert_eq!(built.sort_texts[1].col.get(20), TextRef::whole("kind 2"));
    }

    /// `index` built back from its set, as the snapshot reads it.
    fn rebuilt_from(index: &TextIndex) -> TextIndex {
        let mut strings = Interner::default();
        let set = index
            .set
            .iter()
            .map(|(text, id)| (strings.intern(text), id))
            .collect();
        TextIndex::from_set(set, strings, true)
    }

    #[test]
    fn an_attributes_column_and_counts_follow_its_set_and_let_go_of_unused_values() {
        let mut index = TextIndex::attribute();
        index.insert("inbound", 1);
        index.insert("inbound", 2);
        assert!(index.contains("inbound", 1) && !index.contains("outbound", 1));
        // Call 1 changes its value, call 2 goes.
        index.remove("inbound", 1);
        index.insert("outbound", 1);
        index.remove("inbound", 2);
        assert!(index.contains("outbound", 1) && !index.contains("inbound", 2));
        assert!(index.strings.get("inbound").is_none(), "no call holds it");
        let col = index.col.as_ref().expect("an attribute's column");
        assert_eq!(col.get(2), NO_CODE);
        assert_eq!(
            index.strings.free,
            vec![1],
            "the code of a value no call holds is free"
        );
        assert_eq!(
            (index.count_of("outbound"), index.count_of("inbound")),
            (1, 0)
        );
        index.insert("outbound", 3);
        index.insert("outbound", 4);
        assert_eq!(index.count_of("outbound"), 3);
        index.remove("outbound", 4);
        index.remove("outbound", 3);
        assert_eq!(index.count_of("outbound"), 1);
        assert!(
            index.shared_counts.is_empty(),
            "a value held once is not counted apart"
        );
        // Built back from its set, as the snapshot reads it, it has the same counts and column.
        index.insert("outbound", 3);
        let rebuilt = rebuilt_from(&index);
        assert_eq!(rebuilt.shared_counts, index.shared_counts);
        index.remove("outbound", 3);
        let rebuilt = rebuilt_from(&index);
        let code = rebuilt.col.as_ref().expect("column").get(1);
        assert_eq!(rebuilt.strings.by_code()[code as usize], Some("outbound"));
        assert_eq!(rebuilt.col.as_ref().expect("column").non_null().count(), 1);
    }
}
