//! The crate's tests: the public contract of [`EventLog`], exercised on
//! throwaway directories.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::sled_engine::baseline::{raw_sled_batch_ceiling, CEILING_CACHE_BYTES};
use crate::sled_engine::{keys, open_sled};
use crate::{
    Append, AppendError, Appended, Durability, EventLog, ExpectedVersion, Idempotency, LogError,
    LogOptions, MemoryLog, Record, SledLog, StreamId, StreamTarget, DEFAULT_LOG_CACHE_BYTES,
};

fn open(dir: &Path) -> EventLog {
    EventLog::open(dir, LogOptions::durable()).expect("open the log")
}

/// The log on each engine, for the tests of the contract: the sled engine in `dir`, then the
/// in-memory one.
fn engines(dir: &Path) -> Vec<EventLog> {
    vec![open(dir), EventLog::from_engine(MemoryLog::new())]
}

fn request(stream: StreamTarget, expected: ExpectedVersion, payloads: &[&str]) -> Append {
    Append {
        stream,
        expected,
        idempotency: None,
        payloads: payloads.iter().map(|p| p.as_bytes().to_vec()).collect(),
    }
}

fn new_stream(log: &EventLog, payloads: &[&str]) -> Appended {
    log.append(request(
        StreamTarget::New,
        ExpectedVersion::NoStream,
        payloads,
    ))
    .expect("append to a new stream")
}

fn append_any(log: &EventLog, stream: StreamId, payloads: &[&str]) -> Appended {
    log.append(request(
        StreamTarget::Existing(stream),
        ExpectedVersion::Any,
        payloads,
    ))
    .expect("append to an existing stream")
}

fn with_key(mut append: Append, key: &str, fingerprint: u8) -> Append {
    append.idempotency = Some(Idempotency {
        key: key.to_string(),
        fingerprint: [fingerprint; 32],
    });
    append
}

fn all(log: &EventLog) -> Vec<Record> {
    log.read_from(0, usize::MAX).expect("read the log")
}

fn assert_gap_free(records: &[Record]) {
    for (expected, record) in (1..).zip(records) {
        assert_eq!(record.position, expected, "positions must be 1, 2, 3, ...");
    }
    let mut versions: BTreeMap<StreamId, u64> = BTreeMap::new();
    for record in records {
        let last = versions.entry(record.stream).or_default();
        assert_eq!(
            record.version,
            *last + 1,
            "versions of stream {}",
            record.stream
        );
        *last = record.version;
    }
}

#[test]
fn an_empty_log_has_head_zero_and_no_records() {
    let dir = tempfile::tempdir().unwrap();
    for log in engines(dir.path()) {
        assert_eq!(log.head(), 0);
        assert!(all(&log).is_empty());
        assert!(log.read_stream(1).unwrap().is_empty());
        assert_eq!(log.stream_version(1).unwrap(), None);
        assert_eq!(log.idempotent_result("k").unwrap(), None);
    }
    let sled = SledLog::open(dir.path(), LogOptions::durable()).expect("reopen");
    assert_eq!(sled.scan_raw().unwrap(), 0);
}

#[test]
fn positions_start_at_one_and_are_gap_free() {
    let dir = tempfile::tempdir().unwrap();
    for log in engines(dir.path()) {
        let a = new_stream(&log, &["a1"]);
        let b = new_stream(&log, &["b1"]);
        let a2 = append_any(&log, a.stream, &["a2"]);
        assert_eq!(
            (a.first_position, b.first_position, a2.first_position),
            (1, 2, 3)
        );
        assert_eq!(log.head(), 3);
        let records = all(&log);
        assert_eq!(records.len(), 3);
        assert_gap_free(&records);
        assert_eq!(records[2].payload, b"a2");
    }
}

#[test]
fn versions_start_at_one_per_stream() {
    let dir = tempfile::tempdir().unwrap();
    for log in engines(dir.path()) {
        let a = new_stream(&log, &["a1"]);
        let b = new_stream(&log, &["b1"]);
        let a2 = append_any(&log, a.stream, &["a2"]);
        assert_eq!((a.first_version, a.last_version), (1, 1));
        assert_eq!((b.first_version, b.last_version), (1, 1));
        assert_eq!((a2.first_version, a2.last_version), (2, 2));
        assert_eq!(log.stream_version(a.stream).unwrap(), Some(2));
        assert_eq!(log.stream_version(b.stream).unwrap(), Some(1));
        let stream_a = log.read_stream(a.stream).unwrap();
        assert_eq!(
            stream_a
                .iter()
                .map(|r| (r.version, r.position, r.payload.as_slice()))
                .collect::<Vec<_>>(),
            vec![(1, 1, &b"a1"[..]), (2, 3, &b"a2"[..])]
        );
    }
}

#[test]
fn new_stream_ids_increase_and_are_not_reused_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let ids: Vec<_> = (0..3).map(|_| new_stream(&log, &["x"]).stream).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    drop(log);
    let log = open(dir.path());
    assert_eq!(new_stream(&log, &["x"]).stream, 4);
}

#[test]
fn reopen_after_drop_recovers_head_and_next_stream_id() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let clone = log.clone();
    let a = new_stream(&log, &["a1", "a2"]);
    new_stream(&clone, &["b1"]);
    let key_result = log
        .append(with_key(
            request(
                StreamTarget::Existing(a.stream),
                ExpectedVersion::Exact(2),
                &["a3"],
            ),
            "k",
            7,
        ))
        .unwrap();
    drop(log);
    drop(clone);

    let log = open(dir.path());
    assert_eq!(log.head(), 4);
    assert_eq!(log.stream_version(a.stream).unwrap(), Some(3));
    let stats = log.stats().unwrap();
    assert_eq!((stats.events, stats.streams, stats.head), (4, 2, 4));
    assert_eq!(new_stream(&log, &["c1"]).stream, 3);
    let retry = log
        .append(with_key(
            request(
                StreamTarget::Existing(a.stream),
                ExpectedVersion::Exact(2),
                &["a3"],
            ),
            "k",
            7,
        ))
        .unwrap();
    assert_eq!(
        retry,
        Appended {
            duplicate: true,
            ..key_result
        }
    );
    assert_gap_free(&all(&log));
}

/// Writes `records` (stream, version, payload), at positions from 1, into `dir` as logs written
/// before 2026-12-05 stored them: an `S` row for every record, no `Mstreams` row.
fn write_legacy_log(dir: &Path, records: &[(StreamId, u64, &str)]) {
    let db = open_sled(dir, Durability::Flush, DEFAULT_LOG_CACHE_BYTES).unwrap();
    for (position, (stream, version, payload)) in (1u64..).zip(records) {
        let key = keys::log_key(position);
        db.insert(
            key,
            keys::log_value(&key, *stream, *version, payload.as_bytes()),
        )
        .unwrap();
        db.insert(
            keys::stream_key(*stream, *version),
            &position.to_be_bytes()[..],
        )
        .unwrap();
    }
    db.flush().unwrap();
}

#[test]
fn a_log_written_with_version_rows_and_the_stream_counter_keeps_its_numbering() {
    // Logs written before 2026-12 also hold a `V` row per stream and the `M` counter; the
    // counter may be ahead of the index (a stream id given to an append that then failed).
    let dir = tempfile::tempdir().unwrap();
    write_legacy_log(dir.path(), &[(1, 1, "a1"), (1, 2, "a2"), (2, 1, "b1")]);
    {
        let db = open_sled(dir.path(), Durability::Flush, DEFAULT_LOG_CACHE_BYTES).unwrap();
        db.insert(keys::version_key(1), &2u64.to_be_bytes()[..])
            .unwrap();
        db.insert(keys::version_key(2), &1u64.to_be_bytes()[..])
            .unwrap();
        db.insert(keys::NEXT_STREAM, &6u64.to_be_bytes()[..])
            .unwrap();
        db.flush().unwrap();
    }
    let log = open(dir.path());
    assert_eq!(log.stats().unwrap().streams, 5, "ids 1 to 5 were given");
    // Ids up to 5 were given: the new stream gets 6.
    let c = new_stream(&log, &["c1"]);
    assert_eq!((c.first_position, c.stream), (4, 6));
    // The stale `V` row is not what versions are read from.
    append_any(&log, 1, &["a3"]);
    assert_eq!(log.stream_version(1).unwrap(), Some(3));
    drop(log);
    let log = open(dir.path());
    assert_eq!(log.stream_version(1).unwrap(), Some(3));
    assert_eq!(log.read_stream(6).unwrap().len(), 1);
    let d = new_stream(&log, &["d1"]);
    assert_eq!((d.first_position, d.stream), (6, 7));
    assert_eq!(log.stats().unwrap().streams, 7);
    assert_gap_free(&all(&log));
}

#[test]
fn a_log_with_an_index_row_per_record_reads_and_grows_alongside_runs() {
    // As logs written before 2026-12-05 are: an index row for every record.
    let dir = tempfile::tempdir().unwrap();
    write_legacy_log(
        dir.path(),
        &[(1, 1, "a1"), (2, 1, "b1"), (1, 2, "a2"), (3, 1, "c1")],
    );
    let log = open(dir.path());
    assert_eq!(log.stats().unwrap().streams, 3);
    // Streams 4 and 5 start in one group: one run.
    let answers = log.append_all(vec![
        request(StreamTarget::New, ExpectedVersion::NoStream, &["d1"]),
        request(StreamTarget::New, ExpectedVersion::NoStream, &["e1"]),
    ]);
    let ids: Vec<StreamId> = answers.iter().map(|a| a.as_ref().unwrap().stream).collect();
    assert_eq!(ids, [4, 5]);
    append_any(&log, 3, &["c2"]);
    append_any(&log, 4, &["d2"]);
    append_any(&log, 2, &["b2"]);
    // Stream 1's links reach its records from before links, past two of their `S` rows.
    append_any(&log, 1, &["a3"]);
    append_any(&log, 1, &["a4", "a5"]);
    let f = new_stream(&log, &["f1"]);
    assert_eq!((f.first_position, f.stream), (13, 6));
    drop(log);
    let log = open(dir.path());
    let payloads = |stream| -> Vec<String> {
        log.read_stream(stream)
            .unwrap()
            .iter()
            .map(|record| String::from_utf8(record.payload.clone()).unwrap())
            .collect()
    };
    assert_eq!(payloads(1), ["a1", "a2", "a3", "a4", "a5"]);
    assert_eq!(log.stream_version(1).unwrap(), Some(5));
    assert_eq!(log.stream_version(3).unwrap(), Some(2));
    assert_eq!(payloads(2), ["b1", "b2"]);
    assert_eq!(payloads(3), ["c1", "c2"]);
    assert_eq!(payloads(4), ["d1", "d2"]);
    assert_eq!(payloads(5), ["e1"]);
    assert_eq!(payloads(6), ["f1"]);
    assert!(payloads(7).is_empty());
    assert_eq!(log.stream_version(5).unwrap(), Some(1));
    assert_eq!(log.stream_version(7).unwrap(), None);
    assert!(matches!(
        log.append(request(
            StreamTarget::Existing(7),
            ExpectedVersion::Any,
            &["x"]
        )),
        Err(AppendError::StreamNotFound(7))
    ));
    assert_eq!(log.stats().unwrap().streams, 6);
    assert_eq!(new_stream(&log, &["g1"]).stream, 7);
    assert_gap_free(&all(&log));
    // The first records of the new streams have no index row, only the run's; their later
    // records no index row either, only their stream's tail.
    drop(log);
    let db = open_sled(dir.path(), Durability::Flush, DEFAULT_LOG_CACHE_BYTES).unwrap();
    assert!(db.get(keys::stream_key(4, 1)).unwrap().is_none());
    assert!(db.get(keys::stream_key(4, 2)).unwrap().is_none());
    assert!(db.get(keys::first_key(4)).unwrap().is_some());
    assert!(db.get(keys::tail_key(5)).unwrap().is_none());
    let tail = db.get(keys::tail_key(4)).unwrap().unwrap();
    assert_eq!(
        keys::decode_tail_value(&keys::tail_key(4), &tail).unwrap(),
        (2, 8)
    );
    assert_eq!(
        db.scan_prefix([keys::STREAM]).count(),
        4,
        "the legacy rows only"
    );
}

#[test]
fn streams_started_one_at_a_time_share_run_rows_of_64() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut positions = Vec::new();
    for i in 0..300 {
        let appended = new_stream(&log, &[&format!("s{i}")]);
        assert_eq!(appended.stream, i + 1);
        positions.push(appended.first_position);
        // An update between creates moves positions away from ids.
        append_any(&log, appended.stream, &["u"]);
    }
    drop(log);
    let log = open(dir.path());
    let next = new_stream(&log, &["after"]);
    assert_eq!(next.stream, 301);
    for stream in [1, 2, 256, 257, 300, 301] {
        let records = log.read_stream(stream).unwrap();
        assert_eq!(records[0].version, 1);
        assert_eq!(
            log.stream_version(stream).unwrap(),
            Some(records.len() as u64)
        );
    }
    assert_eq!(log.read_stream(300).unwrap()[0].position, positions[299]);
    drop(log);
    let db = open_sled(dir.path(), Durability::Flush, DEFAULT_LOG_CACHE_BYTES).unwrap();
    let runs: Vec<(u64, usize)> = db
        .scan_prefix([keys::FIRST])
        .map(|entry| {
            let (key, value) = entry.unwrap();
            (keys::decode_first_key(&key).unwrap(), value.len() / 8)
        })
        .collect();
    assert_eq!(runs, [(1, 64), (65, 64), (129, 64), (193, 64), (257, 45)]);
}

#[test]
fn a_restored_stream_keeps_its_id_and_new_streams_stay_above_it() {
    let dir = tempfile::tempdir().unwrap();
    for log in engines(dir.path()) {
        let restored = |id| {
            log.append(request(
                StreamTarget::Restored(id),
                ExpectedVersion::NoStream,
                &["r"],
            ))
        };
        assert_eq!(restored(1).unwrap().stream, 1);
        // Ids restored out of order and beyond the positions (a log with failed appends).
        assert_eq!(restored(7).unwrap().stream, 7);
        assert_eq!(restored(3).unwrap().stream, 3);
        assert!(matches!(
            restored(3),
            Err(AppendError::WrongExpectedVersion {
                actual: Some(1),
                ..
            })
        ));
        assert!(matches!(restored(0), Err(AppendError::InvalidStreamId(0))));
        // An id below its position, as a log whose ids were counted from 1 has them.
        assert_eq!(restored(2).unwrap().first_position, 4);
        append_any(&log, 7, &["r2"]);
        let new = new_stream(&log, &["n"]);
        assert!(new.stream > 7, "{new:?}");
        assert_eq!(log.read_stream(7).unwrap().len(), 2);
        assert_eq!(log.read_stream(2).unwrap().len(), 1);
        assert_eq!(log.stats().unwrap().streams, 5);
        assert_gap_free(&all(&log));
    }
    // The sled log keeps the floor and the restored streams across a reopen.
    let log = open(dir.path());
    assert_eq!(log.read_stream(2).unwrap()[0].position, 4);
    assert_eq!(log.stream_version(3).unwrap(), Some(1));
    assert!(new_stream(&log, &["m"]).stream > 8);
}

#[test]
fn append_all_answers_each_append_in_order_and_alone() {
    let dir = tempfile::tempdir().unwrap();
    for log in engines(dir.path()) {
        let mut appends: Vec<Append> = (0..2000)
            .map(|i| {
                request(
                    StreamTarget::New,
                    ExpectedVersion::NoStream,
                    &[&format!("e{i}")],
                )
            })
            .collect();
        appends.insert(
            1,
            request(
                StreamTarget::Existing(1),
                ExpectedVersion::Exact(1),
                &["1b"],
            ),
        );
        // Decided against the same version as the one before it: refused alone.
        appends.insert(
            2,
            request(
                StreamTarget::Existing(1),
                ExpectedVersion::Exact(1),
                &["1c"],
            ),
        );
        appends.insert(
            3,
            request(StreamTarget::New, ExpectedVersion::NoStream, &[]),
        );
        let answers = log.append_all(appends);
        assert_eq!(answers.len(), 2003);
        assert_eq!(answers[1].as_ref().unwrap().last_version, 2);
        assert!(matches!(
            answers[2],
            Err(AppendError::WrongExpectedVersion {
                actual: Some(2),
                ..
            })
        ));
        assert!(matches!(answers[3], Err(AppendError::Empty)));
        let streams: Vec<StreamId> = answers
            .iter()
            .filter_map(|answer| answer.as_ref().ok())
            .map(|appended| appended.stream)
            .collect();
        assert_eq!(streams[..2], [1, 1]);
        let new: Vec<StreamId> = streams[2..].to_vec();
        assert_eq!(new.len(), 1999);
        assert!(new[0] > 1 && new.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(log.head(), 2001);
        assert_gap_free(&all(&log));
    }
}

#[test]
fn expected_version_conflicts_append_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for log in engines(dir.path()) {
        let a = new_stream(&log, &["a1"]);
        let existing = StreamTarget::Existing(a.stream);

        let conflicts = [
            (existing, ExpectedVersion::Exact(2), Some(1)),
            (existing, ExpectedVersion::NoStream, Some(1)),
            (StreamTarget::New, ExpectedVersion::Exact(1), None),
        ];
        for (stream, expected, actual) in conflicts {
            match log.append(request(stream, expected, &["nope"])) {
                Err(AppendError::WrongExpectedVersion {
                    stream: s,
                    expected: e,
                    actual: found,
                }) => assert_eq!((s, e, found), (stream, expected, actual)),
                other => panic!("{stream:?} {expected:?}: expected a conflict, got {other:?}"),
            }
        }
        match log.append(request(
            StreamTarget::Existing(99),
            ExpectedVersion::Any,
            &["x"],
        )) {
            Err(AppendError::StreamNotFound(99)) => {}
            other => panic!("expected StreamNotFound, got {other:?}"),
        }
        match log.append(request(
            StreamTarget::Existing(0),
            ExpectedVersion::Any,
            &["x"],
        )) {
            Err(AppendError::StreamNotFound(0)) => {}
            other => panic!("expected StreamNotFound, got {other:?}"),
        }
        assert_eq!(log.head(), 1);
        assert_eq!(log.stream_version(a.stream).unwrap(), Some(1));
        // A rejected New does not use up a stream id.
        assert_eq!(new_stream(&log, &["b1"]).stream, 2);

        let ok = log
            .append(request(existing, ExpectedVersion::Exact(1), &["a2"]))
            .unwrap();
        assert_eq!((ok.first_version, ok.first_position), (2, 3));
        let any = log
            .append(request(existing, ExpectedVersion::Any, &["a3"]))
            .unwrap();
        assert_eq!(any.first_version, 3);
        assert_gap_free(&all(&log));
    }
}

#[test]
fn empty_append_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for log in engines(dir.path()) {
        let error = log
            .append(request(StreamTarget::New, ExpectedVersion::Any, &[]))
            .unwrap_err();
        assert!(matches!(error, AppendError::Empty), "{error:?}");
        assert!(error.is_rejection());
        assert_eq!(log.head(), 0);
    }
}

#[test]
fn idempotent_retry_returns_the_original_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for log in engines(dir.path()) {
        let first = log
            .append(with_key(
                request(StreamTarget::New, ExpectedVersion::NoStream, &["a1", "a2"]),
                "create-1",
                1,
            ))
            .unwrap();
        assert!(!first.duplicate);

        let retry = log
            .append(with_key(
                request(StreamTarget::New, ExpectedVersion::NoStream, &["a1", "a2"]),
                "create-1",
                1,
            ))
            .unwrap();
        assert_eq!(
            retry,
            Appended {
                duplicate: true,
                ..first
            }
        );
        assert_eq!(log.head(), 2);
        let next = new_stream(&log, &["b"]);
        assert_eq!(
            (next.first_position, log.stats().unwrap().streams),
            (3, 2),
            "the retry appended and counted nothing"
        );

        let reused = log
            .append(with_key(
                request(StreamTarget::New, ExpectedVersion::NoStream, &["other"]),
                "create-1",
                2,
            ))
            .unwrap_err();
        match &reused {
            AppendError::IdempotencyKeyReused { key } => assert_eq!(key, "create-1"),
            other => panic!("expected IdempotencyKeyReused, got {other:?}"),
        }
        assert!(reused.is_rejection());
        assert_eq!(log.head(), 3);

        let (found, fingerprint) = log.idempotent_result("create-1").unwrap().unwrap();
        assert_eq!(found, retry);
        assert_eq!(fingerprint, [1; 32]);

        // A rejected request does not record its key.
        let rejected = log.append(with_key(
            request(StreamTarget::Existing(1), ExpectedVersion::Exact(9), &["x"]),
            "late",
            3,
        ));
        assert!(rejected.is_err());
        assert_eq!(log.idempotent_result("late").unwrap(), None);
    }
}

#[test]
fn multi_payload_append_is_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    for log in engines(dir.path()) {
        new_stream(&log, &["x"]);
        let a = new_stream(&log, &["a1", "a2", "a3"]);
        assert_eq!(
            (
                a.first_position,
                a.last_position,
                a.first_version,
                a.last_version
            ),
            (2, 4, 1, 3)
        );
        let more = append_any(&log, a.stream, &["a4", "a5"]);
        assert_eq!(
            (
                more.first_position,
                more.last_position,
                more.first_version,
                more.last_version
            ),
            (5, 6, 4, 5)
        );
        let payloads: Vec<_> = log
            .read_stream(a.stream)
            .unwrap()
            .into_iter()
            .map(|r| String::from_utf8(r.payload).unwrap())
            .collect();
        assert_eq!(payloads, ["a1", "a2", "a3", "a4", "a5"]);
    }
}

#[test]
fn concurrent_appends_from_32_threads_are_gap_free() {
    const THREADS: usize = 32;
    const APPENDS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    for log in engines(dir.path()) {
        let shared: Vec<StreamId> = (0..4).map(|_| new_stream(&log, &["s"]).stream).collect();
        let shared = Arc::new(shared);

        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let log = log.clone();
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let own = new_stream(&log, &["own"]).stream;
                    let mut results = vec![];
                    for i in 0..APPENDS {
                        let payload = format!("{t}-{i}");
                        let target = if i % 2 == 0 {
                            own
                        } else {
                            shared[(t + i) % shared.len()]
                        };
                        let payloads: Vec<&str> = vec![&payload; 1 + i % 3];
                        results.push(append_any(&log, target, &payloads));
                    }
                    // Expected-version appends race on purpose: some must lose.
                    let contested = shared[0];
                    let current = log.stream_version(contested).unwrap().unwrap();
                    let raced = log.append(request(
                        StreamTarget::Existing(contested),
                        ExpectedVersion::Exact(current),
                        &["race"],
                    ));
                    if let Ok(won) = raced {
                        results.push(won);
                    }
                    (own, results)
                })
            })
            .collect();

        let mut owns = HashSet::new();
        let mut claimed = 0;
        for thread in threads {
            let (own, results) = thread.join().unwrap();
            assert!(owns.insert(own), "stream {own} allocated twice");
            for appended in results {
                assert_eq!(
                    appended.last_position - appended.first_position,
                    appended.last_version - appended.first_version
                );
                claimed += appended.last_position - appended.first_position + 1;
            }
        }
        let records = all(&log);
        assert_gap_free(&records);
        // 4 shared streams, one "own" record per thread, and what threads claimed.
        assert_eq!(records.len() as u64, 4 + THREADS as u64 + claimed);
        assert_eq!(log.head(), records.len() as u64);
        let stats = log.stats().unwrap();
        assert_eq!(stats.streams, 4 + THREADS as u64);
        assert_eq!(stats.events, log.head());
    }
}

#[test]
fn concurrent_retries_with_one_key_append_once() {
    let dir = tempfile::tempdir().unwrap();
    for log in engines(dir.path()) {
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    log.append(with_key(
                        request(StreamTarget::New, ExpectedVersion::NoStream, &["once"]),
                        "same",
                        5,
                    ))
                    .unwrap()
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
        let original = results.iter().find(|r| !r.duplicate).unwrap();
        for result in &results {
            assert_eq!(
                Appended {
                    duplicate: false,
                    ..*result
                },
                *original
            );
        }
        assert_eq!(log.head(), 1);
    }
}

#[test]
fn read_from_respects_after_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    for log in engines(dir.path()) {
        for _ in 0..10 {
            new_stream(&log, &["x"]);
        }
        let positions = |after, limit| -> Vec<u64> {
            log.read_from(after, limit)
                .unwrap()
                .iter()
                .map(|r| r.position)
                .collect()
        };
        assert_eq!(positions(0, 3), [1, 2, 3]);
        assert_eq!(positions(3, 3), [4, 5, 6]);
        assert_eq!(positions(8, 100), [9, 10]);
        assert!(positions(10, 5).is_empty());
        assert!(positions(u64::MAX, 5).is_empty());
        assert!(positions(0, 0).is_empty());
    }
}

#[test]
fn second_open_of_the_same_dir_is_locked_until_the_last_clone_drops() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let clone = log.clone();
    match EventLog::open(dir.path(), LogOptions::durable()) {
        Err(LogError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(log);
    assert!(matches!(
        EventLog::open(dir.path(), LogOptions::durable()),
        Err(LogError::Locked { .. })
    ));
    new_stream(&clone, &["still works"]);
    drop(clone);
    let reopened = open(dir.path());
    assert_eq!(reopened.head(), 1);
}

#[test]
fn open_creates_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/log");
    let log = open(&nested);
    new_stream(&log, &["x"]);
    assert!(nested.join("LOCK").exists());
}

#[test]
fn watch_head_is_marked_changed_before_append_returns() {
    let dir = tempfile::tempdir().unwrap();
    for log in engines(dir.path()) {
        let mut head = log.watch_head();
        assert_eq!(head.mark_seen(), 0);
        assert!(!head.has_changed());
        new_stream(&log, &["a", "b"]);
        assert!(head.has_changed());
        assert_eq!(head.mark_seen(), 2);
        assert_eq!(log.head(), 2);
        let later = log.watch_head();
        assert!(!later.has_changed(), "old appends are no news");
        assert_eq!(later.current(), 2);
    }
}

#[tokio::test]
async fn watch_head_wakes_a_waiting_task() {
    let dir = tempfile::tempdir().unwrap();
    for log in engines(dir.path()) {
        let mut head = log.watch_head();
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || new_stream(&log, &["x"]))
        };
        let woke = tokio::time::timeout(Duration::from_secs(30), head.wait_for(1)).await;
        assert!(matches!(woke, Ok(Ok(_))), "watch_head did not wake");
        writer.join().unwrap();
    }
}

#[test]
fn buffered_appends_are_readable_and_survive_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        durability: Durability::Buffered,
        ..LogOptions::durable()
    };
    let log = EventLog::open(dir.path(), options.clone()).unwrap();
    for _ in 0..5 {
        new_stream(&log, &["x"]);
    }
    assert_eq!(log.head(), 5);
    log.flush().unwrap();
    drop(log);
    let log = EventLog::open(dir.path(), options).unwrap();
    assert_eq!(log.head(), 5);
    assert_gap_free(&all(&log));
}

#[test]
fn stats_and_scan_raw_count_records() {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledLog::open(dir.path(), LogOptions::durable()).expect("open the log");
    let log = EventLog::from_engine(sled.clone());
    let a = new_stream(&log, &["a1", "a2"]);
    append_any(&log, a.stream, &["a3"]);
    new_stream(&log, &["b1"]);
    let stats = log.stats().unwrap();
    assert_eq!((stats.events, stats.streams, stats.head), (4, 2, 4));
    assert!(stats.size_on_disk > 0);
    assert_eq!(sled.scan_raw().unwrap(), 4);
}

/// Rewrites the stored row under `key` in the closed log in `dir` as `edit` changes it.
fn edit_row(dir: &Path, key: &[u8], edit: impl FnOnce(&mut Vec<u8>)) {
    let db = open_sled(dir, Durability::Flush, DEFAULT_LOG_CACHE_BYTES).unwrap();
    let mut row = db.get(key).unwrap().expect("the row to edit").to_vec();
    edit(&mut row);
    db.insert(key, row).unwrap();
    db.flush().unwrap();
}

#[test]
fn a_corrupt_record_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let a = new_stream(&log, &["a1", "a2"]);
    new_stream(&log, &["b1"]);
    drop(log);
    // a's two records share the row at 1: its last byte goes missing.
    edit_row(dir.path(), &keys::log_key(1), |row| {
        row.pop();
    });
    let log = open(dir.path());
    assert_eq!(log.head(), 3);
    match log.read_from(0, 10) {
        Err(LogError::Corrupt(what)) => {
            assert!(what.starts_with("L/1: packed record cut short"), "{what}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        log.read_stream(a.stream),
        Err(LogError::Corrupt(_))
    ));
    assert_eq!(log.read_from(0, 1).unwrap().len(), 1);
}

#[test]
fn records_share_rows_of_6_kib_and_read_back_from_any_position() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut payloads: Vec<String> = (0..40).map(|i| format!("{i:04}").repeat(250)).collect();
    // Larger than a row: a row to itself, between packed ones.
    payloads.insert(20, "x".repeat(10_000));
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    let a = new_stream(&log, &refs);
    let b = new_stream(&log, &["b1"]);
    assert_eq!((a.last_position, b.first_position), (41, 42));
    drop(log);
    let rows = {
        let db = open_sled(dir.path(), Durability::Flush, DEFAULT_LOG_CACHE_BYTES).unwrap();
        db.scan_prefix([keys::LOG]).count()
    };
    // Five records of 1,024 bytes with their frames to a row: 20 in 4 rows, the large one,
    // 20 in 4, then b's.
    assert_eq!(rows, 10);
    let log = open(dir.path());
    assert_eq!(log.head(), 42);
    let records = all(&log);
    assert_gap_free(&records);
    let read: Vec<&[u8]> = records.iter().map(|r| &r.payload[..]).collect();
    let mut written: Vec<&[u8]> = refs.iter().map(|p| p.as_bytes()).collect();
    written.push(b"b1");
    assert_eq!(read, written);
    for after in 0..=42 {
        for limit in [1, 5, 100] {
            let got = log.read_from(after, limit).unwrap();
            let want = &records[(after as usize).min(42)..];
            assert_eq!(
                got,
                want[..limit.min(want.len())],
                "after {after} limit {limit}"
            );
        }
    }
    assert_eq!(log.read_stream(a.stream).unwrap(), records[..41]);
    assert_eq!(log.read_stream(b.stream).unwrap(), records[41..]);
}

#[test]
fn a_flipped_bit_in_a_packed_record_is_refused_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let a = new_stream(&log, &["first", "second"]);
    new_stream(&log, &["b1"]);
    drop(log);
    edit_row(dir.path(), &keys::log_key(1), |row| {
        if let Some(last) = row.last_mut() {
            *last ^= 0x10;
        }
    });
    let log = open(dir.path());
    match log.read_from(0, 10) {
        Err(LogError::Damaged(what)) => assert!(
            what.contains("the record at L/2 (in the row L/1) fails its checksum"),
            "{what}"
        ),
        other => panic!("expected Damaged, got {other:?}"),
    }
    assert_eq!(log.read_from(0, 1).unwrap()[0].payload, b"first");
    assert!(matches!(
        log.read_stream(a.stream),
        Err(LogError::Damaged(_))
    ));
    assert_eq!(log.read_from(2, 1).unwrap()[0].payload, b"b1");
}

#[test]
fn a_stream_is_read_back_along_its_links_and_a_wrong_tail_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let a = new_stream(&log, &["a1"]);
    let b = new_stream(&log, &["b1"]);
    append_any(&log, a.stream, &["a2"]);
    append_any(&log, b.stream, &["b2", "b3"]);
    append_any(&log, a.stream, &["a3"]);
    let payloads = |log: &EventLog, stream| -> Vec<Vec<u8>> {
        let records = log.read_stream(stream).unwrap();
        assert!(records.windows(2).all(|w| w[0].version + 1 == w[1].version));
        records.into_iter().map(|r| r.payload).collect()
    };
    assert_eq!(payloads(&log, a.stream), [b"a1", b"a2", b"a3"]);
    assert_eq!(payloads(&log, b.stream), [b"b1", b"b2", b"b3"]);
    assert_eq!(log.stream_version(b.stream).unwrap(), Some(3));
    drop(log);
    {
        // a's tail points at b's last record.
        let db = open_sled(dir.path(), Durability::Flush, DEFAULT_LOG_CACHE_BYTES).unwrap();
        db.insert(keys::tail_key(a.stream), &keys::tail_value(3, 5)[..])
            .unwrap();
        db.flush().unwrap();
    }
    let log = open(dir.path());
    match log.read_stream(a.stream) {
        Err(LogError::Corrupt(what)) => assert!(
            what.starts_with("T/1: the stream's version 3 is at 5, which holds stream 2 version 3"),
            "{what}"
        ),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(payloads(&log, b.stream), [b"b1", b"b2", b"b3"]);
}

#[test]
fn raw_baseline_reports_a_rate() {
    let dir = tempfile::tempdir().unwrap();
    let rate = raw_sled_batch_ceiling(dir.path(), 200, 64, 50, CEILING_CACHE_BYTES).unwrap();
    assert!(rate > 0.0);
}

#[test]
fn keys_are_described_readably() {
    assert_eq!(keys::describe(&keys::log_key(42)), "L/42");
    assert_eq!(keys::describe(&keys::stream_key(3, 7)), "S/3/7");
    assert_eq!(keys::describe(&keys::version_key(3)), "V/3");
    assert_eq!(keys::describe(&keys::idempotency_key("k")), "I/\"k\"");
    assert_eq!(keys::describe(keys::NEXT_STREAM), "M/next_stream");
    assert_eq!(keys::describe(&[0xff, 0x01]), "ff01");
    assert!(matches!(
        keys::decode_idempotency_value(b"Ik", &[0; 3]),
        Err(LogError::Corrupt(_))
    ));
}

/// Tells `crash_child_appends_until_killed` where to write; without it that
/// test does nothing.
const CRASH_CHILD_DIR: &str = "EVENT_LOG_CRASH_CHILD_DIR";

/// The child process of `acknowledged_appends_survive_a_killed_process`:
/// appends from four threads and prints `ACK <last position>` after each
/// acknowledged append, until it is killed.
#[test]
fn crash_child_appends_until_killed() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) else {
        return;
    };
    let log = open(Path::new(&dir));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                let stream = new_stream(&log, &["first"]).stream;
                for i in 0usize.. {
                    let payloads = vec!["payload"; 1 + i % 3];
                    let appended = append_any(&log, stream, &payloads);
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {}", appended.last_position).unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn acknowledged_appends_survive_a_killed_process_and_it_held_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::crash_child_appends_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acks = 0;
    let mut max_acked = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(position) = line.unwrap().strip_prefix("ACK ") {
            max_acked = max_acked.max(position.parse::<u64>().unwrap());
            acks += 1;
            if acks == 300 {
                break;
            }
        }
    }
    // Another process holds the directory now.
    assert!(matches!(
        EventLog::open(dir.path(), LogOptions::durable()),
        Err(LogError::Locked { .. })
    ));
    // SIGKILL: no destructor runs, nothing is flushed on the way out.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        acks, 300,
        "the child stopped before acknowledging 300 appends"
    );

    let log = open(dir.path());
    assert!(
        log.head() >= max_acked,
        "head {} after the crash, but {max_acked} was acknowledged",
        log.head()
    );
    let records = all(&log);
    assert_eq!(records.len() as u64, log.head());
    assert_gap_free(&records);
    let highest = records.iter().map(|r| r.stream).max().unwrap();
    assert!(new_stream(&log, &["after"]).stream > highest);
}

/// Garbled bytes at many places of a healthy log's file: opening and reading it back either
/// gives every record as written, or fails with an error that says the storage is damaged (or
/// a record corrupt); never a panic, which sled raises on some damaged files.
#[test]
fn a_damaged_log_file_is_refused_with_an_error_not_a_panic() {
    let healthy = tempfile::tempdir().expect("a directory");
    let written: Vec<Record> = {
        let log = open(healthy.path());
        for n in 0..400 {
            new_stream(
                &log,
                &[&format!(
                    "{{\"call\":{n},\"note\":\"{}\"}}",
                    "x".repeat(200)
                )],
            );
        }
        log.flush().expect("flush");
        log.read_from(0, usize::MAX).expect("read")
    };
    let size = std::fs::metadata(healthy.path().join("db"))
        .expect("the db file")
        .len();
    let mut outcomes = BTreeMap::new();
    for step in 1..40u64 {
        let damaged = tempfile::tempdir().expect("a directory");
        for entry in std::fs::read_dir(healthy.path()).expect("list") {
            let entry = entry.expect("an entry");
            if entry.file_type().expect("a type").is_file() {
                std::fs::copy(entry.path(), damaged.path().join(entry.file_name())).expect("copy");
            }
        }
        let offset = size * step / 40;
        {
            use std::io::{Seek, SeekFrom};
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(damaged.path().join("db"))
                .expect("open the copy");
            file.seek(SeekFrom::Start(offset)).expect("seek");
            let garbage: Vec<u8> = (0..256u32)
                .map(|i| (i * 7 + step as u32 * 13) as u8)
                .collect();
            file.write_all(&garbage).expect("garble");
        }
        let outcome = EventLog::open(damaged.path(), LogOptions::durable())
            .and_then(|log| log.read_from(0, usize::MAX));
        let kind = match outcome {
            Ok(records) => {
                assert_eq!(
                    records.len(),
                    written.len(),
                    "garbled at {offset}: a different number of records"
                );
                assert_eq!(
                    records, written,
                    "garbled at {offset}: read back other records"
                );
                "intact"
            }
            Err(LogError::Damaged(_)) => "damaged",
            Err(LogError::Corrupt(_)) => "corrupt",
            Err(other) => panic!("garbled at {offset}: an unclear error: {other}"),
        };
        *outcomes.entry(kind).or_insert(0) += 1;
    }
    eprintln!("39 garbled copies: {outcomes:?}");
}

#[test]
fn the_writer_shows_how_long_a_group_has_gone_unanswered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = open(dir.path());
    new_stream(&log, &["before"]);
    assert_eq!(log.busy_for(), None, "an idle writer is not busy");

    // Hold the writer at the start of its next group, as storage that stopped answering would.
    let held = crate::sled_engine::writer::hold::HOLD_COMMITS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let appender = {
        let log = log.clone();
        std::thread::spawn(move || new_stream(&log, &["held"]))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log
        .busy_for()
        .is_none_or(|busy| busy < Duration::from_millis(50))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the held group never showed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!appender.is_finished(), "a held group is not answered");
    drop(held);

    let appended = appender.join().expect("the appender");
    assert_eq!(appended.first_position, 2);
    assert_eq!(log.busy_for(), None, "answered: idle again");
    assert_eq!(
        EventLog::from_engine(MemoryLog::new()).busy_for(),
        None,
        "an engine that does not tell"
    );
}
