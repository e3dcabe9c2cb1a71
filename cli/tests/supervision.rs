//! The watchdog and `up --ha` (real processes on loopback, PostgreSQL,
//! Redis and the test broker), the docker backend against a stub of the
//! Engine API, and backups with restore.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use shortlink_testkit::{TestDb, eventually, free_port, http, http_get, random_suffix};
use support::{BIN, Proc, kafka_brokers, post_json};

fn tmp_dir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shortlink-{what}-{}", random_suffix()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn auth(token: &str) -> String {
    format!("Bearer {token}")
}

async fn control(addr: SocketAddr, token: &str, method: &str, path: &str) -> (u16, Value) {
    let a = auth(token);
    let r = http(addr, method, path, &[("Authorization", a.as_str())], b"").await;
    let v = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

async fn component(addr: SocketAddr, token: &str, name: &str) -> Value {
    let (s, v) = control(addr, token, "GET", "/components").await;
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no component {name} in {v}"))
}

fn alive(pid: u64) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// `shortlink up --ha` on its own database, cache prefix, topics and ports.
struct Ha {
    proc: Proc,
    edges: Vec<SocketAddr>,
    watchdog: SocketAddr,
    watchdog_metrics: SocketAddr,
    token: String,
    dir: PathBuf,
    out: PathBuf,
    prefix: String,
    _db: TestDb,
}

impl Ha {
    async fn start(extra: &[(&str, String)]) -> Self {
        let db = TestDb::new().await;
        shortlink_testkit::require_redis().await;
        let brokers = kafka_brokers();
        let base = support::port_block(&[0, 1, 2, 3, 14, 24, 80, 85, 90, 91, 92]);
        let dir = tmp_dir("ha");
        let out = dir.join("stdout.log");
        let prefix = format!("ha{}.", random_suffix());
        let token = format!("test-token-{}", random_suffix());
        let port = |o: u16| (base + o).to_string();
        let mut envs: Vec<(&str, String)> = vec![
            ("DATABASE_URL", db.url.clone()),
            ("REDIS_URL", shortlink_testkit::redis_url()),
            ("KAFKA_BROKERS", brokers),
            ("KAFKA_TOPIC_PREFIX", prefix.clone()),
            ("KAFKA_TOPIC_PARTITIONS", "1".into()),
            ("CACHE_PREFIX", format!("test:{}:", random_suffix())),
            (
                "ABUSE_KEY_PREFIX",
                format!("test:{}:abuse:", random_suffix()),
            ),
            ("RATE_LIMIT_RPS", "100000".into()),
            ("RATE_LIMIT_BURST", "100000".into()),
            ("EDGE_HEALTH_INTERVAL_MS", "200".into()),
            ("EDGE_UPSTREAM_TIMEOUT_MS", "1000".into()),
            ("HEALTH_INTERVAL_MS", "200".into()),
            ("SHUTDOWN_DELAY_MS", "0".into()),
            ("EDGE_GRACE_PERIOD_S", "1".into()),
            ("WATCHDOG_TOKEN", token.clone()),
            ("WATCHDOG_CHECK_INTERVAL_MS", "300".into()),
            ("LOG_LEVEL", "info".into()),
            // The dashboard component, off its default port 3000.
            ("DASHBOARD_ADDR", format!("127.0.0.1:{}", port(92))),
        ];
        envs.extend(extra.iter().cloned());
        let args = [
            "up",
            "--ha",
            "--no-backup",
            "--edge-http-port",
            &port(0),
            "--edge-https-port",
            &port(2),
            "--side-port-base",
            &port(4),
            "--links-grpc-port",
            &port(80),
            "--admin-grpc-port",
            &port(85),
            "--watchdog-addr",
            &format!("127.0.0.1:{}", port(90)),
            "--watchdog-metrics-addr",
            &format!("127.0.0.1:{}", port(91)),
            "--ha-data-dir",
            &dir.display().to_string(),
        ];
        let mut proc = support::spawn_to_file(&args, &envs, &out);
        let edges: Vec<SocketAddr> = (0..2)
            .map(|i| format!("127.0.0.1:{}", base + i).parse().unwrap())
            .collect();
        for e in &edges {
            support::wait_http_ok(&mut proc, *e, "/ready").await;
        }
        let ha = Self {
            proc,
            edges,
            watchdog: format!("127.0.0.1:{}", port(90)).parse().unwrap(),
            watchdog_metrics: format!("127.0.0.1:{}", port(91)).parse().unwrap(),
            token,
            dir,
            out,
            prefix,
            _db: db,
        };
        // Every replica in rotation on both edges.
        for e in &ha.edges {
            assert!(
                eventually(Duration::from_secs(60), async || healthy_replicas(*e).await
                    == 3)
                .await,
                "edge {e} never saw 3 healthy replicas"
            );
        }
        ha
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    async fn metric(&self, line_prefix: &str) -> f64 {
        let (_, body) = http_get(self.watchdog_metrics, "/metrics").await;
        body.lines()
            .filter(|l| l.starts_with(line_prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

async fn healthy_replicas(edge: SocketAddr) -> u64 {
    let (s, body) = http_get(edge, "/health").await;
    if s == 0 {
        return 0;
    }
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["healthy_replicas"].as_u64())
        .unwrap_or(0)
}

/// Bounded redirect load from `clients` clients on `edge` (at most 120 s
/// and 200,000 requests each).
fn timed(edge: SocketAddr, code: &str, clients: usize) -> support::Load {
    support::Load::start(edge, code, clients, 120, 200_000)
}

/// Collects the OpsEvents of a topic prefix.
async fn ops_events(prefix: &str) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let metrics = shortlink_runtime::metrics::Metrics::new("test", "t");
    let bus = shortlink_bus::connect(
        &shortlink_bus::BusArgs {
            kafka_brokers: Some(kafka_brokers()),
            topic_prefix: prefix.to_owned(),
            topic_partitions: 1,
            ..shortlink_bus::BusArgs::default()
        },
        &metrics,
    )
    .unwrap();
    let topics = shortlink_bus::Topics::with_prefix(prefix);
    bus.ensure_topics(&topics.all()).await.unwrap();
    let mut sub = bus
        .subscribe(&format!("test-{}", random_suffix()), &[topics.ops])
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _bus = bus;
        while let Ok(d) = sub.next().await {
            if let Ok(e) = d.decode::<shortlink_proto::events::OpsEvent>() {
                let _ = tx.send(serde_json::to_value(&e).unwrap());
            }
        }
    });
    rx
}

async fn wait_event(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    seen: &mut Vec<Value>,
    what: impl Fn(&Value) -> bool,
) -> Value {
    if let Some(v) = seen.iter().find(|v| what(v)) {
        return v.clone();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(v)) => {
                seen.push(v.clone());
                if what(&v) {
                    return v;
                }
            }
            _ => panic!("no such ops event within 30 s; seen: {seen:#?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_ha_runs_the_topology_and_the_watchdog_heals_kills_and_pauses() {
    let mut ha = Ha::start(&[]).await;
    let (a, b) = (ha.edges[0], ha.edges[1]);
    let mut ops = ops_events(&ha.prefix).await;
    let mut seen = Vec::new();

    // A link created through edge A redirects through edge B.
    let (_, code) = support::user_and_link(a, "hauser").await;
    let r = http(b, "GET", &format!("/{code}"), &[], b"").await;
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(r.header("location"), Some("https://example.com/p"));

    // Every child's lines reach the supervisor's stdout, tagged.
    let log = ha.log();
    for name in ["edge-1", "edge-2", "links-1", "links-3", "admin", "alerter"] {
        assert!(
            log.lines().any(|l| l.starts_with(&format!("{name} "))),
            "no line tagged {name} in the supervisor's output:\n{}",
            &log[..log.len().min(4000)]
        );
    }
    // The start table.
    assert!(
        log.contains("COMPONENT") && log.contains("links-2"),
        "{log}"
    );
    // file_sd targets for what runs.
    let edges_sd: Value =
        serde_json::from_str(&std::fs::read_to_string(ha.dir.join("targets/edge.json")).unwrap())
            .unwrap();
    assert_eq!(edges_sd.as_array().unwrap().len(), 2, "{edges_sd}");

    // The control API: every component, with pids.
    let (s, list) = control(ha.watchdog, &ha.token, "GET", "/components").await;
    assert_eq!(s, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for n in [
        "edge-1",
        "edge-2",
        "links-1",
        "links-2",
        "links-3",
        "admin",
        "analytics",
        "log-printer",
        "dashboard",
        "alerter",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let pids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pid"].as_u64().unwrap())
        .collect();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "running"),
        "{list}"
    );
    let (s, e) = control(ha.watchdog, &ha.token, "POST", "/components/nope/kill").await;
    assert_eq!((s, e["error"].is_string()), (404, true), "{e}");
    let (s, e) = control(
        ha.watchdog,
        &ha.token,
        "POST",
        "/components/links-1/explode",
    )
    .await;
    assert_eq!((s, e["error"].is_string()), (400, true), "{e}");

    // 1. SIGKILL a links replica under load through both edges.
    let load = [timed(a, &code, 4), timed(b, &code, 4)];
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = component(ha.watchdog, &ha.token, "links-2").await;
    let t = Instant::now();
    let (s, v) = control(ha.watchdog, &ha.token, "POST", "/components/links-2/kill").await;
    assert_eq!(s, 200, "{v}");
    assert!(
        eventually(Duration::from_secs(30), async || {
            let c = component(ha.watchdog, &ha.token, "links-2").await;
            c["state"] == "running" && c["healthy"] == true && c["pid"] != before["pid"]
        })
        .await,
        "links-2 was not restarted"
    );
    assert!(
        eventually(Duration::from_secs(30), async || healthy_replicas(a).await
            == 3
            && healthy_replicas(b).await == 3)
        .await,
        "links-2 did not come back into rotation"
    );
    let back_in_rotation = t.elapsed();
    // Enough requests for a 0.1 % bound to mean something.
    eventually(Duration::from_secs(30), async || {
        load.iter().map(support::Load::done).sum::<u64>() >= 2000
    })
    .await;
    let mut failed = 0;
    let mut total = 0;
    for l in load {
        let (f, n) = l.finish_now().await;
        failed += f;
        total += n;
    }
    println!(
        "links replica kill: back in rotation after {back_in_rotation:?}; {failed} of {total} requests failed"
    );
    assert!(total >= 1000, "too little load to judge: {total}");
    assert!(
        failed * 1000 < total,
        "{failed} of {total} requests failed (limit 0.1%)"
    );
    let c = component(ha.watchdog, &ha.token, "links-2").await;
    assert_eq!(c["restarts"], 1, "{c}");
    assert!(c["last_restart"].is_string(), "{c}");
    assert_eq!(ha.metric("shortlink_watchdog_restarts_total{").await, 1.0);
    wait_event(&mut ops, &mut seen, |e| {
        e["kind"] == "action" && e["action"] == "kill" && e["component"] == "links-2"
    })
    .await;
    let ev = wait_event(&mut ops, &mut seen, |e| {
        e["kind"] == "restarted" && e["component"] == "links-2"
    })
    .await;
    assert_eq!(ev["reason"], "killed by operator", "{ev}");

    // 2. Kill edge A: clients of edge B see nothing; A is back within 5 s.
    let load_b = timed(b, &code, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let (s, _) = control(ha.watchdog, &ha.token, "POST", "/components/edge-1/kill").await;
    assert_eq!(s, 200);
    assert!(
        eventually(Duration::from_secs(5), async || {
            http_get_ok(a, "/ready").await
        })
        .await,
        "edge-1 was not back within 5 s"
    );
    let edge_back = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (f, n) = load_b.finish_now().await;
    println!("edge kill: back after {edge_back:?}; edge B clients: {f} of {n} failed");
    assert_eq!(f, 0, "clients of the other edge saw {f} failures of {n}");
    assert!(n > 50, "too little load on edge B: {n}");

    // 3. Pause a replica (a hung process): the edges eject it, no request
    // waits longer than the upstream timeout (1 s here), and the watchdog
    // leaves it paused.
    let load = [timed(a, &code, 4), timed(b, &code, 4)];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, v) = control(ha.watchdog, &ha.token, "POST", "/components/links-3/pause").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("paused")), "{v}");
    assert!(
        eventually(Duration::from_secs(10), async || healthy_replicas(a).await
            == 2
            && healthy_replicas(b).await == 2)
        .await,
        "the edges did not eject the paused replica"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = component(ha.watchdog, &ha.token, "links-3").await;
    assert_eq!(
        (c["state"].as_str(), c["restarts"].as_u64()),
        (Some("paused"), Some(0)),
        "{c}"
    );
    let (s, _) = control(ha.watchdog, &ha.token, "POST", "/components/links-3/resume").await;
    assert_eq!(s, 200);
    assert!(
        eventually(Duration::from_secs(10), async || healthy_replicas(a).await
            == 3
            && healthy_replicas(b).await == 3)
        .await,
        "the resumed replica was not readmitted"
    );
    let mut slowest = Duration::ZERO;
    let (mut failed, mut total) = (0, 0);
    let statuses: Vec<u16> = load.iter().flat_map(|l| l.failures()).collect();
    for l in load {
        let (f, n, s) = l.finish_now_timed().await;
        failed += f;
        total += n;
        slowest = slowest.max(s);
    }
    println!("pause: slowest request {slowest:?}; {failed} of {total} failed");
    // The edge answers at its 1 s upstream timeout; what the client sees
    // on top is its own and the edge's scheduling on a loaded 2-core
    // machine. Twice the timeout would mean a timed-out call was retried.
    assert!(
        slowest < Duration::from_millis(1900),
        "a request waited {slowest:?}: more than the upstream timeout (1 s) allows"
    );
    // Requests already sent to the replica when it hung, and those sent to
    // it before the health checks ejected it, are answered 504 at the
    // upstream timeout (a timed-out call is not retried: that would double
    // the wait); at most one per client, everything else succeeds.
    assert!(
        statuses.iter().all(|s| *s == 504) && failed <= 8,
        "{failed} of {total} failed during the pause, statuses {statuses:?}"
    );
    assert_eq!(c["restarts"], 0);

    // The control API refuses requests without or with a wrong token.
    let r = http(ha.watchdog, "GET", "/components", &[], b"").await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.json()["error"].is_string());
    let r = http(
        ha.watchdog,
        "POST",
        "/components/links-1/kill",
        &[("Authorization", "Bearer wrong-token")],
        b"",
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        component(ha.watchdog, &ha.token, "links-1").await["restarts"],
        0
    );

    // SIGTERM: every child stops, edges first, and none is left behind.
    let pids_now: Vec<u64> = control(ha.watchdog, &ha.token, "GET", "/components")
        .await
        .1
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["pid"].as_u64())
        .collect();
    assert!(pids_now.len() >= pids.len());
    ha.proc.sigterm();
    let st = ha.proc.wait_exit(Duration::from_secs(60)).await;
    assert!(st.success(), "up --ha exited with {st}");
    let orphans: Vec<u64> = pids_now.iter().copied().filter(|p| alive(*p)).collect();
    assert!(orphans.is_empty(), "children left running: {orphans:?}");
    let log = ha.log();
    let edge_stop = log.find("stopping").unwrap_or(0);
    assert!(
        log[edge_stop..].contains("edge-1"),
        "edges were not stopped first:\n{}",
        &log[edge_stop..]
    );
}

/// `GET path` answers 200; any connection error is a no (the process may
/// be dying or starting).
async fn http_get_ok(addr: SocketAddr, path: &str) -> bool {
    tokio::time::timeout(Duration::from_secs(2), support::get_status(addr, path))
        .await
        .is_ok_and(|s| s == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_supervisor_leaves_no_children_behind() {
    let ha = Ha::start(&[]).await;
    let pids = async || {
        let (_, list) = control(ha.watchdog, &ha.token, "GET", "/components").await;
        let pids: Vec<u64> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["pid"].as_u64())
            .collect();
        (pids, list)
    };
    // Every child observed running (the watchdog's first round).
    assert!(
        eventually(Duration::from_secs(10), async || pids().await.0.len() == 10).await,
        "{}",
        pids().await.1
    );
    let (pids, _) = pids().await;
    let mut ha = ha;
    ha.proc.signal("KILL");
    let _ = ha.proc.wait_exit(Duration::from_secs(5)).await;
    assert!(
        eventually(Duration::from_secs(40), async || pids
            .iter()
            .all(|p| !alive(*p)))
        .await,
        "children outlived a SIGKILLed supervisor: {:?}",
        pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
}

fn write_spec(dir: &Path, spec: Value) -> PathBuf {
    let p = dir.join("spec.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_watchdog_declares_crash_loops_restarts_hung_children_and_keeps_targets() {
    let dir = tmp_dir("watchdog");
    let (ctl, metrics) = (free_port(), free_port());
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap(); // accepts, never answers
    let hung = silent.local_addr().unwrap();
    let sleeper_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let spec = write_spec(
        &dir,
        serde_json::json!([
            // Exits at once on every start: a configuration error.
            {"name": "broken", "kind": "links", "args": ["links", "--grpc-addr", "not-an-address"],
             "check": {"type": "none"}},
            // Runs, but its liveness check never answers.
            {"name": "hung", "kind": "test", "program": "/bin/sleep", "args": ["600"],
             "check": {"type": "http", "addr": hung.to_string(), "path": "/live"}},
            // Runs and has no check.
            {"name": "steady", "kind": "test", "program": "/bin/sleep", "args": ["600"],
             "check": {"type": "none"}, "metrics": sleeper_metrics.to_string(), "job": "tests"}
        ]),
    );
    let prefix = format!("wd{}.", random_suffix());
    let mut ops = ops_events(&prefix).await;
    let mut seen = Vec::new();
    let token = "a-watchdog-token-for-tests".to_owned();
    let mut wd = support::spawn_raw(
        &["watchdog", "--backend", "process"],
        &[
            ("WATCHDOG_SPEC", spec.display().to_string()),
            ("WATCHDOG_ADDR", format!("127.0.0.1:{ctl}")),
            ("WATCHDOG_METRICS_ADDR", format!("127.0.0.1:{metrics}")),
            (
                "WATCHDOG_TARGETS_DIR",
                dir.join("targets").display().to_string(),
            ),
            ("WATCHDOG_TOKEN", token.clone()),
            ("WATCHDOG_CRASHLOOP_FAILURES", "4".into()),
            ("WATCHDOG_CRASHLOOP_WINDOW_S", "60".into()),
            ("WATCHDOG_BACKOFF_BASE_MS", "50".into()),
            ("WATCHDOG_CHECK_INTERVAL_MS", "200".into()),
            ("WATCHDOG_FAIL_AFTER", "3".into()),
            ("WATCHDOG_START_GRACE_S", "1".into()),
            ("KAFKA_BROKERS", kafka_brokers()),
            ("KAFKA_TOPIC_PREFIX", prefix.clone()),
        ],
    );
    let ctl: SocketAddr = format!("127.0.0.1:{ctl}").parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{metrics}").parse().unwrap();
    support::wait_http_ok(&mut wd, metrics, "/live").await;

    // The crash loop: four failures in the window, then no more restarts.
    assert!(
        eventually(Duration::from_secs(20), async || component(
            ctl, &token, "broken"
        )
        .await["state"]
            == "crashlooping")
        .await,
        "never declared crash-looping: {}",
        component(ctl, &token, "broken").await
    );
    let c = component(ctl, &token, "broken").await;
    assert_eq!(c["restarts"], 3, "{c}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        component(ctl, &token, "broken").await["restarts"],
        3,
        "restarted after the crash loop"
    );
    let (_, body) = http_get(metrics, "/metrics").await;
    assert!(
        body.lines()
            .any(|l| l.starts_with("shortlink_watchdog_crashlooping{")
                && l.contains("name=\"broken\"")
                && l.ends_with(" 1")),
        "{body}"
    );
    let ev = wait_event(&mut ops, &mut seen, |e| {
        e["kind"] == "crashlooping" && e["component"] == "broken"
    })
    .await;
    assert_eq!(ev["level"], "ERROR");
    assert!(
        ev["reason"].as_str().unwrap().contains("4 failures"),
        "{ev}"
    );

    // A child that runs but fails its liveness check is killed and restarted.
    assert!(
        eventually(Duration::from_secs(20), async || component(
            ctl, &token, "hung"
        )
        .await["restarts"]
            .as_u64()
            >= Some(1))
        .await,
        "the hung child was not restarted"
    );
    let ev = wait_event(&mut ops, &mut seen, |e| {
        e["kind"] == "restarted" && e["component"] == "hung"
    })
    .await;
    assert!(
        ev["reason"]
            .as_str()
            .unwrap()
            .starts_with("liveness failed"),
        "{ev}"
    );
    assert!(body.contains("shortlink_watchdog_component_up"), "{body}");

    // Without a token, or with a wrong one, nothing.
    let r = http(ctl, "GET", "/components", &[], b"").await;
    assert_eq!(r.status, 401);
    let r = http(
        ctl,
        "POST",
        "/components/steady/stop",
        &[("Authorization", "Bearer nope")],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(component(ctl, &token, "steady").await["state"], "running");

    // file_sd: a stopped component leaves the targets; a started one returns.
    let sd = || -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(dir.join("targets/tests.json"))
                .unwrap_or_else(|_| "null".into()),
        )
        .unwrap_or(Value::Null)
    };
    assert_eq!(
        sd()[0]["targets"][0],
        sleeper_metrics.to_string(),
        "{}",
        sd()
    );
    let (s, v) = control(ctl, &token, "POST", "/components/steady/stop").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("stopped")), "{v}");
    assert_eq!(sd(), serde_json::json!([]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        component(ctl, &token, "steady").await["state"],
        "stopped",
        "a stopped component was restarted"
    );
    let (s, v) = control(ctl, &token, "POST", "/components/steady/start").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("running")), "{v}");
    assert_eq!(sd()[0]["targets"][0], sleeper_metrics.to_string());
    wait_event(&mut ops, &mut seen, |e| {
        e["kind"] == "action" && e["action"] == "stop" && e["actor"] == "control-api"
    })
    .await;

    wd.sigterm();
    assert!(wd.wait_exit(Duration::from_secs(30)).await.success());
    drop(silent);
}

#[tokio::test]
async fn without_a_token_the_control_api_refuses_everything() {
    let dir = tmp_dir("watchdog-notoken");
    let spec = write_spec(
        &dir,
        serde_json::json!([{"name": "s", "kind": "test", "program": "/bin/sleep", "args": ["600"]}]),
    );
    let (ctl, metrics) = (free_port(), free_port());
    let mut wd = support::spawn_raw(
        &["watchdog", "--backend", "process"],
        &[
            ("WATCHDOG_SPEC", spec.display().to_string()),
            ("WATCHDOG_ADDR", format!("127.0.0.1:{ctl}")),
            ("WATCHDOG_METRICS_ADDR", format!("127.0.0.1:{metrics}")),
        ],
    );
    let ctl: SocketAddr = format!("127.0.0.1:{ctl}").parse().unwrap();
    support::wait_http_ok(
        &mut wd,
        format!("127.0.0.1:{metrics}").parse().unwrap(),
        "/live",
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            tokio::net::TcpStream::connect(ctl).await.is_ok()
        })
        .await
    );
    for (m, p) in [("GET", "/components"), ("POST", "/components/s/kill")] {
        let r = http(ctl, m, p, &[("Authorization", "Bearer anything")], b"").await;
        assert_eq!(r.status, 403, "{m} {p}: {r:?}");
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("WATCHDOG_TOKEN")
        );
    }
    wd.sigterm();
    assert!(wd.wait_exit(Duration::from_secs(30)).await.success());
}

/// The few Engine API endpoints the docker backend uses, with their
/// documented request and response shapes (API v1.41), over a Unix
/// socket: the one stub in this suite, because this machine has no
/// container engine.
mod engine_stub {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, Query, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use serde_json::{Value, json};

    #[derive(Clone, Debug)]
    pub struct Container {
        pub project: String,
        pub service: String,
        pub number: u32,
        pub status: String,
        pub exit_code: i64,
        pub health: Option<String>,
        pub policy: String,
    }

    #[derive(Clone, Default)]
    pub struct Engine {
        pub containers: Arc<Mutex<BTreeMap<String, Container>>>,
        pub calls: Arc<Mutex<Vec<String>>>,
        /// While set, container listings hang (a Docker daemon that does
        /// not answer); `held` counts the listings caught.
        pub hold: Arc<std::sync::atomic::AtomicBool>,
        pub held: Arc<std::sync::atomic::AtomicU64>,
    }

    impl Engine {
        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        pub fn status(&self, id: &str) -> String {
            self.containers.lock().unwrap()[id].status.clone()
        }
    }

    async fn list(State(e): State<Engine>, Query(q): Query<BTreeMap<String, String>>) -> Response {
        use std::sync::atomic::Ordering::SeqCst;
        if e.hold.load(SeqCst) {
            e.held.fetch_add(1, SeqCst);
            while e.hold.load(SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let filters: Value =
            serde_json::from_str(q.get("filters").map(String::as_str).unwrap_or("{}")).unwrap();
        let want: Vec<String> = filters["label"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            q.get("all").map(String::as_str),
            Some("1"),
            "the watchdog must list stopped containers too"
        );
        let c = e.containers.lock().unwrap();
        let items: Vec<Value> = c
            .iter()
            .filter(|(_, c)| {
                want.iter()
                    .all(|w| *w == format!("com.docker.compose.project={}", c.project))
            })
            .map(|(id, c)| {
                json!({
                    "Id": id,
                    "Names": [format!("/{}-{}-{}", c.project, c.service, c.number)],
                    "State": c.status,
                    "Status": "",
                    "Labels": {
                        "com.docker.compose.project": c.project,
                        "com.docker.compose.service": c.service,
                        "com.docker.compose.container-number": c.number.to_string(),
                    }
                })
            })
            .collect();
        axum::Json(items).into_response()
    }

    async fn inspect(State(e): State<Engine>, Path(id): Path<String>) -> Response {
        let c = e.containers.lock().unwrap();
        let Some(c) = c.get(&id) else {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": format!("No such container: {id}")})),
            )
                .into_response();
        };
        let mut state = json!({
            "Status": c.status,
            "Running": c.status == "running",
            "Paused": c.status == "paused",
            "ExitCode": c.exit_code,
            "Pid": if c.status == "running" { 4242 } else { 0 },
        });
        if let Some(h) = &c.health {
            state["Health"] = json!({"Status": h, "FailingStreak": 3, "Log": [{"ExitCode": 1, "Output": "probe failed"}]});
        }
        axum::Json(
            json!({"Id": id, "State": state, "HostConfig": {"RestartPolicy": {"Name": c.policy}}}),
        )
        .into_response()
    }

    async fn act(State(e): State<Engine>, Path((id, action)): Path<(String, String)>) -> Response {
        e.calls.lock().unwrap().push(format!("{action} {id}"));
        let mut all = e.containers.lock().unwrap();
        let Some(c) = all.get_mut(&id) else {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": "No such container"})),
            )
                .into_response();
        };
        match action.as_str() {
            "start" if c.status == "running" => return StatusCode::NOT_MODIFIED.into_response(),
            "start" => {
                c.status = "running".into();
                if c.health.is_some() {
                    c.health = Some("healthy".into());
                }
            }
            "kill" | "stop" | "pause" if c.status != "running" => {
                return (
                    StatusCode::CONFLICT,
                    axum::Json(json!({"message": format!("Container {id} is not running")})),
                )
                    .into_response();
            }
            "kill" => {
                c.status = "exited".into();
                c.exit_code = 137;
            }
            "stop" => {
                c.status = "exited".into();
                c.exit_code = 0;
            }
            "pause" => c.status = "paused".into(),
            "unpause" => c.status = "running".into(),
            _ => return StatusCode::NOT_FOUND.into_response(),
        }
        StatusCode::NO_CONTENT.into_response()
    }

    pub async fn serve(sock: &std::path::Path, engine: Engine) {
        let listener = tokio::net::UnixListener::bind(sock).unwrap();
        let app = axum::Router::new()
            .route("/v1.41/containers/json", get(list))
            .route("/v1.41/containers/{id}/json", get(inspect))
            .route("/v1.41/containers/{id}/{action}", post(act))
            .with_state(engine);
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_backend_restarts_exited_and_unhealthy_containers_and_acts_on_them() {
    use engine_stub::{Container, Engine};
    let dir = tmp_dir("docker");
    let sock = dir.join("docker.sock");
    let engine = Engine::default();
    let c = |project: &str,
             service: &str,
             number: u32,
             status: &str,
             exit: i64,
             health: Option<&str>,
             policy: &str| Container {
        project: project.into(),
        service: service.into(),
        number,
        status: status.into(),
        exit_code: exit,
        health: health.map(str::to_owned),
        policy: policy.into(),
    };
    {
        let mut m = engine.containers.lock().unwrap();
        m.insert(
            "aaa111".into(),
            c(
                "sl",
                "links",
                1,
                "running",
                0,
                Some("healthy"),
                "unless-stopped",
            ),
        );
        m.insert(
            "bbb222".into(),
            c(
                "sl",
                "links",
                2,
                "exited",
                137,
                Some("unhealthy"),
                "unless-stopped",
            ),
        );
        m.insert(
            "ccc333".into(),
            c(
                "sl",
                "edge-a",
                1,
                "running",
                0,
                Some("unhealthy"),
                "unless-stopped",
            ),
        );
        m.insert(
            "ddd444".into(),
            c("sl", "migrate", 1, "exited", 0, None, "no"),
        );
        m.insert(
            "eee555".into(),
            c("sl", "watchdog", 1, "running", 0, None, "unless-stopped"),
        );
        m.insert(
            "fff666".into(),
            c("other", "links", 1, "exited", 1, None, "always"),
        );
    }
    engine_stub::serve(&sock, engine.clone()).await;
    let (ctl, metrics) = (free_port(), free_port());
    let token = "docker-backend-test-token".to_owned();
    let mut wd = support::spawn_raw(
        &["watchdog"],
        &[
            ("WATCHDOG_BACKEND", "docker".into()),
            ("WATCHDOG_DOCKER_HOST", format!("unix://{}", sock.display())),
            ("WATCHDOG_COMPOSE_PROJECT", "sl".into()),
            ("HOSTNAME", "eee555".into()),
            ("WATCHDOG_ADDR", format!("127.0.0.1:{ctl}")),
            ("WATCHDOG_METRICS_ADDR", format!("127.0.0.1:{metrics}")),
            ("WATCHDOG_TOKEN", token.clone()),
            ("WATCHDOG_BACKOFF_BASE_MS", "50".into()),
        ],
    );
    let ctl: SocketAddr = format!("127.0.0.1:{ctl}").parse().unwrap();
    support::wait_http_ok(
        &mut wd,
        format!("127.0.0.1:{metrics}").parse().unwrap(),
        "/live",
    )
    .await;

    // The exited replica is started; the unhealthy edge is killed, then started.
    assert!(
        eventually(Duration::from_secs(15), async || {
            let calls = engine.calls();
            calls.contains(&"start bbb222".to_owned())
                && calls.contains(&"kill ccc333".to_owned())
                && calls.contains(&"start ccc333".to_owned())
        })
        .await,
        "calls: {:?}",
        engine.calls()
    );
    assert_eq!(engine.status("bbb222"), "running");
    let calls = engine.calls();
    let kill = calls.iter().position(|c| c == "kill ccc333").unwrap();
    let start = calls.iter().position(|c| c == "start ccc333").unwrap();
    assert!(kill < start, "{calls:?}");
    // Never: the one-shot, its own container, another project.
    for id in ["ddd444", "eee555", "fff666"] {
        assert!(
            !calls.iter().any(|c| c.ends_with(id)),
            "acted on {id}: {calls:?}"
        );
    }

    let (s, list) = control(ctl, &token, "GET", "/components").await;
    assert_eq!(s, 200);
    let mut names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["edge-a", "links-1", "links-2"], "{list}");
    let l2 = component(ctl, &token, "links-2").await;
    assert_eq!(
        (l2["container_id"].as_str(), l2["restarts"].as_u64()),
        (Some("bbb222"), Some(1)),
        "{l2}"
    );

    // The Engine API hangs: the control API still answers, since the
    // watchdog observes without holding its state.
    {
        use std::sync::atomic::Ordering::SeqCst;
        engine.hold.store(true, SeqCst);
        let caught = eventually(Duration::from_secs(15), async || {
            engine.held.load(SeqCst) > 0
        })
        .await;
        let answered = tokio::time::timeout(
            Duration::from_secs(5),
            control(ctl, &token, "GET", "/components"),
        )
        .await;
        engine.hold.store(false, SeqCst);
        assert!(caught, "the watchdog never listed the containers again");
        let (s, v) = answered.expect("GET /components waited for the hung Engine API call");
        assert_eq!(s, 200, "{v}");
    }

    // Control actions reach the Engine API.
    let (s, v) = control(ctl, &token, "POST", "/components/links-1/pause").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("paused")), "{v}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        engine.status("aaa111"),
        "paused",
        "a paused container was touched"
    );
    let (s, _) = control(ctl, &token, "POST", "/components/links-1/resume").await;
    assert_eq!(s, 200);
    let (s, _) = control(ctl, &token, "POST", "/components/links-1/kill").await;
    assert_eq!(s, 200);
    assert!(
        eventually(Duration::from_secs(10), async || engine.status("aaa111")
            == "running"
            && component(ctl, &token, "links-1").await["restarts"] == 1)
        .await,
        "links-1 was not started again after the kill: {:?}",
        engine.calls()
    );
    let (s, v) = control(ctl, &token, "POST", "/components/links-2/stop").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("stopped")), "{v}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        engine.status("bbb222"),
        "exited",
        "a stopped container was restarted"
    );
    let calls = engine.calls();
    for want in [
        "pause aaa111",
        "unpause aaa111",
        "kill aaa111",
        "start aaa111",
        "stop bbb222",
    ] {
        assert!(
            calls.contains(&want.to_owned()),
            "{want} missing: {calls:?}"
        );
    }
    wd.sigterm();
    assert!(wd.wait_exit(Duration::from_secs(30)).await.success());
}

fn run(args: &[&str], envs: &[(&str, String)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LOG_LEVEL", "warn");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run shortlink")
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn pg_counts(url: &str) -> (i64, i64, i64) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let n = |t: &'static str| {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {t}")))
    };
    let users = n("users").fetch_one(&mut c).await.unwrap_or(-1);
    let links = n("urls").fetch_one(&mut c).await.unwrap_or(-1);
    let events = n("events").fetch_one(&mut c).await.unwrap_or(-1);
    (users, links, events)
}

fn the_backup(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "pgdump" || e == "sqlite")
        })
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[tokio::test]
async fn backup_drop_every_table_restore_and_the_seeded_link_resolves_again() {
    let db = TestDb::new().await;
    let env = [("DATABASE_URL", db.url.clone())];
    ok(&run(&["migrate"], &env));
    ok(&run(
        &[
            "import",
            "--dir",
            &support::seed_dir().display().to_string(),
        ],
        &env,
    ));
    let before = pg_counts(&db.url).await;
    assert_eq!(before, (400, 2000, 3422), "the seed set");
    let dir = tmp_dir("backup");
    let out = ok(&run(
        &["backup", "--once", "--dir", &dir.display().to_string()],
        &env,
    ));
    assert!(out.starts_with("backup written: "), "{out}");
    let file = the_backup(&dir);
    // The manifest lists it, in sha256sum's format.
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.sha256")).unwrap();
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(
        manifest
            .lines()
            .any(|l| l.len() == 64 + 2 + name.len() && l.ends_with(name)),
        "{manifest}"
    );

    // Refused while the target holds data, and nothing changes.
    let refused = run(&["restore", &file.display().to_string()], &env);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("not empty") && err.contains("--force"),
        "{err}"
    );

    {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("DROP SCHEMA public CASCADE")
            .execute(&mut c)
            .await
            .unwrap();
        sqlx::query("CREATE SCHEMA public")
            .execute(&mut c)
            .await
            .unwrap();
    }
    assert_eq!(
        pg_counts(&db.url).await,
        (-1, -1, -1),
        "every table dropped"
    );
    let out = ok(&run(&["restore", &file.display().to_string()], &env));
    assert_eq!(
        out.trim(),
        format!(
            "restored 400 users, 2000 links, 3422 events from {}",
            file.display()
        )
    );
    assert_eq!(pg_counts(&db.url).await, before);

    // A seeded code resolves to the same URL through a real replica and edge.
    let replica = support::Replica::start(&[("DATABASE_URL", db.url.clone())]).await;
    let edge = support::EdgeProc::start(&[replica.grpc], &[]).await;
    let r = http(edge.http, "GET", "/WqxP6K", &[], b"").await;
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("https://seeded.app/gold/meadow/1")
    );
    // A write after the restore works (the id sequences came back too).
    let u = post_json(
        edge.http,
        "/users",
        serde_json::json!({"username": "afterrestore", "email": "a@example.com"}),
    )
    .await;
    assert_eq!(u.status, 201, "{u:?}");
    assert_eq!(u.json()["id"], 401);

    // --force replaces a non-empty database.
    let out = ok(&run(
        &["restore", "--force", &file.display().to_string()],
        &env,
    ));
    assert!(out.starts_with("restored 400 users, 2000 links"), "{out}");
    assert_eq!(pg_counts(&db.url).await, before);
}

#[tokio::test]
async fn a_corrupted_backup_is_refused_and_nothing_changes() {
    let db = TestDb::new().await;
    let env = [("DATABASE_URL", db.url.clone())];
    ok(&run(&["migrate"], &env));
    ok(&run(
        &[
            "import",
            "--dir",
            &support::seed_dir().display().to_string(),
        ],
        &env,
    ));
    let dir = tmp_dir("backup-corrupt");
    ok(&run(
        &["backup", "--once", "--dir", &dir.display().to_string()],
        &env,
    ));
    let file = the_backup(&dir);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let before = pg_counts(&db.url).await;
    let out = run(&["restore", "--force", &file.display().to_string()], &env);
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("checksum mismatch") && err.contains("nothing was restored"),
        "{err}"
    );
    assert_eq!(pg_counts(&db.url).await, before);
    // A file the manifest does not list is refused too.
    let stray = dir.join("shortlink-postgres-20260101T000000Z.pgdump");
    std::fs::copy(&file, &stray).unwrap();
    let err = String::from_utf8_lossy(
        &run(&["restore", "--force", &stray.display().to_string()], &env).stderr,
    )
    .into_owned();
    assert!(err.contains("is not listed in"), "{err}");
}

#[tokio::test]
async fn retention_prunes_the_oldest_and_the_schedule_reports_its_metrics() {
    // The embedded default: SQLite, backed up with VACUUM INTO.
    let data = tmp_dir("backup-sqlite");
    let env = [("SHORTLINK_DATA_DIR", data.display().to_string())];
    ok(&run(&["migrate"], &env));
    ok(&run(
        &[
            "import",
            "--dir",
            &support::seed_dir().display().to_string(),
        ],
        &env,
    ));
    let dir = tmp_dir("backup-retention");
    // Eight dated backups, one a day, the newest yesterday.
    let now = chrono::Utc::now();
    let mut manifest = String::new();
    let mut names = Vec::new();
    for day in 1..=8 {
        let t = now - chrono::Duration::days(day) + chrono::Duration::minutes(5);
        let name = format!("shortlink-sqlite-{}.sqlite", t.format("%Y%m%dT%H%M%SZ"));
        std::fs::write(dir.join(&name), format!("backup {day}")).unwrap();
        manifest.push_str(&format!("{}  {name}\n", "0".repeat(64)));
        names.push(name);
    }
    std::fs::write(dir.join("MANIFEST.sha256"), manifest).unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // The newest backup is a day old, so the schedule (interval 1 h) takes
    // one at once.
    let mut p = support::spawn_raw(
        &["backup"],
        &[
            ("SHORTLINK_DATA_DIR", data.display().to_string()),
            ("BACKUP_DIR", dir.display().to_string()),
            ("BACKUP_INTERVAL", "1h".into()),
            ("BACKUP_KEEP_COUNT", "8".into()),
            ("BACKUP_KEEP_DAYS", "7".into()),
            ("BACKUP_METRICS_ADDR", metrics.to_string()),
        ],
    );
    support::wait_http_ok(&mut p, metrics, "/live").await;
    let value = |body: &str, name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(
        eventually(Duration::from_secs(20), async || {
            let (_, b) = http_get(metrics, "/metrics").await;
            value(&b, "shortlink_backup_files") == 8.0
        })
        .await,
        "no backup round finished: {}",
        http_get(metrics, "/metrics").await.1
    );
    let (_, body) = http_get(metrics, "/metrics").await;
    let last = value(&body, "shortlink_backup_last_success_timestamp_seconds");
    assert!((last - now.timestamp() as f64).abs() < 60.0, "{body}");
    assert!(
        value(&body, "shortlink_backup_last_size_bytes") > 100_000.0,
        "{body}"
    );
    assert_eq!(value(&body, "shortlink_backup_failures_total"), 0.0);
    // The oldest (eight days) is gone; the seven others and the new one stay.
    assert!(!dir.join(&names[7]).exists(), "the oldest backup was kept");
    for n in &names[..7] {
        assert!(dir.join(n).exists(), "{n} was pruned");
    }
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.sha256")).unwrap();
    assert_eq!(manifest.lines().count(), 8, "{manifest}");
    assert!(!manifest.contains(&names[7]));
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(20)).await.success());

    // The new SQLite backup restores into an empty data directory.
    let newest = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sqlite"))
        .max()
        .unwrap();
    let fresh = tmp_dir("restore-sqlite");
    let out = ok(&run(
        &["restore", &newest.display().to_string()],
        &[("SHORTLINK_DATA_DIR", fresh.display().to_string())],
    ));
    assert!(
        out.starts_with("restored 400 users, 2000 links, 3422 events"),
        "{out}"
    );

    // A failed backup is an ERROR and a non-zero exit.
    let out = run(
        &["backup", "--once", "--dir", &dir.display().to_string()],
        &[(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/no_such_database_here".into(),
        )],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ERROR")
            || String::from_utf8_lossy(&out.stderr).contains("pg_dump failed"),
        "{out:?}"
    );
}

#[tokio::test]
async fn up_ha_names_the_missing_backend() {
    for (unset, hint) in [
        ("DATABASE_URL", "PostgreSQL"),
        ("REDIS_URL", "Redis"),
        ("KAFKA_BROKERS", "kafka.sh"),
    ] {
        let mut envs = vec![
            (
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/x".to_owned(),
            ),
            ("REDIS_URL", "redis://127.0.0.1:6379".to_owned()),
            ("KAFKA_BROKERS", "127.0.0.1:1".to_owned()),
            ("HA_DATA_DIR", tmp_dir("ha-missing").display().to_string()),
        ];
        envs.retain(|(k, _)| *k != unset);
        let out = run(&["up", "--ha"], &envs);
        assert_eq!(out.status.code(), Some(64), "{unset}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(unset) && err.contains(hint) && err.contains("scripts/ha.sh"),
            "{unset}: {err}"
        );
    }
    let out = run(
        &["up", "--ha"],
        &[
            ("DATABASE_URL", "sqlite://./x.db".to_owned()),
            ("REDIS_URL", "redis://127.0.0.1:6379".to_owned()),
            ("KAFKA_BROKERS", "127.0.0.1:1".to_owned()),
            ("HA_DATA_DIR", tmp_dir("ha-missing").display().to_string()),
        ],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PostgreSQL DATABASE_URL"));
}
