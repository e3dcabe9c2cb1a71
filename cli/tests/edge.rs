//! The edge as operators and clients meet it: real `shortlink links`,
//! `shortlink edge` and `shortlink admin` processes on loopback ports, on
//! PostgreSQL and Redis, driven over HTTP, TLS and grpcurl.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use shortlink_testkit::{HttpResponse, TestDb, eventually, http, redis_url, require_redis};
use support::{EdgeProc, Replica, grpcurl, links_env, post_json};

/// An edge for load: limits far above what the test sends.
fn load_env() -> Vec<(&'static str, String)> {
    vec![
        ("RATE_LIMIT_RPS", "1000000".into()),
        ("RATE_LIMIT_BURST", "1000000".into()),
    ]
}

/// `load_env` with the edge's resolution cache off, so that every redirect
/// is a links call (for tests of balancing across replicas).
fn uncached_load_env() -> Vec<(&'static str, String)> {
    let mut v = load_env();
    v.push(("EDGE_RESOLVE_CACHE_TTL_MS", "0".into()));
    v
}

fn abuse_env(prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", redis_url()),
        ("ABUSE_KEY_PREFIX", prefix.to_owned()),
        ("TRUSTED_PROXIES", "127.0.0.1/32".into()),
    ]
}

fn assert_common_headers(r: &HttpResponse) {
    assert!(
        r.header("x-request-id").is_some_and(|v| !v.is_empty()),
        "{r:?}"
    );
    assert!(
        r.header("x-response-time")
            .is_some_and(|v| v.ends_with("ms")),
        "{r:?}"
    );
}

fn assert_error(r: &HttpResponse, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_common_headers(r);
    let v = r.json();
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string: {v}"));
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
}

#[tokio::test]
async fn public_api_contract_through_the_edge() {
    require_redis().await;
    let db = TestDb::new().await;
    let env = links_env(&db, &[]);
    let (a, b) = (Replica::start(&env).await, Replica::start(&env).await);
    let edge = EdgeProc::start(
        &[a.grpc, b.grpc],
        &abuse_env(&format!("t:{}:", shortlink_testkit::random_suffix())),
    )
    .await;
    let e = edge.http;

    // Users.
    let r = post_json(
        e,
        "/users",
        json!({"username": "alice", "email": "alice@example.com"}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_common_headers(&r);
    let alice = r.json();
    assert_eq!(alice["username"], "alice");
    assert!(alice["id"].as_i64().unwrap() > 0);
    assert!(alice["created_at"].as_str().unwrap().ends_with('Z'));
    assert_error(
        &post_json(
            e,
            "/users",
            json!({"username": "alice", "email": "x@example.com"}),
        )
        .await,
        409,
        "username",
    );
    assert_error(
        &post_json(e, "/users", json!({"username": "bob", "email": "nope"})).await,
        400,
        "email",
    );
    assert_error(
        &post_json(e, "/users", json!({"username": "bob"})).await,
        400,
        "email is required",
    );
    let uid = alice["id"].as_i64().unwrap();

    // Shorten: shapes and every error of the contract.
    let r = post_json(
        e,
        "/shorten",
        json!({"original_url": "https://example.com/a", "user_id": uid, "title": "T"}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let link = r.json();
    let keys: Vec<&str> = link
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "id",
        "user_id",
        "short_code",
        "original_url",
        "title",
        "is_active",
        "created_at",
        "updated_at",
    ] {
        assert!(keys.contains(&k), "URL object lacks {k}: {link}");
    }
    let code = link["short_code"].as_str().unwrap().to_owned();
    assert!(code.len() == 6 && code.bytes().all(|c| c.is_ascii_alphanumeric()));
    let r = post_json(
        e,
        "/urls",
        json!({"original_url": "https://example.com/b", "user_id": uid, "short_code": "mine01"}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_error(&post_json(e, "/shorten", json!({"original_url": "https://example.com/c", "user_id": uid, "short_code": "mine01"})).await, 409, "taken");
    assert_error(
        &http(
            e,
            "POST",
            "/shorten",
            &[("Content-Type", "text/plain")],
            b"hi",
        )
        .await,
        415,
        "application/json",
    );
    assert_error(
        &http(
            e,
            "POST",
            "/shorten",
            &[("Content-Type", "application/json")],
            b"{nope",
        )
        .await,
        400,
        "malformed JSON",
    );
    assert_error(
        &post_json(e, "/shorten", json!({"user_id": uid})).await,
        400,
        "original_url is required",
    );
    assert_error(
        &post_json(e, "/shorten", json!({"original_url": "https://x.io"})).await,
        400,
        "user_id is required",
    );
    assert_error(
        &post_json(e, "/shorten", json!({"original_url": 5, "user_id": uid})).await,
        400,
        "must be a string",
    );
    assert_error(
        &post_json(
            e,
            "/shorten",
            json!({"original_url": "https://x.io", "user_id": "1"}),
        )
        .await,
        400,
        "must be an integer",
    );
    assert_error(
        &post_json(
            e,
            "/shorten",
            json!({"original_url": "ftp://x.io", "user_id": uid}),
        )
        .await,
        400,
        "http",
    );
    assert_error(
        &post_json(
            e,
            "/shorten",
            json!({"original_url": "https://x.io", "user_id": 999_999}),
        )
        .await,
        404,
        "user not found",
    );

    // Redirects.
    let r = http(e, "GET", &format!("/{code}"), &[], b"").await;
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(r.header("location"), Some("https://example.com/a"));
    assert_common_headers(&r);
    assert_error(&http(e, "GET", "/zzzzzz", &[], b"").await, 404, "not found");

    // Reads, listing with filters.
    let id = link["id"].as_i64().unwrap();
    let r = http(e, "GET", &format!("/urls/{id}"), &[], b"").await;
    assert_eq!(
        (r.status, r.json()["short_code"].as_str()),
        (200, Some(code.as_str()))
    );
    let r = http(
        e,
        "GET",
        &format!("/urls?page=1&per_page=1&user_id={uid}&is_active=true"),
        &[],
        b"",
    )
    .await;
    let v = r.json();
    assert_eq!(
        (
            v["page"].as_i64(),
            v["per_page"].as_i64(),
            v["total"].as_i64()
        ),
        (Some(1), Some(1), Some(2))
    );
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    let clamped = http(e, "GET", "/urls?per_page=500", &[], b"").await.json();
    assert_eq!(
        clamped["per_page"], 100,
        "per_page is clamped like the gRPC API"
    );
    assert_error(
        &http(e, "GET", "/urls?per_page=0", &[], b"").await,
        400,
        "per_page",
    );
    assert_error(
        &http(e, "GET", "/urls?is_active=maybe", &[], b"").await,
        400,
        "is_active",
    );
    assert_error(
        &http(e, "GET", "/urls/999999", &[], b"").await,
        404,
        "not found",
    );
    // The original answers the nested lists as bare arrays.
    let r = http(e, "GET", &format!("/users/{uid}/urls"), &[], b"").await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(2), "{r:?}");
    let r = http(
        e,
        "GET",
        &format!("/users/{uid}/urls?per_page=1&page=2"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(1), "{r:?}");
    assert_error(
        &http(e, "GET", "/users/999999/urls", &[], b"").await,
        404,
        "user not found",
    );

    // Update and soft delete.
    assert_error(
        &http(
            e,
            "PUT",
            &format!("/urls/{id}"),
            &[("Content-Type", "application/json")],
            b"{}",
        )
        .await,
        400,
        "nothing to update",
    );
    assert_error(
        &http(
            e,
            "PUT",
            &format!("/urls/{id}"),
            &[("Content-Type", "application/json")],
            b"",
        )
        .await,
        400,
        "required",
    );
    let r = http(
        e,
        "PUT",
        &format!("/urls/{id}"),
        &[("Content-Type", "application/json")],
        br#"{"title":"New"}"#,
    )
    .await;
    assert_eq!((r.status, r.json()["title"].as_str()), (200, Some("New")));
    let r = http(e, "DELETE", &format!("/urls/{id}"), &[], b"").await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["message"], "URL deleted (soft delete)");
    assert_eq!(v["is_active"], false);
    assert_error(
        &http(e, "GET", &format!("/{code}"), &[], b"").await,
        410,
        "deactivated",
    );

    // Events.
    let r = post_json(e, "/events", json!({"url_id": id, "user_id": uid, "event_type": "click", "details": {"referrer": "https://news.example"}})).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["details"]["referrer"], "https://news.example");
    assert_error(
        &post_json(
            e,
            "/events",
            json!({"url_id": id, "user_id": uid, "event_type": "click", "details": "x"}),
        )
        .await,
        400,
        "details must be a JSON object",
    );
    let r = http(e, "GET", &format!("/urls/{id}/events"), &[], b"").await;
    let types: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["event_type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["created", "updated", "deleted", "click"]);
    let r = http(
        e,
        "GET",
        &format!("/events?url_id={id}&event_type=click"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(1), "{r:?}");
    let r = http(e, "GET", "/events?per_page=2", &[], b"").await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(2), "{r:?}");

    // Bulk users from a multipart CSV upload.
    let body = b"--B0und\r\nContent-Disposition: form-data; name=\"file\"; filename=\"u.csv\"\r\nContent-Type: text/csv\r\n\r\nusername,email\r\ncarol,carol@example.com\r\ndave,dave@example.com\r\nalice,dup@example.com\r\n--B0und--\r\n";
    let r = http(
        e,
        "POST",
        "/users/bulk",
        &[("Content-Type", "multipart/form-data; boundary=B0und")],
        body,
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let v = r.json();
    assert_eq!(v["created"], 2);
    assert_eq!(v["errors"][0]["row"], 4);

    // Users CRUD rest; deleting a user who owns links is refused.
    let r = http(e, "GET", "/users?per_page=2", &[], b"").await;
    assert_eq!(r.json()["total"], 3);
    assert_error(
        &http(e, "DELETE", &format!("/users/{uid}"), &[], b"").await,
        409,
        "owns",
    );
    let r = http(
        e,
        "PUT",
        &format!("/users/{uid}"),
        &[("Content-Type", "application/json")],
        br#"{"email":"a2@example.com"}"#,
    )
    .await;
    assert_eq!(r.json()["email"], "a2@example.com");

    // Routing errors, identity headers, health.
    assert_error(&http(e, "GET", "/a/b/c", &[], b"").await, 404, "not found");
    let r = http(e, "PATCH", "/urls", &[], b"").await;
    assert_error(&r, 405, "method not allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST"));
    let r = http(e, "PATCH", &format!("/urls/{id}"), &[], b"").await;
    assert_error(&r, 405, "method not allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD, PUT, DELETE"));
    let r = http(
        e,
        "GET",
        "/zzzzzz",
        &[("X-Request-ID", "client-id_1.2")],
        b"",
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("client-id_1.2"));
    let r = http(
        e,
        "GET",
        "/zzzzzz",
        &[("X-Request-ID", "bad id with spaces")],
        b"",
    )
    .await;
    assert_ne!(r.header("x-request-id"), Some("bad id with spaces"));
    let r = http(e, "GET", "/health", &[], b"").await;
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    assert_eq!(r.json()["healthy_replicas"], 2);
    assert_eq!(r.json()["replicas"], 2);
    assert!(
        !r.body.contains("127.0.0.1"),
        "the public /health names no internal address: {r:?}"
    );

    // Metrics: bounded labels on the metrics port.
    let (_, m) = shortlink_testkit::http_get(edge.metrics, "/metrics").await;
    assert!(m.contains(r#"route="/{short_code}""#), "{m}");
    assert!(m.contains(r#"route="/urls/{id}""#));
    assert!(!m.contains(&code), "short codes must not be labels");
    assert!(m.contains("shortlink_upstream_selections_total"));
}

#[tokio::test]
async fn least_in_flight_sends_most_requests_to_the_fast_replica() {
    require_redis().await;
    let db = TestDb::new().await;
    let fast = Replica::start(&links_env(&db, &[("CACHE_DISABLED", "true".into())])).await;
    // The slow replica reaches PostgreSQL through a proxy adding 30 ms to
    // every reply.
    let slow_pg = shortlink_testkit::slow_proxy("127.0.0.1:5432", Duration::from_millis(30)).await;
    let slow_url = db.url.replace("127.0.0.1:5432", &slow_pg.to_string());
    let mut slow_env = links_env(&db, &[("CACHE_DISABLED", "true".into())]);
    slow_env[0].1 = slow_url;
    let slow = Replica::start(&slow_env).await;
    let edge = EdgeProc::start(&[fast.grpc, slow.grpc], &uncached_load_env()).await;
    let user = post_json(
        edge.http,
        "/users",
        json!({"username": "lcuser", "email": "lc@example.com"}),
    )
    .await
    .json();
    let r = post_json(
        edge.http,
        "/shorten",
        json!({"original_url": "https://example.com/lc", "user_id": user["id"]}),
    )
    .await;
    let code = r.json()["short_code"]
        .as_str()
        .unwrap_or_else(|| panic!("{user} {r:?}"))
        .to_owned();

    let before_fast = edge
        .metric(&format!(
            "shortlink_upstream_selections_total{{replica=\"{}\"",
            fast.grpc
        ))
        .await;
    let before_slow = edge
        .metric(&format!(
            "shortlink_upstream_selections_total{{replica=\"{}\"",
            slow.grpc
        ))
        .await;
    // 16 concurrent clients, 25 requests each.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (addr, path) = (edge.http, format!("/{code}"));
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                assert_eq!(http(addr, "GET", &path, &[], b"").await.status, 302);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let fast_n = edge
        .metric(&format!(
            "shortlink_upstream_selections_total{{replica=\"{}\"",
            fast.grpc
        ))
        .await
        - before_fast;
    let slow_n = edge
        .metric(&format!(
            "shortlink_upstream_selections_total{{replica=\"{}\"",
            slow.grpc
        ))
        .await
        - before_slow;
    assert_eq!(fast_n + slow_n, 400.0);
    // Round robin would give each about 200 (binomial sd 10). On a loaded
    // 2-core machine the fast replica is slow too, so its share varies
    // (62-80% seen); 1.25x the slow one's share (over 222 of 400) is still
    // far outside what round robin gives.
    assert!(
        fast_n > 1.25 * slow_n,
        "fast replica took {fast_n} of 400 (slow {slow_n})"
    );
}

#[tokio::test]
async fn a_killed_replica_is_ejected_then_readmitted_without_failed_reads() {
    require_redis().await;
    let db = TestDb::new().await;
    let env = links_env(&db, &[]);
    let a = Replica::start(&env).await;
    let mut b = Replica::start(&env).await;
    let edge = EdgeProc::start(&[a.grpc, b.grpc], &uncached_load_env()).await;
    let (_, code) = support::user_and_link(edge.http, "kkuser").await;

    // Reads flow for ~3 s from 8 clients (bounded: at most 3,000 requests each).
    let load = support::Load::start(edge.http, &code, 8, 3, 3000);
    tokio::time::sleep(Duration::from_millis(800)).await;
    b.proc.signal("KILL");
    let (ok, total) = load.finish().await;
    assert!(total > 100, "load ran ({total} requests)");
    assert!(
        ok <= 8,
        "{ok} failed reads of {total}: more than the in-flight window"
    );

    let ejected = eventually(Duration::from_secs(3), async || {
        let h = http(edge.http, "GET", "/health", &[], b"").await.json();
        h["healthy_replicas"] == 1
    })
    .await;
    assert!(ejected, "replica not ejected");

    // Restart it on the same ports: readmitted after its first passing check.
    let port = |a: SocketAddr| a.port();
    b = Replica::start_on(port(b.grpc), port(b.http), &b.envs.clone()).await;
    let back = eventually(Duration::from_secs(5), async || {
        http(edge.http, "GET", "/health", &[], b"").await.json()["healthy_replicas"] == 2
    })
    .await;
    assert!(back, "replica not readmitted");
    let before = edge
        .metric(&format!(
            "shortlink_upstream_selections_total{{replica=\"{}\"",
            b.grpc
        ))
        .await;
    for _ in 0..20 {
        assert_eq!(
            http(edge.http, "GET", &format!("/{code}"), &[], b"")
                .await
                .status,
            302
        );
    }
    let after = edge
        .metric(&format!(
            "shortlink_upstream_selections_total{{replica=\"{}\"",
            b.grpc
        ))
        .await;
    assert!(after > before, "readmitted replica takes traffic again");
    drop(a);
}

async fn set_limits(admin_grpc: u16, token: &str, limits: Value) {
    let out = grpcurl(
        admin_grpc,
        &[
            "-H",
            &format!("authorization: Bearer {token}"),
            "-d",
            &json!({"limits": limits}).to_string(),
        ],
        &["shortlink.v1.AdminService/SetLimits"],
    );
    assert!(
        out.status.success(),
        "SetLimits: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct AdminProc {
    _proc: support::Proc,
    grpc: u16,
    token: String,
}

async fn start_admin(prefix: &str, db: &TestDb) -> AdminProc {
    let (grpc, httpp) = (
        shortlink_testkit::free_port(),
        shortlink_testkit::free_port(),
    );
    let token = format!("test-token-{}", shortlink_testkit::random_suffix());
    let mut p = support::spawn_raw(
        &["admin"],
        &[
            ("ADMIN_GRPC_ADDR", format!("127.0.0.1:{grpc}")),
            ("ADMIN_HTTP_ADDR", format!("127.0.0.1:{httpp}")),
            ("ADMIN_TOKEN", token.clone()),
            ("REDIS_URL", redis_url()),
            ("DATABASE_URL", db.url.clone()),
            ("ABUSE_KEY_PREFIX", prefix.to_owned()),
        ],
    );
    support::wait_http_ok(
        &mut p,
        format!("127.0.0.1:{httpp}").parse().unwrap(),
        "/ready",
    )
    .await;
    AdminProc {
        _proc: p,
        grpc,
        token,
    }
}

#[tokio::test]
async fn ban_escalation_on_edge_a_is_enforced_by_edge_b_and_admin_controls_both() {
    require_redis().await;
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &[])).await;
    let prefix = format!("t:{}:", shortlink_testkit::random_suffix());
    let mut env = abuse_env(&prefix);
    env.push(("DATABASE_URL", db.url.clone()));
    let edge_a = EdgeProc::start(&[replica.grpc], &env).await;
    let edge_b = EdgeProc::start(&[replica.grpc], &env).await;
    let admin = start_admin(&prefix, &db).await;

    // Unauthenticated calls are refused.
    let out = grpcurl(admin.grpc, &[], &["shortlink.v1.AdminService/ListBans"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));

    set_limits(
        admin.grpc,
        &admin.token,
        json!({"rps": 0.01, "burst": 2, "strike_window_s": 600, "warn_strikes": 2, "ban_strikes": 4,
               "ban_duration_s": 3600, "permanent_after": 3, "enforce": true}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // One abusive client (203.0.113.7 via a trusted proxy) on edge A.
    let get = |edge: SocketAddr, h: &'static [(&'static str, &'static str)]| async move {
        http(edge, "GET", "/urls", h, b"").await
    };
    static ABUSER: [(&str, &str); 1] = [("X-Forwarded-For", "203.0.113.7")];
    assert_eq!(get(edge_a.http, &ABUSER).await.status, 200);
    assert_eq!(get(edge_a.http, &ABUSER).await.status, 200);
    let r = get(edge_a.http, &ABUSER).await;
    assert_error(&r, 429, "rate limit");
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert!(
        r.header("x-ratelimit-warning").is_some(),
        "first strikes warn"
    );
    let r = get(edge_a.http, &ABUSER).await;
    assert!(r.header("x-ratelimit-warning").is_some());
    let r = get(edge_a.http, &ABUSER).await;
    assert_eq!(r.status, 429);
    assert!(
        r.header("x-ratelimit-warning").is_none(),
        "later strikes do not warn"
    );
    let r = get(edge_a.http, &ABUSER).await;
    assert_eq!(r.status, 403, "fourth strike bans: {r:?}");
    let v = r.json();
    assert_eq!(v["ban_type"], "temporary");
    assert!(v["ban_remaining_s"].as_u64().unwrap() > 3500);
    assert!(v["error"].is_string() && v["message"].is_string());

    // Health paths are never limited; other clients are unaffected.
    assert_eq!(get(edge_a.http, &ABUSER).await.status, 403);
    assert_eq!(
        http(edge_a.http, "GET", "/health", &ABUSER, b"")
            .await
            .status,
        200
    );
    static OTHER: [(&str, &str); 1] = [("X-Forwarded-For", "203.0.113.8")];
    assert_eq!(get(edge_a.http, &OTHER).await.status, 200);

    // Edge B enforces the ban within a second.
    let on_b = eventually(Duration::from_secs(1), async || {
        get(edge_b.http, &ABUSER).await.status == 403
    })
    .await;
    assert!(on_b, "edge B does not enforce the ban");

    // Admin sees it, with reason and strikes.
    let bearer = format!("authorization: Bearer {}", admin.token);
    let out = grpcurl(
        admin.grpc,
        &["-H", &bearer, "-d", r#"{"ip":"203.0.113.7"}"#],
        &["shortlink.v1.AdminService/GetBan"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("GetBan JSON");
    assert_eq!(v["ban"]["banType"], "temporary");
    assert_eq!(v["ban"]["strikes"], 4);

    // Admin unban: both edges serve the client again.
    let out = grpcurl(
        admin.grpc,
        &["-H", &bearer, "-d", r#"{"ip":"203.0.113.7"}"#],
        &["shortlink.v1.AdminService/UnbanIp"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    set_limits(
        admin.grpc,
        &admin.token,
        json!({"rps": 1000, "burst": 1000, "strike_window_s": 600, "warn_strikes": 2, "ban_strikes": 4,
               "ban_duration_s": 3600, "permanent_after": 3, "enforce": true}),
    )
    .await;
    for edge in [edge_a.http, edge_b.http] {
        let ok = eventually(Duration::from_secs(1), async || {
            get(edge, &ABUSER).await.status == 200
        })
        .await;
        assert!(ok, "unban did not reach {edge}");
    }

    // Admin ban (permanent) of another client reaches both edges; list shows it.
    static VICTIM: [(&str, &str); 1] = [("X-Forwarded-For", "198.51.100.9")];
    let out = grpcurl(
        admin.grpc,
        &[
            "-H",
            &bearer,
            "-d",
            r#"{"ip":"198.51.100.9","reason":"scraping","duration_s":0}"#,
        ],
        &["shortlink.v1.AdminService/BanIp"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for edge in [edge_a.http, edge_b.http] {
        let ok = eventually(Duration::from_secs(1), async || {
            let r = get(edge, &VICTIM).await;
            r.status == 403
                && r.json()["ban_type"] == "permanent"
                && r.json().get("ban_remaining_s").is_none()
        })
        .await;
        assert!(ok, "admin ban did not reach {edge}");
    }
    let out = grpcurl(
        admin.grpc,
        &["-H", &bearer],
        &["shortlink.v1.AdminService/ListBans"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ips: Vec<&str> = v["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["ip"].as_str().unwrap())
        .collect();
    assert_eq!(ips, ["198.51.100.9"]);

    // The permanent ban is persisted: a Redis wipe of this prefix (as a
    // restart would do) loses nothing, on running edges and on new ones.
    let mut conn = require_redis().await;
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}bans"))
        .arg(format!("{prefix}restored"))
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        get(edge_a.http, &VICTIM).await.status,
        403,
        "a running edge keeps the ban after its sync"
    );
    let edge_c = EdgeProc::start(&[replica.grpc], &env).await;
    let restored = eventually(Duration::from_secs(3), async || {
        get(edge_c.http, &VICTIM).await.status == 403
    })
    .await;
    assert!(restored, "persisted ban not restored after Redis lost it");

    // Enforcement off: everyone is served.
    let out = grpcurl(
        admin.grpc,
        &["-H", &bearer, "-d", r#"{"enforce":false}"#],
        &["shortlink.v1.AdminService/SetEnforcement"],
    );
    assert!(out.status.success());
    let ok = eventually(Duration::from_secs(1), async || {
        get(edge_a.http, &VICTIM).await.status == 200
    })
    .await;
    assert!(ok, "enforcement toggle did not apply");
}

#[tokio::test]
async fn tls_http2_and_hsts_through_curl() {
    require_redis().await;
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &[])).await;
    let mut env = abuse_env(&format!("t:{}:", shortlink_testkit::random_suffix()));
    env.push(("REDIRECT_TO_HTTPS", "true".into()));
    env.push(("HSTS_MAX_AGE_S", "600".into()));
    env.push(("EDGE_PUBLIC_HOST", "sho.rt.test".into()));
    env.push(("EDGE_ALLOWED_HOSTS", "localhost".into()));
    let edge = EdgeProc::start(&[replica.grpc], &env).await;
    let out = std::process::Command::new("curl")
        .args(["-sk", "--http2", "-D", "-", "-o", "/dev/null"])
        .arg(format!("https://localhost:{}/health", edge.https.port()))
        .output()
        .expect("curl is installed (apt-get install curl)");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(
        head.contains("strict-transport-security: max-age=600; includesubdomains"),
        "{head}"
    );
    assert!(head.contains("x-request-id:"));

    // Plain HTTP: no HSTS; API paths redirect to HTTPS, health does not.
    let r = http(edge.http, "GET", "/health", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.header("strict-transport-security").is_none());
    let r = http(
        edge.http,
        "GET",
        "/urls?page=2",
        &[("Host", "localhost")],
        b"",
    )
    .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://localhost:{}/urls?page=2", edge.https.port()).as_str())
    );
    // An attacker's Host is never echoed: the configured public host is used.
    let r = http(
        edge.http,
        "GET",
        "/urls",
        &[("Host", "evil.example:8080")],
        b"",
    )
    .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://sho.rt.test:{}/urls", edge.https.port()).as_str())
    );

    // The certificate was generated and the handshake counted.
    assert!(edge.metric("shortlink_tls_handshakes_total").await >= 1.0);
}

#[tokio::test]
async fn redis_down_edge_keeps_serving_and_limits_locally() {
    require_redis().await;
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &[])).await;
    let dead = format!("redis://127.0.0.1:{}", shortlink_testkit::free_port());
    let env = vec![
        ("REDIS_URL", dead),
        ("TRUSTED_PROXIES", "127.0.0.1/32".into()),
        ("RATE_LIMIT_RPS", "0.01".into()),
        ("RATE_LIMIT_BURST", "3".into()),
    ];
    let edge = EdgeProc::start(&[replica.grpc], &env).await;
    let h = [("X-Forwarded-For", "192.0.2.44")];
    for _ in 0..3 {
        assert_eq!(http(edge.http, "GET", "/urls", &h, b"").await.status, 200);
    }
    assert_eq!(http(edge.http, "GET", "/urls", &h, b"").await.status, 429);
    let v = http(edge.http, "GET", "/health", &[], b"").await.json();
    assert_eq!(v["abuse_state"]["redis"], "down");
    assert_eq!(v["status"], "degraded");
}

#[tokio::test]
async fn zero_downtime_upgrade_hands_over_the_sockets_without_failed_requests() {
    require_redis().await;
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &[])).await;
    let old = EdgeProc::start(&[replica.grpc], &load_env()).await;
    let (_, code) = support::user_and_link(old.http, "upgrader").await;

    // Requests flow during the whole handover (4 clients, at most 4 s).
    let load = support::Load::start(old.http, &code, 4, 4, 4000);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The new process takes the same flags plus --upgrade, then the old one
    // gets SIGQUIT and hands over its listening sockets.
    let mut envs = load_env();
    envs.push(("EDGE_HTTP_ADDR", old.http.to_string()));
    envs.push(("EDGE_HTTPS_ADDR", old.https.to_string()));
    envs.push(("EDGE_METRICS_ADDR", old.metrics.to_string()));
    envs.push(("LINKS_UPSTREAMS", replica.grpc.to_string()));
    envs.push(("EDGE_UPGRADE_SOCK", old.upgrade_sock.clone()));
    envs.push(("EDGE_CERT_DIR", old.cert_dir.clone()));
    let mut new = support::spawn_raw(&["edge", "--upgrade"], &envs);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut old_proc = old.proc;
    old_proc.signal("QUIT");
    let status = old_proc.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "old edge exits cleanly after the handover: {status}"
    );
    let (failed, total) = load.finish().await;
    assert!(total > 50, "load ran ({total})");
    assert_eq!(
        failed, 0,
        "{failed} of {total} requests failed during the upgrade"
    );
    assert!(new.0.try_wait().unwrap().is_none(), "new edge is running");
    assert_eq!(
        http(old.http, "GET", &format!("/{code}"), &[], b"")
            .await
            .status,
        302
    );
}

#[tokio::test]
async fn edge_and_links_spans_share_the_callers_trace() {
    require_redis().await;
    let (endpoint, mut rx) = shortlink_testkit::otlp::receiver().await;
    let db = TestDb::new().await;
    let mut replica = Replica::start(&links_env(
        &db,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone())],
    ))
    .await;
    let mut edge = EdgeProc::start(
        &[replica.grpc],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)],
    )
    .await;
    let (_, code) = support::user_and_link(edge.http, "tracer").await;
    let user = post_json(
        edge.http,
        "/users",
        json!({"username": "tracer2", "email": "tracer2@example.com"}),
    )
    .await
    .json();
    // Three traces of the caller's: an unknown code, a create and the
    // first (uncached) redirect of a new link.
    let tp = |t: &str| format!("00-{t}-b7ad6b7169203331-01");
    let unknown = "0af7651916cd43dd8448eb211c80319c";
    let create = "1af7651916cd43dd8448eb211c80319c";
    let redirect = "2af7651916cd43dd8448eb211c80319c";
    let r = http(
        edge.http,
        "GET",
        "/nosuch",
        &[("traceparent", tp(unknown).as_str())],
        b"",
    )
    .await;
    assert_eq!(r.status, 404);
    let body = json!({"original_url": "https://example.com/traced", "user_id": user["id"]});
    let r = shortlink_testkit::http(
        edge.http,
        "POST",
        "/shorten",
        &[
            ("Content-Type", "application/json"),
            ("traceparent", tp(create).as_str()),
        ],
        body.to_string().as_bytes(),
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
    // Stopping flushes the exporters.
    edge.proc.sigterm();
    edge.proc.wait_exit(Duration::from_secs(20)).await;
    replica.proc.sigterm();
    replica.proc.wait_exit(Duration::from_secs(20)).await;
    let mut seen: std::collections::HashMap<&str, Vec<String>> = std::collections::HashMap::new();
    let complete = |seen: &std::collections::HashMap<&str, Vec<String>>| {
        let has = |t: &str, n: &str| seen.get(t).is_some_and(|v| v.iter().any(|x| x == n));
        has(unknown, "http_request")
            && has(unknown, "rpc")
            && has(create, "rpc")
            && has(create, "postgres create_link")
            && has(redirect, "redis get")
            && has(redirect, "postgres link_by_code")
            && has(redirect, "redis put")
    };
    while let Ok(Some(batch)) = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
        for t in [unknown, create, redirect] {
            seen.entry(t)
                .or_default()
                .extend(shortlink_testkit::otlp::spans_of(&batch, t));
        }
        if complete(&seen) {
            return;
        }
    }
    panic!(
        "expected edge (http_request), links (rpc) and its SQL and Redis spans in the callers' traces, saw {seen:?}"
    );
}

#[tokio::test]
async fn cached_redirects_keep_working_through_the_edge_while_the_database_is_down() {
    require_redis().await;
    let db = TestDb::new().await;
    let proxy = shortlink_testkit::Proxy::start("127.0.0.1:5432").await;
    let mut env = links_env(
        &db,
        &[
            ("BREAKER_COOL_DOWN_MS", "1000".into()),
            ("DB_ACQUIRE_TIMEOUT_MS", "500".into()),
        ],
    );
    env[0].1 = db.url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let replica = Replica::start(&env).await;
    let edge = EdgeProc::start(&[replica.grpc], &load_env()).await;
    let user = post_json(
        edge.http,
        "/users",
        json!({"username": "outage", "email": "o@example.com"}),
    )
    .await
    .json();
    let code = post_json(
        edge.http,
        "/shorten",
        json!({"original_url": "https://example.com/o", "user_id": user["id"]}),
    )
    .await
    .json()["short_code"]
        .as_str()
        .unwrap()
        .to_owned();
    // Past the second invalidation, then warm the cache.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        http(edge.http, "GET", &format!("/{code}"), &[], b"")
            .await
            .status,
        302
    );

    proxy.cut().await;
    // Several health intervals: the replica is not ready, yet stays in rotation.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = http(edge.http, "GET", &format!("/{code}"), &[], b"").await;
    assert_eq!(r.status, 302, "cached redirect during the outage: {r:?}");
    let r = post_json(
        edge.http,
        "/shorten",
        json!({"original_url": "https://example.com/p", "user_id": user["id"]}),
    )
    .await;
    assert_error(&r, 503, "database unavailable");
    assert!(r.header("retry-after").is_some());

    proxy.restore().await;
    let back = eventually(Duration::from_secs(15), async || {
        post_json(
            edge.http,
            "/shorten",
            json!({"original_url": "https://example.com/q", "user_id": user["id"]}),
        )
        .await
        .status
            == 201
    })
    .await;
    assert!(back, "writes did not recover");
}

#[tokio::test]
async fn a_changed_link_stops_redirecting_on_every_edge_within_a_second() {
    require_redis().await;
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &[])).await;
    let prefix = format!("t:{}:", shortlink_testkit::random_suffix());
    let mut env = abuse_env(&prefix);
    env.extend(load_env());
    let a = EdgeProc::start(&[replica.grpc], &env).await;
    let b = EdgeProc::start(&[replica.grpc], &env).await;
    let (id, code) = support::user_and_link(a.http, "cacheuser").await;
    let path = format!("/{code}");
    // Both edges have the resolution cached.
    for e in [a.http, b.http] {
        for _ in 0..3 {
            assert_eq!(http(e, "GET", &path, &[], b"").await.status, 302);
        }
    }
    let r = http(
        a.http,
        "PUT",
        &format!("/urls/{id}"),
        &[("Content-Type", "application/json")],
        br#"{"original_url": "https://example.com/moved"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // The edge that served the change forgets it at once.
    let r = http(a.http, "GET", &path, &[], b"").await;
    assert_eq!(r.header("location"), Some("https://example.com/moved"));
    // The other edge follows within its cache TTL (500 ms) plus the links
    // service's second invalidation (500 ms); 3 s bounds a loaded machine.
    let started = std::time::Instant::now();
    let moved = eventually(Duration::from_secs(3), async || {
        http(b.http, "GET", &path, &[], b"")
            .await
            .header("location")
            == Some("https://example.com/moved")
    })
    .await;
    assert!(moved, "edge B still redirects to the old URL");
    println!("edge B followed the update after {:?}", started.elapsed());
    let r = http(b.http, "DELETE", &format!("/urls/{id}"), &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(http(b.http, "GET", &path, &[], b"").await.status, 410);
    let gone = eventually(Duration::from_secs(3), async || {
        http(a.http, "GET", &path, &[], b"").await.status == 410
    })
    .await;
    assert!(gone, "edge A still redirects a deleted link");
}
