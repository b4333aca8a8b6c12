//! The executor: walks a plan's candidates from a cursor, checks them against the filters and
//! reads the rows of one page; counts; and the cursor of a row.

use super::cursor;
use super::filter::{Check, Resolved};
use super::order::{directed, Order, RowKey};
use super::plan::{fixed_limit, plan, value_bounds, Plan};
use super::walk::{entry_bounds, max_lower, min_upper, sorted_ids, GroupWalk, IdIter, MergeIds};
use crate::error::{ProjectionError, QueryError};
use crate::query::{ListPage, ListQuery, PageCursor, MAX_PAGE_SIZE};
use crate::store::View;
use call_model::Call;
use std::cmp::Ordering;
use std::ops::Bound::{Included, Unbounded};

/// Where a walk starts: after (or at, when `inclusive`) a row's place.
#[derive(Clone, Copy)]
struct Start<'k> {
    key: &'k RowKey,
    inclusive: bool,
}

/// One list query against one view.
struct Run<'a> {
    view: &'a View,
    /// The page size asked for.
    page: usize,
    filters: &'a [Resolved],
    /// The filters a candidate must be checked against: those the plan does not enforce.
    checked: Vec<&'a Resolved>,
    order: &'a Order,
    plan: Plan<'a>,
}

impl<'a> Run<'a> {
    /// The candidates in order (`backward`: in reverse order) from `start`. Every plan yields
    /// exactly the list's order; the start is applied approximately here (to skip what it can)
    /// and exactly by the caller.
    fn candidates(&'a self, backward: bool, start: Option<Start<'_>>) -> IdIter<'a> {
        let indexes = &self.view.indexes;
        let order = self.order;
        let id_descending = order.id_desc != backward;
        // Narrows an id range to what lies at or beyond the start.
        let from_start = |lo: u64, hi: u64| match start {
            Some(start) if id_descending => (lo, hi.min(start.key.id)),
            Some(start) => (lo.max(start.key.id), hi),
            None => (lo, hi),
        };
        match &self.plan {
            Plan::AllIds { lo, hi } => {
                let (lo, hi) = from_start(*lo, *hi);
                if lo > hi {
                    return Box::new(std::iter::empty());
                }
                let range = indexes.ids.range(lo, hi);
                if id_descending {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                }
            }
            Plan::Merge { filter, lo, hi } => {
                let (lo, hi) = from_start(*lo, *hi);
                Box::new(MergeIds::new(
                    filter.value_streams(indexes, lo, hi, id_descending),
                    id_descending,
                ))
            }
            Plan::Fixed(ids) => {
                let mut keys: Vec<RowKey> =
                    ids.iter().map(|id| order.key_of(indexes, *id)).collect();
                keys.sort_by(|a, b| directed(order.cmp(a, b), backward));
                let skip = match start {
                    Some(start) => keys.partition_point(|key| {
                        directed(order.cmp(key, start.key), backward) == Ordering::Less
                    }),
                    None => 0,
                };
                Box::new(keys.into_iter().skip(skip).map(|key| key.id))
            }
            Plan::Sorted { lower, upper } => {
                let first = order.keys[0];
                let ascending = first.desc == backward;
                let (lower, upper) = entry_bounds(lower, upper);
                if order.index_order_is_exact() {
                    // The index order is the list's: start at the cursor's entry itself.
                    let (lower, upper) = match start
                        .and_then(|s| s.key.vals.first().cloned().map(|v| (v, s.key.id)))
                    {
                        Some(from) if ascending => (max_lower(lower, Included(from)), upper),
                        Some(from) => (lower, min_upper(upper, Included(from))),
                        None => (lower, upper),
                    };
                    return sorted_ids(indexes, first.col, lower, upper, !ascending);
                }
                // Start at the cursor's group.
                let (lower, upper) = match start.and_then(|s| s.key.vals.first().cloned()) {
                    Some(value) if ascending => (max_lower(lower, Included((value, 0))), upper),
                    Some(value) => (lower, min_upper(upper, Included((value, u64::MAX)))),
                    None => (lower, upper),
                };
                let second = match order.keys.get(1) {
                    Some(key) => value_bounds(self.filters, key.col),
                    None => (Unbounded, Unbounded),
                };
                Box::new(GroupWalk {
                    indexes,
                    order,
                    backward,
                    sort_limit: fixed_limit(self.page, indexes.live()),
                    lower,
                    upper,
                    ascending,
                    second,
                    start: start.map(|s| s.key.clone()),
                    current: Box::new(std::iter::empty()),
                })
            }
        }
    }

    /// Walks the matching calls from `start` in order (or reverse order), handing each to
    /// `visit` (with its stored row for the first `loads` of them) until `visit` returns false.
    fn walk(
        &self,
        backward: bool,
        start: Option<Start<'_>>,
        mut loads: usize,
        mut visit: impl FnMut(u64, Option<Call>) -> bool,
    ) -> Result<(), ProjectionError> {
        let indexes = &self.view.indexes;
        // Candidates come in order, so once one lies beyond the start, all the rest do.
        let mut past_start = start.is_none();
        'candidates: for id in self.candidates(backward, start) {
            if !past_start {
                if let Some(start) = start {
                    let key = self.order.key_of(indexes, id);
                    match directed(self.order.cmp(&key, start.key), backward) {
                        Ordering::Less => continue,
                        Ordering::Equal if !start.inclusive => continue,
                        _ => past_start = true,
                    }
                }
            }
            let load = loads > 0;
            let mut maybe = false;
            for filter in &self.checked {
                match filter.check_indexes(indexes, id) {
                    Check::No => continue 'candidates,
                    Check::Maybe => maybe = true,
                    Check::Yes => {}
                }
            }
            let call = if load || maybe {
                let call = self
                    .view
                    .load_call(id)?
                    .ok_or_else(|| ProjectionError::Corrupt {
                        key: format!("view of call {id}"),
                        reason: "the indexes name it but it is not stored".to_owned(),
                    })?;
                if maybe && !self.checked.iter().all(|f| f.check_call(&call)) {
                    continue;
                }
                Some(call)
            } else {
                None
            };
            loads = loads.saturating_sub(1);
            if !visit(id, call.filter(|_| load)) {
                break;
            }
        }
        Ok(())
    }

    /// Up to `limit` matching calls from `start`, and whether another matches after them
    /// (found without reading its row).
    fn page(
        &self,
        backward: bool,
        start: Option<Start<'_>>,
        limit: usize,
    ) -> Result<(Vec<Call>, bool), ProjectionError> {
        let mut calls = Vec::with_capacity(limit.min(MAX_PAGE_SIZE));
        let mut more = false;
        self.walk(backward, start, limit, |_, call| match call {
            Some(call) => {
                calls.push(call);
                true
            }
            None => {
                more = true;
                false
            }
        })?;
        Ok((calls, more))
    }

    /// Whether any call matches from `start` on.
    fn any(&self, backward: bool, start: Start<'_>) -> Result<bool, ProjectionError> {
        let mut found = false;
        self.walk(backward, Some(start), 0, |_, _| {
            found = true;
            false
        })?;
        Ok(found)
    }

    /// Every matching call.
    fn count(&self) -> Result<u64, ProjectionError> {
        if self.filters.is_empty() {
            return Ok(self.view.indexes.live() as u64);
        }
        let mut count = 0u64;
        self.walk(false, None, 0, |_, _| {
            count += 1;
            true
        })?;
        Ok(count)
    }
}

/// Answers a list query from one view (whose indexes and tree the caller keeps consistent).
pub(crate) fn list(view: &View, query: &ListQuery) -> Result<ListPage, QueryError> {
    let page = query.page_size;
    if page == 0 || page > MAX_PAGE_SIZE {
        return Err(QueryError::PageSize(page));
    }
    let order = Order::of(&query.sort)?;
    let filters = query
        .filters
        .iter()
        .map(Resolved::new)
        .collect::<Result<Vec<_>, _>>()?;
    let fingerprint = cursor::fingerprint(&query.filters, &order);
    let cursor = match &query.cursor {
        None => None,
        Some(PageCursor::After(text)) => Some((false, cursor::decode(text, &fingerprint, &order)?)),
        Some(PageCursor::Before(text)) => Some((true, cursor::decode(text, &fingerprint, &order)?)),
    };
    let plan = plan(&filters, &order, &view.indexes, page);
    let run = Run {
        view,
        page,
        filters: &filters,
        checked: filters
            .iter()
            .filter(|filter| !plan.enforces(filter, &order))
            .collect(),
        order: &order,
        plan,
    };
    let (calls, more_after, more_before) = match &cursor {
        None => {
            let (calls, more_after) = run.page(false, None, page)?;
            (calls, more_after, false)
        }
        Some((backward, key)) => {
            let after = Start {
                key,
                inclusive: false,
            };
            let at = Start {
                key,
                inclusive: true,
            };
            let (mut calls, more) = run.page(*backward, Some(after), page)?;
            // Whatever lies on the other side of the cursor, the cursor's own row included.
            let other_side = run.any(!backward, at)?;
            if *backward {
                calls.reverse();
                (calls, other_side, more)
            } else {
                (calls, more, other_side)
            }
        }
    };
    let count = if query.count {
        Some(run.count()?)
    } else {
        None
    };
    Ok(ListPage {
        calls,
        more_after,
        more_before,
        count,
    })
}

/// The cursor naming `call`'s place in `query`'s order.
pub(crate) fn cursor_for(query: &ListQuery, call: &Call) -> String {
    // An invalid sort gets a cursor too (the query itself is refused when listed).
    let order = Order::of(&query.sort).unwrap_or_else(|_| Order::by_id());
    let fingerprint = cursor::fingerprint(&query.filters, &order);
    cursor::encode(&order.key_of_call(call), &fingerprint)
}

/// The cursor of the place just beside the row `cursor` names, in `query`'s order: just after
/// it (`forward`) or just before it. No row lies between a row and that place, so
/// `page[before]` with the place just after a row lists that row and those before it, and
/// `page[after]` with the place just before it lists that row and those after it: the links
/// of an empty page reached by a cursor.
pub(crate) fn cursor_beside(
    query: &ListQuery,
    cursor: &str,
    forward: bool,
) -> Result<String, QueryError> {
    let order = Order::of(&query.sort)?;
    let fingerprint = cursor::fingerprint(&query.filters, &order);
    let mut key = cursor::decode(cursor, &fingerprint, &order)?;
    // Ids break ties last, so the neighbouring id with the same values is the next place.
    key.id = if forward != order.id_desc {
        key.id.saturating_add(1)
    } else {
        key.id.saturating_sub(1)
    };
    Ok(cursor::encode(&key, &fingerprint))
}
