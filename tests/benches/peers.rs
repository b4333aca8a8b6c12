//! The peers' benchmark (issue 8): what a team would pick instead of call-ledger, side by side
//! in one run, on the same event bytes, with the same durability (acknowledged = fsynced):
//!
//! 1. call-ledger's durable create, in process (`Api::handle`) and over NATS (the gateway);
//! 2. NATS JetStream used directly as the event store: one subject per call, each event
//!    published with `Nats-Expected-Last-Subject-Sequence`, file storage, on nats-server 2.15.1
//!    with `sync_interval: always` (and at its default sync, which is not durable, labelled so);
//! 3. PostgreSQL as the event store in the style of Message DB: one table, a unique
//!    `(stream_name, position)`, the next position computed and the row inserted in one
//!    statement (one transaction), `synchronous_commit` on.
//!
//! At 1, 16 and 64 writers, each waiting for its acknowledgement before the next write;
//! call-ledger's writes are timed until its projection holds them and its outbox has published
//! them, so that none of its work runs on into the next peer's sample. Then
//! each replays its events into the same current-state view (PostgreSQL: a table of the last
//! event per call; JetStream: the stream read from the start and folded into a map; call-ledger:
//! `Projection::rebuild`). Run with `make bench-peers` or `cargo bench -p call-ledger-tests
//! --bench peers`; `BENCH_QUICK=1` for a smoke run; `PEERS_POSTGRES` overrides the connection
//! string (`host=127.0.0.1 user=postgres dbname=test`). PostgreSQL is skipped with a line saying
//! so when none is reachable, JetStream at `sync_interval: always` when nats-server 2.15 is not
//! installed (`make nats-server-2.15`).

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use call_api::{Api, Operation, Source};
use call_ledger_tests::NatsServer;
use call_projections::Projection;
use event_log::{EventLog, LogOptions};
use futures::StreamExt;
use tokio::runtime::Runtime;

use support::service::{
    drive, event_payload, tasks, threads, until_applied_and_published, wait_until_served, Gateway,
    Req, Sample, PREFIX,
};
use support::{
    create_document, print_table, quick, Row, Sizes, Stats, Target, LEDGER_CALLS, LEVELS,
};

/// One peer's write path: `count` writes from `writers` writers, numbered from `first`.
trait Peer {
    fn name(&self) -> String;
    fn write(&self, writers: usize, first: usize, count: usize) -> Sample;
    /// Replays every event into the current-state view: (events, seconds); `None` for a path
    /// with no store of its own (call-ledger over NATS shares the in-process one's log).
    fn replay(&self) -> Option<(u64, f64)>;
}

fn main() {
    let started = Instant::now();
    let quick = quick();
    let sizes = Sizes::pick(quick, [100, 600, 1_500], [300, 3_000, 8_000]);
    support::banner("peers", quick);
    let payload = Bytes::from(event_payload());
    println!(
        "one create's event: {} bytes (what the peers store per write)",
        payload.len()
    );

    let nats = NatsServer::start();
    let data = tempfile::tempdir().expect("a data directory");
    let ours = Ledger::open(&nats.url(), data.path());
    let mut peers: Vec<Box<dyn Peer>> =
        vec![Box::new(ours.in_process()), Box::new(ours.over_nats())];
    let fsyncing = NatsServer::start_fsyncing();
    match &fsyncing {
        Some(server) => peers.push(Box::new(JetStreamDirect::open(
            &server.url(),
            "JetStream direct (2.15.1, sync_interval: always)",
            payload.clone(),
        ))),
        None => println!(
            "JetStream direct at sync_interval: always: skipped (nats-server 2.15.1 is not installed: make nats-server-2.15)"
        ),
    }
    peers.push(Box::new(JetStreamDirect::open(
        &nats.url(),
        "JetStream direct (default sync: NOT durable)",
        payload.clone(),
    )));
    let connection = std::env::var("PEERS_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into());
    match Postgres::open(&connection, payload.clone()) {
        Ok(postgres) => peers.push(Box::new(postgres)),
        Err(error) => println!("PostgreSQL: skipped ({connection}: {error})"),
    }

    // rates[peer][slot], latencies[peer][slot]
    let mut rates = vec![vec![Vec::new(); LEVELS.len()]; peers.len()];
    let mut latencies = vec![vec![Vec::new(); LEVELS.len()]; peers.len()];
    let mut first = 0;
    for (slot, &writers) in LEVELS.iter().enumerate() {
        for round in 0..=sizes.samples {
            // Taking turns, so that noise hits each alike.
            for (index, peer) in peers.iter().enumerate() {
                let sample = peer.write(writers, first, sizes.per_level[slot]);
                if round > 0 {
                    rates[index][slot].push(sample.per_second);
                    latencies[index][slot].extend(sample.latencies);
                }
            }
            first += sizes.per_level[slot];
        }
    }

    let mut rows = Vec::new();
    for (slot, &writers) in LEVELS.iter().enumerate() {
        let figure = |index: usize| {
            let latency = Stats::from_durations_us(&latencies[index][slot]);
            (
                Stats::new(rates[index][slot].clone()).median(),
                latency.percentile(50.0),
                latency.percentile(99.0),
            )
        };
        for (index, peer) in peers.iter().enumerate() {
            let (rate, p50, p99) = figure(index);
            println!(
                "{writers:>2} writers: {}: {rate:.0} writes/s, p50 {p50:.0} us, p99 {p99:.0} us",
                peer.name()
            );
        }
        for ours in 0..2 {
            let (our_rate, our_p50, our_p99) = figure(ours);
            for (index, peer) in peers.iter().enumerate().skip(2) {
                let (rate, p50, p99) = figure(index);
                let durable = !peer.name().contains("NOT durable");
                rows.push(Row {
                    metric: format!(
                        "{writers} writers, writes/s: {} vs {} (p50 {:.1} vs {:.1} ms, p99 {:.1} vs {:.1} ms)",
                        peers[ours].name(),
                        peer.name(),
                        our_p50 / 1000.0,
                        p50 / 1000.0,
                        our_p99 / 1000.0,
                        p99 / 1000.0
                    ),
                    ours: our_rate,
                    baseline: Some(rate),
                    target: if writers == 64 && durable {
                        Target::RatioAtLeast(1.0)
                    } else {
                        Target::None
                    },
                });
            }
        }
    }

    // Replays: each store's events into its current-state view.
    let (our_events, our_seconds) = peers[0].replay().expect("call-ledger rebuilds");
    println!(
        "{}: rebuilt {our_events} events in {our_seconds:.2} s",
        peers[0].name()
    );
    for peer in peers.iter().skip(2) {
        let Some((events, seconds)) = peer.replay() else {
            continue;
        };
        println!(
            "{}: replayed {events} events in {seconds:.2} s",
            peer.name()
        );
        rows.push(Row {
            metric: format!(
                "replay into the current view, events/s: call-ledger rebuild ({our_events} events) vs {} ({events} events)",
                peer.name()
            ),
            ours: our_events as f64 / our_seconds.max(1e-9),
            baseline: Some(events as f64 / seconds.max(1e-9)),
            target: Target::RatioAtLeast(1.0),
        });
    }

    ours.stop();
    print_table(
        &format!(
            "The peers side by side (issue 8), {} mode, started {}, took {:.0} s",
            if quick { "quick" } else { "full" },
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            started.elapsed().as_secs_f64()
        ),
        &rows,
    );
    drop(fsyncing);
}

/// call-ledger on a durable sled log, served by the gateway, and its API in process.
struct Ledger {
    gateway: Gateway,
    projection: Projection,
    runtime: Arc<Runtime>,
    client: async_nats::Client,
}

impl Ledger {
    fn open(url: &str, dir: &std::path::Path) -> Ledger {
        let log = EventLog::open(&dir.join("log"), LogOptions::durable()).expect("open the log");
        let gateway = Gateway::start(url, dir, log.clone());
        // A projection of its own for the rebuild, so the gateway's is not disturbed.
        let projection =
            Projection::open(&dir.join("replay-projection"), log).expect("open a projection");
        let runtime = Arc::new(Runtime::new().expect("the load generator's runtime"));
        let client = runtime
            .block_on(async_nats::connect(url))
            .expect("connect the load generator");
        runtime.block_on(wait_until_served(&client));
        Ledger {
            gateway,
            projection,
            runtime,
            client,
        }
    }

    fn in_process(&self) -> InProcess {
        InProcess {
            api: self.gateway.api.clone(),
            projection: self.projection.clone(),
            runtime: Arc::clone(&self.runtime),
            client: self.client.clone(),
        }
    }

    fn over_nats(&self) -> OverNats {
        OverNats {
            runtime: Arc::clone(&self.runtime),
            client: self.client.clone(),
            api: self.gateway.api.clone(),
        }
    }

    fn stop(self) {
        self.gateway.stop();
    }
}

/// The create document of write `index`, as JSON bytes.
fn document(index: usize) -> Vec<u8> {
    serde_json::to_vec(&create_document(index as u64, LEDGER_CALLS)).expect("a document")
}

/// call-ledger's create through `Api::handle`, in process.
struct InProcess {
    api: Api,
    projection: Projection,
    /// The load generator's runtime and connection, to wait for the outbox.
    runtime: Arc<Runtime>,
    client: async_nats::Client,
}

impl Peer for InProcess {
    fn name(&self) -> String {
        "call-ledger in process".into()
    }

    fn write(&self, writers: usize, first: usize, count: usize) -> Sample {
        let documents: Vec<Vec<u8>> = (first..first + count).map(document).collect();
        let write = || {
            threads(writers, count, |index| {
                let response = self.api.handle(call_api::Request {
                    operation: Operation::Create,
                    headers: &[],
                    payload: &documents[index],
                    source: Source::Api,
                });
                assert!(!response.is_error(), "create: {}", response.status);
            })
        };
        until_applied_and_published(&self.api, &self.client, &self.runtime, count, write)
    }

    fn replay(&self) -> Option<(u64, f64)> {
        let report = self.projection.rebuild(&mut |_, _| {}).expect("rebuild");
        Some((report.events, report.seconds))
    }
}

/// call-ledger's create over NATS, through the gateway.
struct OverNats {
    runtime: Arc<Runtime>,
    client: async_nats::Client,
    /// The gateway's API, to time the writes until its projection holds them (and the outbox
    /// has published them).
    api: Api,
}

impl Peer for OverNats {
    fn name(&self) -> String {
        "call-ledger over NATS".into()
    }

    fn write(&self, writers: usize, first: usize, count: usize) -> Sample {
        let requests: Vec<Req> = (first..first + count)
            .map(|index| {
                (
                    format!("{PREFIX}.api.create"),
                    HeaderMap::new(),
                    Bytes::from(document(index + 1_000_000_000)),
                )
            })
            .collect();
        let write = || {
            self.runtime
                .block_on(drive(&self.client, writers, requests))
        };
        until_applied_and_published(&self.api, &self.client, &self.runtime, count, write)
    }

    fn replay(&self) -> Option<(u64, f64)> {
        None
    }
}

/// NATS JetStream as the event store: one subject per call, each new call's first event
/// published with `Nats-Expected-Last-Subject-Sequence: 0`.
struct JetStreamDirect {
    name: String,
    runtime: Runtime,
    js: jetstream::Context,
    payload: Bytes,
}

const PEER_STREAM: &str = "PEER_EVENTS";

impl JetStreamDirect {
    fn open(url: &str, name: &str, payload: Bytes) -> JetStreamDirect {
        let runtime = Runtime::new().expect("a runtime");
        let js = runtime.block_on(async {
            let client = async_nats::connect(url).await.expect("connect");
            let js = jetstream::new(client);
            js.get_or_create_stream(jetstream::stream::Config {
                name: PEER_STREAM.into(),
                subjects: vec!["peer.call.>".into()],
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .expect("the peer stream");
            js
        });
        JetStreamDirect {
            name: name.into(),
            runtime,
            js,
            payload,
        }
    }
}

impl Peer for JetStreamDirect {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn write(&self, writers: usize, first: usize, count: usize) -> Sample {
        let (js, payload) = (self.js.clone(), self.payload.clone());
        self.runtime
            .block_on(tasks(writers, count, move |_, index| {
                let (js, payload) = (js.clone(), payload.clone());
                async move {
                    let mut headers = HeaderMap::new();
                    headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
                    js.publish_with_headers(
                        format!("peer.call.{}", first + index),
                        headers,
                        payload,
                    )
                    .await
                    .expect("publish")
                    .await
                    .expect("an ack");
                }
            }))
    }

    fn replay(&self) -> Option<(u64, f64)> {
        Some(self.runtime.block_on(async {
            let stream = self.js.get_stream(PEER_STREAM).await.expect("the stream");
            let total = stream.cached_info().state.messages;
            let started = Instant::now();
            let consumer = stream
                .create_consumer(jetstream::consumer::pull::Config {
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    ack_policy: jetstream::consumer::AckPolicy::None,
                    ..Default::default()
                })
                .await
                .expect("a replay consumer");
            let mut messages = consumer.messages().await.expect("messages");
            // The fold: the current state of each call, from its events.
            let mut view: HashMap<String, (u64, serde_json::Value)> = HashMap::new();
            let mut seen = 0;
            while seen < total {
                let message = messages
                    .next()
                    .await
                    .expect("the stream goes on")
                    .expect("a message");
                let sequence = message.info().expect("info").stream_sequence;
                let event: serde_json::Value =
                    serde_json::from_slice(&message.payload).expect("an event");
                view.insert(message.subject.to_string(), (sequence, event));
                seen += 1;
            }
            (seen, started.elapsed().as_secs_f64())
        }))
    }
}

/// PostgreSQL as the event store, in the style of Message DB.
struct Postgres {
    runtime: Runtime,
    connection: String,
    payload: String,
}

impl Postgres {
    fn open(connection: &str, payload: Bytes) -> Result<Postgres, String> {
        let runtime = Runtime::new().map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let client = connect(connection).await?;
            let synchronous: String = client
                .query_one("SHOW synchronous_commit", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            let fsync: String = client
                .query_one("SHOW fsync", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            println!("PostgreSQL: synchronous_commit = {synchronous}, fsync = {fsync}");
            client
                .batch_execute(
                    "DROP TABLE IF EXISTS peer_view; DROP TABLE IF EXISTS peer_messages;
                     CREATE TABLE peer_messages (
                         global_position bigserial PRIMARY KEY,
                         stream_name text NOT NULL,
                         position bigint NOT NULL,
                         data jsonb NOT NULL,
                         time timestamptz NOT NULL DEFAULT now(),
                         UNIQUE (stream_name, position));",
                )
                .await
                .map_err(|e| e.to_string())
        })?;
        Ok(Postgres {
            runtime,
            connection: connection.into(),
            payload: String::from_utf8(payload.to_vec()).map_err(|e| e.to_string())?,
        })
    }
}

async fn connect(connection: &str) -> Result<tokio_postgres::Client, String> {
    let (client, driver) = tokio_postgres::connect(connection, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = driver.await;
    });
    Ok(client)
}

impl Peer for Postgres {
    fn name(&self) -> String {
        "PostgreSQL (Message DB style)".into()
    }

    fn write(&self, writers: usize, first: usize, count: usize) -> Sample {
        self.runtime.block_on(async {
            // One connection per writer, each with the insert prepared: the next position of
            // the stream and the insert in one statement (one transaction); the unique index
            // refuses a concurrent duplicate.
            let mut connections = Vec::with_capacity(writers);
            for _ in 0..writers {
                let client = connect(&self.connection).await.expect("connect");
                let insert = client
                    .prepare(
                        "INSERT INTO peer_messages (stream_name, position, data)
                         SELECT $1, COALESCE(MAX(position) + 1, 0), $2::text::jsonb
                         FROM peer_messages WHERE stream_name = $1",
                    )
                    .await
                    .expect("prepare");
                connections.push((client, insert));
            }
            let (connections, payload) = (Arc::new(connections), self.payload.clone());
            tasks(writers, count, move |task, index| {
                let (connections, payload) = (Arc::clone(&connections), payload.clone());
                async move {
                    let (client, insert) = &connections[task];
                    let stream = format!("call-{}", first + index);
                    client
                        .execute(insert, &[&stream, &payload])
                        .await
                        .expect("insert an event");
                }
            })
            .await
        })
    }

    fn replay(&self) -> Option<(u64, f64)> {
        Some(self.runtime.block_on(async {
            let client = connect(&self.connection).await.expect("connect");
            let events: i64 = client
                .query_one("SELECT count(*) FROM peer_messages", &[])
                .await
                .expect("count")
                .get(0);
            let started = Instant::now();
            client
                .batch_execute(
                    "DROP TABLE IF EXISTS peer_view;
                     CREATE TABLE peer_view AS
                         SELECT DISTINCT ON (stream_name) stream_name, position AS version, data
                         FROM peer_messages ORDER BY stream_name, position DESC;
                     ALTER TABLE peer_view ADD PRIMARY KEY (stream_name);",
                )
                .await
                .expect("the view");
            (events as u64, started.elapsed().as_secs_f64())
        }))
    }
}
