//! The planner: which walk over the indexes answers a list with the fewest candidates.

use super::filter::{Cond, Resolved, Val};
use super::order::{Order, SortVal};
use super::walk::{max_lower, min_upper};
use crate::index::Shared;
use crate::index::{Indexes, Slot, SortCol};
use std::ops::Bound::{self, Excluded, Included, Unbounded};

/// How a list reads its candidates.
pub(crate) enum Plan<'f> {
    /// Every live id within `lo..=hi`.
    AllIds { lo: u64, hi: u64 },
    /// The id-ordered merge of an equality filter's values.
    Merge {
        filter: &'f Resolved,
        lo: u64,
        hi: u64,
    },
    /// The first sort key's index, within these value bounds.
    Sorted {
        lower: Bound<SortVal>,
        upper: Bound<SortVal>,
    },
    /// A small set of ids, ordered in memory.
    Fixed(Vec<u64>),
}

/// With an id order, a filter's calls are collected and ordered in memory up to this many.
/// The same in tests: a test that wants the other plans lists more calls than this.
pub(crate) const ID_ORDER_FIXED_LIMIT: usize = 8192;
/// With an attribute order, never collect more than this many.
const ATTR_ORDER_FIXED_CEILING: usize = 50_000;

/// The largest candidate set an attribute-ordered list collects and orders in memory rather
/// than walking the sort index. Ordering `m` candidates costs about `m` column reads; walking
/// the sort index costs about `page * live / m` in-memory checks (the matches are spread over
/// the index). The two meet at `m = sqrt(page * live)`.
pub(crate) fn fixed_limit(page: usize, live: usize) -> usize {
    let balance = (2.0 * (page as f64 + 1.0) * live as f64).sqrt() as usize;
    balance.clamp(4 * (page + 1), ATTR_ORDER_FIXED_CEILING)
}

/// The ids the filters allow, as one inclusive range (empty when `lo > hi`).
pub(crate) fn id_bounds(filters: &[Resolved]) -> (u64, u64) {
    let (mut lo, mut hi) = (0u64, u64::MAX);
    for filter in filters.iter().filter(|f| f.target == Slot::Id) {
        let (low, high) = match &filter.cond {
            Cond::AnyOf(values) => match (values.first(), values.last()) {
                (Some(Val::Int(min)), Some(Val::Int(max))) => (Some(*min), Some(*max)),
                _ => (Some(1), Some(0)),
            },
            Cond::Range(low, high) => (
                low.as_ref().and_then(|v| match v {
                    Val::Int(n) => Some(*n),
                    _ => None,
                }),
                high.as_ref().and_then(|v| match v {
                    Val::Int(n) => Some(*n),
                    _ => None,
                }),
            ),
            Cond::Null => (Some(1), Some(0)),
            Cond::NotNull => (None, None),
        };
        if let Some(low) = low {
            lo = lo.max(u64::try_from(low).unwrap_or(0));
        }
        if let Some(high) = high {
            match u64::try_from(high) {
                Ok(high) => hi = hi.min(high),
                Err(_) => return (1, 0),
            }
        }
    }
    (lo, hi)
}

/// The value bounds the filters put on the first sort key's attribute.
pub(crate) fn value_bounds(filters: &[Resolved], col: SortCol) -> (Bound<SortVal>, Bound<SortVal>) {
    let as_sort = |v: &Val| match v {
        Val::Int(n) => SortVal::Int(*n),
        Val::Text(text) => SortVal::Text(Shared::clone(text)),
        Val::Bool(_) => SortVal::Null,
    };
    let (mut lower, mut upper) = (Unbounded, Unbounded);
    for filter in filters {
        let on_col = matches!(
            (filter.target, col),
            (Slot::Sort(SortCol::Time(a)), SortCol::Time(b)) | (Slot::Sort(SortCol::Text(a)), SortCol::Text(b)) if a == b
        );
        if !on_col {
            continue;
        }
        let (low, high) = match &filter.cond {
            Cond::AnyOf(values) => match (values.first(), values.last()) {
                (Some(min), Some(max)) => (Included(as_sort(min)), Included(as_sort(max))),
                _ => continue,
            },
            Cond::Null => (Included(SortVal::Null), Included(SortVal::Null)),
            Cond::NotNull => (Excluded(SortVal::Null), Unbounded),
            Cond::Range(low, high) => (
                low.as_ref()
                    .map_or(Excluded(SortVal::Null), |v| Included(as_sort(v))),
                high.as_ref().map_or(Unbounded, |v| Included(as_sort(v))),
            ),
        };
        lower = max_lower(lower, low);
        upper = min_upper(upper, high);
    }
    (lower, upper)
}

/// Whether `filter` holds the calls of one range of `col`'s values, the bounds that
/// [`value_bounds`] gives a walk of that column's index (several values of an equality filter
/// are not one range: the values between them would be walked too).
fn one_range_of(filter: &Resolved, col: SortCol) -> bool {
    filter.target == Slot::Sort(col)
        && matches!(filter.cond, Cond::Range(..) | Cond::Null | Cond::NotNull)
}

impl Plan<'_> {
    /// Whether every candidate this plan yields holds `filter`, so that checking it again is
    /// waste (a column read per candidate, out of cache at a million calls): a range of the
    /// first sort key, within whose bounds ([`value_bounds`]) the sorted walk reads.
    pub(crate) fn enforces(&self, filter: &Resolved, order: &Order) -> bool {
        matches!(self, Plan::Sorted { .. }) && ranges_first_key(filter, order)
    }
}

/// Whether `filter` is one range of `order`'s first sort key (see [`one_range_of`]).
fn ranges_first_key(filter: &Resolved, order: &Order) -> bool {
    order
        .keys
        .first()
        .is_some_and(|key| one_range_of(filter, key.col))
}

/// Picks how to read a list's candidates.
pub(crate) fn plan<'f>(
    filters: &'f [Resolved],
    order: &Order,
    indexes: &Indexes,
    page: usize,
) -> Plan<'f> {
    let (lo, hi) = id_bounds(filters);
    if lo > hi || filters.iter().any(Resolved::is_empty) {
        return Plan::Fixed(Vec::new());
    }
    let cap = if order.keys.is_empty() {
        ID_ORDER_FIXED_LIMIT
    } else {
        fixed_limit(page, indexes.live())
    };
    // The filter naming the fewest calls, if it names at most `cap`.
    let mut smallest: Option<(usize, &Resolved)> = None;
    for filter in filters {
        if ranges_first_key(filter, order) {
            // What the sorted walk reads anyway, in order and only up to a page: collecting
            // it to order in memory is never cheaper, and counting it walks up to `cap`
            // entries (about ten thousand at a million calls and a page of 50).
            continue;
        }
        let limit = smallest.map_or(cap, |(count, _)| count.saturating_sub(1));
        if let Some(count) = filter.count(indexes, lo, hi, limit) {
            if count <= limit {
                smallest = Some((count, filter));
            }
        }
    }
    if order.keys.is_empty() {
        match smallest {
            Some((_, filter)) if filter.streams() => Plan::Merge { filter, lo, hi },
            Some((_, filter)) => Plan::Fixed(filter.collect(indexes, lo, hi)),
            None => match filters
                .iter()
                .filter(|f| f.streams())
                .min_by_key(|f| f.stream_rank())
            {
                Some(filter) => Plan::Merge { filter, lo, hi },
                None => Plan::AllIds { lo, hi },
            },
        }
    } else {
        match smallest {
            Some((_, filter)) => Plan::Fixed(filter.collect(indexes, lo, hi)),
            None => {
                let (lower, upper) = value_bounds(filters, order.keys[0].col);
                Plan::Sorted { lower, upper }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::walk::{entry_bounds, sorted_entries};
    use crate::index::IndexRow;
    use crate::query::{Condition, Filter, FilterTarget, FilterValue, SortField, SortKey};
    use call_model::Field;
    use call_model::{CallState, Event, Relation, Timestamp};

    /// Indexes of `n` calls: prospect `id % 1000`, direction alternating, createdAt = id.
    fn indexes(n: u64) -> Indexes {
        let rows = (1..=n).map(|id| {
            let payload = format!(
                r#"{{"schemaVersion":1,"type":"CallCreated","eventId":"0190a6b2-7c1e-7000-8000-000000000000","idempotencyKey":null,"occurredAt":"2025-01-13T12:00:00.000Z","recordedAt":"{}","actor":"t","data":{{"attributes":{{"direction":"{}"}},"relationships":{{"prospect":{{"type":"prospect","id":{}}}}}}}}}"#,
                Timestamp::from_millis(1_736_769_600_000 + id as i64),
                if id % 2 == 0 { "inbound" } else { "outbound" },
                id % 1000
            );
            let event = Event::decode(id, id, 1, payload.as_bytes()).expect("event");
            let CallState::Live(call) = call_model::evolve(CallState::Absent, &event) else {
                panic!("a created call is live")
            };
            (id, IndexRow::of(&call))
        });
        Indexes::from_rows(rows)
    }

    fn resolved(filters: &[Filter]) -> Vec<Resolved> {
        filters
            .iter()
            .map(|f| Resolved::new(f).expect("valid"))
            .collect()
    }

    fn name(plan: &Plan<'_>) -> &'static str {
        match plan {
            Plan::AllIds { .. } => "all ids",
            Plan::Merge { .. } => "merge",
            Plan::Sorted { .. } => "sorted",
            Plan::Fixed(_) => "fixed",
        }
    }

    fn sort(field: Field, descending: bool) -> Vec<SortKey> {
        vec![SortKey {
            field: SortField::Attr(field),
            descending,
        }]
    }

    #[test]
    fn plans_read_the_fewest_candidates() {
        let indexes = indexes(20_000);
        let prospect = Filter {
            target: FilterTarget::Related(Relation::Prospect),
            condition: Condition::AnyOf(vec![FilterValue::Int(7)]),
        };
        let inbound = Filter {
            target: FilterTarget::Attr(Field::Direction),
            condition: Condition::AnyOf(vec![FilterValue::Text("inbound".into())]),
        };
        let by_id = Order::of(&[]).expect("order");
        let newest = Order::of(&sort(Field::CreatedAt, true)).expect("order");
        let cases = [
            (vec![], &by_id, "all ids"),
            (vec![inbound.clone()], &by_id, "merge"),
            (vec![prospect.clone()], &by_id, "merge"),
            // A prospect's 20 calls are ordered in memory; half the calls are walked in order.
            (vec![prospect.clone()], &newest, "fixed"),
            (vec![inbound.clone()], &newest, "sorted"),
            (vec![inbound, prospect], &newest, "fixed"),
        ];
        for (filters, order, expected) in cases {
            let filters = resolved(&filters);
            assert_eq!(
                name(&plan(&filters, order, &indexes, 50)),
                expected,
                "{filters_len} filters",
                filters_len = filters.len()
            );
        }
    }

    #[test]
    fn crossed_bounds_give_nothing_rather_than_a_panic() {
        let indexes = indexes(100);
        let range = |lower: i64, upper: i64| Filter {
            target: FilterTarget::Attr(Field::CreatedAt),
            condition: Condition::Range {
                lower: Some(FilterValue::Time(Timestamp::from_millis(lower))),
                upper: Some(FilterValue::Time(Timestamp::from_millis(upper))),
            },
        };
        let order = Order::of(&sort(Field::CreatedAt, false)).expect("order");
        let filters = resolved(&[range(2_000_000_000_000, 1_000_000_000_000)]);
        let (lower, upper) = value_bounds(&filters, order.keys[0].col);
        let (lower, upper) = entry_bounds(&lower, &upper);
        assert_eq!(
            sorted_entries(&indexes, order.keys[0].col, lower, upper, false).count(),
            0
        );
        let ids = Filter {
            target: FilterTarget::Id,
            condition: Condition::Range {
                lower: Some(FilterValue::Int(50)),
                upper: Some(FilterValue::Int(-3)),
            },
        };
        assert_eq!(id_bounds(&resolved(&[ids])), (1, 0));
    }
}
