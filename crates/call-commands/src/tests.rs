//! Tests of command execution against a real log in a temporary directory.

use super::*;
use call_model::{parse_write, Rights, WriteMode};
use serde_json::json;

/// A command service over the in-memory log: these tests are about commands, not storage.
fn service() -> CommandService {
    CommandService::new(EventLog::from_engine(event_log::MemoryLog::new()))
}

fn at(millis: i64) -> Timestamp {
    Timestamp::from_millis(1_700_000_000_000 + millis)
}

fn request(action: Action, key: Option<&str>, expected: Option<u64>) -> CommandRequest {
    CommandRequest {
        command: Command {
            action,
            actor: "tester".into(),
            recorded_at: at(0),
            occurred_at: None,
        },
        expected_version: expected,
        idempotency_key: key.map(str::to_owned),
    }
}

fn changes(attributes: serde_json::Value) -> call_model::Changes {
    let document = json!({"data": {"type": "call", "attributes": attributes}});
    parse_write(&document, WriteMode::Create, Rights { voice: true })
        .unwrap()
        .changes
}

fn create(service: &CommandService, attributes: serde_json::Value) -> CommandOutcome {
    service
        .execute(request(Action::Create(changes(attributes)), None, None))
        .unwrap()
}

#[test]
fn create_assigns_increasing_ids_and_update_bumps_the_version() {
    let service = service();
    let first = create(&service, json!({"direction": "inbound"}));
    let second = create(&service, json!({"direction": "outbound"}));
    assert_eq!((first.call_id, first.version, first.position), (1, 1, 1));
    assert_eq!((second.call_id, second.position), (2, 2));
    let updated = service
        .execute(request(
            Action::Update {
                id: 1,
                changes: changes(json!({"note": "hi"})),
            },
            None,
            None,
        ))
        .unwrap();
    assert_eq!((updated.version, updated.appended), (2, 1));
    assert_eq!(
        updated.state.live().unwrap().text(call_model::Field::Note),
        Some("hi")
    );
}

#[test]
fn an_update_that_changes_nothing_appends_nothing() {
    let service = service();
    create(&service, json!({"note": "same"}));
    let outcome = service
        .execute(request(
            Action::Update {
                id: 1,
                changes: changes(json!({"note": "same"})),
            },
            None,
            None,
        ))
        .unwrap();
    assert_eq!(outcome.appended, 0);
    assert_eq!(service.log().head(), 1);
}

#[test]
fn if_match_on_another_version_is_a_conflict_and_appends_nothing() {
    let service = service();
    create(&service, json!({}));
    let error = service
        .execute(request(
            Action::Update {
                id: 1,
                changes: changes(json!({"note": "x"})),
            },
            None,
            Some(7),
        ))
        .unwrap_err();
    assert!(matches!(
        error,
        CommandError::Conflict(Conflict::VersionMismatch {
            expected: 7,
            actual: 1
        })
    ));
    assert_eq!(service.log().head(), 1);
}

#[test]
fn a_retry_with_the_same_key_returns_the_original_result() {
    let service = service();
    let original = service
        .execute(request(
            Action::Create(changes(json!({"note": "a"}))),
            Some("k1"),
            None,
        ))
        .unwrap();
    service
        .execute(request(
            Action::Update {
                id: 1,
                changes: changes(json!({"note": "b"})),
            },
            None,
            None,
        ))
        .unwrap();
    let retry = service
        .execute(request(
            Action::Create(changes(json!({"note": "a"}))),
            Some("k1"),
            None,
        ))
        .unwrap();
    assert!(retry.replayed);
    assert_eq!(
        (retry.call_id, retry.version),
        (original.call_id, original.version)
    );
    assert_eq!(retry.state, original.state);
    assert_eq!(service.log().head(), 2);
    let reused = service
        .execute(request(
            Action::Create(changes(json!({"note": "other"}))),
            Some("k1"),
            None,
        ))
        .unwrap_err();
    assert!(matches!(
        reused,
        CommandError::Conflict(Conflict::IdempotencyKeyReused)
    ));
    // A create's key is checked after it is decided; a reused key still answers before the
    // decision's own refusal (a time in the future), in one command and in a batch.
    let mut future = request(
        Action::Create(changes(json!({"note": "other"}))),
        Some("k1"),
        None,
    );
    future.command.occurred_at = Some(at(3_600_000));
    let reused = service.execute(future.clone()).unwrap_err();
    assert!(matches!(
        reused,
        CommandError::Conflict(Conflict::IdempotencyKeyReused)
    ));
    let batch = service.execute_all(vec![future]);
    assert!(matches!(
        batch.as_slice(),
        [Err(CommandError::Conflict(Conflict::IdempotencyKeyReused))]
    ));
    assert_eq!(service.log().head(), 2);
}

#[test]
fn a_deleted_call_is_not_found_for_updates_and_deletes() {
    let service = service();
    create(&service, json!({}));
    service
        .execute(request(Action::Delete { id: 1 }, None, None))
        .unwrap();
    let update = service
        .execute(request(
            Action::Update {
                id: 1,
                changes: changes(json!({"note": "x"})),
            },
            None,
            None,
        ))
        .unwrap_err();
    assert!(matches!(update, CommandError::NotFound(1)));
    assert!(matches!(
        service.execute(request(Action::Delete { id: 1 }, None, None)),
        Err(CommandError::NotFound(1))
    ));
    assert!(matches!(
        service.execute(request(Action::Delete { id: 99 }, None, None)),
        Err(CommandError::NotFound(99))
    ));
}

#[test]
fn an_overlong_idempotency_key_is_refused() {
    let service = service();
    let key = "k".repeat(256);
    let error = service
        .execute(request(
            Action::Create(changes(json!({}))),
            Some(&key),
            None,
        ))
        .unwrap_err();
    assert!(matches!(error, CommandError::InvalidIdempotencyKey(_)));
}

#[test]
fn concurrent_updates_without_if_match_all_land() {
    let service = service();
    create(&service, json!({}));
    std::thread::scope(|scope| {
        for writer in 0..16 {
            let service = service.clone();
            scope.spawn(move || {
                let changes = changes(json!({"note": format!("writer {writer}")}));
                service
                    .execute(request(Action::Update { id: 1, changes }, None, None))
                    .unwrap();
            });
        }
    });
    assert_eq!(service.load(1).unwrap().version(), 17);
}

#[test]
fn idempotency_keys_are_scoped_per_actor() {
    let service = service();
    let create_as = |actor: &str| {
        let mut request = request(
            Action::Create(changes(json!({"direction": "inbound"}))),
            Some("crm-4711"),
            None,
        );
        request.command.actor = actor.into();
        service.execute(request).unwrap()
    };
    let crm = create_as("crm-sync");
    let dialer = create_as("dialer");
    // The same key from another integration is another request: a second call, no conflict.
    assert_ne!(crm.call_id, dialer.call_id);
    assert!(!dialer.replayed);
    // From the same integration it is a retry.
    let again = create_as("crm-sync");
    assert!(again.replayed);
    assert_eq!(again.call_id, crm.call_id);
    // The length prefix keeps actors and keys that share characters apart.
    assert_ne!(scoped_key("a:b", "c"), scoped_key("a", "b:c"));
    // The events carry the key as sent.
    let events = service.log().read_stream(crm.call_id).unwrap();
    assert!(events
        .iter()
        .all(|record| String::from_utf8_lossy(&record.payload)
            .contains("\"idempotencyKey\":\"crm-4711\"")));
}

#[test]
fn execute_all_answers_each_request_in_order_as_execute_would() {
    let dir = tempfile::tempdir().unwrap();
    let sled = EventLog::open(dir.path(), event_log::LogOptions::durable()).unwrap();
    for service in [service(), CommandService::new(sled)] {
        create(&service, json!({"note": "first"}));
        let update = |note: &str, expected| {
            request(
                Action::Update {
                    id: 1,
                    changes: changes(json!({ "note": note })),
                },
                None,
                expected,
            )
        };
        let batch = [
            request(
                Action::Create(changes(json!({"note": "a"}))),
                Some("k"),
                None,
            ),
            // Decided against version 1 like the next one; the one appended second finds
            // the call changed and is decided again.
            update("b", None),
            update("c", None),
            update("d", Some(7)),
            request(Action::Delete { id: 99 }, None, None),
            // A retry of the first, in the same batch: its key is not durable yet when the
            // batch is decided, so the log answers it as a duplicate.
            request(
                Action::Create(changes(json!({"note": "a"}))),
                Some("k"),
                None,
            ),
        ];
        let answers = service.execute_all(batch.to_vec());
        assert_eq!(answers.len(), batch.len());
        let created = answers[0].as_ref().unwrap();
        assert_eq!((created.call_id, created.appended), (2, 1));
        let versions: Vec<u64> = answers[1..3]
            .iter()
            .map(|answer| answer.as_ref().unwrap().version)
            .collect();
        assert_eq!(versions, vec![2, 3]);
        assert!(matches!(
            answers[3],
            Err(CommandError::Conflict(Conflict::VersionMismatch {
                expected: 7,
                ..
            }))
        ));
        assert!(matches!(answers[4], Err(CommandError::NotFound(99))));
        let retry = answers[5].as_ref().unwrap();
        assert!(retry.replayed);
        assert_eq!((retry.call_id, retry.version), (2, 1));
        assert_eq!(service.log().head(), 4);
        let note = |state: &CallState| {
            state
                .live()
                .and_then(|call| call.text(call_model::Field::Note).map(str::to_owned))
        };
        assert_eq!(note(&service.load(1).unwrap()).as_deref(), Some("c"));
    }
}

#[test]
fn a_seen_call_is_trusted_only_at_the_logs_version() {
    let service = service();
    create(&service, json!({"note": "first"}));
    let seen = service.load(1).unwrap().live().unwrap().clone();
    let update = |note: &str| {
        request(
            Action::Update {
                id: 1,
                changes: changes(json!({ "note": note })),
            },
            None,
            None,
        )
    };
    // Another writer moves the call on after `seen` was read.
    service.execute(update("second")).unwrap();
    // Decided on `seen` alone this would look like a change; the log says it is none.
    let outcome = service
        .execute_seen(update("second"), Some(seen.clone()))
        .unwrap();
    assert_eq!((outcome.version, outcome.appended), (2, 0));
    // At the log's version `seen` is what the command is decided on.
    let current = service.load(1).unwrap().live().unwrap().clone();
    let outcome = service
        .execute_seen(update("third"), Some(current))
        .unwrap();
    assert_eq!((outcome.version, outcome.appended), (3, 1));
    assert_eq!(
        service
            .load(1)
            .unwrap()
            .live()
            .unwrap()
            .text(call_model::Field::Note),
        Some("third")
    );
}

/// The fingerprint is the SHA-256 of the text the first versions built as a `serde_json::Value`
/// (`json!([kind, id, changes, actor, occurredAt, expected])`): keys already stored keep
/// matching their retries across an upgrade.
#[test]
fn the_fingerprint_text_is_pinned() {
    let as_first_written = |request: &CommandRequest| -> [u8; 32] {
        let command = &request.command;
        let (kind, id, changes) = match &command.action {
            Action::Create(changes) => ("create", 0, changes.to_json()),
            Action::Update { id, changes } => ("update", *id, changes.to_json()),
            Action::Delete { id } => ("delete", *id, serde_json::Value::Null),
        };
        let canonical = json!([
            kind,
            id,
            changes,
            command.actor,
            command.occurred_at.map(|at| at.millis()),
            request.expected_version,
        ]);
        Sha256::digest(canonical.to_string().as_bytes()).into()
    };
    let rich = changes(json!({
        "direction": "outbound",
        "note": "Left a \"voicemail\" \u{e9}\n\t",
        "shouldRecordCall": true,
        "dialedAt": "2025-01-13T12:47:31.000Z",
        "tags": ["b", "a", "\u{1F600}"],
        "outcome": "Answered",
    }));
    let mut cleared = call_model::Changes::default();
    cleared.attributes.insert(call_model::Field::Note, None);
    let mut requests = vec![
        request(Action::Create(rich.clone()), Some("k"), None),
        request(
            Action::Update {
                id: 7,
                changes: rich,
            },
            Some("k"),
            Some(3),
        ),
        request(
            Action::Update {
                id: 7,
                changes: cleared,
            },
            None,
            None,
        ),
        request(Action::Delete { id: 9 }, Some("k"), Some(1)),
        request(Action::Create(call_model::Changes::default()), None, None),
    ];
    requests[0].command.occurred_at = Some(at(5));
    requests[3].command.actor = "a \"quoted\" actor".into();
    for request in &requests {
        assert_eq!(
            fingerprint(request),
            as_first_written(request),
            "{request:?}"
        );
    }
}
