//! The state of one call as the events leave it: the value `evolve` folds and projections store.

use crate::field_map::FieldMap;
use crate::fields::{AttrValue, Field, RelValue, Relation, Text};
use crate::relation_map::RelationMap;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// A call's id: assigned by the ledger, increasing, never reused.
pub type CallId = u64;

/// A reference to another resource, as in a JSON:API relationship's `data`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceRef {
    /// The resource type, e.g. `prospect`.
    #[serde(rename = "type")]
    pub kind: Text,
    /// Its integer id.
    pub id: i64,
}

/// A connection of a call to an external source, attached under `meta.dataConnections`.
///
/// Reading ignores members it does not know, so that adding one later is a compatible change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataConnection {
    /// The name of the connection (e.g. a CRM).
    #[serde(default)]
    pub connection: Option<String>,
    /// The external object's type.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The external object's id: a string, or null.
    #[serde(default)]
    pub id: Option<String>,
    /// A link to the external object.
    #[serde(default)]
    pub url: Option<String>,
}

/// A live call: everything a read returns about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The call's id.
    pub id: CallId,
    /// How many events the call's stream holds (its ETag).
    pub version: u64,
    /// The log position of the call's latest event.
    pub position: u64,
    /// Every non-null attribute, server-set timestamps included.
    pub attributes: FieldMap<AttrValue>,
    /// Every non-null relationship.
    pub relationships: RelationMap<RelValue>,
    /// The call's data connections.
    pub data_connections: Vec<DataConnection>,
}

/// What the log says of a call id.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum CallState {
    /// No event has been recorded for it.
    #[default]
    Absent,
    /// It exists.
    Live(Call),
    /// It was deleted at this version.
    Deleted {
        /// The call's id.
        id: CallId,
        /// The version of its CallDeleted event.
        version: u64,
    },
}

impl CallState {
    /// The live call, if any.
    pub fn live(&self) -> Option<&Call> {
        match self {
            CallState::Live(call) => Some(call),
            _ => None,
        }
    }

    /// The version of the call's stream (0 when absent).
    pub fn version(&self) -> u64 {
        match self {
            CallState::Absent => 0,
            CallState::Live(call) => call.version,
            CallState::Deleted { version, .. } => *version,
        }
    }
}

impl Call {
    /// An attribute's value, or `None` for null.
    pub fn attribute(&self, field: Field) -> Option<&AttrValue> {
        self.attributes.get(&field)
    }

    /// A date-time attribute's value.
    pub fn time(&self, field: Field) -> Option<Timestamp> {
        match self.attributes.get(&field) {
            Some(AttrValue::Time(at)) => Some(*at),
            _ => None,
        }
    }

    /// A string attribute's value.
    pub fn text(&self, field: Field) -> Option<&str> {
        match self.attributes.get(&field) {
            Some(AttrValue::Text(text)) => Some(text),
            _ => None,
        }
    }

    /// The id a to-one relationship points at.
    pub fn related_id(&self, relation: Relation) -> Option<i64> {
        match self.relationships.get(&relation) {
            Some(RelValue::One(target)) => Some(target.id),
            _ => None,
        }
    }
}
