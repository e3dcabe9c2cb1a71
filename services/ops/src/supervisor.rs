//! The supervision loop, the same for both backends: restart what exited
//! or failed its liveness check, with exponential backoff; give up on a
//! component that keeps failing (crash loop) and say so; carry out the
//! operator's control actions; publish every restart, crash loop and action
//! as an `OpsEvent`; keep Prometheus's file_sd targets in step with what
//! runs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use serde::Serialize;
use shortlink_bus::{Event, EventBus};
use shortlink_proto::events::OpsEvent;
use shortlink_runtime::metrics::Metrics;
use shortlink_runtime::shutdown::Shutdown;
use tokio::sync::Mutex;

use crate::backend::{Backend, Health, Observed, Signal, Status};

/// Restart policy of the loop.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// How often the backend is observed.
    pub tick: Duration,
    /// First restart delay after a failure; doubles with each failure in a row.
    pub backoff_base: Duration,
    /// Largest restart delay.
    pub backoff_max: Duration,
    /// Failures within `crashloop_window` that make a crash loop.
    pub crashloop_failures: usize,
    pub crashloop_window: Duration,
    /// Running and healthy this long resets the backoff.
    pub stable_after: Duration,
    /// This watchdog's name in events (`source`).
    pub source: String,
    /// Where to write Prometheus file_sd targets (process backend).
    pub targets_dir: Option<PathBuf>,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(250),
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            crashloop_failures: 5,
            crashloop_window: Duration::from_secs(120),
            stable_after: Duration::from_secs(30),
            source: "watchdog".into(),
            targets_dir: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Desired {
    Running,
    Stopped,
    Paused,
}

struct Comp {
    kind: String,
    desired: Desired,
    restarts: u32,
    last_restart: Option<DateTime<Utc>>,
    failures: VecDeque<Instant>,
    consecutive: u32,
    crashlooping: bool,
    restart_at: Option<Instant>,
    /// Why the pending restart happens, and its metric label.
    pending: Option<(String, &'static str)>,
    /// Set by an operator's kill or restart: the next exit is expected.
    expected_exit: Option<String>,
    running_since: Option<Instant>,
    last: Option<Observed>,
    /// Bumped by every operator action and every start: an observation
    /// taken before it is stale and is not acted on.
    epoch: u64,
}

impl Comp {
    fn new(kind: String) -> Self {
        Self {
            kind,
            desired: Desired::Running,
            restarts: 0,
            last_restart: None,
            failures: VecDeque::new(),
            consecutive: 0,
            crashlooping: false,
            restart_at: None,
            pending: None,
            expected_exit: None,
            running_since: None,
            last: None,
            epoch: 0,
        }
    }
}

/// One component as the control API shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ComponentView {
    pub name: String,
    pub kind: String,
    /// running, stopped, paused, restarting or crashlooping.
    pub state: &'static str,
    pub pid: Option<u32>,
    pub container_id: Option<String>,
    pub restarts: u32,
    pub last_restart: Option<String>,
    pub healthy: bool,
}

/// What went wrong with a control action.
#[derive(Debug)]
pub enum ActError {
    UnknownComponent(String),
    UnknownAction(String),
    /// The action does not apply now (kill a component that is not running).
    Conflict(String),
    Backend(String),
}

/// The control actions.
pub const ACTIONS: [&str; 6] = ["kill", "stop", "start", "restart", "pause", "resume"];

struct WatchdogMetrics {
    restarts: IntCounterVec,
    crashlooping: IntGaugeVec,
    up: IntGaugeVec,
    actions: IntCounterVec,
}

impl WatchdogMetrics {
    fn new(m: &Metrics) -> Self {
        Self {
            restarts: m.register(
                IntCounterVec::new(
                    Opts::new(
                        "watchdog_restarts_total",
                        "Restarts by the watchdog, by supervised component (name) and why: exited, unhealthy (liveness failed), operator (a control kill or restart).",
                    ),
                    &["name", "reason"],
                )
                .expect("valid metric"),
            ),
            crashlooping: m.register(
                IntGaugeVec::new(
                    Opts::new(
                        "watchdog_crashlooping",
                        "1 while the watchdog has given up restarting the component (crash loop); an operator's start or restart clears it.",
                    ),
                    &["name"],
                )
                .expect("valid metric"),
            ),
            up: m.register(
                IntGaugeVec::new(
                    Opts::new(
                        "watchdog_component_up",
                        "1 when the supervised component runs and passes its liveness check.",
                    ),
                    &["name"],
                )
                .expect("valid metric"),
            ),
            actions: m.register(
                IntCounterVec::new(
                    Opts::new(
                        "watchdog_actions_total",
                        "Control API actions carried out, by component and action.",
                    ),
                    &["name", "action"],
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// A scrape target for file_sd.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub job: String,
    pub name: String,
    pub kind: String,
    pub addr: SocketAddr,
}

/// The loop and its state.
pub struct Supervisor {
    backend: Arc<dyn Backend>,
    cfg: SupervisorConfig,
    state: Mutex<BTreeMap<String, Comp>>,
    bus: Option<(Arc<dyn EventBus>, String)>,
    metrics: WatchdogMetrics,
    targets: Vec<Target>,
    written: std::sync::Mutex<Option<Vec<Target>>>,
    stopping: std::sync::atomic::AtomicBool,
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Supervisor {
    /// A supervisor over `backend`; `targets` are the scrape targets of the
    /// components (process backend), `bus` where events go (topic).
    pub fn new(
        backend: Arc<dyn Backend>,
        cfg: SupervisorConfig,
        metrics: &Metrics,
        bus: Option<(Arc<dyn EventBus>, String)>,
        targets: Vec<Target>,
    ) -> Arc<Self> {
        Arc::new(Self {
            backend,
            cfg,
            state: Mutex::new(BTreeMap::new()),
            bus,
            metrics: WatchdogMetrics::new(metrics),
            targets,
            written: std::sync::Mutex::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn publish(&self, ev: OpsEvent) {
        if let Some((bus, topic)) = &self.bus {
            let key = ev.component.clone();
            bus.publish(topic, Some(&key), Event::Ops(ev).into());
        }
    }

    fn event(&self, kind: &str, component: &str, restarts: u32) -> OpsEvent {
        OpsEvent {
            schema_version: 1,
            time: now_rfc3339(),
            kind: kind.into(),
            component: component.into(),
            restarts,
            actor: "watchdog".into(),
            source: self.cfg.source.clone(),
            level: "INFO".into(),
            ..Default::default()
        }
    }

    /// Starts every component the backend knows that is not running (the
    /// process backend's first start; compose starts its own).
    pub async fn start_all(&self) -> anyhow::Result<()> {
        let observed = self.backend.observe().await?;
        let mut st = self.state.lock().await;
        for o in observed {
            let c = st
                .entry(o.name.clone())
                .or_insert_with(|| Comp::new(o.kind.clone()));
            if matches!(o.status, Status::Exited(_)) {
                self.backend.start(&o.name).await?;
                c.running_since = Some(Instant::now());
            }
        }
        drop(st);
        self.write_targets().await;
        Ok(())
    }

    /// Runs the loop until `shutdown`; from then on nothing is restarted.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep(self.cfg.tick) => {}
            }
            if let Err(e) = self.tick().await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    backend = self.backend.name(),
                    "cannot observe the components"
                );
            }
        }
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Marks the supervisor as stopping: no more restarts.
    pub fn stop_restarting(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn backoff(&self, consecutive: u32) -> Duration {
        let exp = consecutive.saturating_sub(1).min(16);
        self.cfg
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.cfg.backoff_max)
    }

    /// Records a failure; true when it starts a crash loop.
    fn failure(&self, name: &str, c: &mut Comp, why: String, label: &'static str) -> bool {
        let now = Instant::now();
        c.failures.push_back(now);
        while c
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.cfg.crashloop_window)
        {
            c.failures.pop_front();
        }
        c.consecutive += 1;
        c.running_since = None;
        if c.failures.len() >= self.cfg.crashloop_failures {
            c.crashlooping = true;
            c.restart_at = None;
            c.pending = None;
            self.metrics.crashlooping.with_label_values(&[name]).set(1);
            tracing::error!(
                component = name,
                failures = c.failures.len(),
                window_s = self.cfg.crashloop_window.as_secs(),
                last = why.as_str(),
                "component is crash-looping; the watchdog stops restarting it (start or restart it through the control API once fixed)"
            );
            let mut ev = self.event("crashlooping", name, c.restarts);
            ev.level = "ERROR".into();
            ev.reason = format!(
                "{} failures in {} s; last: {why}",
                c.failures.len(),
                self.cfg.crashloop_window.as_secs()
            );
            self.publish(ev);
            return true;
        }
        let delay = self.backoff(c.consecutive);
        c.restart_at = Some(now + delay);
        c.pending = Some((why, label));
        false
    }

    /// One round: observe every component, then restart what needs it.
    /// Observing (liveness checks, Engine API calls) can take seconds when
    /// a component hangs, so it runs without the state lock, and the
    /// control API answers meanwhile. A component an operator acted on
    /// while it was being observed is left to the next round.
    async fn tick(&self) -> anyhow::Result<()> {
        let epochs: HashMap<String, u64> = {
            let st = self.state.lock().await;
            st.iter().map(|(n, c)| (n.clone(), c.epoch)).collect()
        };
        let observed = self.backend.observe().await?;
        let mut st = self.state.lock().await;
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let now = Instant::now();
        let mut to_kill = Vec::new();
        let mut to_start = Vec::new();
        for o in observed {
            let name = o.name.clone();
            let c = st
                .entry(name.clone())
                .or_insert_with(|| Comp::new(o.kind.clone()));
            if epochs.get(&name).is_some_and(|e| *e != c.epoch) {
                continue;
            }
            let up = o.status == Status::Running && o.health == Health::Healthy;
            self.metrics
                .up
                .with_label_values(&[&name])
                .set(i64::from(up));
            c.last = Some(o.clone());
            if c.desired != Desired::Running || c.crashlooping {
                continue;
            }
            match &o.status {
                Status::Running => {
                    if o.health == Health::Unhealthy && c.restart_at.is_none() {
                        let why = format!("liveness failed: {}", o.health_detail);
                        tracing::warn!(component = %name, reason = why.as_str(), "unhealthy; killing it to restart");
                        if !self.failure(&name, c, why, "unhealthy") {
                            to_kill.push(name.clone());
                        }
                    } else if up
                        && c.consecutive > 0
                        && c.running_since
                            .is_some_and(|t| now.duration_since(t) >= self.cfg.stable_after)
                    {
                        c.consecutive = 0;
                    }
                }
                Status::Exited(why) => {
                    if c.restart_at.is_none() {
                        if let Some(reason) = c.expected_exit.take() {
                            c.restart_at = Some(now);
                            c.pending = Some((reason, "operator"));
                        } else {
                            tracing::warn!(component = %name, reason = why.as_str(), "exited; restarting");
                            self.failure(&name, c, why.clone(), "exited");
                        }
                    }
                }
                Status::Paused | Status::Starting => {}
            }
            if let Some(at) = c.restart_at
                && at <= now
                && !matches!(o.status, Status::Running)
            {
                c.restart_at = None;
                let (why, label) = c
                    .pending
                    .take()
                    .unwrap_or_else(|| ("exited".into(), "exited"));
                to_start.push((name.clone(), why, label, c.epoch));
            }
        }
        drop(st);
        for name in to_kill {
            if let Err(e) = self.backend.signal(&name, Signal::Kill).await {
                tracing::warn!(component = %name, error = format!("{e:#}"), "cannot kill the unhealthy component");
            }
        }
        for (name, why, label, epoch) in to_start {
            {
                let mut st = self.state.lock().await;
                let Some(c) = st.get_mut(&name) else { continue };
                if c.epoch != epoch {
                    // An operator acted on it since this round observed it.
                    continue;
                }
                c.epoch += 1;
            }
            let result = self.backend.start(&name).await;
            let mut st = self.state.lock().await;
            let Some(c) = st.get_mut(&name) else { continue };
            match result {
                Ok(()) => {
                    c.restarts += 1;
                    c.last_restart = Some(Utc::now());
                    c.running_since = Some(Instant::now());
                    self.metrics
                        .restarts
                        .with_label_values(&[&name, label])
                        .inc();
                    tracing::warn!(component = %name, restarts = c.restarts, reason = why.as_str(), "restarted");
                    let mut ev = self.event("restarted", &name, c.restarts);
                    ev.level = if label == "operator" { "INFO" } else { "WARN" }.into();
                    ev.reason = why;
                    self.publish(ev);
                }
                Err(e) => {
                    let why = format!("cannot start: {e:#}");
                    tracing::warn!(component = %name, reason = why.as_str(), "restart failed");
                    self.failure(&name, c, why, label);
                }
            }
        }
        self.write_targets().await;
        Ok(())
    }

    fn view(name: &str, c: &Comp) -> ComponentView {
        let status = c.last.as_ref().map(|o| o.status.clone());
        let running = matches!(status, Some(Status::Running));
        let state = if c.crashlooping {
            "crashlooping"
        } else if matches!(status, Some(Status::Paused)) {
            "paused"
        } else if running {
            "running"
        } else if c.desired == Desired::Running {
            "restarting"
        } else {
            "stopped"
        };
        ComponentView {
            name: name.to_owned(),
            kind: c.kind.clone(),
            state,
            pid: c.last.as_ref().and_then(|o| o.pid),
            container_id: c.last.as_ref().and_then(|o| o.container_id.clone()),
            restarts: c.restarts,
            last_restart: c
                .last_restart
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            healthy: running && c.last.as_ref().is_some_and(|o| o.health == Health::Healthy),
        }
    }

    /// Every component, by name.
    pub async fn components(&self) -> Vec<ComponentView> {
        let st = self.state.lock().await;
        st.iter().map(|(n, c)| Self::view(n, c)).collect()
    }

    /// One component.
    pub async fn component(&self, name: &str) -> Option<ComponentView> {
        let st = self.state.lock().await;
        st.get(name).map(|c| Self::view(name, c))
    }

    /// Carries out an operator's action on a component.
    pub async fn act(&self, name: &str, action: &str) -> Result<ComponentView, ActError> {
        if !ACTIONS.contains(&action) {
            return Err(ActError::UnknownAction(action.to_owned()));
        }
        let mut st = self.state.lock().await;
        let c = st
            .get_mut(name)
            .ok_or_else(|| ActError::UnknownComponent(name.to_owned()))?;
        let status = c.last.as_ref().map(|o| o.status.clone());
        let running = matches!(status, Some(Status::Running | Status::Paused));
        let backend_err = |e: anyhow::Error| ActError::Backend(format!("{e:#}"));
        let mut wait_stop = false;
        match action {
            "kill" => {
                if !running {
                    return Err(ActError::Conflict(format!("{name} is not running")));
                }
                c.desired = Desired::Running;
                c.expected_exit = Some("killed by operator".into());
                self.backend
                    .signal(name, Signal::Kill)
                    .await
                    .map_err(backend_err)?;
            }
            "stop" => {
                c.desired = Desired::Stopped;
                c.restart_at = None;
                c.pending = None;
                wait_stop = running;
            }
            "start" | "restart" => {
                c.desired = Desired::Running;
                c.crashlooping = false;
                c.failures.clear();
                c.consecutive = 0;
                self.metrics.crashlooping.with_label_values(&[name]).set(0);
                if running && action == "restart" {
                    c.expected_exit = Some("restarted by operator".into());
                    wait_stop = true;
                } else if !running {
                    c.restart_at = None;
                    c.pending = None;
                    self.backend.start(name).await.map_err(backend_err)?;
                    c.running_since = Some(Instant::now());
                    if action == "restart" {
                        c.restarts += 1;
                        c.last_restart = Some(Utc::now());
                        self.metrics
                            .restarts
                            .with_label_values(&[name, "operator"])
                            .inc();
                    }
                }
            }
            "pause" => {
                if !running {
                    return Err(ActError::Conflict(format!("{name} is not running")));
                }
                c.desired = Desired::Paused;
                self.backend
                    .signal(name, Signal::Pause)
                    .await
                    .map_err(backend_err)?;
            }
            "resume" => {
                c.desired = Desired::Running;
                if matches!(status, Some(Status::Paused)) {
                    self.backend
                        .signal(name, Signal::Resume)
                        .await
                        .map_err(backend_err)?;
                }
            }
            _ => unreachable!("checked against ACTIONS"),
        }
        // What a round observed before this action is stale now (a refused
        // action changed nothing and leaves the round alone).
        c.epoch += 1;
        let restarts = c.restarts;
        drop(st);
        self.metrics
            .actions
            .with_label_values(&[name, action])
            .inc();
        tracing::warn!(component = name, action, "control action");
        let mut ev = self.event("action", name, restarts);
        ev.action = action.into();
        ev.actor = "control-api".into();
        ev.level = "WARN".into();
        self.publish(ev);
        if wait_stop {
            self.backend
                .signal(name, Signal::Stop)
                .await
                .map_err(backend_err)?;
        }
        // Observe once so that the answer shows the new state.
        let _ = self.refresh().await;
        self.write_targets().await;
        self.component(name)
            .await
            .ok_or_else(|| ActError::UnknownComponent(name.to_owned()))
    }

    async fn refresh(&self) -> anyhow::Result<()> {
        let observed = self.backend.observe().await?;
        let mut st = self.state.lock().await;
        for o in observed {
            if let Some(c) = st.get_mut(&o.name) {
                c.last = Some(o);
            }
        }
        Ok(())
    }

    /// Writes `<targets_dir>/<job>.json` for the components that should
    /// run (stopped ones are left out), when the set changed.
    async fn write_targets(&self) {
        let Some(dir) = &self.cfg.targets_dir else {
            return;
        };
        let st = self.state.lock().await;
        let mut current: Vec<Target> = self
            .targets
            .iter()
            .filter(|t| {
                st.get(&t.name)
                    .is_none_or(|c| c.desired != Desired::Stopped)
            })
            .cloned()
            .collect();
        drop(st);
        current.sort();
        {
            let mut w = self.written.lock().expect("targets lock");
            if w.as_ref() == Some(&current) {
                return;
            }
            *w = Some(current.clone());
        }
        let mut by_job: HashMap<&str, Vec<&Target>> = HashMap::new();
        for t in &self.targets {
            by_job.entry(t.job.as_str()).or_default();
        }
        for t in &current {
            by_job.entry(t.job.as_str()).or_default().push(t);
        }
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the targets directory");
            return;
        }
        for (job, targets) in by_job {
            let groups: Vec<serde_json::Value> = targets
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "targets": [t.addr.to_string()],
                        "labels": {"component": t.kind},
                    })
                })
                .collect();
            let body = serde_json::to_vec_pretty(&groups).unwrap_or_default();
            let path = dir.join(format!("{job}.json"));
            let tmp = dir.join(format!(".{job}.json.tmp"));
            let r = std::fs::write(&tmp, &body).and_then(|_| std::fs::rename(&tmp, &path));
            if let Err(e) = r {
                tracing::warn!(path = %path.display(), error = %e, "cannot write file_sd targets");
            }
        }
    }
}
