//! `decide` and `evolve` in the given/when/then style of cqrs-es: given the events of a call's
//! stream, when a command arrives, then expect these events or this error; and the state those
//! events fold into.

use super::{attributes, changes, ts};
use crate::command::OCCURRED_AT_SKEW_MILLIS;
use crate::{
    decide, decide_taking, evolve, evolve_owned, Action, AttrValue, Call, CallId, CallState,
    Changes, Command, DecideError, Event, EventBody, Field, RelValue, Relation, ResourceRef,
    StoredEvent, Timestamp, Violation, ViolationKind,
};
use serde_json::json;
use uuid::Uuid;

const ID: CallId = 7;

/// An event of the stream being given: what happened, when it says it did, when it was recorded.
struct Fact {
    body: EventBody,
    occurred_at: Timestamp,
    recorded_at: Timestamp,
}

/// Recorded at `at`, occurring at the same time.
fn fact(body: EventBody, at: &str) -> Fact {
    Fact {
        body,
        occurred_at: ts(at),
        recorded_at: ts(at),
    }
}

impl Fact {
    /// Says it occurred at `at` (earlier than it was recorded, as a late report does).
    fn occurred(mut self, at: &str) -> Fact {
        self.occurred_at = ts(at);
        self
    }
}

fn created(attrs: serde_json::Value, at: &str) -> Fact {
    fact(EventBody::CallCreated(attributes(attrs)), at)
}

fn updated(attrs: serde_json::Value, at: &str) -> Fact {
    fact(EventBody::CallUpdated(attributes(attrs)), at)
}

fn state_changed(previous: Option<&str>, attrs: serde_json::Value, at: &str) -> Fact {
    fact(
        EventBody::CallStateChanged {
            previous_state: previous.map(str::to_owned),
            changes: attributes(attrs),
        },
        at,
    )
}

fn deleted(at: &str) -> Fact {
    fact(EventBody::CallDeleted, at)
}

/// The events of call `ID`, folded with `evolve` (and `evolve_owned`) as the log would deliver them: versions from 1,
/// positions from 1 with other calls' events in between.
struct Given {
    state: CallState,
    version: u64,
}

fn given(facts: Vec<Fact>) -> Given {
    let mut given = Given {
        state: CallState::Absent,
        version: 0,
    };
    for fact in facts {
        given.record(fact);
    }
    given
}

impl Given {
    fn record(&mut self, fact: Fact) {
        self.version += 1;
        let event = Event {
            position: self.version * 10,
            call_id: ID,
            version: self.version,
            stored: StoredEvent {
                event_id: Uuid::from_u128(u128::from(self.version)),
                idempotency_key: None,
                occurred_at: fact.occurred_at,
                recorded_at: fact.recorded_at,
                actor: "tester".into(),
                body: fact.body,
            },
        };
        // Every fact goes through both ways of folding, which must agree.
        let borrowed = evolve(self.state.clone(), &event);
        self.state = evolve_owned(std::mem::take(&mut self.state), event);
        assert_eq!(self.state, borrowed, "evolve_owned and evolve disagree");
    }

    fn when(self, command: Command) -> Then {
        let result = decide(&self.state, &command);
        // Every command goes through both ways of deciding, which must agree; a command whose
        // changes were taken, once restored from its events, is decided alike again.
        let mut taken = command.clone();
        let taking = decide_taking(&self.state, &mut taken);
        assert_eq!(taking, result, "decide_taking and decide disagree");
        if let Ok(decided) = taking {
            taken.restore(decided);
            assert_eq!(
                decide(&self.state, &taken),
                result,
                "a restored command decides otherwise"
            );
        }
        Then {
            given: self,
            command,
            result,
        }
    }

    fn live(&self) -> &Call {
        self.state.live().expect("a live call")
    }
}

struct Then {
    given: Given,
    command: Command,
    result: Result<Vec<EventBody>, DecideError>,
}

impl Then {
    #[track_caller]
    fn then_expect_events(self, expected: Vec<EventBody>) -> Given {
        assert_eq!(self.result, Ok(expected));
        // Fold what was decided, as the command service does after the append.
        let mut given = self.given;
        for body in self.result.unwrap_or_default() {
            given.record(Fact {
                body,
                occurred_at: self.command.occurred_at(),
                recorded_at: self.command.recorded_at,
            });
        }
        given
    }

    #[track_caller]
    fn then_expect_error(self, expected: DecideError) {
        assert_eq!(self.result, Err(expected));
    }
}

/// A command recorded at `at`, by a writer who does not say when it happened.
fn command(action: Action, at: &str) -> Command {
    Command {
        action,
        actor: "tester".into(),
        recorded_at: ts(at),
        occurred_at: None,
    }
}

fn create(attrs: serde_json::Value, at: &str) -> Command {
    command(Action::Create(attributes(attrs)), at)
}

fn update(attrs: serde_json::Value, at: &str) -> Command {
    command(
        Action::Update {
            id: ID,
            changes: attributes(attrs),
        },
        at,
    )
}

fn delete(at: &str) -> Command {
    command(Action::Delete { id: ID }, at)
}

fn occurred(mut command: Command, at: &str) -> Command {
    command.occurred_at = Some(ts(at));
    command
}

fn text(value: &str) -> Option<AttrValue> {
    Some(AttrValue::Text(value.into()))
}

const T0: &str = "2025-01-13T12:00:00.000Z";
const T1: &str = "2025-01-13T12:01:00.000Z";
const T2: &str = "2025-01-13T12:02:00.000Z";
const T3: &str = "2025-01-13T12:03:00.000Z";

#[test]
fn create_records_the_non_null_members() {
    let command = command(
        Action::Create(changes(
            json!({"direction": "inbound", "note": null, "tags": ["Interested"]}),
            json!({"prospect": {"data": {"type": "prospect", "id": 5}}, "task": {"data": null},
                   "batches": {"data": []}}),
            json!({"dataConnections": []}),
        )),
        T0,
    );
    given(vec![])
        .when(command)
        .then_expect_events(vec![EventBody::CallCreated(changes(
            json!({"direction": "inbound", "tags": ["Interested"]}),
            json!({"prospect": {"data": {"type": "prospect", "id": 5}}}),
            json!({}),
        ))]);
}

#[test]
fn create_with_nothing_is_still_a_call() {
    given(vec![])
        .when(create(json!({}), T0))
        .then_expect_events(vec![EventBody::CallCreated(Changes::default())]);
}

#[test]
fn update_records_only_what_differs() {
    given(vec![created(
        json!({"direction": "inbound", "note": "hello", "tags": ["a"]}),
        T0,
    )])
    .when(update(
        json!({"direction": "inbound", "note": "bye", "tags": ["a"], "outcome": null, "from": "+1"}),
        T1,
    ))
    .then_expect_events(vec![EventBody::CallUpdated(attributes(
        json!({"note": "bye", "from": "+1"}),
    ))]);
}

#[test]
fn an_update_that_changes_nothing_appends_nothing() {
    let call = json!({"direction": "inbound", "note": "same", "state": "ringing"});
    let noops = [
        update(json!({}), T1),
        update(call.clone(), T1),
        update(json!({"outcome": null, "note": "same"}), T1),
        command(
            Action::Update {
                id: ID,
                changes: changes(
                    json!({}),
                    json!({"task": {"data": null}, "batches": {"data": []}}),
                    json!({"dataConnections": null}),
                ),
            },
            T1,
        ),
        // Even a late state report changes nothing when the state is already the one reported.
        occurred(
            update(json!({"state": "ringing"}), T1),
            "2020-01-01T00:00:00Z",
        ),
    ];
    for noop in noops {
        given(vec![created(call.clone(), T0)])
            .when(noop)
            .then_expect_events(vec![]);
    }
}

#[test]
fn update_sets_and_clears_relationships_and_data_connections() {
    let batch = |id| json!({"type": "batch", "id": id});
    given(vec![fact(
        EventBody::CallCreated(changes(
            json!({}),
            json!({"prospect": {"data": {"type": "prospect", "id": 5}},
                   "batches": {"data": [batch(1)]}}),
            json!({"dataConnections": [{"connection": "crm", "id": "1"}]}),
        )),
        T0,
    )])
    .when(command(
        Action::Update {
            id: ID,
            changes: changes(
                json!({}),
                json!({"prospect": {"data": null}, "batches": {"data": [batch(1), batch(2)]},
                       "user": {"data": {"type": "user", "id": 3}}}),
                json!({"dataConnections": []}),
            ),
        },
        T1,
    ))
    .then_expect_events(vec![EventBody::CallUpdated(changes(
        json!({}),
        json!({"prospect": {"data": null}, "batches": {"data": [batch(1), batch(2)]},
               "user": {"data": {"type": "user", "id": 3}}}),
        json!({"dataConnections": []}),
    ))]);
}

#[test]
fn a_change_of_state_is_a_state_change_with_the_previous_state() {
    given(vec![created(json!({"state": "ringing", "note": "n"}), T0)])
        .when(update(
            json!({"state": "answered", "note": "m", "direction": "inbound"}),
            T1,
        ))
        .then_expect_events(vec![EventBody::CallStateChanged {
            previous_state: Some("ringing".into()),
            changes: attributes(json!({"state": "answered", "note": "m", "direction": "inbound"})),
        }]);
    // From no state, and back to none: both are changes of `state`.
    given(vec![created(json!({}), T0)])
        .when(update(json!({"state": "ringing"}), T1))
        .then_expect_events(vec![EventBody::CallStateChanged {
            previous_state: None,
            changes: attributes(json!({"state": "ringing"})),
        }])
        .when(update(json!({"state": null}), T2))
        .then_expect_events(vec![EventBody::CallStateChanged {
            previous_state: Some("ringing".into()),
            changes: attributes(json!({"state": null})),
        }]);
}

#[test]
fn a_state_change_older_than_state_changed_at_is_refused() {
    // stateChangedAt is T2: the call was created in that state at T2.
    let history = || vec![created(json!({"state": "answered"}), T2)];
    given(history())
        .when(occurred(update(json!({"state": "ringing"}), T3), T1))
        .then_expect_error(DecideError::StaleStateChange {
            current: ts(T2),
            occurred_at: ts(T1),
        });
    // The same instant is not older, and a later one is fine.
    for at in [T2, T3] {
        given(history())
            .when(occurred(update(json!({"state": "completed"}), T3), at))
            .then_expect_events(vec![EventBody::CallStateChanged {
                previous_state: Some("answered".into()),
                changes: attributes(json!({"state": "completed"})),
            }]);
    }
    // A late report of something other than the state is not a state change.
    given(history())
        .when(occurred(update(json!({"note": "late"}), T3), T0))
        .then_expect_events(vec![EventBody::CallUpdated(attributes(
            json!({"note": "late"}),
        ))]);
}

#[test]
fn a_state_change_is_judged_against_the_latest_state_change_not_the_latest_event() {
    // The state changed at T1 (reported late, recorded at T2); a note changed at T3.
    given(vec![
        created(json!({"state": "ringing"}), T0),
        state_changed(Some("ringing"), json!({"state": "answered"}), T2).occurred(T1),
        updated(json!({"note": "x"}), T3),
    ])
    .when(occurred(update(json!({"state": "completed"}), T3), T2))
    .then_expect_events(vec![EventBody::CallStateChanged {
        previous_state: Some("answered".into()),
        changes: attributes(json!({"state": "completed"})),
    }]);
}

#[test]
fn occurred_at_later_than_recorded_at_plus_skew_is_refused() {
    let refused = |command: Command| {
        DecideError::Invalid(vec![Violation {
            pointer: "/data/meta/occurredAt".into(),
            kind: ViolationKind::Invalid,
            detail: format!(
                "expected a time no later than now ({}), give or take 60 s of clock skew",
                command.recorded_at
            ),
        }])
    };
    let limit = Timestamp::from_millis(ts(T1).millis() + OCCURRED_AT_SKEW_MILLIS);
    let too_late = Timestamp::from_millis(limit.millis() + 1).to_string();
    for command in [
        occurred(create(json!({}), T1), &too_late),
        occurred(update(json!({"note": "x"}), T1), &too_late),
        occurred(delete(T1), "9999-12-31T23:59:59.999Z"),
    ] {
        let expected = refused(command.clone());
        given(vec![created(json!({}), T0)])
            .when(command)
            .then_expect_error(expected);
    }
    given(vec![created(json!({}), T0)])
        .when(occurred(
            update(json!({"note": "x"}), T1),
            &limit.to_string(),
        ))
        .then_expect_events(vec![EventBody::CallUpdated(attributes(
            json!({"note": "x"}),
        ))]);
}

#[test]
fn the_skew_check_does_not_overflow_at_the_end_of_time() {
    let mut command = create(json!({}), T0);
    command.recorded_at = Timestamp::from_millis(i64::MAX);
    command.occurred_at = Some(Timestamp::from_millis(i64::MAX));
    given(vec![])
        .when(command)
        .then_expect_events(vec![EventBody::CallCreated(Changes::default())]);
}

#[test]
fn update_or_delete_of_an_absent_call_is_not_found() {
    given(vec![])
        .when(update(json!({"note": "x"}), T1))
        .then_expect_error(DecideError::NotFound(ID));
    given(vec![])
        .when(update(json!({}), T1))
        .then_expect_error(DecideError::NotFound(ID));
    given(vec![])
        .when(delete(T1))
        .then_expect_error(DecideError::NotFound(ID));
}

#[test]
fn update_or_delete_of_a_deleted_call_is_not_found() {
    let history = || vec![created(json!({"note": "x"}), T0), deleted(T1)];
    given(history())
        .when(update(json!({"note": "y"}), T2))
        .then_expect_error(DecideError::NotFound(ID));
    given(history())
        .when(update(json!({"note": "x"}), T2))
        .then_expect_error(DecideError::NotFound(ID));
    given(history())
        .when(delete(T2))
        .then_expect_error(DecideError::NotFound(ID));
}

#[test]
fn delete_of_a_live_call_is_call_deleted() {
    given(vec![created(json!({"note": "x"}), T0)])
        .when(delete(T1))
        .then_expect_events(vec![EventBody::CallDeleted]);
}

#[test]
fn server_set_attributes_built_into_changes_by_hand_are_refused() {
    let mut changes = attributes(json!({"note": "x"}));
    changes
        .attributes
        .insert(Field::CreatedAt, Some(AttrValue::Time(ts(T0))));
    changes.attributes.insert(Field::UpdatedAt, None);
    let expected = DecideError::Invalid(
        ["createdAt", "updatedAt"]
            .iter()
            .map(|name| Violation {
                pointer: format!("/data/attributes/{name}"),
                kind: ViolationKind::Invalid,
                detail: format!("'{name}' is set by the server and cannot be written"),
            })
            .collect(),
    );
    given(vec![])
        .when(command(Action::Create(changes.clone()), T1))
        .then_expect_error(expected.clone());
    given(vec![created(json!({}), T0)])
        .when(command(Action::Update { id: ID, changes }, T1))
        .then_expect_error(expected);
}

#[test]
fn evolve_sets_created_and_updated_at_to_the_recorded_time() {
    let given = given(vec![
        created(json!({"note": "x"}), T0).occurred("2025-01-01T00:00:00Z")
    ]);
    let call = given.live();
    assert_eq!((call.id, call.version, call.position), (ID, 1, 10));
    assert_eq!(call.time(Field::CreatedAt), Some(ts(T0)));
    assert_eq!(call.time(Field::UpdatedAt), Some(ts(T0)));
    assert_eq!(
        call.time(Field::StateChangedAt),
        None,
        "no state, no stateChangedAt"
    );
    assert_eq!(call.attribute(Field::Note), text("x").as_ref());

    let given = given
        .when(update(json!({"note": "y"}), T1))
        .then_expect_events(vec![EventBody::CallUpdated(attributes(
            json!({"note": "y"}),
        ))]);
    let call = given.live();
    assert_eq!((call.version, call.position), (2, 20));
    assert_eq!(call.time(Field::CreatedAt), Some(ts(T0)));
    assert_eq!(call.time(Field::UpdatedAt), Some(ts(T1)));
}

#[test]
fn evolve_sets_state_changed_at_on_create_when_a_state_is_given() {
    let given = given(vec![created(json!({"state": "ringing"}), T1).occurred(T0)]);
    let call = given.live();
    assert_eq!(call.time(Field::StateChangedAt), Some(ts(T0)));
    assert_eq!(call.time(Field::CreatedAt), Some(ts(T1)));
}

#[test]
fn evolve_sets_state_changed_at_to_when_the_latest_state_change_occurred() {
    let given = given(vec![
        created(json!({"state": "ringing"}), T0),
        state_changed(Some("ringing"), json!({"state": "answered"}), T2).occurred(T1),
        updated(json!({"note": "after"}), T3),
    ]);
    let call = given.live();
    assert_eq!(call.text(Field::State), Some("answered"));
    assert_eq!(call.time(Field::StateChangedAt), Some(ts(T1)));
    assert_eq!(call.time(Field::UpdatedAt), Some(ts(T3)));
    assert_eq!((call.version, call.position), (3, 30));
}

#[test]
fn evolve_applies_clears_and_replaces() {
    let given = given(vec![
        fact(
            EventBody::CallCreated(changes(
                json!({"note": "x", "tags": ["a"]}),
                json!({"prospect": {"data": {"type": "prospect", "id": 5}}}),
                json!({"dataConnections": [{"connection": "crm"}]}),
            )),
            T0,
        ),
        fact(
            EventBody::CallUpdated(changes(
                json!({"note": null, "tags": ["b", "c"]}),
                json!({"prospect": {"data": null}, "user": {"data": {"type": "user", "id": 2}}}),
                json!({"dataConnections": []}),
            )),
            T1,
        ),
    ]);
    let call = given.live();
    assert_eq!(call.attribute(Field::Note), None);
    assert_eq!(
        call.attribute(Field::Tags),
        Some(&AttrValue::Tags(vec!["b".into(), "c".into()]))
    );
    assert_eq!(call.related_id(Relation::Prospect), None);
    assert_eq!(
        call.relationships.get(&Relation::User),
        Some(&RelValue::One(ResourceRef {
            kind: "user".into(),
            id: 2
        }))
    );
    assert!(call.data_connections.is_empty());
}

#[test]
fn evolve_of_call_deleted_leaves_a_tombstone_at_its_version() {
    let given = given(vec![created(json!({}), T0), deleted(T1)]);
    assert_eq!(given.state, CallState::Deleted { id: ID, version: 2 });
    assert_eq!(given.state.version(), 2);
    assert!(given.state.live().is_none());
}
