//! The local replica of the stream: an [`event_log::MemoryLog`] that records are applied to at
//! their stream sequence, once each, by whichever comes first: the tail (every record of every
//! instance) or this instance's writer (its own records, as soon as they are acknowledged, so
//! that an append does not wait for its record to come back through the tail).

use std::ops::Deref;
use std::sync::{Mutex, PoisonError};

use event_log::{
    Append, ExpectedVersion, Idempotency, LogEngine, MemoryLog, Position, StreamId, StreamTarget,
};

/// The replica and the lock that keeps "is it the next record?" and "apply it" together.
#[derive(Default)]
pub(crate) struct Replica {
    log: MemoryLog,
    applying: Mutex<()>,
}

/// What applying a record at a sequence did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    /// It was the next record, and the replica holds it now.
    Now,
    /// The replica held it already.
    Before,
    /// Records before it are missing: it was not applied.
    Gap,
}

impl Deref for Replica {
    type Target = MemoryLog;

    fn deref(&self) -> &MemoryLog {
        &self.log
    }
}

impl Replica {
    /// Applies the record stored at `sequence` of `stream`, with its key, if it is the next one.
    /// An error means the stream and the replica disagree (the record cannot be folded).
    pub(crate) fn apply_at(
        &self,
        sequence: Position,
        stream: StreamId,
        idempotency: Option<Idempotency>,
        payload: Vec<u8>,
    ) -> Result<Applied, String> {
        let _one_at_a_time = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
        let head = self.log.head();
        if sequence <= head {
            return Ok(Applied::Before);
        }
        if sequence != head + 1 {
            return Ok(Applied::Gap);
        }
        // A stream the replica does not hold starts under the id the record carries (ids are
        // counted up here, but a log restored from another engine's keeps that engine's ids).
        let held = self
            .log
            .stream_version(stream)
            .map_err(|error| format!("the replica cannot be read: {error}"))?;
        let target = match held {
            Some(_) => StreamTarget::Existing(stream),
            None => StreamTarget::Restored(stream),
        };
        let appended = self
            .log
            .append(Append {
                stream: target,
                expected: ExpectedVersion::Any,
                idempotency,
                payloads: vec![payload],
            })
            .map_err(|error| format!("the replica refused a stored record: {error}"))?;
        if appended.stream != stream || appended.duplicate || appended.last_position != sequence {
            return Err(format!(
                "the record stored at {sequence} of stream {stream} folds at {} of stream {} (duplicate: {})",
                appended.last_position, appended.stream, appended.duplicate
            ));
        }
        Ok(Applied::Now)
    }
}
