//! End-to-end tests of the `shortlink` binary: real processes on loopback
//! ports, talked to only over the network (grpcurl, a tonic client, HTTP),
//! on real PostgreSQL and Redis, plus the embedded default.

mod support;

use std::process::Command;
use std::time::Duration;

use shortlink_proto::v1 as pb;
use shortlink_proto::v1::link_service_client::LinkServiceClient;
use shortlink_testkit::{TestDb, http_get, redis_url, require_redis};
use support::{BIN, grpcurl, grpcurl_json, seed_dir, spawn, wait_ready};

#[tokio::test]
async fn grpcurl_lists_creates_and_resolves_on_postgres_and_redis() {
    require_redis().await;
    let db = TestDb::new().await;
    let prefix = format!("shortlink-e2e:{}:", shortlink_testkit::random_suffix());
    let (mut p, ports) = spawn(
        &["links"],
        &[
            ("DATABASE_URL", db.url.clone()),
            ("REDIS_URL", redis_url()),
            ("CACHE_PREFIX", prefix),
        ],
    );
    wait_ready(&mut p, ports.http).await;

    let out = grpcurl(ports.grpc, &[], &["list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    for svc in [
        "shortlink.v1.LinkService",
        "shortlink.v1.UserService",
        "shortlink.v1.EventService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed.lines().any(|l| l == svc),
            "{svc} not listed:\n{listed}"
        );
    }
    let out = grpcurl(
        ports.grpc,
        &[],
        &["describe", "shortlink.v1.CreateLinkRequest"],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("original_url"));

    let user = grpcurl_json(
        ports.grpc,
        r#"{"username":"grpcurl_user","email":"g@example.com"}"#,
        "shortlink.v1.UserService/CreateUser",
    );
    let uid = user["user"]["id"]
        .as_str()
        .expect("int64 ids are JSON strings")
        .to_owned();
    let link = grpcurl_json(
        ports.grpc,
        &format!(
            r#"{{"original_url":"https://example.com/grpcurl","user_id":"{uid}","short_code":"viaCli"}}"#
        ),
        "shortlink.v1.LinkService/CreateLink",
    );
    assert_eq!(link["link"]["shortCode"], "viaCli");
    let resolved = grpcurl_json(
        ports.grpc,
        r#"{"short_code":"viaCli"}"#,
        "shortlink.v1.LinkService/ResolveLink",
    );
    assert_eq!(resolved["originalUrl"], "https://example.com/grpcurl");

    let out = grpcurl(
        ports.grpc,
        &["-d", r#"{"short_code":"nothere"}"#],
        &["shortlink.v1.LinkService/ResolveLink"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));

    let health = grpcurl_json(
        ports.grpc,
        r#"{"service":"shortlink.v1.LinkService"}"#,
        "grpc.health.v1.Health/Check",
    );
    assert_eq!(health["status"], "SERVING");

    p.sigterm();
    let status = p.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

fn import(db_url: &str) -> String {
    let out = Command::new(BIN)
        .args(["import", "--dir"])
        .arg(seed_dir())
        .env("DATABASE_URL", db_url)
        .env("LOG_LEVEL", "warn")
        .output()
        .expect("run import");
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn seed_set_imports_idempotently_and_its_links_resolve() {
    require_redis().await;
    let db = TestDb::new().await;
    let first = import(&db.url);
    assert!(
        first.contains("imported 400 users, 2000 links, 3422 events"),
        "{first}"
    );
    let second = import(&db.url);
    assert!(
        second.contains("imported 0 users, 0 links, 0 events"),
        "{second}"
    );

    let (mut p, ports) = spawn(
        &["links"],
        &[("DATABASE_URL", db.url.clone()), ("REDIS_URL", redis_url())],
    );
    wait_ready(&mut p, ports.http).await;
    let mut client = LinkServiceClient::connect(format!("http://127.0.0.1:{}", ports.grpc))
        .await
        .unwrap();
    // Rows 1 (active) and 2 (inactive) of urls.csv.
    let r = client
        .resolve_link(pb::ResolveLinkRequest {
            short_code: "WqxP6K".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.original_url.as_str(), r.link_id),
        ("https://seeded.app/gold/meadow/1", 1)
    );
    let e = client
        .resolve_link(pb::ResolveLinkRequest {
            short_code: "cCZohi".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let listed = client
        .list_links(pb::ListLinksRequest {
            page: Some(pb::PageRequest {
                page: 1,
                per_page: 1,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.page.unwrap().total, 2000);
    // New rows continue after the imported ids.
    let mut users = shortlink_proto::v1::user_service_client::UserServiceClient::connect(format!(
        "http://127.0.0.1:{}",
        ports.grpc
    ))
    .await
    .unwrap();
    let u = users
        .create_user(pb::CreateUserRequest {
            username: "after_seed".into(),
            email: "after@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(u.id, 401);
}

#[tokio::test]
async fn up_runs_links_and_edge_on_the_embedded_default_with_the_seed() {
    let dir = std::env::temp_dir().join(format!(
        "shortlink-up-{}",
        shortlink_testkit::random_suffix()
    ));
    let (edge_http, edge_https, edge_metrics) = (
        shortlink_testkit::free_port(),
        shortlink_testkit::free_port(),
        shortlink_testkit::free_port(),
    );
    let (mut p, ports) = spawn(
        &["up", "--seed", seed_dir().to_str().unwrap()],
        &[
            ("SHORTLINK_DATA_DIR", dir.display().to_string()),
            ("EDGE_HTTP_ADDR", format!("127.0.0.1:{edge_http}")),
            ("EDGE_HTTPS_ADDR", format!("127.0.0.1:{edge_https}")),
            ("EDGE_METRICS_ADDR", format!("127.0.0.1:{edge_metrics}")),
            ("EDGE_CERT_DIR", dir.join("tls").display().to_string()),
            ("EDGE_HEALTH_INTERVAL_MS", "200".into()),
            (
                "ALERTER_HTTP_ADDR",
                format!("127.0.0.1:{}", shortlink_testkit::free_port()),
            ),
            (
                "DASHBOARD_ADDR",
                format!("127.0.0.1:{}", shortlink_testkit::free_port()),
            ),
            (
                "BUS_METRICS_ADDR",
                format!("127.0.0.1:{}", shortlink_testkit::free_port()),
            ),
        ],
    );
    wait_ready(&mut p, ports.http).await;
    assert!(
        dir.join("shortlink.db").exists(),
        "SQLite file in the data directory"
    );
    let (_, health) = http_get(
        format!("127.0.0.1:{}", ports.http).parse().unwrap(),
        "/health",
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(v["database"]["backend"], "sqlite");
    assert_eq!(v["cache"]["backend"], "memory");

    // The edge redirects right after a fresh start.
    let edge = format!("127.0.0.1:{edge_http}").parse().unwrap();
    support::wait_http_ok(&mut p, edge, "/ready").await;
    let r = shortlink_testkit::http(edge, "GET", "/WqxP6K", &[], b"").await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("https://seeded.app/gold/meadow/1")
    );
    let mut client = LinkServiceClient::connect(format!("http://127.0.0.1:{}", ports.grpc))
        .await
        .unwrap();
    let r = client
        .resolve_link(pb::ResolveLinkRequest {
            short_code: "WqxP6K".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.original_url, "https://seeded.app/gold/meadow/1");
    // The in-process pipeline: the redirect above becomes a click event.
    let clicked = shortlink_testkit::eventually(Duration::from_secs(10), async || {
        let r =
            shortlink_testkit::http(edge, "GET", "/urls/1/events?event_type=click", &[], b"").await;
        r.status == 200 && r.json().as_array().map(Vec::len) == Some(1)
    })
    .await;
    assert!(clicked, "the redirect's click reached the app database");
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(30)).await.success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_configuration_exits_64_with_a_clear_message() {
    for (args, needle) in [
        (
            vec!["links", "--database-url", "mysql://x/y"],
            "DATABASE_URL must start with",
        ),
        (
            vec!["links", "--grpc-addr", "not-an-address"],
            "--grpc-addr",
        ),
        (
            vec!["links", "--breaker-failure-ratio", "7"],
            "BREAKER_FAILURE_RATIO",
        ),
        (vec!["links", "--log-level", "[[["], "LOG_LEVEL"),
        // Pingora aborted on a shared address ("IO Safety violation").
        (
            vec![
                "edge",
                "--http-addr",
                "127.0.0.1:18555",
                "--https-addr",
                "127.0.0.1:18555",
            ],
            "share a port: every listener needs its own",
        ),
    ] {
        let out = Command::new(BIN).args(&args).env_clear().output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
