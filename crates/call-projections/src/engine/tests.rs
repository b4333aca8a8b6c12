//! Every plan, at the production limits, against the brute-force reference: enough calls that
//! an id-ordered list merges an index (more than [`ID_ORDER_FIXED_LIMIT`] candidates) and a
//! two-key sort walks its second key's index for a group larger than [`fixed_limit`].

use super::plan::{fixed_limit, plan, Plan, ID_ORDER_FIXED_LIMIT};
use super::{cursor_for, filter::Resolved, list, order::Order};
use crate::codec;
use crate::index::{IndexRow, Indexes};
use crate::query::{
    Condition, Filter, FilterTarget, FilterValue, ListQuery, PageCursor, SortField, SortKey,
};
use crate::store::{self, Meta, View};
use crate::tests::reference;
use call_model::{AttrValue, Call, Field, FieldMap, RelValue, Relation, ResourceRef, Timestamp};

/// Enough live calls for the larger plans at the production limits.
const CALLS: u64 = 14_000;
/// The page size the walks use.
const PAGE: usize = 200;

/// Calls with skewed values (a state and a prospect most calls share, a `from` of forty
/// values), stored in a temporary tree with their indexes.
fn view() -> (View, Vec<Call>) {
    let db = sled::Config::new().temporary(true).open().expect("sled");
    let tree = db.open_tree("view-1").expect("tree");
    let mut numbers = crate::sorted_set::tests::numbers(0x2545_f491_4f6c_dd1d);
    let mut next = |modulo: u64| numbers.next().unwrap_or_default() % modulo;
    let mut calls = Vec::new();
    for id in 1..=CALLS {
        let mut attributes = FieldMap::new();
        let mut text = |field: Field, value: &str| {
            attributes.insert(field, AttrValue::Text(value.into()));
        };
        match next(10) {
            0..=4 => text(Field::State, "completed"),
            5..=7 => text(Field::State, "ringing"),
            _ => {}
        }
        text(
            Field::Direction,
            if next(10) < 8 { "inbound" } else { "outbound" },
        );
        text(Field::From, &format!("+1555{:03}", next(40)));
        let created = Timestamp::from_millis(1_736_769_600_000 + (next(5_000) as i64) * 1000);
        attributes.insert(Field::CreatedAt, AttrValue::Time(created));
        let mut relationships = call_model::RelationMap::new();
        let prospect = if next(4) == 0 {
            2 + next(100) as i64
        } else {
            1
        };
        relationships.insert(
            Relation::Prospect,
            RelValue::One(ResourceRef {
                kind: "prospect".into(),
                id: prospect,
            }),
        );
        let call = Call {
            id,
            version: 1,
            position: id,
            attributes,
            relationships,
            data_connections: Vec::new(),
        };
        tree.insert(store::key(store::CALL, id), codec::encode(&call))
            .expect("insert");
        calls.push(call);
    }
    let indexes = Indexes::from_rows(calls.iter().map(|call| (call.id, IndexRow::of(call))));
    let meta = Meta {
        checkpoint: CALLS,
        live: CALLS,
        deleted: 0,
        packed_below: 0,
    };
    let view = View {
        generation: 1,
        tree,
        meta,
        indexes,
        packs: std::sync::Arc::new(crate::pack_cache::PackCache::new(0)),
    };
    (view, calls)
}

fn plan_name(view: &View, query: &ListQuery) -> &'static str {
    let order = Order::of(&query.sort).expect("order");
    let filters: Vec<Resolved> = query
        .filters
        .iter()
        .map(|f| Resolved::new(f).expect("filter"))
        .collect();
    match plan(&filters, &order, &view.indexes, query.page_size) {
        Plan::AllIds { .. } => "all ids",
        Plan::Merge { .. } => "merge",
        Plan::Sorted { .. } => "sorted",
        Plan::Fixed(_) => "fixed",
    }
}

/// Every page forward, then every page backward from the last row.
fn walk(view: &View, mut query: ListQuery) -> (Vec<u64>, Vec<u64>) {
    let mut forward = Vec::new();
    let mut last = None;
    loop {
        let page = list(view, &query).expect("list");
        forward.extend(page.calls.iter().map(|c| c.id));
        last = page.calls.last().cloned().or(last);
        if !page.more_after {
            break;
        }
        let row = page.calls.last().expect("rows before more");
        query.cursor = Some(PageCursor::After(cursor_for(&query, row)));
    }
    let mut backward = Vec::new();
    if let Some(last) = last {
        backward.push(last.id);
        query.cursor = Some(PageCursor::Before(cursor_for(&query, &last)));
        loop {
            let page = list(view, &query).expect("list backward");
            backward.splice(0..0, page.calls.iter().map(|c| c.id));
            if !page.more_before {
                break;
            }
            let row = page.calls.first().expect("rows before more");
            query.cursor = Some(PageCursor::Before(cursor_for(&query, row)));
        }
    }
    (forward, backward)
}

fn text_filter(field: Field, value: &str) -> Filter {
    Filter {
        target: FilterTarget::Attr(field),
        condition: Condition::AnyOf(vec![FilterValue::Text(value.to_owned())]),
    }
}

fn prospect(id: i64) -> Filter {
    Filter {
        target: FilterTarget::Related(Relation::Prospect),
        condition: Condition::AnyOf(vec![FilterValue::Int(id)]),
    }
}

/// createdAt within these seconds of the epoch the calls start at.
fn created_between(from: i64, to: i64) -> Filter {
    let at = |s: i64| FilterValue::Time(Timestamp::from_millis(1_736_769_600_000 + s * 1000));
    Filter {
        target: FilterTarget::Attr(Field::CreatedAt),
        condition: Condition::Range {
            lower: Some(at(from)),
            upper: Some(at(to)),
        },
    }
}

fn key(field: Field, descending: bool) -> SortKey {
    SortKey {
        field: SortField::Attr(field),
        descending,
    }
}

#[test]
fn every_plan_at_production_limits_matches_the_reference() {
    let (view, calls) = view();
    let completed = calls
        .iter()
        .filter(|c| c.text(Field::State) == Some("completed"))
        .count();
    let inbound = calls
        .iter()
        .filter(|c| c.text(Field::Direction) == Some("inbound"))
        .count();
    // The preconditions of the plans below, at the limits production uses.
    assert!(inbound > ID_ORDER_FIXED_LIMIT, "{inbound} inbound calls");
    assert!(
        completed > fixed_limit(PAGE, CALLS as usize),
        "{completed} completed calls"
    );
    let cases: Vec<(Vec<Filter>, Vec<SortKey>, &str)> = vec![
        (vec![], vec![], "all ids"),
        (
            vec![text_filter(Field::Direction, "inbound")],
            vec![],
            "merge",
        ),
        (vec![prospect(1)], vec![], "merge"),
        (vec![prospect(7)], vec![], "merge"),
        (vec![created_between(100, 130)], vec![], "fixed"),
        (
            vec![prospect(7)],
            vec![key(Field::CreatedAt, true)],
            "fixed",
        ),
        (
            vec![text_filter(Field::Direction, "inbound")],
            vec![key(Field::CreatedAt, true)],
            "sorted",
        ),
        // A range of the first sort key is walked in that key's index, however few it holds.
        (
            vec![created_between(100, 130)],
            vec![key(Field::CreatedAt, true)],
            "sorted",
        ),
        (
            vec![
                text_filter(Field::Direction, "inbound"),
                created_between(100, 130),
            ],
            vec![key(Field::CreatedAt, false)],
            "sorted",
        ),
        // Large state groups: read from createdAt's index, in both id directions.
        (
            vec![],
            vec![key(Field::State, false), key(Field::CreatedAt, false)],
            "sorted",
        ),
        (
            vec![prospect(1)],
            vec![key(Field::State, true), key(Field::CreatedAt, true)],
            "sorted",
        ),
        // Small `from` groups, and three keys: each group sorted in memory.
        (
            vec![],
            vec![key(Field::From, false), key(Field::CreatedAt, true)],
            "sorted",
        ),
        (
            vec![text_filter(Field::Direction, "outbound")],
            vec![
                key(Field::State, false),
                key(Field::From, true),
                key(Field::CreatedAt, false),
            ],
            "sorted",
        ),
    ];
    for (filters, sort, expected_plan) in cases {
        let query = ListQuery {
            filters,
            sort,
            page_size: PAGE,
            cursor: None,
            count: false,
        };
        let what = format!("{:?} sorted by {:?}", query.filters, query.sort);
        assert_eq!(plan_name(&view, &query), expected_plan, "{what}");
        let expected = reference(&calls, &query);
        let (forward, backward) = walk(&view, query);
        assert_eq!(forward, expected, "forward: {what}");
        assert_eq!(backward, expected, "backward: {what}");
    }
}
