//! The Calls API without its transport: a [`Request`] in (an operation, headers and a payload), a
//! [`Response`] out (a status, headers and a JSON:API body). In between it authorizes the caller
//! against its bearer token's scopes, parses the query string or the write document, runs the
//! request against the ledger ([`call_commands::CommandService`] for writes,
//! [`call_projections::Projection`] for reads) and builds the JSON:API document or error that
//! answers it.
//!
//! API boundary: the gateway maps a NATS message to a [`Request`] and the [`Response`] back to a
//! NATS reply (its headers, and ack, nak or term for a JetStream command, from
//! [`Response::outcome`]); the CLI uses the same code offline. This crate knows nothing of NATS
//! (no NATS header name is written here; the transport names its own headers in
//! [`Producer`]) and has no async: [`Api::handle`] blocks (sled underneath), so async callers run
//! it on a blocking thread. Outreach's error ids and titles live here only. The wire contract
//! is documented in docs/api.md.

mod api;
mod auth;
mod document;
mod error;
pub mod json;
pub mod query;
pub mod rate;
mod rendered;

#[cfg(test)]
mod tests;

pub use api::{
    Api, HEAD_HEADER, LAST_POSITION_HEADER, MAX_HEADERS, MAX_HEADER_VALUE_BYTES, MAX_JSON_DEPTH,
    NDJSON,
};
pub use auth::{ConfigError, Scope, TokenStore};
pub use error::{ApiError, ErrorObject, ErrorSource, MAX_ERROR_OBJECTS};
pub use rendered::{RenderedGetsStats, DEFAULT_RENDERED_GETS_BYTES};

use call_model::Timestamp;

/// The media type of every JSON:API document, request or reply.
pub const CONTENT_TYPE: &str = "application/vnd.api+json";

/// The names of the headers the API reads and writes (docs/api.md), each written here once;
/// the rate limit's are in [`rate`]. Names compare case-insensitively.
pub mod header_names {
    /// `Bearer <token>`.
    pub const AUTHORIZATION: &str = "Authorization";
    /// A write's idempotency key.
    pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
    /// The version an update or delete expects.
    pub const IF_MATCH: &str = "If-Match";
    /// The body's media type.
    pub const CONTENT_TYPE: &str = "Content-Type";
    /// The call's version in a reply.
    pub const ETAG: &str = "ETag";
    /// `true` on the reply to a write replayed from its idempotency key.
    pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";
    /// Seconds to wait before retrying a 429 or 503.
    pub const RETRY_AFTER: &str = "Retry-After";
}

/// What a request asks for. Ids are the raw subject tokens: the API, not the transport, decides
/// that a token which is not a positive integer names no call (404).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `calls.api.list`: the payload is the query string.
    List,
    /// `calls.api.get.<id>`: the payload is an optional query string.
    Get(String),
    /// `calls.api.create`: the payload is the JSON:API document.
    Create,
    /// `calls.api.update.<id>`: the payload is the JSON:API document of the changes.
    Update(String),
    /// `calls.api.delete.<id>`: the payload is ignored.
    Delete(String),
    /// `calls.api.changes`: the payload is `after=<position>&limit=<n>`.
    Changes,
    /// `calls.api.backup`: the payload is `after=<position>&limit=<n>`; the reply is the log's
    /// events after the position as NDJSON, as `callledger export` writes them (`calls.admin`).
    Backup,
}

/// Where a request came from, which decides how it is authorized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Request-reply: authorized by the `Authorization: Bearer <token>` header.
    Api,
    /// A producer's command, already authorized by the transport (NATS subject permissions): it
    /// holds every scope including `calls.voice`.
    Producer(Producer),
}

/// What the transport says of a producer's command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Producer {
    /// The producer's name, the command's actor; without one the actor is `producer`.
    pub name: Option<Attested>,
    /// The transport's id of the message, the command's idempotency key (before any
    /// `Idempotency-Key` header).
    pub message_id: Option<Attested>,
}

/// A value the transport read, with the name of the header it came in, so that an error about
/// it names what the sender wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attested {
    /// The value.
    pub value: String,
    /// The transport's name for where it came from, e.g. a header name.
    pub header: &'static str,
}

/// One request.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// What it asks for.
    pub operation: Operation,
    /// Its headers; names compare case-insensitively.
    pub headers: &'a [(String, String)],
    /// Its payload.
    pub payload: &'a [u8],
    /// Where it came from.
    pub source: Source,
}

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code (200, 201, 204 or an error code).
    pub status: u16,
    /// Headers: `Content-Type`, and on success `ETag` (get, create, update) and
    /// `Idempotent-Replayed` (a replayed write).
    pub headers: Vec<(String, String)>,
    /// The JSON:API document; empty for 204.
    pub body: Vec<u8>,
}

/// What a reply means for whoever sent the request, whatever carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done (2xx).
    Ok,
    /// Refused for what was sent (4xx but 409): the same request always gets the same answer.
    Rejected,
    /// Lost to another writer (409: a version, a reused idempotency key, a stale state change):
    /// final for this request, which a writer may re-read and decide again.
    Conflict,
    /// Not served now (5xx, 408, 429): the same request may succeed later.
    Unavailable,
}

impl Response {
    /// The first header of this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Whether the status is an error (400 or above).
    pub fn is_error(&self) -> bool {
        self.status >= 400
    }

    /// What the reply means: the one mapping from a status to ok, rejected, conflict or
    /// unavailable.
    pub fn outcome(&self) -> Outcome {
        match self.status {
            200..=299 => Outcome::Ok,
            409 => Outcome::Conflict,
            408 | 429 => Outcome::Unavailable,
            400..=499 => Outcome::Rejected,
            _ => Outcome::Unavailable,
        }
    }

    /// The title of an error reply (Outreach's name for its status), for transports that carry
    /// it beside the status; `None` for a success.
    pub fn error_title(&self) -> Option<&'static str> {
        self.is_error().then(|| error::status_title(self.status))
    }
}

/// The first header of this name (case-insensitive), trimmed.
pub(crate) fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim())
}

/// How the API is set up; built by the binary and passed in.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// The known bearer tokens; `None` leaves the API open (see docs/api.md).
    pub tokens: Option<TokenStore>,
    /// The largest payload the transport carries, in bytes (the NATS server's `max_payload`):
    /// larger requests are refused with 413 and collection pages are cut short to fit it.
    /// 0 means no limit.
    pub max_payload: usize,
    /// The subject prefix, `calls` by default, for `links.self` = `<prefix>.api.get.<id>`.
    pub self_prefix: String,
    /// Whether every read first brings the projection up to the log of record's head
    /// (`EventLog::sync`): with a log shared by several instances, so that a write answered by
    /// any instance is seen by a read sent afterwards to this one. One round trip per read.
    pub sync_reads: bool,
    /// The budget of requests per caller and window, shared with the other instances through
    /// the transport (see [`rate`]); `None` admits everything.
    pub rate_limiter: Option<std::sync::Arc<rate::RateLimiter>>,
    /// The bytes of get documents kept rendered, for gets of calls unchanged since (see
    /// `rendered.rs`); [`DEFAULT_RENDERED_GETS_BYTES`] unless told, 0 keeps none.
    pub rendered_gets_bytes: usize,
}

/// The subject prefix when none is configured: `links.self` is `calls.api.get.<id>`.
pub const DEFAULT_SUBJECT_PREFIX: &str = "calls";

impl ApiConfig {
    /// An API open to every caller (no tokens, no rate limit) on [`DEFAULT_SUBJECT_PREFIX`],
    /// whose reads do not sync first and which keeps [`DEFAULT_RENDERED_GETS_BYTES`] of get
    /// documents: what an offline command, a bench or a test serves. `max_payload` is
    /// [`ApiConfig::max_payload`].
    pub fn open(max_payload: usize) -> ApiConfig {
        ApiConfig {
            tokens: None,
            max_payload,
            self_prefix: DEFAULT_SUBJECT_PREFIX.to_owned(),
            sync_reads: false,
            rate_limiter: None,
            rendered_gets_bytes: DEFAULT_RENDERED_GETS_BYTES,
        }
    }
}

/// The clock the API stamps commands with; the edge supplies it so that tests can fix it.
pub type Clock = fn() -> Timestamp;
