//! How long storage work has gone without progress: the code that writes marks when it starts
//! a piece of work and each step it completes, so that a watchdog can tell storage that has
//! stopped answering (a hang inside sled, a disk that no longer completes writes) from a quiet
//! one.
//!
//! Why it exists: sled 0.34.7 can deadlock under many concurrent writes (its issue #1412: the
//! log's writer waits, holding the segment accountant's lock, for a file truncation queued
//! behind I/O threads that wait for that lock). Nothing acknowledged is lost, but the writer
//! never answers again; only a new process recovers. A clock that shows the stall lets the
//! service say so and exit, for its supervisor to restart it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// When work in progress last started or stepped forward; idle when none is.
#[derive(Debug, Default)]
pub struct StallClock {
    /// Milliseconds after [`epoch`] plus one of the last start or step; 0 while idle.
    since: AtomicU64,
}

/// The instant the clocks count from (the first use in the process).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_mark() -> u64 {
    u64::try_from(epoch().elapsed().as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

impl StallClock {
    /// Starts a piece of work; it is in progress until the returned guard drops.
    pub fn start(&self) -> Busy<'_> {
        self.since.store(now_mark(), Ordering::Release);
        Busy { clock: self }
    }

    /// How long the work in progress has gone since it started or last stepped forward;
    /// `None` while idle.
    pub fn busy_for(&self) -> Option<Duration> {
        match self.since.load(Ordering::Acquire) {
            0 => None,
            since => Some(Duration::from_millis(now_mark().saturating_sub(since))),
        }
    }
}

/// Work in progress on a [`StallClock`]: idle again when dropped.
#[derive(Debug)]
pub struct Busy<'a> {
    clock: &'a StallClock,
}

impl Busy<'_> {
    /// The work has stepped forward (a chunk applied): its clock counts from now.
    pub fn stepped(&self) {
        self.clock.since.store(now_mark(), Ordering::Release);
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.clock.since.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_past(clock: &StallClock, at_least: Duration) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while clock.busy_for().is_none_or(|busy| busy < at_least) {
            assert!(Instant::now() < deadline, "the clock never counted");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_clock_counts_while_work_is_in_progress_and_restarts_at_each_step() {
        let clock = StallClock::default();
        assert_eq!(clock.busy_for(), None);
        {
            let busy = clock.start();
            wait_past(&clock, Duration::from_millis(20));
            let before = clock.busy_for().unwrap();
            busy.stepped();
            assert!(clock.busy_for().unwrap() < before);
        }
        assert_eq!(clock.busy_for(), None);
    }
}
