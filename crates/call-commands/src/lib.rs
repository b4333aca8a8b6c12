//! Executes call commands: loads the call's state from its stream in the log, lets the model
//! decide, encodes the events and appends them atomically, with optimistic concurrency and
//! idempotency keys.
//!
//! The functions here block (the log waits for its group commit to reach disk); async callers
//! run them on a blocking thread.

use call_model::{
    decide_taking, evolve_owned, replay_stream, Action, Call, CallId, CallState, Command,
    DecideError, Event, EventBody, EventDecodeError, StoredEvent, Timestamp, Violation,
};
use event_log::{
    Append, AppendError, Appended, EventLog, ExpectedVersion, Idempotency, LogError, StreamTarget,
};
use sha2::{Digest, Sha256};

/// The longest idempotency key accepted, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// How often a command without `If-Match` is re-decided when another writer changed the call
/// between our read and our append. Each retry reads the newer state, so this bounds only
/// pathological contention.
const MAX_ATTEMPTS: usize = 64;

/// A command with the options a writer may attach.
#[derive(Clone, Debug)]
pub struct CommandRequest {
    /// What to do.
    pub command: Command,
    /// `If-Match`: the version the call must be at, else the command is a conflict.
    pub expected_version: Option<u64>,
    /// A retry with the same key and the same command, from the same actor, returns the
    /// original result. Keys are scoped per actor: another actor's equal key is another key.
    pub idempotency_key: Option<String>,
}

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutcome {
    /// The call it acted on (the new id for a create).
    pub call_id: CallId,
    /// The call's version afterwards.
    pub version: u64,
    /// The log position a reader must have reached to see the result (read-your-writes).
    pub position: u64,
    /// The call afterwards; for a replayed request, as the original request left it.
    pub state: CallState,
    /// How many events were appended (0 for a no-op or a replay).
    pub appended: usize,
    /// Whether this was a retry answered from its idempotency key.
    pub replayed: bool,
}

/// Which kind of conflict refused a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// `If-Match` named another version than the call's.
    VersionMismatch {
        /// The version the writer expected.
        expected: u64,
        /// The call's version.
        actual: u64,
    },
    /// The idempotency key was used before for a different request.
    IdempotencyKeyReused,
    /// The state change is older than the call's `stateChangedAt`.
    StaleStateChange {
        /// The call's `stateChangedAt`.
        current: Timestamp,
        /// When the refused change says it happened.
        occurred_at: Timestamp,
    },
}

/// Why a command was not carried out. Every variant but `Unavailable` is final for this request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The command breaks rules of the model.
    #[error("the command is invalid ({} violations)", .0.len())]
    Invalid(Vec<Violation>),
    /// No live call has this id.
    #[error("no live call has id {0}")]
    NotFound(CallId),
    /// It conflicts with the call's state or an earlier request.
    #[error("conflict: {0:?}")]
    Conflict(Conflict),
    /// The idempotency key is empty or too long.
    #[error("invalid idempotency key: {0}")]
    InvalidIdempotencyKey(String),
    /// The log could not be read or written; retrying later may succeed.
    #[error("the ledger is unavailable: {0}")]
    Unavailable(String),
}

impl From<LogError> for CommandError {
    fn from(error: LogError) -> Self {
        CommandError::Unavailable(error.to_string())
    }
}

impl From<EventDecodeError> for CommandError {
    fn from(error: EventDecodeError) -> Self {
        CommandError::Unavailable(error.to_string())
    }
}

/// Carries out commands against the log.
#[derive(Clone)]
pub struct CommandService {
    log: EventLog,
}

impl CommandService {
    /// A service appending to `log`.
    pub fn new(log: EventLog) -> CommandService {
        CommandService { log }
    }

    /// The log it appends to.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// The call's state as its durable events leave it.
    pub fn load(&self, id: CallId) -> Result<CallState, CommandError> {
        self.load_until(id, u64::MAX)
    }

    fn load_until(&self, id: CallId, version: u64) -> Result<CallState, CommandError> {
        let records = self.log.read_stream(id)?;
        let upto = records
            .iter()
            .take_while(|record| record.version <= version)
            .map(|r| (r.position, r.stream, r.version, r.payload.as_slice()));
        Ok(replay_stream(upto)?)
    }

    /// The call's state, from `seen` where the log's stream is still at its version, else
    /// replayed from the log.
    fn current(&self, id: CallId, seen: Option<&Call>) -> Result<CallState, CommandError> {
        if let Some(call) = seen.filter(|call| call.id == id) {
            if self.log.stream_version(id)? == Some(call.version) {
                return Ok(CallState::Live(call.clone()));
            }
        }
        self.load(id)
    }

    /// Validates, decides and appends one command; returns once its events are durable.
    pub fn execute(&self, request: CommandRequest) -> Result<CommandOutcome, CommandError> {
        self.execute_seen(request, None)
    }

    /// As [`CommandService::execute`], for a caller that has just read the call the command
    /// targets from a view folded from this log (the API, which validates an update against the
    /// call as it stands): where the log's stream is still at `seen`'s version, `seen` is the
    /// state the command is decided on, instead of a replay of the call's stream: an update or
    /// a delete then reads one small row of the log (the stream's version) instead of every
    /// event of the call. The append checks the version as always.
    pub fn execute_seen(
        &self,
        mut request: CommandRequest,
        seen: Option<Call>,
    ) -> Result<CommandOutcome, CommandError> {
        let idempotency = match self.idempotency(&request)? {
            Keyed::Replayed(outcome) => return Ok(outcome),
            Keyed::Fresh(idempotency) => idempotency,
        };
        let late = late_key(&idempotency, &request);
        self.execute_keyed(&mut request, idempotency, seen.as_ref())
            .or_else(|error| self.answer_late(late, error))
    }

    /// Executes each request as [`CommandService::execute`] would and answers in the same
    /// order, but decides them all first and appends them together, so that they share the
    /// log's round trips to storage (one flush for many, with the sled engine): the importer
    /// and other callers with many commands at hand use it. They are not atomic together.
    /// Requests for one call see each other only through the log: the later one's append then
    /// finds the call changed and is decided again alone, as `execute` does.
    pub fn execute_all(
        &self,
        mut requests: Vec<CommandRequest>,
    ) -> Vec<Result<CommandOutcome, CommandError>> {
        let mut answers: Vec<Option<Result<CommandOutcome, CommandError>>> =
            Vec::with_capacity(requests.len());
        let mut pending = Vec::with_capacity(requests.len());
        let mut appends = Vec::with_capacity(requests.len());
        for (index, request) in requests.iter_mut().enumerate() {
            let prepared = self.idempotency(request).and_then(|keyed| match keyed {
                Keyed::Replayed(outcome) => Ok((Prepared::Done(outcome), None)),
                Keyed::Fresh(idempotency) => {
                    let late = late_key(&idempotency, request);
                    self.prepare(request, idempotency.clone(), None)
                        .map(|prepared| (prepared, idempotency))
                        .or_else(|error| {
                            let outcome = self.answer_late(late, error)?;
                            Ok((Prepared::Done(outcome), None))
                        })
                }
            });
            answers.push(match prepared {
                Ok((Prepared::Done(outcome), _)) => Some(Ok(outcome)),
                Ok((Prepared::Append(append, staged), idempotency)) => {
                    appends.push(append);
                    pending.push((index, staged, idempotency));
                    None
                }
                Err(error) => Some(Err(error)),
            });
        }
        let appended = self.log.append_all(appends);
        for ((index, staged, idempotency), result) in pending.into_iter().zip(appended) {
            let request = &mut requests[index];
            let answer = match self.finish(request, staged, idempotency.clone(), result) {
                Ok(Attempt::Done(outcome)) => Ok(outcome),
                Ok(Attempt::Raced(decided)) => {
                    request.command.restore(decided);
                    self.execute_keyed(request, idempotency, None)
                }
                Err(error) => Err(error),
            };
            answers[index] = Some(answer);
        }
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    Err(CommandError::Unavailable(
                        "the log answered fewer appends than it was given".into(),
                    ))
                })
            })
            .collect()
    }

    /// Checks the request's idempotency key, and answers a retry of a durable request from it.
    fn idempotency(&self, request: &CommandRequest) -> Result<Keyed, CommandError> {
        let Some(key) = &request.idempotency_key else {
            return Ok(Keyed::Fresh(None));
        };
        check_idempotency_key(key)?;
        let idempotency = Idempotency {
            key: scoped_key(&request.command.actor, key),
            fingerprint: fingerprint(request),
        };
        if looked_up_late(request) {
            return Ok(Keyed::Fresh(Some(idempotency)));
        }
        self.look_up(idempotency)
    }

    /// The answer of a key's earlier use, if it has one: the replay of a retry, or the refusal
    /// of a key reused for another request.
    fn look_up(&self, idempotency: Idempotency) -> Result<Keyed, CommandError> {
        if let Some((original, stored)) = self.log.idempotent_result(&idempotency.key)? {
            return self
                .replay(original, stored, &idempotency)
                .map(Keyed::Replayed);
        }
        Ok(Keyed::Fresh(Some(idempotency)))
    }

    /// `error`, the answer of a request whose key was not looked up before it was decided
    /// ([`looked_up_late`]), unless the key's earlier use answers first, as it would have had
    /// it been looked up: a retry is replayed, a key reused for another request is refused.
    fn answer_late(
        &self,
        idempotency: Option<Idempotency>,
        error: CommandError,
    ) -> Result<CommandOutcome, CommandError> {
        let Some(idempotency) = idempotency else {
            return Err(error);
        };
        match self.look_up(idempotency) {
            Ok(Keyed::Replayed(outcome)) => Ok(outcome),
            Err(reused @ CommandError::Conflict(Conflict::IdempotencyKeyReused)) => Err(reused),
            _ => Err(error),
        }
    }

    /// Decides and appends, again while another writer changes the call in between (from the
    /// log then: `seen` is older than the change).
    fn execute_keyed(
        &self,
        request: &mut CommandRequest,
        idempotency: Option<Idempotency>,
        mut seen: Option<&Call>,
    ) -> Result<CommandOutcome, CommandError> {
        for _ in 0..MAX_ATTEMPTS {
            let attempt = match self.prepare(request, idempotency.clone(), seen.take())? {
                Prepared::Done(outcome) => Attempt::Done(outcome),
                Prepared::Append(append, staged) => {
                    let result = self.log.append(append);
                    self.finish(request, staged, idempotency.clone(), result)?
                }
            };
            match attempt {
                Attempt::Done(outcome) => return Ok(outcome),
                Attempt::Raced(decided) => request.command.restore(decided),
            }
        }
        Err(CommandError::Unavailable(
            "the call changed too often while this command was being applied; retry".into(),
        ))
    }

    /// Loads the call (see [`CommandService::execute_seen`] for `seen`), checks `If-Match`
    /// and decides: either the answer already (a no-op) or the append to make. A create's
    /// changes move into its event ([`decide_taking`]); an attempt that races puts them back.
    fn prepare(
        &self,
        request: &mut CommandRequest,
        idempotency: Option<Idempotency>,
        seen: Option<&Call>,
    ) -> Result<Prepared, CommandError> {
        let command = &request.command;
        let (stream, state) = match &command.action {
            Action::Create(_) => (StreamTarget::New, CallState::Absent),
            Action::Update { id, .. } | Action::Delete { id } => {
                (StreamTarget::Existing(*id), self.current(*id, seen)?)
            }
        };
        if let (Some(expected), Some(id)) = (request.expected_version, target_id(command)) {
            if state.live().is_none() {
                return Err(CommandError::NotFound(id));
            }
            if state.version() != expected {
                return Err(CommandError::Conflict(Conflict::VersionMismatch {
                    expected,
                    actual: state.version(),
                }));
            }
        }
        let bodies = decide_taking(&state, &mut request.command).map_err(|error| match error {
            DecideError::NotFound(id) => CommandError::NotFound(id),
            DecideError::StaleStateChange {
                current,
                occurred_at,
            } => CommandError::Conflict(Conflict::StaleStateChange {
                current,
                occurred_at,
            }),
            DecideError::Invalid(violations) => CommandError::Invalid(violations),
        })?;
        if bodies.is_empty() {
            let call = state
                .live()
                .ok_or(CommandError::Unavailable("no-op on a missing call".into()))?;
            return Ok(Prepared::Done(CommandOutcome {
                call_id: call.id,
                version: call.version,
                position: call.position,
                state: state.clone(),
                appended: 0,
                replayed: false,
            }));
        }
        let stored: Vec<StoredEvent> = bodies
            .into_iter()
            .map(|body| StoredEvent {
                event_id: uuid::Uuid::now_v7(),
                idempotency_key: request.idempotency_key.clone(),
                occurred_at: request.command.occurred_at(),
                recorded_at: request.command.recorded_at,
                actor: request.command.actor.clone(),
                body,
            })
            .collect();
        let expected = match stream {
            StreamTarget::New | StreamTarget::Restored(_) => ExpectedVersion::NoStream,
            StreamTarget::Existing(_) => ExpectedVersion::Exact(state.version()),
        };
        let append = Append {
            stream,
            expected,
            idempotency,
            payloads: stored.iter().map(StoredEvent::encode).collect(),
        };
        Ok(Prepared::Append(append, Staged { stored, state }))
    }

    /// What the log's answer to a staged append means for the request.
    fn finish(
        &self,
        request: &CommandRequest,
        staged: Staged,
        idempotency: Option<Idempotency>,
        result: Result<Appended, AppendError>,
    ) -> Result<Attempt, CommandError> {
        let appended = match result {
            Ok(appended) => appended,
            Err(AppendError::WrongExpectedVersion { actual, .. }) => {
                if let Some(expected) = request.expected_version {
                    return Err(CommandError::Conflict(Conflict::VersionMismatch {
                        expected,
                        actual: actual.unwrap_or(0),
                    }));
                }
                return Ok(Attempt::Raced(
                    staged
                        .stored
                        .into_iter()
                        .map(|stored| stored.body)
                        .collect(),
                ));
            }
            Err(AppendError::IdempotencyKeyReused { .. }) => {
                return Err(CommandError::Conflict(Conflict::IdempotencyKeyReused))
            }
            Err(AppendError::StreamNotFound(id)) => return Err(CommandError::NotFound(id)),
            Err(error) => return Err(CommandError::Unavailable(error.to_string())),
        };
        if appended.duplicate {
            // A concurrent request with the same key won the race; answer as it was answered.
            let idempotency =
                idempotency.ok_or(CommandError::Unavailable("duplicate without key".into()))?;
            let fingerprint = idempotency.fingerprint;
            return self
                .replay(appended, fingerprint, &idempotency)
                .map(Attempt::Done);
        }
        let mut state = staged.state;
        for (offset, stored) in staged.stored.into_iter().enumerate() {
            let offset = offset as u64;
            let event = Event {
                position: appended.first_position + offset,
                call_id: appended.stream,
                version: appended.first_version + offset,
                stored,
            };
            state = evolve_owned(state, event);
        }
        Ok(Attempt::Done(CommandOutcome {
            call_id: appended.stream,
            version: appended.last_version,
            position: appended.last_position,
            state,
            appended: (appended.last_position - appended.first_position + 1) as usize,
            replayed: false,
        }))
    }

    fn replay(
        &self,
        original: Appended,
        stored_fingerprint: [u8; 32],
        idempotency: &Idempotency,
    ) -> Result<CommandOutcome, CommandError> {
        if stored_fingerprint != idempotency.fingerprint {
            return Err(CommandError::Conflict(Conflict::IdempotencyKeyReused));
        }
        let state = self.load_until(original.stream, original.last_version)?;
        Ok(CommandOutcome {
            call_id: original.stream,
            version: original.last_version,
            position: original.last_position,
            state,
            appended: 0,
            replayed: true,
        })
    }
}

/// Whether a request's idempotency key is checked only where every append's is, in the log's
/// writer (whose answer for a retry, the original append, `finish` replays), rather than looked
/// up before the request is decided: a create's. A create is decided alike however often it is
/// retried (on no call, and a time that was not in the future stays so); looking its key up
/// first read the log for every keyed create, on the request's thread and under the lock sled
/// takes for every batch, to save a decision for the rare retry. Where its decision fails, the
/// key is looked up then ([`CommandService::answer_late`]), so that a retry or a reused key
/// is answered as before.
fn looked_up_late(request: &CommandRequest) -> bool {
    matches!(request.command.action, Action::Create(_))
}

/// The key to look up should `request`'s decision fail: its key where it was not looked up
/// before ([`looked_up_late`]).
fn late_key(idempotency: &Option<Idempotency>, request: &CommandRequest) -> Option<Idempotency> {
    idempotency.clone().filter(|_| looked_up_late(request))
}

enum Attempt {
    Done(CommandOutcome),
    /// Another writer changed the call first: decide again, from the events decided here.
    Raced(Vec<EventBody>),
}

/// A request after its idempotency key was looked up.
enum Keyed {
    /// A retry of a durable request, answered as the original was.
    Replayed(CommandOutcome),
    /// A request to carry out, with its scoped key if it has one.
    Fresh(Option<Idempotency>),
}

/// A decided request.
enum Prepared {
    /// Answered without an append (a no-op, or a replay).
    Done(CommandOutcome),
    /// To be appended; the answer is built from the staged part.
    Append(Append, Staged),
}

/// What the answer to a decided append is built from.
struct Staged {
    stored: Vec<StoredEvent>,
    state: CallState,
}

fn target_id(command: &Command) -> Option<CallId> {
    match &command.action {
        Action::Create(_) => None,
        Action::Update { id, .. } | Action::Delete { id } => Some(*id),
    }
}

/// The key the log keeps for `key` sent by `actor`: keys are scoped per writer (a token, a
/// producer), so that two integrations that happen to pick the same key never collide. The
/// length prefix keeps `("a:b", "c")` and `("a", "b:c")` apart. The events carry the key as sent.
fn scoped_key(actor: &str, key: &str) -> String {
    format!("{}:{actor}:{key}", actor.len())
}

/// Checks an idempotency key against the one rule for keys: 1 to
/// [`MAX_IDEMPOTENCY_KEY_CHARS`] characters. The API calls it before anything else so that a bad
/// key is refused first; [`CommandService::execute`] calls it again for other callers.
pub fn check_idempotency_key(key: &str) -> Result<(), CommandError> {
    let chars = key.chars().count();
    if chars == 0 || chars > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(CommandError::InvalidIdempotencyKey(format!(
            "it must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters, got {chars}"
        )));
    }
    Ok(())
}

/// A digest of everything that makes a request what it is, so a retry can be told from a
/// different request reusing the key. The recording time is left out: a retry arrives later.
fn fingerprint(request: &CommandRequest) -> [u8; 32] {
    let command = &request.command;
    let (kind, id, changes) = match &command.action {
        Action::Create(changes) => ("create", 0, Some(changes)),
        Action::Update { id, changes } => ("update", *id, Some(changes)),
        Action::Delete { id } => ("delete", *id, None),
    };
    // The JSON array `[kind, id, changes, actor, occurredAt millis, expected version]`, written
    // straight into the hash: the stored fingerprints of keys already used are of this text, so
    // it never changes (`the_fingerprint_text_is_pinned`).
    let mut hasher = Hashing(Sha256::new());
    // Neither the hash nor these values' `Serialize` can fail.
    hasher.0.update(b"[");
    let _ = serde_json::to_writer(&mut hasher, kind);
    hasher.0.update(b",");
    let _ = serde_json::to_writer(&mut hasher, &id);
    hasher.0.update(b",");
    match changes {
        Some(changes) => hasher.0.update(changes.to_json_bytes()),
        None => hasher.0.update(b"null"),
    }
    hasher.0.update(b",");
    let _ = serde_json::to_writer(&mut hasher, &command.actor);
    hasher.0.update(b",");
    let _ = serde_json::to_writer(&mut hasher, &command.occurred_at.map(|at| at.millis()));
    hasher.0.update(b",");
    let _ = serde_json::to_writer(&mut hasher, &request.expected_version);
    hasher.0.update(b"]");
    hasher.0.finalize().into()
}

/// A writer that feeds a SHA-256.
struct Hashing(Sha256);

impl std::io::Write for Hashing {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
