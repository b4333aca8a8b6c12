//! The disk-space guard: the writer refuses a group of appends while the disk holding the log
//! has less than the reserve free, before sled is asked to write. sled makes an i/o error
//! sticky (every later write fails with it until the database is reopened), so letting it run
//! into a full disk would stop writes for good; refused here, they resume by themselves once
//! space is freed, and the reserve is left for the projection and the outbox on the same disk.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::LogError;

/// How long a reading of the free space is trusted while there is plenty of it.
const TRUSTED_FOR: Duration = Duration::from_secs(1);

/// Free space above this many reserves is plenty: read again only after [`TRUSTED_FOR`].
const PLENTY: u64 = 4;

/// The writer's view of the free space on the log's disk.
pub(crate) struct SpaceGuard {
    dir: PathBuf,
    reserve: u64,
    checked: Option<(Instant, u64)>,
    /// Whether the last group was refused for want of space (to log the change once).
    refusing: bool,
}

impl SpaceGuard {
    pub(crate) fn new(dir: PathBuf, reserve: u64) -> SpaceGuard {
        SpaceGuard {
            dir,
            reserve,
            checked: None,
            refusing: false,
        }
    }

    /// `Ok` when a group may be written; a storage error saying how much is free otherwise.
    pub(crate) fn check(&mut self) -> Result<(), LogError> {
        if self.reserve == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let free = match self.checked {
            Some((at, free))
                if free > self.reserve.saturating_mul(PLENTY)
                    && now.duration_since(at) < TRUSTED_FOR =>
            {
                free
            }
            _ => {
                // A failed reading is not a full disk: let sled try (and fail if it must).
                let Ok(free) = fs2::available_space(&self.dir) else {
                    return Ok(());
                };
                self.checked = Some((now, free));
                free
            }
        };
        if free >= self.reserve {
            if self.refusing {
                self.refusing = false;
                tracing::warn!(dir = %self.dir.display(), free, "disk space freed: the log takes writes again");
            }
            return Ok(());
        }
        let error = LogError::Storage(format!(
            "the disk holding the log ({}) has {free} bytes free, less than the {} the log keeps \
             in reserve; writes are refused until space is freed, and resume by themselves",
            self.dir.display(),
            self.reserve
        ));
        if !self.refusing {
            self.refusing = true;
            tracing::error!(%error, "disk full: refusing writes");
        }
        Err(error)
    }
}
