//! A call read in place: its values borrowed from the bytes it was decoded from (or from an owned
//! [`Call`]), for the reads that only render it.
//!
//! A get decodes a stored view and writes it out as a document at once; building an owned
//! `Call` for that (a string per value, a B-tree per map, all freed a moment later) was most of
//! decoding's cost. A `CallRef` holds slices of the stored bytes, and its attributes and
//! relationships in arrays by position, so a lookup is an index rather than a map search.

use crate::call::{Call, CallId, DataConnection, ResourceRef};
use crate::fields::{AttrValue, Field, RelValue, Relation, Text};
use crate::time::Timestamp;
use serde::Serialize;

/// An attribute's value, borrowed; its JSON is the one form of a value (what the API, the events
/// and the stored views write).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrRef<'a> {
    /// A string (plain, URL or one of an enumeration).
    Text(&'a str),
    /// A date-time.
    Time(Timestamp),
    /// A boolean.
    Bool(bool),
    /// A list of tags.
    Tags(Vec<&'a str>),
}

impl Serialize for AttrRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            AttrRef::Text(text) => serializer.serialize_str(text),
            AttrRef::Time(at) => at.serialize(serializer),
            AttrRef::Bool(flag) => serializer.serialize_bool(*flag),
            AttrRef::Tags(tags) => serializer.collect_seq(tags),
        }
    }
}

/// A reference to another resource, borrowed; the same JSON as [`ResourceRef`]'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TargetRef<'a> {
    /// The resource type, e.g. `prospect`.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Its integer id.
    pub id: i64,
}

/// A relationship's value, borrowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelRef<'a> {
    /// A to-one relationship.
    One(TargetRef<'a>),
    /// A to-many relationship (`batches`).
    Many(Vec<TargetRef<'a>>),
}

/// A data connection, borrowed; the same JSON as [`DataConnection`]'s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionRef<'a> {
    /// The name of the connection (e.g. a CRM).
    pub connection: Option<&'a str>,
    /// The external object's type.
    #[serde(rename = "type")]
    pub kind: Option<&'a str>,
    /// The external object's id.
    pub id: Option<&'a str>,
    /// A link to the external object.
    pub url: Option<&'a str>,
}

/// A call whose values are borrowed: what [`Call`] holds, read in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRef<'a> {
    /// The call's id.
    pub id: CallId,
    /// How many events the call's stream holds (its ETag).
    pub version: u64,
    /// The log position of the call's latest event.
    pub position: u64,
    /// By `Field as usize`; `None` is null.
    attributes: [Option<AttrRef<'a>>; Field::ALL.len()],
    /// By `Relation as usize`; `None` is null.
    relationships: [Option<RelRef<'a>>; Relation::ALL.len()],
    /// The call's data connections.
    pub data_connections: Vec<ConnectionRef<'a>>,
}

impl<'a> CallRef<'a> {
    /// A call with no attributes, relationships or data connections yet.
    pub fn new(id: CallId, version: u64, position: u64) -> CallRef<'a> {
        CallRef {
            id,
            version,
            position,
            attributes: std::array::from_fn(|_| None),
            relationships: std::array::from_fn(|_| None),
            data_connections: Vec::new(),
        }
    }

    /// An attribute's value, or `None` for null.
    pub fn attribute(&self, field: Field) -> Option<&AttrRef<'a>> {
        self.attributes[field as usize].as_ref()
    }

    /// A relationship's value, or `None` for null.
    pub fn relationship(&self, relation: Relation) -> Option<&RelRef<'a>> {
        self.relationships[relation as usize].as_ref()
    }

    /// Sets an attribute; returns whether it held a value already.
    pub fn set_attribute(&mut self, field: Field, value: AttrRef<'a>) -> bool {
        self.attributes[field as usize].replace(value).is_some()
    }

    /// Sets a relationship; returns whether it held a value already.
    pub fn set_relationship(&mut self, relation: Relation, value: RelRef<'a>) -> bool {
        self.relationships[relation as usize]
            .replace(value)
            .is_some()
    }

    /// The owned call.
    pub fn to_call(&self) -> Call {
        let attributes = Field::ALL
            .iter()
            .filter_map(|field| {
                let value = match self.attribute(*field)? {
                    AttrRef::Text(text) => AttrValue::Text(Text::from(*text)),
                    AttrRef::Time(at) => AttrValue::Time(*at),
                    AttrRef::Bool(flag) => AttrValue::Bool(*flag),
                    AttrRef::Tags(tags) => {
                        AttrValue::Tags(tags.iter().map(|tag| Text::from(*tag)).collect())
                    }
                };
                Some((*field, value))
            })
            .collect();
        let owned = |target: &TargetRef<'_>| ResourceRef {
            kind: Text::from(target.kind),
            id: target.id,
        };
        let relationships = Relation::ALL
            .iter()
            .filter_map(|relation| {
                let value = match self.relationship(*relation)? {
                    RelRef::One(target) => RelValue::One(owned(target)),
                    RelRef::Many(targets) => RelValue::Many(targets.iter().map(owned).collect()),
                };
                Some((*relation, value))
            })
            .collect();
        let data_connections = self
            .data_connections
            .iter()
            .map(|connection| DataConnection {
                connection: connection.connection.map(str::to_owned),
                kind: connection.kind.map(str::to_owned),
                id: connection.id.map(str::to_owned),
                url: connection.url.map(str::to_owned),
            })
            .collect();
        Call {
            id: self.id,
            version: self.version,
            position: self.position,
            attributes,
            relationships,
            data_connections,
        }
    }
}

impl Call {
    /// This call read in place.
    pub fn borrowed(&self) -> CallRef<'_> {
        let mut call = CallRef::new(self.id, self.version, self.position);
        for (field, value) in &self.attributes {
            call.set_attribute(*field, value.borrowed());
        }
        for (relation, value) in &self.relationships {
            let value = match value {
                RelValue::One(target) => RelRef::One(target_ref(target)),
                RelValue::Many(targets) => RelRef::Many(targets.iter().map(target_ref).collect()),
            };
            call.set_relationship(*relation, value);
        }
        call.data_connections = self
            .data_connections
            .iter()
            .map(|connection| ConnectionRef {
                connection: connection.connection.as_deref(),
                kind: connection.kind.as_deref(),
                id: connection.id.as_deref(),
                url: connection.url.as_deref(),
            })
            .collect();
        call
    }
}

fn target_ref(target: &ResourceRef) -> TargetRef<'_> {
    TargetRef {
        kind: &target.kind,
        id: target.id,
    }
}
