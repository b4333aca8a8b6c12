//! The order of a list: its sort keys normalised, each row's place in it ([`RowKey`]), and how
//! two places compare.

use crate::error::QueryError;
use crate::index::Shared;
use crate::index::{slot, Indexes, Slot, SortCol, NULL_TIME};
use crate::query::{SortField, SortKey};
use call_model::{Call, Field};
use std::cmp::Ordering;

/// A sort value as the order compares it: null first, then the value. One sort key only ever
/// holds nulls and one of the other variants.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SortVal {
    /// Null.
    Null,
    /// A date-time, in milliseconds.
    Int(i64),
    /// A string.
    Text(Shared),
}

/// One sort key before the final `id`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OrderKey {
    pub(crate) field: Field,
    pub(crate) col: SortCol,
    pub(crate) desc: bool,
}

/// A list's normalised order: the attribute keys, then `id`.
#[derive(Clone, Debug)]
pub(crate) struct Order {
    pub(crate) keys: Vec<OrderKey>,
    pub(crate) id_desc: bool,
}

/// A row's place in an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RowKey {
    /// One value per attribute key.
    pub(crate) vals: Vec<SortVal>,
    pub(crate) id: u64,
}

impl Order {
    /// Normalises sort keys: keys after `id` change nothing and are dropped, a repeated key is
    /// dropped, and `id` is added last, in the direction of the last key written, when not named.
    pub(crate) fn of(sort: &[SortKey]) -> Result<Order, QueryError> {
        let mut keys: Vec<OrderKey> = Vec::new();
        // `id` breaks ties in the direction of the last key as written.
        let mut id_desc = false;
        for key in sort {
            id_desc = key.descending;
            match key.field {
                SortField::Id => break,
                SortField::Attr(field) => {
                    let Slot::Sort(col) = slot(field) else {
                        return Err(QueryError::InvalidSort(field.name().to_owned()));
                    };
                    if keys.iter().all(|k| k.field != field) {
                        keys.push(OrderKey {
                            field,
                            col,
                            desc: key.descending,
                        });
                    }
                }
            }
        }
        Ok(Order { keys, id_desc })
    }

    /// Ascending id: the default order.
    pub(crate) fn by_id() -> Order {
        Order {
            keys: Vec::new(),
            id_desc: false,
        }
    }

    /// Compares two rows in this order.
    pub(crate) fn cmp(&self, a: &RowKey, b: &RowKey) -> Ordering {
        for (i, key) in self.keys.iter().enumerate() {
            let ordering = a.vals.get(i).cmp(&b.vals.get(i));
            let ordering = if key.desc {
                ordering.reverse()
            } else {
                ordering
            };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        let ordering = a.id.cmp(&b.id);
        if self.id_desc {
            ordering.reverse()
        } else {
            ordering
        }
    }

    /// Whether the first key's index order (value, then id) is exactly this order (or its
    /// reverse), so no in-memory sorting is needed.
    pub(crate) fn index_order_is_exact(&self) -> bool {
        self.keys.len() == 1 && self.keys[0].desc == self.id_desc
    }

    /// The place of call `id`, from the in-memory columns.
    pub(crate) fn key_of(&self, indexes: &Indexes, id: u64) -> RowKey {
        RowKey {
            vals: self
                .keys
                .iter()
                .map(|key| column_value(indexes, key.col, id))
                .collect(),
            id,
        }
    }

    /// The place of `call`.
    pub(crate) fn key_of_call(&self, call: &Call) -> RowKey {
        RowKey {
            vals: self
                .keys
                .iter()
                .map(|key| match key.col {
                    SortCol::Time(_) => call
                        .time(key.field)
                        .map_or(SortVal::Null, |at| SortVal::Int(at.millis())),
                    SortCol::Text(_) => call
                        .text(key.field)
                        .map_or(SortVal::Null, |text| SortVal::Text(Shared::from(text))),
                })
                .collect(),
            id: call.id,
        }
    }
}

pub(crate) fn column_value(indexes: &Indexes, col: SortCol, id: u64) -> SortVal {
    match col {
        SortCol::Time(i) => match indexes.times[i].col.get(id) {
            NULL_TIME => SortVal::Null,
            millis => SortVal::Int(millis),
        },
        SortCol::Text(i) => match indexes.sort_texts[i].col.get(id).to_shared() {
            Some(text) => SortVal::Text(text),
            None => SortVal::Null,
        },
    }
}

/// `ordering`, reversed when walking backward.
pub(crate) fn directed(ordering: Ordering, backward: bool) -> Ordering {
    if backward {
        ordering.reverse()
    } else {
        ordering
    }
}
