//! The events of a call and their envelope, and their JSON: the long-term record, documented in
//! docs/events.md and pinned by golden files.

use crate::call::CallId;
use crate::event_data::{DataIn, PreviousState};
use crate::input::Changes;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
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
    /// The bytes the log stores: the event JSON without the members the log assigns (position,
    /// callId, version), in the documented member order.
    pub fn encode(&self) -> Vec<u8> {
        // A created call's event is some 600 bytes: starting there saves the buffer's doublings
        // (each a copy).
        let mut bytes = Vec::with_capacity(ENCODED_EVENT_BYTES);
        crate::event_out::write_event(&mut bytes, self, None);
        bytes
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

    /// The documented JSON form as a value: what `export` writes and what is published on NATS,
    /// read back from [`Event::to_json_bytes`] (members in the documented order: the workspace
    /// builds serde_json with `preserve_order`).
    pub fn to_json(&self) -> Value {
        serde_json::from_slice(&self.to_json_bytes()).unwrap_or(Value::Null)
    }

    /// The documented JSON form as compact text, members in the documented order: one line of
    /// `callledger export`, the payload published on NATS.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(ENCODED_EVENT_BYTES + 64);
        crate::event_out::write_event(
            &mut bytes,
            &self.stored,
            Some((self.position, self.call_id, self.version)),
        );
        bytes
    }

    /// The documented JSON form pretty-printed (two-space indent), as in the golden files and
    /// docs/events.md.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.to_json()).unwrap_or_default()
    }

    /// Its type.
    pub fn event_type(&self) -> EventType {
        self.stored.body.event_type()
    }
}
