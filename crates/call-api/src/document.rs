//! JSON:API documents: the resource object of a call, and the collection and changes documents
//! around a page of them, cut short to fit the server's max payload.

use crate::json::ObjectWriter;
use crate::query::ReadOptions;
use call_model::{CallRef, Field, RelRef, Relation};

/// What the caller may do, for `meta.canWrite` and `meta.canDelete`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Permissions {
    /// Holds `calls.write` (or `calls.all`).
    pub can_write: bool,
    /// Holds `calls.delete` (or `calls.all`).
    pub can_delete: bool,
}

/// The resource object of a call: every attribute (null where unset) and every relationship
/// the fieldset names, `links.self`, and `meta` only when asked for.
pub(crate) fn resource(
    call: &CallRef<'_>,
    read: &ReadOptions,
    self_prefix: &str,
    permissions: Permissions,
) -> String {
    let mut object = ObjectWriter::new();
    write_resource(&mut object, call, read, self_prefix, permissions);
    object.finish()
}

/// A single-resource document, `{"data":<the resource>}`, written in one pass.
pub(crate) fn single(
    call: &CallRef<'_>,
    read: &ReadOptions,
    self_prefix: &str,
    permissions: Permissions,
) -> Vec<u8> {
    let mut document = ObjectWriter::new();
    document.object("data", |object| {
        write_resource(object, call, read, self_prefix, permissions);
    });
    document.finish_bytes()
}

/// Writes the members of [`resource`] into `object`.
fn write_resource(
    object: &mut ObjectWriter,
    call: &CallRef<'_>,
    read: &ReadOptions,
    self_prefix: &str,
    permissions: Permissions,
) {
    object
        .value("type", &"call")
        .value("id", &call.id)
        .object("attributes", |attributes| {
            for field in Field::ALL {
                if read.includes_attribute(*field) {
                    attributes.value(field.name(), &call.attribute(*field));
                }
            }
        })
        .object("relationships", |relationships| {
            for relation in Relation::ALL {
                if read.includes_relationship(*relation) {
                    relationships.object(relation.name(), |object| {
                        relationship(object, *relation, call.relationship(*relation));
                    });
                }
            }
        })
        .object("links", |links| {
            links.value("self", &format_args!("{self_prefix}.api.get.{}", call.id));
        });
    if read.authorization_meta || read.data_connections {
        object.object("meta", |meta| {
            if read.authorization_meta {
                meta.value("canWrite", &permissions.can_write)
                    .value("canDelete", &permissions.can_delete);
            }
            if read.data_connections {
                meta.value("dataConnections", &call.data_connections);
            }
        });
    }
}

/// A relationship object's members: always `data` (null, or an empty list for `batches`), so a
/// client never meets one with neither `data` nor `links`.
fn relationship(object: &mut ObjectWriter, relation: Relation, value: Option<&RelRef<'_>>) {
    match value {
        Some(RelRef::One(target)) if !relation.is_to_many() => object.value("data", target),
        Some(RelRef::Many(targets)) if relation.is_to_many() => object.value("data", targets),
        // A stored value of the other shape cannot be written by call-model; show what it holds.
        Some(RelRef::One(target)) => object.value("data", &[target]),
        Some(RelRef::Many(targets)) => match targets.first() {
            Some(first) => object.value("data", first),
            None => object.raw("data", "null"),
        },
        None if relation.is_to_many() => object.raw("data", "[]"),
        None => object.raw("data", "null"),
    };
}

/// Builds a document of the shape `{"data":[rows],<tail>}` from rows already serialized, where
/// `tail(n)` gives the members after `data` (without braces) when the first `n` rows are kept.
/// Keeps as many rows as fit `budget` bytes, at least one.
pub(crate) fn fit_rows(
    rows: &[String],
    budget: usize,
    mut tail: impl FnMut(usize) -> String,
) -> (usize, Vec<u8>) {
    let assemble = |kept: usize, tail: &str| -> Vec<u8> {
        let size = 12 + rows[..kept].iter().map(|row| row.len() + 1).sum::<usize>() + tail.len();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(b"{\"data\":[");
        for (index, row) in rows[..kept].iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.extend_from_slice(row.as_bytes());
        }
        out.push(b']');
        if !tail.is_empty() {
            out.push(b',');
            out.extend_from_slice(tail.as_bytes());
        }
        out.push(b'}');
        out
    };
    let full_tail = tail(rows.len());
    // A first estimate from the sizes alone, assuming the tail of the full page, then trim until
    // the real document (whose tail may differ) fits.
    let mut kept = 0;
    let mut size = 12 + full_tail.len();
    for row in rows {
        if size + row.len() + 1 > budget && kept > 0 {
            break;
        }
        size += row.len() + 1;
        kept += 1;
    }
    loop {
        let tail = if kept == rows.len() {
            full_tail.clone()
        } else {
            tail(kept)
        };
        let document = assemble(kept, &tail);
        if document.len() <= budget || kept <= 1 {
            return (kept, document);
        }
        kept -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{parse_read, Fieldset};
    use call_model::{AttrValue, Call, DataConnection, FieldMap, RelValue, ResourceRef, Timestamp};
    use serde_json::{json, Value};

    const ALL: Permissions = Permissions {
        can_write: true,
        can_delete: false,
    };

    pub(crate) fn full_call() -> Call {
        let at = Timestamp::parse("2025-01-13T12:47:31Z").unwrap();
        let mut attributes = FieldMap::new();
        for field in Field::ALL {
            let value = match field.kind() {
                call_model::AttrKind::Time => AttrValue::Time(at),
                call_model::AttrKind::Bool => AttrValue::Bool(true),
                call_model::AttrKind::Enum(values) => AttrValue::Text(values[0].into()),
                call_model::AttrKind::Text { url: true, .. } => {
                    AttrValue::Text("https://example.com/r".into())
                }
                call_model::AttrKind::Text { .. } => AttrValue::Text(field.name().into()),
                call_model::AttrKind::Tags => AttrValue::Tags(vec!["Interested".into()]),
            };
            attributes.insert(*field, value);
        }
        let mut relationships = call_model::RelationMap::new();
        for (index, relation) in Relation::ALL.iter().enumerate() {
            let target = ResourceRef {
                kind: relation.target_types()[0].into(),
                id: index as i64 + 1,
            };
            let value = if relation.is_to_many() {
                RelValue::Many(vec![target])
            } else {
                RelValue::One(target)
            };
            relationships.insert(*relation, value);
        }
        Call {
            id: 7,
            version: 3,
            position: 12,
            attributes,
            relationships,
            data_connections: vec![DataConnection {
                connection: Some("salesforce".into()),
                kind: Some("Task".into()),
                id: None,
                url: Some("https://example.com/t".into()),
            }],
        }
    }

    fn parsed(call: &Call, read: &ReadOptions) -> Value {
        serde_json::from_str(&resource(&call.borrowed(), read, "calls", ALL)).unwrap()
    }

    #[test]
    fn members_are_written_in_the_documented_order() {
        let text = resource(
            &bare_call().borrowed(),
            &parse_read("provideAuthorizationMeta=true").unwrap(),
            "calls",
            ALL,
        );
        assert!(
            text.starts_with(r#"{"type":"call","id":8,"attributes":{"answeredAt":null,"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#""relationships":{"associatedId":{"data":null},"batches":{"data":[]},"#
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                r#","links":{"self":"calls.api.get.8"},"meta":{"canWrite":true,"canDelete":false}}"#
            ),
            "{text}"
        );
        let full = resource(
            &full_call().borrowed(),
            &ReadOptions::default(),
            "calls",
            ALL,
        );
        assert!(
            full.contains(r#""prospect":{"data":{"type":"prospect","id":10}}"#),
            "{full}"
        );
        let document = single(
            &full_call().borrowed(),
            &ReadOptions::default(),
            "calls",
            ALL,
        );
        assert_eq!(
            String::from_utf8(document).unwrap(),
            format!(r#"{{"data":{full}}}"#)
        );
    }

    fn bare_call() -> Call {
        Call {
            id: 8,
            version: 1,
            position: 1,
            attributes: FieldMap::new(),
            relationships: Default::default(),
            data_connections: vec![],
        }
    }

    #[test]
    fn a_full_call_has_all_22_attributes_and_15_relationships() {
        let value = parsed(&full_call(), &ReadOptions::default());
        assert_eq!(value["type"], "call");
        assert_eq!(value["id"], 7);
        assert_eq!(value["attributes"].as_object().unwrap().len(), 22);
        assert_eq!(value["relationships"].as_object().unwrap().len(), 15);
        assert_eq!(value["attributes"]["createdAt"], "2025-01-13T12:47:31.000Z");
        assert_eq!(value["attributes"]["tags"], json!(["Interested"]));
        assert_eq!(value["attributes"]["shouldRecordCall"], true);
        assert_eq!(
            value["relationships"]["prospect"],
            json!({"data": {"type": "prospect", "id": 10}})
        );
        assert_eq!(
            value["relationships"]["batches"],
            json!({"data": [{"type": "batch", "id": 2}]})
        );
        assert_eq!(value["links"], json!({"self": "calls.api.get.7"}));
        assert!(value.get("meta").is_none());
    }

    #[test]
    fn an_empty_call_writes_nulls_and_empty_batches() {
        let value = parsed(&bare_call(), &ReadOptions::default());
        let attributes = value["attributes"].as_object().unwrap();
        assert_eq!(attributes.len(), 22);
        assert!(attributes.values().all(Value::is_null));
        let relationships = value["relationships"].as_object().unwrap();
        assert_eq!(relationships.len(), 15);
        for (name, relationship) in relationships {
            let expected = if name == "batches" {
                json!({"data": []})
            } else {
                json!({"data": null})
            };
            assert_eq!(relationship, &expected, "{name}");
        }
    }

    #[test]
    fn sparse_fieldsets_and_meta_flags() {
        let read = parse_read(
            "fields[call]=state,to,prospect&provideAuthorizationMeta=true&provideDataConnections=true",
        )
        .unwrap();
        let value = parsed(&full_call(), &read);
        assert_eq!(value["attributes"], json!({"state": "state", "to": "to"}));
        assert_eq!(
            value["relationships"],
            json!({"prospect": {"data": {"type": "prospect", "id": 10}}})
        );
        assert_eq!(
            value["meta"],
            json!({
                "canWrite": true,
                "canDelete": false,
                "dataConnections": [{"connection": "salesforce", "type": "Task", "id": null, "url": "https://example.com/t"}]
            })
        );
        let none = ReadOptions {
            fields: Some(Fieldset::default()),
            ..ReadOptions::default()
        };
        let value = parsed(&full_call(), &none);
        assert_eq!(value["attributes"], json!({}));
        assert_eq!(value["relationships"], json!({}));
    }

    #[test]
    fn rows_are_cut_to_fit_the_budget() {
        let rows: Vec<String> = (0..10).map(|i| format!("{{\"n\":\"{i:04}\"}}")).collect();
        let tail = |kept: usize| format!("\"links\":{{\"next\":\"after-{kept}\"}}");
        let (kept, document) = fit_rows(&rows, 10_000, tail);
        assert_eq!(kept, 10);
        let value: Value = serde_json::from_slice(&document).unwrap();
        assert_eq!(value["data"].as_array().unwrap().len(), 10);
        assert_eq!(value["links"]["next"], "after-10");
        let (kept, document) = fit_rows(&rows, 80, tail);
        assert!(document.len() <= 80, "{}", document.len());
        assert!((1..10).contains(&kept));
        let value: Value = serde_json::from_slice(&document).unwrap();
        assert_eq!(value["data"].as_array().unwrap().len(), kept);
        assert_eq!(value["links"]["next"], format!("after-{kept}"));
        // One row is kept however small the budget, so paging always progresses.
        let (kept, _) = fit_rows(&rows, 1, tail);
        assert_eq!(kept, 1);
        let (kept, document) = fit_rows(&[], 1, |_| String::new());
        assert_eq!((kept, document), (0, b"{\"data\":[]}".to_vec()));
    }
}
