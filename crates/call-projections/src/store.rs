//! The stored projection: the key layout of a view tree, its row codecs, and the fold of a chunk
//! of log records into the one batch that applies them.
//!
//! | key                    | value                                              |
//! |------------------------|----------------------------------------------------|
//! | `c` id                 | the live call, in the codec's stored form; empty: not live (a pack's view of it is stale) |
//! | `p` id >> [`PACK_SHIFT`] | a pack: a table of where each id's view starts, then the views of calls of that range of 32 ids, ascending, written by a replay |
//! | `d` position >> [`DELETION_SHIFT`] | the deletions of that range of 64 positions, ascending: each the position of its CallDeleted, the call's id, deletedAt millis |
//! | `k`                    | the checkpoint: the last applied log position      |
//! | `n`                    | live calls, deleted calls                          |
//! | `m`                    | the layout version, [`LAYOUT_VERSION`]             |
//!
//! Integers are big-endian, so sled's byte order is numeric order. Each chunk of records is one
//! `apply_batch` holding every view change and the new checkpoint, so after a crash the view and
//! its checkpoint always agree (sled recovers a batch all or nothing).
//!
//! A call's view is its `c` row where it has one, else its entry in the pack of its range of ids
//! (two lookups by key, then the pack's table; a pack found by its first id, the greatest below a
//! call's, took a backward range scan, which made a list of packed calls a third slower). A replay (rebuild,
//! verify, the bulk catch-up at open) writes the calls a chunk creates as packs: a sled insert
//! costs several microseconds (a leaf holds 16 entries, so sequential inserts split a node every
//! eight), which was half of a rebuild's time at one row per call; one row per 32 views costs a
//! memory copy each. Packs are never rewritten: a later change of a packed call is a `c` row, its
//! deletion an empty one, and a replay packs only ranges above every range already packed (a
//! call of a packed range is a `c` row).
//!
//! The change feed of live calls (position of the latest event -> id) is not stored: each view
//! holds its call's latest position, so it is an in-memory index built with the others. That
//! halves the rows a rebuild writes (a sled insert costs as much as decoding an event), and a
//! feed derived from the views cannot disagree with them. Deleted calls have no view, so their
//! deletions are stored. They are kept per range of positions, not a row each: a row is a sled
//! leaf entry that stays in the cache, about 200 bytes for a 25-byte row, and a service
//! that deletes calls grew by that much per deletion for as long as it ran (the soak,
//! docs/operations.md). A deletion rewrites its range's row, at most 64 deletions (1.5 KB).

use crate::error::ProjectionError;
use crate::index::{IdMap, Indexes};
use crate::pack_cache::PackCache;
use crate::query::Deletion;
use call_model::{evolve_owned, Call, CallRef, CallState, Event, EventBody, Timestamp};
use event_log::Record;
use std::collections::hash_map::Entry;
use std::collections::BTreeMap;

/// Prefix of the live calls' views, by id.
pub(crate) const CALL: u8 = b'c';
/// Prefix of the packs of views, by range of ids (`id >> PACK_SHIFT`).
pub(crate) const PACK: u8 = b'p';
/// A call's range of ids, the views a pack can hold, is `id >> PACK_SHIFT`: 32 ids each.
pub(crate) const PACK_SHIFT: u32 = 5;
/// Prefix of the deletions, by range of positions (`position >> DELETION_SHIFT`).
pub(crate) const DELETION: u8 = b'd';
/// A deletion row holds the deletions of the range of positions `position >> DELETION_SHIFT`:
/// 64 positions each.
pub(crate) const DELETION_SHIFT: u32 = 6;
/// The stored size of a deletion: its position, the call's id, deletedAt millis.
const DELETION_BYTES: usize = 24;
/// The checkpoint.
pub(crate) const CHECKPOINT: &[u8] = b"k";
/// The live and deleted counters.
pub(crate) const COUNTERS: &[u8] = b"n";
/// The layout version.
pub(crate) const LAYOUT: &[u8] = b"m";
/// Written under [`LAYOUT`]; a view with another value is rebuilt at open.
pub(crate) const LAYOUT_VERSION: &[u8] = b"call-projections/6";

/// A prefixed big-endian key.
pub(crate) fn key(prefix: u8, n: u64) -> [u8; 9] {
    let mut key = [0; 9];
    key[0] = prefix;
    key[1..].copy_from_slice(&n.to_be_bytes());
    key
}

/// The number after a one-byte prefix, when `key` has that layout.
pub(crate) fn split_key(key: &[u8]) -> Option<(u8, u64)> {
    let (prefix, rest) = key.split_first()?;
    Some((*prefix, u64::from_be_bytes(rest.try_into().ok()?)))
}

/// Names a stored key for people.
pub(crate) fn describe_key(key: &[u8]) -> String {
    match (key, split_key(key)) {
        (_, Some((CALL, id))) => format!("view of call {id}"),
        (_, Some((PACK, range))) => {
            let first = range << PACK_SHIFT;
            let last = first | ((1 << PACK_SHIFT) - 1);
            format!("pack of the views of calls {first} to {last}")
        }
        (_, Some((DELETION, range))) => {
            let first = range << DELETION_SHIFT;
            let last = first | ((1 << DELETION_SHIFT) - 1);
            format!("deletions at positions {first} to {last}")
        }
        (CHECKPOINT, _) => "checkpoint".to_owned(),
        (COUNTERS, _) => "counters".to_owned(),
        (LAYOUT, _) => "layout version".to_owned(),
        _ => format!("key {}", String::from_utf8_lossy(key).escape_debug()),
    }
}

fn corrupt(key: &[u8], reason: impl Into<String>) -> ProjectionError {
    ProjectionError::Corrupt {
        key: describe_key(key),
        reason: reason.into(),
    }
}

/// A big-endian u64 value.
pub(crate) fn read_u64(key: &[u8], value: &[u8]) -> Result<u64, ProjectionError> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| corrupt(key, format!("expected 8 bytes, found {}", value.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The stored form of a view.
pub(crate) fn encode_call(call: &Call) -> Vec<u8> {
    crate::codec::encode(call)
}

/// Reads a stored view of call `id`.
pub(crate) fn decode_call(id: u64, bytes: &[u8]) -> Result<Call, ProjectionError> {
    decode_call_ref(id, bytes).map(|call| call.to_call())
}

/// [`decode_call`] in place: the call's texts borrowed from `bytes`.
pub(crate) fn decode_call_ref(id: u64, bytes: &[u8]) -> Result<CallRef<'_>, ProjectionError> {
    let key = key(CALL, id);
    let call = crate::codec::decode_ref(bytes).map_err(|reason| corrupt(&key, reason))?;
    if call.id != id {
        return Err(corrupt(&key, format!("it holds call {}", call.id)));
    }
    Ok(call)
}

/// The live view of call `id`, if any.
pub(crate) fn load_call(tree: &sled::Tree, id: u64) -> Result<Option<Call>, ProjectionError> {
    decode_view(id, view_bytes(tree, id)?)
}

/// Call `id` from its stored view, if it has one.
fn decode_view(id: u64, bytes: Option<sled::IVec>) -> Result<Option<Call>, ProjectionError> {
    bytes.map(|bytes| decode_call(id, &bytes)).transpose()
}

/// The stored view of call `id`, if it is live: its `c` row, else its entry in a pack.
pub(crate) fn view_bytes(
    tree: &sled::Tree,
    id: u64,
) -> Result<Option<sled::IVec>, ProjectionError> {
    match tree.get(key(CALL, id))? {
        Some(bytes) if bytes.is_empty() => return Ok(None),
        Some(bytes) => return Ok(Some(bytes)),
        None => {}
    }
    let pack_key = key(PACK, id >> PACK_SHIFT);
    let Some(pack) = tree.get(pack_key)? else {
        return Ok(None);
    };
    Ok(PackEntries::find(&pack_key, &pack, id)?
        .map(|range| pack.subslice(range.start, range.len())))
}

/// The slots of a pack's table, one per id of its range.
const PACK_SLOTS: usize = 1 << PACK_SHIFT;
/// The bytes of a pack's table.
const PACK_TABLE: usize = PACK_SLOTS * 4;
/// A slot of the table whose id has no view in the pack.
const ABSENT: u32 = u32::MAX;

/// Where call `id`'s offset lies in its pack's table.
fn table_slot(id: u64) -> std::ops::Range<usize> {
    let at = (id as usize & (PACK_SLOTS - 1)) * 4;
    at..at + 4
}

/// The stored form of a pack: a table of where each id's entry starts (one big-endian `u32` per
/// id of the range, [`ABSENT`] for an id without a view), then each view as its id, its length
/// and its bytes, ids ascending, all of one range.
///
/// The table lets a read go straight to its entry: walking the entries to it touched a cache
/// line per view before it, a tenth of a list's time on a ledger of a million packed calls.
pub(crate) fn encode_pack<'a>(views: impl IntoIterator<Item = (u64, &'a [u8])> + Clone) -> Vec<u8> {
    // Sized at once: grown view by view, a pack was copied five or six times.
    let size = views.clone().into_iter().map(|(_, bytes)| 12 + bytes.len());
    let mut out = Vec::with_capacity(PACK_TABLE + size.sum::<usize>());
    out.resize(PACK_TABLE, 0xff);
    for (id, bytes) in views {
        // A pack is 32 views of a few hundred bytes, far below 4 GiB.
        let at = u32::try_from(out.len()).unwrap_or(ABSENT);
        out[table_slot(id)].copy_from_slice(&at.to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// The entries of a stored pack, checked as they are read: each an id and where its view lies
/// in the pack's bytes, each where the table says it is, and as many as the table names. A cut
/// or garbled pack is [`ProjectionError::Corrupt`], never a panic.
pub(crate) struct PackEntries<'a> {
    key: &'a [u8],
    bytes: &'a [u8],
    at: usize,
    previous: Option<u64>,
    range: u64,
    /// Entries read so far.
    read: usize,
    /// Whether the last entry was read (or the pack refused).
    done: bool,
}

impl<'a> PackEntries<'a> {
    pub(crate) fn new(key: &'a [u8], bytes: &'a [u8]) -> Result<Self, ProjectionError> {
        let range = match split_key(key) {
            Some((PACK, range)) => range,
            _ => return Err(corrupt(key, "not a pack key")),
        };
        if bytes.len() <= PACK_TABLE {
            return Err(corrupt(key, "a pack without views or cut in its table"));
        }
        Ok(PackEntries {
            key,
            bytes,
            at: PACK_TABLE,
            previous: None,
            range,
            read: 0,
            done: false,
        })
    }

    /// Where the view of call `id` lies in the pack, if the pack holds it: one entry read,
    /// through the table.
    pub(crate) fn find(
        key: &'a [u8],
        bytes: &'a [u8],
        id: u64,
    ) -> Result<Option<std::ops::Range<usize>>, ProjectionError> {
        let mut entries = PackEntries::new(key, bytes)?;
        let at = entries.table(id);
        if at == ABSENT {
            return Ok(None);
        }
        entries.at = at as usize;
        let (found, range) = entries.entry()?;
        if found != id {
            return Err(corrupt(
                key,
                format!("the table's entry for call {id} holds call {found}"),
            ));
        }
        Ok(Some(range))
    }

    /// The table's offset for call `id`'s slot.
    fn table(&self, id: u64) -> u32 {
        // `new` refused a pack shorter than its table.
        let bytes: [u8; 4] = self.bytes[table_slot(id)].try_into().unwrap_or([0xff; 4]);
        u32::from_be_bytes(bytes)
    }

    fn entry(&mut self) -> Result<(u64, std::ops::Range<usize>), ProjectionError> {
        if self.at < PACK_TABLE {
            return Err(corrupt(
                self.key,
                format!("an entry at byte {} of the table", self.at),
            ));
        }
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let (Some(id), Some(len)) = (rest.get(..8), rest.get(8..12)) else {
            return Err(corrupt(self.key, format!("cut at byte {}", self.at)));
        };
        let id = u64::from_be_bytes(id.try_into().unwrap_or_default());
        let len = u32::from_be_bytes(len.try_into().unwrap_or_default()) as usize;
        let start = self.at + 12;
        let end = start
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| corrupt(self.key, format!("the view of call {id} is cut")))?;
        if id >> PACK_SHIFT != self.range {
            return Err(corrupt(self.key, format!("call {id} is not of its range")));
        }
        if self.table(id) as usize != self.at {
            return Err(corrupt(
                self.key,
                format!("the table does not point at call {id}"),
            ));
        }
        if self.previous.is_some_and(|previous| id <= previous) {
            return Err(corrupt(self.key, format!("call {id} is out of order")));
        }
        self.previous = Some(id);
        self.at = end;
        Ok((id, start..end))
    }

    /// How many views the table names.
    fn named(&self) -> usize {
        self.bytes[..PACK_TABLE]
            .chunks_exact(4)
            .filter(|slot| *slot != ABSENT.to_be_bytes())
            .count()
    }
}

impl Iterator for PackEntries<'_> {
    type Item = Result<(u64, std::ops::Range<usize>), ProjectionError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.at >= self.bytes.len() {
            self.done = true;
            let named = self.named();
            return (named != self.read).then(|| {
                Err(corrupt(
                    self.key,
                    format!(
                        "the table names {named} views, the pack holds {}",
                        self.read
                    ),
                ))
            });
        }
        let entry = self.entry();
        match entry {
            Ok(_) => self.read += 1,
            // Nothing after a bad entry can be trusted.
            Err(_) => self.done = true,
        }
        Some(entry)
    }
}

/// Every live view of a tree in id order, `c` rows over packs: what `verify` compares and what
/// the indexes are built from.
pub(crate) struct Views {
    packs: sled::Iter,
    rows: std::iter::Peekable<sled::Iter>,
    packed: std::collections::VecDeque<(u64, sled::IVec)>,
}

impl Views {
    pub(crate) fn new(tree: &sled::Tree) -> Views {
        Views {
            packs: tree.scan_prefix([PACK]),
            rows: tree.scan_prefix([CALL]).peekable(),
            packed: std::collections::VecDeque::new(),
        }
    }

    /// The next packed view, unpacking the next pack when the last one is used up.
    fn peek_packed(&mut self) -> Result<Option<u64>, ProjectionError> {
        if self.packed.is_empty() {
            if let Some(entry) = self.packs.next() {
                let (key, pack) = entry?;
                for entry in PackEntries::new(&key, &pack)? {
                    let (id, range) = entry?;
                    self.packed
                        .push_back((id, pack.subslice(range.start, range.len())));
                }
            }
        }
        Ok(self.packed.front().map(|(id, _)| *id))
    }

    fn step(&mut self) -> Result<Option<(u64, sled::IVec)>, ProjectionError> {
        loop {
            let packed = self.peek_packed()?;
            let row = match self.rows.peek() {
                None => None,
                Some(Ok((key, _))) => match split_key(key) {
                    Some((CALL, id)) => Some(id),
                    _ => return Err(corrupt(key, "not a view key")),
                },
                Some(Err(_)) => {
                    return Err(self
                        .rows
                        .next()
                        .and_then(Result::err)
                        .map_or_else(|| corrupt(&[CALL], "unreadable"), ProjectionError::from))
                }
            };
            let take_row = match (packed, row) {
                (None, None) => return Ok(None),
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(packed), Some(row)) => {
                    if packed == row {
                        // The row stands for the call; the pack's view of it is stale.
                        self.packed.pop_front();
                    }
                    row <= packed
                }
            };
            if take_row {
                let Some(Ok((key, value))) = self.rows.next() else {
                    continue;
                };
                if value.is_empty() {
                    continue;
                }
                let id = split_key(&key).map_or(0, |(_, id)| id);
                return Ok(Some((id, value)));
            }
            return Ok(self.packed.pop_front());
        }
    }
}

impl Iterator for Views {
    type Item = Result<(u64, sled::IVec), ProjectionError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

/// The stored form of a deletion, as a deletion row holds it.
pub(crate) fn encode_deletion(position: u64, id: u64, at: Timestamp) -> [u8; DELETION_BYTES] {
    let mut value = [0; DELETION_BYTES];
    value[..8].copy_from_slice(&position.to_be_bytes());
    value[8..16].copy_from_slice(&id.to_be_bytes());
    value[16..].copy_from_slice(&at.millis().to_be_bytes());
    value
}

/// Reads the deletion row of range `range`: whole deletions, each of the range, positions
/// ascending. A cut or garbled row is [`ProjectionError::Corrupt`].
fn decode_deletions(range: u64, row: &[u8]) -> Result<Vec<Deletion>, ProjectionError> {
    let key = key(DELETION, range);
    if row.is_empty() || !row.len().is_multiple_of(DELETION_BYTES) {
        return Err(corrupt(
            &key,
            format!(
                "expected deletions of {DELETION_BYTES} bytes each, found {} bytes",
                row.len()
            ),
        ));
    }
    let mut deletions: Vec<Deletion> = Vec::with_capacity(row.len() / DELETION_BYTES);
    for entry in row.chunks_exact(DELETION_BYTES) {
        let deletion =
            decode_deletion(entry).ok_or_else(|| corrupt(&key, "a deletion cut short"))?;
        if deletion.position >> DELETION_SHIFT != range {
            return Err(corrupt(
                &key,
                format!("it holds position {}, not of its range", deletion.position),
            ));
        }
        if deletions
            .last()
            .is_some_and(|last| last.position >= deletion.position)
        {
            return Err(corrupt(
                &key,
                format!("position {} is out of order", deletion.position),
            ));
        }
        deletions.push(deletion);
    }
    Ok(deletions)
}

/// One deletion as [`encode_deletion`] wrote it; `None` unless `entry` is its length.
pub(crate) fn decode_deletion(entry: &[u8]) -> Option<Deletion> {
    let number = |at: usize| -> Option<[u8; 8]> { entry.get(at..at + 8)?.try_into().ok() };
    (entry.len() == DELETION_BYTES).then_some(())?;
    Some(Deletion {
        position: u64::from_be_bytes(number(0)?),
        id: u64::from_be_bytes(number(8)?),
        deleted_at: Timestamp::from_millis(i64::from_be_bytes(number(16)?)),
    })
}

/// The last deletion row a fold wrote: its range and bytes. A replay's next fold starts from it
/// while the batch that writes it may not be applied yet.
pub(crate) type DeletionRow = (u64, Vec<u8>);

/// The stored deletions at positions from `first` on, in position order, read row by row.
pub(crate) struct Deletions {
    rows: sled::Iter,
    first: u64,
    row: std::vec::IntoIter<Deletion>,
}

impl Deletions {
    pub(crate) fn new(tree: &sled::Tree, first: u64) -> Deletions {
        Deletions {
            rows: tree.range(key(DELETION, first >> DELETION_SHIFT).to_vec()..vec![DELETION + 1]),
            first,
            row: Vec::new().into_iter(),
        }
    }
}

impl Iterator for Deletions {
    type Item = Result<Deletion, ProjectionError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(deletion) = self.row.find(|deletion| deletion.position >= self.first) {
                return Some(Ok(deletion));
            }
            let decoded =
                self.rows
                    .next()?
                    .map_err(ProjectionError::from)
                    .and_then(|(key, row)| {
                        let range = split_key(&key)
                            .map(|(_, range)| range)
                            .ok_or_else(|| corrupt(&key, "not a deletion row's key"))?;
                        decode_deletions(range, &row)
                    });
            match decoded {
                Ok(row) => self.row = row.into_iter(),
                Err(error) => return Some(Err(error)),
            }
        }
    }
}

/// The checkpoint and counters of a view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    /// The last applied log position.
    pub(crate) checkpoint: u64,
    /// Live calls.
    pub(crate) live: u64,
    /// Calls deleted (each counted once).
    pub(crate) deleted: u64,
    /// The ranges of ids below this one may be packed, none from it on (0: no pack), read from
    /// the last pack's key rather than stored: a replay packs only ranges from it on, and a
    /// change of a call of a range below it may need an empty row to hide a packed view.
    pub(crate) packed_below: u64,
}

impl Meta {
    fn counters(&self) -> [u8; 16] {
        let mut value = [0; 16];
        value[..8].copy_from_slice(&self.live.to_be_bytes());
        value[8..].copy_from_slice(&self.deleted.to_be_bytes());
        value
    }

    /// Adds the rows that store this meta (and the layout version) to `batch`.
    pub(crate) fn write(&self, batch: &mut sled::Batch) {
        batch.insert(LAYOUT, LAYOUT_VERSION);
        batch.insert(CHECKPOINT, &self.checkpoint.to_be_bytes());
        batch.insert(COUNTERS, &self.counters());
    }

    /// Reads the meta of a view, checking its layout version first.
    pub(crate) fn read(tree: &sled::Tree) -> Result<Meta, ProjectionError> {
        match tree.get(LAYOUT)? {
            Some(version) if version == LAYOUT_VERSION => {}
            Some(version) => {
                return Err(corrupt(
                    LAYOUT,
                    format!(
                        "layout {:?}, this build writes {:?}",
                        String::from_utf8_lossy(&version),
                        String::from_utf8_lossy(LAYOUT_VERSION)
                    ),
                ))
            }
            None => return Err(corrupt(LAYOUT, "missing")),
        }
        let checkpoint = match tree.get(CHECKPOINT)? {
            Some(value) => read_u64(CHECKPOINT, &value)?,
            None => return Err(corrupt(CHECKPOINT, "missing")),
        };
        let counters = tree
            .get(COUNTERS)?
            .ok_or_else(|| corrupt(COUNTERS, "missing"))?;
        if counters.len() != 16 {
            return Err(corrupt(COUNTERS, "expected 16 bytes"));
        }
        let packed_below = match tree.scan_prefix([PACK]).next_back() {
            Some(entry) => {
                let (key, _) = entry?;
                match split_key(&key) {
                    Some((PACK, range)) => range + 1,
                    _ => return Err(corrupt(&key, "not a pack key")),
                }
            }
            None => 0,
        };
        Ok(Meta {
            checkpoint,
            live: read_u64(COUNTERS, &counters[..8])?,
            deleted: read_u64(COUNTERS, &counters[8..])?,
            packed_below,
        })
    }
}

/// One view: its tree, the counters stored in it, and the in-memory indexes derived from it.
pub(crate) struct View {
    /// The generation, which names the tree (`view-<generation>`).
    pub(crate) generation: u64,
    /// The tree.
    pub(crate) tree: sled::Tree,
    /// Its checkpoint and counters, as last written.
    pub(crate) meta: Meta,
    /// Its secondary indexes.
    pub(crate) indexes: Indexes,
    /// The packs its reads found (shared with [`crate::Projection::warm_packs`]'s thread).
    pub(crate) packs: std::sync::Arc<PackCache>,
}

impl View {
    /// The stored view of call `id`, if it is live, as [`view_bytes`] finds it, except that a
    /// call of a packed range is looked for in its pack first, and that entry is taken when it
    /// holds the call's latest state: when the change feed has the call at the entry's
    /// position. A call a replay packed and nothing changed since (most of a large rebuilt or
    /// imported ledger) then costs one lookup instead of two, half of a list's row reads at a
    /// million calls; a packed call changed since costs both, its `c` row read second. The feed
    /// is updated under the same lock as the tree, so the two agree here. The pack comes from
    /// [`View::packs`] where a read found it before.
    pub(crate) fn view_bytes(&self, id: u64) -> Result<Option<sled::IVec>, ProjectionError> {
        let range = id >> PACK_SHIFT;
        if range < self.meta.packed_below {
            let pack_key = key(PACK, range);
            let pack = match self.packs.get(range) {
                Some(pack) => Some(pack),
                None => {
                    let pack = self.tree.get(pack_key)?;
                    if let Some(pack) = &pack {
                        self.packs.insert(range, pack);
                    }
                    pack
                }
            };
            if let Some(pack) = pack {
                if let Some(range) = PackEntries::find(&pack_key, &pack, id)? {
                    let entry = pack.subslice(range.start, range.len());
                    let header = crate::codec::header(&entry)
                        .map_err(|reason| corrupt(&pack_key, reason))?;
                    if self.indexes.changes.latest(id) == Some(header.position) {
                        return Ok(Some(entry));
                    }
                }
            }
        }
        view_bytes(&self.tree, id)
    }

    /// The live view of call `id`, if any, read as [`View::view_bytes`] does.
    pub(crate) fn load_call(&self, id: u64) -> Result<Option<Call>, ProjectionError> {
        decode_view(id, self.view_bytes(id)?)
    }
}

/// The tree name of a view generation.
pub(crate) fn view_name(generation: u64) -> String {
    format!("view-{generation}")
}

/// What folding one chunk of records produced.
pub(crate) struct Folded {
    /// Every view change and the new checkpoint, to apply at once.
    pub(crate) batch: sled::Batch,
    /// The meta after the chunk.
    pub(crate) meta: Meta,
    /// Each call the chunk changed: its id, its view before and after (`None`: not live).
    pub(crate) changes: Vec<(u64, Option<Call>, Option<Call>)>,
    /// The last deletion row the batch writes, if it writes one.
    pub(crate) deletions: Option<DeletionRow>,
}

/// What a replay's fold is told of the batch before it, which another thread may not have
/// applied yet (a replay applies each batch while it folds the next).
#[derive(Clone, Copy)]
pub(crate) struct Replay<'a> {
    /// The calls that batch changed, as it leaves them.
    pub(crate) overlay: &'a Overlay,
    /// The last deletion row it writes.
    pub(crate) deletions: Option<&'a DeletionRow>,
}

/// Calls changed by a batch that may not be applied yet: their state after it (`None`: not live).
pub(crate) type Overlay = IdMap<Option<Call>>;

/// Calls made by the code appending their creates, by the log position of each create: what
/// the replay folding those records would make of them, so that it need not decode them
/// ([`crate::Appending::hand`]).
pub(crate) type Handed = BTreeMap<u64, Call>;

/// The events of a chunk of records, one per record in order, decoded ahead of its fold (a
/// replay's reader decodes them on its own thread, which lives for the whole replay).
pub(crate) type Decoded = Vec<Result<Event, call_model::EventDecodeError>>;

/// The event a log record holds: its payload, placed by the record's position, stream and
/// version.
fn decode_record(record: &Record) -> Result<Event, call_model::EventDecodeError> {
    Event::decode(
        record.position,
        record.stream,
        record.version,
        &record.payload,
    )
}

/// Decodes every record of `records` on this thread.
pub(crate) fn decode_all(records: &[Record]) -> Decoded {
    records.iter().map(decode_record).collect()
}

/// What a record folds as: its decoded event, or the call its create made, handed.
enum Folding {
    Event(Event),
    Created(Call),
}

/// The events of `records`, each decoded unless `handed` holds the call its record creates
/// (the record at the call's position, its stream's first version, the call's id its stream),
/// which is taken instead. Decoding is one of a fold's two expensive steps, and is spread over
/// the machine's cores for a large chunk, unless `decoded` holds every record's event already.
fn folding(
    records: &[Record],
    handed: &mut Handed,
    decoded: Option<Decoded>,
) -> Result<Vec<Folding>, ProjectionError> {
    if let Some(decoded) = decoded.filter(|decoded| decoded.len() == records.len()) {
        return decoded
            .into_iter()
            .map(|event| Ok(Folding::Event(event?)))
            .collect();
    }
    let mut created: Vec<Option<Call>> = records
        .iter()
        .map(|record| {
            let call = handed.remove(&record.position)?;
            (record.version == 1 && call.id == record.stream && call.version == 1).then_some(call)
        })
        .collect();
    let undecoded: Vec<&Record> = records
        .iter()
        .zip(&created)
        .filter(|(_, call)| call.is_none())
        .map(|(record, _)| record)
        .collect();
    let mut decoded = par_map(&undecoded, |record| decode_record(record)).into_iter();
    records
        .iter()
        .zip(created.iter_mut())
        .map(|(record, call)| match call.take() {
            Some(call) => Ok(Folding::Created(call)),
            None => match decoded.next() {
                Some(event) => Ok(Folding::Event(event?)),
                None => Err(corrupt(
                    CHECKPOINT,
                    format!("the record at position {} was not decoded", record.position),
                )),
            },
        })
        .collect()
}

/// Folds `records` (which must continue the log right after `meta.checkpoint`) into one batch.
/// In a `replay`, the calls the chunk creates (above every packed id) are written as packs.
/// `handed` are calls the chunk's creates made, by position, folded as they are instead of
/// decoding their records (an import's); those of the chunk are taken from it. `decoded`, when
/// given, holds the event of each record, decoded ahead (a replay's reader does).
///
/// Each call's state is read once per chunk (from the replay's overlay when it is there, else
/// from the tree) and evolved in memory through all of its events, so a call changed many times in a
/// chunk is written once. Decoding and encoding are the expensive steps and are spread over the
/// machine's cores for large chunks.
pub(crate) fn fold(
    tree: &sled::Tree,
    replay: Option<Replay<'_>>,
    meta: &Meta,
    records: &[Record],
    handed: &mut Handed,
    decoded: Option<Decoded>,
) -> Result<Folded, ProjectionError> {
    struct Slot {
        original: Option<Call>,
        state: CallState,
    }
    let events = folding(records, handed, decoded)?;
    // Sized for a chunk of calls touched once each (an import's, a rebuild's of creates):
    // growing the table as it fills was a seventh of the folding thread's time.
    let mut slots: IdMap<Slot> = IdMap::with_capacity_and_hasher(records.len(), Default::default());
    // First-touch order, so that the batch (and so the stored bytes) do not depend on hashing.
    let mut touched = Vec::with_capacity(records.len());
    let mut deletions = Vec::new();
    let mut expected = meta.checkpoint + 1;
    for (record, folding) in records.iter().zip(events) {
        if record.position != expected {
            return Err(corrupt(
                CHECKPOINT,
                format!(
                    "the log continues at position {} where {expected} was expected",
                    record.position
                ),
            ));
        }
        expected += 1;
        let call_id = record.stream;
        let slot = match slots.entry(call_id) {
            Entry::Occupied(slot) => slot.into_mut(),
            Entry::Vacant(slot) => {
                let original = match replay.and_then(|r| r.overlay.get(&call_id)) {
                    Some(state) => state.clone(),
                    // The first event of a call's stream: the log has nothing of it before this
                    // position, so neither has the view (whose checkpoint is behind it); not
                    // reading saves a lookup per created call, in a rebuild one per call.
                    None if record.version == 1 => None,
                    None => load_call(tree, call_id)?,
                };
                touched.push(call_id);
                slot.insert(Slot {
                    state: original.clone().map_or(CallState::Absent, CallState::Live),
                    original,
                })
            }
        };
        let event = match folding {
            // A handed create folds to its call from nothing; from anything else (a log that
            // holds a stream's first version twice), as its record says.
            Folding::Created(call) if matches!(slot.state, CallState::Absent) => {
                slot.state = CallState::Live(call);
                continue;
            }
            Folding::Created(_) => decode_record(record)?,
            Folding::Event(event) => event,
        };
        let was_live = matches!(slot.state, CallState::Live(_));
        if was_live && matches!(event.stored.body, EventBody::CallDeleted) {
            deletions.push((event.position, event.call_id, event.stored.recorded_at));
        }
        slot.state = evolve_owned(std::mem::take(&mut slot.state), event);
    }
    let mut batch = sled::Batch::default();
    let mut changes = Vec::with_capacity(touched.len());
    let (mut added, mut removed) = (0u64, 0u64);
    for id in touched {
        let Some(slot) = slots.remove(&id) else {
            continue;
        };
        let new = match slot.state {
            CallState::Live(call) => Some(call),
            _ => None,
        };
        let changed = match (&slot.original, &new) {
            (Some(old), Some(new)) => old.position != new.position,
            (None, None) => false,
            _ => true,
        };
        if !changed {
            continue;
        }
        if slot.original.is_some() {
            removed += 1;
            if new.is_none() {
                if id >> PACK_SHIFT < meta.packed_below {
                    // An empty row hides a packed view, which is never rewritten.
                    batch.insert(&key(CALL, id), &[]);
                } else {
                    batch.remove(&key(CALL, id));
                }
            }
        }
        if new.is_some() {
            added += 1;
        }
        changes.push((id, slot.original, new));
    }
    // Each live call the chunk changed, and whether the chunk created it.
    let written: Vec<(&Call, bool)> = changes
        .iter()
        .filter_map(|(_, original, new)| Some((new.as_ref()?, original.is_none())))
        .collect();
    let encoded = par_map(&written, |(call, _)| encode_call(call));
    // Calls created in this chunk, ids ascending, of ranges above every packed one: the
    // packable ones.
    let mut packable: Vec<(u64, &[u8])> = Vec::new();
    for ((call, created), bytes) in written.iter().zip(&encoded) {
        let ascending = packable.last().is_none_or(|(last, _)| call.id > *last);
        if replay.is_some() && *created && call.id >> PACK_SHIFT >= meta.packed_below && ascending {
            packable.push((call.id, bytes));
        } else {
            batch.insert(&key(CALL, call.id), bytes.as_slice());
        }
    }
    let mut packed_below = meta.packed_below;
    for views in packable.chunk_by(|(a, _), (b, _)| a >> PACK_SHIFT == b >> PACK_SHIFT) {
        let range = views[0].0 >> PACK_SHIFT;
        batch.insert(&key(PACK, range), encode_pack(views.iter().copied()));
        packed_below = range + 1;
    }
    // Positions ascend, so only the first range can hold deletions already, written by the
    // batch before (the replay's, which may not be applied yet) or in the tree.
    let mut last_row = None;
    for range_deletions in deletions.chunk_by(|a, b| a.0 >> DELETION_SHIFT == b.0 >> DELETION_SHIFT)
    {
        let range = range_deletions[0].0 >> DELETION_SHIFT;
        let mut row = match replay.and_then(|r| r.deletions) {
            Some((before, row)) if *before == range => row.clone(),
            _ => tree
                .get(key(DELETION, range))?
                .map_or_else(Vec::new, |row| row.to_vec()),
        };
        for (position, id, at) in range_deletions {
            row.extend_from_slice(&encode_deletion(*position, *id, *at));
        }
        batch.insert(&key(DELETION, range), row.as_slice());
        last_row = Some((range, row));
    }
    let meta = Meta {
        checkpoint: expected - 1,
        live: (meta.live + added).saturating_sub(removed),
        deleted: meta.deleted + deletions.len() as u64,
        packed_below,
    };
    meta.write(&mut batch);
    Ok(Folded {
        batch,
        meta,
        changes,
        deletions: last_row,
    })
}

/// How many threads the parallel maps use: the machine's cores, at most eight.
fn threads() -> usize {
    // Asked once: `available_parallelism` reads cgroup files on every call, and catch-up for a
    // single write runs `par_map` on the hot path of every acknowledged command.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
}

/// Maps a few costly `items` of unequal costs with `f` on the machine's cores, each thread
/// taking the next item as soon as it is free (where [`par_map`] gives each thread an equal
/// share of many cheap items).
pub(crate) fn par_map_costly<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    let threads = threads().min(items.len());
    if threads < 2 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return done;
            };
            done.push((i, f(item)));
        }
    };
    let mut out: Vec<(usize, U)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut out = work();
        for handle in handles {
            match handle.join() {
                Ok(part) => out.extend(part),
                // The closure panicked: a bug, not bad input. Keep its behaviour on one thread.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    });
    out.sort_unstable_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, value)| value).collect()
}

/// Below this many items, threads cost more than they save.
const PARALLEL_MIN: usize = 512;

/// Maps `items` with `f`, on several threads when there are many.
pub(crate) fn par_map<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    if items.len() < PARALLEL_MIN {
        return items.iter().map(f).collect();
    }
    let threads = threads();
    if threads < 2 {
        return items.iter().map(f).collect();
    }
    let per_thread = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per_thread)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<U>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for handle in handles {
            match handle.join() {
                Ok(part) => out.extend(part),
                // The closure panicked: a bug, not bad input. Keep its behaviour on one thread.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}
