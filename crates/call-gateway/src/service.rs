//! The request-reply API as a NATS micro service: one endpoint per operation in one queue group,
//! a semaphore that bounds the requests in flight (past it, 503 at once), gets the projection
//! can answer at once answered in the endpoint's loop and every other request on a blocking
//! thread, replies with the response's headers and JSON:API body, and the drain.
//!
//! Replies are published by hand because async-nats 0.51 answers `respond(Err(..))` with an
//! empty body, and the contract needs the JSON:API error body with the error headers. The
//! service's statistics (`$SRV.STATS`: requests, errors, last error, processing time) are still
//! kept by async-nats; see [`record_stats`] for how.

use std::time::Duration;

use async_nats::client::PublishErrorKind;
use async_nats::service::{self, endpoint::Endpoint, Service, ServiceExt};
use async_nats::{Client, HeaderMap, Subject};
use bytes::Bytes;
use call_api::{Api, ApiError, Operation, Response, Source};
use futures::StreamExt;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::error::{GatewayError, GatewayErrorKind};
use crate::{headers, stopped};

/// The micro service's name, as `$SRV.PING.call-ledger` and friends know it.
pub(crate) const SERVICE_NAME: &str = "call-ledger";

/// How long a reply may wait to be handed to the connection; a reply that cannot be sent in that
/// time is useless to its requester, and waiting longer would hold a permit.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the drain waits for the requests already buffered in an endpoint's subscription.
const ENDPOINT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The operations, each with its endpoint name and subject (below `<prefix>.api`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    List,
    Get,
    Create,
    Update,
    Delete,
    Changes,
    Backup,
}

const ENDPOINTS: [(Kind, &str, &str); 7] = [
    (Kind::List, "list", "list"),
    (Kind::Get, "get", "get.*"),
    (Kind::Create, "create", "create"),
    (Kind::Update, "update", "update.*"),
    (Kind::Delete, "delete", "delete.*"),
    (Kind::Changes, "changes", "changes"),
    (Kind::Backup, "backup", "backup"),
];

/// The subject a request for `operation` is sent to: `<prefix>.api.<endpoint>[.<id>]`.
pub(crate) fn api_subject(prefix: &str, operation: &Operation) -> String {
    let (kind, id) = match operation {
        Operation::List => (Kind::List, None),
        Operation::Get(id) => (Kind::Get, Some(id)),
        Operation::Create => (Kind::Create, None),
        Operation::Update(id) => (Kind::Update, Some(id)),
        Operation::Delete(id) => (Kind::Delete, Some(id)),
        Operation::Changes => (Kind::Changes, None),
        Operation::Backup => (Kind::Backup, None),
    };
    let name = ENDPOINTS
        .iter()
        .find(|(k, _, _)| *k == kind)
        .map_or("", |(_, name, _)| *name);
    match id {
        Some(id) => format!("{prefix}.api.{name}.{id}"),
        None => format!("{prefix}.api.{name}"),
    }
}

/// What every request handler shares.
#[derive(Clone)]
struct Handlers {
    client: Client,
    api: Api,
    permits: std::sync::Arc<Semaphore>,
    /// This instance's id in `$SRV.INFO` and `$SRV.STATS`, sent with every reply.
    instance: std::sync::Arc<str>,
}

/// The started service with its endpoints, not yet receiving.
pub(crate) struct Started {
    service: Service,
    endpoints: Vec<(Kind, Endpoint)>,
}

/// Starts the micro service and subscribes its endpoints (in `queue_group`, on
/// `<prefix>.api.*`). Requests wait in the subscriptions until [`serve`] runs.
pub(crate) async fn start(
    client: &Client,
    prefix: &str,
    queue_group: &str,
    api: &Api,
) -> Result<Started, GatewayError> {
    let service = client
        .service_builder()
        .description("call-ledger: the Outreach Call resource as an event-sourced ledger")
        .queue_group(queue_group)
        .stats_handler({
            let api = api.clone();
            move |endpoint, _| endpoint_data(&endpoint, &api)
        })
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| {
            GatewayError::with_source(GatewayErrorKind::Service, "cannot start the service", e)
        })?;
    let group = service.group(format!("{prefix}.api"));
    let mut endpoints = Vec::with_capacity(ENDPOINTS.len());
    for (kind, name, subject) in ENDPOINTS {
        let endpoint = group
            .endpoint_builder()
            .name(name)
            .add(subject)
            .await
            .map_err(|e| {
                GatewayError::with_source(
                    GatewayErrorKind::Service,
                    format!("cannot add the endpoint {prefix}.api.{subject}"),
                    e,
                )
            })?;
        endpoints.push((kind, endpoint));
    }
    tracing::info!(
        prefix,
        queue_group,
        endpoints = ENDPOINTS.len(),
        "call-ledger service started"
    );
    Ok(Started { service, endpoints })
}

/// The `data` of an endpoint in `$SRV.STATS`: for `get`, what its kept documents did
/// (`renderedGets`: hits, misses, entries, bytes and the budget in bytes); for `list`, the
/// indexes it reads (`indexes`: the live calls and [`index_memory`]) and the packs of views it
/// holds (`packCache`: packs, bytes and the budget in bytes); for `create`, how long
/// the storage under every write has been busy (`storage`: `logWriterBusyMs`, the log's writer
/// on its current group, and `catchUpBusyMs`, the projection's catch-up since its last chunk;
/// `null` while idle), which grows without bound when storage stops answering; `{}` for the
/// others.
fn endpoint_data(endpoint: &str, api: &Api) -> serde_json::Value {
    if endpoint == "create" {
        let (log, catch_up) = api.storage_busy();
        let millis = |busy: Option<std::time::Duration>| busy.map(|busy| busy.as_millis() as u64);
        return serde_json::json!({"storage": {
            "logWriterBusyMs": millis(log),
            "catchUpBusyMs": millis(catch_up),
        }});
    }
    if endpoint == "list" {
        let indexes = match api.index_memory() {
            Ok((live, by_index)) => serde_json::json!({
                "liveCalls": live,
                "memory": index_memory(&by_index),
            }),
            Err(error) => serde_json::json!({"error": error.to_string()}),
        };
        let packs = match api.held_packs() {
            Ok(held) => serde_json::json!({
                "packs": held.packs,
                "bytes": held.bytes,
                "budgetBytes": held.budget,
            }),
            Err(error) => serde_json::json!({"error": error.to_string()}),
        };
        return serde_json::json!({"indexes": indexes, "packCache": packs});
    }
    if endpoint != "get" {
        return serde_json::json!({});
    }
    let rendered = api.rendered_gets();
    serde_json::json!({"renderedGets": {
        "hits": rendered.hits,
        "misses": rendered.misses,
        "entries": rendered.entries,
        "bytes": rendered.bytes,
        "budgetBytes": rendered.budget,
    }})
}

/// The estimated heap memory of the indexes as `stats` and `$SRV.STATS` show it: the total,
/// then each index's, largest first.
pub fn index_memory(by_index: &[(String, usize)]) -> serde_json::Value {
    let mut sorted: Vec<&(String, usize)> = by_index.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut each = serde_json::Map::new();
    for (name, bytes) in sorted {
        each.insert(name.clone(), (*bytes).into());
    }
    serde_json::json!({
        "totalBytes": by_index.iter().map(|(_, bytes)| bytes).sum::<usize>(),
        "byIndex": each,
    })
}

/// Receives and answers requests until `stop`, then drains: stops the endpoints, answers what
/// was already buffered with 503, waits for the handlers in flight, and stops the service.
pub(crate) async fn serve(
    started: Started,
    client: Client,
    api: Api,
    max_in_flight: u32,
    stop: watch::Receiver<bool>,
) {
    let handlers = Handlers {
        client,
        api,
        permits: std::sync::Arc::new(Semaphore::new(max_in_flight as usize)),
        instance: started.service.info().await.id.into(),
    };
    let mut receivers = JoinSet::new();
    for (kind, endpoint) in started.endpoints {
        receivers.spawn(receive(kind, endpoint, handlers.clone(), stop.clone()));
    }
    while let Some(joined) = receivers.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "an endpoint's receive loop failed");
        }
    }
    // Every permit back means every handler has replied.
    match handlers.permits.acquire_many(max_in_flight).await {
        Ok(_all) => {}
        Err(error) => tracing::error!(%error, "cannot wait for the requests in flight"),
    }
    if let Err(error) = started.service.stop().await {
        tracing::warn!(%error, "cannot stop the service");
    }
    tracing::info!("call-ledger service stopped");
}

/// One endpoint's loop: hand each request to a handler, or answer 503 when none is free. The
/// loop never waits for a handler, so the subscription never backs up to the point where NATS
/// drops messages.
async fn receive(
    kind: Kind,
    mut endpoint: Endpoint,
    handlers: Handlers,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            request = endpoint.next() => match request {
                Some(request) => dispatch(kind, request, &handlers).await,
                // The connection was closed for good.
                None => return,
            },
        }
    }
    // Unsubscribing closes the subscription after what it already holds; that is answered
    // 503, so that no requester waits for a timeout.
    if let Err(error) = endpoint.stop().await {
        tracing::warn!(%error, ?kind, "cannot unsubscribe the endpoint");
    }
    let drain = async {
        while let Some(request) = endpoint.next().await {
            let response =
                ApiError::unavailable("The service is shutting down; retry the request.")
                    .to_response();
            reply(&handlers, request, response).await;
        }
    };
    if tokio::time::timeout(ENDPOINT_DRAIN_TIMEOUT, drain)
        .await
        .is_err()
    {
        tracing::warn!(?kind, "the endpoint did not close in time");
    }
}

/// Answers a get at once when the projection can (see [`Api::handle_at_once`]); otherwise starts
/// a handler for the request, or answers 503 when `max_in_flight` are already running.
///
/// A get answered at once is answered here, in the endpoint's loop, as an echo responder
/// would, and takes no permit: such gets run one after another, so they cannot pile up. A task
/// per get, with its wake-ups, cost more than the get itself (the gateway bench, quick runs:
/// 0.46 to 0.51 of the echo at 64 in flight with a task per get, 0.58 to 0.72 answered here).
async fn dispatch(kind: Kind, request: service::Request, handlers: &Handlers) {
    let operation = operation(kind, &request.message.subject);
    let request_headers = headers::to_pairs(request.message.headers.as_ref());
    if kind == Kind::Get {
        let at_once = handlers.api.handle_at_once(call_api::Request {
            operation: operation.clone(),
            headers: &request_headers,
            payload: &request.message.payload,
            source: Source::Api,
        });
        if let Some(response) = at_once {
            reply(handlers, request, response).await;
            return;
        }
    }
    match handlers.permits.clone().try_acquire_owned() {
        Ok(permit) => {
            tokio::spawn(handle(
                operation,
                request_headers,
                request,
                handlers.clone(),
                permit,
            ));
        }
        Err(_) => {
            tracing::debug!(?kind, "overloaded: answering 503");
            let response =
                ApiError::unavailable("Too many requests are in flight; retry the request.")
                    .to_response();
            reply(handlers, request, response).await;
        }
    }
}

/// The operation of a request on `subject`; the id is the subject's last token.
fn operation(kind: Kind, subject: &str) -> Operation {
    let id = || subject.rsplit('.').next().unwrap_or_default().to_string();
    match kind {
        Kind::List => Operation::List,
        Kind::Get => Operation::Get(id()),
        Kind::Create => Operation::Create,
        Kind::Update => Operation::Update(id()),
        Kind::Delete => Operation::Delete(id()),
        Kind::Changes => Operation::Changes,
        Kind::Backup => Operation::Backup,
    }
}

/// Runs the API on a blocking thread and replies; holds its permit until the reply is sent.
async fn handle(
    operation: Operation,
    request_headers: Vec<(String, String)>,
    request: service::Request,
    handlers: Handlers,
    permit: OwnedSemaphorePermit,
) {
    let api = handlers.api.clone();
    let payload = request.message.payload.clone();
    let handled = tokio::task::spawn_blocking(move || {
        api.handle(call_api::Request {
            operation,
            headers: &request_headers,
            payload: &payload,
            source: Source::Api,
        })
    })
    .await;
    let response = handled.unwrap_or_else(|error| {
        // `Api::handle` catches its own panics; this is the last line of defence.
        tracing::error!(%error, "request handler failed");
        internal_error()
    });
    reply(&handlers, request, response).await;
    drop(permit);
}

/// The generic 500 reply.
pub(crate) fn internal_error() -> Response {
    ApiError::internal().to_response()
}

/// Publishes the response (headers and body) to the request's reply subject and records it in
/// the service's statistics. A request without a reply subject is handled but not answered.
async fn reply(handlers: &Handlers, mut request: service::Request, mut response: Response) {
    let client = &handlers.client;
    if let Some(reply_to) = request.message.reply.clone() {
        let body = Bytes::from(std::mem::take(&mut response.body));
        let size = body.len();
        let mut sent = publish(handlers, &reply_to, &response, body).await;
        if let Err(PublishErrorKind::MaxPayloadExceeded) = sent {
            // `call-api` fits pages into the max payload; anything else that does not fit is
            // a bug, answered as one rather than left to time out.
            tracing::error!(
                size,
                max_payload = client.max_payload(),
                "a reply exceeds the server's max payload"
            );
            response = internal_error();
            let body = Bytes::from(std::mem::take(&mut response.body));
            sent = publish(handlers, &reply_to, &response, body).await;
        }
        if let Err(kind) = sent {
            tracing::warn!(error = %kind, "cannot send a reply");
        }
    } else {
        tracing::debug!(subject = %request.message.subject, "request without a reply subject");
    }
    record_stats(&mut request, &response).await;
}

/// Publishes the response's headers with `body` to `reply_to`, waiting at most
/// [`REPLY_TIMEOUT`].
async fn publish(
    handlers: &Handlers,
    reply_to: &Subject,
    response: &Response,
    body: Bytes,
) -> Result<(), PublishErrorKind> {
    let client = &handlers.client;
    let headers = headers::reply_headers(response, &handlers.instance);
    match tokio::time::timeout(
        REPLY_TIMEOUT,
        client.publish_with_headers(reply_to.clone(), headers, body),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.kind()),
        Err(_) => Err(PublishErrorKind::Send),
    }
}

/// Counts the reply in `$SRV.STATS` (requests, processing time, and for 4xx/5xx the error
/// count and last error), after the reply itself was sent.
///
/// async-nats keeps the statistics only in `service::Request::respond_with_headers`, which
/// counts an `Err` as an error but sends it with an empty body. So the reply goes out first,
/// by hand, and then `respond_with_headers` is called with the reply subject cleared: it
/// updates the statistics and its own publish is refused by the client before anything reaches
/// the wire (async-nats always rejects an empty subject, whatever `skip_subject_validation`
/// says). `stats_count_errors_and_replies_carry_bodies` pins this behaviour.
async fn record_stats(request: &mut service::Request, response: &Response) {
    request.message.reply = Some(Subject::from(""));
    let outcome = match response.error_title() {
        Some(title) => Err(service::error::Error {
            status: title.to_owned(),
            code: usize::from(response.status),
        }),
        None => Ok(Bytes::new()),
    };
    // The publish to the empty subject fails by design; see above.
    let _refused = request
        .respond_with_headers(outcome, HeaderMap::new())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_the_last_subject_token() {
        assert_eq!(
            operation(Kind::Get, "calls.api.get.42"),
            Operation::Get("42".into())
        );
        assert_eq!(
            operation(Kind::Delete, "x.y.api.delete.abc"),
            Operation::Delete("abc".into())
        );
        assert_eq!(operation(Kind::List, "calls.api.list"), Operation::List);
    }

    #[test]
    fn a_request_goes_to_the_subject_its_endpoint_serves() {
        for (operation, subject) in [
            (Operation::List, "calls.api.list"),
            (Operation::Get("7".into()), "calls.api.get.7"),
            (Operation::Create, "calls.api.create"),
            (Operation::Update("7".into()), "calls.api.update.7"),
            (Operation::Delete("7".into()), "calls.api.delete.7"),
            (Operation::Changes, "calls.api.changes"),
            (Operation::Backup, "calls.api.backup"),
        ] {
            let sent = api_subject("calls", &operation);
            assert_eq!(sent, subject);
            let kind = ENDPOINTS
                .iter()
                .find(|(_, _, pattern)| {
                    let pattern = format!("calls.api.{pattern}");
                    pattern == sent
                        || pattern
                            .strip_suffix('*')
                            .is_some_and(|p| sent.starts_with(p))
                })
                .map(|(kind, _, _)| *kind)
                .expect("an endpoint serves it");
            assert_eq!(super::operation(kind, &sent), operation);
        }
    }
}
