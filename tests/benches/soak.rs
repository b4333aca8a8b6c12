//! The soak run (`make soak`, not in CI): `callledger serve` (release) under mixed load for ten
//! minutes (`SOAK_SECONDS`), at a steady `SOAK_RATE` requests per second (400) from eight
//! workers (`SOAK_WORKERS`): gets, lists, updates, creates and deletes of a ledger whose live
//! calls stay constant (each worker deletes the call it created last, alternately). It prints
//! the service's resident memory every ten seconds and, per minute, the requests, p50, p99 and
//! max latency and the error replies; it fails when any request fails or is refused, or when
//! resident memory in the last minute is more than 10% above what it was in the second (after
//! the warm-up), each minute's level the mean of its samples: one sample moves by up to 4%
//! from the next under the same load (the allocator returning and taking pages), as much as
//! the growth the criterion looks for. The first and last samples are printed beside. `SOAK_WRAPPER` runs the service under a profiler (`heaptrack -o /tmp/soak`), whose
//! memory is then what is printed. `SOAK_MIX=reads` sends only the gets and lists (in the same
//! proportion), to tell what writing costs in memory from what serving does.
//!
//! `SOAK_TARGET=in-process` puts the same load on a ledger opened in this process (the log and
//! the projection as `serve` opens them, `CALLLEDGER_PROJECTION_CACHE_MB` included, the same
//! allocator) through `Api::handle`, one thread per worker, with no NATS, gateway or outbox, and
//! measures this process: beside a soak of the service it tells what the ledger keeps from what
//! the transport around it does.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use call_ledger_tests::{callledger_bin, resident_bytes, NatsServer};

/// The service's allocator, so that the in-process soak measures memory as the service keeps it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Calls created before the load starts.
const PREFILL: u64 = 2000;
/// Workers sending requests, unless `SOAK_WORKERS` says otherwise.
const WORKERS: u64 = 8;
/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The most resident memory may grow from the end of the warm-up to the end.
const MAX_GROWTH: f64 = 0.10;

/// The mean of the `(seconds, bytes)` samples taken from `from` to `to` seconds, both included.
fn mean_between(samples: &[(u64, u64)], from: u64, to: u64) -> Option<u64> {
    let within: Vec<u64> = samples
        .iter()
        .filter(|(at, _)| (from..=to).contains(at))
        .map(|(_, bytes)| *bytes)
        .collect();
    (!within.is_empty()).then(|| within.iter().sum::<u64>() / within.len() as u64)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The resident memory of `pid` and its children (the service under a `SOAK_WRAPPER`) in
/// bytes, from /proc.
fn rss(pid: u32) -> u64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let own = resident_bytes(pid);
    own + children
        .split_whitespace()
        .filter_map(|child| child.parse().ok())
        .map(rss)
        .sum::<u64>()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// A small xorshift generator: the load needs variety, not quality.
struct Rng(u64);

impl Rng {
    /// Each worker's own sequence, the same in every run.
    fn for_worker(worker: u64) -> Rng {
        Rng(0x9e37_79b9_7f4a_7c15 ^ (worker + 1))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// What happened in one minute.
#[derive(Default)]
struct Minute {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
}

/// The service under soak, killed on drop.
struct Service(Child);

impl Drop for Service {
    /// SIGTERM (a drain, and a profiler writes its output), SIGKILL after 30 s.
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        // A wrapper's child is the service: it gets the signal too.
        let _ = Command::new("pkill").args(["-TERM", "-P", &pid]).status();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_service(bin: &Path, data: &Path, url: &str, log: &Path) -> Service {
    let output = std::fs::File::create(log).expect("the service's log");
    // A profiler named by SOAK_WRAPPER runs the service as its command.
    let wrapper = std::env::var("SOAK_WRAPPER").unwrap_or_default();
    let mut wrapper = wrapper.split_whitespace();
    let mut command = match wrapper.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(wrapper).arg(bin);
            command
        }
        None => Command::new(bin),
    };
    let child = command
        .args([
            "serve",
            "--rate-limit",
            "off",
            "--nats-url",
            url,
            "--data-dir",
        ])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(output.try_clone().expect("clone the log"))
        .stderr(output)
        .spawn()
        .expect("callledger serve starts");
    Service(child)
}

/// One request: `Ok(reply)` or the name of what went wrong.
async fn request(
    client: &async_nats::Client,
    subject: String,
    payload: String,
) -> Result<async_nats::Message, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, client.request(subject, payload.into())).await {
        Err(_) => Err("timeout".into()),
        Ok(Err(error)) => Err(format!("transport: {}", error.kind())),
        Ok(Ok(reply)) => {
            let code = reply
                .headers
                .as_ref()
                .and_then(|headers| headers.get("Nats-Service-Error-Code"))
                .map(|code| code.as_str().to_owned());
            match code {
                Some(code) => Err(format!("status {code}")),
                None => Ok(reply),
            }
        }
    }
}

fn id_of(reply: &async_nats::Message) -> Option<u64> {
    let body: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
    body["data"]["id"].as_u64()
}

fn document(note: &str) -> String {
    serde_json::json!({"data": {"type": "call", "attributes": {"note": note, "direction": "outbound"}}})
        .to_string()
}

/// One request of the mix.
enum Load {
    Get(u64),
    List,
    Update(u64),
    Create,
    Delete(u64),
}

/// The list query of the mix.
const LIST_QUERY: &str = "filter[direction]=outbound&sort=-updatedAt&page[size]=20";

impl Load {
    /// The next request of a worker whose created and not yet deleted calls are `mine`.
    fn next(rng: &mut Rng, mine: &mut Vec<u64>, reads_only: bool) -> Load {
        // Gets and updates go to prefilled calls, which are never deleted, so that no 404 is
        // provoked by a race between workers.
        let pick = |rng: &mut Rng| rng.below(PREFILL) + 1;
        let roll = if reads_only {
            rng.below(60)
        } else {
            rng.below(100)
        };
        match roll {
            0..=39 => Load::Get(pick(rng)),
            40..=59 => Load::List,
            60..=79 => Load::Update(pick(rng)),
            // A worker's creates and deletes alternate, so that the live calls stay within one
            // per worker of the prefill. (A create and a delete drawn independently, with a
            // create whenever there was nothing to delete, drifted upwards like a random walk
            // held above zero: a third more live calls after ten minutes, which the memory
            // criterion then measured.)
            _ => match mine.pop() {
                Some(id) => Load::Delete(id),
                None => Load::Create,
            },
        }
    }

    /// The NATS subject and payload of the request.
    fn subject_and_payload(&self, worker: u64) -> (String, String) {
        match self {
            Load::Get(id) => (format!("calls.api.get.{id}"), String::new()),
            Load::List => ("calls.api.list".to_owned(), LIST_QUERY.to_owned()),
            Load::Update(id) => (
                format!("calls.api.update.{id}"),
                document(&format!("updated by {worker}")),
            ),
            Load::Create => ("calls.api.create".to_owned(), document("soak")),
            Load::Delete(id) => (format!("calls.api.delete.{id}"), String::new()),
        }
    }
}

/// What the workers did, by minute, and when to stop them.
struct Tally {
    begin: Instant,
    minutes: Mutex<BTreeMap<u64, Minute>>,
    sent: AtomicU64,
    stop: AtomicBool,
    /// The first minute not printed yet.
    unprinted: AtomicU64,
    /// The ids of the live calls.
    live: Mutex<Vec<u64>>,
}

impl Tally {
    /// The tally of a soak whose prefill made `prefilled`, leaving `rss_at_start` resident.
    fn after_prefill(prefilled: Vec<u64>, rss_at_start: u64) -> Arc<Tally> {
        println!(
            "resident memory after the prefill of {PREFILL} calls: {:.1} MiB",
            mib(rss_at_start)
        );
        Arc::new(Tally {
            begin: Instant::now(),
            minutes: Mutex::default(),
            sent: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            unprinted: AtomicU64::new(0),
            live: Mutex::new(prefilled),
        })
    }

    /// Counts one request that took `took`; a create's id joins the worker's and the live ones.
    fn record(
        &self,
        load: &Load,
        took: Duration,
        outcome: Result<Option<u64>, String>,
        mine: &mut Vec<u64>,
    ) {
        if let Load::Delete(id) = load {
            self.live
                .lock()
                .expect("live ids")
                .retain(|live| live != id);
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        let minute = self.begin.elapsed().as_secs() / 60;
        let mut minutes = self.minutes.lock().expect("minutes");
        let entry = minutes.entry(minute).or_default();
        entry.latencies.push(took);
        match outcome {
            Ok(Some(id)) if matches!(load, Load::Create) => {
                mine.push(id);
                self.live.lock().expect("live ids").push(id);
            }
            Ok(_) => {}
            Err(what) => *entry.errors.entry(what).or_default() += 1,
        }
    }

    /// Samples `resident` every ten seconds until `seconds` have passed, printing each sample
    /// and each finished minute; then stops the workers. Returns whether resident memory grew
    /// more after the warm-up than the criterion allows.
    fn watch(&self, seconds: u64, rss_at_start: u64, resident: impl Fn() -> u64) -> bool {
        let mut samples = Vec::new();
        while self.begin.elapsed() < Duration::from_secs(seconds) {
            std::thread::sleep(Duration::from_secs(10).min(Duration::from_secs(seconds)));
            let bytes = resident();
            samples.push((self.begin.elapsed().as_secs(), bytes));
            println!(
                "{:>4} s: resident {:.1} MiB, {} requests so far",
                self.begin.elapsed().as_secs(),
                mib(bytes),
                self.sent.load(Ordering::Relaxed)
            );
            self.report_until(self.begin.elapsed().as_secs() / 60);
        }
        self.stop.store(true, Ordering::SeqCst);
        samples.push((self.begin.elapsed().as_secs(), resident()));
        let first_warm = samples
            .iter()
            .find(|(at, _)| *at >= 60)
            .or(samples.first())
            .map_or(0, |(_, bytes)| *bytes);
        let last = samples.last().map_or(0, |(at, _)| *at);
        let end = samples.last().map_or(0, |(_, bytes)| *bytes);
        let warm = mean_between(&samples, 60, 120).unwrap_or(first_warm);
        let last_minute = mean_between(&samples, last.saturating_sub(59), last).unwrap_or(end);
        let growth = last_minute as f64 / warm.max(1) as f64 - 1.0;
        println!(
            "resident memory: {:.1} MiB after the prefill; {:.1} MiB in the second minute (mean; {:.1} at 1 min), {:.1} MiB in the last (mean; {:.1} at the end): {:+.1}% (at most {:+.0}%; {:+.1}% sample to sample)",
            mib(rss_at_start),
            mib(warm),
            mib(first_warm),
            mib(last_minute),
            mib(end),
            growth * 100.0,
            MAX_GROWTH * 100.0,
            (end as f64 / first_warm.max(1) as f64 - 1.0) * 100.0,
        );
        growth > MAX_GROWTH
    }

    /// Prints the minutes not printed yet before `done`, each once, and lets go of their
    /// latencies (the in-process soak measures this process's memory).
    fn report_until(&self, done: u64) {
        let mut minutes = self.minutes.lock().expect("minutes");
        let printed = self.unprinted.load(Ordering::Relaxed);
        for (minute, stats) in minutes.range_mut(printed..done.max(printed)) {
            report(*minute, stats);
            stats.latencies = Vec::new();
        }
        self.unprinted.store(printed.max(done), Ordering::Relaxed);
    }

    /// Prints what is left once the workers have stopped; returns whether any request failed.
    fn conclude(&self) -> bool {
        // Only what `watch` has not printed: printed again, a minute whose latencies were let
        // go read as a minute of no requests (the whole run was listed twice, as zeros).
        self.report_until(u64::MAX);
        let minutes = self.minutes.lock().expect("minutes");
        let errors: u64 = minutes.values().flat_map(|m| m.errors.values()).sum();
        println!(
            "{} requests, {errors} failed or refused; live calls at the end: {}",
            self.sent.load(Ordering::Relaxed),
            self.live.lock().expect("live ids").len()
        );
        errors > 0
    }
}

fn main() {
    let seconds = env_u64("SOAK_SECONDS", 600);
    let rate = env_u64("SOAK_RATE", 400);
    let workers = env_u64("SOAK_WORKERS", WORKERS).max(1);
    let reads_only = match std::env::var("SOAK_MIX").as_deref() {
        Ok("reads") => true,
        Ok("mixed") | Err(_) => false,
        Ok(other) => panic!("SOAK_MIX is `mixed` (the default) or `reads`, not {other:?}"),
    };
    let failed = match std::env::var("SOAK_TARGET").as_deref() {
        Ok("service") | Err(_) => soak_service(seconds, rate, workers, reads_only),
        Ok("in-process") => soak_in_process(seconds, rate, workers, reads_only),
        Ok(other) => {
            panic!("SOAK_TARGET is `service` (the default) or `in-process`, not {other:?}")
        }
    };
    if failed {
        eprintln!("soak FAILED (see above)");
        std::process::exit(1);
    }
    println!("soak passed");
}

/// The time between two requests of one worker.
fn worker_interval(rate: u64, workers: u64) -> Duration {
    Duration::from_secs_f64(workers as f64 / rate.max(1) as f64)
}

/// The soak of `callledger serve` over NATS; returns whether it failed.
fn soak_service(seconds: u64, rate: u64, workers: u64, reads_only: bool) -> bool {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let bin = callledger_bin();
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let log = dir.path().join("serve.log");
    let mut service = start_service(&bin, &data, &nats.url(), &log);
    let pid = service.0.id();
    println!(
        "call-ledger soak: {seconds} s at {rate} requests/s from {workers} workers; serve pid {pid}, data in {}",
        data.display()
    );
    let client = runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("a client");
        let started = Instant::now();
        while request(&client, "calls.api.list".into(), String::new())
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "serve does not answer"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client
    });
    let prefilled = runtime.block_on(async {
        let mut ids = Vec::new();
        for n in 0..PREFILL {
            let reply = request(
                &client,
                "calls.api.create".into(),
                document(&format!("prefill {n}")),
            )
            .await
            .expect("a prefill create");
            ids.push(id_of(&reply).expect("an id"));
        }
        ids
    });
    let rss_at_start = rss(pid);
    let tally = Tally::after_prefill(prefilled, rss_at_start);
    let threads: Vec<_> = (0..workers)
        .map(|worker| {
            let (client, tally) = (client.clone(), tally.clone());
            runtime.spawn(async move {
                let mut rng = Rng::for_worker(worker);
                let mut ticks = tokio::time::interval(worker_interval(rate, workers));
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut mine: Vec<u64> = Vec::new();
                while !tally.stop.load(Ordering::SeqCst) {
                    ticks.tick().await;
                    let load = Load::next(&mut rng, &mut mine, reads_only);
                    let (subject, payload) = load.subject_and_payload(worker);
                    let at = Instant::now();
                    let outcome = request(&client, subject, payload).await;
                    let took = at.elapsed();
                    tally.record(&load, took, outcome.map(|reply| id_of(&reply)), &mut mine);
                }
            })
        })
        .collect();
    let grew = tally.watch(seconds, rss_at_start, || rss(pid));
    runtime.block_on(async {
        for thread in threads {
            let _ = thread.await;
        }
    });
    let errors = tally.conclude();
    let exited = service.0.try_wait().ok().flatten();
    drop(service);
    // `exit` runs no destructors: the NATS server is stopped first, or it outlives the soak.
    drop(nats);
    if let Some(status) = exited {
        eprintln!(
            "serve exited during the soak ({status}); its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        return true;
    }
    grew || errors
}

/// The same load on the ledger in this process, through `Api::handle` from one thread per
/// worker, with no NATS, gateway or outbox: the storage and the API as the service opens them,
/// this process's resident memory measured. Beside a soak of the service, it tells what the
/// ledger keeps from what the transport around it does.
fn soak_in_process(seconds: u64, rate: u64, workers: u64, reads_only: bool) -> bool {
    use call_api::{Api, ApiConfig, Operation, Request, Source};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = event_log::EventLog::open(&dir.path().join("log"), event_log::LogOptions::durable())
        .expect("the log opens");
    // The projection's cache as `serve` takes it (the same variable), so that a variant can be
    // soaked both ways.
    let options = call_projections::ProjectionOptions {
        cache_bytes: std::env::var("CALLLEDGER_PROJECTION_CACHE_MB")
            .ok()
            .and_then(|mb| mb.parse::<u64>().ok())
            .map_or(call_projections::DEFAULT_PROJECTION_CACHE_BYTES, |mb| {
                mb << 20
            }),
    };
    let projection = call_projections::Projection::open_with(
        &dir.path().join("projection"),
        log.clone(),
        options,
    )
    .expect("the projection opens");
    let api = Arc::new(Api::new(
        call_commands::CommandService::new(log),
        projection,
        ApiConfig::open(1 << 20),
        || call_model::Timestamp::from_datetime(chrono::Utc::now()),
    ));
    println!(
        "call-ledger soak in process: {seconds} s at {rate} requests/s from {workers} workers, data in {}",
        dir.path().display()
    );
    let handle = |api: &Api, load: &Load, worker: u64| -> Result<Option<u64>, String> {
        let document = match load {
            Load::Update(_) => document(&format!("updated by {worker}")),
            Load::Create => document("soak"),
            _ => String::new(),
        };
        let (operation, payload) = match load {
            Load::Get(id) => (Operation::Get(id.to_string()), ""),
            Load::List => (Operation::List, LIST_QUERY),
            Load::Update(id) => (Operation::Update(id.to_string()), document.as_str()),
            Load::Create => (Operation::Create, document.as_str()),
            Load::Delete(id) => (Operation::Delete(id.to_string()), ""),
        };
        let response = api.handle(Request {
            operation,
            headers: &[],
            payload: payload.as_bytes(),
            source: Source::Api,
        });
        if response.status >= 300 {
            return Err(format!("status {}", response.status));
        }
        let body: Option<serde_json::Value> = serde_json::from_slice(&response.body).ok();
        Ok(body.and_then(|body| body["data"]["id"].as_u64()))
    };
    let prefilled: Vec<u64> = (0..PREFILL)
        .map(|_| {
            handle(&api, &Load::Create, 0)
                .expect("a prefill create")
                .expect("an id")
        })
        .collect();
    let pid = std::process::id();
    let rss_at_start = resident_bytes(pid);
    let tally = Tally::after_prefill(prefilled, rss_at_start);
    let threads: Vec<_> = (0..workers)
        .map(|worker| {
            let (api, tally) = (api.clone(), tally.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::for_worker(worker);
                let interval = worker_interval(rate, workers);
                let mut due = Instant::now();
                let mut mine: Vec<u64> = Vec::new();
                while !tally.stop.load(Ordering::SeqCst) {
                    // As the service's workers' ticks: a late request delays the next ones.
                    due = (due + interval).max(Instant::now());
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    let load = Load::next(&mut rng, &mut mine, reads_only);
                    let at = Instant::now();
                    let outcome = handle(&api, &load, worker);
                    tally.record(&load, at.elapsed(), outcome, &mut mine);
                }
            })
        })
        .collect();
    let grew = tally.watch(seconds, rss_at_start, || resident_bytes(pid));
    for thread in threads {
        let _ = thread.join();
    }
    tally.conclude() || grew
}

fn report(minute: u64, stats: &Minute) {
    let mut latencies = stats.latencies.clone();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "minute {:>2}: {:>6} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {:?}",
        minute + 1,
        latencies.len(),
        at(0.50),
        at(0.99),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        stats.errors
    );
}
