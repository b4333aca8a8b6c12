//! Golden files: one pinned example of each event type in the documented JSON, under
//! `tests/golden/`. The event JSON is the long-term record, so an accidental change of its form
//! must fail here. After an intended change (with a schemaVersion bump if it is incompatible, see
//! docs/events.md), rewrite the files with `UPDATE_GOLDEN=1 cargo test -p call-model golden` and
//! copy them into docs/events.md.

use super::{changes, ts};
use crate::{Event, EventBody, EventType, StoredEvent};
use serde_json::json;
use std::path::PathBuf;
use uuid::Uuid;

fn golden_path(event_type: EventType) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{}.json", event_type.name()))
}

/// Compares the event's pretty-printed JSON with its golden file byte for byte, and reads the
/// file back into the same event; with `UPDATE_GOLDEN=1`, rewrites the file instead.
#[track_caller]
fn check_golden(event: Event) {
    let path = golden_path(event.event_type());
    let actual = format!("{}\n", event.to_json_pretty());
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "cannot read {}: {error}; create it with UPDATE_GOLDEN=1 cargo test -p call-model golden",
            path.display()
        )
    });
    assert!(
        actual == expected,
        "the JSON of {} no longer matches {}.\n\
         The event JSON is the long-term record (docs/events.md): if this change is intended, \
         bump SCHEMA_VERSION when it is incompatible, rewrite the golden files with \
         `UPDATE_GOLDEN=1 cargo test -p call-model golden`, and update docs/events.md.\n\
         --- expected (file)\n{expected}\n--- actual\n{actual}",
        event.event_type().name(),
        path.display(),
    );
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/events.md");
    let docs = std::fs::read_to_string(&docs).unwrap_or_default();
    assert!(
        docs.contains(&format!("```json\n{expected}```")),
        "docs/events.md must show {} exactly as in the golden file",
        path.display()
    );
    let value = serde_json::from_str(&expected).unwrap();
    assert_eq!(
        Event::from_json(&value).unwrap(),
        event,
        "decoding {}",
        path.display()
    );
    let stored = event.stored.encode();
    assert_eq!(
        Event::decode(event.position, event.call_id, event.version, &stored).unwrap(),
        event
    );
}

/// The envelope of a golden event, members named as in the JSON.
struct Envelope<'a> {
    position: u64,
    version: u64,
    event_id: &'a str,
    idempotency_key: Option<&'a str>,
    occurred_at: &'a str,
    recorded_at: &'a str,
    actor: &'a str,
}

impl Envelope<'_> {
    fn with(self, body: EventBody) -> Event {
        Event {
            position: self.position,
            call_id: 1042,
            version: self.version,
            stored: StoredEvent {
                event_id: Uuid::parse_str(self.event_id).unwrap(),
                idempotency_key: self.idempotency_key.map(str::to_owned),
                occurred_at: ts(self.occurred_at),
                recorded_at: ts(self.recorded_at),
                actor: self.actor.to_owned(),
                body,
            },
        }
    }
}

#[test]
fn golden_call_created() {
    check_golden(
        Envelope {
            position: 5310,
            version: 1,
            event_id: "01946027-1e58-7a3c-8c2d-4f1e2a3b4c01",
            idempotency_key: Some("dialer-7f3a9c"),
            occurred_at: "2025-01-13T12:47:31.000Z",
            recorded_at: "2025-01-13T12:47:31.218Z",
            actor: "dialer",
        }
        .with(EventBody::CallCreated(changes(
            json!({
                "direction": "outbound",
                "dialedAt": "2025-01-13T12:47:31Z",
                "externalVendor": "Twilio",
                "from": "+14155550100",
                "to": "+14155550199",
                "state": "dialing",
                "shouldRecordCall": true,
                "tags": ["Interested", "Meeting Booked"],
                "userCallType": "voip"
            }),
            json!({
                "batches": {"data": [{"type": "batch", "id": 3}]},
                "prospect": {"data": {"type": "prospect", "id": 5}},
                "sequence": {"data": {"type": "sequence", "id": 12}},
                "user": {"data": {"type": "user", "id": 2}}
            }),
            json!({"dataConnections": [{
                "connection": "salesforce",
                "type": "Task",
                "id": "00T5e00000AbCdE",
                "url": "https://example.my.salesforce.com/00T5e00000AbCdE"
            }]}),
        ))),
    );
}

#[test]
fn golden_call_updated() {
    check_golden(
        Envelope {
            position: 5377,
            version: 3,
            event_id: "01946029-04b0-7d61-9a0e-2b7c3d4e5f02",
            idempotency_key: None,
            occurred_at: "2025-01-13T12:49:02.000Z",
            recorded_at: "2025-01-13T12:49:02.000Z",
            actor: "crm-sync",
        }
        .with(EventBody::CallUpdated(changes(
            json!({
                "note": "Left a voicemail; will try again Thursday.",
                "outcome": "Not Answered",
                "sequenceAction": null
            }),
            json!({
                "callDisposition": {"data": {"type": "callDisposition", "id": 4}},
                "task": {"data": null}
            }),
            json!({}),
        ))),
    );
}

#[test]
fn golden_call_state_changed() {
    check_golden(
        Envelope {
            position: 5342,
            version: 2,
            event_id: "01946028-6c1a-7b22-8f31-5d6e7f809a03",
            idempotency_key: Some("twilio-CA5f1e-completed"),
            occurred_at: "2025-01-13T12:48:40.512Z",
            recorded_at: "2025-01-13T12:48:41.007Z",
            actor: "telephony",
        }
        .with(EventBody::CallStateChanged {
            previous_state: Some("dialing".into()),
            changes: changes(
                json!({
                    "answeredAt": "2025-01-13T12:47:38.120Z",
                    "completedAt": "2025-01-13T12:48:40.512Z",
                    "state": "completed",
                    "uid": "CA5f1e0a9d7c3b2a1f0e9d8c7b6a5f4e3d",
                    "recordingUrl": "https://recordings.example.com/CA5f1e.mp3"
                }),
                json!({}),
                json!({}),
            ),
        }),
    );
}

#[test]
fn golden_call_deleted() {
    check_golden(
        Envelope {
            position: 5402,
            version: 4,
            event_id: "0194602a-a3f4-7e10-b5c6-7d8e9fa0b104",
            idempotency_key: Some("cleanup-2025-01-13"),
            occurred_at: "2025-01-13T12:50:00.000Z",
            recorded_at: "2025-01-13T12:50:00.000Z",
            actor: "admin",
        }
        .with(EventBody::CallDeleted),
    );
}
