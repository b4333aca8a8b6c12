//! A JSON document as a write arrives, the one tree its validation reads: strings borrowed from
//! the request's bytes wherever they need no unescaping, an object its members in order.
//!
//! A `serde_json::Value` built an ordered map per object (the workspace's `preserve_order`: a
//! hash table beside the members) and a `String` per key and per string; parsing a create into
//! one and dropping it was a third of an import's work per line.

use crate::event_data::Borrowed;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// A JSON value, borrowing from the text it was read from where it can.
#[derive(Clone, Debug, PartialEq)]
pub enum JsonIn<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as serde_json reads it.
    Number(Number),
    /// A string: borrowed unless it held escapes.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<JsonIn<'a>>),
    /// An object.
    Object(Members<'a>),
}

/// An object's members in the order they were first named. A name given twice keeps its first
/// place and its last value, as `serde_json::Value` does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Members<'a>(Vec<(Cow<'a, str>, JsonIn<'a>)>);

/// Past this many members a repeated name is found through a table rather than by a scan, so
/// that a hostile object of many members costs linear time.
const SCANNED_MEMBERS: usize = 16;

impl<'a, const N: usize> From<[(&'a str, JsonIn<'a>); N]> for Members<'a> {
    /// An object of `members`, whose names are distinct.
    fn from(members: [(&'a str, JsonIn<'a>); N]) -> Members<'a> {
        let mut builder = MembersBuilder::default();
        for (name, value) in members {
            builder.push(Cow::Borrowed(name), value);
        }
        builder.finish()
    }
}

impl<'a> Members<'a> {
    /// The members, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &JsonIn<'a>)> {
        self.0.iter().map(|(name, value)| (name.as_ref(), value))
    }

    /// The members' names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(name, _)| name.as_ref())
    }

    /// The member named `name`.
    pub fn get(&self, name: &str) -> Option<&JsonIn<'a>> {
        self.0
            .iter()
            .find(|(member, _)| member == name)
            .map(|(_, value)| value)
    }

    /// Whether a member is named `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An object being read: its members in order, a repeated name keeping its first place and
/// taking the later value.
#[derive(Default)]
struct MembersBuilder<'a> {
    members: Vec<(Cow<'a, str>, JsonIn<'a>)>,
    /// Each name's place, once there are more than [`SCANNED_MEMBERS`].
    places: Option<HashMap<Cow<'a, str>, usize>>,
}

impl<'a> MembersBuilder<'a> {
    fn push(&mut self, name: Cow<'a, str>, value: JsonIn<'a>) {
        let place = match &self.places {
            Some(places) => places.get(&name).copied(),
            None => self.members.iter().position(|(member, _)| *member == name),
        };
        if let Some(place) = place {
            self.members[place].1 = value;
            return;
        }
        if let Some(places) = &mut self.places {
            places.insert(name.clone(), self.members.len());
        }
        self.members.push((name, value));
        if self.places.is_none() && self.members.len() > SCANNED_MEMBERS {
            self.places = Some(
                self.members
                    .iter()
                    .enumerate()
                    .map(|(place, (member, _))| (member.clone(), place))
                    .collect(),
            );
        }
    }

    fn finish(self) -> Members<'a> {
        Members(self.members)
    }
}

impl<'a> JsonIn<'a> {
    /// Reads one JSON document from `bytes`, as `serde_json::from_slice` would (the same errors,
    /// nothing but whitespace after it).
    ///
    /// The bytes are checked as UTF-8 once, then read as text: read as bytes, serde_json checks
    /// every string on its own, which was 3.5% of an import's instructions (about 100 for each
    /// of a create's 30-odd strings, against a few hundred for the whole line at once). Bytes
    /// that are not UTF-8 are read as bytes, for serde_json's own error with its line and column.
    pub fn from_slice(bytes: &'a [u8]) -> Result<JsonIn<'a>, serde_json::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => JsonIn::from_text(text),
            Err(_) => serde_json::from_slice(bytes),
        }
    }

    /// Reads one JSON document from `text`, as `serde_json::from_str` would.
    pub fn from_text(text: &'a str) -> Result<JsonIn<'a>, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The object's members, if it is one.
    pub fn as_object(&self) -> Option<&Members<'a>> {
        match self {
            JsonIn::Object(members) => Some(members),
            _ => None,
        }
    }

    /// The array's items, if it is one.
    pub fn as_array(&self) -> Option<&[JsonIn<'a>]> {
        match self {
            JsonIn::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            JsonIn::String(text) => Some(text),
            _ => None,
        }
    }

    /// The boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            JsonIn::Bool(flag) => Some(*flag),
            _ => None,
        }
    }

    /// Whether it is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, JsonIn::Null)
    }

    /// Whether it is `true` or `false`.
    pub fn is_boolean(&self) -> bool {
        matches!(self, JsonIn::Bool(_))
    }

    /// How deeply it nests: 0 for a scalar, 1 for an array or object of scalars.
    pub fn depth(&self) -> usize {
        match self {
            JsonIn::Array(items) => 1 + items.iter().map(JsonIn::depth).max().unwrap_or(0),
            JsonIn::Object(members) => {
                1 + members.0.iter().map(|(_, v)| v.depth()).max().unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// The same value, borrowing `value`'s strings: for a caller that already holds a
    /// `serde_json::Value`.
    pub fn from_value(value: &'a Value) -> JsonIn<'a> {
        match value {
            Value::Null => JsonIn::Null,
            Value::Bool(flag) => JsonIn::Bool(*flag),
            Value::Number(number) => JsonIn::Number(number.clone()),
            Value::String(text) => JsonIn::String(Cow::Borrowed(text)),
            Value::Array(items) => JsonIn::Array(items.iter().map(JsonIn::from_value).collect()),
            Value::Object(members) => JsonIn::Object(Members(
                members
                    .iter()
                    .map(|(name, value)| (Cow::Borrowed(name.as_str()), JsonIn::from_value(value)))
                    .collect(),
            )),
        }
    }
}

impl<'de> Deserialize<'de> for JsonIn<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JsonIn<'de>, D::Error> {
        deserializer.deserialize_any(JsonInVisitor)
    }
}

struct JsonInVisitor;

impl<'de> Visitor<'de> for JsonInVisitor {
    type Value = JsonIn<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<JsonIn<'de>, E> {
        Ok(JsonIn::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<JsonIn<'de>, E> {
        Ok(JsonIn::Null)
    }

    fn visit_bool<E: de::Error>(self, flag: bool) -> Result<JsonIn<'de>, E> {
        Ok(JsonIn::Bool(flag))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<JsonIn<'de>, E> {
        Ok(JsonIn::Number(number.into()))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<JsonIn<'de>, E> {
        Ok(JsonIn::Number(number.into()))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<JsonIn<'de>, E> {
        Ok(Number::from_f64(number).map_or(JsonIn::Null, JsonIn::Number))
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<JsonIn<'de>, E> {
        Ok(JsonIn::String(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<JsonIn<'de>, E> {
        Ok(JsonIn::String(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<JsonIn<'de>, E> {
        Ok(JsonIn::String(Cow::Owned(text)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonIn<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(JsonIn::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonIn<'de>, A::Error> {
        let mut members = MembersBuilder::default();
        while let Some(Borrowed(name)) = map.next_key()? {
            let value: JsonIn<'de> = map.next_value()?;
            members.push(name, value);
        }
        Ok(JsonIn::Object(members.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{check_write, parse_write, Rights, WriteMode};

    const DOCUMENTS: &[&str] = &[
        r#"{"data":{"type":"call","attributes":{"direction":"inbound","note":"caf\u00e9 \"quoted\"","tags":["a","b"],"shouldRecordCall":true},"relationships":{"prospect":{"data":{"type":"prospect","id":7}}}}}"#,
        r#"{"data":{"type":"call","attributes":{"note":"first","note":"last","direction":"sideways"}}}"#,
        r#"{"data":{"type":"call","id":3,"attributes":{"dialedAt":"not a time","tags":[1,null]},"meta":{"occurredAt":null,"dataConnections":[{"id":42,"url":"ftp://x"}]}}}"#,
        r#"[1, -2, 3.5, 1e3, 18446744073709551615, null, false, {"a":{"b":[{}]}}]"#,
        r#""just a string""#,
    ];

    #[test]
    fn it_reads_what_a_value_reads() {
        for document in DOCUMENTS {
            let value: Value = serde_json::from_str(document).unwrap();
            let read = JsonIn::from_slice(document.as_bytes()).unwrap();
            assert_eq!(read, JsonIn::from_value(&value), "{document}");
            assert_eq!(read.depth(), depth_of(&value), "{document}");
        }
    }

    fn depth_of(value: &Value) -> usize {
        match value {
            Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
            Value::Object(members) => 1 + members.values().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn a_write_validates_alike_read_either_way() {
        for document in DOCUMENTS {
            let value: Value = serde_json::from_str(document).unwrap();
            let read = JsonIn::from_slice(document.as_bytes()).unwrap();
            for mode in [WriteMode::Create, WriteMode::Update(3)] {
                for voice in [false, true] {
                    let rights = Rights { voice };
                    assert_eq!(
                        check_write(&read, mode, rights),
                        parse_write(&value, mode, rights),
                        "{document}"
                    );
                }
            }
        }
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let read = JsonIn::from_slice(br#"{"plain":"text","escaped":"a\nb"}"#).unwrap();
        let members = read.as_object().unwrap();
        assert!(matches!(
            members.get("plain"),
            Some(JsonIn::String(Cow::Borrowed("text")))
        ));
        assert!(
            matches!(members.get("escaped"), Some(JsonIn::String(Cow::Owned(text))) if text == "a\nb")
        );
    }

    #[test]
    fn a_name_given_twice_keeps_its_first_place_and_last_value_however_many_members() {
        for members in [3, SCANNED_MEMBERS + 5, 1000] {
            let mut document = String::from("{");
            for i in 0..members {
                document.push_str(&format!("\"m{i}\":{i},"));
            }
            document.push_str("\"m1\":\"again\",\"m0\":null}");
            let value: Value = serde_json::from_str(&document).unwrap();
            let read = JsonIn::from_slice(document.as_bytes()).unwrap();
            assert_eq!(read, JsonIn::from_value(&value));
            let object = read.as_object().unwrap();
            assert_eq!(object.len(), members);
            assert_eq!(object.keys().take(2).collect::<Vec<_>>(), ["m0", "m1"]);
            assert_eq!(object.get("m1").and_then(JsonIn::as_str), Some("again"));
            assert!(object.get("m0").is_some_and(JsonIn::is_null));
        }
    }

    #[test]
    fn bad_json_is_refused_as_serde_json_refuses_it() {
        for bad in [
            "",
            "{",
            r#"{"a":}"#,
            "[1,]",
            "{} extra",
            r#""\ud800""#,
            "1e400",
        ] {
            let expected = serde_json::from_str::<Value>(bad).unwrap_err().to_string();
            let got = JsonIn::from_slice(bad.as_bytes()).unwrap_err().to_string();
            assert_eq!(got, expected, "{bad:?}");
            let got = JsonIn::from_text(bad).unwrap_err().to_string();
            assert_eq!(got, expected, "{bad:?}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused_where_serde_json_finds_them() {
        for bad in [
            &b"{\"note\":\"caf\xE9\"}"[..],
            b"{\"a\":1,\n\"b\":\"\xF0\x9F\x98\"}",
            b"{\"a\":1} \xFF",
            b"\xEF\xBB\xBF{}",
        ] {
            let expected = serde_json::from_slice::<Value>(bad)
                .unwrap_err()
                .to_string();
            let got = JsonIn::from_slice(bad).unwrap_err().to_string();
            assert_eq!(got, expected, "{bad:?}");
        }
    }

    #[test]
    fn text_reads_as_its_bytes_read() {
        for document in DOCUMENTS {
            assert_eq!(
                JsonIn::from_text(document).unwrap(),
                JsonIn::from_slice(document.as_bytes()).unwrap(),
                "{document}"
            );
        }
    }
}
