//! The event JSON: both round trips (`decode(encode)` and `from_json(to_json)`) give back the
//! event, the stored form leaves out what the log keeps, and readers are tolerant where the
//! versioning policy says they must be and strict where it says they must not.

use super::{changes, ts};
use crate::{Changes, Event, EventBody, EventType, StoredEvent, SCHEMA_VERSION};
use serde_json::{json, Value};
use uuid::Uuid;

fn event(body: EventBody, idempotency_key: Option<&str>) -> Event {
    Event {
        position: 42,
        call_id: 7,
        version: 3,
        stored: StoredEvent {
            event_id: Uuid::parse_str("01946027-1e58-7a3c-8c2d-4f1e2a3b4c5d").unwrap(),
            idempotency_key: idempotency_key.map(str::to_owned),
            occurred_at: ts("2025-01-13T12:47:30.999Z"),
            recorded_at: ts("2025-01-13T12:47:31.000Z"),
            actor: "dialer".into(),
            body,
        },
    }
}

/// Every kind of member in every form: set, cleared, to-one, to-many, connections with nulls.
fn everything() -> Changes {
    changes(
        json!({
            "answeredAt": "2025-01-13T12:47:31.5+01:00", "completedAt": null,
            "dialedAt": "1970-01-01T00:00:00Z", "returnedAt": "1969-12-31T23:59:59.999Z",
            "direction": "inbound", "outcome": "Not Answered",
            "sequenceAction": "Finish - No Reply", "userCallType": "voip",
            "externalVendor": "Aircall", "from": "+1 (555) 0100", "to": "", "state": "completed",
            "uid": "CA1", "note": "line one\nline \"two\" — ünïcödé 📞",
            "recordingUrl": "https://r.example/1.mp3", "voicemailRecordingUrl": null,
            "vendorCallId": "v-1", "shouldRecordCall": false, "tags": ["Interested", ""]
        }),
        json!({
            "associatedId": {"data": {"type": "opportunity", "id": 9}},
            "batches": {"data": [{"type": "batch", "id": 2}, {"type": "batch", "id": 1}]},
            "callDisposition": {"data": null},
            "prospect": {"data": {"type": "prospect", "id": 9007199254740993_i64}}
        }),
        json!({"dataConnections": [
            {"connection": "salesforce", "type": "Task", "id": "00T1", "url": "https://x.example/1"},
            {"connection": null, "type": null, "id": null, "url": null}
        ]}),
    )
}

fn samples() -> Vec<Event> {
    vec![
        event(EventBody::CallCreated(everything()), Some("key-1")),
        event(EventBody::CallCreated(Changes::default()), None),
        event(EventBody::CallUpdated(everything()), None),
        event(
            EventBody::CallUpdated(changes(
                json!({}),
                json!({}),
                json!({"dataConnections": []}),
            )),
            Some("k"),
        ),
        event(
            EventBody::CallStateChanged {
                previous_state: Some("ringing".into()),
                changes: everything(),
            },
            None,
        ),
        event(
            EventBody::CallStateChanged {
                previous_state: None,
                changes: changes(json!({"state": "ringing"}), json!({}), json!({})),
            },
            None,
        ),
        event(EventBody::CallDeleted, Some("delete-7")),
    ]
}

#[test]
fn decode_of_encode_gives_back_the_event() {
    for event in samples() {
        let bytes = event.stored.encode();
        let decoded = Event::decode(event.position, event.call_id, event.version, &bytes).unwrap();
        assert_eq!(decoded, event, "{}", String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn from_json_of_to_json_gives_back_the_event() {
    for event in samples() {
        assert_eq!(Event::from_json(&event.to_json()).unwrap(), event);
        let text: Value = serde_json::from_slice(&event.to_json_bytes()).unwrap();
        assert_eq!(text, event.to_json());
        let pretty: Value = serde_json::from_str(&event.to_json_pretty()).unwrap();
        assert_eq!(pretty, event.to_json());
    }
}

#[test]
fn the_stored_form_is_the_documented_form_without_what_the_log_keeps() {
    for event in samples() {
        let stored: Value = serde_json::from_slice(&event.stored.encode()).unwrap();
        let mut documented = event.to_json();
        let object = documented.as_object_mut().unwrap();
        for member in ["position", "callId", "version"] {
            assert!(object.remove(member).is_some(), "{member} is documented");
        }
        assert_eq!(stored, documented);
    }
}

#[test]
fn members_are_written_in_the_documented_order() {
    let event = event(
        EventBody::CallStateChanged {
            previous_state: Some("ringing".into()),
            changes: everything(),
        },
        Some("key"),
    );
    let text = String::from_utf8(event.to_json_bytes()).unwrap();
    let order = [
        "\"schemaVersion\":1,\"type\":\"CallStateChanged\",\"position\":42,\"callId\":7,\"version\":3,\"eventId\":",
        "\"idempotencyKey\":\"key\",\"occurredAt\":",
        "\"recordedAt\":",
        "\"actor\":\"dialer\",\"data\":{\"previousState\":\"ringing\",\"attributes\":{\"answeredAt\":",
        "\"relationships\":{\"associatedId\":",
        "\"dataConnections\":[{\"connection\":\"salesforce\",\"type\":\"Task\",\"id\":\"00T1\",\"url\":",
    ];
    let mut from = 0;
    for part in order {
        let at = text[from..]
            .find(part)
            .unwrap_or_else(|| panic!("{part} after {from} in {text}"));
        from += at + part.len();
    }
    let stored = String::from_utf8(event.stored.encode()).unwrap();
    assert!(stored.starts_with("{\"schemaVersion\":1,\"type\":\"CallStateChanged\",\"eventId\":"));
}

#[test]
fn timestamps_are_written_in_utc_with_milliseconds() {
    let json = samples()[0].to_json();
    assert_eq!(json["occurredAt"], "2025-01-13T12:47:30.999Z");
    assert_eq!(json["recordedAt"], "2025-01-13T12:47:31.000Z");
    assert_eq!(
        json["data"]["attributes"]["answeredAt"],
        "2025-01-13T11:47:31.500Z"
    );
    assert_eq!(
        json["data"]["attributes"]["dialedAt"],
        "1970-01-01T00:00:00.000Z"
    );
}

#[test]
fn data_lists_only_the_named_members_with_null_for_cleared() {
    let created = event(EventBody::CallCreated(Changes::default()), None).to_json();
    assert_eq!(created["data"], json!({}));
    assert_eq!(created["idempotencyKey"], Value::Null);
    let deleted = event(EventBody::CallDeleted, None).to_json();
    assert_eq!(deleted["data"], json!({}));
    let updated = event(
        EventBody::CallUpdated(changes(
            json!({"note": null, "outcome": "Answered"}),
            json!({"task": {"data": null}}),
            json!({}),
        )),
        None,
    )
    .to_json();
    assert_eq!(
        updated["data"],
        json!({"attributes": {"note": null, "outcome": "Answered"}, "relationships": {"task": null}})
    );
    let state = event(
        EventBody::CallStateChanged {
            previous_state: None,
            changes: changes(json!({"state": "ringing"}), json!({}), json!({})),
        },
        None,
    )
    .to_json();
    assert_eq!(
        state["data"],
        json!({"previousState": null, "attributes": {"state": "ringing"}})
    );
}

#[test]
fn readers_ignore_members_they_do_not_know() {
    let event = samples().remove(0);
    let mut json = event.to_json();
    json["addedLater"] = json!({"x": 1});
    json["data"]["addedLater"] = json!(1);
    json["data"]["attributes"]["addedLater"] = json!("x");
    json["data"]["relationships"]["addedLater"] = json!({"type": "x", "id": 1});
    json["data"]["dataConnections"][0]["addedLater"] = json!(true);
    assert_eq!(Event::from_json(&json).unwrap(), event);
    let bytes = serde_json::to_vec(&json).unwrap();
    assert_eq!(Event::decode(42, 7, 3, &bytes).unwrap(), event);
}

/// A change made to a good event's JSON.
type Edit = fn(&mut Value);

#[test]
fn readers_refuse_what_they_cannot_read() {
    let good = samples().remove(4).to_json();
    let edits: Vec<(&str, Edit)> = vec![
        ("newer schema", |j| {
            j["schemaVersion"] = json!(SCHEMA_VERSION + 1)
        }),
        ("schema 0", |j| j["schemaVersion"] = json!(0)),
        ("no schema", |j| {
            j.as_object_mut().unwrap().remove("schemaVersion");
        }),
        ("unknown type", |j| j["type"] = json!("CallArchived")),
        ("bad event id", |j| j["eventId"] = json!("nope")),
        ("bad time", |j| j["recordedAt"] = json!("yesterday")),
        ("no actor", |j| {
            j.as_object_mut().unwrap().remove("actor");
        }),
        ("no data", |j| {
            j.as_object_mut().unwrap().remove("data");
        }),
        ("data not an object", |j| j["data"] = json!([])),
        ("no previousState", |j| {
            j["data"].as_object_mut().unwrap().remove("previousState");
        }),
        ("previousState a number", |j| {
            j["data"]["previousState"] = json!(1)
        }),
        ("attribute of the wrong type", |j| {
            j["data"]["attributes"]["note"] = json!(1)
        }),
        ("unparseable time", |j| {
            j["data"]["attributes"]["answeredAt"] = json!("x")
        }),
        ("bad relationship", |j| {
            j["data"]["relationships"]["prospect"] = json!(5)
        }),
        ("bad connections", |j| {
            j["data"]["dataConnections"] = json!({})
        }),
    ];
    for (what, edit) in edits {
        let mut json = good.clone();
        edit(&mut json);
        assert!(
            Event::from_json(&json).is_err(),
            "from_json accepted {what}"
        );
        let bytes = serde_json::to_vec(&json).unwrap();
        let error = Event::decode(42, 7, 3, &bytes).expect_err(what);
        assert_eq!(error.position, 42);
        assert!(!error.reason.is_empty());
    }
    let newer = {
        let mut json = good.clone();
        json["schemaVersion"] = json!(SCHEMA_VERSION + 1);
        serde_json::to_vec(&json).unwrap()
    };
    let reason = Event::decode(1, 1, 1, &newer).unwrap_err().reason;
    assert!(reason.contains("newer"), "{reason}");
    for payload in [&b""[..], b"null", b"[]", b"{", b"\xff\xfe", b"{}"] {
        assert!(Event::decode(1, 1, 1, payload).is_err());
    }
}

#[test]
fn from_json_requires_the_place_in_the_log() {
    for member in ["position", "callId", "version"] {
        let mut json = samples().remove(0).to_json();
        json.as_object_mut().unwrap().remove(member);
        let error = Event::from_json(&json).unwrap_err();
        assert!(error.reason.contains("required"), "{}", error.reason);
    }
}

#[test]
fn event_types_are_named_as_in_the_json() {
    for (event, name) in samples().iter().zip([
        "CallCreated",
        "CallCreated",
        "CallUpdated",
        "CallUpdated",
        "CallStateChanged",
        "CallStateChanged",
        "CallDeleted",
    ]) {
        assert_eq!(event.event_type().name(), name);
        assert_eq!(event.to_json()["type"], name);
        assert_eq!(serde_json::to_value(event.event_type()).unwrap(), name);
    }
    assert_eq!(EventType::CallDeleted.name(), "CallDeleted");
}

#[test]
fn changes_survive_their_json() {
    let changes = everything();
    assert_eq!(Changes::from_json(&changes.to_json()), Some(changes));
    assert_eq!(Changes::from_json(&json!({})), Some(Changes::default()));
    assert_eq!(Changes::from_json(&json!([])), None);
}

#[test]
fn data_is_read_from_the_bytes_with_escapes_and_names_what_is_wrong() {
    let event = samples().remove(0);
    let text = serde_json::to_string(&event.to_json()).unwrap();
    // A member name written with an escape is the same name.
    let escaped = text.replacen("\"attributes\"", "\"attr\\u0069butes\"", 1);
    assert_ne!(escaped, text);
    assert_eq!(Event::decode(42, 7, 3, escaped.as_bytes()).unwrap(), event);
    // So is an attribute's or a relationship's name, and a date-time with an escape in it.
    let text = String::from_utf8(event.stored.encode()).unwrap();
    let escaped = text
        .replacen("\"dialedAt\"", "\"di\\u0061ledAt\"", 1)
        .replacen("\"prospect\"", "\"\\u0070rospect\"", 1)
        .replacen("\"1970-01-01T", "\"1970\\u002d01-01T", 1);
    assert_eq!(escaped.matches("\\u00").count(), 3, "{escaped}");
    assert_eq!(Event::decode(42, 7, 3, escaped.as_bytes()).unwrap(), event);
    // A relationship's value is an identifier or an array of them; anything else names it.
    for (value, what) in [
        (json!("prospect"), "a string"),
        (json!({"type": "prospect"}), "no id"),
    ] {
        let mut json = event.to_json();
        json["data"]["relationships"]["prospect"] = value;
        let bytes = serde_json::to_vec(&json).unwrap();
        let reason = Event::decode(42, 7, 3, &bytes).unwrap_err().reason;
        assert!(
            reason.contains("relationships/prospect"),
            "{what}: {reason}"
        );
    }
    let mut json = event.to_json();
    json["data"]["attributes"]["note"] = json!(["not", "a", "note"]);
    let bytes = serde_json::to_vec(&json).unwrap();
    let reason = Event::decode(42, 7, 3, &bytes).unwrap_err().reason;
    assert!(reason.contains("attributes/note"), "{reason}");
}
