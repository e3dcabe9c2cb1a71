//! Observability as code (`observability/`), held against the real tools:
//! `promtool` checks and unit tests of every rule, `amtool` checks of the
//! Alertmanager configuration, `promtool check metrics` on the live
//! `/metrics` of every component, the Grafana dashboards' queries compiled
//! by promtool and checked against the metrics the components export, and
//! an end-to-end run in which real Prometheus and Alertmanager deliver
//! alerts through the alerter to a Discord-shaped webhook.
//!
//! The tools are the Debian packages `prometheus` (prometheus, promtool)
//! and `prometheus-alertmanager` (prometheus-alertmanager, amtool);
//! `scripts/test.sh` installs them. A missing tool fails the test with
//! that instruction.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serde_norway::Value as Yaml;
use shortlink_testkit::{TestDb, eventually, free_port, http, http_get, random_suffix};
use support::{EdgeProc, Proc, Replica, links_env, post_json, spawn_raw, wait_http_ok};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

fn obs() -> PathBuf {
    repo().join("observability")
}

/// The Debian package that ships each tool.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "promtool" | "prometheus" => "prometheus",
        _ => "prometheus-alertmanager",
    }
}

/// `tool` on PATH, or a failure that says how to install it.
fn tool(name: &str) -> Command {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join(name).is_file());
    assert!(
        found,
        "{name} is not installed: `apt-get install {}` (Debian), or run ./scripts/test.sh, which installs it",
        package_of(name)
    );
    Command::new(name)
}

/// Runs `cmd`, asserts success, returns stdout and stderr together.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rule_files() -> Vec<PathBuf> {
    vec![
        obs().join("prometheus/rules/recording.yml"),
        obs().join("prometheus/rules/alerts.yml"),
    ]
}

/// Every alerting rule of alerts.yml.
fn alert_rules() -> Vec<Yaml> {
    let doc = yaml(&obs().join("prometheus/rules/alerts.yml"));
    doc["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

fn s(v: &Yaml) -> &str {
    v.as_str().unwrap_or("")
}

#[test]
fn prometheus_and_alertmanager_configs_check_and_every_rule_unit_test_passes() {
    let dir = obs().join("prometheus");
    for config in ["prometheus.yml", "prometheus-local.yml"] {
        // Also checks the rule files the config names.
        run_ok(
            tool("promtool")
                .current_dir(&dir)
                .args(["check", "config", config]),
        );
    }
    for f in rule_files() {
        run_ok(tool("promtool").args(["check", "rules"]).arg(&f));
    }
    let out =
        run_ok(
            tool("promtool")
                .current_dir(&dir)
                .args(["test", "rules", "tests/alerts_test.yml"]),
        );
    assert!(out.contains("SUCCESS"), "{out}");
    // The file_sd target files of `shortlink up` (those of `up --ha` are
    // written by its watchdog; cli/tests/supervision.rs reads them).
    for sub in ["targets"] {
        for job in ["edge", "links", "admin", "consumers", "dashboard"] {
            let p = dir.join(sub).join(format!("{job}.json"));
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            for group in v.as_array().expect("a file_sd file is a JSON array") {
                assert!(
                    group["targets"].as_array().is_some_and(|t| !t.is_empty()),
                    "{}",
                    p.display()
                );
                assert!(
                    group["labels"]["component"].is_string(),
                    "{}: every target names its component",
                    p.display()
                );
            }
        }
    }

    let am = obs().join("alertmanager/alertmanager.yml");
    run_ok(tool("amtool").arg("check-config").arg(&am));
    for (labels, receiver) in [
        (
            &["severity=critical", "alertname=ShortlinkJobDown"][..],
            "alerter-critical",
        ),
        (
            &["severity=warning", "alertname=ShortlinkTargetDown"][..],
            "alerter-warning",
        ),
        (&["alertname=Unlabelled"][..], "alerter-warning"),
    ] {
        let out = run_ok(
            tool("amtool")
                .args(["config", "routes", "test"])
                .arg(format!("--config.file={}", am.display()))
                .args(labels),
        );
        assert_eq!(
            out.lines()
                .find(|l| !l.starts_with("Warning"))
                .map(str::trim),
            Some(receiver),
            "{labels:?}: {out}"
        );
    }
}

#[test]
fn every_alert_is_complete_unit_tested_documented_and_has_a_runbook() {
    let rules = alert_rules();
    assert!(rules.len() >= 20, "{} alerts", rules.len());
    let tests = yaml(&obs().join("prometheus/tests/alerts_test.yml"));
    let runbooks = std::fs::read_to_string(repo().join("docs/RUNBOOKS.md")).unwrap();
    let overview = std::fs::read_to_string(repo().join("docs/OBSERVABILITY.md")).unwrap();
    let mut names = BTreeSet::new();
    for r in &rules {
        let name = s(&r["alert"]);
        assert!(names.insert(name.to_owned()), "{name} defined twice");
        let severity = s(&r["labels"]["severity"]);
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        let a = &r["annotations"];
        assert!(!s(&a["summary"]).is_empty(), "{name}: summary");
        let d = s(&a["description"]);
        assert!(
            d.contains("$value") || d.chars().any(|c| c.is_ascii_digit()),
            "{name}: the description states the numbers: {d}"
        );
        let anchor = name.to_lowercase();
        assert_eq!(
            s(&a["runbook_url"]),
            format!("docs/RUNBOOKS.md#{anchor}"),
            "{name}: runbook_url"
        );
        assert!(
            runbooks
                .lines()
                .any(|l| l.starts_with('#') && l.trim_start_matches('#').trim() == name),
            "{name}: docs/RUNBOOKS.md has no section `### {name}`"
        );
        assert!(
            overview.contains(name),
            "{name}: not listed in docs/OBSERVABILITY.md"
        );
        let cases: Vec<bool> = tests["tests"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|t| {
                t["alert_rule_test"]
                    .as_sequence()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|c| s(&c["alertname"]) == name)
            .map(|c| c["exp_alerts"].as_sequence().is_some_and(|e| !e.is_empty()))
            .collect();
        assert!(
            cases.contains(&true),
            "{name}: no promtool case in which it fires"
        );
        assert!(
            cases.contains(&false),
            "{name}: no promtool case in which it stays silent"
        );
    }
    // Every alert an inhibition or a runbook names exists.
    let am = std::fs::read_to_string(obs().join("alertmanager/alertmanager.yml")).unwrap();
    for word in am
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.starts_with("Shortlink") && w.len() > 9)
    {
        assert!(
            names.contains(word),
            "alertmanager.yml names unknown alert {word}"
        );
    }
}

/// Names of metric families in an exposition (`# TYPE` lines).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Metric names the code registers: the string literal right after a
/// metric constructor, or a `process_` name of the process collector
/// (each with the registry's `shortlink_` prefix).
fn registered_in_code() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![
        repo().join("edge/src"),
        repo().join("services"),
        repo().join("runtime/src"),
        repo().join("bus/src"),
        repo().join("abuse/src"),
    ];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                if !p.ends_with("tests") && !p.ends_with("migrations") {
                    stack.push(p);
                }
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let mut rest = text.as_str();
            while let Some(i) = rest.find("::new(") {
                rest = &rest[i + 6..];
                let t = rest.trim_start();
                if let Some(lit) = t.strip_prefix('"')
                    && let Some(end) = lit.find('"')
                {
                    let name = &lit[..end];
                    if name.contains('_')
                        && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    {
                        names.insert(format!("shortlink_{name}"));
                    }
                }
            }
            for part in text.split('"').skip(1).step_by(2) {
                if part.starts_with("process_")
                    && part.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                {
                    names.insert(format!("shortlink_{part}"));
                }
            }
        }
    }
    names
}

/// The series names an expression reads: `shortlink_*` metrics and
/// recording rules (`level:metric:ops`).
fn names_in_expr(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut metrics, mut recorded) = (BTreeSet::new(), BTreeSet::new());
    // Strip label matchers' values so that `le="0.1"` and regexes do not
    // look like names.
    let mut cleaned = String::new();
    let mut in_str = false;
    for c in expr.chars() {
        if c == '"' {
            in_str = !in_str;
            cleaned.push(' ');
        } else if !in_str {
            cleaned.push(c);
        }
    }
    for tok in cleaned.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if tok.contains(':') && tok.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
            recorded.insert(tok.to_owned());
        } else if tok.starts_with("shortlink_") {
            metrics.insert(tok.to_owned());
        }
    }
    (metrics, recorded)
}

fn recorded_names() -> BTreeSet<String> {
    let doc = yaml(&obs().join("prometheus/rules/recording.yml"));
    doc["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|r| r["record"].as_str().map(str::to_owned))
        .collect()
}

/// Every PromQL expression of the Grafana dashboards: (dashboard file,
/// panel title, expression with the dashboard variables substituted).
fn dashboard_queries() -> Vec<(String, String, String)> {
    fn walk(panels: &Value, file: &str, out: &mut Vec<(String, String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    let e = e
                        .replace("$__rate_interval", "5m")
                        .replace("$__interval", "1m")
                        .replace("$instance", ".+")
                        .replace("$component", ".+")
                        .replace("$route", ".+")
                        .replace("$group", ".+");
                    out.push((
                        file.to_owned(),
                        p["title"].as_str().unwrap_or("").to_owned(),
                        e,
                    ));
                }
            }
            walk(&p["panels"], file, out);
        }
    }
    let mut out = Vec::new();
    let dir = obs().join("grafana/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x == "json"))
    {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(v["uid"].is_string(), "{name}: uid");
        walk(&v["panels"], &name, &mut out);
    }
    out
}

#[test]
fn grafana_dashboards_are_provisioned_and_every_panel_query_parses() {
    let ds = yaml(&obs().join("grafana/provisioning/datasources/prometheus.yml"));
    let uid = s(&ds["datasources"][0]["uid"]).to_owned();
    assert!(!uid.is_empty(), "the provisioned data source has a uid");
    let prov = yaml(&obs().join("grafana/provisioning/dashboards/shortlink.yml"));
    assert!(!s(&prov["providers"][0]["options"]["path"]).is_empty());

    let dir = obs().join("grafana/dashboards");
    let mut uids = BTreeSet::new();
    for f in std::fs::read_dir(&dir).unwrap().flatten() {
        let text = std::fs::read_to_string(f.path()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(
            uids.insert(v["uid"].as_str().unwrap().to_owned()),
            "duplicate uid"
        );
        // Every data source reference is the provisioned one.
        for (i, _) in text.match_indices("\"datasource\"") {
            let after = &text[i..text.len().min(i + 200)];
            if after.contains("\"uid\"") {
                assert!(
                    after.contains(&uid),
                    "{}: a panel names another data source: {after}",
                    f.path().display()
                );
            }
        }
    }
    assert!(uids.len() >= 4, "dashboards: {uids:?}");

    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    // Compile the expressions into a rule file: promtool parses each.
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, _, e))| json!({"record": format!("dashboard:query_{i}"), "expr": e}))
        .collect();
    let file = std::env::temp_dir().join(format!("shortlink-dashboards-{}.yml", random_suffix()));
    std::fs::write(
        &file,
        serde_norway::to_string(&json!({"groups": [{"name": "dashboards", "rules": rules}]}))
            .unwrap(),
    )
    .unwrap();
    let out = tool("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "a dashboard query does not parse:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Recording rules a panel reads exist.
    let recorded = recorded_names();
    for (f, title, e) in &queries {
        for r in names_in_expr(e).1 {
            assert!(
                recorded.contains(&r),
                "{f} / {title}: unknown recording rule {r}"
            );
        }
    }
}

/// `promtool check metrics` on `body`: lint-clean or the problems.
fn check_metrics(what: &str, body: &str) {
    let mut child = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "promtool check metrics on {what}:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_of_every_component_are_lint_clean_and_cover_rules_and_dashboards() {
    let db = TestDb::new().await;
    shortlink_testkit::require_redis().await;
    let replica = Replica::start(&links_env(&db, &[])).await;
    let edge = EdgeProc::start(
        &[replica.grpc],
        &[
            ("REDIS_URL", shortlink_testkit::redis_url()),
            ("ABUSE_KEY_PREFIX", format!("test:{}:", random_suffix())),
        ],
    )
    .await;

    let (admin_grpc, admin_http) = (free_port(), free_port());
    let mut admin = spawn_raw(
        &["admin"],
        &[
            ("ADMIN_GRPC_ADDR", format!("127.0.0.1:{admin_grpc}")),
            ("ADMIN_HTTP_ADDR", format!("127.0.0.1:{admin_http}")),
            ("ADMIN_TOKEN", format!("test-token-{}", random_suffix())),
            ("REDIS_URL", shortlink_testkit::redis_url()),
            ("ABUSE_KEY_PREFIX", format!("test:{}:", random_suffix())),
        ],
    );
    let admin_http: SocketAddr = format!("127.0.0.1:{admin_http}").parse().unwrap();
    wait_http_ok(&mut admin, admin_http, "/ready").await;

    let alerter_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut alerter = spawn_raw(
        &["alerter"],
        &[
            ("ALERTER_HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
            ("CONSUMER_METRICS_ADDR", alerter_metrics.to_string()),
        ],
    );
    wait_http_ok(&mut alerter, alerter_metrics, "/metrics").await;
    // The other consumers, each with its metrics listener.
    let consumer_dir = std::env::temp_dir().join(format!("shortlink-obs-c-{}", random_suffix()));
    std::fs::create_dir_all(&consumer_dir).unwrap();
    let mut consumers = Vec::new();
    for (kind, extra) in [
        ("log-printer", vec![]),
        ("analytics", vec![("LINKS_ADDR", replica.grpc.to_string())]),
        (
            "dashboard-ingest",
            vec![
                (
                    "DASHBOARD_DATABASE_URL",
                    format!("sqlite://{}/dash.db?mode=rwc", consumer_dir.display()),
                ),
                (
                    "DASHBOARD_INGEST_HTTP_ADDR",
                    format!("127.0.0.1:{}", free_port()),
                ),
            ],
        ),
    ] {
        let m: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut env = vec![("CONSUMER_METRICS_ADDR", m.to_string())];
        env.extend(extra);
        let mut p = spawn_raw(&[kind], &env);
        wait_http_ok(&mut p, m, "/metrics").await;
        consumers.push((kind, p, m));
    }

    // `up`: its bus (the consumers' lag) on BUS_METRICS_ADDR.
    let dir = std::env::temp_dir().join(format!("shortlink-obs-up-{}", random_suffix()));
    let up_ports: Vec<u16> = (0..8).map(|_| free_port()).collect();
    let addr = |i: usize| format!("127.0.0.1:{}", up_ports[i]);
    let mut up = spawn_raw(
        &["up"],
        &[
            ("SHORTLINK_DATA_DIR", dir.display().to_string()),
            ("LINKS_GRPC_ADDR", addr(0)),
            ("LINKS_HTTP_ADDR", addr(1)),
            ("EDGE_HTTP_ADDR", addr(2)),
            ("EDGE_HTTPS_ADDR", addr(3)),
            ("EDGE_METRICS_ADDR", addr(4)),
            ("EDGE_CERT_DIR", dir.join("tls").display().to_string()),
            ("ALERTER_HTTP_ADDR", addr(5)),
            ("DASHBOARD_ADDR", addr(6)),
            ("BUS_METRICS_ADDR", addr(7)),
        ],
    );
    let up_edge: SocketAddr = addr(2).parse().unwrap();
    wait_http_ok(&mut up, up_edge, "/ready").await;

    // Traffic, so that the per-route and per-method series exist.
    for e in [edge.http, up_edge] {
        let (_, code) = support::user_and_link(e, &format!("obs{}", &random_suffix()[..8])).await;
        support::redirect_n(e, &code, 3).await;
        assert_eq!(
            http(e, "GET", "/nothere-at-all", &[], b"").await.status,
            404
        );
    }
    // Let the bus record lag and the links health loop its dependencies.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let targets: Vec<(&str, SocketAddr)> = vec![
        ("edge", edge.metrics),
        ("links", replica.http),
        ("admin", admin_http),
        ("alerter", alerter_metrics),
        ("log-printer", consumers[0].2),
        ("analytics", consumers[1].2),
        ("dashboard-ingest", consumers[2].2),
        ("up: edge", addr(4).parse().unwrap()),
        ("up: links", addr(1).parse().unwrap()),
        ("up: bus", addr(7).parse().unwrap()),
    ];
    let mut live = BTreeSet::new();
    for (what, a) in &targets {
        let (status, body) = http_get(*a, "/metrics").await;
        assert_eq!(status, 200, "{what}");
        check_metrics(what, &body);
        let f = families(&body);
        for must in [
            "shortlink_build_info",
            "shortlink_process_cpu_seconds_total",
            "shortlink_process_resident_memory_bytes",
            "shortlink_process_open_fds",
        ] {
            assert!(f.contains(must), "{what}: {must} missing:\n{body}");
        }
        live.extend(f);
    }
    for must in [
        "shortlink_http_requests_total",
        "shortlink_upstream_healthy",
        "shortlink_grpc_server_requests_total",
        "shortlink_db_pool_connections",
        "shortlink_db_breaker_state",
        "shortlink_dependency_up",
        "shortlink_bus_consumer_lag",
        "shortlink_bus_events_pending",
        "shortlink_bus_producer_queue_capacity",
        "shortlink_tls_certificate_expiry_timestamp_seconds",
    ] {
        assert!(live.contains(must), "{must} is not exported: {live:?}");
    }
    let (_, edge_metrics) = http_get(edge.metrics, "/metrics").await;
    assert!(
        edge_metrics.lines().any(|l| l
            .starts_with("shortlink_dependency_up{backend=\"redis\",dependency=\"abuse_state\"")
            && l.ends_with(" 1")),
        "{edge_metrics}"
    );
    let (_, links_metrics) = http_get(replica.http, "/metrics").await;
    assert!(
        links_metrics.contains("shortlink_dependency_up{backend=\"redis\",dependency=\"cache\"")
            && links_metrics
                .contains("shortlink_dependency_up{backend=\"postgres\",dependency=\"database\""),
        "{links_metrics}"
    );

    // Every metric a rule or a panel reads is exported by some component:
    // seen live above, or registered in the code (series that appear only
    // after a rare event: a drop, a ban, a breaker transition).
    let code = registered_in_code();
    let known = |m: &str| {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| m.strip_suffix(s))
            .unwrap_or(m);
        live.contains(m) || live.contains(base) || code.contains(m) || code.contains(base)
    };
    let recorded = recorded_names();
    let mut exprs: Vec<(String, String)> = Vec::new();
    for f in rule_files() {
        let doc = yaml(&f);
        for g in doc["groups"].as_sequence().unwrap() {
            for r in g["rules"].as_sequence().unwrap() {
                let name = s(&r["alert"]).to_owned() + s(&r["record"]);
                exprs.push((name, s(&r["expr"]).to_owned()));
            }
        }
    }
    for (file, title, e) in dashboard_queries() {
        exprs.push((format!("{file} / {title}"), e));
    }
    for (what, e) in &exprs {
        let (metrics, rec) = names_in_expr(e);
        for m in metrics {
            assert!(known(&m), "{what}: {m} is exported by no component");
        }
        for r in rec {
            assert!(recorded.contains(&r), "{what}: unknown recording rule {r}");
        }
    }

    up.sigterm();
    let _ = up.wait_exit(Duration::from_secs(30)).await;
    let _ = std::fs::remove_dir_all(dir);
    drop((admin, alerter, consumers, edge, replica));
    let _ = std::fs::remove_dir_all(consumer_dir);
}

// ---------------------------------------------------------------------
// End to end: Prometheus -> Alertmanager -> alerter -> Discord webhook.
// ---------------------------------------------------------------------

/// A Discord-shaped webhook on loopback: records every POSTed JSON body
/// with its arrival time and answers 204, as Discord does.
#[derive(Clone, Default)]
struct Discord {
    posts: Arc<Mutex<Vec<(Instant, Value)>>>,
}

impl Discord {
    async fn start(self) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let posts = self.posts.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let body = loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        if let Some((h, b)) = text.split_once("\r\n\r\n") {
                            let len = h
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .and_then(|v| v.trim().parse::<usize>().ok())
                                })
                                .unwrap_or(0);
                            if b.len() >= len {
                                break b[..len].to_owned();
                            }
                        }
                    };
                    posts.lock().unwrap().push((
                        Instant::now(),
                        serde_json::from_str(&body).unwrap_or(Value::Null),
                    ));
                    let _ = s
                        .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        addr
    }

    /// Every alert line the posts carry: ("[FIRING] Name", description,
    /// arrival). A post is one embed for one alert, or a summary embed
    /// with one "n× title" line per kind.
    fn alerts(&self) -> Vec<(String, String, Instant)> {
        let mut out = Vec::new();
        for (t, v) in self.posts.lock().unwrap().iter() {
            for e in v["embeds"].as_array().into_iter().flatten() {
                let title = e["title"].as_str().unwrap_or("").to_owned();
                let desc = e["description"].as_str().unwrap_or("").to_owned();
                if title.starts_with('[') {
                    out.push((title, desc, *t));
                } else {
                    for l in desc.lines() {
                        if let Some((_, rest)) = l.split_once("× ") {
                            out.push((rest.to_owned(), String::new(), *t));
                        }
                    }
                }
            }
        }
        out
    }

    async fn wait_for(&self, limit: Duration, f: impl Fn(&str, &str) -> bool) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((_, _, t)) = self.alerts().into_iter().find(|(a, d, _)| f(a, d)) {
                return Some(t);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Starts `bin` (prometheus or prometheus-alertmanager) and waits for
/// `/-/ready`.
async fn start_tool(bin: &str, args: &[String], addr: SocketAddr, log: &Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    let child = tool(bin)
        .args(args)
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .spawn()
        .unwrap();
    let mut p = Proc(child);
    let ok = eventually(Duration::from_secs(30), async || {
        if let Some(s) = p.0.try_wait().unwrap() {
            panic!(
                "{bin} exited: {s}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::net::TcpStream::connect(addr).await.is_ok()
            && http_get(addr, "/-/ready").await.0 == 200
    })
    .await;
    assert!(
        ok,
        "{bin} not ready:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    p
}

/// The project's alert rules with every `for:` shortened to `for_`.
fn alerts_overlay(for_: &str) -> String {
    let mut doc = yaml(&obs().join("prometheus/rules/alerts.yml"));
    for g in doc["groups"].as_sequence_mut().unwrap() {
        for r in g["rules"].as_sequence_mut().unwrap() {
            if r.get("for").is_some() {
                r["for"] = Yaml::from(for_);
            }
        }
    }
    serde_norway::to_string(&doc).unwrap()
}

/// The project's local Prometheus config with test intervals, the overlay
/// rules and the test's Alertmanager; targets stay file_sd (written by the
/// test, as the watchdog will).
fn prometheus_overlay(dir: &Path, alertmanager: SocketAddr) -> String {
    let mut doc = yaml(&obs().join("prometheus/prometheus-local.yml"));
    doc["global"]["scrape_interval"] = Yaml::from("1s");
    doc["global"]["scrape_timeout"] = Yaml::from("1s");
    doc["global"]["evaluation_interval"] = Yaml::from("1s");
    doc["rule_files"] = serde_norway::to_value(vec![
        obs()
            .join("prometheus/rules/recording.yml")
            .display()
            .to_string(),
        dir.join("alerts.yml").display().to_string(),
    ])
    .unwrap();
    doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] =
        serde_norway::to_value(vec![alertmanager.to_string()]).unwrap();
    // Only the shortlink jobs (this test runs no second Prometheus).
    let jobs = doc["scrape_configs"].as_sequence_mut().unwrap();
    jobs.retain(|j| ["edge", "links", "consumers"].contains(&s(&j["job_name"])));
    serde_norway::to_string(&doc).unwrap()
}

/// The project's Alertmanager config with the test's alerter, dashboard
/// and token file, and short waits (a page still waits longer than a
/// warning, which the inhibition of the burn page relies on).
fn alertmanager_overlay(alerter: SocketAddr, dashboard: SocketAddr, token_file: &Path) -> String {
    let text = std::fs::read_to_string(obs().join("alertmanager/alertmanager.yml")).unwrap();
    for needle in [
        "http://alerter:9183/alertmanager",
        "http://dashboard:3000/api/alertmanager",
        "/run/secrets/dashboard-token",
    ] {
        assert!(text.contains(needle), "alertmanager.yml has no {needle}");
    }
    let text = text
        .replace(
            "http://alerter:9183/alertmanager",
            &format!("http://{alerter}/alertmanager"),
        )
        .replace(
            "http://dashboard:3000/api/alertmanager",
            &format!("http://{dashboard}/api/alertmanager"),
        )
        .replace(
            "/run/secrets/dashboard-token",
            &token_file.display().to_string(),
        );
    let mut doc: Yaml = serde_norway::from_str(&text).unwrap();
    let route = &mut doc["route"];
    route["group_wait"] = Yaml::from("1s");
    route["group_interval"] = Yaml::from("2s");
    for r in route["routes"].as_sequence_mut().unwrap() {
        let critical = s(&r["matchers"][0]).contains("critical");
        r["group_wait"] = Yaml::from(if critical { "5s" } else { "1s" });
        r["group_interval"] = Yaml::from("2s");
    }
    serde_norway::to_string(&doc).unwrap()
}

fn write_targets(dir: &Path, edge: &EdgeProc, replicas: &[SocketAddr], alerter: SocketAddr) {
    let t = dir.join("targets");
    std::fs::create_dir_all(&t).unwrap();
    let file = |name: &str, addrs: Vec<String>, component: &str| {
        std::fs::write(
            t.join(name),
            json!([{"targets": addrs, "labels": {"component": component}}]).to_string(),
        )
        .unwrap();
    };
    file("edge.json", vec![edge.metrics.to_string()], "edge");
    file(
        "links.json",
        replicas.iter().map(|a| a.to_string()).collect(),
        "links",
    );
    file("consumers.json", vec![alerter.to_string()], "alerter");
    std::fs::write(t.join("admin.json"), "[]").unwrap();
}

/// GET `path` as JSON, decoding a chunked body (Prometheus and
/// Alertmanager stream their larger answers); `Null` when it is not JSON.
async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let r = http(addr, "GET", path, &[], b"").await;
    let chunked = r
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = r.body.as_str();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        r.body
    };
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// Alerts Prometheus holds: alertname -> states.
async fn prom_alerts(prom: SocketAddr) -> BTreeMap<String, Vec<String>> {
    let v = get_json(prom, "/api/v1/alerts").await;
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in v["data"]["alerts"].as_array().into_iter().flatten() {
        m.entry(a["labels"]["alertname"].as_str().unwrap_or("").to_owned())
            .or_default()
            .push(a["state"].as_str().unwrap_or("").to_owned());
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_travel_from_prometheus_through_alertmanager_and_the_alerter_to_discord() {
    let discord = Discord::default();
    let hook = discord.clone().start().await;

    // The app database behind a proxy that the test can cut.
    let db = TestDb::new().await;
    shortlink_testkit::require_redis().await;
    let pg = shortlink_testkit::pg_admin_url();
    let pg_hostport = pg
        .split('@')
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("127.0.0.1:5432")
        .to_owned();
    let proxy = shortlink_testkit::Proxy::start(&pg_hostport).await;
    let db_url = db.url.replace(&pg_hostport, &proxy.addr.to_string());
    let mut env = links_env(&db, &[]);
    for (k, v) in env.iter_mut() {
        if *k == "DATABASE_URL" {
            *v = db_url.clone();
        }
    }
    let r1 = Replica::start(&env).await;
    let (r2_grpc, r2_http) = (free_port(), free_port());
    let r2 = Replica::start_on(r2_grpc, r2_http, &env).await;
    let edge = EdgeProc::start(&[r1.grpc, r2.grpc], &[]).await;

    let alerter_http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let alerter_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut alerter = spawn_raw(
        &["alerter"],
        &[
            ("ALERTER_HTTP_ADDR", alerter_http.to_string()),
            ("CONSUMER_METRICS_ADDR", alerter_metrics.to_string()),
            (
                "ALERT_WEBHOOK_URLS",
                format!("http://{hook}/api/webhooks/1/token"),
            ),
            ("ALERT_MIN_INTERVAL_MS", "100".into()),
        ],
    );
    wait_http_ok(&mut alerter, alerter_http, "/live").await;

    let dir = std::env::temp_dir().join(format!("shortlink-obs-e2e-{}", random_suffix()));
    std::fs::create_dir_all(&dir).unwrap();

    // The dashboard, whose incident timeline Alertmanager also posts to,
    // with the operator token Alertmanager reads from a file.
    let dash_token = format!("obs-e2e-token-{}", random_suffix());
    let token_file = dir.join("dashboard-token");
    std::fs::write(&token_file, &dash_token).unwrap();
    let dash: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut dashboard = spawn_raw(
        &["dashboard"],
        &[
            ("DASHBOARD_ADDR", dash.to_string()),
            ("DASHBOARD_TOKEN", dash_token.clone()),
            (
                "DASHBOARD_DATABASE_URL",
                format!("sqlite://{}?mode=rwc", dir.join("dashboard.db").display()),
            ),
        ],
    );
    wait_http_ok(&mut dashboard, dash, "/ready").await;
    let timeline = async || http(dash, "GET", "/incidents", &[], b"").await.body;

    let (prom, am): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    std::fs::write(dir.join("alerts.yml"), alerts_overlay("3s")).unwrap();
    std::fs::write(dir.join("prometheus.yml"), prometheus_overlay(&dir, am)).unwrap();
    std::fs::write(
        dir.join("alertmanager.yml"),
        alertmanager_overlay(alerter_http, dash, &token_file),
    )
    .unwrap();
    write_targets(&dir, &edge, &[r1.http, r2.http], alerter_metrics);
    run_ok(
        tool("promtool")
            .args(["check", "config"])
            .arg(dir.join("prometheus.yml")),
    );
    run_ok(
        tool("amtool")
            .arg("check-config")
            .arg(dir.join("alertmanager.yml")),
    );

    let _am = start_tool(
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", dir.join("alertmanager.yml").display()),
            format!("--storage.path={}", dir.join("am").display()),
            format!("--web.listen-address={am}"),
            "--cluster.listen-address=".into(),
        ],
        am,
        &dir.join("alertmanager.log"),
    )
    .await;
    let _prom = start_tool(
        "prometheus",
        &[
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("prom").display()),
            format!("--web.listen-address={prom}"),
            "--rules.alert.resend-delay=1s".into(),
        ],
        prom,
        &dir.join("prometheus.log"),
    )
    .await;

    // Every target is scraped, the label scheme holds on `up` and on the
    // components' own series.
    let all_up = eventually(Duration::from_secs(30), async || {
        let v = get_json(prom, "/api/v1/query?query=up").await;
        let r = v["data"]["result"].as_array().cloned().unwrap_or_default();
        r.len() == 4 && r.iter().all(|s| s["value"][1] == "1")
    })
    .await;
    assert!(
        all_up,
        "targets: {}",
        get_json(prom, "/api/v1/targets").await
    );
    let q = format!(
        "/api/v1/query?query=shortlink_build_info%7Binstance%3D%22{}%22%7D",
        r2.http
    );
    let v = get_json(prom, &q).await;
    let body = v.to_string();
    let m = &v["data"]["result"][0]["metric"];
    assert_eq!(m["component"], "links", "{body}");
    assert_eq!(m["job"], "links", "{body}");
    assert!(
        m["instance_id"].is_string() && m.get("exported_instance").is_none(),
        "{body}"
    );

    // 1. A links replica dies: target down -> Alertmanager -> alerter -> Discord.
    let r2_addr = r2.http.to_string();
    let killed = Instant::now();
    drop(r2); // SIGKILL
    let fired = discord
        .wait_for(Duration::from_secs(60), |a, d| {
            a == "[FIRING] ShortlinkTargetDown" && d.contains(&r2_addr)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no target-down embed; Prometheus: {:?}; posts: {:?}",
                prom_alerts_blocking(prom),
                discord.alerts()
            )
        });
    let kill_to_embed = fired.duration_since(killed);
    // The embed names the target and the runbook.
    let embed = discord
        .posts
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, v)| v["embeds"].as_array().cloned().unwrap_or_default())
        .find(|e| e["title"] == "[FIRING] ShortlinkTargetDown")
        .expect("a single-alert embed");
    let field = |name: &str| {
        embed["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["name"] == name)
            .map(|f| f["value"].clone())
    };
    assert_eq!(field("instance"), Some(json!(r2_addr)), "{embed}");
    assert_eq!(field("severity"), Some(json!("warning")), "{embed}");
    assert_eq!(
        field("runbook"),
        Some(json!("docs/RUNBOOKS.md#shortlinktargetdown")),
        "{embed}"
    );
    let r2 = Replica::start_on(r2_grpc, r2_http, &env).await;
    let back = Instant::now();
    let resolved = discord
        .wait_for(Duration::from_secs(60), |a, d| {
            a == "[RESOLVED] ShortlinkTargetDown" && d.contains(&r2_addr)
        })
        .await
        .expect("a resolved embed after the replica came back");
    let recovery_to_resolved = resolved.duration_since(back);
    // The same notifications reached the dashboard's incident timeline
    // (with its bearer token, read from the file): a warning is an entry,
    // opening no incident.
    let on_timeline = eventually(Duration::from_secs(30), async || {
        let t = timeline().await;
        t.contains("ShortlinkTargetDown firing") && t.contains("ShortlinkTargetDown resolved")
    })
    .await;
    assert!(on_timeline, "dashboard timeline: {}", timeline().await);
    assert!(
        timeline().await.contains(r#"id="open-count">0<"#),
        "a warning opened an incident: {}",
        timeline().await
    );
    eprintln!(
        "e2e timings: kill -> Discord embed {:.1} s; recovery -> resolved {:.1} s \
         (scrape and evaluation 1 s, for: 3 s, group_wait 1 s, group_interval 2 s)",
        kill_to_embed.as_secs_f64(),
        recovery_to_resolved.as_secs_f64()
    );

    // 2. The database goes away under write traffic: the availability
    // (5xx ratio) page reaches Discord; the per-route 5xx-ratio page for the
    // same answers is inhibited, and no other page goes out.
    let user_id = post_json(
        edge.http,
        "/users",
        json!({"username": format!("w{}", &random_suffix()[..8]), "email": format!("w{}@example.com", &random_suffix()[..8])}),
    )
    .await
    .json()["id"]
        .clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(Vec::<u16>::new()));
    let writer = {
        let (stop, statuses, e) = (stop.clone(), statuses.clone(), edge.http);
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = post_json(
                    e,
                    "/shorten",
                    json!({"original_url": "https://example.com/w", "user_id": user_id}),
                )
                .await;
                statuses.lock().unwrap().push(r.status);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before_cut = discord.alerts().len();
    let cut = Instant::now();
    proxy.cut().await;
    let paged = discord
        .wait_for(Duration::from_secs(90), |a, d| {
            a == "[FIRING] ShortlinkAvailabilityBurnRateFast" && d.contains("% of API requests")
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no availability page; statuses {:?}; posts {:?}",
                statuses
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>(),
                discord.alerts()
            )
        });
    let cut_to_page = paged.duration_since(cut);
    // The per-route 5xx ratio fires in Prometheus too...
    let route_fires = eventually(Duration::from_secs(60), async || {
        prom_alerts(prom)
            .await
            .get("ShortlinkHttp5xxRatioHigh")
            .is_some_and(|s| s.iter().any(|s| s == "firing"))
    })
    .await;
    assert!(route_fires, "{:?}", prom_alerts(prom).await);
    // ...and Alertmanager holds it inhibited by the availability page.
    let inhibited = eventually(Duration::from_secs(30), async || {
        let v = get_json(
            am,
            "/api/v2/alerts?inhibited=true&silenced=true&active=true",
        )
        .await;
        v.as_array().into_iter().flatten().any(|a| {
            a["labels"]["alertname"] == "ShortlinkHttp5xxRatioHigh"
                && a["status"]["state"] == "suppressed"
                && a["status"]["inhibitedBy"]
                    .as_array()
                    .is_some_and(|i| !i.is_empty())
        })
    })
    .await;
    assert!(inhibited, "{}", get_json(am, "/api/v2/alerts").await);
    // Through a few more group intervals, nothing else pages.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after: Vec<_> = discord.alerts().into_iter().skip(before_cut).collect();
    let pages: BTreeSet<String> = after
        .iter()
        .filter(|(a, _, _)| a.starts_with("[FIRING]"))
        .map(|(a, _, _)| a.clone())
        .filter(|a| {
            // Pages only: the critical alerts of alerts.yml.
            let name = a.trim_start_matches("[FIRING] ");
            alert_rules()
                .iter()
                .any(|r| s(&r["alert"]) == name && s(&r["labels"]["severity"]) == "critical")
        })
        .collect();
    assert_eq!(
        pages,
        BTreeSet::from(["[FIRING] ShortlinkAvailabilityBurnRateFast".to_owned()]),
        "one page for the database outage; all notifications: {after:?}"
    );
    eprintln!(
        "e2e timings: database cut -> availability page {:.1} s",
        cut_to_page.as_secs_f64()
    );
    // The page opened an incident on the dashboard's timeline.
    let opened = eventually(Duration::from_secs(30), async || {
        let t = timeline().await;
        let open: u32 = t
            .split(r#"id="open-count">"#)
            .nth(1)
            .and_then(|r| r.split('<').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        t.contains("ShortlinkAvailabilityBurnRateFast firing") && open >= 1
    })
    .await;
    assert!(opened, "dashboard timeline: {}", timeline().await);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = writer.await;
    proxy.restore().await;
    drop((alerter, dashboard, edge, r1, r2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// For failure messages: Prometheus's alerts, fetched on a fresh runtime
/// thread (a panic message cannot await).
fn prom_alerts_blocking(prom: SocketAddr) -> String {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { format!("{:?}", prom_alerts(prom).await) })
    })
    .join()
    .unwrap_or_default()
}

/// The collector binary is not packaged for Debian, PyPI, npm or crates.io,
/// so its config is checked here: valid YAML, and every component a
/// pipeline names is defined (what `otelcol validate` checks first).
#[test]
fn otel_collector_config_defines_every_component_its_pipelines_use() {
    let c = yaml(&obs().join("otel/collector.yaml"));
    assert!(
        c["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].is_string(),
        "OTLP gRPC in"
    );
    let traces = &c["service"]["pipelines"]["traces"];
    for kind in ["receivers", "processors", "exporters"] {
        let used = traces[kind].as_sequence().expect(kind);
        assert!(!used.is_empty(), "{kind}");
        for name in used {
            assert!(
                c[kind].get(s(name)).is_some(),
                "pipeline traces uses undefined {kind} {name:?}"
            );
        }
    }
    let processors: Vec<&str> = traces["processors"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert!(processors.contains(&"batch"), "{processors:?}");
    let exporter = traces["exporters"][0].as_str().unwrap();
    assert!(
        exporter.starts_with("otlp"),
        "{exporter}: OTLP out to the trace viewer"
    );
    assert!(s(&c["exporters"][exporter]["endpoint"]).contains("4317"));
    for ext in c["service"]["extensions"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        assert!(c["extensions"].get(s(ext)).is_some(), "extension {ext:?}");
    }
}
