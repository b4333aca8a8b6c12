//! Opens a data directory: the event log, the command service and the projection over it.

use crate::cli::{DataArgs, Durability, LogArgs, LogEngineChoice, NatsArgs};
use anyhow::Context;
use call_commands::CommandService;
use call_model::Timestamp;
use call_projections::{
    Projection, ProjectionError, ProjectionOptions, RebuildReport, BULK_PROJECTION_CACHE_BYTES,
    DEFAULT_PROJECTION_CACHE_BYTES,
};
use event_log::{EventLog, LogOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything a subcommand needs from the data directory.
pub struct Ledger {
    pub dir: PathBuf,
    pub log: EventLog,
    pub commands: CommandService,
    pub projection: Projection,
    /// The log of record this data directory replicates or holds.
    pub record: LogOfRecord,
}

/// Which ledger to open: the data directory, and where its log of record lives and how to
/// reach it (the flags; a data directory remembers its log of record).
#[derive(Clone, Debug, Default)]
pub struct Location {
    pub data: DataArgs,
    pub log: LogArgs,
    pub nats: NatsArgs,
    /// Whether to wait (retrying, and saying so) until a log of record on JetStream can be
    /// opened, as `serve` does when NATS is not up yet, instead of failing at once.
    pub wait_for_nats: bool,
}

/// Where a data directory's log of record lives, as `log-of-record.json` in it records: written
/// when the directory is first opened, and checked on every later opening, so that a replica
/// of a JetStream log is never opened as an empty embedded ledger (or the other way round), and
/// the offline subcommands find the log without being told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "engine", rename_all = "lowercase")]
pub enum LogOfRecord {
    /// The embedded sled engine, in `log/`.
    Sled,
    /// A JetStream stream.
    #[serde(rename_all = "camelCase")]
    Jetstream {
        /// The stream, e.g. `CALL_LOG`.
        stream: String,
        /// The subject prefix the names derive from.
        subject_prefix: String,
        /// Servers holding each record.
        replicas: usize,
        /// The NATS servers last used (the default for the offline subcommands).
        servers: String,
    },
}

/// The record file in the data directory.
const RECORD_FILE: &str = "log-of-record.json";

impl LogOfRecord {
    /// What the flags ask for, `None` when they do not say.
    fn requested(location: &Location) -> Option<LogOfRecord> {
        match location.log.engine? {
            LogEngineChoice::Sled => Some(LogOfRecord::Sled),
            LogEngineChoice::Jetstream => {
                let prefix = location.nats.prefix();
                Some(LogOfRecord::Jetstream {
                    stream: call_gateway::JetStreamNames::of(&prefix).log,
                    subject_prefix: prefix,
                    replicas: location.log.log_replicas.unwrap_or(1).max(1),
                    servers: location.nats.options("").url,
                })
            }
        }
    }

    /// The one the data directory records, if any.
    fn recorded(dir: &Path) -> anyhow::Result<Option<LogOfRecord>> {
        let path = dir.join(RECORD_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{} is not a valid record of the log", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Which log to open: the flags' choice must match the record; without a record, a data
    /// directory that holds an embedded log is on sled.
    fn resolve(dir: &Path, location: &Location) -> anyhow::Result<LogOfRecord> {
        let requested = LogOfRecord::requested(location);
        let recorded = LogOfRecord::recorded(dir)?.or_else(|| {
            // Directories from before the record: an embedded log is there.
            log_dir(dir).exists().then_some(LogOfRecord::Sled)
        });
        match (recorded, requested) {
            (None, requested) => Ok(requested.unwrap_or(LogOfRecord::Sled)),
            (Some(recorded), None) => Ok(match recorded {
                LogOfRecord::Jetstream {
                    stream,
                    subject_prefix,
                    replicas,
                    servers,
                } => LogOfRecord::Jetstream {
                    stream,
                    subject_prefix,
                    replicas,
                    // A URL given now wins: servers move.
                    servers: location.nats.nats_url.clone().unwrap_or(servers),
                },
                sled => sled,
            }),
            (Some(recorded), Some(requested)) => match (&recorded, &requested) {
                (LogOfRecord::Sled, LogOfRecord::Sled) => Ok(requested),
                (
                    LogOfRecord::Jetstream { stream: was, .. },
                    LogOfRecord::Jetstream { stream: now, .. },
                ) if was == now => Ok(requested),
                _ => anyhow::bail!(
                    "the data directory {} belongs to {}, not to {}: give it its own data directory, or open it as it was made",
                    dir.display(),
                    recorded.describe(),
                    requested.describe()
                ),
            },
        }
    }

    /// Writes the record unless it is there already and the same.
    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        if LogOfRecord::recorded(dir)?.as_ref() == Some(self) {
            return Ok(());
        }
        let path = dir.join(RECORD_FILE);
        let temporary = dir.join(format!("{RECORD_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self)?;
        std::fs::write(&temporary, bytes)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Words for an error message.
    fn describe(&self) -> String {
        match self {
            LogOfRecord::Sled => "an embedded (sled) log (`--log sled`)".into(),
            LogOfRecord::Jetstream { stream, .. } => {
                format!("the JetStream log {stream} (`--log jetstream`)")
            }
        }
    }
}

/// Refuses a data directory that is not there (or is not a directory), for the commands that
/// read a ledger: run on a mistyped path they reported an empty ledger and left an empty data
/// directory behind. On a JetStream log of record (`--log jetstream`) the directory holds only
/// the local replica, which is made from the stream, so it may be new.
fn require_existing(location: &Location) -> anyhow::Result<()> {
    if location.log.engine == Some(LogEngineChoice::Jetstream) {
        return Ok(());
    }
    let dir = location.data.dir();
    match std::fs::metadata(&dir) {
        Ok(found) if found.is_dir() => Ok(()),
        Ok(_) => anyhow::bail!(
            "{} is not a directory: --data-dir names a ledger's data directory",
            dir.display()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "there is no ledger in {}: the directory does not exist (`callledger serve` and `callledger import` make one; --data-dir or CALLLEDGER_DATA_DIR names it)",
            dir.display()
        ),
        Err(error) => {
            Err(error).with_context(|| format!("cannot read the data directory {}", dir.display()))
        }
    }
}

impl Ledger {
    /// Opens (creating if needed) the data directory and its log of record; the projection
    /// catches up with the log. The local projection (and, on the embedded engine, the log)
    /// live in the data directory.
    pub fn open(
        location: &Location,
        config_durability: Option<Durability>,
    ) -> anyhow::Result<Ledger> {
        Ledger::open_with(
            location,
            config_durability,
            Caches::SERVING,
            open_projection,
        )
        .map(|(ledger, ())| ledger)
    }

    /// [`Ledger::open`] for a command that reads a ledger that must be there already (`stats`,
    /// `verify`, `get`, `list`): a data directory that does not exist is refused (see
    /// [`require_existing`]) rather than made.
    pub fn open_existing(location: &Location) -> anyhow::Result<Ledger> {
        require_existing(location)?;
        Ledger::open(location, None)
    }

    /// [`Ledger::open`] for `rebuild`: the projection is rebuilt from the log as it opens,
    /// without reading its indexes first (see [`Projection::open_rebuilt`]). The data directory
    /// must be there already, as for [`Ledger::open_existing`].
    pub fn open_rebuilt(
        location: &Location,
        progress: &mut dyn FnMut(u64, u64),
    ) -> anyhow::Result<(Ledger, RebuildReport)> {
        require_existing(location)?;
        Ledger::open_with(location, None, Caches::REPLAY, |dir, log, options| {
            Projection::open_rebuilt(dir, log, options, progress)
        })
    }

    /// [`Ledger::open`] for a command that writes the log in bulk and exits (`import`,
    /// `restore`), with [`Caches::BULK_WRITE`].
    pub fn open_for_bulk_writes(location: &Location) -> anyhow::Result<Ledger> {
        Ledger::open_with(location, None, Caches::BULK_WRITE, open_projection)
            .map(|(ledger, ())| ledger)
    }

    /// The log of a ledger that must be there already, alone, for a command that only reads
    /// the log (`export`, an offline `backup`): the projection is not opened, so nothing of it
    /// is loaded into memory (its indexes took 870 MB for an export of a million calls), caught
    /// up or written, and a damaged projection does not stand in the way of a copy of the log.
    pub fn open_log_existing(location: &Location) -> anyhow::Result<EventLog> {
        require_existing(location)?;
        Ledger::open_log(location, None, Caches::SERVING).map(|(_, _, log)| log)
    }

    /// Opens the log, then the projection with `open_projection`, whose by-product (a rebuild's
    /// report) comes back beside the ledger.
    fn open_with<T>(
        location: &Location,
        config_durability: Option<Durability>,
        caches: Caches,
        open_projection: impl FnOnce(
            &Path,
            EventLog,
            ProjectionOptions,
        ) -> Result<(Projection, T), ProjectionError>,
    ) -> anyhow::Result<(Ledger, T)> {
        let (dir, record, log) = Ledger::open_log(location, config_durability, caches)?;
        let options = ProjectionOptions {
            cache_bytes: projection_cache_bytes(
                location.data.projection_cache_mb,
                caches.projection,
            )?,
        };
        let (projection, opened) = open_projection(&projection_dir(&dir), log.clone(), options)
            .with_context(|| format!("cannot open the projection in {}", dir.display()))?;
        // Every command opens one ledger and ends the process when it drops it.
        projection.close_with_process();
        let ledger = Ledger {
            commands: CommandService::new(log.clone()),
            log,
            projection,
            dir,
            record,
        };
        Ok((ledger, opened))
    }

    /// Opens the log of the data directory (making the directory if it is missing), as its log
    /// of record says, and records which that is.
    fn open_log(
        location: &Location,
        config_durability: Option<Durability>,
        caches: Caches,
    ) -> anyhow::Result<(PathBuf, LogOfRecord, EventLog)> {
        let args = &location.data;
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
        let record = LogOfRecord::resolve(&dir, location)?;
        let log = match &record {
            LogOfRecord::Sled => EventLog::open(
                &log_dir(&dir),
                LogOptions {
                    durability,
                    disk_reserve: args
                        .disk_reserve_mb
                        .map_or(event_log::DEFAULT_DISK_RESERVE, |mb| mb << 20),
                    cache_bytes: caches.log,
                },
            )
            .with_context(|| format!("cannot open the event log in {}", dir.display()))?,
            LogOfRecord::Jetstream {
                stream,
                subject_prefix,
                replicas,
                servers,
            } => {
                let options = event_log_jetstream::JetStreamOptions {
                    stream: stream.clone(),
                    subject_prefix: format!("{subject_prefix}.log"),
                    replicas: *replicas,
                    timeout: std::time::Duration::from_secs(10),
                    replica_dir: Some(replica_dir(&dir)),
                };
                let mut nats = location.nats.options("call-ledger-log");
                nats.url = servers.clone();
                let mut pause = std::time::Duration::from_millis(250);
                loop {
                    let connect = call_gateway::connect_now(nats.clone());
                    match event_log_jetstream::JetStreamLog::open_with(connect, options.clone()) {
                        Ok(engine) => break engine.into_event_log(),
                        Err(error) if location.wait_for_nats => {
                            tracing::warn!(%error, %stream, "cannot open the log of record yet; retrying");
                            std::thread::sleep(pause);
                            pause = (pause * 2).min(std::time::Duration::from_secs(5));
                        }
                        Err(error) => {
                            return Err(anyhow::Error::new(error).context(format!(
                                "cannot open the log of record, the stream {stream}"
                            )))
                        }
                    }
                }
            }
        };
        record.save(&dir)?;
        Ok((dir, record, log))
    }
}

/// The projection opened as stored, with nothing beside it.
fn open_projection(
    dir: &Path,
    log: EventLog,
    options: ProjectionOptions,
) -> Result<(Projection, ()), ProjectionError> {
    Projection::open_with(dir, log, options).map(|projection| (projection, ()))
}

/// Where the local replica of a JetStream log of record lives inside the data directory.
pub fn replica_dir(dir: &Path) -> PathBuf {
    dir.join("replica")
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

/// sled's page caches of a command's log and projection, by what the command does with them.
#[derive(Clone, Copy, Debug)]
struct Caches {
    log: u64,
    /// Unless `--projection-cache-mb` says otherwise.
    projection: u64,
}

impl Caches {
    /// A command that serves, or reads as a server does.
    const SERVING: Caches = Caches {
        log: event_log::DEFAULT_LOG_CACHE_BYTES,
        projection: DEFAULT_PROJECTION_CACHE_BYTES,
    };
    /// `rebuild`: it reads the log once and replays it into a new view, then exits.
    const REPLAY: Caches = Caches {
        log: event_log::DEFAULT_LOG_CACHE_BYTES,
        projection: BULK_PROJECTION_CACHE_BYTES,
    };
    /// `import` and `restore`: they write the log in bulk, replay it into the projection and
    /// exit.
    const BULK_WRITE: Caches = Caches {
        log: event_log::BULK_WRITE_LOG_CACHE_BYTES,
        projection: BULK_PROJECTION_CACHE_BYTES,
    };
}

/// The projection's cache from `--projection-cache-mb` (`default` without it): at least 1 MiB,
/// and no more than can be counted in bytes.
fn projection_cache_bytes(mb: Option<u64>, default: u64) -> anyhow::Result<u64> {
    match mb {
        None => Ok(default),
        Some(0) => anyhow::bail!("--projection-cache-mb must be at least 1 (MiB), not 0"),
        Some(mb) => mb.checked_mul(1 << 20).ok_or_else(|| {
            anyhow::anyhow!("--projection-cache-mb {mb} is more memory than any machine has")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(dir: &Path, engine: Option<LogEngineChoice>) -> Location {
        Location {
            data: DataArgs {
                data_dir: Some(dir.to_path_buf()),
                ..DataArgs::default()
            },
            log: LogArgs {
                engine,
                log_replicas: Some(3),
            },
            nats: NatsArgs {
                nats_url: Some("nats://n1:4222,nats://n2:4222".into()),
                ..NatsArgs::default()
            },
            wait_for_nats: false,
        }
    }

    #[test]
    fn the_projection_cache_setting_is_refused_when_sled_could_not_take_it() {
        let default = Caches::SERVING.projection;
        assert_eq!(
            projection_cache_bytes(None, default).unwrap(),
            DEFAULT_PROJECTION_CACHE_BYTES
        );
        // A setting holds for every command, the replaying ones included.
        let replay = Caches::REPLAY.projection;
        assert_eq!(projection_cache_bytes(None, replay).unwrap(), replay);
        assert_eq!(projection_cache_bytes(Some(2048), replay).unwrap(), 2 << 30);
        assert_eq!(projection_cache_bytes(Some(64), default).unwrap(), 64 << 20);
        let zero = projection_cache_bytes(Some(0), default)
            .unwrap_err()
            .to_string();
        assert!(
            zero.contains("--projection-cache-mb must be at least 1"),
            "{zero}"
        );
        let huge = projection_cache_bytes(Some(u64::MAX), default)
            .unwrap_err()
            .to_string();
        assert!(huge.contains("more memory than any machine has"), "{huge}");
    }

    #[test]
    fn a_data_directory_keeps_the_log_it_was_made_with() {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path();
        // Nothing recorded: the flags decide, sled without them.
        assert_eq!(
            LogOfRecord::resolve(path, &location(path, None)).unwrap(),
            LogOfRecord::Sled
        );
        let jetstream =
            LogOfRecord::resolve(path, &location(path, Some(LogEngineChoice::Jetstream))).unwrap();
        assert_eq!(
            jetstream,
            LogOfRecord::Jetstream {
                stream: "CALL_LOG".into(),
                subject_prefix: "calls".into(),
                replicas: 3,
                servers: "nats://n1:4222,nats://n2:4222".into(),
            }
        );
        jetstream.save(path).unwrap();

        // Recorded: found without flags (a URL given now wins), refused as the other kind.
        let mut elsewhere = location(path, None);
        elsewhere.nats.nats_url = Some("nats://n3:4222".into());
        match LogOfRecord::resolve(path, &elsewhere).unwrap() {
            LogOfRecord::Jetstream { servers, .. } => assert_eq!(servers, "nats://n3:4222"),
            other => panic!("{other:?}"),
        }
        let refused = LogOfRecord::resolve(path, &location(path, Some(LogEngineChoice::Sled)))
            .expect_err("a JetStream replica is not an embedded ledger");
        let text = format!("{refused:#}");
        assert!(
            text.contains("belongs to the JetStream log CALL_LOG")
                && text.contains("not to an embedded (sled) log"),
            "{text}"
        );

        // A directory from before the record, with an embedded log, is on sled.
        let old = tempfile::tempdir().expect("a directory");
        std::fs::create_dir_all(log_dir(old.path())).unwrap();
        let refused = LogOfRecord::resolve(
            old.path(),
            &location(old.path(), Some(LogEngineChoice::Jetstream)),
        )
        .expect_err("an embedded ledger is not a JetStream replica");
        assert!(format!("{refused:#}").contains("belongs to an embedded (sled) log"));

        // A damaged record is named.
        std::fs::write(path.join(RECORD_FILE), b"{not json").unwrap();
        let damaged = LogOfRecord::resolve(path, &location(path, None)).expect_err("damaged");
        assert!(format!("{damaged:#}").contains("log-of-record.json is not a valid record"));
    }
}
