//! End-to-end tests of the NATS gateway: a plain async-nats client, sending headers and payloads
//! exactly as docs/api.md describes them, against a real `nats-server -js` on a free port.
//!
//! Most tests run the gateway in-process ([`Gateway::start`]): the event log, the command
//! service, the projection and the API in a temporary directory, and `call_gateway::run` on the
//! test's runtime with a oneshot as its shutdown. Tests that kill or signal the service run
//! `callledger serve` as a child process (`process`).
//!
//! The areas are one module each: every endpoint and error code, and service discovery
//! (`endpoints`); filters, sort, paging, sparse fieldsets and the meta flags (`queries`);
//! idempotency keys, `If-Match`, concurrent writers and the concurrency bound (`writes`);
//! producers' commands, `CALL_REJECTED` and `CALL_EVENTS` across a NATS restart (`jetstream`);
//! redelivery after SIGKILL and the drain on SIGTERM of the binary (`process`); a full disk and a
//! disk that stops answering under the binary (`storage`). This file holds
//! what they share: the in-process gateway, a client that speaks the contract, the tokens, and
//! bounded waiting.

mod docs;
mod endpoints;
mod jetstream;
mod limits;
mod process;
mod queries;
mod storage;
mod writes;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use call_api::{Api, ApiConfig, TokenStore};
use call_commands::CommandService;
use call_gateway::{GatewayConfig, GatewayError, NatsOptions};
use call_ledger_tests::NatsServer;
use call_model::Timestamp;
use call_projections::Projection;
use event_log::{EventLog, LogOptions};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every test gives up after this long.
pub(crate) const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one request may wait for its reply.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The media type of every document.
pub(crate) const JSON_API: &str = "application/vnd.api+json";

/// A token with `calls.read`.
pub(crate) const READER: &str = "e2e-reader-token";
/// A token with `calls.read` and `calls.write`.
pub(crate) const WRITER: &str = "e2e-writer-token";
/// A token with `calls.all`.
pub(crate) const ADMIN: &str = "e2e-admin-token";
/// A token with `calls.all` and `calls.voice` (the telephony system).
pub(crate) const VOICE: &str = "e2e-voice-token";
/// A token with `calls.delete` only.
pub(crate) const DELETE_ONLY: &str = "e2e-delete-only-token";

/// The tokens file for the tokens above: the hex SHA-256 of each (`printf %s TOKEN | sha256sum`).
pub(crate) const TOKENS_TOML: &str = r#"
[[token]]
name = "reader"
sha256 = "2d322c4212048209849d8ae06f985be7df342a4af41b95b46a2ef5c4f54f66af"
scopes = ["calls.read"]

[[token]]
name = "writer"
sha256 = "4abf54f5f8d861ae8297b9c53e0de9e942b54af2266f8e5b272559c303c00865"
scopes = ["calls.read", "calls.write"]

[[token]]
name = "admin"
sha256 = "20357603bbd1490b9215bd7cfff9421bccf4d9131bd54e4ac53ce12caf5fbc32"
scopes = ["calls.all"]

[[token]]
name = "telephony"
sha256 = "8a094617323fb3a93b920afdc7d01e8fc097524e7d70ac2d1cc3e35b83034fbf"
scopes = ["calls.all", "calls.voice"]

[[token]]
name = "cleaner"
sha256 = "58db07b9a8d7585991b75b6fda08c28a7aab13a160422b66e45507646b39f568"
scopes = ["calls.delete"]
"#;

/// Runs `future` and fails the test if it takes longer than `limit`.
pub(crate) async fn bounded<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// Polls `check` every 20 ms until it returns `Some`, failing the test after `limit`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the ack of a message published to JetStream with its `Nats-Msg-Id` in `headers`,
/// publishing it again while it is refused, as a producer does: under load a single nats-server
/// now and then answers a publish with no responders (`StreamNotFound`) although the stream is
/// there. The message id makes a publish that was stored after all count once.
pub(crate) async fn stored_with_retries(
    js: &async_nats::jetstream::Context,
    ack: async_nats::jetstream::context::PublishAckFuture,
    subject: &str,
    headers: &async_nats::HeaderMap,
    payload: &str,
) {
    if ack.await.is_ok() {
        return;
    }
    eventually(
        &format!("{subject} to store the message"),
        Duration::from_secs(30),
        || async {
            js.publish_with_headers(
                subject.to_owned(),
                headers.clone(),
                payload.to_owned().into(),
            )
            .await
            .ok()?
            .await
            .ok()
        },
    )
    .await;
}

/// Runs blocking test scaffolding (starting or stopping a server, a child process) without
/// stalling the runtime's other tasks.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The clock of in-process gateways: the wall clock, but strictly increasing by at least a
/// millisecond per reading, so that calls created one after the other never share a
/// `createdAt` and sorting by time is deterministic.
pub(crate) fn clock() -> Timestamp {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = chrono::Utc::now().timestamp_millis();
    let previous = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last + 1))
        })
        .expect("the update always succeeds");
    Timestamp::from_millis(now.max(previous + 1))
}

/// How an in-process gateway is set up.
#[derive(Clone, Debug)]
pub(crate) struct Setup {
    tokens: bool,
    max_in_flight: usize,
    max_payload: Option<usize>,
    rate_limit: Option<call_api::rate::RateLimit>,
}

impl Setup {
    /// No tokens file (the open API), 256 in flight, the server's max payload.
    pub(crate) fn open() -> Setup {
        Setup {
            tokens: false,
            max_in_flight: 256,
            max_payload: None,
            rate_limit: None,
        }
    }

    /// Every caller limited to `limit` (none by default).
    pub(crate) fn rate_limit(mut self, limit: call_api::rate::RateLimit) -> Setup {
        self.rate_limit = Some(limit);
        self
    }

    /// With [`TOKENS_TOML`] as the tokens file.
    pub(crate) fn with_tokens(mut self) -> Setup {
        self.tokens = true;
        self
    }

    /// Requests (and separately commands) handled at once.
    pub(crate) fn max_in_flight(mut self, max_in_flight: usize) -> Setup {
        self.max_in_flight = max_in_flight;
        self
    }

    /// The max payload the API assumes, instead of the server's.
    pub(crate) fn max_payload(mut self, max_payload: usize) -> Setup {
        self.max_payload = Some(max_payload);
        self
    }
}

/// A nats-server and the gateway running in-process on the test's runtime.
pub(crate) struct Gateway {
    pub(crate) nats: NatsServer,
    pub(crate) log: EventLog,
    /// The ledger's command service, for writes that bypass NATS (the offline path).
    pub(crate) commands: CommandService,
    client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), GatewayError>>>,
    _data: TempDir,
}

impl Gateway {
    /// Starts a nats-server and the gateway, and waits until the gateway answers.
    pub(crate) async fn start(setup: Setup) -> Gateway {
        let nats = blocking(NatsServer::start);
        let data = tempfile::Builder::new()
            .prefix("call-gateway-e2e-")
            .tempdir()
            .expect("a data directory");
        let (log, commands, projection) = match test_log_engine() {
            TestLog::Sled => open_ledger(data.path()),
            TestLog::JetStream => {
                let (path, url) = (data.path().to_path_buf(), nats.url());
                blocking(move || open_ledger_on_jetstream(&path, &url))
            }
        };
        let replicated = test_log_engine() == TestLog::JetStream;
        let service_client = call_gateway::connect(NatsOptions {
            url: nats.url(),
            creds_file: None,
            user: None,
            password: None,
            token: None,
            name: "call-ledger-e2e".to_string(),
        })
        .await
        .expect("the gateway's client connects");
        let max_payload = setup
            .max_payload
            .unwrap_or_else(|| service_client.server_info().max_payload);
        let tokens = setup
            .tokens
            .then(|| TokenStore::from_toml(TOKENS_TOML).expect("the test tokens parse"));
        let api = Api::new(
            commands.clone(),
            projection,
            ApiConfig {
                tokens,
                max_payload,
                self_prefix: "calls".to_string(),
                sync_reads: replicated,
                rate_limiter: setup
                    .rate_limit
                    .map(|limit| std::sync::Arc::new(call_api::rate::RateLimiter::new(limit))),
                rendered_gets_bytes: call_api::DEFAULT_RENDERED_GETS_BYTES,
            },
            clock,
        );
        let config = GatewayConfig {
            subject_prefix: "calls".to_string(),
            max_in_flight: setup.max_in_flight,
            duplicate_window: Duration::from_secs(120),
            data_dir: data.path().to_path_buf(),
            queue_group: "call-ledger".to_string(),
            lock_ttl: Duration::from_secs(10),
            replicated_log: replicated,
            index_snapshot_every: call_gateway::DEFAULT_INDEX_SNAPSHOT_EVERY,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(call_gateway::run(
            service_client,
            api,
            log.clone(),
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        let client = async_nats::connect(nats.url())
            .await
            .expect("the test's client connects");
        let gateway = Gateway {
            nats,
            log,
            commands,
            client,
            stop: Some(stop),
            task: Some(task),
            _data: data,
        };
        gateway.wait_until_serving().await;
        gateway
    }

    /// Waits until `calls.api.list` is answered (by a reply of any status).
    pub(crate) async fn wait_until_serving(&self) {
        let caller = Caller::new(self.client.clone(), Some(READER));
        eventually("the gateway to answer", Duration::from_secs(30), || {
            let caller = caller.clone();
            async move { caller.try_request("calls.api.list", &[], "").await.ok() }
        })
        .await;
    }

    /// The test's own NATS client (not the gateway's).
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// A caller without a token (the open API, or a 401 with tokens).
    pub(crate) fn anonymous(&self) -> Caller {
        Caller::new(self.client.clone(), None)
    }

    /// A caller presenting `token`.
    pub(crate) fn caller(&self, token: &str) -> Caller {
        Caller::new(self.client.clone(), Some(token))
    }

    /// Stops the gateway through its shutdown future and checks that it drained cleanly.
    pub(crate) async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = bounded("the gateway's drain", Duration::from_secs(30), task).await;
            result
                .expect("the gateway task does not panic")
                .expect("the gateway drains without an error");
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Which engine of the log the in-process gateways run on: the embedded one, or, with
/// `CALL_LEDGER_TEST_LOG=jetstream` (the contract suite's second pass in `make test`), the
/// JetStream engine on the test's own server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TestLog {
    Sled,
    JetStream,
}

pub(crate) fn test_log_engine() -> TestLog {
    match std::env::var("CALL_LEDGER_TEST_LOG").as_deref() {
        Ok("jetstream") => TestLog::JetStream,
        _ => TestLog::Sled,
    }
}

/// The log of record on the JetStream server at `url` (R1), its replica in `<data>/replica`
/// and `<data>/projection` over it, as the binary keeps them.
pub(crate) fn open_ledger_on_jetstream(
    data: &Path,
    url: &str,
) -> (EventLog, CommandService, Projection) {
    let options = event_log_jetstream::JetStreamOptions {
        stream: "CALL_LOG".into(),
        subject_prefix: "calls.log".into(),
        replicas: 1,
        timeout: Duration::from_secs(10),
        replica_dir: Some(data.join("replica")),
    };
    let log = event_log_jetstream::JetStreamLog::open(url, options)
        .expect("the JetStream log opens")
        .into_event_log();
    let projection =
        Projection::open(&data.join("projection"), log.clone()).expect("the projection opens");
    (log.clone(), CommandService::new(log), projection)
}

/// Opens (creating) `<data>/log` durably, and `<data>/projection` over it, as the binary does.
pub(crate) fn open_ledger(data: &Path) -> (EventLog, CommandService, Projection) {
    try_open_ledger(data).unwrap_or_else(|error| panic!("{error}"))
}

fn try_open_ledger(data: &Path) -> Result<(EventLog, CommandService, Projection), String> {
    let log = EventLog::open(&data.join("log"), LogOptions::durable())
        .map_err(|e| format!("open the event log in {}: {e}", data.display()))?;
    let projection = Projection::open(&data.join("projection"), log.clone())
        .map_err(|e| format!("open the projection in {}: {e}", data.display()))?;
    Ok((log.clone(), CommandService::new(log), projection))
}

/// [`open_ledger`] for a directory another process has just closed: sled may hold its file lock
/// for a moment after the process exits, so opening is retried for a few seconds.
pub(crate) fn open_ledger_patiently(data: &Path) -> (EventLog, CommandService, Projection) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match try_open_ledger(data) {
            Ok(ledger) => return ledger,
            Err(error) if Instant::now() > deadline => panic!("{error}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A reply as the client sees it: headers and payload.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) payload: Bytes,
}

impl Reply {
    fn from_message(message: async_nats::Message) -> Reply {
        let mut headers = Vec::new();
        if let Some(map) = &message.headers {
            for (name, values) in map.iter() {
                for value in values {
                    headers.push((name.to_string(), value.as_str().to_string()));
                }
            }
        }
        Reply {
            headers,
            payload: message.payload,
        }
    }

    /// The first value of the header `name`, compared without regard to case.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The error code, or 0 for a success (NATS carries no success status).
    pub(crate) fn error_code(&self) -> u16 {
        match self.header("Nats-Service-Error-Code") {
            Some(code) => code
                .parse()
                .unwrap_or_else(|_| panic!("a numeric error code, not {code:?}")),
            None => 0,
        }
    }

    /// Whether this is a success reply (no error headers).
    pub(crate) fn is_success(&self) -> bool {
        self.header("Nats-Service-Error-Code").is_none()
            && self.header("Nats-Service-Error").is_none()
    }

    /// The payload as JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "the reply is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.payload)
            )
        })
    }

    /// The `ETag` as a version.
    pub(crate) fn etag(&self) -> u64 {
        let etag = self
            .header("ETag")
            .unwrap_or_else(|| panic!("no ETag on {self}"));
        etag.parse()
            .unwrap_or_else(|_| panic!("a numeric ETag, not {etag:?}"))
    }

    /// Asserts a success and returns `data` of the document.
    pub(crate) fn data(&self) -> Value {
        assert!(self.is_success(), "expected a success, got {self}");
        assert_eq!(self.header("Content-Type"), Some(JSON_API), "{self}");
        self.json()["data"].clone()
    }

    /// The ids of `data` (a collection), in order.
    pub(crate) fn ids(&self) -> Vec<u64> {
        self.data()
            .as_array()
            .unwrap_or_else(|| panic!("a collection, not {self}"))
            .iter()
            .map(|row| row["id"].as_u64().expect("integer ids"))
            .collect()
    }

    /// Asserts an error reply by the contract (both error headers, the content type, and a
    /// JSON:API error body whose every object has an id, the title and a detail) and returns
    /// the error objects.
    pub(crate) fn assert_error(&self, code: u16, title: &str) -> Vec<Value> {
        assert_eq!(
            self.header("Nats-Service-Error-Code"),
            Some(code.to_string().as_str()),
            "expected error {code}, got {self}"
        );
        assert_eq!(self.header("Nats-Service-Error"), Some(title), "{self}");
        assert_eq!(self.header("Content-Type"), Some(JSON_API), "{self}");
        // Retrying later may succeed exactly for these, and they say when: a 503 in a second,
        // a 429 when the caller's window ends.
        match code {
            503 => assert_eq!(self.header("Retry-After"), Some("1"), "{self}"),
            429 => assert!(
                self.header("Retry-After")
                    .and_then(|secs| secs.parse::<u64>().ok())
                    .is_some_and(|secs| secs >= 1),
                "{self}"
            ),
            _ => assert_eq!(self.header("Retry-After"), None, "{self}"),
        }
        let body = self.json();
        let errors = body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("a JSON:API error document, not {self}"))
            .clone();
        assert!(!errors.is_empty(), "{self}");
        for error in &errors {
            assert!(error["id"].is_string(), "an error id in {self}");
            assert!(error["title"].is_string(), "an error title in {self}");
            assert!(error["detail"].is_string(), "an error detail in {self}");
        }
        errors
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} {}",
            self.headers,
            String::from_utf8_lossy(&self.payload)
        )
    }
}

/// A client of the API: a NATS client and an optional bearer token.
#[derive(Clone)]
pub(crate) struct Caller {
    client: Client,
    token: Option<String>,
}

impl Caller {
    pub(crate) fn new(client: Client, token: Option<&str>) -> Caller {
        Caller {
            client,
            token: token.map(str::to_string),
        }
    }

    /// Sends a request and returns the reply, or the transport's error (no responders, a
    /// timeout).
    pub(crate) async fn try_request(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: impl Into<Bytes>,
    ) -> Result<Reply, async_nats::RequestError> {
        self.try_request_within(subject, headers, payload, REQUEST_TIMEOUT)
            .await
    }

    /// [`Caller::try_request`] with its own timeout.
    pub(crate) async fn try_request_within(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Reply, async_nats::RequestError> {
        let mut map = HeaderMap::new();
        if let Some(token) = &self.token {
            map.insert("Authorization", format!("Bearer {token}").as_str());
        }
        for (name, value) in headers {
            map.append(*name, *value);
        }
        let mut request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(timeout));
        if !map.is_empty() {
            request = request.headers(map);
        }
        let message = self
            .client
            .send_request(subject.to_string(), request)
            .await?;
        Ok(Reply::from_message(message))
    }

    /// Sends a request; a transport failure fails the test.
    pub(crate) async fn request(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: impl Into<Bytes>,
    ) -> Reply {
        match self.try_request(subject, headers, payload).await {
            Ok(reply) => reply,
            Err(error) => panic!("request on {subject} failed: {error}"),
        }
    }

    pub(crate) async fn list(&self, query: &str) -> Reply {
        self.request("calls.api.list", &[], query.to_string()).await
    }

    pub(crate) async fn get(&self, id: u64, query: &str) -> Reply {
        self.request(&format!("calls.api.get.{id}"), &[], query.to_string())
            .await
    }

    pub(crate) async fn create(&self, headers: &[(&str, &str)], document: &Value) -> Reply {
        self.request("calls.api.create", headers, document.to_string())
            .await
    }

    pub(crate) async fn update(
        &self,
        id: u64,
        headers: &[(&str, &str)],
        document: &Value,
    ) -> Reply {
        self.request(
            &format!("calls.api.update.{id}"),
            headers,
            document.to_string(),
        )
        .await
    }

    pub(crate) async fn delete(&self, id: u64, headers: &[(&str, &str)]) -> Reply {
        self.request(&format!("calls.api.delete.{id}"), headers, "")
            .await
    }

    pub(crate) async fn changes(&self, query: &str) -> Reply {
        self.request("calls.api.changes", &[], query.to_string())
            .await
    }

    /// Creates a call with these attributes and returns its resource object.
    pub(crate) async fn create_call(&self, attributes: Value) -> Value {
        let reply = self.create(&[], &call_document(attributes)).await;
        reply.data()
    }
}

/// `{"data":{"type":"call","attributes":...}}`.
pub(crate) fn call_document(attributes: Value) -> Value {
    json!({"data": {"type": "call", "attributes": attributes}})
}

/// The id of a resource object.
pub(crate) fn id_of(resource: &Value) -> u64 {
    resource["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("an integer id in {resource}"))
}
