//! The `callledger serve` binary as a child process, for what needs a real process: a JetStream
//! command redelivered after the service was killed with SIGKILL before acking appends once,
//! and the drain on SIGTERM answers or refuses every request, loses no acknowledged write, and
//! exits 0.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use async_nats::HeaderMap;
use call_api::{Api, ApiConfig, Operation, Request, Source};
use call_ledger_tests::{callledger_bin, wait_until, NatsCluster, NatsServer};
use serde_json::{json, Value};

use super::{
    blocking, bounded, call_document, clock, eventually, open_ledger_patiently,
    stored_with_retries, Caller, TEST_TIMEOUT,
};

/// A `callledger serve` child process, killed on drop.
pub(super) struct Serve {
    child: Option<Child>,
    log: PathBuf,
}

impl Serve {
    /// Starts `callledger serve --data-dir DATA --nats-url URL EXTRA...`, logging to `log`.
    pub(super) fn start(bin: &Path, data: &Path, url: &str, extra: &[&str], log: PathBuf) -> Serve {
        let output = File::create(&log).expect("the service's log file");
        let child = Command::new(bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(data)
            .args(["--nats-url", url])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone the log file"))
            .stderr(output)
            .spawn()
            .expect("callledger serve starts");
        Serve {
            child: Some(child),
            log,
        }
    }

    /// Whether the process is still running.
    fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` (`TERM`, `STOP`, `CONT`) with kill(1): std sends only SIGKILL, and the
    /// workspace forbids `unsafe`.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// SIGTERM: drain and exit.
    pub(super) fn terminate(&self) {
        self.signal("TERM");
    }

    /// SIGKILL, as a crash, and reaps the process.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit and returns its status.
    pub(super) fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let mut status = None;
        let exited = wait_until(timeout, || {
            status = child.try_wait().expect("poll the child");
            status.is_some()
        });
        assert!(
            exited,
            "callledger serve did not exit within {timeout:?}; its log:\n{}",
            self.logs()
        );
        self.child = None;
        status.expect("exited")
    }

    /// SIGTERM, then asserts the drain exits 0 within 30 s.
    pub(super) fn stop_cleanly(&mut self) {
        self.terminate();
        let status = self.wait(Duration::from_secs(30));
        assert!(status.success(), "{status}; its log:\n{}", self.logs());
    }

    pub(super) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until a service answers `calls.api.list`.
pub(super) async fn wait_until_serving(caller: &Caller, serve: &Serve) {
    wait_until_serving_on("calls", caller, serve).await;
}

/// Waits until a service answers `<prefix>.api.list`.
async fn wait_until_serving_on(prefix: &str, caller: &Caller, serve: &Serve) {
    let subject = format!("{prefix}.api.list");
    let answered = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if caller.try_request(&subject, &[], "").await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        answered.is_ok(),
        "callledger serve does not answer; its log:\n{}",
        serve.logs()
    );
}

/// The number of live calls, by `count=true`.
async fn count(caller: &Caller) -> Option<u64> {
    count_on("calls", caller).await
}

/// The number of live calls of the ledger on `prefix`.
async fn count_on(prefix: &str, caller: &Caller) -> Option<u64> {
    let reply = caller
        .try_request(
            &format!("{prefix}.api.list"),
            &[],
            "count=true&page[size]=1",
        )
        .await
        .ok()?;
    reply.json()["meta"]["count"].as_u64()
}

/// `callledger --data-dir DATA stats` as JSON.
fn offline_stats(bin: &Path, data: &Path) -> Value {
    let output = Command::new(bin)
        .arg("--data-dir")
        .arg(data)
        .arg("stats")
        .output()
        .expect("callledger stats runs");
    assert!(
        output.status.success(),
        "callledger stats: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stats print JSON")
}

/// Producers' commands are published with a `Nats-Msg-Id` each, the service is killed with
/// SIGKILL while it works through them (commands taken but not acked), and started again: once
/// JetStream redelivers (after the consumer's ack wait, 30 s), every command has made exactly
/// one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_redelivered_after_sigkill_appends_once() {
    commands_survive_a_sigkill(1, &[]).await;
}

/// The same with three instances on the JetStream log: the commands one instance took when it
/// was SIGKILLed are redelivered to the others (it is not restarted), and still each makes
/// exactly one call, and the log holds one event per command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_taken_by_a_killed_instance_are_applied_once_by_the_others() {
    commands_survive_a_sigkill(3, &["--log", "jetstream", "--log-replicas", "1"]).await;
}

/// Producers publish commands with a `Nats-Msg-Id` each to `instances` instances started with
/// `args`; one is SIGKILLed while they work through them (commands taken but not acked); with
/// one instance it is started again, with several the others carry on. Once JetStream
/// redelivers (after the consumer's ack wait, 30 s), every command has made exactly one call.
async fn commands_survive_a_sigkill(instances: usize, args: &[&str]) {
    // Building the binary (if needed) is not part of the test's time.
    let bin = blocking(callledger_bin);
    bounded("the test", TEST_TIMEOUT, async {
        const COMMANDS: usize = 1000;
        let nats = blocking(NatsServer::start);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data: Vec<PathBuf> = (0..instances)
            .map(|n| dir.path().join(format!("data-{n}")))
            .collect();
        let mut limited = vec!["--max-in-flight", "4"];
        limited.extend_from_slice(args);
        let mut serves: Vec<Serve> = data
            .iter()
            .enumerate()
            .map(|(n, data)| {
                blocking(|| {
                    Serve::start(
                        &bin,
                        data,
                        &nats.url(),
                        &limited,
                        dir.path().join(format!("serve-{n}.log")),
                    )
                })
            })
            .collect();
        let client = async_nats::connect(nats.url()).await.expect("a client");
        let caller = Caller::new(client.clone(), None);
        for serve in &serves {
            let running = wait_until(Duration::from_secs(60), || {
                serve.logs().contains("call-ledger gateway running")
            });
            assert!(
                running,
                "an instance did not start; its log:\n{}",
                serve.logs()
            );
        }
        wait_until_serving(&caller, &serves[0]).await;
        let js = jetstream::new(client.clone());
        eventually("CALL_COMMANDS", Duration::from_secs(30), || {
            let js = js.clone();
            async move { js.get_stream("CALL_COMMANDS").await.ok() }
        })
        .await;

        let mut acks = Vec::with_capacity(COMMANDS);
        for n in 0..COMMANDS {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("cmd-{n}").as_str());
            let document = call_document(json!({"vendorCallId": format!("cmd-{n}")})).to_string();
            let ack = js
                .publish_with_headers(
                    "calls.commands.create",
                    headers.clone(),
                    document.clone().into(),
                )
                .await
                .expect("publish a command");
            acks.push((ack, headers, document));
        }
        for (ack, headers, document) in acks {
            stored_with_retries(&js, ack, "calls.commands.create", &headers, &document).await;
        }

        // Kill an instance while they work through the commands.
        let before_kill = eventually("some commands applied", Duration::from_secs(30), || {
            let caller = caller.clone();
            async move { count(&caller).await.filter(|&n| n >= 20) }
        })
        .await;
        blocking(|| serves[0].kill());
        let stream = js.get_stream("CALL_COMMANDS").await.expect("the stream");
        let mut consumer = stream
            .get_consumer::<pull::Config>("call-ledger")
            .await
            .expect("the durable consumer");
        let info = consumer.info().await.expect("consumer info").clone();
        assert!(
            info.num_ack_pending > 0,
            "the service was killed with commands taken but not acked \
             (applied before the kill: {before_kill}; ack pending {}, pending {})",
            info.num_ack_pending,
            info.num_pending
        );

        if instances == 1 {
            serves[0] = blocking(|| {
                Serve::start(
                    &bin,
                    &data[0],
                    &nats.url(),
                    args,
                    dir.path().join("serve-0-again.log"),
                )
            });
            wait_until_serving(&caller, &serves[0]).await;
        }
        eventually("every command settled", Duration::from_secs(90), || {
            let (caller, stream) = (caller.clone(), stream.clone());
            async move {
                let mut consumer = stream
                    .get_consumer::<pull::Config>("call-ledger")
                    .await
                    .ok()?;
                let info = consumer.info().await.ok()?.clone();
                let settled = info.num_pending == 0 && info.num_ack_pending == 0;
                (settled && count(&caller).await? >= COMMANDS as u64).then_some(())
            }
        })
        .await;

        // Each Nats-Msg-Id made exactly one call.
        let mut made: BTreeMap<String, usize> = BTreeMap::new();
        let mut next = Some("fields[call]=vendorCallId&page[size]=1000".to_string());
        while let Some(query) = next.take() {
            let page = caller.request("calls.api.list", &[], query).await.json();
            for row in page["data"].as_array().expect("rows") {
                let vendor = row["attributes"]["vendorCallId"]
                    .as_str()
                    .expect("a vendorCallId");
                *made.entry(vendor.to_string()).or_default() += 1;
            }
            next = page["links"]["next"].as_str().map(str::to_string);
        }
        assert_eq!(made.len(), COMMANDS);
        for n in 0..COMMANDS {
            assert_eq!(made.get(&format!("cmd-{n}")), Some(&1), "cmd-{n}");
        }

        // One event per command in the log, whichever instance's directory is asked.
        let survivor = if instances == 1 { 0 } else { instances - 1 };
        for serve in serves.iter_mut().skip(usize::from(instances > 1)) {
            blocking(|| serve.stop_cleanly());
        }
        let stats = blocking(|| offline_stats(&bin, &data[survivor]));
        assert_eq!(stats["events"], json!(COMMANDS), "{stats}");
        assert_eq!(stats["liveCalls"], json!(COMMANDS), "{stats}");
        // The indexes' memory, in all and by index, adds up.
        let memory = &stats["indexMemory"];
        let by_index = memory["byIndex"].as_object().expect("indexMemory.byIndex");
        let sum: u64 = by_index.values().filter_map(|bytes| bytes.as_u64()).sum();
        assert!(sum > 0 && memory["totalBytes"] == json!(sum), "{stats}");
        assert!(
            by_index.contains_key("createdAt") && by_index.contains_key("id"),
            "{stats}"
        );
    })
    .await;
}

/// Writers keep creating calls while the service gets SIGTERM: it answers what is in flight,
/// refuses the rest with 503 (or stops listening), exits 0, and every write it acknowledged is
/// in the ledger afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_loses_no_acknowledged_write() {
    let bin = blocking(callledger_bin);
    bounded("the test", TEST_TIMEOUT, async {
        const WRITERS: usize = 8;
        let nats = blocking(NatsServer::start);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        let mut serve =
            blocking(|| Serve::start(&bin, &data, &nats.url(), &[], dir.path().join("serve.log")));
        let client = async_nats::connect(nats.url()).await.expect("a client");
        let caller = Caller::new(client, None);
        wait_until_serving(&caller, &serve).await;

        let terminating = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::with_capacity(WRITERS);
        for writer in 0..WRITERS {
            let (caller, terminating, acknowledged) =
                (caller.clone(), terminating.clone(), acknowledged.clone());
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut refused = 0;
                for n in 0.. {
                    let vendor = format!("w{writer}-{n}");
                    let document = call_document(json!({"vendorCallId": vendor}));
                    let sent = caller
                        .try_request_within(
                            "calls.api.create",
                            &[],
                            document.to_string(),
                            Duration::from_secs(5),
                        )
                        .await;
                    match sent {
                        Ok(reply) if reply.is_success() => {
                            let id = reply.data()["id"].as_u64().expect("an id");
                            acked.push((id, vendor));
                            acknowledged.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(reply) => {
                            // The only refusal a drain may give.
                            reply.assert_error(503, "Service Unavailable");
                            assert!(
                                terminating.load(Ordering::SeqCst),
                                "503 before SIGTERM: {reply}"
                            );
                            refused += 1;
                        }
                        Err(error) => {
                            // No responders once the endpoints are gone.
                            assert!(
                                terminating.load(Ordering::SeqCst),
                                "request failed before SIGTERM: {error}"
                            );
                            break;
                        }
                    }
                    if refused >= 3 {
                        break;
                    }
                }
                acked
            }));
        }

        eventually("writes acknowledged", Duration::from_secs(30), || {
            let acknowledged = acknowledged.clone();
            async move { (acknowledged.load(Ordering::SeqCst) >= 100).then_some(()) }
        })
        .await;
        terminating.store(true, Ordering::SeqCst);
        serve.terminate();
        let mut acked = Vec::new();
        for writer in writers {
            let writes = bounded("a writer", Duration::from_secs(60), writer).await;
            acked.extend(writes.expect("a writer does not panic"));
        }
        let status = blocking(|| serve.wait(Duration::from_secs(30)));
        assert_eq!(
            status.code(),
            Some(0),
            "{status}; its log:\n{}",
            serve.logs()
        );

        // Every acknowledged write is in the ledger.
        let stats = blocking(|| offline_stats(&bin, &data));
        let events = stats["events"].as_u64().expect("events");
        assert!(
            events >= acked.len() as u64,
            "{events} events for {} acknowledged writes",
            acked.len()
        );
        let (_log, commands, projection) = blocking(|| open_ledger_patiently(&data));
        let api = Api::new(commands, projection, ApiConfig::open(0), clock);
        for (id, vendor) in &acked {
            let response = api.handle(Request {
                operation: Operation::Get(id.to_string()),
                headers: &[],
                payload: b"",
                source: Source::Api,
            });
            assert_eq!(
                response.status, 200,
                "call {id} ({vendor}) was acknowledged"
            );
            let document: Value = serde_json::from_slice(&response.body).expect("JSON");
            assert_eq!(
                document["data"]["attributes"]["vendorCallId"],
                json!(vendor)
            );
        }
    })
    .await;
}

/// Two ledgers on one NATS, one with `--subject-prefix staging`: each creates its own streams
/// and its own durable consumer (the names derive from the prefix), producers publish to both
/// at once, and each ledger applies exactly its own commands, rejects none, and publishes only
/// its own events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ledgers_on_one_nats_keep_their_own_streams_and_consumers() {
    let bin = blocking(callledger_bin);
    bounded("the test", TEST_TIMEOUT, async {
        const COMMANDS: usize = 30;
        let nats = blocking(NatsServer::start);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ledgers = [
            ("calls", Vec::new()),
            ("staging", vec!["--subject-prefix", "staging"]),
        ];
        let mut services = Vec::new();
        for (prefix, extra) in &ledgers {
            let serve = blocking(|| {
                Serve::start(
                    &bin,
                    &dir.path().join(format!("data-{prefix}")),
                    &nats.url(),
                    extra,
                    dir.path().join(format!("serve-{prefix}.log")),
                )
            });
            services.push(serve);
        }
        let client = async_nats::connect(nats.url()).await.expect("a client");
        let caller = Caller::new(client.clone(), None);
        let js = jetstream::new(client.clone());
        for ((prefix, _), serve) in ledgers.iter().zip(&services) {
            wait_until_serving_on(prefix, &caller, serve).await;
            let names = call_gateway::JetStreamNames::of(prefix);
            eventually("the commands stream", Duration::from_secs(30), || {
                let (js, name) = (js.clone(), names.commands.clone());
                async move { js.get_stream(name).await.ok() }
            })
            .await;
        }
        // Interleaved, so that a shared consumer would hand each service the other's commands.
        let mut acks = Vec::new();
        for n in 0..COMMANDS {
            for (prefix, _) in &ledgers {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("{prefix}-{n}").as_str());
                let document =
                    call_document(json!({"vendorCallId": format!("{prefix}-{n}")})).to_string();
                let subject = format!("{prefix}.commands.create");
                let ack = js
                    .publish_with_headers(subject.clone(), headers.clone(), document.clone().into())
                    .await
                    .expect("publish a command");
                acks.push((ack, subject, headers, document));
            }
        }
        for (ack, subject, headers, document) in acks {
            stored_with_retries(&js, ack, &subject, &headers, &document).await;
        }
        for (prefix, _) in &ledgers {
            let names = call_gateway::JetStreamNames::of(prefix);
            eventually("every command applied", Duration::from_secs(60), || {
                let caller = caller.clone();
                async move { (count_on(prefix, &caller).await? == COMMANDS as u64).then_some(()) }
            })
            .await;
            let page = caller
                .request(
                    &format!("{prefix}.api.list"),
                    &[],
                    "fields[call]=vendorCallId&page[size]=1000",
                )
                .await
                .json();
            for row in page["data"].as_array().expect("rows") {
                let vendor = row["attributes"]["vendorCallId"]
                    .as_str()
                    .expect("a vendor id");
                assert!(
                    vendor.starts_with(&format!("{prefix}-")),
                    "{prefix} applied {vendor}"
                );
            }
            let mut commands = js.get_stream(&names.commands).await.expect("the stream");
            let consumers: Vec<String> = {
                use futures::TryStreamExt;
                commands
                    .consumer_names()
                    .try_collect()
                    .await
                    .expect("consumer names")
            };
            assert_eq!(
                consumers,
                vec![names.consumer.clone()],
                "{}",
                names.commands
            );
            let subjects = commands.info().await.expect("info").config.subjects.clone();
            assert_eq!(subjects, vec![format!("{prefix}.commands.>")]);
            let rejected = js
                .get_stream(&names.rejected)
                .await
                .expect("the rejected stream");
            assert_eq!(
                rejected.cached_info().state.messages,
                0,
                "{}",
                names.rejected
            );
            eventually("every event published", Duration::from_secs(30), || {
                let (js, name) = (js.clone(), names.events.clone());
                async move {
                    let mut events = js.get_stream(name).await.ok()?;
                    let messages = events.info().await.ok()?.state.messages;
                    (messages == COMMANDS as u64).then_some(())
                }
            })
            .await;
        }
        for serve in &mut services {
            blocking(|| serve.stop_cleanly());
        }
    })
    .await;
}

/// Two embedded ledgers on the same subjects would split the ledger: a second `callledger
/// serve` with its own data directory refuses to start (non-zero, within seconds, naming the
/// instance that holds the subjects) while the first serves on undisturbed. After a SIGKILL the
/// first's data directory restarts at once (it is the lock's holder), and the other is still
/// refused: the lock outlives a crash for its time to live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ledger_on_the_same_subjects_refuses_to_start() {
    let bin = blocking(callledger_bin);
    bounded("the test", TEST_TIMEOUT, async {
        let nats = blocking(NatsServer::start);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (first_data, second_data) = (dir.path().join("first"), dir.path().join("second"));
        // A long time to live, so that a slow machine cannot let it expire mid-test.
        let ttl = ["--lock-ttl-secs", "120"];
        let mut first = blocking(|| {
            Serve::start(
                &bin,
                &first_data,
                &nats.url(),
                &ttl,
                dir.path().join("first-1.log"),
            )
        });
        let client = async_nats::connect(nats.url()).await.expect("a client");
        let caller = Caller::new(client.clone(), None);
        wait_until_serving(&caller, &first).await;
        let created = caller
            .request(
                "calls.api.create",
                &[],
                call_document(json!({"note": "one"})).to_string(),
            )
            .await;
        assert!(created.is_success(), "{created}");
        let instance = std::fs::read_to_string(first_data.join("instance.id"))
            .expect("the first instance's id");

        let refused = |log: &str| {
            let mut second =
                Serve::start(&bin, &second_data, &nats.url(), &ttl, dir.path().join(log));
            let status = second.wait(Duration::from_secs(30));
            assert!(!status.success(), "the second instance must not serve");
            let logs = second.logs();
            assert!(
                logs.contains("another call-ledger instance serves these subjects")
                    && logs.contains(instance.trim()),
                "the refusal names the holder:\n{logs}"
            );
        };
        blocking(|| refused("second-1.log"));
        // The first serves on, undisturbed.
        let listed = caller.request("calls.api.list", &[], "count=true").await;
        assert_eq!(listed.json()["meta"]["count"], 1, "{listed}");

        // SIGKILL: the lock stays (it expires in 120 s); the same directory takes it back at
        // once, another is still refused.
        blocking(|| first.kill());
        blocking(|| refused("second-2.log"));
        let mut first = blocking(|| {
            Serve::start(
                &bin,
                &first_data,
                &nats.url(),
                &ttl,
                dir.path().join("first-2.log"),
            )
        });
        wait_until_serving(&caller, &first).await;
        let listed = caller.request("calls.api.list", &[], "count=true").await;
        assert_eq!(listed.json()["meta"]["count"], 1, "{listed}");

        // A clean stop releases it: the other may start at once.
        blocking(|| first.stop_cleanly());
        let mut second = blocking(|| {
            Serve::start(
                &bin,
                &second_data,
                &nats.url(),
                &ttl,
                dir.path().join("second-3.log"),
            )
        });
        wait_until_serving(&caller, &second).await;
        blocking(|| second.stop_cleanly());
    })
    .await;
}

/// Two `callledger serve --log jetstream` on one NATS and one subject prefix: both start (the
/// log is shared, not split), creates through the queue group get unique, increasing ids,
/// every get sent right after a create's reply finds the call whichever instance answers
/// (read-your-writes across instances), when one instance is killed the other serves on with
/// the whole ledger, and the killed one, restarted on its data directory, serves it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_the_jetstream_log_serve_one_ledger() {
    let bin = blocking(callledger_bin);
    bounded("the test", TEST_TIMEOUT, async {
        const CREATES: u64 = 40;
        let nats = blocking(NatsServer::start);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let args = ["--log", "jetstream", "--log-replicas", "1"];
        let mut instances = Vec::new();
        for name in ["a", "b"] {
            let serve = blocking(|| {
                Serve::start(
                    &bin,
                    &dir.path().join(format!("data-{name}")),
                    &nats.url(),
                    &args,
                    dir.path().join(format!("serve-{name}.log")),
                )
            });
            instances.push(serve);
        }
        let client = async_nats::connect(nats.url()).await.expect("a client");
        let caller = Caller::new(client.clone(), None);
        for serve in &instances {
            wait_until_serving(&caller, serve).await;
        }
        let mut ids = Vec::new();
        for n in 0..CREATES {
            let created = caller
                .request(
                    "calls.api.create",
                    &[],
                    call_document(json!({"vendorCallId": format!("c{n}")})).to_string(),
                )
                .await;
            assert!(created.is_success(), "{created}");
            let id = created.json()["data"]["id"].as_u64().expect("an id");
            let got = caller
                .request(&format!("calls.api.get.{id}"), &[], "")
                .await;
            assert!(got.is_success(), "a get right after the create: {got}");
            ids.push(id);
        }
        assert_eq!(
            ids,
            (1..=CREATES).collect::<Vec<_>>(),
            "unique, increasing ids"
        );

        // One instance dies; the other has the whole ledger and goes on writing.
        blocking(|| instances[0].kill());
        // A request sent before the server has noticed the kill can still be routed to the dead
        // instance's subscription: retried, as a client would (the create with a key, so that
        // a retry never makes a second call).
        let listed = eventually("a list after the kill", Duration::from_secs(30), || {
            let caller = caller.clone();
            async move {
                caller
                    .try_request_within(
                        "calls.api.list",
                        &[],
                        "count=true",
                        CLUSTER_REQUEST_TIMEOUT,
                    )
                    .await
                    .ok()
            }
        })
        .await;
        assert_eq!(listed.json()["meta"]["count"], CREATES, "{listed}");
        let created = eventually("a create after the kill", Duration::from_secs(30), || {
            let caller = caller.clone();
            async move {
                caller
                    .try_request_within(
                        "calls.api.create",
                        &[("Idempotency-Key", "after-the-kill")],
                        call_document(json!({"note": "after"})).to_string(),
                        CLUSTER_REQUEST_TIMEOUT,
                    )
                    .await
                    .ok()
            }
        })
        .await;
        assert_eq!(created.json()["data"]["id"], CREATES + 1, "{created}");
        instances[1].terminate();
        let status = blocking(|| instances[1].wait(Duration::from_secs(30)));
        assert!(
            status.success(),
            "{status}; its log:\n{}",
            instances[1].logs()
        );

        // The killed instance comes back on its data directory alone: its replica, kept there,
        // is followed from where the kill left it to the whole ledger.
        let data_a = dir.path().join("data-a");
        assert!(data_a.join("replica").join("stream-of-record").exists());
        let mut restarted = blocking(|| {
            Serve::start(
                &bin,
                &data_a,
                &nats.url(),
                &args,
                dir.path().join("serve-a-again.log"),
            )
        });
        wait_until_serving(&caller, &restarted).await;
        let listed = caller.request("calls.api.list", &[], "count=true").await;
        assert_eq!(listed.json()["meta"]["count"], CREATES + 1, "{listed}");
        let got = caller
            .request(&format!("calls.api.get.{}", CREATES + 1), &[], "")
            .await;
        assert!(got.is_success(), "the call made after the kill: {got}");
        restarted.terminate();
        let status = blocking(|| restarted.wait(Duration::from_secs(30)));
        assert!(status.success(), "{status}; its log:\n{}", restarted.logs());
    })
    .await;
}

/// How long one request of the cluster test waits: an instance that is paused (SIGSTOP) still
/// receives its share of the queue group's requests, and those are retried elsewhere.
const CLUSTER_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Creates a call with `key` through any instance, retrying the same request (same key, so it
/// is applied once) until it is answered or `patience` runs out; returns the call's id and how
/// long requests failed before it.
async fn create_patiently(caller: &Caller, key: &str, patience: Duration) -> (u64, Duration) {
    let started = std::time::Instant::now();
    let mut failing_since = None;
    loop {
        let reply = caller
            .try_request_within(
                "calls.api.create",
                &[("Idempotency-Key", key)],
                call_document(json!({"vendorCallId": key})).to_string(),
                CLUSTER_REQUEST_TIMEOUT,
            )
            .await;
        match reply {
            Ok(reply) if reply.is_success() => {
                let id = reply.json()["data"]["id"].as_u64().expect("an id");
                let failed = failing_since
                    .map_or(Duration::ZERO, |since: std::time::Instant| since.elapsed());
                return (id, failed);
            }
            _ => {
                failing_since.get_or_insert_with(std::time::Instant::now);
                assert!(
                    started.elapsed() < patience,
                    "{key} was not answered within {patience:?}: {reply:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One get of call `id` through any instance, within [`CLUSTER_REQUEST_TIMEOUT`].
async fn get_once(caller: &Caller, id: u64) -> Result<super::Reply, async_nats::RequestError> {
    caller
        .try_request_within(
            &format!("calls.api.get.{id}"),
            &[],
            "",
            CLUSTER_REQUEST_TIMEOUT,
        )
        .await
}

/// Gets call `id` through any instance until it is answered: while a node is lost a read may
/// fail (503, or no reply in time) and be retried, but it must never say the call is not there.
async fn get_patiently(caller: &Caller, id: u64, patience: Duration) {
    let started = std::time::Instant::now();
    loop {
        let reply = get_once(caller, id).await;
        if let Ok(reply) = &reply {
            if reply.is_success() {
                return;
            }
            assert_ne!(
                reply.header("Nats-Service-Error-Code"),
                Some("404"),
                "call {id} was acknowledged but a read says it is not there: {reply}"
            );
        }
        assert!(
            started.elapsed() < patience,
            "call {id} was not read within {patience:?}: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Gets call `id` until `instances` different instances (by `Call-Ledger-Instance`) have each
/// answered it: the queue group spreads the gets, so each instance's read right after the write
/// is seen. None may say the call is not there.
async fn get_from_every_instance(caller: &Caller, id: u64, instances: usize) {
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..400 {
        let reply = get_once(caller, id).await;
        if let Ok(reply) = reply {
            assert!(
                reply.is_success(),
                "call {id} was acknowledged; a get says: {reply}"
            );
            let instance = reply.header("Call-Ledger-Instance").unwrap_or_default();
            answered.insert(instance.to_owned());
            if answered.len() == instances {
                return;
            }
        }
    }
    panic!("call {id} was read by only {answered:?} of {instances} instances in 400 gets");
}

/// `callledger --data-dir DATA ARGS...` (an offline subcommand), its stdout; fails the test on
/// a non-zero exit.
pub(super) fn offline(bin: &Path, data: &Path, args: &[&str]) -> String {
    let output = Command::new(bin)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("callledger runs");
    assert!(
        output.status.success(),
        "callledger {args:?} on {}: {}{}",
        data.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Three `callledger serve --log jetstream --log-replicas 3` on a three-node cluster, under
/// creates, gets and a hundred racing `If-Match` writers, through a killed NATS node, a paused
/// (SIGSTOP) instance and a SIGKILLed one:
/// - every write answered by one instance is read right after by each instance;
/// - each version of a call is won by exactly one writer, whichever instance takes it;
/// - nothing acknowledged is lost and no id is used twice; the paused instance, resumed,
///   appends nothing twice and converges;
/// - at the end every instance's projection equals the others' and `verify` (a rebuild from the
///   stream) passes on each data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_a_three_node_cluster_lose_nothing() {
    let bin = blocking(callledger_bin);
    bounded("the test", Duration::from_secs(300), async {
        let mut cluster = blocking(|| NatsCluster::start(3));
        let urls = cluster.urls();
        let client = async_nats::connect(cluster.url(1)).await.expect("a client");
        // Nodes greet before their JetStream meta group has a leader: wait until an R3 stream
        // can be made, so that the instances start on a cluster that is there.
        let js = jetstream::new(client.clone());
        eventually("the cluster's JetStream", Duration::from_secs(60), || {
            let js = js.clone();
            async move {
                js.get_or_create_stream(jetstream::stream::Config {
                    name: "READY".into(),
                    subjects: vec!["ready.>".into()],
                    num_replicas: 3,
                    ..Default::default()
                })
                .await
                .ok()
            }
        })
        .await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let args = ["--log", "jetstream", "--log-replicas", "3"];
        let data: Vec<PathBuf> = (0..3)
            .map(|n| dir.path().join(format!("data-{n}")))
            .collect();
        let mut instances = Vec::new();
        for (n, data) in data.iter().enumerate() {
            let serve = blocking(|| {
                Serve::start(
                    &bin,
                    data,
                    &urls,
                    &args,
                    dir.path().join(format!("serve-{n}.log")),
                )
            });
            instances.push(serve);
        }
        let caller = Caller::new(client.clone(), None);
        // Each instance by its own word (any instance answers the queue group).
        for serve in &instances {
            let running = wait_until(Duration::from_secs(90), || {
                serve.logs().contains("call-ledger gateway running")
            });
            assert!(
                running,
                "an instance did not start; its log:\n{}",
                serve.logs()
            );
        }
        let patience = Duration::from_secs(60);
        let mut ids = BTreeMap::new();
        let round = |phase: &'static str, count: usize| {
            let caller = caller.clone();
            async move {
                let mut made = Vec::new();
                let mut worst = Duration::ZERO;
                for n in 0..count {
                    let key = format!("{phase}-{n}");
                    let (id, failed) = create_patiently(&caller, &key, patience).await;
                    worst = worst.max(failed);
                    get_patiently(&caller, id, patience).await;
                    made.push((key, id));
                }
                eprintln!("{phase}: {count} creates, requests failed for at most {worst:?}");
                made
            }
        };
        ids.extend(round("steady", 20).await);
        for id in ids.values().take(5) {
            get_from_every_instance(&caller, *id, 3).await;
        }

        // A hundred writers race on one call through all three instances.
        let (raced, _) = create_patiently(&caller, "raced", patience).await;
        ids.insert("raced".into(), raced);
        let initial = caller
            .request(&format!("calls.api.get.{raced}"), &[], "")
            .await
            .etag();
        let attempts = super::writes::race_writers(&caller, raced, 100).await;
        let last = caller
            .request(&format!("calls.api.get.{raced}"), &[], "")
            .await
            .etag();
        super::writes::assert_each_version_won_once(&attempts, initial, last);
        let answering: std::collections::BTreeSet<&str> =
            attempts.iter().map(|a| a.instance.as_str()).collect();
        assert_eq!(answering.len(), 3, "the race went through every instance");

        blocking(|| cluster.kill(0));
        ids.extend(round("node-down", 20).await);
        blocking(|| cluster.restart(0));

        // One instance paused past any request's timeout: its share of requests is retried
        // elsewhere; resumed, it answers what it held (retries with known keys append nothing)
        // and converges.
        instances[1].signal("STOP");
        let paused = std::time::Instant::now();
        ids.extend(round("paused", 8).await);
        eprintln!("paused: instance 1 stopped for {:?}", paused.elapsed());
        instances[1].signal("CONT");
        let (after_pause, _) = create_patiently(&caller, "after-pause", patience).await;
        ids.insert("after-pause".into(), after_pause);
        get_from_every_instance(&caller, after_pause, 3).await;

        blocking(|| instances[0].kill());
        ids.extend(round("instance-down", 15).await);

        let unique: std::collections::HashSet<u64> = ids.values().copied().collect();
        assert_eq!(unique.len(), ids.len(), "no id used twice: {ids:?}");
        assert_eq!(
            unique.iter().max().copied(),
            Some(ids.len() as u64),
            "ids 1..=n, none skipped by a retried create: {ids:?}"
        );
        for _ in 0..6 {
            let listed = caller.request("calls.api.list", &[], "count=true").await;
            assert_eq!(
                listed.json()["meta"]["count"].as_u64(),
                Some(ids.len() as u64),
                "every acknowledged create, on whichever instance answers: {listed}"
            );
        }
        for serve in instances.iter_mut().skip(1) {
            blocking(|| serve.stop_cleanly());
        }

        // Offline, on each data directory (the SIGKILLed one too): the log of record is found
        // from the directory, the projection catches up, a rebuild from the stream equals it,
        // and all three answer the same list.
        let mut lists = Vec::new();
        for data in &data {
            let verified = blocking(|| offline(&bin, data, &["verify"]));
            assert!(verified.starts_with("verified:"), "{verified}");
            lists.push(blocking(|| {
                offline(&bin, data, &["list", "page[size]=1000&sort=id"])
            }));
        }
        let listed: Value = serde_json::from_str(&lists[0]).expect("a list document");
        assert_eq!(
            listed["data"].as_array().map(Vec::len),
            Some(ids.len()),
            "{listed}"
        );
        assert_eq!(lists[0], lists[1], "instances 0 and 1 agree");
        assert_eq!(lists[0], lists[2], "instances 0 and 2 agree");
    })
    .await;
}

/// `callledger list | head -c 1`, and `stats`, `verify` and `rebuild` into a pipe nobody reads:
/// the reader stops reading, and callledger exits 0 without a panic (`println!` panics on a
/// closed stdout).
#[test]
fn an_offline_read_into_a_closed_pipe_exits_cleanly() {
    use std::io::Read;
    let bin = callledger_bin();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let calls = dir.path().join("calls.ndjson");
    let mut lines = String::new();
    for n in 0..300 {
        lines.push_str(&format!("{{\"note\":\"call {n} {}\"}}\n", "x".repeat(200)));
    }
    std::fs::write(&calls, lines).expect("the calls");
    let imported = offline(&bin, &data, &["import", calls.to_str().expect("a path")]);
    assert!(imported.starts_with("imported 300 calls"), "{imported}");

    let mut child = Command::new(&bin)
        .arg("--data-dir")
        .arg(&data)
        .args(["list", "page[size]=1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("callledger list starts");
    let mut stdout = child.stdout.take().expect("its stdout");
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("the first byte");
    drop(stdout);
    exited_cleanly("list", child);

    for command in ["stats", "verify", "rebuild"] {
        let mut child = Command::new(&bin)
            .arg("--data-dir")
            .arg(&data)
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("callledger starts");
        // Closed before anything is written: the one line it prints meets a broken pipe.
        drop(child.stdout.take());
        exited_cleanly(command, child);
    }
}

/// Waits for `child` (callledger running `command`) and asserts that it exited 0 without a panic.
fn exited_cleanly(command: &str, child: std::process::Child) {
    let output = child.wait_with_output().expect("callledger ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stderr.contains("panicked"),
        "{command}: {}: {stderr}",
        output.status
    );
}

/// The commands that read a ledger refuse a data directory that is not there, rather than
/// report an empty ledger (a mistyped path) and leave a new directory behind.
#[test]
fn reading_commands_refuse_a_data_directory_that_does_not_exist() {
    let bin = callledger_bin();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("mistyped");
    for command in [
        &["stats"][..],
        &["verify"],
        &["rebuild"],
        &["export"],
        &["list"],
        &["get", "1"],
    ] {
        let output = Command::new(&bin)
            .arg("--data-dir")
            .arg(&missing)
            .args(command)
            .output()
            .expect("callledger runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{command:?}: {stderr}");
        assert!(
            stderr.contains("there is no ledger in") && stderr.contains("mistyped"),
            "{command:?}: {stderr}"
        );
        assert!(!missing.exists(), "{command:?} made the directory");
    }
}

/// `callledger import` in batches: every good line becomes exactly one call, every bad one is
/// skipped with its line number and what was wrong, across batch boundaries. A file as Windows
/// tools write it (a byte order mark, CRLF line ends) reads as any other; a line that is not
/// UTF-8 is skipped like any other bad line instead of ending the import.
#[test]
fn import_skips_bad_lines_by_number_and_imports_every_other_once() {
    let bin = callledger_bin();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let calls = dir.path().join("calls.ndjson");
    let mut lines: Vec<u8> = b"\xEF\xBB\xBF".to_vec();
    for n in 1..=25 {
        match n {
            4 => lines.extend_from_slice(b"not json\n"),
            11 => lines.extend_from_slice(b"{\"direction\":\"sideways\"}\n"),
            12 => lines.push(b'\n'),
            17 => lines.extend_from_slice(b"{\"note\":\"line \xFF\"}\n"),
            n if n % 3 == 0 => {
                lines.extend_from_slice(format!("{{\"note\":\"line {n}\"}}\r\n").as_bytes())
            }
            _ => lines.extend_from_slice(format!("{{\"note\":\"line {n}\"}}\n").as_bytes()),
        }
    }
    std::fs::write(&calls, lines).expect("the calls");
    let output = Command::new(&bin)
        .arg("--data-dir")
        .arg(&data)
        .args(["import", "--batch", "5", "--parallel", "3"])
        .arg(&calls)
        .output()
        .expect("callledger import runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("imported 21 calls, skipped 3 lines"),
        "{stdout}"
    );
    assert!(stderr.contains("line 4: skipped: not JSON"), "{stderr}");
    assert!(
        stderr.contains("line 11: skipped: /data/attributes/direction"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 17: skipped: not UTF-8 text: the byte at column 15"),
        "{stderr}"
    );
    let listed: Value =
        serde_json::from_str(&offline(&bin, &data, &["list", "page[size]=100&sort=id"]))
            .expect("list prints JSON");
    let notes: Vec<&str> = listed["data"]
        .as_array()
        .expect("a page")
        .iter()
        .filter_map(|call| call["attributes"]["note"].as_str())
        .collect();
    // Batches go to several workers, so calls keep the file's order only within a batch.
    let mut numbers: Vec<u32> = notes
        .iter()
        .filter_map(|note| note.strip_prefix("line ")?.parse().ok())
        .collect();
    numbers.sort_unstable();
    let expected: Vec<u32> = (1..=25).filter(|n| ![4, 11, 12, 17].contains(n)).collect();
    assert_eq!(numbers, expected);
}

/// `Some` once the consumer `call-ledger` has settled every command (none pending, none
/// waiting for an ack).
async fn commands_settled(js: jetstream::Context) -> Option<()> {
    let mut consumer = js
        .get_stream("CALL_COMMANDS")
        .await
        .ok()?
        .get_consumer::<pull::Config>("call-ledger")
        .await
        .ok()?;
    let info = consumer.info().await.ok()?;
    (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
}

/// How many calls each producer command (a note `command ...`) made, from the offline export.
fn calls_made_by_commands(bin: &Path, data: &Path) -> BTreeMap<String, usize> {
    let mut made = BTreeMap::new();
    for line in offline(bin, data, &["export"]).lines() {
        let event: Value = serde_json::from_str(line).expect("an event");
        if let Some(note) = event["data"]["attributes"]["note"].as_str() {
            if event["type"] == "CallCreated" && note.starts_with("command ") {
                *made.entry(note.to_owned()).or_default() += 1;
            }
        }
    }
    made
}

/// Runs `callledger ARGS` and returns its output, whatever its exit status.
fn cli(bin: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("callledger runs")
}

/// A path as a command-line argument.
pub(super) fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// `callledger backup --nats-url` while `serve` takes writes, again to copy only what is new,
/// then `restore` into a new data directory: the restored ledger verifies and answers the same
/// lists, gets and export as the original. A damaged segment, a directory that holds a ledger
/// and a backup of another ledger are refused with what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_write_load_restores_the_same_ledger() {
    let bin = blocking(callledger_bin);
    bounded("the test", TEST_TIMEOUT, async {
        let nats = blocking(NatsServer::start);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        let backup = dir.path().join("backup");
        let mut serve =
            blocking(|| Serve::start(&bin, &data, &nats.url(), &[], dir.path().join("serve.log")));
        let client = async_nats::connect(nats.url()).await.expect("a client");
        let caller = Caller::new(client, None);
        wait_until_serving(&caller, &serve).await;

        // Writers create, update and delete calls until told to stop.
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for writer in 0..4 {
            let (caller, stop, acknowledged) = (caller.clone(), stop.clone(), acknowledged.clone());
            writers.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let created = caller
                        .create_call(json!({"note": format!("writer {writer} call {n}")}))
                        .await;
                    let id = created["id"].as_u64().expect("an id");
                    if n.is_multiple_of(3) {
                        let update = call_document(json!({"outcome": "Answered"}));
                        assert!(caller.update(id, &[], &update).await.is_success());
                    }
                    if n.is_multiple_of(5) {
                        assert!(caller.delete(id, &[]).await.is_success());
                    }
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        let progress = |at_least: usize| {
            let acknowledged = acknowledged.clone();
            eventually("writes acknowledged", Duration::from_secs(30), move || {
                let acknowledged = acknowledged.clone();
                async move { (acknowledged.load(Ordering::SeqCst) >= at_least).then_some(()) }
            })
        };
        progress(50).await;
        let online = |backup: PathBuf| {
            let (bin, url) = (bin.clone(), nats.url());
            tokio::task::spawn_blocking(move || {
                cli(&bin, &["backup", "--nats-url", &url, arg(&backup)])
            })
        };
        let first = online(backup.clone()).await.expect("the backup runs");
        let said = String::from_utf8_lossy(&first.stdout).into_owned();
        assert!(
            first.status.success() && said.starts_with("backed up "),
            "{said}{}",
            String::from_utf8_lossy(&first.stderr)
        );
        let manifest = || -> Value {
            serde_json::from_slice(
                &std::fs::read(backup.join("manifest.json")).expect("a manifest"),
            )
            .expect("the manifest is JSON")
        };
        let first_position = manifest()["position"].as_u64().expect("a position");
        assert!(first_position > 0);
        // Kept as it was, to restore the ledger as of the first run.
        let first_backup = dir.path().join("first-backup");
        std::fs::create_dir(&first_backup).expect("a directory");
        for entry in std::fs::read_dir(&backup).expect("the backup") {
            let entry = entry.expect("an entry");
            std::fs::copy(entry.path(), first_backup.join(entry.file_name())).expect("a copy");
        }
        // More writes, then the same backup again: only what is new.
        let seen = acknowledged.load(Ordering::SeqCst);
        progress(seen + 20).await;
        stop.store(true, Ordering::SeqCst);
        for writer in writers {
            bounded("a writer", Duration::from_secs(30), writer)
                .await
                .expect("a writer does not panic");
        }
        let second = online(backup.clone()).await.expect("the backup runs");
        assert!(
            second.status.success(),
            "{}",
            String::from_utf8_lossy(&second.stderr)
        );
        let manifest = manifest();
        let segments = manifest["segments"].as_array().expect("segments");
        assert_eq!(segments.len(), 2, "{manifest}");
        assert_eq!(segments[1]["first"].as_u64(), Some(first_position + 1));
        let position = manifest["position"].as_u64().expect("a position");
        serve.stop_cleanly();
        let original_stats = offline_stats(&bin, &data);
        assert_eq!(
            original_stats["lastPosition"].as_u64(),
            Some(position),
            "{original_stats}"
        );

        let restored = dir.path().join("restored");
        let said = offline(&bin, &restored, &["restore", arg(&backup)]);
        assert!(
            said.starts_with(&format!("restored {position} events")),
            "{said}"
        );
        let verified = offline(&bin, &restored, &["verify"]);
        assert!(verified.contains("equals the live one"), "{verified}");
        for args in [
            vec!["export"],
            vec!["list", "page[size]=1000&sort=id&count=true"],
            vec!["list", "filter[outcome]=Answered&sort=-updatedAt"],
            vec!["get", "1"],
            vec!["get", "7"],
        ] {
            assert_eq!(
                offline(&bin, &restored, &args),
                offline(&bin, &data, &args),
                "callledger {args:?}"
            );
        }
        // The backup taken under load restores the ledger as it was at its position.
        let exported = offline(&bin, &data, &["export"]);
        let as_of_first = dir.path().join("as-of-first");
        offline(&bin, &as_of_first, &["restore", arg(&first_backup)]);
        let first_lines: Vec<&str> = exported.lines().take(first_position as usize).collect();
        assert_eq!(
            offline(&bin, &as_of_first, &["export"])
                .lines()
                .collect::<Vec<_>>(),
            first_lines
        );
        // An export stream restores the same ledger too.
        let streamed = dir.path().join("streamed");
        let mut child = Command::new(&bin)
            .arg("--data-dir")
            .arg(&streamed)
            .args(["restore", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("restore starts");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("its stdin");
            stdin
                .write_all(exported.as_bytes())
                .expect("the export is written");
        }
        assert!(child
            .wait_with_output()
            .expect("restore ends")
            .status
            .success());
        assert_eq!(offline(&bin, &streamed, &["export"]), exported);

        // Refusals, each saying what is wrong, writing nothing.
        let refused = cli(
            &bin,
            &["--data-dir", arg(&restored), "restore", arg(&backup)],
        );
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && stderr.contains("is not empty"),
            "{stderr}"
        );
        let segment = backup.join(segments[0]["file"].as_str().expect("a file name"));
        let mut bytes = std::fs::read(&segment).expect("the segment");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        std::fs::write(&segment, bytes).expect("the damaged segment");
        let damaged = dir.path().join("damaged");
        let refused = cli(
            &bin,
            &["--data-dir", arg(&damaged), "restore", arg(&backup)],
        );
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && stderr.contains("is damaged"),
            "{stderr}"
        );
        assert!(
            !damaged.exists(),
            "nothing was written for a damaged backup"
        );
        let other = dir.path().join("other");
        let mut lines = String::new();
        for n in 0..3 {
            lines.push_str(&format!("{{\"note\":\"other {n}\"}}\n"));
        }
        std::fs::write(dir.path().join("other.ndjson"), lines).expect("the calls");
        offline(
            &bin,
            &other,
            &["import", arg(&dir.path().join("other.ndjson"))],
        );
        let refused = cli(&bin, &["--data-dir", arg(&other), "backup", arg(&backup)]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && stderr.contains("another ledger"),
            "{stderr}"
        );
    })
    .await;
}

/// NATS stops for ten seconds under load (API creates from four writers, producers' commands
/// waiting in JetStream) and comes back on the same port and store: the service reconnects by
/// itself, every command published before the stop is applied once, every create it
/// acknowledged is there, and a client asking during the outage fails within its timeout with
/// a clear error instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_rides_out_a_ten_second_nats_outage_under_load() {
    let bin = blocking(callledger_bin);
    bounded("the test", TEST_TIMEOUT, async {
        const COMMANDS: usize = 50;
        let mut nats = blocking(NatsServer::start);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        let mut serve =
            blocking(|| Serve::start(&bin, &data, &nats.url(), &[], dir.path().join("serve.log")));
        let client = async_nats::connect(nats.url()).await.expect("a client");
        let caller = Caller::new(client.clone(), None);
        wait_until_serving(&caller, &serve).await;

        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for writer in 0..4 {
            let (caller, stop) = (caller.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let document = call_document(json!({"note": format!("w{writer} {n}")}));
                    let sent = caller
                        .try_request_within(
                            "calls.api.create",
                            &[],
                            document.to_string(),
                            Duration::from_secs(2),
                        )
                        .await;
                    match sent {
                        Ok(reply) if reply.is_success() => {
                            acknowledged.push(reply.data()["id"].as_u64().expect("an id"));
                        }
                        // Refused or lost while NATS is away: not acknowledged, retried later.
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                acknowledged
            }));
        }
        let js = jetstream::new(client.clone());
        // The API may answer a moment before the command stream is there.
        eventually("CALL_COMMANDS", Duration::from_secs(30), || {
            let js = js.clone();
            async move { js.get_stream("CALL_COMMANDS").await.ok() }
        })
        .await;
        for n in 0..COMMANDS {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("outage-{n}").as_str());
            let document = call_document(json!({"note": format!("command {n}")}));
            js.publish_with_headers(
                "calls.commands.create",
                headers,
                document.to_string().into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
        }

        blocking(|| nats.stop());
        let outage = std::time::Instant::now();
        let asked = {
            let (bin, url) = (bin.clone(), nats.url());
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let output = cli(
                    &bin,
                    &["calls", "list", "--nats-url", &url, "--timeout", "2"],
                );
                (started.elapsed(), output)
            })
        };
        let (took, output) = asked.await.expect("the client runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "a list during the outage: {stderr}"
        );
        assert!(took < Duration::from_secs(10), "it took {took:?}: {stderr}");
        assert!(stderr.contains("NATS"), "the error names NATS: {stderr}");
        // The rest of the ten seconds.
        if let Some(rest) = Duration::from_secs(10).checked_sub(outage.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        assert!(
            serve.is_running(),
            "serve survives the outage; its log:\n{}",
            serve.logs()
        );
        blocking(|| nats.restart());

        // Writers go on for a while after the restart, then stop.
        wait_until_serving(&caller, &serve).await;
        let created_after = Arc::new(AtomicUsize::new(0));
        eventually(
            "a create after the restart",
            Duration::from_secs(30),
            || {
                let (caller, created_after) = (caller.clone(), created_after.clone());
                async move {
                    let reply = caller
                        .try_request(
                            "calls.api.create",
                            &[],
                            call_document(json!({})).to_string(),
                        )
                        .await
                        .ok()?;
                    reply
                        .is_success()
                        .then(|| created_after.fetch_add(1, Ordering::SeqCst))
                }
            },
        )
        .await;
        stop.store(true, Ordering::SeqCst);
        let mut acknowledged = Vec::new();
        for writer in writers {
            let ids = bounded("a writer", Duration::from_secs(30), writer).await;
            acknowledged.extend(ids.expect("a writer does not panic"));
        }
        eventually("every command settled", Duration::from_secs(60), || {
            commands_settled(js.clone())
        })
        .await;
        for id in acknowledged.iter().step_by(7) {
            let reply = caller.get(*id, "").await;
            assert!(reply.is_success(), "acknowledged call {id}: {reply}");
        }
        serve.stop_cleanly();
        let verified = offline(&bin, &data, &["verify"]);
        assert!(verified.contains("equals the live one"), "{verified}");
        // Each command made exactly one call.
        let made = calls_made_by_commands(&bin, &data);
        assert_eq!(made.len(), COMMANDS, "{made:?}");
        assert!(made.values().all(|&n| n == 1), "{made:?}");
    })
    .await;
}

/// What the writers of the SIGKILL rounds were told: the calls they created, the version each
/// acknowledged update left, and the deletes acknowledged or merely sent.
#[derive(Default)]
struct Acknowledged {
    created: Vec<u64>,
    versions: BTreeMap<u64, u64>,
    deleted: std::collections::BTreeSet<u64>,
    delete_sent: std::collections::BTreeSet<u64>,
}

/// One writer of a round: creates, updates, deletes, gets and lists until its requests fail
/// (the service was killed).
async fn mixed_writer(caller: Caller, writer: usize, round: usize) -> Acknowledged {
    let mut acknowledged = Acknowledged::default();
    let timeout = Duration::from_secs(2);
    for n in 0u64.. {
        let document = call_document(json!({"note": format!("r{round} w{writer} {n}")}));
        let Ok(reply) = caller
            .try_request_within("calls.api.create", &[], document.to_string(), timeout)
            .await
        else {
            break;
        };
        if !reply.is_success() {
            break;
        }
        let id = reply.data()["id"].as_u64().expect("an id");
        acknowledged.created.push(id);
        acknowledged.versions.insert(id, 1);
        let update = call_document(json!({"outcome": "Answered"}));
        match caller
            .try_request_within(
                &format!("calls.api.update.{id}"),
                &[],
                update.to_string(),
                timeout,
            )
            .await
        {
            Ok(reply) if reply.is_success() => {
                acknowledged.versions.insert(id, reply.etag());
            }
            _ => break,
        }
        if n % 4 == 3 {
            acknowledged.delete_sent.insert(id);
            match caller
                .try_request_within(&format!("calls.api.delete.{id}"), &[], "", timeout)
                .await
            {
                Ok(reply) if reply.is_success() => {
                    acknowledged.deleted.insert(id);
                }
                _ => break,
            }
        }
        let read = caller
            .try_request_within(&format!("calls.api.get.{id}"), &[], "", timeout)
            .await;
        let listed = caller
            .try_request_within("calls.api.list", &[], "page[size]=5&sort=-id", timeout)
            .await;
        if read.is_err() || listed.is_err() {
            break;
        }
    }
    acknowledged
}

/// Ten rounds of SIGKILL at a random moment while `serve` takes mixed API requests (create,
/// update, delete, get, list from four writers) and producers' commands: after every restart
/// each acknowledged write is there, and at the end every command made exactly one call,
/// `CALL_EVENTS` holds every event of the log once in position order, and `verify` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkill_rounds_under_mixed_load_lose_nothing_and_apply_nothing_twice() {
    let bin = blocking(callledger_bin);
    bounded("the test", Duration::from_secs(300), async {
        const ROUNDS: usize = 10;
        const COMMANDS_PER_ROUND: usize = 20;
        let seed = chrono::Utc::now().timestamp_subsec_nanos() as u64 | 1;
        println!("seed {seed}");
        let mut random = seed;
        let mut next_random = move |below: u64| {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random % below
        };
        let nats = blocking(NatsServer::start);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        let client = async_nats::connect(nats.url()).await.expect("a client");
        let caller = Caller::new(client.clone(), None);
        let js = jetstream::new(client.clone());
        let mut all = Acknowledged::default();
        for round in 0..ROUNDS {
            let log = dir.path().join(format!("serve-{round}.log"));
            let mut serve = blocking(|| Serve::start(&bin, &data, &nats.url(), &[], log));
            wait_until_serving(&caller, &serve).await;
            // What earlier rounds acknowledged is there.
            for id in all.created.iter().rev().take(20) {
                let reply = caller.get(*id, "").await;
                if all.delete_sent.contains(id) && !reply.is_success() {
                    continue;
                }
                assert!(reply.is_success(), "round {round}: call {id}: {reply}");
                assert!(reply.etag() >= all.versions[id], "round {round}: call {id}");
            }
            // The API may answer a moment before the command stream is there.
            eventually("CALL_COMMANDS", Duration::from_secs(30), || {
                let js = js.clone();
                async move { js.get_stream("CALL_COMMANDS").await.ok() }
            })
            .await;
            let writers: Vec<_> = (0..4)
                .map(|writer| tokio::spawn(mixed_writer(caller.clone(), writer, round)))
                .collect();
            for n in 0..COMMANDS_PER_ROUND {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("kill-r{round}-{n}").as_str());
                let document = call_document(json!({"note": format!("command r{round} {n}")}));
                js.publish_with_headers(
                    "calls.commands.create",
                    headers,
                    document.to_string().into(),
                )
                .await
                .expect("publish")
                .await
                .expect("stored");
            }
            // A random moment: after 0 to 60 more acknowledged creates.
            let at_least = all.created.len() as u64 + next_random(60);
            eventually("writes before the kill", Duration::from_secs(30), || {
                let caller = caller.clone();
                async move { count(&caller).await.filter(|&n| n >= at_least).map(drop) }
            })
            .await;
            blocking(|| serve.kill());
            for writer in writers {
                let acknowledged = bounded("a writer", Duration::from_secs(30), writer)
                    .await
                    .expect("a writer does not panic");
                all.created.extend(acknowledged.created);
                all.versions.extend(acknowledged.versions);
                all.deleted.extend(acknowledged.deleted);
                all.delete_sent.extend(acknowledged.delete_sent);
            }
        }

        // The last start: the commands taken but not acked at the kills are redelivered after
        // the consumer's ack wait (30 s).
        let mut serve = blocking(|| {
            Serve::start(
                &bin,
                &data,
                &nats.url(),
                &[],
                dir.path().join("serve-last.log"),
            )
        });
        wait_until_serving(&caller, &serve).await;
        eventually("every command settled", Duration::from_secs(120), || {
            commands_settled(js.clone())
        })
        .await;
        for id in &all.created {
            let reply = caller.get(*id, "").await;
            if all.deleted.contains(id) || (all.delete_sent.contains(id) && !reply.is_success()) {
                reply.assert_error(404, "Resource Not Found");
                continue;
            }
            assert!(reply.is_success(), "call {id}: {reply}");
            assert!(reply.etag() >= all.versions[id], "call {id}");
        }
        // Every event once, in position order, on CALL_EVENTS.
        let head = {
            let stats = caller
                .request("calls.api.changes", &[], "after=0&limit=1")
                .await;
            assert!(stats.is_success(), "{stats}");
            serve.stop_cleanly();
            offline_stats(&bin, &data)["lastPosition"]
                .as_u64()
                .expect("a head")
        };
        let mut serve_again = blocking(|| {
            Serve::start(
                &bin,
                &data,
                &nats.url(),
                &[],
                dir.path().join("serve-publish.log"),
            )
        });
        wait_until_serving(&caller, &serve_again).await;
        let events = eventually("every event published", Duration::from_secs(60), || {
            let js = js.clone();
            async move {
                let mut stream = js.get_stream("CALL_EVENTS").await.ok()?;
                let messages = stream.info().await.ok()?.state.messages;
                (messages >= head).then_some(stream)
            }
        })
        .await;
        let consumer = events
            .create_consumer(pull::OrderedConfig::default())
            .await
            .expect("an ordered consumer");
        let mut messages =
            futures::StreamExt::take(consumer.messages().await.expect("messages"), head as usize);
        let mut position = 0;
        while let Some(message) = futures::StreamExt::next(&mut messages).await {
            let message = message.expect("a message");
            position += 1;
            let event: Value = serde_json::from_slice(&message.payload).expect("event JSON");
            assert_eq!(event["position"], json!(position), "{event}");
        }
        assert_eq!(position, head);
        let mut events = events;
        assert_eq!(
            events.info().await.expect("info").state.messages,
            head,
            "no event twice"
        );
        serve_again.stop_cleanly();
        drop(serve);

        // Each command made exactly one call; the projection verifies.
        let made = calls_made_by_commands(&bin, &data);
        assert_eq!(made.len(), ROUNDS * COMMANDS_PER_ROUND, "seed {seed}");
        assert!(made.values().all(|&n| n == 1), "seed {seed}: {made:?}");
        let verified = offline(&bin, &data, &["verify"]);
        assert!(verified.contains("equals the live one"), "{verified}");
    })
    .await;
}
