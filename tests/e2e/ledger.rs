//! End-to-end tests of the ledger core, without NATS: the event log, the command service and the
//! projection working together on a real data directory, as the `callledger` binary lays it out
//! (`<data>/log` for the log, `<data>/projection` for the projection).
//!
//! The areas are one module each: random command sequences against a model (`sequences`), a
//! child process killed with SIGKILL under load (`crash`), keyset pagination while calls are
//! created (`pagination`) and a rebuild of a few thousand calls (`rebuild`). This file holds
//! what they share: opening a ledger, a test clock, request builders, a seeded random source
//! and the checks of the log's and the projection's invariants.

mod crash;
mod pagination;
mod rebuild;
mod sequences;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};

use call_commands::{CommandOutcome, CommandRequest, CommandService};
use call_model::{parse_write, Action, Call, CallId, Command, Rights, Timestamp, WriteMode};
use call_projections::{ListQuery, PageCursor, Projection};
use event_log::{EventLog, LogOptions, Record};
use serde_json::{json, Value};

/// 2025-01-13T12:00:00.000Z, where the test clocks start.
const EPOCH_MILLIS: i64 = 1_736_769_600_000;

/// A data directory opened as the binary opens it.
pub(crate) struct Ledger {
    pub(crate) log: EventLog,
    pub(crate) commands: CommandService,
    pub(crate) projection: Projection,
}

impl Ledger {
    /// Opens (creating if needed) `<data>/log` durably and `<data>/projection` over it.
    pub(crate) fn open(data: &Path) -> Ledger {
        Ledger::try_open(data).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_open(data: &Path) -> Result<Ledger, String> {
        let log = EventLog::open(&data.join("log"), LogOptions::durable())
            .map_err(|e| format!("open the event log in {}: {e}", data.display()))?;
        let projection = Projection::open(&data.join("projection"), log.clone())
            .map_err(|e| format!("open the projection in {}: {e}", data.display()))?;
        Ok(Ledger {
            commands: CommandService::new(log.clone()),
            log,
            projection,
        })
    }

    /// [`Ledger::open`] for another process than the one that closed the directory last: sled
    /// may hold its file lock for a moment after the last handle is dropped, and a lock cannot
    /// be waited for, so opening is retried for a few seconds.
    pub(crate) fn open_patiently(data: &Path) -> Ledger {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Ledger::try_open(data) {
                Ok(ledger) => return ledger,
                Err(error) if std::time::Instant::now() > deadline => panic!("{error}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }

    /// Executes a command and waits until the projection has applied it (read-your-writes).
    pub(crate) fn execute(
        &self,
        request: CommandRequest,
    ) -> Result<CommandOutcome, call_commands::CommandError> {
        let outcome = self.commands.execute(request)?;
        self.projection
            .wait_for(outcome.position)
            .expect("the projection reaches an acknowledged position");
        Ok(outcome)
    }
}

/// The ledger's clock for tests: starts at [`EPOCH_MILLIS`] and moves a second per tick.
pub(crate) struct Clock(AtomicI64);

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock(AtomicI64::new(EPOCH_MILLIS))
    }

    /// The next time, one second after the previous one.
    pub(crate) fn tick(&self) -> Timestamp {
        Timestamp::from_millis(self.0.fetch_add(1000, Ordering::Relaxed) + 1000)
    }
}

/// A time `seconds` after [`EPOCH_MILLIS`].
pub(crate) fn at(seconds: i64) -> Timestamp {
    Timestamp::from_millis(EPOCH_MILLIS + seconds * 1000)
}

/// Validates an attributes object (telephony rights, so `state` may be written) as a create.
pub(crate) fn create(attributes: Value, recorded_at: Timestamp) -> CommandRequest {
    let document = json!({"data": {"type": "call", "attributes": attributes}});
    let input = parse_write(&document, WriteMode::Create, Rights { voice: true })
        .unwrap_or_else(|violations| panic!("invalid test create {document}: {violations:?}"));
    request(
        Action::Create(input.changes),
        recorded_at,
        input.occurred_at,
    )
}

/// Validates an attributes object (telephony rights) as an update of `id`.
pub(crate) fn update(id: CallId, attributes: Value, recorded_at: Timestamp) -> CommandRequest {
    let document = json!({"data": {"type": "call", "id": id, "attributes": attributes}});
    let input = parse_write(&document, WriteMode::Update(id), Rights { voice: true })
        .unwrap_or_else(|violations| panic!("invalid test update {document}: {violations:?}"));
    let changes = input.changes;
    request(
        Action::Update { id, changes },
        recorded_at,
        input.occurred_at,
    )
}

/// A delete of `id`.
pub(crate) fn delete(id: CallId, recorded_at: Timestamp) -> CommandRequest {
    request(Action::Delete { id }, recorded_at, None)
}

/// A request for `action` without If-Match or idempotency key.
pub(crate) fn request(
    action: Action,
    recorded_at: Timestamp,
    occurred_at: Option<Timestamp>,
) -> CommandRequest {
    CommandRequest {
        command: Command {
            action,
            actor: "e2e".into(),
            recorded_at,
            occurred_at,
        },
        expected_version: None,
        idempotency_key: None,
    }
}

/// Executes requests on `threads` threads (concurrent appends share a flush) and returns each
/// outcome in the order of `requests`; panics on any refusal.
pub(crate) fn execute_all(
    commands: &CommandService,
    requests: Vec<CommandRequest>,
    threads: usize,
) -> Vec<CommandOutcome> {
    let requests: Vec<(usize, CommandRequest)> = requests.into_iter().enumerate().collect();
    let chunk = requests.len().div_ceil(threads.max(1)).max(1);
    let mut outcomes: Vec<(usize, CommandOutcome)> = std::thread::scope(|scope| {
        let workers: Vec<_> = requests
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(index, request)| {
                            let outcome = commands.execute(request.clone()).unwrap_or_else(|e| {
                                panic!("command {index} refused: {e:?}\n{request:?}")
                            });
                            (*index, outcome)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a writer thread panicked"))
            .collect()
    });
    outcomes.sort_by_key(|(index, _)| *index);
    outcomes.into_iter().map(|(_, outcome)| outcome).collect()
}

/// A small deterministic random source (SplitMix64), seeded from `CALL_LEDGER_SEED` when set,
/// else from the clock; the seed is printed so that a failure can be replayed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn seeded(test: &str) -> Rng {
        let seed = std::env::var("CALL_LEDGER_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_nanos() as u64)
            });
        eprintln!("{test}: CALL_LEDGER_SEED={seed}");
        Rng(seed)
    }

    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..high`.
    pub(crate) fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }

    /// One of `items`.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64) as usize]
    }

    /// `true` with probability `percent`/100.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }
}

/// Reads the whole log and checks its invariants: positions are exactly `1..=head` and every
/// stream's versions are `1..=n` in position order. Returns each stream's records.
pub(crate) fn check_log(log: &EventLog) -> BTreeMap<CallId, Vec<Record>> {
    let head = log.head();
    let mut streams: BTreeMap<CallId, Vec<Record>> = BTreeMap::new();
    let mut expected = 1;
    loop {
        let records = log.read_from(expected - 1, 1000).expect("read the log");
        if records.is_empty() {
            break;
        }
        for record in records {
            assert_eq!(
                record.position, expected,
                "the log has a gap before {expected}"
            );
            expected += 1;
            let stream = streams.entry(record.stream).or_default();
            assert_eq!(
                record.version,
                stream.len() as u64 + 1,
                "stream {} has versions out of order at position {}",
                record.stream,
                record.position
            );
            stream.push(record);
        }
    }
    assert_eq!(expected - 1, head, "read_from stops before the head");
    for (id, records) in &streams {
        let read = log.read_stream(*id).expect("read a stream");
        assert_eq!(&read, records, "read_stream({id}) disagrees with read_from");
    }
    streams
}

/// The rows of every page of `query` (its cursor ignored), walking `page[after]` cursors.
pub(crate) fn list_all(projection: &Projection, query: &ListQuery) -> Vec<Call> {
    let mut query = ListQuery {
        cursor: None,
        ..query.clone()
    };
    let mut rows = Vec::new();
    loop {
        let page = projection.list(&query).expect("list a page");
        rows.extend(page.calls.iter().cloned());
        match page.calls.last() {
            Some(last) if page.more_after => {
                query.cursor = Some(PageCursor::After(projection.cursor_for(&query, last)));
            }
            _ => return rows,
        }
    }
}

/// Every call in id order, a thousand to a page.
pub(crate) fn all_calls_query() -> ListQuery {
    ListQuery {
        filters: Vec::new(),
        sort: Vec::new(),
        page_size: 1000,
        cursor: None,
        count: false,
    }
}

/// What a projection answers: `get` of every id up to `max_id` and the full list.
pub(crate) fn snapshot(projection: &Projection, max_id: CallId) -> (Vec<Option<Call>>, Vec<Call>) {
    let gets = (1..=max_id + 1)
        .map(|id| projection.get(id).expect("get a call"))
        .collect();
    (gets, list_all(projection, &all_calls_query()))
}

/// Rebuilds the log into a scratch directory and asserts that the live projection equals it.
pub(crate) fn assert_verified(projection: &Projection, scratch_parent: &Path) {
    let scratch = tempfile::tempdir_in(scratch_parent).expect("scratch space for verify");
    let report = projection.verify(scratch.path()).expect("verify runs");
    assert!(
        report.differences.is_empty(),
        "verify found differences between the live and the rebuilt projection: {:#?}",
        report.differences
    );
}
