//! Smoke tests against a real `nats-server -js` on a free port with its store in a temporary
//! directory: the service's replies and statistics, the outbox across a server restart, and
//! what JetStream does with a re-published duplicate that carries an outdated expected
//! sequence. The end-to-end suite in `tests/e2e` covers the contract in full.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use call_commands::{CommandRequest, CommandService};
use call_model::{Action, Changes, Timestamp};
use event_log::{EventLog, LogOptions};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::{GatewayConfig, NatsOptions};
// The one nats-server harness of every test: a throwaway `nats-server -js` on a free port.
use call_ledger_tests::NatsServer as Nats;

/// Every test gives up after this long.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

fn options(url: String) -> NatsOptions {
    NatsOptions {
        url,
        creds_file: None,
        user: None,
        password: None,
        token: None,
        name: "call-gateway-test".to_string(),
    }
}

fn config(data_dir: &Path) -> GatewayConfig {
    GatewayConfig {
        subject_prefix: "calls".to_string(),
        max_in_flight: 8,
        duplicate_window: Duration::from_secs(120),
        data_dir: data_dir.to_path_buf(),
        queue_group: "call-ledger".to_string(),
        lock_ttl: Duration::from_secs(10),
        replicated_log: false,
        index_snapshot_every: crate::DEFAULT_INDEX_SNAPSHOT_EVERY,
    }
}

/// A gateway running over `test_api` in a task, until [`Running::stop`].
struct Running {
    task: tokio::task::JoinHandle<Result<(), crate::GatewayError>>,
    stop: oneshot::Sender<()>,
}

impl Running {
    fn start(
        client: async_nats::Client,
        log: &EventLog,
        data_dir: &Path,
        config: GatewayConfig,
    ) -> Running {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::run(
            client,
            test_api(log, data_dir),
            log.clone(),
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        Running { task, stop }
    }

    /// Stops it and waits for its drain, which must succeed.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("the gateway task")
            .expect("the gateway drains");
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most 30 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates a call directly through the command service (blocking).
fn create_call(commands: &CommandService, n: i64) {
    commands
        .execute(CommandRequest {
            command: call_model::Command {
                action: Action::Create(Changes::default()),
                actor: "test".to_string(),
                recorded_at: Timestamp::from_millis(1_700_000_000_000 + n),
                occurred_at: None,
            },
            expected_version: None,
            idempotency_key: None,
        })
        .expect("the call is created");
}

/// The messages of a stream, in sequence order, by direct reads.
async fn stream_messages(js: &jetstream::Context, name: &str) -> Vec<(String, String, Value)> {
    let Ok(mut stream) = js.get_stream(name).await else {
        return Vec::new();
    };
    let Ok(info) = stream.info().await else {
        return Vec::new();
    };
    let last = info.state.last_sequence;
    let mut messages = Vec::new();
    for sequence in 1..=last {
        let Ok(message) = stream.get_raw_message(sequence).await else {
            return Vec::new();
        };
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        let payload = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
        messages.push((message.subject.to_string(), id, payload));
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_publishes_every_event_in_order_across_a_server_restart() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut nats = Nats::start();
        let data = tempfile::tempdir().expect("a data directory");
        let log = EventLog::open(&data.path().join("log"), LogOptions::durable()).expect("log");
        let commands = CommandService::new(log.clone());
        for n in 0..3 {
            create_call(&commands, n);
        }

        let client = crate::connect(options(nats.url())).await.expect("client");
        let gateway = Running::start(client, &log, data.path(), config(data.path()));

        let watcher_client = async_nats::connect(nats.url()).await.expect("watcher");
        let js = jetstream::new(watcher_client.clone());
        eventually("3 events", || async {
            (stream_messages(&js, "CALL_EVENTS").await.len() == 3).then_some(())
        })
        .await;

        // Events appended while NATS is away are published once it is back.
        nats.stop();
        let more = commands.clone();
        tokio::task::spawn_blocking(move || {
            for n in 3..6 {
                create_call(&more, n);
            }
        })
        .await
        .expect("appends");
        nats.restart();
        let messages = eventually("6 events", || async {
            let messages = stream_messages(&js, "CALL_EVENTS").await;
            (messages.len() >= 6).then_some(messages)
        })
        .await;
        assert_eq!(messages.len(), 6, "no duplicates: {messages:#?}");
        for (index, (subject, id, payload)) in messages.iter().enumerate() {
            let position = index as u64 + 1;
            assert_eq!(
                payload["position"], position,
                "in position order: {messages:#?}"
            );
            assert_eq!(
                subject,
                &format!("calls.events.{}.CallCreated", payload["callId"])
            );
            assert_eq!(id, payload["eventId"].as_str().unwrap_or_default());
        }
        // The service's subscriptions came back with the connection.
        let (headers, body) = eventually("the service after the restart", || async {
            crate::connect::request(
                &watcher_client,
                "calls.api.get.1".to_string(),
                Vec::new(),
                Vec::new(),
                Duration::from_secs(5),
            )
            .await
            .ok()
        })
        .await;
        assert_eq!(
            crate::headers::find(&headers, "ETag"),
            Some("1"),
            "{headers:?} {}",
            String::from_utf8_lossy(&body)
        );

        // So did the command consumer.
        let started = Instant::now();
        js.publish(
            "calls.commands.create",
            "{\"data\":{\"type\":\"call\"}}".into(),
        )
        .await
        .expect("sent")
        .await
        .expect("stored");
        eventually("the command's event", || async {
            (stream_messages(&js, "CALL_EVENTS").await.len() == 7).then_some(())
        })
        .await;
        // Not after a missed heartbeat (30 s) or an ack wait: at once.
        assert!(started.elapsed() < Duration::from_secs(10));

        gateway.stop().await;
        let checkpoint = event_log::read_position(&data.path().join("outbox.checkpoint"))
            .expect("the checkpoint");
        assert_eq!(checkpoint, Some(7));
    })
    .await
    .expect("the test finishes in time");
}

/// A checkpoint file behind what the stream holds (it is written at most once a second, so a
/// crash leaves it behind): the restarted outbox resumes after the stream's last event and
/// publishes none of them again, rather than relying on the duplicate window to drop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_checkpoint_file_publishes_nothing_twice() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let nats = Nats::start();
        let data = tempfile::tempdir().expect("a data directory");
        let log = EventLog::open(&data.path().join("log"), LogOptions::durable()).expect("log");
        let commands = CommandService::new(log.clone());
        for n in 0..5 {
            create_call(&commands, n);
        }
        let run = |log: EventLog| {
            let data_dir = data.path().to_path_buf();
            let url = nats.url();
            async move {
                let client = crate::connect(options(url)).await.expect("client");
                let (stop, stopped) = oneshot::channel::<()>();
                let task = tokio::spawn(crate::run(
                    client,
                    test_api(&log, &data_dir),
                    log.clone(),
                    config(&data_dir),
                    async move {
                        let _ = stopped.await;
                    },
                ));
                (stop, task)
            }
        };
        let checkpoint_file = data.path().join("outbox.checkpoint");
        let read_checkpoint = || {
            event_log::read_position(&checkpoint_file)
                .ok()
                .flatten()
                .map(|position| position.to_string())
        };
        let (stop, task) = run(log.clone()).await;
        let watcher = async_nats::connect(nats.url()).await.expect("watcher");
        let js = jetstream::new(watcher.clone());
        eventually("5 events", || async {
            (stream_messages(&js, "CALL_EVENTS").await.len() == 5).then_some(())
        })
        .await;
        let _ = stop.send(());
        task.await.expect("the task").expect("the gateway drains");
        assert_eq!(read_checkpoint().as_deref(), Some("5"));

        // As a crash would leave it: the file says 2, the stream holds 1..=5.
        std::fs::write(&checkpoint_file, "2\n").expect("a stale checkpoint");
        let mut publishes = watcher
            .subscribe("calls.events.>")
            .await
            .expect("subscribe");
        watcher.flush().await.expect("flush");
        let (stop, task) = run(log.clone()).await;
        eventually("the checkpoint caught up", || async {
            (read_checkpoint().as_deref() == Some("5")).then_some(())
        })
        .await;
        watcher.flush().await.expect("flush");
        let republished =
            futures::FutureExt::now_or_never(futures::StreamExt::next(&mut publishes));
        assert!(
            republished.is_none(),
            "an event was published again: {republished:?}"
        );
        // And a new event goes on from there.
        create_call(&commands, 5);
        let messages = eventually("6 events", || async {
            let messages = stream_messages(&js, "CALL_EVENTS").await;
            (messages.len() == 6).then_some(messages)
        })
        .await;
        assert_eq!(messages[5].2["position"], 6);
        let _ = stop.send(());
        task.await.expect("the task").expect("the gateway drains");
    })
    .await
    .expect("the test finishes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_keeps_order_when_the_server_dies_mid_batch() {
    const EVENTS: usize = 3000;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut nats = Nats::start();
        let data = tempfile::tempdir().expect("a data directory");
        let log = EventLog::open(
            &data.path().join("log"),
            LogOptions {
                durability: event_log::Durability::Buffered,
                ..LogOptions::durable()
            },
        )
        .expect("log");
        let commands = CommandService::new(log.clone());
        let writer = commands.clone();
        tokio::task::spawn_blocking(move || {
            for n in 0..EVENTS {
                create_call(&writer, n as i64);
            }
        })
        .await
        .expect("appends");

        let client = crate::connect(options(nats.url())).await.expect("client");
        let gateway = Running::start(client, &log, data.path(), config(data.path()));
        let watcher = async_nats::connect(nats.url()).await.expect("watcher");
        let js = jetstream::new(watcher);
        // Kill the server a few times while batches are in flight.
        for _ in 0..3 {
            eventually("some progress", || async {
                let last = match js.get_stream("CALL_EVENTS").await {
                    Ok(mut stream) => stream
                        .info()
                        .await
                        .map(|i| i.state.last_sequence)
                        .unwrap_or(0),
                    Err(_) => 0,
                };
                (last > 0).then_some(())
            })
            .await;
            nats.restart();
        }
        let messages = eventually("every event", || async {
            let messages = stream_messages(&js, "CALL_EVENTS").await;
            (messages.len() >= EVENTS).then_some(messages)
        })
        .await;
        let positions: Vec<u64> = messages
            .iter()
            .map(|(_, _, payload)| payload["position"].as_u64().unwrap_or(0))
            .collect();
        let expected: Vec<u64> = (1..=EVENTS as u64).collect();
        assert!(positions == expected, "every event once, in order");

        gateway.stop().await;
    })
    .await
    .expect("the test finishes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_and_producer_commands_reach_the_ledger() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let nats = Nats::start();
        let data = tempfile::tempdir().expect("a data directory");
        let log = EventLog::open(&data.path().join("log"), LogOptions::durable()).expect("log");
        let client = crate::connect(options(nats.url())).await.expect("client");
        let gateway = Running::start(client, &log, data.path(), config(data.path()));
        let other = async_nats::connect(nats.url())
            .await
            .expect("another client");
        let js = jetstream::new(other.clone());

        // Request-reply: create, then get.
        let document = r#"{"data":{"type":"call","attributes":{"direction":"inbound"}}}"#;
        let (headers, body) = eventually("the service", || async {
            crate::connect::request(
                &other,
                "calls.api.create".to_string(),
                vec![("Idempotency-Key".to_string(), "api-1".to_string())],
                document.as_bytes().to_vec(),
                Duration::from_secs(5),
            )
            .await
            .ok()
        })
        .await;
        assert_eq!(
            crate::headers::find(&headers, "Nats-Service-Error-Code"),
            None
        );
        let created: Value = serde_json::from_slice(&body).expect("a document");
        let id = created["data"]["id"].clone();
        let (headers, body) = crate::connect::request(
            &other,
            format!("calls.api.get.{id}"),
            Vec::new(),
            Vec::new(),
            Duration::from_secs(5),
        )
        .await
        .expect("a reply");
        assert_eq!(crate::headers::find(&headers, "ETag"), Some("1"));
        let fetched: Value = serde_json::from_slice(&body).expect("a document");
        assert_eq!(fetched["data"]["attributes"]["direction"], "inbound");

        // A producer's command over JetStream is applied and acked.
        let mut command_headers = async_nats::HeaderMap::new();
        command_headers.insert("Nats-Msg-Id", "producer-1");
        eventually("the command stream", || async {
            js.get_stream("CALL_COMMANDS").await.ok()
        })
        .await;
        js.publish_with_headers(
            "calls.commands.create",
            command_headers,
            r#"{"data":{"type":"call","attributes":{"direction":"outbound","state":"ringing"}}}"#
                .into(),
        )
        .await
        .expect("sent")
        .await
        .expect("stored");
        let events = eventually("the producer's event", || async {
            let events = stream_messages(&js, "CALL_EVENTS").await;
            (events.len() == 2).then_some(events)
        })
        .await;
        assert_eq!(events[1].2["idempotencyKey"], "producer-1");
        assert_eq!(
            events[1].2["data"]["attributes"]["state"], "ringing",
            "{:#}",
            events[1].2
        );
        eventually("the ack", || commands_settled(&js)).await;

        // Commands that can never succeed land in CALL_REJECTED, and are terminated.
        for (subject, payload) in [
            ("calls.commands.update.424242", document),
            ("calls.commands.create", "{not json"),
            ("calls.commands.frobnicate", document),
        ] {
            js.publish(subject, payload.into())
                .await
                .expect("sent")
                .await
                .expect("stored");
        }
        let rejected = eventually("3 rejections", || async {
            let rejected = stream_messages(&js, "CALL_REJECTED").await;
            (rejected.len() == 3).then_some(rejected)
        })
        .await;
        // Commands run concurrently, so the rejections come in any order.
        let find = |subject: &str| {
            rejected
                .iter()
                .position(|(s, _, _)| s == subject)
                .unwrap_or_else(|| panic!("{subject} rejected: {rejected:#?}"))
        };
        let not_found = find("calls.rejected.update.424242");
        assert_eq!(rejected[not_found].2["errors"][0]["id"], "resourceNotFound");
        assert_eq!(
            rejected[not_found].2["command"]["payload"]["data"]["type"],
            "call"
        );
        let bad_json = find("calls.rejected.create");
        assert_eq!(rejected[bad_json].2["command"]["payload"], "{not json");
        find("calls.rejected.frobnicate");
        let stored = js
            .get_stream("CALL_REJECTED")
            .await
            .expect("stream")
            .get_raw_message(not_found as u64 + 1)
            .await
            .expect("message");
        assert_eq!(
            stored
                .headers
                .get("Call-Ledger-Error-Code")
                .map(|v| v.as_str()),
            Some("404")
        );

        // Terminated, not left for redelivery.
        eventually("the terminations", || commands_settled(&js)).await;

        gateway.stop().await;
    })
    .await
    .expect("the test finishes in time");
}

/// `Some` when the command consumer has nothing pending and nothing unacked.
async fn commands_settled(js: &jetstream::Context) -> Option<()> {
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_stream("CALL_COMMANDS")
        .await
        .ok()?
        .get_consumer("call-ledger")
        .await
        .ok()?;
    let info = consumer.info().await.ok()?;
    (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_errors_and_replies_carry_bodies() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let nats = Nats::start();
        let data = tempfile::tempdir().expect("a data directory");
        let log = EventLog::open(&data.path().join("log"), LogOptions::durable()).expect("log");
        let client = crate::connect(options(nats.url())).await.expect("client");
        let gateway = Running::start(client, &log, data.path(), config(data.path()));
        let requester = async_nats::connect(nats.url()).await.expect("requester");

        let (headers, body) = eventually("the service", || async {
            crate::connect::request(
                &requester,
                "calls.api.get.999999".to_string(),
                Vec::new(),
                Vec::new(),
                Duration::from_secs(5),
            )
            .await
            .ok()
        })
        .await;
        let code = crate::headers::find(&headers, "Nats-Service-Error-Code").map(str::to_string);
        let body: Value = serde_json::from_slice(&body).expect("a JSON:API body");
        assert!(code.is_some(), "an error reply: {headers:?}");
        assert!(body["errors"][0]["id"].is_string(), "{body}");

        let info = requester
            .request("$SRV.INFO.call-ledger", "".into())
            .await
            .expect("$SRV.INFO");
        let info: Value = serde_json::from_slice(&info.payload).expect("info JSON");
        let mut subjects: Vec<&str> = info["endpoints"]
            .as_array()
            .map(|endpoints| {
                endpoints
                    .iter()
                    .filter_map(|e| e["subject"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        subjects.sort_unstable();
        assert_eq!(
            subjects,
            [
                "calls.api.backup",
                "calls.api.changes",
                "calls.api.create",
                "calls.api.delete.*",
                "calls.api.get.*",
                "calls.api.list",
                "calls.api.update.*"
            ]
        );
        for endpoint in info["endpoints"].as_array().into_iter().flatten() {
            assert_eq!(endpoint["queue_group"], "call-ledger");
        }

        let stats = requester
            .request("$SRV.STATS.call-ledger", "".into())
            .await
            .expect("$SRV.STATS");
        let stats: Value = serde_json::from_slice(&stats.payload).expect("stats JSON");
        let endpoint = |name: &str| {
            stats["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["name"] == name)
                .cloned()
                .unwrap_or(Value::Null)
        };
        let get = endpoint("get");
        assert_eq!(get["num_requests"], 1, "{stats}");
        assert_eq!(get["num_errors"], 1, "{stats}");
        // No live call was got: nothing kept, nothing missed.
        assert_eq!(
            get["data"]["renderedGets"],
            serde_json::json!({"hits": 0, "misses": 0, "entries": 0, "bytes": 0,
                "budgetBytes": call_api::DEFAULT_RENDERED_GETS_BYTES}),
            "{stats}"
        );
        assert!(
            get["last_error"]
                .as_str()
                .is_some_and(|e| code.is_some_and(|code| e.starts_with(&code))),
            "{stats}"
        );
        // Storage idle: neither the log's writer nor the catch-up is busy.
        assert_eq!(
            endpoint("create")["data"]["storage"],
            serde_json::json!({"logWriterBusyMs": null, "catchUpBusyMs": null}),
            "{stats}"
        );

        gateway.stop().await;
        // After the drain nobody answers any more.
        let after = crate::connect::request(
            &requester,
            "calls.api.list".to_string(),
            Vec::new(),
            Vec::new(),
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(
            after.err().map(|e| e.kind()),
            Some(crate::GatewayErrorKind::NoResponders)
        );
    })
    .await
    .expect("the test finishes in time");
}

/// The outbox relies on JetStream checking the duplicate window before the expected last
/// sequence: a re-published event is then a duplicate, not an error. Both orders keep the
/// outbox correct, but the other costs a retry round per duplicate; this pins which one the
/// server in use has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_with_an_outdated_expected_sequence_is_a_duplicate() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let nats = Nats::start();
        let client = async_nats::connect(nats.url()).await.expect("client");
        let js = jetstream::new(client);
        js.get_or_create_stream(jetstream::stream::Config {
            name: "DEDUP".to_string(),
            subjects: vec!["dedup.>".to_string()],
            ..Default::default()
        })
        .await
        .expect("stream");
        for (id, expected) in [("a", 0), ("b", 1)] {
            let ack = js
                .send_publish(
                    "dedup.x",
                    PublishMessage::build()
                        .payload(id.into())
                        .message_id(id)
                        .expected_last_sequence(expected),
                )
                .await
                .expect("sent")
                .await
                .expect("stored");
            assert!(!ack.duplicate);
        }
        let again = js
            .send_publish(
                "dedup.x",
                PublishMessage::build()
                    .payload("a".into())
                    .message_id("a")
                    .expected_last_sequence(0),
            )
            .await
            .expect("sent")
            .await
            .expect("a duplicate, not an error");
        assert!(again.duplicate);
        assert_eq!(again.sequence, 1);
    })
    .await
    .expect("the test finishes in time");
}

/// An open API (no tokens) over the log, with its projection in `data_dir`.
fn test_api(log: &EventLog, data_dir: &Path) -> call_api::Api {
    let projection = call_projections::Projection::open(&data_dir.join("projection"), log.clone())
        .expect("projection");
    call_api::Api::new(
        CommandService::new(log.clone()),
        projection,
        call_api::ApiConfig::open(1024 * 1024),
        || Timestamp::from_millis(1_750_000_000_000),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bound_requests_get_503_at_once() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let nats = Nats::start();
        let data = tempfile::tempdir().expect("a data directory");
        let log = EventLog::open(&data.path().join("log"), LogOptions::durable()).expect("log");
        let client = crate::connect(options(nats.url())).await.expect("client");
        let gateway = Running::start(
            client,
            &log,
            data.path(),
            GatewayConfig {
                max_in_flight: 1,
                ..config(data.path())
            },
        );
        let requester = async_nats::connect(nats.url()).await.expect("requester");
        eventually("the service", || async {
            crate::connect::request(
                &requester,
                "calls.api.list".to_string(),
                Vec::new(),
                Vec::new(),
                Duration::from_secs(5),
            )
            .await
            .ok()
        })
        .await;

        let document = r#"{"data":{"type":"call","attributes":{"direction":"inbound"}}}"#;
        let requests = (0..64).map(|_| {
            crate::connect::request(
                &requester,
                "calls.api.create".to_string(),
                Vec::new(),
                document.as_bytes().to_vec(),
                Duration::from_secs(10),
            )
        });
        let replies = futures::future::join_all(requests).await;
        let mut codes: Vec<String> = replies
            .into_iter()
            .map(|reply| match reply {
                Ok((headers, _)) => crate::headers::find(&headers, "Nats-Service-Error-Code")
                    .unwrap_or("ok")
                    .to_string(),
                Err(error) => error.to_string(),
            })
            .collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes, ["503", "ok"], "every request answered, some refused");

        gateway.stop().await;
    })
    .await
    .expect("the test finishes in time");
}

/// The writer lock: a second instance is refused and told who holds it; the holder renews it;
/// the same data directory takes it back at once; a released lock, and one whose holder died,
/// are free again (the latter once its time to live has passed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_lock_admits_one_instance_per_prefix() {
    use crate::lease::{Holder, WriterLock};
    use crate::GatewayErrorKind;
    tokio::time::timeout(TEST_TIMEOUT, async {
        let nats = Nats::start();
        let client = crate::connect(options(nats.url())).await.expect("client");
        let js = jetstream::new(client.clone());
        let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = Holder::of_this_process(first_dir.path()).expect("an instance id");
        let second = Holder::of_this_process(second_dir.path()).expect("an instance id");
        assert_ne!(first.instance, second.instance);
        // The id is kept: the same directory is the same instance.
        let again = Holder::of_this_process(first_dir.path()).expect("an instance id");
        assert_eq!(again.instance, first.instance);

        let ttl = Duration::from_secs(2);
        let lock = WriterLock::acquire(&js, "CALL_LOCK", first.clone(), ttl)
            .await
            .expect("the first instance takes the lock");
        let refused = WriterLock::acquire(&js, "CALL_LOCK", second.clone(), ttl)
            .await
            .err()
            .expect("a second instance is refused");
        assert_eq!(refused.kind(), GatewayErrorKind::Locked);
        let message = refused.to_string();
        assert!(
            message.contains(&first.instance)
                && message.contains(&first_dir.path().display().to_string()),
            "names the holder: {message}"
        );
        // Another prefix's bucket is another lock.
        let staging = WriterLock::acquire(&js, "STAGING_CALL_LOCK", second.clone(), ttl)
            .await
            .expect("another prefix is free");

        // Held past its time to live by renewals, the lock still refuses others.
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let holding = tokio::spawn(lock.hold(stop_rx));
        tokio::time::sleep(ttl * 2).await;
        let still = WriterLock::acquire(&js, "CALL_LOCK", second.clone(), ttl).await;
        assert_eq!(
            still.err().map(|e| e.kind()),
            Some(GatewayErrorKind::Locked)
        );
        // The same data directory, restarted (a new process: same id), takes it back at once.
        let restarted = WriterLock::acquire(&js, "CALL_LOCK", again, ttl)
            .await
            .expect("the same instance takes its lock back");
        drop(restarted);
        // Released, it is free for anyone.
        stop.send(true).expect("the holder listens");
        let _ = holding.await;
        let taken = WriterLock::acquire(&js, "CALL_LOCK", second.clone(), ttl)
            .await
            .expect("a released lock is free");
        // A holder that died (never renews, never releases) frees it after its time to live.
        drop(taken);
        drop(staging);
        let third_dir = tempfile::tempdir().unwrap();
        let third = Holder::of_this_process(third_dir.path()).expect("an instance id");
        let started = Instant::now();
        eventually("the dead holder's lock to expire", || {
            let (js, third) = (js.clone(), third.clone());
            async move { WriterLock::acquire(&js, "CALL_LOCK", third, ttl).await.ok() }
        })
        .await;
        assert!(
            started.elapsed() >= ttl / 2,
            "expired only after about its ttl"
        );
    })
    .await
    .expect("the test finishes in time");
}

/// Two instances' limiters sharing their counts through one KV bucket hold one budget: what one
/// admitted is taken from what the other may admit, and counts made while the other shared
/// are never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_counts_shared_through_kv_hold_one_budget_across_instances() {
    use call_api::rate::{RateLimit, RateLimiter};
    tokio::time::timeout(TEST_TIMEOUT, async {
        let nats = Nats::start();
        let client = async_nats::connect(nats.url()).await.expect("client");
        let js = jetstream::new(client);
        let limit = RateLimit {
            requests: 10,
            window_secs: 3600,
        };
        let (one, two) = (RateLimiter::new(limit), RateLimiter::new(limit));
        let store = crate::rate_share::open(&js, "TEST_RATE", &one)
            .await
            .expect("the bucket");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        for _ in 0..4 {
            assert!(one.take("api:crm", now).admitted);
        }
        assert!(two.take("api:crm", now).admitted);
        // Both share concurrently: the compare-and-set keeps both counts.
        tokio::join!(
            crate::rate_share::share(&store, &one),
            crate::rate_share::share(&store, &two)
        );
        crate::rate_share::share(&store, &one).await;
        crate::rate_share::share(&store, &two).await;
        // 5 of 10 are used, as both instances now know; each learns of the other's next
        // request at the next round only.
        assert_eq!(one.take("api:crm", now).remaining, 4);
        assert_eq!(two.take("api:crm", now).remaining, 4);
        crate::rate_share::share(&store, &one).await;
        crate::rate_share::share(&store, &two).await;
        crate::rate_share::share(&store, &one).await;
        let admitted = (0..10)
            .filter(|_| one.take("api:crm", now).admitted)
            .count();
        assert_eq!(admitted, 3, "7 of 10 were used, by both instances");
        assert!(!one.take("api:crm", now).admitted);
        // Another caller is untouched.
        assert_eq!(two.take("api:other", now).remaining, 9);
    })
    .await
    .expect("the test finishes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_writes_the_index_snapshot_while_serving() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let nats = Nats::start();
        let data = tempfile::tempdir().expect("a data directory");
        let log = EventLog::open(&data.path().join("log"), LogOptions::durable()).expect("log");
        let commands = CommandService::new(log.clone());
        let client = crate::connect(options(nats.url())).await.expect("client");
        let config = GatewayConfig {
            index_snapshot_every: Duration::from_millis(50),
            ..config(data.path())
        };
        let gateway = Running::start(client, &log, data.path(), config);
        // Opening a projection writes none; only the follower can, while the gateway runs.
        let file = call_projections::Projection::snapshot_file(&data.path().join("projection"));
        let mut n = 0;
        eventually("an index snapshot written while serving", || {
            n += 1;
            let (commands, file) = (commands.clone(), file.clone());
            async move {
                tokio::task::spawn_blocking(move || create_call(&commands, n))
                    .await
                    .expect("a create");
                file.exists().then_some(())
            }
        })
        .await;
        gateway.stop().await;
    })
    .await
    .expect("the test finishes in time");
}
