//! CPU time spent while a sample runs, by part: the responder under test (the service, or the
//! echo), the load generator, and nats-server, read from each thread's `/proc/.../schedstat`
//! (nanoseconds on a CPU), so that a ratio of rates can be told apart into whose time grew.

use std::collections::BTreeMap;
use std::time::Duration;

/// The parts a sample's CPU time is split into.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    /// This process's threads that are neither the load generator's nor the echo's: the
    /// service (its runtime, the log's writer, sled's threads).
    pub service: Duration,
    /// The echo responder's threads (`echo*`).
    pub echo: Duration,
    /// The load generator's threads (`load*`, and the main thread that waits for them).
    pub load: Duration,
    /// Every thread of nats-server.
    pub nats: Duration,
}

impl CpuTimes {
    /// What was spent between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            service: self.service.saturating_sub(earlier.service),
            echo: self.echo.saturating_sub(earlier.echo),
            load: self.load.saturating_sub(earlier.load),
            nats: self.nats.saturating_sub(earlier.nats),
        }
    }
}

/// Reads the CPU time of this process's threads and of nats-server's.
pub struct CpuClock {
    nats_pid: Option<u32>,
}

impl CpuClock {
    /// A clock that also reads `nats_pid` (nats-server's CPU is left at zero without it).
    pub fn new(nats_pid: Option<u32>) -> CpuClock {
        CpuClock { nats_pid }
    }

    /// The CPU time spent so far, by part. (A thread that exits takes its time with it; the
    /// threads counted here live for the whole run.)
    pub fn now(&self) -> CpuTimes {
        let me = std::process::id();
        let mut times = CpuTimes::default();
        for (tid, name, spent) in threads(me) {
            let part = if tid == me || name.starts_with("load") {
                &mut times.load
            } else if name.starts_with("echo") {
                &mut times.echo
            } else {
                &mut times.service
            };
            *part += spent;
        }
        if let Some(pid) = self.nats_pid {
            times.nats = threads(pid).map(|(_, _, spent)| spent).sum();
        }
        times
    }
}

/// Each thread of `pid`: its id, its name and its time on a CPU.
fn threads(pid: u32) -> impl Iterator<Item = (u32, String, Duration)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    tasks.filter_map(|task| {
        let path = task.ok()?.path();
        let tid = path.file_name()?.to_str()?.parse().ok()?;
        let name = std::fs::read_to_string(path.join("comm")).ok()?;
        let schedstat = std::fs::read_to_string(path.join("schedstat")).ok()?;
        let nanos = schedstat.split_whitespace().next()?.parse().ok()?;
        Some((tid, name.trim_end().to_owned(), Duration::from_nanos(nanos)))
    })
}

/// Sums of [`CpuTimes`] over samples, by figure.
#[derive(Default)]
pub struct CpuTally(BTreeMap<usize, (CpuTimes, usize)>);

impl CpuTally {
    /// Adds `spent` over `requests` requests to figure `slot`.
    pub fn add(&mut self, slot: usize, spent: CpuTimes, requests: usize) {
        let (sum, count) = self.0.entry(slot).or_default();
        sum.service += spent.service;
        sum.echo += spent.echo;
        sum.load += spent.load;
        sum.nats += spent.nats;
        *count += requests;
    }

    /// The mean CPU time per request of figure `slot`, by part.
    pub fn per_request(&self, slot: usize) -> Option<CpuTimes> {
        let (sum, count) = self.0.get(&slot)?;
        let per = |spent: Duration| spent / (*count).max(1) as u32;
        Some(CpuTimes {
            service: per(sum.service),
            echo: per(sum.echo),
            load: per(sum.load),
            nats: per(sum.nats),
        })
    }
}
