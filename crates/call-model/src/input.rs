//! Validation of a write: a JSON:API document in, typed [`Changes`] out, or every violation at
//! once, each naming its field by JSON pointer.

use crate::call::{Call, CallId, DataConnection, ResourceRef};
use crate::field_map::FieldMap;
use crate::fields::{AttrKind, AttrValue, Field, Ownership, RelValue, Relation, Text};
use crate::json_in::JsonIn;
use crate::relation_map::RelationMap;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt::{self, Write as _};

/// The most tags one call may carry.
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
    pub attributes: FieldMap<Option<AttrValue>>,
    /// Relationships to set (`Some`) or clear (`None`).
    pub relationships: RelationMap<Option<RelValue>>,
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
        serde_json::from_slice(&self.to_json_bytes()).unwrap_or(Value::Null)
    }

    /// The changes as the events write them, as compact text.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        crate::event_out::write_changes(&mut bytes, self);
        bytes
    }

    /// Reads what [`Changes::to_json`] wrote; `None` when it is not of that form.
    ///
    /// Members and attribute or relationship names this version does not know are skipped, so
    /// that events written by a newer version that added an optional member still read.
    pub fn from_json(value: &Value) -> Option<Changes> {
        crate::event_data::DataIn::deserialize(value)
            .ok()
            .map(|data| data.changes)
    }
}

/// Validates a JSON:API write document (`{"data":{"type":"call",...}}`) for a writer with
/// `rights`. Every violation is reported, not only the first; nothing is partially accepted.
pub fn check_write(
    document: &JsonIn<'_>,
    mode: WriteMode,
    rights: Rights,
) -> Result<WriteInput, Vec<Violation>> {
    Checker::new(None).run(document, mode, rights)
}

/// Validates an update of `current` as [`check_write`] does, except that members the writer may
/// not change (server-set, telephony-owned without the voice right, read-only relationships,
/// `meta.canWrite`/`canDelete`) are accepted and ignored when they hold the call's current
/// values: a document fetched with `get` and sent back with one member changed is the change
/// of that member. A guarded member whose value differs is refused as in [`check_write`].
pub fn check_update(
    document: &JsonIn<'_>,
    current: &Call,
    rights: Rights,
) -> Result<WriteInput, Vec<Violation>> {
    Checker::new(Some(current)).run(document, WriteMode::Update(current.id), rights)
}

/// [`check_write`] of a document already read into a `serde_json::Value`.
pub fn parse_write(
    document: &Value,
    mode: WriteMode,
    rights: Rights,
) -> Result<WriteInput, Vec<Violation>> {
    check_write(&JsonIn::from_value(document), mode, rights)
}

/// [`check_update`] of a document already read into a `serde_json::Value`.
pub fn parse_update(
    document: &Value,
    current: &Call,
    rights: Rights,
) -> Result<WriteInput, Vec<Violation>> {
    check_update(&JsonIn::from_value(document), current, rights)
}

struct Checker<'c> {
    violations: Vec<Violation>,
    /// The call an update applies to, when known: guarded members equal to its values pass.
    current: Option<&'c Call>,
}

impl<'c> Checker<'c> {
    fn new(current: Option<&'c Call>) -> Checker<'c> {
        Checker {
            violations: Vec::new(),
            current,
        }
    }

    fn run(
        mut self,
        document: &JsonIn<'_>,
        mode: WriteMode,
        rights: Rights,
    ) -> Result<WriteInput, Vec<Violation>> {
        let input = self.document(document, mode, rights);
        if self.violations.is_empty() {
            Ok(input)
        } else {
            Err(self.violations)
        }
    }

    /// Whether a guarded attribute's value, as sent, is the current call's (so it changes
    /// nothing and passes). A value that does not even parse is reported as such.
    fn echoes_attribute(&mut self, pointer: Pointer<'_>, field: Field, value: &JsonIn<'_>) -> bool {
        let Some(current) = self.current else {
            return false;
        };
        let before = self.violations.len();
        let sent = if value.is_null() {
            None
        } else {
            self.attribute(pointer, field, value)
        };
        if self.violations.len() > before {
            // Reported as malformed; the ownership violation would say nothing more.
            return true;
        }
        sent.as_ref() == current.attributes.get(&field)
    }

    fn invalid(&mut self, pointer: impl fmt::Display, detail: impl Into<String>) {
        self.violations.push(Violation {
            pointer: pointer.to_string(),
            kind: ViolationKind::Invalid,
            detail: detail.into(),
        });
    }

    fn too_long(&mut self, pointer: impl fmt::Display, max: usize, got: usize) {
        self.violations.push(Violation {
            pointer: pointer.to_string(),
            kind: ViolationKind::TooLong,
            detail: format!("Data provided is too long: at most {max} characters, got {got}."),
        });
    }

    fn document(&mut self, document: &JsonIn<'_>, mode: WriteMode, rights: Rights) -> WriteInput {
        let mut input = WriteInput {
            changes: Changes::default(),
            occurred_at: None,
        };
        let Some(top) = document.as_object() else {
            self.invalid("", "expected a JSON object with a `data` member");
            return input;
        };
        for (key, value) in top.iter() {
            match key {
                "data" | "jsonapi" => {}
                "meta" => self.document_meta(value),
                _ => self.invalid(
                    Pointer::Member(&Pointer::At(""), key),
                    format!("unknown member '{key}'"),
                ),
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
        for (key, value) in data.iter() {
            match key {
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
                    Pointer::Member(&Pointer::At("/data"), key),
                    format!("unknown member '{key}'"),
                ),
            }
        }
        if !data.contains_key("type") {
            self.invalid("/data/type", "expected \"call\"");
        }
        input
    }

    fn id(&mut self, value: &JsonIn<'_>, mode: WriteMode) {
        match mode {
            WriteMode::Create => self.invalid(
                "/data/id",
                "ids are assigned by the ledger; a create must not name one",
            ),
            WriteMode::Update(id) => {
                let named = match value {
                    JsonIn::Number(number) => number.as_u64(),
                    JsonIn::String(text) if is_digits(text) => text.parse().ok(),
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

    fn attributes(&mut self, value: &JsonIn<'_>, rights: Rights, changes: &mut Changes) {
        let Some(attributes) = value.as_object() else {
            self.invalid("/data/attributes", "expected an object");
            return;
        };
        let attributes_at = Pointer::At("/data/attributes");
        for (name, value) in attributes.iter() {
            let pointer = Pointer::Member(&attributes_at, name);
            let Some(field) = Field::from_name(name) else {
                self.invalid(pointer, format!("unknown attribute '{name}'"));
                continue;
            };
            let guarded = match field.ownership() {
                Ownership::Server => true,
                Ownership::Telephony => !rights.voice,
                Ownership::Writable => false,
            };
            if guarded && self.echoes_attribute(pointer, field, value) {
                continue;
            }
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
            } else if let Some(parsed) = self.attribute(pointer, field, value) {
                changes.attributes.insert(field, Some(parsed));
            }
        }
    }

    fn attribute(
        &mut self,
        pointer: Pointer<'_>,
        field: Field,
        value: &JsonIn<'_>,
    ) -> Option<AttrValue> {
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
                Some(text) if allowed.contains(&text) => Some(AttrValue::Text(Text::from(text))),
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
                // Both rules are checked so that a value breaking both gets both errors.
                let chars = text.chars().count();
                let mut ok = true;
                if chars > max {
                    self.too_long(pointer, max, chars);
                    ok = false;
                }
                if url && !is_http_url(text) {
                    self.invalid(pointer, "expected an http or https URL");
                    ok = false;
                }
                ok.then(|| AttrValue::Text(Text::from(text)))
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
                    let item_pointer = Pointer::Item(&pointer, index);
                    match item.as_str() {
                        Some(tag) if tag.chars().count() > MAX_TAG_CHARS => {
                            self.too_long(item_pointer, MAX_TAG_CHARS, tag.chars().count())
                        }
                        Some(tag) => tags.push(Text::from(tag)),
                        None => self.invalid(item_pointer, "expected a string"),
                    }
                }
                (self.violations.len() == before).then_some(AttrValue::Tags(tags))
            }
        }
    }

    fn relationships(&mut self, value: &JsonIn<'_>, rights: Rights, changes: &mut Changes) {
        let Some(relationships) = value.as_object() else {
            self.invalid("/data/relationships", "expected an object");
            return;
        };
        let relationships_at = Pointer::At("/data/relationships");
        for (name, value) in relationships.iter() {
            let pointer = Pointer::Member(&relationships_at, name);
            let Some(relation) = Relation::from_name(name) else {
                self.invalid(pointer, format!("unknown relationship '{name}'"));
                continue;
            };
            if relation.ownership() == Ownership::Telephony && !rights.voice {
                if let Some(current) = self.current {
                    // Parsed as if writable, then compared with the call's current value.
                    let before = self.violations.len();
                    let mut sent = Changes::default();
                    self.relationship(pointer, relation, value, &mut sent);
                    if self.violations.len() > before {
                        continue;
                    }
                    let sent = sent.relationships.remove(&relation).flatten();
                    if sent.as_ref() == current.relationships.get(&relation) {
                        continue;
                    }
                }
                self.invalid(pointer, format!("'{name}' is a read-only relationship"));
                continue;
            }
            self.relationship(pointer, relation, value, changes);
        }
    }

    /// One relationship's linkage, well-formed, into `changes`.
    fn relationship(
        &mut self,
        pointer: Pointer<'_>,
        relation: Relation,
        value: &JsonIn<'_>,
        changes: &mut Changes,
    ) {
        let data = match value.as_object() {
            Some(object) if object.len() == 1 => match object.get("data") {
                Some(data) => data,
                None => {
                    self.invalid(pointer, "expected an object with only a `data` member");
                    return;
                }
            },
            _ => {
                self.invalid(pointer, "expected an object with only a `data` member");
                return;
            }
        };
        let pointer = Pointer::Member(&pointer, "data");
        if data.is_null() {
            changes.relationships.insert(relation, None);
            return;
        }
        if relation.is_to_many() {
            let Some(items) = data.as_array() else {
                self.invalid(pointer, "expected an array of resource identifiers");
                return;
            };
            let before = self.violations.len();
            let targets: Vec<ResourceRef> = items
                .iter()
                .enumerate()
                .filter_map(|(index, item)| {
                    self.linkage(Pointer::Item(&pointer, index), relation, item)
                })
                .collect();
            if self.violations.len() == before {
                // An empty to-many linkage clears the relationship, as `null` does, so that
                // "no batches" has one representation and a no-op stays a no-op.
                let value = (!targets.is_empty()).then_some(RelValue::Many(targets));
                changes.relationships.insert(relation, value);
            }
        } else if let Some(target) = self.linkage(pointer, relation, data) {
            changes
                .relationships
                .insert(relation, Some(RelValue::One(target)));
        }
    }

    fn linkage(
        &mut self,
        pointer: Pointer<'_>,
        relation: Relation,
        value: &JsonIn<'_>,
    ) -> Option<ResourceRef> {
        let types = relation.target_types();
        let Some(object) = value.as_object() else {
            self.invalid(
                pointer,
                "expected a resource identifier {\"type\":...,\"id\":...}",
            );
            return None;
        };
        let mut target = ResourceRef {
            kind: Text::default(),
            id: 0,
        };
        let mut ok = true;
        for (key, member) in object.iter() {
            match key {
                "type" => match member.as_str() {
                    Some(kind) if types.contains(&kind) => target.kind = Text::from(kind),
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
                        Pointer::Member(&pointer, key),
                        format!("unknown member '{key}'"),
                    );
                    ok = false;
                }
            }
        }
        // A missing member is its own violation, reported alongside any other. The type may be
        // left implicit where only one fits (docs/api.md); `associatedId` must name it.
        if !object.contains_key("type") {
            match types {
                [only] => target.kind = Text::from(*only),
                _ => {
                    let list = types.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>();
                    self.invalid(
                        format!("{pointer}/type"),
                        format!("expected the resource type: {}", list.join(" or ")),
                    );
                    ok = false;
                }
            }
        }
        if !object.contains_key("id") {
            self.invalid(format!("{pointer}/id"), "expected a positive integer id");
            ok = false;
        }
        ok.then_some(target)
    }

    /// The document's own `meta` carries nothing the ledger reads; writers putting the call's
    /// meta members there by mistake are told where they belong rather than silently ignored.
    fn document_meta(&mut self, value: &JsonIn<'_>) {
        let Some(meta) = value.as_object() else {
            self.invalid("/meta", "expected an object");
            return;
        };
        let meta_at = Pointer::At("/meta");
        for key in meta.keys() {
            let pointer = Pointer::Member(&meta_at, key);
            match key {
                "occurredAt" | "dataConnections" => self.invalid(
                    pointer,
                    format!("'{key}' belongs in the call's meta, at /data/meta/{key}"),
                ),
                _ => self.invalid(pointer, format!("unknown meta member '{key}'")),
            }
        }
    }

    fn meta(&mut self, value: &JsonIn<'_>, input: &mut WriteInput) {
        let Some(meta) = value.as_object() else {
            self.invalid("/data/meta", "expected an object");
            return;
        };
        let meta_at = Pointer::At("/data/meta");
        for (key, value) in meta.iter() {
            let pointer = Pointer::Member(&meta_at, key);
            match key {
                "occurredAt" => match value {
                    JsonIn::Null => {}
                    value => match value.as_str().map(Timestamp::parse) {
                        Some(Ok(at)) => input.occurred_at = Some(at),
                        _ => self.invalid(
                            pointer,
                            "expected an RFC 3339 date-time such as 2025-01-13T12:47:31.000Z",
                        ),
                    },
                },
                "dataConnections" => {
                    input.changes.data_connections = Some(self.data_connections(pointer, value))
                }
                // What `get` says of the reader's rights, sent back with the rest: it
                // describes the token, not the call, so an update ignores it.
                "canWrite" | "canDelete" if self.current.is_some() && value.is_boolean() => {}
                "canWrite" | "canDelete" => self.invalid(
                    pointer,
                    format!("'{key}' is set by the server and cannot be written"),
                ),
                _ => self.invalid(pointer, format!("unknown meta member '{key}'")),
            }
        }
    }

    fn data_connections(
        &mut self,
        pointer: Pointer<'_>,
        value: &JsonIn<'_>,
    ) -> Vec<DataConnection> {
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
            let item_pointer = Pointer::Item(&pointer, index);
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
            for (key, member) in object.iter() {
                let member_pointer = Pointer::Member(&item_pointer, key);
                // The member's name is checked first: an unknown member is reported as such,
                // whatever its value.
                let slot = match key {
                    "connection" => &mut connection.connection,
                    "type" => &mut connection.kind,
                    "id" => &mut connection.id,
                    "url" => &mut connection.url,
                    _ => {
                        self.invalid(member_pointer, format!("unknown member '{key}'"));
                        continue;
                    }
                };
                let text = match member {
                    JsonIn::Null => None,
                    JsonIn::String(text) => Some(text.clone().into_owned()),
                    // External ids are often numeric; an integer is kept as its decimal string.
                    JsonIn::Number(number)
                        if key == "id" && (number.is_i64() || number.is_u64()) =>
                    {
                        Some(number.to_string())
                    }
                    _ => {
                        let expected = if key == "id" {
                            "expected a string, an integer or null"
                        } else {
                            "expected a string or null"
                        };
                        self.invalid(member_pointer, expected);
                        continue;
                    }
                };
                if let Some(text) = &text {
                    let chars = text.chars().count();
                    if chars > MAX_DATA_CONNECTION_CHARS {
                        self.too_long(member_pointer, MAX_DATA_CONNECTION_CHARS, chars);
                    }
                    if key == "url" && !is_http_url(text) {
                        self.invalid(member_pointer, "expected an http or https URL");
                    }
                }
                *slot = text;
            }
            connections.push(connection);
        }
        connections
    }
}

/// An integer id as JSON:API clients send it: a JSON integer or a string of digits.
fn integer_id(value: &JsonIn<'_>) -> Option<i64> {
    let id = match value {
        JsonIn::Number(number) => number.as_i64()?,
        JsonIn::String(text) if is_digits(text) => text.parse().ok()?,
        _ => return None,
    };
    (id > 0).then_some(id)
}

/// A non-empty string of ASCII digits.
fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// An absolute http(s) URL with a host name (or IP literal), an optional numeric port, and no
/// whitespace or control characters anywhere.
fn is_http_url(text: &str) -> bool {
    // Printable ASCII has neither; only other text is read char by char (a URL's chars were
    // 1.6% of an import's instructions).
    let printable_ascii = text.bytes().all(|byte| (b'!'..=b'~').contains(&byte));
    if !printable_ascii && text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Userinfo, if any, ends at the last '@' of the authority.
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let (host, port) = if let Some(literal) = host_port.strip_prefix('[') {
        let Some((inside, after)) = literal.split_once(']') else {
            return false;
        };
        let ip_chars = |c: char| c.is_ascii_hexdigit() || c == ':' || c == '.';
        if inside.is_empty() || !inside.chars().all(ip_chars) {
            return false;
        }
        match after {
            "" => (inside, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (inside, Some(port)),
                None => return false,
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    let host_char = |c: char| c.is_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '%');
    let host_ok = !host.is_empty() && (host.contains(':') || host.chars().all(host_char));
    let port_ok = port.is_none_or(|port| is_digits(port) && port.len() <= 5);
    host_ok && port_ok
}

/// Where a member sits in the document, as a JSON pointer (RFC 6901), written out only when a
/// violation names it: formatting one for every member of every document was a large part of
/// validating a valid one.
#[derive(Clone, Copy)]
enum Pointer<'a> {
    /// A fixed path, such as `/data/attributes` (`""` is the document).
    At(&'static str),
    /// The member of this name of the object at the pointer.
    Member(&'a Pointer<'a>, &'a str),
    /// The item at this index of the array at the pointer.
    Item(&'a Pointer<'a>, usize),
}

impl fmt::Display for Pointer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pointer::At(path) => f.write_str(path),
            Pointer::Member(object, name) => {
                write!(f, "{object}/")?;
                // A member name's `~` and `/` are escaped, `~` first (RFC 6901).
                for c in name.chars() {
                    match c {
                        '~' => f.write_str("~0")?,
                        '/' => f.write_str("~1")?,
                        c => f.write_char(c)?,
                    }
                }
                Ok(())
            }
            Pointer::Item(array, index) => write!(f, "{array}/{index}"),
        }
    }
}
