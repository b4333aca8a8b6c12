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

impl Ledger {
    /// Opens (creating if needed) the data directory; the projection catches up with the log.
    pub fn open(args: &DataArgs, config_durability: Option<Durability>) -> anyhow::Result<Ledger> {
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
        let log = EventLog::open(&log_dir(&dir), LogOptions { durability })
            .with_context(|| format!("cannot open the event log in {}", dir.display()))?;
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
