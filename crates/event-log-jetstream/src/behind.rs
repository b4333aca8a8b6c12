//! The replica on disk, written behind: a record is held in memory (the front) as soon as it is
//! applied, and a thread of its own writes the front to the sled log in large batches, then
//! lets it go. Applying a record therefore costs what the in-memory replica costs, and the
//! sled log's cost per batch (it writes its IO buffer out twice per batch) is paid once per
//! many records; memory holds only what is not written yet.
//!
//! Reads see the sled log up to the front's base and the front after it. A crash loses the
//! front, which the tail folds again from the stream (the sled log holds a prefix of it).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use event_log::{
    Append, Appended, ExpectedVersion, HeadWatch, Idempotency, LogEngine, LogError, LogStats,
    Position, Record, SledLog, StreamId, StreamTarget, Version,
};
use tokio::sync::watch;

/// The most records one write to the sled log carries.
const WRITE_BATCH: usize = 1024;

/// The most records held in memory before the tail waits for the writer: folding a large
/// stream into a new replica is faster than writing it, and the front would otherwise hold most
/// of the stream.
pub(crate) const MAX_BACKLOG: usize = 65_536;

/// How long the writer waits before trying again after a failed write (a full disk).
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What is applied and not yet written to the sled log.
struct Front {
    /// The last position written to the sled log; the front holds the records after it.
    base: Position,
    records: VecDeque<(Record, Option<Idempotency>)>,
    /// The last version and its position of each stream with records in the front.
    versions: HashMap<StreamId, (Version, Position)>,
    /// The keys of the front's records.
    keys: HashMap<String, (Appended, [u8; 32])>,
    /// The highest stream id held.
    allocated: StreamId,
    /// How many streams are held, written or not.
    streams: u64,
    /// Set when the replica closes: the writer writes what is left and stops.
    closing: bool,
}

impl Front {
    fn head(&self) -> Position {
        self.base + self.records.len() as u64
    }
}

/// Shared between the replica and its writer thread.
struct Shared {
    disk: SledLog,
    front: Mutex<Front>,
    /// Signalled when the front grows or the replica closes.
    work: Condvar,
    /// Notified after each write, for a tail waiting on a backlog.
    written: tokio::sync::Notify,
    head_tx: watch::Sender<Position>,
}

impl Shared {
    fn front(&self) -> MutexGuard<'_, Front> {
        self.front.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The replica on disk, written behind (see the module's opening).
pub(crate) struct WriteBehind {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        self.shared.front().closing = true;
        self.shared.work.notify_all();
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("the replica's writer panicked");
            }
        }
    }
}

impl WriteBehind {
    /// The replica over `disk`, which holds what was written before.
    pub(crate) fn new(disk: SledLog) -> Result<WriteBehind, LogError> {
        let base = disk.head();
        let front = Front {
            base,
            records: VecDeque::new(),
            versions: HashMap::new(),
            keys: HashMap::new(),
            allocated: disk.streams_allocated(),
            streams: disk.stats()?.streams,
            closing: false,
        };
        let shared = Arc::new(Shared {
            disk,
            front: Mutex::new(front),
            work: Condvar::new(),
            written: tokio::sync::Notify::new(),
            head_tx: watch::channel(base).0,
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("replica-writer".into())
                .spawn(move || write_behind(&shared))?
        };
        Ok(WriteBehind {
            shared,
            writer: Some(writer),
        })
    }

    /// The sled log under it.
    pub(crate) fn disk(&self) -> &SledLog {
        &self.shared.disk
    }

    /// Waits (without blocking the runtime) while more than [`MAX_BACKLOG`] records wait to be
    /// written.
    pub(crate) async fn wait_for_room(&self) {
        loop {
            let written = self.shared.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if self.shared.front().records.len() <= MAX_BACKLOG {
                return;
            }
            written.await;
        }
    }

    /// The highest stream id held.
    pub(crate) fn streams_allocated(&self) -> StreamId {
        self.shared.front().allocated
    }

    /// Holds `records` (stream, key, payload) at the positions after the head, in order: each
    /// continues its stream (or starts it, under its own id). An error means a record cannot
    /// follow what is held (a key used before), and nothing of the batch is held.
    pub(crate) fn apply(
        &self,
        records: Vec<(StreamId, Option<Idempotency>, Vec<u8>)>,
    ) -> Result<Vec<Position>, String> {
        let shared = &*self.shared;
        let mut front = shared.front();
        let mut held = Vec::with_capacity(records.len());
        let mut versions: HashMap<StreamId, (Version, Position)> = HashMap::new();
        let mut keys = HashMap::new();
        let mut started = 0;
        let mut allocated = front.allocated;
        let mut position = front.head();
        let unreadable = |error: LogError| format!("the replica cannot be read: {error}");
        for (stream, idempotency, payload) in records {
            position += 1;
            let current = match versions.get(&stream).or(front.versions.get(&stream)) {
                Some((version, _)) => Some(*version),
                // Above every id held: a new stream, which the sled log need not be asked of.
                None if stream > allocated => None,
                None => shared.disk.stream_version(stream).map_err(unreadable)?,
            };
            let version = current.unwrap_or(0) + 1;
            if current.is_none() {
                started += 1;
            }
            let appended = Appended::one(stream, version, position);
            if let Some(key) = &idempotency {
                let used = keys.contains_key(&key.key)
                    || front.keys.contains_key(&key.key)
                    || shared
                        .disk
                        .idempotent_result(&key.key)
                        .map_err(unreadable)?
                        .is_some();
                if used {
                    return Err(format!(
                        "the record at {position} uses the key {:?} a record before it used",
                        key.key
                    ));
                }
                keys.insert(key.key.clone(), (appended, key.fingerprint));
            }
            versions.insert(stream, (version, position));
            allocated = allocated.max(stream);
            held.push((
                Record {
                    position,
                    stream,
                    version,
                    payload,
                },
                idempotency,
            ));
        }
        let positions = held.iter().map(|(record, _)| record.position).collect();
        front.records.extend(held);
        front.versions.extend(versions);
        front.keys.extend(keys);
        front.allocated = allocated;
        front.streams += started;
        let head = front.head();
        drop(front);
        shared.head_tx.send_replace(head);
        shared.work.notify_one();
        Ok(positions)
    }
}

/// Writes the front to the sled log in batches until the replica closes and the front is empty.
fn write_behind(shared: &Shared) {
    loop {
        let batch: Vec<(Record, Option<Idempotency>)> = {
            let mut front = shared.front();
            while front.records.is_empty() && !front.closing {
                front = shared
                    .work
                    .wait(front)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if front.records.is_empty() {
                break;
            }
            front.records.iter().take(WRITE_BATCH).cloned().collect()
        };
        let appends = batch
            .iter()
            .map(|(record, idempotency)| Append {
                stream: if record.version == 1 {
                    StreamTarget::Restored(record.stream)
                } else {
                    StreamTarget::Existing(record.stream)
                },
                expected: ExpectedVersion::Any,
                idempotency: idempotency.clone(),
                payloads: vec![record.payload.clone()],
            })
            .collect();
        let written = shared
            .disk
            .append_all(appends)
            .into_iter()
            .zip(&batch)
            .take_while(|(result, (record, _))| {
                matches!(result, Ok(appended) if appended.last_position == record.position)
            })
            .count();
        let mut front = shared.front();
        let base = front.base + written as u64;
        front.records.drain(..written);
        front.base = base;
        front.versions.retain(|_, (_, position)| *position > base);
        front
            .keys
            .retain(|_, (appended, _)| appended.last_position > base);
        let closing = front.closing;
        drop(front);
        shared.written.notify_waiters();
        if written < batch.len() {
            // A record the sled log refused (a full disk): it stays in the front, which reads
            // still see, and is written again after a pause, unless the replica is closing
            // (the tail folds it again after the restart).
            tracing::error!(
                position = batch[written].0.position,
                "the replica's records cannot be written to disk; retrying"
            );
            if closing {
                break;
            }
            std::thread::sleep(RETRY_PAUSE);
        }
    }
}

impl LogEngine for WriteBehind {
    fn append(&self, _: Append) -> Result<Appended, event_log::AppendError> {
        Err(LogError::Storage("the replica is written by the stream only".into()).into())
    }

    fn head(&self) -> Position {
        self.shared.front().head()
    }

    fn watch_head(&self) -> HeadWatch {
        let mut receiver = self.shared.head_tx.subscribe();
        receiver.mark_unchanged();
        HeadWatch::new(receiver)
    }

    fn read_from(&self, after: Position, limit: usize) -> Result<Vec<Record>, LogError> {
        let front = self.shared.front();
        let mut records = if after < front.base {
            let on_disk = usize::try_from(front.base - after).unwrap_or(usize::MAX);
            self.shared.disk.read_from(after, limit.min(on_disk))?
        } else {
            Vec::new()
        };
        let skip = usize::try_from(after.saturating_sub(front.base)).unwrap_or(usize::MAX);
        let room = limit - records.len();
        records.extend(
            front
                .records
                .iter()
                .skip(skip)
                .take(room)
                .map(|(record, _)| record.clone()),
        );
        Ok(records)
    }

    fn read_stream(&self, stream: StreamId) -> Result<Vec<Record>, LogError> {
        let front = self.shared.front();
        let mut records = self.shared.disk.read_stream(stream)?;
        records.retain(|record| record.position <= front.base);
        records.extend(
            front
                .records
                .iter()
                .filter(|(record, _)| record.stream == stream)
                .map(|(record, _)| record.clone()),
        );
        Ok(records)
    }

    fn stream_version(&self, stream: StreamId) -> Result<Option<Version>, LogError> {
        let front = self.shared.front();
        match front.versions.get(&stream) {
            Some((version, _)) => Ok(Some(*version)),
            None => self.shared.disk.stream_version(stream),
        }
    }

    fn idempotent_result(&self, key: &str) -> Result<Option<(Appended, [u8; 32])>, LogError> {
        let front = self.shared.front();
        match front.keys.get(key) {
            Some((appended, fingerprint)) => Ok(Some((
                Appended {
                    duplicate: true,
                    ..*appended
                },
                *fingerprint,
            ))),
            None => self.shared.disk.idempotent_result(key),
        }
    }

    fn stats(&self) -> Result<LogStats, LogError> {
        let (head, streams) = {
            let front = self.shared.front();
            (front.head(), front.streams)
        };
        Ok(LogStats {
            events: head,
            streams,
            head,
            size_on_disk: self.shared.disk.stats()?.size_on_disk,
        })
    }

    fn flush(&self) -> Result<(), LogError> {
        self.shared.disk.flush()
    }

    /// How long the sled log under the replica has been writing its current batch.
    fn busy_for(&self) -> Option<Duration> {
        self.shared.disk.busy_for()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_log::{Durability, LogOptions};

    fn open(dir: &std::path::Path) -> WriteBehind {
        let options = LogOptions {
            durability: Durability::Buffered,
            disk_reserve: 0,
            cache_bytes: event_log::DEFAULT_LOG_CACHE_BYTES,
        };
        WriteBehind::new(SledLog::open(dir, options).expect("the sled log opens"))
            .expect("the replica opens")
    }

    /// While the writer drains the front at its own pace, every read at any moment equals what
    /// was applied, whatever part of it is on disk; after a reopen the disk holds all of it.
    #[test]
    fn reads_span_what_is_written_and_what_is_not_yet() {
        let dir = tempfile::tempdir().expect("a directory");
        let replica = open(dir.path());
        let mut expected: Vec<Record> = Vec::new();
        let mut versions: HashMap<StreamId, Version> = HashMap::new();
        for round in 0..200u64 {
            let records: Vec<_> = (0..1 + round % 7)
                .map(|i| {
                    let stream = 1 + (round * 7 + i) % 23;
                    let key = (i == 0).then(|| Idempotency {
                        key: format!("k{round}"),
                        fingerprint: [round as u8; 32],
                    });
                    (stream, key, format!("r{round}i{i}").into_bytes())
                })
                .collect();
            for (stream, _, payload) in &records {
                let version = versions.entry(*stream).or_default();
                *version += 1;
                expected.push(Record {
                    position: expected.len() as u64 + 1,
                    stream: *stream,
                    version: *version,
                    payload: payload.clone(),
                });
            }
            let positions = replica.apply(records).expect("applied");
            assert_eq!(*positions.last().unwrap(), expected.len() as u64);
            assert_eq!(replica.head(), expected.len() as u64);
            let after = round * 3 % expected.len() as u64;
            assert_eq!(
                replica.read_from(after, 5).expect("read"),
                expected[after as usize..expected.len().min(after as usize + 5)]
            );
            let stream = 1 + round % 23;
            let of_stream: Vec<Record> = expected
                .iter()
                .filter(|record| record.stream == stream)
                .cloned()
                .collect();
            assert_eq!(replica.read_stream(stream).expect("read"), of_stream);
            assert_eq!(
                replica.stream_version(stream).expect("read"),
                versions.get(&stream).copied()
            );
            let (found, fingerprint) = replica
                .idempotent_result(&format!("k{round}"))
                .expect("read")
                .expect("the key is held");
            assert!(found.duplicate);
            assert_eq!(fingerprint, [round as u8; 32]);
            assert_eq!(
                replica.stats().expect("stats").streams,
                versions.len() as u64
            );
        }
        // Applying a key used before is refused, and nothing of that batch is held.
        let head = replica.head();
        let reused = Idempotency {
            key: "k3".into(),
            fingerprint: [3; 32],
        };
        assert!(replica
            .apply(vec![
                (1, None, b"x".to_vec()),
                (2, Some(reused), b"y".to_vec())
            ])
            .is_err());
        assert_eq!(replica.head(), head);
        drop(replica);
        let reopened = open(dir.path());
        assert_eq!(reopened.read_from(0, usize::MAX).expect("read"), expected);
        assert_eq!(reopened.streams_allocated(), 23);
    }
}
