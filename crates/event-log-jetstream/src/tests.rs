//! The engine against a real `nats-server -js` on a free port: the log's contract, and two
//! engines (as two instances would) on one stream: fencing, ids, keys, replicas that agree,
//! read-your-writes through `sync`, and a restart that folds the stream again.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use call_ledger_tests::NatsServer;
use event_log::{
    Append, AppendError, EventLog, ExpectedVersion, Idempotency, LogEngine, Record, StreamTarget,
};

use super::{JetStreamLog, JetStreamOptions};

fn options() -> JetStreamOptions {
    JetStreamOptions {
        stream: "CALL_LOG".into(),
        subject_prefix: "calls.log".into(),
        replicas: 1,
        timeout: Duration::from_secs(10),
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
    let log = open(&nats);
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
    let again = open(&nats);
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
    let engines = [open(&nats), open(&nats)];
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
