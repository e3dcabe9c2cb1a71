//! The event pipeline against a real Kafka-protocol broker (tansu, started
//! by scripts/test.sh): real `shortlink` processes on loopback, each test on
//! its own topics (unique prefix) and consumer groups.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shortlink_testkit::{TestDb, eventually, free_port, http, require_redis};
use sqlx::Connection;
use support::{EdgeProc, Replica, Tansu, kafka_brokers, spawn_raw, spawn_to_file};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn prefix() -> String {
    format!("t{}.", shortlink_testkit::random_suffix())
}

fn bus_env(brokers: &str, prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("KAFKA_BROKERS", brokers.to_owned()),
        ("KAFKA_TOPIC_PREFIX", prefix.to_owned()),
        ("KAFKA_TOPIC_PARTITIONS", "2".into()),
    ]
}

fn links_env(db: &TestDb, brokers: &str, prefix: &str) -> Vec<(&'static str, String)> {
    support::links_env(db, &bus_env(brokers, prefix))
}

fn edge_env(brokers: &str, prefix: &str) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("RATE_LIMIT_RPS", "100000".into()),
        ("RATE_LIMIT_BURST", "100000".into()),
    ];
    v.extend(bus_env(brokers, prefix));
    v
}

async fn clicks(db: &TestDb, url_id: i64) -> i64 {
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let r: Option<(i64,)> = sqlx::query_as("SELECT clicks FROM link_clicks WHERE url_id = $1")
        .bind(url_id)
        .fetch_optional(&mut c)
        .await
        .unwrap();
    r.map_or(0, |r| r.0)
}

fn analytics(links: SocketAddr, brokers: &str, prefix: &str, group: &str) -> support::Proc {
    analytics_with(links, brokers, prefix, group, &[])
}

fn analytics_with(
    links: SocketAddr,
    brokers: &str,
    prefix: &str,
    group: &str,
    extra: &[(&'static str, String)],
) -> support::Proc {
    let mut env = bus_env(brokers, prefix);
    env.push(("LINKS_ADDR", links.to_string()));
    env.push(("CONSUMER_GROUP", group.to_owned()));
    env.push(("ANALYTICS_BATCH_WAIT_MS", "200".into()));
    env.extend_from_slice(extra);
    spawn_raw(&["analytics"], &env)
}

/// Click events users see through `GET /urls/{id}/events?event_type=click`:
/// its `total`, or, where the route answers a bare array, the rows of
/// every page.
async fn visible_clicks(edge: SocketAddr, id: i64) -> i64 {
    let mut seen = 0;
    for page in 1.. {
        let r = http(
            edge,
            "GET",
            &format!("/urls/{id}/events?event_type=click&per_page=100&page={page}"),
            &[],
            b"",
        )
        .await
        .json();
        if let Some(total) = r["total"].as_i64() {
            return total;
        }
        let n = r.as_array().map_or(0, Vec::len);
        seen += n as i64;
        if n < 100 {
            break;
        }
    }
    seen
}

#[tokio::test]
async fn every_group_gets_every_event_and_clicks_equal_redirects() {
    require_redis().await;
    let (brokers, prefix) = (kafka_brokers(), prefix());
    let db = TestDb::new().await;
    let dash_db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &brokers, &prefix)).await;
    let edge = EdgeProc::start(&[replica.grpc], &edge_env(&brokers, &prefix)).await;
    let _analytics = analytics(replica.grpc, &brokers, &prefix, &format!("a-{prefix}"));
    let mut dash_env = bus_env(&brokers, &prefix);
    dash_env.push(("DASHBOARD_DATABASE_URL", dash_db.url.clone()));
    dash_env.push((
        "DASHBOARD_INGEST_HTTP_ADDR",
        format!("127.0.0.1:{}", free_port()),
    ));
    dash_env.push(("CONSUMER_GROUP", format!("d-{prefix}")));
    let _dash = spawn_raw(&["dashboard-ingest"], &dash_env);
    let out = std::env::temp_dir().join(format!(
        "printer-{}.jsonl",
        shortlink_testkit::random_suffix()
    ));
    let mut printer_env = bus_env(&brokers, &prefix);
    printer_env.push(("PRINT_FORMAT", "json".into()));
    printer_env.push(("CONSUMER_GROUP", format!("p-{prefix}")));
    let _printer = spawn_to_file(&["log-printer"], &printer_env, &out);

    let (id, code) = support::user_and_link(edge.http, "pipeuser").await;
    for _ in 0..30 {
        assert_eq!(
            http(
                edge.http,
                "GET",
                &format!("/{code}"),
                // Every redirect reuses one client request id: the click
                // key is the edge's own id, so none of them is lost.
                &[
                    ("Referer", "https://ref.example"),
                    ("X-Request-ID", "client-reused-id")
                ],
                b""
            )
            .await
            .status,
            302
        );
    }
    for _ in 0..3 {
        assert_eq!(
            http(edge.http, "GET", "/nothere", &[], b"").await.status,
            404
        );
    }

    // analytics: one click per redirect, visible through the public API.
    assert!(
        eventually(Duration::from_secs(30), async || clicks(&db, id).await
            == 30)
        .await,
        "clicks = {}",
        clicks(&db, id).await
    );
    let r = http(
        edge.http,
        "GET",
        &format!("/urls/{id}/events?event_type=click&per_page=100"),
        &[],
        b"",
    )
    .await
    .json();
    assert_eq!(r.as_array().map(Vec::len), Some(30));
    assert_eq!(r[0]["details"]["referrer"], "https://ref.example");
    // Every request above counts, the events read just made included: two
    // creations, 30 redirects, three misses and one read. (Counting 35 here
    // passed only while the ingest lagged behind the read.)
    let requests = 2 + 30 + 3 + 1;

    // dashboard-ingest: every request in the per-minute aggregates.
    let total = async || {
        let Ok(mut c) = sqlx::PgConnection::connect(&dash_db.url).await else {
            return 0;
        };
        // Readiness probes of the test harness are requests too; count the API.
        let r: Result<(Option<i64>,), _> = sqlx::query_as(
            "SELECT CAST(SUM(requests) AS BIGINT) FROM dash_minute_stats \
             WHERE route NOT IN ('/health', '/live', '/ready', '/metrics')",
        )
        .fetch_one(&mut c)
        .await;
        r.ok().and_then(|r| r.0).unwrap_or(0)
    };
    let by_route = async || {
        let Ok(mut c) = sqlx::PgConnection::connect(&dash_db.url).await else {
            return Vec::new();
        };
        sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT route, CAST(status AS BIGINT), COUNT(*) FROM dash_requests \
             GROUP BY route, status ORDER BY route, status",
        )
        .fetch_all(&mut c)
        .await
        .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(30), async || total().await == requests).await,
        "aggregated {} requests, expected {requests}; ingested (route, status, count): {:?}",
        total().await,
        by_route().await
    );

    // log-printer: every request and link event as a JSON line.
    let counted = eventually(Duration::from_secs(30), async || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let req = lines
            .iter()
            .filter(|l| {
                l["topic"] == format!("{prefix}requests") && l["event"]["route"] != "/ready"
            })
            .count();
        let links = lines
            .iter()
            .filter(|l| l["topic"] == format!("{prefix}link-events"))
            .count();
        req == requests as usize && links == 31
    })
    .await;
    assert!(
        counted,
        "log-printer output: {}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    let _ = std::fs::remove_file(out);
}

#[tokio::test]
async fn a_restarted_consumer_resumes_from_its_committed_offset_without_loss() {
    require_redis().await;
    let (brokers, prefix) = (kafka_brokers(), prefix());
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &brokers, &prefix)).await;
    let edge = EdgeProc::start(&[replica.grpc], &edge_env(&brokers, &prefix)).await;
    let group = format!("a-{prefix}");
    let mut consumer = analytics(replica.grpc, &brokers, &prefix, &group);
    let (id, code) = support::user_and_link(edge.http, "resumer").await;
    support::redirect_n(edge.http, &code, 20).await;
    assert!(
        eventually(Duration::from_secs(30), async || clicks(&db, id).await
            == 20)
        .await
    );
    consumer.signal("KILL");
    let _ = consumer.wait_exit(Duration::from_secs(10)).await;
    support::redirect_n(edge.http, &code, 20).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        clicks(&db, id).await,
        20,
        "nothing consumed while the consumer was down"
    );
    let _consumer = analytics(replica.grpc, &brokers, &prefix, &group);
    assert!(
        eventually(Duration::from_secs(45), async || clicks(&db, id).await
            == 40)
        .await,
        "after restart: {} clicks of 40",
        clicks(&db, id).await
    );
}

#[tokio::test]
async fn with_the_broker_unreachable_requests_succeed_and_every_event_arrives_after_it_returns() {
    require_redis().await;
    // This broker is reached only through a proxy that the test cuts: to its
    // clients the broker is gone (connections dropped, new ones refused)
    // and comes back with its log intact.
    let listen = format!("127.0.0.1:{}", free_port());
    let proxy = shortlink_testkit::Proxy::start(&listen).await;
    let advertised = proxy.addr.to_string();
    let _broker = Tansu::start_advertising(&listen, &advertised).await;
    let prefix = prefix();
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &advertised, &prefix)).await;
    let edge = EdgeProc::start(&[replica.grpc], &edge_env(&advertised, &prefix)).await;
    let _consumer = analytics(replica.grpc, &advertised, &prefix, &format!("a-{prefix}"));
    let (id, code) = support::user_and_link(edge.http, "brokerless").await;
    support::redirect_n(edge.http, &code, 10).await;
    assert!(
        eventually(Duration::from_secs(30), async || clicks(&db, id).await
            == 10)
        .await
    );

    proxy.cut().await;
    let started = Instant::now();
    for _ in 0..20 {
        let r = http(edge.http, "GET", &format!("/{code}"), &[], b"").await;
        assert_eq!(
            r.status, 302,
            "requests are unaffected by the broker outage"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "requests did not wait for the broker"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        clicks(&db, id).await,
        10,
        "nothing can arrive while the broker is away"
    );
    let (_, m) = shortlink_testkit::http_get(edge.metrics, "/metrics").await;
    let pending: f64 = m
        .lines()
        .find(|l| l.starts_with("shortlink_bus_events_pending"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(pending > 0.0, "events wait in the edge's queue:\n{m}");

    proxy.restore().await;
    assert!(
        eventually(Duration::from_secs(60), async || clicks(&db, id).await
            == 30)
        .await,
        "after the broker returned: {} clicks of 30",
        clicks(&db, id).await
    );
    let (_, m) = shortlink_testkit::http_get(edge.metrics, "/metrics").await;
    assert!(
        !m.contains("shortlink_bus_events_dropped_total{"),
        "nothing dropped:\n{m}"
    );
}

/// Clicks produced in large record batches (thousands of events per batch,
/// as Apache Kafka clients batch), consumed by analytics in batches of 50
/// and committed after each: analytics is killed (SIGKILL) in the middle,
/// so its group resumes at an offset inside a record batch. Every click is
/// recorded exactly once as users see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_batch_resumes_without_loss_or_visible_duplicates() {
    require_redis().await;
    let (brokers, prefix) = (kafka_brokers(), prefix());
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &brokers, &prefix)).await;
    let edge = EdgeProc::start(&[replica.grpc], &edge_env(&brokers, &prefix)).await;
    let (id, code) = support::user_and_link(edge.http, "midbatch").await;
    let user_id = http(edge.http, "GET", &format!("/urls/{id}"), &[], b"")
        .await
        .json()["user_id"]
        .as_i64()
        .unwrap();

    // The producer: the bus with its defaults (large batches).
    let metrics = shortlink_runtime::metrics::Metrics::new("test", "t");
    let bus = shortlink_bus::connect(
        &shortlink_bus::BusArgs {
            kafka_brokers: Some(brokers.clone()),
            topic_prefix: prefix.clone(),
            topic_partitions: 2,
            ..shortlink_bus::BusArgs::default()
        },
        &metrics,
    )
    .unwrap();
    let topics = shortlink_bus::Topics::with_prefix(&prefix);
    bus.ensure_topics(&topics.all()).await.unwrap();
    let n = 10_000;
    for i in 0..n {
        let ev = shortlink_proto::events::LinkEvent {
            schema_version: 1,
            time: chrono::Utc::now().to_rfc3339(),
            kind: "click".into(),
            link_id: id,
            user_id,
            short_code: code.clone(),
            request_id: format!("mid-{i}"),
            source: "test".into(),
            ..Default::default()
        };
        bus.publish(&topics.links, Some(&id.to_string()), ev.into());
    }
    bus.flush(Duration::from_secs(30));
    assert_eq!(bus.pending(), 0, "every click acknowledged");
    let batches_metric = || {
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with("shortlink_bus_producer_batches_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        eventually(Duration::from_secs(20), async || batches_metric() > 0.0).await,
        "no producer statistics"
    );
    assert!(
        batches_metric() * 20.0 <= f64::from(n),
        "{n} clicks in {} record batches: expected at least 20 per batch",
        batches_metric()
    );

    let group = format!("a-{prefix}");
    let small = [("ANALYTICS_BATCH_MAX", "50".to_owned())];
    let mut consumer = analytics_with(replica.grpc, &brokers, &prefix, &group, &small);
    // Killed as soon as it has recorded a few batches (polled closely, so
    // that most of the clicks are still ahead of it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while clicks(&db, id).await < 300 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "analytics made no progress: {} clicks",
            clicks(&db, id).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumer.signal("KILL");
    let _ = consumer.wait_exit(Duration::from_secs(10)).await;
    let at_kill = clicks(&db, id).await;
    assert!(at_kill < i64::from(n), "killed before the end ({at_kill})");

    let _consumer = analytics_with(replica.grpc, &brokers, &prefix, &group, &small);
    assert!(
        eventually(Duration::from_secs(90), async || clicks(&db, id).await
            == i64::from(n))
        .await,
        "after restart: {} clicks of {n}",
        clicks(&db, id).await
    );
    assert_eq!(visible_clicks(edge.http, id).await, i64::from(n));
    // Nothing more arrives later (no duplicate still in flight).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(clicks(&db, id).await, i64::from(n));
    assert_eq!(visible_clicks(edge.http, id).await, i64::from(n));
}

/// The broker is killed (SIGKILL) and restarted on the same SQLite file:
/// events it acknowledged before, events queued while it was down and the
/// consumer group's committed offsets all survive; every click is counted
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_no_acknowledged_event() {
    require_redis().await;
    let mut tansu = Tansu::start().await;
    let (brokers, prefix) = (tansu.listen.clone(), prefix());
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &brokers, &prefix)).await;
    let edge = EdgeProc::start(&[replica.grpc], &edge_env(&brokers, &prefix)).await;
    let group = format!("a-{prefix}");
    let mut consumer = analytics(replica.grpc, &brokers, &prefix, &group);
    let (id, code) = support::user_and_link(edge.http, "brokerrestart").await;
    support::redirect_n(edge.http, &code, 20).await;
    assert!(
        eventually(Duration::from_secs(30), async || clicks(&db, id).await
            == 20)
        .await
    );
    // Consumer down; 30 more clicks, acknowledged by the broker.
    consumer.signal("KILL");
    let _ = consumer.wait_exit(Duration::from_secs(10)).await;
    support::redirect_n(edge.http, &code, 30).await;
    assert!(
        eventually(Duration::from_secs(30), async || {
            edge.metric("shortlink_bus_events_pending").await == 0.0
                && edge
                    .metric("shortlink_bus_events_delivered_total{result=\"ok\"")
                    .await
                    >= edge.metric("shortlink_bus_events_published_total").await
        })
        .await,
        "the edge's events were not all acknowledged"
    );

    tansu.kill();
    // While the broker is down: requests succeed, their events wait.
    support::redirect_n(edge.http, &code, 10).await;
    tansu.run().await;

    let _consumer = analytics(replica.grpc, &brokers, &prefix, &group);
    assert!(
        eventually(Duration::from_secs(90), async || clicks(&db, id).await
            == 60)
        .await,
        "after the broker restart: {} clicks of 60",
        clicks(&db, id).await
    );
    assert_eq!(visible_clicks(edge.http, id).await, 60);
    let (_, m) = shortlink_testkit::http_get(edge.metrics, "/metrics").await;
    assert!(
        !m.contains("shortlink_bus_events_dropped_total{"),
        "nothing dropped:\n{m}"
    );
}

/// A Discord-like webhook on loopback: records every POST; answers the
/// first with 429 and `retry_after`.
#[derive(Clone, Default)]
struct Hook {
    posts: Arc<Mutex<Vec<(Instant, String, Value)>>>,
}

impl Hook {
    async fn start(self) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let posts = self.posts.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let (head, body) = loop {
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
                                        .map(|v| v.trim().to_owned())
                                })
                                .and_then(|v| v.parse::<usize>().ok())
                                .unwrap_or(0);
                            if b.len() >= len {
                                break (h.to_owned(), b[..len].to_owned());
                            }
                        }
                    };
                    let ua = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .starts_with("user-agent:")
                                .then(|| l[11..].trim().to_owned())
                        })
                        .unwrap_or_default();
                    let first = {
                        let mut p = posts.lock().unwrap();
                        p.push((
                            Instant::now(),
                            ua,
                            serde_json::from_str(&body).unwrap_or(Value::Null),
                        ));
                        p.len() == 1
                    };
                    let resp = if first {
                        let b = r#"{"message":"You are being rate limited.","retry_after":0.3,"global":false}"#;
                        format!(
                            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                            b.len()
                        )
                    } else {
                        "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_owned()
                    };
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        addr
    }
}

fn server_error(prefix: &str, i: usize) -> (String, Vec<u8>) {
    let ev = shortlink_proto::events::RequestEvent {
        schema_version: 1,
        time: chrono::Utc::now().to_rfc3339(),
        edge_id: "edge-test".into(),
        request_id: format!("rq-{i}"),
        method: "GET".into(),
        route: "/urls".into(),
        path: "/urls".into(),
        status: 502,
        duration_ms: 3.0,
        outcome: "upstream_error".into(),
        ..Default::default()
    };
    (
        format!("{prefix}requests"),
        serde_json::to_vec(&ev).unwrap(),
    )
}

#[tokio::test]
async fn alerter_throttles_to_one_message_a_second_summarises_and_honours_429() {
    let (brokers, prefix) = (kafka_brokers(), prefix());
    let hook = Hook::default();
    let hook_addr = hook.clone().start().await;
    let http_port = free_port();
    let mut env = bus_env(&brokers, &prefix);
    env.push(("ALERT_WEBHOOK_URLS", format!("http://{hook_addr}/hook")));
    env.push(("ALERTER_HTTP_ADDR", format!("127.0.0.1:{http_port}")));
    env.push(("CONSUMER_GROUP", format!("al-{prefix}")));
    let mut alerter = spawn_raw(&["alerter"], &env);
    let alerter_http: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    support::wait_http_ok(&mut alerter, alerter_http, "/live").await;

    let metrics = shortlink_runtime::metrics::Metrics::new("test", "t");
    let bus = shortlink_bus::connect(
        &shortlink_bus::BusArgs {
            kafka_brokers: Some(brokers.clone()),
            topic_prefix: prefix.clone(),
            topic_partitions: 1,
            producer_queue: 10_000,
            ..shortlink_bus::BusArgs::default()
        },
        &metrics,
    )
    .unwrap();
    bus.ensure_topics(&shortlink_bus::Topics::with_prefix(&prefix).all())
        .await
        .unwrap();

    // One alert: sent alone; the 429 is honoured and the same body re-sent.
    let (t, p) = server_error(&prefix, 0);
    bus.publish(&t, None, p.into());
    bus.flush(Duration::from_secs(5));
    assert!(
        eventually(Duration::from_secs(30), async || hook
            .posts
            .lock()
            .unwrap()
            .len()
            >= 2)
        .await,
        "no webhook POSTs"
    );
    {
        let posts = hook.posts.lock().unwrap();
        assert_eq!(
            posts[0].2, posts[1].2,
            "the rate-limited message is sent again unchanged"
        );
        assert!(
            posts[1].0 - posts[0].0 >= Duration::from_millis(250),
            "retry_after honoured"
        );
        assert_eq!(posts[0].2["embeds"][0]["title"], "502 on GET /urls");
        assert!(
            posts[0].1.starts_with("shortlink-alerter/"),
            "user agent: {}",
            posts[0].1
        );
    }

    // A burst of 25: batched and deduplicated, at most one message a second.
    for i in 1..=25 {
        let (t, p) = server_error(&prefix, i);
        bus.publish(&t, None, p.into());
    }
    bus.flush(Duration::from_secs(5));
    let burst_start = Instant::now();
    let summarised = eventually(Duration::from_secs(30), async || {
        let posts = hook.posts.lock().unwrap();
        let counted: u64 = posts[2..]
            .iter()
            .map(|(_, _, b)| {
                let title = b["embeds"][0]["title"].as_str().unwrap_or("");
                title
                    .split(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .filter(|_| title.contains("alerts"))
                    .unwrap_or(1)
            })
            .sum();
        counted == 25
    })
    .await;
    let posts = hook.posts.lock().unwrap().clone();
    assert!(
        summarised,
        "the burst's 25 alerts were not all delivered: {:?}",
        posts.iter().map(|p| &p.2).collect::<Vec<_>>()
    );
    let burst_posts = &posts[2..];
    assert!(
        burst_posts.len() <= 1 + burst_start.elapsed().as_secs() as usize,
        "more than one message a second"
    );
    assert!(burst_posts.len() < 25, "alerts were batched");
    for w in posts[1..].windows(2) {
        assert!(
            w[1].0 - w[0].0 >= Duration::from_millis(900),
            "two messages within a second"
        );
    }
    let summary = burst_posts
        .iter()
        .find(|p| {
            p.2["embeds"][0]["title"]
                .as_str()
                .unwrap_or("")
                .contains("alerts")
        })
        .expect("a summary");
    assert!(
        summary.2["embeds"][0]["description"]
            .as_str()
            .unwrap()
            .contains("× 502 on GET /urls")
    );

    // Alertmanager webhooks are forwarded the same way.
    let am = json!({"status": "firing", "alerts": [{"status": "firing",
        "labels": {"alertname": "EdgeDown", "severity": "critical"},
        "annotations": {"summary": "edge A is down"}, "startsAt": "2026-11-28T00:00:00Z"}]});
    let r = http(
        alerter_http,
        "POST",
        "/alertmanager",
        &[("Content-Type", "application/json")],
        am.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let forwarded = eventually(Duration::from_secs(10), async || {
        hook.posts
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.2["embeds"][0]["title"] == "[FIRING] EdgeDown")
    })
    .await;
    assert!(forwarded);
    let bad = http(
        alerter_http,
        "POST",
        "/alertmanager",
        &[("Content-Type", "application/json")],
        b"{nope",
    )
    .await;
    assert_eq!(bad.status, 400);
}

/// Trace context travels in the Kafka message headers: the analytics
/// consumer's handling of a click and the dashboard ingest's handling of
/// the request event appear in the request's trace, and a create's trace
/// holds the edge, the RPC, its SQL span and the consumers' handling of the
/// `created` event.
#[tokio::test]
async fn consumers_join_the_trace_of_the_request_that_caused_the_event() {
    require_redis().await;
    let (endpoint, mut rx) = shortlink_testkit::otlp::receiver().await;
    let otel = ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone());
    let (brokers, prefix) = (kafka_brokers(), prefix());
    let db = TestDb::new().await;
    let dash_db = TestDb::new().await;
    let mut links = links_env(&db, &brokers, &prefix);
    links.push(otel.clone());
    let mut replica = Replica::start(&links).await;
    let mut env = edge_env(&brokers, &prefix);
    env.push(otel.clone());
    let mut edge = EdgeProc::start(&[replica.grpc], &env).await;
    let (a_group, d_group) = (format!("a-{prefix}"), format!("d-{prefix}"));
    let mut analytics = analytics_with(
        replica.grpc,
        &brokers,
        &prefix,
        &a_group,
        std::slice::from_ref(&otel),
    );
    let mut dash_env = bus_env(&brokers, &prefix);
    dash_env.push(("DASHBOARD_DATABASE_URL", dash_db.url.clone()));
    dash_env.push((
        "DASHBOARD_INGEST_HTTP_ADDR",
        format!("127.0.0.1:{}", free_port()),
    ));
    dash_env.push(("CONSUMER_GROUP", d_group.clone()));
    dash_env.push(otel);
    let mut dash = spawn_raw(&["dashboard-ingest"], &dash_env);

    let (id, code) = support::user_and_link(edge.http, "traceuser").await;
    let user = support::post_json(
        edge.http,
        "/users",
        json!({"username": "traceuser2", "email": "traceuser2@example.com"}),
    )
    .await
    .json();
    let tp = |t: &str| format!("00-{t}-b7ad6b7169203331-01");
    let create = "3af7651916cd43dd8448eb211c80319c";
    let redirect = "4af7651916cd43dd8448eb211c80319c";
    let r = shortlink_testkit::http(
        edge.http,
        "POST",
        "/shorten",
        &[
            ("Content-Type", "application/json"),
            ("traceparent", tp(create).as_str()),
        ],
        json!({"original_url": "https://example.com/t", "user_id": user["id"]})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = http(
        edge.http,
        "GET",
        &format!("/{code}"),
        &[("traceparent", tp(redirect).as_str())],
        b"",
    )
    .await;
    assert_eq!(r.status, 302);
    assert!(
        eventually(Duration::from_secs(30), async || clicks(&db, id).await == 1).await,
        "the click was not recorded"
    );
    // The dashboard ingest has its batch window (500 ms) to take the
    // request events; then stopping every process flushes its exporter.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for p in [&mut edge.proc, &mut replica.proc, &mut analytics, &mut dash] {
        p.sigterm();
        p.wait_exit(Duration::from_secs(20)).await;
    }
    let mut seen: std::collections::HashMap<&str, Vec<String>> = std::collections::HashMap::new();
    let has = |seen: &std::collections::HashMap<&str, Vec<String>>, t: &str, prefix: &str| {
        seen.get(t)
            .is_some_and(|v| v.iter().any(|n| n.starts_with(prefix)))
    };
    let complete = |seen: &std::collections::HashMap<&str, Vec<String>>| {
        has(seen, redirect, "http_request")
            && has(seen, redirect, &format!("{a_group} process"))
            && has(seen, redirect, &format!("{d_group} process"))
            && has(seen, create, "rpc")
            && has(seen, create, "postgres create_link")
            && has(seen, create, &format!("{d_group} process"))
    };
    while let Ok(Some(batch)) = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
        for t in [create, redirect] {
            seen.entry(t)
                .or_default()
                .extend(shortlink_testkit::otlp::spans_of(&batch, t));
        }
        if complete(&seen) {
            return;
        }
    }
    panic!("expected the edge, links and both consumers in the requests' traces, saw {seen:?}");
}
