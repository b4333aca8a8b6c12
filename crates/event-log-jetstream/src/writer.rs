//! The writer: appends of this instance, decided in batches against the replica and published
//! pipelined, each fenced so that none is stored on stale knowledge.
//!
//! # Why a batch is safe
//! The appends waiting when the writer wakes are decided in order against the replica at head
//! `h` plus the batch's earlier appends (an overlay), and published without waiting for each
//! other's acks: the first with `Nats-Expected-Last-Sequence: h`, each next one with
//! `Nats-Expected-Last-Sequence: h + i` *and* `Nats-Expected-Last-Msg-Id` of the one before it
//! (every record carries a unique `Nats-Msg-Id`). JetStream stores an append only if the
//! stream's last record is exactly the one its decision assumed, so if one is refused (another
//! instance wrote in between) every later one of the batch is refused too: the sequence check
//! alone would let one through when exactly one foreign record took the refused one's place,
//! the message-id check does not. Decisions are final up to the first refusal; from there on
//! the appends (refused, and those answered from the overlay without publishing) are decided
//! again once the replica has caught up.
//!
//! A record whose ack does not come (a timeout, a lost connection) has an unknown outcome; its
//! caller gets an error and retries with its idempotency key, as with any store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use event_log::{
    check_expected, check_restored, replay, Append, AppendError, Appended, LogError, Position,
    StreamId, StreamTarget, Version,
};
use tokio::sync::{mpsc, oneshot};

use crate::replica::{Replica, Stored};
use crate::{storage, to_hex, FINGERPRINT_HEADER, KEY_HEADER, STREAM_HEADER};

/// JetStream's fencing headers, and its message id.
const EXPECTED_LAST_SEQUENCE: &str = "Nats-Expected-Last-Sequence";
const EXPECTED_LAST_MSG_ID: &str = "Nats-Expected-Last-Msg-Id";
const MSG_ID: &str = "Nats-Msg-Id";

/// The most appends decided and published as one batch.
const MAX_BATCH: usize = 256;
/// Appends waiting for the writer at most; past it `append` waits for room.
pub(crate) const QUEUE: usize = 1024;

/// One caller's append and where its answer goes.
pub(crate) struct Job {
    pub(crate) append: Append,
    pub(crate) answer: oneshot::Sender<Result<Appended, AppendError>>,
}

/// What the writer needs.
pub(crate) struct Writer {
    pub(crate) js: jetstream::Context,
    pub(crate) replica: Arc<Replica>,
    pub(crate) subject_prefix: String,
    pub(crate) stream_name: String,
    pub(crate) timeout: Duration,
    /// This engine's unique prefix of message ids.
    pub(crate) id_prefix: String,
    pub(crate) next_id: u64,
}

/// What the batch's earlier appends would change, for deciding the later ones.
#[derive(Default)]
struct Overlay {
    versions: HashMap<StreamId, Version>,
    keys: HashMap<String, (Appended, [u8; 32])>,
    allocated: StreamId,
}

/// A decision: answered without publishing, or to publish at a position.
enum Decision {
    Answer(Result<Appended, AppendError>),
    Publish(Appended),
}

impl Writer {
    /// Runs until every sender is gone.
    pub(crate) async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        loop {
            if batch.is_empty() {
                match jobs.recv().await {
                    Some(job) => batch.push(job),
                    None => return,
                }
            }
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch = self.write(batch).await;
        }
    }

    /// Decides and publishes `batch`; answers what is settled and returns the appends to decide
    /// again (after the replica caught up with what another writer stored).
    async fn write(&mut self, batch: Vec<Job>) -> Vec<Job> {
        let head = self.replica.head();
        let mut overlay = Overlay {
            allocated: self.replica.streams_allocated(),
            ..Overlay::default()
        };
        let mut decided = Vec::with_capacity(batch.len());
        let mut next_position = head + 1;
        for job in batch {
            let decision = match self.decide(&job.append, &overlay, next_position) {
                Ok(Decision::Publish(appended)) => {
                    overlay
                        .versions
                        .insert(appended.stream, appended.last_version);
                    overlay.allocated = overlay.allocated.max(appended.stream);
                    if let Some(idempotency) = &job.append.idempotency {
                        overlay
                            .keys
                            .insert(idempotency.key.clone(), (appended, idempotency.fingerprint));
                    }
                    next_position += 1;
                    Decision::Publish(appended)
                }
                Ok(answer) => answer,
                Err(error) => Decision::Answer(Err(error)),
            };
            decided.push((job, decision));
        }

        // Publish every record without waiting, each fenced on the one before it.
        let mut sent = Vec::with_capacity(decided.len());
        let mut previous_id: Option<String> = None;
        for (job, decision) in decided {
            let plan = match decision {
                Decision::Answer(answer) => Plan::Answer(answer),
                Decision::Publish(appended) => {
                    let id = format!("{}-{}", self.id_prefix, self.next_id);
                    self.next_id += 1;
                    let headers = self.headers(&job.append, &appended, &id, previous_id.as_deref());
                    previous_id = Some(id);
                    let subject = format!("{}.{}", self.subject_prefix, appended.stream);
                    let body = Bytes::from(job.append.payloads[0].clone());
                    let ack = self.js.publish_with_headers(subject, headers, body).await;
                    Plan::Sent(appended, ack)
                }
            };
            sent.push((job, plan));
        }

        // Settle in order. An answer given without publishing (a conflict, an unknown stream)
        // may rest on a replica that is behind the stream; it stands once a record published
        // after it is stored (the stream then held nothing this writer did not know), or once
        // the stream's last sequence is seen to be what the writer knew.
        let mut settled = Vec::with_capacity(sent.len());
        let mut unconfirmed = Vec::new();
        let mut again = Vec::new();
        // A fence refusal refuses every later record of the batch (each is chained on the one
        // before); a record of unknown outcome does not, so later acks are still read, but
        // answers given from the overlay after it are decided again.
        let mut refused = false;
        let mut uncertain = false;
        let mut known = head;
        // This instance's records the stream acknowledged, in sequence order.
        let mut own = Vec::new();
        for (job, plan) in sent {
            if refused {
                again.push(job);
                continue;
            }
            match plan {
                Plan::Answer(_) if uncertain => again.push(job),
                Plan::Answer(answer) if needs_confirmation(&answer) => {
                    unconfirmed.push((job, answer));
                }
                Plan::Answer(answer) => settled.push((job, answer)),
                Plan::Sent(_, Err(error)) => {
                    uncertain = true;
                    settled.push((job, Err(self.publish_error(error))));
                }
                Plan::Sent(appended, Ok(ack)) => {
                    match tokio::time::timeout(self.timeout, ack).await {
                        Ok(Ok(ack)) if ack.sequence == appended.last_position => {
                            known = ack.sequence;
                            own.push(Stored {
                                sequence: ack.sequence,
                                stream: appended.stream,
                                idempotency: job.append.idempotency.clone(),
                                payload: job.append.payloads[0].clone(),
                            });
                            settled.append(&mut unconfirmed);
                            settled.push((job, Ok(appended)));
                        }
                        Ok(Ok(ack)) => settled.push((
                            job,
                            Err(AppendError::Log(LogError::Corrupt(format!(
                                "stream {} stored a record at {} where {} was expected",
                                self.stream_name, ack.sequence, appended.last_position
                            )))),
                        )),
                        Ok(Err(error))
                            if matches!(
                                error.kind(),
                                PublishErrorKind::WrongLastSequence
                                    | PublishErrorKind::WrongLastMessageId
                            ) =>
                        {
                            refused = true;
                            again.push(job);
                        }
                        Ok(Err(error)) => {
                            uncertain = true;
                            settled.push((job, Err(self.publish_error(error))));
                        }
                        Err(_) => {
                            uncertain = true;
                            settled.push((
                                job,
                                Err(AppendError::Log(storage(
                                    &format!("publishing to {}", self.stream_name),
                                    format!("no acknowledgement within {:?}", self.timeout),
                                ))),
                            ));
                        }
                    }
                }
            }
        }
        if !unconfirmed.is_empty() {
            if refused || uncertain {
                again.extend(unconfirmed.into_iter().map(|(job, _)| job));
            } else {
                match self.last_sequence().await {
                    Ok(last) if last == known => settled.append(&mut unconfirmed),
                    Ok(_) => {
                        refused = true;
                        again.extend(unconfirmed.into_iter().map(|(job, _)| job));
                    }
                    Err(error) => settled.extend(
                        unconfirmed
                            .into_iter()
                            .map(|(job, _)| (job, Err(AppendError::Log(error.clone_message())))),
                    ),
                }
            }
        }

        // The batch's acknowledged records into the replica now, at once, rather than when the
        // tail brings them back; behind (a gap) or already there, the tail has them.
        if let Some(first) = own.first().map(|record| record.sequence) {
            if let Err(problem) = self.replica.apply_all(own) {
                tracing::error!(%problem, sequence = first, "an acknowledged record cannot be folded");
            }
        }
        // Reads on this instance see an append once it is answered: wait for the replica.
        let caught_up = self.wait_for_replica(known).await;
        for (job, answer) in settled {
            let answer = match (&caught_up, answer) {
                (Err(error), Ok(_)) => Err(AppendError::Log(error.clone_message())),
                (_, answer) => answer,
            };
            let _ = job.answer.send(answer);
        }
        if refused && !again.is_empty() {
            // Another writer stored something after what this batch assumed.
            if let Err(error) = self.wait_for_replica(known + 1).await {
                for job in again {
                    let _ = job
                        .answer
                        .send(Err(AppendError::Log(error.clone_message())));
                }
                return Vec::new();
            }
        }
        again
    }

    /// The stream's last sequence, from its info (one round trip).
    async fn last_sequence(&self) -> Result<Position, LogError> {
        let name = &self.stream_name;
        let stream = tokio::time::timeout(self.timeout, self.js.get_stream(name))
            .await
            .map_err(|_| storage(&format!("reading the stream {name}"), "timed out"))?
            .map_err(|e| storage(&format!("reading the stream {name}"), e))?;
        Ok(stream.cached_info().state.last_sequence)
    }

    /// Decides `append` against the replica and the overlay; a publish is planned at
    /// `position`.
    fn decide(
        &self,
        append: &Append,
        overlay: &Overlay,
        position: Position,
    ) -> Result<Decision, AppendError> {
        let [_payload] = &append.payloads[..] else {
            if append.payloads.is_empty() {
                return Err(AppendError::Empty);
            }
            // One record per message keeps position = stream sequence, and a message is stored
            // whole or not at all; several would not be.
            return Err(AppendError::Log(LogError::Storage(
                "the JetStream engine appends one record per append".into(),
            )));
        };
        if let Some(idempotency) = &append.idempotency {
            let earlier = match overlay.keys.get(&idempotency.key) {
                Some(found) => Some(*found),
                None => self.replica.idempotent_result(&idempotency.key)?,
            };
            if let Some((original, fingerprint)) = earlier {
                return Ok(Decision::Answer(replay(idempotency, original, fingerprint)));
            }
        }
        let (stream, current) = match append.stream {
            StreamTarget::New => (overlay.allocated + 1, None),
            StreamTarget::Existing(id) if id == 0 || id > overlay.allocated => {
                return Err(AppendError::StreamNotFound(id))
            }
            StreamTarget::Existing(id) => match overlay.versions.get(&id) {
                Some(version) => (id, Some(*version)),
                None => (id, self.replica.stream_version(id)?),
            },
            StreamTarget::Restored(id) => {
                let current = match overlay.versions.get(&id) {
                    Some(version) => Some(*version),
                    None => self.replica.stream_version(id)?,
                };
                check_restored(append, id, current)?;
                (id, None)
            }
        };
        check_expected(append, current)?;
        let version = current.unwrap_or(0) + 1;
        Ok(Decision::Publish(Appended::one(stream, version, position)))
    }

    /// The headers of one record: its stream, key and fingerprint, its message id, and the
    /// fence (the position before it, and the message before it in the batch).
    fn headers(
        &self,
        append: &Append,
        appended: &Appended,
        id: &str,
        previous_id: Option<&str>,
    ) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            EXPECTED_LAST_SEQUENCE,
            (appended.last_position - 1).to_string().as_str(),
        );
        if let Some(previous) = previous_id {
            headers.insert(EXPECTED_LAST_MSG_ID, previous);
        }
        headers.insert(MSG_ID, id);
        headers.insert(STREAM_HEADER, appended.stream.to_string().as_str());
        if let Some(idempotency) = &append.idempotency {
            headers.insert(KEY_HEADER, idempotency.key.as_str());
            headers.insert(
                FINGERPRINT_HEADER,
                to_hex(&idempotency.fingerprint).as_str(),
            );
        }
        headers
    }

    /// A publish that failed for another reason than the fence: its outcome is unknown (the
    /// record may be stored), and the caller retries with its idempotency key.
    fn publish_error(&self, error: impl std::fmt::Display) -> AppendError {
        AppendError::Log(storage(
            &format!("publishing to {}", self.stream_name),
            error,
        ))
    }

    /// Waits until the replica reaches `position`, for at most the timeout.
    async fn wait_for_replica(&self, position: Position) -> Result<(), LogError> {
        let mut head = self.replica.watch_head();
        match tokio::time::timeout(self.timeout, head.wait_for(position)).await {
            Ok(waited) => waited.map(|_| ()),
            Err(_) => Err(storage(
                "waiting for the local replica",
                format!(
                    "position {position} did not arrive within {:?}",
                    self.timeout
                ),
            )),
        }
    }
}

/// A decision after publishing: answered, or sent (and its ack to come).
enum Plan {
    Answer(Result<Appended, AppendError>),
    Sent(
        Appended,
        Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>,
    ),
}

/// Whether an answer given without publishing may rest on a replica behind the stream: a
/// version conflict or an unknown stream may be stale; a replayed key (records never change)
/// and a malformed append are not.
fn needs_confirmation(answer: &Result<Appended, AppendError>) -> bool {
    matches!(
        answer,
        Err(AppendError::WrongExpectedVersion { .. } | AppendError::StreamNotFound(_))
    )
}

/// A log error, again (errors are not `Clone`: io errors are not).
trait CloneMessage {
    fn clone_message(&self) -> LogError;
}

impl CloneMessage for LogError {
    fn clone_message(&self) -> LogError {
        match self {
            LogError::Corrupt(text) => LogError::Corrupt(text.clone()),
            other => LogError::Storage(other.to_string()),
        }
    }
}
