//! The OpenAPI contract (`docs/openapi.yaml`, served at `GET /openapi.json`)
//! checked against a live edge: schemathesis (PyPI) generates requests from
//! the document the edge serves and sends them to a real edge in front of a
//! real links replica on a fresh PostgreSQL database. Any 5xx, any response
//! whose status, headers, content type or body the document does not allow,
//! any invalid input the edge accepts, any unlisted method not answered 405
//! with `Allow`, and any ERROR log line fails the test.
//!
//! The run is bounded in time (`SCHEMATHESIS_MAX_TIME`, 60 s by default) and
//! stays on loopback (`--max-redirects 0`: a 302 is the response under test,
//! never followed). Its seed is random and printed; rerun one with
//! `SCHEMATHESIS_SEED=<seed>`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use shortlink_testkit::{TestDb, free_port, http, redis_url, require_redis};
use support::{EdgeProc, links_env, post_json, spawn_to_file, wait_http_ok};

/// Checks run on every response. Left out: `positive_data_acceptance` (the
/// service has rules a JSON Schema cannot state: reserved short codes, NUL
/// characters anywhere in a body, integers written as `1.0`, state such as
/// a deactivated link's 410; the document says them in prose),
/// `use_after_free` (a deleted URL is a soft delete and stays readable with
/// `is_active: false`, as in the original), and the two authorization
/// checks (the public API has no authentication).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,\
missing_required_header,unsupported_method,allow_header_conformance,\
ensure_resource_availability";

fn schemathesis() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("schemathesis"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "schemathesis is not installed: `python3 -m pip install 'schemathesis>=4.32,<5'` \
             (./scripts/test.sh installs it)"
        )
    })
}

fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "openapi-{name}-{}.log",
        shortlink_testkit::random_suffix()
    ))
}

/// The ERROR lines of a JSON or text log.
fn error_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

/// A links replica whose log lines go to `log`, and an edge in front of it
/// whose log lines go to `edge_log`, with limits raised so that 429s do not
/// crowd out the answers under test.
async fn stack(db: &TestDb, links_log: &Path, edge_log: &Path) -> (support::Proc, EdgeProc) {
    let (grpc, side) = (free_port(), free_port());
    let mut envs = links_env(db, &[("LOG_LEVEL", "info".into())]);
    envs.push(("LINKS_GRPC_ADDR", format!("127.0.0.1:{grpc}")));
    envs.push(("LINKS_HTTP_ADDR", format!("127.0.0.1:{side}")));
    envs.push(("SHUTDOWN_DELAY_MS", "0".into()));
    let mut links = spawn_to_file(&["links"], &envs, links_log);
    wait_http_ok(
        &mut links,
        format!("127.0.0.1:{side}").parse().unwrap(),
        "/ready",
    )
    .await;
    let edge = EdgeProc::start_logged(
        &[format!("127.0.0.1:{grpc}").parse().unwrap()],
        &[
            ("REDIS_URL", redis_url()),
            (
                "ABUSE_KEY_PREFIX",
                format!("t:{}:", shortlink_testkit::random_suffix()),
            ),
            ("RATE_LIMIT_RPS", "1000000".into()),
            ("RATE_LIMIT_BURST", "1000000".into()),
            ("LOG_LEVEL", "info".into()),
        ],
        Some(edge_log),
    )
    .await;
    (links, edge)
}

/// Seed-like data: users 1-5, each with a link, events, a custom code
/// `docs`, and a deactivated link, so generated ids and codes find rows.
async fn seed(e: std::net::SocketAddr) {
    for i in 1..=5 {
        let u = post_json(
            e,
            "/users",
            json!({"username": format!("seed{i}"), "email": format!("seed{i}@example.com")}),
        )
        .await;
        assert_eq!(u.status, 201, "{u:?}");
        let l = post_json(
            e,
            "/shorten",
            json!({"original_url": format!("https://example.com/{i}"), "user_id": i, "title": format!("seed {i}")}),
        )
        .await;
        assert_eq!(l.status, 201, "{l:?}");
        let ev = post_json(
            e,
            "/events",
            json!({"url_id": i, "user_id": i, "event_type": "click", "details": {"seed": i}}),
        )
        .await;
        assert_eq!(ev.status, 201, "{ev:?}");
    }
    let l = post_json(
        e,
        "/shorten",
        json!({"original_url": "https://example.com/docs", "user_id": 1, "short_code": "docs"}),
    )
    .await;
    assert_eq!(l.status, 201, "{l:?}");
    let d = http(e, "DELETE", "/urls/5", &[], b"").await;
    assert_eq!(d.status, 200, "{d:?}");
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_contract_violation() {
    let st = schemathesis();
    require_redis().await;
    let db = TestDb::new().await;
    let (links_log, edge_log) = (log_path("links"), log_path("edge"));
    let (links, edge) = stack(&db, &links_log, &edge_log).await;
    let e = edge.http;
    seed(e).await;

    // The document the edge serves is the one schemathesis reads.
    let r = http(e, "GET", "/openapi.json", &[], b"").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["paths"]["/urls"].is_object());

    let max_time = std::env::var("SCHEMATHESIS_MAX_TIME").unwrap_or_else(|_| "60".into());
    let dir = std::env::temp_dir().join(format!(
        "schemathesis-{}",
        shortlink_testkit::random_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = tokio::process::Command::new(st);
    cmd.current_dir(&dir)
        .arg("run")
        .arg(format!("http://{e}/openapi.json"))
        .args(["--url", &format!("http://{e}")])
        .args(["--checks", CHECKS])
        .args(["--max-examples", "25"])
        .args(["--max-time", &max_time])
        .args(["--max-redirects", "0"])
        .args(["--request-timeout", "20"])
        .args(["--workers", "1"])
        .args(["--generation-database", "none"])
        .args(["--no-color"])
        .kill_on_drop(true);
    if let Ok(seed) = std::env::var("SCHEMATHESIS_SEED") {
        cmd.args(["--seed", &seed]);
    }
    // A hard bound over --max-time: schemathesis finishes its current cases
    // after the budget is spent.
    let limit = Duration::from_secs(max_time.parse::<u64>().unwrap_or(60) + 60);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran past {limit:?}"))
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    drop(edge);
    drop(links);
    let errors: Vec<String> = error_lines(&edge_log)
        .into_iter()
        .chain(error_lines(&links_log))
        .collect();
    let _ = (
        std::fs::remove_file(&edge_log),
        std::fs::remove_file(&links_log),
    );
    assert!(
        out.status.success(),
        "schemathesis found contract violations ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // The summary line, e.g. "1234 generated, 1234 passed".
    assert!(
        stdout.contains("generated"),
        "schemathesis ran no test case:\n{stdout}\n{stderr}"
    );
    assert!(
        errors.is_empty(),
        "generated requests produced ERROR log lines: {errors:#?}"
    );
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" generated, ") || l.starts_with("Seed:"))
        .collect();
    println!("schemathesis: {}", summary.join("; "));
}

/// Found by schemathesis: `details` holding a number near the largest
/// double (`1.7976931348623157e308`) was committed, then failed to decode
/// when read back from PostgreSQL (whose `jsonb` prints every digit), so
/// the write answered 502 and logged an ERROR (an alert anyone could
/// trigger). Exact float parsing (serde_json's `float_roundtrip`) reads
/// every finite double back.
#[tokio::test]
async fn extreme_numbers_in_details_round_trip_through_postgres() {
    require_redis().await;
    let db = TestDb::new().await;
    let (links_log, edge_log) = (log_path("links"), log_path("edge"));
    let (links, edge) = stack(&db, &links_log, &edge_log).await;
    let e = edge.http;
    let u = post_json(
        e,
        "/users",
        json!({"username": "big", "email": "big@example.com"}),
    )
    .await
    .json();
    let l = post_json(
        e,
        "/shorten",
        json!({"original_url": "https://example.com/big", "user_id": u["id"]}),
    )
    .await
    .json();
    for n in [
        "1.7976931348623157e308",
        "-1.7976931348623157e308",
        "5e-324",
    ] {
        let body = format!(
            "{{\"url_id\": {}, \"user_id\": {}, \"event_type\": \"big\", \"details\": {{\"n\": {n}, \"a\": [{n}]}}}}",
            l["id"], u["id"]
        );
        let r = http(
            e,
            "POST",
            "/events",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 201, "details {n}: {r:?}");
        let want: f64 = n.parse().unwrap();
        assert_eq!(r.json()["details"]["n"].as_f64(), Some(want), "{r:?}");
    }
    let r = http(
        e,
        "GET",
        &format!("/urls/{}/events?event_type=big", l["id"]),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json().as_array().map(Vec::len), Some(3));
    drop(edge);
    drop(links);
    let errors: Vec<String> = error_lines(&edge_log)
        .into_iter()
        .chain(error_lines(&links_log))
        .collect();
    let _ = (
        std::fs::remove_file(&edge_log),
        std::fs::remove_file(&links_log),
    );
    assert!(errors.is_empty(), "ERROR log lines: {errors:#?}");
}
