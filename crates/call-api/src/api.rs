//! The request handler: authorize, parse, run against the ledger, and answer with a JSON:API
//! document or error. Every failure, a panic included, becomes an error [`Response`].

use crate::auth::{Grant, Scope};
use crate::document::{self, Permissions};
use crate::error::ApiError;
use crate::header_names::{
    AUTHORIZATION, CONTENT_TYPE as CONTENT_TYPE_HEADER, ETAG, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED,
    IF_MATCH,
};
use crate::json::ObjectWriter;
use crate::query::{self, ReadOptions};
use crate::rate::Decision;
use crate::rendered::RenderedGets;
use crate::{header, ApiConfig, Clock, Operation, Request, Response, Source, CONTENT_TYPE};
use call_commands::{CommandError, CommandRequest, CommandService, Conflict};
use call_model::{
    check_update, check_write, Action, Call, CallId, CallRef, CallState, Command, JsonIn, Relation,
    Rights, Timestamp, WriteMode,
};
use call_projections::{HeldPacks, PageCursor, Projection, ProjectionError, QueryError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

/// Room left in a reply for the headers and the envelope when a page is fitted to the max
/// payload (NATS counts headers and payload together).
const HEADROOM: usize = 1024;

/// The media type of a backup page: one event per line.
pub const NDJSON: &str = "application/x-ndjson";
/// The header of a backup page naming the log's head when the page was read.
pub const HEAD_HEADER: &str = "Call-Ledger-Head";
/// The header of a backup page naming the position of its last event (`after` when empty).
pub const LAST_POSITION_HEADER: &str = "Call-Ledger-Last-Position";

/// The actor of requests when no tokens file is configured.
const ANONYMOUS: &str = "anonymous";
/// The actor of producers' commands whose transport names no producer.
const PRODUCER: &str = "producer";
/// The longest producer name taken as an actor.
const MAX_ACTOR_CHARS: usize = 255;

/// The Calls API over a ledger: cheap to clone, shared by every request handler.
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

struct Inner {
    commands: CommandService,
    projection: Projection,
    config: ApiConfig,
    clock: Clock,
    rendered: RenderedGets,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// An API writing through `commands` and reading from `projection`, stamping commands with
    /// `clock`.
    pub fn new(
        commands: CommandService,
        projection: Projection,
        config: ApiConfig,
        clock: Clock,
    ) -> Api {
        Api {
            inner: Arc::new(Inner {
                commands,
                projection,
                rendered: RenderedGets::new(config.rendered_gets_bytes),
                config,
                clock,
            }),
        }
    }

    /// What the kept get documents did so far (see `rendered.rs`).
    pub fn rendered_gets(&self) -> crate::RenderedGetsStats {
        self.inner.rendered.stats()
    }

    /// The projection's live calls and its indexes' estimated memory by index (see
    /// [`Projection::index_memory`]).
    pub fn index_memory(&self) -> Result<(u64, Vec<(String, usize)>), ProjectionError> {
        self.inner.projection.index_memory()
    }

    /// What the projection's cache of packs holds.
    pub fn held_packs(&self) -> Result<HeldPacks, ProjectionError> {
        self.inner.projection.held_packs()
    }

    /// How long the log's writer has been on its current group, and the projection's catch-up
    /// without applying a chunk; `None` for each while it is idle (see
    /// `event_log::StallClock`).
    pub fn storage_busy(&self) -> (Option<Duration>, Option<Duration>) {
        (
            self.inner.commands.log().busy_for(),
            self.inner.projection.busy_for(),
        )
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// Applies to the projection what the log has made durable since it last caught up, and
    /// returns its checkpoint. The edge calls it whenever the log's head moves, so that reads
    /// (which wait for the head, see docs/ARCHITECTURE.md) seldom have anything to wait for.
    pub fn catch_up(&self) -> Result<u64, ProjectionError> {
        self.inner.projection.catch_up()
    }

    /// Writes the projection's index snapshot as it stands (see
    /// [`call_projections::Projection::write_snapshot`]); blocking, about a second at a million
    /// calls.
    pub fn write_index_snapshot(&self) -> Result<bool, ProjectionError> {
        self.inner.projection.write_snapshot()
    }

    /// Answers one request. Blocks until the ledger has answered; never panics: every failure is
    /// an error response, and an internal one (500) says nothing of its cause, which is logged.
    pub fn handle(&self, request: Request<'_>) -> Response {
        self.handle_with(request, Barrier::Wait)
    }

    /// Answers a get at once when nothing would make it wait: the projection already holds
    /// everything the log has made durable (so the read barrier is met as the request arrives)
    /// and the log is not shared. `None` for any other request, which goes to [`Api::handle`]
    /// on a blocking thread.
    ///
    /// A get is then a lookup of the in-memory indexes' row in the view's page cache and the
    /// writing of one document, some ten microseconds: the edge runs it where the request
    /// arrived instead of handing it to a blocking thread, a hop that cost more than the get.
    pub fn handle_at_once(&self, request: Request<'_>) -> Option<Response> {
        let inner = &self.inner;
        let at_once = matches!(request.operation, Operation::Get(_))
            && !inner.config.sync_reads
            && inner.projection.checkpoint() >= inner.commands.log().head();
        at_once.then(|| self.handle_with(request, Barrier::Met))
    }

    fn handle_with(&self, request: Request<'_>, barrier: Barrier) -> Response {
        let mut rated = None;
        let mut response = self.answer(&request, barrier, &mut rated);
        if let Some(decision) = rated {
            decision.mark(&mut response);
        }
        response
    }

    fn answer(
        &self,
        request: &Request<'_>,
        barrier: Barrier,
        rated: &mut Option<Decision>,
    ) -> Response {
        match catch_unwind(AssertUnwindSafe(|| {
            self.inner.dispatch(request, barrier, rated)
        })) {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => error.to_response(),
            Err(panic) => {
                let cause = panic
                    .downcast_ref::<&str>()
                    .map(|text| (*text).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(operation = ?request.operation, %cause, "request handler panicked");
                ApiError::internal().to_response()
            }
        }
    }
}

/// Whether a read still has to wait for the projection to reach the log's head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Barrier {
    /// Wait (catching up if need be) for the head as the request arrives.
    Wait,
    /// The caller saw the projection at the head as the request arrived.
    Met,
}

/// A failure of the projection: 503 when storage or the log failed (retrying may succeed), 500
/// otherwise. The cause is logged, never sent.
fn projection_error(what: &str, error: &ProjectionError) -> ApiError {
    match error {
        ProjectionError::Storage(_)
        | ProjectionError::Log(_)
        | ProjectionError::BeyondHead { .. } => {
            tracing::warn!(%error, "{what} failed");
            ApiError::unavailable("The ledger cannot answer now; retry later.")
        }
        _ => internal(what, error),
    }
}

/// Logs an internal failure and returns the generic 500.
fn internal(what: &str, cause: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(%cause, "{what} failed");
    ApiError::internal()
}

impl Inner {
    /// Answers `request`, recording in `rated` what the rate limiter said of it.
    fn dispatch(
        &self,
        request: &Request<'_>,
        barrier: Barrier,
        rated: &mut Option<Decision>,
    ) -> Result<Response, ApiError> {
        let max = self.config.max_payload;
        if max > 0 && request.payload.len() > max {
            return Err(ApiError::too_large(request.payload.len(), max));
        }
        check_headers(request.headers)?;
        let grant = self.authenticate(request)?;
        // A backup reads the whole log in pages; an operator's tool is not an API caller's
        // traffic and is not counted.
        let counted = request.operation != Operation::Backup;
        if let (Some(limiter), true) = (&self.config.rate_limiter, counted) {
            let now = (self.clock)();
            let key = match request.source {
                Source::Api => format!("api:{}", grant.actor),
                Source::Producer(_) => format!("producer:{}", grant.actor),
            };
            let decision = limiter.take(&key, u64::try_from(now.millis() / 1000).unwrap_or(0));
            *rated = Some(decision);
            if !decision.admitted {
                let reset = Timestamp::from_millis(
                    i64::try_from(decision.reset.saturating_mul(1000)).unwrap_or(i64::MAX),
                );
                return Err(ApiError::rate_limited(decision.limit, &reset.to_string()));
            }
        }
        let needed = match request.operation {
            Operation::List | Operation::Get(_) | Operation::Changes => Scope::Read,
            Operation::Create | Operation::Update(_) => Scope::Write,
            Operation::Delete(_) => Scope::Delete,
            Operation::Backup => Scope::Admin,
        };
        if !grant.allows(needed) {
            return Err(ApiError::missing_scope(needed.name()));
        }
        let reads = matches!(
            request.operation,
            Operation::List | Operation::Get(_) | Operation::Changes
        );
        if reads && barrier == Barrier::Wait {
            self.read_barrier()?;
        }
        match &request.operation {
            Operation::List => self.list(&grant, request.payload),
            Operation::Get(token) => self.get(&grant, token, request.payload),
            Operation::Changes => self.changes(&grant, request.payload),
            Operation::Backup => self.backup(request.payload),
            Operation::Create | Operation::Update(_) | Operation::Delete(_) => {
                self.write(&grant, request)
            }
        }
    }

    /// Who the request is from: the bearer token's grant, the open API's anonymous grant, or a
    /// producer's.
    fn authenticate(&self, request: &Request<'_>) -> Result<Grant, ApiError> {
        if let Source::Producer(producer) = &request.source {
            let actor = match &producer.name {
                Some(name) if name.value.trim().chars().count() > MAX_ACTOR_CHARS => {
                    return Err(ApiError::header(
                        name.header,
                        format!("The producer name is longer than {MAX_ACTOR_CHARS} characters."),
                    ))
                }
                Some(name) if !name.value.trim().is_empty() => name.value.trim().to_owned(),
                _ => PRODUCER.to_owned(),
            };
            return Ok(Grant {
                actor,
                scopes: vec![Scope::All, Scope::Voice],
            });
        }
        let Some(store) = &self.config.tokens else {
            return Ok(Grant {
                actor: ANONYMOUS.to_owned(),
                scopes: vec![Scope::Read, Scope::Write, Scope::Delete, Scope::Admin],
            });
        };
        let Some(value) = header(request.headers, AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "A bearer token is required: send the header 'Authorization: Bearer <token>'.",
            ));
        };
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(ApiError::unauthorized(
                    "The Authorization header must read 'Bearer <token>'.",
                ))
            }
        };
        store
            .authenticate(token)
            .ok_or_else(|| ApiError::unauthorized("The bearer token is not valid."))
    }

    fn permissions(grant: &Grant) -> Permissions {
        Permissions {
            can_write: grant.allows(Scope::Write),
            can_delete: grant.allows(Scope::Delete),
        }
    }

    fn single(&self, call: &CallRef<'_>, read: &ReadOptions, grant: &Grant) -> Vec<u8> {
        document::single(
            call,
            read,
            &self.config.self_prefix,
            Self::permissions(grant),
        )
    }

    fn resource(&self, call: &Call, read: &ReadOptions, grant: &Grant) -> String {
        document::resource(
            &call.borrowed(),
            read,
            &self.config.self_prefix,
            Self::permissions(grant),
        )
    }

    /// The bytes a document may take: the max payload less headroom for headers.
    fn budget(&self) -> usize {
        match self.config.max_payload {
            0 => usize::MAX,
            max => max.saturating_sub(HEADROOM).max(1),
        }
    }

    fn get(&self, grant: &Grant, token: &str, payload: &[u8]) -> Result<Response, ApiError> {
        let id = parse_id(token)?;
        let read = query::parse_read(query_text(payload)?)?;
        let keep = read.is_default();
        if keep {
            let latest = self
                .projection
                .latest_position(id)
                .map_err(|error| projection_error("reading a call", &error))?;
            if let Some((body, version)) = latest.and_then(|at| self.rendered.get(id, at)) {
                return Ok(success(200, body, Some(version)));
            }
        }
        // Rendered from the stored view in place: no owned `Call` is built for a get.
        let (body, version, position) = self
            .projection
            .get_with(id, |call| {
                let body = self.single(call, &read, grant);
                (body, call.version, call.position)
            })
            .map_err(|error| projection_error("reading a call", &error))?
            .ok_or_else(|| ApiError::not_found(token))?;
        if keep {
            self.rendered.put(id, position, version, &body);
            self.rendered.sweep(|id, position| {
                self.projection.latest_position(id).ok().flatten() == Some(position)
            });
        }
        Ok(success(200, body, Some(version)))
    }

    fn list(&self, grant: &Grant, payload: &[u8]) -> Result<Response, ApiError> {
        let request = query::parse_list(query_text(payload)?)?;
        let page = self
            .projection
            .list(&request.query)
            .map_err(|error| match error {
                QueryError::InvalidCursor => ApiError::parameter(
                    request.cursor_parameter().unwrap_or("page[after]"),
                    "The cursor is not valid: use the page[after] or page[before] of a links.next or links.prev as given.",
                ),
                QueryError::CursorMismatch => ApiError::parameter(
                    request.cursor_parameter().unwrap_or("page[after]"),
                    "The cursor belongs to a query with another sort or filter: start again from links.first.",
                ),
                QueryError::PageSize(_) => ApiError::parameter(
                    "page[size]",
                    format!(
                        "Expected an integer from 1 to {}.",
                        call_projections::MAX_PAGE_SIZE
                    ),
                ),
                // The parser refuses what the engine would; these are kept as a safety net.
                QueryError::InvalidSort(reason) => ApiError::parameter("sort", reason),
                QueryError::InvalidFilter { target, reason } => {
                    let parameter = match Relation::from_name(&target) {
                        Some(_) => format!("filter[{target}][id]"),
                        None => format!("filter[{target}]"),
                    };
                    ApiError::parameter(parameter, format!("Invalid filter: {reason}."))
                }
                QueryError::Projection(error) => projection_error("listing calls", &error),
                other => internal("listing calls", &other),
            })?;
        let rows: Vec<String> = page
            .calls
            .iter()
            .map(|call| self.resource(call, &request.read, grant))
            .collect();
        let query = &request.query;
        let tail = |kept: usize| -> String {
            let mut members = ObjectWriter::new();
            if kept > 0 || query.cursor.is_some() {
                let mut links = ObjectWriter::new();
                links.value("first", &request.first_link());
                if kept > 0 && page.more_before {
                    let cursor = self.projection.cursor_for(query, &page.calls[0]);
                    links.value("prev", &request.link(&PageCursor::Before(cursor)));
                }
                if kept > 0 && (kept < page.calls.len() || page.more_after) {
                    let cursor = self.projection.cursor_for(query, &page.calls[kept - 1]);
                    links.value("next", &request.link(&PageCursor::After(cursor)));
                }
                // An empty page reached by a cursor still links back to the rows beside it.
                if kept == 0 {
                    let beside = |cursor: &str, forward: bool| {
                        self.projection.cursor_beside(query, cursor, forward).ok()
                    };
                    match &query.cursor {
                        Some(PageCursor::After(cursor)) if page.more_before => {
                            if let Some(place) = beside(cursor, true) {
                                links.value("prev", &request.link(&PageCursor::Before(place)));
                            }
                        }
                        Some(PageCursor::Before(cursor)) if page.more_after => {
                            if let Some(place) = beside(cursor, false) {
                                links.value("next", &request.link(&PageCursor::After(place)));
                            }
                        }
                        _ => {}
                    }
                }
                members.raw("links", &links.finish());
            }
            if let Some(count) = page.count {
                let mut meta = ObjectWriter::new();
                meta.value("count", &count);
                members.raw("meta", &meta.finish());
            }
            members.members()
        };
        let (_, body) = document::fit_rows(&rows, self.budget(), tail);
        Ok(success(200, body, None))
    }

    fn changes(&self, grant: &Grant, payload: &[u8]) -> Result<Response, ApiError> {
        let request = query::parse_changes(query_text(payload)?)?;
        // A position past the head is a mistyped or foreign checkpoint: answering an empty page
        // would let the client skip every event up to it without knowing.
        if request.after > self.projection.checkpoint() {
            let head = self
                .projection
                .catch_up()
                .map_err(|error| projection_error("reading changes", &error))?;
            if request.after > head {
                return Err(ApiError::parameter(
                    "after",
                    format!(
                        "Position {} is past the head of the log, {head}: ask from a meta.position of an earlier reply, or from 0.",
                        request.after
                    ),
                ));
            }
        }
        let page = self
            .projection
            .changes(request.after, request.limit)
            .map_err(|error| projection_error("reading changes", &error))?;
        let rows: Vec<String> = page
            .calls
            .iter()
            .map(|call| self.resource(call, &request.read, grant))
            .collect();
        let tail = |kept: usize| -> String {
            // Cut short, the page continues just before the first call left out, and reports
            // only the deletions before it, so nothing is skipped.
            let (position, more, until) = match page.calls.get(kept) {
                Some(first_left_out) if kept < page.calls.len() => (
                    first_left_out.position.saturating_sub(1),
                    true,
                    first_left_out.position,
                ),
                _ => (page.next_after, page.more, u64::MAX),
            };
            let deleted: Vec<String> = page
                .deleted
                .iter()
                .filter(|deletion| deletion.position < until)
                .map(|deletion| {
                    let mut object = ObjectWriter::new();
                    object
                        .value("id", &deletion.id)
                        .value("deletedAt", &deletion.deleted_at.to_string());
                    object.finish()
                })
                .collect();
            let mut meta = ObjectWriter::new();
            meta.raw("deleted", &format!("[{}]", deleted.join(",")))
                .value("position", &position)
                .value("more", &more);
            let mut links = ObjectWriter::new();
            links.value("next", &request.next_link(position));
            let mut members = ObjectWriter::new();
            members
                .raw("links", &links.finish())
                .raw("meta", &meta.finish());
            members.members()
        };
        let (_, body) = document::fit_rows(&rows, self.budget(), tail);
        Ok(success(200, body, None))
    }

    /// A page of the log for a backup: its events after `after` as NDJSON lines (the form
    /// `callledger export` writes), as many as fit the reply, with the log's head.
    fn backup(&self, payload: &[u8]) -> Result<Response, ApiError> {
        let page = query::parse_log_page(query_text(payload)?)?;
        let log = self.commands.log();
        let head = log.head();
        if page.after > head {
            return Err(ApiError::parameter(
                "after",
                format!(
                    "Position {} is past the head of the log, {head}.",
                    page.after
                ),
            ));
        }
        let records = log
            .read_from(page.after, page.limit)
            .map_err(|error| projection_error("reading the log", &error.into()))?;
        let budget = self.budget();
        let mut body = Vec::new();
        let mut last = page.after;
        for record in records {
            let event = call_model::Event::decode(
                record.position,
                record.stream,
                record.version,
                &record.payload,
            )
            .map_err(|error| internal("decoding an event for a backup", &error))?;
            let line = event.to_json_bytes();
            // Always at least one event, so that a backup moves on.
            if !body.is_empty() && body.len() + line.len() + 1 > budget {
                break;
            }
            body.extend_from_slice(&line);
            body.push(b'\n');
            last = record.position;
        }
        Ok(Response {
            status: 200,
            headers: vec![
                (CONTENT_TYPE_HEADER.into(), NDJSON.into()),
                (HEAD_HEADER.into(), head.to_string()),
                (LAST_POSITION_HEADER.into(), last.to_string()),
            ],
            body,
        })
    }

    fn write(&self, grant: &Grant, request: &Request<'_>) -> Result<Response, ApiError> {
        let target = match &request.operation {
            Operation::Update(token) | Operation::Delete(token) => Some(parse_id(token)?),
            _ => None,
        };
        let (key_header, idempotency_key) = self.idempotency_key(request)?;
        let expected_version = match target {
            Some(_) => header(request.headers, IF_MATCH)
                .map(parse_if_match)
                .transpose()?,
            None => None,
        };
        let rights = Rights {
            voice: grant.allows(Scope::Voice),
        };
        // The call as it stands: an update is validated against it, so that members the writer
        // does not own, sent back unchanged from a `get`, pass; and the command is decided on it
        // rather than on a replay of its stream, where the log has not moved on since.
        let current = match target {
            Some(id) => {
                self.read_barrier()?;
                self.projection
                    .get(id)
                    .map_err(|error| projection_error("reading a call", &error))?
            }
            None => None,
        };
        let (action, occurred_at) = match (&request.operation, target) {
            (Operation::Delete(_), Some(id)) => (Action::Delete { id }, None),
            (operation, target) => {
                let document = parse_json(request.payload)?;
                let mode = match target {
                    Some(id) => WriteMode::Update(id),
                    None => WriteMode::Create,
                };
                let input = match &current {
                    Some(call) => check_update(&document, call, rights),
                    None => check_write(&document, mode, rights),
                }
                .map_err(|violations| ApiError::violations(&violations))?;
                let action = match (operation, target) {
                    (Operation::Update(_), Some(id)) => Action::Update {
                        id,
                        changes: input.changes,
                    },
                    _ => Action::Create(input.changes),
                };
                (action, input.occurred_at)
            }
        };
        let command = Command {
            action,
            actor: grant.actor.clone(),
            recorded_at: (self.clock)(),
            occurred_at,
        };
        let request_to_log = CommandRequest {
            command,
            expected_version,
            idempotency_key,
        };
        let outcome = self
            .commands
            .execute_seen(request_to_log, current)
            .map_err(|error| command_error(error, key_header))?;
        // Read-your-writes needs no wait here: a read sent after this reply waits at its
        // barrier for the projection to reach a head that holds this write.
        let mut response = match (&request.operation, &outcome.state) {
            (Operation::Delete(_), _) => Response {
                status: 204,
                headers: Vec::new(),
                body: Vec::new(),
            },
            (operation, CallState::Live(call)) => {
                let status = if *operation == Operation::Create {
                    201
                } else {
                    200
                };
                let body = self.single(&call.borrowed(), &ReadOptions::default(), grant);
                success(status, body, Some(call.version))
            }
            // A replayed create or update of a call deleted since answers as a get would.
            (_, _) => return Err(not_found_id(outcome.call_id)),
        };
        if outcome.replayed {
            response
                .headers
                .push((IDEMPOTENT_REPLAYED.into(), "true".into()));
        }
        Ok(response)
    }

    /// Read-your-writes: waits until the projection holds every write acknowledged before the
    /// call, here (the log's durable head) or, with [`ApiConfig::sync_reads`], by any instance
    /// of a shared log (`EventLog::sync`, one round trip). Writes do not wait for the
    /// projection, so the wait falls to the reads that come after them, and is nothing when the
    /// projection's follower ([`Api::catch_up`]) has kept up.
    fn read_barrier(&self) -> Result<(), ApiError> {
        let log = self.commands.log();
        let head = if self.config.sync_reads {
            log.sync()
                .map_err(|error| projection_error("syncing with the log", &error.into()))?
        } else {
            log.head()
        };
        self.projection
            .wait_for(head)
            .map_err(|error| projection_error("syncing with the log", &error))
    }

    /// The idempotency key and the header it came in.
    fn idempotency_key(
        &self,
        request: &Request<'_>,
    ) -> Result<(&'static str, Option<String>), ApiError> {
        let from_transport = match &request.source {
            Source::Producer(producer) => producer
                .message_id
                .as_ref()
                .map(|id| (id.header, id.value.trim())),
            Source::Api => None,
        };
        let from_header =
            header(request.headers, IDEMPOTENCY_KEY).map(|key| (IDEMPOTENCY_KEY, key));
        if let Some((name, key)) = from_transport.or(from_header) {
            call_commands::check_idempotency_key(key)
                .map_err(|error| command_error(error, name))?;
            return Ok((name, Some(key.to_owned())));
        }
        Ok((IDEMPOTENCY_KEY, None))
    }
}

fn success(status: u16, body: Vec<u8>, version: Option<u64>) -> Response {
    let mut headers = vec![(CONTENT_TYPE_HEADER.to_owned(), CONTENT_TYPE.to_owned())];
    if let Some(version) = version {
        headers.push((ETAG.to_owned(), version.to_string()));
    }
    Response {
        status,
        headers,
        body,
    }
}

fn not_found_id(id: CallId) -> ApiError {
    ApiError::not_found(&id.to_string())
}

/// A call id from a subject token: a canonical positive integer, else no call has it (404).
fn parse_id(token: &str) -> Result<CallId, ApiError> {
    query::parse_id(token).ok_or_else(|| ApiError::not_found(token))
}

/// `If-Match: 3` or `If-Match: "3"`.
fn parse_if_match(value: &str) -> Result<u64, ApiError> {
    let unquoted = value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(value);
    if !unquoted.is_empty() && unquoted.bytes().all(|byte| byte.is_ascii_digit()) {
        if let Ok(version) = unquoted.parse() {
            return Ok(version);
        }
    }
    Err(ApiError::header(
        IF_MATCH,
        format!("Expected the call's version (its ETag), e.g. If-Match: 3; got '{value}'."),
    ))
}

fn query_text(payload: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(payload)
        .map_err(|_| ApiError::bad_request("The query string is not valid UTF-8.", None))
}

/// The most headers a request may carry.
pub const MAX_HEADERS: usize = 64;
/// The longest header value accepted, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 8192;
/// The deepest a request document may nest (objects and arrays): a call document nests five
/// levels; JSON deeper than serde's own limit (128) is refused as not valid JSON.
pub const MAX_JSON_DEPTH: usize = 32;

/// Refuses more than [`MAX_HEADERS`] headers, or one longer than [`MAX_HEADER_VALUE_BYTES`].
fn check_headers(headers: &[(String, String)]) -> Result<(), ApiError> {
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::header(
            "",
            format!(
                "The request carries {} headers; the service accepts at most {MAX_HEADERS}.",
                headers.len()
            ),
        ));
    }
    match headers
        .iter()
        .find(|(_, value)| value.len() > MAX_HEADER_VALUE_BYTES)
    {
        Some((name, value)) => Err(ApiError::header(
            name,
            format!(
                "The header is {} bytes long; the service accepts at most {MAX_HEADER_VALUE_BYTES}.",
                value.len()
            ),
        )),
        None => Ok(()),
    }
}

fn parse_json(payload: &[u8]) -> Result<JsonIn<'_>, ApiError> {
    let payload = crate::json::without_byte_order_mark(payload);
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "The request body is empty: expected a JSON:API document {\"data\":{\"type\":\"call\",...}}.",
            Some(crate::ErrorSource::Pointer(String::new())),
        ));
    }
    let value = JsonIn::from_slice(payload).map_err(|error| {
        ApiError::bad_request(
            format!("The request body is not valid JSON: {error}."),
            Some(crate::ErrorSource::Pointer(String::new())),
        )
    })?;
    if value.depth() > MAX_JSON_DEPTH {
        return Err(ApiError::bad_request(
            format!("The document nests deeper than {MAX_JSON_DEPTH} levels."),
            Some(crate::ErrorSource::Pointer(String::new())),
        ));
    }
    Ok(value)
}

fn command_error(error: CommandError, key_header: &str) -> ApiError {
    match error {
        CommandError::Invalid(violations) => ApiError::violations(&violations),
        CommandError::NotFound(id) => not_found_id(id),
        CommandError::Conflict(Conflict::VersionMismatch { expected, actual }) => {
            ApiError::conflict(format!(
                "Version mismatch: If-Match expected version {expected}, but the call is at version {actual}."
            ))
        }
        CommandError::Conflict(Conflict::IdempotencyKeyReused) => ApiError::conflict(
            "The idempotency key was already used for a different request.",
        ),
        CommandError::Conflict(Conflict::StaleStateChange {
            current,
            occurred_at,
        }) => ApiError::conflict(format!(
            "Stale state change: it occurred at {occurred_at}, before the call's stateChangedAt {current}."
        )),
        CommandError::InvalidIdempotencyKey(reason) => ApiError::header(
            key_header,
            format!("The idempotency key is not valid: {reason}."),
        ),
        CommandError::Unavailable(cause) => {
            tracing::warn!(%cause, "the ledger is unavailable");
            ApiError::unavailable("The ledger cannot take the request now; retry later.")
        }
        other => internal("a command", &other),
    }
}
