//! Ends a process whose storage has stopped answering. A thread of its own reads how long the
//! log's writer and the view's catch-up have gone without progress; past the limit it logs what
//! stalled and exits, as a crash would, so that the supervisor restarts the service.
//!
//! Why: sled 0.34.7 can deadlock under many concurrent writes (its issue #1412, seen here once
//! while 64 writers filled a ledger; docs/operations.md). The process then sits idle for ever,
//! every request waiting. Nothing acknowledged is lost (an append is answered only once
//! durable), and a new process recovers, as the crash rounds prove after a SIGKILL; so exiting
//! turns a silent hang into a restart of a few seconds.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The exit status of a process the watchdog ended (`EX_TEMPFAIL`: try again; the unit's
/// `Restart=on-failure` does).
pub const EXIT_STALLED: i32 = 75;

/// How long storage work may go without progress before the process exits: far above a flush
/// of a slow disk (well under a second here), short enough that a hang is not mistaken for load.
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(60);

/// Something whose progress the watchdog reads.
pub struct Watched {
    /// What it is, for the log line.
    pub what: &'static str,
    /// How long its work in progress has gone without progress; `None` while idle.
    pub busy_for: Box<dyn Fn() -> Option<Duration> + Send>,
}

/// The first of `watched` that has gone `limit` or longer without progress, and for how long.
fn first_stalled(watched: &[Watched], limit: Duration) -> Option<(&'static str, Duration)> {
    watched.iter().find_map(|watched| {
        (watched.busy_for)()
            .filter(|busy| *busy >= limit)
            .map(|busy| (watched.what, busy))
    })
}

/// How often the watchdog looks: a tenth of the limit, between 100 ms and 5 s.
fn period(limit: Duration) -> Duration {
    (limit / 10).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// A running watchdog: dropping it stops and joins its thread (and drops what it watched).
pub struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the watchdog on a thread of its own (not the async runtime's, whose threads may be
/// the ones waiting): it calls `on_stall` with what stalled and for how long, once, when one of
/// `watched` has gone `limit` without progress. `None` for the limit watches nothing.
pub fn spawn(
    limit: Option<Duration>,
    watched: Vec<Watched>,
    on_stall: impl FnOnce(&'static str, Duration) + Send + 'static,
) -> std::io::Result<Watchdog> {
    let Some(limit) = limit else {
        tracing::warn!("the storage watchdog is off: a hang inside storage is not ended");
        return Ok(Watchdog {
            stop: None,
            thread: None,
        });
    };
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("storage-watchdog".into())
        .spawn(move || {
            let period = period(limit);
            let mut looked = Instant::now();
            // Looks every period until the handle drops (the sender with it).
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(period) {
                // Woken far later than asked, the whole process was paused (SIGSTOP, a
                // debugger): the work it paused gets a period to show progress again.
                let paused = looked.elapsed() > period * 3;
                looked = Instant::now();
                if paused {
                    continue;
                }
                if let Some((what, busy)) = first_stalled(&watched, limit) {
                    on_stall(what, busy);
                    return;
                }
            }
        })?;
    Ok(Watchdog {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// What the service does when storage stalls: says what stalled and why it exits, and exits
/// at once, without the destructors that would wait on the same storage.
pub fn exit_stalled(what: &'static str, busy: Duration) {
    tracing::error!(
        stalled = what,
        seconds = busy.as_secs(),
        status = EXIT_STALLED,
        "{what} has made no progress for {} s: storage has stopped answering (sled 0.34.7 can \
         deadlock under many concurrent writes, its issue #1412; or the disk no longer completes \
         writes). Exiting for the supervisor to restart the service: everything acknowledged is \
         durable and the next start recovers it",
        busy.as_secs()
    );
    std::process::exit(EXIT_STALLED);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn watched(what: &'static str, busy_ms: Arc<AtomicU64>) -> Watched {
        Watched {
            what,
            busy_for: Box::new(move || match busy_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            }),
        }
    }

    #[test]
    fn only_work_past_the_limit_is_a_stall() {
        let log = Arc::new(AtomicU64::new(0));
        let view = Arc::new(AtomicU64::new(0));
        let all = [
            watched("the log's writer", Arc::clone(&log)),
            watched("the view's catch-up", Arc::clone(&view)),
        ];
        let limit = Duration::from_secs(60);
        assert_eq!(first_stalled(&all, limit), None, "idle");
        log.store(59_999, Ordering::Relaxed);
        assert_eq!(first_stalled(&all, limit), None, "busy, within the limit");
        view.store(61_000, Ordering::Relaxed);
        assert_eq!(
            first_stalled(&all, limit),
            Some(("the view's catch-up", Duration::from_millis(61_000)))
        );
    }

    #[test]
    fn the_watchdog_tells_of_a_stall_once_and_not_of_work_in_time() {
        let busy = Arc::new(AtomicU64::new(10));
        let (told, tellings) = mpsc::channel();
        let _watchdog = spawn(
            Some(Duration::from_millis(200)),
            vec![watched("the log's writer", Arc::clone(&busy))],
            move |what, busy| told.send((what, busy)).expect("the test listens"),
        )
        .expect("start the watchdog");
        // Work that progresses within the limit (busy for 10 ms at every look) is not a stall.
        assert!(tellings.recv_timeout(Duration::from_millis(500)).is_err());
        busy.store(250, Ordering::Relaxed);
        let (what, for_how_long) = tellings
            .recv_timeout(Duration::from_secs(10))
            .expect("the stall is told");
        assert_eq!(what, "the log's writer");
        assert_eq!(for_how_long, Duration::from_millis(250));
        assert!(
            tellings.recv().is_err(),
            "told once: the thread ended, dropping its sender"
        );
    }

    #[test]
    fn dropping_the_watchdog_stops_it_and_drops_what_it_watched() {
        let busy = Arc::new(AtomicU64::new(0));
        let watchdog = spawn(
            Some(Duration::from_secs(60)),
            vec![watched("the log's writer", Arc::clone(&busy))],
            |_, _| panic!("nothing stalled"),
        )
        .expect("start the watchdog");
        assert_eq!(Arc::strong_count(&busy), 2);
        drop(watchdog);
        assert_eq!(Arc::strong_count(&busy), 1, "joined, its closures dropped");
    }

    #[test]
    fn the_period_is_a_tenth_of_the_limit_within_bounds() {
        assert_eq!(period(DEFAULT_STALL_LIMIT), Duration::from_secs(5));
        assert_eq!(period(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(
            period(Duration::from_millis(50)),
            Duration::from_millis(100)
        );
    }
}
