//! The dashboard over real HTTP on a loopback port, with the in-process
//! bus and a SQLite dashboard database: sessions and CSRF, the
//! Alertmanager webhook's idempotency and incidents, ops events on the
//! timeline, and the live stream's server-side filter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use shortlink_bus::{EventBus, MemoryBus, Topics};
use shortlink_dashboard::DashboardArgs;
use shortlink_runtime::metrics::Metrics;
use shortlink_runtime::shutdown::Shutdown;
use shortlink_testkit::{HttpResponse, http, random_suffix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "dash-test-token";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    d: DashboardArgs,
}

struct Dash {
    addr: SocketAddr,
    bus: Arc<dyn EventBus>,
    topics: Topics,
    _stop: shortlink_runtime::shutdown::DropGuard,
}

async fn start() -> Dash {
    let db = std::env::temp_dir().join(format!("shortlink-dash-test-{}.db", random_suffix()));
    let args = Cli::try_parse_from([
        "dashboard",
        "--token",
        TOKEN,
        "--dashboard-database-url",
        &format!("sqlite://{}?mode=rwc", db.display()),
        "--watchdog-url",
        "http://127.0.0.1:9",
    ])
    .unwrap()
    .d;
    let metrics = Metrics::new("dashboard", "test");
    let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new(10_000, &metrics));
    let topics = Topics::with_prefix(&args.group.bus.topic_prefix);
    bus.ensure_topics(&topics.all()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let stop = shutdown.drop_guard();
    tokio::spawn(shortlink_dashboard::serve(
        listener,
        args,
        bus.clone(),
        metrics,
        shutdown,
    ));
    let ok = shortlink_testkit::eventually(Duration::from_secs(10), async || {
        tokio::net::TcpStream::connect(addr).await.is_ok()
            && shortlink_testkit::http_get(addr, "/ready").await.0 == 200
    })
    .await;
    assert!(ok, "the dashboard never became ready");
    Dash {
        addr,
        bus,
        topics,
        _stop: stop,
    }
}

fn form(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    body: &str,
) -> impl Future<Output = HttpResponse> {
    let path = path.to_owned();
    let body = body.to_owned();
    let cookie = cookie.map(|c| format!("sl_dash_session={c}"));
    async move {
        let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(c) = &cookie {
            h.push(("cookie", c.as_str()));
        }
        http(addr, "POST", &path, &h, body.as_bytes()).await
    }
}

/// Logs in; returns the session id and the page's CSRF token.
async fn login(d: &Dash) -> (String, String) {
    let r = form(
        d.addr,
        "/login",
        None,
        &format!("token={TOKEN}&next=/incidents"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/incidents"));
    let c = r.header("set-cookie").expect("a session cookie").to_owned();
    assert!(
        c.contains("HttpOnly") && c.contains("SameSite=Strict"),
        "{c}"
    );
    let id = c
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("sl_dash_session=")
        .to_owned();
    let page = http(
        d.addr,
        "GET",
        "/incidents",
        &[("cookie", &format!("sl_dash_session={id}"))],
        b"",
    )
    .await;
    let csrf = page
        .body
        .split("name=\"csrf\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the page carries the CSRF token")
        .to_owned();
    (id, csrf)
}

#[tokio::test]
async fn actions_need_a_session_and_its_csrf_token() {
    let d = start().await;
    let r = form(d.addr, "/login", None, "token=wrong").await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.header("set-cookie").is_none());
    let r = form(d.addr, "/incidents/note", None, "note=x").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "unauthenticated");
    let (id, csrf) = login(&d).await;
    let r = form(d.addr, "/incidents/note", Some(&id), "note=no+csrf").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "csrf");
    let r = form(d.addr, "/incidents/note", Some(&id), "note=wrong&csrf=0000").await;
    assert_eq!(r.status, 403);
    let r = form(
        d.addr,
        "/incidents/note",
        Some(&id),
        &format!("note=checked+the+edge&csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = http(d.addr, "GET", "/incidents", &[], b"").await;
    assert!(
        page.body.contains("checked the edge"),
        "the note is on the timeline"
    );
    // A stale session is refused like none.
    let r = form(
        d.addr,
        "/incidents/note",
        Some("feedface"),
        &format!("note=x&csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, 401);
    // Chaos refuses unknown actions before calling the watchdog.
    let r = http(
        d.addr,
        "POST",
        "/chaos/links-1/explode",
        &[
            ("cookie", &format!("sl_dash_session={id}")),
            ("x-csrf-token", &csrf),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "unknown_action");
    // The watchdog down: a clear 502, never a panic.
    let r = http(
        d.addr,
        "POST",
        "/chaos/links-1/kill",
        &[
            ("cookie", &format!("sl_dash_session={id}")),
            ("x-csrf-token", &csrf),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "watchdog_unavailable");
    // A load test against anything but a configured edge is refused.
    let r = form(
        d.addr,
        "/load/start",
        Some(&id),
        &format!("tier=bronze&target=http://example.com&duration=5s&csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("DASHBOARD_EDGES")
    );
}

#[tokio::test]
async fn alertmanager_repeats_make_one_incident_and_ops_events_reach_the_timeline() {
    let d = start().await;
    let firing = json!({"alerts": [{"status": "firing", "fingerprint": "abc123",
        "labels": {"alertname": "ShortlinkLinksBreakerOpen", "severity": "critical", "instance": "links-1:9181"},
        "annotations": {"summary": "the breaker is open"}, "startsAt": "2026-12-02T10:00:00Z"}]});
    let auth = format!("Bearer {TOKEN}");
    let post = |body: serde_json::Value| {
        let auth = auth.clone();
        async move {
            http(
                d.addr,
                "POST",
                "/api/alertmanager",
                &[
                    ("content-type", "application/json"),
                    ("authorization", &auth),
                ],
                body.to_string().as_bytes(),
            )
            .await
        }
    };
    for _ in 0..3 {
        let r = post(firing.clone()).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = post(json!({"nope": 1})).await;
    assert_eq!(r.status, 400);
    let r = http(
        d.addr,
        "POST",
        "/api/alertmanager",
        &[("authorization", &auth)],
        b"{not json",
    )
    .await;
    assert_eq!(r.status, 400);
    let page = http(d.addr, "GET", "/incidents", &[], b"").await.body;
    assert_eq!(
        page.matches("OPEN</span>").count(),
        1,
        "one incident for three deliveries"
    );
    assert_eq!(
        page.matches("ShortlinkLinksBreakerOpen firing").count(),
        1,
        "one timeline entry"
    );
    assert!(page.contains("id=\"open-count\">1<"), "open");
    // An operator acknowledges it (once).
    let id = page
        .split("class=\"open\" data-id=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the open incident's id")
        .to_owned();
    let (session, csrf) = login(&d).await;
    let r = form(
        d.addr,
        &format!("/incidents/{id}/ack"),
        Some(&session),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let r = form(
        d.addr,
        &format!("/incidents/{id}/ack"),
        Some(&session),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, 404, "acknowledged already: {}", r.body);
    let page = http(d.addr, "GET", "/incidents", &[], b"").await.body;
    assert!(
        page.contains("incident acknowledged") && page.contains(" by operator"),
        "{page}"
    );

    // Ops events from the bus: a crash loop opens an incident, recovery closes it.
    let ops = |kind: &str| {
        json!({"schema_version": 1, "time": "2026-12-02T11:00:00Z", "kind": kind,
        "component": "links-2", "reason": "exited with status 137", "restarts": 5, "actor": "watchdog", "level": "ERROR"})
    };
    d.bus.publish(
        &d.topics.ops,
        None,
        serde_json::to_vec(&ops("crashlooping")).unwrap().into(),
    );
    let ok = shortlink_testkit::eventually(Duration::from_secs(5), async || {
        http(d.addr, "GET", "/incidents", &[], b"")
            .await
            .body
            .contains("links-2 is crash-looping")
    })
    .await;
    assert!(ok, "the crash loop is on the timeline");
    let page = http(d.addr, "GET", "/incidents", &[], b"").await.body;
    assert!(
        page.contains("id=\"open-count\">2<"),
        "a second open incident"
    );
    let mut recovered = ops("recovered");
    recovered["time"] = json!("2026-12-02T11:01:00Z");
    d.bus.publish(
        &d.topics.ops,
        None,
        serde_json::to_vec(&recovered).unwrap().into(),
    );
    let ok = shortlink_testkit::eventually(Duration::from_secs(5), async || {
        http(d.addr, "GET", "/incidents", &[], b"")
            .await
            .body
            .contains("id=\"open-count\">1<")
    })
    .await;
    assert!(ok, "recovery closes the crash-loop incident");
}

/// Reads an SSE response until `want` appears (or `limit` passes); returns what was read.
async fn read_sse_until(
    addr: SocketAddr,
    path: &str,
    want: &str,
    limit: Duration,
    publish: impl Future<Output = ()>,
) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = String::new();
    // The headers arrive first: the stream is subscribed from then on.
    let n = s.read(&mut buf).await.unwrap();
    got.push_str(&String::from_utf8_lossy(&buf[..n]));
    publish.await;
    let deadline = tokio::time::Instant::now() + limit;
    while !got.contains(want) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => break,
        }
    }
    got
}

#[tokio::test]
async fn the_live_stream_sends_only_what_the_filter_matches() {
    let d = start().await;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let req = move |rid: &str, status: u32| {
        json!({"schema_version": 1, "time": now,
        "edge_id": "edge-1", "request_id": rid, "method": "GET", "route": "/{short_code}", "path": "/abcd",
        "status": status, "duration_ms": 1.5, "outcome": "ok"})
    };
    let (bus, topic) = (d.bus.clone(), d.topics.requests.clone());
    let got = read_sse_until(
        d.addr,
        "/logs/stream?request_id=want-me",
        "want-me",
        Duration::from_secs(5),
        async move {
            bus.publish(
                &topic,
                None,
                serde_json::to_vec(&req("not-me", 200)).unwrap().into(),
            );
            bus.publish(
                &topic,
                None,
                serde_json::to_vec(&req("want-me", 502)).unwrap().into(),
            );
        },
    )
    .await;
    assert!(got.contains("text/event-stream"), "{got}");
    assert!(
        got.contains("want-me") && got.contains("GET /abcd → 502"),
        "{got}"
    );
    assert!(!got.contains("not-me"), "filtered on the server: {got}");
    // Both are in the ring for a new page, newest first, and the request is stored.
    let page = http(d.addr, "GET", "/logs?request_id=want-me", &[], b"")
        .await
        .body;
    assert!(
        page.contains("want-me") && !page.contains(">not-me<"),
        "{page}"
    );
    let ok = shortlink_testkit::eventually(Duration::from_secs(5), async || {
        http(d.addr, "GET", "/errors", &[], b"")
            .await
            .body
            .contains("want-me")
    })
    .await;
    assert!(ok, "the 502 is an error sample on /errors");
    // Bad filters are not errors.
    let r = http(d.addr, "GET", "/logs?status=banana&level=nope", &[], b"").await;
    assert_eq!(r.status, 200);
    let r = http(d.addr, "GET", "/nope", &[], b"").await;
    assert_eq!(r.status, 404);
}
