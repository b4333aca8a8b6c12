//! The sled engine, the embedded default: [`SledLog`] opens the data
//! directory (with its lock), hands appends to the writer thread, and reads
//! only durable records. Everything is stored in one sled tree so that every
//! group of appends is a single `apply_batch`, which sled recovers
//! all-or-nothing after a crash.

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

#[cfg(any(test, feature = "bench"))]
pub(crate) mod baseline;
pub(crate) mod keys;
mod mark;
mod rows;
mod space;
mod submissions;
pub(crate) mod writer;

use submissions::{FailTheRest, Submissions, Ticket};
use writer::{Shared, Writer};

use crate::engine::{HeadWatch, LogEngine};
use crate::{
    Append, AppendError, Appended, Durability, LogError, LogOptions, LogStats, Position, Record,
    StreamId, Version,
};

/// The name of the lock file in the data directory.
const LOCK_FILE: &str = "LOCK";

/// How long `open` keeps retrying when sled's own file lock is still held
/// although ours is free: a log dropped a moment ago in this process can
/// leave sled's background threads holding its files briefly.
const SLED_LOCK_PATIENCE: Duration = Duration::from_secs(5);

/// The sled engine's log. Cheap to clone; all clones share one writer
/// thread. When the last clone is dropped, the writer finishes, flushes and
/// stops, and the data directory is unlocked.
#[derive(Clone)]
pub struct SledLog {
    inner: Arc<Inner>,
}

struct Inner {
    submissions: Arc<Submissions>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    head_rx: watch::Receiver<Position>,
    dir: PathBuf,
    // Field order matters: the tree must be dropped before the lock file is
    // closed, so that nobody can open the directory while sled still has it.
    db: sled::Db,
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue makes the writer finish and flush.
        self.submissions.close();
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!(dir = %self.dir.display(), "event log writer panicked");
            }
        }
    }
}

impl fmt::Debug for SledLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledLog")
            .field("dir", &self.inner.dir)
            .field("head", &self.head())
            .finish_non_exhaustive()
    }
}

impl SledLog {
    /// Hands `append` to the writer; its answer is waited for with the returned ticket.
    fn queue(&self, append: Append) -> Result<Ticket, LogError> {
        self.inner.submissions.submit(append)
    }

    /// Opens (creating if missing) the log in `dir` and starts its writer.
    ///
    /// Fails with [`LogError::Locked`] when another log, in this or another
    /// process, has `dir` open.
    pub fn open(dir: &Path, options: LogOptions) -> Result<SledLog, LogError> {
        std::fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;
        let (db, counters, open_run) = crate::error::unpanicked("opening the log", || {
            let db = open_sled(dir, options.durability, options.cache_bytes)?;
            let (counters, open_run) = writer::recover(&db)?;
            Ok((db, counters, open_run))
        })?;
        let head = counters.next_position - 1;
        let mark = mark::DurableMark::open(dir, head)?;
        let shared = Arc::new(Shared::default());
        shared.head.store(head, Ordering::Release);
        shared.streams.store(counters.streams, Ordering::Release);
        shared
            .allocated
            .store(counters.next_stream - 1, Ordering::Release);
        let (head_tx, head_rx) = watch::channel(head);
        let submissions = Arc::new(Submissions::new(writer::QUEUE_CAPACITY));
        let queue = Arc::clone(&submissions);
        let writer = Writer {
            db: db.clone(),
            durability: options.durability,
            shared: Arc::clone(&shared),
            head_tx,
            counters,
            needs_reload: false,
            open_run,
            mark,
            space: space::SpaceGuard::new(dir.to_path_buf(), options.disk_reserve),
        };
        let writer = std::thread::Builder::new()
            .name("event-log-writer".to_string())
            .spawn(move || {
                let _answer_the_rest = FailTheRest(&queue);
                writer.run(&queue);
            })?;
        tracing::info!(
            dir = %dir.display(),
            head,
            streams = counters.streams,
            durability = ?options.durability,
            "event log opened"
        );
        Ok(SledLog {
            inner: Arc::new(Inner {
                submissions,
                writer: Some(writer),
                shared,
                head_rx,
                dir: dir.to_path_buf(),
                db,
                _lock: lock,
            }),
        })
    }

    /// The directory the log was opened in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The highest stream id given so far among durable records: the next new stream's id is
    /// one more.
    pub fn streams_allocated(&self) -> StreamId {
        self.inner.shared.allocated.load(Ordering::Acquire)
    }

    /// A benchmark baseline: iterates every stored row of records (key and value, including
    /// records not yet durable) with a raw sled scan and returns how many records there are,
    /// counted from the rows' frames without checking or copying the records.
    #[cfg(any(test, feature = "bench"))]
    pub fn scan_raw(&self) -> Result<u64, LogError> {
        let mut count = 0u64;
        let mut last = 0;
        for entry in self.inner.db.scan_prefix([keys::LOG]) {
            let (key, value) = entry.map_err(crate::error::storage)?;
            let row = rows::RowRecords::new(&key, &value)?;
            let first = row.next_position();
            last = row.last_position()?;
            count += last + 1 - first;
        }
        std::hint::black_box(last);
        Ok(count)
    }
}

impl LogEngine for SledLog {
    /// Appends the payloads to one stream, all or nothing, after checking the
    /// idempotency key (first) and the expected version.
    ///
    /// Blocks until the records are durable (with [`Durability::Flush`]) and
    /// visible to readers. Concurrent calls share one flush, so throughput
    /// grows with the number of concurrent callers.
    fn append(&self, append: Append) -> Result<Appended, AppendError> {
        if append.payloads.is_empty() {
            return Err(AppendError::Empty);
        }
        self.queue(append)?.wait()
    }

    /// Queues every append before waiting for any, so that the writer takes them as a few
    /// groups (as many as are queued, up to `QUEUE_CAPACITY`, one batch and one flush each)
    /// instead of one group per caller.
    fn append_all(&self, appends: Vec<Append>) -> Vec<Result<Appended, AppendError>> {
        let queued: Vec<_> = appends
            .into_iter()
            .map(|append| {
                if append.payloads.is_empty() {
                    return Err(AppendError::Empty);
                }
                Ok(self.queue(append)?)
            })
            .collect();
        queued.into_iter().map(|queued| queued?.wait()).collect()
    }

    /// The last durable position; 0 when the log is empty.
    fn head(&self) -> Position {
        self.inner.shared.head.load(Ordering::Acquire)
    }

    /// A receiver of the head, marked changed whenever new records become
    /// durable after this call.
    fn watch_head(&self) -> HeadWatch {
        let mut receiver = self.inner.head_rx.clone();
        // The template receiver never reads, so a clone would otherwise
        // report every append since `open` as news.
        receiver.mark_unchanged();
        HeadWatch::new(receiver)
    }

    /// Up to `limit` durable records with positions greater than `after`,
    /// in position order.
    fn read_from(&self, after: Position, limit: usize) -> Result<Vec<Record>, LogError> {
        crate::error::unpanicked("reading the log", || self.read_from_unguarded(after, limit))
    }

    /// The stream's durable records in version order; empty for a stream
    /// without records.
    fn read_stream(&self, stream: StreamId) -> Result<Vec<Record>, LogError> {
        crate::error::unpanicked("reading the log", || self.read_stream_unguarded(stream))
    }

    /// The stream's last durable version; `None` for a stream without
    /// durable records.
    fn stream_version(&self, stream: StreamId) -> Result<Option<Version>, LogError> {
        crate::error::unpanicked("reading the log", || self.stream_version_unguarded(stream))
    }

    /// The durable original result of the append that used `key`, with its
    /// fingerprint; `duplicate` is `true` in it, as `append` would answer a
    /// retry.
    fn idempotent_result(&self, key: &str) -> Result<Option<(Appended, [u8; 32])>, LogError> {
        crate::error::unpanicked("reading the log", || self.idempotent_result_unguarded(key))
    }

    /// Counts of durable records and streams, the head and the size on disk.
    fn stats(&self) -> Result<LogStats, LogError> {
        // Read the stream count first: the writer publishes it before the
        // head, so it is never behind the head read after it.
        let streams = self.inner.shared.streams.load(Ordering::Acquire);
        let head = self.head();
        Ok(LogStats {
            events: head,
            streams,
            head,
            size_on_disk: self
                .inner
                .db
                .size_on_disk()
                .map_err(crate::error::storage)?,
        })
    }

    /// Flushes everything written so far to disk; useful with
    /// [`Durability::Buffered`].
    fn flush(&self) -> Result<(), LogError> {
        self.inner.db.flush().map_err(crate::error::storage)?;
        Ok(())
    }

    /// How long the writer has been writing and flushing its current group.
    fn busy_for(&self) -> Option<Duration> {
        self.inner.shared.stall.busy_for()
    }
}

/// The first record of `stream` as its run's `F` row places it (see [`keys`]), if one does and
/// the record is durable (at or below `head`). A row that places it on another stream's record
/// is corrupt.
fn first_record_in_runs(
    tree: &sled::Tree,
    stream: StreamId,
    head: Position,
) -> Result<Option<Record>, LogError> {
    let Some(entry) = tree
        .range(keys::first_key(0)..=keys::first_key(stream))
        .next_back()
    else {
        return Ok(None);
    };
    let (run_key, run) = entry.map_err(crate::error::storage)?;
    let first = keys::decode_first_key(&run_key)?;
    let Some(position) = keys::first_position_at(&run_key, &run, stream - first)? else {
        return Ok(None);
    };
    if position > head {
        return Ok(None);
    }
    let record = rows::record_at(tree, position)?.ok_or_else(|| {
        keys::corrupt(
            &run_key,
            &format!("the first record of stream {stream} is missing"),
        )
    })?;
    if (record.stream, record.version) != (stream, 1) {
        return Err(keys::corrupt(
            &run_key,
            &format!(
                "places stream {stream}'s first record at {position}, which is stream {} \
                 version {}",
                record.stream, record.version
            ),
        ));
    }
    Ok(Some(Record {
        position,
        stream,
        version: 1,
        payload: record.payload,
    }))
}

/// The stream's last version and the position of its last record, from its `T` row.
fn tail_row(tree: &sled::Tree, stream: StreamId) -> Result<Option<(Version, Position)>, LogError> {
    let key = keys::tail_key(stream);
    match tree.get(key).map_err(crate::error::storage)? {
        Some(value) => keys::decode_tail_value(&key, &value).map(Some),
        None => Ok(None),
    }
}

/// The stream's last version and the position of its last record as the tree holds them,
/// durable or not (the writer's view): its `T` row; in a log written before 2026-12-06, its
/// last `S` row; else its first record, if its run's `F` row places one.
pub(crate) fn stored_tail(
    tree: &sled::Tree,
    stream: StreamId,
) -> Result<Option<(Version, Position)>, LogError> {
    if let Some(tail) = tail_row(tree, stream)? {
        return Ok(Some(tail));
    }
    if let Some(entry) = tree.scan_prefix(keys::stream_prefix(stream)).next_back() {
        let (key, value) = entry.map_err(crate::error::storage)?;
        let version = keys::decode_stream_key_version(&key)?;
        return Ok(Some((version, keys::decode_u64_value(&key, &value)?)));
    }
    Ok(first_record_in_runs(tree, stream, Position::MAX)?.map(|record| (1, record.position)))
}

/// Takes the exclusive lock on `dir/LOCK`, held until the file is closed.
fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(LogError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(error)) => Err(error.into()),
    }
}

/// The sled configuration used for the log (and the raw baseline), with a page cache of
/// `cache_bytes` (see [`crate::LogOptions::cache_bytes`]).
pub(crate) fn sled_config(dir: &Path, durability: Durability, cache_bytes: u64) -> sled::Config {
    let config = sled::Config::new().path(dir).cache_capacity(cache_bytes);
    match durability {
        // Every group is flushed by the writer; a background flusher would
        // only compete with it.
        Durability::Flush => config.flush_every_ms(None),
        Durability::Buffered => config.flush_every_ms(Some(500)),
    }
}

/// Opens sled in `dir`, mapping its lock failure to [`LogError::Locked`].
pub(crate) fn open_sled(
    dir: &Path,
    durability: Durability,
    cache_bytes: u64,
) -> Result<sled::Db, LogError> {
    let config = sled_config(dir, durability, cache_bytes);
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(error)) if is_sled_lock_error(&error) => {
                if started.elapsed() >= SLED_LOCK_PATIENCE {
                    return Err(LogError::Locked {
                        path: dir.to_path_buf(),
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(error) => return Err(crate::error::storage(error)),
        }
    }
}

/// sled 0.34 reports a held lock on its `db` file as an `Other` i/o error
/// with this message.
fn is_sled_lock_error(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::Other && error.to_string().contains("could not acquire lock")
}

/// The reads of the contract, unguarded: [`LogEngine`]'s methods call them through
/// [`crate::error::unpanicked`].
impl SledLog {
    fn read_from_unguarded(&self, after: Position, limit: usize) -> Result<Vec<Record>, LogError> {
        let head = self.head();
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if first > head || limit == 0 {
            return Ok(Vec::new());
        }
        // From the row that holds `first`: it may have started before it.
        let start = match rows::row_at_or_below(&self.inner.db, first)? {
            Some((key, _)) => key,
            None => keys::log_key(first)[..].into(),
        };
        let wanted = limit.min((head - after) as usize);
        let mut records = Vec::with_capacity(wanted);
        let mut expected = None;
        for entry in self.inner.db.range(start..=keys::log_key(head)[..].into()) {
            let (key, value) = entry.map_err(crate::error::storage)?;
            let mut row = rows::RowRecords::new(&key, &value)?;
            let row_first = row.next_position();
            if let Some(expected) = expected.filter(|expected| *expected != row_first) {
                return Err(keys::corrupt(
                    &key,
                    &format!(
                        "the row starts at {row_first} where the row before it ended at {}",
                        expected - 1
                    ),
                ));
            }
            row.skip_to(first)?;
            for record in row.by_ref() {
                let record = record?;
                if record.position > head {
                    return Ok(records);
                }
                records.push(Record {
                    position: record.position,
                    stream: record.stream,
                    version: record.version,
                    payload: record.payload.to_vec(),
                });
                if records.len() == wanted {
                    return Ok(records);
                }
            }
            expected = Some(row.next_position());
        }
        Ok(records)
    }

    /// The stream's durable records, read from its `T` row back along their links (see
    /// [`keys`]); where the links reach a record written before them, the rest from the `S`
    /// rows.
    fn read_stream_unguarded(&self, stream: StreamId) -> Result<Vec<Record>, LogError> {
        let head = self.head();
        let tree = &self.inner.db;
        let Some((mut version, mut position)) = tail_row(tree, stream)? else {
            return self.read_indexed_stream(stream, Version::MAX);
        };
        let tail_key = keys::tail_key(stream);
        let mut newest_first = Vec::new();
        loop {
            let record = rows::record_at(tree, position)?.ok_or_else(|| {
                keys::corrupt(
                    &tail_key,
                    &format!("the stream's version {version} at {position} is missing"),
                )
            })?;
            if (record.stream, record.version) != (stream, version) {
                return Err(keys::corrupt(
                    &tail_key,
                    &format!(
                        "the stream's version {version} is at {position}, which holds stream \
                         {} version {}",
                        record.stream, record.version
                    ),
                ));
            }
            if position <= head {
                newest_first.push(Record {
                    position,
                    stream,
                    version,
                    payload: record.payload,
                });
            }
            match record.link {
                Some(0) if version == 1 => break,
                Some(link) if link < position && version > 1 => {
                    position = link;
                    version -= 1;
                }
                Some(link) => {
                    return Err(keys::corrupt(
                        &keys::log_key(position),
                        &format!(
                            "stream {stream} version {version} links to position {link}, not to \
                             its version before"
                        ),
                    ))
                }
                // Written before links: the versions below it are in the `S` rows.
                None => {
                    let mut records = self.read_indexed_stream(stream, version)?;
                    if records.len() as u64 != version - 1 {
                        return Err(keys::corrupt(
                            &keys::stream_key(stream, version),
                            &format!(
                                "the stream index holds {} of the {} versions before {version}",
                                records.len(),
                                version - 1
                            ),
                        ));
                    }
                    records.extend(newest_first.into_iter().rev());
                    return Ok(records);
                }
            }
        }
        newest_first.reverse();
        Ok(newest_first)
    }

    /// The stream's durable records below version `below`, as logs written before 2026-12-06
    /// index them: the first from its run's `F` row or an `S` row, the rest from `S` rows.
    fn read_indexed_stream(
        &self,
        stream: StreamId,
        below: Version,
    ) -> Result<Vec<Record>, LogError> {
        let head = self.head();
        let mut records = Vec::new();
        if below <= 1 {
            return Ok(records);
        }
        let mut indexed = self
            .inner
            .db
            .scan_prefix(keys::stream_prefix(stream))
            .peekable();
        let first_indexed = match indexed.peek() {
            Some(Ok((key, value))) => Some((
                keys::decode_stream_key_version(key)?,
                keys::decode_u64_value(key, value)?,
            )),
            _ => None,
        };
        if !matches!(first_indexed, Some((1, _))) {
            match first_record_in_runs(&self.inner.db, stream, head)? {
                Some(first) => records.push(first),
                None => {
                    if let Some((version, position)) = first_indexed.filter(|f| f.1 <= head) {
                        return Err(keys::corrupt(
                            &keys::stream_key(stream, version),
                            &format!(
                                "the stream's records start at version {version} (position \
                                 {position}): its first record is missing"
                            ),
                        ));
                    }
                }
            }
        }
        for entry in indexed {
            let (index_key, value) = entry.map_err(crate::error::storage)?;
            let version = keys::decode_stream_key_version(&index_key)?;
            let position = keys::decode_u64_value(&index_key, &value)?;
            // Positions grow with versions, so the rest is not durable yet.
            if position > head || version >= below {
                break;
            }
            let record = rows::record_at(&self.inner.db, position)?
                .ok_or_else(|| keys::corrupt(&index_key, "indexed record is missing"))?;
            if (record.stream, record.version) != (stream, version) {
                return Err(keys::corrupt(
                    &keys::log_key(position),
                    &format!(
                        "record is stream {} version {}, the index says stream {stream} version \
                         {version}",
                        record.stream, record.version
                    ),
                ));
            }
            records.push(Record {
                position,
                stream,
                version,
                payload: record.payload,
            });
        }
        Ok(records)
    }

    fn stream_version_unguarded(&self, stream: StreamId) -> Result<Option<Version>, LogError> {
        let head = self.head();
        match tail_row(&self.inner.db, stream)? {
            Some((version, position)) if position <= head => return Ok(Some(version)),
            // Its last append is not durable yet: the last record that is.
            Some(_) => {
                return Ok(self
                    .read_stream_unguarded(stream)?
                    .last()
                    .map(|record| record.version))
            }
            None => {}
        }
        for entry in self.inner.db.scan_prefix(keys::stream_prefix(stream)).rev() {
            let (key, value) = entry.map_err(crate::error::storage)?;
            if keys::decode_u64_value(&key, &value)? <= head {
                return keys::decode_stream_key_version(&key).map(Some);
            }
        }
        Ok(first_record_in_runs(&self.inner.db, stream, head)?.map(|_| 1))
    }

    fn idempotent_result_unguarded(
        &self,
        key: &str,
    ) -> Result<Option<(Appended, [u8; 32])>, LogError> {
        let head = self.head();
        let stored_key = keys::idempotency_key(key);
        match self
            .inner
            .db
            .get(&stored_key)
            .map_err(crate::error::storage)?
        {
            Some(value) => {
                let found = keys::decode_idempotency_value(&stored_key, &value)?;
                Ok((found.0.last_position <= head).then_some(found))
            }
            None => Ok(None),
        }
    }
}
