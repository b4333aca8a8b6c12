//! `call-gateway` is the only crate that speaks NATS. [`run`] serves the Calls API as a NATS
//! micro service (request-reply on `<prefix>.api.*`), applies producers' commands from the
//! JetStream stream `CALL_COMMANDS`, and publishes every event of the log to `CALL_EVENTS` from
//! its own checkpoint, until the shutdown future completes; then it drains. [`connect`] opens
//! the client it runs on, and [`client::call`] is the client for people (`callledger calls`).
//!
//! The wire format is not here: `call-api` turns a request (operation, headers, payload) into a
//! response (status, headers, body); this crate maps NATS messages to requests and responses
//! back to replies and acks.
//!
//! Backpressure: requests and commands in flight are bounded by
//! [`GatewayConfig::max_in_flight`] each. Past the bound a request is answered 503 at once
//! (a NATS subscription that falls behind drops messages silently), and the command consumer
//! stops pulling.

#![warn(missing_docs)]

pub mod client;
mod commands;
mod connect;
mod error;
mod follow;
mod headers;
mod lease;
mod names;
mod outbox;
mod rate_share;
mod service;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use call_api::Api;
use event_log::EventLog;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// The NATS client the gateway's functions take.
pub use async_nats::Client;
pub use connect::{connect, connect_now, NatsOptions};
pub use error::{GatewayError, GatewayErrorKind};
pub use names::{JetStreamNames, DEFAULT_SUBJECT_PREFIX};
pub use service::index_memory;

/// How the gateway runs; built by the binary and passed to [`run`].
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The first token(s) of every subject: `<prefix>.api.*`, `<prefix>.commands.>`,
    /// `<prefix>.events.>`, `<prefix>.rejected.>` (`calls`).
    pub subject_prefix: String,
    /// Requests handled at once, and separately producers' commands handled at once (256).
    pub max_in_flight: usize,
    /// The duplicate window of the streams this service creates (2 minutes).
    pub duplicate_window: Duration,
    /// The data directory, where the outbox keeps `outbox.checkpoint`.
    pub data_dir: PathBuf,
    /// The queue group of the service's endpoints (`call-ledger`), shared by every instance.
    pub queue_group: String,
    /// How long the writer lock (one embedded ledger per subject prefix) outlives its holder's
    /// last renewal: a second instance is refused while it is held, and an instance that died
    /// without releasing it is replaced after this long (10 s). The same data directory
    /// restarted takes it back at once.
    pub lock_ttl: Duration,
    /// Whether the log of record is shared by several instances (the JetStream engine): then no
    /// writer lock is taken, and no outbox runs, since consumers read the log's own stream
    /// (`CALL_LOG`), which holds every event once, in position order.
    pub replicated_log: bool,
    /// How often the projection's index snapshot is written while the service runs
    /// ([`DEFAULT_INDEX_SNAPSHOT_EVERY`]); it is also written at a clean stop.
    pub index_snapshot_every: Duration,
}

/// How often the index snapshot is written while serving: at a million calls a write holds
/// catch-up for about a second, and an open after a crash brings the snapshot up to the view
/// at about 30 us per call changed since (10 minutes at 400 writes/s: 240,000 events, some
/// seconds).
pub const DEFAULT_INDEX_SNAPSHOT_EVERY: Duration = Duration::from_secs(600);

/// How long the final flush of the connection may take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the gateway on `client` until `shutdown` completes, then drains and returns `Ok`.
///
/// Concurrently: the micro service `call-ledger` with one endpoint per operation; the consumer
/// of producers' commands; the projection's follower; the outbox. When `shutdown` completes it
/// stops the endpoints (requests still buffered are answered 503), waits for the requests and
/// commands in flight, lets the outbox finish its batch, flushes the log and the connection,
/// and drains the connection.
///
/// Fails at start on a bad configuration, an unreadable outbox checkpoint or when the service's
/// subscriptions fail; later only if one of its tasks stopped unexpectedly (after draining the
/// others). NATS being unreachable is not an error: everything waits and retries.
pub async fn run(
    client: Client,
    api: Api,
    log: EventLog,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    let max_in_flight = validate(&config)?;
    let prefix = config.subject_prefix.clone();
    let names = JetStreamNames::of(&prefix);
    let js = async_nats::jetstream::new(client.clone());
    let mut shutdown = std::pin::pin!(shutdown);

    // One embedded ledger per subject prefix: refuse to serve while another instance does. A
    // log shared by several instances needs no lock (its appends are fenced by the stream).
    let (lock_stop_tx, lock_stop_rx) = watch::channel(false);
    let mut lock_task = if config.replicated_log {
        tokio::spawn(async move {
            let mut stop = lock_stop_rx;
            stopped(&mut stop).await;
            Ok(())
        })
    } else {
        let Some(lock) = take_writer_lock(&js, &names, &config, shutdown.as_mut()).await? else {
            return Ok(());
        };
        tokio::spawn(lock.hold(lock_stop_rx))
    };

    // With a shared log, consumers read the log's own stream: no outbox.
    let outbox = if config.replicated_log {
        None
    } else {
        Some(
            outbox::Outbox::open(
                js.clone(),
                log.clone(),
                prefix.clone(),
                config.duplicate_window,
                &config.data_dir,
            )
            .await?,
        )
    };
    let started = service::start(&client, &prefix, &config.queue_group, &api).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (outbox_stop_tx, outbox_stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn({
        let (client, api, stop) = (client.clone(), api.clone(), stop_rx.clone());
        async move {
            service::serve(started, client, api, max_in_flight, stop).await;
            "the service"
        }
    });
    tasks.spawn({
        let commands = commands::Commands {
            js: js.clone(),
            api: api.clone(),
            names: names.clone(),
            prefix,
            duplicate_window: config.duplicate_window,
            max_in_flight,
        };
        let stop = stop_rx.clone();
        async move {
            commands::run(commands, stop).await;
            "the command consumer"
        }
    });
    tasks.spawn({
        let (api, log, stop) = (api.clone(), log.clone(), stop_rx.clone());
        async move {
            follow::run(api, log, config.index_snapshot_every, stop).await;
            "the projection's follower"
        }
    });
    if let Some(limiter) = api.config().rate_limiter.clone() {
        let (js, bucket, stop) = (js.clone(), names.rate_bucket.clone(), stop_rx.clone());
        tasks.spawn(async move {
            rate_share::run(js, bucket, limiter, stop).await;
            "the rate-limit sharing"
        });
    }
    // The outbox stops last, so that it publishes what the drain appended.
    let mut outbox_task = JoinSet::new();
    if let Some(outbox) = outbox {
        outbox_task.spawn(async move {
            outbox::run(outbox, outbox_stop_rx).await;
            "the outbox"
        });
    }
    tracing::info!(
        prefix = %config.subject_prefix,
        max_in_flight,
        "call-ledger gateway running"
    );

    let mut failure = None;
    let mut lock_ended = false;
    tokio::select! {
        () = &mut shutdown => tracing::info!("shutting down: draining"),
        Some(joined) = tasks.join_next() => failure = Some(unexpected_end(joined)),
        Some(joined) = outbox_task.join_next() => failure = Some(unexpected_end(joined)),
        held = &mut lock_task => {
            lock_ended = true;
            let error = match held {
                Ok(Err(error)) => error,
                Ok(Ok(())) => GatewayError::new(GatewayErrorKind::Task, "the writer lock ended"),
                Err(error) => panicked(error),
            };
            tracing::error!(%error, "lost the writer lock; stopping");
            failure = Some(error);
        }
    }
    // Nobody may be left waiting for the receivers, so a failed send is fine.
    let _ = stop_tx.send(true);
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            failure.get_or_insert(panicked(error));
        }
    }
    let _ = outbox_stop_tx.send(true);
    while let Some(joined) = outbox_task.join_next().await {
        if let Err(error) = joined {
            failure.get_or_insert(panicked(error));
        }
    }

    let flushed = tokio::task::spawn_blocking(move || log.flush()).await;
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            failure.get_or_insert(GatewayError::with_source(
                GatewayErrorKind::Log,
                "cannot flush the event log",
                error,
            ));
        }
        Err(error) => {
            failure.get_or_insert(panicked(error));
        }
    }
    match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "cannot flush the NATS connection"),
        Err(_) => tracing::warn!("flushing the NATS connection timed out"),
    }
    // Released last, so that no other instance starts before this one has drained.
    let _ = lock_stop_tx.send(true);
    if !lock_ended {
        match tokio::time::timeout(FLUSH_TIMEOUT, lock_task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => {
                failure.get_or_insert(error);
            }
            Ok(Err(error)) => {
                failure.get_or_insert(panicked(error));
            }
            Err(_) => tracing::warn!("releasing the writer lock timed out; it expires by itself"),
        }
    }
    if let Err(error) = client.drain().await {
        tracing::warn!(%error, "cannot drain the NATS connection");
    }
    match failure {
        Some(error) => Err(error),
        None => {
            tracing::info!("drained");
            Ok(())
        }
    }
}

/// Takes the writer lock, waiting (with backoff) while NATS cannot be reached; `None` when
/// `shutdown` came first; an error when another instance holds it.
async fn take_writer_lock(
    js: &async_nats::jetstream::Context,
    names: &JetStreamNames,
    config: &GatewayConfig,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<lease::WriterLock>, GatewayError> {
    let data_dir = config.data_dir.clone();
    let holder = tokio::task::spawn_blocking(move || lease::Holder::of_this_process(&data_dir))
        .await
        .map_err(|e| {
            GatewayError::with_source(GatewayErrorKind::Task, "reading the instance id", e)
        })??;
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        let acquired = tokio::select! {
            () = &mut shutdown => return Ok(None),
            acquired = lease::WriterLock::acquire(js, &names.lock_bucket, holder.clone(), config.lock_ttl) => acquired,
        };
        match acquired {
            Ok(lock) => {
                tracing::info!(bucket = %names.lock_bucket, instance = %holder.instance, "writer lock taken");
                return Ok(Some(lock));
            }
            Err(error) if error.kind() == GatewayErrorKind::Locked => return Err(error),
            Err(error) => {
                tracing::warn!(%error, "cannot take the writer lock yet; retrying");
                tokio::select! {
                    () = &mut shutdown => return Ok(None),
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

/// Checks the configuration; returns `max_in_flight` as a permit count.
fn validate(config: &GatewayConfig) -> Result<u32, GatewayError> {
    let config_error = |message: String| GatewayError::new(GatewayErrorKind::Config, message);
    let prefix = &config.subject_prefix;
    let valid_token = |token: &str| {
        !token.is_empty()
            && !token
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>'))
    };
    if !prefix.split('.').all(valid_token) {
        return Err(config_error(format!(
            "subject prefix {prefix:?} must be one or more dot-separated tokens without \
             whitespace or wildcards"
        )));
    }
    let group = &config.queue_group;
    if group.is_empty() || group.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(config_error(format!(
            "queue group {group:?} must be non-empty without whitespace"
        )));
    }
    match u32::try_from(config.max_in_flight) {
        Ok(n) if n >= 1 && config.max_in_flight <= Semaphore::MAX_PERMITS => Ok(n),
        _ => Err(config_error(format!(
            "max in flight must be between 1 and {}, not {}",
            u32::MAX,
            config.max_in_flight
        ))),
    }
}

/// The error for a task that ended before the shutdown.
fn unexpected_end(joined: Result<&'static str, tokio::task::JoinError>) -> GatewayError {
    match joined {
        Ok(name) => {
            tracing::error!("{name} stopped unexpectedly; shutting down");
            GatewayError::new(
                GatewayErrorKind::Task,
                format!("{name} stopped unexpectedly"),
            )
        }
        Err(error) => panicked(error),
    }
}

/// The error for a task that panicked.
fn panicked(error: tokio::task::JoinError) -> GatewayError {
    tracing::error!(%error, "a gateway task failed");
    GatewayError::with_source(GatewayErrorKind::Task, "a gateway task failed", error)
}

/// Completes when `stop` says so, or when its sender is gone (which means the same).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone; that is a stop too.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Sleeps for `delay` unless stopped first; returns whether it was stopped.
pub(crate) async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        biased;
        () = stopped(stop) => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// Exponential backoff between retries.
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial` and doubles up to `max`.
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The pause before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to the initial pause after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}
