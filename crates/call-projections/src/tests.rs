//! The crate's tests: a real event log in a throwaway directory, events made with call-model,
//! and every list checked against a brute-force reference of the query's meaning.

use crate::projection::BULK_CATCH_UP;
use crate::query::*;
use crate::{Appending, Projection, ProjectionError, ProjectionOptions, QueryError};
use call_model::{
    AttrValue, Call, Changes, Event, EventBody, Field, Relation, StoredEvent, Timestamp,
};
use event_log::{Append, EventLog, ExpectedVersion, LogOptions, StreamTarget};
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// 2025-01-13T12:00:00Z.
const EPOCH: i64 = 1_736_769_600_000;

struct Ledger {
    dir: TempDir,
    log: EventLog,
    projection: Projection,
    clock: i64,
    template: StoredEvent,
}

fn projection_dir(dir: &Path) -> PathBuf {
    dir.join("projection")
}

impl Ledger {
    fn new() -> Ledger {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = EventLog::open(&dir.path().join("log"), LogOptions::durable()).expect("log");
        let projection =
            Projection::open(&projection_dir(dir.path()), log.clone()).expect("projection");
        // An event to copy the envelope from: the tests have no uuid of their own to make.
        let template = Event::decode(
            1,
            1,
            1,
            br#"{"schemaVersion":1,"type":"CallDeleted","eventId":"0190a6b2-7c1e-7000-8000-000000000000","idempotencyKey":null,"occurredAt":"2025-01-13T12:00:00.000Z","recordedAt":"2025-01-13T12:00:00.000Z","actor":"test","data":{}}"#,
        )
        .expect("template event")
        .stored;
        Ledger {
            dir,
            log,
            projection,
            clock: EPOCH,
            template,
        }
    }

    fn append(&mut self, stream: StreamTarget, body: EventBody) -> (u64, u64) {
        // Each event a second after the last, so timestamps order like positions.
        self.clock += 1000;
        let at = Timestamp::from_millis(self.clock);
        let event = StoredEvent {
            occurred_at: at,
            recorded_at: at,
            body,
            ..self.template.clone()
        };
        let appended = self
            .log
            .append(Append {
                stream,
                expected: ExpectedVersion::Any,
                idempotency: None,
                payloads: vec![event.encode()],
            })
            .expect("append");
        (appended.stream, appended.last_position)
    }

    fn create(&mut self, members: Value) -> u64 {
        let (id, position) =
            self.append(StreamTarget::New, EventBody::CallCreated(changes(members)));
        self.projection.wait_for(position).expect("wait_for");
        id
    }

    fn update(&mut self, id: u64, members: Value) {
        let changes = changes(members);
        let body = if changes.attributes.contains_key(&Field::State) {
            EventBody::CallStateChanged {
                previous_state: None,
                changes,
            }
        } else {
            EventBody::CallUpdated(changes)
        };
        let (_, position) = self.append(StreamTarget::Existing(id), body);
        self.projection.wait_for(position).expect("wait_for");
    }

    fn delete(&mut self, id: u64) {
        let (_, position) = self.append(StreamTarget::Existing(id), EventBody::CallDeleted);
        self.projection.wait_for(position).expect("wait_for");
    }

    fn call(&self, id: u64) -> Call {
        self.projection.get(id).expect("get").expect("live call")
    }

    /// Hands the ledger's appends to a projection of another directory and returns the one it
    /// had, for a test to close and open again (the next appends are not in it).
    fn hand_over(&mut self) -> Projection {
        let other = Projection::open(&self.dir.path().join("other"), self.log.clone()).unwrap();
        std::mem::replace(&mut self.projection, other)
    }

    fn all(&self) -> Vec<Call> {
        let mut calls = Vec::new();
        let mut query = query(vec![], vec![], MAX_PAGE_SIZE);
        loop {
            let page = self.projection.list(&query).expect("list");
            let Some(last) = page.calls.last() else { break };
            query.cursor = Some(PageCursor::After(self.projection.cursor_for(&query, last)));
            calls.extend(page.calls);
            if !page.more_after {
                break;
            }
        }
        calls
    }
}

/// Changes from `{"attributes": {...}, "relationships": {...}}` in the events' JSON form.
fn changes(members: Value) -> Changes {
    Changes::from_json(&members).expect("changes in the events' form")
}

fn query(filters: Vec<Filter>, sort: Vec<SortKey>, page_size: usize) -> ListQuery {
    ListQuery {
        filters,
        sort,
        page_size,
        cursor: None,
        count: false,
    }
}

fn filter(target: FilterTarget, condition: Condition) -> Filter {
    Filter { target, condition }
}

fn attr(field: Field, condition: Condition) -> Filter {
    filter(FilterTarget::Attr(field), condition)
}

fn text(value: &str) -> FilterValue {
    FilterValue::Text(value.to_owned())
}

fn any_text(values: &[&str]) -> Condition {
    Condition::AnyOf(values.iter().map(|v| text(v)).collect())
}

fn time(seconds: i64) -> FilterValue {
    FilterValue::Time(Timestamp::from_millis(EPOCH + seconds * 1000))
}

fn asc(field: Field) -> SortKey {
    SortKey {
        field: SortField::Attr(field),
        descending: false,
    }
}

fn desc(field: Field) -> SortKey {
    SortKey {
        field: SortField::Attr(field),
        descending: true,
    }
}

fn ids(calls: &[Call]) -> Vec<u64> {
    calls.iter().map(|c| c.id).collect()
}

/// The values a filter looks at, as the reference sees them (empty: null).
fn reference_values(call: &Call, target: FilterTarget) -> Vec<FilterValue> {
    match target {
        FilterTarget::Id => vec![FilterValue::Int(call.id as i64)],
        FilterTarget::Related(relation) => call
            .related_id(relation)
            .map(FilterValue::Int)
            .into_iter()
            .collect(),
        FilterTarget::Attr(field) => match call.attribute(field) {
            None => vec![],
            Some(AttrValue::Text(t)) => vec![text(t)],
            Some(AttrValue::Time(at)) => vec![FilterValue::Time(*at)],
            Some(AttrValue::Bool(b)) => vec![FilterValue::Bool(*b)],
            Some(AttrValue::Tags(tags)) => tags.iter().map(|t| text(t)).collect(),
        },
    }
}

fn reference_matches(call: &Call, filter: &Filter) -> bool {
    let values = reference_values(call, filter.target);
    match &filter.condition {
        Condition::AnyOf(wanted) => values.iter().any(|v| wanted.contains(v)),
        Condition::Null => values.is_empty(),
        Condition::NotNull => !values.is_empty(),
        Condition::Range { lower, upper } => values.iter().any(|v| {
            lower.as_ref().is_none_or(|l| v >= l) && upper.as_ref().is_none_or(|u| v <= u)
        }),
    }
}

/// The reference order: the sort keys, then id in the last key's direction unless named.
/// (A repeated key cannot change the order, so it needs no special case here.)
fn reference_cmp(a: &Call, b: &Call, sort: &[SortKey]) -> Ordering {
    let value = |call: &Call, field: SortField| match field {
        SortField::Id => Some(FilterValue::Int(call.id as i64)),
        SortField::Attr(f) => reference_values(call, FilterTarget::Attr(f)).pop(),
    };
    let mut keys = sort.to_vec();
    if !keys.iter().any(|k| k.field == SortField::Id) {
        keys.push(SortKey {
            field: SortField::Id,
            descending: keys.last().is_some_and(|k| k.descending),
        });
    }
    for key in keys {
        let ordering = value(a, key.field).cmp(&value(b, key.field));
        let ordering = if key.descending {
            ordering.reverse()
        } else {
            ordering
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    Ordering::Equal
}

pub(crate) fn reference(calls: &[Call], query: &ListQuery) -> Vec<u64> {
    let mut matching: Vec<&Call> = calls
        .iter()
        .filter(|c| query.filters.iter().all(|f| reference_matches(c, f)))
        .collect();
    matching.sort_by(|a, b| reference_cmp(a, b, &query.sort));
    matching.iter().map(|c| c.id).collect()
}

/// Every page forward from the first, then every page backward from the last; both must give
/// the reference, and the page flags must be right.
fn walk_both_ways(projection: &Projection, mut query: ListQuery) -> (Vec<u64>, Vec<u64>) {
    query.cursor = None;
    let mut forward = Vec::new();
    let mut first_page = true;
    let mut last_row = None;
    loop {
        let page = projection.list(&query).expect("list forward");
        assert!(page.calls.len() <= query.page_size);
        assert_eq!(
            page.more_before,
            !first_page && !forward.is_empty(),
            "more_before going forward"
        );
        forward.extend(ids(&page.calls));
        if let Some(last) = page.calls.last() {
            last_row = Some(last.clone());
        }
        if !page.more_after {
            break;
        }
        let last = page.calls.last().expect("a page with more after has rows");
        query.cursor = Some(PageCursor::After(projection.cursor_for(&query, last)));
        first_page = false;
    }
    let mut backward = Vec::new();
    if let Some(last) = last_row {
        // From the last row: the page before it, and so on; then the last row itself.
        backward.push(last.id);
        query.cursor = Some(PageCursor::Before(projection.cursor_for(&query, &last)));
        loop {
            let page = projection.list(&query).expect("list backward");
            assert!(page.more_after, "rows follow a page[before] page");
            backward.splice(0..0, ids(&page.calls));
            if !page.more_before {
                break;
            }
            let first = page
                .calls
                .first()
                .expect("a page with more before has rows");
            query.cursor = Some(PageCursor::Before(projection.cursor_for(&query, first)));
        }
    }
    (forward, backward)
}

fn pick<'a, T>(rng: &mut u64, items: &'a [T]) -> &'a T {
    // xorshift: deterministic, no dependency.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    &items[(*rng % items.len() as u64) as usize]
}

/// A few hundred varied calls, some updated, some deleted.
fn varied_ledger(n: usize) -> Ledger {
    let mut ledger = Ledger::new();
    fill_varied(&mut ledger, n);
    ledger
}

/// Creates `n` calls of varied members in `ledger`, then updates some and deletes others.
fn fill_varied(ledger: &mut Ledger, n: usize) {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut created = Vec::new();
    for i in 0..n {
        let mut attributes = serde_json::Map::new();
        let mut set = |name: &str, value: Value| {
            if !value.is_null() {
                attributes.insert(name.to_owned(), value);
            }
        };
        set(
            "direction",
            json!(pick(&mut rng, &["inbound", "outbound", ""]))
                .as_str()
                .filter(|s| !s.is_empty())
                .map_or(Value::Null, |s| json!(s)),
        );
        set(
            "outcome",
            pick(
                &mut rng,
                &[json!("Answered"), json!("Not Answered"), Value::Null],
            )
            .clone(),
        );
        set(
            "state",
            pick(
                &mut rng,
                &[
                    json!("completed"),
                    json!("ringing"),
                    json!("no-answer"),
                    Value::Null,
                ],
            )
            .clone(),
        );
        set(
            "from",
            json!(format!(
                "+1555{:03}",
                pick(&mut rng, &(0..40).collect::<Vec<_>>())
            )),
        );
        set(
            "to",
            pick(
                &mut rng,
                &[
                    json!("+44 20 7946 0000"),
                    json!("+44 20 7946 0001"),
                    Value::Null,
                ],
            )
            .clone(),
        );
        set(
            "tags",
            pick(
                &mut rng,
                &[
                    json!(["a"]),
                    json!(["b", "c"]),
                    json!(["a", "c"]),
                    json!([]),
                    Value::Null,
                ],
            )
            .clone(),
        );
        set(
            "shouldRecordCall",
            pick(&mut rng, &[json!(true), json!(false), Value::Null]).clone(),
        );
        set(
            "note",
            pick(&mut rng, &[json!("hello"), json!("bye"), Value::Null]).clone(),
        );
        set(
            "externalVendor",
            pick(&mut rng, &[json!("twilio"), json!("vonage"), Value::Null]).clone(),
        );
        let seconds = *pick(&mut rng, &(0..200).collect::<Vec<i64>>());
        set(
            "dialedAt",
            pick(
                &mut rng,
                &[
                    json!(Timestamp::from_millis(EPOCH + seconds * 1000).to_string()),
                    Value::Null,
                ],
            )
            .clone(),
        );
        let mut relationships = serde_json::Map::new();
        if let Some(prospect) = pick(&mut rng, &[Some(1), Some(2), Some(3), Some(4), None]) {
            relationships.insert(
                "prospect".into(),
                json!({"type": "prospect", "id": prospect}),
            );
        }
        if i % 3 == 0 {
            relationships.insert("user".into(), json!({"type": "user", "id": i % 5}));
        }
        created
            .push(ledger.create(json!({"attributes": attributes, "relationships": relationships})));
    }
    for (i, id) in created.iter().enumerate() {
        match i % 7 {
            0 => ledger.update(*id, json!({"attributes": {"state": "completed", "outcome": "Answered"}})),
            1 => ledger.update(*id, json!({"attributes": {"note": null, "tags": ["z"]}, "relationships": {"prospect": null}})),
            2 if i % 2 == 0 => ledger.delete(*id),
            _ => {}
        }
    }
}

#[test]
fn get_and_list_follow_creates_updates_and_deletes() {
    let mut ledger = Ledger::new();
    let a = ledger.create(json!({"attributes": {"direction": "inbound", "note": "first"}}));
    let b = ledger.create(json!({"attributes": {"direction": "outbound"}}));
    assert_eq!((a, b), (1, 2));
    let call = ledger.call(a);
    assert_eq!(call.version, 1);
    assert_eq!(call.text(Field::Note), Some("first"));
    assert_eq!(
        call.time(Field::CreatedAt),
        Some(Timestamp::from_millis(EPOCH + 1000))
    );

    ledger.update(
        a,
        json!({"attributes": {"note": "second", "state": "completed"}}),
    );
    let call = ledger.call(a);
    assert_eq!((call.version, call.position), (2, 3));
    assert_eq!(call.text(Field::Note), Some("second"));
    assert_eq!(
        call.time(Field::StateChangedAt),
        Some(Timestamp::from_millis(EPOCH + 3000))
    );
    assert_eq!(
        call.time(Field::UpdatedAt),
        Some(Timestamp::from_millis(EPOCH + 3000))
    );

    let inbound = query(
        vec![attr(Field::Direction, any_text(&["inbound"]))],
        vec![],
        10,
    );
    assert_eq!(
        ids(&ledger.projection.list(&inbound).unwrap().calls),
        vec![a]
    );
    let by_note = query(vec![attr(Field::Note, any_text(&["first"]))], vec![], 10);
    assert!(
        ledger.projection.list(&by_note).unwrap().calls.is_empty(),
        "the old note is gone from the index"
    );

    ledger.delete(a);
    assert_eq!(ledger.projection.get(a).unwrap(), None);
    assert_eq!(ids(&ledger.all()), vec![b]);
    assert!(ledger.projection.list(&inbound).unwrap().calls.is_empty());
    let stats = ledger.projection.stats().unwrap();
    assert_eq!(
        (stats.live_calls, stats.deleted_calls, stats.checkpoint),
        (1, 1, 4)
    );
    assert!(stats.size_on_disk > 0);
    assert_eq!(ledger.projection.get(999).unwrap(), None);
}

#[test]
fn every_filter_kind_matches_the_reference() {
    let ledger = varied_ledger(240);
    let calls = ledger.all();
    assert!(calls.len() > 200, "{} live calls", calls.len());
    let p = &ledger.projection;
    let filters = vec![
        vec![attr(Field::Direction, any_text(&["inbound"]))],
        vec![attr(Field::Direction, any_text(&["inbound", "outbound"]))],
        vec![attr(Field::Direction, Condition::Null)],
        vec![attr(Field::Outcome, Condition::NotNull)],
        vec![attr(Field::Outcome, Condition::Null)],
        vec![attr(Field::State, any_text(&["ringing", "no-answer"]))],
        vec![attr(Field::From, any_text(&["+1555007", "+1555011"]))],
        vec![attr(
            Field::From,
            Condition::Range {
                lower: Some(text("+1555010")),
                upper: Some(text("+1555019")),
            },
        )],
        vec![attr(
            Field::To,
            Condition::Range {
                lower: None,
                upper: Some(text("+44 20 7946 0000")),
            },
        )],
        vec![attr(Field::ExternalVendor, Condition::Null)],
        vec![attr(Field::ExternalVendor, Condition::NotNull)],
        vec![attr(
            Field::ExternalVendor,
            Condition::Range {
                lower: Some(text("u")),
                upper: None,
            },
        )],
        vec![attr(Field::Tags, any_text(&["c"]))],
        vec![attr(Field::Tags, any_text(&["a", "z"]))],
        vec![attr(Field::Tags, Condition::Null)],
        vec![attr(Field::Tags, Condition::NotNull)],
        vec![attr(
            Field::ShouldRecordCall,
            Condition::AnyOf(vec![FilterValue::Bool(true)]),
        )],
        vec![attr(Field::ShouldRecordCall, Condition::Null)],
        vec![attr(Field::Note, any_text(&["hello"]))],
        vec![attr(Field::Note, Condition::Null)],
        vec![attr(
            Field::DialedAt,
            Condition::Range {
                lower: Some(time(50)),
                upper: Some(time(120)),
            },
        )],
        vec![attr(
            Field::DialedAt,
            Condition::Range {
                lower: Some(time(150)),
                upper: None,
            },
        )],
        vec![attr(Field::DialedAt, Condition::Null)],
        vec![attr(
            Field::DialedAt,
            Condition::AnyOf(vec![time(7), time(8)]),
        )],
        vec![attr(
            Field::CreatedAt,
            Condition::Range {
                lower: Some(time(30)),
                upper: Some(time(90)),
            },
        )],
        vec![attr(Field::StateChangedAt, Condition::NotNull)],
        vec![filter(
            FilterTarget::Id,
            Condition::AnyOf(vec![
                FilterValue::Int(3),
                FilterValue::Int(4),
                FilterValue::Int(200),
                FilterValue::Int(-1),
            ]),
        )],
        vec![filter(
            FilterTarget::Id,
            Condition::Range {
                lower: Some(FilterValue::Int(20)),
                upper: Some(FilterValue::Int(60)),
            },
        )],
        vec![filter(
            FilterTarget::Id,
            Condition::Range {
                lower: Some(FilterValue::Int(100)),
                upper: None,
            },
        )],
        vec![filter(
            FilterTarget::Related(Relation::Prospect),
            Condition::AnyOf(vec![FilterValue::Int(2)]),
        )],
        vec![filter(
            FilterTarget::Related(Relation::Prospect),
            Condition::AnyOf(vec![
                FilterValue::Int(1),
                FilterValue::Int(3),
                FilterValue::Int(9),
            ]),
        )],
        vec![filter(
            FilterTarget::Related(Relation::Prospect),
            Condition::Null,
        )],
        vec![filter(
            FilterTarget::Related(Relation::User),
            Condition::Range {
                lower: Some(FilterValue::Int(1)),
                upper: Some(FilterValue::Int(2)),
            },
        )],
        vec![
            attr(Field::Direction, any_text(&["outbound"])),
            filter(
                FilterTarget::Related(Relation::Prospect),
                Condition::AnyOf(vec![FilterValue::Int(1), FilterValue::Int(2)]),
            ),
            attr(Field::Tags, Condition::NotNull),
        ],
        vec![
            attr(Field::Outcome, any_text(&["Answered"])),
            attr(
                Field::DialedAt,
                Condition::Range {
                    lower: Some(time(20)),
                    upper: None,
                },
            ),
            filter(
                FilterTarget::Id,
                Condition::Range {
                    lower: Some(FilterValue::Int(10)),
                    upper: Some(FilterValue::Int(200)),
                },
            ),
        ],
        vec![attr(Field::Direction, any_text(&["sideways"]))],
        vec![attr(Field::Direction, Condition::AnyOf(vec![]))],
    ];
    let sorts = vec![
        vec![],
        vec![SortKey {
            field: SortField::Id,
            descending: true,
        }],
        vec![desc(Field::CreatedAt)],
        vec![asc(Field::DialedAt)],
        vec![desc(Field::State), asc(Field::DialedAt)],
        vec![
            asc(Field::Outcome),
            desc(Field::From),
            SortKey {
                field: SortField::Id,
                descending: false,
            },
        ],
    ];
    for filters in &filters {
        for sort in &sorts {
            let mut q = query(filters.clone(), sort.clone(), 7);
            let expected = reference(&calls, &q);
            let (forward, backward) = walk_both_ways(p, q.clone());
            assert_eq!(
                forward, expected,
                "forward walk of {filters:?} sorted by {sort:?}"
            );
            assert_eq!(
                backward, expected,
                "backward walk of {filters:?} sorted by {sort:?}"
            );
            q.count = true;
            assert_eq!(
                p.list(&q).unwrap().count,
                Some(expected.len() as u64),
                "count of {filters:?}"
            );
        }
    }
}

#[test]
fn every_sortable_attribute_sorts_both_ways() {
    let ledger = varied_ledger(120);
    let calls = ledger.all();
    let sortable = [
        Field::CreatedAt,
        Field::UpdatedAt,
        Field::State,
        Field::Outcome,
        Field::From,
        Field::To,
        Field::RecordingUrl,
        Field::UserCallType,
        Field::AnsweredAt,
        Field::CompletedAt,
        Field::DialedAt,
        Field::ReturnedAt,
        Field::StateChangedAt,
    ];
    for field in sortable {
        for sort in [
            vec![asc(field)],
            vec![desc(field)],
            vec![desc(field), asc(Field::From)],
            vec![
                asc(field),
                SortKey {
                    field: SortField::Id,
                    descending: true,
                },
            ],
        ] {
            let q = query(vec![], sort.clone(), 11);
            let expected = reference(&calls, &q);
            let (forward, backward) = walk_both_ways(&ledger.projection, q);
            assert_eq!(forward, expected, "sorted by {sort:?}");
            assert_eq!(backward, expected, "sorted backward by {sort:?}");
        }
    }
    let unsortable = query(vec![], vec![asc(Field::Note)], 10);
    assert!(
        matches!(ledger.projection.list(&unsortable), Err(QueryError::InvalidSort(f)) if f == "note")
    );
}

#[test]
fn walking_pages_while_calls_are_created_returns_each_call_once() {
    let mut ledger = varied_ledger(60);
    for (filters, sort) in [
        (vec![], vec![]),
        (
            vec![attr(Field::Direction, any_text(&["inbound"]))],
            vec![desc(Field::CreatedAt)],
        ),
        (
            vec![attr(Field::Tags, Condition::NotNull)],
            vec![asc(Field::State), desc(Field::DialedAt)],
        ),
        (
            vec![],
            vec![SortKey {
                field: SortField::Id,
                descending: true,
            }],
        ),
    ] {
        let mut q = query(filters.clone(), sort.clone(), 4);
        let before: HashSet<u64> = reference(&ledger.all(), &q).into_iter().collect();
        let mut seen = Vec::new();
        loop {
            let page = ledger.projection.list(&q).unwrap();
            seen.extend(ids(&page.calls));
            // Calls arrive between pages; some of them match.
            ledger.create(json!({"attributes": {"direction": "inbound", "tags": ["new"], "state": "completed"}}));
            ledger.create(json!({"attributes": {"direction": "outbound"}}));
            if !page.more_after {
                break;
            }
            let last = page.calls.last().unwrap();
            q.cursor = Some(PageCursor::After(ledger.projection.cursor_for(&q, last)));
        }
        let unique: HashSet<u64> = seen.iter().copied().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "no call twice in {filters:?} / {sort:?}: {seen:?}"
        );
        assert!(
            before.is_subset(&unique),
            "every call that was there from the start, in {filters:?} / {sort:?}"
        );

        // And backwards from the end of the list.
        let all = reference(&ledger.all(), &q);
        let last = ledger.call(*all.last().unwrap());
        q.cursor = Some(PageCursor::Before(ledger.projection.cursor_for(&q, &last)));
        let mut seen = vec![last.id];
        loop {
            let page = ledger.projection.list(&q).unwrap();
            seen.extend(ids(&page.calls));
            ledger.create(json!({"attributes": {"direction": "inbound", "tags": ["new"]}}));
            if !page.more_before {
                break;
            }
            q.cursor = Some(PageCursor::Before(
                ledger.projection.cursor_for(&q, &page.calls[0]),
            ));
        }
        let unique: HashSet<u64> = seen.iter().copied().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "no call twice backwards in {filters:?} / {sort:?}"
        );
        // Calls created meanwhile may show up too (they sort first here), but none is missed.
        assert!(
            all.iter().all(|id| unique.contains(id)),
            "backwards in {filters:?} / {sort:?}"
        );
    }
}

#[test]
fn a_cursor_outlives_the_row_it_names() {
    let mut ledger = Ledger::new();
    let created: Vec<u64> = (0..6)
        .map(|_| ledger.create(json!({"attributes": {}})))
        .collect();
    let mut q = query(vec![], vec![], 2);
    let page = ledger.projection.list(&q).unwrap();
    let cursor = ledger.projection.cursor_for(&q, &page.calls[1]);
    ledger.delete(created[1]);
    q.cursor = Some(PageCursor::After(cursor.clone()));
    let page = ledger.projection.list(&q).unwrap();
    assert_eq!(ids(&page.calls), created[2..4].to_vec());
    assert!(page.more_before && page.more_after);
    q.cursor = Some(PageCursor::Before(cursor));
    let page = ledger.projection.list(&q).unwrap();
    assert_eq!(ids(&page.calls), vec![created[0]]);
    assert!(!page.more_before && page.more_after);
}

#[test]
fn foreign_and_garbage_cursors_are_errors() {
    let mut ledger = Ledger::new();
    for _ in 0..3 {
        ledger.create(json!({"attributes": {"direction": "inbound"}}));
    }
    let inbound = vec![attr(Field::Direction, any_text(&["inbound"]))];
    let by_created = query(inbound.clone(), vec![desc(Field::CreatedAt)], 1);
    let call = ledger.call(1);
    let cursor = ledger.projection.cursor_for(&by_created, &call);

    // The same filters in another order, or another page size, keep the cursor valid.
    let mut same = query(inbound.clone(), vec![desc(Field::CreatedAt)], 50);
    same.cursor = Some(PageCursor::After(cursor.clone()));
    assert!(ledger.projection.list(&same).is_ok());

    for other in [
        query(inbound.clone(), vec![asc(Field::CreatedAt)], 1),
        query(inbound.clone(), vec![], 1),
        query(
            vec![attr(Field::Direction, any_text(&["outbound"]))],
            vec![desc(Field::CreatedAt)],
            1,
        ),
        query(vec![], vec![desc(Field::CreatedAt)], 1),
    ] {
        let mut other = other;
        other.cursor = Some(PageCursor::After(cursor.clone()));
        assert!(
            matches!(
                ledger.projection.list(&other),
                Err(QueryError::CursorMismatch)
            ),
            "{other:?}"
        );
    }
    let mut garbled = cursor.clone();
    garbled.insert(3, '!');
    for text in [
        "",
        "nonsense",
        "%%%",
        &garbled,
        &cursor[..cursor.len() / 2],
        "eyJ2IjpbXSwiaSI6MSwicSI6IiJ9",
        &"A".repeat(100_000),
    ] {
        let mut q = by_created.clone();
        q.cursor = Some(PageCursor::Before(text.to_owned()));
        assert!(
            matches!(
                ledger.projection.list(&q),
                Err(QueryError::InvalidCursor) | Err(QueryError::CursorMismatch)
            ),
            "{text:?}"
        );
    }
    for size in [0, MAX_PAGE_SIZE + 1] {
        assert!(
            matches!(ledger.projection.list(&query(vec![], vec![], size)), Err(QueryError::PageSize(s)) if s == size)
        );
    }
    let wrong_type = query(
        vec![attr(Field::DialedAt, any_text(&["yesterday"]))],
        vec![],
        5,
    );
    assert!(matches!(
        ledger.projection.list(&wrong_type),
        Err(QueryError::InvalidFilter { .. })
    ));
    let not_filterable = query(
        vec![filter(
            FilterTarget::Related(Relation::Batches),
            Condition::AnyOf(vec![FilterValue::Int(1)]),
        )],
        vec![],
        5,
    );
    assert!(matches!(
        ledger.projection.list(&not_filterable),
        Err(QueryError::InvalidFilter { .. })
    ));
    let tag_range = query(
        vec![attr(
            Field::Tags,
            Condition::Range {
                lower: None,
                upper: None,
            },
        )],
        vec![],
        5,
    );
    let error = ledger.projection.list(&tag_range).unwrap_err();
    assert!(error.to_string().contains("tags"), "{error}");
}

#[test]
fn changes_list_changed_calls_once_and_every_deletion() {
    let mut ledger = Ledger::new();
    let a = ledger.create(json!({"attributes": {}})); // 1
    let b = ledger.create(json!({"attributes": {}})); // 2
    let c = ledger.create(json!({"attributes": {}})); // 3
    ledger.update(a, json!({"attributes": {"note": "x"}})); // 4
    ledger.delete(b); // 5
    let d = ledger.create(json!({"attributes": {}})); // 6
    ledger.delete(d); // 7

    let page = ledger.projection.changes(0, 100).unwrap();
    assert_eq!(ids(&page.calls), vec![c, a]);
    let deleted: Vec<(u64, u64)> = page.deleted.iter().map(|d| (d.id, d.position)).collect();
    assert_eq!(deleted, vec![(b, 5), (d, 7)]);
    assert_eq!(
        page.deleted[0].deleted_at,
        Timestamp::from_millis(EPOCH + 5000)
    );
    assert_eq!((page.next_after, page.more), (7, false));

    let page = ledger.projection.changes(3, 100).unwrap();
    assert_eq!(ids(&page.calls), vec![a]);
    assert_eq!(page.deleted.len(), 2);

    // Cut short: three items in log order, then the rest from where it stopped.
    let page = ledger.projection.changes(0, 3).unwrap();
    assert_eq!(ids(&page.calls), vec![c, a]);
    assert_eq!(page.deleted.len(), 1);
    assert_eq!((page.next_after, page.more), (5, true));
    let rest = ledger.projection.changes(page.next_after, 3).unwrap();
    assert!(rest.calls.is_empty());
    assert_eq!(
        rest.deleted.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![d]
    );
    assert_eq!((rest.next_after, rest.more), (7, false));

    let none = ledger.projection.changes(7, 10).unwrap();
    assert!(none.calls.is_empty() && none.deleted.is_empty() && !none.more);
    assert_eq!(
        ledger.projection.changes(u64::MAX, 10).unwrap().calls.len(),
        0
    );
}

#[test]
fn rebuild_equals_live_and_verify_finds_a_tampered_row() {
    let ledger = varied_ledger(150);
    let before = ledger.all();
    let scratch = ledger.dir.path().join("scratch");
    let report = ledger.projection.verify(&scratch).unwrap();
    assert_eq!(report.differences, Vec::<String>::new());
    assert_eq!(report.events, ledger.log.head());
    assert_eq!(report.calls, before.len() as u64);

    let mut reported = Vec::new();
    let rebuilt = ledger
        .projection
        .rebuild(&mut |applied, head| reported.push((applied, head)))
        .unwrap();
    assert_eq!(rebuilt.events, ledger.log.head());
    assert_eq!(rebuilt.calls, before.len() as u64);
    assert_eq!(
        reported.last().copied(),
        Some((ledger.log.head(), ledger.log.head()))
    );
    assert_eq!(
        ledger.all(),
        before,
        "the rebuilt view serves the same calls"
    );
    let q = query(
        vec![attr(Field::Tags, any_text(&["a"]))],
        vec![desc(Field::DialedAt)],
        9,
    );
    assert_eq!(
        walk_both_ways(&ledger.projection, q.clone()).0,
        reference(&before, &q)
    );
    assert_eq!(
        ledger.projection.verify(&scratch).unwrap().differences,
        Vec::<String>::new()
    );

    // Tamper with one stored view behind the projection's back.
    let victim = before[5].clone();
    let mut tampered = victim.clone();
    tampered
        .attributes
        .insert(Field::Note, AttrValue::Text("tampered".into()));
    let bytes = crate::codec::encode(&tampered);
    ledger
        .projection
        .tree()
        .insert(crate::store::key(crate::store::CALL, victim.id), bytes)
        .unwrap();
    let report = ledger.projection.verify(&scratch).unwrap();
    assert_eq!(report.differences.len(), 1, "{:?}", report.differences);
    let line = &report.differences[0];
    assert!(
        line.contains(&format!("view of call {}", victim.id))
            && line.contains("note")
            && line.contains("tampered"),
        "{line}"
    );

    // A missing deletion row and a stray view are both named.
    let deletion = ledger.projection.changes(0, 1000).unwrap().deleted[0].clone();
    let tree = ledger.projection.tree();
    let range = crate::store::key(
        crate::store::DELETION,
        deletion.position >> crate::store::DELETION_SHIFT,
    );
    let row = tree.get(range).unwrap().expect("the deletion's row");
    let others: Vec<u8> = row
        .chunks(24)
        .filter(|entry| entry[..8] != deletion.position.to_be_bytes())
        .flatten()
        .copied()
        .collect();
    assert_eq!(others.len() + 24, row.len(), "the row held the deletion");
    if others.is_empty() {
        tree.remove(range).unwrap();
    } else {
        tree.insert(range, others).unwrap();
    }
    tree.insert(
        crate::store::key(crate::store::CALL, 999_999),
        b"{}".to_vec(),
    )
    .unwrap();
    let report = ledger.projection.verify(&scratch).unwrap();
    let text = report.differences.join("\n");
    assert!(
        text.contains(&format!(
            "deletion at position {} is in the rebuilt",
            deletion.position
        )),
        "{text}"
    );
    assert!(
        text.contains("view of call 999999 is in the live projection"),
        "{text}"
    );

    // Rebuild repairs it.
    ledger.projection.rebuild(&mut |_, _| {}).unwrap();
    assert_eq!(
        ledger.projection.verify(&scratch).unwrap().differences,
        Vec::<String>::new()
    );
    assert_eq!(ledger.all(), before);
}

#[test]
fn catching_up_in_bulk_equals_catching_up_call_by_call() {
    let mut ledger = Ledger::new();
    let bulk_dir = ledger.dir.path().join("bulk");
    let bulk = Projection::open(&bulk_dir, ledger.log.clone()).expect("open a second view");
    // From a view with nothing applied: replayed as a new one.
    fill_varied(&mut ledger, 150);
    assert!(ledger.log.head() > BULK_CATCH_UP);
    assert_eq!(bulk.catch_up_in_bulk().unwrap(), ledger.log.head());
    assert_eq!(everything(&bulk), everything(&ledger.projection));
    assert_verified(&bulk, &bulk_dir);
    // Far behind again, from a view that holds calls: continued, its indexes read back.
    fill_varied(&mut ledger, 60);
    assert!(ledger.log.head() - bulk.checkpoint() > BULK_CATCH_UP);
    assert_eq!(bulk.catch_up_in_bulk().unwrap(), ledger.log.head());
    assert_eq!(everything(&bulk), everything(&ledger.projection));
    assert_verified(&bulk, &bulk_dir);
    // Behind by more than the threshold but less than a third of its calls: followed a chunk
    // at a time, its indexes updated in place.
    let live = bulk.stats().unwrap().live_calls;
    let first = ledger.create(json!({"attributes": {"direction": "inbound"}}));
    while ledger.log.head() - bulk.checkpoint() <= BULK_CATCH_UP {
        ledger.update(first, json!({"attributes": {"note": "again"}}));
    }
    assert!(((ledger.log.head() - bulk.checkpoint()) as f64) < live as f64 / 3.0);
    assert_eq!(bulk.catch_up_in_bulk().unwrap(), ledger.log.head());
    assert_eq!(everything(&bulk), everything(&ledger.projection));
    assert_verified(&bulk, &bulk_dir);
    // Close behind: a chunk at a time, as `catch_up` does.
    let id = ledger.create(json!({"attributes": {"note": "one more"}}));
    assert_eq!(bulk.catch_up_in_bulk().unwrap(), ledger.log.head());
    assert_eq!(bulk.get(id).unwrap(), ledger.projection.get(id).unwrap());
    assert_eq!(everything(&bulk), everything(&ledger.projection));
}

/// A view following appends as they are made (`import`'s) waits for a whole chunk past what it
/// read, reads up to the head once told the appends ended, and ends equal to a view caught up
/// call by call: from nothing applied (replayed beside the appends, its indexes built from the
/// replayed calls), and again from a view that holds calls (caught up once the appends end).
#[test]
fn a_view_following_appends_equals_one_caught_up_call_by_call() {
    let mut ledger = Ledger::new();
    let following_dir = ledger.dir.path().join("following");
    let following = Projection::open(&following_dir, ledger.log.clone()).expect("a second view");
    for round in 0..2 {
        let appending = Appending::default();
        let caught = std::thread::scope(|scope| {
            let follower = scope.spawn(|| {
                crate::bulk::TEST_CHUNK.with(|chunk| chunk.set(Some(5)));
                following.catch_up_beside(&appending)
            });
            for _ in 0..4 {
                fill_varied(&mut ledger, 12);
                appending.appended();
            }
            // Nothing past what the appends made is read before they end: a view with calls
            // has not moved, and a following one is at most a chunk and a part behind.
            if round == 1 {
                assert!(following.checkpoint() < ledger.log.head());
            }
            appending.end();
            follower.join().expect("the follower")
        });
        assert_eq!(
            caught.expect("followed"),
            ledger.log.head(),
            "round {round}"
        );
        assert_eq!(everything(&following), everything(&ledger.projection));
        assert_verified(&following, &following_dir);
    }
}

/// A view following appends folds the calls handed to it for their creates instead of decoding
/// those records: a call handed as the create made it gives the view the log gives; one that is
/// not its record's create (another version, another position) is let go and the record decoded;
/// and one that says otherwise than its record is what the view then holds, which `verify`
/// reports: the handed call is what is folded.
#[test]
fn a_view_following_appends_folds_the_calls_handed_for_their_creates() {
    let mut ledger = Ledger::new();
    let following_dir = ledger.dir.path().join("following");
    let following = Projection::open(&following_dir, ledger.log.clone()).expect("a second view");
    let appending = Appending::default();
    let (honest, misplaced, late, poisoned) = std::thread::scope(|scope| {
        let follower = scope.spawn(|| {
            crate::bulk::TEST_CHUNK.with(|chunk| chunk.set(Some(5)));
            following.catch_up_beside(&appending)
        });
        let honest = ledger.create(json!({"attributes": {"direction": "inbound"}}));
        let misplaced = ledger.create(json!({"attributes": {"direction": "outbound"}}));
        let late = ledger.create(json!({"attributes": {"note": "as logged"}}));
        let poisoned = ledger.create(json!({"attributes": {"note": "as logged"}}));
        let mut wrong_version = ledger.call(misplaced);
        wrong_version.version = 2;
        wrong_version
            .attributes
            .insert(Field::Note, AttrValue::Text("never logged".into()));
        let mut wrong_position = ledger.call(late);
        // The position of a create of another call, made below.
        wrong_position.position += 3;
        wrong_position
            .attributes
            .insert(Field::Note, AttrValue::Text("never logged".into()));
        let mut poison = ledger.call(poisoned);
        poison
            .attributes
            .insert(Field::Note, AttrValue::Text("handed, not logged".into()));
        appending.hand([ledger.call(honest), wrong_version, wrong_position, poison]);
        fill_varied(&mut ledger, 12);
        appending.appended();
        appending.end();
        let caught = follower.join().expect("the follower");
        assert_eq!(caught.expect("followed"), ledger.log.head());
        (honest, misplaced, late, poisoned)
    });
    for id in [honest, misplaced, late] {
        assert_eq!(
            following.get(id).unwrap(),
            ledger.projection.get(id).unwrap(),
            "call {id}"
        );
    }
    let held = following.get(poisoned).unwrap().expect("live");
    assert_eq!(held.text(Field::Note), Some("handed, not logged"));
    let report = following
        .verify(&following_dir.join("scratch"))
        .expect("verify");
    let text = report.differences.join("\n");
    assert!(text.contains(&format!("call {poisoned}")), "{text}");
}

#[test]
fn verify_reports_in_memory_index_drift() {
    let ledger = varied_ledger(30);
    let id = ledger.all()[0].id;
    let row = crate::index::IndexRow::of(&ledger.call(id));
    ledger
        .projection
        .inner_view_for_tests()
        .indexes
        .update(id, Some(&row), None);
    let report = ledger
        .projection
        .verify(&ledger.dir.path().join("scratch"))
        .unwrap();
    let text = report.differences.join("\n");
    assert!(
        text.contains(&format!(
            "live call ids: call {id} is in the rebuilt index but not in the live one"
        )),
        "{text}"
    );
}

#[test]
fn opening_rebuilt_replays_the_log_behind_the_view_and_keeps_nothing_of_the_old_one() {
    let mut ledger = varied_ledger(60);
    let dir = projection_dir(ledger.dir.path());
    drop(ledger.hand_over());
    // Behind the closed view: appends it has not seen, and a snapshot it could not read.
    ledger.create(json!({"attributes": {"direction": "inbound", "tags": ["late"]}}));
    ledger.delete(4);
    std::fs::write(Projection::snapshot_file(&dir), b"not a snapshot").unwrap();
    // A file of the old database: the rebuild fills a new one, and removes the old one whole.
    let stale = dir.join("blobs").join("stale");
    std::fs::write(&stale, b"a page of the old view").unwrap();
    let mut reported = Vec::new();
    let (rebuilt, report) = when_unlocked(|| {
        reported.clear();
        Projection::open_rebuilt(
            &dir,
            ledger.log.clone(),
            ProjectionOptions::default(),
            &mut |applied, head| reported.push((applied, head)),
        )
    });
    assert!(!stale.exists(), "the old database is removed");
    assert!(!dir.join("replaced").exists());
    let live = ledger.all();
    assert_eq!(report.events, ledger.log.head());
    assert_eq!(report.calls, live.len() as u64);
    assert_eq!(
        reported.last().copied(),
        Some((ledger.log.head(), ledger.log.head()))
    );
    assert_eq!(rebuilt.checkpoint(), ledger.log.head());
    drop(std::mem::replace(&mut ledger.projection, rebuilt));
    assert_eq!(ledger.all(), live, "the rebuilt view serves the live calls");
    assert_eq!(ledger.projection.get(4).unwrap(), None);
    let q = query(
        vec![attr(Field::Tags, any_text(&["late"]))],
        vec![desc(Field::CreatedAt)],
        5,
    );
    assert_eq!(walk_both_ways(&ledger.projection, q.clone()).0.len(), 1);
    assert_verified(&ledger.projection, ledger.dir.path());
}

#[test]
fn reopening_catches_up_from_the_checkpoint() {
    let mut ledger = varied_ledger(40);
    let dir = projection_dir(ledger.dir.path());
    let checkpoint = ledger.projection.checkpoint();
    assert_eq!(checkpoint, ledger.log.head());
    // Appends the projection does not see until it is opened again.
    drop(ledger.hand_over());
    ledger.create(json!({"attributes": {"direction": "inbound"}}));
    ledger.delete(3);
    let reopened = Projection::open(&dir, ledger.log.clone()).unwrap();
    assert_eq!(reopened.checkpoint(), ledger.log.head());
    assert!(reopened.checkpoint() > checkpoint);
    let q = query(
        vec![attr(Field::Direction, any_text(&["inbound"]))],
        vec![desc(Field::CreatedAt)],
        5,
    );
    assert_eq!(
        walk_both_ways(&reopened, q.clone()).0,
        walk_both_ways(&ledger.projection, q).0
    );
    assert_eq!(reopened.get(3).unwrap(), None);
    let (a, b) = (
        reopened.stats().unwrap(),
        ledger.projection.stats().unwrap(),
    );
    assert_eq!(
        (a.live_calls, a.deleted_calls, a.checkpoint),
        (b.live_calls, b.deleted_calls, b.checkpoint)
    );
    assert!(reopened
        .verify(&ledger.dir.path().join("scratch"))
        .unwrap()
        .differences
        .is_empty());

    // A fresh projection over the whole log catches up in bulk and serves the same calls.
    let fresh = Projection::open(&ledger.dir.path().join("fresh"), ledger.log.clone()).unwrap();
    assert_eq!(fresh.checkpoint(), ledger.log.head());
    let all = query(vec![], vec![], MAX_PAGE_SIZE);
    assert_eq!(
        fresh.list(&all).unwrap(),
        ledger.projection.list(&all).unwrap()
    );
    assert_eq!(
        fresh.changes(0, 1000).unwrap(),
        ledger.projection.changes(0, 1000).unwrap()
    );
    assert!(fresh
        .verify(&ledger.dir.path().join("scratch"))
        .unwrap()
        .differences
        .is_empty());
}

#[test]
fn a_projection_ahead_of_its_log_is_rebuilt_at_open() {
    let mut ledger = Ledger::new();
    for _ in 0..3 {
        ledger.create(json!({"attributes": {}}));
    }
    // A log that lost its tail (as a buffered log can after a crash): a fresh log with fewer
    // events, under the same projection.
    let dir = projection_dir(ledger.dir.path());
    let projection = std::mem::replace(
        &mut ledger.projection,
        Projection::open(&ledger.dir.path().join("other"), ledger.log.clone()).unwrap(),
    );
    drop(projection);
    let short_dir = ledger.dir.path().join("short-log");
    let short = EventLog::open(&short_dir, LogOptions::durable()).unwrap();
    let event = StoredEvent {
        body: EventBody::CallCreated(changes(json!({"attributes": {"note": "only one"}}))),
        ..ledger.template.clone()
    };
    short
        .append(Append {
            stream: StreamTarget::New,
            expected: ExpectedVersion::Any,
            idempotency: None,
            payloads: vec![event.encode()],
        })
        .unwrap();
    let reopened = Projection::open(&dir, short).unwrap();
    assert_eq!(reopened.checkpoint(), 1);
    assert_eq!(reopened.stats().unwrap().live_calls, 1);
    assert_eq!(
        reopened.get(1).unwrap().unwrap().text(Field::Note),
        Some("only one")
    );
}

#[test]
fn wait_for_a_position_beyond_the_log_is_an_error() {
    let mut ledger = Ledger::new();
    ledger.create(json!({"attributes": {}}));
    assert!(ledger.projection.wait_for(1).is_ok());
    assert!(matches!(
        ledger.projection.wait_for(5),
        Err(ProjectionError::BeyondHead {
            position: 5,
            head: 1
        })
    ));
}

#[test]
fn rebuild_throughput_is_reported() {
    // Not a timed assertion: it prints what a rebuild of a few thousand events took here.
    let mut ledger = Ledger::new();
    let n = 3000;
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let at = Timestamp::from_millis(EPOCH + i);
            StoredEvent {
                occurred_at: at,
                recorded_at: at,
                body: EventBody::CallCreated(changes(json!({"attributes": {
                    "direction": "outbound", "from": format!("+1555{i:07}"), "to": "+44 20 7946 0000",
                    "note": "a note of some length to make the event about the size of a real one", "tags": ["a", "b"],
                    "dialedAt": at.to_string(), "state": "completed", "outcome": "Answered"
                }, "relationships": {"prospect": {"type": "prospect", "id": i % 97}}}))),
                ..ledger.template.clone()
            }
            .encode()
        })
        .collect();
    for payload in payloads {
        ledger
            .log
            .append(Append {
                stream: StreamTarget::New,
                expected: ExpectedVersion::Any,
                idempotency: None,
                payloads: vec![payload],
            })
            .unwrap();
    }
    ledger.clock += n;
    let report = ledger.projection.rebuild(&mut |_, _| {}).unwrap();
    assert_eq!((report.events, report.calls), (n as u64, n as u64));
    eprintln!(
        "rebuilt {} events in {:.3} s ({:.0} events/s)",
        report.events,
        report.seconds,
        report.events as f64 / report.seconds.max(1e-9)
    );
}

#[test]
fn a_garbled_projection_is_rebuilt_from_the_log_and_never_serves_wrong_data() {
    let Ledger {
        dir,
        log,
        projection,
        ..
    } = varied_ledger(300);
    let expected = {
        let ledger_view = Ledger {
            dir: tempfile::tempdir().expect("temp dir"),
            log: log.clone(),
            projection: projection.clone(),
            clock: EPOCH,
            template: Event::decode(
                1,
                1,
                1,
                br#"{"schemaVersion":1,"type":"CallDeleted","eventId":"0190a6b2-7c1e-7000-8000-000000000000","idempotencyKey":null,"occurredAt":"2025-01-13T12:00:00.000Z","recordedAt":"2025-01-13T12:00:00.000Z","actor":"test","data":{}}"#,
            )
            .expect("template event")
            .stored,
        };
        ledger_view.all()
    };
    drop(projection);
    let healthy = projection_dir(dir.path());
    // sled preallocates; spread the damage over the part that holds data.
    let bytes = std::fs::read(healthy.join("db")).expect("the db file");
    let size = bytes.iter().rposition(|&byte| byte != 0).unwrap_or(0) as u64;
    let mut outcomes = std::collections::BTreeMap::new();
    let snapshot = std::fs::read_dir(&healthy)
        .expect("list")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("snap."));
    // 39 places in the database file, then the snapshot file (if any) and the config file.
    for step in 1..42u64 {
        let target = match (step, &snapshot) {
            // sled writes a snapshot only now and then.
            (40, None) => continue,
            (40, Some(snapshot)) => snapshot.clone(),
            (41, _) => "conf".to_owned(),
            _ => "db".to_owned(),
        };
        let copy = tempfile::tempdir().expect("temp dir");
        let damaged = copy.path().join("projection");
        std::fs::create_dir(&damaged).expect("a directory");
        for entry in std::fs::read_dir(&healthy).expect("list") {
            let entry = entry.expect("an entry");
            if entry.file_type().expect("a type").is_file() {
                std::fs::copy(entry.path(), damaged.join(entry.file_name())).expect("copy");
            }
        }
        let offset = match step {
            40 | 41 => {
                std::fs::metadata(damaged.join(&target))
                    .expect("a file")
                    .len()
                    / 3
            }
            _ => size * step / 40,
        };
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(damaged.join(&target))
                .expect("open the copy");
            file.seek(SeekFrom::Start(offset)).expect("seek");
            let garbage: Vec<u8> = (0..if step < 40 { 4096u32 } else { 16 })
                .map(|i| (i * 7 + step as u32 * 13) as u8)
                .collect();
            file.write_all(&garbage).expect("garble");
        }
        let reopened = Projection::open(&damaged, log.clone())
            .unwrap_or_else(|error| panic!("{target} garbled at {offset}: not reopened: {error}"));
        let report = reopened
            .verify(&copy.path().join("scratch"))
            .unwrap_or_else(|error| panic!("{target} garbled at {offset}: verify failed: {error}"));
        assert!(
            report.differences.is_empty(),
            "{target} garbled at {offset}: {:?}",
            report.differences
        );
        let mut query = query(vec![], vec![], MAX_PAGE_SIZE);
        let mut calls = Vec::new();
        loop {
            let page = reopened.list(&query).expect("list");
            let Some(last) = page.calls.last() else { break };
            query.cursor = Some(PageCursor::After(reopened.cursor_for(&query, last)));
            calls.extend(page.calls);
            if !page.more_after {
                break;
            }
        }
        assert_eq!(calls, expected, "{target} garbled at {offset}: other calls");
        let kind = if copy.path().join("projection.damaged").exists() {
            "moved aside and rebuilt"
        } else {
            "opened"
        };
        *outcomes.entry(kind).or_insert(0) += 1;
    }
    eprintln!("garbled projections ({size} bytes of data): {outcomes:?}");
    assert!(
        outcomes.contains_key("moved aside and rebuilt"),
        "a damaged snapshot or config file is moved aside: {outcomes:?}"
    );
}

/// Everything a list, the change feed and the counters show of `projection`.
fn everything(projection: &Projection) -> (Vec<u64>, ListPage, ChangesPage, (u64, u64, u64)) {
    let sorted = query(
        vec![attr(Field::Direction, any_text(&["inbound"]))],
        vec![desc(Field::CreatedAt), asc(Field::Outcome)],
        7,
    );
    let stats = projection.stats().expect("stats");
    (
        walk_both_ways(projection, sorted).0,
        projection
            .list(&query(vec![], vec![], MAX_PAGE_SIZE))
            .expect("list"),
        projection.changes(0, 10_000).expect("changes"),
        (stats.live_calls, stats.deleted_calls, stats.checkpoint),
    )
}

fn assert_verified(projection: &Projection, dir: &Path) {
    let report = projection.verify(&dir.join("scratch")).expect("verify");
    assert!(report.differences.is_empty(), "{:?}", report.differences);
}

#[test]
fn closing_writes_an_index_snapshot_that_the_next_open_reads() {
    let mut ledger = varied_ledger(300);
    let dir = projection_dir(ledger.dir.path());
    let before = everything(&ledger.projection);
    drop(ledger.hand_over());
    assert!(crate::snapshot::path(&dir).exists(), "closing wrote it");

    let checkpoint = ledger.log.head();
    let reopened = reopen(&dir, &ledger.log);
    assert_eq!(
        reopened.snapshot_read_at(),
        Some(checkpoint),
        "the indexes were read from it"
    );
    assert_eq!(everything(&reopened), before);
    assert_verified(&reopened, ledger.dir.path());

    // Events the snapshot does not hold are applied over it as over any index.
    drop(reopened);
    ledger.create(json!({"attributes": {"direction": "inbound", "outcome": "Zeta"}}));
    ledger.update(
        5,
        json!({"attributes": {"note": "changed after the snapshot"}}),
    );
    ledger.delete(7);
    let reopened = reopen(&dir, &ledger.log);
    assert_eq!(reopened.snapshot_read_at(), Some(checkpoint));
    assert_eq!(everything(&reopened), everything(&ledger.projection));
    assert_verified(&reopened, ledger.dir.path());
}

#[test]
fn closing_with_the_process_writes_the_same_snapshot_and_only_leaves_the_indexes_unfreed() {
    let mut ledger = varied_ledger(200);
    let dir = projection_dir(ledger.dir.path());
    let before = everything(&ledger.projection);
    let projection = ledger.hand_over();
    projection.close_with_process();
    drop(projection);
    assert!(crate::snapshot::path(&dir).exists(), "closing wrote it");

    let reopened = reopen(&dir, &ledger.log);
    assert_eq!(reopened.snapshot_read_at(), Some(ledger.log.head()));
    assert_eq!(everything(&reopened), before);
    assert_verified(&reopened, ledger.dir.path());
}

#[test]
fn a_damaged_or_stale_snapshot_is_built_over_and_never_serves_wrong_data() {
    let mut ledger = varied_ledger(200);
    let dir = projection_dir(ledger.dir.path());
    drop(ledger.hand_over());
    let file = crate::snapshot::path(&dir);
    let healthy = std::fs::read(&file).expect("the snapshot");
    let expected = everything(&ledger.projection);

    let mut damages: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("cut in its header".into(), healthy[..20].to_vec()),
        (
            "cut in its body".into(),
            healthy[..healthy.len() - 9].to_vec(),
        ),
    ];
    for step in 0..24 {
        let mut garbled = healthy.clone();
        let at = healthy.len() * step / 24;
        garbled[at] ^= 0x5a;
        damages.push((format!("a byte garbled at {at}"), garbled));
    }
    for (damage, bytes) in damages {
        std::fs::write(&file, &bytes).expect("damage the snapshot");
        let reopened = reopen(&dir, &ledger.log);
        // A byte garbled in the header's checkpoint can make it older than the view, and so
        // used, but then its checksum fails: nothing damaged is ever read.
        assert_eq!(reopened.snapshot_read_at(), None, "snapshot {damage}: read");
        assert_eq!(everything(&reopened), expected, "snapshot {damage}");
        drop(reopened);
        // The close after such an open writes a good one again.
        assert_eq!(std::fs::read(&file).unwrap(), healthy, "snapshot {damage}");
    }

    // A snapshot of the same view at an earlier checkpoint (as a crash after a clean stop
    // leaves it) is read and brought up to the view: creates, updates and deletes since.
    let old_checkpoint = ledger.log.head();
    let made = ledger.create(json!({"attributes": {"direction": "inbound", "outcome": "Zeta"}}));
    ledger.update(
        made,
        json!({"attributes": {"outcome": "Alpha", "tags": ["late"]}}),
    );
    ledger.update(
        4,
        json!({"attributes": {"direction": "outbound", "note": "moved on"}}),
    );
    ledger.delete(6);
    let reopened = reopen(&dir, &ledger.log);
    drop(reopened);
    std::fs::write(&file, &healthy).unwrap();
    let reopened = reopen(&dir, &ledger.log);
    assert_eq!(reopened.snapshot_read_at(), Some(old_checkpoint));
    assert_eq!(everything(&reopened), everything(&ledger.projection));
    assert_verified(&reopened, ledger.dir.path());

    // A snapshot ahead of its view (the view's last writes lost, the snapshot kept) is not.
    drop(reopened);
    let behind = ledger.dir.path().join("behind");
    copy_files(&dir, &behind);
    ledger.create(json!({"attributes": {"direction": "inbound"}}));
    drop(reopen(&dir, &ledger.log));
    std::fs::copy(&file, crate::snapshot::path(&behind)).unwrap();
    let reopened = reopen(&behind, &ledger.log);
    assert_eq!(
        reopened.snapshot_read_at(),
        None,
        "a snapshot ahead was read"
    );
    assert_eq!(everything(&reopened), everything(&ledger.projection));
    drop(reopened);

    // After a rebuild, the view is another generation.
    let reopened = reopen(&dir, &ledger.log);
    reopened.rebuild(&mut |_, _| {}).unwrap();
    drop(reopened);
    let reopened = reopen(&dir, &ledger.log);
    assert_eq!(reopened.snapshot_read_at(), Some(ledger.log.head()));
    assert_eq!(everything(&reopened), everything(&ledger.projection));
    assert_verified(&reopened, ledger.dir.path());
}

/// Copies the files of directory `from` into a new directory `to`.
fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("a directory");
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("an entry");
        if entry.file_type().expect("a type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

#[test]
fn a_snapshot_written_while_serving_is_where_an_open_after_a_crash_starts() {
    let mut ledger = varied_ledger(200);
    let dir = projection_dir(ledger.dir.path());
    assert!(ledger.projection.write_snapshot().unwrap(), "written");
    assert!(
        !ledger.projection.write_snapshot().unwrap(),
        "not written again while nothing changed"
    );
    let at = ledger.log.head();
    let made = ledger.create(json!({"attributes": {"direction": "inbound", "tags": ["new"]}}));
    ledger.update(
        3,
        json!({"attributes": {"outcome": "Moved", "note": "after"}}),
    );
    ledger.update(made, json!({"attributes": {"direction": "outbound"}}));
    ledger.delete(8);
    let expected = everything(&ledger.projection);
    ledger.hand_over().close_without_snapshot();

    let reopened = reopen(&dir, &ledger.log);
    assert_eq!(reopened.snapshot_read_at(), Some(at));
    assert_eq!(everything(&reopened), expected);
    assert_verified(&reopened, ledger.dir.path());
}

#[test]
fn the_snapshot_decoder_never_panics_on_a_damaged_body() {
    let ledger = varied_ledger(120);
    let body = crate::snapshot::encode_body(&ledger.projection.inner_view_for_tests().indexes);
    let whole = crate::snapshot::decode_body(&body).expect("a whole body decodes");
    assert_eq!(
        whole.live(),
        ledger.projection.stats().unwrap().live_calls as usize
    );
    let mut numbers = crate::sorted_set::tests::numbers(0x2545_f491_4f6c_dd1d);
    let mut next = move |n: usize| (numbers.next().unwrap_or_default() % n as u64) as usize;
    let (mut decoded, mut refused) = (0, 0);
    for round in 0..3000 {
        let mut damaged = body.clone();
        match round % 3 {
            // A few bytes changed anywhere.
            0 | 1 => {
                for _ in 0..=next(4) {
                    let at = next(damaged.len());
                    damaged[at] = next(256) as u8;
                }
            }
            // Cut short.
            _ => damaged.truncate(next(body.len())),
        }
        // Whatever it holds, decoding answers: the indexes or why not.
        match crate::snapshot::decode_body(&damaged) {
            Ok(_) => decoded += 1,
            Err(_) => refused += 1,
        }
    }
    eprintln!("damaged snapshot bodies: {decoded} decoded, {refused} refused, none panicked");
    assert!(refused > 0 && decoded + refused == 3000);
}

/// Opens the projection in `dir` again, once the last process-wide handle of its previous
/// opening has let go of the database's file lock (see [`when_unlocked`]).
fn reopen(dir: &Path, log: &EventLog) -> Projection {
    when_unlocked(|| Projection::open(dir, log.clone()))
}

/// Runs `open` until the database it opens is no longer locked by an earlier opening in this
/// process (sled releases its lock a moment after the projection is dropped, later still after
/// a rebuild): a refusal for the lock is retried for up to ten seconds, anything else fails the
/// test.
fn when_unlocked<T>(mut open: impl FnMut() -> Result<T, ProjectionError>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open() {
            Ok(opened) => return opened,
            Err(error)
                if error.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(error) => panic!("opening: {error}"),
        }
    }
}

#[test]
fn a_rebuild_keeps_a_projection_directory_that_is_a_link_where_it_points() {
    let mut ledger = varied_ledger(30);
    let dir = projection_dir(ledger.dir.path());
    drop(ledger.hand_over());
    let elsewhere = ledger.dir.path().join("elsewhere");
    std::fs::rename(&dir, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
    let (rebuilt, report) = when_unlocked(|| {
        Projection::open_rebuilt(
            &dir,
            ledger.log.clone(),
            ProjectionOptions::default(),
            &mut |_, _| {},
        )
    });
    assert_eq!(report.events, ledger.log.head());
    assert!(std::fs::symlink_metadata(&dir).unwrap().is_symlink());
    assert!(
        elsewhere.join("db").exists(),
        "the new database is where the link points"
    );
    drop(std::mem::replace(&mut ledger.projection, rebuilt));
    assert_verified(&ledger.projection, ledger.dir.path());
}

#[test]
fn a_rebuild_leaves_a_projection_another_opening_holds_as_it_is() {
    let ledger = varied_ledger(30);
    let dir = projection_dir(ledger.dir.path());
    let before = everything(&ledger.projection);
    let refused = Projection::open_rebuilt(
        &dir,
        ledger.log.clone(),
        ProjectionOptions::default(),
        &mut |_, _| {},
    )
    .map(|_| ())
    .expect_err("the open projection holds its database");
    assert!(
        refused
            .to_string()
            .contains("another process holds the projection"),
        "{refused}"
    );
    assert_eq!(everything(&ledger.projection), before);
    assert_verified(&ledger.projection, ledger.dir.path());
}

#[test]
fn a_rebuild_packs_the_views_and_later_changes_hide_the_packed_ones() {
    use crate::store::{PackEntries, CALL, PACK, PACK_SHIFT};
    let mut ledger = varied_ledger(150);
    let dir = projection_dir(ledger.dir.path());
    ledger.projection.rebuild(&mut |_, _| {}).unwrap();
    let before = ledger.all();
    let tree = ledger.projection.tree();
    let packs: Vec<_> = tree.scan_prefix([PACK]).map(Result::unwrap).collect();
    let packed: Vec<u64> = packs
        .iter()
        .flat_map(|(key, pack)| PackEntries::new(key, pack).unwrap().map(|e| e.unwrap().0))
        .collect();
    assert_eq!(
        packed,
        ids(&before),
        "one chunk created every call: every view is in a pack"
    );
    let ranges: HashSet<u64> = packed.iter().map(|id| id >> PACK_SHIFT).collect();
    assert_eq!(packs.len(), ranges.len(), "one pack per range of ids");
    assert!(packs.len() <= before.len().div_ceil(1 << PACK_SHIFT) + 1);
    assert_eq!(tree.scan_prefix([CALL]).count(), 0, "and none is a row");

    // Changes after the rebuild are rows that stand for the packed views.
    let (updated, deleted) = (before[3].id, before[40].id);
    ledger.update(
        updated,
        json!({"attributes": {"note": "after the rebuild"}}),
    );
    ledger.delete(deleted);
    let created = ledger.create(json!({"attributes": {"direction": "inbound"}}));
    assert_eq!(
        ledger.call(updated).attribute(Field::Note),
        Some(&AttrValue::Text("after the rebuild".into()))
    );
    assert_eq!(ledger.projection.get(deleted).unwrap(), None);
    assert_eq!(ledger.call(created).id, created);
    assert_eq!(ledger.call(before[4].id), before[4], "a packed view");
    assert_eq!(ledger.projection.get(created + 1).unwrap(), None);
    assert_eq!(
        tree.get(crate::store::key(CALL, deleted))
            .unwrap()
            .as_deref(),
        Some(&[][..]),
        "an empty row hides the deleted call's packed view"
    );
    let live = everything(&ledger.projection);
    assert_verified(&ledger.projection, ledger.dir.path());
    drop(tree);

    // Indexes built from the views (as after a crash) see rows over packs the same way.
    ledger.hand_over().close_without_snapshot();
    let reopened = reopen(&dir, &ledger.log);
    assert_eq!(reopened.snapshot_read_at(), None, "built from the views");
    assert_eq!(everything(&reopened), live);

    // A second rebuild packs the calls as they stand now.
    reopened.rebuild(&mut |_, _| {}).unwrap();
    assert_eq!(everything(&reopened), live);
    assert_eq!(reopened.tree().scan_prefix([CALL]).count(), 0);
    assert_verified(&reopened, ledger.dir.path());

    // A packed view that the change feed names as its call's latest state is read from its
    // pack alone: a row written under it behind the projection's back is not even looked at.
    let untouched = &before[5];
    reopened
        .tree()
        .insert(crate::store::key(CALL, untouched.id), &b"not read"[..])
        .unwrap();
    assert_eq!(
        reopened.get(untouched.id).unwrap().as_ref(),
        Some(untouched)
    );
}

#[test]
fn packs_a_read_found_are_kept_by_the_view_and_never_stand_for_a_later_change() {
    use crate::store::{key, PACK, PACK_SHIFT};
    let mut ledger = varied_ledger(150);
    ledger.projection.rebuild(&mut |_, _| {}).unwrap();
    assert_eq!(ledger.projection.held_packs().unwrap().packs, 0);
    let before = ledger.all();
    let ranges: HashSet<u64> = before.iter().map(|call| call.id >> PACK_SHIFT).collect();
    let held = ledger.projection.held_packs().unwrap();
    assert_eq!(held.packs, ranges.len(), "every pack the list read");
    assert!(held.bytes > 0 && held.bytes <= held.budget, "{held:?}");

    // Reads of a pack it holds do not go to the tree: a pack overwritten behind the
    // projection's back is not seen.
    let tree = ledger.projection.tree();
    let first = &before[0];
    let pack_key = key(PACK, first.id >> PACK_SHIFT);
    let pack = tree.insert(pack_key, &b"not read"[..]).unwrap();
    assert_eq!(ledger.call(first.id), *first);
    tree.insert(pack_key, pack.expect("its pack")).unwrap();
    drop(tree);

    // A change of a packed call, held or not, is read from its row.
    let (updated, deleted) = (before[3].id, before[40].id);
    ledger.update(updated, json!({"attributes": {"note": "after the read"}}));
    ledger.delete(deleted);
    assert_eq!(
        ledger.call(updated).attribute(Field::Note),
        Some(&AttrValue::Text("after the read".into()))
    );
    assert_eq!(ledger.projection.get(deleted).unwrap(), None);
    assert_eq!(ledger.call(before[4].id), before[4]);

    // A rebuild's view starts with none, and reads what it wrote; warming reads them all.
    ledger.projection.rebuild(&mut |_, _| {}).unwrap();
    assert_eq!(ledger.projection.held_packs().unwrap().packs, 0);
    let warmed = ledger
        .projection
        .warm_packs()
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let stored = ledger.projection.tree().scan_prefix([PACK]).count();
    assert_eq!((warmed.packs, stored), (ranges.len(), ranges.len()));
    assert_eq!(ledger.projection.held_packs().unwrap(), warmed);
    assert_eq!(ledger.call(first.id), *first, "its pack written again");
    assert_eq!(
        ledger.call(updated).attribute(Field::Note),
        Some(&AttrValue::Text("after the read".into()))
    );
    assert_verified(&ledger.projection, ledger.dir.path());
}

#[test]
fn a_damaged_pack_is_refused_and_never_panics() {
    use crate::store::{encode_pack, key, PackEntries, PACK};
    let views: [(u64, &[u8]); 3] = [(7, b"seven"), (9, b""), (12, b"twelve!")];
    let pack = encode_pack(views);
    let pack_key = key(PACK, 0);
    let read = |key: &[u8], bytes: &[u8]| -> Result<Vec<(u64, Vec<u8>)>, ProjectionError> {
        PackEntries::new(key, bytes)?
            .map(|entry| entry.map(|(id, range)| (id, bytes[range].to_vec())))
            .collect()
    };
    let expected: Vec<(u64, Vec<u8>)> = views.iter().map(|(id, v)| (*id, v.to_vec())).collect();
    assert_eq!(read(&pack_key, &pack).unwrap(), expected);
    assert!(read(&key(PACK, 1), &pack).is_err(), "under another range");
    let beyond = encode_pack([(7, &b"seven"[..]), (32, b"of the next range")]);
    assert!(read(&pack_key, &beyond).is_err(), "a call of another range");
    let backwards = encode_pack([(9, &b""[..]), (7, b"seven")]);
    assert!(read(&pack_key, &backwards).is_err(), "out of order");
    // Through the table: each view found, an id of the range without one absent.
    for (id, view) in views {
        let found = PackEntries::find(&pack_key, &pack, id).unwrap();
        assert_eq!(found.map(|range| &pack[range]), Some(view), "call {id}");
    }
    for absent in [0, 8, 31] {
        assert_eq!(PackEntries::find(&pack_key, &pack, absent).unwrap(), None);
    }
    for cut in 0..pack.len() {
        // The table names every view, so any cut is refused, whether read through or looked up.
        assert!(read(&pack_key, &pack[..cut]).is_err(), "cut at {cut}");
        for (id, view) in views {
            if let Ok(Some(range)) = PackEntries::find(&pack_key, &pack[..cut], id) {
                assert_eq!(&pack[range], view, "cut at {cut}, call {id}");
            }
        }
    }
    for at in 0..pack.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bytes = pack.clone();
            bytes[at] ^= flip;
            // Read or refused, never a panic; a flipped id is out of order or refused, a flipped
            // offset of the table points at no entry of its call.
            let read_through = read(&pack_key, &bytes);
            for id in 0..32 {
                let looked_up = PackEntries::find(&pack_key, &bytes, id);
                if let (Ok(entries), Ok(Some(range))) = (&read_through, looked_up) {
                    let listed = entries.iter().find(|(listed, _)| *listed == id);
                    assert_eq!(listed.map(|(_, v)| &v[..]), Some(&bytes[range]));
                }
            }
        }
    }
}

#[test]
fn a_cache_too_small_for_sled_is_raised_to_the_least_it_takes() {
    let ledger = varied_ledger(50);
    let expected = everything(&ledger.projection);
    // sled panics below 256 bytes; a projection opens with at least a MiB.
    let small = Projection::open_with(
        &ledger.dir.path().join("small"),
        ledger.log.clone(),
        crate::ProjectionOptions { cache_bytes: 0 },
    )
    .unwrap();
    assert_eq!(everything(&small), expected);
}

/// A replay in chunks of a few records, where most calls are changed again in a later chunk
/// than the one that created them (the index rows the replay added first are replaced at the
/// end) and some are deleted there, builds the same view and indexes as the live catch-up and
/// as a replay in one chunk.
#[test]
fn a_replay_in_small_chunks_builds_the_same_view_and_indexes() {
    let ledger = varied_ledger(200);
    let before = everything(&ledger.projection);
    crate::bulk::TEST_CHUNK.with(|chunk| chunk.set(Some(7)));
    assert_verified(&ledger.projection, ledger.dir.path());
    ledger.projection.rebuild(&mut |_, _| {}).unwrap();
    assert_eq!(everything(&ledger.projection), before);
    crate::bulk::TEST_CHUNK.with(|chunk| chunk.set(None));
    assert_verified(&ledger.projection, ledger.dir.path());
}

/// Deletions are stored per range of 64 positions: the change feed reads them across ranges and
/// from within one, a replay whose chunks cut ranges (the row of a range continued by the next
/// chunk while the batch writing it may not be applied) stores the same rows as the live
/// catch-up, and a garbled row is named.
#[test]
fn deletions_across_ranges_read_in_order_and_replay_alike() {
    let mut ledger = Ledger::new();
    let ids: Vec<u64> = (0..150)
        .map(|_| ledger.create(json!({"attributes": {}})))
        .collect();
    let mut deleted = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        if n % 3 == 0 {
            ledger.update(*id, json!({"attributes": {"note": "kept"}}));
        } else {
            ledger.delete(*id);
            deleted.push((*id, ledger.log.head()));
        }
    }
    let all = |after: u64| -> Vec<(u64, u64)> {
        let mut found = Vec::new();
        let mut after = after;
        loop {
            let page = ledger.projection.changes(after, 17).unwrap();
            found.extend(page.deleted.iter().map(|d| (d.id, d.position)));
            after = page.next_after;
            if !page.more {
                return found;
            }
        }
    };
    assert_eq!(all(0), deleted);
    // From inside a range, and from the last position of one.
    for after in [200, 255, 256, 257, 290] {
        let expected: Vec<(u64, u64)> = deleted
            .iter()
            .copied()
            .filter(|(_, position)| *position > after)
            .collect();
        assert_eq!(all(after), expected, "after {after}");
    }
    let before = everything(&ledger.projection);
    crate::bulk::TEST_CHUNK.with(|chunk| chunk.set(Some(5)));
    assert_verified(&ledger.projection, ledger.dir.path());
    ledger.projection.rebuild(&mut |_, _| {}).unwrap();
    crate::bulk::TEST_CHUNK.with(|chunk| chunk.set(None));
    assert_eq!(everything(&ledger.projection), before);
    assert_eq!(all(0), deleted);
    assert_verified(&ledger.projection, ledger.dir.path());

    // A row cut in the middle of a deletion.
    let range = crate::store::key(crate::store::DELETION, 256 >> crate::store::DELETION_SHIFT);
    let tree = ledger.projection.tree();
    let row = tree.get(range).unwrap().expect("a row of deletions");
    tree.insert(range, &row[..row.len() - 5]).unwrap();
    let error = ledger.projection.changes(0, 1000).unwrap_err().to_string();
    assert!(
        error.contains("deletions at positions 256 to 319") && error.contains("24 bytes each"),
        "{error}"
    );
}

/// A view written before deletions were kept per range (layout `call-projections/5`, a row per
/// deletion keyed by its position) is rebuilt at open, and its feed then holds every deletion.
#[test]
fn a_view_with_a_row_per_deletion_is_rebuilt_at_open() {
    let mut ledger = Ledger::new();
    let a = ledger.create(json!({"attributes": {}}));
    let b = ledger.create(json!({"attributes": {}}));
    ledger.delete(a);
    let deleted_at = ledger.log.head();
    let tree = ledger.projection.tree();
    // What layout 5 held: no range rows, a row per deletion.
    for entry in tree.scan_prefix([crate::store::DELETION]) {
        let (key, _) = entry.unwrap();
        tree.remove(key).unwrap();
    }
    let mut old_row = a.to_be_bytes().to_vec();
    old_row.extend_from_slice(&EPOCH.to_be_bytes());
    tree.insert(
        crate::store::key(crate::store::DELETION, deleted_at),
        old_row,
    )
    .unwrap();
    tree.insert(crate::store::LAYOUT, &b"call-projections/5"[..])
        .unwrap();
    tree.flush().unwrap();
    drop(tree);
    let Ledger {
        dir,
        log,
        projection,
        ..
    } = ledger;
    drop(projection);
    let reopened = Projection::open(&projection_dir(dir.path()), log).expect("reopened");
    let page = reopened.changes(0, 100).unwrap();
    assert_eq!(ids(&page.calls), vec![b]);
    let deleted: Vec<(u64, u64)> = page.deleted.iter().map(|d| (d.id, d.position)).collect();
    assert_eq!(deleted, vec![(a, deleted_at)]);
}
