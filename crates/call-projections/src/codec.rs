//! The stored form of a view (its one home): a compact binary record read and written without
//! any intermediate form.
//!
//! | part | bytes |
//! |---|---|
//! | format | `V`, then the form's version, 1 |
//! | id, version, position | LEB128 varints |
//! | attributes | a count, then per attribute its name, a tag (0 text, 1 time, 2 bool, 3 tags) and its value |
//! | relationships | a count, then per relationship its name, a tag (0 to-one, 1 to-many) and the reference or the count and references |
//! | data connections | a count, then per connection a byte of which members are present (bits 0-3: connection, type, id, url) and those present |
//!
//! A text is a varint length and UTF-8; a reference is its type's text and its id as a zigzag
//! varint; a time is its milliseconds as a zigzag varint; a bool one byte; tags a count and
//! texts. Names are written as text, not as positions in the model's lists, so that a model
//! with a new attribute still reads an older row; a name the model does not know, a value whose
//! tag is not its attribute's kind, a count larger than what is left, anything cut short and
//! anything left over are refused as corrupt. Nothing here can panic on any input.
//!
//! It replaced JSON (`call-projections/2`): decoding the JSON of a view was a fifth of a get's
//! time in the gateway (tokenising, escape scanning and RFC 3339 parsing every timestamp), and
//! writing it part of every rebuilt event's.

use call_model::{
    AttrKind, AttrRef, AttrValue, Call, CallRef, ConnectionRef, DataConnection, Field, RelRef,
    RelValue, Relation, ResourceRef, TargetRef, Timestamp,
};

/// The first byte of every stored view, and the version of its form.
const FORMAT: [u8; 2] = [b'V', 1];

const TEXT: u8 = 0;
const TIME: u8 = 1;
const BOOL: u8 = 2;
const TAGS: u8 = 3;

const TO_ONE: u8 = 0;
const TO_MANY: u8 = 1;

/// The stored form of `call`.
pub(crate) fn encode(call: &Call) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&FORMAT);
    varint(&mut out, call.id);
    varint(&mut out, call.version);
    varint(&mut out, call.position);
    varint(&mut out, call.attributes.len() as u64);
    for (field, value) in &call.attributes {
        text(&mut out, field.name());
        match value {
            AttrValue::Text(value) => {
                out.push(TEXT);
                text(&mut out, value);
            }
            AttrValue::Time(at) => {
                out.push(TIME);
                signed(&mut out, at.millis());
            }
            AttrValue::Bool(value) => {
                out.push(BOOL);
                out.push(u8::from(*value));
            }
            AttrValue::Tags(tags) => {
                out.push(TAGS);
                varint(&mut out, tags.len() as u64);
                for tag in tags {
                    text(&mut out, tag);
                }
            }
        }
    }
    varint(&mut out, call.relationships.len() as u64);
    for (relation, value) in &call.relationships {
        text(&mut out, relation.name());
        match value {
            RelValue::One(target) => {
                out.push(TO_ONE);
                reference(&mut out, target);
            }
            RelValue::Many(targets) => {
                out.push(TO_MANY);
                varint(&mut out, targets.len() as u64);
                for target in targets {
                    reference(&mut out, target);
                }
            }
        }
    }
    varint(&mut out, call.data_connections.len() as u64);
    for connection in &call.data_connections {
        let members = connection_members(connection);
        let present = members.iter().enumerate().fold(0u8, |mask, (bit, member)| {
            mask | (u8::from(member.is_some()) << bit)
        });
        out.push(present);
        for member in members.into_iter().flatten() {
            text(&mut out, member);
        }
    }
    out
}

/// Reads the stored form of a call into an owned one (the store does the same through
/// `store::decode_call`), for the tests of the form.
#[cfg(test)]
fn decode(bytes: &[u8]) -> Result<Call, String> {
    decode_ref(bytes).map(|call| call.to_call())
}

/// What a stored view opens with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) id: u64,
    pub(crate) version: u64,
    /// The position of the call's latest event.
    pub(crate) position: u64,
}

/// Reads only the opening of a stored view: enough to tell whether it is a call's latest
/// state, without decoding the rest.
pub(crate) fn header(bytes: &[u8]) -> Result<Header, String> {
    Reader { bytes }.header()
}

/// Reads the stored form of a call in place: its texts are slices of `bytes`. The one reader of
/// the form (`CallRef::to_call` owns what it borrows).
pub(crate) fn decode_ref(bytes: &[u8]) -> Result<CallRef<'_>, String> {
    let mut input = Reader { bytes };
    let Header {
        id,
        version,
        position,
    } = input.header()?;
    let mut call = CallRef::new(id, version, position);
    for _ in 0..input.count("the attribute count")? {
        let name = input.text("an attribute name")?;
        let field = Field::from_name(name).ok_or_else(|| format!("unknown attribute {name:?}"))?;
        let value = match (input.byte("an attribute tag")?, field.kind()) {
            (TEXT, AttrKind::Text { .. } | AttrKind::Enum(_)) => {
                AttrRef::Text(input.text("a text")?)
            }
            (TIME, AttrKind::Time) => {
                AttrRef::Time(Timestamp::from_millis(input.signed("a time")?))
            }
            (BOOL, AttrKind::Bool) => match input.byte("a bool")? {
                0 => AttrRef::Bool(false),
                1 => AttrRef::Bool(true),
                other => return Err(format!("{name}: {other} is not a bool")),
            },
            (TAGS, AttrKind::Tags) => {
                let count = input.count("the tag count")?;
                let mut tags = Vec::with_capacity(count);
                for _ in 0..count {
                    tags.push(input.text("a tag")?);
                }
                AttrRef::Tags(tags)
            }
            (tag, kind) => {
                return Err(format!(
                    "{name}: tag {tag} for an attribute of kind {kind:?}"
                ))
            }
        };
        if call.set_attribute(field, value) {
            return Err(format!("attribute {name:?} twice"));
        }
    }
    for _ in 0..input.count("the relationship count")? {
        let name = input.text("a relationship name")?;
        let relation =
            Relation::from_name(name).ok_or_else(|| format!("unknown relationship {name:?}"))?;
        let value = match input.byte("a relationship tag")? {
            TO_ONE => RelRef::One(input.reference()?),
            TO_MANY => {
                let count = input.count("the reference count")?;
                let mut targets = Vec::with_capacity(count);
                for _ in 0..count {
                    targets.push(input.reference()?);
                }
                RelRef::Many(targets)
            }
            other => return Err(format!("{name}: {other} is not a relationship tag")),
        };
        if call.set_relationship(relation, value) {
            return Err(format!("relationship {name:?} twice"));
        }
    }
    let count = input.count("the data connection count")?;
    let mut data_connections = Vec::with_capacity(count);
    for _ in 0..count {
        let present = input.byte("a data connection's members")?;
        if present > 0b1111 {
            return Err(format!(
                "{present:#x} is not a set of data connection members"
            ));
        }
        data_connections.push(ConnectionRef {
            connection: input.member(present, 0)?,
            kind: input.member(present, 1)?,
            id: input.member(present, 2)?,
            url: input.member(present, 3)?,
        });
    }
    if !input.bytes.is_empty() {
        return Err(format!("{} bytes after the stored view", input.bytes.len()));
    }
    call.data_connections = data_connections;
    Ok(call)
}

/// A data connection's members, in the order of the presence bits.
fn connection_members(connection: &DataConnection) -> [Option<&str>; 4] {
    [
        connection.connection.as_deref(),
        connection.kind.as_deref(),
        connection.id.as_deref(),
        connection.url.as_deref(),
    ]
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn signed(out: &mut Vec<u8>, n: i64) {
    varint(out, ((n << 1) ^ (n >> 63)) as u64);
}

fn text(out: &mut Vec<u8>, text: &str) {
    varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

fn reference(out: &mut Vec<u8>, target: &ResourceRef) {
    text(out, &target.kind);
    signed(out, target.id);
}

/// The bytes not yet read; every read checks that they hold what it takes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// The format, then the id, version and position.
    fn header(&mut self) -> Result<Header, String> {
        if self.take(FORMAT.len(), "the format")? != FORMAT {
            return Err("not a stored view of this form".to_owned());
        }
        Ok(Header {
            id: self.varint("the id")?,
            version: self.varint("the version")?,
            position: self.varint("the position")?,
        })
    }

    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], String> {
        if len > self.bytes.len() {
            return Err(format!("cut short in {what}"));
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    fn byte(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn varint(&mut self, what: &str) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte(what)?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            n |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(format!("{what} is not a 64-bit varint"))
    }

    fn signed(&mut self, what: &str) -> Result<i64, String> {
        let n = self.varint(what)?;
        Ok((n >> 1) as i64 ^ -((n & 1) as i64))
    }

    /// A count of items of at least one byte each, so never more than the bytes left: what it
    /// sizes is bounded by the row's length.
    fn count(&mut self, what: &str) -> Result<usize, String> {
        let count = self.varint(what)?;
        if count > self.bytes.len() as u64 {
            return Err(format!(
                "{what} {count} is more than the {} bytes left",
                self.bytes.len()
            ));
        }
        Ok(count as usize)
    }

    fn text(&mut self, what: &str) -> Result<&'a str, String> {
        let len = self.varint(what)?;
        let len = usize::try_from(len).map_err(|_| format!("{what} is too long"))?;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn reference(&mut self) -> Result<TargetRef<'a>, String> {
        Ok(TargetRef {
            kind: self.text("a reference's type")?,
            id: self.signed("a reference's id")?,
        })
    }

    /// A data connection's member: its text when bit `bit` of `present` says it is there.
    fn member(&mut self, present: u8, bit: u8) -> Result<Option<&'a str>, String> {
        if present & (1 << bit) == 0 {
            return Ok(None);
        }
        self.text("a data connection member").map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use call_model::FieldMap;

    fn varied_calls() -> Vec<Call> {
        let mut full = Call {
            id: 7,
            version: 3,
            position: 42,
            attributes: FieldMap::new(),
            relationships: Default::default(),
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
                AttrKind::Text { .. } => {
                    AttrValue::Text(format!("{field} \"quoted\" \u{e9}\n").into())
                }
                AttrKind::Enum(values) => AttrValue::Text(values[0].into()),
                AttrKind::Bool => AttrValue::Bool(false),
                AttrKind::Tags => AttrValue::Tags(vec!["Interested".into(), "".into()]),
            };
            full.attributes.insert(*field, value);
        }
        for relation in Relation::ALL {
            let target = ResourceRef {
                kind: relation.target_types()[0].into(),
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
            attributes: FieldMap::new(),
            relationships: Default::default(),
            data_connections: Vec::new(),
        };
        vec![full, empty]
    }

    #[test]
    fn reads_back_what_it_writes() {
        for call in varied_calls() {
            let bytes = encode(&call);
            assert_eq!(decode_ref(&bytes).as_ref(), Ok(&call.borrowed()));
            assert_eq!(decode(&bytes), Ok(call));
        }
    }

    /// The form is pinned: a stored view of a small call, byte for byte.
    #[test]
    fn the_stored_form_is_pinned() {
        let mut call = varied_calls().pop().unwrap();
        call.id = 300;
        call.attributes
            .insert(Field::Direction, AttrValue::Text("inbound".into()));
        call.attributes
            .insert(Field::DialedAt, AttrValue::Time(Timestamp::from_millis(-1)));
        call.relationships.insert(
            Relation::ALL[0],
            RelValue::One(ResourceRef {
                kind: "x".into(),
                id: 2,
            }),
        );
        let name = |text: &str| {
            let mut out = vec![text.len() as u8];
            out.extend_from_slice(text.as_bytes());
            out
        };
        let mut expected = vec![b'V', 1, 0xac, 0x02, 1, 1, 2];
        expected.extend(name("dialedAt"));
        expected.extend([TIME, 1]);
        expected.extend(name("direction"));
        expected.push(TEXT);
        expected.extend(name("inbound"));
        expected.push(1);
        expected.extend(name(Relation::ALL[0].name()));
        expected.push(TO_ONE);
        expected.extend(name("x"));
        expected.extend([4, 0]);
        assert_eq!(encode(&call), expected);
    }

    #[test]
    fn refuses_rows_not_of_the_stored_form_and_never_panics() {
        let good = encode(&varied_calls()[0]);
        // Every cut, and every row with one byte changed or one more, is refused or read.
        for end in 0..good.len() {
            assert!(decode(&good[..end]).is_err(), "cut at {end}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        for at in 0..good.len() {
            for value in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] = value;
                let _ = decode(&bad);
            }
        }
        for garbage in [
            &b""[..],
            b"{",
            b"{\"id\":1}",
            b"V\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            b"V\x01\x01\x01\x01\xff\xff\xff\xff\x0f",
        ] {
            assert!(decode(garbage).is_err(), "{garbage:?}");
        }
        // A value whose tag is not its attribute's kind, and an unknown name.
        let mut call = varied_calls().pop().unwrap();
        call.attributes
            .insert(Field::DialedAt, AttrValue::Text("yesterday".into()));
        assert!(decode(&encode(&call)).is_err());
        let mut unknown = vec![b'V', 1, 1, 1, 1, 1, 6];
        unknown.extend_from_slice(b"colour");
        unknown.extend([TEXT, 3]);
        unknown.extend_from_slice(b"red");
        unknown.extend([0, 0]);
        assert!(decode(&unknown).unwrap_err().contains("colour"));
    }
}
