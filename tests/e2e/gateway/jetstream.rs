//! The JetStream side of the gateway: producers' commands applied once (their idempotency key
//! is the ledger's), refused ones republished to `CALL_REJECTED` with their errors, and every
//! event published to `CALL_EVENTS` in position order, with no gap and no duplicate, across a
//! NATS server restart in the middle of the load.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream::Stream};
use async_nats::HeaderMap;
use call_commands::CommandRequest;
use call_model::{parse_write, Action, Command, Event, Rights, WriteMode};
use futures::StreamExt;
use serde_json::{json, Value};

use super::{
    blocking, bounded, call_document, clock, eventually, id_of, Gateway, Setup, TEST_TIMEOUT,
};

/// Publishes to JetStream with headers and waits until the stream stored the message.
async fn publish(js: &jetstream::Context, subject: &str, headers: &[(&str, &str)], payload: &str) {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(*name, *value);
    }
    js.publish_with_headers(subject.to_string(), map, payload.to_string().into())
        .await
        .unwrap_or_else(|e| panic!("publish to {subject}: {e}"))
        .await
        .unwrap_or_else(|e| panic!("{subject} is stored: {e}"));
}

/// The stream, once the gateway has created it.
async fn stream(js: &jetstream::Context, name: &'static str) -> Stream {
    eventually(name, Duration::from_secs(30), || async move {
        js.get_stream(name).await.ok()
    })
    .await
}

/// The number of messages in a stream, 0 if it does not exist yet.
async fn message_count(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Whether the gateway's durable consumer has settled every command (none pending, none
/// waiting for an ack).
async fn commands_settled(js: &jetstream::Context) -> bool {
    let Ok(stream) = js.get_stream("CALL_COMMANDS").await else {
        return false;
    };
    let Ok(mut consumer) = stream.get_consumer::<pull::Config>("call-ledger").await else {
        return false;
    };
    match consumer.info().await {
        Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0,
        Err(_) => false,
    }
}

/// A header of a stored message.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|value| value.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_commands_apply_once_and_refused_ones_land_in_call_rejected() {
    bounded("the test", TEST_TIMEOUT, async {
        let gateway = Gateway::start(Setup::open()).await;
        let api = gateway.anonymous();
        let js = jetstream::new(gateway.client());
        stream(&js, "CALL_COMMANDS").await;

        // A producer holds calls.voice (it may set `state`), and names the actor.
        let telephony = json!({"data": {"type": "call",
            "attributes": {"direction": "outbound", "state": "ringing", "vendorCallId": "CA42"}}});
        publish(
            &js,
            "calls.commands.create",
            &[
                ("Nats-Msg-Id", "twilio-CA42-created"),
                ("Nats-Producer", "telephony"),
            ],
            &telephony.to_string(),
        )
        .await;
        // The same command twice with only an Idempotency-Key: JetStream stores both (no
        // Nats-Msg-Id to deduplicate), the ledger appends once.
        let crm = call_document(json!({"vendorCallId": "crm-9"}));
        for _ in 0..2 {
            publish(
                &js,
                "calls.commands.create",
                &[("Idempotency-Key", "crm-9")],
                &crm.to_string(),
            )
            .await;
        }
        eventually("both commands applied", Duration::from_secs(30), || {
            let js = js.clone();
            let api = api.clone();
            async move {
                let settled = commands_settled(&js).await;
                let count = api.list("count=true").await.json()["meta"]["count"].clone();
                (settled && count == json!(2)).then_some(())
            }
        })
        .await;
        // Commands run concurrently, so the calls' order is not the publishing order.
        let telephony_call = api.list("filter[vendorCallId]=CA42").await.data()[0].clone();
        let crm_call = api.list("filter[vendorCallId]=crm-9").await.data()[0].clone();
        assert_eq!(telephony_call["attributes"]["state"], "ringing");
        assert_eq!(gateway.log.head(), 2, "the repeated command appended once");
        let actors: BTreeMap<u64, Value> = gateway
            .log
            .read_from(0, 10)
            .expect("the log")
            .iter()
            .map(|record| {
                let event = Event::decode(
                    record.position,
                    record.stream,
                    record.version,
                    &record.payload,
                )
                .expect("an event");
                (record.stream, event.to_json()["actor"].clone())
            })
            .collect();
        assert_eq!(actors[&id_of(&telephony_call)], "telephony");
        assert_eq!(actors[&id_of(&crm_call)], "producer");
        let id = id_of(&telephony_call);

        // Commands that can never succeed: invalid (422), not JSON (400), no such call (404),
        // a subject that names no command (400), a stale state change (409).
        let invalid = json!({"data": {"type": "call",
            "attributes": {"direction": "sideways", "vendorCallId": "v".repeat(70)}}});
        publish(
            &js,
            "calls.commands.create",
            &[
                ("Nats-Msg-Id", "bad-invalid"),
                ("Authorization", "Bearer secret-token"),
            ],
            &invalid.to_string(),
        )
        .await;
        publish(
            &js,
            &format!("calls.commands.update.{id}"),
            &[("Nats-Msg-Id", "bad-json")],
            "not json",
        )
        .await;
        let note = call_document(json!({"note": "x"}));
        publish(
            &js,
            "calls.commands.update.999",
            &[("Nats-Msg-Id", "bad-missing")],
            &note.to_string(),
        )
        .await;
        publish(
            &js,
            "calls.commands.frobnicate",
            &[("Nats-Msg-Id", "bad-subject")],
            "{}",
        )
        .await;
        let stale = json!({"data": {"type": "call", "attributes": {"state": "no_answer"},
                                    "meta": {"occurredAt": "2020-01-01T00:00:00Z"}}});
        publish(
            &js,
            &format!("calls.commands.update.{id}"),
            &[("Nats-Msg-Id", "bad-stale")],
            &stale.to_string(),
        )
        .await;
        // And one that succeeds, by the same producer: acked, not rejected.
        let completed = json!({"data": {"type": "call", "attributes": {"state": "completed"}}});
        publish(
            &js,
            &format!("calls.commands.update.{id}"),
            &[("Nats-Msg-Id", "good-completed")],
            &completed.to_string(),
        )
        .await;

        eventually("the rejections", Duration::from_secs(30), || {
            let js = js.clone();
            async move {
                (commands_settled(&js).await && message_count(&js, "CALL_REJECTED").await >= 5)
                    .then_some(())
            }
        })
        .await;
        let rejected = stream(&js, "CALL_REJECTED").await;
        let mut by_id = BTreeMap::new();
        for sequence in 1..=5 {
            let message = rejected
                .get_raw_message(sequence)
                .await
                .expect("a rejected command");
            let msg_id = header(&message.headers, "Nats-Msg-Id")
                .expect("Nats-Msg-Id")
                .to_string();
            let code = header(&message.headers, "Call-Ledger-Error-Code")
                .expect("the code")
                .to_string();
            let body: Value = serde_json::from_slice(&message.payload).expect("a JSON document");
            by_id.insert(msg_id, (message.subject.to_string(), code, body));
        }
        assert_eq!(
            by_id.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            BTreeSet::from([
                "bad-invalid",
                "bad-json",
                "bad-missing",
                "bad-subject",
                "bad-stale"
            ])
        );
        assert_eq!(
            message_count(&js, "CALL_REJECTED").await,
            5,
            "each rejected once"
        );

        let (subject, code, body) = &by_id["bad-invalid"];
        assert_eq!(
            (subject.as_str(), code.as_str()),
            ("calls.rejected.create", "422")
        );
        assert_eq!(body["command"]["subject"], "calls.commands.create");
        assert_eq!(body["command"]["payload"], invalid, "the original payload");
        assert_eq!(body["command"]["headers"]["Nats-Msg-Id"], "bad-invalid");
        assert_eq!(
            body["command"]["headers"]["Authorization"], "[redacted]",
            "a bearer token is never copied"
        );
        let pointers: BTreeSet<&str> = body["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|error| error["source"]["pointer"].as_str())
            .collect();
        assert_eq!(
            pointers,
            BTreeSet::from([
                "/data/attributes/direction",
                "/data/attributes/vendorCallId"
            ])
        );

        let (subject, code, _) = &by_id["bad-json"];
        assert_eq!(
            (subject.as_str(), code.as_str()),
            (format!("calls.rejected.update.{id}").as_str(), "400")
        );
        let (subject, code, body) = &by_id["bad-missing"];
        assert_eq!(
            (subject.as_str(), code.as_str()),
            ("calls.rejected.update.999", "404")
        );
        assert_eq!(
            body["errors"][0]["detail"],
            "Could not find 'call' with ID '999'."
        );
        let (subject, code, body) = &by_id["bad-subject"];
        assert_eq!(
            (subject.as_str(), code.as_str()),
            ("calls.rejected.frobnicate", "400")
        );
        assert_eq!(body["command"]["payload"], json!({}));
        let (_, code, body) = &by_id["bad-stale"];
        assert_eq!(code, "409");
        assert!(
            body["errors"][0]["detail"]
                .as_str()
                .unwrap_or_default()
                .starts_with("Stale state change"),
            "{body}"
        );

        let call = api.get(id, "").await.data();
        assert_eq!(call["attributes"]["state"], "completed");
        assert_eq!(gateway.log.head(), 3, "only the good update appended");
        gateway.shutdown().await;
    })
    .await;
}

/// Appends a create through the command service, bypassing NATS (as `callledger import` or a
/// second process on the same log would).
fn append_offline(gateway_commands: &call_commands::CommandService, n: u64) {
    let document = call_document(json!({"note": format!("offline {n}")}));
    let input =
        parse_write(&document, WriteMode::Create, Rights { voice: false }).expect("a valid create");
    gateway_commands
        .execute(CommandRequest {
            command: Command {
                action: Action::Create(input.changes),
                actor: "e2e-offline".to_string(),
                recorded_at: clock(),
                occurred_at: None,
            },
            expected_version: None,
            idempotency_key: None,
        })
        .expect("the offline create is appended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_in_order_without_gaps_across_a_nats_restart() {
    bounded("the test", TEST_TIMEOUT, async {
        let mut gateway = Gateway::start(Setup::open()).await;
        let api = gateway.anonymous();
        let js = jetstream::new(gateway.client());

        // Before: writes over the API, creates and updates.
        let mut ids = Vec::new();
        for n in 0..20 {
            ids.push(id_of(
                &api.create_call(json!({"note": format!("before {n}")}))
                    .await,
            ));
        }
        for id in &ids[..10] {
            let reply = api
                .update(*id, &[], &call_document(json!({"outcome": "Answered"})))
                .await;
            assert!(reply.is_success(), "{reply}");
        }

        // Meanwhile, writes that do not need NATS, in batches the test asks for.
        let written = Arc::new(AtomicU64::new(0));
        let (more, batches) = std::sync::mpsc::channel::<u64>();
        let writer = {
            let (written, commands) = (written.clone(), gateway.commands.clone());
            std::thread::spawn(move || {
                for batch in batches {
                    for _ in 0..batch {
                        let n = written.load(Ordering::SeqCst);
                        append_offline(&commands, n);
                        written.store(n + 1, Ordering::SeqCst);
                    }
                }
            })
        };
        let appended = |at_least: u64| {
            let written = written.clone();
            async move { (written.load(Ordering::SeqCst) >= at_least).then_some(()) }
        };
        let published = |at_least: u64| {
            let js = js.clone();
            async move { (message_count(&js, "CALL_EVENTS").await >= at_least).then_some(()) }
        };
        more.send(300).expect("the writer runs");
        eventually("events to flow", Duration::from_secs(30), || published(40)).await;
        eventually("offline writes", Duration::from_secs(30), || appended(20)).await;

        // The server goes away mid-load; more writes while it is away; it comes back.
        blocking(|| gateway.nats.stop());
        more.send(100).expect("the writer runs");
        eventually("writes while NATS is down", Duration::from_secs(60), || {
            appended(400)
        })
        .await;
        blocking(|| gateway.nats.restart());
        gateway.wait_until_serving().await;

        // After: more API writes (and offline ones) while the outbox catches up.
        more.send(100).expect("the writer runs");
        for n in 0..20 {
            ids.push(id_of(
                &api.create_call(json!({"note": format!("after {n}")})).await,
            ));
        }
        drop(more);
        writer.join().expect("the offline writer does not panic");
        assert_eq!(written.load(Ordering::SeqCst), 500);
        let deleted = ids[0];
        assert!(api.delete(deleted, &[]).await.is_success());

        let head = gateway.log.head();
        // 20 creates, 10 updates, 500 offline creates, 20 creates and a delete.
        assert_eq!(head, 20 + 10 + 500 + 20 + 1);
        eventually("every event published", Duration::from_secs(60), || {
            published(head)
        })
        .await;

        // Read CALL_EVENTS from the start with an ordered consumer: positions 1..=head, each
        // once, in order.
        let events = stream(&js, "CALL_EVENTS").await;
        let consumer = events
            .create_consumer(pull::OrderedConfig::default())
            .await
            .expect("an ordered consumer");
        let mut messages = consumer
            .messages()
            .await
            .expect("messages")
            .take(head as usize);
        let mut event_ids = BTreeSet::new();
        let mut position = 0;
        while let Some(message) = messages.next().await {
            let message = message.expect("a message");
            position += 1;
            let event: Value = serde_json::from_slice(&message.payload).expect("event JSON");
            assert_eq!(event["position"], json!(position), "{event}");
            let subject = format!(
                "calls.events.{}.{}",
                event["callId"],
                event["type"].as_str().unwrap()
            );
            assert_eq!(message.subject.as_str(), subject);
            let msg_id = message
                .headers
                .as_ref()
                .and_then(|headers| header(headers, "Nats-Msg-Id"))
                .expect("Nats-Msg-Id");
            assert_eq!(json!(msg_id), event["eventId"]);
            assert!(event_ids.insert(msg_id.to_string()), "{msg_id} twice");
            let info = message.info().expect("JetStream metadata");
            assert_eq!(info.stream_sequence, position, "stream order is log order");
        }
        assert_eq!(position, head);
        assert_eq!(
            message_count(&js, "CALL_EVENTS").await,
            head,
            "no duplicates"
        );
        let last = events.get_raw_message(head).await.expect("the last event");
        assert_eq!(
            last.subject.as_str(),
            format!("calls.events.{deleted}.CallDeleted")
        );
        gateway.shutdown().await;
    })
    .await;
}
