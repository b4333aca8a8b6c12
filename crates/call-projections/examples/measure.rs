//! Temporary measurement (not committed).
use call_model::{Changes, Event, EventBody, Field, Relation, Timestamp};
use call_projections::*;
use event_log::{Append, Durability, EventLog, ExpectedVersion, LogOptions, StreamTarget};
use std::time::Instant;

fn rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<f64>()
        .unwrap()
        / 1024.0
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap())
        .unwrap_or(100_000);
    let dir = std::env::args()
        .nth(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("measure-{n}")));
    let fresh = !dir.exists();
    let log = EventLog::open(
        &dir.join("log"),
        LogOptions {
            durability: Durability::Buffered,
        },
    )
    .unwrap();
    if fresh {
        let template = Event::decode(1, 1, 1, br#"{"schemaVersion":1,"type":"CallDeleted","eventId":"0190a6b2-7c1e-7000-8000-000000000000","idempotencyKey":null,"occurredAt":"2025-01-13T12:00:00.000Z","recordedAt":"2025-01-13T12:00:00.000Z","actor":"bench","data":{}}"#).unwrap().stored;
        let started = Instant::now();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let log = log.clone();
                let template = template.clone();
                s.spawn(move || {
                    for i in (t..n).step_by(4) {
                        let at = Timestamp::from_millis(1_736_769_600_000 + i as i64 * 1000);
                        let members = serde_json::json!({"attributes": {
                            "direction": if i % 2 == 0 {"inbound"} else {"outbound"},
                            "from": format!("+1555{:07}", i % 50_000), "to": format!("+4420{:07}", i),
                            "note": "called about the renewal; follow up next week", "tags": ["Interested"],
                            "dialedAt": at.to_string(), "state": (["completed", "no-answer", "ringing"][(i % 3) as usize]),
                            "outcome": if i % 3 == 0 {"Answered"} else {"Not Answered"}, "userCallType": "voip",
                            "externalVendor": "twilio", "shouldRecordCall": true
                        }, "relationships": {"prospect": {"type": "prospect", "id": i % 5000}, "user": {"type": "user", "id": i % 50}}});
                        let event = call_model::StoredEvent { occurred_at: at, recorded_at: at, body: EventBody::CallCreated(Changes::from_json(&members).unwrap()), ..template.clone() };
                        log.append(Append { stream: StreamTarget::New, expected: ExpectedVersion::Any, idempotency: None, payloads: vec![event.encode()] }).unwrap();
                    }
                });
            }
        });
        log.flush().unwrap();
        eprintln!(
            "appended {n} events in {:.1}s; payload ~{} bytes",
            started.elapsed().as_secs_f64(),
            log.read_from(0, 1).unwrap()[0].payload.len()
        );
    }
    if std::env::args().any(|a| a == "--floor") {
        floor(&log);
        floor(&log);
        return;
    }
    let t = Instant::now();
    let raw = log.scan_raw().unwrap();
    eprintln!(
        "raw scan: {raw} rows in {:.3}s = {:.0} rows/s",
        t.elapsed().as_secs_f64(),
        raw as f64 / t.elapsed().as_secs_f64()
    );
    let rss0 = rss_mb();
    let t = Instant::now();
    let p = Projection::open(&dir.join("projection"), log.clone()).unwrap();
    eprintln!(
        "open (+catch-up if fresh): {:.2}s, rss {:.0} MB -> {:.0} MB",
        t.elapsed().as_secs_f64(),
        rss0,
        rss_mb()
    );
    if std::env::args().any(|a| a == "--rebuild") {
        let r = p.rebuild(&mut |_, _| {}).unwrap();
        eprintln!(
            "rebuild: {} events {} calls in {:.2}s = {:.0} events/s; rss {:.0} MB",
            r.events,
            r.calls,
            r.seconds,
            r.events as f64 / r.seconds,
            rss_mb()
        );
        if std::env::args().any(|a| a == "--only-rebuild") {
            return;
        }
        drop(p);
        let rss0 = rss_mb();
        let t = Instant::now();
        let p2 = Projection::open(&dir.join("projection"), log.clone()).unwrap();
        eprintln!(
            "reopen (index build from views): {:.2}s, rss {:.0} MB -> {:.0} MB",
            t.elapsed().as_secs_f64(),
            rss0,
            rss_mb()
        );
        run_queries(&p2);
        if std::env::args().any(|a| a == "--verify") {
            let t = Instant::now();
            let v = p2.verify(&dir.join("scratch")).unwrap();
            eprintln!(
                "verify: {:.2}s, {} differences",
                t.elapsed().as_secs_f64(),
                v.differences.len()
            );
        }
        return;
    }
    run_queries(&p);
}

fn run_queries(p: &Projection) {
    let t = Instant::now();
    for id in 1..=20_000u64 {
        std::hint::black_box(p.get(id).unwrap());
    }
    eprintln!(
        "get: {:.2} us per call",
        t.elapsed().as_secs_f64() * 1e6 / 20_000.0
    );
    let prospect = Filter {
        target: FilterTarget::Related(Relation::Prospect),
        condition: Condition::AnyOf(vec![FilterValue::Int(7)]),
    };
    let inbound = Filter {
        target: FilterTarget::Attr(Field::Direction),
        condition: Condition::AnyOf(vec![FilterValue::Text("inbound".into())]),
    };
    let state = Filter {
        target: FilterTarget::Attr(Field::State),
        condition: Condition::AnyOf(vec![FilterValue::Text("completed".into())]),
    };
    let newest = vec![SortKey {
        field: SortField::Attr(Field::CreatedAt),
        descending: true,
    }];
    let by_state = vec![
        SortKey {
            field: SortField::Attr(Field::State),
            descending: false,
        },
        SortKey {
            field: SortField::Attr(Field::DialedAt),
            descending: true,
        },
    ];
    let cases: Vec<(&str, Vec<Filter>, Vec<SortKey>)> = vec![
        ("no filter, id", vec![], vec![]),
        ("direction=inbound, id", vec![inbound.clone()], vec![]),
        ("prospect=7, id", vec![prospect.clone()], vec![]),
        (
            "prospect=7, -createdAt",
            vec![prospect.clone()],
            newest.clone(),
        ),
        (
            "direction=inbound, -createdAt",
            vec![inbound.clone()],
            newest.clone(),
        ),
        (
            "state=completed & inbound, -createdAt",
            vec![state.clone(), inbound.clone()],
            newest.clone(),
        ),
        ("no filter, state,-dialedAt", vec![], by_state.clone()),
    ];
    for (name, filters, sort) in cases {
        let mut q = ListQuery {
            filters,
            sort,
            page_size: 50,
            cursor: None,
            count: false,
        };
        let first = p.list(&q).unwrap();
        let runs = 200;
        let t = Instant::now();
        for _ in 0..runs {
            std::hint::black_box(p.list(&q).unwrap());
        }
        let first_us = t.elapsed().as_secs_f64() * 1e6 / runs as f64;
        // A page from the middle: page 3 via cursor.
        let mut page = first.clone();
        for _ in 0..2 {
            if let Some(last) = page.calls.last() {
                q.cursor = Some(PageCursor::After(p.cursor_for(&q, last)));
                page = p.list(&q).unwrap();
            }
        }
        let t = Instant::now();
        for _ in 0..runs {
            std::hint::black_box(p.list(&q).unwrap());
        }
        let next_us = t.elapsed().as_secs_f64() * 1e6 / runs as f64;
        eprintln!(
            "{name:40} rows {:3} first page {:8.0} us, third page {:8.0} us",
            first.calls.len(),
            first_us,
            next_us
        );
    }
    let t = Instant::now();
    let c = p.changes(0, 1000).unwrap();
    eprintln!(
        "changes(0, 1000): {} calls in {:.0} us",
        c.calls.len(),
        t.elapsed().as_secs_f64() * 1e6
    );
}

#[allow(dead_code)]
pub fn floor(log: &EventLog) {
    let records = log.read_from(0, 16384).unwrap();
    let t = Instant::now();
    let events: Vec<Event> = records
        .iter()
        .map(|r| Event::decode(r.position, r.stream, r.version, &r.payload).unwrap())
        .collect();
    let d = t.elapsed();
    let t = Instant::now();
    let calls: Vec<call_model::Call> = events
        .iter()
        .map(
            |e| match call_model::evolve(call_model::CallState::Absent, e) {
                call_model::CallState::Live(c) => c,
                _ => unreachable!(),
            },
        )
        .collect();
    let ev = t.elapsed();
    let t = Instant::now();
    let bytes: Vec<Vec<u8>> = calls
        .iter()
        .map(|c| serde_json::to_vec(&c.to_stored_json()).unwrap())
        .collect();
    let en = t.elapsed();
    let t = Instant::now();
    let back: Vec<call_model::Call> = bytes
        .iter()
        .map(|b| call_model::Call::from_stored_json(&serde_json::from_slice(b).unwrap()).unwrap())
        .collect();
    let de = t.elapsed();
    let db = sled::Config::new().temporary(true).open().unwrap();
    let t = Instant::now();
    let mut batch = sled::Batch::default();
    for (c, b) in calls.iter().zip(&bytes) {
        let mut k = vec![b'c'];
        k.extend_from_slice(&c.id.to_be_bytes());
        batch.insert(k, b.clone());
    }
    db.apply_batch(batch).unwrap();
    let ap = t.elapsed();
    let t = Instant::now();
    let mut batch = sled::Batch::default();
    for c in &calls {
        let mut k = vec![b'u'];
        k.extend_from_slice(&c.position.to_be_bytes());
        batch.insert(k, c.id.to_be_bytes().to_vec());
    }
    db.apply_batch(batch).unwrap();
    let ap2 = t.elapsed();
    let n = records.len() as f64;
    eprintln!("per event, one thread: decode {:.1}us evolve {:.1}us encode view {:.1}us decode view {:.1}us sled insert view {:.1}us sled insert small {:.1}us; view {} bytes",
        d.as_secs_f64()*1e6/n, ev.as_secs_f64()*1e6/n, en.as_secs_f64()*1e6/n, de.as_secs_f64()*1e6/n, ap.as_secs_f64()*1e6/n, ap2.as_secs_f64()*1e6/n, bytes[0].len());
    std::hint::black_box(back);
}
