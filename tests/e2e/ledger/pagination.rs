//! Keyset pagination of a filtered, sorted list while calls are created between pages: every
//! call that matched when the walk began is returned exactly once, no call twice, rows come in
//! sort order across pages, a backward walk from the end returns the same rows, and a cursor is
//! refused by a list with another sort or other filters.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use call_model::{AttrValue, Call, CallId, Field};
use call_projections::{
    Condition, Filter, FilterTarget, FilterValue, ListQuery, PageCursor, QueryError, SortField,
    SortKey,
};
use serde_json::{json, Map, Value};

use super::{all_calls_query, at, create, execute_all, list_all, Ledger, Rng};

const PAGE_SIZE: usize = 7;
const INITIAL_CALLS: usize = 300;

/// A sort value as the engine orders it: null first, then values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SortValue {
    Null,
    Value(AttrValueKey),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum AttrValueKey {
    Id(u64),
    Time(i64),
    Text(String),
}

fn sort_value(call: &Call, field: SortField) -> SortValue {
    match field {
        SortField::Id => SortValue::Value(AttrValueKey::Id(call.id)),
        SortField::Attr(field) => match call.attribute(field) {
            None => SortValue::Null,
            Some(AttrValue::Time(at)) => SortValue::Value(AttrValueKey::Time(at.millis())),
            Some(AttrValue::Text(text)) => SortValue::Value(AttrValueKey::Text(text.to_string())),
            Some(other) => panic!("{field} is not sortable: {other:?}"),
        },
    }
}

/// The order a query's sort keys define. When `id` is not named it breaks ties in the direction
/// of the last key (the engine's rule); the queries below name it after a descending key, or end
/// on an ascending one, so they do not depend on that choice.
fn compare(sort: &[SortKey], a: &Call, b: &Call) -> Ordering {
    for key in sort {
        let order = sort_value(a, key.field).cmp(&sort_value(b, key.field));
        let order = if key.descending {
            order.reverse()
        } else {
            order
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    let order = a.id.cmp(&b.id);
    match sort.last() {
        Some(last) if last.descending => order.reverse(),
        _ => order,
    }
}

/// Whether a call passes the filters these tests use (exact values of string attributes, null).
fn passes(filters: &[Filter], call: &Call) -> bool {
    filters
        .iter()
        .all(|filter| match (&filter.target, &filter.condition) {
            (FilterTarget::Attr(field), Condition::Null) => call.attribute(*field).is_none(),
            (FilterTarget::Attr(field), Condition::AnyOf(values)) => values.iter().any(
                |value| matches!(value, FilterValue::Text(text) if call.text(*field) == Some(text)),
            ),
            other => panic!("the model does not know filter {other:?}"),
        })
}

fn text_filter(field: Field, values: &[&str]) -> Filter {
    Filter {
        target: FilterTarget::Attr(field),
        condition: Condition::AnyOf(
            values
                .iter()
                .map(|value| FilterValue::Text((*value).to_owned()))
                .collect(),
        ),
    }
}

fn sort_key(field: SortField, descending: bool) -> SortKey {
    SortKey { field, descending }
}

/// Attributes of a random call: direction, state and dialedAt are often shared (ties), at times
/// absent (nulls); `recorded_at` (the updatedAt) is random as well, so new calls land on both
/// sides of a cursor.
fn random_call(rng: &mut Rng, direction: Option<&str>) -> Value {
    let mut attributes = Map::new();
    if let Some(direction) = direction {
        attributes.insert("direction".into(), json!(direction));
    }
    if rng.chance(85) {
        let dialed = at(rng.range(0, 60) as i64 * 60);
        attributes.insert("dialedAt".into(), json!(dialed.to_string()));
    }
    if rng.chance(90) {
        let state = *rng.pick(&["ringing", "answered", "completed"]);
        attributes.insert("state".into(), json!(state));
    }
    if rng.chance(70) {
        let outcome = *rng.pick(&["Answered", "Not Answered"]);
        attributes.insert("outcome".into(), json!(outcome));
    }
    attributes.insert("note".into(), json!(format!("call {}", rng.next())));
    Value::Object(attributes)
}

fn random_direction(rng: &mut Rng) -> Option<&'static str> {
    match rng.range(0, 10) {
        0..=1 => None,
        2..=5 => Some("inbound"),
        _ => Some("outbound"),
    }
}

/// The answer the list must give: every live call that passes the filters, in sort order.
fn expected_rows(ledger: &Ledger, query: &ListQuery) -> Vec<CallId> {
    let mut calls: Vec<Call> = list_all(&ledger.projection, &all_calls_query())
        .into_iter()
        .filter(|call| passes(&query.filters, call))
        .collect();
    calls.sort_by(|a, b| compare(&query.sort, a, b));
    calls.iter().map(|call| call.id).collect()
}

/// Walks every page of `query` forward, creating a matching and a non-matching call between
/// pages; then walks back from the last row with `page[before]`. Checks the rows as it goes.
fn walk_with_creates(ledger: &Ledger, rng: &mut Rng, query: &ListQuery, matching: Value) {
    let at_start = expected_rows(ledger, query);
    let full = ListQuery {
        page_size: 1000,
        ..query.clone()
    };
    let listed: Vec<CallId> = list_all(&ledger.projection, &full)
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, at_start, "the list is the filtered, sorted calls");
    assert!(
        at_start.len() > 3 * PAGE_SIZE,
        "the walk needs several pages"
    );

    let mut query = query.clone();
    let mut seen: Vec<Call> = Vec::new();
    let mut pages = 0;
    loop {
        let page = ledger.projection.list(&query).expect("list a page");
        pages += 1;
        assert!(page.calls.len() <= PAGE_SIZE, "page {pages} is too long");
        assert_eq!(
            page.more_before,
            pages > 1,
            "page {pages}: more_before tells whether rows precede it"
        );
        for call in &page.calls {
            assert!(
                passes(&query.filters, call),
                "page {pages}: {call:?} does not match"
            );
            if let Some(previous) = seen.last() {
                assert_eq!(
                    compare(&query.sort, previous, call),
                    Ordering::Less,
                    "page {pages}: call {} comes after {} out of order (or twice)",
                    call.id,
                    previous.id
                );
            }
            seen.push(call.clone());
        }
        let Some(last) = page.calls.last() else {
            panic!("page {pages} is empty although the previous one said more rows follow");
        };
        let cursor = ledger.projection.cursor_for(&query, last);
        if !page.more_after {
            break;
        }
        // Calls created meanwhile, with random sort values on both sides of the cursor.
        let mut between = matching.clone();
        for (name, value) in random_call(rng, None).as_object().expect("an object") {
            between
                .as_object_mut()
                .expect("an object")
                .entry(name.clone())
                .or_insert(value.clone());
        }
        let requests = vec![
            create(between, at(rng.range(0, 400) as i64)),
            create(
                random_call(rng, Some("outbound")),
                at(rng.range(0, 400) as i64),
            ),
        ];
        let outcomes = execute_all(&ledger.commands, requests, 2);
        let head = outcomes.iter().map(|o| o.position).max().unwrap_or(0);
        ledger
            .projection
            .wait_for(head)
            .expect("wait for the creates");
        query.cursor = Some(PageCursor::After(cursor));
    }
    let ids: Vec<CallId> = seen.iter().map(|call| call.id).collect();
    let unique: BTreeSet<CallId> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a call appeared twice: {ids:?}");
    let missing: Vec<CallId> = at_start
        .iter()
        .filter(|id| !unique.contains(id))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "calls matching at the start were skipped: {missing:?}"
    );
    assert!(pages > at_start.len() / PAGE_SIZE, "walked {pages} pages");

    // Backwards from the last row, without creates: exactly the list as it is now.
    let now = expected_rows(ledger, &query);
    let last = seen.last().expect("rows were seen");
    let mut back: Vec<CallId> = vec![last.id];
    query.cursor = Some(PageCursor::Before(
        ledger.projection.cursor_for(&query, last),
    ));
    loop {
        let page = ledger
            .projection
            .list(&query)
            .expect("list a page backwards");
        assert!(page.more_after, "a page before a row has rows after it");
        assert!(page.calls.len() <= PAGE_SIZE, "a backward page is too long");
        let ids: Vec<CallId> = page.calls.iter().map(|call| call.id).collect();
        back.splice(0..0, ids);
        match page.calls.first() {
            Some(first) if page.more_before => {
                query.cursor = Some(PageCursor::Before(
                    ledger.projection.cursor_for(&query, first),
                ));
            }
            _ => break,
        }
    }
    assert_eq!(
        back, now,
        "the backward walk returns the list as it is now, in order"
    );
}

#[test]
fn paging_returns_each_matching_call_once_while_calls_are_created() {
    let mut rng = Rng::seeded("paging_returns_each_matching_call_once_while_calls_are_created");
    let data = tempfile::tempdir().expect("a temporary data directory");
    let ledger = Ledger::open(data.path());
    let requests = (0..INITIAL_CALLS)
        .map(|_| {
            let direction = random_direction(&mut rng);
            create(
                random_call(&mut rng, direction),
                at(rng.range(0, 400) as i64),
            )
        })
        .collect();
    execute_all(&ledger.commands, requests, 8);
    ledger
        .projection
        .wait_for(ledger.log.head())
        .expect("catch up");

    // Inbound calls, latest dial first (nulls last), then by id.
    let inbound_by_dial = ListQuery {
        filters: vec![text_filter(Field::Direction, &["inbound"])],
        sort: vec![
            sort_key(SortField::Attr(Field::DialedAt), true),
            sort_key(SortField::Id, false),
        ],
        page_size: PAGE_SIZE,
        cursor: None,
        count: false,
    };
    walk_with_creates(
        &ledger,
        &mut rng,
        &inbound_by_dial,
        json!({"direction": "inbound"}),
    );

    // Calls in two of the states, by updatedAt (many ties, broken by id).
    let by_update = ListQuery {
        filters: vec![text_filter(Field::State, &["ringing", "answered"])],
        sort: vec![sort_key(SortField::Attr(Field::UpdatedAt), false)],
        page_size: PAGE_SIZE,
        cursor: None,
        count: false,
    };
    walk_with_creates(&ledger, &mut rng, &by_update, json!({"state": "answered"}));

    // Calls without a direction (`__null__`), by state descending (nulls last), then createdAt.
    let undirected = ListQuery {
        filters: vec![Filter {
            target: FilterTarget::Attr(Field::Direction),
            condition: Condition::Null,
        }],
        sort: vec![
            sort_key(SortField::Attr(Field::State), true),
            sort_key(SortField::Attr(Field::CreatedAt), false),
        ],
        page_size: PAGE_SIZE,
        cursor: None,
        count: false,
    };
    walk_with_creates(&ledger, &mut rng, &undirected, json!({}));

    // Every call by outcome descending (nulls last), ties by id ascending as asked.
    let by_outcome = ListQuery {
        filters: Vec::new(),
        sort: vec![
            sort_key(SortField::Attr(Field::Outcome), true),
            sort_key(SortField::Id, false),
        ],
        page_size: PAGE_SIZE,
        cursor: None,
        count: false,
    };
    walk_with_creates(
        &ledger,
        &mut rng,
        &by_outcome,
        json!({"direction": "outbound"}),
    );

    // A cursor belongs to its list: another sort or other filters refuse it.
    let first = ledger
        .projection
        .list(&inbound_by_dial)
        .expect("first page");
    let cursor = ledger
        .projection
        .cursor_for(&inbound_by_dial, &first.calls[PAGE_SIZE - 1]);
    let elsewhere = [
        ListQuery {
            cursor: Some(PageCursor::After(cursor.clone())),
            ..by_update.clone()
        },
        ListQuery {
            filters: vec![text_filter(Field::Direction, &["outbound"])],
            cursor: Some(PageCursor::After(cursor.clone())),
            ..inbound_by_dial.clone()
        },
        ListQuery {
            sort: vec![sort_key(SortField::Attr(Field::DialedAt), false)],
            cursor: Some(PageCursor::Before(cursor.clone())),
            ..inbound_by_dial.clone()
        },
    ];
    for query in &elsewhere {
        match ledger.projection.list(query) {
            Err(QueryError::CursorMismatch) => {}
            other => {
                panic!("a cursor of another list must be refused, got {other:?} for {query:?}")
            }
        }
    }
    let garbled = ListQuery {
        cursor: Some(PageCursor::After(format!("{cursor}x!"))),
        ..inbound_by_dial.clone()
    };
    assert!(
        matches!(
            ledger.projection.list(&garbled),
            Err(QueryError::InvalidCursor | QueryError::CursorMismatch)
        ),
        "a garbled cursor is refused"
    );
    // The same cursor still works with its own list.
    let own = ListQuery {
        cursor: Some(PageCursor::After(cursor)),
        ..inbound_by_dial
    };
    assert!(
        ledger.projection.list(&own).is_ok(),
        "a cursor works with its own list"
    );
}
