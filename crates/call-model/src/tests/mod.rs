//! The crate's unit tests: one per validation rule (`validation`), the aggregate in the
//! given/when/then style (`aggregate`), the event JSON (`event_json`) and its golden files
//! (`golden`). They live in the library's own test binary so the crate links one test executable.

mod aggregate;
mod event_json;
mod field_map;
mod golden;
mod relation_map;
mod validation;

use crate::{parse_write, Changes, Rights, Timestamp, WriteMode};
use serde_json::{json, Value};

/// A writer without the voice right.
pub(crate) const ORDINARY: Rights = Rights { voice: false };
/// The telephony system.
pub(crate) const VOICE: Rights = Rights { voice: true };

/// Parses an RFC 3339 date-time that the test knows to be valid.
#[track_caller]
pub(crate) fn ts(text: &str) -> Timestamp {
    Timestamp::parse(text).expect("a valid test timestamp")
}

/// The changes of a create document with these attributes, relationships and data meta, as
/// validated for the telephony system.
#[track_caller]
pub(crate) fn changes(attributes: Value, relationships: Value, meta: Value) -> Changes {
    let document = json!({"data": {
        "type": "call",
        "attributes": attributes,
        "relationships": relationships,
        "meta": meta,
    }});
    parse_write(&document, WriteMode::Create, VOICE)
        .expect("valid test changes")
        .changes
}

/// The changes of a create document naming only attributes.
#[track_caller]
pub(crate) fn attributes(attributes: Value) -> Changes {
    changes(attributes, json!({}), json!({}))
}
