//! `event-log-jetstream` owns the replicated engine of the event log: a NATS JetStream stream
//! (file storage, replicated over the cluster, `deny_delete`, `deny_purge`, no limits) is the
//! log of record, and each instance keeps a local replica of it, folded from the stream in
//! sequence order, from which it answers every read.
//!
//! # Fencing
//!
//! A record's position is its stream sequence. Every append is decided against the replica at
//! head `h` (idempotency key first, then the stream's expected version; a new stream gets the id
//! after the last one allocated) and published with `Nats-Expected-Last-Sequence: h`. JetStream
//! stores it only if nothing else was stored since `h`, so the checks held exactly when it was
//! stored: two writers, on any instances, can never both append version `n` of a stream, a
//! stream id is never handed out twice, and a key is never used twice. A writer that lost the
//! race (its publish is refused) catches up and decides again. The stream sequence is the
//! fencing token: a paused or partitioned writer cannot append on stale knowledge. The
//! writer (`writer.rs`) decides the appends waiting at once as one batch and publishes them pipelined,
//! each chained on the one before it, so that one refusal refuses the rest of the batch.
//!
//! # Replica
//!
//! A tail task reads the stream from the replica's head on and applies its messages to the
//! replica at their sequences, as many at once as have arrived; the writer applies this
//! instance's own records as their acks come, whichever is first (`replica.rs`). An append
//! returns once the replica holds it, so a read on the same instance sees it;
//! [`LogEngine::sync`] waits until the replica reaches the stream's last sequence, so a read on
//! any instance after it sees every write acknowledged before it. The replica is kept on disk
//! when [`JetStreamOptions::replica_dir`] names a directory (a restarted instance then reads only
//! what the stream stored since), else in memory (folded from the whole stream at every open).
//! A replica on disk that is not a copy of the stream's start (another stream's, longer than
//! it, another last record) or whose files are damaged is folded again; a damaged one is first
//! moved to `<replica_dir>.damaged`.
//!
//! The contract is blocking; the engine runs its own runtime, so it is called from plain or
//! blocking threads (never from inside an async task).

#![warn(missing_docs)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use event_log::{
    Append, AppendError, Appended, EventLog, HeadWatch, Idempotency, LogEngine, LogError, LogStats,
    Position, Record, StreamId, Version,
};
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};

mod behind;
mod coalesce;
mod replica;
mod writer;

use replica::{Applied, Replica, Stored};

/// A prefix no other engine's message ids share: the process, the time and a random value.
fn unique_prefix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    format!("{}-{:016x}", std::process::id(), hasher.finish())
}

/// The header naming a record's stream.
const STREAM_HEADER: &str = "Call-Ledger-Stream";
/// The header holding a record's idempotency key.
const KEY_HEADER: &str = "Call-Ledger-Idempotency-Key";
/// The header holding the hex fingerprint of the request that used the key.
const FINGERPRINT_HEADER: &str = "Call-Ledger-Idempotency-Fingerprint";
/// How long dropping the engine waits for its tasks (and a replica's last write) to stop.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(10);
/// The most arrived messages the tail applies to the replica at once.
const TAIL_BATCH: usize = 1024;
/// The longest a read waits to learn the stream's head before it fails (to be retried).
const SYNC_TIMEOUT: Duration = Duration::from_secs(2);
/// The stream's duplicate window: records carry unique message ids only to chain a batch's
/// fences (see [`writer`]), never to deduplicate a retry, so the ids held in memory are few.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(1);

/// How the engine is set up.
#[derive(Clone, Debug)]
pub struct JetStreamOptions {
    /// The stream of record, e.g. `CALL_LOG`.
    pub stream: String,
    /// Its subjects' prefix: records go to `<subject_prefix>.<stream id>`.
    pub subject_prefix: String,
    /// How many servers hold each record: 1 for development, 3 in production.
    pub replicas: usize,
    /// How long one round trip to JetStream may take before the operation fails.
    pub timeout: Duration,
    /// Where the local replica is kept: a directory of its own (a sled log; an open then reads
    /// only what the stream stored beyond it), or `None` for memory (the whole stream folded at
    /// every open, and held in memory).
    pub replica_dir: Option<PathBuf>,
}

/// The JetStream engine. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct JetStreamLog {
    inner: Arc<Inner>,
}

struct Inner {
    /// Always `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
    js: jetstream::Context,
    options: JetStreamOptions,
    replica: Arc<Replica>,
    /// The writer's queue: appends of this instance are decided and published in batches.
    jobs: mpsc::Sender<writer::Job>,
    /// Stops the tail task when the engine is dropped.
    _stop: watch::Sender<bool>,
    /// What stopped the tail, if it stopped on its own (a replica that disagrees with the
    /// stream): the engine is unusable then.
    failure: Arc<Mutex<Option<String>>>,
    /// Reads in flight at once share one lookup of the stream's last sequence.
    syncs: coalesce::Coalescer,
}

impl Inner {
    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the engine")
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle may go away inside another runtime's task, where waiting for this
        // one's tasks would panic: there they stop in the background. Elsewhere they are waited
        // for, so that the replica (its directory locked while it is open) is closed on return.
        if let Some(runtime) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(SHUTDOWN_PATIENCE);
            }
        }
    }
}

/// A storage error: what was being done, and why it failed.
fn storage(what: &str, error: impl std::fmt::Display) -> LogError {
    LogError::Storage(format!("{what}: {error}"))
}

impl JetStreamLog {
    /// Connects anonymously to `url` (one server or a comma-separated list), ensures the
    /// stream, and folds it into the replica before returning.
    pub fn open(url: &str, options: JetStreamOptions) -> Result<JetStreamLog, LogError> {
        let servers = url
            .split(',')
            .map(|server| server.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| storage(&format!("the NATS server list {url:?}"), e))?;
        JetStreamLog::open_with(async_nats::connect(servers), options)
    }

    /// Like [`JetStreamLog::open`] on the client that `connect` makes (with credentials, a
    /// name, reconnect settings); `connect` runs on the engine's own runtime, which then
    /// carries the connection.
    pub fn open_with<F, E>(connect: F, options: JetStreamOptions) -> Result<JetStreamLog, LogError>
    where
        F: std::future::Future<Output = Result<async_nats::Client, E>>,
        E: std::fmt::Display,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("event-log-jetstream")
            .enable_all()
            .build()
            .map_err(LogError::Io)?;
        let timeout = options.timeout;
        let (js, stream) = runtime.block_on(async {
            let client = tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| storage("connecting to NATS", "timed out"))?
                .map_err(|e| storage("connecting to NATS", e))?;
            let js = jetstream::new(client);
            let config = stream::Config {
                name: options.stream.clone(),
                description: Some("call-ledger: the log of record".into()),
                subjects: vec![format!("{}.>", options.subject_prefix)],
                storage: stream::StorageType::File,
                num_replicas: options.replicas.max(1),
                deny_delete: true,
                deny_purge: true,
                allow_direct: true,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            };
            // A cluster that is still electing its meta leader (just started, or a node just
            // lost) refuses for a moment: keep asking, for a few timeouts.
            let deadline = tokio::time::Instant::now() + timeout * 3;
            let mut pause = Duration::from_millis(100);
            let stream = loop {
                match js.get_or_create_stream(config.clone()).await {
                    Ok(stream) => break stream,
                    Err(error) if tokio::time::Instant::now() < deadline => {
                        tracing::warn!(%error, stream = %options.stream, "cannot ensure the stream of record yet; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                    Err(error) => {
                        return Err(storage(&format!("ensuring the stream {}", options.stream), error))
                    }
                }
            };
            Ok::<_, LogError>((js, stream))
        })?;
        let identity = replica::identity(&options.stream, &stream.cached_info().created);
        let mut replica = match &options.replica_dir {
            Some(dir) => Replica::on_disk(dir, &identity)?,
            None => Replica::in_memory(),
        };
        if let Some(problem) = runtime.block_on(disagreement(&stream, &replica))? {
            tracing::warn!(%problem, stream = %options.stream, "the local replica is not a copy of the stream: folding it again");
            replica = replica.reset(&identity)?;
        }
        let (stop, stop_rx) = watch::channel(false);
        let replica = Arc::new(replica);
        let (jobs, queue) = mpsc::channel(writer::QUEUE);
        runtime.spawn(
            writer::Writer {
                js: js.clone(),
                replica: Arc::clone(&replica),
                subject_prefix: options.subject_prefix.clone(),
                stream_name: options.stream.clone(),
                timeout: options.timeout,
                id_prefix: unique_prefix(),
                next_id: 0,
            }
            .run(queue),
        );
        let engine = JetStreamLog {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                js,
                options,
                replica,
                jobs,
                _stop: stop,
                failure: Arc::new(Mutex::new(None)),
                syncs: coalesce::Coalescer::default(),
            }),
        };
        engine.inner.runtime().spawn(tail(
            stream,
            Arc::clone(&engine.inner.replica),
            Arc::clone(&engine.inner.failure),
            stop_rx,
        ));
        engine.catch_up_at_open()?;
        Ok(engine)
    }

    /// Waits until the replica holds what the stream holds ([`LogEngine::sync`]). Folding a
    /// large stream into a new replica takes longer than one wait, so it goes on while the
    /// replica moves and fails only after a whole wait without progress.
    fn catch_up_at_open(&self) -> Result<(), LogError> {
        let mut reached = self.inner.replica.head();
        loop {
            match self.sync() {
                Ok(_) => return Ok(()),
                Err(error) => {
                    let now = self.inner.replica.head();
                    if now == reached {
                        return Err(error);
                    }
                    tracing::info!(head = now, "folding the stream of record into the replica");
                    reached = now;
                }
            }
        }
    }

    /// This engine as the log every caller holds.
    pub fn into_event_log(self) -> EventLog {
        EventLog::from_engine(self)
    }

    fn check_failure(&self) -> Result<(), LogError> {
        match &*self
            .inner
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(failure) => Err(LogError::Corrupt(failure.clone())),
            None => Ok(()),
        }
    }

    /// Waits until the replica reaches `position`, for at most the timeout.
    fn wait_for_replica(&self, position: Position) -> Result<(), LogError> {
        let mut head = self.inner.replica.watch_head();
        let timeout = self.inner.options.timeout;
        self.inner.runtime().block_on(async {
            tokio::time::timeout(timeout, head.wait_for(position))
                .await
                .map_err(|_| {
                    storage(
                        "waiting for the local replica",
                        format!("position {position} did not arrive within {timeout:?}"),
                    )
                })?
                .map(|_| ())
        })?;
        self.check_failure()
    }
}

impl LogEngine for JetStreamLog {
    fn append(&self, append: Append) -> Result<Appended, AppendError> {
        self.check_failure()?;
        let (answer, answered) = oneshot::channel();
        let stopped = || AppendError::Log(LogError::Storage("the JetStream writer stopped".into()));
        self.inner
            .jobs
            .blocking_send(writer::Job { append, answer })
            .map_err(|_| stopped())?;
        answered.blocking_recv().map_err(|_| stopped())?
    }

    /// Hands every append to the writer before waiting for any, so that they are published
    /// pipelined and batched as concurrent callers' appends are.
    fn append_all(&self, appends: Vec<Append>) -> Vec<Result<Appended, AppendError>> {
        let stopped = || AppendError::Log(LogError::Storage("the JetStream writer stopped".into()));
        let queued: Vec<_> = appends
            .into_iter()
            .map(|append| {
                self.check_failure()?;
                let (answer, answered) = oneshot::channel();
                self.inner
                    .jobs
                    .blocking_send(writer::Job { append, answer })
                    .map_err(|_| stopped())?;
                Ok(answered)
            })
            .collect();
        queued
            .into_iter()
            .map(|queued: Result<_, AppendError>| queued?.blocking_recv().map_err(|_| stopped())?)
            .collect()
    }

    fn head(&self) -> Position {
        self.inner.replica.head()
    }

    fn watch_head(&self) -> HeadWatch {
        self.inner.replica.watch_head()
    }

    fn read_from(&self, after: Position, limit: usize) -> Result<Vec<Record>, LogError> {
        self.check_failure()?;
        self.inner.replica.read_from(after, limit)
    }

    fn read_stream(&self, stream: StreamId) -> Result<Vec<Record>, LogError> {
        self.check_failure()?;
        self.inner.replica.read_stream(stream)
    }

    fn stream_version(&self, stream: StreamId) -> Result<Option<Version>, LogError> {
        self.inner.replica.stream_version(stream)
    }

    fn idempotent_result(&self, key: &str) -> Result<Option<(Appended, [u8; 32])>, LogError> {
        self.inner.replica.idempotent_result(key)
    }

    fn stats(&self) -> Result<LogStats, LogError> {
        self.inner.replica.stats()
    }

    /// Every append is acknowledged by JetStream (a quorum of the stream's replicas) before
    /// it returns: nothing is left to flush here.
    fn flush(&self) -> Result<(), LogError> {
        Ok(())
    }

    /// The replica's storage, where it is on disk: the stream's own appends are bounded by
    /// their timeouts.
    fn busy_for(&self) -> Option<Duration> {
        self.inner.replica.busy_for()
    }

    fn sync(&self) -> Result<Position, LogError> {
        // Short: a read that cannot learn the head now (a stream leader being elected) fails
        // fast and is retried by its client, rather than holding the request.
        let timeout = self.inner.options.timeout.min(SYNC_TIMEOUT);
        let name = &self.inner.options.stream;
        let last = self
            .inner
            .syncs
            .ask(|| {
                self.inner.runtime().block_on(async {
                    // One round trip: looking the stream up answers its info, last sequence
                    // included.
                    let stream = tokio::time::timeout(timeout, self.inner.js.get_stream(name))
                        .await
                        .map_err(|_| format!("reading the stream {name}: timed out"))?
                        .map_err(|e| format!("reading the stream {name}: {e}"))?;
                    Ok(stream.cached_info().state.last_sequence)
                })
            })
            .map_err(LogError::Storage)?;
        self.wait_for_replica(last)?;
        Ok(last)
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn from_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Folds the stream into the replica from its head on, in sequence order, until `stop`; follows
/// new records as they are stored. A consumer that fails or skips a sequence is recreated from
/// the replica's head.
async fn tail(
    stream: stream::Stream,
    replica: Arc<Replica>,
    failure: Arc<Mutex<Option<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        let start = replica.head() + 1;
        let opened = async {
            let consumer = stream
                .create_consumer(consumer::pull::Config {
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                    ack_policy: consumer::AckPolicy::None,
                    inactive_threshold: Duration::from_secs(60),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            consumer.messages().await.map_err(|e| e.to_string())
        }
        .await;
        let mut messages = match opened {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%error, "cannot follow the stream of record; retrying");
                if pause_or_stop(&mut pause, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = stop.changed() => return,
                next = messages.next() => next,
            };
            let Some(Ok(message)) = next else {
                break;
            };
            pause = Duration::from_millis(100);
            // With it, the messages that have arrived already: applied as one batch (one write
            // of a replica on disk rather than one per record).
            let mut batch = Vec::new();
            let mut ended = false;
            let mut arrived = Some(message);
            while let Some(message) = arrived.take() {
                let Ok(info) = message.info() else {
                    ended = true;
                    break;
                };
                let sequence = info.stream_sequence;
                // One this instance's writer applied already (its own record) is not copied.
                if sequence > replica.head() {
                    match stored(sequence, &message) {
                        Ok(record) => batch.push(record),
                        Err(problem) => {
                            fail(&failure, problem, sequence);
                            return;
                        }
                    }
                }
                if batch.len() < TAIL_BATCH {
                    match messages.next().now_or_never() {
                        Some(Some(Ok(message))) => arrived = Some(message),
                        Some(_) => ended = true,
                        None => {}
                    }
                }
            }
            let first = batch.first().map(|record| record.sequence);
            // A replica written behind that lags too far holds the fold back (or stop).
            tokio::select! {
                _ = stop.changed() => return,
                () = replica.wait_for_room() => {}
            }
            match replica.apply_all(batch) {
                // Applied now, or already by this instance's writer.
                Ok(Applied::Now | Applied::Before) => {}
                // Skipped: follow again from the replica's head.
                Ok(Applied::Gap) => break,
                Err(problem) => {
                    fail(&failure, problem, first.unwrap_or_default());
                    return;
                }
            }
            if ended {
                break;
            }
        }
        // The consumer ended, failed or skipped: follow again, after a pause that grows while
        // nothing is applied, so that a server that keeps refusing is not asked in a busy loop.
        if pause_or_stop(&mut pause, &mut stop).await {
            return;
        }
    }
}

/// Sleeps `pause` (then doubles it, up to 5 s); `true` when the engine stopped meanwhile.
async fn pause_or_stop(pause: &mut Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        _ = stop.changed() => true,
        () = tokio::time::sleep(*pause) => false,
    };
    *pause = (*pause * 2).min(Duration::from_secs(5));
    stopped
}

/// Records what stopped the tail: the stream cannot be folded into the replica.
fn fail(failure: &Mutex<Option<String>>, problem: String, sequence: Position) {
    tracing::error!(%problem, sequence, "the stream of record cannot be folded");
    *failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(problem);
}

/// The stored message at `sequence`, read for the replica.
fn stored(sequence: Position, message: &jetstream::Message) -> Result<Stored, String> {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .map(|value| value.as_str().to_owned())
    };
    let stream: StreamId = header(STREAM_HEADER)
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| format!("a record without a valid {STREAM_HEADER} header"))?;
    let idempotency = match header(KEY_HEADER) {
        Some(key) => Some(Idempotency {
            key,
            fingerprint: header(FINGERPRINT_HEADER)
                .as_deref()
                .and_then(from_hex)
                .ok_or_else(|| format!("a key without a valid {FINGERPRINT_HEADER} header"))?,
        }),
        None => None,
    };
    Ok(Stored {
        sequence,
        stream,
        idempotency,
        payload: message.payload.to_vec(),
    })
}

/// Why `replica` (opened from disk) is not a copy of the start of `stream`, if it is not: it
/// holds more records than the stream, or its last record is not the stream's at that sequence.
async fn disagreement(
    stream: &stream::Stream,
    replica: &Replica,
) -> Result<Option<String>, LogError> {
    let head = replica.head();
    if head == 0 {
        return Ok(None);
    }
    let last = stream.cached_info().state.last_sequence;
    if head > last {
        return Ok(Some(format!(
            "the replica holds {head} records, the stream {last}"
        )));
    }
    let held = match replica
        .read_from(head - 1, 1)
        .map(|mut records| records.pop())
    {
        Ok(Some(held)) => held,
        Ok(None) => {
            return Ok(Some(format!(
                "the replica cannot read its record at {head}"
            )))
        }
        Err(error) if Replica::is_damage(&error) => {
            return Ok(Some(format!(
                "its record at {head} cannot be read: {error}"
            )))
        }
        Err(error) => return Err(error),
    };
    let found = stream
        .get_raw_message(head)
        .await
        .map_err(|error| storage(&format!("reading the stream's record at {head}"), error))?;
    let found_stream = found
        .headers
        .get(STREAM_HEADER)
        .and_then(|value| value.as_str().parse::<StreamId>().ok());
    if found.payload[..] != held.payload[..] || found_stream != Some(held.stream) {
        return Ok(Some(format!("its record at {head} is not the stream's")));
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
