//! The one JSON writer of the API: objects written member by member in the order given, the
//! caps on how much of a request's own text a reply echoes, and what JSON text the API and the
//! importer read past (a byte order mark).

use serde::Serialize;

/// The most characters of a request's own text (a parameter name, a value) a reply echoes.
pub const MAX_ECHO_CHARS: usize = 512;

/// The UTF-8 byte order mark.
const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// `text` without a UTF-8 byte order mark at its start. RFC 8259 (section 8.1) lets a parser
/// ignore one, and Windows tools (editors, PowerShell, spreadsheet exports) write it: refused,
/// such a document failed as "not valid JSON" at its first character, which looks like `{`.
pub fn without_byte_order_mark(text: &[u8]) -> &[u8] {
    text.strip_prefix(BYTE_ORDER_MARK).unwrap_or(text)
}

/// Writes a JSON object member by member, in the order given. (serde_json's own map sorts its
/// keys; a document reads better as `{"type":"call","id":7,"attributes":...}`.)
///
/// Everything, nested objects included, is written straight into one buffer: a get's reply is
/// a few dozen members, and a string per member and per nested object made building it cost
/// more than reading the call (a third of the gateway's time in a get, most of it growing
/// those strings).
pub(crate) struct ObjectWriter {
    out: Vec<u8>,
    empty: bool,
}

/// What a reply's object starts with room for, so that a resource is written without growing.
const INITIAL_CAPACITY: usize = 2048;

impl ObjectWriter {
    pub(crate) fn new() -> ObjectWriter {
        ObjectWriter::with_capacity(INITIAL_CAPACITY)
    }

    /// A writer whose buffer starts with room for `capacity` bytes.
    pub(crate) fn with_capacity(capacity: usize) -> ObjectWriter {
        let mut out = Vec::with_capacity(capacity);
        out.push(b'{');
        ObjectWriter { out, empty: true }
    }

    /// Writes the separator and `"key":`.
    ///
    /// A key is one of the program's own names (`&'static str`: a literal, or an attribute's or
    /// relationship's name from call-model), never a request's text, so it is copied without
    /// escaping; `every_key_the_api_writes_needs_no_escaping` checks the model's names. (The
    /// escaping check on every key was a quarter of a get's instructions.)
    fn key(&mut self, key: &'static str) {
        debug_assert!(
            !key.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'),
            "{key:?} needs escaping"
        );
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// Adds a member whose value is already JSON text.
    pub(crate) fn raw(&mut self, key: &'static str, json: &str) -> &mut ObjectWriter {
        self.key(key);
        self.out.extend_from_slice(json.as_bytes());
        self
    }

    /// Adds a member.
    pub(crate) fn value(&mut self, key: &'static str, value: &impl Serialize) -> &mut ObjectWriter {
        self.key(key);
        write_json(&mut self.out, value);
        self
    }

    /// Adds a member whose value is an object, written by `members` into this writer's buffer.
    pub(crate) fn object(
        &mut self,
        key: &'static str,
        members: impl FnOnce(&mut ObjectWriter),
    ) -> &mut ObjectWriter {
        self.key(key);
        let mut nested = ObjectWriter {
            out: std::mem::take(&mut self.out),
            empty: true,
        };
        nested.out.push(b'{');
        members(&mut nested);
        self.out = nested.out;
        self.out.push(b'}');
        self
    }

    /// Adds a string member that echoes the request's own text, cut to [`MAX_ECHO_CHARS`].
    pub(crate) fn echo(&mut self, key: &'static str, text: &str) -> &mut ObjectWriter {
        self.value(key, &bounded(text))
    }

    /// The object's text.
    pub(crate) fn finish(self) -> String {
        let mut out = self.out;
        out.push(b'}');
        into_string(out)
    }

    /// The object's bytes, for a document that goes out as they are (no UTF-8 check: everything
    /// written here is UTF-8).
    pub(crate) fn finish_bytes(self) -> Vec<u8> {
        let mut out = self.out;
        out.push(b'}');
        out
    }

    /// The members' text without the braces, to follow other members of an enclosing object.
    pub(crate) fn members(self) -> String {
        let mut out = self.out;
        out.remove(0);
        into_string(out)
    }
}

/// Appends the JSON text of `value` to `out`; `null` for a value serde_json refuses (never the
/// case for the plain data written here), with nothing of it left half-written.
fn write_json(out: &mut Vec<u8>, value: &impl Serialize) {
    let start = out.len();
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(start);
        out.extend_from_slice(b"null");
    }
}

/// The buffer as text: serde_json and the `&str` members only ever write UTF-8, so the lossy
/// branch is never taken; it is there so that nothing here can panic.
fn into_string(out: Vec<u8>) -> String {
    String::from_utf8(out)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

/// `text`, cut to [`MAX_ECHO_CHARS`] characters with an ellipsis when longer.
fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]).into(),
        None => text.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use call_model::{Field, Relation};

    #[test]
    fn every_key_the_api_writes_needs_no_escaping() {
        let names = Field::ALL
            .iter()
            .map(|field| field.name())
            .chain(Relation::ALL.iter().map(|relation| relation.name()));
        for name in names {
            let mut object = ObjectWriter::new();
            object.value(name, &1);
            let text = object.finish();
            let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(parsed[name], 1, "{text}");
        }
    }
}
