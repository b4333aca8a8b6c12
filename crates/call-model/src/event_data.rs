//! An event's `data` read straight from its bytes: the members every event type may hold,
//! without building a `serde_json::Value` first (which, with the workspace's `preserve_order`,
//! is an ordered map per object: the most of decoding an event, measured in a rebuild).
//!
//! The one reader of that form: [`crate::Changes::from_json`] reads a `Value` with it too.
//! Members it does not know are skipped (an event of a newer version that added an optional
//! member still reads), `null` clears, a value of the wrong kind is an error naming the member.

use crate::call::DataConnection;
use crate::fields::{AttrKind, AttrValue, Field, RelValue, Relation, Text};
use crate::input::Changes;
use crate::time::Timestamp;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// `previousState` as found: absent, `null`, a string, or something else (an error only for
/// the event type that reads it).
#[derive(Debug, Default)]
pub(crate) enum PreviousState {
    #[default]
    Missing,
    Null,
    Text(String),
    Other,
}

/// An event's `data`, as read.
#[derive(Debug, Default)]
pub(crate) struct DataIn {
    pub(crate) previous_state: PreviousState,
    pub(crate) changes: Changes,
}

impl<'de> Deserialize<'de> for DataIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<DataIn, D::Error> {
        deserializer.deserialize_map(DataVisitor)
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = DataIn;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DataIn, A::Error> {
        let mut data = DataIn::default();
        while let Some(key) = map.next_key::<Borrowed>()? {
            match &*key.0 {
                "previousState" => data.previous_state = map.next_value::<PreviousStateIn>()?.0,
                "attributes" => {
                    map.next_value_seed(AttributesSeed(&mut data.changes))?;
                }
                "relationships" => {
                    map.next_value_seed(RelationshipsSeed(&mut data.changes))?;
                }
                "dataConnections" => {
                    let connections = map
                        .next_value::<Vec<DataConnection>>()
                        .map_err(|e| de::Error::custom(format!("dataConnections: {e}")))?;
                    data.changes.data_connections = Some(connections);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(data)
    }
}

/// A member's name, or a string read only to be parsed: borrowed from the bytes where it can
/// be (one with an escape cannot), so that reading it allocates nothing. Allocating every name
/// was a sixth of decoding an event.
pub(crate) struct Borrowed<'de>(pub(crate) Cow<'de, str>);

impl<'de> Deserialize<'de> for Borrowed<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Borrowed<'de>, D::Error> {
        deserializer.deserialize_str(BorrowedVisitor)
    }
}

struct BorrowedVisitor;

impl<'de> Visitor<'de> for BorrowedVisitor {
    type Value = Borrowed<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Borrowed<'de>, E> {
        Ok(Borrowed(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Borrowed<'de>, E> {
        Ok(Borrowed(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Borrowed<'de>, E> {
        Ok(Borrowed(Cow::Owned(text)))
    }
}

struct PreviousStateIn(PreviousState);

impl<'de> Deserialize<'de> for PreviousStateIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PreviousStateVisitor)
    }
}

struct PreviousStateVisitor;

impl<'de> Visitor<'de> for PreviousStateVisitor {
    type Value = PreviousStateIn;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or null")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(PreviousStateIn(PreviousState::Text(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
        Ok(PreviousStateIn(PreviousState::Text(text)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(PreviousStateIn(PreviousState::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(PreviousStateIn(PreviousState::Null))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(PreviousStateIn(PreviousState::Other))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(PreviousStateIn(PreviousState::Other))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(PreviousStateIn(PreviousState::Other))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(PreviousStateIn(PreviousState::Other))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(PreviousStateIn(PreviousState::Other))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(PreviousStateIn(PreviousState::Other))
    }
}

/// `attributes`, into the changes.
struct AttributesSeed<'a>(&'a mut Changes);

impl<'de> DeserializeSeed<'de> for AttributesSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for AttributesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("attributes: an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Borrowed>()? {
            match Field::from_name(&key.0) {
                Some(field) => {
                    let value = map.next_value_seed(AttributeSeed(field)).map_err(|_| {
                        de::Error::custom(format!("attributes/{}: unexpected value", key.0))
                    })?;
                    self.0.attributes.insert(field, value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// One attribute's value, of its field's kind, or `null`.
struct AttributeSeed(Field);

impl<'de> DeserializeSeed<'de> for AttributeSeed {
    type Value = Option<AttrValue>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<AttrValue>, D::Error> {
        Ok(match self.0.kind() {
            AttrKind::Time => match Option::<Borrowed>::deserialize(d)? {
                Some(text) => Some(AttrValue::Time(
                    Timestamp::parse(&text.0).map_err(de::Error::custom)?,
                )),
                None => None,
            },
            AttrKind::Text { .. } | AttrKind::Enum(_) => {
                Option::<Text>::deserialize(d)?.map(AttrValue::Text)
            }
            AttrKind::Bool => Option::<bool>::deserialize(d)?.map(AttrValue::Bool),
            AttrKind::Tags => Option::<Vec<Text>>::deserialize(d)?.map(AttrValue::Tags),
        })
    }
}

/// `relationships`, into the changes.
struct RelationshipsSeed<'a>(&'a mut Changes);

impl<'de> DeserializeSeed<'de> for RelationshipsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RelationshipsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("relationships: an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Borrowed>()? {
            match Relation::from_name(&key.0) {
                Some(relation) => {
                    let value = map
                        .next_value::<Option<RelValue>>()
                        .map_err(|e| de::Error::custom(format!("relationships/{}: {e}", key.0)))?;
                    self.0.relationships.insert(relation, value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}
