//! Opens a data directory: the event log, the command service and the projection over it.

use crate::cli::{DataArgs, Durability};
use anyhow::Context;
use call_commands::CommandService;
use call_model::Timestamp;
use call_projections::Projection;
use event_log::{EventLog, LogOptions};
use std::path::{Path, PathBuf};

/// Everything a subcommand needs from the data directory.
pub struct Ledger {
    pub dir: PathBuf,
    pub log: EventLog,
    pub commands: CommandService,
    pub projection: Projection,
}

/// Where the log of record lives.
pub enum LogChoice {
    /// The embedded sled engine in the data directory.
    Sled,
    /// A JetStream stream on the NATS at `url`, with this many replicas.
    JetStream {
        /// The NATS server (or cluster) holding the stream.
        url: String,
        /// The subject prefix the stream's names derive from.
        subject_prefix: String,
        /// Servers holding each record.
        replicas: usize,
    },
}

impl Ledger {
    /// Opens (creating if needed) the data directory on the embedded log; the projection
    /// catches up with the log.
    pub fn open(args: &DataArgs, config_durability: Option<Durability>) -> anyhow::Result<Ledger> {
        Ledger::open_on(args, config_durability, &LogChoice::Sled)
    }

    /// Opens the data directory with the log of record `choice`: the local projection (and, on
    /// the embedded engine, the log) live in the data directory.
    pub fn open_on(
        args: &DataArgs,
        config_durability: Option<Durability>,
        choice: &LogChoice,
    ) -> anyhow::Result<Ledger> {
        let dir = args.dir();
        let durability = match args
            .durability
            .or(config_durability)
            .unwrap_or(Durability::Flush)
        {
            Durability::Flush => event_log::Durability::Flush,
            Durability::Buffered => event_log::Durability::Buffered,
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let log = match choice {
            LogChoice::Sled => EventLog::open(&log_dir(&dir), LogOptions { durability })
                .with_context(|| format!("cannot open the event log in {}", dir.display()))?,
            LogChoice::JetStream {
                url,
                subject_prefix,
                replicas,
            } => {
                let names = call_gateway::JetStreamNames::of(subject_prefix);
                let options = event_log_jetstream::JetStreamOptions {
                    stream: names.log.clone(),
                    subject_prefix: format!("{subject_prefix}.log"),
                    replicas: *replicas,
                    timeout: std::time::Duration::from_secs(10),
                };
                event_log_jetstream::JetStreamLog::open(url, options)
                    .with_context(|| {
                        format!("cannot open the log of record, the stream {}", names.log)
                    })?
                    .into_event_log()
            }
        };
        let projection = Projection::open(&projection_dir(&dir), log.clone())
            .with_context(|| format!("cannot open the projection in {}", dir.display()))?;
        Ok(Ledger {
            commands: CommandService::new(log.clone()),
            log,
            projection,
            dir,
        })
    }
}

/// Where the event log lives inside the data directory.
pub fn log_dir(dir: &Path) -> PathBuf {
    dir.join("log")
}

/// Where the projection lives inside the data directory.
pub fn projection_dir(dir: &Path) -> PathBuf {
    dir.join("projection")
}

/// The ledger's clock: the only place the wall clock is read for commands.
pub fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}
