//! An event's JSON written straight into bytes, in the documented member order (docs/events.md):
//! the one home of the event's written form; `Event::to_json` and the pretty form read these
//! bytes back.
//!
//! Why by hand: through serde_json's serializer, escaping every string a byte at a time was half
//! of an event's encoding, and an event is encoded once per append, once per event the outbox
//! publishes and once per line `export` writes. Here a string's runs with nothing to escape are
//! found eight bytes at a time and copied whole; the escapes are serde_json's own, so the bytes
//! are the ones it wrote.

use crate::call::DataConnection;
use crate::fields::{AttrValue, RelValue};
use crate::input::Changes;
use crate::time::Timestamp;
use crate::{CallId, EventBody, FieldMap, RelationMap, StoredEvent, SCHEMA_VERSION};

/// Writes `stored` as the event's JSON object; with `place` (position, call id, version), the
/// members the log assigns too.
pub(crate) fn write_event(
    out: &mut Vec<u8>,
    stored: &StoredEvent,
    place: Option<(u64, CallId, u64)>,
) {
    out.extend_from_slice(b"{\"schemaVersion\":");
    number(out, u64::from(SCHEMA_VERSION));
    out.extend_from_slice(b",\"type\":");
    name(out, stored.body.event_type().name());
    if let Some((position, call_id, version)) = place {
        out.extend_from_slice(b",\"position\":");
        number(out, position);
        out.extend_from_slice(b",\"callId\":");
        number(out, call_id);
        out.extend_from_slice(b",\"version\":");
        number(out, version);
    }
    out.extend_from_slice(b",\"eventId\":");
    string(
        out,
        stored
            .event_id
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    out.extend_from_slice(b",\"idempotencyKey\":");
    match &stored.idempotency_key {
        Some(key) => string(out, key),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"occurredAt\":");
    timestamp(out, stored.occurred_at);
    out.extend_from_slice(b",\"recordedAt\":");
    timestamp(out, stored.recorded_at);
    out.extend_from_slice(b",\"actor\":");
    string(out, &stored.actor);
    out.extend_from_slice(b",\"data\":{");
    match &stored.body {
        EventBody::CallCreated(changes) | EventBody::CallUpdated(changes) => {
            changes_members(out, changes, true);
        }
        EventBody::CallStateChanged {
            previous_state,
            changes,
        } => {
            out.extend_from_slice(b"\"previousState\":");
            match previous_state {
                Some(state) => string(out, state),
                None => out.extend_from_slice(b"null"),
            }
            changes_members(out, changes, false);
        }
        EventBody::CallDeleted => {}
    }
    out.extend_from_slice(b"}}");
}

/// Writes `changes` as the events write them: only the named members, `null` where cleared.
pub(crate) fn write_changes(out: &mut Vec<u8>, changes: &Changes) {
    out.push(b'{');
    changes_members(out, changes, true);
    out.push(b'}');
}

/// The members of `changes` inside an object (`first`: nothing written in it before them).
fn changes_members(out: &mut Vec<u8>, changes: &Changes, mut first: bool) {
    let mut member = |out: &mut Vec<u8>, member: &'static str| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        name(out, member);
        out.push(b':');
    };
    if !changes.attributes.is_empty() {
        member(out, "attributes");
        attributes(out, &changes.attributes);
    }
    if !changes.relationships.is_empty() {
        member(out, "relationships");
        relationships(out, &changes.relationships);
    }
    if let Some(connections) = &changes.data_connections {
        member(out, "dataConnections");
        serde_value::<[DataConnection]>(out, connections);
    }
}

/// Attributes in the order of [`crate::Field`] (alphabetical).
fn attributes(out: &mut Vec<u8>, attributes: &FieldMap<Option<AttrValue>>) {
    separated(out, b"{}", attributes.iter(), |out, (field, value)| {
        name(out, field.name());
        out.push(b':');
        match value {
            None => out.extend_from_slice(b"null"),
            Some(AttrValue::Text(text)) => string(out, text),
            Some(AttrValue::Time(at)) => timestamp(out, *at),
            Some(AttrValue::Bool(true)) => out.extend_from_slice(b"true"),
            Some(AttrValue::Bool(false)) => out.extend_from_slice(b"false"),
            Some(AttrValue::Tags(tags)) => {
                separated(out, b"[]", tags, |out, tag| string(out, tag));
            }
        }
    });
}

/// `items` between the two bytes of `brackets`, each written by `item`, with commas between.
fn separated<T>(
    out: &mut Vec<u8>,
    brackets: &[u8; 2],
    items: impl IntoIterator<Item = T>,
    mut item: impl FnMut(&mut Vec<u8>, T),
) {
    out.push(brackets[0]);
    for (index, each) in items.into_iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        item(out, each);
    }
    out.push(brackets[1]);
}

/// Relationships in the order of [`Relation`] (alphabetical); each value in its serde form.
fn relationships(out: &mut Vec<u8>, relationships: &RelationMap<Option<RelValue>>) {
    separated(out, b"{}", relationships, |out, (relation, value)| {
        name(out, relation.name());
        out.push(b':');
        match value {
            Some(value) => serde_value(out, value),
            None => out.extend_from_slice(b"null"),
        }
    });
}

/// A rarer member, written by serde_json (writing into a `Vec` cannot fail: every map key in
/// these types is a string).
fn serde_value<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A timestamp's canonical text (`Timestamp`'s JSON form), as a string.
fn timestamp(out: &mut Vec<u8>, at: Timestamp) {
    match at.canonical_bytes() {
        Some(text) => {
            out.push(b'"');
            // The canonical text is digits, `-`, `:`, `.`, `T` and `Z`: nothing to escape.
            out.extend_from_slice(&text);
            out.push(b'"');
        }
        None => string(out, &at.to_string()),
    }
}

/// A name of the event's schema (a member, a field, a relation, an event type) as a JSON
/// string: ASCII letters, nothing to escape, so copied as it is (each event writes a dozen).
fn name(out: &mut Vec<u8>, name: &'static str) {
    debug_assert!(name.bytes().all(|byte| escape_of(byte).is_none()), "{name}");
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.push(b'"');
}

/// `text` as a JSON string, escaped as serde_json escapes.
pub(crate) fn string(out: &mut Vec<u8>, text: &str) {
    out.reserve(text.len() + 2);
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut copied = 0;
    for (index, word) in bytes.chunks(8).enumerate() {
        // Eight bytes at a time; the last few padded with spaces, which need no escaping (a
        // string's last bytes went one by one, most of a short string's cost).
        let mut eight = [b' '; 8];
        eight[..word.len()].copy_from_slice(word);
        if !any_to_escape(u64::from_le_bytes(eight)) {
            continue;
        }
        let start = index * 8;
        for (at, byte) in word.iter().enumerate() {
            if let Some(escape) = escape_of(*byte) {
                out.extend_from_slice(&bytes[copied..start + at]);
                escape.write(out);
                copied = start + at + 1;
            }
        }
    }
    out.extend_from_slice(&bytes[copied..]);
    out.push(b'"');
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `word` is below 0x20, a `"` or a `\` (a byte-wise test on the whole
/// word: a zero byte of `word ^ c` is a byte equal to `c`; below-0x20 by the borrow of a
/// subtraction; neither can miss one, and a false alarm only sends the word to the byte loop).
fn any_to_escape(word: u64) -> bool {
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let quote = zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(word ^ (ONES * u64::from(b'\\')));
    below_space | quote | backslash != 0
}

/// How serde_json escapes a byte, if it does.
enum Escape {
    /// Two bytes: `\` and this.
    Short(u8),
    /// `\u00` and the byte in two lowercase hex digits.
    Unicode(u8),
}

impl Escape {
    fn write(self, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        match self {
            Escape::Short(byte) => out.extend_from_slice(&[b'\\', byte]),
            Escape::Unicode(byte) => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]),
        }
    }
}

fn escape_of(byte: u8) -> Option<Escape> {
    match byte {
        b'"' => Some(Escape::Short(b'"')),
        b'\\' => Some(Escape::Short(b'\\')),
        0x08 => Some(Escape::Short(b'b')),
        0x0c => Some(Escape::Short(b'f')),
        b'\n' => Some(Escape::Short(b'n')),
        b'\r' => Some(Escape::Short(b'r')),
        b'\t' => Some(Escape::Short(b't')),
        0x00..=0x1f => Some(Escape::Unicode(byte)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_string(text: &str) -> Vec<u8> {
        serde_json::to_vec(text).unwrap()
    }

    #[test]
    fn strings_are_escaped_byte_for_byte_as_serde_json_escapes_them() {
        let mut every_byte = String::new();
        for byte in 0u8..=0x7f {
            every_byte.push(char::from(byte));
        }
        let samples = [
            String::new(),
            "plain".into(),
            "exactly8".into(),
            "sixteen bytes ok".into(),
            "quote \" and back\\slash in the middle of a longer run".into(),
            "line one\nline \"two\" — ünïcödé 📞\u{7f}\u{1}\u{1f}".into(),
            every_byte.clone(),
            every_byte.repeat(3),
            "\"\"\"\"\"\"\"\"\"".into(),
        ];
        for sample in &samples {
            for start in 0..sample.len().min(9) {
                let Some(text) = sample.get(start..) else {
                    continue;
                };
                let mut out = Vec::new();
                string(&mut out, text);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    String::from_utf8(serde_string(text)).unwrap(),
                    "{text:?}"
                );
            }
        }
    }
}
