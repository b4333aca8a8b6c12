//! The writer thread: the only code that writes to the tree. It takes the
//! queued appends as a group (`submissions`), checks each one in order, writes
//! all accepted ones with one `apply_batch`, makes them durable with one
//! `flush`, publishes the new head and only then answers (group commit).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use super::keys;
use super::rows::{Pack, RowRecords};
use super::submissions::{Answer, Submissions};
use crate::engine::{check_expected, check_restored, replay};
use crate::{
    Append, AppendError, Appended, Durability, LogError, Position, StreamId, StreamTarget, Version,
};

/// How many appends may wait for the writer before `append` waits to queue; also the most
/// that share one batch and one flush.
pub(crate) const QUEUE_CAPACITY: usize = 4096;

/// The most streams one `F` row places.
const MAX_RUN: usize = 256;

/// The longest run a later group extends, rewriting its row, so that appends that start one
/// stream each (a service's creates, one at a time) do not add a row each: rewriting a row adds
/// no key to sled's tree, where a row per create added pages whose state sled keeps in memory.
/// A rewrite copies the row whole, so past this a group starts a row of its own (extending up
/// to 256 made the raw appends at 64 writers 15% slower: 60,395 and 60,949 against 70,837 and
/// 69,549 appends/s, alternating runs).
const MAX_EXTENDED: usize = 64;

/// A run of consecutive stream ids from its first, with the positions of their first records.
pub(crate) type Run = (StreamId, Vec<Position>);

/// The run of the last `F` row (`key`, `value`), if it can still grow.
fn open_run(key: &[u8], value: &[u8]) -> Result<Option<Run>, LogError> {
    let first = keys::decode_first_key(key)?;
    let len = keys::first_value_len(key, value)?;
    if len as usize >= MAX_EXTENDED {
        return Ok(None);
    }
    let positions = (0..len)
        .map(|index| {
            keys::first_position_at(key, value, index)?
                .ok_or_else(|| keys::corrupt(key, "first-records value is cut short"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((first, positions)))
}

/// What the writer publishes for readers.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The last durable position.
    pub(crate) head: AtomicU64,
    /// How many streams have durable records.
    pub(crate) streams: AtomicU64,
    /// The highest stream id given: a new stream gets the next (restored streams may leave ids
    /// below it unused).
    pub(crate) allocated: AtomicU64,
    /// Counts while a group is checked, written and flushed, and the final flush.
    pub(crate) stall: crate::StallClock,
}

/// The counters, as applied to the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Counters {
    /// The position the next record gets.
    pub(crate) next_position: Position,
    /// The id the next new stream gets: above every id given.
    pub(crate) next_stream: StreamId,
    /// How many streams there are.
    pub(crate) streams: u64,
}

impl Counters {
    fn last_position(&self) -> Position {
        self.next_position - 1
    }
}

/// Reads the counters from the tree: the head from the last `L` row's last record; the next
/// stream id above the last `F` row's run, the highest stream with a `T` row and, in logs
/// written before, the highest in the `S` index, the `V` rows and the `Mnext_stream` counter; the stream count from the `Mstreams`
/// row, or in a log written before 2026-12-05, which has none, the next stream id less one.
/// Also the last `F` row's run if it can still grow, read from the same row.
pub(crate) fn recover(tree: &sled::Tree) -> Result<(Counters, Option<Run>), LogError> {
    let last_position = match tree.scan_prefix([keys::LOG]).next_back() {
        Some(entry) => {
            let (key, value) = entry.map_err(crate::error::storage)?;
            RowRecords::new(&key, &value)?.last_position()?
        }
        None => 0,
    };
    let (after_runs, run) = match tree.scan_prefix([keys::FIRST]).next_back() {
        Some(entry) => {
            let (key, value) = entry.map_err(crate::error::storage)?;
            (
                keys::decode_first_key(&key)? + keys::first_value_len(&key, &value)?,
                open_run(&key, &value)?,
            )
        }
        None => (1, None),
    };
    let highest_indexed = match tree.scan_prefix([keys::STREAM]).next_back() {
        Some(entry) => keys::decode_stream_key_stream(&entry.map_err(crate::error::storage)?.0)?,
        None => 0,
    };
    let highest_tailed = match tree.scan_prefix([keys::TAIL]).next_back() {
        Some(entry) => keys::decode_tail_key(&entry.map_err(crate::error::storage)?.0)?,
        None => 0,
    };
    let highest_versioned = match tree.scan_prefix([keys::VERSION]).next_back() {
        Some(entry) => keys::decode_version_key(&entry.map_err(crate::error::storage)?.0)?,
        None => 0,
    };
    let stored = match tree.get(keys::NEXT_STREAM).map_err(crate::error::storage)? {
        Some(value) => keys::decode_u64_value(keys::NEXT_STREAM, &value)?,
        None => 1,
    };
    if stored == 0 {
        return Err(keys::corrupt(keys::NEXT_STREAM, "stream counter is 0"));
    }
    let next_stream = stored
        .max(after_runs)
        .max(highest_indexed.max(highest_versioned).max(highest_tailed) + 1);
    let streams = match tree
        .get(keys::STREAM_COUNT)
        .map_err(crate::error::storage)?
    {
        Some(value) => keys::decode_u64_value(keys::STREAM_COUNT, &value)?,
        None => next_stream - 1,
    };
    let counters = Counters {
        next_position: last_position + 1,
        next_stream,
        streams,
    };
    Ok((counters, run))
}

/// The state of one group while its requests are checked: what the earlier
/// requests of the group changed, on top of the tree.
struct Group {
    counters: Counters,
    /// The runs of consecutive new stream ids the group starts or extends, with the positions
    /// of their first records: one `F` row each.
    runs: Vec<Run>,
    /// The last version and position of each stream the group appended to.
    tails: HashMap<StreamId, (Version, Position)>,
    idempotency: HashMap<String, (Appended, [u8; 32])>,
    batch: sled::Batch,
    /// The row the group's next records go into (see `rows`).
    pack: Option<Pack>,
    accepted: usize,
}

impl Group {
    /// Stages the record at the group's next position (`position`, as the caller counts it),
    /// linked to its stream's record at `link` (0: none).
    fn stage_record(
        &mut self,
        position: Position,
        stream: StreamId,
        version: Version,
        link: Position,
        payload: &[u8],
    ) {
        if self
            .pack
            .as_ref()
            .is_some_and(|pack| pack.is_full_for(payload.len()))
        {
            self.finish_pack();
        }
        let pack = self.pack.get_or_insert_with(|| Pack::new(position));
        debug_assert_eq!(pack.next_position(), position);
        pack.push(stream, version, link, payload);
    }

    /// Writes the row being filled, if any, into the batch.
    fn finish_pack(&mut self) {
        if let Some(pack) = self.pack.take() {
            let (key, value) = pack.into_row();
            self.batch.insert(&key[..], value);
        }
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub(crate) db: sled::Db,
    pub(crate) durability: Durability,
    pub(crate) shared: Arc<Shared>,
    pub(crate) head_tx: watch::Sender<Position>,
    /// Counters as applied to the tree; may be ahead of the published head
    /// after a failed flush.
    pub(crate) counters: Counters,
    /// Set after a failed apply or flush: the counters are re-read from the
    /// tree before the next group.
    pub(crate) needs_reload: bool,
    /// The last `F` row as applied, if its run can still grow.
    pub(crate) open_run: Option<Run>,
    /// The durable head as last recorded beside the database.
    pub(crate) mark: super::mark::DurableMark,
    /// Refuses groups while the disk is nearly full.
    pub(crate) space: super::space::SpaceGuard,
}

impl Writer {
    /// Serves appends until the queue is closed and empty, then flushes.
    pub(crate) fn run(mut self, submissions: &Submissions) {
        let shared = Arc::clone(&self.shared);
        while let Some((appends, group)) = submissions.take() {
            let answers = {
                // Idle again before the answers go: a caller answered sees the writer idle.
                let _busy = shared.stall.start();
                #[cfg(test)]
                hold::pause_point();
                self.commit(appends)
            };
            group.answer(answers);
        }
        let _busy = shared.stall.start();
        match self.db.flush() {
            Ok(_) => self.mark.record(self.counters.last_position()),
            Err(error) => tracing::error!(%error, "final flush of the event log failed"),
        }
        tracing::debug!("event log writer stopped");
    }

    /// The answers of `appends`, in order, once what they wrote is durable.
    fn commit(&mut self, appends: Vec<Append>) -> Vec<Answer> {
        let fail_all = |error: &LogError| -> Vec<Answer> { failed(appends.len(), error) };
        if let Err(error) = self.space.check() {
            return fail_all(&error);
        }
        if self.needs_reload {
            match recover(&self.db) {
                Ok((counters, run)) => {
                    self.counters = counters;
                    self.open_run = run;
                    self.needs_reload = false;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot re-read the log counters");
                    return fail_all(&error);
                }
            }
        }

        let mut group = Group {
            counters: self.counters,
            runs: Vec::new(),
            tails: HashMap::new(),
            idempotency: HashMap::new(),
            batch: sled::Batch::default(),
            pack: None,
            accepted: 0,
        };
        let answers: Vec<Answer> = appends
            .into_iter()
            .map(|append| self.check_and_stage(&mut group, append))
            .collect();
        let accepted = group.accepted;
        group.finish_pack();
        for (first, positions) in &group.runs {
            group
                .batch
                .insert(&keys::first_key(*first)[..], keys::first_value(positions));
        }
        let open_run = match group.runs.last() {
            Some(run) => (run.1.len() < MAX_EXTENDED).then(|| run.clone()),
            None => self.open_run.take(),
        };
        if group.counters.streams != self.counters.streams {
            group.batch.insert(
                keys::STREAM_COUNT,
                &group.counters.streams.to_be_bytes()[..],
            );
        }

        match self.persist(group) {
            Ok(()) => {
                self.open_run = open_run;
                tracing::trace!(appends = answers.len(), accepted, "group committed");
                answers
            }
            Err(error) => {
                // The group's records may or may not be in the tree now (an
                // apply can fail half-way in memory; a flush failure leaves
                // them applied). Re-read the counters before the next group so
                // positions stay gap-free, and fail the whole group: its
                // outcome is unknown to the callers.
                tracing::error!(%error, appends = answers.len(), "group commit failed");
                self.needs_reload = true;
                failed(answers.len(), &error)
            }
        }
    }

    /// Writes the group's batch, makes it durable and publishes the head.
    fn persist(&mut self, group: Group) -> Result<(), LogError> {
        if group.accepted > 0 {
            self.db
                .apply_batch(group.batch)
                .map_err(crate::error::storage)?;
            self.counters = group.counters;
        }
        let applied = self.counters.last_position();
        let head = self.shared.head.load(Ordering::Acquire);
        if applied > head {
            if self.durability == Durability::Flush {
                self.db.flush().map_err(crate::error::storage)?;
            }
            self.shared
                .streams
                .store(self.counters.streams, Ordering::Release);
            self.shared
                .allocated
                .store(self.counters.next_stream - 1, Ordering::Release);
            self.shared.head.store(applied, Ordering::Release);
            self.head_tx.send_replace(applied);
            if self.durability == Durability::Flush {
                self.mark.record_now_and_then(applied);
            }
        }
        Ok(())
    }

    /// Checks one request against the tree and the group so far; if it is
    /// accepted, stages its writes in the group's batch.
    fn check_and_stage(&self, group: &mut Group, append: Append) -> Result<Appended, AppendError> {
        if let Some(idempotency) = &append.idempotency {
            if let Some((original, fingerprint)) =
                self.idempotent_result(group, &idempotency.key)?
            {
                return replay(idempotency, original, fingerprint);
            }
        }

        let first_position = group.counters.next_position;
        let (stream, current) = match append.stream {
            StreamTarget::New => (group.counters.next_stream, None),
            StreamTarget::Existing(id) if id == 0 || id >= group.counters.next_stream => {
                return Err(AppendError::StreamNotFound(id))
            }
            StreamTarget::Existing(id) => match self.stream_tail(group, id)? {
                Some(tail) => (id, Some(tail)),
                None => return Err(AppendError::StreamNotFound(id)),
            },
            StreamTarget::Restored(id) => {
                let version = self.stream_tail(group, id)?.map(|(version, _)| version);
                check_restored(&append, id, version)?;
                (id, None)
            }
        };
        check_expected(&append, current.map(|(version, _)| version))?;

        // A new stream whose id is above every id given joins the group's runs: its first
        // record needs no `T` row. (Only a restore, of streams out of order, gives one below.)
        let mut in_run = false;
        if current.is_none() {
            group.counters.streams += 1;
            if stream >= group.counters.next_stream {
                if group.runs.is_empty() {
                    if let Some(run) = self
                        .open_run
                        .as_ref()
                        .filter(|(first, positions)| *first + positions.len() as u64 == stream)
                    {
                        group.runs.push(run.clone());
                    }
                }
                match group.runs.last_mut() {
                    Some((first, positions))
                        if *first + positions.len() as u64 == stream
                            && positions.len() < MAX_RUN =>
                    {
                        positions.push(first_position);
                    }
                    _ => group.runs.push((stream, vec![first_position])),
                }
                group.counters.next_stream = stream + 1;
                in_run = true;
            }
        }
        let (current_version, mut link) = current.unwrap_or((0, 0));
        let first_version = current_version + 1;
        let count = append.payloads.len() as u64;
        for (offset, payload) in (0..).zip(&append.payloads) {
            let position = first_position + offset;
            group.stage_record(position, stream, first_version + offset, link, payload);
            link = position;
        }
        let last_version = first_version + count - 1;
        let last_position = first_position + count - 1;
        // Nothing else is written per append: the stream's tail, unless its run's `F` row
        // tells it (version 1), and the stream count, one row per group (see `commit`).
        if !(in_run && last_version == 1) {
            group.batch.insert(
                &keys::tail_key(stream)[..],
                &keys::tail_value(last_version, last_position)[..],
            );
        }
        group.counters.next_position += count;
        group.tails.insert(stream, (last_version, last_position));

        let appended = Appended {
            stream,
            first_version,
            last_version,
            first_position,
            last_position,
            duplicate: false,
        };
        if let Some(idempotency) = append.idempotency {
            group.batch.insert(
                keys::idempotency_key(&idempotency.key),
                &keys::idempotency_value(&appended, &idempotency.fingerprint)[..],
            );
            group
                .idempotency
                .insert(idempotency.key, (appended, idempotency.fingerprint));
        }
        group.accepted += 1;
        Ok(appended)
    }

    /// The stream's last version and position as applied (group first, then the tree).
    fn stream_tail(
        &self,
        group: &Group,
        stream: StreamId,
    ) -> Result<Option<(Version, Position)>, LogError> {
        if let Some(tail) = group.tails.get(&stream) {
            return Ok(Some(*tail));
        }
        super::stored_tail(&self.db, stream)
    }

    /// The original result for an idempotency key (group first, then the
    /// tree).
    fn idempotent_result(
        &self,
        group: &Group,
        key: &str,
    ) -> Result<Option<(Appended, [u8; 32])>, LogError> {
        if let Some(found) = group.idempotency.get(key) {
            return Ok(Some(*found));
        }
        let stored_key = keys::idempotency_key(key);
        match self.db.get(&stored_key).map_err(crate::error::storage)? {
            Some(value) => Ok(Some(keys::decode_idempotency_value(&stored_key, &value)?)),
            None => Ok(None),
        }
    }
}

/// `count` answers of `error`.
fn failed(count: usize, error: &LogError) -> Vec<Answer> {
    (0..count).map(|_| Err(error.duplicate().into())).collect()
}

/// A pause inside a group's commit that tests hold to see the writer busy.
#[cfg(test)]
pub(crate) mod hold {
    use std::sync::{Mutex, PoisonError};

    /// Held by a test: every group waits at the start of its commit until it is released.
    pub(crate) static HOLD_COMMITS: Mutex<()> = Mutex::new(());

    pub(super) fn pause_point() {
        drop(HOLD_COMMITS.lock().unwrap_or_else(PoisonError::into_inner));
    }
}
