//! The soak run (`make soak`, not in CI): `callledger serve` (release) under mixed load for ten
//! minutes (`SOAK_SECONDS`), at a steady `SOAK_RATE` requests per second (400) from eight
//! workers: gets, lists, updates, creates and deletes of a ledger whose live calls stay
//! constant (each worker deletes the call it created last, alternately). It prints the service's resident memory
//! every ten seconds and, per minute, the requests, p50, p99 and max latency and the error
//! replies; it fails when any request fails or is refused, or when resident memory at the end
//! is more than 10% above what it was after the first minute (the warm-up). `SOAK_WRAPPER`
//! runs the service under a profiler (`heaptrack -o /tmp/soak`), whose memory is then what is
//! printed. `SOAK_MIX=reads` sends only the gets and lists (in the same proportion), to tell
//! what writing costs in memory from what serving does.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use call_ledger_tests::{callledger_bin, resident_bytes, NatsServer};

/// Calls created before the load starts.
const PREFILL: u64 = 2000;
/// Workers sending requests.
const WORKERS: u64 = 8;
/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The most resident memory may grow from the end of the warm-up to the end.
const MAX_GROWTH: f64 = 0.10;

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

fn main() {
    let seconds = env_u64("SOAK_SECONDS", 600);
    let rate = env_u64("SOAK_RATE", 400);
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
        "call-ledger soak: {seconds} s at {rate} requests/s from {WORKERS} workers; serve pid {pid}, data in {}",
        data.display()
    );
    let failed = runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("a client");
        let started = Instant::now();
        while request(&client, "calls.api.list".into(), String::new()).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(60), "serve does not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let live = Arc::new(Mutex::new(Vec::new()));
        for n in 0..PREFILL {
            let reply = request(&client, "calls.api.create".into(), document(&format!("prefill {n}")))
                .await
                .expect("a prefill create");
            live.lock().expect("live ids").push(id_of(&reply).expect("an id"));
        }
        let rss_at_start = rss(pid);
        println!("resident memory after the prefill of {PREFILL} calls: {:.1} MiB", mib(rss_at_start));

        let minutes: Arc<Mutex<BTreeMap<u64, Minute>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let begin = Instant::now();
        let reads_only = match std::env::var("SOAK_MIX").as_deref() {
            Ok("reads") => true,
            Ok("mixed") | Err(_) => false,
            Ok(other) => panic!("SOAK_MIX is `mixed` (the default) or `reads`, not {other:?}"),
        };
        let mut workers = Vec::new();
        for worker in 0..WORKERS {
            let (client, live, minutes, stop, sent) =
                (client.clone(), live.clone(), minutes.clone(), stop.clone(), sent.clone());
            workers.push(tokio::spawn(async move {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (worker + 1));
                let interval = Duration::from_secs_f64(WORKERS as f64 / rate.max(1) as f64);
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut mine: Vec<u64> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    ticks.tick().await;
                    // Gets and updates go to prefilled calls, which are never deleted, so that
                    // no 404 is provoked by a race between workers.
                    let pick = |rng: &mut Rng| rng.below(PREFILL) + 1;
                    let roll = if reads_only { rng.below(60) } else { rng.below(100) };
                    let (subject, payload) = match roll {
                        0..=39 => (format!("calls.api.get.{}", pick(&mut rng)), String::new()),
                        40..=59 => (
                            "calls.api.list".to_owned(),
                            "filter[direction]=outbound&sort=-updatedAt&page[size]=20".to_owned(),
                        ),
                        60..=79 => (
                            format!("calls.api.update.{}", pick(&mut rng)),
                            document(&format!("updated by {worker}")),
                        ),
                        // A worker's creates and deletes alternate, so that the live calls stay
                        // within one per worker of the prefill. (A create and a delete drawn
                        // independently, with a create whenever there was nothing to delete,
                        // drifted upwards like a random walk held above zero: a third more live
                        // calls after ten minutes, which the memory criterion then measured.)
                        _ => match mine.pop() {
                            Some(id) => (format!("calls.api.delete.{id}"), String::new()),
                            None => ("calls.api.create".to_owned(), document("soak")),
                        },
                    };
                    let is_create = subject == "calls.api.create";
                    let deleted = subject
                        .strip_prefix("calls.api.delete.")
                        .and_then(|id| id.parse::<u64>().ok());
                    if let Some(id) = deleted {
                        live.lock().expect("live ids").retain(|&live| live != id);
                    }
                    let at = Instant::now();
                    let outcome = request(&client, subject, payload).await;
                    let took = at.elapsed();
                    sent.fetch_add(1, Ordering::Relaxed);
                    let minute = begin.elapsed().as_secs() / 60;
                    let mut minutes = minutes.lock().expect("minutes");
                    let entry = minutes.entry(minute).or_default();
                    entry.latencies.push(took);
                    match outcome {
                        Ok(reply) if is_create => {
                            if let Some(id) = id_of(&reply) {
                                mine.push(id);
                                live.lock().expect("live ids").push(id);
                            }
                        }
                        Ok(_) => {}
                        Err(what) => *entry.errors.entry(what).or_default() += 1,
                    }
                }
            }));
        }

        let mut samples = Vec::new();
        let mut printed = 0;
        while begin.elapsed() < Duration::from_secs(seconds) {
            tokio::time::sleep(Duration::from_secs(10).min(Duration::from_secs(seconds))).await;
            let resident = rss(pid);
            samples.push((begin.elapsed().as_secs(), resident));
            println!(
                "{:>4} s: resident {:.1} MiB, {} requests so far",
                begin.elapsed().as_secs(),
                mib(resident),
                sent.load(Ordering::Relaxed)
            );
            let done = begin.elapsed().as_secs() / 60;
            let minutes = minutes.lock().expect("minutes");
            for (minute, stats) in minutes.range(printed..done) {
                report(*minute, stats);
            }
            printed = printed.max(done);
        }
        stop.store(true, Ordering::SeqCst);
        for worker in workers {
            let _ = worker.await;
        }
        let minutes = minutes.lock().expect("minutes");
        for (minute, stats) in minutes.range(printed..) {
            report(*minute, stats);
        }
        let errors: u64 = minutes.values().flat_map(|m| m.errors.values()).sum();
        let warm = samples
            .iter()
            .find(|(at, _)| *at >= 60)
            .or(samples.first())
            .map_or(0, |(_, resident)| *resident);
        let end = samples.last().map_or(0, |(_, resident)| *resident);
        let growth = end as f64 / warm.max(1) as f64 - 1.0;
        println!(
            "resident memory: {:.1} MiB after the prefill, {:.1} MiB after the warm-up (1 min), {:.1} MiB at the end: {:+.1}% (at most {:+.0}%)",
            mib(rss_at_start),
            mib(warm),
            mib(end),
            growth * 100.0,
            MAX_GROWTH * 100.0
        );
        println!(
            "{} requests, {errors} failed or refused; live calls at the end: {}",
            sent.load(Ordering::Relaxed),
            live.lock().expect("live ids").len()
        );
        errors > 0 || growth > MAX_GROWTH
    });
    let exited = service.0.try_wait().ok().flatten();
    drop(service);
    // `exit` runs no destructors: the NATS server is stopped first, or it outlives the soak.
    drop(nats);
    if let Some(status) = exited {
        eprintln!(
            "serve exited during the soak ({status}); its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::process::exit(1);
    }
    if failed {
        eprintln!("soak FAILED (see above)");
        std::process::exit(1);
    }
    println!("soak passed");
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
