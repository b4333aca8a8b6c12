//! The stored form of a view, written and read without an intermediate `serde_json::Value`.
//!
//! This is the one home of the stored form: `{"id","version","position","attributes",
//! "relationships","dataConnections"}`, attributes in their API JSON. The tests pin it against
//! a plain `serde_json::Value` spelling of the same form. Going through `Value` costs most of a
//! rebuild's time and of a page's row reads: every member becomes an allocated node of an
//! ordered map first. Serialising straight from the `Call`, and deserialising straight into one,
//! is several times cheaper.

use call_model::{
    AttrKind, AttrValue, Call, DataConnection, Field, RelValue, Relation, ResourceRef, Timestamp,
};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// The stored JSON of `call`.
pub(crate) fn encode(call: &Call) -> Vec<u8> {
    let mut out = Vec::with_capacity(768);
    // Writing to a Vec fails only if a Serialize impl fails, and these cannot.
    let _ = serde_json::to_writer(&mut out, &Stored(call));
    out
}

/// Reads the stored JSON of a call.
pub(crate) fn decode(bytes: &[u8]) -> Result<Call, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let call = StoredCall::deserialize(&mut deserializer).map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(call.0)
}

struct Stored<'a>(&'a Call);

impl Serialize for Stored<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let call = self.0;
        let mut map = serializer.serialize_map(Some(6))?;
        map.serialize_entry("id", &call.id)?;
        map.serialize_entry("version", &call.version)?;
        map.serialize_entry("position", &call.position)?;
        map.serialize_entry("attributes", &Attributes(&call.attributes))?;
        map.serialize_entry("relationships", &Relationships(&call.relationships))?;
        map.serialize_entry("dataConnections", &call.data_connections)?;
        map.end()
    }
}

struct Attributes<'a>(&'a BTreeMap<Field, AttrValue>);

impl Serialize for Attributes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (field, value) in self.0 {
            map.serialize_entry(field.name(), value)?;
        }
        map.end()
    }
}

struct Relationships<'a>(&'a BTreeMap<Relation, RelValue>);

impl Serialize for Relationships<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (relation, value) in self.0 {
            map.serialize_entry(relation.name(), value)?;
        }
        map.end()
    }
}

struct StoredCall(Call);

/// A member name, matched without allocating.
enum Member {
    Id,
    Version,
    Position,
    Attributes,
    Relationships,
    DataConnections,
    Other,
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MemberVisitor;
        impl Visitor<'_> for MemberVisitor {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Member, E> {
                Ok(match name {
                    "id" => Member::Id,
                    "version" => Member::Version,
                    "position" => Member::Position,
                    "attributes" => Member::Attributes,
                    "relationships" => Member::Relationships,
                    "dataConnections" => Member::DataConnections,
                    // Members it does not know are ignored, so that a newer writer's row stays readable.
                    _ => Member::Other,
                })
            }
        }
        deserializer.deserialize_str(MemberVisitor)
    }
}

impl<'de> Deserialize<'de> for StoredCall {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CallVisitor;
        impl<'de> Visitor<'de> for CallVisitor {
            type Value = StoredCall;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a stored call")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StoredCall, A::Error> {
                let (mut id, mut version, mut position) = (None, None, None);
                let (mut attributes, mut relationships, mut connections) = (None, None, None);
                while let Some(member) = map.next_key::<Member>()? {
                    match member {
                        Member::Id => id = Some(map.next_value::<u64>()?),
                        Member::Version => version = Some(map.next_value::<u64>()?),
                        Member::Position => position = Some(map.next_value::<u64>()?),
                        Member::Attributes => {
                            attributes = Some(map.next_value::<StoredAttributes>()?.0)
                        }
                        Member::Relationships => {
                            relationships = Some(map.next_value::<StoredRelationships>()?.0)
                        }
                        Member::DataConnections => {
                            connections = Some(map.next_value::<Vec<DataConnection>>()?)
                        }
                        Member::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let missing = de::Error::missing_field;
                Ok(StoredCall(Call {
                    id: id.ok_or_else(|| missing("id"))?,
                    version: version.ok_or_else(|| missing("version"))?,
                    position: position.ok_or_else(|| missing("position"))?,
                    attributes: attributes.ok_or_else(|| missing("attributes"))?,
                    relationships: relationships.ok_or_else(|| missing("relationships"))?,
                    data_connections: connections.ok_or_else(|| missing("dataConnections"))?,
                }))
            }
        }
        deserializer.deserialize_map(CallVisitor)
    }
}

struct StoredAttributes(BTreeMap<Field, AttrValue>);

impl<'de> Deserialize<'de> for StoredAttributes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AttributesVisitor;
        impl<'de> Visitor<'de> for AttributesVisitor {
            type Value = StoredAttributes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the attributes of a stored call")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<StoredAttributes, A::Error> {
                let mut attributes = BTreeMap::new();
                while let Some(NamedField(field)) = map.next_key()? {
                    let value = map.next_value_seed(AttributeSeed(field))?;
                    attributes.insert(field, value);
                }
                Ok(StoredAttributes(attributes))
            }
        }
        deserializer.deserialize_map(AttributesVisitor)
    }
}

/// An attribute name; unknown names are an error.
struct NamedField(Field);

impl<'de> Deserialize<'de> for NamedField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = NamedField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an attribute name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<NamedField, E> {
                Field::from_name(name)
                    .map(NamedField)
                    .ok_or_else(|| E::custom(format!("unknown attribute {name:?}")))
            }
        }
        deserializer.deserialize_str(FieldVisitor)
    }
}

/// Reads one attribute's value as its field's kind says.
struct AttributeSeed(Field);

impl<'de> DeserializeSeed<'de> for AttributeSeed {
    type Value = AttrValue;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<AttrValue, D::Error> {
        Ok(match self.0.kind() {
            AttrKind::Time => AttrValue::Time(
                deserializer.deserialize_str(StrWith("an RFC 3339 date-time", |text: &str| {
                    Timestamp::parse(text).map_err(|e| e.to_string())
                }))?,
            ),
            AttrKind::Text { .. } | AttrKind::Enum(_) => {
                AttrValue::Text(String::deserialize(deserializer)?)
            }
            AttrKind::Bool => AttrValue::Bool(bool::deserialize(deserializer)?),
            AttrKind::Tags => AttrValue::Tags(Vec::<String>::deserialize(deserializer)?),
        })
    }
}

struct StoredRelationships(BTreeMap<Relation, RelValue>);

impl<'de> Deserialize<'de> for StoredRelationships {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RelationshipsVisitor;
        impl<'de> Visitor<'de> for RelationshipsVisitor {
            type Value = StoredRelationships;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the relationships of a stored call")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<StoredRelationships, A::Error> {
                let mut relationships = BTreeMap::new();
                let name = || {
                    StrWith("a relationship name", |name: &str| {
                        Relation::from_name(name)
                            .ok_or_else(|| format!("unknown relationship {name:?}"))
                    })
                };
                while let Some(relation) = map.next_key_seed(name())? {
                    relationships.insert(relation, map.next_value::<StoredRelValue>()?.0);
                }
                Ok(StoredRelationships(relationships))
            }
        }
        deserializer.deserialize_map(RelationshipsVisitor)
    }
}

/// A relationship's value: an object for a to-one, an array for a to-many. Read directly rather
/// than through `RelValue`'s untagged derive, which buffers every value first.
struct StoredRelValue(RelValue);

impl<'de> Deserialize<'de> for StoredRelValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RelVisitor;
        impl<'de> Visitor<'de> for RelVisitor {
            type Value = StoredRelValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a resource reference or a list of them")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StoredRelValue, A::Error> {
                let target = ResourceRef::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(StoredRelValue(RelValue::One(target)))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<StoredRelValue, A::Error> {
                let targets =
                    Vec::<ResourceRef>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(StoredRelValue(RelValue::Many(targets)))
            }
        }
        deserializer.deserialize_any(RelVisitor)
    }
}

/// Reads a string (borrowed or not, so escapes cost nothing extra) and converts it at once,
/// without allocating.
struct StrWith<F>(&'static str, F);

impl<'de, T, F: FnOnce(&str) -> Result<T, String>> DeserializeSeed<'de> for StrWith<F> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for StrWith<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.1)(text).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varied_calls() -> Vec<Call> {
        let mut full = Call {
            id: 7,
            version: 3,
            position: 42,
            attributes: BTreeMap::new(),
            relationships: BTreeMap::new(),
            data_connections: vec![DataConnection {
                connection: Some("crm".into()),
                kind: None,
                id: Some("a\"b".into()),
                url: None,
            }],
        };
        for field in Field::ALL {
            let value = match field.kind() {
                AttrKind::Time => AttrValue::Time(Timestamp::from_millis(1_736_772_451_123)),
                AttrKind::Text { .. } => AttrValue::Text(format!("{field} \"quoted\" \u{e9}\n")),
                AttrKind::Enum(values) => AttrValue::Text(values[0].to_owned()),
                AttrKind::Bool => AttrValue::Bool(false),
                AttrKind::Tags => AttrValue::Tags(vec!["Interested".into(), "".into()]),
            };
            full.attributes.insert(*field, value);
        }
        for relation in Relation::ALL {
            let target = ResourceRef {
                kind: relation.target_types()[0].to_owned(),
                id: -5,
            };
            let value = if relation.is_to_many() {
                RelValue::Many(vec![target.clone(), target])
            } else {
                RelValue::One(target)
            };
            full.relationships.insert(*relation, value);
        }
        let empty = Call {
            id: u64::MAX,
            version: 1,
            position: 1,
            attributes: BTreeMap::new(),
            relationships: BTreeMap::new(),
            data_connections: Vec::new(),
        };
        vec![full, empty]
    }

    /// The stored form spelled with `serde_json::Value`, member by member: what the codec
    /// must write.
    fn stored_json(call: &Call) -> serde_json::Value {
        let attributes: serde_json::Map<String, serde_json::Value> = call
            .attributes
            .iter()
            .map(|(field, value)| (field.name().to_owned(), value.to_json()))
            .collect();
        let relationships: serde_json::Map<String, serde_json::Value> = call
            .relationships
            .iter()
            .map(|(relation, value)| {
                (
                    relation.name().to_owned(),
                    serde_json::to_value(value).expect("relationship"),
                )
            })
            .collect();
        serde_json::json!({
            "id": call.id,
            "version": call.version,
            "position": call.position,
            "attributes": attributes,
            "relationships": relationships,
            "dataConnections": call.data_connections,
        })
    }

    #[test]
    fn writes_the_stored_form_and_reads_it_back() {
        for call in varied_calls() {
            let bytes = encode(&call);
            let ours: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            assert_eq!(ours, stored_json(&call));
            let model = serde_json::to_vec(&stored_json(&call)).expect("json");
            assert_eq!(decode(&model), Ok(call.clone()));
            assert_eq!(decode(&bytes), Ok(call));
        }
    }

    #[test]
    fn refuses_rows_not_of_the_stored_form() {
        let good = serde_json::to_value(
            serde_json::from_slice::<serde_json::Value>(&encode(&varied_calls()[0])).unwrap(),
        )
        .unwrap();
        let mut cases = Vec::new();
        for (pointer, bad) in [
            ("/attributes/answeredAt", serde_json::json!("yesterday")),
            ("/attributes/tags", serde_json::json!("not a list")),
            ("/attributes/shouldRecordCall", serde_json::json!("yes")),
            ("/id", serde_json::json!(-1)),
        ] {
            let mut value = good.clone();
            *value.pointer_mut(pointer).unwrap() = bad;
            cases.push(value);
        }
        let mut unknown = good.clone();
        unknown["attributes"]["colour"] = serde_json::json!("red");
        cases.push(unknown);
        let mut missing = good;
        missing.as_object_mut().unwrap().remove("relationships");
        cases.push(missing);
        for case in cases {
            assert!(
                decode(&serde_json::to_vec(&case).unwrap()).is_err(),
                "{case}"
            );
        }
        for garbage in [&b""[..], b"{", b"[]", b"{\"id\":1}", b"\xff\xfe"] {
            assert!(decode(garbage).is_err());
        }
    }
}
