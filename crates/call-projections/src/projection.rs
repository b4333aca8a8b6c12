//! [`Projection`]: the current view of every call, folded from the event log into its own sled
//! database, with its checkpoint, in-memory indexes, queries, rebuild and verify.
//!
//! # Concurrency
//!
//! One mutex serialises everything that writes (catch-up, rebuild, verify); readers never take
//! it. The view (tree handle, counters, indexes) sits behind a read-write lock: a list holds the
//! read lock for its whole run, so the indexes it walks and the rows it reads agree; catch-up
//! holds the write lock only around `apply_batch` and the index update of each chunk, and
//! folds the chunk (reading the log, decoding, evolving, encoding) before taking it.
//!
//! # Rebuild
//!
//! A rebuild replays the whole log into a fresh tree (`view-<generation+1>`) while the old view
//! keeps serving reads, then switches the `active` pointer in the default tree and drops the old
//! tree. A crash midway leaves the old view active and the half-built tree is dropped at the
//! next open.

use crate::bulk::{build_indexes, free_elsewhere, replay, Appending};
use crate::diff;
use crate::engine;
use crate::error::{ProjectionError, QueryError};
use crate::index::{Differences, IndexRow, Indexes};
use crate::pack_cache::{HeldPacks, PackCache};
use crate::query::{ChangesPage, ListPage, ListQuery};
use crate::snapshot::{self, Stamp, Unused};
use crate::store::{
    decode_call_ref, describe_key, fold, key, load_call, par_map, read_u64, split_key, view_name,
    Handed, Meta, View, PACK,
};
use call_model::{replay_stream, Call, CallRef, CallState};
use event_log::{EventLog, StallClock};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::{Duration, Instant};

/// Records read and applied per batch while catching up: small enough that a batch holds sled's
/// process-wide batch lock (which the log's appends share) only briefly.
const LIVE_CHUNK: usize = 4096;
/// The most differences `verify` spells out.
const MAX_DIFFERENCES: usize = 20;
/// sled's cache for `verify`'s scratch database, which is written and read once (sled's default
/// is 1 GiB, which would double the process's memory for the duration).
const SCRATCH_CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// The key in the default tree naming the active view's generation.
const ACTIVE: &[u8] = b"active";

/// The counts and sizes of a projection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionStats {
    /// Calls that exist.
    pub live_calls: u64,
    /// Calls deleted (each counted once).
    pub deleted_calls: u64,
    /// The last log position applied.
    pub checkpoint: u64,
    /// Bytes the projection's sled database uses on disk.
    pub size_on_disk: u64,
    /// The heap memory each in-memory index takes, estimated from what it holds, by the name
    /// of what it indexes (an attribute, a relationship, `id` or `changes`).
    pub index_memory: Vec<(String, usize)>,
}

/// What a rebuild did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RebuildReport {
    /// Events replayed.
    pub events: u64,
    /// Live calls in the rebuilt view.
    pub calls: u64,
    /// Wall-clock time it took.
    pub seconds: f64,
}

/// What a verify found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events replayed into the scratch view.
    pub events: u64,
    /// Live calls in the scratch view.
    pub calls: u64,
    /// Each difference between the live and the rebuilt projection, one per line (at most about
    /// twenty, the last saying how many more there are); empty when they are equal.
    pub differences: Vec<String>,
}

/// The current view of every call, its indexes and its queries. Cheap to clone; clones share
/// everything.
#[derive(Clone)]
pub struct Projection {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    log: EventLog,
    dir: PathBuf,
    /// Held by whatever writes the view.
    apply: Mutex<()>,
    /// The view's checkpoint, readable without a lock.
    checkpoint: AtomicU64,
    view: RwLock<View>,
    /// The view whose indexes the snapshot file holds, as read at open or written since, so
    /// that a close that changed nothing does not write it again.
    snapshot: Mutex<Option<Stamp>>,
    /// Set by [`Projection::close_with_process`]: the process exits once this closes.
    exiting: AtomicBool,
    /// Counts while the view catches up with the log, from the last chunk applied.
    stall: StallClock,
    /// The bytes of packs each view keeps ([`ProjectionOptions::cache_bytes`]).
    pack_cache_bytes: u64,
}

/// Closing writes the index snapshot that the next open reads instead of decoding every call,
/// unless the file already holds this very view's. Best effort: a failure is logged, and the
/// next open builds the indexes as it would without one.
impl Drop for Inner {
    fn drop(&mut self) {
        let Ok(view) = self.view.get_mut() else {
            return;
        };
        let on_disk = self
            .snapshot
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let written = encode_snapshot(&self.db, view, *on_disk).and_then(|file| match file {
            Some(file) => write_snapshot_file(&self.dir, file, on_disk),
            None => Ok(()),
        });
        if let Err(error) = written {
            tracing::warn!(
                file = %snapshot::path(&self.dir).display(),
                %error,
                "the index snapshot could not be written; the next open builds the indexes from the views"
            );
        }
        if self.exiting.load(Ordering::Relaxed) {
            // The process's exit reclaims them at once; freeing a million calls' index nodes
            // one by one took most of a second after a `callledger rebuild` had finished.
            std::mem::forget(std::mem::replace(&mut view.indexes, Indexes::new()));
        }
    }
}

/// Where [`Projection::open_rebuilt`] moves the files of the database it replaces, until they
/// are removed: a directory inside the projection's own, so that a projection directory that
/// is a mount point or a symbolic link stays what it is.
fn replaced_dir(dir: &Path) -> PathBuf {
    dir.join("replaced")
}

/// Removes a database [`Projection::open_rebuilt`] replaced, if one is left (a rebuild stopped
/// before it was removed).
fn remove_replaced(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(replaced_dir(dir)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Moves every file of the database in `dir` into [`replaced_dir`], then removes them.
fn replace_database(dir: &Path) -> std::io::Result<()> {
    let replaced = replaced_dir(dir);
    std::fs::create_dir(&replaced)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.path() != replaced {
            std::fs::rename(entry.path(), replaced.join(entry.file_name()))?;
        }
    }
    remove_replaced(dir)
}

/// The snapshot file of `view`'s indexes, unless `on_disk` (what the file holds) says it is
/// already there: the part of writing one that needs the view, and so its lock.
fn encode_snapshot(
    db: &sled::Db,
    view: &View,
    on_disk: Option<Stamp>,
) -> Result<Option<(Stamp, snapshot::EncodedFile)>, ProjectionError> {
    let stamp = Stamp::of(view.generation, &view.meta);
    if on_disk == Some(stamp) {
        return Ok(None);
    }
    // The snapshot names the view by its stored checkpoint and counters, so they must be on
    // disk (a crash then recovers the view at this checkpoint or after it), and be the ones
    // these indexes follow (not those of a rebuild cut short).
    db.flush()?;
    if Meta::read(&view.tree)? != view.meta {
        return Ok(None);
    }
    Ok(Some((stamp, snapshot::encode_file(stamp, &view.indexes))))
}

/// Writes a snapshot file made by [`encode_snapshot`] into `dir` and notes it in `on_disk`.
fn write_snapshot_file(
    dir: &Path,
    (stamp, file): (Stamp, snapshot::EncodedFile),
    on_disk: &mut Option<Stamp>,
) -> Result<(), ProjectionError> {
    snapshot::write_file(dir, &file)?;
    *on_disk = Some(stamp);
    tracing::info!(
        dir = %dir.display(),
        calls = stamp.live,
        checkpoint = stamp.checkpoint,
        bytes = file.len(),
        "index snapshot written"
    );
    Ok(())
}

impl std::fmt::Debug for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projection")
            .field("dir", &self.inner.dir)
            .field("checkpoint", &self.checkpoint())
            .finish_non_exhaustive()
    }
}

/// How a projection is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProjectionOptions {
    /// The bytes of the stored views sled keeps in memory. A list reads its rows from it; a row
    /// it does not hold is read from the file and deserialized with its neighbours, which made
    /// a list several times slower once the view outgrew it (ten million calls take 3.6 GB
    /// against the default of 1 GiB, sled's own; at a million calls a smaller one makes the row
    /// reads of a page several times slower until it warms). At least
    /// [`MIN_PROJECTION_CACHE_BYTES`]: less is raised to it. Beside it the projection keeps up
    /// to half as much of the packs its reads found (a read of a pack it holds does not descend
    /// sled's tree: pack_cache.rs), the same bytes as sled's cache while sled holds them.
    pub cache_bytes: u64,
}

impl ProjectionOptions {
    /// sled's cache.
    fn sled_cache_bytes(&self) -> u64 {
        self.cache_bytes.max(MIN_PROJECTION_CACHE_BYTES)
    }

    /// The bytes of packs the projection keeps itself: half as much again as sled's cache. Not
    /// a share of it: a pack read through sled enters sled's cache too, so with views larger
    /// than the cache, halving sled's made lists at ten million calls slower (a page 2.1 and
    /// 2.6 ms against 1.5 and 2.1, the default 1 GiB). Where the views fit, the two hold the
    /// same bytes.
    fn pack_cache_bytes(&self) -> u64 {
        self.sled_cache_bytes() / 2
    }
}

/// What an open does with the stored view's indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opening {
    /// Reads them (from their snapshot, else from the views) and catches up with the log.
    AsStored,
    /// Leaves them empty and the view where it was: only for [`Projection::open_rebuilt`],
    /// which rebuilds before anyone reads.
    ToRebuild,
}

/// sled's default cache.
pub const DEFAULT_PROJECTION_CACHE_BYTES: u64 = 1 << 30;

/// [`ProjectionOptions::cache_bytes`] for a process that replays the log into the projection and
/// exits (`rebuild`, the bulk catch-up of `import` and `restore`): a replay writes the view and
/// does not read it back, so a server's cache only keeps pages nobody reads again, as memory
/// freshly faulted in (`callledger rebuild` of a million calls: peak resident memory 1.71 GB with
/// the default, 1.45 GB with this, in about the same time).
pub const BULK_PROJECTION_CACHE_BYTES: u64 = 64 << 20;

/// The smallest cache a projection opens with: sled panics below 256 bytes.
pub const MIN_PROJECTION_CACHE_BYTES: u64 = 1 << 20;

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions {
            cache_bytes: DEFAULT_PROJECTION_CACHE_BYTES,
        }
    }
}

impl Projection {
    /// Opens (creating if missing) the projection in `dir`, its own sled database apart from the
    /// log's, builds the in-memory indexes from the stored views and catches up with `log`
    /// (in bulk, as a rebuild does, when far behind).
    ///
    /// The view is rebuilt from the log, with a warning, when it was written by another layout
    /// version, when a stored row cannot be read, or when its checkpoint lies beyond the log's
    /// head (which only a log opened with buffered durability can cause, after a crash).
    ///
    /// A database sled itself cannot read (its corruption check fails, it takes the files for
    /// another version's, or it panics reading them) is moved aside to `<dir>.damaged`, replacing an earlier one, and the projection is
    /// built again from the log in a fresh directory: it is derived, so nothing is lost. A
    /// directory another process holds is never moved.
    pub fn open(dir: &Path, log: EventLog) -> Result<Projection, ProjectionError> {
        Projection::open_with(dir, log, ProjectionOptions::default())
    }

    /// [`Projection::open`] with these options.
    pub fn open_with(
        dir: &Path,
        log: EventLog,
        options: ProjectionOptions,
    ) -> Result<Projection, ProjectionError> {
        Projection::open_guarded(dir, log, options, Opening::AsStored)
    }

    /// Builds the projection in `dir` afresh from the log (`callledger rebuild`), with
    /// `progress` as in [`Projection::rebuild`]. The database there is not opened at all: its
    /// files are moved aside (into `replaced/` within the directory) and removed, and the
    /// replay fills a new database in their place.
    ///
    /// Replaying into a new view of the same database left the old view's pages on disk:
    /// sled removes the files of large pages (a pack's leaf is one) only once later writes
    /// move past the segment that freed them, which a command that exits never makes, so each
    /// rebuild of a million calls left about 0.3 GB behind for good. Nor is anything of the
    /// old view read (its indexes, its pages to free them: a second at a million calls), and a
    /// database sled cannot read at all is replaced like any other. If the rebuild stops
    /// midway, what it applied is a view at an earlier checkpoint, which the next open brings
    /// up to the log.
    pub fn open_rebuilt(
        dir: &Path,
        log: EventLog,
        options: ProjectionOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(Projection, RebuildReport), ProjectionError> {
        remove_replaced(dir)?;
        if dir.exists() {
            // The lock sled takes on its file: a directory another process holds is left alone.
            let db = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.join("db"));
            let held = match &db {
                Ok(file) => file.try_lock().is_err(),
                Err(_) => false,
            };
            if held {
                return Err(ProjectionError::Io(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "could not acquire lock on {}: another process holds the projection (is `callledger serve` running on this data directory?)",
                        dir.join("db").display()
                    ),
                )));
            }
            replace_database(dir)?;
            drop(db);
        }
        let projection = Projection::open_as_stored(dir, log, options, Opening::ToRebuild)?;
        let report = projection.rebuild(progress)?;
        Ok((projection, report))
    }

    /// [`Projection::open_as_stored`], where a database sled cannot read is moved aside and the
    /// projection rebuilt from the log.
    fn open_guarded(
        dir: &Path,
        log: EventLog,
        options: ProjectionOptions,
        opening: Opening,
    ) -> Result<Projection, ProjectionError> {
        remove_replaced(dir)?;
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Projection::open_as_stored(dir, log.clone(), options, opening)
        }));
        let reason = match opened {
            Ok(Err(ProjectionError::Storage(
                error @ (sled::Error::Corruption { .. }
                | sled::Error::ReportableBug(_)
                | sled::Error::Unsupported(_)),
            ))) => error.to_string(),
            Ok(result) => return result,
            Err(panic) => panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic inside sled".to_owned()),
        };
        let aside = event_log::set_aside_damaged(dir)?;
        tracing::warn!(
            dir = %dir.display(),
            aside = %aside.display(),
            %reason,
            "the projection's database cannot be read; moved it aside to rebuild it from the log"
        );
        Projection::open_as_stored(dir, log, options, opening)
    }

    fn open_as_stored(
        dir: &Path,
        log: EventLog,
        options: ProjectionOptions,
        opening: Opening,
    ) -> Result<Projection, ProjectionError> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.sled_cache_bytes())
            .open()?;
        let generation = match db.get(ACTIVE)? {
            Some(value) => read_u64(ACTIVE, &value)?,
            None => {
                db.insert(ACTIVE, &1u64.to_be_bytes())?;
                1
            }
        };
        drop_stray_views(&db, generation)?;
        let tree = db.open_tree(view_name(generation))?;
        if tree.is_empty() {
            let mut batch = sled::Batch::default();
            Meta::default().write(&mut batch);
            tree.apply_batch(batch)?;
        }
        // A view whose meta and indexes are not read: a rebuild replaces it.
        let unread = |tree| View {
            generation,
            tree,
            meta: Meta::default(),
            indexes: Indexes::new(),
            packs: Arc::new(PackCache::new(options.pack_cache_bytes())),
        };
        let (view, snapshot, rebuild_because) = match opening {
            Opening::ToRebuild => (unread(tree), None, None),
            Opening::AsStored => match open_view(dir, &log, generation, tree.clone(), options) {
                Ok((view, snapshot)) => (view, snapshot, None),
                Err(Reopen::Rebuild(reason)) => (unread(tree), None, Some(reason)),
                Err(Reopen::Failed(error)) => return Err(error),
            },
        };
        let projection = Projection {
            inner: Arc::new(Inner {
                db,
                log,
                dir: dir.to_path_buf(),
                apply: Mutex::new(()),
                checkpoint: AtomicU64::new(view.meta.checkpoint),
                view: RwLock::new(view),
                snapshot: Mutex::new(snapshot),
                exiting: AtomicBool::new(false),
                stall: StallClock::default(),
                pack_cache_bytes: options.pack_cache_bytes(),
            }),
        };
        if opening == Opening::ToRebuild {
            // Its view answers nothing until the caller's rebuild, which follows at once.
            return Ok(projection);
        }
        if let Some(reason) = rebuild_because {
            tracing::warn!(dir = %dir.display(), %reason, "rebuilding the projection");
            projection.rebuild(&mut |_, _| {})?;
        }
        let checkpoint = projection.catch_up()?;
        tracing::info!(dir = %dir.display(), checkpoint, "projection opened");
        let stored = projection.inner.db.size_on_disk()?;
        if stored > options.cache_bytes {
            // A list reads its rows from the cache: at ten million calls (3.6 GB of views
            // against 1 GiB) lists ran several times slower than with a cache as large.
            tracing::warn!(
                dir = %dir.display(),
                stored_mib = stored >> 20,
                cache_mib = options.cache_bytes >> 20,
                "the projection's stored views are larger than its cache: list rows it does not \
                 hold are read from disk, several times slower (docs/operations.md, Memory)"
            );
        }
        Ok(projection)
    }

    /// The index snapshot file of the projection in `dir`: written when the projection closes,
    /// read at the next open of the same view; removing it only makes that open slower.
    pub fn snapshot_file(dir: &Path) -> PathBuf {
        snapshot::path(dir)
    }

    /// Writes the index snapshot of the view as it stands, unless the file already holds it,
    /// so that an open after a crash starts from it (brought up to the view from the log)
    /// rather than building every index; returns whether it wrote one. It holds the view's read
    /// lock while it flushes the view and encodes the indexes (about a second at a million
    /// calls): reads go on meanwhile, catch-up waits; the file is written after.
    pub fn write_snapshot(&self) -> Result<bool, ProjectionError> {
        // Held throughout, so that two writers of the snapshot take turns.
        let mut on_disk = self
            .inner
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let file = {
            let view = self.read_view()?;
            encode_snapshot(&self.inner.db, &view, *on_disk)?
        };
        match file {
            Some(file) => {
                write_snapshot_file(&self.inner.dir, file, &mut on_disk)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Says that the process exits once this projection closes (its last handle dropped): the
    /// close writes the snapshot and sled flushes as ever, but the in-memory indexes are left
    /// for the exit to reclaim rather than freed node by node. For a command-line run or a
    /// service stopping, never for a projection a process goes on without.
    pub fn close_with_process(&self) {
        self.inner.exiting.store(true, Ordering::Relaxed);
    }

    /// The last log position applied.
    pub fn checkpoint(&self) -> u64 {
        self.inner.checkpoint.load(Ordering::Acquire)
    }

    /// Applies every durable log record after the checkpoint, a chunk per batch, and returns the
    /// new checkpoint.
    pub fn catch_up(&self) -> Result<u64, ProjectionError> {
        let _writing = self.lock_apply();
        self.catch_up_locked()
    }

    /// [`Projection::catch_up`] for a caller that no reader waits on while it runs (`import`
    /// and `restore` reach it through [`Projection::follow_appends`] once their appends end,
    /// for a view that already held calls): far behind the
    /// log (by more than a threshold of events and a third of its calls, `bulk_pays`), it takes
    /// the rebuild's road, as opening does, pipelined over threads with the indexes built once
    /// at the end, instead of a chunk at a time with every index updated per call (half of a
    /// 100,000-call import's time on one core). Reads meanwhile see the view as it was until it
    /// is swapped in whole.
    pub fn catch_up_in_bulk(&self) -> Result<u64, ProjectionError> {
        self.catch_up_in_bulk_beside(None)
    }

    /// [`Projection::catch_up_in_bulk`] started while appends are still being made (`import`'s
    /// workers, through [`Projection::follow_appends`]), returning once they have ended and the view holds them all. A view with
    /// nothing applied follows the appends, a chunk at a time, so that its replay shares the
    /// import's time instead of following it; any other view waits for the appends to end and
    /// catches up in bulk as [`Projection::catch_up_in_bulk`] does (its indexes are built from
    /// every stored view at the end, which pays only once the whole import is there).
    pub(crate) fn catch_up_beside(&self, appending: &Appending) -> Result<u64, ProjectionError> {
        self.catch_up_in_bulk_beside(Some(appending))
    }

    /// Runs `append`, which appends to the log and tells [`Appending::appended`] of each
    /// append, while this view follows the appends on a thread of its own (a view with nothing
    /// applied replays them beside `append`; any other catches up once they end); returns what `append` returned and the view's
    /// checkpoint once it holds every append. However `append` returns (an error, a panic,
    /// resumed once the follower is joined), the follower is told that the appends ended.
    /// `on_failure` hears of the follower's failure when it happens, so that the appends can
    /// stop early.
    pub fn follow_appends<T>(
        &self,
        on_failure: impl Fn(&ProjectionError) + Sync,
        append: impl FnOnce(&Appending) -> T,
    ) -> (T, Result<u64, ProjectionError>) {
        let appending = Appending::default();
        std::thread::scope(|scope| {
            let follower = scope.spawn(|| {
                let caught = self.catch_up_beside(&appending);
                if let Err(error) = &caught {
                    on_failure(error);
                }
                caught
            });
            let appended = {
                let _ended = appending.ending();
                append(&appending)
            };
            match follower.join() {
                Ok(caught) => (appended, caught),
                // A panic there is a bug, not bad input: keep its behaviour on one thread.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    fn catch_up_in_bulk_beside(
        &self,
        appending: Option<&Appending>,
    ) -> Result<u64, ProjectionError> {
        let _writing = self.lock_apply();
        let (tree, meta) = {
            let view = self.read_view()?;
            (view.tree.clone(), view.meta)
        };
        let following = appending.filter(|_| meta.checkpoint == 0);
        if following.is_none() {
            if let Some(appending) = appending {
                appending.wait_until_ended();
            }
            if !bulk_pays(self.inner.log.head(), &meta) {
                return self.catch_up_locked();
            }
        }
        tracing::info!(from = meta.checkpoint, "catching up in bulk");
        // A view with nothing applied is replayed as a new one: its indexes are then built from
        // the replayed calls rather than by reading every view back.
        let from = (meta.checkpoint > 0).then_some(meta);
        let (meta, indexes) = replay(
            &self.inner.log,
            &tree,
            from,
            None,
            following,
            &mut |_, _| {},
        )?;
        {
            let mut view = self.write_view()?;
            view.meta = meta;
            view.indexes = indexes;
        }
        self.inner
            .checkpoint
            .store(meta.checkpoint, Ordering::Release);
        // The caught-up rows and counters must not wait for sled's own flusher.
        self.inner.db.flush()?;
        self.catch_up_locked()
    }

    /// Read-your-writes: returns once the checkpoint is at least `position`, catching up first
    /// if needed. Callers whose position is already applied return at once, without a lock; of
    /// several waiting callers one catches up for all.
    pub fn wait_for(&self, position: u64) -> Result<(), ProjectionError> {
        if self.checkpoint() >= position {
            return Ok(());
        }
        let _writing = self.lock_apply();
        if self.checkpoint() >= position {
            return Ok(());
        }
        let checkpoint = self.catch_up_locked()?;
        if checkpoint >= position {
            Ok(())
        } else {
            Err(ProjectionError::BeyondHead {
                position,
                head: self.inner.log.head(),
            })
        }
    }

    /// The live call with this id.
    pub fn get(&self, id: u64) -> Result<Option<Call>, ProjectionError> {
        let view = self.read_view()?;
        view.load_call(id)
    }

    /// The log position of the latest event of the live call with this id, from the in-memory
    /// change feed (no row is read); `None` when no live call has it. What was read of the call
    /// at this position (see [`CallRef::position`]) is still its current
    /// state, so a caller can keep what it made of a read until the position moves.
    pub fn latest_position(&self, id: u64) -> Result<Option<u64>, ProjectionError> {
        Ok(self.read_view()?.indexes.changes.latest(id))
    }

    /// What `read` makes of the live call with this id, read in place (its texts borrowed from
    /// the stored view): for a caller that only renders the call, without building a [`Call`].
    pub fn get_with<R>(
        &self,
        id: u64,
        read: impl FnOnce(&CallRef<'_>) -> R,
    ) -> Result<Option<R>, ProjectionError> {
        // The stored bytes are shared, not copied: the view's lock is held only to find them.
        let bytes = {
            let view = self.read_view()?;
            view.view_bytes(id)?
        };
        match bytes {
            Some(bytes) => Ok(Some(read(&decode_call_ref(id, &bytes)?))),
            None => Ok(None),
        }
    }

    /// One page of a list: filtered, sorted, from a cursor.
    ///
    /// A page costs about its size in row reads plus cheap in-memory checks of the candidates
    /// the indexes offer, not a walk of every call; `count` walks every match. A sort by several
    /// keys orders each group of equal first values in memory when the group is small.
    pub fn list(&self, query: &ListQuery) -> Result<ListPage, QueryError> {
        let view = self.read_view()?;
        engine::list(&view, query)
    }

    /// The opaque cursor naming `call`'s place in `query`'s order (filters and sort; the page
    /// size and cursor of `query` do not matter). `page[after]` with the cursor of a page's last
    /// row gives the next page, `page[before]` with its first row's the previous one.
    pub fn cursor_for(&self, query: &ListQuery, call: &Call) -> String {
        engine::cursor_for(query, call)
    }

    /// The cursor of the place just after (`forward`) or just before the row `cursor` names in
    /// `query`'s order, for the links of an empty page reached by `cursor`: `page[before]` with
    /// the place just after a row lists that row and what precedes it.
    pub fn cursor_beside(
        &self,
        query: &ListQuery,
        cursor: &str,
        forward: bool,
    ) -> Result<String, QueryError> {
        engine::cursor_beside(query, cursor, forward)
    }

    /// The calls created or changed, and the calls deleted, after log position `after`, in log
    /// order, up to `limit` items together (at least one).
    ///
    /// A live call appears once, at the position of its latest event; a call deleted after
    /// `after` appears only among the deletions. `next_after` is the position to ask from next:
    /// the last item's when the limit cut the page short, else the checkpoint.
    pub fn changes(&self, after: u64, limit: usize) -> Result<ChangesPage, ProjectionError> {
        engine::changes::changes(&*self.read_view()?, after, limit)
    }

    /// The live calls and the heap memory each in-memory index takes, estimated from what it
    /// holds, by the name of what it indexes (see [`ProjectionStats::index_memory`]). Walks
    /// every sortable string's values under the read lock: some milliseconds at a million calls.
    pub fn index_memory(&self) -> Result<(u64, Vec<(String, usize)>), ProjectionError> {
        let view = self.read_view()?;
        Ok((view.meta.live, view.indexes.memory()))
    }

    /// Reads the view's packs into its cache of packs (pack_cache.rs), in id order, until it
    /// holds them all or is full, on a thread of its own. It takes a few hundred packs at a
    /// time without the view's lock (a pack is never rewritten while its view lives), and ends
    /// early once the projection is closed or a rebuild replaces the view. The thread's result
    /// is what the cache held when it ended. `serve` calls it after open: a list at ten million
    /// calls otherwise reads most of its packs from sled's tree for the first time for hours.
    pub fn warm_packs(
        &self,
    ) -> std::io::Result<std::thread::JoinHandle<Result<HeldPacks, ProjectionError>>> {
        let projection = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("warm-packs".into())
            .spawn(move || {
                let started = Instant::now();
                let warmed = warm_packs(&projection);
                match &warmed {
                    Ok(held) => tracing::info!(
                        packs = held.packs,
                        bytes = held.bytes,
                        budget_bytes = held.budget,
                        seconds = started.elapsed().as_secs_f64(),
                        "packs of views read into memory"
                    ),
                    Err(error) => {
                        tracing::warn!(%error, "reading the packs of views into memory stopped")
                    }
                }
                warmed
            })
    }

    /// What the view's cache of packs holds (pack_cache.rs).
    pub fn held_packs(&self) -> Result<HeldPacks, ProjectionError> {
        Ok(self.read_view()?.packs.held())
    }

    /// Live and deleted calls, the checkpoint and the size on disk.
    pub fn stats(&self) -> Result<ProjectionStats, ProjectionError> {
        let (meta, index_memory) = {
            let view = self.read_view()?;
            (view.meta, view.indexes.memory())
        };
        Ok(ProjectionStats {
            live_calls: meta.live,
            deleted_calls: meta.deleted,
            checkpoint: meta.checkpoint,
            size_on_disk: self.inner.db.size_on_disk()?,
            index_memory,
        })
    }

    /// Replaces the view with one replayed from the whole log, reporting progress as
    /// `(events applied, log head)` after each batch. Reads go on from the old view meanwhile;
    /// catch-up (and so `wait_for`) waits until the new view is in place.
    pub fn rebuild(
        &self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<RebuildReport, ProjectionError> {
        let _writing = self.lock_apply();
        let started = Instant::now();
        let db = &self.inner.db;
        let (old_generation, old_tree) = {
            let view = self.read_view()?;
            (view.generation, view.tree.clone())
        };
        let generation = old_generation + 1;
        let name = view_name(generation);
        db.drop_tree(&name)?;
        let tree = db.open_tree(&name)?;
        let (meta, indexes) = replay(&self.inner.log, &tree, None, None, None, progress)?;
        // The new view must be on disk before the pointer to it can be.
        db.flush()?;
        let old_view = {
            let mut view = self.write_view()?;
            db.insert(ACTIVE, &generation.to_be_bytes())?;
            let old = std::mem::replace(
                &mut *view,
                View {
                    generation,
                    tree,
                    meta,
                    indexes,
                    packs: Arc::new(PackCache::new(self.inner.pack_cache_bytes)),
                },
            );
            self.inner
                .checkpoint
                .store(meta.checkpoint, Ordering::Release);
            old
        };
        // Freeing the old indexes (a million calls' sets and strings: a fraction of a second) holds neither
        // the view's lock, which readers wait on, nor the rebuild: a thread of its own does it.
        // The tree's handle stays here: it goes before its tree is dropped, as before.
        let View {
            tree: old_view_tree,
            indexes: old_indexes,
            ..
        } = old_view;
        free_elsewhere("old-indexes", old_indexes);
        db.flush()?;
        drop(old_view_tree);
        drop(old_tree);
        db.drop_tree(view_name(old_generation))?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            events = meta.checkpoint,
            calls = meta.live,
            seconds,
            "projection rebuilt"
        );
        Ok(RebuildReport {
            events: meta.checkpoint,
            calls: meta.live,
            seconds,
        })
    }

    /// Catches up, replays the log up to the same checkpoint into a scratch database in
    /// `scratch_dir`, and compares everything: every stored row (views, change feed, deletions,
    /// checkpoint, counters) and every in-memory index. Catch-up waits meanwhile; reads go on.
    ///
    /// The scratch database is emptied afterwards; the directory is left to the caller.
    pub fn verify(&self, scratch_dir: &Path) -> Result<VerifyReport, ProjectionError> {
        let _writing = self.lock_apply();
        let checkpoint = self.catch_up_locked()?;
        std::fs::create_dir_all(scratch_dir)?;
        let scratch = open_scratch(scratch_dir)?;
        scratch.drop_tree("verify")?;
        let tree = scratch.open_tree("verify")?;
        let (meta, rebuilt) = replay(
            &self.inner.log,
            &tree,
            None,
            Some(checkpoint),
            None,
            &mut |_, _| {},
        )?;
        let mut differences = Differences::new(MAX_DIFFERENCES);
        {
            let view = self.read_view()?;
            diff::compare_trees(&view.tree, &tree, &mut differences)?;
            view.indexes.diff(&rebuilt, &mut differences);
        }
        drop(tree);
        scratch.drop_tree("verify")?;
        Ok(VerifyReport {
            events: meta.checkpoint,
            calls: meta.live,
            differences: differences.finish(),
        })
    }

    /// How long the view's catch-up with the log has gone without applying a chunk; `None`
    /// while it is not catching up. A watchdog reads it to tell storage that stopped answering
    /// from a quiet view ([`StallClock`]).
    pub fn busy_for(&self) -> Option<Duration> {
        self.inner.stall.busy_for()
    }

    fn catch_up_locked(&self) -> Result<u64, ProjectionError> {
        let busy = self.inner.stall.start();
        loop {
            let (tree, meta) = {
                let view = self.read_view()?;
                (view.tree.clone(), view.meta)
            };
            let records = self.inner.log.read_from(meta.checkpoint, LIVE_CHUNK)?;
            if records.is_empty() {
                return Ok(meta.checkpoint);
            }
            let folded = fold(&tree, None, &meta, &records, &mut Handed::new(), None)?;
            let rows: Vec<(u64, Option<IndexRow>, Option<IndexRow>)> = folded
                .changes
                .iter()
                .map(|(id, old, new)| {
                    (
                        *id,
                        old.as_ref().map(IndexRow::of),
                        new.as_ref().map(IndexRow::of),
                    )
                })
                .collect();
            {
                let mut view = self.write_view()?;
                view.tree.apply_batch(folded.batch)?;
                for (id, old, new) in &rows {
                    view.indexes.update(*id, old.as_ref(), new.as_ref());
                }
                view.meta = folded.meta;
            }
            self.inner
                .checkpoint
                .store(folded.meta.checkpoint, Ordering::Release);
            busy.stepped();
        }
    }

    fn lock_apply(&self) -> std::sync::MutexGuard<'_, ()> {
        // The mutex guards no data, only turns; a panic while holding it leaves nothing broken.
        self.inner
            .apply
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn read_view(&self) -> Result<RwLockReadGuard<'_, View>, ProjectionError> {
        self.inner
            .view
            .read()
            .map_err(|_| ProjectionError::Poisoned)
    }

    fn write_view(&self) -> Result<RwLockWriteGuard<'_, View>, ProjectionError> {
        self.inner
            .view
            .write()
            .map_err(|_| ProjectionError::Poisoned)
    }

    /// The active view, for tests that tamper with its indexes.
    #[cfg(test)]
    pub(crate) fn inner_view_for_tests(&self) -> RwLockWriteGuard<'_, View> {
        self.inner
            .view
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the close write no snapshot, as a crash would, for tests of the snapshot.
    #[cfg(test)]
    pub(crate) fn close_without_snapshot(self) {
        let view = self.read_view().expect("the view");
        *self
            .inner
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Stamp::of(view.generation, &view.meta));
    }

    /// The checkpoint of the index snapshot read at open, if one was, for tests of the snapshot.
    #[cfg(test)]
    pub(crate) fn snapshot_read_at(&self) -> Option<u64> {
        self.inner
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|stamp| stamp.checkpoint)
    }

    /// The active view's tree, for tests that tamper with it.
    #[cfg(test)]
    pub(crate) fn tree(&self) -> sled::Tree {
        self.inner
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .tree
            .clone()
    }
}

/// Drops the trees of views that are not active: leftovers of a rebuild cut short.
fn drop_stray_views(db: &sled::Db, active: u64) -> Result<(), ProjectionError> {
    let active = view_name(active);
    for name in db.tree_names() {
        if name.starts_with(b"view-") && name != active.as_bytes() {
            tracing::info!(tree = %String::from_utf8_lossy(&name), "dropping a stray view");
            db.drop_tree(&name)?;
        }
    }
    Ok(())
}

/// Why a stored view was not opened.
enum Reopen {
    /// It must be rebuilt, for this reason.
    Rebuild(String),
    /// Storage failed.
    Failed(ProjectionError),
}

impl From<ProjectionError> for Reopen {
    fn from(error: ProjectionError) -> Reopen {
        match error {
            ProjectionError::Corrupt { key, reason } => Reopen::Rebuild(format!("{key}: {reason}")),
            error => Reopen::Failed(error),
        }
    }
}

/// Packs [`Projection::warm_packs`] reads per hold of the projection.
const WARM_CHUNK: usize = 256;

/// [`Projection::warm_packs`]'s work: `projection`'s packs, while it is open and its view the
/// one it started with.
fn warm_packs(projection: &Weak<Inner>) -> Result<HeldPacks, ProjectionError> {
    let mut next = 0;
    let mut warming: Option<(u64, Arc<PackCache>)> = None;
    while let Some(inner) = projection.upgrade() {
        let (tree, packed_below) = {
            let view = inner.view.read().map_err(|_| ProjectionError::Poisoned)?;
            match &warming {
                Some((generation, _)) if *generation != view.generation => break,
                Some(_) => {}
                None => warming = Some((view.generation, Arc::clone(&view.packs))),
            }
            (view.tree.clone(), view.meta.packed_below)
        };
        let Some((_, packs)) = &warming else { break };
        let mut read = 0;
        for entry in tree
            .range(key(PACK, next)..key(PACK, packed_below))
            .take(WARM_CHUNK)
        {
            let (stored, pack) = entry?;
            let Some((PACK, range)) = split_key(&stored) else {
                return Err(ProjectionError::Corrupt {
                    key: describe_key(&stored),
                    reason: "among the packs".to_owned(),
                });
            };
            if !packs.insert_if_room(range, &pack) {
                return Ok(packs.held());
            }
            next = range + 1;
            read += 1;
        }
        if read < WARM_CHUNK {
            break;
        }
    }
    Ok(warming.map(|(_, packs)| packs.held()).unwrap_or_default())
}

/// At most this many unapplied events are always followed a chunk at a time; above it, catching
/// up may take the rebuild's road ([`bulk_pays`]), which nobody reading yet makes safe.
/// (Tests use a small threshold so that their logs take this road too.)
pub(crate) const BULK_CATCH_UP: u64 = if cfg!(test) { 20 } else { 50_000 };

/// Reads a stored view, brings it close to the log's head if it is far behind, and reads its
/// indexes from the snapshot in `dir` where that is of this view (at its checkpoint or before),
/// else builds them; returns the view, and the snapshot's stamp where it was read.
fn open_view(
    dir: &Path,
    log: &EventLog,
    generation: u64,
    tree: sled::Tree,
    options: ProjectionOptions,
) -> Result<(View, Option<Stamp>), Reopen> {
    let pack_cache_bytes = options.pack_cache_bytes();
    let meta = Meta::read(&tree)?;
    let head = log.head();
    if meta.checkpoint > head {
        return Err(Reopen::Rebuild(format!(
            "its checkpoint {} is beyond the log's head {head}",
            meta.checkpoint
        )));
    }
    if bulk_pays(head, &meta) {
        tracing::info!(from = meta.checkpoint, head, "catching up in bulk");
        let (meta, indexes) = replay(log, &tree, Some(meta), None, None, &mut |_, _| {})?;
        let view = View {
            generation,
            tree,
            meta,
            indexes,
            packs: Arc::new(PackCache::new(pack_cache_bytes)),
        };
        return Ok((view, None));
    }
    let stamp = Stamp::of(generation, &meta);
    let started = Instant::now();
    let (indexes, snapshot) = match indexes_from_snapshot(dir, log, &tree, stamp)? {
        Ok((indexes, found)) => {
            tracing::info!(
                calls = meta.live,
                snapshot_checkpoint = found.checkpoint,
                checkpoint = meta.checkpoint,
                seconds = started.elapsed().as_secs_f64(),
                "indexes read from their snapshot"
            );
            (indexes, Some(found))
        }
        Err(unused) => {
            match &unused {
                Unused::Damaged(_) => tracing::warn!(
                    file = %snapshot::path(dir).display(),
                    reason = %unused,
                    "building the indexes from the views"
                ),
                Unused::Missing | Unused::Stale(_) => {
                    tracing::info!(reason = %unused, "building the indexes from the views")
                }
            }
            (build_indexes(&tree, &meta)?, None)
        }
    };
    let view = View {
        generation,
        tree,
        meta,
        indexes,
        packs: Arc::new(PackCache::new(pack_cache_bytes)),
    };
    Ok((view, snapshot))
}

/// How far indexes may lag behind the events they are to follow, in events per live call of
/// the view, and still be brought up to them call by call: moving a call's entries costs about
/// three times what building them from its view does, so past a third of the view a build is
/// as quick. It bounds both a snapshot brought up to its view (measured at 1.5M calls: 100,000
/// events in 3.5 s, a build of the whole view about 18 s) and a view caught up in place rather
/// than on the rebuild's road ([`bulk_pays`]).
const MAX_SNAPSHOT_LAG_PER_CALL: f64 = 1.0 / 3.0;

/// Whether a view at `meta` catches up to the log's `head` on the rebuild's road (pipelined,
/// large batches, its indexes built once at the end from every view) rather than a chunk at a
/// time with its indexes updated in place: when it is more than [`BULK_CATCH_UP`] events behind
/// and more than [`MAX_SNAPSHOT_LAG_PER_CALL`] of its calls, or holds none (replayed as a new
/// view, its indexes built from the replayed calls). Importing 100,000 calls into a ledger of a
/// million took 5.0 s on that road (the indexes of 1.1M views built again, peak RSS 2.6 GB)
/// against 3.5 s followed (1.6 GB).
fn bulk_pays(head: u64, meta: &Meta) -> bool {
    let lag = head.saturating_sub(meta.checkpoint);
    lag > BULK_CATCH_UP && lag as f64 > meta.live as f64 * MAX_SNAPSHOT_LAG_PER_CALL
}

/// The indexes of the view `view` names from the snapshot in `dir`, brought up to the view from
/// the log where the snapshot is older; the snapshot's stamp with them. The outer error is a
/// failure to read the log or the view; the inner one why the snapshot was not used.
fn indexes_from_snapshot(
    dir: &Path,
    log: &EventLog,
    tree: &sled::Tree,
    view: Stamp,
) -> Result<Result<(Indexes, Stamp), Unused>, ProjectionError> {
    let (found, mut indexes) = match snapshot::load(dir, view) {
        Ok(loaded) => loaded,
        Err(unused) => return Ok(Err(unused)),
    };
    if found.checkpoint == view.checkpoint {
        return Ok(Ok((indexes, found)));
    }
    let lag = view.checkpoint - found.checkpoint;
    if lag as f64 > view.live.max(1000) as f64 * MAX_SNAPSHOT_LAG_PER_CALL {
        return Ok(Err(Unused::Stale(found)));
    }
    advance_indexes(log, tree, &mut indexes, found.checkpoint, view.checkpoint)?;
    if indexes.live() as u64 != view.live {
        return Ok(Err(Unused::Damaged(format!(
            "brought up to position {} it holds {} live calls, the view {}",
            view.checkpoint,
            indexes.live(),
            view.live
        ))));
    }
    Ok(Ok((indexes, found)))
}

/// Moves indexes of the view at log position `from` to the view stored in `tree` at `to`: each
/// call an event in between touched goes from its state at `from` to its stored view. Its state
/// at `from` is none for a call created in between, else its stream replayed up to there; the
/// calls are worked out on the machine's cores and the indexes then updated in id order.
fn advance_indexes(
    log: &EventLog,
    tree: &sled::Tree,
    indexes: &mut Indexes,
    from: u64,
    to: u64,
) -> Result<(), ProjectionError> {
    // Each touched call with the version of its first event in between.
    let mut touched = std::collections::BTreeMap::new();
    let mut after = from;
    while after < to {
        let records = log.read_from(after, LIVE_CHUNK.min((to - after) as usize))?;
        let Some(last) = records.last() else {
            return Err(ProjectionError::Corrupt {
                key: "checkpoint".to_owned(),
                reason: format!("the log ends at {after}, before the view's checkpoint {to}"),
            });
        };
        after = last.position;
        for record in &records {
            touched.entry(record.stream).or_insert(record.version);
        }
    }
    let touched: Vec<(u64, u64)> = touched.into_iter().collect();
    let moves = par_map(&touched, |&(id, first_version)| {
        let state = if first_version > 1 {
            let records = log.read_stream(id)?;
            replay_stream(
                records
                    .iter()
                    .take_while(|record| record.position <= from)
                    .map(|r| (r.position, r.stream, r.version, r.payload.as_slice())),
            )?
        } else {
            CallState::Absent
        };
        let old = match &state {
            CallState::Live(call) => Some(IndexRow::of(call)),
            _ => None,
        };
        let new = load_call(tree, id)?.map(|call| IndexRow::of(&call));
        Ok::<_, ProjectionError>((id, old, new))
    });
    for moved in moves {
        let (id, old, new) = moved?;
        indexes.update(id, old.as_ref(), new.as_ref());
    }
    Ok(())
}

/// How long `verify` waits for the scratch database of an earlier `verify` to be released:
/// sled drops its file lock only once its last background reference is gone, a moment after
/// the `Db` itself.
const SCRATCH_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens `verify`'s scratch database, waiting out the lock an earlier run is still letting go.
fn open_scratch(dir: &Path) -> Result<sled::Db, ProjectionError> {
    let started = Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(SCRATCH_CACHE_BYTES)
            .flush_every_ms(None)
            .open();
        match opened {
            Err(sled::Error::Io(error))
                if error.to_string().contains("could not acquire lock")
                    && started.elapsed() < SCRATCH_LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
    }
}
