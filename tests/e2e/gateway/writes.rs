//! Writing over NATS: idempotent retries, `If-Match`, a hundred writers racing on one call,
//! and the concurrency bound (past it, 503 at once, and every request gets a reply).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use call_model::Event;
use serde_json::json;
use tokio::sync::Barrier;

use super::{bounded, call_document, id_of, Caller, Gateway, Setup, TEST_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_get_the_same_reply_and_append_once() {
    bounded("the test", TEST_TIMEOUT, async {
        let gateway = Gateway::start(Setup::open()).await;
        let api = gateway.anonymous();
        let log = gateway.log.clone();

        // create, retried: the same reply, marked as replayed, and one event.
        let document = call_document(json!({"direction": "inbound", "note": "first"}));
        let key = [("Idempotency-Key", "create-1")];
        let first = api.create(&key, &document).await;
        let call = first.data();
        let id = id_of(&call);
        assert_eq!(log.head(), 1);
        let retry = api.create(&key, &document).await;
        assert_eq!(retry.data(), call);
        assert_eq!(retry.etag(), 1);
        assert_eq!(retry.header("Idempotent-Replayed"), Some("true"));
        assert_eq!(first.header("Idempotent-Replayed"), None);
        assert_eq!(log.head(), 1, "the retry appended nothing");

        // Ten copies of one create at once: one call.
        let document = call_document(json!({"note": "at once"}));
        let copies = (0..10).map(|_| api.create(&[("Idempotency-Key", "create-2")], &document));
        let replies = futures::future::join_all(copies).await;
        let ids: Vec<u64> = replies.iter().map(|reply| id_of(&reply.data())).collect();
        assert!(ids.iter().all(|&other| other == ids[0]), "{ids:?}");
        let replayed = replies
            .iter()
            .filter(|reply| reply.header("Idempotent-Replayed") == Some("true"))
            .count();
        assert_eq!(replayed, 9, "all but one are replays");
        assert_eq!(log.head(), 2);

        // update, retried: the original reply even though If-Match no longer holds.
        let patch = call_document(json!({"note": "second"}));
        let headers = [("Idempotency-Key", "update-1"), ("If-Match", "1")];
        let updated = api.update(id, &headers, &patch).await;
        assert_eq!(updated.etag(), 2);
        let retry = api.update(id, &headers, &patch).await;
        assert_eq!(retry.data(), updated.data());
        assert_eq!(retry.etag(), 2);
        assert_eq!(retry.header("Idempotent-Replayed"), Some("true"));
        assert_eq!(log.head(), 3);

        // The same key for another request is a conflict.
        let other = call_document(json!({"note": "third"}));
        let reply = api
            .update(id, &[("Idempotency-Key", "update-1")], &other)
            .await;
        let errors = reply.assert_error(409, "Conflict");
        assert_eq!(
            errors[0]["detail"],
            "The idempotency key was already used for a different request."
        );
        let reply = api.create(&[("Idempotency-Key", "update-1")], &other).await;
        reply.assert_error(409, "Conflict");
        assert_eq!(log.head(), 3);

        // delete, retried: 204 again, empty, and one CallDeleted.
        let key = [("Idempotency-Key", "delete-1")];
        let deleted = api.delete(id, &key).await;
        assert!(
            deleted.is_success() && deleted.payload.is_empty(),
            "{deleted}"
        );
        let retry = api.delete(id, &key).await;
        assert!(retry.is_success() && retry.payload.is_empty(), "{retry}");
        assert_eq!(retry.header("Idempotent-Replayed"), Some("true"));
        assert_eq!(log.head(), 4);
        // Without the key, the call is gone.
        api.delete(id, &[])
            .await
            .assert_error(404, "Resource Not Found");
        let records = log.read_stream(id).expect("the call's events");
        assert_eq!(records.len(), 3, "create, update, delete: each once");
        gateway.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_guards_updates_and_deletes() {
    bounded("the test", TEST_TIMEOUT, async {
        let gateway = Gateway::start(Setup::open()).await;
        let api = gateway.anonymous();
        let id = id_of(&api.create_call(json!({"note": "v1"})).await);
        let note = |text: &str| call_document(json!({"note": text}));

        let reply = api.update(id, &[("If-Match", "1")], &note("v2")).await;
        assert_eq!(reply.etag(), 2);
        let stale = api.update(id, &[("If-Match", "1")], &note("lost")).await;
        let errors = stale.assert_error(409, "Conflict");
        assert_eq!(
            errors[0]["detail"],
            "Version mismatch: If-Match expected version 1, but the call is at version 2."
        );
        // The ETag may be sent back quoted.
        let reply = api.update(id, &[("If-Match", "\"2\"")], &note("v3")).await;
        assert_eq!(reply.etag(), 3);
        // A change to nothing appends nothing and answers with the call as it is.
        let head = gateway.log.head();
        let same = api.update(id, &[("If-Match", "3")], &note("v3")).await;
        assert_eq!(same.etag(), 3);
        assert_eq!(gateway.log.head(), head);
        assert_eq!(api.get(id, "").await.data()["attributes"]["note"], "v3");

        let stale = api.delete(id, &[("If-Match", "2")]).await;
        stale.assert_error(409, "Conflict");
        let future = api.delete(id, &[("If-Match", "4")]).await;
        future.assert_error(409, "Conflict");
        assert!(
            api.get(id, "").await.is_success(),
            "a refused delete keeps the call"
        );
        let deleted = api.delete(id, &[("If-Match", "3")]).await;
        assert!(
            deleted.is_success() && deleted.payload.is_empty(),
            "{deleted}"
        );
        api.get(id, "")
            .await
            .assert_error(404, "Resource Not Found");
        gateway.shutdown().await;
    })
    .await;
}

/// One attempt of a writer: the version it read, and what its update got.
#[derive(Debug)]
pub(super) struct Attempt {
    if_match: u64,
    note: String,
    /// The new ETag, or `None` for a 409.
    won: Option<u64>,
    /// The instance that answered.
    pub(super) instance: String,
}

/// `writers` writers update call `id` at once with `If-Match`, each reading the ETag and
/// trying up to three times; every answer is a 200 or a 409 naming the version.
pub(super) async fn race_writers(api: &Caller, id: u64, writers: usize) -> Vec<Attempt> {
    const ATTEMPTS: usize = 3;
    let barrier = Arc::new(Barrier::new(writers));
    let mut tasks = Vec::with_capacity(writers);
    for writer in 0..writers {
        let (api, barrier) = (api.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut attempts = Vec::new();
            for attempt in 0..ATTEMPTS {
                let if_match = api.get(id, "").await.etag();
                let note = format!("writer {writer} attempt {attempt} at {if_match}");
                let reply = api
                    .update(
                        id,
                        &[("If-Match", &if_match.to_string())],
                        &call_document(json!({"note": note})),
                    )
                    .await;
                let instance = reply
                    .header("Call-Ledger-Instance")
                    .unwrap_or_default()
                    .to_owned();
                if reply.is_success() {
                    attempts.push(Attempt {
                        if_match,
                        note,
                        won: Some(reply.etag()),
                        instance,
                    });
                    break;
                }
                let errors = reply.assert_error(409, "Conflict");
                let detail = errors[0]["detail"].as_str().unwrap_or_default();
                assert!(
                    detail.starts_with(&format!(
                        "Version mismatch: If-Match expected version {if_match}, \
                         but the call is at version "
                    )),
                    "{reply}"
                );
                attempts.push(Attempt {
                    if_match,
                    note,
                    won: None,
                    instance,
                });
            }
            attempts
        }));
    }
    let mut attempts = Vec::new();
    for task in tasks {
        attempts.extend(task.await.expect("a writer does not panic"));
    }
    attempts
}

/// Asserts that each version from `initial` to `final_version` was won by exactly one attempt,
/// that writers raced, and returns the winner of each version by the version it read.
pub(super) fn assert_each_version_won_once(
    attempts: &[Attempt],
    initial: u64,
    final_version: u64,
) -> BTreeMap<u64, &Attempt> {
    let winners: BTreeMap<u64, &Attempt> = attempts
        .iter()
        .filter(|attempt| attempt.won.is_some())
        .map(|attempt| (attempt.if_match, attempt))
        .collect();
    let wins = attempts.iter().filter(|a| a.won.is_some()).count();
    assert_eq!(wins, winners.len(), "no version was won twice");
    assert_eq!(
        wins as u64,
        final_version - initial,
        "every 200 is one new version"
    );
    assert_eq!(
        winners.keys().copied().collect::<Vec<_>>(),
        (initial..final_version).collect::<Vec<_>>(),
        "each version was won exactly once"
    );
    for (if_match, attempt) in &winners {
        assert_eq!(attempt.won, Some(if_match + 1));
    }
    assert!(
        attempts.len() > wins,
        "writers raced: some attempts conflicted"
    );
    assert!(wins >= 2, "more than one version was won: {wins}");
    winners
}

/// A hundred writers update one call with `If-Match`, each reading the ETag and trying up to
/// three times: every version is won by exactly one writer, and every other attempt is 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_writers_win_each_version_once() {
    bounded("the test", TEST_TIMEOUT, async {
        let gateway = Gateway::start(Setup::open()).await;
        let api = gateway.anonymous();
        let id = id_of(&api.create_call(json!({"note": "start"})).await);
        let initial = api.get(id, "").await.etag();
        let attempts = race_writers(&api, id, 100).await;
        let last = api.get(id, "").await;
        let final_version = last.etag();
        let winners = assert_each_version_won_once(&attempts, initial, final_version);

        // The log agrees: one event per version, each carrying its winner's note.
        let records = gateway.log.read_stream(id).expect("the call's events");
        assert_eq!(records.len() as u64, final_version);
        for record in records.iter().skip(initial as usize) {
            let event = Event::decode(
                record.position,
                record.stream,
                record.version,
                &record.payload,
            )
            .expect("a decodable event");
            let winner = winners[&(record.version - 1)];
            assert!(
                event.to_json().to_string().contains(&winner.note),
                "version {} carries {:?}",
                record.version,
                winner.note
            );
        }
        assert_eq!(
            last.data()["attributes"]["note"],
            winners[&(final_version - 1)].note
        );
        gateway.shutdown().await;
    })
    .await;
}

/// With one request in flight at most, a burst of requests gets 503 at once for those past the
/// bound; none is left without a reply, and none answered 503 wrote anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bound_requests_get_503_and_none_vanish() {
    bounded("the test", TEST_TIMEOUT, async {
        const BURST: usize = 300;
        let gateway = Gateway::start(Setup::open().max_in_flight(1)).await;
        let api = gateway.anonymous();
        let id = id_of(&api.create_call(json!({"note": "seed"})).await);

        let requests = (0..BURST).map(|n| {
            let api = api.clone();
            async move {
                let reply = if n.is_multiple_of(3) {
                    api.try_request_within(
                        &format!("calls.api.get.{id}"),
                        &[],
                        "",
                        Duration::from_secs(30),
                    )
                    .await
                } else {
                    let document = call_document(json!({"note": format!("burst {n}")}));
                    api.try_request_within(
                        "calls.api.create",
                        &[],
                        document.to_string(),
                        Duration::from_secs(30),
                    )
                    .await
                };
                (n, reply)
            }
        });
        let replies = futures::future::join_all(requests).await;
        let (mut created, mut read, mut unavailable) = (0u64, 0, 0);
        for (n, reply) in replies {
            let reply = reply.unwrap_or_else(|e| panic!("request {n} got no reply: {e}"));
            if reply.is_success() {
                if n.is_multiple_of(3) {
                    read += 1;
                } else {
                    created += 1;
                }
            } else {
                let errors = reply.assert_error(503, "Service Unavailable");
                assert_eq!(errors[0]["id"], "serviceUnavailable");
                unavailable += 1;
            }
        }
        let counts = format!("{created} created, {read} read, {unavailable} refused");
        assert!(
            unavailable > 0,
            "one in flight: a burst of {BURST} sees 503s: {counts}"
        );
        assert!(created + read > 0, "some requests were served: {counts}");
        assert_eq!(
            gateway.log.head(),
            1 + created,
            "only the served creates appended"
        );
        let listed = api.list("count=true&page[size]=1").await.json();
        assert_eq!(listed["meta"]["count"], json!(1 + created));
        gateway.shutdown().await;
    })
    .await;
}
