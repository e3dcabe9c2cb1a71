//! The links service over real gRPC, on real PostgreSQL and Redis: the
//! contract's behaviour, error codes and messages, cache behaviour and
//! invalidation, health, reflection-free metadata, metrics and shutdown.

mod common;

use std::time::Duration;

use common::{TestApp, http_get};
use shortlink_proto::v1 as pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn user(app: &TestApp, name: &str) -> pb::User {
    app.users()
        .await
        .create_user(pb::CreateUserRequest {
            username: name.into(),
            email: format!("{name}@example.com"),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
}

fn create(user_id: i64, url: &str, code: Option<&str>) -> pb::CreateLinkRequest {
    pb::CreateLinkRequest {
        original_url: url.into(),
        user_id,
        title: Some("A title".into()),
        short_code: code.map(Into::into),
    }
}

async fn resolve(app: &TestApp, code: &str) -> Result<pb::ResolveLinkResponse, tonic::Status> {
    app.links()
        .await
        .resolve_link(pb::ResolveLinkRequest {
            short_code: code.into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn create_resolve_update_delete_through_grpc() {
    let app = TestApp::on_postgres_and_redis().await;
    let u = user(&app, "alice").await;
    let mut links = app.links().await;

    let link = links
        .create_link(create(u.id, "https://example.com/one", None))
        .await
        .unwrap()
        .into_inner()
        .link
        .unwrap();
    assert_eq!(link.short_code.len(), 6);
    assert!(link.short_code.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(link.is_active);
    assert_eq!(link.title.as_deref(), Some("A title"));
    assert!(link.created_at.is_some());

    // First resolution reads the database, the second the cache.
    let r1 = resolve(&app, &link.short_code).await.unwrap();
    assert_eq!(
        (r1.original_url.as_str(), r1.link_id, r1.cached),
        ("https://example.com/one", link.id, false)
    );
    let r2 = resolve(&app, &link.short_code).await.unwrap();
    assert!(r2.cached);

    // Update invalidates the cached entry.
    let updated = links
        .update_link(pb::UpdateLinkRequest {
            id: link.id,
            original_url: Some("https://example.com/two".into()),
            title: None,
            is_active: None,
        })
        .await
        .unwrap()
        .into_inner()
        .link
        .unwrap();
    assert_eq!(updated.original_url, "https://example.com/two");
    assert_eq!(updated.title.as_deref(), Some("A title"));
    let r3 = resolve(&app, &link.short_code).await.unwrap();
    assert_eq!(
        (r3.original_url.as_str(), r3.cached),
        ("https://example.com/two", false)
    );

    // Soft delete: the row stays, resolution says deactivated at once.
    resolve(&app, &link.short_code).await.unwrap();
    let del = links
        .delete_link(pb::DeleteLinkRequest { id: link.id })
        .await
        .unwrap()
        .into_inner();
    assert!(!del.link.unwrap().is_active);
    assert!(del.message.contains("deactivated"));
    let gone = resolve(&app, &link.short_code).await.unwrap_err();
    assert_eq!(gone.code(), Code::FailedPrecondition);
    assert!(gone.message().contains("deactivated"), "{}", gone.message());
    let still = links
        .get_link(pb::GetLinkRequest { id: link.id })
        .await
        .unwrap()
        .into_inner();
    assert!(!still.link.unwrap().is_active);

    // Reactivation through update works and is visible immediately.
    links
        .update_link(pb::UpdateLinkRequest {
            id: link.id,
            original_url: None,
            title: None,
            is_active: Some(true),
        })
        .await
        .unwrap();
    assert!(resolve(&app, &link.short_code).await.is_ok());

    // Events: created, updated (url), deleted, updated (is_active).
    let evs = app
        .events()
        .await
        .list_events(pb::ListEventsRequest {
            url_id: Some(link.id),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<&str> = evs.events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(kinds, ["created", "updated", "deleted", "updated"]);
    assert_eq!(evs.page.unwrap().total, 4);
    app.stop().await;
}

#[tokio::test]
async fn negative_entries_are_cached_and_invalidated_by_create() {
    let app = TestApp::on_postgres_and_redis().await;
    let u = user(&app, "bob").await;
    let miss = resolve(&app, "later1").await.unwrap_err();
    assert_eq!(miss.code(), Code::NotFound);
    // The negative entry is in Redis, under this app's prefix.
    let mut redis = common::require_redis().await;
    let raw: Option<String> = redis::cmd("GET")
        .arg(format!("{}link:later1", app.prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(raw.as_deref(), Some("-"));

    app.links()
        .await
        .create_link(create(u.id, "https://example.com/later", Some("later1")))
        .await
        .unwrap();
    let r = resolve(&app, "later1").await.unwrap();
    assert_eq!(r.original_url, "https://example.com/later");
    app.stop().await;
}

/// A link resolved in the first 500 ms after its creation stays cached:
/// the second invalidation after a create removes only a negative entry
/// (before, it deleted the fresh positive entry, and such a link failed
/// while the database was down; found by the kill matrix).
#[tokio::test]
async fn a_link_resolved_right_after_creation_stays_cached() {
    let app = TestApp::on_postgres_and_redis().await;
    let u = user(&app, "early").await;
    app.links()
        .await
        .create_link(create(u.id, "https://example.com/early", Some("early1")))
        .await
        .unwrap();
    let r = resolve(&app, "early1").await.unwrap();
    assert_eq!(r.original_url, "https://example.com/early");
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    let mut redis = common::require_redis().await;
    let raw: Option<String> = redis::cmd("GET")
        .arg(format!("{}link:early1", app.prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        raw.as_deref()
            .is_some_and(|v| v.contains("https://example.com/early")),
        "the positive entry was deleted by the delayed invalidation: {raw:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn errors_map_to_status_codes_with_clear_messages() {
    let app = TestApp::on_postgres_and_redis().await;
    let u = user(&app, "carol").await;
    let mut links = app.links().await;
    let mut users = app.users().await;

    let cases: Vec<(pb::CreateLinkRequest, Code, &str)> = vec![
        (
            create(u.id, "", None),
            Code::InvalidArgument,
            "original_url is required",
        ),
        (
            create(u.id, "ftp://example.com", None),
            Code::InvalidArgument,
            "http:// or https://",
        ),
        (
            create(u.id, "https://", None),
            Code::InvalidArgument,
            "host",
        ),
        (
            create(u.id, &format!("https://e.com/{}", "a".repeat(2100)), None),
            Code::InvalidArgument,
            "2048",
        ),
        (
            create(0, "https://example.com", None),
            Code::InvalidArgument,
            "user_id is required",
        ),
        (
            create(u.id, "https://example.com", Some("no spaces")),
            Code::InvalidArgument,
            "short_code",
        ),
        (
            create(u.id, "https://example.com", Some("urls")),
            Code::InvalidArgument,
            "reserved",
        ),
        (
            create(987_654, "https://example.com", None),
            Code::NotFound,
            "user not found",
        ),
    ];
    for (req, code, msg) in cases {
        let e = links.create_link(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{req:?}: {e:?}");
        assert!(
            e.message().contains(msg),
            "{req:?}: {:?} lacks {msg:?}",
            e.message()
        );
    }

    links
        .create_link(create(u.id, "https://example.com", Some("taken1")))
        .await
        .unwrap();
    let e = links
        .create_link(create(u.id, "https://example.com", Some("taken1")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(
        e.message().contains("taken1") && e.message().contains("taken"),
        "{}",
        e.message()
    );

    let e = resolve(&app, "nope42").await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, "link not found"));
    let e = resolve(&app, "").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let e = links
        .get_link(pb::GetLinkRequest { id: 123_456 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = links
        .update_link(pb::UpdateLinkRequest {
            id: 1,
            original_url: None,
            title: None,
            is_active: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("nothing to update"));

    let e = users
        .create_user(pb::CreateUserRequest {
            username: "carol".into(),
            email: "c2@example.com".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains("username"));
    let e = users
        .create_user(pb::CreateUserRequest {
            username: "carol2".into(),
            email: "CAROL@example.com".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::AlreadyExists,
        "emails compare case-insensitively"
    );
    assert!(e.message().contains("email"));
    let e = users
        .create_user(pb::CreateUserRequest {
            username: "".into(),
            email: "x@example.com".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("username is required"));

    let e = users
        .delete_user(pb::DeleteUserRequest { id: u.id })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("owns 1 links"), "{}", e.message());

    let e = app
        .events()
        .await
        .create_event(pb::CreateEventRequest {
            url_id: 1,
            user_id: u.id,
            event_type: "Bad Type".into(),
            details: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn users_listing_paging_and_bulk_create() {
    let app = TestApp::on_postgres_and_redis().await;
    let mut users = app.users().await;
    let rows = vec![
        pb::CreateUserRequest {
            username: "u1".into(),
            email: "u1@example.com".into(),
        },
        pb::CreateUserRequest {
            username: "u2x".into(),
            email: "u2@example.com".into(),
        },
        pb::CreateUserRequest {
            username: "u3x".into(),
            email: "not-an-email".into(),
        },
        pb::CreateUserRequest {
            username: "u2x".into(),
            email: "u2b@example.com".into(),
        },
        pb::CreateUserRequest {
            username: "u4x".into(),
            email: "u4@example.com".into(),
        },
    ];
    let out = users
        .bulk_create_users(pb::BulkCreateUsersRequest { users: rows })
        .await
        .unwrap()
        .into_inner();
    let created: Vec<&str> = out.created.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(created, ["u2x", "u4x"]);
    let failed: Vec<u32> = out.errors.iter().map(|e| e.index).collect();
    assert_eq!(failed, [0, 2, 3]);
    assert!(out.errors[2].error.contains("username is already taken"));

    let page = users
        .list_users(pb::ListUsersRequest {
            page: Some(pb::PageRequest {
                page: 2,
                per_page: 1,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.users.len(), 1);
    assert_eq!(page.users[0].username, "u4x");
    let info = page.page.unwrap();
    assert_eq!((info.page, info.per_page, info.total), (2, 1, 2));
    // per_page is clamped to 100.
    let big = users
        .list_users(pb::ListUsersRequest {
            page: Some(pb::PageRequest {
                page: 1,
                per_page: 5000,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big.page.unwrap().per_page, 100);
    app.stop().await;
}

#[tokio::test]
async fn redis_outage_degrades_to_the_database_without_errors() {
    common::require_redis().await;
    let db = common::TestDb::new().await;
    let dead = format!("redis://127.0.0.1:{}", common::free_port());
    let app = TestApp::start(
        common::base_config(Some(db.url.clone()), Some(dead)),
        Some(db),
    )
    .await;
    let u = user(&app, "dave").await;
    let link = app
        .links()
        .await
        .create_link(create(u.id, "https://example.com/d", None))
        .await
        .unwrap()
        .into_inner()
        .link
        .unwrap();
    for _ in 0..5 {
        let r = resolve(&app, &link.short_code).await.unwrap();
        assert!(!r.cached);
    }
    let (status, body) = http_get(app.http, "/health").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["cache"]["status"], "down");
    assert_eq!(v["database"]["status"], "up");
    let (status, _) = http_get(app.http, "/ready").await;
    assert_eq!(
        status, 200,
        "a cache outage does not make the replica unready"
    );
    app.stop().await;
}

#[tokio::test]
async fn health_side_port_and_metrics() {
    let app = TestApp::on_postgres_and_redis().await;
    let mut health = HealthClient::new(app.channel().await);
    let ok = common::eventually(Duration::from_secs(5), async || {
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "shortlink.v1.LinkService".into(),
            })
            .await
            .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
    })
    .await;
    assert!(ok, "LinkService never reported SERVING");

    let (s, body) = http_get(app.http, "/live").await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = http_get(app.http, "/ready").await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = http_get(app.http, "/health").await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["database"]["backend"], "postgres");
    assert_eq!(v["cache"]["backend"], "redis");
    assert_eq!(v["breaker"]["state"], "closed");
    assert!(v["pool"]["max"].as_u64().unwrap() >= 1);
    assert!(v["version"].is_string() && v["uptime_s"].is_u64());
    let (s, body) = http_get(app.http, "/nope").await;
    assert_eq!(s, 404);
    assert!(body.contains("\"error\""));

    // Drive a success and an error, then scrape.
    let u = user(&app, "erin").await;
    let _ = resolve(&app, "zzzzzz").await;
    let _ = resolve(&app, "zzzzzz").await;
    app.links()
        .await
        .create_link(create(u.id, "https://example.com/e", None))
        .await
        .unwrap();
    let (s, m) = http_get(app.http, "/metrics").await;
    assert_eq!(s, 200);
    for needle in [
        r#"shortlink_grpc_server_requests_total{code="OK",method="CreateLink""#,
        r#"shortlink_grpc_server_requests_total{code="NOT_FOUND",method="ResolveLink""#,
        r#"shortlink_grpc_server_request_duration_seconds_bucket{method="ResolveLink""#,
        r#"shortlink_cache_requests_total{result="negative_hit""#,
        r#"shortlink_cache_requests_total{result="miss""#,
        r#"shortlink_db_pool_connections{state="max""#,
        "shortlink_db_breaker_state{",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
    assert!(
        !m.contains("zzzzzz"),
        "short codes must never be metric labels"
    );
    app.stop().await;
}

#[tokio::test]
async fn request_id_is_accepted_or_generated_and_echoed() {
    let app = TestApp::on_postgres_and_redis().await;
    let mut links = app.links().await;
    let mut req = tonic::Request::new(pb::ResolveLinkRequest {
        short_code: "abcdef".into(),
    });
    req.metadata_mut()
        .insert("x-request-id", "test-req.42".parse().unwrap());
    let e = links.resolve_link(req).await.unwrap_err();
    assert_eq!(e.metadata().get("x-request-id").unwrap(), "test-req.42");
    let mut req = tonic::Request::new(pb::ResolveLinkRequest {
        short_code: "abcdef".into(),
    });
    req.metadata_mut()
        .insert("x-request-id", "bad id!".parse().unwrap());
    let e = links.resolve_link(req).await.unwrap_err();
    let rid = e
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(rid, "bad id!");
    assert_eq!(rid.len(), 32);
    app.stop().await;
}

#[tokio::test]
async fn shutdown_drains_and_stops_serving() {
    let app = TestApp::on_postgres_and_redis().await;
    let addr = app.grpc;
    user(&app, "frank").await;
    app.stop().await;
    let r = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    assert!(r.is_err(), "listener is closed after shutdown");
}
