//! `callledger backup` and `callledger restore`. A backup directory holds the log's events in
//! segments of NDJSON (the lines `callledger export` writes, one event each, in position order)
//! and `manifest.json`: the position and event count the backup reaches, each segment's range
//! and SHA-256, and a checksum over them. A backup run adds one segment with what the log
//! gained since the last run; restore checks every checksum before it writes anything, then
//! appends the events into a new data directory at the same positions, calls and versions.
//!
//! The events come from the data directory (offline) or, while `serve` holds it, from the
//! service's `calls.api.backup` endpoint (scope `calls.admin`), which pages through the log.

use std::fs::{self, File};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use call_model::Event;
use call_projections::Appending;
use event_log::{Append, EventLog, ExpectedVersion, StreamTarget};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cli::NatsArgs;
use crate::ledger::{Ledger, Location};

/// The manifest's name in a backup directory.
const MANIFEST: &str = "manifest.json";
/// The manifest's format, checked when a backup is continued or restored.
const FORMAT: &str = "call-ledger-backup/1";
/// Events per read from the log, and per batch of appends on restore.
const PAGE: usize = 4096;

/// What a backup directory holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    format: String,
    /// The last position the backup holds (its events are 1 to this).
    position: u64,
    /// How many events it holds.
    events: u64,
    /// The `eventId` of the event at `position`: a later run checks that the log still holds
    /// it there, so that one directory never mixes two ledgers.
    last_event_id: Option<String>,
    /// SHA-256 over the segments' checksums in order.
    checksum: String,
    segments: Vec<Segment>,
}

/// One file of events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Segment {
    file: String,
    first: u64,
    last: u64,
    events: u64,
    sha256: String,
}

impl Manifest {
    fn read(dir: &Path) -> anyhow::Result<Option<Manifest>> {
        let path = dir.join(MANIFEST);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", path.display()))
            }
        };
        let manifest: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a call-ledger backup manifest", path.display()))?;
        if manifest.format != FORMAT {
            bail!(
                "{} is in the format '{}'; this callledger reads '{FORMAT}'",
                path.display(),
                manifest.format
            );
        }
        Ok(Some(manifest))
    }

    fn checksum_of(segments: &[Segment]) -> String {
        let mut hasher = Sha256::new();
        for segment in segments {
            hasher.update(segment.sha256.as_bytes());
        }
        hex(&hasher.finalize())
    }

    /// Writes the manifest in place of the old one, atomically and durably.
    fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(self)?;
        write_durably(dir, MANIFEST, &text)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Writes `name` in `dir` through a temporary file, fsyncing it and the directory.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let temporary = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&temporary)
        .with_context(|| format!("cannot create {}", temporary.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, dir.join(name))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))
}

/// Where a backup reads the log from.
trait LogSource {
    /// The log's head now.
    fn head(&mut self) -> anyhow::Result<u64>;
    /// Events after `after` as export lines, at least one if the log has any, in position
    /// order without gaps.
    fn page(&mut self, after: u64) -> anyhow::Result<Vec<Vec<u8>>>;
}

/// The log of a data directory.
struct Offline(EventLog);

impl LogSource for Offline {
    fn head(&mut self) -> anyhow::Result<u64> {
        Ok(self.0.head())
    }

    fn page(&mut self, after: u64) -> anyhow::Result<Vec<Vec<u8>>> {
        self.0
            .read_from(after, PAGE)?
            .into_iter()
            .map(|record| {
                let event = Event::decode(
                    record.position,
                    record.stream,
                    record.version,
                    &record.payload,
                )?;
                Ok(event.to_json_bytes())
            })
            .collect()
    }
}

/// The log of a running service, through `calls.api.backup`.
struct Online {
    runtime: tokio::runtime::Runtime,
    client: call_gateway::Client,
    prefix: String,
    token: Option<String>,
}

impl Online {
    fn connect(nats: &NatsArgs, token: Option<String>) -> anyhow::Result<Online> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let options = nats.options("callledger-backup");
        let client = runtime.block_on(async {
            tokio::time::timeout(REQUEST_TIMEOUT, call_gateway::connect(options))
                .await
                .context("timed out connecting to NATS")?
                .context("cannot connect to NATS")
        })?;
        Ok(Online {
            runtime,
            client,
            prefix: nats.prefix(),
            token,
        })
    }

    /// One page after `after`, with the head the service reported.
    fn request(&mut self, after: u64, limit: usize) -> anyhow::Result<(u64, Vec<u8>)> {
        let call = call_gateway::client::ApiCall {
            operation: call_api::Operation::Backup,
            payload: format!("after={after}&limit={limit}").into_bytes(),
            token: self.token.clone(),
            idempotency_key: None,
            if_match: None,
        };
        let reply = self.runtime.block_on(call_gateway::client::call(
            &self.client,
            &self.prefix,
            call,
            REQUEST_TIMEOUT,
        ))?;
        if reply.is_error() {
            let detail = serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|body| body["errors"][0]["detail"].as_str().map(str::to_owned))
                .unwrap_or_default();
            bail!(
                "the service refused the backup ({}): {detail}",
                reply.status
            );
        }
        let head = reply
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(call_api::HEAD_HEADER))
            .and_then(|(_, value)| value.trim().parse().ok())
            .with_context(|| {
                format!(
                    "the service's reply has no {} header: is it an older call-ledger?",
                    call_api::HEAD_HEADER
                )
            })?;
        Ok((head, reply.body))
    }
}

/// How long one page may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl LogSource for Online {
    fn head(&mut self) -> anyhow::Result<u64> {
        Ok(self.request(0, 1)?.0)
    }

    fn page(&mut self, after: u64) -> anyhow::Result<Vec<Vec<u8>>> {
        let (_, body) = self.request(after, call_api::query::MAX_LOG_PAGE)?;
        Ok(body
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
    }
}

/// `callledger backup DIR`: from the data directory, or from the service at `--nats-url` when
/// no `--data-dir` is given.
pub fn backup(
    at: &Location,
    nats: &NatsArgs,
    token: Option<String>,
    dir: &Path,
) -> anyhow::Result<ExitCode> {
    let mut source: Box<dyn LogSource> = match (&at.data.data_dir, &nats.nats_url) {
        (None, Some(_)) => Box::new(Online::connect(nats, token)?),
        _ => Box::new(Offline(Ledger::open_log_existing(at)?)),
    };
    let report = run_backup(source.as_mut(), dir)?;
    crate::out::line(report)?;
    Ok(ExitCode::SUCCESS)
}

fn run_backup(source: &mut dyn LogSource, dir: &Path) -> anyhow::Result<String> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut manifest = Manifest::read(dir)?.unwrap_or_else(|| Manifest {
        format: FORMAT.to_owned(),
        checksum: Manifest::checksum_of(&[]),
        ..Manifest::default()
    });
    if manifest.position > 0 {
        // The log must still hold the backup's last event where the backup has it.
        let found = source
            .page(manifest.position - 1)?
            .into_iter()
            .next()
            .map(|line| event_id(&line))
            .transpose()?;
        if found.is_none() || found != manifest.last_event_id {
            bail!(
                "{} holds a backup of another ledger: its event at position {} is not the one this \
                 log holds there; back up into an empty directory",
                dir.display(),
                manifest.position
            );
        }
    }
    let target = source.head()?;
    if target < manifest.position {
        bail!(
            "the log's head is {target}, behind the backup in {} (position {}): back up into an \
             empty directory",
            dir.display(),
            manifest.position
        );
    }
    if target == manifest.position {
        return Ok(format!(
            "nothing new: the backup in {} holds positions 1 to {} ({} events)",
            dir.display(),
            manifest.position,
            manifest.events
        ));
    }
    let first = manifest.position + 1;
    let name = format!("events-{first:012}-{target:012}.ndjson");
    let temporary = dir.join(format!(".{name}.tmp"));
    let mut out = BufWriter::new(
        File::create(&temporary)
            .with_context(|| format!("cannot create {}", temporary.display()))?,
    );
    let mut hasher = Sha256::new();
    let mut position = manifest.position;
    let mut last_line = Vec::new();
    while position < target {
        let lines = source.page(position)?;
        if lines.is_empty() {
            bail!("the log ended at position {position}, before its head {target}");
        }
        for line in lines {
            if position == target {
                break;
            }
            hasher.update(&line);
            hasher.update(b"\n");
            out.write_all(&line)?;
            out.write_all(b"\n")?;
            position += 1;
            last_line = line;
        }
    }
    let file = out.into_inner().map_err(|error| error.into_error())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, dir.join(&name))?;
    sync_dir(dir)?;
    let count = target - manifest.position;
    manifest.segments.push(Segment {
        file: name,
        first,
        last: target,
        events: count,
        sha256: hex(&hasher.finalize()),
    });
    manifest.position = target;
    manifest.events += count;
    manifest.last_event_id = Some(event_id(&last_line)?);
    manifest.checksum = Manifest::checksum_of(&manifest.segments);
    manifest.write(dir)?;
    Ok(format!(
        "backed up {count} events (positions {first} to {target}) to {}; it holds positions 1 to \
         {target}, checksum {}",
        dir.display(),
        manifest.checksum
    ))
}

/// The `eventId` of an export line.
fn event_id(line: &[u8]) -> anyhow::Result<String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).context("an event line of the log is not JSON")?;
    value["eventId"]
        .as_str()
        .map(str::to_owned)
        .context("an event line of the log has no eventId")
}

/// Appends the events of `lines` (an export's, one event a line) to the new ledger's log in
/// batches, telling `appending` of each; returns how many it appended.
fn append_lines(
    ledger: &Ledger,
    lines: Box<dyn Iterator<Item = anyhow::Result<Vec<u8>>> + '_>,
    appending: &Appending,
) -> anyhow::Result<u64> {
    let mut batch: Vec<Event> = Vec::with_capacity(PAGE);
    let mut restored = 0u64;
    for (number, line) in lines.enumerate() {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value: serde_json::Value = serde_json::from_slice(&line)
            .with_context(|| format!("line {}: not JSON", number + 1))?;
        let event = Event::from_json(&value)
            .with_context(|| format!("line {}: not an event", number + 1))?;
        batch.push(event);
        if batch.len() == PAGE {
            restored += append_batch(ledger, &mut batch)?;
            appending.appended();
        }
    }
    restored += append_batch(ledger, &mut batch)?;
    Ok(restored)
}

/// `callledger restore --data-dir NEW SOURCE`: SOURCE is a backup directory, or `-` for an
/// export stream on stdin.
pub fn restore(at: &Location, source: &Path) -> anyhow::Result<ExitCode> {
    let data = at.data.dir();
    if fs::read_dir(&data).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "{} is not empty: restore builds a new data directory and never writes over one; \
             give a missing or empty directory",
            data.display()
        );
    }
    let lines: Box<dyn Iterator<Item = anyhow::Result<Vec<u8>>>> = if source.as_os_str() == "-" {
        Box::new(
            std::io::stdin()
                .lock()
                .split(b'\n')
                .map(|line| line.context("cannot read stdin")),
        )
    } else {
        let manifest = Manifest::read(source)?.with_context(|| {
            format!(
                "{} holds no {MANIFEST}: not a call-ledger backup",
                source.display()
            )
        })?;
        check_segments(source, &manifest)?;
        Box::new(segment_lines(source.to_path_buf(), manifest))
    };
    // Like `import`, restore writes the log in bulk while the new ledger's projection follows
    // it, replaying it beside the appends.
    let ledger = Ledger::open_for_bulk_writes(at)?;
    if ledger.log.head() > 0 {
        bail!("the log of record of {} is not empty", data.display());
    }
    let (restored, caught) = ledger
        .projection
        .follow_appends(|_| {}, |appending| append_lines(&ledger, lines, appending));
    let restored = restored?;
    let checkpoint = caught?;
    let stats = ledger.projection.stats()?;
    crate::out::line(format_args!(
        "restored {restored} events (positions 1 to {checkpoint}) into {}: {} live calls, {} deleted",
        data.display(),
        stats.live_calls,
        stats.deleted_calls
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Appends the events at their own positions, calls and versions, or says where they differ.
fn append_batch(ledger: &Ledger, batch: &mut Vec<Event>) -> anyhow::Result<u64> {
    let events = std::mem::take(batch);
    let appends = events
        .iter()
        .map(|event| Append {
            // A call keeps its id, whatever the log it comes from gave (a log whose appends
            // failed half-way can have skipped one).
            stream: if event.version == 1 {
                StreamTarget::Restored(event.call_id)
            } else {
                StreamTarget::Existing(event.call_id)
            },
            expected: match event.version {
                1 => ExpectedVersion::NoStream,
                version => ExpectedVersion::Exact(version - 1),
            },
            idempotency: None,
            payloads: vec![event.stored.encode()],
        })
        .collect();
    for (event, appended) in events.iter().zip(ledger.log.append_all(appends)) {
        let appended = appended.with_context(|| {
            format!(
                "the event at position {} (call {}, version {}) cannot be restored",
                event.position, event.call_id, event.version
            )
        })?;
        if (
            appended.first_position,
            appended.stream,
            appended.first_version,
        ) != (event.position, event.call_id, event.version)
        {
            bail!(
                "the events are not a whole log from position 1: the event the backup has at \
                 position {} (call {}, version {}) would be at position {} (call {}, version {})",
                event.position,
                event.call_id,
                event.version,
                appended.first_position,
                appended.stream,
                appended.first_version
            );
        }
    }
    Ok(events.len() as u64)
}

/// Checks every segment against the manifest (checksum, event count, contiguous ranges)
/// before anything is written.
fn check_segments(dir: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    let mut next = 1;
    for segment in &manifest.segments {
        if segment.first != next || segment.last < segment.first {
            bail!(
                "the manifest's segments do not follow each other: {} starts at {}, expected {next}",
                segment.file,
                segment.first
            );
        }
        let path = dir.join(&segment.file);
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut lines = 0u64;
        for line in std::io::BufReader::new(file).split(b'\n') {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            hasher.update(&line);
            hasher.update(b"\n");
            lines += 1;
        }
        let sha256 = hex(&hasher.finalize());
        if sha256 != segment.sha256 || lines != segment.events {
            bail!(
                "{} is damaged: {lines} events with SHA-256 {sha256}, the manifest says {} events \
                 with {}",
                path.display(),
                segment.events,
                segment.sha256
            );
        }
        next = segment.last + 1;
    }
    if Manifest::checksum_of(&manifest.segments) != manifest.checksum
        || next != manifest.position + 1
    {
        bail!(
            "the manifest in {} does not add up: its checksum or position is wrong",
            dir.display()
        );
    }
    Ok(())
}

/// The lines of every segment, in order.
fn segment_lines(
    dir: PathBuf,
    manifest: Manifest,
) -> impl Iterator<Item = anyhow::Result<Vec<u8>>> {
    manifest.segments.into_iter().flat_map(move |segment| {
        let path = dir.join(&segment.file);
        let opened = File::open(&path).with_context(|| format!("cannot open {}", path.display()));
        let lines: Box<dyn Iterator<Item = anyhow::Result<Vec<u8>>>> =
            match opened {
                Ok(file) => Box::new(std::io::BufReader::new(file).split(b'\n').map(move |line| {
                    line.with_context(|| format!("cannot read {}", path.display()))
                })),
                Err(error) => Box::new(std::iter::once(Err(error))),
            };
        lines
    })
}
