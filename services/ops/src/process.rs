//! The process backend: every component is a child process of the watchdog
//! (the same `shortlink` binary with other arguments). It pipes each
//! child's output to the watchdog's stdout, each line tagged with the
//! component, probes liveness itself, and delivers signals with `kill(2)`.
//!
//! Children run in their own process groups, so a Ctrl-C in the terminal
//! reaches only the watchdog, which then stops them in order. They learn
//! of the watchdog's death from `SHORTLINK_SUPERVISOR_PID` (the runtime
//! watches the parent and stops the process when it goes away), so a
//! `kill -9` of the watchdog leaves no orphans either.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use nix::sys::signal::{Signal as NixSignal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::backend::{Backend, Health, Observed, Signal, Status};
use crate::spec::{Check, ComponentSpec};

/// Liveness and stop timing of the process backend.
#[derive(Clone, Debug)]
pub struct ProcessTiming {
    /// How often each running child is probed.
    pub check_every: Duration,
    /// How long one probe may take.
    pub check_timeout: Duration,
    /// Failed probes in a row that make a child unhealthy.
    pub fail_after: u32,
    /// A child that never passed a probe is not called unhealthy before this.
    pub start_grace: Duration,
    /// SIGTERM to SIGKILL.
    pub stop_grace: Duration,
}

impl Default for ProcessTiming {
    fn default() -> Self {
        Self {
            check_every: Duration::from_secs(1),
            check_timeout: Duration::from_secs(1),
            fail_after: 3,
            start_grace: Duration::from_secs(30),
            stop_grace: Duration::from_secs(25),
        }
    }
}

struct Slot {
    spec: ComponentSpec,
    run: Mutex<Run>,
    health: Mutex<Probe>,
}

#[derive(Default)]
struct Run {
    child: Option<tokio::process::Child>,
    pid: Option<u32>,
    exited: Option<String>,
}

struct Probe {
    failures: u32,
    ever_ok: bool,
    started: Instant,
    detail: String,
}

/// Runs `ComponentSpec`s as child processes.
pub struct ProcessBackend {
    slots: Vec<Arc<Slot>>,
    program: PathBuf,
    timing: ProcessTiming,
    http: reqwest::Client,
}

impl ProcessBackend {
    /// A backend for `specs`; nothing runs until `start`.
    pub fn new(specs: Vec<ComponentSpec>, timing: ProcessTiming) -> anyhow::Result<Arc<Self>> {
        let program = std::env::current_exe().context("cannot find the running binary")?;
        let mut seen = std::collections::HashSet::new();
        for s in &specs {
            if !seen.insert(s.name.clone()) {
                return Err(anyhow!("two components are named {:?}", s.name));
            }
        }
        // reqwest is built without a default TLS provider; the workspace uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timing.check_timeout)
            .no_proxy()
            .build()
            .context("HTTP client for liveness checks")?;
        let this = Arc::new(Self {
            slots: specs
                .into_iter()
                .map(|spec| {
                    Arc::new(Slot {
                        spec,
                        run: Mutex::new(Run::default()),
                        health: Mutex::new(Probe {
                            failures: 0,
                            ever_ok: false,
                            started: Instant::now(),
                            detail: String::new(),
                        }),
                    })
                })
                .collect(),
            program,
            timing,
            http,
        });
        for slot in &this.slots {
            if slot.spec.check != Check::None {
                tokio::spawn(probe_loop(Arc::downgrade(&this), slot.clone()));
            }
        }
        Ok(this)
    }

    /// The specs, in the order given.
    pub fn specs(&self) -> Vec<ComponentSpec> {
        self.slots.iter().map(|s| s.spec.clone()).collect()
    }

    fn slot(&self, name: &str) -> anyhow::Result<&Arc<Slot>> {
        self.slots
            .iter()
            .find(|s| s.spec.name == name)
            .ok_or_else(|| anyhow!("no component named {name:?}"))
    }

    /// Stops every child in stop order (all of one order at once, each
    /// with SIGTERM and SIGKILL after the grace period).
    pub async fn stop_all(&self) {
        let mut orders: Vec<u8> = self.slots.iter().map(|s| s.spec.stop_order).collect();
        orders.sort_unstable();
        orders.dedup();
        for order in orders {
            let names: Vec<&str> = self
                .slots
                .iter()
                .filter(|s| s.spec.stop_order == order)
                .map(|s| s.spec.name.as_str())
                .collect();
            tracing::info!(?names, "stopping");
            futures::future::join_all(names.iter().map(|n| self.signal(n, Signal::Stop))).await;
        }
    }

    /// SIGKILLs every child and reaps it.
    pub async fn kill_all(&self) {
        for slot in &self.slots {
            let child = {
                let mut run = slot.run.lock().expect("run lock");
                run.pid = None;
                run.child.take()
            };
            if let Some(mut c) = child {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
    }

    /// The pids of the running children (for tests and the start table).
    pub fn pids(&self) -> Vec<(String, Option<u32>)> {
        self.slots
            .iter()
            .map(|s| (s.spec.name.clone(), s.run.lock().expect("run lock").pid))
            .collect()
    }
}

/// The state letter of /proc/<pid>/stat ('T' when stopped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

fn describe(status: ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        let name = NixSignal::try_from(sig)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|_| format!("signal {sig}"));
        format!("killed by {name}")
    } else {
        format!("exited with status {}", status.code().unwrap_or(-1))
    }
}

async fn pipe_lines(name: String, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("{name:<18}| {line}");
    }
}

async fn probe_loop(backend: std::sync::Weak<ProcessBackend>, slot: Arc<Slot>) {
    loop {
        let Some(b) = backend.upgrade() else { return };
        let every = b.timing.check_every;
        let pid = slot.run.lock().expect("run lock").pid;
        let running = pid.is_some_and(|p| proc_state(p).is_some_and(|s| s != 'T'));
        if running {
            let result = check(&b.http, &slot.spec.check, b.timing.check_timeout).await;
            // A restart while the probe ran resets the counters; a late
            // answer about the old process must not count.
            let still = slot.run.lock().expect("run lock").pid == pid;
            if still {
                let mut h = slot.health.lock().expect("health lock");
                match result {
                    Ok(()) => {
                        h.failures = 0;
                        h.ever_ok = true;
                        h.detail.clear();
                    }
                    Err(e) => {
                        h.failures += 1;
                        h.detail = e;
                    }
                }
            }
        }
        drop(b);
        tokio::time::sleep(every).await;
    }
}

/// Runs one liveness check.
pub async fn check(http: &reqwest::Client, check: &Check, timeout: Duration) -> Result<(), String> {
    match check {
        Check::None => Ok(()),
        Check::Http { addr, path } => {
            let url = format!("http://{addr}{path}");
            match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("GET {url} answered {}", r.status().as_u16())),
                Err(e) if e.is_timeout() => Err(format!("GET {url} timed out")),
                Err(e) if e.is_connect() => Err(format!("GET {url}: connection refused")),
                Err(e) => Err(format!("GET {url}: {e}")),
            }
        }
        Check::Grpc { addr } => {
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| e.to_string())?
                .connect_timeout(timeout)
                .timeout(timeout);
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| format!("gRPC {addr}: {e}"))?;
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            let resp = client
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map_err(|e| format!("gRPC health {addr}: {}", e.message()))?;
            if resp.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                Ok(())
            } else {
                Err(format!("gRPC health {addr}: not SERVING"))
            }
        }
    }
}

#[async_trait]
impl Backend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn observe(&self) -> anyhow::Result<Vec<Observed>> {
        let mut out = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let (status, pid) = {
                let mut run = slot.run.lock().expect("run lock");
                if let Some(c) = run.child.as_mut()
                    && let Ok(Some(st)) = c.try_wait()
                {
                    run.exited = Some(describe(st));
                    run.child = None;
                    run.pid = None;
                }
                match (run.pid, &run.exited) {
                    (Some(pid), _) if proc_state(pid) == Some('T') => (Status::Paused, Some(pid)),
                    (Some(pid), _) => (Status::Running, Some(pid)),
                    (None, Some(why)) => (Status::Exited(why.clone()), None),
                    (None, None) => (Status::Exited("not started".into()), None),
                }
            };
            let (health, detail) = {
                let h = slot.health.lock().expect("health lock");
                let judged = h.ever_ok || h.started.elapsed() >= self.timing.start_grace;
                let health = if slot.spec.check == Check::None {
                    if status == Status::Running {
                        Health::Healthy
                    } else {
                        Health::Unknown
                    }
                } else if judged && h.failures >= self.timing.fail_after {
                    Health::Unhealthy
                } else if h.ever_ok && h.failures == 0 {
                    Health::Healthy
                } else {
                    Health::Unknown
                };
                (health, h.detail.clone())
            };
            out.push(Observed {
                name: slot.spec.name.clone(),
                kind: slot.spec.kind.clone(),
                status,
                health,
                pid,
                container_id: None,
                health_detail: detail,
            });
        }
        Ok(out)
    }

    async fn start(&self, name: &str) -> anyhow::Result<()> {
        let slot = self.slot(name)?;
        let mut run = slot.run.lock().expect("run lock");
        if let Some(c) = run.child.as_mut()
            && matches!(c.try_wait(), Ok(None))
        {
            return Ok(());
        }
        let spec = &slot.spec;
        let program = spec.program.clone().unwrap_or_else(|| self.program.clone());
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SHORTLINK_SUPERVISOR_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        if let Some(o) = child.stdout.take() {
            tokio::spawn(pipe_lines(spec.name.clone(), o));
        }
        if let Some(e) = child.stderr.take() {
            tokio::spawn(pipe_lines(spec.name.clone(), e));
        }
        {
            let mut h = slot.health.lock().expect("health lock");
            *h = Probe {
                failures: 0,
                ever_ok: false,
                started: Instant::now(),
                detail: String::new(),
            };
        }
        run.pid = child.id();
        run.child = Some(child);
        run.exited = None;
        Ok(())
    }

    async fn signal(&self, name: &str, signal: Signal) -> anyhow::Result<()> {
        let slot = self.slot(name)?;
        let pid = slot
            .run
            .lock()
            .expect("run lock")
            .pid
            .ok_or_else(|| anyhow!("{name} is not running"))?;
        let pid_t = Pid::from_raw(pid as i32);
        let send =
            |s: NixSignal| kill(pid_t, s).with_context(|| format!("kill -{s} {name} ({pid})"));
        match signal {
            Signal::Kill => send(NixSignal::SIGKILL),
            Signal::Pause | Signal::Resume => {
                let stop = signal == Signal::Pause;
                send(if stop {
                    NixSignal::SIGSTOP
                } else {
                    NixSignal::SIGCONT
                })?;
                // Delivery is asynchronous: return once /proc shows it, so
                // that the answer to the action shows the new state.
                for _ in 0..100 {
                    if (proc_state(pid) == Some('T')) == stop {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(())
            }
            Signal::Stop => {
                send(NixSignal::SIGTERM)?;
                // A stopped process only acts on SIGTERM once continued.
                let _ = kill(pid_t, NixSignal::SIGCONT);
                let deadline = Instant::now() + self.timing.stop_grace;
                loop {
                    {
                        let mut run = slot.run.lock().expect("run lock");
                        if run.pid != Some(pid) {
                            return Ok(());
                        }
                        if let Some(c) = run.child.as_mut()
                            && let Ok(Some(st)) = c.try_wait()
                        {
                            run.exited = Some(describe(st));
                            run.child = None;
                            run.pid = None;
                            return Ok(());
                        }
                    }
                    if Instant::now() >= deadline {
                        tracing::warn!(
                            component = name,
                            "did not stop within the grace period; killing it"
                        );
                        send(NixSignal::SIGKILL)?;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
