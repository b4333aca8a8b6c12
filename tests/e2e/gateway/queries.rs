//! Reading over NATS: every filter form of both syntaxes, sort, the cursor walk with
//! `links.next` and `links.prev`, pages cut to the max payload, sparse fieldsets, and the
//! `provideAuthorizationMeta` and `provideDataConnections` flags.
//!
//! The filters are checked against a model: the calls are made from their index by known
//! rules, and each query's expected ids are the indexes the rule selects.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{
    bounded, call_document, id_of, Caller, Gateway, Setup, ADMIN, READER, TEST_TIMEOUT, VOICE,
    WRITER,
};

/// How many calls the fixture makes.
const CALLS: usize = 12;

const STATES: [&str; 3] = ["completed", "no_answer", "busy"];

fn direction(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "inbound"
    } else {
        "outbound"
    }
}

fn outcome(i: usize) -> Option<&'static str> {
    match i % 4 {
        0 => None,
        2 => Some("Not Answered"),
        _ => Some("Answered"),
    }
}

fn dialed_at(i: usize) -> String {
    format!("2024-01-{:02}T10:00:00Z", i + 1)
}

fn recording(i: usize) -> Option<String> {
    i.is_multiple_of(3)
        .then(|| format!("https://rec.example.com/{i}"))
}

fn note(i: usize) -> String {
    if i == 5 {
        "a,b..c".to_string()
    } else {
        format!("note {i}")
    }
}

fn tags(i: usize) -> Vec<&'static str> {
    if i.is_multiple_of(2) {
        vec!["Interested"]
    } else if i.is_multiple_of(3) {
        vec!["Callback"]
    } else {
        Vec::new()
    }
}

fn prospect(i: usize) -> Option<u64> {
    (i != 11).then(|| 100 + (i % 3) as u64)
}

/// Creates the fixture's calls (with the telephony token, so `state` may be set) and returns
/// their resource objects by index.
async fn seed(api: &Caller) -> Vec<Value> {
    let mut calls = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let mut attributes = json!({
            "direction": direction(i),
            "state": STATES[i % 3],
            "outcome": outcome(i),
            "dialedAt": dialed_at(i),
            "recordingUrl": recording(i),
            "note": note(i),
            "tags": tags(i),
            "shouldRecordCall": i.is_multiple_of(2),
            "from": format!("+1555010{i:02}"),
        });
        if outcome(i).is_none() {
            attributes["outcome"] = Value::Null;
        }
        let relationships = json!({
            "prospect": {"data": prospect(i).map(|id| json!({"type": "prospect", "id": id}))},
            "user": {"data": {"type": "user", "id": 7}},
        });
        let document = json!({"data": {"type": "call", "attributes": attributes,
                                       "relationships": relationships}});
        let reply = api.create(&[], &document).await;
        calls.push(reply.data());
    }
    calls
}

/// The ids of the fixture's calls whose index `keep` selects, in id order.
fn select(calls: &[Value], keep: impl Fn(usize) -> bool) -> Vec<u64> {
    (0..calls.len())
        .filter(|&i| keep(i))
        .map(|i| id_of(&calls[i]))
        .collect()
}

/// The ids of one page of up to 1000 rows; the query must not need another page.
async fn ids(api: &Caller, query: &str) -> Vec<u64> {
    let query = if query.is_empty() {
        "page[size]=1000".to_string()
    } else {
        format!("{query}&page[size]=1000")
    };
    let reply = api.list(&query).await;
    let ids = reply.ids();
    let document = reply.json();
    assert!(
        document.pointer("/links/next").is_none(),
        "{query}: a single page"
    );
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_form_of_both_syntaxes_selects_what_it_says() {
    bounded("the test", TEST_TIMEOUT, async {
        let gateway = Gateway::start(Setup::open().with_tokens()).await;
        let calls = seed(&gateway.caller(VOICE)).await;
        let api = gateway.caller(READER);
        let created = |i: usize| {
            calls[i]["attributes"]["createdAt"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let id = |i: usize| id_of(&calls[i]);
        let all = select(&calls, |_| true);
        assert_eq!(ids(&api, "").await, all);

        let only = |keep: &dyn Fn(usize) -> bool| select(&calls, keep);
        let (jan3, jan4, jan6) = (dialed_at(2), dialed_at(3), dialed_at(5));
        let cases: Vec<(String, Vec<u64>)> = vec![
            // Outreach's syntax: equality, any-of, ranges, nulls, relationship ids.
            ("filter[direction]=inbound".into(), only(&|i| i % 2 == 0)),
            (
                "filter%5Bdirection%5D=outbound".into(),
                only(&|i| i % 2 == 1),
            ),
            ("filter[state]=completed".into(), only(&|i| i % 3 == 0)),
            (
                "filter[state]=completed,no_answer".into(),
                only(&|i| i % 3 != 2),
            ),
            (
                "filter[outcome]=Not%20Answered".into(),
                only(&|i| outcome(i) == Some("Not Answered")),
            ),
            (
                "filter[outcome]=Not%20Answered,Answered".into(),
                only(&|i| outcome(i).is_some()),
            ),
            (
                "filter[outcome]=__null__".into(),
                only(&|i| outcome(i).is_none()),
            ),
            (
                "filter[recordingUrl]=__notnull__".into(),
                only(&|i| recording(i).is_some()),
            ),
            (
                "filter[recordingUrl]=__null__".into(),
                only(&|i| recording(i).is_none()),
            ),
            (
                format!("filter[recordingUrl]={}", recording(3).unwrap()),
                vec![id(3)],
            ),
            (
                "filter[dialedAt]=2024-01-04T00:00:00Z..inf".into(),
                only(&|i| i >= 3),
            ),
            (
                format!("filter[dialedAt]=neginf..{jan4}"),
                only(&|i| i <= 3),
            ),
            (
                format!("filter[dialedAt]={jan3}..{jan6}"),
                only(&|i| (2..=5).contains(&i)),
            ),
            // An offset's `+` sent as %2B: 11:00+01:00 is 10:00Z.
            (
                format!("filter[dialedAt]=2024-01-03T11:00:00%2B01:00..{jan3}"),
                vec![id(2)],
            ),
            (
                format!("filter[createdAt]={}..inf", created(5)),
                only(&|i| i >= 5),
            ),
            (
                format!("filter[createdAt]=neginf..{}", created(5)),
                only(&|i| i <= 5),
            ),
            (
                format!("filter[updatedAt]={}..{}", created(2), created(4)),
                only(&|i| (2..=4).contains(&i)),
            ),
            (
                format!("filter[id]={}..{}", id(3), id(6)),
                only(&|i| (3..=6).contains(&i)),
            ),
            (
                format!("filter[id]={},{}", id(1), id(9)),
                vec![id(1), id(9)],
            ),
            (
                "filter[prospect][id]=100,101".into(),
                only(&|i| matches!(prospect(i), Some(100 | 101))),
            ),
            ("filter[prospect][id]=__null__".into(), vec![id(11)]),
            (
                "filter[prospect][id]=__notnull__".into(),
                only(&|i| i != 11),
            ),
            ("filter[user][id]=7".into(), all.clone()),
            ("filter[user][id]=8".into(), Vec::new()),
            (
                "filter[tags]=Interested".into(),
                only(&|i| tags(i).contains(&"Interested")),
            ),
            (
                "filter[tags]=Interested,Callback".into(),
                only(&|i| !tags(i).is_empty()),
            ),
            (
                "filter[shouldRecordCall]=true".into(),
                only(&|i| i % 2 == 0),
            ),
            ("filter[note]=note%204".into(), vec![id(4)]),
            ("filter[from]=%2B155501007".into(), vec![id(7)]),
            // A `+` as typed is a plus (not a space), for phone numbers as for offsets.
            ("filter[from]=+155501007".into(), vec![id(7)]),
            (
                format!("filter[dialedAt]=2024-01-03T11:00:00+01:00..{jan3}"),
                vec![id(2)],
            ),
            // Filters combine with AND.
            (
                "filter[direction]=inbound&filter[state]=completed".into(),
                only(&|i| i % 6 == 0),
            ),
            (
                format!(
                    "filter[direction]=outbound&filter[outcome]=Answered\
                     &filter[dialedAt]={jan4}..inf"
                ),
                only(&|i| i % 2 == 1 && i >= 3),
            ),
            // The new syntax: arrays, bounds, and values with `,` and `..`.
            (
                "newFilterSyntax=true&filter[note]=a,b..c".into(),
                vec![id(5)],
            ),
            (
                "filter[note]=a,b..c&newFilterSyntax=true".into(),
                vec![id(5)],
            ),
            (
                "newFilterSyntax=true&filter[state][]=completed&filter[state][]=no_answer".into(),
                only(&|i| i % 3 != 2),
            ),
            (
                "newFilterSyntax=true&filter[prospect][id][]=100&filter[prospect][id][]=102".into(),
                only(&|i| matches!(prospect(i), Some(100 | 102))),
            ),
            (
                format!(
                    "newFilterSyntax=true&filter[dialedAt][gte]={jan3}\
                     &filter[dialedAt][lte]={jan6}"
                ),
                only(&|i| (2..=5).contains(&i)),
            ),
            (
                format!(
                    "newFilterSyntax=true&filter[dialedAt][gte]={}",
                    dialed_at(9)
                ),
                only(&|i| i >= 9),
            ),
            (
                format!("newFilterSyntax=true&filter[updatedAt][lte]={}", created(1)),
                only(&|i| i <= 1),
            ),
            (
                format!(
                    "newFilterSyntax=true&filter[id][gte]={}&filter[id][lte]={}",
                    id(10),
                    id(11)
                ),
                vec![id(10), id(11)],
            ),
            (
                "newFilterSyntax=true&filter[recordingUrl]=__null__".into(),
                only(&|i| recording(i).is_none()),
            ),
            (
                "newFilterSyntax=false&filter[state]=busy".into(),
                only(&|i| i % 3 == 2),
            ),
        ];
        for (query, expected) in &cases {
            assert_eq!(&ids(&api, query).await, expected, "{query}");
        }

        // Each filter target takes one form; a form not offered names its parameter.
        let mixed =
            format!("newFilterSyntax=true&filter[dialedAt][]={jan3}&filter[dialedAt][gte]={jan3}");
        for (query, parameter) in [
            (
                "newFilterSyntax=true&filter[state]=busy&filter[state][]=completed",
                "filter[state][]",
            ),
            (mixed.as_str(), "filter[dialedAt][gte]"),
            ("filter[state][]=completed", "filter[state][]"),
            ("filter[note]=a..b&filter[note]=c", "filter[note]"),
            ("filter[dialedAt]=yesterday..inf", "filter[dialedAt]"),
            ("filter[id]=__null__", "filter[id]"),
            ("filter[associatedId][id]=1", "filter[associatedId][id]"),
            ("filter[prospect][id]=x", "filter[prospect][id]"),
            ("filter[shouldRecordCall]=maybe", "filter[shouldRecordCall]"),
            (
                "newFilterSyntax=true&filter[state][gte]=a",
                "filter[state][gte]",
            ),
        ] {
            let reply = api.list(query).await;
            let errors = reply.assert_error(400, "Bad Request");
            assert_eq!(
                errors[0]["source"],
                json!({"parameter": parameter}),
                "{query}: {reply}"
            );
        }
        gateway.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_orders_by_each_key_and_breaks_ties_by_id() {
    bounded("the test", TEST_TIMEOUT, async {
        let gateway = Gateway::start(Setup::open().with_tokens()).await;
        let calls = seed(&gateway.caller(VOICE)).await;
        let api = gateway.caller(READER);
        let order = |mut indexes: Vec<usize>| -> Vec<u64> {
            indexes.drain(..).map(|i| id_of(&calls[i])).collect()
        };
        let by = |key: &dyn Fn(usize) -> (Option<String>, i64)| -> Vec<u64> {
            let mut indexes: Vec<usize> = (0..CALLS).collect();
            indexes.sort_by_key(|&i| key(i));
            order(indexes)
        };
        let forward: Vec<usize> = (0..CALLS).collect();
        let backward: Vec<usize> = (0..CALLS).rev().collect();

        assert_eq!(ids(&api, "").await, order(forward.clone()), "default: id");
        assert_eq!(ids(&api, "sort=id").await, order(forward.clone()));
        assert_eq!(ids(&api, "sort=-id").await, order(backward.clone()));
        assert_eq!(
            ids(&api, "sort=-createdAt,id").await,
            order(backward.clone())
        );
        assert_eq!(ids(&api, "sort=createdAt").await, order(forward.clone()));
        assert_eq!(ids(&api, "sort=-updatedAt").await, order(backward.clone()));
        assert_eq!(ids(&api, "sort=-dialedAt").await, order(backward.clone()));
        assert_eq!(ids(&api, "sort=from").await, order(forward.clone()));
        // Ties on the state are broken by the id, ascending unless asked otherwise.
        assert_eq!(
            ids(&api, "sort=state").await,
            by(&|i| (Some(STATES[i % 3].to_string()), i as i64))
        );
        assert_eq!(
            ids(&api, "sort=state,-id").await,
            by(&|i| (Some(STATES[i % 3].to_string()), -(i as i64)))
        );
        // Nulls come first ascending, last descending.
        assert_eq!(
            ids(&api, "sort=outcome").await,
            by(&|i| (outcome(i).map(str::to_string), i as i64))
        );
        let mut descending = by(&|i| (outcome(i).map(str::to_string), -(i as i64)));
        descending.reverse();
        assert_eq!(ids(&api, "sort=-outcome,id").await, descending);
        // Without an explicit `id`, the id breaks ties in the direction of the last key.
        let mut descending = by(&|i| (recording(i), i as i64));
        descending.reverse();
        assert_eq!(ids(&api, "sort=-recordingUrl").await, descending);
        let mut descending = by(&|i| (Some(STATES[i % 3].to_string()), i as i64));
        descending.reverse();
        assert_eq!(ids(&api, "sort=-state").await, descending);
        // Sorting and filtering together.
        assert_eq!(
            ids(&api, "filter[direction]=inbound&sort=-dialedAt").await,
            order(
                backward
                    .iter()
                    .copied()
                    .filter(|i| i.is_multiple_of(2))
                    .collect()
            )
        );
        for (query, parameter) in [
            ("sort=note", "sort"),
            ("sort=tags", "sort"),
            ("sort=", "sort"),
        ] {
            let reply = api.list(query).await;
            let errors = reply.assert_error(400, "Bad Request");
            assert_eq!(
                errors[0]["source"],
                json!({"parameter": parameter}),
                "{query}"
            );
        }
        gateway.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cursor_walk_follows_links_next_and_links_prev() {
    bounded("the test", TEST_TIMEOUT, async {
        let gateway = Gateway::start(Setup::open().with_tokens()).await;
        let calls = seed(&gateway.caller(VOICE)).await;
        let api = gateway.caller(READER);
        let expected: Vec<u64> = (0..CALLS).rev().map(|i| id_of(&calls[i])).collect();

        // Forward with links.next until it is absent.
        let query = "filter[user][id]=7&sort=-dialedAt&page[size]=5&count=true";
        let mut pages: Vec<(String, Value)> = Vec::new();
        let mut next = Some(query.to_string());
        while let Some(query) = next.take() {
            assert!(pages.len() < 10, "the walk does not end");
            let reply = api.list(&query).await;
            assert!(reply.is_success(), "{query}: {reply}");
            let document = reply.json();
            assert_eq!(document["meta"], json!({"count": CALLS}), "{reply}");
            assert_eq!(
                document["links"]["first"],
                query.split("&page[after]").next().unwrap()
            );
            next = document["links"]["next"].as_str().map(str::to_string);
            pages.push((query, document));
        }
        let walked: Vec<u64> = pages
            .iter()
            .flat_map(|(_, page)| page["data"].as_array().unwrap().iter().map(id_of))
            .collect();
        assert_eq!(walked, expected, "every row once, in order");
        let sizes: Vec<usize> = pages
            .iter()
            .map(|(_, page)| page["data"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, vec![5, 5, 2]);
        assert!(
            pages[0].1["links"].get("prev").is_none(),
            "nothing precedes"
        );
        assert_eq!(
            pages[0].1["links"]["first"], query,
            "links carry every parameter"
        );

        // Backward with links.prev: each previous page again, exactly.
        for n in (1..pages.len()).rev() {
            let prev = pages[n].1["links"]["prev"]
                .as_str()
                .unwrap_or_else(|| panic!("page {n} has links.prev"));
            assert!(prev.contains("page[before]="), "{prev}");
            let reply = api.list(prev).await;
            assert_eq!(reply.json()["data"], pages[n - 1].1["data"], "{prev}");
        }

        // A cursor belongs to its query: another sort or filter is refused.
        let next = pages[0].1["links"]["next"].as_str().unwrap();
        let cursor = next.split("page[after]=").nth(1).unwrap();
        let reply = api
            .list(&format!("sort=dialedAt&page[size]=5&page[after]={cursor}"))
            .await;
        let errors = reply.assert_error(400, "Bad Request");
        assert_eq!(errors[0]["source"], json!({"parameter": "page[after]"}));
        let reply = api
            .list(&format!(
                "{query}&page[after]={cursor}&page[before]={cursor}"
            ))
            .await;
        reply.assert_error(400, "Bad Request");

        // Cursors are exclusive: an incremental sync by time never repeats a row, and a call
        // changed after the walk started shows up again at its new place.
        let since = calls[4]["attributes"]["updatedAt"].as_str().unwrap();
        let sync = format!("filter[updatedAt]={since}..inf&sort=updatedAt&page[size]=3");
        let first = api.list(&sync).await.json();
        let first_ids: Vec<u64> = first["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(id_of)
            .collect();
        assert_eq!(
            first_ids,
            (4..7).map(|i| id_of(&calls[i])).collect::<Vec<_>>()
        );
        let touched = id_of(&calls[5]);
        let reply = gateway
            .caller(WRITER)
            .update(touched, &[], &call_document(json!({"note": "touched"})))
            .await;
        assert!(reply.is_success(), "{reply}");
        let mut rest = Vec::new();
        let mut next = first["links"]["next"].as_str().map(str::to_string);
        while let Some(query) = next.take() {
            let page = api.list(&query).await.json();
            rest.extend(page["data"].as_array().unwrap().iter().map(id_of));
            next = page["links"]["next"].as_str().map(str::to_string);
        }
        let mut expected_rest: Vec<u64> = (7..CALLS).map(|i| id_of(&calls[i])).collect();
        expected_rest.push(touched);
        assert_eq!(rest, expected_rest);

        // No rows: no links, unless a cursor was sent.
        let empty = api.list("filter[user][id]=8").await.json();
        assert_eq!(empty["data"], json!([]));
        assert!(empty.get("links").is_none(), "{empty}");
        gateway.shutdown().await;
    })
    .await;
}

/// `page[size]=1000` always works: a page is cut short to fit the max payload (64 KiB here),
/// and `links.next` continues right after the last row included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_is_cut_to_the_max_payload_and_continues() {
    bounded("the test", TEST_TIMEOUT, async {
        let max_payload = 64 * 1024;
        let gateway = Gateway::start(Setup::open().max_payload(max_payload)).await;
        let api = gateway.anonymous();
        let mut expected = Vec::new();
        for n in 0..12 {
            let call = api
                .create_call(json!({
                    "externalVendor": "big",
                    "note": format!("{n:05}{}", "n".repeat(15_000)),
                }))
                .await;
            expected.push(id_of(&call));
        }
        api.create_call(json!({"externalVendor": "small"})).await;

        let mut next = Some("filter[externalVendor]=big&page[size]=1000".to_string());
        let mut walked = Vec::new();
        let mut pages = 0;
        while let Some(query) = next.take() {
            pages += 1;
            assert!(pages <= 12, "the walk does not end");
            let reply = api.list(&query).await;
            assert!(reply.is_success(), "{query}: {reply}");
            assert!(
                reply.payload.len() <= max_payload,
                "a page of {} bytes",
                reply.payload.len()
            );
            let document = reply.json();
            let rows = document["data"].as_array().unwrap();
            assert!(!rows.is_empty(), "every page holds a row");
            walked.extend(rows.iter().map(id_of));
            next = document["links"]["next"].as_str().map(str::to_string);
        }
        assert!(pages >= 3, "12 notes of 15 KB do not fit one 64 KiB page");
        assert_eq!(walked, expected);

        // The changes feed is cut the same way and says there is more.
        let changes = api.changes("after=0&limit=1000").await;
        assert!(changes.payload.len() <= max_payload);
        let document = changes.json();
        assert_eq!(
            document["meta"]["more"],
            json!(true),
            "{}",
            document["meta"]
        );
        gateway.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_fieldsets_and_both_meta_flags() {
    bounded("the test", TEST_TIMEOUT, async {
        let gateway = Gateway::start(Setup::open().with_tokens()).await;
        let writer = gateway.caller(WRITER);
        let connections = json!([
            {"connection": "salesforce", "type": "Task", "id": "00T5e00000AbCdE",
             "url": "https://example.my.salesforce.com/00T5e00000AbCdE"},
            {"connection": "hubspot", "type": null, "id": "42", "url": null}
        ]);
        let document = json!({"data": {"type": "call",
            "attributes": {"direction": "outbound", "to": "+15550199", "note": "n"},
            "relationships": {"prospect": {"data": {"type": "prospect", "id": 42}}},
            "meta": {"dataConnections": connections}}});
        let connected = writer.create(&[], &document).await.data();
        let id = id_of(&connected);
        assert!(connected.get("meta").is_none(), "{connected}");
        let plain = id_of(&writer.create_call(json!({"direction": "inbound"})).await);

        // Sparse fieldsets: only the named attributes and relationships, on get and list.
        let keys = |value: &Value| -> BTreeSet<String> {
            value
                .as_object()
                .expect("an object")
                .keys()
                .cloned()
                .collect()
        };
        let names =
            |list: &[&str]| -> BTreeSet<String> { list.iter().map(|s| s.to_string()).collect() };
        let sparse = writer
            .get(id, "fields[call]=state,to,prospect")
            .await
            .data();
        assert_eq!(keys(&sparse["attributes"]), names(&["state", "to"]));
        assert_eq!(keys(&sparse["relationships"]), names(&["prospect"]));
        assert_eq!(sparse["attributes"]["to"], "+15550199");
        assert_eq!(sparse["links"]["self"], format!("calls.api.get.{id}"));
        let listed = writer
            .list("fields[call]=direction&filter[id]=1..1000")
            .await
            .data();
        for row in listed.as_array().unwrap() {
            assert_eq!(keys(&row["attributes"]), names(&["direction"]));
            assert_eq!(row["relationships"], json!({}));
        }
        let none = writer.get(id, "fields[call]=").await.data();
        assert_eq!(none["attributes"], json!({}));
        assert_eq!(none["relationships"], json!({}));
        assert_eq!(none["id"], json!(id));

        // provideAuthorizationMeta: what the caller's token may do.
        for (token, can_write, can_delete) in [
            (READER, false, false),
            (WRITER, true, false),
            (ADMIN, true, true),
        ] {
            let caller = gateway.caller(token);
            let got = caller.get(id, "provideAuthorizationMeta=true").await.data();
            assert_eq!(
                got["meta"],
                json!({"canWrite": can_write, "canDelete": can_delete}),
                "{token}"
            );
            let listed = caller.list("provideAuthorizationMeta=true").await.data();
            for row in listed.as_array().unwrap() {
                assert_eq!(row["meta"], got["meta"], "{token}");
            }
            let changes = caller
                .changes("after=0&provideAuthorizationMeta=true")
                .await
                .data();
            for row in changes.as_array().unwrap() {
                assert_eq!(row["meta"], got["meta"], "{token}");
            }
        }

        // provideDataConnections: the call's list, empty for a call without.
        let got = writer.get(id, "provideDataConnections=true").await.data();
        assert_eq!(got["meta"], json!({"dataConnections": connections}));
        let got = writer
            .get(plain, "provideDataConnections=true")
            .await
            .data();
        assert_eq!(got["meta"], json!({"dataConnections": []}));
        let both = writer
            .get(
                id,
                "fields[call]=note&provideAuthorizationMeta=true&provideDataConnections=true",
            )
            .await
            .data();
        assert_eq!(keys(&both["attributes"]), names(&["note"]));
        assert_eq!(
            both["meta"],
            json!({"canWrite": true, "canDelete": false, "dataConnections": connections})
        );
        let listed = writer
            .list("provideDataConnections=true&sort=-id")
            .await
            .data();
        assert_eq!(listed[0]["meta"], json!({"dataConnections": []}));
        assert_eq!(listed[1]["meta"], json!({"dataConnections": connections}));
        let flags_off = writer
            .get(
                id,
                "provideAuthorizationMeta=false&provideDataConnections=false",
            )
            .await
            .data();
        assert!(flags_off.get("meta").is_none(), "{flags_off}");

        // Changing only the data connections is a change: a new version and updatedAt.
        let cleared = writer
            .update(
                id,
                &[("If-Match", "1")],
                &json!({"data": {"type": "call", "meta": {"dataConnections": null}}}),
            )
            .await;
        assert_eq!(cleared.etag(), 2);
        let got = writer.get(id, "provideDataConnections=true").await.data();
        assert_eq!(got["meta"], json!({"dataConnections": []}));
        assert!(
            got["attributes"]["updatedAt"].as_str() > connected["attributes"]["updatedAt"].as_str()
        );

        let reply = writer.get(id, "provideDataConnections=yes").await;
        let errors = reply.assert_error(400, "Bad Request");
        assert_eq!(
            errors[0]["source"],
            json!({"parameter": "provideDataConnections"})
        );
        gateway.shutdown().await;
    })
    .await;
}
