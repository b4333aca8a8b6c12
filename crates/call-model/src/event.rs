//! The events of a call and their envelope, and their JSON: the long-term record, documented in
//! docs/events.md and pinned by golden files.

use crate::call::CallId;
use crate::input::Changes;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// The version of the event JSON this crate writes. Readers accept every version up to it.
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

    fn data_json(&self) -> Value {
        match self {
            EventBody::CallCreated(changes) | EventBody::CallUpdated(changes) => changes.to_json(),
            EventBody::CallStateChanged {
                previous_state,
                changes,
            } => {
                let mut data = changes.to_json();
                if let Value::Object(object) = &mut data {
                    object.insert("previousState".into(), json!(previous_state));
                }
                data
            }
            EventBody::CallDeleted => json!({}),
        }
    }

    fn from_data_json(event_type: EventType, data: &Value) -> Option<EventBody> {
        Some(match event_type {
            EventType::CallCreated => EventBody::CallCreated(Changes::from_json(data)?),
            EventType::CallUpdated => EventBody::CallUpdated(Changes::from_json(data)?),
            EventType::CallStateChanged => {
                let mut data = data.clone();
                let previous = data.as_object_mut()?.remove("previousState")?;
                EventBody::CallStateChanged {
                    previous_state: match previous {
                        Value::Null => None,
                        Value::String(state) => Some(state),
                        _ => return None,
                    },
                    changes: Changes::from_json(&data)?,
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
    /// Unique id (UUID v7), also the `Nats-Msg-Id` when it is published.
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
    /// Where it is.
    pub position: u64,
    /// What is wrong.
    pub reason: String,
}

/// The documented JSON form, with its members in the documented order.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EventJson {
    schema_version: u32,
    #[serde(rename = "type")]
    event_type: EventType,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    call_id: Option<CallId>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    version: Option<u64>,
    event_id: Uuid,
    idempotency_key: Option<String>,
    occurred_at: Timestamp,
    recorded_at: Timestamp,
    actor: String,
    data: Value,
}

impl StoredEvent {
    fn to_event_json(&self, place: Option<(u64, CallId, u64)>) -> EventJson {
        EventJson {
            schema_version: SCHEMA_VERSION,
            event_type: self.body.event_type(),
            position: place.map(|p| p.0),
            call_id: place.map(|p| p.1),
            version: place.map(|p| p.2),
            event_id: self.event_id,
            idempotency_key: self.idempotency_key.clone(),
            occurred_at: self.occurred_at,
            recorded_at: self.recorded_at,
            actor: self.actor.clone(),
            data: self.body.data_json(),
        }
    }

    /// The bytes the log stores: the event JSON without the members the log assigns.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_event_json(None)).unwrap_or_default()
    }
}

impl Event {
    /// Reads an event from the log's record.
    pub fn decode(
        position: u64,
        call_id: CallId,
        version: u64,
        payload: &[u8],
    ) -> Result<Event, EventDecodeError> {
        let fail = |reason: String| EventDecodeError { position, reason };
        let json: EventJson = serde_json::from_slice(payload).map_err(|e| fail(e.to_string()))?;
        if json.schema_version > SCHEMA_VERSION {
            return Err(fail(format!(
                "schema version {} is newer than this build understands ({SCHEMA_VERSION})",
                json.schema_version
            )));
        }
        let body = EventBody::from_data_json(json.event_type, &json.data)
            .ok_or_else(|| fail(format!("malformed data for {}", json.event_type.name())))?;
        Ok(Event {
            position,
            call_id,
            version,
            stored: StoredEvent {
                event_id: json.event_id,
                idempotency_key: json.idempotency_key,
                occurred_at: json.occurred_at,
                recorded_at: json.recorded_at,
                actor: json.actor,
                body,
            },
        })
    }

    /// Reads the documented JSON form (as written by [`Event::to_json`]).
    pub fn from_json(value: &Value) -> Result<Event, EventDecodeError> {
        let fail = |reason: String| EventDecodeError {
            position: 0,
            reason,
        };
        let json: EventJson =
            serde_json::from_value(value.clone()).map_err(|e| fail(e.to_string()))?;
        let (Some(position), Some(call_id), Some(version)) =
            (json.position, json.call_id, json.version)
        else {
            return Err(fail("position, callId and version are required".into()));
        };
        let payload = serde_json::to_vec(&json).map_err(|e| fail(e.to_string()))?;
        Event::decode(position, call_id, version, &payload)
    }

    /// The documented JSON form: what `export` writes and what is published on NATS.
    pub fn to_json(&self) -> Value {
        let json = self
            .stored
            .to_event_json(Some((self.position, self.call_id, self.version)));
        serde_json::to_value(json).unwrap_or(Value::Null)
    }

    /// Its type.
    pub fn event_type(&self) -> EventType {
        self.stored.body.event_type()
    }
}
