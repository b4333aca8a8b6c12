//! The command-line grammar: every subcommand, flag and environment variable.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// An event-sourced ledger of the calls a sales team makes, served over NATS.
#[derive(Parser, Debug)]
#[command(name = "callledger", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the ledger keeps its data and how it writes it.
#[derive(Args, Debug, Clone, Default)]
pub struct DataArgs {
    /// The data directory (the event log, the projection and the outbox checkpoint).
    #[arg(long, global = true, env = "CALLLEDGER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `flush`: a write is acknowledged only once it is on disk. `buffered`: acknowledged before
    /// the flush, faster, but a crash loses the last half second of acknowledged writes.
    #[arg(long, global = true, env = "CALLLEDGER_DURABILITY", value_enum)]
    pub durability: Option<Durability>,
    /// Writes are refused (503) while the disk holding the log has less than this many MiB
    /// free, and resume by themselves once space is freed (64; 0 turns it off).
    #[arg(long, global = true, env = "CALLLEDGER_DISK_RESERVE_MB")]
    pub disk_reserve_mb: Option<u64>,
    /// MiB of the projection's stored views kept in memory (1024; 64 for `rebuild`, `import`
    /// and `restore`, which write the views without reading them back), and beside it up to
    /// half as much of the packs of views the projection keeps itself, the same bytes while
    /// both hold them. Lists read their rows from it: give it the size of `data/projection/db`
    /// when there is memory for it.
    #[arg(long, global = true, env = "CALLLEDGER_PROJECTION_CACHE_MB")]
    pub projection_cache_mb: Option<u64>,
}

impl DataArgs {
    /// The data directory, `./data` when none is given.
    pub fn dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("data"))
    }
}

/// Where the log of record lives. A data directory remembers it (`log-of-record.json`), so the
/// offline subcommands find it without these flags.
#[derive(Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// `sled` (embedded in the data directory, one instance per subject prefix) or `jetstream`
    /// (a stream on the NATS cluster, several instances, each a read replica).
    #[arg(long = "log", global = true, env = "CALLLEDGER_LOG", value_enum)]
    pub engine: Option<LogEngineChoice>,
    /// With `--log jetstream`: servers holding each record (1 for development, 3 in production).
    #[arg(long, global = true, env = "CALLLEDGER_LOG_REPLICAS")]
    pub log_replicas: Option<usize>,
}

/// How appends reach the disk.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every acknowledged write is flushed to disk (group commit).
    Flush,
    /// Acknowledged before the flush; a crash may lose recent writes.
    Buffered,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the Calls API over NATS until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Import calls from NDJSON (one call document or attributes object per line, UTF-8; a
    /// byte order mark and CRLF line ends are accepted). A bad line is skipped and reported on
    /// stderr with its number and what was wrong; the others are imported.
    Import(ImportArgs),
    /// Write the event log to stdout as NDJSON, in position order.
    Export,
    /// Throw the projection away and replay the whole log into it.
    Rebuild,
    /// Rebuild into scratch space and compare with the live projection (exit 1 on a difference).
    Verify,
    /// Events, live and deleted calls, positions and size on disk.
    Stats,
    /// Print one call from the data directory (offline).
    Get {
        /// The call's id.
        id: String,
        /// `fields[call]=...`, `provideDataConnections=true`, ...
        query: Option<String>,
    },
    /// List calls from the data directory (offline), e.g. `filter[prospect][id]=5&sort=-createdAt`.
    List {
        /// The query string, as the API takes it.
        query: Option<String>,
    },
    /// A client of a running service, over NATS.
    Calls(ClientArgs),
    /// Copy the log into a backup directory; run again, copy only what is new. From the data
    /// directory (`--data-dir`), or from the service that holds it (`--nats-url`, scope
    /// `calls.admin`) while it serves.
    Backup {
        /// The backup directory (created if missing).
        dir: PathBuf,
        /// With `--nats-url`: the bearer token to present (scope `calls.admin`).
        #[arg(long, env = "CALLLEDGER_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Build a new data directory (`--data-dir`, missing or empty) from a backup directory, or
    /// from `callledger export` output with `-`, checking every checksum first.
    Restore {
        /// The backup directory, or `-` for an export stream on stdin.
        source: PathBuf,
    },
}

/// How to reach NATS: for `serve`, the `calls` client, and the offline subcommands on a data
/// directory whose log of record is on JetStream. Every flag is global: it may stand anywhere
/// (`callledger calls list Q --nats-url URL` as well as `callledger --nats-url URL calls list
/// Q`), and every subcommand's help shows it.
#[derive(Args, Debug, Clone, Default)]
pub struct NatsArgs {
    /// The NATS server.
    #[arg(long, global = true, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// A NATS credentials file.
    #[arg(long, global = true, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// A NATS user (with --nats-password).
    #[arg(long, global = true, env = "NATS_USER")]
    pub nats_user: Option<String>,
    /// The NATS user's password.
    #[arg(long, global = true, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// A NATS token.
    #[arg(long, global = true, env = "NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// The subject prefix of the API (`calls` by default).
    #[arg(long, global = true, env = "CALLLEDGER_SUBJECT_PREFIX")]
    pub subject_prefix: Option<String>,
}

impl NatsArgs {
    /// These settings, each one missing taken from `fallback` (the config file's).
    pub fn or(&self, fallback: NatsArgs) -> NatsArgs {
        NatsArgs {
            nats_url: self.nats_url.clone().or(fallback.nats_url),
            nats_creds: self.nats_creds.clone().or(fallback.nats_creds),
            nats_user: self.nats_user.clone().or(fallback.nats_user),
            nats_password: self.nats_password.clone().or(fallback.nats_password),
            nats_token: self.nats_token.clone().or(fallback.nats_token),
            subject_prefix: self.subject_prefix.clone().or(fallback.subject_prefix),
        }
    }

    /// The connection, as the connection `name` (`nats://127.0.0.1:4222` without a URL).
    pub fn options(&self, name: &str) -> call_gateway::NatsOptions {
        call_gateway::NatsOptions {
            url: self
                .nats_url
                .clone()
                .unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
            creds_file: self.nats_creds.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            token: self.nats_token.clone(),
            name: name.into(),
        }
    }

    /// The subject prefix (`calls` without one).
    pub fn prefix(&self) -> String {
        self.subject_prefix
            .clone()
            .unwrap_or_else(|| call_gateway::DEFAULT_SUBJECT_PREFIX.into())
    }
}

/// `serve`'s settings; each may also come from the config file.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A TOML config file; flags and environment variables win over it.
    #[arg(long, env = "CALLLEDGER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The API tokens (TOML); without it the API is open to anyone who can reach NATS.
    #[arg(long, env = "CALLLEDGER_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// `text` or `json` logs (levels from RUST_LOG).
    #[arg(long, env = "CALLLEDGER_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Requests handled at once; past it the service answers 503 at once.
    #[arg(long, env = "CALLLEDGER_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// The JetStream duplicate window for commands and events, in seconds.
    #[arg(long, env = "CALLLEDGER_DUPLICATE_WINDOW_SECS")]
    pub duplicate_window_secs: Option<u64>,
    /// Seconds the writer lock outlives this instance's last renewal: another instance on the
    /// same subjects is refused meanwhile (10). The same data directory restarted takes it back
    /// at once.
    #[arg(long, env = "CALLLEDGER_LOCK_TTL_SECS")]
    pub lock_ttl_secs: Option<u64>,
    /// Requests per caller (a token's actor, a producer) and window, as `N/<n>s`, `N/<n>m` or
    /// `N/<n>h`, shared by every instance on the same subjects; `off` for none (10000/1h, as
    /// Outreach).
    #[arg(long, env = "CALLLEDGER_RATE_LIMIT", value_parser = parse_rate_limit)]
    pub rate_limit: Option<RateLimitSetting>,
    /// MiB of get replies kept rendered, each served again while its call is unchanged (64; 0
    /// keeps none). Bounded whatever the ledger's size.
    #[arg(long, env = "CALLLEDGER_RENDERED_GETS_MB")]
    pub rendered_gets_mb: Option<u64>,
    /// Seconds the log's writer or the view's catch-up may go without progress before the
    /// service exits with status 75, for its supervisor to restart it: storage that stopped
    /// answering, such as a deadlock inside sled (60; 0: never).
    #[arg(long, env = "CALLLEDGER_STALL_EXIT_SECS")]
    pub stall_exit_secs: Option<u64>,
}

/// A `--rate-limit`: a budget, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitSetting(pub Option<call_api::rate::RateLimit>);

/// Parses `--rate-limit` (and the config file's `rate_limit`).
pub fn parse_rate_limit(text: &str) -> Result<RateLimitSetting, call_api::rate::RateLimitSyntax> {
    call_api::rate::RateLimit::parse(text).map(RateLimitSetting)
}

/// The engine of the log of record.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogEngineChoice {
    /// Embedded in the data directory (the default).
    Sled,
    /// A JetStream stream replicated over the NATS cluster.
    Jetstream,
}

/// Log output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `import`'s arguments.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The NDJSON file, or `-` for stdin.
    pub file: PathBuf,
    /// Workers deciding and appending batches at once (their batches share flushes).
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Lines per batch: a batch is decided as a whole and appended with one flush.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
}

/// The API client.
#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The bearer token to present.
    #[arg(long, global = true, env = "CALLLEDGER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Seconds to wait for a reply.
    #[arg(long, global = true, default_value_t = 10)]
    pub timeout: u64,
    #[command(subcommand)]
    pub action: ClientAction,
}

/// One API operation.
#[derive(Subcommand, Debug)]
pub enum ClientAction {
    /// List calls: QUERY is the query string, e.g. `filter[direction]=inbound&page[size]=10`.
    List {
        /// The query string.
        query: Option<String>,
    },
    /// Get one call.
    Get {
        /// Its id.
        id: String,
        /// An optional query string (fields, meta flags).
        query: Option<String>,
    },
    /// Create a call from a JSON:API document (or `-` to read it from stdin).
    Create {
        /// The document.
        document: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Update a call (PATCH semantics) from a JSON:API document (or `-`).
    Update {
        /// Its id.
        id: String,
        /// The document.
        document: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Delete a call.
    Delete {
        /// Its id.
        id: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// The calls changed after a log position, and those deleted.
    Changes {
        /// The position to start after.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// The most items to return.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
}

/// Headers of a write.
#[derive(Args, Debug, Default)]
pub struct WriteArgs {
    /// Sent as `Idempotency-Key`: a retry with the same key is answered once.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Sent as `If-Match`: the version the call must be at.
    #[arg(long)]
    pub if_match: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn client(args: &[&str]) -> (NatsArgs, ClientArgs) {
        let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            Command::Calls(client) => (cli.nats, client),
            other => panic!("not a client command: {other:?}"),
        }
    }

    #[test]
    fn connection_and_credential_flags_stand_anywhere_after_calls() {
        for args in [
            &[
                "callledger",
                "calls",
                "list",
                "q=1",
                "--token",
                "T",
                "--nats-url",
                "nats://h:1",
            ][..],
            &[
                "callledger",
                "calls",
                "--token",
                "T",
                "list",
                "q=1",
                "--nats-url",
                "nats://h:1",
            ],
            &[
                "callledger",
                "calls",
                "--nats-url",
                "nats://h:1",
                "--token",
                "T",
                "list",
                "q=1",
            ],
        ] {
            let (nats, parsed) = client(args);
            assert_eq!(parsed.token.as_deref(), Some("T"), "{args:?}");
            assert_eq!(nats.nats_url.as_deref(), Some("nats://h:1"), "{args:?}");
        }
        let (nats, create) = client(&[
            "callledger",
            "calls",
            "create",
            "--token",
            "T",
            "--idempotency-key",
            "k",
            "{}",
            "--subject-prefix",
            "staging",
            "--timeout",
            "3",
        ]);
        assert_eq!(nats.subject_prefix.as_deref(), Some("staging"));
        assert_eq!(create.timeout, 3);
    }

    #[test]
    fn every_client_subcommand_shows_the_connection_flags_in_its_help() {
        for action in ["list", "get", "create", "update", "delete", "changes"] {
            let error = Cli::try_parse_from(["callledger", "calls", action, "--help"])
                .expect_err("--help stops parsing");
            let help = error.render().to_string();
            for flag in ["--token", "--nats-url", "--nats-creds", "--subject-prefix"] {
                assert!(
                    help.contains(flag),
                    "calls {action} --help lacks {flag}:\n{help}"
                );
            }
        }
    }
}
