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

use std::sync::Mutex;
use std::time::Instant;

use crate::bounded::BoundedMap;
use crate::model::{Limits, Take};

/// Budgets per client key, bounded in size.
#[derive(Debug)]
pub struct LocalBuckets {
    base: Instant,
    /// Key → TAT in seconds since `base`.
    tats: Mutex<BoundedMap<String, f64>>,
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
        let (take, new_tat) = step(tats.get(key).copied(), now, interval, tau);
        if let Some(t) = new_tat {
            // Full budgets are stale; among the rest, the fullest go first.
            *tats.get_or_insert_with(key, || t, |tat| *tat <= now, |tat| OrdF64(*tat)) = t;
        }
        take
    }

    /// Forgets clients whose budget is full again.
    pub fn prune(&self) {
        let now = self.now();
        self.tats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, tat| *tat > now);
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
