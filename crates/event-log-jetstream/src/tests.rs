//! The engine against a real `nats-server -js` on a free port: the log's contract, and two
//! engines (as two instances would) on one stream: fencing, ids, keys, replicas that agree,
//! read-your-writes through `sync`, a restart that folds the stream again, and a replica kept on
//! disk: reopened where it was, or folded again when it is not the stream's.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use call_ledger_tests::NatsServer;
use event_log::{
    Append, AppendError, EventLog, ExpectedVersion, Idempotency, LogEngine, LogError, Record,
    StreamTarget,
};

use super::{JetStreamLog, JetStreamOptions};

fn options() -> JetStreamOptions {
    JetStreamOptions {
        stream: "CALL_LOG".into(),
        subject_prefix: "calls.log".into(),
        replicas: 1,
        timeout: Duration::from_secs(10),
        replica_dir: None,
    }
}

fn open(nats: &NatsServer) -> JetStreamLog {
    JetStreamLog::open(&nats.url(), options()).expect("the engine opens")
}

fn append(
    stream: StreamTarget,
    expected: ExpectedVersion,
    payload: &str,
    key: Option<(&str, u8)>,
) -> Append {
    Append {
        stream,
        expected,
        idempotency: key.map(|(key, fingerprint)| Idempotency {
            key: key.into(),
            fingerprint: [fingerprint; 32],
        }),
        payloads: vec![payload.as_bytes().to_vec()],
    }
}

fn all(log: &impl LogEngine) -> Vec<Record> {
    log.read_from(0, usize::MAX).expect("read")
}

#[test]
fn the_contract_holds_on_jetstream() {
    let nats = NatsServer::start();
    contract(|| open(&nats));
}

/// The same with the replica kept on disk, written behind: reads span what is written and what
/// is not yet, and a reopened instance reads what the last one wrote.
#[test]
fn the_contract_holds_on_jetstream_with_the_replica_on_disk() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().expect("a directory");
    contract(|| {
        JetStreamLog::open(&nats.url(), on_disk(&data.path().join("replica")))
            .expect("the engine opens")
    });
}

/// The log's contract on an engine `open` gives, then on one it gives again.
fn contract(open: impl Fn() -> JetStreamLog) {
    let log = open();
    assert_eq!(log.head(), 0);
    let first = log
        .append(append(
            StreamTarget::New,
            ExpectedVersion::NoStream,
            "a1",
            None,
        ))
        .expect("a new stream");
    assert_eq!(
        (first.stream, first.first_version, first.first_position),
        (1, 1, 1)
    );
    let second = log
        .append(append(
            StreamTarget::Existing(1),
            ExpectedVersion::Exact(1),
            "a2",
            None,
        ))
        .expect("version 2");
    assert_eq!((second.last_version, second.last_position), (2, 2));
    let other = log
        .append(append(StreamTarget::New, ExpectedVersion::Any, "b1", None))
        .expect("another stream");
    assert_eq!(
        (other.stream, other.first_version, other.first_position),
        (2, 1, 3)
    );

    // Refusals append nothing.
    let stale = log.append(append(
        StreamTarget::Existing(1),
        ExpectedVersion::Exact(1),
        "late",
        None,
    ));
    assert!(matches!(
        stale,
        Err(AppendError::WrongExpectedVersion {
            actual: Some(2),
            ..
        })
    ));
    let missing = log.append(append(
        StreamTarget::Existing(9),
        ExpectedVersion::Any,
        "x",
        None,
    ));
    assert!(matches!(missing, Err(AppendError::StreamNotFound(9))));
    let empty = log.append(Append {
        stream: StreamTarget::New,
        expected: ExpectedVersion::Any,
        idempotency: None,
        payloads: Vec::new(),
    });
    assert!(matches!(empty, Err(AppendError::Empty)));
    let two = log.append(Append {
        stream: StreamTarget::New,
        expected: ExpectedVersion::Any,
        idempotency: None,
        payloads: vec![b"x".to_vec(), b"y".to_vec()],
    });
    assert!(
        matches!(two, Err(AppendError::Log(_))),
        "one record per append"
    );
    assert_eq!(log.head(), 3);

    // Idempotency: a retry replays, a different request with the key is refused.
    let keyed = log
        .append(append(
            StreamTarget::New,
            ExpectedVersion::Any,
            "c1",
            Some(("k", 1)),
        ))
        .expect("keyed");
    let retry = log
        .append(append(
            StreamTarget::New,
            ExpectedVersion::Any,
            "c1",
            Some(("k", 1)),
        ))
        .expect("a retry");
    assert!(retry.duplicate);
    assert_eq!(
        (retry.stream, retry.last_position),
        (keyed.stream, keyed.last_position)
    );
    let reused = log.append(append(
        StreamTarget::New,
        ExpectedVersion::Any,
        "c1",
        Some(("k", 2)),
    ));
    assert!(matches!(
        reused,
        Err(AppendError::IdempotencyKeyReused { .. })
    ));
    assert_eq!(log.head(), 4);

    let records = all(&log);
    let positions: Vec<u64> = records.iter().map(|r| r.position).collect();
    assert_eq!(positions, vec![1, 2, 3, 4]);
    assert_eq!(log.read_from(1, 2).unwrap().len(), 2);
    assert_eq!(log.read_stream(1).unwrap().len(), 2);
    assert_eq!(log.stream_version(2).unwrap(), Some(1));
    assert_eq!(log.sync().unwrap(), 4);

    // A new instance (or this one restarted) folds the same log from the stream.
    drop(log);
    let again = open();
    assert_eq!(all(&again), records);
    assert_eq!(
        again.idempotent_result("k").unwrap().map(|(a, _)| a.stream),
        Some(keyed.stream)
    );
}

/// Two engines on one stream, as two instances of the service would be, with writers racing on
/// shared streams by expected version: every version has exactly one winner, new streams get
/// unique increasing ids, a key used on one instance replays on the other, a write on one is
/// read on the other after `sync`, and the replicas agree record for record.
#[test]
fn two_instances_on_one_stream_are_fenced_by_the_sequence() {
    let nats = NatsServer::start();
    two_instances_race([open(&nats), open(&nats)]);
}

/// The same race with each replica kept on disk, where an instance's writer decides its next
/// batch before its replica holds the last one.
#[test]
fn two_instances_with_replicas_on_disk_are_fenced_by_the_sequence() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().expect("a directory");
    let open_in = |name: &str| {
        JetStreamLog::open(&nats.url(), on_disk(&data.path().join(name))).expect("the engine opens")
    };
    two_instances_race([open_in("a"), open_in("b")]);
}

/// Sixteen writers over the two `engines` race on shared streams and create new ones; then a
/// key, read-your-writes across them, and replicas that agree.
fn two_instances_race(engines: [JetStreamLog; 2]) {
    let log_a = engines[0].clone().into_event_log();
    let log_b = engines[1].clone().into_event_log();
    let shared: Vec<u64> = (0..3)
        .map(|n| {
            log_a
                .append(append(
                    StreamTarget::New,
                    ExpectedVersion::NoStream,
                    &format!("s{n}"),
                    None,
                ))
                .expect("a shared stream")
                .stream
        })
        .collect();
    let shared = Arc::new(shared);
    let winners = Arc::new(std::sync::Mutex::new(BTreeMap::<(u64, u64), usize>::new()));
    let created = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Eight writers per engine: each engine batches what its writers send at once, so batches
    // race batches.
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let log = if t % 2 == 0 {
                log_a.clone()
            } else {
                log_b.clone()
            };
            let (shared, winners, created) = (
                Arc::clone(&shared),
                Arc::clone(&winners),
                Arc::clone(&created),
            );
            std::thread::spawn(move || {
                for round in 0..20 {
                    let stream = shared[(t + round) % shared.len()];
                    let version = log
                        .sync()
                        .map(|_| log.stream_version(stream).unwrap().unwrap());
                    let version = version.expect("sync");
                    match log.append(append(
                        StreamTarget::Existing(stream),
                        ExpectedVersion::Exact(version),
                        &format!("t{t}r{round}"),
                        None,
                    )) {
                        Ok(appended) => {
                            *winners
                                .lock()
                                .unwrap()
                                .entry((stream, appended.last_version))
                                .or_default() += 1;
                        }
                        Err(AppendError::WrongExpectedVersion { .. }) => {}
                        Err(other) => panic!("unexpected: {other}"),
                    }
                    let new = log
                        .append(append(
                            StreamTarget::New,
                            ExpectedVersion::NoStream,
                            "n",
                            None,
                        ))
                        .expect("a new stream");
                    created
                        .lock()
                        .unwrap()
                        .push((new.stream, new.last_position));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a writer");
    }
    let winners = winners.lock().unwrap();
    assert!(
        winners.values().all(|count| *count == 1),
        "one winner per version: {winners:?}"
    );
    let mut created = created.lock().unwrap().clone();
    let ids: HashSet<u64> = created.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), created.len(), "no stream id handed out twice");
    created.sort_by_key(|(_, position)| *position);
    assert!(
        created.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "ids increase in creation order"
    );

    // A key used on one instance is the same request on the other.
    let original = log_a
        .append(append(
            StreamTarget::New,
            ExpectedVersion::Any,
            "k",
            Some(("crm-1", 7)),
        ))
        .expect("keyed");
    let retried = log_b
        .append(append(
            StreamTarget::New,
            ExpectedVersion::Any,
            "k",
            Some(("crm-1", 7)),
        ))
        .expect("the retry on the other instance");
    assert!(retried.duplicate);
    assert_eq!(retried.last_position, original.last_position);

    // Read-your-writes across instances: after `sync`, the other instance reads it.
    let written = log_a
        .append(append(
            StreamTarget::New,
            ExpectedVersion::Any,
            "seen?",
            None,
        ))
        .expect("a write on one");
    let head = log_b.sync().expect("sync on the other");
    assert!(head >= written.last_position);
    assert_eq!(log_b.read_stream(written.stream).unwrap().len(), 1);

    for stream in shared.iter() {
        let versions: Vec<u64> = log_b
            .read_stream(*stream)
            .unwrap()
            .iter()
            .map(|record| record.version)
            .collect();
        assert_eq!(
            versions,
            (1..=versions.len() as u64).collect::<Vec<_>>(),
            "stream {stream}: every version once, in order"
        );
    }
    let (a, b) = (all(&engines[0]), all(&engines[1]));
    assert_eq!(a.len() as u64, head);
    assert_eq!(a, b, "the replicas agree");
    let positions: Vec<u64> = a.iter().map(|r| r.position).collect();
    assert_eq!(positions, (1..=head).collect::<Vec<_>>(), "gap-free");
    let _: &EventLog = &log_a;
}

fn on_disk(dir: &std::path::Path) -> JetStreamOptions {
    JetStreamOptions {
        replica_dir: Some(dir.to_path_buf()),
        ..options()
    }
}

/// Runs `f` with a client of `nats` on a runtime of its own.
fn with_client<T>(
    nats: &NatsServer,
    f: impl AsyncFnOnce(async_nats::jetstream::Context) -> T,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        f(async_nats::jetstream::new(client)).await
    })
}

/// Deletes the stream of record, as an operator replacing it would.
fn delete_stream(nats: &NatsServer) {
    with_client(nats, async |js| {
        js.delete_stream(options().stream)
            .await
            .expect("the stream is deleted");
    });
}

/// The identity a replica of the current stream of record records.
fn stream_identity(nats: &NatsServer) -> String {
    let created = with_client(nats, async |js| {
        let mut stream = js.get_stream(options().stream).await.expect("the stream");
        stream.info().await.expect("its info").created
    });
    super::replica::identity(&options().stream, &created)
}

/// Appends a new stream's first record and `extra` more to it, with a key on the first.
fn fill(log: &JetStreamLog, tag: &str, extra: u64) {
    let first = log
        .append(append(
            StreamTarget::New,
            ExpectedVersion::NoStream,
            &format!("{tag}1"),
            Some((tag, 7)),
        ))
        .expect("a new stream");
    for version in 1..=extra {
        log.append(append(
            StreamTarget::Existing(first.stream),
            ExpectedVersion::Exact(version),
            &format!("{tag}{}", version + 1),
            None,
        ))
        .expect("the next version");
    }
}

#[test]
fn a_replica_on_disk_is_reopened_and_only_follows_what_the_stream_stored_since() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().expect("a directory");
    let dir = data.path().join("replica");
    let kept = JetStreamLog::open(&nats.url(), on_disk(&dir)).expect("the engine opens");
    fill(&kept, "a", 2);
    fill(&kept, "b", 0);
    drop(kept);
    // Left in the directory: gone if the replica were removed and folded again.
    std::fs::write(dir.join("witness"), b"").expect("a file beside the replica");
    // Another instance (its replica in memory) writes meanwhile.
    let other = open(&nats);
    fill(&other, "c", 1);
    let reopened = JetStreamLog::open(&nats.url(), on_disk(&dir)).expect("the engine reopens");
    assert!(
        dir.join("witness").exists(),
        "the replica was kept, not folded again"
    );
    assert_eq!(reopened.head(), 6);
    assert_eq!(all(&reopened), all(&other));
    assert_eq!(reopened.stream_version(1).expect("read"), Some(3));
    assert_eq!(reopened.stream_version(3).expect("read"), Some(2));
    let replayed = reopened
        .idempotent_result("c")
        .expect("read")
        .expect("the other instance's key is in the replica");
    assert_eq!((replayed.0.stream, replayed.0.first_position), (3, 5));
    // It takes part in the fencing as before: a new stream gets the next id.
    let next = reopened
        .append(append(
            StreamTarget::New,
            ExpectedVersion::NoStream,
            "d1",
            None,
        ))
        .expect("a new stream");
    assert_eq!((next.stream, next.first_position), (4, 7));
    assert_eq!(other.sync().expect("sync"), 7);
    assert_eq!(all(&other), all(&reopened));
}

#[test]
fn a_replica_on_disk_that_is_not_the_streams_is_folded_again() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().expect("a directory");
    let dir = data.path().join("replica");
    let identity_file = dir.join("stream-of-record");
    let reopen = || JetStreamLog::open(&nats.url(), on_disk(&dir)).expect("the engine opens");
    fill(&reopen(), "a", 3);

    // The stream replaced by another of the same name: the replica names the old one.
    let old_identity = std::fs::read_to_string(&identity_file).expect("identity");
    delete_stream(&nats);
    let writer = open(&nats);
    fill(&writer, "x", 0);
    let reopened = reopen();
    assert_eq!(reopened.head(), 1);
    assert_eq!(all(&reopened), all(&writer));
    assert_ne!(
        std::fs::read_to_string(&identity_file).expect("identity"),
        old_identity
    );
    drop(reopened);

    // A replica that names the stream but holds more records than it: folded again.
    fill(&writer, "y", 0);
    assert_eq!(reopen().head(), 2);
    delete_stream(&nats);
    let writer = open(&nats);
    fill(&writer, "z", 0);
    std::fs::write(&identity_file, stream_identity(&nats)).expect("identity");
    let reopened = reopen();
    assert_eq!(reopened.head(), 1);
    assert_eq!(all(&reopened), all(&writer));
    drop(reopened);

    // As many records as the stream, the last one another: folded again.
    delete_stream(&nats);
    let writer = open(&nats);
    fill(&writer, "v", 0);
    std::fs::write(&identity_file, stream_identity(&nats)).expect("identity");
    let reopened = reopen();
    assert_eq!(all(&reopened), all(&writer));
    assert_eq!(all(&reopened)[0].payload, b"v1");
}

/// A replica whose files are damaged is a copy, not the log of record: the engine still opens,
/// folds the stream again where the damage shows at open, and never reads back anything but
/// the stream's records (a damaged record it did not notice at open is refused when read, as
/// the sled engine refuses it, rather than served).
#[test]
fn a_damaged_replica_on_disk_is_folded_again_not_a_failed_open() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().expect("a directory");
    let dir = data.path().join("replica");
    {
        let writer = JetStreamLog::open(&nats.url(), on_disk(&dir)).expect("the engine opens");
        for n in 0..200 {
            fill(&writer, &format!("call{n}-{}-", "x".repeat(200)), 1);
        }
    }
    let stream_records = all(&open(&nats));
    let healthy = data.path().join("healthy");
    std::fs::rename(&dir, &healthy).expect("keep the healthy replica");
    let size = std::fs::metadata(healthy.join("db")).expect("the db").len();
    let mut outcomes = BTreeMap::new();
    for step in 1..12u64 {
        let _ = std::fs::remove_dir_all(&dir);
        let offset = size * step / 12;
        call_ledger_tests::damaged_copy(&healthy, &dir, "db", offset, 4096, step as u32);
        let reopened = JetStreamLog::open(&nats.url(), on_disk(&dir)).unwrap_or_else(|error| {
            panic!("garbled at {offset}: the engine does not open: {error}")
        });
        let kind = match reopened.read_from(0, usize::MAX) {
            Ok(records) => {
                assert_eq!(
                    records, stream_records,
                    "garbled at {offset}: other records"
                );
                "the stream's records"
            }
            Err(LogError::Damaged(_) | LogError::Corrupt(_)) => "refused as damaged",
            Err(other) => panic!("garbled at {offset}: an unclear error: {other}"),
        };
        *outcomes.entry(kind).or_insert(0) += 1;
    }
    eprintln!("11 garbled replicas: {outcomes:?}");
    assert!(
        data.path().join("replica.damaged").exists(),
        "some damage showed at open, and that replica was set aside"
    );
}
