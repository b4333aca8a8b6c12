//! The service under test, for the benches that send it requests over NATS: the gateway on
//! its own runtime and thread (a durable sled ledger in a directory), and the load generator's
//! request loop.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap, Message};
use bytes::Bytes;
use call_api::{Api, ApiConfig};
use call_commands::{CommandRequest, CommandService};
use call_gateway::GatewayConfig;
use call_model::Timestamp;
use call_model::{parse_write, Action, Command, Rights, WriteMode};
use call_projections::Projection;
use event_log::EventLog;
use event_log::LogOptions;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// The subject prefix of the service under test.
pub const PREFIX: &str = call_api::DEFAULT_SUBJECT_PREFIX;

/// The current time as the ledger records it.
pub fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

/// A multi-threaded runtime whose threads (workers and blocking pool) are called `name`, so that
/// a profile of a bench tells the service's time from the load generator's and the echo's.
pub fn named_runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(name)
        .build()
        .expect("a runtime")
}

/// The budget of the service's rendered gets: `BENCH_RENDERED_GETS_MB` (0 to measure every get
/// rendered from its stored view), else the service's default.
pub fn rendered_gets_bytes() -> usize {
    std::env::var("BENCH_RENDERED_GETS_MB")
        .ok()
        .and_then(|mb| mb.parse::<usize>().ok())
        .map_or(call_api::DEFAULT_RENDERED_GETS_BYTES, |mb| mb << 20)
}

/// The service under test, on its own runtime and thread.
pub struct Gateway {
    stop: oneshot::Sender<()>,
    thread: thread::JoinHandle<()>,
    /// A clone of the service's API, for the in-process diagnostic.
    pub api: Api,
}

impl Gateway {
    pub fn start(url: &str, data_dir: &Path, log: EventLog) -> Gateway {
        let projection =
            Projection::open(&data_dir.join("projection"), log.clone()).expect("open projection");
        let runtime = named_runtime("gateway");
        let client = runtime
            .block_on(async_nats::connect(url))
            .expect("connect the gateway");
        let api = Api::new(
            CommandService::new(log.clone()),
            projection,
            ApiConfig {
                self_prefix: PREFIX.into(),
                rendered_gets_bytes: rendered_gets_bytes(),
                ..ApiConfig::open(client.server_info().max_payload)
            },
            now,
        );
        let config = GatewayConfig {
            subject_prefix: PREFIX.into(),
            max_in_flight: 256,
            duplicate_window: Duration::from_secs(120),
            data_dir: data_dir.to_owned(),
            queue_group: "call-ledger".into(),
            lock_ttl: Duration::from_secs(10),
            replicated_log: false,
            index_snapshot_every: call_gateway::DEFAULT_INDEX_SNAPSHOT_EVERY,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("gateway-runtime".into())
            .spawn({
                let api = api.clone();
                move || {
                    let shutdown = async {
                        let _ = stopped.await;
                    };
                    runtime
                        .block_on(call_gateway::run(client, api, log, config, shutdown))
                        .expect("the gateway ran");
                }
            })
            .expect("spawn the gateway's thread");
        Gateway { stop, thread, api }
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        self.thread.join().expect("the gateway's thread panicked");
    }
}

/// One request: subject, headers, payload.
pub type Req = (String, HeaderMap, Bytes);

/// Sends one request and fails on an error reply.
pub async fn one(client: &Client, (subject, headers, payload): Req) -> Message {
    let reply = client
        .request_with_headers(subject.clone(), headers, payload)
        .await
        .unwrap_or_else(|error| panic!("request to {subject}: {error}"));
    if let Some(code) = error_code(&reply) {
        panic!(
            "{subject} answered {code}: {}",
            String::from_utf8_lossy(&reply.payload)
        );
    }
    reply
}

pub fn error_code(reply: &Message) -> Option<String> {
    reply
        .headers
        .as_ref()
        .and_then(|headers| headers.get("Nats-Service-Error-Code"))
        .map(|code| code.as_str().to_owned())
}

/// Waits until the service answers (a 404 for a call that cannot exist
/// counts as an answer).
pub async fn wait_until_served(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = client
            .request(format!("{PREFIX}.api.get.999999999"), Bytes::new())
            .await;
        match probe {
            Ok(_) => return,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("the gateway did not start serving: {error}"),
        }
    }
}

/// One timed sample: requests per second and each request's latency.
pub struct Sample {
    pub per_second: f64,
    pub latencies: Vec<Duration>,
}

/// Sends every request with `in_flight` tasks, each waiting for its reply
/// before sending the next.
pub async fn drive(client: &Client, in_flight: usize, requests: Vec<Req>) -> Sample {
    let total = requests.len();
    let (client, requests) = (client.clone(), Arc::new(requests));
    tasks(in_flight, total, move |_, index| {
        let (client, requests) = (client.clone(), Arc::clone(&requests));
        async move {
            let (subject, headers, payload) = requests[index].clone();
            let reply = client
                .request_with_headers(subject.clone(), headers, payload)
                .await
                .unwrap_or_else(|error| panic!("request to {subject}: {error}"));
            if let Some(code) = error_code(&reply) {
                panic!(
                    "{subject} answered {code}: {}",
                    String::from_utf8_lossy(&reply.payload)
                );
            }
        }
    })
    .await
}

/// `count` writes made by `write`, timed until `api`'s projection holds them (a catch-up): a
/// write's reply does not wait for the view, so a rate that stopped at the last reply would
/// leave the view's share of the work out.
pub fn until_applied(api: &Api, count: usize, write: impl FnOnce() -> Sample) -> Sample {
    let started = Instant::now();
    let mut sample = write();
    api.catch_up().expect("the projection catches up");
    sample.per_second = count as f64 / started.elapsed().as_secs_f64();
    sample
}

/// [`until_applied`], and further until the service's outbox has published every event up to
/// the view's checkpoint to the events stream: that publishing is part of what a write costs
/// the service, and left running it would slow whatever sample comes next (the gets, which
/// would then pay for the creates before them while the echo beside them does not).
pub fn until_applied_and_published(
    api: &Api,
    client: &Client,
    runtime: &Runtime,
    count: usize,
    write: impl FnOnce() -> Sample,
) -> Sample {
    let started = Instant::now();
    let mut sample = write();
    let head = api.catch_up().expect("the projection catches up");
    runtime.block_on(until_published(client, head));
    sample.per_second = count as f64 / started.elapsed().as_secs_f64();
    sample
}

/// Waits (polling every millisecond, for at most a minute) until the events stream of the
/// ledger on [`PREFIX`] holds `head` events, as it does once the outbox published every event
/// of a log whose positions start at 1 (the bench's fresh server holds no other).
pub async fn until_published(client: &Client, head: u64) {
    let stream = call_gateway::JetStreamNames::of(PREFIX).events;
    let jetstream = async_nats::jetstream::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let published = match jetstream.get_stream(&stream).await {
            Ok(mut events) => events.info().await.map(|info| info.state.messages).ok(),
            Err(_) => None,
        };
        if published.is_some_and(|messages| messages >= head) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox did not publish up to {head} within a minute (published {published:?})"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs `work(index)` for every index below `count` on `in_flight` threads, timing each.
pub fn threads(in_flight: usize, count: usize, work: impl Fn(usize) + Sync) -> Sample {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let latencies: Vec<Duration> = thread::scope(|scope| {
        let workers: Vec<_> = (0..in_flight)
            .map(|_| {
                scope.spawn(|| {
                    let mut latencies = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= count {
                            break latencies;
                        }
                        let sent = Instant::now();
                        work(index);
                        latencies.push(sent.elapsed());
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a worker panicked"))
            .collect()
    });
    Sample {
        per_second: count as f64 / started.elapsed().as_secs_f64(),
        latencies,
    }
}

/// The create command of generated call `index`.
pub fn create(index: u64) -> CommandRequest {
    let document = crate::support::create_document(index, crate::support::LEDGER_CALLS);
    let input =
        parse_write(&document, WriteMode::Create, Rights::default()).expect("a valid document");
    CommandRequest {
        command: Command {
            action: Action::Create(input.changes),
            actor: "bench".into(),
            recorded_at: now(),
            occurred_at: None,
        },
        expected_version: None,
        idempotency_key: None,
    }
}

/// The bytes of one create's event, for the raw publishes to carry the same size.
pub fn event_payload() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let log = EventLog::open(dir.path(), LogOptions::durable()).expect("a scratch log");
    CommandService::new(log.clone())
        .execute(create(1))
        .expect("one create");
    log.read_from(0, 1).expect("read it")[0].payload.clone()
}

/// The async twin of [`threads`]: `in_flight` tasks on the current runtime, task `t` running
/// `work(t, index)` for the indexes it takes below `count`, one at a time, timing each.
pub async fn tasks<F, Fut>(in_flight: usize, count: usize, work: F) -> Sample
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut running = tokio::task::JoinSet::new();
    for task in 0..in_flight {
        let (next, work) = (Arc::clone(&next), work.clone());
        running.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break latencies;
                }
                let sent = Instant::now();
                work(task, index).await;
                latencies.push(sent.elapsed());
            }
        });
    }
    let mut latencies = Vec::with_capacity(count);
    while let Some(joined) = running.join_next().await {
        latencies.extend(joined.expect("a task panicked"));
    }
    Sample {
        per_second: count as f64 / started.elapsed().as_secs_f64(),
        latencies,
    }
}
