//! The JetStream engine's benchmark (issue 7): durable creates and gets through the API (which syncs with the stream first: read-your-writes across
//! instances) at 1, 16 and 64 in flight, on the JetStream engine with one replica (one
//! `nats-server`) and with three (a three-node loopback cluster), each beside raw JetStream
//! publish-with-ack of the same bytes on the same server (the engine's ceiling) and beside the
//! sled engine.
//!
//! Run with `cargo bench -p call-ledger-tests --bench jetstream` (or `make bench`);
//! `BENCH_QUICK=1` shrinks every size for a smoke run. The cluster uses the official
//! nats-server 2.15 with `sync_interval: always` when `make nats-server-2.15` installed it (every
//! record fsynced before its ack), else the `nats-server` on PATH at its default sync; the
//! single server is the one on PATH. Each table says which.

mod support;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use call_api::{Api, ApiConfig, Operation, Source};
use call_commands::{CommandRequest, CommandService};
use call_ledger_tests::{NatsCluster, NatsServer};
use call_projections::Projection;
use event_log::{EventLog, LogOptions};
use event_log_jetstream::{JetStreamLog, JetStreamOptions};
use tokio::runtime::Runtime;

use support::service::{create, event_payload, now, tasks, threads, until_applied, Sample};
use support::{
    create_document, print_table, quick, Row, Sizes, Stats, Target, LEDGER_CALLS, LEVELS,
};

/// The sections a run may be limited to.
const SECTIONS: [&str; 3] = ["r1", "r3", "appends"];
/// The target of the engine's creates at 64 in flight, against raw publish-with-ack.
const CREATE_TARGET: f64 = 0.5;

fn main() {
    let started = Instant::now();
    let quick = quick();
    let sizes = Sizes::pick(quick, [100, 800, 2_000], [400, 4_000, 10_000]);
    support::banner("jetstream", quick);
    let payload = event_payload();
    println!("one create's event: {} bytes", payload.len());

    // `cargo bench --bench jetstream -- r1 appends` runs only R1, and only its appends and
    // their baseline (for a profile).
    let sections = support::sections(&SECTIONS);
    let modes: Vec<&String> = sections.iter().filter(|s| s.starts_with('r')).collect();
    let wanted = |mode: &str| modes.is_empty() || modes.iter().any(|s| *s == mode);
    let appends_only = sections.iter().any(|s| s == "appends");

    let mut rows = Vec::new();
    if wanted("r1") {
        let server = NatsServer::start();
        let url = server.url();
        println!("R1: one nats-server (the one on PATH, its default sync) at {url}");
        rows.extend(figures("R1", &url, 1, &sizes, &payload, appends_only));
    }
    if wanted("r3") {
        let cluster = NatsCluster::start(3);
        wait_for_cluster(&cluster.url(0));
        println!(
            "R3: a three-node loopback cluster ({})",
            if cluster.fsyncs_every_write() {
                "nats-server 2.15.1, sync_interval: always"
            } else {
                "the nats-server on PATH, its default sync"
            }
        );
        rows.extend(figures(
            "R3",
            &cluster.urls(),
            3,
            &sizes,
            &payload,
            appends_only,
        ));
    }
    print_table(
        &format!(
            "The JetStream engine (issue 7), {} mode, started {}, took {:.0} s",
            if quick { "quick" } else { "full" },
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            started.elapsed().as_secs_f64()
        ),
        &rows,
    );
}

/// The rows of one replica count: creates on the engine and on sled against raw publishes,
/// and gets on the engine against gets on sled.
fn figures(
    label: &str,
    url: &str,
    replicas: usize,
    sizes: &Sizes,
    payload: &[u8],
    appends_only: bool,
) -> Vec<Row> {
    let data = tempfile::tempdir().expect("a data directory");
    let engine = JetStreamLog::open(
        url,
        JetStreamOptions {
            stream: "BENCH_LOG".into(),
            subject_prefix: "bench.log".into(),
            replicas,
            timeout: Duration::from_secs(10),
            // Kept on disk, as `callledger serve` keeps it.
            replica_dir: Some(data.path().join("replica")),
        },
    )
    .expect("open the JetStream engine")
    .into_event_log();
    let sled =
        EventLog::open(&data.path().join("sled-log"), LogOptions::durable()).expect("open sled");
    let (jetstream_api, jetstream_projection) =
        api(&engine, &data.path().join("js-projection"), true);
    let (sled_api, sled_projection) = api(&sled, &data.path().join("sled-projection"), false);
    let raw = Raw::open(url, replicas);

    let mut rows = Vec::new();
    for (slot, &in_flight) in LEVELS.iter().enumerate() {
        let count = sizes.per_level[slot];
        let mut engine_appends = Vec::new();
        let mut sled_appends = Vec::new();
        let mut engine_creates = Vec::new();
        let mut sled_creates = Vec::new();
        let mut raw_publishes = Vec::new();
        let mut engine_gets = Vec::new();
        let mut sled_gets = Vec::new();
        for round in 0..=sizes.samples {
            // Taking turns, so that noise hits each alike.
            let appends = (
                appends(&engine, in_flight, count),
                appends(&sled, in_flight, count),
            );
            if appends_only {
                let raw = raw.publish(in_flight, count, payload);
                if round > 0 {
                    engine_appends.push(appends.0);
                    sled_appends.push(appends.1);
                    raw_publishes.push(raw);
                }
                continue;
            }
            let samples = (
                creates(&jetstream_api, in_flight, count),
                creates(&sled_api, in_flight, count),
                raw.publish(in_flight, count, payload),
                {
                    jetstream_projection.catch_up().expect("catch up");
                    gets(&jetstream_api, engine.head(), in_flight, count)
                },
                {
                    sled_projection.catch_up().expect("catch up");
                    gets(&sled_api, sled.head(), in_flight, count)
                },
            );
            if round > 0 {
                engine_appends.push(appends.0);
                sled_appends.push(appends.1);
                engine_creates.push(samples.0);
                sled_creates.push(samples.1);
                raw_publishes.push(samples.2);
                engine_gets.push(samples.3);
                sled_gets.push(samples.4);
            }
        }
        let (raw_rate, raw_p99) = summary(&raw_publishes);
        let (append_rate, append_p99) = summary(&engine_appends);
        let (sled_append_rate, sled_append_p99) = summary(&sled_appends);
        let target = if in_flight == 64 {
            Target::RatioAtLeast(CREATE_TARGET)
        } else {
            Target::None
        };
        rows.push(Row {
            metric: format!(
                "{label} append (a create decided by CommandService), JetStream engine vs raw publish-with-ack, {in_flight} in flight (/s; p99 {} vs {} ms)",
                ms(append_p99),
                ms(raw_p99)
            ),
            ours: append_rate,
            baseline: Some(raw_rate),
            target,
        });
        rows.push(Row {
            metric: format!(
                "{label} append, sled engine (durable) vs raw publish-with-ack, {in_flight} in flight (/s; p99 {} ms)",
                ms(sled_append_p99)
            ),
            ours: sled_append_rate,
            baseline: Some(raw_rate),
            target: Target::None,
        });
        if appends_only {
            continue;
        }
        let (engine_rate, engine_p99) = summary(&engine_creates);
        let (sled_rate, sled_p99) = summary(&sled_creates);
        let (get_rate, get_p99) = summary(&engine_gets);
        let (sled_get_rate, sled_get_p99) = summary(&sled_gets);
        rows.push(Row {
            metric: format!(
                "{label} create through the API (parsed, appended, projected), JetStream engine vs sled engine, {in_flight} in flight (/s; p99 {} vs {} ms)",
                ms(engine_p99),
                ms(sled_p99)
            ),
            ours: engine_rate,
            baseline: Some(sled_rate),
            target: Target::None,
        });
        rows.push(Row {
            metric: format!(
                "{label} get, JetStream engine (synced) vs sled engine, {in_flight} in flight (/s; p99 {} vs {} ms)",
                ms(get_p99),
                ms(sled_get_p99)
            ),
            ours: get_rate,
            baseline: Some(sled_get_rate),
            target: Target::None,
        });
    }
    rows
}

/// The median throughput of the samples and the p99 latency over all of them, in µs.
fn summary(samples: &[Sample]) -> (f64, f64) {
    let rate = Stats::new(samples.iter().map(|s| s.per_second).collect()).median();
    let latencies: Vec<Duration> = samples.iter().flat_map(|s| s.latencies.clone()).collect();
    (rate, Stats::from_durations_us(&latencies).percentile(99.0))
}

fn ms(micros: f64) -> String {
    format!("{:.1}", micros / 1000.0)
}

/// An API over `log` with its projection in `dir`; `sync_reads` as on a shared log.
fn api(log: &EventLog, dir: &std::path::Path, sync_reads: bool) -> (Api, Projection) {
    let projection = Projection::open(dir, log.clone()).expect("open a projection");
    let api = Api::new(
        CommandService::new(log.clone()),
        projection.clone(),
        ApiConfig {
            sync_reads,
            ..ApiConfig::open(1024 * 1024)
        },
        now,
    );
    (api, projection)
}

/// `count` creates through `CommandService` on `log` (decided and appended; no projection)
/// from `in_flight` threads.
fn appends(log: &EventLog, in_flight: usize, count: usize) -> Sample {
    let service = CommandService::new(log.clone());
    let commands: Vec<std::sync::Mutex<Option<CommandRequest>>> = (0..count)
        .map(|index| std::sync::Mutex::new(Some(create(index as u64))))
        .collect();
    threads(in_flight, count, |index| {
        let command = commands[index]
            .lock()
            .expect("a command")
            .take()
            .expect("once");
        service.execute(command).expect("a create is appended");
    })
}

/// `count` creates through the API (validated, appended, applied to the projection) from
/// `in_flight` threads.
fn creates(api: &Api, in_flight: usize, count: usize) -> Sample {
    let documents: Vec<Vec<u8>> = (0..count)
        .map(|index| {
            serde_json::to_vec(&create_document(index as u64, LEDGER_CALLS)).expect("a document")
        })
        .collect();
    let write = || {
        threads(in_flight, count, |index| {
            let response = api.handle(call_api::Request {
                operation: Operation::Create,
                headers: &[],
                payload: &documents[index],
                source: Source::Api,
            });
            assert!(!response.is_error(), "create: {}", response.status);
        })
    };
    until_applied(api, count, write)
}

/// `count` gets of existing calls through the API from `in_flight` threads.
fn gets(api: &Api, calls: u64, in_flight: usize, count: usize) -> Sample {
    threads(in_flight, count, |index| {
        let id = 1 + (index as u64 * 7919) % calls.max(1);
        let response = api.handle(call_api::Request {
            operation: Operation::Get(id.to_string()),
            headers: &[],
            payload: b"",
            source: Source::Api,
        });
        assert!(!response.is_error(), "get {id}: {}", response.status);
    })
}

/// Raw JetStream publish-with-ack on a stream like the engine's (file storage, the same
/// replicas), from tasks that each wait for their ack before the next publish.
struct Raw {
    runtime: Runtime,
    js: jetstream::Context,
}

impl Raw {
    fn open(url: &str, replicas: usize) -> Raw {
        let runtime = Runtime::new().expect("the raw publisher's runtime");
        let js = runtime.block_on(async {
            let servers: Vec<async_nats::ServerAddr> = url
                .split(',')
                .map(|server| server.parse().expect("a server URL"))
                .collect();
            let client = async_nats::connect(servers).await.expect("connect");
            let js = jetstream::new(client);
            js.get_or_create_stream(jetstream::stream::Config {
                name: "BENCH_RAW".into(),
                subjects: vec!["bench.raw.>".into()],
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .expect("the raw stream");
            js
        });
        Raw { runtime, js }
    }

    fn publish(&self, in_flight: usize, count: usize, payload: &[u8]) -> Sample {
        let (js, payload) = (self.js.clone(), Bytes::copy_from_slice(payload));
        self.runtime
            .block_on(tasks(in_flight, count, move |_, index| {
                let (js, payload) = (js.clone(), payload.clone());
                async move {
                    js.publish(format!("bench.raw.{index}"), payload)
                        .await
                        .expect("publish")
                        .await
                        .expect("an ack");
                }
            }))
    }
}

/// Waits until the cluster can hold an R3 stream (its meta leader is elected).
fn wait_for_cluster(url: &str) {
    let runtime = Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let client = async_nats::connect(url).await.expect("connect");
        let js = jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let made = js
                .get_or_create_stream(jetstream::stream::Config {
                    name: "READY".into(),
                    subjects: vec!["ready.>".into()],
                    num_replicas: 3,
                    ..Default::default()
                })
                .await;
            match made {
                Ok(_) => return,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => panic!("the cluster has no JetStream: {error}"),
            }
        }
    });
}
