//! The stored projection: the key layout of a view tree, its row codecs, and the fold of a chunk
//! of log records into the one batch that applies them.
//!
//! | key                    | value                                              |
//! |------------------------|----------------------------------------------------|
//! | `c` id                 | the live call, in the codec's stored form            |
//! | `d` position           | id, deletedAt millis: the CallDeleted at `position`|
//! | `k`                    | the checkpoint: the last applied log position      |
//! | `n`                    | live calls, deleted calls                          |
//! | `m`                    | the layout version, [`LAYOUT_VERSION`]             |
//!
//! Integers are big-endian, so sled's byte order is numeric order. Each chunk of records is one
//! `apply_batch` holding every view change and the new checkpoint, so after a crash the view and
//! its checkpoint always agree (sled recovers a batch all or nothing).
//!
//! The change feed of live calls (position of the latest event -> id) is not stored: each view
//! holds its call's latest position, so it is an in-memory index built with the others. That
//! halves the rows a rebuild writes (a sled insert costs as much as decoding an event), and a
//! feed derived from the views cannot disagree with them. Deleted calls have no view, so their
//! deletions are stored.

use crate::error::ProjectionError;
use crate::index::{IdMap, Indexes};
use crate::query::Deletion;
use call_model::{evolve, Call, CallState, Event, EventBody, Timestamp};
use event_log::Record;
use std::collections::hash_map::Entry;

/// Prefix of the live calls' views, by id.
pub(crate) const CALL: u8 = b'c';
/// Prefix of the deletions, by the position of the CallDeleted event.
pub(crate) const DELETION: u8 = b'd';
/// The checkpoint.
pub(crate) const CHECKPOINT: &[u8] = b"k";
/// The live and deleted counters.
pub(crate) const COUNTERS: &[u8] = b"n";
/// The layout version.
pub(crate) const LAYOUT: &[u8] = b"m";
/// Written under [`LAYOUT`]; a view with another value is rebuilt at open.
pub(crate) const LAYOUT_VERSION: &[u8] = b"call-projections/3";

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
        (_, Some((DELETION, position))) => format!("deletion at position {position}"),
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
    let key = key(CALL, id);
    let call = crate::codec::decode(bytes).map_err(|reason| corrupt(&key, reason))?;
    if call.id != id {
        return Err(corrupt(&key, format!("it holds call {}", call.id)));
    }
    Ok(call)
}

/// The live view of call `id`, if any.
pub(crate) fn load_call(tree: &sled::Tree, id: u64) -> Result<Option<Call>, ProjectionError> {
    match tree.get(key(CALL, id))? {
        Some(bytes) => decode_call(id, &bytes).map(Some),
        None => Ok(None),
    }
}

/// The stored form of a deletion.
pub(crate) fn encode_deletion(id: u64, at: Timestamp) -> [u8; 16] {
    let mut value = [0; 16];
    value[..8].copy_from_slice(&id.to_be_bytes());
    value[8..].copy_from_slice(&at.millis().to_be_bytes());
    value
}

/// Reads a stored deletion.
pub(crate) fn decode_deletion(position: u64, value: &[u8]) -> Result<Deletion, ProjectionError> {
    let bytes: [u8; 16] = value.try_into().map_err(|_| {
        corrupt(
            &key(DELETION, position),
            format!("expected 16 bytes, found {}", value.len()),
        )
    })?;
    let (id, at) = bytes.split_at(8);
    Ok(Deletion {
        id: u64::from_be_bytes(id.try_into().unwrap_or_default()),
        deleted_at: Timestamp::from_millis(i64::from_be_bytes(at.try_into().unwrap_or_default())),
        position,
    })
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
        Ok(Meta {
            checkpoint,
            live: read_u64(COUNTERS, &counters[..8])?,
            deleted: read_u64(COUNTERS, &counters[8..])?,
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
}

/// Calls changed by a batch that may not be applied yet: their state after it (`None`: not live).
pub(crate) type Overlay = IdMap<Option<Call>>;

/// Folds `records` (which must continue the log right after `meta.checkpoint`) into one batch.
///
/// Each call's state is read once per chunk (from `overlay` when it is there, else from the
/// tree) and evolved in memory through all of its events, so a call changed many times in a
/// chunk is written once. Decoding and encoding are the expensive steps and are spread over the
/// machine's cores for large chunks.
pub(crate) fn fold(
    tree: &sled::Tree,
    overlay: Option<&Overlay>,
    meta: &Meta,
    records: &[Record],
) -> Result<Folded, ProjectionError> {
    struct Slot {
        original: Option<Call>,
        state: CallState,
    }
    let events = par_map(records, |r| {
        Event::decode(r.position, r.stream, r.version, &r.payload)
    })
    .into_iter()
    .collect::<Result<Vec<Event>, _>>()?;
    let mut slots: IdMap<Slot> = IdMap::default();
    // First-touch order, so that the batch (and so the stored bytes) do not depend on hashing.
    let mut touched = Vec::new();
    let mut deletions = Vec::new();
    let mut expected = meta.checkpoint + 1;
    for event in events {
        if event.position != expected {
            return Err(corrupt(
                CHECKPOINT,
                format!(
                    "the log continues at position {} where {expected} was expected",
                    event.position
                ),
            ));
        }
        expected += 1;
        let slot = match slots.entry(event.call_id) {
            Entry::Occupied(slot) => slot.into_mut(),
            Entry::Vacant(slot) => {
                let original = match overlay.and_then(|o| o.get(&event.call_id)) {
                    Some(state) => state.clone(),
                    // The first event of a call's stream: the log has nothing of it before this
                    // position, so neither has the view (whose checkpoint is behind it); not
                    // reading saves a lookup per created call, in a rebuild one per call.
                    None if event.version == 1 => None,
                    None => load_call(tree, event.call_id)?,
                };
                touched.push(event.call_id);
                slot.insert(Slot {
                    state: original.clone().map_or(CallState::Absent, CallState::Live),
                    original,
                })
            }
        };
        let was_live = matches!(slot.state, CallState::Live(_));
        slot.state = evolve(std::mem::take(&mut slot.state), &event);
        if was_live && matches!(event.stored.body, EventBody::CallDeleted) {
            deletions.push((event.position, event.call_id, event.stored.recorded_at));
        }
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
                batch.remove(&key(CALL, id));
            }
        }
        if new.is_some() {
            added += 1;
        }
        changes.push((id, slot.original, new));
    }
    let written: Vec<&Call> = changes
        .iter()
        .filter_map(|(_, _, new)| new.as_ref())
        .collect();
    for (call, bytes) in written
        .iter()
        .zip(par_map(&written, |call| encode_call(call)))
    {
        batch.insert(&key(CALL, call.id), bytes);
    }
    for (position, id, at) in &deletions {
        batch.insert(&key(DELETION, *position), &encode_deletion(*id, *at));
    }
    let meta = Meta {
        checkpoint: expected - 1,
        live: (meta.live + added).saturating_sub(removed),
        deleted: meta.deleted + deletions.len() as u64,
    };
    meta.write(&mut batch);
    Ok(Folded {
        batch,
        meta,
        changes,
    })
}

/// Below this many items, threads cost more than they save.
const PARALLEL_MIN: usize = 512;

/// Maps `items` with `f`, on several threads when there are many.
pub(crate) fn par_map<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    if items.len() < PARALLEL_MIN {
        return items.iter().map(f).collect();
    }
    // Asked once: `available_parallelism` reads cgroup files on every call, and catch-up for a
    // single write runs this on the hot path of every acknowledged command.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads =
        *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)));
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
