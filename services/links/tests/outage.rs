//! The database is taken away from a running service (its connections go
//! through a proxy that is cut): the breaker opens, cached resolutions keep
//! working, writes fail fast with UNAVAILABLE and a clear message, readiness
//! drops; when the database returns the service recovers by itself.

mod common;

use std::time::Duration;

use common::{Proxy, TestApp, TestDb, http_get};
use shortlink_proto::v1 as pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn database_outage_opens_breaker_serves_cache_and_recovers() {
    common::require_redis().await;
    let db = TestDb::new().await;
    let admin = common::pg_admin_url();
    let pg_host = admin
        .split('@')
        .nth(1)
        .and_then(|h| h.split('/').next())
        .unwrap_or("127.0.0.1:5432")
        .to_owned();
    let proxy = Proxy::start(&pg_host).await;
    let via_proxy = format!("postgres://postgres@{}/{}", proxy.addr, db.name);

    let mut cfg = common::base_config(Some(via_proxy), Some(common::redis_url()));
    cfg.breaker_failures = 3;
    cfg.breaker_cool_down_ms = 1000;
    cfg.db.db_acquire_timeout_ms = 500;
    cfg.db.db_pool_max = 4;
    let app = TestApp::start(cfg, Some(db)).await;
    let mut links = app.links().await;
    let mut health = HealthClient::new(app.channel().await);

    let user = app
        .users()
        .await
        .create_user(pb::CreateUserRequest {
            username: "olga".into(),
            email: "olga@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let create = |code: &str| pb::CreateLinkRequest {
        original_url: format!("https://example.com/{code}"),
        user_id: user.id,
        title: None,
        short_code: Some(code.into()),
    };
    links.create_link(create("warm01")).await.unwrap();
    links.create_link(create("cold01")).await.unwrap();
    // Changes invalidate the code twice (now and 500 ms later, see
    // CachePolicy); warm the cache after the second invalidation.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let warm = pb::ResolveLinkRequest {
        short_code: "warm01".into(),
    };
    links.resolve_link(warm.clone()).await.unwrap();

    proxy.cut().await;

    // Writes fail with UNAVAILABLE; after a few failures the breaker opens
    // and they are refused without touching the database.
    let mut saw_breaker = false;
    for i in 0..10 {
        let e = links
            .create_link(create(&format!("down{i:02}")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            e.message().starts_with("database unavailable"),
            "{}",
            e.message()
        );
        assert!(
            shortlink_proto::errors::is_database_unavailable(&e),
            "the outage is a typed detail, not only words: {e:?}"
        );
        if e.message().contains("circuit breaker open") {
            saw_breaker = true;
            break;
        }
    }
    assert!(saw_breaker, "breaker never opened");

    // Cached resolution still works; an uncached one is UNAVAILABLE, not
    // NOT_FOUND (no negative entry is invented).
    let r = links.resolve_link(warm.clone()).await.unwrap().into_inner();
    assert!(r.cached);
    assert_eq!(r.original_url, "https://example.com/warm01");
    let e = links
        .resolve_link(pb::ResolveLinkRequest {
            short_code: "cold01".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);

    // Readiness drops: grpc.health.v1 NOT_SERVING, /ready 503, /health says why.
    let not_serving = common::eventually(Duration::from_secs(10), async || {
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok_and(|r| r.into_inner().status == ServingStatus::NotServing as i32)
    })
    .await;
    assert!(not_serving, "health never reported NOT_SERVING");
    let (status, body) = http_get(app.http, "/ready").await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = http_get(app.http, "/health").await;
    assert_eq!(status, 503);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["database"]["status"], "down");

    // The database comes back: the service recovers without help.
    proxy.restore().await;
    let recovered = common::eventually(Duration::from_secs(20), async || {
        links.create_link(create("back01")).await.is_ok()
    })
    .await;
    assert!(recovered, "writes never recovered");
    let cold = links
        .resolve_link(pb::ResolveLinkRequest {
            short_code: "cold01".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cold.original_url, "https://example.com/cold01");
    let serving = common::eventually(Duration::from_secs(10), async || {
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
    })
    .await;
    assert!(serving);
    let (_, body) = http_get(app.http, "/health").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["breaker"]["state"], "closed");
    let (_, metrics) = http_get(app.http, "/metrics").await;
    assert!(
        metrics.contains(r#"shortlink_db_breaker_transitions_total{from="closed""#),
        "{metrics}"
    );
    app.stop().await;
}
