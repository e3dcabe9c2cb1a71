//! Rate-limit budgets in process memory: the generic cell rate algorithm
//! (GCRA), the same arithmetic the Redis backend runs in its Lua script.
//!
//! GCRA keeps one number per client, the theoretical arrival time (TAT) of
//! its next request. Each request moves it on by the emission interval
//! `T = 1/rps`; a request is refused when that would put the TAT more than
//! `tau = burst * T` ahead of now. This is a token bucket of `burst`
//! tokens refilled at `rps` (same decisions), with one value to store
//! instead of two, which is what makes the shared version one small
//! script. A client whose TAT has passed holds a full budget and is
//! forgotten.
//!
//! The TAT is stored with the interval and tolerance it was computed
//! under. When limits change, the budget is carried over as a token bucket
//! would carry it: the tokens left stay (capped at the new burst) and
//! refill at the new rate. Without this, a TAT far in the future computed
//! under a slow rate would keep a client refused long after an operator
//! raised the limits.

use std::sync::Mutex;
use std::time::Instant;

use crate::bounded::BoundedMap;
use crate::model::{Limits, Take};

/// Budgets per client key, bounded in size.
#[derive(Debug)]
pub struct LocalBuckets {
    base: Instant,
    /// Key → TAT in seconds since `base`, and the (interval, tau) it was
    /// computed under.
    tats: Mutex<BoundedMap<String, Tat>>,
}

/// A theoretical arrival time and the (interval, tau) it was computed under.
type Tat = (f64, (f64, f64));

/// A TAT computed under `(old_interval, old_tau)`, carried over to
/// `(interval, tau)`: the requests already spent stay spent, less the
/// room a smaller burst takes away (a token bucket's `min(tokens, burst)`).
pub(crate) fn rescale(
    tat: f64,
    now: f64,
    (old_interval, old_tau): (f64, f64),
    (interval, tau): (f64, f64),
) -> f64 {
    if old_interval == interval && old_tau == tau {
        return tat;
    }
    let used = (tat - now).max(0.0) / old_interval;
    let used = (used + tau / interval - old_tau / old_interval).max(0.0);
    now + used * interval
}

/// One GCRA step for a client whose stored TAT is `tat` (None: unknown),
/// at `now`: the decision and the TAT to store when allowed.
pub(crate) fn step(tat: Option<f64>, now: f64, interval: f64, tau: f64) -> (Take, Option<f64>) {
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat + interval;
    let allow_at = new_tat - tau;
    // A thousandth of an interval of slack absorbs float rounding.
    if allow_at - now > interval * 1e-3 {
        let wait = (allow_at - now).ceil().max(1.0);
        return (
            Take {
                allowed: false,
                remaining: 0,
                retry_after_s: wait as u64,
            },
            None,
        );
    }
    let remaining = ((tau - (new_tat - now)) / interval + 1e-6).floor().max(0.0);
    (
        Take {
            allowed: true,
            remaining: remaining as u32,
            retry_after_s: 0,
        },
        Some(new_tat),
    )
}

impl LocalBuckets {
    /// Empty budgets for at most `max_clients` clients at a time.
    pub fn new(max_clients: usize) -> Self {
        Self {
            base: Instant::now(),
            tats: Mutex::new(BoundedMap::new(max_clients)),
        }
    }

    fn now(&self) -> f64 {
        self.base.elapsed().as_secs_f64()
    }

    /// Spends one request of `key`'s budget under `limits`.
    pub fn take(&self, key: &str, limits: &Limits) -> Take {
        let now = self.now();
        let interval = 1.0 / limits.rps;
        let tau = limits.burst * interval;
        let mut tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        let tat = tats
            .get(key)
            .map(|(tat, params)| rescale(*tat, now, *params, (interval, tau)));
        let (take, new_tat) = step(tat, now, interval, tau);
        let entry = match new_tat {
            Some(t) => (t, (interval, tau)),
            // Refused: nothing spent, but keep the rescaled TAT so that the
            // next step starts from it.
            None => match tat {
                Some(t) if tats.get(key).is_some() => (t, (interval, tau)),
                _ => return take,
            },
        };
        // Full budgets are stale; among the rest, the fullest go first.
        *tats.get_or_insert_with(key, || entry, |e| e.0 <= now, |e| OrdF64(e.0)) = entry;
        take
    }

    /// Forgets clients whose budget is full again.
    pub fn prune(&self) {
        let now = self.now();
        self.tats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, e| e.0 > now);
    }

    /// Clients currently tracked.
    pub fn len(&self) -> usize {
        self.tats.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A total order on the (finite) TATs, for eviction.
#[derive(PartialEq)]
struct OrdF64(f64);

impl Eq for OrdF64 {}

impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_behaves_like_a_token_bucket() {
        // burst 3 at 1 per second, all at the same instant.
        let (i, tau) = (1.0, 3.0);
        let mut tat = None;
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let (t, n) = step(tat, 100.0, i, tau);
            assert!(t.allowed);
            remaining.push(t.remaining);
            tat = n;
        }
        assert_eq!(remaining, [2, 1, 0]);
        let (t, n) = step(tat, 100.0, i, tau);
        assert_eq!((t.allowed, t.retry_after_s, n), (false, 1, None));
        // Half a second later still refused, a second later one fits.
        assert!(!step(tat, 100.5, i, tau).0.allowed);
        let (t, _) = step(tat, 101.0, i, tau);
        assert!(t.allowed);
        assert_eq!(t.remaining, 0);
        // Long idle: a full budget again.
        assert_eq!(step(tat, 1000.0, i, tau).0.remaining, 2);
        // Slow rates give long but finite waits.
        let (t, _) = step(Some(100.0 + 2000.0), 100.0, 1000.0, 1000.0);
        assert_eq!(t.retry_after_s, 2000);
    }

    /// Before: a TAT computed under a slow rate kept a client refused long
    /// after the limits were raised.
    #[test]
    fn raised_limits_apply_at_once_and_lowered_bursts_cap_the_budget() {
        let b = LocalBuckets::new(32);
        let slow = Limits {
            rps: 0.01,
            burst: 2.0,
            ..Limits::default()
        };
        assert!(b.take("a", &slow).allowed);
        assert!(b.take("a", &slow).allowed);
        assert!(!b.take("a", &slow).allowed);
        let fast = Limits {
            rps: 1000.0,
            burst: 1000.0,
            ..Limits::default()
        };
        // Empty at the switch (like a token bucket), refilled at the new
        // rate: one more request fits 1 ms later.
        b.take("a", &fast);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(b.take("a", &fast).allowed);
        // A lowered burst caps what is left.
        let t = b.take("b", &fast);
        assert_eq!(t.remaining, 999);
        let small = Limits {
            rps: 0.01,
            burst: 3.0,
            ..Limits::default()
        };
        // 999 left, capped at 3.
        assert_eq!(b.take("b", &small).remaining, 2);
        assert_eq!(b.take("b", &small).remaining, 1);
        assert_eq!(b.take("b", &small).remaining, 0);
        assert!(!b.take("b", &small).allowed);
        // Pure arithmetic: 2 of 2 spent at 100 s each, now 1 per ms, burst
        // 1000: still empty, refilled after one interval.
        let t = rescale(1200.0, 1000.0, (100.0, 200.0), (0.001, 1.0));
        assert!((t - 1001.0).abs() < 1e-9, "{t}");
    }

    #[test]
    fn local_budgets_are_per_key_and_bounded() {
        let b = LocalBuckets::new(32);
        let l = Limits {
            rps: 0.001,
            burst: 2.0,
            ..Limits::default()
        };
        assert!(b.take("a", &l).allowed);
        assert!(b.take("a", &l).allowed);
        assert!(!b.take("a", &l).allowed);
        assert!(b.take("b", &l).allowed);
        for i in 0..1000 {
            b.take(&format!("c{i}"), &l);
        }
        assert!(b.len() <= 32);
    }
}
