//! A circuit breaker for calls to a dependency (the database).
//!
//! Closed: calls pass; the breaker opens after `consecutive_failures`
//! failures in a row, or when at least `min_calls` of the last `window`
//! outcomes are recorded and the failure ratio reaches `failure_ratio`.
//! Open: calls fail fast until `cool_down` has elapsed. Half-open: exactly
//! one probe call is let through; success closes the breaker, failure opens
//! it again for another cool-down. Time is `tokio::time::Instant`, so tests
//! drive it with `tokio::time::pause()`.
//!
//! The transition listener runs after the lock is released, never under
//! it: a listener may read the breaker (or take its own locks) without
//! deadlocking it. Two transitions racing on different threads may reach
//! the listener in either order; `state()` is the truth, and the links
//! service's gauge is re-read from it on every scrape.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// Lowercase name used in `/health` and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// Numeric value exported as a gauge: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// Tuning of a breaker.
#[derive(Clone, Debug)]
pub struct BreakerConfig {
    /// Failures in a row that open the breaker.
    pub consecutive_failures: u32,
    /// Failure ratio over the window that opens the breaker.
    pub failure_ratio: f64,
    /// How many recent outcomes the ratio looks at.
    pub window: usize,
    /// Outcomes needed in the window before the ratio is considered.
    pub min_calls: usize,
    /// How long the breaker stays open before a half-open probe.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: 20,
            min_calls: 10,
            cool_down: Duration::from_secs(5),
        }
    }
}

/// Why a call did not produce a value.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker is open (or a half-open probe is already in flight): the
    /// call was not attempted.
    #[error("circuit breaker open")]
    Open,
    /// The call ran and failed.
    #[error(transparent)]
    Inner(E),
}

type Listener = Box<dyn Fn(State, State) + Send + Sync>;

struct Inner {
    state: State,
    consecutive: u32,
    outcomes: VecDeque<bool>,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
}

/// A thread-safe circuit breaker. See the module docs for the state machine.
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
    on_transition: Option<Listener>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish()
    }
}

/// Permission to make one call; report its outcome with `success` or
/// `failure`. Dropping it unreported counts as neither, but frees a
/// half-open probe slot.
#[must_use = "report the outcome of the call"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    done: bool,
}

impl Permit<'_> {
    /// The call succeeded.
    pub fn success(mut self) {
        self.done = true;
        self.breaker.record(true, self.probe);
    }

    /// The call failed in a way that says the dependency is unhealthy.
    pub fn failure(mut self) {
        self.done = true;
        self.breaker.record(false, self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.lock().probe_in_flight = false;
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                outcomes: VecDeque::new(),
                opened_at: None,
                probe_in_flight: false,
            }),
            on_transition: None,
        }
    }

    /// Calls `f(from, to)` on every state change (for metrics and logs).
    pub fn with_listener(mut self, f: impl Fn(State, State) + Send + Sync + 'static) -> Self {
        self.on_transition = Some(Box::new(f));
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state; an open breaker whose cool-down has elapsed reports
    /// half-open, since the next call will be a probe.
    pub fn state(&self) -> State {
        let g = self.lock();
        match g.state {
            State::Open
                if g.opened_at
                    .is_some_and(|t| t.elapsed() >= self.config.cool_down) =>
            {
                State::HalfOpen
            }
            s => s,
        }
    }

    /// Asks to make a call. `None` means fail fast.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut g = self.lock();
        let mut changed = None;
        let permit = self.admit(&mut g, &mut changed);
        drop(g);
        self.notify(changed);
        permit
    }

    /// Decides under the lock; a transition it causes is left in `changed`.
    fn admit(&self, g: &mut Inner, changed: &mut Option<(State, State)>) -> Option<Permit<'_>> {
        match g.state {
            State::Closed => Some(Permit {
                breaker: self,
                probe: false,
                done: false,
            }),
            State::Open => {
                let cooled = g
                    .opened_at
                    .is_some_and(|t| t.elapsed() >= self.config.cool_down);
                if !cooled {
                    return None;
                }
                g.probe_in_flight = true;
                *changed = Self::set(g, State::HalfOpen);
                Some(Permit {
                    breaker: self,
                    probe: true,
                    done: false,
                })
            }
            State::HalfOpen => {
                if g.probe_in_flight {
                    return None;
                }
                g.probe_in_flight = true;
                Some(Permit {
                    breaker: self,
                    probe: true,
                    done: false,
                })
            }
        }
    }

    /// Runs `f` under the breaker. `is_failure` decides which errors count
    /// against the dependency (a constraint violation does not; a lost
    /// connection does).
    pub async fn call<T, E, F>(
        &self,
        f: F,
        is_failure: impl Fn(&E) -> bool,
    ) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().ok_or(BreakerError::Open)?;
        match f.await {
            Ok(v) => {
                permit.success();
                Ok(v)
            }
            Err(e) => {
                if is_failure(&e) {
                    permit.failure();
                } else {
                    permit.success();
                }
                Err(BreakerError::Inner(e))
            }
        }
    }

    fn record(&self, ok: bool, probe: bool) {
        let mut g = self.lock();
        let changed = Self::settle(&self.config, &mut g, ok, probe);
        drop(g);
        self.notify(changed);
    }

    /// Applies one outcome; returns the transition it caused, if any.
    fn settle(
        config: &BreakerConfig,
        g: &mut Inner,
        ok: bool,
        probe: bool,
    ) -> Option<(State, State)> {
        if probe {
            g.probe_in_flight = false;
        }
        match g.state {
            // A call admitted before the breaker opened; only the probe
            // decides what happens next.
            State::HalfOpen if !probe => None,
            State::HalfOpen if ok => {
                g.consecutive = 0;
                g.outcomes.clear();
                g.opened_at = None;
                Self::set(g, State::Closed)
            }
            State::HalfOpen => {
                g.opened_at = Some(Instant::now());
                Self::set(g, State::Open)
            }
            // A call admitted before the breaker opened; it tells us
            // nothing new.
            State::Open => None,
            State::Closed => {
                g.outcomes.push_back(ok);
                while g.outcomes.len() > config.window {
                    g.outcomes.pop_front();
                }
                g.consecutive = if ok { 0 } else { g.consecutive + 1 };
                let failures = g.outcomes.iter().filter(|o| !**o).count();
                let ratio_trips = g.outcomes.len() >= config.min_calls
                    && failures as f64 / g.outcomes.len() as f64 >= config.failure_ratio;
                if !ok && (g.consecutive >= config.consecutive_failures || ratio_trips) {
                    g.opened_at = Some(Instant::now());
                    g.consecutive = 0;
                    g.outcomes.clear();
                    return Self::set(g, State::Open);
                }
                None
            }
        }
    }

    /// Changes the state under the lock; the caller reports the returned
    /// transition with `notify` once the lock is released.
    fn set(g: &mut Inner, to: State) -> Option<(State, State)> {
        let from = g.state;
        if from == to {
            return None;
        }
        g.state = to;
        Some((from, to))
    }

    /// Logs a transition and runs the listener. Never called with the lock
    /// held.
    fn notify(&self, changed: Option<(State, State)>) {
        let Some((from, to)) = changed else { return };
        tracing::warn!(
            from = from.as_str(),
            to = to.as_str(),
            "circuit breaker state change"
        );
        if let Some(f) = &self.on_transition {
            f(from, to);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            window: 10,
            min_calls: 6,
            cool_down: Duration::from_secs(10),
        })
    }

    async fn fail(b: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
        b.call(async { Err::<(), _>("down") }, |_| true).await
    }

    async fn ok(b: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
        b.call(async { Ok::<(), &str>(()) }, |_| true).await
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_after_cool_down() {
        let b = breaker();
        for _ in 0..2 {
            assert!(matches!(fail(&b).await, Err(BreakerError::Inner(_))));
        }
        assert_eq!(b.state(), State::Closed);
        assert!(matches!(fail(&b).await, Err(BreakerError::Inner(_))));
        assert_eq!(b.state(), State::Open);

        // Fails fast without running the call.
        let ran = AtomicUsize::new(0);
        let r = b
            .call(
                async {
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), &str>(())
                },
                |_| true,
            )
            .await;
        assert!(matches!(r, Err(BreakerError::Open)));
        assert_eq!(ran.load(Ordering::SeqCst), 0);

        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(b.state(), State::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(), State::HalfOpen);

        // A failed probe re-opens for a whole cool-down.
        assert!(matches!(fail(&b).await, Err(BreakerError::Inner(_))));
        assert_eq!(b.state(), State::Open);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(ok(&b).await, Err(BreakerError::Open)));
        tokio::time::advance(Duration::from_secs(5)).await;

        // A successful probe closes it.
        assert!(ok(&b).await.is_ok());
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_failure_ratio_without_a_streak() {
        let b = breaker();
        // ok, fail, ok, fail, ... never three failures in a row.
        for i in 0..5 {
            if i % 2 == 0 {
                ok(&b).await.unwrap();
            } else {
                let _ = fail(&b).await;
            }
        }
        assert_eq!(b.state(), State::Closed, "below min_calls");
        let _ = fail(&b).await; // 6 calls, 3 failures: ratio 0.5
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_that_are_not_failures_do_not_count() {
        let b = breaker();
        for _ in 0..10 {
            let r = b.call(async { Err::<(), _>("conflict") }, |_| false).await;
            assert!(matches!(r, Err(BreakerError::Inner("conflict"))));
        }
        assert_eq!(b.state(), State::Closed);
    }

    /// The listener reads the breaker back. Run under the lock (as before
    /// the fix) that re-locks the mutex and deadlocks; the work runs on a
    /// thread bounded by a timeout so the test fails instead of hanging.
    #[test]
    fn the_listener_runs_outside_the_lock() {
        use std::sync::{OnceLock, Weak};
        let me: Arc<OnceLock<Weak<CircuitBreaker>>> = Arc::new(OnceLock::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (me2, seen2) = (me.clone(), seen.clone());
        let b = Arc::new(
            CircuitBreaker::new(BreakerConfig {
                cool_down: Duration::ZERO,
                ..BreakerConfig::default()
            })
            .with_listener(move |_from, to| {
                let b = me2.get().and_then(Weak::upgrade).expect("breaker alive");
                // Reads back through the public getters, as a metrics or
                // health hook would.
                let _ = format!("{b:?}");
                seen2.lock().unwrap().push((to, b.state()));
            }),
        );
        me.set(Arc::downgrade(&b)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = b.clone();
        std::thread::spawn(move || {
            for _ in 0..5 {
                worker.try_acquire().expect("closed admits").failure();
            }
            // Cool-down zero: the next caller is the half-open probe.
            worker.try_acquire().expect("probe admitted").success();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a transition deadlocked: the listener ran under the breaker's lock");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                // `state()` reports half-open for an open breaker whose
                // (zero) cool-down is over.
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::HalfOpen),
                (State::Closed, State::Closed),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_one_probe_at_a_time_and_reports_transitions() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let b = breaker().with_listener(move |f, t| s2.lock().unwrap().push((f, t)));
        for _ in 0..3 {
            let _ = fail(&b).await;
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.try_acquire().expect("probe admitted");
        assert!(
            b.try_acquire().is_none(),
            "second caller waits for the probe"
        );
        drop(probe); // abandoned probe frees the slot
        let probe = b.try_acquire().expect("slot freed");
        probe.success();
        assert_eq!(b.state(), State::Closed);
        // A straggler admitted while closed finishing during half-open
        // decides nothing.
        for _ in 0..3 {
            let _ = fail(&b).await;
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.try_acquire().expect("probe admitted");
        b.record(false, false);
        assert_eq!(b.state(), State::HalfOpen);
        probe.success();
        assert_eq!(b.state(), State::Closed);
        assert_eq!(
            seen.lock().unwrap()[..3],
            vec![
                (State::Closed, State::Open),
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Closed)
            ]
        );
        assert_eq!(seen.lock().unwrap().len(), 6);
    }
}
