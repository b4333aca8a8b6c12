//! The outbox: publishes every event of the log, in position order, to `CALL_EVENTS` on
//! `<prefix>.events.<callId>.<EventType>` with `Nats-Msg-Id: <eventId>`, from its own
//! checkpoint file (`<data dir>/outbox.checkpoint`, the last position JetStream stored).
//!
//! Events appended while NATS is away are published when it is back. The checkpoint file is a
//! hint, written at most once per [`PERSIST_EVERY`] (and when the outbox stops), so that it does
//! not fsync beside the log for every batch: whenever the outbox learns the stream's last
//! sequence it also reads the position of the last event stored there and resumes after it, so
//! a crash never re-publishes what the stream holds, however stale the file and however long
//! the outage (the duplicate window is a second line, not the first).
//!
//! Publishes are pipelined (a batch is sent, then its acks awaited in order), and each carries
//! `Nats-Expected-Last-Sequence`: the stream's last sequence as it must be if every earlier
//! publish of the batch was stored. If one publish is lost (the connection dropped under it),
//! every later one of its batch is refused instead of being stored ahead of it, so the stream
//! never holds events out of order; the next attempt starts again from the first unacked event
//! with the stream's fresh last sequence. This assumes the outbox is the only publisher on
//! `<prefix>.events.>`; another publisher costs retries, never order or events.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use call_model::Event;
use event_log::{read_position, EventLog, Position, PositionFile, Record};
use tokio::sync::watch;

use crate::error::{GatewayError, GatewayErrorKind};
use crate::names::JetStreamNames;
use crate::{sleep_or_stop, stopped, Backoff};

/// The longest the checkpoint file lags behind what JetStream acknowledged, while publishing.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// The checkpoint's file name in the data directory.
pub(crate) const CHECKPOINT_FILE: &str = "outbox.checkpoint";
/// Events read and published per batch.
const BATCH: usize = 1000;

/// The outbox with its checkpoint.
pub(crate) struct Outbox {
    js: jetstream::Context,
    log: EventLog,
    prefix: String,
    /// The stream events are published to.
    stream: String,
    duplicate_window: Duration,
    path: PathBuf,
    /// The checkpoint file, written in place; `None` while a write of it runs on a blocking
    /// thread (or after that thread failed: then a new handle is made).
    file: Option<PositionFile>,
    /// The last position JetStream acknowledged (in memory; the file lags by up to
    /// [`PERSIST_EVERY`], and the stream's last event corrects it).
    checkpoint: Position,
    /// The checkpoint the file holds, and when it was written.
    persisted: Position,
    persisted_at: std::time::Instant,
}

impl Outbox {
    /// Reads the checkpoint in `data_dir` (0 when there is none). Fails when the file cannot
    /// be read or does not hold a position.
    ///
    /// A checkpoint beyond the log's head means the log lost its tail after the events were
    /// published (a crash with buffered durability) or was restored from an older copy. The
    /// outbox then starts again at the head, so that the events the log appends in their place
    /// are published too, and says so loudly: downstream has seen events the log no longer has.
    pub(crate) async fn open(
        js: jetstream::Context,
        log: EventLog,
        prefix: String,
        duplicate_window: Duration,
        data_dir: &Path,
    ) -> Result<Outbox, GatewayError> {
        let stream = JetStreamNames::of(&prefix).events;
        let path = data_dir.join(CHECKPOINT_FILE);
        let read_path = path.clone();
        let checkpoint = tokio::task::spawn_blocking(move || read_checkpoint(&read_path))
            .await
            .map_err(|e| {
                GatewayError::with_source(GatewayErrorKind::Task, "reading the checkpoint", e)
            })??;
        let head = log.head();
        let mut outbox = Outbox {
            js,
            log,
            prefix,
            stream,
            duplicate_window,
            file: Some(PositionFile::new(path.clone())),
            path,
            checkpoint,
            persisted: checkpoint,
            persisted_at: std::time::Instant::now(),
        };
        if checkpoint > head {
            tracing::error!(
                checkpoint,
                head,
                path = %outbox.path.display(),
                "events up to the checkpoint were published, but the event log ends before it; \
                 publishing resumes at the log's head"
            );
            outbox.checkpoint = head;
            outbox.persist().await?;
        }
        tracing::info!(checkpoint = outbox.checkpoint, head, "outbox opened");
        Ok(outbox)
    }

    /// The stream's config.
    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.events.>", self.prefix)],
            storage: stream::StorageType::File,
            duplicate_window: self.duplicate_window,
            ..Default::default()
        }
    }

    /// Publishes the next batch after the checkpoint and advances it as far as JetStream
    /// acknowledged, also when a later publish of the batch failed.
    ///
    /// `last_sequence` is the stream's last sequence when known; it is taken from the server
    /// when `None`, and left `None` unless the whole batch was stored as new messages.
    async fn publish_batch(&mut self, last_sequence: &mut Option<u64>) -> Result<(), GatewayError> {
        let log = self.log.clone();
        let after = self.checkpoint;
        let records = tokio::task::spawn_blocking(move || log.read_from(after, BATCH))
            .await
            .map_err(|e| GatewayError::with_source(GatewayErrorKind::Task, "reading the log", e))?
            .map_err(|e| {
                GatewayError::with_source(
                    GatewayErrorKind::Log,
                    format!("cannot read the log after position {after}"),
                    e,
                )
            })?;
        if records.is_empty() {
            return Ok(());
        }
        let mut expected = match last_sequence.take() {
            Some(sequence) => sequence,
            None => {
                let stream = self
                    .js
                    .get_or_create_stream(self.stream_config())
                    .await
                    .map_err(|e| {
                        crate::commands::jetstream_error(
                            format!("cannot ensure the stream {}", self.stream),
                            e,
                        )
                    })?;
                let last = stream.cached_info().state.last_sequence;
                if self.catch_up_with_stream(&stream, last).await? {
                    // Resume after what the stream holds, reading the log from there.
                    return Ok(());
                }
                last
            }
        };

        let mut failure = None;
        let mut pending = Vec::with_capacity(records.len());
        for record in &records {
            let publish = match self.message(record, expected) {
                Ok(publish) => publish,
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            };
            let (subject, message) = publish;
            match self.js.send_publish(subject, message).await {
                Ok(ack) => pending.push((record.position, ack)),
                Err(error) => {
                    failure = Some(crate::commands::jetstream_error(
                        "cannot publish an event".to_string(),
                        error,
                    ));
                    break;
                }
            }
            expected += 1;
        }

        let before = self.checkpoint;
        let mut all_new = failure.is_none();
        let mut stored_sequence = None;
        for (position, ack) in pending {
            match ack.await {
                Ok(ack) => {
                    all_new &= !ack.duplicate;
                    stored_sequence = Some(ack.sequence);
                    self.checkpoint = position;
                }
                Err(error) => {
                    all_new = false;
                    failure = Some(crate::commands::jetstream_error(
                        format!("{} did not store the event at {position}", self.stream),
                        error,
                    ));
                    break;
                }
            }
        }
        if all_new {
            *last_sequence = stored_sequence;
        }
        if self.checkpoint > before {
            tracing::debug!(from = before, to = self.checkpoint, "events published");
            if self.persisted_at.elapsed() >= PERSIST_EVERY {
                self.persist().await?;
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The subject and message of one record, expecting `expected` as the stream's last
    /// sequence.
    fn message(
        &self,
        record: &Record,
        expected: u64,
    ) -> Result<(String, PublishMessage), GatewayError> {
        let event = Event::decode(
            record.position,
            record.stream,
            record.version,
            &record.payload,
        )
        .map_err(|e| {
            GatewayError::with_source(
                GatewayErrorKind::Log,
                format!("cannot publish the event at position {}", record.position),
                e,
            )
        })?;
        let subject = format!(
            "{}.events.{}.{}",
            self.prefix,
            event.call_id,
            event.event_type().name()
        );
        let payload = event.to_json_bytes();
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(event.stored.event_id.to_string())
            .expected_last_sequence(expected);
        Ok((subject, message))
    }

    /// Moves the checkpoint past the last event the stream holds (at `last`, its last
    /// sequence), when the checkpoint is behind it (the file lagged when the process died);
    /// `true` when it moved.
    async fn catch_up_with_stream(
        &mut self,
        stream: &stream::Stream,
        last: u64,
    ) -> Result<bool, GatewayError> {
        if last == 0 {
            return Ok(false);
        }
        let message = stream.get_raw_message(last).await.map_err(|e| {
            GatewayError::with_source(
                GatewayErrorKind::Log,
                format!("cannot read the last event of {}", self.stream),
                e,
            )
        })?;
        let position = serde_json::from_slice::<serde_json::Value>(&message.payload)
            .ok()
            .and_then(|event| event.get("position").and_then(serde_json::Value::as_u64));
        match position {
            Some(position) if position > self.checkpoint && position <= self.log.head() => {
                tracing::info!(
                    from = self.checkpoint,
                    to = position,
                    "the stream holds events past the checkpoint file; resuming after them"
                );
                self.checkpoint = position;
                self.persist().await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Writes the checkpoint durably, unless the file holds it already.
    async fn persist(&mut self) -> Result<(), GatewayError> {
        if self.persisted == self.checkpoint {
            return Ok(());
        }
        let mut file = self
            .file
            .take()
            .unwrap_or_else(|| PositionFile::new(self.path.clone()));
        let position = self.checkpoint;
        let (file, written) = tokio::task::spawn_blocking(move || {
            let written = file.record(position);
            (file, written)
        })
        .await
        .map_err(|e| {
            GatewayError::with_source(GatewayErrorKind::Task, "writing the checkpoint", e)
        })?;
        self.file = Some(file);
        written.map_err(|e| {
            GatewayError::with_source(
                GatewayErrorKind::Checkpoint,
                format!("cannot write {}", self.path.display()),
                e,
            )
        })?;
        self.persisted = position;
        self.persisted_at = std::time::Instant::now();
        Ok(())
    }
}

/// Publishes until `stop`, finishing the batch in hand; waits on the log's head when caught up
/// and retries failures after a growing pause.
pub(crate) async fn run(mut outbox: Outbox, mut stop: watch::Receiver<bool>) {
    let mut head = outbox.log.watch_head();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    let mut last_sequence = None;
    let mut failing = false;
    loop {
        if *stop.borrow() {
            break;
        }
        // Marks the current head as seen before looking at it, so that no append is missed.
        head.mark_seen();
        if outbox.checkpoint >= outbox.log.head() {
            // Caught up: the file may as well hold it now.
            if let Err(error) = outbox.persist().await {
                tracing::warn!(%error, "cannot write the outbox checkpoint");
            }
            tokio::select! {
                biased;
                () = stopped(&mut stop) => break,
                changed = head.changed() => if changed.is_err() {
                    tracing::info!("the event log closed; the outbox stops");
                    break;
                },
            }
            continue;
        }
        let before = outbox.checkpoint;
        match outbox.publish_batch(&mut last_sequence).await {
            Ok(()) => {
                if failing {
                    tracing::info!(checkpoint = outbox.checkpoint, "publishing events again");
                    failing = false;
                }
                backoff.reset();
            }
            // A batch cut short after some progress is retried at once: the usual cause is a
            // duplicate (after a crash) that shifted the expected sequences.
            Err(error) if outbox.checkpoint > before => {
                tracing::debug!(%error, checkpoint = outbox.checkpoint, "batch cut short; continuing");
            }
            Err(error) => {
                failing = true;
                tracing::warn!(%error, checkpoint = outbox.checkpoint, "cannot publish events; retrying");
                if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                    break;
                }
            }
        }
    }
    if let Err(error) = outbox.persist().await {
        tracing::warn!(%error, "cannot write the outbox checkpoint");
    }
    tracing::info!(checkpoint = outbox.checkpoint, "outbox stopped");
}

/// The position in the checkpoint file; 0 when there is no file.
fn read_checkpoint(path: &Path) -> Result<Position, GatewayError> {
    match read_position(path) {
        Ok(position) => Ok(position.unwrap_or(0)),
        Err(error) => Err(GatewayError::with_source(
            GatewayErrorKind::Checkpoint,
            format!("cannot read the checkpoint {}", path.display()),
            error,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_survives_a_round_trip_and_refuses_garbage() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join(CHECKPOINT_FILE);
        assert_eq!(read_checkpoint(&path).ok(), Some(0));
        let mut file = PositionFile::new(path.clone());
        file.record(42).expect("write");
        file.record(43).expect("overwrite");
        assert_eq!(read_checkpoint(&path).ok(), Some(43));
        std::fs::write(&path, "forty-four").expect("garble");
        assert_eq!(
            read_checkpoint(&path).err().map(|e| e.kind()),
            Some(GatewayErrorKind::Checkpoint)
        );
    }
}
