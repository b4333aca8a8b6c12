//! Bulk work on a view tree: the log replayed into it (a rebuild, `verify`'s scratch copy, the
//! catch-up of a view far behind at open), pipelined over threads, and its indexes built from
//! its stored views.

use crate::column::Column;
use crate::error::ProjectionError;
use crate::index::{IdMap, IdSet, IndexRow, Indexes, SplitBuilder};
use crate::store::{
    decode_all, decode_call, fold, par_map, Decoded, DeletionRow, Handed, Meta, Overlay, Replay,
    Views,
};
use call_model::Call;
use event_log::{EventLog, LogError, Record};
use std::sync::Arc;

/// Records per batch while replaying, where nothing else writes.
const REBUILD_CHUNK: usize = 16_384;

#[cfg(test)]
thread_local! {
    /// The chunk size of replays started on this thread, in place of [`REBUILD_CHUNK`]: small,
    /// so that a test's few hundred events change calls across chunks.
    pub(crate) static TEST_CHUNK: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Records per batch of a replay started on this thread.
fn rebuild_chunk() -> usize {
    #[cfg(test)]
    if let Some(chunk) = TEST_CHUNK.with(std::cell::Cell::get) {
        return chunk;
    }
    REBUILD_CHUNK
}

/// Records per batch of a replay that follows appends ([`Appending`]): smaller than
/// [`REBUILD_CHUNK`], so that what is left once the appends end (a chunk behind the head, and
/// the part of one after it) is little, at a few threads started per chunk.
const FOLLOWING_CHUNK: usize = 4096;

/// Views decoded per step while building indexes: enough to share out over the cores, few
/// enough that the raw rows of a step are a small buffer rather than a copy of the view.
const INDEX_SCAN_CHUNK: usize = 8192;

/// Builds the in-memory indexes of a stored view, streaming over its calls.
pub(crate) fn build_indexes(tree: &sled::Tree, meta: &Meta) -> Result<Indexes, ProjectionError> {
    let mut builder = SplitBuilder::default();
    let mut raw = Vec::with_capacity(INDEX_SCAN_CHUNK);
    let mut add = |raw: &mut Vec<(u64, sled::IVec)>| -> Result<(), ProjectionError> {
        let calls = par_map(raw, |(id, value)| {
            decode_call(*id, value).map(|call| (*id, call))
        })
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
        builder.add_all(|| calls.iter().map(|(id, call)| (*id, call)));
        raw.clear();
        Ok(())
    };
    for view in Views::new(tree) {
        raw.push(view?);
        if raw.len() == INDEX_SCAN_CHUNK {
            add(&mut raw)?;
        }
    }
    add(&mut raw)?;
    counted(&builder, meta, "the views")?;
    Ok(builder.finish())
}

/// Frees `value` on a thread of its own, so that whoever waits for the work that made it (a
/// rebuild, readers held off by a lock) does not wait for the freeing of a million calls' worth
/// of allocations too; here if no thread can be started.
pub(crate) fn free_elsewhere<T: Send + 'static>(what: &str, value: T) {
    let freeing = std::thread::Builder::new()
        .name(format!("drop-{what}"))
        .spawn(move || drop(value));
    if let Err(error) = freeing {
        tracing::debug!(%error, what, "no thread to free it: freed here");
    }
}

/// Checks that `builder` holds as many calls as `meta` counts live (`source` says where the
/// builder's calls came from).
fn counted(builder: &SplitBuilder, meta: &Meta, source: &str) -> Result<(), ProjectionError> {
    if builder.len() as u64 == meta.live {
        return Ok(());
    }
    Err(ProjectionError::Corrupt {
        key: "counters".to_owned(),
        reason: format!("count {} live calls, {source} {}", meta.live, builder.len()),
    })
}

/// Appends being made to the log while a replay follows it (an import's workers): the replay
/// reads a chunk once the log holds a whole one past what it read, or once the appends have
/// ended, rather than stopping at the head it finds.
///
/// Replaying beside the appends puts the projection's work on the cores during the import
/// instead of after it; reading whole chunks keeps its cost per event what a replay's is (a
/// replay that took whatever the head held, a few hundred records at a time, spent a fifth
/// more of the import's CPU on the extra chunks' fixed costs).
///
/// The code appending may also hand the replay the calls its creates made ([`Appending::hand`]),
/// which the replay then folds as they are instead of decoding their records again: decoding
/// was an eighth of an import's CPU.
#[derive(Debug, Default)]
pub struct Appending {
    ended: std::sync::Mutex<bool>,
    moved: std::sync::Condvar,
    /// Calls handed, by the position of their create, until the replay reads its record.
    handed: std::sync::Mutex<Handed>,
}

/// The most calls [`Appending`] holds for the replay: past it, calls handed are let go and the
/// replay decodes their records (a replay that falls behind holds no more memory).
const HANDED_MAX: usize = 4 * FOLLOWING_CHUNK;

impl Appending {
    /// Hands the replay calls as the durable creates at their positions made them (the state
    /// `evolve` gives of each create's event, as `CommandService` answers it). The replay
    /// still reads each record, and takes the call only where the record is its create: the
    /// record at the call's position, its stream's first version, the call's id its stream.
    pub fn hand(&self, calls: impl IntoIterator<Item = Call>) {
        let mut handed = self.handed();
        for call in calls {
            if handed.len() >= HANDED_MAX {
                break;
            }
            handed.insert(call.position, call);
        }
    }

    fn handed(&self) -> std::sync::MutexGuard<'_, Handed> {
        self.handed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The calls handed for positions up to `last`; those handed for positions past it stay.
    fn take_handed(&self, last: u64) -> Handed {
        let mut handed = self.handed();
        let later = handed.split_off(&(last + 1));
        std::mem::replace(&mut *handed, later)
    }

    /// Tells the replay that appends were made (call it after they are acknowledged).
    pub fn appended(&self) {
        // Taking the lock orders this with a reader between its look at the head and its wait,
        // so that no wake-up falls between the two.
        drop(self.lock());
        self.moved.notify_all();
    }

    /// Tells the replay that no more appends will be made: it reads up to the head and ends.
    pub(crate) fn end(&self) {
        *self.lock() = true;
        self.moved.notify_all();
    }

    /// A guard that ends the appends ([`Appending::end`]) when it is dropped, however the code
    /// that makes them returns (an error, a panic), so that the replay never waits for appends
    /// that will not come.
    pub(crate) fn ending(&self) -> EndsAppending<'_> {
        EndsAppending(self)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until the appends end.
    pub(crate) fn wait_until_ended(&self) {
        let mut ended = self.lock();
        while !*ended {
            ended = self
                .moved
                .wait(ended)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Waits until the log's head reaches `position` or the appends end.
    fn wait_for(&self, log: &EventLog, position: u64) {
        let mut ended = self.lock();
        while !*ended && log.head() < position {
            ended = self
                .moved
                .wait(ended)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// Ends its [`Appending`] when dropped ([`Appending::ending`]).
#[derive(Debug)]
pub(crate) struct EndsAppending<'a>(&'a Appending);

impl Drop for EndsAppending<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A chunk of the log's records as the replay's reader sends it, with their events decoded
/// unless the replay follows appends; or the error that ended the reading.
type ReadChunk = Result<(Vec<Record>, Option<Decoded>), LogError>;

/// Sends the log's records after `after`, up to `upto` (or the head when it is reached), in
/// chunks of `chunk` records, until the receiver is gone or a read fails (the error is sent).
/// With `appending`, the head it stops at is the one the log has once the appends end.
fn read_ahead(
    log: &EventLog,
    mut after: u64,
    upto: Option<u64>,
    chunk: usize,
    appending: Option<&Appending>,
    chunks: &std::sync::mpsc::SyncSender<ReadChunk>,
) {
    loop {
        let limit = match upto {
            Some(upto) => chunk.min(upto.saturating_sub(after) as usize),
            None => chunk,
        };
        if limit == 0 {
            return;
        }
        if let Some(appending) = appending {
            appending.wait_for(log, after.saturating_add(limit as u64));
        }
        let records = log.read_from(after, limit);
        let next = match &records {
            Ok(records) => match records.last() {
                Some(last) => Some(last.position),
                None => return,
            },
            Err(_) => None,
        };
        // Decoded here, on a thread that lives for the whole replay, unless the appends that
        // a replay follows hand their calls over instead (an import's).
        let records = records.map(|records| {
            let decoded = appending.is_none().then(|| decode_all(&records));
            (records, decoded)
        });
        if chunks.send(records).is_err() {
            return;
        }
        match next {
            Some(last) => after = last,
            None => return,
        }
    }
}

/// What the replay hands its index thread after each chunk.
struct Spent {
    /// The chunk's overlay: each call it changed, in its new state (`None`: no longer live), of
    /// which the index thread makes the index rows. Shared with the fold of the next chunk,
    /// which reads the calls' states from it.
    changed: Arc<Overlay>,
    /// The previous chunk's overlay and the calls' former states the chunk replaced, dropped
    /// there.
    garbage: (Arc<Overlay>, Vec<Option<Call>>),
}

/// The indexes a replay from an empty view builds as it goes.
struct Built {
    builder: SplitBuilder,
    /// The calls whose rows the builder holds.
    added: Column<bool>,
    /// The final rows of calls changed again after their rows were added (`None`: no longer
    /// live).
    changed_again: IdMap<Option<IndexRow>>,
}

/// How many calls changed again [`Built`] keeps aside at least before it settles them. In this
/// crate's tests few, so that their replays settle several times.
const SETTLE_MIN: usize = if cfg!(test) { 4 } else { 65_536 };

impl Built {
    /// Adds the rows of the calls a chunk left live for the first time, and keeps aside those
    /// of calls it changed again; settles those once they are a quarter of the calls added
    /// (and at least [`SETTLE_MIN`]), so that the entries superseded and the rows kept aside
    /// stay a fraction of the indexes however often a log changes its calls again. Each
    /// settling walks every entry, and is due only once a quarter as many calls as the builder
    /// holds were changed again since the last, so the walks cost in proportion to the changes.
    fn add_chunk(&mut self, changed: &Overlay) {
        let mut first = Vec::new();
        for (id, call) in changed {
            if *self.added.get(*id) {
                self.changed_again
                    .insert(*id, call.as_ref().map(IndexRow::of));
            } else if let Some(call) = call {
                self.added.set(*id, true);
                first.push((*id, call));
            }
        }
        // In the order of their ids, as the calls of later chunks follow them: a set whose
        // entries come in id order sorts them without comparing ids (`sort_text_entries`).
        first.sort_unstable_by_key(|(id, _)| *id);
        self.builder
            .add_all(|| first.iter().map(|(id, call)| (*id, *call)));
        if self.changed_again.len() >= SETTLE_MIN.max(self.builder.len() / 4) {
            self.settle();
        }
    }

    /// Replaces the rows of the calls changed again: their first rows are forgotten, and their
    /// final ones (if they are still live) added.
    fn settle(&mut self) {
        if self.changed_again.is_empty() {
            return;
        }
        let changed_again = std::mem::take(&mut self.changed_again);
        let again: IdSet = changed_again.keys().copied().collect();
        self.builder.forget(&again);
        for (id, row) in &changed_again {
            self.added.set(*id, row.is_some());
        }
        self.builder.add_all(|| {
            changed_again
                .iter()
                .filter_map(|(id, row)| Some((*id, row.as_ref()?)))
        });
        free_elsewhere("changed-rows", changed_again);
    }

    /// The indexes of the calls live at `meta`: the calls changed again have their first rows
    /// replaced by their final ones.
    fn finish(mut self, meta: &Meta) -> Result<Indexes, ProjectionError> {
        self.settle();
        let Built { builder, added, .. } = self;
        drop(added);
        counted(&builder, meta, "the replay")?;
        // Building the sets once at the end, rather than following each chunk, sorts and packs
        // each of them once.
        Ok(builder.finish())
    }
}

/// Replays the log into `tree`, up to `upto` (or the head; with `appending`, the head once the
/// appends end), and builds the indexes of the result (from the replayed calls' final states,
/// or from the tree when continuing a view).
/// `from` is the tree's meta to continue from; `None` starts an empty tree from the beginning
/// of the log.
///
/// Pipelined over three threads: while one applies chunk n to sled (which takes a process-wide
/// lock and runs on one core), another folds chunk n+1, reading the calls chunk n changed from
/// an overlay of its results rather than from the tree, which may not hold them yet, and a third
/// builds the indexes from the calls each chunk changed and drops what the chunk leaves behind.
pub(crate) fn replay(
    log: &EventLog,
    tree: &sled::Tree,
    from: Option<Meta>,
    upto: Option<u64>,
    appending: Option<&Appending>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Meta, Indexes), ProjectionError> {
    let from_empty = from.is_none();
    let started = std::time::Instant::now();
    let mut meta = match from {
        Some(meta) => meta,
        None => {
            let meta = Meta::default();
            let mut batch = sled::Batch::default();
            meta.write(&mut batch);
            tree.apply_batch(batch)?;
            meta
        }
    };
    // From an empty view every call's final state passes through the fold, so the indexes are
    // built from the folded calls rather than by reading and decoding every view again after.
    let built = std::thread::scope(|scope| -> Result<Option<Built>, ProjectionError> {
        let (batches, queue) = std::sync::mpsc::sync_channel::<sled::Batch>(0);
        let (done, applied) = std::sync::mpsc::channel::<sled::Result<()>>();
        std::thread::Builder::new()
            .name("rebuild-apply".into())
            .spawn_scoped(scope, move || {
                for batch in queue {
                    let result = tree.apply_batch(batch);
                    let failed = result.is_err();
                    if done.send(result).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(ProjectionError::Io)?;
        // The index rows, the indexes built from them and what a chunk leaves behind go to a
        // thread of their own. Each call's row goes into the builder the first time a chunk
        // leaves it live, rather than every call's final row being kept until the end: that
        // was a row of a few hundred bytes per call held at once, 0.3 GB of a rebuild's peak
        // at a million calls. A call a later chunk changes again has its final row kept
        // aside, and replaces the first when `Built` settles them.
        let (spend, spent) = std::sync::mpsc::sync_channel::<Spent>(1);
        let indexer = std::thread::Builder::new()
            .name("rebuild-index".into())
            .spawn_scoped(scope, move || {
                let mut built = from_empty.then(|| Built {
                    builder: SplitBuilder::default(),
                    added: Column::new(false),
                    changed_again: IdMap::default(),
                });
                for Spent { changed, garbage } in spent {
                    drop(garbage);
                    if let Some(built) = built.as_mut() {
                        built.add_chunk(&changed);
                    }
                }
                built
            })
            .map_err(ProjectionError::Io)?;
        let wait_applied = || match applied.recv() {
            Ok(result) => result.map_err(ProjectionError::from),
            Err(_) => Err(ProjectionError::Corrupt {
                key: "view".to_owned(),
                reason: "the rebuild's writer thread stopped".to_owned(),
            }),
        };
        // The log is read a chunk ahead, on a thread of its own: reading it (sled pulling
        // the log's pages from disk) was most of the folding thread's time.
        let (read, chunks) = std::sync::mpsc::sync_channel::<ReadChunk>(1);
        let start = meta.checkpoint;
        let chunk = match appending {
            Some(_) => FOLLOWING_CHUNK.min(rebuild_chunk()),
            None => rebuild_chunk(),
        };
        std::thread::Builder::new()
            .name("rebuild-read".into())
            .spawn_scoped(scope, move || {
                read_ahead(log, start, upto, chunk, appending, &read)
            })
            .map_err(ProjectionError::Io)?;
        let mut overlay = Arc::new(Overlay::default());
        // The last deletion row written: the tree's, or newer while its batch is in flight.
        let mut deletions: Option<DeletionRow> = None;
        let mut in_flight = false;
        let replayed = loop {
            let (records, decoded) = match chunks.recv() {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(error)) => break Err(error.into()),
                // The reader is done: it sent every chunk up to `upto` or the head.
                Err(_) => break Ok(()),
            };
            let mut handed = match (appending, records.last()) {
                (Some(appending), Some(last)) => appending.take_handed(last.position),
                _ => Handed::new(),
            };
            let replay = Replay {
                overlay: &overlay,
                deletions: deletions.as_ref(),
            };
            let mut folded = match fold(tree, Some(replay), &meta, &records, &mut handed, decoded) {
                Ok(folded) => folded,
                Err(error) => break Err(error),
            };
            drop(records);
            // Calls handed whose records said otherwise.
            drop(handed);
            // The previous batch must be in the tree before this one follows it (and before
            // the next fold reads past this overlay).
            if in_flight {
                if let Err(error) = wait_applied() {
                    break Err(error);
                }
            }
            if batches.send(folded.batch).is_err() {
                break wait_applied();
            }
            in_flight = true;
            meta = folded.meta;
            deletions = folded.deletions.take().or(deletions);
            let (next, originals): (Overlay, Vec<Option<Call>>) = folded
                .changes
                .into_iter()
                .map(|(id, original, new)| ((id, new), original))
                .unzip();
            let changed = Arc::new(next);
            let garbage = (
                std::mem::replace(&mut overlay, Arc::clone(&changed)),
                originals,
            );
            if spend.send(Spent { changed, garbage }).is_err() {
                break Err(ProjectionError::Corrupt {
                    key: "view".to_owned(),
                    reason: "the rebuild's index thread stopped".to_owned(),
                });
            }
            progress(meta.checkpoint, log.head().max(meta.checkpoint));
        };
        drop(spend);
        // Stops the reader if the loop ended early (its next send fails).
        drop(chunks);
        let built = match indexer.join() {
            Ok(built) => built,
            // A panic there is a bug, not bad input: keep its behaviour on one thread.
            Err(panic) => std::panic::resume_unwind(panic),
        };
        replayed?;
        if in_flight {
            wait_applied()?;
        }
        Ok(built)
    })?;
    let replayed = started.elapsed();
    let indexes = match built {
        Some(built) => built.finish(&meta)?,
        None => build_indexes(tree, &meta)?,
    };
    tracing::debug!(
        replay_seconds = replayed.as_secs_f64(),
        index_seconds = (started.elapsed() - replayed).as_secs_f64(),
        "log replayed and its indexes built"
    );
    Ok((meta, indexes))
}
