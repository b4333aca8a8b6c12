//! The `import` section: `callledger import` of an NDJSON file of create documents into a fresh
//! data directory, run as a user runs it (a new process, from its start to its exit), beside
//! the sled ceiling measured in the same rounds.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use call_ledger_tests::callledger_bin;

use crate::support::{create_document, Row, Stats, Target};

/// The ceiling's page cache: the one `import` opens its log with, so that neither side has the
/// larger cache.
const CEILING_CACHE: u64 = event_log::BULK_WRITE_LOG_CACHE_BYTES;

/// Writes `calls` create documents, one per line, to `file`.
fn write_documents(file: &Path, calls: usize, ledger_calls: u64) {
    let out = std::fs::File::create(file).expect("create the import file");
    let mut out = std::io::BufWriter::new(out);
    for index in 0..calls {
        serde_json::to_writer(&mut out, &create_document(index as u64, ledger_calls))
            .expect("write a document");
        out.write_all(b"\n").expect("write a line");
    }
    out.flush().expect("flush the import file");
}

/// Runs `callledger import` of `file` into the fresh data directory `dir`, checks that it
/// imported every one of `calls` calls, and returns its time from spawn to exit in seconds.
fn import(file: &Path, dir: &Path, calls: usize) -> f64 {
    let started = Instant::now();
    let output = std::process::Command::new(callledger_bin())
        .arg("import")
        .arg("--data-dir")
        .arg(dir)
        .arg(file)
        .output()
        .expect("run callledger import");
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(&format!("imported {calls} calls")),
        "callledger import did not import {calls} calls: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    seconds
}

/// `callledger import` of `calls` calls (its default workers and batches), rounds of it beside
/// the sled ceiling (`apply_batch` of 1000 rows of `row_bytes`, the stored events' mean size,
/// then `flush`, with the import's page cache), the two taking turns; the first round is a
/// warm-up.
pub fn bench_import(
    root: &Path,
    calls: usize,
    ledger_calls: u64,
    ceiling_rows: usize,
    row_bytes: usize,
    rounds: usize,
) -> Vec<Row> {
    let file = root.join("import.ndjson");
    write_documents(&file, calls, ledger_calls);
    let mut import_rates = Vec::new();
    let mut ceiling_rates = Vec::new();
    for round in 0..=rounds {
        let dir = root.join(format!("import-{round}"));
        let seconds = import(&file, &dir, calls);
        let _ = std::fs::remove_dir_all(&dir);
        let ceiling_dir = root.join(format!("import-ceiling-{round}"));
        let ceiling = event_log::bench::raw_sled_batch_ceiling(
            &ceiling_dir,
            ceiling_rows,
            row_bytes,
            1000,
            CEILING_CACHE,
        )
        .expect("raw sled ceiling");
        let _ = std::fs::remove_dir_all(&ceiling_dir);
        if round > 0 {
            import_rates.push(calls as f64 / seconds);
            ceiling_rates.push(ceiling);
        }
    }
    let _ = std::fs::remove_file(&file);
    let imports = Stats::new(import_rates);
    let ceiling = Stats::new(ceiling_rates);
    println!(
        "import of {calls} calls: {} | sled ceiling {}",
        imports.spread("calls/s"),
        ceiling.spread("rows/s")
    );
    vec![Row {
        metric: format!(
            "`callledger import` calls/s, {calls} calls, a new process from start to exit (vs sled ceiling: batch 1000 + flush, the import's {} MiB cache)",
            CEILING_CACHE >> 20
        ),
        ours: imports.median(),
        baseline: Some(ceiling.median()),
        target: Target::RatioAtLeast(0.5),
    }]
}
