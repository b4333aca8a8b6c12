//! `callledger serve`: merges flags, environment and the config file into settings, opens the
//! ledger, and runs the NATS gateway until SIGINT or SIGTERM.

use crate::cli::{
    parse_rate_limit, DataArgs, Durability, LogArgs, LogEngineChoice, LogFormat, NatsArgs,
    RateLimitSetting, ServeArgs,
};
use crate::ledger::{now, Ledger, Location, LogOfRecord};
use crate::watchdog::{self, Watched};
use anyhow::Context;
use call_api::rate::{RateLimit, RateLimiter};
use call_api::{Api, ApiConfig, TokenStore};
use call_gateway::GatewayConfig;
use serde::Deserialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The config file (`--config FILE`, TOML). Every member is optional; flags and environment
/// variables win over it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    durability: Option<Durability>,
    nats_url: Option<String>,
    nats_creds: Option<PathBuf>,
    nats_user: Option<String>,
    nats_password: Option<String>,
    nats_token: Option<String>,
    subject_prefix: Option<String>,
    tokens: Option<PathBuf>,
    log_format: Option<LogFormat>,
    max_in_flight: Option<usize>,
    duplicate_window_secs: Option<u64>,
    lock_ttl_secs: Option<u64>,
    log: Option<LogEngineChoice>,
    log_replicas: Option<usize>,
    rate_limit: Option<String>,
    disk_reserve_mb: Option<u64>,
    projection_cache_mb: Option<u64>,
    rendered_gets_mb: Option<u64>,
    stall_exit_secs: Option<u64>,
}

pub fn run(
    data: &DataArgs,
    log: &LogArgs,
    nats: &NatsArgs,
    args: ServeArgs,
) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the config file {}", path.display()))?;
            toml::from_str::<ConfigFile>(&text)
                .with_context(|| format!("the config file {} is not valid", path.display()))?
        }
        None => ConfigFile::default(),
    };
    install_logging(
        args.log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
    );

    let data = DataArgs {
        data_dir: data.data_dir.clone().or(file.data_dir),
        durability: data.durability.or(file.durability),
        disk_reserve_mb: data.disk_reserve_mb.or(file.disk_reserve_mb),
        projection_cache_mb: data.projection_cache_mb.or(file.projection_cache_mb),
    };
    let nats = nats.or(NatsArgs {
        nats_url: file.nats_url,
        nats_creds: file.nats_creds,
        nats_user: file.nats_user,
        nats_password: file.nats_password,
        nats_token: file.nats_token,
        subject_prefix: file.subject_prefix,
    });
    let options = nats.options("call-ledger");
    let subject_prefix = nats.prefix();
    let tokens = match args.tokens.clone().or(file.tokens) {
        Some(path) => Some(
            TokenStore::load(&path)
                .with_context(|| format!("cannot load the tokens file {}", path.display()))?,
        ),
        None => {
            tracing::warn!("no --tokens file: the API is open to anyone who can reach NATS");
            None
        }
    };
    let max_in_flight = args
        .max_in_flight
        .or(file.max_in_flight)
        .unwrap_or(256)
        .max(1);
    let duplicate_window = Duration::from_secs(
        args.duplicate_window_secs
            .or(file.duplicate_window_secs)
            .unwrap_or(120),
    );
    let lock_ttl = Duration::from_secs(
        args.lock_ttl_secs
            .or(file.lock_ttl_secs)
            .unwrap_or(10)
            .max(1),
    );

    let rendered_gets_bytes = rendered_gets_bytes(args.rendered_gets_mb.or(file.rendered_gets_mb))?;
    let rate_limit = match (args.rate_limit, file.rate_limit) {
        (Some(setting), _) => setting,
        (None, Some(text)) => parse_rate_limit(&text).context("the config file's rate_limit")?,
        (None, None) => RateLimitSetting(Some(RateLimit::DEFAULT)),
    };
    match rate_limit.0 {
        Some(limit) => tracing::info!(%limit, "rate limit per caller"),
        None => tracing::warn!("--rate-limit off: no caller is limited"),
    }

    let location = Location {
        data,
        log: LogArgs {
            engine: log.engine.or(file.log),
            log_replicas: log.log_replicas.or(file.log_replicas),
        },
        nats,
        wait_for_nats: true,
    };
    let ledger = Ledger::open(&location, None)?;
    let replicated = matches!(ledger.record, LogOfRecord::Jetstream { .. });
    tracing::info!(
        data_dir = %ledger.dir.display(),
        head = ledger.log.head(),
        checkpoint = ledger.projection.checkpoint(),
        "ledger open"
    );
    // Lists read packed views from memory once warmed; a failure to start only leaves them to
    // be read from sled's tree, as before the first list that reads each.
    if let Err(error) = ledger.projection.warm_packs() {
        tracing::warn!(%error, "cannot start reading the packs of views into memory");
    }
    let _watchdog = watchdog::spawn(
        stall_limit(args.stall_exit_secs.or(file.stall_exit_secs)),
        watched_storage(&ledger),
        watchdog::exit_stalled,
    )
    .context("cannot start the storage watchdog")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let client = call_gateway::connect(options).await?;
        let config = ApiConfig {
            tokens,
            max_payload: client.max_payload(),
            self_prefix: subject_prefix.clone(),
            sync_reads: replicated,
            rate_limiter: rate_limit.0.map(|limit| Arc::new(RateLimiter::new(limit))),
            rendered_gets_bytes,
        };
        let api = Api::new(
            ledger.commands.clone(),
            ledger.projection.clone(),
            config,
            now,
        );
        let gateway = GatewayConfig {
            subject_prefix,
            max_in_flight,
            duplicate_window,
            data_dir: ledger.dir.clone(),
            queue_group: "call-ledger".into(),
            lock_ttl,
            replicated_log: replicated,
            index_snapshot_every: call_gateway::DEFAULT_INDEX_SNAPSHOT_EVERY,
        };
        call_gateway::run(client, api, ledger.log.clone(), gateway, shutdown_signal()).await?;
        ledger.log.flush()?;
        tracing::info!("drained; bye");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT stops the service");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => tracing::info!("SIGINT: draining"),
            _ = terminate.recv() => tracing::info!("SIGTERM: draining"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

fn install_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: not as escape codes in a log file or the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The watchdog's limit from `--stall-exit-secs`: 0 watches nothing.
fn stall_limit(secs: Option<u64>) -> Option<Duration> {
    match secs {
        None => Some(watchdog::DEFAULT_STALL_LIMIT),
        Some(0) => None,
        Some(secs) => Some(Duration::from_secs(secs)),
    }
}

/// What the watchdog watches in a served ledger: the log's writer and the view's catch-up.
fn watched_storage(ledger: &Ledger) -> Vec<Watched> {
    let log = ledger.log.clone();
    let projection = ledger.projection.clone();
    vec![
        Watched {
            what: "the event log's writer",
            busy_for: Box::new(move || log.busy_for()),
        },
        Watched {
            what: "the projection's catch-up",
            busy_for: Box::new(move || projection.busy_for()),
        },
    ]
}

/// The budget of kept get documents from `--rendered-gets-mb`: 0 keeps none; no more than this
/// machine can address.
fn rendered_gets_bytes(mb: Option<u64>) -> anyhow::Result<usize> {
    match mb {
        None => Ok(call_api::DEFAULT_RENDERED_GETS_BYTES),
        Some(mb) => usize::try_from(mb)
            .ok()
            .and_then(|mb| mb.checked_mul(1 << 20))
            .with_context(|| {
                format!("--rendered-gets-mb {mb} is more memory than any machine has")
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rendered_gets_setting_is_mebibytes_and_refused_past_memory() {
        assert_eq!(
            rendered_gets_bytes(None).unwrap(),
            call_api::DEFAULT_RENDERED_GETS_BYTES
        );
        assert_eq!(rendered_gets_bytes(Some(0)).unwrap(), 0);
        assert_eq!(rendered_gets_bytes(Some(16)).unwrap(), 16 << 20);
        let huge = rendered_gets_bytes(Some(u64::MAX)).unwrap_err().to_string();
        assert!(huge.contains("--rendered-gets-mb"), "{huge}");
    }

    #[test]
    fn the_stall_limit_is_seconds_and_zero_turns_the_watchdog_off() {
        assert_eq!(stall_limit(None), Some(watchdog::DEFAULT_STALL_LIMIT));
        assert_eq!(stall_limit(Some(0)), None);
        assert_eq!(stall_limit(Some(5)), Some(Duration::from_secs(5)));
    }
}
