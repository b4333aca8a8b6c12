//! The raw sled write ceiling, measured beside the log's own figures by the
//! benchmark: what `apply_batch` plus `flush` can do with no log logic.

use std::path::Path;
use std::time::Instant;

use super::sled_config;
use crate::{Durability, LogError};

/// The page cache of the ceiling the appends are compared with: the 8 MiB the log had until
/// 2026-12-04. At the log's own 1 MiB, batches of 1000 rows evict the tree's inner nodes and the
/// ceiling fell by a third (94k against 143k rows/s in runs minutes apart), which would flatter
/// every ratio to it. (A ceiling beside a writer with a larger cache is given that cache.)
pub const CEILING_CACHE_BYTES: u64 = 8 << 20;

/// Opens a fresh sled database in `dir` (configured as the log configures
/// its own, with a page cache of `cache_bytes`), writes `rows`
/// rows of `row_bytes` bytes with one `apply_batch` of `batch` rows followed
/// by one `flush` per batch, and returns the rows written per second. A
/// `batch` of 0 counts as 1.
pub fn raw_sled_batch_ceiling(
    dir: &Path,
    rows: usize,
    row_bytes: usize,
    batch: usize,
    cache_bytes: u64,
) -> Result<f64, LogError> {
    let db = sled_config(dir, Durability::Flush, cache_bytes)
        .open()
        .map_err(crate::error::storage)?;
    let row = vec![0xA5u8; row_bytes];
    let batch = batch.max(1);
    let started = Instant::now();
    let mut written = 0usize;
    while written < rows {
        let end = rows.min(written + batch);
        let mut writes = sled::Batch::default();
        for index in written..end {
            writes.insert(&(index as u64).to_be_bytes()[..], &row[..]);
        }
        db.apply_batch(writes).map_err(crate::error::storage)?;
        db.flush().map_err(crate::error::storage)?;
        written = end;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(if seconds > 0.0 {
        rows as f64 / seconds
    } else {
        0.0
    })
}

/// A sled database of rows of one size, keyed by their number from 1 (big-endian), for timing
/// raw point reads beside a read path that does more than read its row.
pub struct RawSledRows {
    db: sled::Db,
}

impl RawSledRows {
    /// Writes `rows` rows of `row_bytes` bytes into a fresh database in `dir` and flushes them.
    /// The database has sled's default configuration, as the projection's views do (the log's
    /// small cache would time reads from the page cache instead).
    pub fn create(dir: &Path, rows: u64, row_bytes: usize) -> Result<RawSledRows, LogError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(crate::error::storage)?;
        let row = vec![0xA5u8; row_bytes];
        for first in (1..=rows).step_by(1000) {
            let mut writes = sled::Batch::default();
            for key in first..=rows.min(first + 999) {
                writes.insert(&key.to_be_bytes()[..], &row[..]);
            }
            db.apply_batch(writes).map_err(crate::error::storage)?;
        }
        db.flush().map_err(crate::error::storage)?;
        Ok(RawSledRows { db })
    }

    /// Reads the row of each key, in order, and returns the bytes read.
    pub fn get_all(&self, keys: &[u64]) -> Result<usize, LogError> {
        let mut read = 0;
        for key in keys {
            if let Some(row) = self
                .db
                .get(key.to_be_bytes())
                .map_err(crate::error::storage)?
            {
                read += row.len();
            }
        }
        Ok(read)
    }
}
