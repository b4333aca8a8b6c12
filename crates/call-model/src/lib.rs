//! The Call resource of the Outreach API as a pure domain model: its attributes and relationships,
//! the validation of writes, the commands, the events and their envelope, and `decide`/`evolve`.
//!
//! Architecture invariant: this crate does no I/O, has no async and reads no clock. Time, event ids
//! and the writer's rights come in on the command; the storage and transport crates sit around it.

mod call;
mod call_ref;
mod command;
mod event;
mod event_data;
mod event_out;
mod field_map;
mod fields;
mod input;
mod json_in;
mod relation_map;
mod time;

#[cfg(test)]
mod tests;

pub use call::{Call, CallId, CallState, DataConnection, ResourceRef};
pub use call_ref::{AttrRef, CallRef, ConnectionRef, RelRef, TargetRef};
pub use command::{
    decide, decide_taking, evolve, evolve_owned, replay_stream, Action, Command, DecideError,
};
pub use event::{Event, EventBody, EventDecodeError, EventType, StoredEvent, SCHEMA_VERSION};
pub use field_map::FieldMap;
pub use fields::{AttrKind, AttrValue, Field, Ownership, QueryUse, RelValue, Relation, Text};
pub use input::{
    check_update, check_write, parse_update, parse_write, Changes, Rights, Violation,
    ViolationKind, WriteInput, WriteMode, MAX_DATA_CONNECTIONS, MAX_TAGS,
};
pub use json_in::{JsonIn, Members};
pub use relation_map::RelationMap;
pub use time::{Timestamp, TimestampError};
