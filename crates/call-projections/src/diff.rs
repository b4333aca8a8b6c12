//! What `verify` reports: the differences between the live view and a rebuilt one, call by call
//! (whether a view is a row or in a pack is how it was written, not what it says) and row by
//! row for the rest, each said in words (which call, which member, both values).

use crate::error::ProjectionError;
use crate::index::Differences;
use crate::store::{
    self, decode_call, decode_deletion, describe_key, read_u64, split_key, Views, CALL, DELETION,
    PACK,
};
use call_model::{Call, Field, Relation};

/// Compares two view trees: their calls' views, then their other rows.
pub(crate) fn compare_trees(
    live: &sled::Tree,
    rebuilt: &sled::Tree,
    out: &mut Differences,
) -> Result<(), ProjectionError> {
    let as_rows = |views: Views| {
        views.map(|view| view.map(|(id, bytes)| (sled::IVec::from(&store::key(CALL, id)), bytes)))
    };
    compare_rows(as_rows(Views::new(live)), as_rows(Views::new(rebuilt)), out)?;
    let others = |tree: &sled::Tree| {
        tree.iter()
            .filter(|entry| {
                !matches!(entry, Ok((key, _)) if matches!(key.first(), Some(&CALL) | Some(&PACK)))
            })
            .map(|entry| entry.map_err(ProjectionError::from))
    };
    compare_rows(others(live), others(rebuilt), out)
}

/// Compares two sequences of rows in key order.
fn compare_rows(
    live: impl Iterator<Item = Result<(sled::IVec, sled::IVec), ProjectionError>>,
    rebuilt: impl Iterator<Item = Result<(sled::IVec, sled::IVec), ProjectionError>>,
    out: &mut Differences,
) -> Result<(), ProjectionError> {
    let (mut a, mut b) = (live.peekable(), rebuilt.peekable());
    loop {
        let ordering = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(Err(_)), _) | (_, Some(Err(_))) => std::cmp::Ordering::Equal,
            (Some(Ok((x, _))), Some(Ok((y, _)))) => x.cmp(y),
        };
        match ordering {
            std::cmp::Ordering::Less => {
                if let Some(entry) = a.next() {
                    let (key, _) = entry?;
                    out.push(format!(
                        "{} is in the live projection but not in the rebuilt one",
                        describe_key(&key)
                    ));
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some(entry) = b.next() {
                    let (key, _) = entry?;
                    out.push(format!(
                        "{} is in the rebuilt projection but not in the live one",
                        describe_key(&key)
                    ));
                }
            }
            std::cmp::Ordering::Equal => {
                let (Some(x), Some(y)) = (a.next(), b.next()) else {
                    break;
                };
                let ((key, live_value), (_, rebuilt_value)) = (x?, y?);
                if live_value != rebuilt_value {
                    out.push(describe_value_difference(&key, &live_value, &rebuilt_value));
                }
            }
        }
    }
    Ok(())
}

/// Says how two values of one key differ.
fn describe_value_difference(key: &[u8], live: &[u8], rebuilt: &[u8]) -> String {
    let name = describe_key(key);
    match split_key(key) {
        Some((CALL, id)) => match (decode_call(id, live), decode_call(id, rebuilt)) {
            (Ok(live), Ok(rebuilt)) => format!("{name}: {}", call_difference(&live, &rebuilt)),
            (Err(error), _) => format!("{name}: the live row cannot be read ({error})"),
            (_, Err(error)) => format!("{name}: the rebuilt row cannot be read ({error})"),
        },
        Some((DELETION, position)) => match (
            decode_deletion(position, live),
            decode_deletion(position, rebuilt),
        ) {
            (Ok(a), Ok(b)) => format!(
                "{name}: call {} deleted at {} live, call {} deleted at {} rebuilt",
                a.id, a.deleted_at, b.id, b.deleted_at
            ),
            _ => format!("{name}: the rows differ and one cannot be read"),
        },
        _ if key == store::CHECKPOINT => format!(
            "{name}: {} live, {} rebuilt",
            show_u64(key, live),
            show_u64(key, rebuilt)
        ),
        _ if key == store::COUNTERS && live.len() == 16 && rebuilt.len() == 16 => format!(
            "{name}: {} live and {} deleted calls live, {} and {} rebuilt",
            show_u64(key, &live[..8]),
            show_u64(key, &live[8..]),
            show_u64(key, &rebuilt[..8]),
            show_u64(key, &rebuilt[8..])
        ),
        _ => format!(
            "{name}: {:?} live, {:?} rebuilt",
            String::from_utf8_lossy(live),
            String::from_utf8_lossy(rebuilt)
        ),
    }
}

fn show_u64(key: &[u8], value: &[u8]) -> String {
    read_u64(key, value).map_or_else(|_| format!("{value:?}"), |n| n.to_string())
}

/// Names the members in which two views of one call differ.
fn call_difference(live: &Call, rebuilt: &Call) -> String {
    let mut parts = Vec::new();
    if live.version != rebuilt.version {
        parts.push(format!(
            "version {} live, {} rebuilt",
            live.version, rebuilt.version
        ));
    }
    if live.position != rebuilt.position {
        parts.push(format!(
            "position {} live, {} rebuilt",
            live.position, rebuilt.position
        ));
    }
    let show = |value: Option<String>| value.unwrap_or_else(|| "null".to_owned());
    for field in Field::ALL {
        let (a, b) = (live.attribute(*field), rebuilt.attribute(*field));
        if a != b {
            parts.push(format!(
                "{field} {} live, {} rebuilt",
                show(a.map(|v| v.to_json().to_string())),
                show(b.map(|v| v.to_json().to_string()))
            ));
        }
    }
    for relation in Relation::ALL {
        let (a, b) = (
            live.relationships.get(relation),
            rebuilt.relationships.get(relation),
        );
        if a != b {
            let json = |v: Option<&call_model::RelValue>| {
                show(v.and_then(|v| serde_json::to_string(v).ok()))
            };
            parts.push(format!("{relation} {} live, {} rebuilt", json(a), json(b)));
        }
    }
    if live.data_connections != rebuilt.data_connections {
        parts.push("dataConnections differ".to_owned());
    }
    if parts.is_empty() {
        parts.push("the stored bytes differ".to_owned());
    }
    parts.join("; ")
}
