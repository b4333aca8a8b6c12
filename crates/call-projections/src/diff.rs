//! What `verify` reports: the differences between the live view and a rebuilt one, call by call
//! (whether a view is a row or in a pack is how it was written, not what it says), deletion by
//! deletion, and row by row for the rest, each said in words (which call, which member, both
//! values).

use crate::error::ProjectionError;
use crate::index::Differences;
use crate::store::{
    self, decode_call, describe_key, read_u64, split_key, Deletions, Views, CALL, DELETION, PACK,
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
    let rows = Rows {
        name: describe_key,
        difference: describe_value_difference,
    };
    rows.compare(as_rows(Views::new(live)), as_rows(Views::new(rebuilt)), out)?;
    // Each deletion as a row of its own, keyed by its position (a stored row holds a range).
    let deletions = |tree: &sled::Tree| {
        Deletions::new(tree, 0).map(|deletion| {
            deletion.map(|deletion| {
                let entry =
                    store::encode_deletion(deletion.position, deletion.id, deletion.deleted_at);
                (
                    sled::IVec::from(&deletion.position.to_be_bytes()),
                    sled::IVec::from(&entry),
                )
            })
        })
    };
    let deletion_rows = Rows {
        name: |position: &[u8]| format!("deletion at position {}", show_u64(b"", position)),
        difference: |position: &[u8], live: &[u8], rebuilt: &[u8]| {
            let show = |entry: &[u8]| match store::decode_deletion(entry) {
                Some(deletion) => {
                    format!("call {} deleted at {}", deletion.id, deletion.deleted_at)
                }
                None => format!("{entry:?}"),
            };
            format!(
                "deletion at position {}: {} live, {} rebuilt",
                show_u64(b"", position),
                show(live),
                show(rebuilt)
            )
        },
    };
    deletion_rows.compare(deletions(live), deletions(rebuilt), out)?;
    let others = |tree: &sled::Tree| {
        tree.iter()
            .filter(|entry| {
                !matches!(entry, Ok((key, _))
                    if matches!(key.first(), Some(&CALL) | Some(&PACK) | Some(&DELETION)))
            })
            .map(|entry| entry.map_err(ProjectionError::from))
    };
    rows.compare(others(live), others(rebuilt), out)
}

/// How the differences between two sequences of rows are said: a row's name from its key, and
/// how two values of one key differ.
struct Rows<N, D> {
    name: N,
    difference: D,
}

impl<N: Fn(&[u8]) -> String, D: Fn(&[u8], &[u8], &[u8]) -> String> Rows<N, D> {
    /// Compares two sequences of rows in key order.
    fn compare(
        &self,
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
                            (self.name)(&key)
                        ));
                    }
                }
                std::cmp::Ordering::Greater => {
                    if let Some(entry) = b.next() {
                        let (key, _) = entry?;
                        out.push(format!(
                            "{} is in the rebuilt projection but not in the live one",
                            (self.name)(&key)
                        ));
                    }
                }
                std::cmp::Ordering::Equal => {
                    let (Some(x), Some(y)) = (a.next(), b.next()) else {
                        break;
                    };
                    let ((key, live_value), (_, rebuilt_value)) = (x?, y?);
                    if live_value != rebuilt_value {
                        out.push((self.difference)(&key, &live_value, &rebuilt_value));
                    }
                }
            }
        }
        Ok(())
    }
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
