//! The events of a call and their envelope, and their JSON: the long-term record, documented in
//! docs/events.md and pinned by golden files.

use crate::call::CallId;
use crate::event_data::{DataIn, PreviousState};
use crate::field_map::FieldMap;
use crate::fields::{AttrValue, RelValue, Relation};
use crate::input::Changes;
use crate::time::Timestamp;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The version of the event JSON this crate writes. Readers accept every version from 1 up to
/// it, upcasting older ones on read.
pub const SCHEMA_VERSION: u32 = 1;

/// The four kinds of event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// A call was created.
    CallCreated,
    /// Attributes, relationships or data connections other than `state` changed.
    CallUpdated,
    /// `state` changed, with whatever else changed in the same command.
    CallStateChanged,
    /// The call was deleted.
    CallDeleted,
}

impl EventType {
    /// The name used in the JSON and in NATS subjects.
    pub fn name(self) -> &'static str {
        match self {
            EventType::CallCreated => "CallCreated",
            EventType::CallUpdated => "CallUpdated",
            EventType::CallStateChanged => "CallStateChanged",
            EventType::CallDeleted => "CallDeleted",
        }
    }
}

/// What an event says happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventBody {
    /// The call's initial members (never null ones).
    CallCreated(Changes),
    /// The members that changed; `state` is not among them.
    CallUpdated(Changes),
    /// `state` changed from `previous_state`; `changes` includes the new `state`.
    CallStateChanged {
        /// The state before.
        previous_state: Option<String>,
        /// Every member that changed, `state` included.
        changes: Changes,
    },
    /// The call is gone.
    CallDeleted,
}

impl EventBody {
    /// Its type.
    pub fn event_type(&self) -> EventType {
        match self {
            EventBody::CallCreated(_) => EventType::CallCreated,
            EventBody::CallUpdated(_) => EventType::CallUpdated,
            EventBody::CallStateChanged { .. } => EventType::CallStateChanged,
            EventBody::CallDeleted => EventType::CallDeleted,
        }
    }

    /// Reads an event's `data` (already upcast to the current schema version).
    fn from_data(event_type: EventType, data: DataIn) -> Result<EventBody, String> {
        Ok(match event_type {
            EventType::CallCreated => EventBody::CallCreated(data.changes),
            EventType::CallUpdated => EventBody::CallUpdated(data.changes),
            EventType::CallStateChanged => {
                let previous_state = match data.previous_state {
                    PreviousState::Null => None,
                    PreviousState::Text(state) => Some(state),
                    PreviousState::Other => {
                        return Err("previousState must be a string or null".into())
                    }
                    PreviousState::Missing => return Err("previousState is missing".into()),
                };
                EventBody::CallStateChanged {
                    previous_state,
                    changes: data.changes,
                }
            }
            EventType::CallDeleted => EventBody::CallDeleted,
        })
    }
}

/// An event as it is stored in the log: everything but what the log itself assigns (position,
/// call id, version), which the log keeps beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Unique id (UUID v7); the gateway publishes each event under it, so a re-publish is known.
    pub event_id: Uuid,
    /// The idempotency key of the command that produced it.
    pub idempotency_key: Option<String>,
    /// When the writer says it happened (defaults to `recorded_at`).
    pub occurred_at: Timestamp,
    /// When the ledger recorded it.
    pub recorded_at: Timestamp,
    /// Who wrote it (the token's name, or the producer).
    pub actor: String,
    /// What happened.
    pub body: EventBody,
}

/// An event with its place in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Global position in the log, from 1, gap-free.
    pub position: u64,
    /// The call it belongs to.
    pub call_id: CallId,
    /// Its version in the call's stream, from 1.
    pub version: u64,
    /// The rest.
    pub stored: StoredEvent,
}

/// Why stored bytes are not an event this version understands.
#[derive(Debug, thiserror::Error)]
#[error("event at position {position} cannot be read: {reason}")]
pub struct EventDecodeError {
    /// Where it is (0 when the event was read from its JSON form without a valid position).
    pub position: u64,
    /// What is wrong.
    pub reason: String,
}

/// The documented JSON form as written, members in the documented order.
///
/// Written through `Serialize` rather than built as a `serde_json::Value`: a `Value`'s member
/// order depends on whether some crate in the build enables serde_json's `preserve_order`, and
/// the record must not change with the build.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeOut<'a> {
    schema_version: u32,
    #[serde(rename = "type")]
    event_type: EventType,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    call_id: Option<CallId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    event_id: Uuid,
    idempotency_key: &'a Option<String>,
    occurred_at: Timestamp,
    recorded_at: Timestamp,
    actor: &'a str,
    data: DataOut<'a>,
}

/// The documented JSON form as read: members in any order; members this version does not know
/// are ignored, because adding an optional member is a compatible change (docs/events.md).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeIn {
    schema_version: u32,
    #[serde(rename = "type")]
    event_type: EventType,
    position: Option<u64>,
    call_id: Option<CallId>,
    version: Option<u64>,
    event_id: Uuid,
    idempotency_key: Option<String>,
    occurred_at: Timestamp,
    recorded_at: Timestamp,
    actor: String,
    data: DataIn,
}

/// An event's `data`: `previousState` (CallStateChanged only), then the changed members.
struct DataOut<'a>(&'a EventBody);

impl Serialize for DataOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self.0 {
            EventBody::CallCreated(changes) | EventBody::CallUpdated(changes) => {
                write_changes(&mut map, changes)?;
            }
            EventBody::CallStateChanged {
                previous_state,
                changes,
            } => {
                map.serialize_entry("previousState", previous_state)?;
                write_changes(&mut map, changes)?;
            }
            EventBody::CallDeleted => {}
        }
        map.end()
    }
}

/// `Changes` as the events write them: only the named members, `null` where cleared.
pub(crate) struct ChangesOut<'a>(pub(crate) &'a Changes);

/// A `Changes` serializes as the events write it, the text of [`Changes::to_json`] (which
/// builds a `Value` first); straight to a writer it costs no allocation per member.
impl Serialize for Changes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ChangesOut(self).serialize(serializer)
    }
}

impl Serialize for ChangesOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        write_changes(&mut map, self.0)?;
        map.end()
    }
}

fn write_changes<M: SerializeMap>(map: &mut M, changes: &Changes) -> Result<(), M::Error> {
    if !changes.attributes.is_empty() {
        map.serialize_entry("attributes", &AttributesOut(&changes.attributes))?;
    }
    if !changes.relationships.is_empty() {
        map.serialize_entry("relationships", &RelationshipsOut(&changes.relationships))?;
    }
    if let Some(connections) = &changes.data_connections {
        map.serialize_entry("dataConnections", connections)?;
    }
    Ok(())
}

/// Attributes in the order of [`Field`] (alphabetical).
struct AttributesOut<'a>(&'a FieldMap<Option<AttrValue>>);

impl Serialize for AttributesOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .map(|(field, value)| (field.name(), value.as_ref())),
        )
    }
}

/// Relationships in the order of [`Relation`] (alphabetical).
struct RelationshipsOut<'a>(&'a BTreeMap<Relation, Option<RelValue>>);

impl Serialize for RelationshipsOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .map(|(relation, value)| (relation.name(), value)),
        )
    }
}

/// Brings an older event's JSON up to [`SCHEMA_VERSION`], one version at a time.
///
/// Version 1 is the first, so there is nothing to upcast yet. When version 2 comes, add an arm
/// `1 => { event = v1_to_v2(event); 2 }` and keep it forever: the log is never rewritten.
fn upcast(event: Value) -> Result<Value, String> {
    let version = event
        .get("schemaVersion")
        .and_then(Value::as_u64)
        .ok_or("schemaVersion is missing or not an integer")?;
    if version > u64::from(SCHEMA_VERSION) {
        return Err(format!(
            "schema version {version} is newer than this build understands ({SCHEMA_VERSION})"
        ));
    }
    if version != u64::from(SCHEMA_VERSION) {
        return Err(format!("schema version {version} never existed"));
    }
    Ok(event)
}

impl EnvelopeIn {
    /// Parses the bytes, taking the upcasting path only when the fast path does not fit.
    fn read(payload: &[u8]) -> Result<EnvelopeIn, String> {
        // The payload's UTF-8 is checked once, as a whole, rather than string by string.
        let fast = match std::str::from_utf8(payload) {
            Ok(text) => serde_json::from_str::<EnvelopeIn>(text),
            Err(_) => serde_json::from_slice::<EnvelopeIn>(payload),
        };
        match fast {
            Ok(envelope) if envelope.schema_version == SCHEMA_VERSION => Ok(envelope),
            fast => {
                let value: Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
                Self::read_value(value, fast.err())
            }
        }
    }

    fn read_value(
        value: Value,
        fast_error: Option<serde_json::Error>,
    ) -> Result<EnvelopeIn, String> {
        if !value.is_object() {
            return Err("expected a JSON object".into());
        }
        let value = upcast(value)?;
        match fast_error {
            // The current version failed for a reason of its own; say which.
            Some(error) if value.get("schemaVersion") == Some(&Value::from(SCHEMA_VERSION)) => {
                Err(error.to_string())
            }
            _ => serde_json::from_value(value).map_err(|e| e.to_string()),
        }
    }

    fn into_event(self, position: u64, call_id: CallId, version: u64) -> Result<Event, String> {
        let body = EventBody::from_data(self.event_type, self.data)
            .map_err(|reason| format!("malformed data for {}: {reason}", self.event_type.name()))?;
        Ok(Event {
            position,
            call_id,
            version,
            stored: StoredEvent {
                event_id: self.event_id,
                idempotency_key: self.idempotency_key,
                occurred_at: self.occurred_at,
                recorded_at: self.recorded_at,
                actor: self.actor,
                body,
            },
        })
    }
}

impl StoredEvent {
    fn envelope(&self, place: Option<(u64, CallId, u64)>) -> EnvelopeOut<'_> {
        EnvelopeOut {
            schema_version: SCHEMA_VERSION,
            event_type: self.body.event_type(),
            position: place.map(|p| p.0),
            call_id: place.map(|p| p.1),
            version: place.map(|p| p.2),
            event_id: self.event_id,
            idempotency_key: &self.idempotency_key,
            occurred_at: self.occurred_at,
            recorded_at: self.recorded_at,
            actor: &self.actor,
            data: DataOut(&self.body),
        }
    }

    /// The bytes the log stores: the event JSON without the members the log assigns (position,
    /// callId, version), in the documented member order.
    pub fn encode(&self) -> Vec<u8> {
        // A created call's event is some 600 bytes: starting there saves the buffer's seven
        // doublings (each a copy) from serde_json's empty `Vec`.
        let mut bytes = Vec::with_capacity(ENCODED_EVENT_BYTES);
        // Serialising these types into a Vec cannot fail: every map key is a string.
        match serde_json::to_writer(&mut bytes, &self.envelope(None)) {
            Ok(()) => bytes,
            Err(_) => Vec::new(),
        }
    }
}

/// What [`StoredEvent::encode`] reserves for an event's bytes.
const ENCODED_EVENT_BYTES: usize = 768;

impl Event {
    /// Reads an event from the log's record: the bytes [`StoredEvent::encode`] wrote (or those of
    /// an older schema version, upcast), with the place the log keeps beside them.
    pub fn decode(
        position: u64,
        call_id: CallId,
        version: u64,
        payload: &[u8],
    ) -> Result<Event, EventDecodeError> {
        let fail = |reason: String| EventDecodeError { position, reason };
        EnvelopeIn::read(payload)
            .and_then(|envelope| envelope.into_event(position, call_id, version))
            .map_err(fail)
    }

    /// Reads the documented JSON form (as written by [`Event::to_json`]); `position`, `callId`
    /// and `version` are required.
    pub fn from_json(value: &Value) -> Result<Event, EventDecodeError> {
        let position = value.get("position").and_then(Value::as_u64).unwrap_or(0);
        let fail = |reason: String| EventDecodeError { position, reason };
        let envelope = match EnvelopeIn::deserialize(value) {
            Ok(envelope) if envelope.schema_version == SCHEMA_VERSION => Ok(envelope),
            fast => EnvelopeIn::read_value(value.clone(), fast.err()),
        }
        .map_err(fail)?;
        let (Some(position), Some(call_id), Some(version)) =
            (envelope.position, envelope.call_id, envelope.version)
        else {
            return Err(fail("position, callId and version are required".into()));
        };
        envelope
            .into_event(position, call_id, version)
            .map_err(fail)
    }

    /// The documented JSON form as a value: what `export` writes and what is published on NATS.
    ///
    /// A `Value` does not keep member order; write [`Event::to_json_bytes`] or
    /// [`Event::to_json_pretty`] where the text matters.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.envelope()).unwrap_or(Value::Null)
    }

    /// The documented JSON form as compact text, members in the documented order: one line of
    /// `callledger export`, the payload published on NATS.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.envelope()).unwrap_or_default()
    }

    /// The documented JSON form pretty-printed (two-space indent), as in the golden files and
    /// docs/events.md.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.envelope()).unwrap_or_default()
    }

    /// Its type.
    pub fn event_type(&self) -> EventType {
        self.stored.body.event_type()
    }

    fn envelope(&self) -> EnvelopeOut<'_> {
        self.stored
            .envelope(Some((self.position, self.call_id, self.version)))
    }
}
