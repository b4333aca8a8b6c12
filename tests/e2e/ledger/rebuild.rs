//! A rebuild replays the whole log into the view the live projection built one batch at a time:
//! after a few thousand creates, updates (state changes among them) and deletes, every `get` and
//! the full list are the same before and after `rebuild`, `verify` finds no difference, and the
//! changes feed from position 0 reports every live call once and every deleted call. A second
//! rebuild runs while a writer appends and reads its own writes, and the view is still complete.

use std::collections::BTreeSet;

use call_model::CallId;
use serde_json::json;

use super::{
    assert_verified, at, check_log, create, delete, execute_all, snapshot, update, Ledger, Rng,
};

const CALLS: usize = 2000;
const UPDATES: usize = 800;
const DELETES: usize = 250;
const WRITERS: usize = 8;

#[test]
fn rebuild_equals_live_after_creates_updates_and_deletes() {
    let mut rng = Rng::seeded("rebuild_equals_live_after_creates_updates_and_deletes");
    let data = tempfile::tempdir().expect("a temporary data directory");
    let ledger = Ledger::open(data.path());

    let creates = (0..CALLS)
        .map(|n| {
            let direction = *rng.pick(&["inbound", "outbound"]);
            let outcome = *rng.pick(&["Answered", "Not Answered"]);
            let attributes = json!({
                "direction": direction,
                "outcome": outcome,
                "state": "ringing",
                "from": format!("+1555{:07}", rng.range(0, 10_000_000)),
                "dialedAt": at(rng.range(0, 100_000) as i64).to_string(),
                "tags": [*rng.pick(&["Interested", "Meeting Booked", "Follow up"])],
                "note": format!("imported call {n}"),
            });
            create(attributes, at(n as i64))
        })
        .collect();
    let created = execute_all(&ledger.commands, creates, WRITERS);
    let ids: Vec<CallId> = created.iter().map(|outcome| outcome.call_id).collect();
    let max_id = *ids.iter().max().expect("calls were created");

    // Updates: each call at most once here, so no two writers race on one call.
    let mut targets: Vec<CallId> = ids.clone();
    for i in (1..targets.len()).rev() {
        targets.swap(i, rng.range(0, i as u64 + 1) as usize);
    }
    let updates = targets[..UPDATES]
        .iter()
        .enumerate()
        .map(|(n, id)| {
            let state = *rng.pick(&["answered", "completed"]);
            let attributes = if n % 3 == 0 {
                json!({"note": null, "outcome": "Answered"})
            } else {
                json!({"state": state, "completedAt": at(100_000 + n as i64).to_string()})
            };
            update(*id, attributes, at((CALLS + n) as i64))
        })
        .collect();
    execute_all(&ledger.commands, updates, WRITERS);
    // Deletes: some of the updated calls, some untouched ones.
    let deleted: BTreeSet<CallId> = targets[UPDATES / 2..UPDATES / 2 + DELETES]
        .iter()
        .copied()
        .collect();
    let deletes = deleted
        .iter()
        .map(|id| delete(*id, at((CALLS + UPDATES) as i64)))
        .collect();
    execute_all(&ledger.commands, deletes, WRITERS);

    let streams = check_log(&ledger.log);
    assert_eq!(streams.len(), CALLS, "one stream per call");
    assert_eq!(
        ledger.log.head() as usize,
        CALLS + UPDATES + DELETES,
        "every command appended one event"
    );
    ledger
        .projection
        .wait_for(ledger.log.head())
        .expect("catch up");

    let live = snapshot(&ledger.projection, max_id);
    let listed: BTreeSet<CallId> = live.1.iter().map(|call| call.id).collect();
    let expected: BTreeSet<CallId> = ids
        .iter()
        .filter(|id| !deleted.contains(id))
        .copied()
        .collect();
    assert_eq!(listed, expected, "the list holds every live call");
    for id in &ids {
        let folded = ledger.commands.load(*id).expect("load").live().cloned();
        assert_eq!(
            live.0[*id as usize - 1],
            folded,
            "the projection of call {id}"
        );
    }

    assert_verified(&ledger.projection, data.path());
    let mut progress_calls = 0;
    let report = ledger
        .projection
        .rebuild(&mut |_applied, _head| progress_calls += 1)
        .expect("rebuild");
    assert_eq!(
        report.events,
        ledger.log.head(),
        "the rebuild replayed every event"
    );
    assert_eq!(
        report.calls as usize,
        expected.len(),
        "the rebuild counts live calls"
    );
    assert!(progress_calls > 0, "the rebuild reports progress");
    assert_eq!(
        snapshot(&ledger.projection, max_id),
        live,
        "rebuilt equals live"
    );
    assert_verified(&ledger.projection, data.path());

    // The changes feed from the beginning: every live call once, as it is now; every deletion.
    let mut after = 0;
    let mut changed: Vec<CallId> = Vec::new();
    let mut gone: Vec<CallId> = Vec::new();
    loop {
        let page = ledger.projection.changes(after, 300).expect("changes");
        assert!(page.next_after >= after, "the feed moves forward");
        for call in &page.calls {
            assert_eq!(
                Some(call),
                live.0[call.id as usize - 1].as_ref(),
                "changed call {}",
                call.id
            );
            changed.push(call.id);
        }
        let mut last_position = after;
        for deletion in &page.deleted {
            assert!(
                deletion.position > last_position,
                "deletions come in log order"
            );
            last_position = deletion.position;
            gone.push(deletion.id);
        }
        after = page.next_after;
        if !page.more {
            break;
        }
    }
    assert_eq!(after, ledger.log.head(), "the feed ends at the head");
    let changed_set: BTreeSet<CallId> = changed.iter().copied().collect();
    assert_eq!(
        changed_set.len(),
        changed.len(),
        "a live call appears once in the feed"
    );
    assert_eq!(changed_set, expected, "the feed reports every live call");
    let gone_set: BTreeSet<CallId> = gone.iter().copied().collect();
    assert_eq!(gone_set, deleted, "the feed reports every deleted call");

    // A rebuild while writers append and read their writes: afterwards the view is complete.
    let more: Vec<_> = (0..200)
        .map(|n| {
            let recorded_at = at((CALLS + UPDATES + 1 + n) as i64);
            if n % 2 == 0 {
                create(
                    json!({"direction": "inbound", "note": format!("late {n}")}),
                    recorded_at,
                )
            } else {
                let id = *rng.pick(&expected.iter().copied().collect::<Vec<_>>());
                update(id, json!({"note": format!("late {n}")}), recorded_at)
            }
        })
        .collect();
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for request in more {
                let outcome = ledger.execute(request).expect("a write during the rebuild");
                let shown = ledger.projection.get(outcome.call_id).expect("get");
                assert_eq!(
                    shown.map(|call| call.version),
                    Some(outcome.version),
                    "read-your-writes during a rebuild"
                );
            }
        });
        ledger
            .projection
            .rebuild(&mut |_, _| {})
            .expect("a rebuild during writes");
        writer.join().expect("the writer thread");
    });
    ledger
        .projection
        .wait_for(ledger.log.head())
        .expect("catch up");
    check_log(&ledger.log);
    assert_verified(&ledger.projection, data.path());
    let max_id = ledger.log.stats().expect("stats").streams;
    for id in 1..=max_id {
        let folded = ledger.commands.load(id).expect("load").live().cloned();
        assert_eq!(
            ledger.projection.get(id).expect("get"),
            folded,
            "call {id} after the rebuild"
        );
    }
}
