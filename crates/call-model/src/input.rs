//! Validation of a write: a JSON:API document in, typed [`Changes`] out, or every violation at
//! once, each naming its field by JSON pointer.

use crate::call::{CallId, DataConnection, ResourceRef};
use crate::fields::{AttrKind, AttrValue, Field, Ownership, RelValue, Relation};
use crate::time::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The most tags one call may carry, and the longest tag, in characters.
pub const MAX_TAGS: usize = 100;
/// The longest tag, in characters.
pub const MAX_TAG_CHARS: usize = 255;
/// The most data connections one call may carry.
pub const MAX_DATA_CONNECTIONS: usize = 100;
/// The longest string member of a data connection, in characters.
pub const MAX_DATA_CONNECTION_CHARS: usize = 1024;

/// What the writer may do beyond ordinary writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rights {
    /// The telephony system's right: may write `state`, `uid`, `voicemailRecordingUrl` and
    /// `associatedId`.
    pub voice: bool,
}

/// Whether the document creates a call or patches an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// A new call: no `id` allowed.
    Create,
    /// A change to this call: `data.id`, when present, must name it.
    Update(CallId),
}

/// Why a violation was raised, so the edge can choose Outreach's error id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ViolationKind {
    /// Any broken rule but length (`validationError`).
    Invalid,
    /// A value longer than allowed (`validationDataTooLongError`).
    TooLong,
}

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer of the offending member, e.g. `/data/attributes/direction`.
    pub pointer: String,
    /// What kind of rule it broke.
    pub kind: ViolationKind,
    /// What was expected, in a sentence.
    pub detail: String,
}

/// The members a write changes: `None` clears a member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Attributes to set (`Some`) or clear (`None`).
    pub attributes: BTreeMap<Field, Option<AttrValue>>,
    /// Relationships to set (`Some`) or clear (`None`).
    pub relationships: BTreeMap<Relation, Option<RelValue>>,
    /// The complete new list of data connections, when the write names it.
    pub data_connections: Option<Vec<DataConnection>>,
}

/// A validated write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteInput {
    /// What it changes.
    pub changes: Changes,
    /// When the writer says the change happened (`meta.occurredAt`).
    pub occurred_at: Option<Timestamp>,
}

impl Changes {
    /// Whether nothing is named.
    pub fn is_empty(&self) -> bool {
        self.attributes.is_empty()
            && self.relationships.is_empty()
            && self.data_connections.is_none()
    }

    /// The JSON the events store: only the named members, `null` where cleared.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        if !self.attributes.is_empty() {
            let attributes = self
                .attributes
                .iter()
                .map(|(field, value)| {
                    let json = value.as_ref().map_or(Value::Null, AttrValue::to_json);
                    (field.name().to_owned(), json)
                })
                .collect();
            object.insert("attributes".into(), Value::Object(attributes));
        }
        if !self.relationships.is_empty() {
            let relationships = self
                .relationships
                .iter()
                .map(|(relation, value)| {
                    let json = serde_json::to_value(value).unwrap_or(Value::Null);
                    (relation.name().to_owned(), json)
                })
                .collect();
            object.insert("relationships".into(), Value::Object(relationships));
        }
        if let Some(connections) = &self.data_connections {
            let json = serde_json::to_value(connections).unwrap_or(Value::Null);
            object.insert("dataConnections".into(), json);
        }
        Value::Object(object)
    }

    /// Reads what [`Changes::to_json`] wrote; `None` when it is not of that form.
    pub fn from_json(value: &Value) -> Option<Changes> {
        let object = value.as_object()?;
        let mut changes = Changes::default();
        if let Some(attributes) = object.get("attributes") {
            for (name, value) in attributes.as_object()? {
                let field = Field::from_name(name)?;
                let parsed = match value {
                    Value::Null => None,
                    value => Some(crate::call::stored_attr(field, value)?),
                };
                changes.attributes.insert(field, parsed);
            }
        }
        if let Some(relationships) = object.get("relationships") {
            for (name, value) in relationships.as_object()? {
                let relation = Relation::from_name(name)?;
                let parsed = match value {
                    Value::Null => None,
                    value => Some(serde_json::from_value(value.clone()).ok()?),
                };
                changes.relationships.insert(relation, parsed);
            }
        }
        if let Some(connections) = object.get("dataConnections") {
            changes.data_connections = Some(serde_json::from_value(connections.clone()).ok()?);
        }
        Some(changes)
    }
}

/// Validates a JSON:API write document (`{"data":{"type":"call",...}}`) for a writer with
/// `rights`. Every violation is reported, not only the first; nothing is partially accepted.
pub fn parse_write(
    document: &Value,
    mode: WriteMode,
    rights: Rights,
) -> Result<WriteInput, Vec<Violation>> {
    let mut check = Checker::default();
    let input = check.document(document, mode, rights);
    if check.violations.is_empty() {
        Ok(input)
    } else {
        Err(check.violations)
    }
}

#[derive(Default)]
struct Checker {
    violations: Vec<Violation>,
}

impl Checker {
    fn invalid(&mut self, pointer: impl Into<String>, detail: impl Into<String>) {
        self.violations.push(Violation {
            pointer: pointer.into(),
            kind: ViolationKind::Invalid,
            detail: detail.into(),
        });
    }

    fn too_long(&mut self, pointer: impl Into<String>, max: usize, got: usize) {
        self.violations.push(Violation {
            pointer: pointer.into(),
            kind: ViolationKind::TooLong,
            detail: format!("Data provided is too long: at most {max} characters, got {got}."),
        });
    }

    fn document(&mut self, document: &Value, mode: WriteMode, rights: Rights) -> WriteInput {
        let mut input = WriteInput {
            changes: Changes::default(),
            occurred_at: None,
        };
        let Some(top) = document.as_object() else {
            self.invalid("", "expected a JSON object with a `data` member");
            return input;
        };
        for key in top.keys() {
            if key != "data" && key != "meta" && key != "jsonapi" {
                self.invalid(
                    format!("/{}", escape(key)),
                    format!("unknown member '{key}'"),
                );
            }
        }
        let Some(data) = top.get("data") else {
            self.invalid("/data", "expected a `data` member holding the call");
            return input;
        };
        let Some(data) = data.as_object() else {
            self.invalid("/data", "expected an object");
            return input;
        };
        for (key, value) in data {
            match key.as_str() {
                "type" => {
                    if value.as_str() != Some("call") {
                        self.invalid("/data/type", "expected \"call\"");
                    }
                }
                "id" => self.id(value, mode),
                "attributes" => self.attributes(value, rights, &mut input.changes),
                "relationships" => self.relationships(value, rights, &mut input.changes),
                "meta" => self.meta(value, &mut input),
                "links" => {}
                _ => self.invalid(
                    format!("/data/{}", escape(key)),
                    format!("unknown member '{key}'"),
                ),
            }
        }
        if !data.contains_key("type") {
            self.invalid("/data/type", "expected \"call\"");
        }
        input
    }

    fn id(&mut self, value: &Value, mode: WriteMode) {
        match mode {
            WriteMode::Create => self.invalid(
                "/data/id",
                "ids are assigned by the ledger; a create must not name one",
            ),
            WriteMode::Update(id) => {
                let named = match value {
                    Value::Number(number) => number.as_u64(),
                    Value::String(text) => text.parse().ok(),
                    _ => None,
                };
                if named != Some(id) {
                    self.invalid(
                        "/data/id",
                        format!("expected {id}, the id of the call updated"),
                    );
                }
            }
        }
    }

    fn attributes(&mut self, value: &Value, rights: Rights, changes: &mut Changes) {
        let Some(attributes) = value.as_object() else {
            self.invalid("/data/attributes", "expected an object");
            return;
        };
        for (name, value) in attributes {
            let pointer = format!("/data/attributes/{}", escape(name));
            let Some(field) = Field::from_name(name) else {
                self.invalid(pointer, format!("unknown attribute '{name}'"));
                continue;
            };
            match field.ownership() {
                Ownership::Server => {
                    self.invalid(
                        pointer,
                        format!("'{name}' is set by the server and cannot be written"),
                    );
                    continue;
                }
                Ownership::Telephony if !rights.voice => {
                    self.invalid(
                        pointer,
                        format!("'{name}' is read-only: only the telephony system (the calls.voice scope) may write it"),
                    );
                    continue;
                }
                _ => {}
            }
            if value.is_null() {
                changes.attributes.insert(field, None);
            } else if let Some(parsed) = self.attribute(&pointer, field, value) {
                changes.attributes.insert(field, Some(parsed));
            }
        }
    }

    fn attribute(&mut self, pointer: &str, field: Field, value: &Value) -> Option<AttrValue> {
        match field.kind() {
            AttrKind::Time => match value.as_str().map(Timestamp::parse) {
                Some(Ok(at)) => Some(AttrValue::Time(at)),
                _ => {
                    self.invalid(
                        pointer,
                        "expected an RFC 3339 date-time such as 2025-01-13T12:47:31.000Z",
                    );
                    None
                }
            },
            AttrKind::Enum(allowed) => match value.as_str() {
                Some(text) if allowed.contains(&text) => Some(AttrValue::Text(text.to_owned())),
                _ => {
                    let list = allowed
                        .iter()
                        .map(|v| format!("\"{v}\""))
                        .collect::<Vec<_>>();
                    self.invalid(pointer, format!("expected one of {}", list.join(", ")));
                    None
                }
            },
            AttrKind::Text { max, url } => {
                let Some(text) = value.as_str() else {
                    self.invalid(pointer, "expected a string");
                    return None;
                };
                let chars = text.chars().count();
                if chars > max {
                    self.too_long(pointer, max, chars);
                    return None;
                }
                if url && !is_http_url(text) {
                    self.invalid(pointer, "expected an http or https URL");
                    return None;
                }
                Some(AttrValue::Text(text.to_owned()))
            }
            AttrKind::Bool => match value.as_bool() {
                Some(flag) => Some(AttrValue::Bool(flag)),
                None => {
                    self.invalid(pointer, "expected true or false");
                    None
                }
            },
            AttrKind::Tags => {
                let Some(items) = value.as_array() else {
                    self.invalid(pointer, "expected an array of strings");
                    return None;
                };
                if items.len() > MAX_TAGS {
                    self.invalid(
                        pointer,
                        format!("expected at most {MAX_TAGS} tags, got {}", items.len()),
                    );
                    return None;
                }
                let mut tags = Vec::with_capacity(items.len());
                let before = self.violations.len();
                for (index, item) in items.iter().enumerate() {
                    let item_pointer = format!("{pointer}/{index}");
                    match item.as_str() {
                        Some(tag) if tag.chars().count() > MAX_TAG_CHARS => {
                            self.too_long(item_pointer, MAX_TAG_CHARS, tag.chars().count())
                        }
                        Some(tag) => tags.push(tag.to_owned()),
                        None => self.invalid(item_pointer, "expected a string"),
                    }
                }
                (self.violations.len() == before).then_some(AttrValue::Tags(tags))
            }
        }
    }

    fn relationships(&mut self, value: &Value, rights: Rights, changes: &mut Changes) {
        let Some(relationships) = value.as_object() else {
            self.invalid("/data/relationships", "expected an object");
            return;
        };
        for (name, value) in relationships {
            let pointer = format!("/data/relationships/{}", escape(name));
            let Some(relation) = Relation::from_name(name) else {
                self.invalid(pointer, format!("unknown relationship '{name}'"));
                continue;
            };
            if relation.ownership() == Ownership::Telephony && !rights.voice {
                self.invalid(pointer, format!("'{name}' is a read-only relationship"));
                continue;
            }
            let data = match value.as_object() {
                Some(object) if object.len() == 1 && object.contains_key("data") => &object["data"],
                _ => {
                    self.invalid(pointer, "expected an object with only a `data` member");
                    continue;
                }
            };
            let pointer = format!("{pointer}/data");
            if data.is_null() {
                changes.relationships.insert(relation, None);
                continue;
            }
            if relation.is_to_many() {
                let Some(items) = data.as_array() else {
                    self.invalid(pointer, "expected an array of resource identifiers");
                    continue;
                };
                let before = self.violations.len();
                let targets: Vec<ResourceRef> = items
                    .iter()
                    .enumerate()
                    .filter_map(|(index, item)| {
                        self.linkage(&format!("{pointer}/{index}"), relation, item)
                    })
                    .collect();
                if self.violations.len() == before {
                    changes
                        .relationships
                        .insert(relation, Some(RelValue::Many(targets)));
                }
            } else if let Some(target) = self.linkage(&pointer, relation, data) {
                changes
                    .relationships
                    .insert(relation, Some(RelValue::One(target)));
            }
        }
    }

    fn linkage(&mut self, pointer: &str, relation: Relation, value: &Value) -> Option<ResourceRef> {
        let types = relation.target_types();
        let Some(object) = value.as_object() else {
            self.invalid(
                pointer,
                "expected a resource identifier {\"type\":...,\"id\":...}",
            );
            return None;
        };
        let mut target = ResourceRef {
            kind: String::new(),
            id: 0,
        };
        let mut ok = true;
        for (key, member) in object {
            match key.as_str() {
                "type" => match member.as_str() {
                    Some(kind) if types.contains(&kind) => target.kind = kind.to_owned(),
                    _ => {
                        let list = types.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>();
                        self.invalid(
                            format!("{pointer}/type"),
                            format!("expected {}", list.join(" or ")),
                        );
                        ok = false;
                    }
                },
                "id" => match integer_id(member) {
                    Some(id) => target.id = id,
                    None => {
                        self.invalid(format!("{pointer}/id"), "expected a positive integer id");
                        ok = false;
                    }
                },
                _ => {
                    self.invalid(
                        format!("{pointer}/{}", escape(key)),
                        format!("unknown member '{key}'"),
                    );
                    ok = false;
                }
            }
        }
        if !object.contains_key("type") && ok {
            // A single possible type may be left implicit; otherwise it must be named.
            match types {
                [only] => target.kind = (*only).to_owned(),
                _ => {
                    self.invalid(format!("{pointer}/type"), "expected the resource type");
                    ok = false;
                }
            }
        }
        if !object.contains_key("id") && ok {
            self.invalid(format!("{pointer}/id"), "expected a positive integer id");
            ok = false;
        }
        ok.then_some(target)
    }

    fn meta(&mut self, value: &Value, input: &mut WriteInput) {
        let Some(meta) = value.as_object() else {
            self.invalid("/data/meta", "expected an object");
            return;
        };
        for (key, value) in meta {
            let pointer = format!("/data/meta/{}", escape(key));
            match key.as_str() {
                "occurredAt" => match value.as_str().map(Timestamp::parse) {
                    Some(Ok(at)) => input.occurred_at = Some(at),
                    _ => self.invalid(
                        pointer,
                        "expected an RFC 3339 date-time such as 2025-01-13T12:47:31.000Z",
                    ),
                },
                "dataConnections" => {
                    input.changes.data_connections = Some(self.data_connections(&pointer, value))
                }
                _ => self.invalid(pointer, format!("unknown meta member '{key}'")),
            }
        }
    }

    fn data_connections(&mut self, pointer: &str, value: &Value) -> Vec<DataConnection> {
        if value.is_null() {
            return Vec::new();
        }
        let Some(items) = value.as_array() else {
            self.invalid(pointer, "expected an array of data connections or null");
            return Vec::new();
        };
        if items.len() > MAX_DATA_CONNECTIONS {
            self.invalid(
                pointer,
                format!("expected at most {MAX_DATA_CONNECTIONS} data connections"),
            );
            return Vec::new();
        }
        let mut connections = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let item_pointer = format!("{pointer}/{index}");
            let Some(object) = item.as_object() else {
                self.invalid(
                    item_pointer,
                    "expected an object {connection, type, id, url}",
                );
                continue;
            };
            let mut connection = DataConnection {
                connection: None,
                kind: None,
                id: None,
                url: None,
            };
            for (key, member) in object {
                let member_pointer = format!("{item_pointer}/{}", escape(key));
                let text = match member {
                    Value::Null => None,
                    Value::String(text) => Some(text.clone()),
                    Value::Number(number) if key == "id" => Some(number.to_string()),
                    _ => {
                        self.invalid(member_pointer, "expected a string or null");
                        continue;
                    }
                };
                if let Some(text) = &text {
                    let chars = text.chars().count();
                    if chars > MAX_DATA_CONNECTION_CHARS {
                        self.too_long(member_pointer, MAX_DATA_CONNECTION_CHARS, chars);
                        continue;
                    }
                }
                match key.as_str() {
                    "connection" => connection.connection = text,
                    "type" => connection.kind = text,
                    "id" => connection.id = text,
                    "url" => match text {
                        Some(url) if !is_http_url(&url) => {
                            self.invalid(member_pointer, "expected an http or https URL")
                        }
                        url => connection.url = url,
                    },
                    _ => self.invalid(member_pointer, format!("unknown member '{key}'")),
                }
            }
            connections.push(connection);
        }
        connections
    }
}

/// An integer id as JSON:API clients send it: a JSON integer or a string of digits.
fn integer_id(value: &Value) -> Option<i64> {
    let id = match value {
        Value::Number(number) => number.as_i64()?,
        Value::String(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse().ok()?
        }
        _ => return None,
    };
    (id > 0).then_some(id)
}

/// An http(s) URL with a host and no whitespace or control characters.
fn is_http_url(text: &str) -> bool {
    let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &text[8..]
    } else if lower.starts_with("http://") {
        &text[7..]
    } else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    !host.is_empty() && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Escapes a member name for use in a JSON pointer (RFC 6901).
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}
