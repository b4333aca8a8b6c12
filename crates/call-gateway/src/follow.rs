//! The projection's follower: applies every durable head of the log as it arrives, off the
//! request path, so that a write's reply never waits for the view and a read's barrier (it
//! waits for the head, see `call_api::Api::catch_up`) seldom has anything left to wait for; and
//! now and then writes the projection's index snapshot, so that a restart after a crash starts
//! from a recent one.

use std::time::{Duration, Instant};

use call_api::Api;
use event_log::EventLog;
use tokio::sync::watch;

use crate::{sleep_or_stop, stopped, Backoff};

/// Catches the projection up whenever `log`'s head moves, until `stop`. Each catch-up applies
/// everything durable at that moment, so a burst of appends is folded in a few large batches
/// rather than one per write. A failure is logged and retried after a growing pause; reads
/// meanwhile catch up by themselves (and report the failure). After a catch-up at least
/// `snapshot_every` after the last snapshot, it writes the index snapshot (which waits for
/// nothing but holds catch-up meanwhile: about a second at a million calls).
pub(crate) async fn run(
    api: Api,
    log: EventLog,
    snapshot_every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_snapshot = Instant::now();
    let mut head = log.watch_head();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        // Marks the head seen before catching up, so that no append is missed.
        head.mark_seen();
        let caught_up = {
            let api = api.clone();
            tokio::task::spawn_blocking(move || api.catch_up()).await
        };
        let failed = match caught_up {
            Ok(Ok(_)) => false,
            Ok(Err(error)) => {
                tracing::warn!(%error, "the projection cannot catch up with the log; retrying");
                true
            }
            Err(error) => {
                tracing::error!(%error, "the projection's catch-up panicked; retrying");
                true
            }
        };
        if failed {
            if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                break;
            }
            continue;
        }
        backoff.reset();
        if last_snapshot.elapsed() >= snapshot_every {
            last_snapshot = Instant::now();
            let api = api.clone();
            match tokio::task::spawn_blocking(move || api.write_index_snapshot()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "the index snapshot could not be written; retrying later")
                }
                Err(error) => tracing::error!(%error, "writing the index snapshot panicked"),
            }
        }
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            changed = head.changed() => if changed.is_err() {
                break;
            },
        }
    }
}
