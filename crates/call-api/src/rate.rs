//! Rate limits as Outreach sets them: a budget of requests per caller (a token's actor, a
//! producer) in fixed windows aligned to the epoch, the `X-RateLimit-*` values every reply
//! carries, and the bookkeeping that lets several instances share one budget.
//!
//! Each instance counts its own requests and learns what the others counted through
//! [`RateLimiter::unshared`] and [`RateLimiter::learned`]: the transport adds this instance's
//! new counts to a shared total (the gateway keeps it in NATS KV) a few times a second and
//! hands the total back. A caller spread over several instances may so exceed its budget by
//! what the other instances admitted since they last shared, never by more.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

/// A budget: at most `requests` per window of `window_secs` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests admitted per caller and window.
    pub requests: u64,
    /// The window's length in seconds.
    pub window_secs: u64,
}

impl RateLimit {
    /// Outreach's: 10,000 requests per hour.
    pub const DEFAULT: RateLimit = RateLimit {
        requests: 10_000,
        window_secs: 3600,
    };

    /// Parses `N/W` with `W` as `<n>s`, `<n>m` or `<n>h` (`10000/1h`), or `off` (`None`).
    pub fn parse(text: &str) -> Result<Option<RateLimit>, RateLimitSyntax> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let syntax = || RateLimitSyntax(text.to_owned());
        let (requests, window) = text.split_once('/').ok_or_else(syntax)?;
        let requests: u64 = requests.trim().parse().map_err(|_| syntax())?;
        let window = window.trim();
        let unit = match window.chars().last() {
            Some('s') => 1,
            Some('m') => 60,
            Some('h') => 3600,
            _ => return Err(syntax()),
        };
        let count: u64 = window[..window.len() - 1].parse().map_err(|_| syntax())?;
        let window_secs = count.checked_mul(unit).ok_or_else(syntax)?;
        if requests == 0 || window_secs == 0 {
            return Err(syntax());
        }
        Ok(Some(RateLimit {
            requests,
            window_secs,
        }))
    }

    /// The window `now` (epoch seconds) falls in.
    fn window(&self, now: u64) -> u64 {
        now / self.window_secs
    }

    /// When `window` ends, in epoch seconds.
    fn reset(&self, window: u64) -> u64 {
        window.saturating_add(1).saturating_mul(self.window_secs)
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (count, unit) = match self.window_secs {
            secs if secs.is_multiple_of(3600) => (secs / 3600, 'h'),
            secs if secs.is_multiple_of(60) => (secs / 60, 'm'),
            secs => (secs, 's'),
        };
        write!(f, "{}/{count}{unit}", self.requests)
    }
}

impl FromStr for RateLimit {
    type Err = RateLimitSyntax;

    /// As [`RateLimit::parse`], without `off`.
    fn from_str(text: &str) -> Result<RateLimit, RateLimitSyntax> {
        RateLimit::parse(text)?.ok_or_else(|| RateLimitSyntax(text.to_owned()))
    }
}

/// A rate limit that does not read `N/<n>s`, `N/<n>m`, `N/<n>h` or `off`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the rate limit '{0}' does not read N/W with W as <n>s, <n>m or <n>h (such as 10000/1h), \
     or off; N and W must be above 0"
)]
pub struct RateLimitSyntax(pub String);

/// What the limiter says of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is served.
    pub admitted: bool,
    /// The budget per window (`X-RateLimit-Limit`).
    pub limit: u64,
    /// What is left of it after this request (`X-RateLimit-Remaining`).
    pub remaining: u64,
    /// When the window ends, epoch seconds (`X-RateLimit-Reset`).
    pub reset: u64,
    /// Seconds until then, at least 1 (`Retry-After` on a refusal).
    pub retry_after: u64,
}

/// The header of the budget per window.
pub const LIMIT_HEADER: &str = "X-RateLimit-Limit";
/// The header of what is left of it.
pub const REMAINING_HEADER: &str = "X-RateLimit-Remaining";
/// The header of when the window ends, epoch seconds.
pub const RESET_HEADER: &str = "X-RateLimit-Reset";

impl Decision {
    /// Adds the `X-RateLimit-*` headers to `response`, and to a refusal (429) the seconds until
    /// the window ends as its `Retry-After`.
    pub fn mark(&self, response: &mut crate::Response) {
        if response.status == 429 && !self.admitted {
            response
                .headers
                .retain(|(name, _)| !name.eq_ignore_ascii_case(crate::header_names::RETRY_AFTER));
            response.headers.push((
                crate::header_names::RETRY_AFTER.into(),
                self.retry_after.to_string(),
            ));
        }
        response.headers.extend([
            (LIMIT_HEADER.to_owned(), self.limit.to_string()),
            (REMAINING_HEADER.to_owned(), self.remaining.to_string()),
            (RESET_HEADER.to_owned(), self.reset.to_string()),
        ]);
    }
}

/// One caller's counts in its current window.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    window: u64,
    /// Admitted here in this window.
    here: u64,
    /// Of `here`, how many the shared total already holds.
    shared: u64,
    /// What the other instances had admitted, as last learned.
    elsewhere: u64,
}

/// One caller's new counts for the shared total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unshared {
    /// The caller.
    pub key: String,
    /// The window they were counted in.
    pub window: u64,
    /// When that window ends, epoch seconds: the shared total may be forgotten then.
    pub reset: u64,
    /// Requests admitted here that the shared total does not hold yet (0 for a caller that only
    /// wants to learn the others' count).
    pub count: u64,
}

/// Counts requests per caller against a [`RateLimit`].
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    usage: Mutex<HashMap<String, Usage>>,
}

impl RateLimiter {
    /// A limiter with no requests counted yet.
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            usage: Mutex::new(HashMap::new()),
        }
    }

    /// Its budget.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Counts one request of `key` at `now` (epoch seconds) if the budget has room for it.
    pub fn take(&self, key: &str, now: u64) -> Decision {
        let window = self.limit.window(now);
        let reset = self.limit.reset(window);
        let mut usage = self
            .usage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = usage.entry(key.to_owned()).or_default();
        if entry.window != window {
            *entry = Usage {
                window,
                ..Usage::default()
            };
        }
        let used = entry.here.saturating_add(entry.elsewhere);
        let admitted = used < self.limit.requests;
        if admitted {
            entry.here += 1;
        }
        Decision {
            admitted,
            limit: self.limit.requests,
            remaining: self
                .limit
                .requests
                .saturating_sub(entry.here.saturating_add(entry.elsewhere)),
            reset,
            retry_after: reset.saturating_sub(now).max(1),
        }
    }

    /// Every caller of the current window, with what it admitted here since it was last shared;
    /// the callers of past windows are forgotten. Hand each back to [`RateLimiter::learned`]
    /// with the shared total after adding `count` to it.
    pub fn unshared(&self, now: u64) -> Vec<Unshared> {
        let window = self.limit.window(now);
        let mut usage = self
            .usage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        usage.retain(|_, entry| entry.window == window);
        usage
            .iter()
            .map(|(key, entry)| Unshared {
                key: key.clone(),
                window,
                reset: self.limit.reset(window),
                count: entry.here - entry.shared,
            })
            .collect()
    }

    /// Records that the shared total of `unshared`'s caller and window, this instance's
    /// `count` included, is `total`.
    pub fn learned(&self, unshared: &Unshared, total: u64) {
        let mut usage = self
            .usage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(entry) = usage.get_mut(&unshared.key) else {
            return;
        };
        if entry.window != unshared.window {
            return;
        }
        entry.shared = entry.shared.saturating_add(unshared.count).min(entry.here);
        entry.elsewhere = total.saturating_sub(entry.shared);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_as_outreach_writes_them() {
        assert_eq!(RateLimit::parse("10000/1h"), Ok(Some(RateLimit::DEFAULT)));
        assert_eq!(
            RateLimit::parse(" 5/30s "),
            Ok(Some(RateLimit {
                requests: 5,
                window_secs: 30
            }))
        );
        assert_eq!(
            RateLimit::parse("120/2m").map(|l| l.map(|l| l.window_secs)),
            Ok(Some(120))
        );
        assert_eq!(RateLimit::parse("OFF"), Ok(None));
        for bad in [
            "",
            "10000",
            "10000/h",
            "0/1h",
            "5/0s",
            "5/1d",
            "x/1h",
            "5/99999999999999999999h",
        ] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(RateLimit::DEFAULT.to_string(), "10000/1h");
        assert_eq!(
            "90/90s".parse::<RateLimit>().map(|l| l.to_string()),
            Ok("90/90s".into())
        );
        assert!("off".parse::<RateLimit>().is_err());
    }

    #[test]
    fn a_caller_gets_its_budget_per_window_and_no_more() {
        let limiter = RateLimiter::new(RateLimit {
            requests: 3,
            window_secs: 60,
        });
        let remaining: Vec<(bool, u64)> = (0..4)
            .map(|_| limiter.take("a", 125))
            .map(|d| (d.admitted, d.remaining))
            .collect();
        assert_eq!(remaining, [(true, 2), (true, 1), (true, 0), (false, 0)]);
        let refused = limiter.take("a", 125);
        assert_eq!((refused.reset, refused.retry_after), (180, 55));
        // Another caller has its own budget; the next window starts afresh.
        assert!(limiter.take("b", 125).admitted);
        assert_eq!(limiter.take("a", 180).remaining, 2);
    }

    #[test]
    fn instances_share_one_budget_through_the_totals_they_learn() {
        let limit = RateLimit {
            requests: 10,
            window_secs: 60,
        };
        let (one, two) = (RateLimiter::new(limit), RateLimiter::new(limit));
        let mut total = 0;
        let mut share = |limiter: &RateLimiter| {
            for unshared in limiter.unshared(10) {
                total += unshared.count;
                limiter.learned(&unshared, total);
            }
        };
        for _ in 0..4 {
            assert!(one.take("a", 10).admitted);
        }
        share(&one);
        assert!(two.take("a", 10).admitted);
        share(&two);
        // Two learned the 4 of one and its own 1.
        assert_eq!(two.take("a", 10).remaining, 4);
        share(&two);
        share(&one);
        // One learned two's 2: 6 of 10 are used.
        assert_eq!(one.take("a", 10).remaining, 3);
        for _ in 0..3 {
            assert!(one.take("a", 10).admitted);
        }
        assert!(!one.take("a", 10).admitted);
        // Nothing is shared twice.
        share(&one);
        assert_eq!(total, 10);
        assert!(one.unshared(10).iter().all(|u| u.count == 0));
        // Past windows are forgotten.
        assert!(one.unshared(70).is_empty());
    }
}
