//! Opaque keyset cursors: URL-safe base64 of a small JSON object naming a row's place in a
//! list's order (its sort values and id) and the fingerprint of the list it belongs to.
//!
//! A cursor carries values, not a reference to a row, so it stays valid when the row it names is
//! changed or deleted: the next page simply starts at the place the row had. The fingerprint is
//! a hash of the normalised filters and sort (not the page size, not the cursor), so a cursor
//! taken to a list with another sort or other filters is told apart from a garbled one.

use super::order::{Order, RowKey, SortVal};
use crate::error::QueryError;
use crate::index::Shared;
use crate::index::SortCol;
use crate::query::{Condition, Filter, FilterTarget, FilterValue};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// Longer cursors are refused before decoding: sort values are at most a few hundred
/// characters, so a real cursor is far shorter.
const MAX_CURSOR_LEN: usize = 8192;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorJson {
    /// The row's sort values, one per sort key before the id.
    v: Vec<Value>,
    /// The row's id.
    i: u64,
    /// The list's fingerprint.
    q: String,
}

/// The fingerprint of a list: filters and order, normalised so that equivalent queries (filters
/// in another order, values repeated) share it.
pub(crate) fn fingerprint(filters: &[Filter], order: &Order) -> String {
    let mut canonical = String::from("v1|sort:");
    for key in &order.keys {
        let _ = write!(
            canonical,
            "{}{},",
            if key.desc { '-' } else { '+' },
            key.field
        );
    }
    let _ = write!(
        canonical,
        "{}id|filters:",
        if order.id_desc { '-' } else { '+' }
    );
    let mut parts: Vec<String> = filters.iter().map(canonical_filter).collect();
    parts.sort();
    parts.dedup();
    canonical.push_str(&parts.join(";"));
    let digest = Sha256::digest(canonical.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..12])
}

fn canonical_filter(filter: &Filter) -> String {
    let target = match filter.target {
        FilterTarget::Id => "id".to_owned(),
        FilterTarget::Attr(field) => format!("attr:{field}"),
        FilterTarget::Related(relation) => format!("rel:{relation}"),
    };
    let condition = match &filter.condition {
        Condition::AnyOf(values) => {
            let mut values: Vec<&FilterValue> = values.iter().collect();
            values.sort();
            values.dedup();
            let values: Vec<String> = values.into_iter().map(canonical_value).collect();
            format!("in[{}]", values.join(","))
        }
        Condition::Null => "null".to_owned(),
        Condition::NotNull => "notnull".to_owned(),
        Condition::Range { lower, upper } => format!(
            "range[{},{}]",
            lower.as_ref().map_or_else(String::new, canonical_value),
            upper.as_ref().map_or_else(String::new, canonical_value)
        ),
    };
    format!("{target}={condition}")
}

fn canonical_value(value: &FilterValue) -> String {
    match value {
        FilterValue::Int(n) => format!("i{n}"),
        // JSON quoting keeps commas and brackets inside a string from reading as structure.
        FilterValue::Text(text) => format!("s{}", Value::String(text.clone())),
        FilterValue::Time(at) => format!("t{}", at.millis()),
        FilterValue::Bool(flag) => format!("b{flag}"),
    }
}

/// The cursor naming `key`'s place in a list with this fingerprint.
pub(crate) fn encode(key: &RowKey, fingerprint: &str) -> String {
    let json = CursorJson {
        v: key
            .vals
            .iter()
            .map(|value| match value {
                SortVal::Null => Value::Null,
                SortVal::Int(n) => Value::from(*n),
                SortVal::Text(text) => Value::String(text.to_string()),
            })
            .collect(),
        i: key.id,
        q: fingerprint.to_owned(),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json).unwrap_or_default())
}

/// Reads a cursor for the list with this fingerprint and order.
pub(crate) fn decode(text: &str, fingerprint: &str, order: &Order) -> Result<RowKey, QueryError> {
    if text.len() > MAX_CURSOR_LEN {
        return Err(QueryError::InvalidCursor);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| QueryError::InvalidCursor)?;
    let json: CursorJson = serde_json::from_slice(&bytes).map_err(|_| QueryError::InvalidCursor)?;
    if json.q != fingerprint {
        return Err(QueryError::CursorMismatch);
    }
    if json.v.len() != order.keys.len() {
        return Err(QueryError::InvalidCursor);
    }
    let vals = json
        .v
        .into_iter()
        .zip(&order.keys)
        .map(|(value, key)| match (value, key.col) {
            (Value::Null, _) => Ok(SortVal::Null),
            (Value::Number(n), SortCol::Time(_)) => n
                .as_i64()
                .map(SortVal::Int)
                .ok_or(QueryError::InvalidCursor),
            (Value::String(text), SortCol::Text(_)) => Ok(SortVal::Text(Shared::from(text))),
            _ => Err(QueryError::InvalidCursor),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RowKey { vals, id: json.i })
}
