//! The one retry policy of the code base: every "try again shortly" loop
//! (connecting to the database at start-up, waiting for the broker to
//! create topics, re-running a failed consumer step, re-sending an alert)
//! goes through [`retry`] with a [`Backoff`], instead of a hand-written loop
//! with its own doubling, cap and shutdown check.
//!
//! Delays are deterministic (no jitter): the callers are a handful of
//! processes, not a fleet, and tests drive them with `tokio::time::pause()`.
//! A shutdown signal interrupts the sleep between attempts, never an
//! attempt itself; a caller whose attempt may block for long races it
//! against the signal itself.

use std::future::Future;
use std::time::Duration;

use crate::shutdown::Shutdown;

/// How delays grow between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Growth {
    Constant,
    Linear,
    Exponential,
}

/// When to try again: the delays between attempts and when to give up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    growth: Growth,
    attempts: Option<u32>,
    budget: Option<Duration>,
}

impl Backoff {
    /// `first`, then doubling, never above `max`.
    pub const fn exponential(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            growth: Growth::Exponential,
            attempts: None,
            budget: None,
        }
    }

    /// `step`, `2 × step`, `3 × step`, ..., never above `max`.
    pub const fn linear(step: Duration, max: Duration) -> Self {
        Self {
            first: step,
            max,
            growth: Growth::Linear,
            attempts: None,
            budget: None,
        }
    }

    /// Always `delay`.
    pub const fn constant(delay: Duration) -> Self {
        Self {
            first: delay,
            max: delay,
            growth: Growth::Constant,
            attempts: None,
            budget: None,
        }
    }

    /// At most `n` attempts in all (the first one included).
    pub const fn attempts(mut self, n: u32) -> Self {
        self.attempts = Some(n);
        self
    }

    /// Gives up instead of sleeping past `budget` after the first attempt
    /// started (for start-up waits that must end with a clear error).
    pub const fn give_up_after(mut self, budget: Duration) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The delays after the first, second, ... failed attempt (endless;
    /// `attempts` and `give_up_after` are applied by [`retry`]).
    pub fn delays(&self) -> Delays {
        Delays {
            backoff: *self,
            failures: 0,
        }
    }
}

/// The delay sequence of a [`Backoff`].
#[derive(Clone, Debug)]
pub struct Delays {
    backoff: Backoff,
    failures: u32,
}

impl Delays {
    /// Starts over from the first delay (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let b = &self.backoff;
        let d = match b.growth {
            Growth::Constant => b.first,
            Growth::Linear => b.first.saturating_mul(self.failures.saturating_add(1)),
            Growth::Exponential => b
                .first
                .saturating_mul(2u32.saturating_pow(self.failures.min(31))),
        };
        self.failures = self.failures.saturating_add(1);
        Some(d.min(b.max))
    }
}

/// What to do about a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after the policy's next delay.
    Retry,
    /// Try again after this delay instead (the other side said when, e.g.
    /// HTTP 429 `retry_after`). Still counts as an attempt.
    RetryAfter(Duration),
    /// Stop: the error is final.
    GiveUp,
}

/// A failed attempt, as shown to the error callback.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// How long the policy would wait before the next attempt.
    pub delay: Duration,
    /// Whether the policy allows another attempt at all.
    pub last: bool,
}

/// Why [`retry`] returned without a value.
#[derive(Debug)]
pub enum RetryError<E> {
    /// The error was final, or the attempts or the time budget ran out;
    /// carries the last error.
    GaveUp(E),
    /// The shutdown signal fired while waiting to try again.
    Shutdown,
}

impl<E> RetryError<E> {
    /// The last error, unless the wait was cut short by shutdown.
    pub fn into_error(self) -> Option<E> {
        match self {
            RetryError::GaveUp(e) => Some(e),
            RetryError::Shutdown => None,
        }
    }
}

/// Sleeps for `delay` unless `shutdown` fires first; false if it did.
pub async fn sleep_unless(shutdown: Option<&Shutdown>, delay: Duration) -> bool {
    match shutdown {
        Some(s) => tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = s.wait() => false,
        },
        None => {
            tokio::time::sleep(delay).await;
            true
        }
    }
}

/// Runs `op` until it succeeds, waiting between attempts as `backoff`
/// says. `on_error` sees every failure (log it there) and decides whether
/// to go on. With `shutdown`, a wait ends early with
/// [`RetryError::Shutdown`].
pub async fn retry<T, E, F, Fut>(
    backoff: &Backoff,
    shutdown: Option<&Shutdown>,
    mut op: F,
    mut on_error: impl FnMut(&E, Attempt) -> Verdict,
) -> Result<T, RetryError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = tokio::time::Instant::now();
    let mut delays = backoff.delays();
    let mut number = 0u32;
    loop {
        number = number.saturating_add(1);
        let e = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let policy_delay = delays.next().unwrap_or(backoff.max);
        let out_of_attempts = backoff.attempts.is_some_and(|n| number >= n);
        let over_budget = |d: Duration| {
            backoff
                .budget
                .is_some_and(|b| started.elapsed().saturating_add(d) >= b)
        };
        let attempt = Attempt {
            number,
            delay: policy_delay,
            last: out_of_attempts || over_budget(policy_delay),
        };
        let delay = match on_error(&e, attempt) {
            Verdict::GiveUp => return Err(RetryError::GaveUp(e)),
            Verdict::Retry => policy_delay,
            Verdict::RetryAfter(d) => d,
        };
        if out_of_attempts || over_budget(delay) {
            return Err(RetryError::GaveUp(e));
        }
        if !sleep_unless(shutdown, delay).await {
            return Err(RetryError::Shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_grow_as_configured_and_stop_at_the_cap() {
        let exp: Vec<_> = Backoff::exponential(200 * MS, 5000 * MS)
            .delays()
            .take(7)
            .collect();
        assert_eq!(exp, [200, 400, 800, 1600, 3200, 5000, 5000].map(|m| m * MS));
        let lin: Vec<_> = Backoff::linear(1000 * MS, 3000 * MS)
            .delays()
            .take(4)
            .collect();
        assert_eq!(lin, [1000, 2000, 3000, 3000].map(|m| m * MS));
        let mut c = Backoff::constant(MS).delays();
        assert_eq!((c.next(), c.next()), (Some(MS), Some(MS)));
        // Far along, no overflow.
        let mut far = Backoff::exponential(MS, Duration::from_secs(5)).delays();
        assert_eq!(far.nth(200), Some(Duration::from_secs(5)));
        far.reset();
        assert_eq!(far.next(), Some(MS));
    }

    /// An operation that fails `n` times, then succeeds; records when each
    /// attempt ran (paused time).
    type Times = Arc<std::sync::Mutex<Vec<Duration>>>;

    fn flaky(
        n: u32,
    ) -> (
        Arc<AtomicU32>,
        Times,
        impl FnMut() -> std::future::Ready<Result<u32, String>>,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let at = Arc::new(std::sync::Mutex::new(Vec::new()));
        let start = tokio::time::Instant::now();
        let (c, a) = (calls.clone(), at.clone());
        let op = move || {
            let k = c.fetch_add(1, Ordering::SeqCst) + 1;
            a.lock().unwrap().push(start.elapsed());
            std::future::ready(if k > n {
                Ok(k)
            } else {
                Err(format!("fail {k}"))
            })
        };
        (calls, at, op)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_the_policy_delays_until_success() {
        let (calls, at, op) = flaky(3);
        let b = Backoff::exponential(200 * MS, 500 * MS);
        let v = retry(&b, None, op, |_, _| Verdict::Retry).await.unwrap();
        assert_eq!(v, 4);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(*at.lock().unwrap(), [0, 200, 600, 1100].map(|m| m * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_after_the_attempts_without_a_final_sleep() {
        let (calls, at, op) = flaky(100);
        let b = Backoff::linear(1000 * MS, Duration::from_secs(60)).attempts(3);
        let mut lasts = Vec::new();
        let start = tokio::time::Instant::now();
        let e = retry(&b, None, op, |_, a| {
            lasts.push(a.last);
            Verdict::Retry
        })
        .await
        .unwrap_err();
        assert_eq!(e.into_error().as_deref(), Some("fail 3"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(*at.lock().unwrap(), [0, 1000, 3000].map(|m| m * MS));
        assert_eq!(lasts, [false, false, true]);
        assert_eq!(
            start.elapsed(),
            3000 * MS,
            "no sleep after the last attempt"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_on_a_final_error_and_when_the_budget_is_spent() {
        let (calls, _, op) = flaky(100);
        let b = Backoff::exponential(200 * MS, 2000 * MS);
        let e = retry(&b, None, op, |_, a| {
            if a.number == 2 {
                Verdict::GiveUp
            } else {
                Verdict::Retry
            }
        })
        .await;
        assert!(matches!(e, Err(RetryError::GaveUp(ref m)) if m == "fail 2"));
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // Budget 1 s: attempts at 0, 200, 600 ms; the next wait (800 ms)
        // would end past it.
        let (calls, at, op) = flaky(100);
        let b = b.give_up_after(Duration::from_secs(1));
        assert!(retry(&b, None, op, |_, _| Verdict::Retry).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(*at.lock().unwrap(), [0, 200, 600].map(|m| m * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn the_other_side_may_say_when() {
        let (_, at, op) = flaky(2);
        let b = Backoff::constant(1000 * MS);
        retry(&b, None, op, |_, _| Verdict::RetryAfter(50 * MS))
            .await
            .unwrap();
        assert_eq!(*at.lock().unwrap(), [0, 50, 100].map(|m| m * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait() {
        let (calls, _, op) = flaky(100);
        let s = Shutdown::new();
        let s2 = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            s2.trigger();
        });
        let b = Backoff::constant(Duration::from_secs(1));
        let r = retry(&b, Some(&s), op, |_, _| Verdict::Retry).await;
        assert!(matches!(r, Err(RetryError::Shutdown)));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
