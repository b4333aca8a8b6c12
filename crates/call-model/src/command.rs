//! Commands and the two pure functions of the aggregate: `decide` turns a command into events
//! (or refuses it), `evolve` applies an event without judging it.

use crate::call::{Call, CallId, CallState, DataConnection};
use crate::event::{Event, EventBody};
use crate::field_map::FieldMap;
use crate::fields::{AttrValue, Field, Ownership, RelValue};
use crate::input::{Changes, Violation, ViolationKind};
use crate::relation_map::RelationMap;
use crate::time::Timestamp;

/// How far in the future a writer's `occurredAt` may lie, to allow for clock skew between the
/// writer and the ledger.
pub(crate) const OCCURRED_AT_SKEW_MILLIS: i64 = 60_000;

/// What a command asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create a call with these members.
    Create(Changes),
    /// Change these members of a call.
    Update {
        /// The call.
        id: CallId,
        /// What changes.
        changes: Changes,
    },
    /// Delete a call.
    Delete {
        /// The call.
        id: CallId,
    },
}

/// A validated request to change the ledger, with everything `decide` may not look up itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// What to do.
    pub action: Action,
    /// Who asks (becomes the events' actor).
    pub actor: String,
    /// The ledger's clock when the command arrived.
    pub recorded_at: Timestamp,
    /// When the writer says the change happened, if it says.
    pub occurred_at: Option<Timestamp>,
}

/// Why `decide` refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// No live call has this id.
    #[error("no live call has id {0}")]
    NotFound(CallId),
    /// The state change happened before the call's current `stateChangedAt`.
    #[error("the state change at {occurred_at} is older than the call's stateChangedAt {current}")]
    StaleStateChange {
        /// The call's `stateChangedAt`.
        current: Timestamp,
        /// When the refused change says it happened.
        occurred_at: Timestamp,
    },
    /// The command breaks a rule that needs the call's state or the clock to see.
    #[error("the command is invalid")]
    Invalid(Vec<Violation>),
}

impl Command {
    /// When the change happened: the writer's word, else the time it was recorded.
    pub fn occurred_at(&self) -> Timestamp {
        self.occurred_at.unwrap_or(self.recorded_at)
    }
}

/// Decides which events a command produces from the call's current state. An empty list means
/// the command changes nothing and nothing is to be appended.
pub fn decide(state: &CallState, command: &Command) -> Result<Vec<EventBody>, DecideError> {
    check_command(command)?;
    match &command.action {
        Action::Create(changes) => Ok(vec![created(changes.clone())]),
        Action::Update { id, changes } => updated(state, *id, changes, command.occurred_at()),
        Action::Delete { id } => deleted(state, *id),
    }
}

/// As [`decide`], but a create's event takes the command's changes instead of a copy of them,
/// and leaves the command's empty. A caller that decides the command again (after its append
/// raced another) first puts the event's changes back ([`Command::restore`]): deciding them
/// again gives the same event. Copying them was a tenth of an import's deciding threads.
pub fn decide_taking(
    state: &CallState,
    command: &mut Command,
) -> Result<Vec<EventBody>, DecideError> {
    check_command(command)?;
    let occurred_at = command.occurred_at();
    match &mut command.action {
        Action::Create(changes) => Ok(vec![created(std::mem::take(changes))]),
        Action::Update { id, changes } => updated(state, *id, changes, occurred_at),
        Action::Delete { id } => deleted(state, *id),
    }
}

impl Command {
    /// Puts back the changes [`decide_taking`] took from a create, from the event it made.
    pub fn restore(&mut self, decided: Vec<EventBody>) {
        if let (Action::Create(changes), Some(EventBody::CallCreated(initial))) =
            (&mut self.action, decided.into_iter().next())
        {
            *changes = initial;
        }
    }
}

/// The rules that need no state: no time in the future, no server-set attribute.
fn check_command(command: &Command) -> Result<(), DecideError> {
    if let Some(at) = command.occurred_at {
        // Saturating: a clock value near the end of time must not overflow.
        let latest = command
            .recorded_at
            .millis()
            .saturating_add(OCCURRED_AT_SKEW_MILLIS);
        if at.millis() > latest {
            return Err(DecideError::Invalid(vec![Violation {
                pointer: "/data/meta/occurredAt".into(),
                kind: ViolationKind::Invalid,
                detail: format!(
                    "expected a time no later than now ({}), give or take {} s of clock skew",
                    command.recorded_at,
                    OCCURRED_AT_SKEW_MILLIS / 1000
                ),
            }]));
        }
    }
    if let Action::Create(changes) | Action::Update { changes, .. } = &command.action {
        refuse_server_set(changes)?;
    }
    Ok(())
}

/// A create's event: a new call has no members to clear, so nulls and empty lists say nothing.
fn created(mut initial: Changes) -> EventBody {
    initial.attributes.retain(|_, value| value.is_some());
    initial.relationships.retain(|_, value| match value {
        Some(RelValue::Many(targets)) => !targets.is_empty(),
        Some(RelValue::One(_)) => true,
        None => false,
    });
    if initial.data_connections.as_ref().is_some_and(Vec::is_empty) {
        initial.data_connections = None;
    }
    EventBody::CallCreated(initial)
}

/// A delete's event: a call that is not live cannot be deleted.
fn deleted(state: &CallState, id: CallId) -> Result<Vec<EventBody>, DecideError> {
    match state {
        CallState::Live(_) => Ok(vec![EventBody::CallDeleted]),
        _ => Err(DecideError::NotFound(id)),
    }
}

/// An update's events: none where it changes nothing.
fn updated(
    state: &CallState,
    id: CallId,
    changes: &Changes,
    occurred_at: Timestamp,
) -> Result<Vec<EventBody>, DecideError> {
    let CallState::Live(call) = state else {
        return Err(DecideError::NotFound(id));
    };
    let diff = difference(call, changes);
    if diff.is_empty() {
        return Ok(Vec::new());
    }
    if !diff.attributes.contains_key(&Field::State) {
        return Ok(vec![EventBody::CallUpdated(diff)]);
    }
    if let Some(current) = call.time(Field::StateChangedAt) {
        if occurred_at < current {
            return Err(DecideError::StaleStateChange {
                current,
                occurred_at,
            });
        }
    }
    Ok(vec![EventBody::CallStateChanged {
        previous_state: call.text(Field::State).map(str::to_owned),
        changes: diff,
    }])
}

/// `parse_write` never lets a server-set attribute through, but `Changes` is a plain value that
/// any crate can build; the ledger's own timestamps must not be overwritten by one.
fn refuse_server_set(changes: &Changes) -> Result<(), DecideError> {
    let violations: Vec<Violation> = changes
        .attributes
        .keys()
        .filter(|field| field.ownership() == Ownership::Server)
        .map(|field| Violation {
            pointer: format!("/data/attributes/{}", field.name()),
            kind: ViolationKind::Invalid,
            detail: format!("'{field}' is set by the server and cannot be written"),
        })
        .collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(DecideError::Invalid(violations))
    }
}

/// The part of `changes` that differs from the call as it stands.
fn difference(call: &Call, changes: &Changes) -> Changes {
    Changes {
        attributes: changes
            .attributes
            .iter()
            .filter(|(field, value)| call.attributes.get(field) != value.as_ref())
            .map(|(field, value)| (*field, value.clone()))
            .collect(),
        relationships: changes
            .relationships
            .iter()
            .map(|(relation, value)| {
                // An empty to-many list clears the relationship, as `null` does.
                let value = match value {
                    Some(RelValue::Many(targets)) if targets.is_empty() => None,
                    value => value.clone(),
                };
                (*relation, value)
            })
            .filter(|(relation, value)| call.relationships.get(relation) != value.as_ref())
            .collect(),
        data_connections: changes
            .data_connections
            .as_ref()
            .filter(|connections| **connections != call.data_connections)
            .cloned(),
    }
}

/// A call's state as the events of its stream leave it, each given as a log record's position,
/// stream, version and payload, in stream order from its first: how the commands and the
/// projection replay one call.
pub fn replay_stream<'a>(
    records: impl IntoIterator<Item = (u64, u64, u64, &'a [u8])>,
) -> Result<CallState, crate::EventDecodeError> {
    let mut state = CallState::Absent;
    for (position, stream, version, payload) in records {
        let event = Event::decode(position, stream, version, payload)?;
        state = evolve(state, &event);
    }
    Ok(state)
}

/// Applies an event to a call's state. No rule is checked here: the event already happened.
pub fn evolve(state: CallState, event: &Event) -> CallState {
    let body = match &event.stored.body {
        EventBody::CallCreated(changes) => Body::Created(changes),
        EventBody::CallUpdated(changes) => Body::Updated(changes),
        EventBody::CallStateChanged { changes, .. } => Body::StateChanged(changes),
        EventBody::CallDeleted => Body::Deleted,
    };
    evolve_with(state, Head::of(event), body)
}

/// [`evolve`] taking the event, whose values move into the call instead of being copied: what a
/// replay of the log does with each event it decoded.
pub fn evolve_owned(state: CallState, event: Event) -> CallState {
    let head = Head::of(&event);
    let body = match event.stored.body {
        EventBody::CallCreated(changes) => Body::Created(changes),
        EventBody::CallUpdated(changes) => Body::Updated(changes),
        EventBody::CallStateChanged { changes, .. } => Body::StateChanged(changes),
        EventBody::CallDeleted => Body::Deleted,
    };
    evolve_with(state, head, body)
}

/// What [`evolve`] reads of an event besides its changes.
#[derive(Clone, Copy)]
struct Head {
    call_id: CallId,
    version: u64,
    position: u64,
    recorded_at: Timestamp,
    occurred_at: Timestamp,
}

impl Head {
    fn of(event: &Event) -> Head {
        Head {
            call_id: event.call_id,
            version: event.version,
            position: event.position,
            recorded_at: event.stored.recorded_at,
            occurred_at: event.stored.occurred_at,
        }
    }
}

/// An event's body, with its changes borrowed (`&Changes`) or owned (`Changes`).
enum Body<C> {
    Created(C),
    Updated(C),
    StateChanged(C),
    Deleted,
}

/// Changes that can be applied to a call: copied from a borrowed event, moved from an owned one.
trait ApplyTo {
    fn apply_to(self, call: &mut Call);

    /// A new call's members, made of these changes alone (a create's).
    fn into_members(self) -> Members;
}

/// A call's attributes, relationships and data connections.
type Members = (
    FieldMap<AttrValue>,
    RelationMap<RelValue>,
    Vec<DataConnection>,
);

impl ApplyTo for &Changes {
    fn apply_to(self, call: &mut Call) {
        // Every value is copied either way: cloning first costs only the maps' own allocations.
        self.clone().apply_to(call);
    }

    fn into_members(self) -> Members {
        self.clone().into_members()
    }
}

impl ApplyTo for Changes {
    fn into_members(self) -> Members {
        // The maps become the call's in their own allocations: a create's changes are what
        // the call holds, with nothing to clear.
        (
            self.attributes.into_present(),
            self.relationships.into_present(),
            self.data_connections.unwrap_or_default(),
        )
    }

    fn apply_to(self, call: &mut Call) {
        for (field, value) in self.attributes {
            match value {
                Some(value) => call.attributes.insert(field, value),
                None => call.attributes.remove(&field),
            };
        }
        for (relation, value) in self.relationships {
            match value {
                Some(value) => call.relationships.insert(relation, value),
                None => call.relationships.remove(&relation),
            };
        }
        if let Some(connections) = self.data_connections {
            call.data_connections = connections;
        }
    }
}

fn evolve_with<C: ApplyTo>(state: CallState, head: Head, body: Body<C>) -> CallState {
    match (body, state) {
        (Body::Created(changes), _) => {
            let (attributes, relationships, data_connections) = changes.into_members();
            let mut call = Call {
                id: head.call_id,
                version: head.version,
                position: head.position,
                attributes,
                relationships,
                data_connections,
            };
            call.attributes
                .insert(Field::CreatedAt, AttrValue::Time(head.recorded_at));
            call.attributes
                .insert(Field::UpdatedAt, AttrValue::Time(head.recorded_at));
            if call.attributes.contains_key(&Field::State) {
                call.attributes
                    .insert(Field::StateChangedAt, AttrValue::Time(head.occurred_at));
            }
            CallState::Live(call)
        }
        (Body::Updated(changes), CallState::Live(mut call)) => {
            changes.apply_to(&mut call);
            touch(&mut call, head);
            CallState::Live(call)
        }
        (Body::StateChanged(changes), CallState::Live(mut call)) => {
            changes.apply_to(&mut call);
            call.attributes
                .insert(Field::StateChangedAt, AttrValue::Time(head.occurred_at));
            touch(&mut call, head);
            CallState::Live(call)
        }
        (Body::Deleted, _) => CallState::Deleted {
            id: head.call_id,
            version: head.version,
        },
        // An update of a call that is not live cannot have been decided; keep the state.
        (_, state) => state,
    }
}

fn touch(call: &mut Call, head: Head) {
    call.version = head.version;
    call.position = head.position;
    call.attributes
        .insert(Field::UpdatedAt, AttrValue::Time(head.recorded_at));
}
