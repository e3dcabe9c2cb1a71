//! Hostile input against a real edge over real sockets: every request gets
//! a clear 4xx JSON error, never a 5xx or an ERROR log line (which would
//! let anyone page the operator); uploads are bounded and per-row exact;
//! `/metrics` on the public listener only answers allowed networks.

mod support;

use serde_json::{Value, json};
use shortlink_testkit::{TestDb, http, redis_url, require_redis};
use support::{EdgeProc, Replica, links_env, post_json};

fn env(prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", redis_url()),
        ("ABUSE_KEY_PREFIX", prefix.to_owned()),
        ("RATE_LIMIT_RPS", "1000000".into()),
        ("RATE_LIMIT_BURST", "1000000".into()),
        ("LOG_LEVEL", "info".into()),
    ]
}

fn multipart(csv: &str) -> Vec<u8> {
    format!(
        "--XbOuNd\r\nContent-Disposition: form-data; name=\"file\"; filename=\"u.csv\"\r\nContent-Type: text/csv\r\n\r\n{csv}\r\n--XbOuNd--\r\n"
    )
    .into_bytes()
}

const MULTIPART: &str = "multipart/form-data; boundary=XbOuNd";

#[tokio::test]
async fn hostile_input_gets_a_4xx_and_never_a_5xx_or_an_error_log() {
    require_redis().await;
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &[])).await;
    let log = std::env::temp_dir().join(format!(
        "edge-hostile-{}.log",
        shortlink_testkit::random_suffix()
    ));
    let edge = EdgeProc::start_logged(
        &[replica.grpc],
        &env(&format!("t:{}:", shortlink_testkit::random_suffix())),
        Some(&log),
    )
    .await;
    let e = edge.http;
    let u = post_json(
        e,
        "/users",
        json!({"username": "eve", "email": "eve@example.com"}),
    )
    .await
    .json();
    let uid = u["id"].as_i64().unwrap();
    let l = post_json(
        e,
        "/shorten",
        json!({"original_url": "https://example.com/x", "user_id": uid}),
    )
    .await
    .json();
    let id = l["id"].as_i64().unwrap();
    let users_before = http(e, "GET", "/users", &[], b"").await.json()["total"].clone();

    let deep = |n: usize| {
        format!(
            "{{\"url_id\": {id}, \"user_id\": {uid}, \"event_type\": \"x\", \"details\": {{\"a\": {}1{}}}}}",
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    let json_ct = [("Content-Type", "application/json")];
    let mut rows = String::from("username,email\n");
    for i in 0..10_001 {
        rows.push_str(&format!("flood{i},flood{i}@example.com\n"));
    }
    // (method, path, headers, body, expected status)
    let cases: Vec<(&str, String, Vec<(&str, &str)>, Vec<u8>, u16)> = vec![
        ("POST", "/events".into(), json_ct.to_vec(), deep(40).into_bytes(), 400),
        ("POST", "/events".into(), json_ct.to_vec(), deep(5000).into_bytes(), 400),
        (
            "POST",
            "/users".into(),
            json_ct.to_vec(),
            br#"{"username": "a\u0000b", "email": "n@example.com"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/users".into(),
            json_ct.to_vec(),
            b"{\"username\": \"\xff\xfe\", \"email\": \"n@example.com\"}".to_vec(),
            400,
        ),
        (
            "POST",
            "/shorten".into(),
            json_ct.to_vec(),
            format!("{{\"original_url\": \"https://example.com/\\u0000\", \"user_id\": {uid}}}")
                .into_bytes(),
            400,
        ),
        (
            "POST",
            "/events".into(),
            json_ct.to_vec(),
            format!("{{\"url_id\": {id}, \"user_id\": {uid}, \"event_type\": \"x\", \"details\": {{\"n\": 1e400}}}}")
                .into_bytes(),
            400,
        ),
        ("PUT", format!("/urls/{id}"), json_ct.to_vec(), b"[]".to_vec(), 400),
        ("GET", "/urls?user_id=%ff".into(), vec![], vec![], 400),
        ("GET", "/events?event_type=a%00b".into(), vec![], vec![], 400),
        ("GET", "/events?event_type=%c3%28".into(), vec![], vec![], 400),
        ("GET", "/users?page=99999999999".into(), vec![], vec![], 400),
        ("GET", "/%00abc".into(), vec![], vec![], 400),
        ("GET", format!("/{}", "a".repeat(64)), vec![], vec![], 400),
        (
            "POST",
            "/shorten".into(),
            json_ct.to_vec(),
            vec![b' '; 2 * 1024 * 1024],
            413,
        ),
        (
            "POST",
            "/users/bulk".into(),
            vec![("Content-Type", MULTIPART)],
            multipart(&rows),
            413,
        ),
        (
            "POST",
            "/users/bulk".into(),
            vec![("Content-Type", MULTIPART)],
            multipart("username,email\nok1,ok1@example.com\nbad\u{0},b@example.com"),
            400,
        ),
        (
            "POST",
            "/users/bulk".into(),
            vec![("Content-Type", "text/csv")],
            b"ok2,ok2@example.com\n\xff,x@example.com\n".to_vec(),
            400,
        ),
        (
            "POST",
            "/users/bulk".into(),
            vec![("Content-Type", "multipart/form-data; boundary=nope")],
            b"garbage".to_vec(),
            400,
        ),
        ("PATCH", format!("/urls/{id}"), vec![], vec![], 405),
    ];
    for (method, path, headers, body, want) in &cases {
        let r = http(e, method, path, headers, body).await;
        let shown = &path[..path.len().min(60)];
        assert_eq!(r.status, *want, "{method} {shown}: {r:?}");
        let v: Value = r.json();
        assert!(
            v["error"].is_string(),
            "{method} {shown}: no JSON error: {r:?}"
        );
    }
    // Nothing of the refused uploads was written.
    assert_eq!(
        http(e, "GET", "/users", &[], b"").await.json()["total"],
        users_before,
        "a refused upload must not create any row"
    );
    // No ERROR line (an alert) from anything a client sent.
    drop(edge);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains(" ERROR "))
        .collect();
    assert!(
        errors.is_empty(),
        "client input produced ERROR logs: {errors:#?}"
    );
    let _ = std::fs::remove_file(&log);
}

#[tokio::test]
async fn bulk_upload_is_chunked_and_accounts_for_every_row() {
    require_redis().await;
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &[])).await;
    let edge = EdgeProc::start(
        &[replica.grpc],
        &env(&format!("t:{}:", shortlink_testkit::random_suffix())),
    )
    .await;
    let e = edge.http;
    // 1,000 rows (five chunks), with a duplicate and a broken address.
    let mut csv = String::from("username,email\n");
    for i in 0..998 {
        csv.push_str(&format!("\"bulk {i}\",bulk{i}@example.com\n"));
    }
    csv.push_str("bulk0x,bulk0@example.com\n"); // row 1000: e-mail taken
    csv.push_str("bulkbad,not-an-address\n"); // row 1001
    let r = http(
        e,
        "POST",
        "/users/bulk",
        &[("Content-Type", MULTIPART)],
        &multipart(&csv),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let v = r.json();
    assert_eq!(v["created"], 998);
    assert_eq!(v["users"].as_array().unwrap().len(), 998);
    let rows: Vec<i64> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["row"].as_i64().unwrap())
        .collect();
    assert_eq!(rows, [1000, 1001], "{}", v["errors"]);
    assert_eq!(
        http(e, "GET", "/users?per_page=1", &[], b"").await.json()["total"],
        998
    );
}

#[tokio::test]
async fn public_metrics_answer_only_allowed_networks() {
    require_redis().await;
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &[])).await;
    let mut vars = env(&format!("t:{}:", shortlink_testkit::random_suffix()));
    vars.push(("METRICS_ALLOW", "10.0.0.0/8".into()));
    let edge = EdgeProc::start(&[replica.grpc], &vars).await;
    let r = http(edge.http, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 404, "loopback is not in METRICS_ALLOW: {r:?}");
    let (status, body) = shortlink_testkit::http_get(edge.metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("shortlink_http_requests_total"));

    let edge2 = EdgeProc::start(
        &[replica.grpc],
        &env(&format!("t:{}:", shortlink_testkit::random_suffix())),
    )
    .await;
    let r = http(edge2.http, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200, "loopback is allowed by default");
}
