//! Crash safety: a child process appends under concurrent load and is killed with SIGKILL at a
//! random moment, several rounds on the same data directory. After each kill every command the
//! child had acknowledged is in the log, the log has no gaps, and the projection (which the
//! child was also writing when it died) heals by catching up, and `verify` passes.
//!
//! The child is this same test binary, re-executed to run only [`crash_child`], which does
//! nothing unless [`CHILD_ENV`] names a data directory.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use call_model::CallId;
use serde_json::json;

use super::{assert_verified, at, check_log, create, update, Ledger, Rng};

/// Set (to the data directory) only in the child process.
const CHILD_ENV: &str = "CALL_LEDGER_CRASH_CHILD";
/// The child's test, as libtest names it.
const CHILD_TEST: &str = "ledger::crash::crash_child";
/// Writer threads in the child.
const WRITERS: u64 = 8;
/// Kill rounds on one data directory.
const ROUNDS: usize = 4;
/// How long the child appends if nobody kills it (the parent is gone or stuck).
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// How long the parent waits for the child's next line.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// The child: appends creates and updates on 8 threads and prints `ACK <call> <version>
/// <position>` (flushed) once each command is acknowledged, while a projector thread keeps the
/// projection caught up, until it is killed. Returns at once in an ordinary test run.
#[test]
fn crash_child() {
    let Some(data) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let ledger = Ledger::open_patiently(Path::new(&data));
    let existing = streams_of(&ledger.log);
    let seed = ledger.log.head();
    println!("READY {}", existing.len());
    let deadline = Instant::now() + CHILD_LIFETIME;
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                ledger
                    .projection
                    .catch_up()
                    .expect("the projection catches up");
                // Pacing, so that the projector leaves the cores to the writers.
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        for writer in 0..WRITERS {
            let (ledger, stop, existing) = (&ledger, &stop, &existing);
            scope.spawn(move || {
                let mut rng = Rng::new(seed * 31 + writer);
                let ack = |outcome: call_commands::CommandOutcome| {
                    let mut out = std::io::stdout().lock();
                    let line = format!(
                        "ACK {} {} {}\n",
                        outcome.call_id, outcome.version, outcome.position
                    );
                    // The parent is gone when stdout is closed: stop appending.
                    if out
                        .write_all(line.as_bytes())
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        stop.store(true, Ordering::Relaxed);
                    }
                };
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    n += 1;
                    let note = format!("writer {writer} command {n}");
                    let direction = *rng.pick(&["inbound", "outbound"]);
                    let request = create(
                        json!({"direction": direction, "note": note, "state": "ringing"}),
                        at(n as i64),
                    );
                    let created = ledger.commands.execute(request).expect("create");
                    let id = created.call_id;
                    ack(created);
                    for step in 0..rng.range(0, 4) {
                        // Some updates go to calls of earlier rounds, continuing their streams.
                        let target = if !existing.is_empty() && rng.chance(30) {
                            *rng.pick(existing)
                        } else {
                            id
                        };
                        let state = *rng.pick(&["answered", "completed", "ringing"]);
                        let attributes =
                            json!({"note": format!("{note} update {step}"), "state": state});
                        let request = update(target, attributes, at(n as i64 + 1 + step as i64));
                        match ledger.commands.execute(request) {
                            Ok(outcome) => ack(outcome),
                            // An older call may have moved its state on later: a conflict.
                            Err(call_commands::CommandError::Conflict(_)) => {}
                            Err(error) => panic!("update of {target}: {error:?}"),
                        }
                    }
                }
            });
        }
    });
}

/// The id of every stream in `log`, from its first records.
fn streams_of(log: &event_log::EventLog) -> Vec<u64> {
    let mut streams = Vec::new();
    let mut after = 0;
    loop {
        let page = log.read_from(after, 10_000).expect("read the log");
        let Some(last) = page.last() else {
            return streams;
        };
        after = last.position;
        streams.extend(page.iter().filter(|r| r.version == 1).map(|r| r.stream));
    }
}

/// One acknowledged command.
#[derive(Clone, Copy, Debug)]
struct Ack {
    call: CallId,
    version: u64,
    position: u64,
}

fn parse_ack(line: &str) -> Option<Ack> {
    // libtest may print its own text before the first line of the test's output.
    let rest = &line[line.find("ACK ")? + 4..];
    let mut numbers = rest.split_whitespace().map(|n| n.parse::<u64>().ok());
    Some(Ack {
        call: numbers.next()??,
        version: numbers.next()??,
        position: numbers.next()??,
    })
}

/// Runs the child until it has acknowledged `kill_after` commands, kills it with SIGKILL and
/// returns every command it acknowledged (also those still in the pipe).
fn run_and_kill(data: &Path, kill_after: usize) -> Vec<Ack> {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child");
    let stdout = child.stdout.take().expect("the child's stdout");
    let mut stderr = child.stderr.take().expect("the child's stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acks = Vec::new();
    let mut output = Vec::new();
    let mut ready = false;
    while acks.len() < kill_after {
        match lines.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => {
                ready |= line.contains("READY ");
                if let Some(ack) = parse_ack(&line) {
                    acks.push(ack);
                } else {
                    output.push(line);
                }
            }
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the child stopped after {} acknowledgements ({why:?}; ready: {ready})\n\
                     stdout:\n{}\nstderr:\n{}",
                    acks.len(),
                    output.join("\n"),
                    stderr.join().unwrap_or_default()
                );
            }
        }
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    assert!(
        !status.success(),
        "the child was killed, not finished: {status}"
    );
    // Lines the child wrote before it died were acknowledged too.
    acks.extend(lines.iter().filter_map(|line| parse_ack(&line)));
    acks
}

#[test]
fn acknowledged_appends_survive_sigkill_under_load() {
    let started = Instant::now();
    let data = tempfile::tempdir().expect("a temporary data directory");
    let mut rng = Rng::seeded("acknowledged_appends_survive_sigkill_under_load");
    let mut acknowledged: BTreeMap<(CallId, u64), u64> = BTreeMap::new();
    for round in 1..=ROUNDS {
        let kill_after = rng.range(50, 400) as usize;
        let acks = run_and_kill(data.path(), kill_after);
        for ack in &acks {
            let earlier = acknowledged.insert((ack.call, ack.version), ack.position);
            assert!(
                earlier.is_none_or(|position| position == ack.position),
                "round {round}: {ack:?} acknowledged twice at different positions"
            );
        }

        let ledger = Ledger::open(data.path());
        let streams = check_log(&ledger.log);
        for ((call, version), position) in &acknowledged {
            let record = streams
                .get(call)
                .and_then(|records| records.get(*version as usize - 1));
            assert!(
                record.is_some_and(|record| record.position == *position),
                "round {round}: acknowledged call {call} version {version} at position \
                 {position} is lost (the log holds {:?})",
                record.map(|record| (record.version, record.position))
            );
        }
        ledger
            .projection
            .catch_up()
            .expect("the projection catches up");
        for (call, version) in acknowledged.keys() {
            let shown = ledger.projection.get(*call).expect("get");
            let shown = shown.unwrap_or_else(|| panic!("round {round}: call {call} not projected"));
            assert!(
                shown.version >= *version,
                "round {round}: call {call} is behind"
            );
        }
        assert_verified(&ledger.projection, data.path());
        eprintln!(
            "round {round}: killed after {} acknowledgements (asked {kill_after}), log head {}, {:.1?}",
            acks.len(),
            ledger.log.head(),
            started.elapsed()
        );
    }
}
