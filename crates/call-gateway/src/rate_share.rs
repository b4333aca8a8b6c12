//! Shares the rate limiter's counts with every instance on the same subjects: a few times a
//! second each caller's new requests are added to a total per caller and window in a KV bucket
//! (`<prefix's>_RATE`, compare-and-set on the entry's revision) and the total is handed back
//! to the limiter, so the budget holds across instances. Between two rounds an instance knows
//! the others' counts as of the last round: a caller spread over instances can exceed its
//! budget by what the others admitted in one round, at most.
//!
//! Without NATS the counts stay local and are shared once it is back; each instance then holds
//! the budget on its own.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use call_api::rate::{RateLimiter, Unshared};
use tokio::sync::watch;

use crate::error::GatewayError;
use crate::lease::{kv_error, open_bucket};
use crate::{sleep_or_stop, stopped, Backoff};

/// How often counts are shared.
const SHARE_INTERVAL: Duration = Duration::from_millis(250);

/// How many times one add is retried when another instance changed the total in between.
const MAX_ADD_ATTEMPTS: usize = 16;

/// The bucket's entries outlive their window by at least this long, so that an instance whose
/// clock is a little behind still finds the total.
const ENTRY_SLACK: Duration = Duration::from_secs(60);

/// Opens (creating it if missing) the bucket of the shared counts.
pub(crate) async fn open(
    js: &jetstream::Context,
    bucket: &str,
    limiter: &RateLimiter,
) -> Result<kv::Store, GatewayError> {
    let max_age = Duration::from_secs(limiter.limit().window_secs) + ENTRY_SLACK;
    open_bucket(
        js,
        bucket,
        "call-ledger: requests per caller and rate-limit window, summed over instances",
        max_age,
    )
    .await
}

/// Opens the bucket, retrying after a growing pause for as long as it takes (a cluster still
/// electing its leaders times the creation out; the limiter counts locally meanwhile), then
/// shares counts every [`SHARE_INTERVAL`] until `stop`, then once more.
pub(crate) async fn run(
    js: jetstream::Context,
    bucket: String,
    limiter: Arc<RateLimiter>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    let store = loop {
        match open(&js, &bucket, &limiter).await {
            Ok(store) => break store,
            Err(error) => {
                tracing::warn!(%error, "rate-limit counts stay local until the bucket opens; retrying");
                if sleep_or_stop(backoff.next_delay(), &mut stop).await {
                    return;
                }
            }
        }
    };
    let mut ticks = tokio::time::interval(SHARE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            _ = ticks.tick() => share(&store, &limiter).await,
        }
    }
    share(&store, &limiter).await;
}

/// One round: every caller of the current window.
pub(crate) async fn share(store: &kv::Store, limiter: &RateLimiter) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    for unshared in limiter.unshared(now) {
        match add(store, &unshared).await {
            Ok(total) => limiter.learned(&unshared, total),
            // The count stays unshared and goes with the next round.
            Err(error) => {
                tracing::warn!(%error, "cannot share rate-limit counts; the budget holds per instance meanwhile");
                return;
            }
        }
    }
}

/// The entry of a caller's window: the caller's key in hex (keys allow few characters).
fn entry_key(unshared: &Unshared) -> String {
    let mut key = format!("w{}.", unshared.window);
    for byte in unshared.key.as_bytes() {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

/// Adds the count to the caller's total and returns the new total.
async fn add(store: &kv::Store, unshared: &Unshared) -> Result<u64, GatewayError> {
    let key = entry_key(unshared);
    let failed = |error: &dyn std::fmt::Display| {
        kv_error(
            format!("cannot add to the rate-limit count {key}"),
            std::io::Error::other(error.to_string()),
        )
    };
    for _ in 0..MAX_ADD_ATTEMPTS {
        let current = store.entry(&key).await.map_err(|e| failed(&e))?;
        let (total, revision) = match current {
            Some(entry) if entry.operation == kv::Operation::Put => (
                std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|text| text.parse::<u64>().ok())
                    .unwrap_or(0),
                Some(entry.revision),
            ),
            _ => (0, None),
        };
        if unshared.count == 0 {
            return Ok(total);
        }
        let new_total = total.saturating_add(unshared.count);
        let value = new_total.to_string().into_bytes().into();
        let written = match revision {
            Some(revision) => store
                .update(&key, value, revision)
                .await
                .map(drop)
                .map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
            None => store.create(&key, value).await.map(drop).map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    e.to_string(),
                )
            }),
        };
        match written {
            Ok(()) => return Ok(new_total),
            // Another instance added in between: read again.
            Err((true, _)) => continue,
            Err((false, error)) => return Err(failed(&error)),
        }
    }
    Err(failed(&"other instances kept changing it"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_use_only_characters_kv_allows() {
        let key = entry_key(&Unshared {
            key: "api:Zoë <ops>/x.y*".into(),
            window: 493_000,
            reset: 0,
            count: 1,
        });
        assert!(key.starts_with("w493000."), "{key}");
        assert!(
            key.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'),
            "{key}"
        );
    }
}
