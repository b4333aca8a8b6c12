//! The subcommands that work on a data directory directly, without the service: import,
//! export, rebuild, verify, stats, get and list (on a JetStream log of record they read the
//! stream too).

use crate::cli::ImportArgs;
use crate::ledger::{now, Ledger, Location};
use crate::out;
use anyhow::Context;
use call_api::{Api, ApiConfig, Operation, Request, Source};
use call_commands::{CommandError, CommandRequest};
use call_model::{
    check_write, Action, CallState, Command, JsonIn, Members, Rights, Violation, WriteMode,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{BufRead, BufWriter, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Instant;

/// A progress bar on a terminal, nothing elsewhere.
fn progress(total: Option<u64>, what: &str) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template = format!("{what} {{bar:40}} {{pos}}/{{len}} {{per_sec}} {{elapsed}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

/// A write's violations as the line `import` reports a skipped line with: each one's JSON
/// pointer and what was expected, separated by semicolons.
fn on_one_line(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.pointer, v.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A batch of input lines for the import's workers: their text in one string, and each line's
/// number (from 1) and place in it. One allocation a batch, freed by the worker that takes it:
/// a string a line was allocated here and freed on another thread, 100,000 times an import.
struct Lines {
    text: String,
    lines: Vec<(u64, std::ops::Range<usize>)>,
}

impl Lines {
    fn with_capacity(lines: usize, bytes: usize) -> Lines {
        Lines {
            text: String::with_capacity(bytes),
            lines: Vec::with_capacity(lines),
        }
    }

    fn push(&mut self, number: u64, line: &str) {
        let start = self.text.len();
        self.text.push_str(line);
        self.lines.push((number, start..self.text.len()));
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &str)> {
        self.lines
            .iter()
            .map(|(number, range)| (*number, &self.text[range.clone()]))
    }
}

/// Sends `reader`'s lines to the import's workers in batches of `batch_lines` (numbered from
/// 1), skipping those that are not text, until the input ends or a `failure` is noted.
fn send_lines(
    mut reader: Box<dyn BufRead>,
    batch_lines: usize,
    bar: &ProgressBar,
    failure: &Mutex<Option<String>>,
    skip_line: &dyn Fn(u64, &str),
    sender: mpsc::SyncSender<Lines>,
) -> anyhow::Result<()> {
    let failed = || failure.lock().map(|f| f.is_some()).unwrap_or(true);
    let mut batch = Lines::with_capacity(batch_lines, 0);
    // Each line is read into one buffer and copied into its batch's text.
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut number = 0u64;
    loop {
        buffer.clear();
        let read = reader
            .read_until(b'\n', &mut buffer)
            .with_context(|| format!("cannot read the input at line {}", number + 1))?;
        if read == 0 {
            break;
        }
        number += 1;
        bar.inc(buffer.len() as u64);
        let line = match line_text(&buffer, number == 1) {
            Ok(line) => line,
            Err(reason) => {
                skip_line(number, &reason);
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        batch.push(number, line);
        if batch.len() < batch_lines {
            continue;
        }
        if failed() {
            return Ok(());
        }
        // The next batch's text is sized as this one's: lines of one file are alike.
        let next = Lines::with_capacity(batch_lines, batch.text.len() + batch.text.len() / 8);
        if sender.send(std::mem::replace(&mut batch, next)).is_err() {
            return Ok(());
        }
    }
    if !batch.is_empty() && !failed() {
        let _ = sender.send(batch);
    }
    Ok(())
}

/// One NDJSON line turned into a create command, or why it cannot be.
fn create_command(line: &str, recorded_at: call_model::Timestamp) -> Result<Command, String> {
    let value = JsonIn::from_text(line).map_err(|e| format!("not JSON: {e}"))?;
    let document = match value {
        JsonIn::Object(object) if object.contains_key("data") => JsonIn::Object(object),
        JsonIn::Object(attributes) => JsonIn::Object(Members::from([(
            "data",
            JsonIn::Object(Members::from([
                ("type", JsonIn::String("call".into())),
                ("attributes", JsonIn::Object(attributes)),
            ])),
        )])),
        _ => {
            return Err(
                "expected a JSON object: a {\"data\":...} document or an attributes object".into(),
            )
        }
    };
    // The importer is an operator's tool: it may carry telephony-owned attributes.
    let input = check_write(&document, WriteMode::Create, Rights { voice: true })
        .map_err(|violations| on_one_line(&violations))?;
    Ok(Command {
        action: Action::Create(input.changes),
        actor: "import".into(),
        recorded_at,
        occurred_at: input.occurred_at,
    })
}

/// The text of one input line (its bytes, with or without the newline): without the newline
/// and a `\r` before it, and on the first line without a byte order mark
/// ([`call_api::json::without_byte_order_mark`]). A line that is not UTF-8 is refused on its
/// own, as any other bad line, rather than ending the import.
fn line_text(bytes: &[u8], first: bool) -> Result<&str, String> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if first {
        bytes = call_api::json::without_byte_order_mark(bytes);
    }
    std::str::from_utf8(bytes).map_err(|error| {
        format!(
            "not UTF-8 text: the byte at column {} is not valid UTF-8",
            error.valid_up_to() + 1
        )
    })
}

pub fn import(at: &Location, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::open_for_bulk_writes(at)?;
    let reader: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let total = if args.file.as_os_str() == "-" {
        None
    } else {
        std::fs::metadata(&args.file).ok().map(|m| m.len())
    };
    let bar = progress(total, "importing (bytes)");
    let started = Instant::now();
    let imported = AtomicU64::new(0);
    let skipped = AtomicU64::new(0);
    let failure: Mutex<Option<String>> = Mutex::new(None);
    // Lines go in batches to a pool of workers through a bounded queue; each batch is decided
    // as a whole and appended with `execute_all`, so that one flush carries a batch (or
    // several: the workers' batches share the log's group commit).
    let batch_lines = args.batch.max(1);
    let (sender, receiver) = mpsc::sync_channel::<Lines>(args.parallel.max(1) * 2);
    let receiver = Mutex::new(receiver);
    let skip_line = |number: u64, reason: &str| {
        bar.suspend(|| eprintln!("line {number}: skipped: {reason}"));
        skipped.fetch_add(1, Ordering::Relaxed);
    };
    let note_failure = |reason: &str| {
        let _ = failure
            .lock()
            .map(|mut f| f.get_or_insert_with(|| reason.to_owned()).clone());
    };
    // The projection follows the appends as they are made (a new ledger's replays them beside
    // the workers), and is caught up once they end.
    let (read, caught) = ledger.projection.follow_appends(
        |error| {
            note_failure(&format!(
                "the projection could not follow the import: {error}"
            ))
        },
        |appending| {
            std::thread::scope(|scope| {
                for _ in 0..args.parallel.max(1) {
                    scope.spawn(|| loop {
                        let next = receiver.lock().map(|r| r.recv());
                        let Ok(Ok(lines)) = next else { break };
                        let mut numbers = Vec::with_capacity(lines.len());
                        let mut requests = Vec::with_capacity(lines.len());
                        for (number, line) in lines.iter() {
                            match create_command(line, now()) {
                                Ok(command) => {
                                    numbers.push(number);
                                    requests.push(CommandRequest {
                                        command,
                                        expected_version: None,
                                        idempotency_key: None,
                                    });
                                }
                                Err(reason) => skip_line(number, &reason),
                            }
                        }
                        let answers = ledger.commands.execute_all(requests);
                        let mut made = Vec::with_capacity(answers.len());
                        for (number, answer) in numbers.into_iter().zip(answers) {
                            let reason = match answer {
                                Ok(outcome) => {
                                    imported.fetch_add(1, Ordering::Relaxed);
                                    if let CallState::Live(call) = outcome.state {
                                        made.push(call);
                                    }
                                    continue;
                                }
                                Err(CommandError::Invalid(violations)) => on_one_line(&violations),
                                Err(CommandError::Unavailable(reason)) => {
                                    note_failure(&reason);
                                    reason
                                }
                                Err(other) => other.to_string(),
                            };
                            skip_line(number, &reason);
                        }
                        // The projection folds the calls the creates made instead of decoding
                        // their records again.
                        appending.hand(made);
                        appending.appended();
                    });
                }
                // The workers end once every line is sent (the sender is gone with
                // `send_lines`), and the scope waits for them: then the appends have ended.
                send_lines(reader, batch_lines, &bar, &failure, &skip_line, sender)
            })
        },
    );
    read?;
    bar.finish_and_clear();
    if let Some(reason) = failure.lock().ok().and_then(|f| f.clone()) {
        anyhow::bail!(
            "the ledger failed while importing (everything acknowledged before is kept): {reason}"
        );
    }
    let checkpoint = caught?;
    let seconds = started.elapsed().as_secs_f64();
    let imported = imported.into_inner();
    let skipped = skipped.into_inner();
    out::line(format_args!(
        "imported {imported} calls, skipped {skipped} lines, in {seconds:.2} s ({:.0} calls/s); log position {checkpoint}",
        imported as f64 / seconds.max(1e-9)
    ))?;
    Ok(ExitCode::SUCCESS)
}

pub fn export(at: &Location) -> anyhow::Result<ExitCode> {
    let log = Ledger::open_log_existing(at)?;
    let stdout = std::io::stdout();
    let mut writer = BufWriter::new(stdout.lock());
    let mut after = 0;
    loop {
        let records = log.read_from(after, 4096)?;
        let Some(last) = records.last() else { break };
        after = last.position;
        for record in records {
            let event = call_model::Event::decode(
                record.position,
                record.stream,
                record.version,
                &record.payload,
            )?;
            let written = writer
                .write_all(&event.to_json_bytes())
                .and_then(|()| writer.write_all(b"\n"));
            match written {
                Err(error) if out::reader_gone(&error) => return Ok(ExitCode::SUCCESS),
                written => written?,
            }
        }
    }
    match writer.flush() {
        Err(error) if !out::reader_gone(&error) => Err(error.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

pub fn rebuild(at: &Location) -> anyhow::Result<ExitCode> {
    let bar = progress(Some(0), "rebuilding (events)");
    let (_ledger, report) = Ledger::open_rebuilt(at, &mut |applied, head| {
        bar.set_length(head);
        bar.set_position(applied);
    })?;
    bar.finish_and_clear();
    out::line(format_args!(
        "rebuilt: {} events, {} calls, {:.2} s, {:.0} events/s",
        report.events,
        report.calls,
        report.seconds,
        report.events as f64 / report.seconds.max(1e-9)
    ))?;
    Ok(ExitCode::SUCCESS)
}

pub fn verify(at: &Location) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::open_existing(at)?;
    let scratch = tempfile::tempdir_in(&ledger.dir)
        .context("cannot make scratch space in the data directory")?;
    let report = ledger.projection.verify(scratch.path())?;
    if report.differences.is_empty() {
        out::line(format_args!(
            "verified: {} events, {} calls; the rebuilt projection equals the live one",
            report.events, report.calls
        ))?;
        Ok(ExitCode::SUCCESS)
    } else {
        out::line("MISMATCH: the rebuilt projection differs from the live one:")?;
        for difference in &report.differences {
            out::line(format_args!("  {difference}"))?;
        }
        out::line("run `callledger rebuild` to replace the live projection with the rebuilt one")?;
        Ok(ExitCode::FAILURE)
    }
}

pub fn stats(at: &Location) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::open_existing(at)?;
    let log = ledger.log.stats()?;
    let projection = ledger.projection.stats()?;
    let stats = serde_json::json!({
        "events": log.events,
        "liveCalls": projection.live_calls,
        "deletedCalls": projection.deleted_calls,
        "lastPosition": log.head,
        "projectionCheckpoint": projection.checkpoint,
        "sizeOnDisk": {"log": log.size_on_disk, "projection": projection.size_on_disk},
        "indexMemory": call_gateway::index_memory(&projection.index_memory),
    });
    out::line(serde_json::to_string_pretty(&stats)?)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs one read through the same code the API serves, and prints the document.
fn offline_read(
    at: &Location,
    operation: Operation,
    query: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::open_existing(at)?;
    let config = ApiConfig::open(usize::MAX);
    let api = Api::new(
        ledger.commands.clone(),
        ledger.projection.clone(),
        config,
        now,
    );
    let response = api.handle(Request {
        operation,
        headers: &[],
        payload: query.unwrap_or("").as_bytes(),
        source: Source::Api,
    });
    crate::client::print_reply(response.status < 400, &response.body)
}

pub fn get(at: &Location, id: &str, query: Option<&str>) -> anyhow::Result<ExitCode> {
    offline_read(at, Operation::Get(id.to_owned()), query)
}

pub fn list(at: &Location, query: Option<&str>) -> anyhow::Result<ExitCode> {
    offline_read(at, Operation::List, query)
}
