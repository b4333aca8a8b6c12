//! The names of everything the service creates in JetStream, all derived from the subject
//! prefix, so that several ledgers (`calls`, `staging`, ...) share one NATS without touching
//! each other's streams or consumers.

/// The subject prefix whose JetStream names carry no prefix of their own: the names earlier
/// releases used, kept so that existing deployments keep their streams.
pub const DEFAULT_SUBJECT_PREFIX: &str = call_api::DEFAULT_SUBJECT_PREFIX;

/// The JetStream names (streams, consumer, KV bucket) of one ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetStreamNames {
    /// Producers' commands, on `<prefix>.commands.>`.
    pub commands: String,
    /// Refused commands, on `<prefix>.rejected.>`.
    pub rejected: String,
    /// Every event of the log, on `<prefix>.events.>`.
    pub events: String,
    /// The durable pull consumer of [`JetStreamNames::commands`].
    pub consumer: String,
    /// The KV bucket of the writer lock: which instance serves these subjects.
    pub lock_bucket: String,
    /// The log of record, on `<prefix>.log.>`, with the JetStream engine of the log.
    pub log: String,
    /// The KV bucket of the rate limits' shared counts.
    pub rate_bucket: String,
}

impl JetStreamNames {
    /// The names for `subject_prefix`: `CALL_COMMANDS`, `CALL_REJECTED`, `CALL_EVENTS` and the
    /// consumer `call-ledger` for the default prefix `calls`; for any other prefix each is
    /// preceded by the prefix, upper-cased for streams, with every character but a letter or a
    /// digit as `_` (`staging` gives `STAGING_CALL_COMMANDS` and `staging-call-ledger`;
    /// `eu.calls` gives `EU_CALLS_CALL_COMMANDS` and `eu_calls-call-ledger`).
    pub fn of(subject_prefix: &str) -> JetStreamNames {
        let (stream_base, consumer) = if subject_prefix == DEFAULT_SUBJECT_PREFIX {
            ("CALL".to_owned(), "call-ledger".to_owned())
        } else {
            let token: String = subject_prefix
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            (
                format!("{}_CALL", token.to_ascii_uppercase()),
                format!("{token}-call-ledger"),
            )
        };
        JetStreamNames {
            commands: format!("{stream_base}_COMMANDS"),
            rejected: format!("{stream_base}_REJECTED"),
            events: format!("{stream_base}_EVENTS"),
            lock_bucket: format!("{stream_base}_LOCK"),
            log: format!("{stream_base}_LOG"),
            rate_bucket: format!("{stream_base}_RATE"),
            consumer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_prefix_keeps_the_names_and_others_get_their_own() {
        let default = JetStreamNames::of("calls");
        assert_eq!(default.commands, "CALL_COMMANDS");
        assert_eq!(default.rejected, "CALL_REJECTED");
        assert_eq!(default.events, "CALL_EVENTS");
        assert_eq!(default.consumer, "call-ledger");
        assert_eq!(default.lock_bucket, "CALL_LOCK");
        assert_eq!(default.log, "CALL_LOG");
        assert_eq!(default.rate_bucket, "CALL_RATE");
        let staging = JetStreamNames::of("staging");
        assert_eq!(staging.commands, "STAGING_CALL_COMMANDS");
        assert_eq!(staging.events, "STAGING_CALL_EVENTS");
        assert_eq!(staging.consumer, "staging-call-ledger");
        assert_eq!(staging.lock_bucket, "STAGING_CALL_LOCK");
        let nested = JetStreamNames::of("eu.calls");
        assert_eq!(nested.rejected, "EU_CALLS_CALL_REJECTED");
        assert_eq!(nested.consumer, "eu_calls-call-ledger");
        // A name JetStream would refuse (a dot, a wildcard, a space) is never produced.
        for name in [nested.commands, JetStreamNames::of("a b*>/c").events] {
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
        }
    }
}
