//! Rate limits over NATS, as Outreach sets them: every reply says the caller's budget, past it
//! requests are refused with 429 and nothing is appended, and a producer's commands past it
//! wait for the next window instead of being refused.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use call_api::rate::RateLimit;
use call_model::Event;
use serde_json::json;

use super::{bounded, call_document, eventually, Gateway, Setup, ADMIN, TEST_TIMEOUT, WRITER};

/// The epoch second now.
fn epoch_now() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_carries_the_budget_and_past_it_the_answer_is_429_with_nothing_appended() {
    bounded("the test", TEST_TIMEOUT, async {
        let limit = RateLimit {
            requests: 3,
            window_secs: 3600,
        };
        let gateway = Gateway::start(Setup::open().with_tokens().rate_limit(limit)).await;
        let writer = gateway.caller(WRITER);
        let document = call_document(json!({"note": "limited"}));
        let mut remaining = Vec::new();
        for reply in [
            writer.list("").await,
            writer.create(&[], &document).await,
            writer.create(&[], &document).await,
        ] {
            assert!(reply.is_success(), "{reply}");
            assert_eq!(reply.header("X-RateLimit-Limit"), Some("3"), "{reply}");
            remaining.push(reply.header("X-RateLimit-Remaining").map(str::to_owned));
        }
        assert_eq!(
            remaining,
            [Some("2".into()), Some("1".into()), Some("0".into())]
        );

        let refused = writer.create(&[], &document).await;
        let errors = refused.assert_error(429, "Rate Limit Exceeded");
        assert_eq!(errors[0]["id"], "rateLimitExceeded", "{refused}");
        let detail = errors[0]["detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with(
                "You have exceeded your permitted rate limit of 3; please try again at "
            ),
            "{detail}"
        );
        let reset: u64 = refused
            .header("X-RateLimit-Reset")
            .and_then(|reset| reset.parse().ok())
            .expect("a numeric X-RateLimit-Reset");
        assert_eq!(reset % 3600, 0, "the window ends on the hour");
        let retry_after: u64 = refused
            .header("Retry-After")
            .and_then(|secs| secs.parse().ok())
            .expect("a numeric Retry-After");
        let now = epoch_now();
        assert!(
            (1..=3600).contains(&retry_after) && reset.abs_diff(now + retry_after) <= 2,
            "Retry-After {retry_after} s, reset {reset}, now {now}"
        );
        assert_eq!(refused.header("X-RateLimit-Remaining"), Some("0"));
        assert_eq!(gateway.log.head(), 2, "the refused create appended nothing");

        // Another token has a budget of its own.
        let admin = gateway.caller(ADMIN).list("").await;
        assert!(admin.is_success(), "{admin}");
        assert_eq!(admin.header("X-RateLimit-Remaining"), Some("2"));
        gateway.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producers_commands_past_its_budget_wait_for_the_next_window_and_all_apply() {
    bounded("the test", TEST_TIMEOUT, async {
        let limit = RateLimit {
            requests: 2,
            window_secs: 2,
        };
        let gateway = Gateway::start(Setup::open().rate_limit(limit)).await;
        let js = jetstream::new(gateway.client());
        eventually("CALL_COMMANDS", Duration::from_secs(30), || {
            let js = js.clone();
            async move { js.get_stream("CALL_COMMANDS").await.ok() }
        })
        .await;
        for n in 0..6 {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Producer", "dialer");
            headers.insert("Nats-Msg-Id", format!("dialer-{n}").as_str());
            let document = call_document(json!({ "note": format!("command {n}") }));
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
        // Two per 2-second window: all six within a few windows, none refused.
        eventually("all six commands applied", Duration::from_secs(60), || {
            let log = gateway.log.clone();
            async move { (log.head() == 6).then_some(()) }
        })
        .await;
        // At most two were applied in any one window.
        let mut per_window = std::collections::BTreeMap::<i64, u32>::new();
        for record in gateway.log.read_from(0, 10).expect("the log reads") {
            let event = Event::decode(
                record.position,
                record.stream,
                record.version,
                &record.payload,
            )
            .expect("an event");
            *per_window
                .entry(event.stored.recorded_at.millis() / 2000)
                .or_default() += 1;
        }
        assert!(
            per_window.len() >= 3 && per_window.values().all(|&n| n <= 2),
            "commands per 2-second window: {per_window:?}"
        );
        let rejected = match js.get_stream("CALL_REJECTED").await {
            Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
            Err(_) => 0,
        };
        assert_eq!(rejected, 0, "no command past the budget is refused");
        gateway.shutdown().await;
    })
    .await;
}
