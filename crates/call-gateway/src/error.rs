//! [`GatewayError`], the one error type of the gateway, with a [`GatewayErrorKind`] that callers
//! match on (the binary maps it to a message and an exit code).

use std::fmt;

/// What kind of failure a [`GatewayError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GatewayErrorKind {
    /// The configuration or the connection options are unusable (an empty subject prefix, a
    /// credentials file that cannot be read, two authentication methods at once, a header that
    /// NATS cannot carry).
    Config,
    /// Connecting to NATS failed.
    Connect,
    /// The NATS micro service could not be started (its subscriptions failed).
    Service,
    /// A JetStream stream or consumer could not be set up or used.
    JetStream,
    /// The outbox checkpoint file could not be read or written, or does not match the log.
    Checkpoint,
    /// The event log failed.
    Log,
    /// Nobody subscribes to the subject a request was sent to.
    NoResponders,
    /// A request got no reply in time.
    TimedOut,
    /// A request failed for another reason (the connection is closed, the request is too large).
    Request,
    /// One of the gateway's own tasks panicked.
    Task,
    /// Another instance serves the same subjects (it holds the writer lock), or took the lock
    /// from this one.
    Locked,
}

impl fmt::Display for GatewayErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GatewayErrorKind::Config => "configuration error",
            GatewayErrorKind::Connect => "cannot connect to NATS",
            GatewayErrorKind::Service => "cannot start the NATS service",
            GatewayErrorKind::JetStream => "JetStream error",
            GatewayErrorKind::Checkpoint => "outbox checkpoint error",
            GatewayErrorKind::Log => "event log error",
            GatewayErrorKind::NoResponders => "no responders",
            GatewayErrorKind::TimedOut => "request timed out",
            GatewayErrorKind::Request => "request failed",
            GatewayErrorKind::Task => "gateway task failed",
            GatewayErrorKind::Locked => "the subjects are taken",
        })
    }
}

/// A failure of the gateway: its [kind](GatewayError::kind), a message for people, and the
/// underlying error when there is one.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct GatewayError {
    kind: GatewayErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl GatewayError {
    /// An error of `kind` with a message and no underlying cause.
    pub(crate) fn new(kind: GatewayErrorKind, message: impl Into<String>) -> GatewayError {
        GatewayError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` with a message and the error that caused it.
    pub(crate) fn with_source(
        kind: GatewayErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> GatewayError {
        GatewayError {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> GatewayErrorKind {
        self.kind
    }

    /// The message, without the kind and the cause.
    pub fn message(&self) -> &str {
        &self.message
    }
}
