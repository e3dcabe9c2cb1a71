//! Balancing over the links replicas: least in-flight requests (not TCP
//! connections: one HTTP/2 connection carries many calls), active
//! `grpc.health.v1` checks with rise/fall thresholds, passive ejection when
//! a connection fails, and retry of idempotent calls on another replica.
//!
//! A replica starts out of rotation and joins after its first passing
//! check. A connection failure takes it out at once; the next passing
//! check brings it back.
//!
//! The set of replicas can change while the edge runs (DNS discovery,
//! `discovery.rs`): it is one immutable list behind an `ArcSwap`, replaced
//! whole by [`Upstreams::set_addrs`]. A request takes one snapshot (an
//! atomic reference count, no lock, no allocation) and keeps it for its
//! retries, so a replica removed mid-call finishes that call on its own
//! channel; replicas whose address stays keep their health state and
//! counters.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use shortlink_runtime::metrics::Metrics;
use shortlink_runtime::shutdown::Shutdown;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Balancer settings.
#[derive(Clone, Debug)]
pub struct BalanceConfig {
    /// Time between active checks of each replica.
    pub interval: Duration,
    /// Bound on one check.
    pub check_timeout: Duration,
    /// Consecutive passing checks that put a replica in rotation.
    pub healthy_after: u32,
    /// Consecutive failing checks that take it out.
    pub unhealthy_after: u32,
    /// Bound on one upstream call.
    pub call_timeout: Duration,
    /// Further attempts on other replicas after a connection failure.
    pub retries: usize,
}

/// One links replica.
#[derive(Debug)]
pub struct Replica {
    /// `host:port` as configured, or `ip:port` as discovered; also the
    /// metric label (bounded by the replicas there are: a removed replica's
    /// series are removed with it).
    pub addr: String,
    channel: Channel,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
}

impl Replica {
    /// Calls in flight on this replica now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether it is in rotation.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// One call counted in flight on a replica (and in its gauge) for as long
/// as this lives. Decrementing on drop, not after the `.await`, is what keeps
/// the count honest when the caller's future is dropped mid-call (client
/// gone, timeout, task aborted): a leaked count would make least-in-flight
/// avoid a healthy replica for ever.
struct InFlight<'a> {
    replica: &'a Replica,
    gauge: prometheus::IntGauge,
}

impl<'a> InFlight<'a> {
    fn enter(replica: &'a Replica, gauges: &IntGaugeVec) -> Self {
        replica.in_flight.fetch_add(1, Ordering::Relaxed);
        let gauge = gauges.with_label_values(&[&replica.addr]);
        gauge.inc();
        Self { replica, gauge }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.replica.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// What went wrong with an upstream call.
#[derive(Debug)]
pub enum CallError {
    /// No replica is in rotation.
    NoReplica,
    /// The replica answered with a gRPC status (a real answer, to be mapped
    /// to HTTP), or the call failed in transport and no retry was allowed
    /// or left.
    Status(tonic::Status),
}

#[derive(Clone)]
struct BalanceMetrics {
    in_flight: IntGaugeVec,
    selections: IntCounterVec,
    healthy: IntGaugeVec,
    failures: IntCounterVec,
}

const FAILURE_KINDS: [&str; 3] = ["connection", "timeout", "health_check"];

impl BalanceMetrics {
    fn add_series(&self, addr: &str) {
        self.healthy.with_label_values(&[addr]).set(0);
        self.in_flight.with_label_values(&[addr]).set(0);
    }

    /// A removed replica's series go with it, so that discovered addresses
    /// (pod IPs change on every rollout) do not pile up. A call still in
    /// flight holds its own handle on the gauge and decrements that.
    fn remove_series(&self, addr: &str) {
        let _ = self.healthy.remove_label_values(&[addr]);
        let _ = self.in_flight.remove_label_values(&[addr]);
        let _ = self.selections.remove_label_values(&[addr]);
        for kind in FAILURE_KINDS {
            let _ = self.failures.remove_label_values(&[addr, kind]);
        }
    }
}

/// The current list of replicas, replaced whole when it changes.
pub type ReplicaSet = Arc<Vec<Arc<Replica>>>;

/// The replica set. Cheap to share (`Arc`).
pub struct Upstreams {
    replicas: ArcSwap<Vec<Arc<Replica>>>,
    /// Serialises `set_addrs`, so that a diff and its swap never interleave
    /// with another.
    updating: tokio::sync::Mutex<()>,
    cfg: BalanceConfig,
    rotate: AtomicUsize,
    metrics: BalanceMetrics,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("replicas", &self.replicas.load())
            .finish()
    }
}

/// True when the status says the call never reached a working replica
/// (connection refused, reset, broken HTTP/2), as opposed to an answer from
/// the service, which carries its own message.
pub fn is_connection_failure(s: &tonic::Status) -> bool {
    if s.code() != tonic::Code::Unavailable
        && s.code() != tonic::Code::Unknown
        && s.code() != tonic::Code::Cancelled
    {
        return false;
    }
    if shortlink_proto::errors::is_database_unavailable(s) || is_timeout(s) {
        return false;
    }
    let m = s.message();
    std::error::Error::source(s).is_some()
        || m.contains("transport error")
        || m.contains("connect")
        || m.contains("connection")
        || m.contains("h2 protocol error")
        || m.contains("broken pipe")
}

/// True when the call hit the client-side deadline (tonic reports it as
/// CANCELLED "Timeout expired"): a slow replica, not a broken one.
pub fn is_timeout(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::DeadlineExceeded
        || (s.code() == tonic::Code::Cancelled
            && s.message().to_ascii_lowercase().contains("timeout"))
}

/// True when nothing was sent (the connection could not be made), so even
/// a non-idempotent call may be tried elsewhere.
fn is_connect_failure(s: &tonic::Status) -> bool {
    let m = s.message();
    m.contains("tcp connect error")
        || m.contains("error trying to connect")
        || m.contains("Connection refused")
}

impl Upstreams {
    /// Creates lazily connected channels. Must run inside the tokio runtime
    /// that will drive them (the edge's client runtime). `addrs` may be
    /// empty when discovery will fill the set.
    pub fn new(
        addrs: &[String],
        cfg: BalanceConfig,
        metrics: &Metrics,
    ) -> anyhow::Result<Arc<Self>> {
        let replicas = addrs
            .iter()
            .map(|a| Self::replica(a, &cfg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let m = BalanceMetrics {
            in_flight: metrics.register(
                IntGaugeVec::new(Opts::new("upstream_in_flight", "Calls in flight per links replica."), &["replica"])
                    .expect("valid metric"),
            ),
            selections: metrics.register(
                IntCounterVec::new(
                    Opts::new("upstream_selections_total", "Times each links replica was picked."),
                    &["replica"],
                )
                .expect("valid metric"),
            ),
            healthy: metrics.register(
                IntGaugeVec::new(
                    Opts::new("upstream_healthy", "1 when the replica is in rotation, else 0."),
                    &["replica"],
                )
                .expect("valid metric"),
            ),
            failures: metrics.register(
                IntCounterVec::new(
                    Opts::new(
                        "upstream_failures_total",
                        "Upstream failures by replica and kind (connection, timeout, health_check).",
                    ),
                    &["replica", "kind"],
                )
                .expect("valid metric"),
            ),
        };
        for r in &replicas {
            m.add_series(&r.addr);
        }
        Ok(Arc::new(Self {
            replicas: ArcSwap::from_pointee(replicas),
            updating: tokio::sync::Mutex::new(()),
            cfg,
            rotate: AtomicUsize::new(0),
            metrics: m,
        }))
    }

    fn replica(addr: &str, cfg: &BalanceConfig) -> anyhow::Result<Arc<Replica>> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| anyhow::anyhow!("bad upstream address {addr:?}: {e}"))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(cfg.call_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        Ok(Arc::new(Replica {
            addr: addr.to_owned(),
            channel: endpoint.connect_lazy(),
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(false),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
        }))
    }

    /// Makes `addrs` the replica set: replicas whose address stays are kept
    /// as they are (health, streaks, connection); new ones are checked once
    /// before they are published, so a healthy newcomer takes traffic at
    /// once; removed ones leave the set in the same swap and finish the
    /// calls they carry. Returns (added, removed).
    pub async fn set_addrs(&self, addrs: &[String]) -> anyhow::Result<(usize, usize)> {
        let _one_at_a_time = self.updating.lock().await;
        let current = self.replicas.load_full();
        let mut next: Vec<Arc<Replica>> = Vec::with_capacity(addrs.len());
        let mut added = Vec::new();
        for a in addrs {
            if next.iter().any(|r| &r.addr == a) {
                continue;
            }
            match current.iter().find(|r| &r.addr == a) {
                Some(r) => next.push(r.clone()),
                None => {
                    let r = Self::replica(a, &self.cfg)?;
                    added.push(r.clone());
                    next.push(r);
                }
            }
        }
        let removed: Vec<Arc<Replica>> = current
            .iter()
            .filter(|r| !next.iter().any(|n| n.addr == r.addr))
            .cloned()
            .collect();
        if added.is_empty() && removed.is_empty() {
            return Ok((0, 0));
        }
        for r in &added {
            self.metrics.add_series(&r.addr);
        }
        futures::future::join_all(added.iter().map(|r| self.check(r))).await;
        self.replicas.store(Arc::new(next));
        for r in &added {
            tracing::info!(replica = %r.addr, healthy = r.is_healthy(), "links replica discovered");
        }
        for r in &removed {
            tracing::info!(replica = %r.addr, in_flight = r.in_flight(), "links replica removed");
            self.metrics.remove_series(&r.addr);
        }
        Ok((added.len(), removed.len()))
    }

    /// Bound on one upstream call (also sent as the call's `grpc-timeout`
    /// where the service plans its work by it).
    pub fn call_timeout(&self) -> Duration {
        self.cfg.call_timeout
    }

    /// The replicas now (a snapshot: the set may change after).
    pub fn replicas(&self) -> ReplicaSet {
        self.replicas.load_full()
    }

    /// (healthy, total) replicas right now, from one snapshot.
    pub fn counts(&self) -> (usize, usize) {
        let set = self.replicas.load();
        (set.iter().filter(|r| r.is_healthy()).count(), set.len())
    }

    /// Healthy replicas right now.
    pub fn healthy_count(&self) -> usize {
        self.counts().0
    }

    /// Least in-flight among healthy replicas of `set` not yet tried; ties
    /// go to the next one in rotation, so equal replicas share the load.
    fn pick(&self, set: &[Arc<Replica>], tried: &[usize]) -> Option<usize> {
        let n = set.len();
        if n == 0 {
            return None;
        }
        let start = self.rotate.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let r = &set[i];
            if tried.contains(&i) || !r.is_healthy() {
                continue;
            }
            let load = r.in_flight();
            if best.is_none_or(|(_, b)| load < b) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }

    fn eject(&self, r: &Replica, kind: &str) {
        self.metrics
            .failures
            .with_label_values(&[&r.addr, kind])
            .inc();
        if r.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(replica = %r.addr, kind, "links replica ejected after a failed call");
            self.metrics.healthy.with_label_values(&[&r.addr]).set(0);
        }
        r.ok_streak.store(0, Ordering::Relaxed);
    }

    /// Runs `f` on the least-loaded healthy replica. When the connection
    /// fails, the replica is ejected and, if the call is `idempotent` (or
    /// nothing was sent), it is tried on another replica, up to the retry
    /// budget. Returns the value and the replica that produced it.
    pub async fn call<T, F, Fut>(
        &self,
        idempotent: bool,
        f: F,
    ) -> Result<(T, Arc<Replica>), CallError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        // One snapshot for the call and its retries: indexes stay valid and
        // a replica removed meanwhile still finishes what it carries.
        let set = self.replicas.load_full();
        let mut tried = Vec::new();
        let mut last: Option<tonic::Status> = None;
        while tried.len() <= self.cfg.retries {
            let Some(i) = self.pick(&set, &tried) else {
                break;
            };
            tried.push(i);
            let r = set[i].clone();
            self.metrics.selections.with_label_values(&[&r.addr]).inc();
            let in_flight = InFlight::enter(&r, &self.metrics.in_flight);
            let res = f(r.channel.clone()).await;
            drop(in_flight);
            match res {
                Ok(v) => return Ok((v, r)),
                Err(s) if is_connection_failure(&s) => {
                    self.eject(&r, "connection");
                    let retry = idempotent || is_connect_failure(&s);
                    tracing::warn!(replica = %r.addr, error = %s.message(), retry, "upstream connection failed");
                    last = Some(s);
                    if !retry {
                        break;
                    }
                }
                Err(s) if is_timeout(&s) => {
                    self.metrics
                        .failures
                        .with_label_values(&[&r.addr, "timeout"])
                        .inc();
                    return Err(CallError::Status(s));
                }
                Err(s) => return Err(CallError::Status(s)),
            }
        }
        match last {
            Some(s) => Err(CallError::Status(s)),
            None => Err(CallError::NoReplica),
        }
    }

    /// Checks every replica once.
    pub async fn check_all(&self) {
        let set = self.replicas.load_full();
        let checks = set.iter().map(|r| self.check(r));
        futures::future::join_all(checks).await;
    }

    async fn check(&self, r: &Replica) {
        let mut client = HealthClient::new(r.channel.clone());
        let req = HealthCheckRequest {
            service: "shortlink.v1.LinkService".into(),
        };
        let ok = matches!(
            tokio::time::timeout(self.cfg.check_timeout, client.check(req)).await,
            Ok(Ok(resp)) if resp.get_ref().status == ServingStatus::Serving as i32
        );
        if ok {
            r.fail_streak.store(0, Ordering::Relaxed);
            let streak = r.ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if streak >= self.cfg.healthy_after && !r.healthy.swap(true, Ordering::Relaxed) {
                tracing::info!(replica = %r.addr, "links replica in rotation");
                self.metrics.healthy.with_label_values(&[&r.addr]).set(1);
            }
        } else {
            r.ok_streak.store(0, Ordering::Relaxed);
            let streak = r.fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
            self.metrics
                .failures
                .with_label_values(&[&r.addr, "health_check"])
                .inc();
            if streak >= self.cfg.unhealthy_after && r.healthy.swap(false, Ordering::Relaxed) {
                tracing::warn!(replica = %r.addr, "links replica out of rotation: health checks failing");
                self.metrics.healthy.with_label_values(&[&r.addr]).set(0);
            }
        }
    }

    /// Checks every replica each interval until shutdown.
    pub async fn run_health_checks(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            self.check_all().await;
            tokio::select! {
                () = tokio::time::sleep(self.cfg.interval) => {}
                () = shutdown.wait() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica that accepts TCP connections and never answers (a hung
    /// process): calls on it stay in flight until the caller gives up.
    async fn silent_replica() -> (String, tokio::task::JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_dropped_call_leaves_nothing_in_flight() {
        let (addr, server) = silent_replica().await;
        let registry = Metrics::new("edge", "test");
        let cfg = BalanceConfig {
            interval: Duration::from_secs(60),
            check_timeout: Duration::from_millis(100),
            healthy_after: 1,
            unhealthy_after: 1,
            // Far longer than the test: only the caller's drop ends the call.
            call_timeout: Duration::from_secs(600),
            retries: 0,
        };
        let up = Upstreams::new(std::slice::from_ref(&addr), cfg, &registry).unwrap();
        let replica = up.replicas()[0].clone();
        replica.healthy.store(true, Ordering::Relaxed);

        let call = {
            let up = up.clone();
            tokio::spawn(async move {
                let _ = up
                    .call(true, |ch| async move {
                        let mut c = HealthClient::new(ch);
                        c.check(HealthCheckRequest::default()).await
                    })
                    .await;
            })
        };
        // The call is on the wire and counted...
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while replica.in_flight() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "call never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(replica.in_flight(), 1);
        // ...until the request future is dropped mid-flight.
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert_eq!(replica.in_flight(), 0, "an abandoned call leaked its count");
        assert_eq!(
            up.metrics
                .in_flight
                .with_label_values(&[&replica.addr])
                .get(),
            0,
            "the gauge leaked too"
        );

        // The same through a timeout around the call.
        let r = tokio::time::timeout(
            Duration::from_millis(200),
            up.call(true, |ch| async move {
                let mut c = HealthClient::new(ch);
                c.check(HealthCheckRequest::default()).await
            }),
        )
        .await;
        assert!(r.is_err(), "the silent replica answered");
        assert_eq!(replica.in_flight(), 0);
        server.abort();
    }

    #[test]
    fn timeouts_answers_and_broken_connections_are_told_apart() {
        let timeout = tonic::Status::cancelled("Timeout expired");
        assert!(is_timeout(&timeout));
        assert!(
            !is_connection_failure(&timeout),
            "a slow replica is not ejected"
        );
        let refused =
            tonic::Status::unavailable("tcp connect error: Connection refused (os error 111)");
        assert!(is_connection_failure(&refused));
        assert!(
            is_connect_failure(&refused),
            "nothing was sent: safe to retry anywhere"
        );
        let db = shortlink_proto::errors::database_unavailable("circuit breaker open");
        assert!(
            !is_connection_failure(&db),
            "an answer from the service is not a broken connection"
        );
        assert!(!is_connection_failure(&tonic::Status::not_found(
            "link not found"
        )));
    }
}
