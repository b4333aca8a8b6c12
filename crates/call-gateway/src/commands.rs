//! Producers' commands over JetStream: the `CALL_COMMANDS` stream and its durable pull consumer
//! `call-ledger`, each command run through the API as [`Source::Producer`], and the verdict told
//! to JetStream: acked once its events are durable, terminated and republished to
//! `CALL_REJECTED` when it can never succeed, nak'ed with a growing delay when the failure is
//! transient.
//!
//! Nothing here loses a command: a message is acked only after `Api::handle` returned a success
//! (which it does only once the events are on disk), or after its rejection was stored in
//! `CALL_REJECTED`. A crash in between means a redelivery, and the idempotency key makes the
//! redelivery a no-op.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::{self, stream, AckKind};
use call_api::header_names::{IDEMPOTENCY_KEY, RETRY_AFTER};
use call_api::{Api, ApiError, Attested, Operation, Outcome, Producer, Response, Source};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::error::{GatewayError, GatewayErrorKind};
use crate::names::JetStreamNames;
use crate::{headers, sleep_or_stop, stopped, Backoff};

/// How long JetStream waits for an ack before it redelivers.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// The idle heartbeat of the pull requests; two missed ones mean the consumer is recreated.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// The header that tells a rejected command's status.
const ERROR_CODE_HEADER: &str = "Call-Ledger-Error-Code";

/// What the command consumer needs.
#[derive(Clone)]
pub(crate) struct Commands {
    pub(crate) js: jetstream::Context,
    pub(crate) api: Api,
    pub(crate) prefix: String,
    pub(crate) names: JetStreamNames,
    pub(crate) duplicate_window: Duration,
    pub(crate) max_in_flight: u32,
}

/// Consumes commands until `stop`; then waits until every command taken is acked, terminated
/// or nak'ed. Survives any NATS failure: the consumer is recreated after a growing pause.
pub(crate) async fn run(commands: Commands, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(commands.max_in_flight as usize));
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    'session: loop {
        let opened = tokio::select! {
            biased;
            () = stopped(&mut stop) => break 'session,
            opened = open(&commands) => opened,
        };
        let (mut messages, key_base) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                tracing::warn!(%error, "cannot consume producers' commands; retrying");
                if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                    break 'session;
                }
                continue 'session;
            }
        };
        tracing::info!(
            stream = %commands.names.commands,
            consumer = %commands.names.consumer,
            "consuming producers' commands"
        );
        loop {
            // A permit first, so that a message is only taken when it can be started.
            let permit = tokio::select! {
                biased;
                () = stopped(&mut stop) => break 'session,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_closed) => break 'session,
                },
            };
            let next = tokio::select! {
                biased;
                () = stopped(&mut stop) => break 'session,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    backoff.reset();
                    tokio::spawn(process(commands.clone(), message, key_base.clone(), permit));
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "the command consumer failed; recreating it");
                    if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                        break 'session;
                    }
                    continue 'session;
                }
                None => {
                    tracing::warn!("the command consumer ended; recreating it");
                    if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                        break 'session;
                    }
                    continue 'session;
                }
            }
        }
    }
    if let Err(error) = permits.acquire_many(commands.max_in_flight).await {
        tracing::error!(%error, "cannot wait for the commands in flight");
    }
    tracing::info!("command consumer stopped");
}

/// Ensures the streams and the consumer, and starts pulling. Also returns the base of the
/// idempotency keys given to commands without one: the stream's name and creation time, so
/// that a key stays the same across redeliveries and differs if the stream is ever recreated.
async fn open(commands: &Commands) -> Result<(pull::Stream, String), GatewayError> {
    let js = &commands.js;
    let names = &commands.names;
    js.get_or_create_stream(stream::Config {
        name: names.rejected.clone(),
        subjects: vec![format!("{}.rejected.>", commands.prefix)],
        storage: stream::StorageType::File,
        duplicate_window: commands.duplicate_window,
        ..Default::default()
    })
    .await
    .map_err(|e| jetstream_error(format!("cannot ensure the stream {}", names.rejected), e))?;
    let stream = js
        .get_or_create_stream(stream::Config {
            name: names.commands.clone(),
            subjects: vec![format!("{}.commands.>", commands.prefix)],
            storage: stream::StorageType::File,
            duplicate_window: commands.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(|e| jetstream_error(format!("cannot ensure the stream {}", names.commands), e))?;
    let created: String = stream
        .cached_info()
        .created
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let key_base = format!("jetstream:{}:{created}", names.commands);
    let consumer: PullConsumer = stream
        .get_or_create_consumer(
            &names.consumer,
            pull::Config {
                durable_name: Some(names.consumer.clone()),
                description: Some("call-ledger applies producers' commands".to_string()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                // Unlimited redeliveries: a transient failure never drops a command.
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| {
            jetstream_error(format!("cannot ensure the consumer {}", names.consumer), e)
        })?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(commands.max_in_flight.clamp(1, 256) as usize)
        .heartbeat(HEARTBEAT)
        .messages()
        .await
        .map_err(|e| jetstream_error("cannot pull commands".to_string(), e))?;
    Ok((messages, key_base))
}

/// A JetStream failure with what was being done.
pub(crate) fn jetstream_error(
    what: String,
    error: impl std::error::Error + Send + Sync + 'static,
) -> GatewayError {
    GatewayError::with_source(GatewayErrorKind::JetStream, what, error)
}

/// What to tell JetStream about a command, by the API's outcome.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Done: ack.
    Done,
    /// It can never succeed: republish to `CALL_REJECTED`, then terminate.
    Rejected,
    /// It may succeed later: nak with a delay.
    Retry,
}

fn verdict(outcome: Outcome) -> Verdict {
    match outcome {
        Outcome::Ok => Verdict::Done,
        // A conflict is final for the command as sent: a producer that means "whatever the
        // version" sends no If-Match, and then the API re-decides by itself.
        Outcome::Rejected | Outcome::Conflict => Verdict::Rejected,
        Outcome::Unavailable => Verdict::Retry,
    }
}

/// The delay before the next delivery of a command that failed `delivered` times: 1 s, 2 s,
/// 4 s, ... up to 30 s.
fn nak_delay(delivered: i64) -> Duration {
    let exponent = u32::try_from(delivered.saturating_sub(1).clamp(0, 5)).unwrap_or(5);
    Duration::from_secs((1u64 << exponent).min(30))
}

/// The operation of a command subject, or `None` for a subject that names none.
fn command_operation(prefix: &str, subject: &str) -> Option<Operation> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix(".commands.")?;
    let valid_id = |id: &str| !id.is_empty() && !id.contains('.');
    match rest.split_once('.') {
        None if rest == "create" => Some(Operation::Create),
        Some(("update", id)) if valid_id(id) => Some(Operation::Update(id.to_string())),
        Some(("delete", id)) if valid_id(id) => Some(Operation::Delete(id.to_string())),
        _ => None,
    }
}

/// `<prefix>.rejected.<the rest of the command's subject>`.
fn rejected_subject(prefix: &str, subject: &str) -> String {
    let rest = subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(".commands."))
        .unwrap_or(subject);
    format!("{prefix}.rejected.{rest}")
}

/// Handles one command and tells JetStream the verdict; holds its permit until then.
async fn process(
    commands: Commands,
    message: jetstream::Message,
    key_base: String,
    permit: OwnedSemaphorePermit,
) {
    let subject = message.subject.to_string();
    let (delivered, sequence) = match message.info() {
        Ok(info) => (info.delivered, Some(info.stream_sequence)),
        Err(error) => {
            tracing::warn!(%error, %subject, "a command without JetStream metadata");
            (1, None)
        }
    };
    let original_headers = headers::to_pairs(message.headers.as_ref());
    let mut request_headers = original_headers.clone();
    let derived_key = sequence.map(|sequence| format!("{key_base}:{sequence}"));
    let message_id = headers::find(&original_headers, headers::MSG_ID).map(|value| Attested {
        value: value.to_owned(),
        header: headers::MSG_ID,
    });
    let producer_name = headers::find(&original_headers, headers::PRODUCER).map(|value| Attested {
        value: value.to_owned(),
        header: headers::PRODUCER,
    });
    let has_key =
        message_id.is_some() || headers::find(&original_headers, IDEMPOTENCY_KEY).is_some();
    if let (false, Some(key)) = (has_key, &derived_key) {
        // Without a key of its own, a redelivery would append again.
        request_headers.push((IDEMPOTENCY_KEY.to_string(), key.clone()));
    }

    let response = match command_operation(&commands.prefix, &subject) {
        Some(operation) => {
            let api = commands.api.clone();
            let payload = message.payload.clone();
            tokio::task::spawn_blocking(move || {
                api.handle(call_api::Request {
                    operation,
                    headers: &request_headers,
                    payload: &payload,
                    source: Source::Producer(Producer {
                        name: producer_name,
                        message_id,
                    }),
                })
            })
            .await
            .unwrap_or_else(|error| {
                tracing::error!(%error, "command handler failed");
                crate::service::internal_error()
            })
        }
        None => ApiError::no_such_operation(format!(
            "{subject} names no command; publish to {p}.commands.create, \
             {p}.commands.update.<id> or {p}.commands.delete.<id>",
            p = commands.prefix
        ))
        .to_response(),
    };

    let verdict = verdict(response.outcome());
    tracing::debug!(%subject, status = response.status, delivered, ?verdict, "command handled");
    match verdict {
        Verdict::Done => {
            if let Err(error) = message.double_ack().await {
                // The command is applied; a redelivery is answered from its idempotency key.
                tracing::warn!(%error, %subject, "cannot ack a command");
            }
        }
        Verdict::Rejected => {
            let rejected = reject(
                &commands,
                &subject,
                &original_headers,
                derived_key.as_deref(),
                &message.payload,
                &response,
            )
            .await;
            match rejected {
                Ok(()) => {
                    tracing::info!(%subject, status = response.status, "command rejected");
                    if let Err(error) = message.ack_with(AckKind::Term).await {
                        tracing::warn!(%error, %subject, "cannot terminate a rejected command");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, %subject, "cannot store a rejected command; retrying");
                    nak(&message, &subject, nak_delay(delivered)).await;
                }
            }
        }
        Verdict::Retry => {
            // Past its producer's rate limit a command waits for the window to end; never
            // refused.
            let delay = match response.status {
                429 => response
                    .header(RETRY_AFTER)
                    .and_then(|secs| secs.parse().ok())
                    .map_or(nak_delay(delivered), Duration::from_secs),
                _ => nak_delay(delivered),
            };
            tracing::warn!(%subject, status = response.status, delivered, ?delay, "command not applied now; retrying later");
            nak(&message, &subject, delay).await;
        }
    }
    drop(permit);
}

async fn nak(message: &jetstream::Message, subject: &str, delay: Duration) {
    if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::warn!(%error, %subject, "cannot nak a command; it is redelivered after the ack wait");
    }
}

/// Publishes the refused command to `CALL_REJECTED` and waits until it is stored.
async fn reject(
    commands: &Commands,
    subject: &str,
    original_headers: &[(String, String)],
    derived_key: Option<&str>,
    payload: &[u8],
    response: &Response,
) -> Result<(), GatewayError> {
    let original_headers = redact(original_headers);
    let mut document = rejected_document(subject, &original_headers, payload, response);
    let mut body = serde_json::to_vec(&document).unwrap_or_default();
    // A command near the max payload does not fit again with the errors around it.
    let max_payload = commands.js.client().max_payload();
    if body.len() + 4096 > max_payload {
        tracing::warn!(%subject, size = payload.len(), "a rejected command is too large to keep its payload");
        document["command"]["payload"] = Value::Null;
        document["command"]["payloadOmitted"] = json!(payload.len());
        body = serde_json::to_vec(&document).unwrap_or_default();
    }

    // The NATS headers of the copy: the originals, less those that would steer JetStream on
    // the way into CALL_REJECTED (expectations, rollups, TTLs), plus the status. The
    // JSON document above keeps all of them.
    let mut pairs: Vec<(&str, &str)> = original_headers
        .iter()
        .filter(|(name, _)| {
            !headers::is_nats_header(name)
                || name.eq_ignore_ascii_case(headers::MSG_ID)
                || name.eq_ignore_ascii_case(headers::PRODUCER)
        })
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    if headers::find(&original_headers, headers::MSG_ID).is_none() {
        // Makes a second rejection of the same message (after a redelivery) a duplicate.
        if let Some(key) = derived_key {
            pairs.push((headers::MSG_ID, key));
        }
    }
    let status = response.status.to_string();
    pairs.push((ERROR_CODE_HEADER, &status));
    let header_map = headers::to_header_map(pairs.iter().copied()).map_err(|(name, _)| {
        GatewayError::new(
            GatewayErrorKind::JetStream,
            format!("header {name:?} cannot be copied"),
        )
    })?;
    let target = rejected_subject(&commands.prefix, subject);
    let ack = commands
        .js
        .publish_with_headers(target.clone(), header_map, body.into())
        .await
        .map_err(|e| {
            GatewayError::with_source(
                GatewayErrorKind::JetStream,
                format!("cannot publish to {target}"),
                e,
            )
        })?;
    ack.await.map_err(|e| {
        GatewayError::with_source(
            GatewayErrorKind::JetStream,
            format!("{} did not store {target}", commands.names.rejected),
            e,
        )
    })?;
    Ok(())
}

/// The headers with the value of `Authorization` hidden: a bearer token must not be copied
/// to a stream others read.
fn redact(pairs: &[(String, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| {
            if name.eq_ignore_ascii_case("authorization") {
                (name.clone(), "[redacted]".to_string())
            } else {
                (name.clone(), value.clone())
            }
        })
        .collect()
}

/// `{"command":{"subject","headers","payload"},"errors":[...]}`: the payload as JSON when it
/// is JSON, else as a string; a header with several values as an array.
fn rejected_document(
    subject: &str,
    original_headers: &[(String, String)],
    payload: &[u8],
    response: &Response,
) -> Value {
    let mut header_object = Map::new();
    for (name, value) in original_headers {
        match header_object.get_mut(name) {
            None => {
                header_object.insert(name.clone(), Value::String(value.clone()));
            }
            Some(Value::Array(values)) => values.push(Value::String(value.clone())),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, Value::String(value.clone())]);
            }
        }
    }
    let payload = serde_json::from_slice::<Value>(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()));
    let errors = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|body| body.get("errors").cloned())
        .unwrap_or_else(|| json!([]));
    json!({
        "command": {
            "subject": subject,
            "headers": header_object,
            "payload": payload,
        },
        "errors": errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_subjects_name_operations() {
        assert_eq!(
            command_operation("calls", "calls.commands.create"),
            Some(Operation::Create)
        );
        assert_eq!(
            command_operation("calls", "calls.commands.update.7"),
            Some(Operation::Update("7".into()))
        );
        assert_eq!(
            command_operation("calls", "calls.commands.delete.x"),
            Some(Operation::Delete("x".into()))
        );
        assert_eq!(command_operation("calls", "calls.commands.update"), None);
        assert_eq!(
            command_operation("calls", "calls.commands.update.7.8"),
            None
        );
        assert_eq!(command_operation("calls", "calls.commands.create.7"), None);
        assert_eq!(
            command_operation("calls", "calls.commands.frobnicate"),
            None
        );
        assert_eq!(command_operation("calls", "callsx.commands.create"), None);
        assert_eq!(
            rejected_subject("calls", "calls.commands.update.7"),
            "calls.rejected.update.7"
        );
    }

    #[test]
    fn verdicts_and_delays() {
        let of = |status: u16| {
            verdict(
                Response {
                    status,
                    headers: Vec::new(),
                    body: Vec::new(),
                }
                .outcome(),
            )
        };
        assert_eq!(of(201), Verdict::Done);
        assert_eq!(of(204), Verdict::Done);
        for status in [400, 404, 409, 413, 422] {
            assert_eq!(of(status), Verdict::Rejected);
        }
        for status in [500, 503, 429] {
            assert_eq!(of(status), Verdict::Retry);
        }
        assert_eq!(nak_delay(1), Duration::from_secs(1));
        assert_eq!(nak_delay(3), Duration::from_secs(4));
        assert_eq!(nak_delay(100), Duration::from_secs(30));
        assert_eq!(nak_delay(-5), Duration::from_secs(1));
    }

    #[test]
    fn the_rejected_document_keeps_the_command() {
        let response = ApiError {
            status: 422,
            errors: vec![call_api::ErrorObject {
                id: "validationError",
                title: "Validation Error",
                detail: "no".into(),
                source: None,
            }],
        }
        .to_response();
        let headers = vec![
            (headers::MSG_ID.to_string(), "m1".to_string()),
            ("X-Many".to_string(), "a".to_string()),
            ("X-Many".to_string(), "b".to_string()),
        ];
        let document = rejected_document(
            "calls.commands.create",
            &headers,
            br#"{"data":1}"#,
            &response,
        );
        assert_eq!(document["command"]["payload"], json!({"data": 1}));
        assert_eq!(document["command"]["headers"]["X-Many"], json!(["a", "b"]));
        assert_eq!(document["errors"][0]["id"], "validationError");
        let document = rejected_document("calls.commands.create", &[], b"not json", &response);
        assert_eq!(document["command"]["payload"], "not json");
        let redacted = redact(&[("authorization".into(), "Bearer x".into())]);
        assert_eq!(redacted[0].1, "[redacted]");
    }
}
