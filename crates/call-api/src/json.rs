//! The one JSON writer of the API: objects written member by member in the order given, and
//! the caps on how much of a request's own text a reply echoes.

use serde::Serialize;

/// The most characters of a request's own text (a parameter name, a value) a reply echoes.
pub const MAX_ECHO_CHARS: usize = 512;

/// Writes a JSON object member by member, in the order given. (serde_json's own map sorts its
/// keys; a document reads better as `{"type":"call","id":7,"attributes":...}`.)
pub(crate) struct ObjectWriter {
    out: String,
    empty: bool,
}

impl ObjectWriter {
    pub(crate) fn new() -> ObjectWriter {
        ObjectWriter {
            out: String::from("{"),
            empty: true,
        }
    }

    /// Adds a member whose value is already JSON text.
    pub(crate) fn raw(&mut self, key: &str, json: &str) -> &mut ObjectWriter {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        self.out.push_str(&to_json(&key));
        self.out.push(':');
        self.out.push_str(json);
        self
    }

    /// Adds a member.
    pub(crate) fn value(&mut self, key: &str, value: &impl Serialize) -> &mut ObjectWriter {
        self.raw(key, &to_json(value))
    }

    /// Adds a string member that echoes the request's own text, cut to [`MAX_ECHO_CHARS`].
    pub(crate) fn echo(&mut self, key: &str, text: &str) -> &mut ObjectWriter {
        self.value(key, &bounded(text))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.empty
    }

    /// The object's text.
    pub(crate) fn finish(self) -> String {
        let mut out = self.out;
        out.push('}');
        out
    }

    /// The members' text without the braces, to follow other members of an enclosing object.
    pub(crate) fn members(self) -> String {
        self.out[1..].to_owned()
    }
}

/// JSON text of a value (never fails for the plain data written here).
pub(crate) fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// `text`, cut to [`MAX_ECHO_CHARS`] characters with an ellipsis when longer.
fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]).into(),
        None => text.into(),
    }
}
