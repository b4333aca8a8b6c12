//! Random sequences of create, update and delete commands, checked against a small model of
//! what the ledger must answer: If-Match conflicts, idempotent retries and reused keys, no-op
//! updates, updates of deleted or absent calls, stale and future state changes. After each
//! sequence the log has no gaps, every stream's versions are consecutive, the live projection
//! (fed one command at a time) equals one rebuilt from the log, and `verify` agrees.

use std::collections::{BTreeMap, HashMap};

use call_commands::{CommandError, CommandOutcome, CommandRequest, Conflict};
use call_model::{
    parse_write, Action, AttrValue, Call, CallId, Field, FieldMap, RelValue, Relation, RelationMap,
    Rights, Timestamp, WriteMode,
};
use call_projections::Projection;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::{
    all_calls_query, assert_verified, check_log, delete, list_all, request, Clock, Ledger,
};

/// Ids the updates and deletes aim at: some exist, some are deleted, some were never created.
const ID_POOL: u64 = 5;
/// Idempotency keys are drawn from this few, so that they collide often.
const KEYS: u8 = 10;

/// The attributes a command may write, each with the values it may take (`null` clears).
fn choices(attribute: usize) -> (&'static str, Vec<Value>) {
    match attribute {
        0 => (
            "direction",
            vec![json!("inbound"), json!("outbound"), Value::Null],
        ),
        1 => (
            "outcome",
            vec![json!("Answered"), json!("Not Answered"), Value::Null],
        ),
        2 => (
            "state",
            vec![
                json!("ringing"),
                json!("answered"),
                json!("completed"),
                Value::Null,
            ],
        ),
        3 => ("note", vec![json!("first"), json!("second"), Value::Null]),
        4 => (
            "tags",
            vec![
                json!([]),
                json!(["Interested"]),
                json!(["a", "b"]),
                Value::Null,
            ],
        ),
        _ => ("prospect", vec![json!(1), json!(2), Value::Null]),
    }
}
const ATTRIBUTES: usize = 6;

/// When the writer says the change happened.
#[derive(Clone, Copy, Debug)]
enum Occurred {
    /// It does not say: the recording time.
    Unsaid,
    /// This many milliseconds before the recording time (late producers).
    Before(i64),
    /// Two minutes after the recording time: beyond the allowed clock skew.
    Future,
}

/// The `If-Match` a command carries.
#[derive(Clone, Copy, Debug)]
enum IfMatch {
    No,
    /// The version the model says the call is at.
    Current,
    /// Any small version, usually wrong.
    Exactly(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        writes: Vec<(usize, usize)>,
        occurred: Occurred,
        key: Option<u8>,
    },
    Update {
        id: CallId,
        writes: Vec<(usize, usize)>,
        occurred: Occurred,
        if_match: IfMatch,
        key: Option<u8>,
    },
    Delete {
        id: CallId,
        if_match: IfMatch,
        key: Option<u8>,
    },
    /// Send again, unchanged, a recent request with an idempotency key (0: the last one).
    Retry(usize),
}

fn writes() -> impl Strategy<Value = Vec<(usize, usize)>> {
    // `state` (attribute 2) is written most often: its changes have the most rules.
    let attribute = prop_oneof![2 => Just(2usize), 3 => 0..ATTRIBUTES];
    prop::collection::vec((attribute, 0..4usize), 0..4)
}

fn occurred() -> impl Strategy<Value = Occurred> {
    prop_oneof![
        6 => Just(Occurred::Unsaid),
        5 => (0..20_000i64).prop_map(Occurred::Before),
        1 => Just(Occurred::Future),
    ]
}

fn if_match() -> impl Strategy<Value = IfMatch> {
    prop_oneof![
        6 => Just(IfMatch::No),
        3 => Just(IfMatch::Current),
        2 => (0..5u64).prop_map(IfMatch::Exactly),
    ]
}

fn key() -> impl Strategy<Value = Option<u8>> {
    prop::option::weighted(0.4, 0..KEYS)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (writes(), occurred(), key())
            .prop_map(|(writes, occurred, key)| Op::Create { writes, occurred, key }),
        7 => (1..=ID_POOL, writes(), occurred(), if_match(), key()).prop_map(
            |(id, writes, occurred, if_match, key)| Op::Update { id, writes, occurred, if_match, key }
        ),
        1 => (1..=ID_POOL, if_match(), key())
            .prop_map(|(id, if_match, key)| Op::Delete { id, if_match, key }),
        3 => (0..4usize).prop_map(Op::Retry),
    ]
}

/// The JSON attributes (and the one relationship) an op writes, later writes winning.
fn document(writes: &[(usize, usize)]) -> (Map<String, Value>, Option<Value>) {
    let mut attributes = Map::new();
    let mut prospect = None;
    for &(attribute, value) in writes {
        let (name, values) = choices(attribute);
        let value = values[value % values.len()].clone();
        if name == "prospect" {
            prospect = Some(match value {
                Value::Null => json!({"data": null}),
                id => json!({"data": {"type": "prospect", "id": id}}),
            });
        } else {
            attributes.insert(name.to_owned(), value);
        }
    }
    (attributes, prospect)
}

/// Builds the request of an op (not a retry) with the model's view for `IfMatch::Current`.
fn build(op: &Op, model: &Model, recorded_at: Timestamp) -> CommandRequest {
    let with_meta = |writes: &[(usize, usize)], occurred: Occurred| {
        let (attributes, prospect) = document(writes);
        let mut data = json!({"type": "call", "attributes": attributes});
        if let Some(prospect) = prospect {
            data["relationships"] = json!({"prospect": prospect});
        }
        let occurred_at = match occurred {
            Occurred::Unsaid => None,
            Occurred::Before(millis) => Some(recorded_at.millis() - millis),
            Occurred::Future => Some(recorded_at.millis() + 120_000),
        };
        if let Some(millis) = occurred_at {
            data["meta"] = json!({"occurredAt": Timestamp::from_millis(millis).to_string()});
        }
        json!({"data": data})
    };
    let if_match_version = |if_match: IfMatch, id: CallId| match if_match {
        IfMatch::No => None,
        IfMatch::Current => Some(model.calls.get(&id).map_or(0, |call| call.version)),
        IfMatch::Exactly(version) => Some(version),
    };
    let key_name = |key: Option<u8>| key.map(|key| format!("key-{key}"));
    match op {
        Op::Create {
            writes,
            occurred,
            key,
        } => {
            let mut request = from_document(None, with_meta(writes, *occurred), recorded_at);
            request.idempotency_key = key_name(*key);
            request
        }
        Op::Update {
            id,
            writes,
            occurred,
            if_match,
            key,
        } => {
            let mut request = from_document(Some(*id), with_meta(writes, *occurred), recorded_at);
            request.expected_version = if_match_version(*if_match, *id);
            request.idempotency_key = key_name(*key);
            request
        }
        Op::Delete { id, if_match, key } => {
            let mut request = delete(*id, recorded_at);
            request.expected_version = if_match_version(*if_match, *id);
            request.idempotency_key = key_name(*key);
            request
        }
        Op::Retry(_) => unreachable!("a retry reuses an earlier request"),
    }
}

/// Validates a whole write document (attributes, relationships and meta) with telephony rights.
fn from_document(id: Option<CallId>, document: Value, recorded_at: Timestamp) -> CommandRequest {
    let mode = match id {
        Some(id) => WriteMode::Update(id),
        None => WriteMode::Create,
    };
    let input = parse_write(&document, mode, Rights { voice: true })
        .unwrap_or_else(|violations| panic!("invalid generated write {document}: {violations:?}"));
    let action = match id {
        Some(id) => Action::Update {
            id,
            changes: input.changes,
        },
        None => Action::Create(input.changes),
    };
    request(action, recorded_at, input.occurred_at)
}

/// What the model knows of one call id.
#[derive(Clone, Debug, Default)]
struct ModelCall {
    version: u64,
    live: bool,
    attributes: BTreeMap<Field, AttrValue>,
    relationships: BTreeMap<Relation, RelValue>,
    created_at: Option<Timestamp>,
    updated_at: Option<Timestamp>,
    state_changed_at: Option<Timestamp>,
}

/// What the ledger must answer, by the rules.
#[derive(Debug)]
enum Expected {
    /// One event appended to this call.
    Appended(CallId),
    /// Nothing changes; the call stays as it is.
    NoOp(CallId),
    /// The original outcome of this key.
    Replay(Box<CommandOutcome>),
    NotFound,
    VersionMismatch,
    Stale,
    KeyReused,
    Invalid,
}

#[derive(Default)]
struct Model {
    calls: BTreeMap<CallId, ModelCall>,
    next_id: CallId,
    /// Keys of appended requests, with the request (minus its recording time) and its outcome.
    keys: HashMap<String, (CommandRequest, CommandOutcome)>,
}

/// Whether two requests are the same request for the idempotency rule (a retry arrives later,
/// so the recording time does not count).
fn same_request(a: &CommandRequest, b: &CommandRequest) -> bool {
    a.command.action == b.command.action
        && a.command.actor == b.command.actor
        && a.command.occurred_at == b.command.occurred_at
        && a.expected_version == b.expected_version
}

impl Model {
    fn live(&self, id: CallId) -> Option<&ModelCall> {
        self.calls.get(&id).filter(|call| call.live)
    }

    /// The answer the ledger owes to `request`, by the order of the rules: the idempotency key
    /// first, then If-Match, then the time check, then the action itself.
    fn expect(&self, request: &CommandRequest) -> Expected {
        if let Some(key) = &request.idempotency_key {
            if let Some((original, outcome)) = self.keys.get(key) {
                return if same_request(original, request) {
                    Expected::Replay(Box::new(outcome.clone()))
                } else {
                    Expected::KeyReused
                };
            }
        }
        let command = &request.command;
        let target = match &command.action {
            Action::Create(_) => None,
            Action::Update { id, .. } | Action::Delete { id } => Some(*id),
        };
        if let (Some(expected), Some(id)) = (request.expected_version, target) {
            match self.live(id) {
                None => return Expected::NotFound,
                Some(call) if call.version != expected => return Expected::VersionMismatch,
                Some(_) => {}
            }
        }
        if command
            .occurred_at
            .is_some_and(|at| at.millis() > command.recorded_at.millis() + 60_000)
        {
            return Expected::Invalid;
        }
        match &command.action {
            Action::Create(_) => Expected::Appended(self.next_id + 1),
            Action::Delete { id } => match self.live(*id) {
                Some(_) => Expected::Appended(*id),
                None => Expected::NotFound,
            },
            Action::Update { id, changes } => {
                let Some(call) = self.live(*id) else {
                    return Expected::NotFound;
                };
                let attributes = changed_attributes(call, &changes.attributes);
                let relationships = changed_relationships(call, &changes.relationships);
                if attributes.is_empty() && relationships.is_empty() {
                    return Expected::NoOp(*id);
                }
                if attributes.contains_key(&Field::State)
                    && call
                        .state_changed_at
                        .is_some_and(|current| command.occurred_at() < current)
                {
                    return Expected::Stale;
                }
                Expected::Appended(*id)
            }
        }
    }

    /// Records an appended request's effect.
    fn apply(&mut self, request: &CommandRequest, outcome: &CommandOutcome) {
        let command = &request.command;
        let occurred_at = command.occurred_at();
        match &command.action {
            Action::Create(changes) => {
                self.next_id += 1;
                let mut call = ModelCall {
                    version: 1,
                    live: true,
                    created_at: Some(command.recorded_at),
                    updated_at: Some(command.recorded_at),
                    ..ModelCall::default()
                };
                set(&mut call, &changes.attributes, &changes.relationships);
                if call.attributes.contains_key(&Field::State) {
                    call.state_changed_at = Some(occurred_at);
                }
                self.calls.insert(self.next_id, call);
            }
            Action::Update { id, changes } => {
                let call = self.calls.get_mut(id).expect("an updated call is known");
                let attributes = changed_attributes(call, &changes.attributes);
                let relationships = changed_relationships(call, &changes.relationships);
                if attributes.contains_key(&Field::State) {
                    call.state_changed_at = Some(occurred_at);
                }
                set(call, &attributes, &relationships);
                call.version += 1;
                call.updated_at = Some(command.recorded_at);
            }
            Action::Delete { id } => {
                let call = self.calls.get_mut(id).expect("a deleted call is known");
                call.version += 1;
                call.live = false;
            }
        }
        if let Some(key) = &request.idempotency_key {
            self.keys
                .insert(key.clone(), (request.clone(), outcome.clone()));
        }
    }
}

fn changed_attributes(
    call: &ModelCall,
    changes: &FieldMap<Option<AttrValue>>,
) -> BTreeMap<Field, Option<AttrValue>> {
    changes
        .iter()
        .filter(|(field, value)| call.attributes.get(field) != value.as_ref())
        .map(|(field, value)| (*field, value.clone()))
        .collect()
}

fn changed_relationships(
    call: &ModelCall,
    changes: &RelationMap<Option<RelValue>>,
) -> BTreeMap<Relation, Option<RelValue>> {
    changes
        .iter()
        .filter(|(relation, value)| call.relationships.get(relation) != value.as_ref())
        .map(|(relation, value)| (*relation, value.clone()))
        .collect()
}

fn set<'f, 'v>(
    call: &mut ModelCall,
    attributes: impl IntoIterator<Item = (&'f Field, &'v Option<AttrValue>)>,
    relationships: impl IntoIterator<Item = (&'v Relation, &'v Option<RelValue>)>,
) {
    for (field, value) in attributes {
        match value {
            Some(value) => call.attributes.insert(*field, value.clone()),
            None => call.attributes.remove(field),
        };
    }
    for (relation, value) in relationships {
        match value {
            Some(value) => call.relationships.insert(*relation, value.clone()),
            None => call.relationships.remove(relation),
        };
    }
}

/// Asserts that a call as the ledger returns it is the call the model describes.
fn assert_matches_model(call: &Call, model: &ModelCall, context: &str) {
    // The model keeps its own kind of map.
    let mut written: BTreeMap<Field, AttrValue> = call.attributes.clone().into_iter().collect();
    let created_at = written.remove(&Field::CreatedAt);
    let updated_at = written.remove(&Field::UpdatedAt);
    let state_changed_at = written.remove(&Field::StateChangedAt);
    assert_eq!(written, model.attributes, "{context}: attributes");
    let related: BTreeMap<Relation, RelValue> = call.relationships.clone().into_iter().collect();
    assert_eq!(related, model.relationships, "{context}: relationships");
    assert_eq!(call.version, model.version, "{context}: version");
    assert_eq!(
        created_at,
        model.created_at.map(AttrValue::Time),
        "{context}: createdAt"
    );
    assert_eq!(
        updated_at,
        model.updated_at.map(AttrValue::Time),
        "{context}: updatedAt"
    );
    assert_eq!(
        state_changed_at,
        model.state_changed_at.map(AttrValue::Time),
        "{context}: stateChangedAt"
    );
}

/// Runs one sequence on a fresh data directory and checks everything; panics on a violation.
fn run_sequence(ops: &[Op]) {
    let data = tempfile::tempdir().expect("a temporary data directory");
    let ledger = Ledger::open(data.path());
    let clock = Clock::new();
    let mut model = Model::default();
    let mut sent: Vec<CommandRequest> = Vec::new();

    for (step, op) in ops.iter().enumerate() {
        let recorded_at = clock.tick();
        let request = match op {
            Op::Retry(back) => {
                let keyed: Vec<&CommandRequest> = sent
                    .iter()
                    .rev()
                    .filter(|request| request.idempotency_key.is_some())
                    .collect();
                let Some(earlier) = keyed.get(back % keyed.len().max(1)) else {
                    continue;
                };
                let mut again = (*earlier).clone();
                again.command.recorded_at = recorded_at;
                again
            }
            op => build(op, &model, recorded_at),
        };
        sent.push(request.clone());
        let context = format!("step {step}: {op:?}\nrequest {request:?}");
        let head = ledger.log.head();
        let expected = model.expect(&request);
        let result = ledger.execute(request.clone());
        match (&expected, result) {
            (Expected::Appended(id), Ok(outcome)) => {
                assert_eq!(outcome.call_id, *id, "{context}: call id");
                assert_eq!(outcome.appended, 1, "{context}: appended");
                assert!(!outcome.replayed, "{context}: replayed");
                assert_eq!(outcome.position, head + 1, "{context}: position");
                assert_eq!(ledger.log.head(), head + 1, "{context}: head");
                model.apply(&request, &outcome);
                let known = &model.calls[id];
                assert_eq!(outcome.version, known.version, "{context}: version");
                match outcome.state.live() {
                    Some(call) => assert_matches_model(call, known, &context),
                    None => assert!(!known.live, "{context}: the call is gone"),
                }
            }
            (Expected::NoOp(id), Ok(outcome)) => {
                assert_eq!(
                    (outcome.call_id, outcome.appended, outcome.replayed),
                    (*id, 0, false),
                    "{context}: a no-op"
                );
                assert_eq!(
                    outcome.version, model.calls[id].version,
                    "{context}: version"
                );
                assert_eq!(
                    ledger.log.head(),
                    head,
                    "{context}: a no-op appends nothing"
                );
            }
            (Expected::Replay(original), Ok(outcome)) => {
                assert!(outcome.replayed, "{context}: replayed");
                assert_eq!(outcome.appended, 0, "{context}: a replay appends nothing");
                assert_eq!(
                    (outcome.call_id, outcome.version, outcome.position),
                    (original.call_id, original.version, original.position),
                    "{context}: a replay answers as the original did"
                );
                assert_eq!(outcome.state, original.state, "{context}: replayed state");
                assert_eq!(
                    ledger.log.head(),
                    head,
                    "{context}: a replay appends nothing"
                );
            }
            (expected, Err(error)) => {
                let matches = matches!(
                    (expected, &error),
                    (Expected::NotFound, CommandError::NotFound(_))
                        | (
                            Expected::VersionMismatch,
                            CommandError::Conflict(Conflict::VersionMismatch { .. })
                        )
                        | (
                            Expected::Stale,
                            CommandError::Conflict(Conflict::StaleStateChange { .. })
                        )
                        | (
                            Expected::KeyReused,
                            CommandError::Conflict(Conflict::IdempotencyKeyReused)
                        )
                        | (Expected::Invalid, CommandError::Invalid(_))
                );
                assert!(matches, "{context}: expected {expected:?}, got {error:?}");
                assert_eq!(
                    ledger.log.head(),
                    head,
                    "{context}: a refusal appends nothing"
                );
            }
            (expected, Ok(outcome)) => {
                panic!("{context}: expected {expected:?}, got {outcome:?}")
            }
        }
        // Read-your-writes: the projection already shows what the command left.
        for id in 1..=ID_POOL {
            let shown = ledger.projection.get(id).expect("get");
            match model.live(id) {
                Some(known) => {
                    let call = shown.unwrap_or_else(|| panic!("{context}: call {id} not shown"));
                    assert_matches_model(&call, known, &format!("{context}\nprojected call {id}"));
                }
                None => assert!(shown.is_none(), "{context}: call {id} shown but not live"),
            }
        }
    }

    // The log: no gaps, consecutive versions, one stream per created call.
    let streams = check_log(&ledger.log);
    assert_eq!(
        streams.keys().copied().collect::<Vec<_>>(),
        (1..=model.next_id).collect::<Vec<_>>(),
        "one stream per created call, under its id"
    );
    for (id, known) in &model.calls {
        assert_eq!(
            streams[id].len() as u64,
            known.version,
            "versions of call {id}"
        );
    }

    // The live projection equals the log folded by the command service and one rebuilt anew.
    let max_id = model.next_id.max(ID_POOL);
    for id in 1..=max_id {
        let folded = ledger.commands.load(id).expect("load").live().cloned();
        assert_eq!(ledger.projection.get(id).expect("get"), folded, "call {id}");
    }
    let live = super::snapshot(&ledger.projection, max_id);
    let rebuilt_dir = tempfile::tempdir().expect("a directory for a second projection");
    let rebuilt = Projection::open(rebuilt_dir.path(), ledger.log.clone()).expect("open");
    rebuilt.catch_up().expect("catch up");
    assert_eq!(
        super::snapshot(&rebuilt, max_id),
        live,
        "rebuilt projection"
    );
    let listed: Vec<CallId> = list_all(&ledger.projection, &all_calls_query())
        .iter()
        .map(|call| call.id)
        .collect();
    let live_ids: Vec<CallId> = model
        .calls
        .iter()
        .filter(|(_, call)| call.live)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        listed, live_ids,
        "the full list is every live call in id order"
    );
    assert_verified(&ledger.projection, data.path());

    // The changes feed from the start, a few items a page: every live call, every deletion.
    let (mut after, mut changed, mut deleted) = (0, Vec::new(), Vec::new());
    loop {
        let page = ledger.projection.changes(after, 3).expect("changes");
        changed.extend(page.calls.iter().map(|call| call.id));
        deleted.extend(page.deleted.iter().map(|deletion| deletion.id));
        after = page.next_after;
        if !page.more {
            break;
        }
    }
    changed.sort_unstable();
    assert_eq!(changed, live_ids, "the feed reports each live call once");
    let gone: Vec<CallId> = model
        .calls
        .iter()
        .filter(|(_, call)| !call.live)
        .map(|(id, _)| *id)
        .collect();
    deleted.sort_unstable();
    assert_eq!(deleted, gone, "the feed reports each deleted call once");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_command_sequences_keep_the_log_and_projection_consistent(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        run_sequence(&ops);
    }
}
