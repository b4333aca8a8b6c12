//! What the targets share: a small ledger in a temporary directory, opened once per process.

use std::sync::OnceLock;

use call_commands::{CommandRequest, CommandService};
use call_model::{parse_write, Action, Call, Command, Rights, Timestamp, WriteMode};
use call_projections::Projection;
use event_log::{EventLog, LogOptions};

struct Ledger {
    projection: Projection,
    call: Option<Call>,
    _dir: tempfile::TempDir,
}

fn open() -> Ledger {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = EventLog::open(&dir.path().join("log"), LogOptions::durable()).expect("the log");
    let commands = CommandService::new(log.clone());
    let documents = [
        r#"{"data":{"type":"call","attributes":{"direction":"inbound","note":"a","dialedAt":"2024-01-02T03:04:05Z","tags":["x","y"]},"relationships":{"prospect":{"data":{"type":"prospect","id":5}}}}}"#,
        r#"{"data":{"type":"call","attributes":{"direction":"outbound","recordingUrl":"https://r/1","outcome":"Answered"}}}"#,
        r#"{"data":{"type":"call","attributes":{"note":"b","state":"completed"}}}"#,
    ];
    for (n, document) in documents.iter().enumerate() {
        let value: serde_json::Value = serde_json::from_str(document).expect("JSON");
        let input = parse_write(&value, WriteMode::Create, Rights { voice: true }).expect("valid");
        commands
            .execute(CommandRequest {
                command: Command {
                    action: Action::Create(input.changes),
                    actor: "fuzz".into(),
                    recorded_at: Timestamp::from_millis(1_700_000_000_000 + n as i64),
                    occurred_at: input.occurred_at,
                },
                expected_version: None,
                idempotency_key: None,
            })
            .expect("created");
    }
    let projection = Projection::open(&dir.path().join("projection"), log).expect("projection");
    projection.catch_up().expect("caught up");
    let call = projection.get(1).ok().flatten();
    Ledger {
        projection,
        call,
        _dir: dir,
    }
}

fn shared() -> &'static Ledger {
    static LEDGER: OnceLock<Ledger> = OnceLock::new();
    LEDGER.get_or_init(open)
}

/// The projection of three calls.
#[allow(dead_code)]
pub fn ledger() -> &'static Projection {
    &shared().projection
}

/// Call 1 of that ledger.
#[allow(dead_code)]
pub fn a_call() -> Option<Call> {
    shared().call.clone()
}
