//! A column of the indexes: one value per call id, in chunks of consecutive ids, each chunk kept
//! in the form its values allow: a date-time or a position in four or five bytes where its
//! chunk's values fit (eight where they do not); a filter-only string's code in one byte where
//! its chunk holds few (four where it holds many); sortable strings as `text_cells` keeps them.

use crate::index::IdMap;
use std::hash::Hash;

const CHUNK_BITS: u32 = 10;
/// How many consecutive ids a chunk holds.
pub(crate) const CHUNK_LEN: usize = 1 << CHUNK_BITS;

/// A value per call id. Call ids are dense (the log hands them out from 1 without gaps), so the
/// values live in fixed chunks of consecutive ids; a hash map of chunks keeps an odd sparse id
/// from allocating everything below it, and a chunk whose calls are all gone (deleted) is
/// dropped, so that a ledger whose live calls stay few does not grow with every id it handed
/// out.
pub(crate) struct Column<T: Cell> {
    null: T,
    chunks: IdMap<Chunk<T>>,
}

/// The values of `CHUNK_LEN` consecutive ids, and how many of them are not null.
struct Chunk<T: Cell> {
    slots: T::Slots,
    non_null: usize,
}

/// How a column keeps one chunk's values, and what reading one gives.
pub(crate) trait Cell: Clone + PartialEq {
    /// The values of [`CHUNK_LEN`] consecutive ids.
    type Slots;
    /// A value as read: the value itself where it is a number (which a packed chunk does not
    /// hold as such), a reference where it is not.
    type Read<'a>: Copy + Ord
    where
        Self: 'a;

    /// A chunk of nulls.
    fn slots(null: &Self) -> Self::Slots;
    fn read<'a>(slots: &'a Self::Slots, i: usize, null: &'a Self) -> Self::Read<'a>;
    fn write(slots: &mut Self::Slots, i: usize, value: Self, null: &Self);
    /// A value as a read of it would give it.
    fn as_read(&self) -> Self::Read<'_>;
    /// A read value as a value of its own.
    fn owned(read: Self::Read<'_>) -> Self;
    /// Lends a read value to `f` as a reference.
    fn lend<R>(read: Self::Read<'_>, f: impl FnOnce(&Self) -> R) -> R;
    /// The bytes a chunk takes.
    fn slots_bytes(slots: &Self::Slots) -> usize;
    /// Whether value `i` is null: a read compared with null, unless the chunk can tell for
    /// less.
    fn is_null(slots: &Self::Slots, i: usize, null: &Self) -> bool {
        Self::read(slots, i, null) == null.as_read()
    }
}

/// Values kept as they are, one slot each.
macro_rules! plain_cells {
    ($($plain:ty),*) => {$(
        impl Cell for $plain {
            type Slots = Box<[$plain]>;
            type Read<'a> = &'a $plain;

            fn slots(null: &$plain) -> Box<[$plain]> {
                vec![null.clone(); CHUNK_LEN].into_boxed_slice()
            }

            fn read<'a>(slots: &'a Box<[$plain]>, i: usize, _: &'a $plain) -> &'a $plain {
                &slots[i]
            }

            fn write(slots: &mut Box<[$plain]>, i: usize, value: $plain, _: &$plain) {
                slots[i] = value;
            }

            fn as_read(&self) -> &$plain {
                self
            }

            fn owned(read: &$plain) -> $plain {
                read.clone()
            }

            fn lend<R>(read: &$plain, f: impl FnOnce(&$plain) -> R) -> R {
                f(read)
            }

            fn slots_bytes(_: &Box<[$plain]>) -> usize {
                CHUNK_LEN * std::mem::size_of::<$plain>()
            }
        }
    )*};
}

plain_cells!(bool);

/// The most numbers a chunk keeps as one-byte indexes into its own list (the list's first is
/// null).
const SMALL_MAX: usize = u8::MAX as usize + 1;

/// A chunk of numbers that name strings (a filter-only attribute's codes): each call's number as
/// a one-byte index into the chunk's own list while the chunk holds at most [`SMALL_MAX`] (a
/// direction, a vendor, a sequence action: a byte a call where the number takes four), else the
/// numbers themselves.
pub(crate) enum Numbers {
    /// A number no call of the chunk holds any more stays in the list: an attribute's values
    /// change seldom, and a chunk that has seen more than the list holds keeps its numbers
    /// plain from then on.
    Small {
        numbers: Vec<u32>,
        at: Box<[u8]>,
    },
    Plain(Box<[u32]>),
}

impl Numbers {
    fn get(&self, i: usize) -> u32 {
        match self {
            Numbers::Small { numbers, at } => numbers[usize::from(at[i])],
            Numbers::Plain(numbers) => numbers[i],
        }
    }

    fn set(&mut self, i: usize, number: u32) {
        let Numbers::Small { numbers, at } = self else {
            if let Numbers::Plain(numbers) = self {
                numbers[i] = number;
            }
            return;
        };
        if let Some(known) = numbers.iter().position(|held| *held == number) {
            at[i] = known as u8;
        } else if numbers.len() < SMALL_MAX {
            at[i] = numbers.len() as u8;
            numbers.push(number);
        } else {
            let mut all: Vec<u32> = at.iter().map(|at| numbers[usize::from(*at)]).collect();
            all[i] = number;
            *self = Numbers::Plain(all.into_boxed_slice());
        }
    }
}

impl Cell for u32 {
    type Slots = Numbers;
    type Read<'a> = u32;

    fn slots(null: &u32) -> Numbers {
        Numbers::Small {
            numbers: vec![*null],
            at: vec![0; CHUNK_LEN].into_boxed_slice(),
        }
    }

    fn read<'a>(slots: &'a Numbers, i: usize, _: &'a u32) -> u32 {
        slots.get(i)
    }

    fn write(slots: &mut Numbers, i: usize, value: u32, _: &u32) {
        slots.set(i, value);
    }

    fn as_read(&self) -> u32 {
        *self
    }

    fn owned(read: u32) -> u32 {
        read
    }

    fn lend<R>(read: u32, f: impl FnOnce(&u32) -> R) -> R {
        f(&read)
    }

    fn slots_bytes(slots: &Numbers) -> usize {
        match slots {
            Numbers::Small { numbers, .. } => CHUNK_LEN + numbers.capacity() * 4,
            Numbers::Plain(_) => CHUNK_LEN * 4,
        }
    }
}

/// A number a chunk can keep as a four-byte offset from a base, in whole seconds or in units:
/// a date-time in milliseconds (calls made together are minutes apart, calls imported together
/// at most a few years, mostly at whole seconds), a position.
pub(crate) trait Packable: Copy + Ord + Hash {
    fn to_i128(self) -> i128;
    fn from_i128(value: i128) -> Self;
    /// The smallest value of the type, as an `i128`.
    const MIN: i128;
    /// The units a chunk may count in, coarsest first: a chunk takes the first that every value
    /// of it is a whole number of.
    const UNITS: &'static [i128];
}

impl Packable for i64 {
    fn to_i128(self) -> i128 {
        i128::from(self)
    }
    fn from_i128(value: i128) -> i64 {
        value as i64
    }
    const MIN: i128 = i64::MIN as i128;
    // Whole seconds, then milliseconds.
    const UNITS: &'static [i128] = &[1000, 1];
}

impl Packable for u64 {
    fn to_i128(self) -> i128 {
        i128::from(self)
    }
    fn from_i128(value: i128) -> u64 {
        value as u64
    }
    const MIN: i128 = 0;
    const UNITS: &'static [i128] = &[1];
}

/// A chunk of numbers: offsets from a base in a unit while every value allows it, in four
/// bytes (half a number's) or in five (a byte more of each offset beside them: a year of
/// milliseconds needs 35 bits), else the numbers themselves.
pub(crate) enum Packed<N> {
    Offsets {
        base: N,
        unit: u32,
        /// Each offset's low 32 bits.
        low: Box<[u32]>,
        /// Each offset's next 8 bits, where the chunk needs them.
        high: Option<Box<[u8]>>,
    },
    Wide(Box<[N]>),
}

/// The offset that stands for null: the largest of its width.
fn null_offset(wide: bool) -> u64 {
    if wide {
        (1 << 40) - 1
    } else {
        u64::from(u32::MAX)
    }
}

/// A chunk's base for values from `lowest` that span `span` units: half the room the offsets
/// leave is kept below `lowest`, so that a later value below every earlier one (a call dialed
/// before those of the ids beside it, most of a bulk build's) still fits. A base at the least
/// value made every such value pack the chunk's 1,024 values again, most of what setting a
/// date-time cost. Returns the base and the offset of `lowest` from it; the base is never `null`
/// (a chunk whose base is null holds no value) and never below the type's least value.
fn base_below<N: Packable>(lowest: N, span: u64, unit: u32, wide: bool, null: N) -> (N, u64) {
    let room = (null_offset(wide) - 1).saturating_sub(span) / 2;
    let unit = i128::from(unit);
    let lowest = lowest.to_i128();
    let mut below = i128::from(room).min((lowest - N::MIN) / unit);
    if below > 0 && lowest - below * unit == null.to_i128() {
        below -= 1;
    }
    (N::from_i128(lowest - below * unit), below as u64)
}

impl<N: Packable> Packed<N> {
    fn get(&self, i: usize, null: N) -> N {
        match self {
            Packed::Offsets {
                base,
                unit,
                low,
                high,
            } => {
                let offset =
                    u64::from(low[i]) | high.as_ref().map_or(0, |high| u64::from(high[i]) << 32);
                if offset == null_offset(high.is_some()) {
                    null
                } else {
                    N::from_i128(base.to_i128() + i128::from(offset) * i128::from(*unit))
                }
            }
            Packed::Wide(values) => values[i],
        }
    }

    /// The offset of `value` from `base` in `unit`, where it has one of that width.
    fn offset_of(base: N, unit: u32, wide: bool, value: N) -> Option<u64> {
        let delta = value.to_i128() - base.to_i128();
        let unit = i128::from(unit);
        if delta < 0 || delta % unit != 0 {
            return None;
        }
        u64::try_from(delta / unit)
            .ok()
            .filter(|offset| *offset < null_offset(wide))
    }

    /// Sets value `i`, packing the chunk again where the value does not fit its base and unit.
    fn set(&mut self, i: usize, value: N, null: N) {
        let offset = match self {
            Packed::Wide(values) => {
                values[i] = value;
                return;
            }
            Packed::Offsets {
                base, unit, high, ..
            } => {
                let wide = high.is_some();
                if value == null {
                    Some(null_offset(wide))
                } else if *base == null {
                    let (below, offset) = base_below(value, 0, *unit, wide, null);
                    *base = below;
                    Some(offset)
                } else {
                    Self::offset_of(*base, *unit, wide, value)
                }
            }
        };
        match (offset, &mut *self) {
            (Some(offset), Packed::Offsets { low, high, .. }) => {
                low[i] = offset as u32;
                if let Some(high) = high {
                    high[i] = (offset >> 32) as u8;
                }
            }
            _ => {
                let mut values: Vec<N> = (0..CHUNK_LEN).map(|at| self.get(at, null)).collect();
                values[i] = value;
                *self = Self::pack(&values, null);
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Packed::Offsets { high: None, .. } => CHUNK_LEN * 4,
            Packed::Offsets { high: Some(_), .. } => CHUNK_LEN * 5,
            Packed::Wide(_) => CHUNK_LEN * std::mem::size_of::<N>(),
        }
    }

    /// Keeps `values` in the narrowest form they allow.
    fn pack(values: &[N], null: N) -> Packed<N> {
        let held = || values.iter().copied().filter(|value| *value != null);
        let Some(base) = held().min() else {
            // The coarsest unit: a chunk of whole seconds then never packs again.
            return Packed::Offsets {
                base: null,
                unit: N::UNITS
                    .first()
                    .map_or(1, |unit| u32::try_from(*unit).unwrap_or(1)),
                low: vec![u32::MAX; values.len()].into_boxed_slice(),
                high: None,
            };
        };
        for wide in [false, true] {
            for unit in N::UNITS {
                let Ok(unit) = u32::try_from(*unit) else {
                    continue;
                };
                let offsets: Option<Vec<u64>> = values
                    .iter()
                    .map(|value| match *value == null {
                        true => Some(null_offset(wide)),
                        false => Self::offset_of(base, unit, wide, *value),
                    })
                    .collect();
                if let Some(mut offsets) = offsets {
                    let span = offsets
                        .iter()
                        .filter(|offset| **offset != null_offset(wide))
                        .max()
                        .copied()
                        .unwrap_or(0);
                    let (base, below) = base_below(base, span, unit, wide, null);
                    for offset in &mut offsets {
                        if *offset != null_offset(wide) {
                            *offset += below;
                        }
                    }
                    return Packed::Offsets {
                        base,
                        unit,
                        low: offsets.iter().map(|offset| *offset as u32).collect(),
                        high: wide
                            .then(|| offsets.iter().map(|offset| (offset >> 32) as u8).collect()),
                    };
                }
            }
        }
        Packed::Wide(values.to_vec().into_boxed_slice())
    }
}

/// Numbers kept [`Packed`].
macro_rules! packed_cells {
    ($($number:ty),*) => {$(
        impl Cell for $number {
            type Slots = Packed<$number>;
            type Read<'a> = $number;

            fn slots(null: &$number) -> Packed<$number> {
                Packed::pack(&[*null; CHUNK_LEN], *null)
            }

            fn read<'a>(slots: &'a Packed<$number>, i: usize, null: &'a $number) -> $number {
                slots.get(i, *null)
            }

            fn write(slots: &mut Packed<$number>, i: usize, value: $number, null: &$number) {
                slots.set(i, value, *null);
            }

            fn as_read(&self) -> $number {
                *self
            }

            fn owned(read: $number) -> $number {
                read
            }

            fn lend<R>(read: $number, f: impl FnOnce(&$number) -> R) -> R {
                f(&read)
            }

            fn slots_bytes(slots: &Packed<$number>) -> usize {
                slots.bytes()
            }
        }
    )*};
}

packed_cells!(i64, u64);

impl<T: Cell> Column<T> {
    pub(crate) fn new(null: T) -> Column<T> {
        Column {
            null,
            chunks: IdMap::default(),
        }
    }

    /// The bytes of the chunks and of the table that finds them.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.chunks
            .values()
            .map(|chunk| T::slots_bytes(&chunk.slots))
            .sum::<usize>()
            + crate::index::table_bytes::<(u64, Chunk<T>)>(self.chunks.capacity())
    }

    /// The value a call without one, or not live, has.
    pub(crate) fn null(&self) -> &T {
        &self.null
    }

    /// The value of call `id` (null for a call that is not live).
    pub(crate) fn get(&self, id: u64) -> T::Read<'_> {
        match self.chunks.get(&(id >> CHUNK_BITS)) {
            Some(chunk) => T::read(&chunk.slots, (id as usize) & (CHUNK_LEN - 1), &self.null),
            None => self.null.as_read(),
        }
    }

    pub(crate) fn set(&mut self, id: u64, value: T) {
        let key = id >> CHUNK_BITS;
        let is_null = value == self.null;
        let Column { null, chunks } = self;
        let chunk = match chunks.get_mut(&key) {
            Some(chunk) => chunk,
            None if is_null => return,
            None => chunks.entry(key).or_insert_with(|| Chunk {
                slots: T::slots(null),
                non_null: 0,
            }),
        };
        let slot = (id as usize) & (CHUNK_LEN - 1);
        let was_null = T::is_null(&chunk.slots, slot, null);
        T::write(&mut chunk.slots, slot, value, null);
        match (was_null, is_null) {
            (true, false) => chunk.non_null += 1,
            (false, true) => chunk.non_null -= 1,
            _ => {}
        }
        if chunk.non_null == 0 {
            chunks.remove(&key);
        }
    }

    /// Each chunk's slots, in no order.
    pub(crate) fn chunk_slots(&self) -> impl Iterator<Item = &T::Slots> {
        self.chunks.values().map(|chunk| &chunk.slots)
    }

    /// Every id with a non-null value, in id order.
    pub(crate) fn non_null(&self) -> impl Iterator<Item = (u64, T::Read<'_>)> + '_ {
        let mut keys: Vec<u64> = self.chunks.keys().copied().collect();
        keys.sort_unstable();
        let null = self.null.as_read();
        keys.into_iter().flat_map(move |key| {
            let chunk = &self.chunks[&key];
            (0..CHUNK_LEN)
                .map(move |i| (i, T::read(&chunk.slots, i, &self.null)))
                .filter(move |(_, value)| *value != null)
                .map(move |(i, value)| ((key << CHUNK_BITS) | i as u64, value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sorted_set::tests::numbers;

    #[test]
    fn a_column_drops_a_chunk_once_every_call_in_it_is_gone() {
        let mut column = Column::new(0i64);
        let ids = (1..=3 * CHUNK_LEN as u64).collect::<Vec<_>>();
        for id in &ids {
            column.set(*id, *id as i64);
        }
        assert_eq!(column.chunks.len(), 4, "ids 1 to 3072 span four chunks");
        // Setting a value again, or to another non-null value, does not change the count.
        column.set(5, 7);
        column.set(5, 5);
        for id in ids.iter().filter(|id| **id < CHUNK_LEN as u64) {
            column.set(*id, 0);
        }
        assert_eq!(column.chunks.len(), 3, "the first chunk is dropped");
        assert_eq!(column.get(5), 0);
        assert_eq!(column.get(CHUNK_LEN as u64), CHUNK_LEN as i64);
        // A null set where no chunk is allocates nothing.
        column.set(1, 0);
        assert_eq!(column.chunks.len(), 3);
        assert_eq!(column.non_null().count(), ids.len() - (CHUNK_LEN - 1));
    }

    #[test]
    fn packed_chunks_read_back_every_value_in_whatever_form_they_need() {
        const NULL: i64 = i64::MIN;
        // A fixed xorshift sequence: whole seconds close together, milliseconds near and over a
        // year, values far apart, nulls and the extremes, written over two chunks in random order.
        let mut numbers = numbers(0x2545_f491_4f6c_dd1d);
        let mut next = move || numbers.next().unwrap_or_default();
        for round in 0..200 {
            let mut column = Column::new(NULL);
            let mut model = std::collections::BTreeMap::new();
            for _ in 0..(1 + round * 2) {
                let id = next() % (2 * CHUNK_LEN as u64);
                let value = match next() % 7 {
                    0 => NULL,
                    1 => 1_700_000_000_000 + (next() % 100_000) as i64 * 1000,
                    2 => 1_700_000_000_000 + (next() % 100_000_000) as i64,
                    // A year of milliseconds.
                    3 => 1_700_000_000_000 + (next() % 31_536_000_000) as i64,
                    4 => next() as i64,
                    5 => i64::MAX,
                    _ => i64::MIN + 1,
                };
                column.set(id, value);
                if value == NULL {
                    model.remove(&id);
                } else {
                    model.insert(id, value);
                }
                for (id, value) in &model {
                    assert_eq!(column.get(*id), *value, "round {round}, call {id}");
                }
            }
            let read: Vec<(u64, i64)> = column.non_null().collect();
            let expected: Vec<(u64, i64)> = model.into_iter().collect();
            assert_eq!(read, expected, "round {round}");
        }
    }

    #[test]
    fn values_below_every_earlier_one_keep_their_chunk_packed() {
        let mut column = Column::new(i64::MIN);
        let bytes = |column: &Column<i64>| i64::slots_bytes(&column.chunks[&0].slots);
        // Whole seconds, each an hour before the one before: ten weeks below the first.
        for id in 0..CHUNK_LEN as u64 {
            column.set(id, 1_700_000_000_000 - (id as i64) * 3_600_000);
        }
        assert_eq!(bytes(&column), CHUNK_LEN * 4);
        for id in 0..CHUNK_LEN as u64 {
            assert_eq!(column.get(id), 1_700_000_000_000 - (id as i64) * 3_600_000);
        }
    }

    #[test]
    fn values_next_to_null_or_to_the_least_value_read_back() {
        // A base kept below the least value would be null itself here, or below the type.
        let mut positions = Column::new(0u64);
        for (id, position) in [(5, 1), (6, 3), (7, 2), (8, u64::MAX), (9, 1)] {
            positions.set(id, position);
        }
        assert_eq!(
            positions.non_null().collect::<Vec<_>>(),
            [(5, 1), (6, 3), (7, 2), (8, u64::MAX), (9, 1)]
        );
        for null in [i64::MIN, i64::MIN + 1000, 0] {
            let mut times = Column::new(null);
            let values = [null + 1000, null + 1, null + 2000, 5, -5];
            for (id, value) in values.iter().enumerate() {
                times.set(id as u64, *value);
            }
            for (id, value) in values.iter().enumerate() {
                let expected = if *value == null { null } else { *value };
                assert_eq!(times.get(id as u64), expected, "null {null}, call {id}");
            }
        }
    }

    #[test]
    fn a_year_takes_four_bytes_a_call_in_seconds_five_in_milliseconds_and_more_eight() {
        let mut column = Column::new(i64::MIN);
        let bytes = |column: &Column<i64>| i64::slots_bytes(&column.chunks[&0].slots);
        for id in 0..CHUNK_LEN as u64 {
            // A year of whole seconds within one chunk.
            column.set(id, 1_700_000_000_000 + (id as i64) * 30_000_000);
        }
        assert_eq!(bytes(&column), CHUNK_LEN * 4);
        column.set(3, 1_700_000_000_001);
        assert_eq!(column.get(3), 1_700_000_000_001);
        assert_eq!(bytes(&column), CHUNK_LEN * 5);
        // Forty years of milliseconds.
        column.set(4, 1_700_000_000_000 + 40 * 365 * 86_400_000);
        assert_eq!(bytes(&column), CHUNK_LEN * 8);
        assert_eq!(column.get(3), 1_700_000_000_001);
        assert_eq!(column.get(4), 1_700_000_000_000 + 40 * 365 * 86_400_000);
    }

    #[test]
    fn number_chunks_read_back_every_number_as_an_index_or_as_itself() {
        let mut numbers = numbers(0x5851_f42d_4c95_7f2d);
        let mut next = move || numbers.next().unwrap_or_default();
        for distinct in [2u64, 255, 256, 257, 5000] {
            let mut column = Column::new(0u32);
            let mut model = std::collections::BTreeMap::new();
            for _ in 0..4000 {
                let id = next() % (2 * CHUNK_LEN as u64);
                let number = (next() % (distinct + 1)) as u32;
                column.set(id, number);
                if number == 0 {
                    model.remove(&id);
                } else {
                    model.insert(id, number);
                }
            }
            for id in 0..2 * CHUNK_LEN as u64 {
                assert_eq!(
                    column.get(id),
                    model.get(&id).copied().unwrap_or(0),
                    "call {id}"
                );
            }
            let small = column
                .chunk_slots()
                .all(|slots| matches!(slots, Numbers::Small { .. }));
            assert_eq!(small, distinct < SMALL_MAX as u64, "{distinct} numbers");
        }
    }
}
