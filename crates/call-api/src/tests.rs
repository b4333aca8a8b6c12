//! `Api::handle` against a real ledger (an event log, the command service and the projection in
//! a temporary directory): every endpoint, every error code, and garbage.

use crate::{
    Api, ApiConfig, Attested, Operation, Outcome, Producer, Request, Response, Source, TokenStore,
};
use call_commands::CommandService;
use call_model::Timestamp;
use call_projections::Projection;
use event_log::{Durability, EventLog, LogOptions};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const NOW: &str = "2025-01-13T12:47:31.000Z";

fn now() -> Timestamp {
    Timestamp::parse(NOW).unwrap()
}

struct Ledger {
    api: Api,
    _dir: TempDir,
}

fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Tokens: `reader` (calls.read), `writer` (read, write), `admin` (calls.all), `voice`
/// (calls.all, calls.voice), `backup` (calls.admin).
fn tokens() -> TokenStore {
    let mut text = String::new();
    for (name, scopes) in [
        ("reader", r#"["calls.read"]"#),
        ("writer", r#"["calls.read", "calls.write"]"#),
        ("admin", r#"["calls.all"]"#),
        ("voice", r#"["calls.all", "calls.voice"]"#),
        ("backup", r#"["calls.admin"]"#),
    ] {
        text.push_str(&format!(
            "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = {scopes}\n",
            digest(&format!("{name}-secret"))
        ));
    }
    TokenStore::from_toml(&text).unwrap()
}

fn ledger(tokens: Option<TokenStore>, max_payload: usize) -> Ledger {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(
        &dir.path().join("log"),
        LogOptions {
            durability: Durability::Buffered,
            ..LogOptions::durable()
        },
    )
    .unwrap();
    let projection = Projection::open(&dir.path().join("projection"), log.clone()).unwrap();
    let api = Api::new(
        CommandService::new(log),
        projection,
        ApiConfig {
            tokens,
            ..ApiConfig::open(max_payload)
        },
        now,
    );
    Ledger { api, _dir: dir }
}

fn secured() -> Ledger {
    ledger(Some(tokens()), 1024 * 1024)
}

impl Ledger {
    fn send(&self, operation: Operation, headers: &[(&str, &str)], payload: &[u8]) -> Response {
        self.send_from(Source::Api, operation, headers, payload)
    }

    fn send_from(
        &self,
        source: Source,
        operation: Operation,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Response {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        self.api.handle(Request {
            operation,
            headers: &headers,
            payload,
            source,
        })
    }

    /// Sends as `token`'s owner (`<token>-secret`).
    fn as_(&self, token: &str, operation: Operation, payload: &str) -> Response {
        let bearer = format!("Bearer {token}-secret");
        self.send(operation, &[("Authorization", &bearer)], payload.as_bytes())
    }

    fn create(&self, attributes: Value) -> Value {
        let payload = json!({"data": {"type": "call", "attributes": attributes}}).to_string();
        let response = self.as_("admin", Operation::Create, &payload);
        assert_eq!(response.status, 201, "{}", text(&response));
        body(&response)
    }
}

fn text(response: &Response) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

fn body(response: &Response) -> Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|error| panic!("{error}: {}", text(response)))
}

/// Asserts an error reply: status, its title, and the first error's id; returns the first
/// error object.
fn error(response: &Response, status: u16, id: &str) -> Value {
    assert_eq!(response.status, status, "{}", text(response));
    assert!(response.error_title().is_some());
    assert_ne!(response.outcome(), Outcome::Ok);
    assert_eq!(
        response.header("content-type"),
        Some("application/vnd.api+json")
    );
    let document = body(response);
    let first = document["errors"][0].clone();
    assert_eq!(first["id"], id, "{document}");
    assert!(first["title"].is_string() && first["detail"].is_string());
    first
}

fn get(id: &str) -> Operation {
    Operation::Get(id.into())
}

#[test]
fn create_get_update_list_changes_delete_round_trip() {
    let ledger = secured();
    let payload = json!({"data": {"type": "call", "attributes": {
        "direction": "outbound", "to": "+15550100", "tags": ["Interested"],
        "dialedAt": "2025-01-13T13:00:00+01:00"
    }, "relationships": {"prospect": {"data": {"type": "prospect", "id": 5}}}}})
    .to_string();
    let created = ledger.as_("writer", Operation::Create, &payload);
    assert_eq!(created.status, 201, "{}", text(&created));
    assert_eq!(
        created.header("Content-Type"),
        Some("application/vnd.api+json")
    );
    assert_eq!(created.header("ETag"), Some("1"));
    let document = body(&created);
    let resource = &document["data"];
    let id = resource["id"].as_u64().unwrap();
    assert_eq!(resource["type"], "call");
    assert_eq!(resource["attributes"].as_object().unwrap().len(), 22);
    assert_eq!(resource["relationships"].as_object().unwrap().len(), 15);
    assert_eq!(resource["attributes"]["direction"], "outbound");
    assert_eq!(
        resource["attributes"]["dialedAt"],
        "2025-01-13T12:00:00.000Z"
    );
    assert_eq!(resource["attributes"]["createdAt"], NOW);
    assert_eq!(resource["attributes"]["note"], Value::Null);
    assert_eq!(
        resource["relationships"]["prospect"]["data"],
        json!({"type": "prospect", "id": 5})
    );
    assert_eq!(resource["relationships"]["batches"]["data"], json!([]));
    assert_eq!(resource["links"]["self"], format!("calls.api.get.{id}"));
    assert!(resource.get("meta").is_none());

    let fetched = ledger.as_("reader", get(&id.to_string()), "");
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.header("ETag"), Some("1"));
    assert_eq!(body(&fetched), document);

    let update = json!({"data": {"type": "call", "id": id.to_string(), "attributes": {"note": "left a message", "to": null}}}).to_string();
    let updated = ledger.as_("writer", Operation::Update(id.to_string()), &update);
    assert_eq!(updated.status, 200, "{}", text(&updated));
    assert_eq!(updated.header("ETag"), Some("2"));
    let after = body(&updated);
    assert_eq!(after["data"]["attributes"]["note"], "left a message");
    assert_eq!(after["data"]["attributes"]["to"], Value::Null);
    // Read-your-writes: the reply was sent after the projection caught up.
    assert_eq!(body(&ledger.as_("reader", get(&id.to_string()), "")), after);

    let listed = ledger.as_(
        "reader",
        Operation::List,
        "filter[prospect][id]=5&count=true",
    );
    assert_eq!(listed.status, 200);
    assert_eq!(listed.header("ETag"), None);
    let listed = body(&listed);
    assert_eq!(listed["data"], json!([after["data"]]));
    assert_eq!(listed["meta"], json!({"count": 1}));
    assert_eq!(
        listed["links"],
        json!({"first": "filter[prospect][id]=5&count=true"})
    );

    let changes = body(&ledger.as_("reader", Operation::Changes, "after=0&limit=10"));
    assert_eq!(changes["data"], json!([after["data"]]));
    assert_eq!(changes["meta"]["deleted"], json!([]));
    assert_eq!(changes["meta"]["position"], 2);
    assert_eq!(changes["links"]["next"], "after=2&limit=10");

    let deleted = ledger.as_("admin", Operation::Delete(id.to_string()), "");
    assert_eq!(deleted.status, 204);
    assert!(deleted.body.is_empty());
    let missing = ledger.as_("reader", get(&id.to_string()), "");
    let first = error(&missing, 404, "resourceNotFound");
    assert_eq!(
        first["detail"],
        format!("Could not find 'call' with ID '{id}'.")
    );
    error(
        &ledger.as_("writer", Operation::Update(id.to_string()), &update),
        404,
        "resourceNotFound",
    );
    error(
        &ledger.as_("admin", Operation::Delete(id.to_string()), ""),
        404,
        "resourceNotFound",
    );
    let changes = body(&ledger.as_("reader", Operation::Changes, "after=2"));
    assert_eq!(changes["data"], json!([]));
    assert_eq!(
        changes["meta"]["deleted"],
        json!([{"id": id, "deletedAt": NOW}])
    );
    assert_eq!(changes["links"]["next"], "after=3&limit=100");
    // The head itself is a valid place to ask from; past it is a 400 naming `after` and the head.
    let at_head = ledger.as_("reader", Operation::Changes, "after=3");
    assert_eq!(at_head.status, 200, "{}", text(&at_head));
    let past = ledger.as_("reader", Operation::Changes, "after=1000");
    let first = error(&past, 400, "validationError");
    assert_eq!(first["source"]["parameter"], "after");
    assert!(
        first["detail"]
            .as_str()
            .unwrap()
            .contains("past the head of the log, 3"),
        "{first}"
    );
    let empty = body(&ledger.as_("reader", Operation::List, ""));
    assert_eq!(empty, json!({"data": []}));
}

#[test]
fn authorization_401_and_403() {
    let ledger = secured();
    let missing = ledger.send(Operation::List, &[], b"");
    let first = error(&missing, 401, "unauthorized");
    assert_eq!(missing.error_title(), Some("Unauthorized"));
    assert!(first["detail"].as_str().unwrap().contains("Bearer"));
    error(
        &ledger.send(Operation::List, &[("Authorization", "Bearer nope")], b""),
        401,
        "unauthorized",
    );
    error(
        &ledger.send(
            Operation::List,
            &[("Authorization", "Basic reader-secret")],
            b"",
        ),
        401,
        "unauthorized",
    );
    // Header names are case-insensitive, and so is the scheme.
    let ok = ledger.send(
        Operation::List,
        &[("authorization", "bearer reader-secret")],
        b"",
    );
    assert_eq!(ok.status, 200, "{}", text(&ok));

    let denied = ledger.as_("reader", Operation::Create, "{}");
    let first = error(&denied, 403, "unauthorizedOauthScope");
    assert_eq!(denied.error_title(), Some("Unauthorized OAuth Scope"));
    assert_eq!(
        first["detail"],
        "Your authorization does not include the required scope 'calls.write'."
    );
    let first = error(
        &ledger.as_("writer", Operation::Delete("1".into()), ""),
        403,
        "unauthorizedOauthScope",
    );
    assert_eq!(
        first["detail"],
        "Your authorization does not include the required scope 'calls.delete'."
    );
    let no_read = TokenStore::from_toml(&format!(
        "[[token]]\nname = \"w\"\nsha256 = \"{}\"\nscopes = [\"calls.write\"]\n",
        digest("w")
    ))
    .unwrap();
    let write_only = ledger_with(no_read);
    let first = error(
        &write_only.send(Operation::Changes, &[("Authorization", "Bearer w")], b""),
        403,
        "unauthorizedOauthScope",
    );
    assert_eq!(
        first["detail"],
        "Your authorization does not include the required scope 'calls.read'."
    );
}

fn ledger_with(tokens: TokenStore) -> Ledger {
    ledger(Some(tokens), 1024 * 1024)
}

#[test]
fn the_voice_scope_and_producers_may_write_telephony_members() {
    let ledger = secured();
    let id = ledger.create(json!({"direction": "inbound"}))["data"]["id"]
        .as_u64()
        .unwrap()
        .to_string();
    let state = json!({"data": {"type": "call", "attributes": {"state": "completed"}}}).to_string();
    let refused = ledger.as_("admin", Operation::Update(id.clone()), &state);
    let first = error(&refused, 422, "validationError");
    assert_eq!(first["source"]["pointer"], "/data/attributes/state");
    let accepted = ledger.as_("voice", Operation::Update(id.clone()), &state);
    assert_eq!(accepted.status, 200, "{}", text(&accepted));
    assert_eq!(body(&accepted)["data"]["attributes"]["state"], "completed");

    let telephony = || {
        Source::Producer(Producer {
            name: Some(Attested {
                value: "telephony".into(),
                header: "X-Producer",
            }),
            message_id: Some(Attested {
                value: "m-1".into(),
                header: "X-Message-Id",
            }),
        })
    };
    let produced = ledger.send_from(
        telephony(),
        Operation::Update(id.clone()),
        &[],
        json!({"data": {"type": "call", "attributes": {"uid": "trace-1"}}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(produced.status, 200, "{}", text(&produced));
    // A redelivery (same message id) appends nothing and answers as the original did.
    let again = ledger.send_from(
        telephony(),
        Operation::Update(id.clone()),
        &[],
        json!({"data": {"type": "call", "attributes": {"uid": "trace-1"}}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(again.status, 200);
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(again.body, produced.body);

    // The open API (no tokens file) reads and writes, but holds no voice scope.
    let open = ledger_open();
    let created = open.send(
        Operation::Create,
        &[],
        br#"{"data":{"type":"call","attributes":{"direction":"inbound"}}}"#,
    );
    assert_eq!(created.status, 201, "{}", text(&created));
    let voice = open.send(
        Operation::Create,
        &[],
        br#"{"data":{"type":"call","attributes":{"state":"completed"}}}"#,
    );
    error(&voice, 422, "validationError");
    let listed = open.send(
        Operation::List,
        &[],
        b"provideAuthorizationMeta=true&fields[call]=direction",
    );
    assert_eq!(
        body(&listed)["data"][0],
        json!({"type": "call", "id": 1, "attributes": {"direction": "inbound"}, "relationships": {},
               "links": {"self": "calls.api.get.1"}, "meta": {"canWrite": true, "canDelete": true}})
    );
}

fn ledger_open() -> Ledger {
    ledger(None, 1024 * 1024)
}

#[test]
fn idempotent_retries_and_if_match() {
    let ledger = secured();
    let payload = r#"{"data":{"type":"call","attributes":{"direction":"inbound"}}}"#;
    let headers = [
        ("Authorization", "Bearer admin-secret"),
        ("Idempotency-Key", "create-1"),
    ];
    let first = ledger.send(Operation::Create, &headers, payload.as_bytes());
    assert_eq!(first.status, 201);
    assert_eq!(first.header("Idempotent-Replayed"), None);
    let retry = ledger.send(Operation::Create, &headers, payload.as_bytes());
    assert_eq!(retry.status, 201);
    assert_eq!(retry.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(retry.body, first.body);
    let listed = body(&ledger.as_("admin", Operation::List, ""));
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);

    let other = r#"{"data":{"type":"call","attributes":{"direction":"outbound"}}}"#;
    let reused = ledger.send(Operation::Create, &headers, other.as_bytes());
    let first_error = error(&reused, 409, "conflict");
    assert!(first_error["detail"]
        .as_str()
        .unwrap()
        .contains("idempotency key"));

    let long = "k".repeat(256);
    let too_long = ledger.send(
        Operation::Create,
        &[
            ("Authorization", "Bearer admin-secret"),
            ("Idempotency-Key", &long),
        ],
        payload.as_bytes(),
    );
    let first_error = error(&too_long, 400, "validationError");
    assert_eq!(first_error["source"]["header"], "Idempotency-Key");

    let id = body(&first)["data"]["id"].to_string();
    let change = r#"{"data":{"type":"call","attributes":{"note":"x"}}}"#;
    let stale = ledger.send(
        Operation::Update(id.clone()),
        &[("Authorization", "Bearer admin-secret"), ("If-Match", "7")],
        change.as_bytes(),
    );
    let first_error = error(&stale, 409, "conflict");
    assert_eq!(
        first_error["detail"],
        "Version mismatch: If-Match expected version 7, but the call is at version 1."
    );
    let fresh = ledger.send(
        Operation::Update(id.clone()),
        &[
            ("Authorization", "Bearer admin-secret"),
            ("If-Match", "\"1\""),
        ],
        change.as_bytes(),
    );
    assert_eq!(fresh.status, 200, "{}", text(&fresh));
    assert_eq!(fresh.header("ETag"), Some("2"));
    let bad = ledger.send(
        Operation::Delete(id.clone()),
        &[
            ("Authorization", "Bearer admin-secret"),
            ("If-Match", "W/x"),
        ],
        b"",
    );
    assert_eq!(
        error(&bad, 400, "validationError")["source"]["header"],
        "If-Match"
    );
    let stale_delete = ledger.send(
        Operation::Delete(id.clone()),
        &[("Authorization", "Bearer admin-secret"), ("If-Match", "1")],
        b"",
    );
    error(&stale_delete, 409, "conflict");
    let delete_headers = [
        ("Authorization", "Bearer admin-secret"),
        ("If-Match", "2"),
        ("Idempotency-Key", "delete-1"),
    ];
    let deleted = ledger.send(Operation::Delete(id.clone()), &delete_headers, b"");
    assert_eq!(deleted.status, 204, "{}", text(&deleted));
    let replayed = ledger.send(Operation::Delete(id.clone()), &delete_headers, b"");
    assert_eq!(replayed.status, 204, "{}", text(&replayed));
    assert_eq!(replayed.header("Idempotent-Replayed"), Some("true"));
}

#[test]
fn stale_state_changes_are_conflicts() {
    let ledger = secured();
    let created = ledger.as_(
        "voice",
        Operation::Create,
        r#"{"data":{"type":"call","attributes":{"state":"ringing"},"meta":{"occurredAt":"2025-01-13T12:00:00Z"}}}"#,
    );
    assert_eq!(created.status, 201, "{}", text(&created));
    let id = body(&created)["data"]["id"].to_string();
    let stale = ledger.as_(
        "voice",
        Operation::Update(id),
        r#"{"data":{"type":"call","attributes":{"state":"completed"},"meta":{"occurredAt":"2025-01-13T11:00:00Z"}}}"#,
    );
    let first = error(&stale, 409, "conflict");
    assert!(first["detail"]
        .as_str()
        .unwrap()
        .starts_with("Stale state change"));
}

#[test]
fn invalid_documents_list_every_violation() {
    let ledger = secured();
    let payload = json!({"data": {"type": "call", "attributes": {
        "direction": "sideways", "vendorCallId": "v".repeat(64), "createdAt": NOW, "colour": "red"
    }}})
    .to_string();
    let response = ledger.as_("voice", Operation::Create, &payload);
    assert_eq!(response.status, 422);
    assert_eq!(response.error_title(), Some("Validation Error"));
    let errors = body(&response)["errors"].as_array().unwrap().clone();
    assert_eq!(errors.len(), 4, "{errors:?}");
    let too_long = errors
        .iter()
        .find(|error| error["source"]["pointer"] == "/data/attributes/vendorCallId")
        .unwrap();
    assert_eq!(too_long["id"], "validationDataTooLongError");
    assert_eq!(too_long["title"], "Data Too Long");
    let direction = errors
        .iter()
        .find(|error| error["source"]["pointer"] == "/data/attributes/direction")
        .unwrap();
    assert_eq!(direction["id"], "validationError");
    assert_eq!(direction["title"], "Validation Error");
}

#[test]
fn bad_ids_payloads_and_queries_are_400_404_413() {
    let ledger = ledger(Some(tokens()), 4096);
    let first = error(
        &ledger.as_("reader", get("abc"), ""),
        404,
        "resourceNotFound",
    );
    assert_eq!(first["detail"], "Could not find 'call' with ID 'abc'.");
    for token in ["0", "-1", "1.5", "", "99999999999999999999999"] {
        error(
            &ledger.as_("reader", get(token), ""),
            404,
            "resourceNotFound",
        );
        error(
            &ledger.as_("admin", Operation::Update(token.into()), "{}"),
            404,
            "resourceNotFound",
        );
    }
    error(
        &ledger.as_("reader", get("12"), ""),
        404,
        "resourceNotFound",
    );

    let first = error(
        &ledger.as_("reader", Operation::List, "filter[colour]=red"),
        400,
        "validationError",
    );
    assert_eq!(first["title"], "Bad Request");
    assert_eq!(first["source"]["parameter"], "filter[colour]");
    let first = error(
        &ledger.as_("reader", Operation::List, "page[size]=0"),
        400,
        "validationError",
    );
    assert_eq!(first["source"]["parameter"], "page[size]");
    let first = error(
        &ledger.as_("reader", Operation::List, "page[after]=garbage"),
        400,
        "validationError",
    );
    assert_eq!(first["source"]["parameter"], "page[after]");
    let first = error(
        &ledger.as_("reader", get("1"), "filter[state]=x"),
        400,
        "validationError",
    );
    assert_eq!(first["source"]["parameter"], "filter[state]");

    let first = error(
        &ledger.as_("admin", Operation::Create, "{\"data\":"),
        400,
        "validationError",
    );
    assert!(first["detail"].as_str().unwrap().contains("not valid JSON"));
    // A byte order mark before the document is read past (RFC 8259, section 8.1); only
    // before it.
    let created = ledger.as_(
        "admin",
        Operation::Create,
        "\u{FEFF}{\"data\":{\"type\":\"call\",\"attributes\":{\"note\":\"marked\"}}}",
    );
    assert_eq!(created.status, 201, "{}", text(&created));
    assert_eq!(body(&created)["data"]["attributes"]["note"], "marked");
    error(
        &ledger.as_(
            "admin",
            Operation::Create,
            " \u{FEFF}{\"data\":{\"type\":\"call\"}}",
        ),
        400,
        "validationError",
    );
    error(
        &ledger.as_("admin", Operation::Create, ""),
        400,
        "validationError",
    );
    error(
        &ledger.as_("admin", Operation::Create, "[]"),
        422,
        "validationError",
    );

    let big = "x".repeat(4097);
    let too_large = ledger.as_("admin", Operation::Create, &big);
    error(&too_large, 413, "requestTooLarge");
    assert_eq!(too_large.error_title(), Some("Request Too Large"));

    let not_utf8 = ledger.send(
        Operation::List,
        &[("Authorization", "Bearer reader-secret")],
        &[0xff, 0xfe],
    );
    error(&not_utf8, 400, "validationError");
}

#[test]
fn garbage_never_panics() {
    let ledger = ledger(None, 64 * 1024);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!("{}1{}", "{\"data\":".repeat(5_000), "}".repeat(5_000));
    let payloads: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0, 1, 2, 255, 254],
        b"\xff\xfe{\"data\":{}}".to_vec(),
        deep.into_bytes(),
        deep_object.into_bytes(),
        b"null".to_vec(),
        b"{\"data\":null}".to_vec(),
        b"{\"data\":{\"type\":\"call\",\"attributes\":[1,2]}}".to_vec(),
        b"filter[[[]]]=&&&==%%%".to_vec(),
        b"%".to_vec(),
        b"page[size]=1&page[after]=%00%01".to_vec(),
        "filter[note]=\u{1F600}..\u{1F600}".as_bytes().to_vec(),
        vec![b'a'; 70_000],
    ];
    let operations = [
        Operation::List,
        Operation::Get("1".into()),
        Operation::Get("\u{0}".into()),
        Operation::Create,
        Operation::Update("1".into()),
        Operation::Delete("1".into()),
        Operation::Changes,
    ];
    for payload in &payloads {
        for operation in &operations {
            for source in [Source::Api, Source::Producer(Producer::default())] {
                let response = ledger.send_from(source, operation.clone(), &[], payload);
                assert!(
                    [200, 201, 204, 400, 404, 413, 422].contains(&response.status),
                    "{operation:?} {payload:?}: {} {}",
                    response.status,
                    text(&response)
                );
                if response.is_error() {
                    body(&response);
                }
            }
        }
    }
}

#[test]
fn lists_walk_forward_and_back_with_exclusive_cursors() {
    let ledger = secured();
    for index in 0..7 {
        ledger.create(json!({"direction": "inbound", "note": format!("call {index}")}));
    }
    ledger.create(json!({"direction": "outbound"}));
    let mut query = "filter[direction]=inbound&sort=-id&page[size]=3&count=true".to_owned();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let response = ledger.as_("reader", Operation::List, &query);
        assert_eq!(response.status, 200, "{}", text(&response));
        let page = body(&response);
        assert_eq!(page["meta"]["count"], 7);
        assert_eq!(
            page["links"]["first"],
            "filter[direction]=inbound&sort=-id&page[size]=3&count=true"
        );
        assert_eq!(page["links"].get("prev").is_some(), pages > 0, "{page}");
        for row in page["data"].as_array().unwrap() {
            seen.push(row["id"].as_u64().unwrap());
        }
        pages += 1;
        match page["links"]["next"].as_str() {
            Some(next) => query = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, vec![7, 6, 5, 4, 3, 2, 1]);

    // Back from the last page.
    let last = body(&ledger.as_("reader", Operation::List, &query));
    let prev = last["links"]["prev"].as_str().unwrap().to_owned();
    assert!(prev.contains("page[before]="), "{prev}");
    let previous = body(&ledger.as_("reader", Operation::List, &prev));
    let ids: Vec<u64> = previous["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![4, 3, 2]);

    // A cursor used with another filter is refused, naming the cursor parameter.
    let cursor = query.split("page[after]=").nth(1).unwrap();
    let mismatch = ledger.as_(
        "reader",
        Operation::List,
        &format!("filter[direction]=outbound&page[after]={cursor}"),
    );
    assert_eq!(
        error(&mismatch, 400, "validationError")["source"]["parameter"],
        "page[after]"
    );

    // Past the end: no rows, `first`, and `prev` back to the rows before the cursor (with a
    // cursor given, `links` stays).
    let third_page = query.clone();
    for id in 1..=3 {
        let response = ledger.as_("admin", Operation::Delete(id.to_string()), "");
        assert_eq!(response.status, 204);
    }
    let empty = body(&ledger.as_("reader", Operation::List, &third_page));
    assert_eq!(empty["data"], json!([]));
    assert_eq!(
        empty["links"]["first"],
        "filter[direction]=inbound&sort=-id&page[size]=3&count=true"
    );
    let back = body(&ledger.as_(
        "reader",
        Operation::List,
        empty["links"]["prev"].as_str().expect("links.prev"),
    ));
    assert!(!back["data"].as_array().unwrap().is_empty());
    assert_eq!(empty["meta"], json!({"count": 4}));
    let none = body(&ledger.as_("reader", Operation::List, "filter[note]=nobody"));
    assert_eq!(none, json!({"data": []}));
}

#[test]
fn every_filter_form_runs_on_the_engine() {
    let ledger = secured();
    ledger.create(json!({
        "direction": "outbound", "outcome": "Not Answered", "tags": ["Interested", "Hot"],
        "shouldRecordCall": true, "dialedAt": "2025-01-10T10:00:00Z", "note": "a,b..c"
    }));
    ledger.create(json!({"direction": "inbound"}));
    let cases: &[(&str, &[u64])] = &[
        ("filter[direction]=outbound", &[1]),
        ("filter[direction]=outbound,inbound", &[1, 2]),
        ("filter[outcome]=Not%20Answered", &[1]),
        ("filter[tags]=Hot", &[1]),
        ("filter[tags]=Cold,Interested", &[1]),
        ("filter[shouldRecordCall]=true", &[1]),
        ("filter[shouldRecordCall]=false", &[]),
        ("filter[dialedAt]=2025-01-01T00:00:00Z..inf", &[1]),
        ("filter[dialedAt]=neginf..2025-01-10T09:59:59.999Z", &[]),
        (
            "filter[dialedAt]=2025-01-10T10:00:00Z..2025-01-10T10:00:00Z",
            &[1],
        ),
        ("filter[dialedAt]=__null__", &[2]),
        ("filter[dialedAt]=__notnull__", &[1]),
        (
            "filter[createdAt]=2025-01-13T12:47:31Z..inf&sort=-createdAt",
            &[2, 1],
        ),
        ("filter[updatedAt]=neginf..2025-01-13T12:47:31Z", &[1, 2]),
        ("filter[id]=2", &[2]),
        ("filter[id]=1,2", &[1, 2]),
        ("filter[id]=2..inf", &[2]),
        ("filter[id]=neginf..1", &[1]),
        ("filter[prospect][id]=5", &[]),
        ("filter[prospect][id]=__null__", &[1, 2]),
        ("filter[user][id]=__notnull__", &[]),
        ("filter[note]=a,b..c", &[]),
        ("newFilterSyntax=true&filter[note]=a,b..c", &[1]),
        (
            "newFilterSyntax=true&filter[direction][]=outbound&filter[direction][]=inbound",
            &[1, 2],
        ),
        (
            "newFilterSyntax=true&filter[dialedAt][gte]=2025-01-10T10:00:00Z",
            &[1],
        ),
        (
            "newFilterSyntax=true&filter[id][gte]=1&filter[id][lte]=1",
            &[1],
        ),
        (
            "newFilterSyntax=true&filter[prospect][id][]=1&filter[prospect][id][]=2",
            &[],
        ),
        ("newFilterSyntax=true&filter[tags][]=Hot", &[1]),
        ("sort=-dialedAt,id", &[1, 2]),
        ("sort=direction", &[]),
    ];
    for (query, expected) in cases {
        let response = ledger.as_("reader", Operation::List, query);
        if query.starts_with("sort=direction") {
            error(&response, 400, "validationError");
            continue;
        }
        assert_eq!(response.status, 200, "{query}: {}", text(&response));
        let ids: Vec<u64> = body(&response)["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["id"].as_u64().unwrap())
            .collect();
        assert_eq!(&ids, expected, "{query}");
    }
}

#[test]
fn a_page_is_cut_short_to_fit_the_max_payload() {
    let max_payload = 8 * 1024;
    let ledger = ledger(None, max_payload);
    for _ in 0..10 {
        let payload =
            json!({"data": {"type": "call", "attributes": {"note": "n".repeat(1500)}}}).to_string();
        let response = ledger.send(Operation::Create, &[], payload.as_bytes());
        assert_eq!(response.status, 201, "{}", text(&response));
    }
    let mut query = "page[size]=1000".to_owned();
    let mut seen = Vec::new();
    loop {
        let response = ledger.send(Operation::List, &[], query.as_bytes());
        assert_eq!(response.status, 200, "{}", text(&response));
        assert!(
            response.body.len() <= max_payload - 1024,
            "{}",
            response.body.len()
        );
        let page = body(&response);
        let rows = page["data"].as_array().unwrap();
        assert!(!rows.is_empty() && rows.len() < 10);
        seen.extend(rows.iter().map(|row| row["id"].as_u64().unwrap()));
        match page["links"]["next"].as_str() {
            Some(next) => query = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());

    // The change feed is cut the same way and continues without a gap.
    let mut payload = "after=0&limit=1000".to_owned();
    let mut seen = Vec::new();
    loop {
        let response = ledger.send(Operation::Changes, &[], payload.as_bytes());
        assert!(response.body.len() <= max_payload - 1024);
        let page = body(&response);
        let rows = page["data"].as_array().unwrap();
        seen.extend(rows.iter().map(|row| row["id"].as_u64().unwrap()));
        if rows.is_empty() {
            break;
        }
        payload = page["links"]["next"].as_str().unwrap().to_owned();
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
}

#[test]
fn get_with_sparse_fieldsets_and_meta() {
    let ledger = secured();
    let created = ledger.create(json!({"to": "+15550100", "direction": "outbound"}));
    let id = created["data"]["id"].to_string();
    let update = json!({"data": {"type": "call", "meta": {"dataConnections": [
        {"connection": "salesforce", "type": "Task", "id": "00T1", "url": "https://example.com/t"}
    ]}}})
    .to_string();
    assert_eq!(
        ledger
            .as_("admin", Operation::Update(id.clone()), &update)
            .status,
        200
    );
    let response = ledger.as_(
        "writer",
        get(&id),
        "fields[call]=state,to,prospect&provideAuthorizationMeta=true&provideDataConnections=true",
    );
    assert_eq!(response.status, 200, "{}", text(&response));
    assert_eq!(
        body(&response)["data"],
        json!({
            "type": "call", "id": 1,
            "attributes": {"state": null, "to": "+15550100"},
            "relationships": {"prospect": {"data": null}},
            "links": {"self": "calls.api.get.1"},
            "meta": {"canWrite": true, "canDelete": false, "dataConnections": [
                {"connection": "salesforce", "type": "Task", "id": "00T1", "url": "https://example.com/t"}
            ]}
        })
    );
}

/// A get of a call unchanged since its last get is answered from the document kept then
/// (`rendered.rs`); a change, a delete or other read options are never answered from it.
#[test]
fn a_kept_get_document_is_served_only_while_its_call_is_unchanged() {
    let ledger = secured();
    let created = ledger.create(json!({"to": "+15550100", "direction": "outbound"}));
    let id = created["data"]["id"].to_string();
    let first = ledger.as_("reader", get(&id), "");
    let again = ledger.as_("reader", get(&id), "");
    assert_eq!(again.status, 200);
    assert_eq!(again.header("ETag"), Some("1"));
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers, first.headers);

    let sparse = ledger.as_(
        "writer",
        get(&id),
        "fields[call]=to&provideAuthorizationMeta=true",
    );
    assert_eq!(
        body(&sparse)["data"]["attributes"],
        json!({"to": "+15550100"})
    );
    assert_eq!(body(&sparse)["data"]["meta"]["canWrite"], true);
    assert_eq!(ledger.as_("reader", get(&id), "").body, first.body);

    let update = json!({"data": {"type": "call", "attributes": {"note": "callback friday"}}});
    let updated = ledger.as_("writer", Operation::Update(id.clone()), &update.to_string());
    assert_eq!(updated.status, 200, "{}", text(&updated));
    let after = ledger.as_("reader", get(&id), "");
    assert_eq!(after.header("ETag"), Some("2"));
    assert_eq!(
        body(&after)["data"]["attributes"]["note"],
        "callback friday"
    );
    assert_eq!(body(&after), body(&updated));

    assert_eq!(
        ledger
            .as_("admin", Operation::Delete(id.clone()), "")
            .status,
        204
    );
    error(&ledger.as_("reader", get(&id), ""), 404, "resourceNotFound");
}

/// Gets racing updates of the same call: every document answered is the state its `ETag`
/// names (a kept document never outlives its call's change), a reader never sees the call go
/// back, and a get sent after an update was acknowledged sees that update.
#[test]
fn gets_racing_updates_never_see_a_stale_kept_document() {
    const UPDATES: u64 = 200;
    let ledger = ledger_open();
    let created = ledger.create(json!({"note": "v1"}));
    let id = created["data"]["id"].to_string();
    let acknowledged = std::sync::atomic::AtomicU64::new(1);
    let read = |api: &Api| {
        let floor = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
        let response = api.handle(Request {
            operation: get(&id),
            headers: &[],
            payload: b"",
            source: Source::Api,
        });
        assert_eq!(response.status, 200, "{}", text(&response));
        let version: u64 = response.header("ETag").unwrap().parse().unwrap();
        assert!(
            version >= floor,
            "a get after version {floor} was acknowledged saw {version}"
        );
        assert_eq!(
            body(&response)["data"]["attributes"]["note"],
            format!("v{version}"),
            "the document is the state its ETag names"
        );
        version
    };
    std::thread::scope(|scope| {
        for _ in 0..3 {
            let api = ledger.api.clone();
            let read = &read;
            scope.spawn(move || {
                let mut last = 0;
                while last < UPDATES + 1 {
                    let version = read(&api);
                    assert!(version >= last, "went back from {last} to {version}");
                    last = version;
                }
            });
        }
        for version in 2..=UPDATES + 1 {
            let update =
                json!({"data": {"type": "call", "attributes": {"note": format!("v{version}")}}});
            let updated = ledger.send(
                Operation::Update(id.clone()),
                &[],
                update.to_string().as_bytes(),
            );
            assert_eq!(updated.status, 200, "{}", text(&updated));
            acknowledged.store(version, std::sync::atomic::Ordering::SeqCst);
        }
    });
}

/// A ledger that deletes as it creates, every call got once: the kept documents stay about the
/// live calls', not every call ever got (the sweep drops those of deleted calls).
#[test]
fn kept_documents_follow_the_live_calls_not_every_call_ever_got() {
    const LIVE: usize = 20;
    let ledger = ledger_open();
    let mut live = std::collections::VecDeque::new();
    for round in 0..600 {
        let created = ledger.create(json!({"note": format!("round {round}")}));
        let id = created["data"]["id"].to_string();
        assert_eq!(ledger.send(get(&id), &[], b"").status, 200);
        live.push_back(id);
        if live.len() > LIVE {
            let gone = live.pop_front().unwrap();
            assert_eq!(ledger.send(Operation::Delete(gone), &[], b"").status, 204);
        }
    }
    let stats = ledger.api.rendered_gets();
    assert_eq!(stats.misses, 600, "{stats:?}");
    assert!(
        stats.entries <= 2 * LIVE,
        "{} documents kept for {LIVE} live calls: {stats:?}",
        stats.entries
    );
}

/// GET-modify-PATCH: every document `get` returns (whole, with each meta flag, with a fieldset),
/// sent back by an ordinary writer with one attribute changed, is that change and nothing else:
/// the server-set, telephony-owned and read-only members it carries unchanged are ignored. A
/// changed one is still refused, naming it.
#[test]
fn a_fetched_call_sent_back_with_one_change_is_that_change() {
    let ledger = secured();
    let full = json!({"data": {"type": "call",
        "attributes": {"direction": "outbound", "state": "completed", "uid": "trace-1",
            "voicemailRecordingUrl": "https://example.com/vm.mp3", "tags": ["Interested"],
            "dialedAt": "2025-01-13T12:40:00Z", "note": "first"},
        "relationships": {"prospect": {"data": {"type": "prospect", "id": 42}},
            "associatedId": {"data": {"type": "account", "id": 3}},
            "batches": {"data": [{"type": "batch", "id": 5}]},
            "kaiaCrmRecording": {"data": {"type": "kaiaCrmRecording", "id": 6}}},
        "meta": {"dataConnections": [{"connection": "crm", "url": "https://crm.example/1"}]}}});
    let created = ledger.as_("voice", Operation::Create, &full.to_string());
    assert_eq!(created.status, 201, "{}", text(&created));
    let plain = ledger.as_("voice", Operation::Create, r#"{"data":{"type":"call"}}"#);
    for id in [
        body(&created)["data"]["id"].to_string(),
        body(&plain)["data"]["id"].to_string(),
    ] {
        for query in [
            "",
            "provideAuthorizationMeta=true",
            "provideDataConnections=true",
            "provideAuthorizationMeta=true&provideDataConnections=true",
            "fields[call]=state,createdAt,batches,note",
        ] {
            let bearer = "Bearer writer-secret";
            let fetched = ledger.send(
                Operation::Get(id.clone()),
                &[("Authorization", bearer)],
                query.as_bytes(),
            );
            assert_eq!(fetched.status, 200, "{}", text(&fetched));
            let mut document = body(&fetched);
            let note = format!("changed with {query}");
            document["data"]["attributes"]["note"] = json!(note);
            let version = fetched.header("ETag").unwrap().to_owned();
            let updated = ledger.send(
                Operation::Update(id.clone()),
                &[("Authorization", bearer), ("If-Match", &version)],
                document.to_string().as_bytes(),
            );
            assert_eq!(updated.status, 200, "{query}: {}", text(&updated));
            let after = body(&updated);
            assert_eq!(after["data"]["attributes"]["note"], json!(note));
            let mut before = body(&fetched)["data"]["attributes"].clone();
            let mut now = after["data"]["attributes"].clone();
            for member in ["note", "updatedAt"] {
                before.as_object_mut().unwrap().remove(member);
                now.as_object_mut().unwrap().remove(member);
            }
            for (name, value) in before.as_object().unwrap() {
                assert_eq!(&now[name], value, "{query}: {name} changed");
            }
        }
    }
    // A member the writer does not own, changed, is refused and named.
    let id = body(&created)["data"]["id"].to_string();
    let fetched = ledger.as_("writer", Operation::Get(id.clone()), "");
    let mut document = body(&fetched);
    document["data"]["attributes"]["state"] = json!("ringing");
    document["data"]["relationships"]["batches"] = json!({"data": []});
    let refused = ledger.as_("writer", Operation::Update(id), &document.to_string());
    let first = error(&refused, 422, "validationError");
    assert_eq!(first["source"]["pointer"], "/data/attributes/state");
    assert_eq!(
        body(&refused)["errors"][1]["source"]["pointer"],
        "/data/relationships/batches"
    );
    assert_eq!(body(&refused)["errors"].as_array().unwrap().len(), 2);
}

#[test]
fn only_canonical_positive_integers_are_ids() {
    let ledger = secured();
    let created = ledger.as_("writer", Operation::Create, r#"{"data":{"type":"call"}}"#);
    assert_eq!(body(&created)["data"]["id"], 1);
    for token in ["01", "+1", "0", "-1", "1.0", " 1", "1e0", ""] {
        error(
            &ledger.as_("reader", Operation::Get(token.into()), ""),
            404,
            "resourceNotFound",
        );
        error(
            &ledger.as_("admin", Operation::Delete(token.into()), ""),
            404,
            "resourceNotFound",
        );
    }
    assert_eq!(
        ledger.as_("reader", Operation::Get("1".into()), "").status,
        200
    );
    for query in [
        "filter[id]=01",
        "filter[id]=0",
        "filter[prospect][id]=007",
        "filter[id]=1..09",
    ] {
        let first = error(
            &ledger.as_("reader", Operation::List, query),
            400,
            "validationError",
        );
        assert!(
            first["detail"].as_str().unwrap().contains("leading zeros"),
            "{query}: {first}"
        );
    }
}

#[test]
fn a_plus_before_a_sort_key_ascends() {
    let ledger = secured();
    for _ in 0..3 {
        ledger.as_("writer", Operation::Create, r#"{"data":{"type":"call"}}"#);
    }
    let ids = |query: &str| -> Vec<u64> {
        let reply = ledger.as_("reader", Operation::List, query);
        assert_eq!(reply.status, 200, "{query}: {}", text(&reply));
        body(&reply)["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids("sort=+id"), vec![1, 2, 3]);
    assert_eq!(ids("sort=%2Bid"), vec![1, 2, 3]);
    assert_eq!(ids("sort=-id"), vec![3, 2, 1]);
    assert_eq!(ids("sort=+createdAt,-id"), ids("sort=createdAt,-id"));
}

#[test]
fn an_empty_page_reached_by_a_cursor_links_back() {
    for sort in ["", "&sort=-id", "&sort=createdAt", "&sort=-createdAt,id"] {
        let ledger = secured();
        for _ in 0..3 {
            ledger.as_("writer", Operation::Create, r#"{"data":{"type":"call"}}"#);
        }
        let ids = |page: &Value| -> Vec<u64> {
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| row["id"].as_u64().unwrap())
                .collect()
        };
        let first = body(&ledger.as_("reader", Operation::List, &format!("page[size]=2{sort}")));
        let next = first["links"]["next"].as_str().unwrap().to_owned();
        // The one row the next page would hold goes away.
        let all = body(&ledger.as_("reader", Operation::List, &format!("page[size]=3{sort}")));
        let last = ids(&all)[2];
        let deleted = ledger.as_("admin", Operation::Delete(last.to_string()), "");
        assert_eq!(deleted.status, 204);
        let empty = body(&ledger.as_("reader", Operation::List, &next));
        assert_eq!(empty["data"], json!([]), "{sort}");
        let prev = empty["links"]["prev"].as_str().expect("links.prev");
        let back = body(&ledger.as_("reader", Operation::List, prev));
        assert_eq!(
            ids(&back),
            ids(&first),
            "{sort}: the page before is the first page"
        );
        assert!(empty["links"].get("next").is_none(), "{sort}");
        // Before the first row nothing precedes: an empty page that links forward.
        let before = first["links"]["next"]
            .as_str()
            .unwrap()
            .replace("page[after]", "page[before]");
        let head = body(&ledger.as_("reader", Operation::List, &before));
        assert_eq!(ids(&head), vec![ids(&first)[0]], "{sort}");
        let prev = head["links"]["prev"].as_str().map(str::to_owned);
        assert!(prev.is_none(), "{sort}: nothing before the first row");
        let before_first = body(
            &ledger.as_(
                "reader",
                Operation::List,
                &head["links"]["next"]
                    .as_str()
                    .unwrap()
                    .replace("page[after]", "page[before]"),
            ),
        );
        assert_eq!(before_first["data"], json!([]), "{sort}");
        let forward = before_first["links"]["next"].as_str().expect("links.next");
        assert_eq!(
            ids(&body(&ledger.as_("reader", Operation::List, forward))),
            ids(&first),
            "{sort}"
        );
    }
}

#[test]
fn one_idempotency_key_from_two_tokens_is_two_requests() {
    let ledger = secured();
    let document = r#"{"data":{"type":"call","attributes":{"direction":"inbound"}}}"#;
    let send = |token: &str| {
        let bearer = format!("Bearer {token}-secret");
        ledger.send(
            Operation::Create,
            &[("Authorization", &bearer), ("Idempotency-Key", "sync-1")],
            document.as_bytes(),
        )
    };
    let writer = send("writer");
    let admin = send("admin");
    assert_eq!(
        (writer.status, admin.status),
        (201, 201),
        "{}",
        text(&admin)
    );
    assert_ne!(body(&writer)["data"]["id"], body(&admin)["data"]["id"]);
    assert_eq!(admin.header("Idempotent-Replayed"), None);
    let again = send("writer");
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(body(&again)["data"]["id"], body(&writer)["data"]["id"]);
}

#[test]
fn every_limit_is_refused_with_what_was_too_much() {
    let ledger = secured();
    let bearer = ("Authorization", "Bearer admin-secret");
    // Headers: how many, and how long one is.
    let many: Vec<(String, String)> = (0..crate::MAX_HEADERS)
        .map(|n| (format!("X-{n}"), "v".to_owned()))
        .collect();
    let mut headers: Vec<(&str, &str)> =
        many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    headers.push(bearer);
    let first = error(
        &ledger.send(Operation::List, &headers, b""),
        400,
        "validationError",
    );
    assert!(
        first["detail"].as_str().unwrap().contains("at most 64"),
        "{first}"
    );
    let long = "v".repeat(crate::MAX_HEADER_VALUE_BYTES + 1);
    let first = error(
        &ledger.send(Operation::List, &[bearer, ("X-Long", &long)], b""),
        400,
        "validationError",
    );
    assert_eq!(first["source"]["header"], "X-Long");
    // JSON nesting.
    let deep = format!(
        "{{\"data\":{{\"type\":\"call\",\"attributes\":{{\"note\":{}1{}}}}}}}",
        "[".repeat(crate::MAX_JSON_DEPTH),
        "]".repeat(crate::MAX_JSON_DEPTH)
    );
    let first = error(
        &ledger.as_("admin", Operation::Create, &deep),
        400,
        "validationError",
    );
    assert!(
        first["detail"].as_str().unwrap().contains("deeper than 32"),
        "{first}"
    );
    // Filters per query: one per field (the grammar bounds them), a second one is refused.
    let first = error(
        &ledger.as_(
            "reader",
            Operation::List,
            "filter[note]=a&filter[direction]=inbound&filter[note]=b",
        ),
        400,
        "validationError",
    );
    assert_eq!(first["source"]["parameter"], "filter[note]");
    // Tags and data connections per call.
    let tags: Vec<String> = (0..=call_model::MAX_TAGS)
        .map(|n| format!("t{n}"))
        .collect();
    let payload = json!({"data": {"type": "call", "attributes": {"tags": tags}}}).to_string();
    let first = error(
        &ledger.as_("admin", Operation::Create, &payload),
        422,
        "validationError",
    );
    assert_eq!(first["source"]["pointer"], "/data/attributes/tags");
    let connections: Vec<Value> = (0..=call_model::MAX_DATA_CONNECTIONS)
        .map(|n| json!({"connection": "sf", "type": "Task", "id": format!("00T{n}")}))
        .collect();
    let payload = json!({"data": {"type": "call", "attributes": {},
        "meta": {"dataConnections": connections}}})
    .to_string();
    let first = error(
        &ledger.as_("admin", Operation::Create, &payload),
        422,
        "validationError",
    );
    assert_eq!(first["source"]["pointer"], "/data/meta/dataConnections");
    // Idempotency keys.
    let key = "k".repeat(256);
    let payload = json!({"data": {"type": "call", "attributes": {}}}).to_string();
    let first = error(
        &ledger.send(
            Operation::Create,
            &[bearer, ("Idempotency-Key", &key)],
            payload.as_bytes(),
        ),
        400,
        "validationError",
    );
    assert_eq!(first["source"]["header"], "Idempotency-Key");
}

#[test]
fn the_backup_endpoint_pages_through_the_log_for_the_admin_scope_only() {
    let ledger = secured();
    for n in 0..5 {
        ledger.create(json!({ "note": format!("call {n}") }));
    }
    error(
        &ledger.as_("admin", Operation::Backup, "after=0"),
        403,
        "unauthorizedOauthScope",
    );
    let page = ledger.as_("backup", Operation::Backup, "after=1&limit=3");
    assert_eq!(page.status, 200, "{}", text(&page));
    assert_eq!(page.header("Content-Type"), Some(crate::NDJSON));
    assert_eq!(page.header(crate::HEAD_HEADER), Some("5"));
    assert_eq!(page.header(crate::LAST_POSITION_HEADER), Some("4"));
    let positions: Vec<u64> = text(&page)
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["position"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(positions, [2, 3, 4]);
    let empty = ledger.as_("backup", Operation::Backup, "after=5");
    assert_eq!((empty.status, empty.body.len()), (200, 0));
    let first = error(
        &ledger.as_("backup", Operation::Backup, "after=6"),
        400,
        "validationError",
    );
    assert_eq!(first["source"]["parameter"], "after");
    error(
        &ledger.as_("backup", Operation::Backup, "limit=0"),
        400,
        "validationError",
    );
    error(
        &ledger.as_("backup", Operation::Backup, "sort=id"),
        400,
        "validationError",
    );
}

#[test]
fn a_get_is_answered_at_once_only_when_the_projection_is_at_the_head() {
    let ledger = secured();
    let id = ledger.create(json!({"direction": "outbound"}))["data"]["id"].to_string();
    let bearer = [("Authorization".to_owned(), "Bearer admin-secret".to_owned())];
    let at_once = |operation: Operation, headers: &[(String, String)]| {
        ledger.api.handle_at_once(Request {
            operation,
            headers,
            payload: b"",
            source: Source::Api,
        })
    };
    // The create's reply does not wait for the projection: the get would have to.
    assert!(at_once(get(&id), &bearer).is_none());
    ledger.api.catch_up().unwrap();
    let answered = at_once(get(&id), &bearer).expect("the projection is at the head");
    let waited = ledger.as_("admin", get(&id), "");
    assert_eq!(answered.status, 200);
    assert_eq!(text(&answered), text(&waited));
    // Everything a get checks is still checked.
    let unauthorized = at_once(get(&id), &[]).expect("at the head");
    error(&unauthorized, 401, "unauthorized");
    // Only gets are answered at once.
    assert!(at_once(Operation::List, &bearer).is_none());
    assert!(at_once(Operation::Changes, &bearer).is_none());
}
