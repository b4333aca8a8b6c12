//! Filters resolved against the indexes: each [`Filter`] typed as its index holds values, with
//! what the in-memory indexes can say about a candidate and what only the stored row can.

use super::walk::{ids_in, ids_of, IdIter};
use crate::error::QueryError;
use crate::index::Shared;
use crate::index::{note_hash, relation_slot, slot, Indexes, Slot, SortCol, NULL_TIME};
use crate::query::{Condition, Filter, FilterTarget, FilterValue};
use crate::text_cells::TextRef;
use call_model::{AttrValue, Call, Field};
use std::cmp::Ordering;
use std::ops::Bound::{Excluded, Included, Unbounded};

/// A filter value, typed as the indexes hold it (date-times as milliseconds).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Val {
    Int(i64),
    Text(Shared),
    Bool(bool),
}

/// A value read from a call or a column, to compare with a [`Val`].
#[derive(Clone, Copy)]
pub(crate) enum ValRef<'a> {
    Int(i64),
    Text(TextRef<'a>),
    Bool(bool),
}

impl ValRef<'_> {
    fn cmp_val(self, other: &Val) -> Option<Ordering> {
        match (self, other) {
            (ValRef::Int(a), Val::Int(b)) => Some(a.cmp(b)),
            (ValRef::Text(a), Val::Text(b)) => Some(a.cmp(&TextRef::whole(b))),
            (ValRef::Bool(a), Val::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

pub(crate) enum Cond {
    /// Sorted, without duplicates.
    AnyOf(Vec<Val>),
    Null,
    NotNull,
    Range(Option<Val>, Option<Val>),
}

impl Cond {
    fn holds(&self, value: Option<ValRef<'_>>) -> bool {
        match self {
            Cond::AnyOf(values) => value.is_some_and(|value| {
                values
                    .iter()
                    .any(|v| value.cmp_val(v) == Some(Ordering::Equal))
            }),
            Cond::Null => value.is_none(),
            Cond::NotNull => value.is_some(),
            Cond::Range(lower, upper) => value.is_some_and(|value| {
                lower.as_ref().is_none_or(|lower| {
                    matches!(
                        value.cmp_val(lower),
                        Some(Ordering::Greater | Ordering::Equal)
                    )
                }) && upper.as_ref().is_none_or(|upper| {
                    matches!(value.cmp_val(upper), Some(Ordering::Less | Ordering::Equal))
                })
            }),
        }
    }
}

/// A validated filter.
pub(crate) struct Resolved {
    pub(crate) target: Slot,
    pub(crate) source: FilterTarget,
    pub(crate) cond: Cond,
    /// For `note` equality: the hashes its index holds.
    pub(crate) hashes: Vec<u64>,
}

/// What the in-memory indexes can say about a candidate.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    Yes,
    No,
    /// Only the stored row can tell.
    Maybe,
}

fn yes_if(holds: bool) -> Check {
    if holds {
        Check::Yes
    } else {
        Check::No
    }
}

fn id_value(id: u64) -> ValRef<'static> {
    ValRef::Int(i64::try_from(id).unwrap_or(i64::MAX))
}

impl Resolved {
    pub(crate) fn new(filter: &Filter) -> Result<Resolved, QueryError> {
        #[derive(Clone, Copy)]
        enum Kind {
            Int,
            Time,
            Text,
            Bool,
        }
        let invalid = |reason: &str| QueryError::InvalidFilter {
            target: match filter.target {
                FilterTarget::Id => "id".to_owned(),
                FilterTarget::Attr(field) => field.name().to_owned(),
                FilterTarget::Related(relation) => format!("{relation}.id"),
            },
            reason: reason.to_owned(),
        };
        let target = match filter.target {
            FilterTarget::Id => Slot::Id,
            FilterTarget::Attr(field) => slot(field),
            FilterTarget::Related(relation) => relation_slot(relation).ok_or_else(|| {
                invalid(
                    "this relationship cannot be filtered on (every to-one relationship but associatedId can)",
                )
            })?,
        };
        let (kind, rangeable) = match target {
            Slot::Id | Slot::Related(_) => (Kind::Int, true),
            Slot::Sort(SortCol::Time(_)) => (Kind::Time, true),
            Slot::Sort(SortCol::Text(_)) | Slot::Text(_) | Slot::Note => (Kind::Text, true),
            Slot::Flag => (Kind::Bool, false),
            Slot::Tags => (Kind::Text, false),
        };
        let convert = |value: &FilterValue| match (kind, value) {
            (Kind::Int, FilterValue::Int(n)) => Ok(Val::Int(*n)),
            (Kind::Time, FilterValue::Time(at)) => Ok(Val::Int(at.millis())),
            (Kind::Text, FilterValue::Text(text)) => Ok(Val::Text(Shared::from(text.as_str()))),
            (Kind::Bool, FilterValue::Bool(flag)) => Ok(Val::Bool(*flag)),
            (Kind::Int, _) => Err(invalid("expected an integer id")),
            (Kind::Time, _) => Err(invalid("expected an RFC 3339 date-time")),
            (Kind::Text, _) => Err(invalid("expected a string")),
            (Kind::Bool, _) => Err(invalid("expected true or false")),
        };
        let cond = match &filter.condition {
            Condition::AnyOf(values) => {
                let mut values = values.iter().map(convert).collect::<Result<Vec<_>, _>>()?;
                values.sort();
                values.dedup();
                Cond::AnyOf(values)
            }
            Condition::Null => Cond::Null,
            Condition::NotNull => Cond::NotNull,
            Condition::Range { lower, upper } => {
                if !rangeable {
                    return Err(invalid(
                        "a range is not allowed here; expected values, __null__ or __notnull__",
                    ));
                }
                Cond::Range(
                    lower.as_ref().map(convert).transpose()?,
                    upper.as_ref().map(convert).transpose()?,
                )
            }
        };
        let hashes = match (&target, &cond) {
            (Slot::Note, Cond::AnyOf(values)) => values
                .iter()
                .filter_map(|v| match v {
                    Val::Text(text) => Some(note_hash(text)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(Resolved {
            target,
            source: filter.target,
            cond,
            hashes,
        })
    }

    /// Whether the filter certainly matches nothing.
    pub(crate) fn is_empty(&self) -> bool {
        matches!(&self.cond, Cond::AnyOf(values) if values.is_empty())
            || (self.target == Slot::Id && matches!(self.cond, Cond::Null))
    }

    /// What the in-memory indexes say about call `id`.
    pub(crate) fn check_indexes(&self, indexes: &Indexes, id: u64) -> Check {
        let any_text = |contains: &dyn Fn(&str) -> bool| match &self.cond {
            Cond::AnyOf(values) => yes_if(values.iter().any(|v| match v {
                Val::Text(text) => contains(text),
                _ => false,
            })),
            _ => Check::Maybe,
        };
        match self.target {
            Slot::Id => yes_if(self.cond.holds(Some(id_value(id)))),
            Slot::Sort(SortCol::Time(i)) => {
                let millis = indexes.times[i].col.get(id);
                yes_if(
                    self.cond
                        .holds((millis != NULL_TIME).then_some(ValRef::Int(millis))),
                )
            }
            Slot::Sort(SortCol::Text(i)) => {
                let text = indexes.sort_texts[i].col.get(id);
                yes_if(
                    self.cond
                        .holds((!text.is_null()).then_some(ValRef::Text(text))),
                )
            }
            Slot::Text(i) => any_text(&|text| indexes.texts[i].contains(text, id)),
            Slot::Tags => any_text(&|text| indexes.tags.contains(text, id)),
            Slot::Flag => match &self.cond {
                Cond::AnyOf(values) => yes_if(values.iter().any(|v| match v {
                    Val::Bool(flag) => indexes.flags.contains(&(*flag, id)),
                    _ => false,
                })),
                _ => Check::Maybe,
            },
            Slot::Note => match &self.cond {
                // A hash hit may be a collision: only the row can confirm it.
                Cond::AnyOf(_) => {
                    if self
                        .hashes
                        .iter()
                        .any(|h| indexes.notes.contains(&(*h, id)))
                    {
                        Check::Maybe
                    } else {
                        Check::No
                    }
                }
                _ => Check::Maybe,
            },
            Slot::Related(i) => match &self.cond {
                Cond::AnyOf(values) => yes_if(values.iter().any(|v| match v {
                    Val::Int(target) => indexes.related[i].col.get(id) == *target,
                    _ => false,
                })),
                _ => Check::Maybe,
            },
        }
    }

    /// Whether the stored call matches: the filter's exact meaning.
    pub(crate) fn check_call(&self, call: &Call) -> bool {
        match self.source {
            FilterTarget::Id => self.cond.holds(Some(id_value(call.id))),
            FilterTarget::Related(relation) => {
                self.cond.holds(call.related_id(relation).map(ValRef::Int))
            }
            FilterTarget::Attr(Field::Tags) => {
                let tags = match call.attribute(Field::Tags) {
                    Some(AttrValue::Tags(tags)) => tags.as_slice(),
                    _ => &[],
                };
                match self.cond {
                    Cond::Null => tags.is_empty(),
                    Cond::NotNull => !tags.is_empty(),
                    _ => tags
                        .iter()
                        .any(|tag| self.cond.holds(Some(ValRef::Text(TextRef::whole(tag))))),
                }
            }
            FilterTarget::Attr(field) => {
                self.cond
                    .holds(call.attribute(field).and_then(|value| match value {
                        AttrValue::Text(text) => Some(ValRef::Text(TextRef::whole(text))),
                        AttrValue::Time(at) => Some(ValRef::Int(at.millis())),
                        AttrValue::Bool(flag) => Some(ValRef::Bool(*flag)),
                        AttrValue::Tags(_) => None,
                    }))
            }
        }
    }

    /// Whether the filter's index can list its calls in id order, one range per value.
    pub(crate) fn streams(&self) -> bool {
        match (&self.target, &self.cond) {
            (Slot::Id, _) => false,
            (_, Cond::AnyOf(_)) => true,
            (Slot::Sort(SortCol::Time(_)) | Slot::Sort(SortCol::Text(_)), Cond::Null) => true,
            _ => false,
        }
    }

    /// Whether the filter's index holds its calls as one range of values.
    pub(crate) fn ranges(&self) -> bool {
        matches!(
            (&self.target, &self.cond),
            (
                Slot::Sort(SortCol::Time(_))
                    | Slot::Sort(SortCol::Text(_))
                    | Slot::Text(_)
                    | Slot::Related(_),
                Cond::Range(..)
            )
        )
    }

    /// How much a stream over this filter is preferred when several are too big to count:
    /// relationship ids are the most selective in practice, timestamps and notes the least.
    pub(crate) fn stream_rank(&self) -> u8 {
        match self.target {
            Slot::Related(_) => 0,
            Slot::Text(_) | Slot::Tags => 1,
            Slot::Sort(SortCol::Text(_)) => 2,
            Slot::Flag => 3,
            Slot::Sort(SortCol::Time(_)) | Slot::Note => 4,
            Slot::Id => 5,
        }
    }

    /// One iterator per value, each yielding the value's calls in id order within `lo..=hi`.
    pub(crate) fn value_streams<'a>(
        &self,
        indexes: &'a Indexes,
        lo: u64,
        hi: u64,
        descending: bool,
    ) -> Vec<IdIter<'a>> {
        let mut out = Vec::new();
        let mut add = |iter: IdIter<'a>| out.push(iter);
        match (&self.target, &self.cond) {
            (Slot::Sort(SortCol::Time(i)), Cond::Null) => {
                add(ids_of(&indexes.times[*i], NULL_TIME, lo, hi, descending))
            }
            (Slot::Sort(SortCol::Text(i)), Cond::Null) => {
                add(ids_of(&indexes.sort_texts[*i], None, lo, hi, descending))
            }
            (_, Cond::AnyOf(values)) => {
                for value in values {
                    match (&self.target, value) {
                        (Slot::Sort(SortCol::Time(i)), Val::Int(millis)) => {
                            add(ids_of(&indexes.times[*i], *millis, lo, hi, descending))
                        }
                        (Slot::Sort(SortCol::Text(i)), Val::Text(text)) => {
                            if let Some(shared) = indexes.sort_texts[*i].shared(text) {
                                add(ids_of(
                                    &indexes.sort_texts[*i],
                                    Some(shared),
                                    lo,
                                    hi,
                                    descending,
                                ))
                            }
                        }
                        (Slot::Text(i), Val::Text(text)) => {
                            if let Some(shared) = indexes.texts[*i].shared(text) {
                                add(ids_of(&indexes.texts[*i].set, shared, lo, hi, descending))
                            }
                        }
                        (Slot::Tags, Val::Text(text)) => {
                            if let Some(shared) = indexes.tags.shared(text) {
                                add(ids_of(&indexes.tags.set, shared, lo, hi, descending))
                            }
                        }
                        (Slot::Flag, Val::Bool(flag)) => {
                            add(ids_of(&indexes.flags, *flag, lo, hi, descending))
                        }
                        (Slot::Related(i), Val::Int(target)) => {
                            add(ids_of(&indexes.related[*i], *target, lo, hi, descending))
                        }
                        _ => {}
                    }
                }
                if self.target == Slot::Note {
                    for hash in &self.hashes {
                        add(ids_of(&indexes.notes, *hash, lo, hi, descending));
                    }
                }
            }
            _ => {}
        }
        out
    }

    /// The calls of a range filter, in value order, within `lo..=hi`.
    pub(crate) fn range_ids<'a>(&self, indexes: &'a Indexes, lo: u64, hi: u64) -> IdIter<'a> {
        let Cond::Range(lower, upper) = &self.cond else {
            return Box::new(std::iter::empty());
        };
        let iter: IdIter<'a> = match self.target {
            Slot::Sort(SortCol::Time(i)) => {
                let int = |v: &Val| match v {
                    Val::Int(n) => Some(*n),
                    _ => None,
                };
                let lower = match lower {
                    Some(v) => int(v).map(|n| Included((n, 0))),
                    // A range never matches null.
                    None => Some(Excluded((NULL_TIME, u64::MAX))),
                };
                let upper = match upper {
                    Some(v) => int(v).map(|n| Included((n, u64::MAX))),
                    None => Some(Unbounded),
                };
                match (lower, upper) {
                    (Some(lower), Some(upper)) => ids_in(&indexes.times[i], lower, upper, false),
                    _ => Box::new(std::iter::empty()),
                }
            }
            Slot::Sort(SortCol::Text(i)) => {
                let lower = match lower {
                    Some(Val::Text(t)) => Included((Some(Shared::clone(t)), 0)),
                    _ => Excluded((None, u64::MAX)),
                };
                let upper = match upper {
                    Some(Val::Text(t)) => Included((Some(Shared::clone(t)), u64::MAX)),
                    _ => Unbounded,
                };
                ids_in(&indexes.sort_texts[i], lower, upper, false)
            }
            Slot::Text(i) => {
                let lower = match lower {
                    Some(Val::Text(t)) => Included((Shared::clone(t), 0)),
                    _ => Unbounded,
                };
                let upper = match upper {
                    Some(Val::Text(t)) => Included((Shared::clone(t), u64::MAX)),
                    _ => Unbounded,
                };
                ids_in(&indexes.texts[i].set, lower, upper, false)
            }
            Slot::Related(i) => {
                let lower = match lower {
                    Some(Val::Int(n)) => Included((*n, 0)),
                    _ => Unbounded,
                };
                let upper = match upper {
                    Some(Val::Int(n)) => Included((*n, u64::MAX)),
                    _ => Unbounded,
                };
                ids_in(&indexes.related[i], lower, upper, false)
            }
            _ => Box::new(std::iter::empty()),
        };
        Box::new(iter.filter(move |id| (lo..=hi).contains(id)))
    }

    /// How many calls the filter's index names (counting up to `cap + 1`), when it can list
    /// them; `None` when it cannot.
    pub(crate) fn count(&self, indexes: &Indexes, lo: u64, hi: u64, cap: usize) -> Option<usize> {
        if let (Slot::Id, Cond::AnyOf(values)) = (&self.target, &self.cond) {
            return Some(values.len());
        }
        if let Some(total) = self.text_entries(indexes) {
            // Without bounds on the ids, the values' counts are the answer when they exceed
            // the cap: no need to walk `cap` entries to find out.
            if (lo, hi) == (0, u64::MAX) && total > cap {
                return Some(total);
            }
        }
        if self.streams() {
            let mut total = 0;
            for stream in self.value_streams(indexes, lo, hi, false) {
                total += stream.take(cap + 1 - total).count();
                if total > cap {
                    break;
                }
            }
            Some(total)
        } else if self.ranges() {
            Some(self.range_ids(indexes, lo, hi).take(cap + 1).count())
        } else {
            None
        }
    }

    /// How many calls a filter on a string that is not sorted names, from its values' counts:
    /// for an attribute (one value per call), or for one tag (a call holding two of several
    /// tags named would be counted twice). `None` for other filters.
    fn text_entries(&self, indexes: &Indexes) -> Option<usize> {
        let Cond::AnyOf(values) = &self.cond else {
            return None;
        };
        let index = match self.target {
            Slot::Text(i) => &indexes.texts[i],
            Slot::Tags if values.len() == 1 => &indexes.tags,
            _ => return None,
        };
        Some(
            values
                .iter()
                .map(|value| match value {
                    Val::Text(text) => index.count_of(text),
                    _ => 0,
                })
                .sum(),
        )
    }

    /// Every live call the filter's index names, sorted by id.
    pub(crate) fn collect(&self, indexes: &Indexes, lo: u64, hi: u64) -> Vec<u64> {
        let mut ids: Vec<u64> = match (&self.target, &self.cond) {
            (Slot::Id, Cond::AnyOf(values)) => values
                .iter()
                .filter_map(|v| match v {
                    Val::Int(n) => u64::try_from(*n).ok(),
                    _ => None,
                })
                .filter(|id| (lo..=hi).contains(id) && indexes.ids.contains(*id))
                .collect(),
            _ if self.streams() => self
                .value_streams(indexes, lo, hi, false)
                .into_iter()
                .flatten()
                .collect(),
            _ => self.range_ids(indexes, lo, hi).collect(),
        };
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}
