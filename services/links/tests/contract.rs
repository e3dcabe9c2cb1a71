//! One contract suite per adapter trait, run against every implementation:
//! `LinkStore` on SQLite and on PostgreSQL, `Cache` in process and on Redis.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::json;
use shortlink_links::cache::{Cache, Cached, MemoryCache, RedisCache, RedisCacheConfig};
use shortlink_links::model::{
    Event, EventFilter, Link, LinkFilter, LinkPatch, NewClick, NewEvent, NewLink, NewUser, Page,
    Target, User, UserPatch,
};
use shortlink_links::store::{self, Entity, LinkStore, StoreConfig, StoreError};

fn new_user(n: &str) -> NewUser {
    NewUser {
        username: n.into(),
        email: format!("{n}@example.com"),
    }
}

fn new_link(user_id: i64, code: &str) -> NewLink {
    NewLink {
        user_id,
        short_code: code.into(),
        original_url: format!("https://example.com/{code}"),
        title: Some(format!("title {code}")),
    }
}

async fn store_contract(s: Arc<dyn LinkStore>) {
    // Users and their unique columns.
    let alice = s.create_user(&new_user("alice")).await.unwrap();
    let bob = s.create_user(&new_user("bob")).await.unwrap();
    assert!(alice.id > 0 && bob.id > alice.id);
    let dup_name = s
        .create_user(&NewUser {
            username: "alice".into(),
            email: "other@example.com".into(),
        })
        .await;
    assert!(
        matches!(dup_name, Err(StoreError::Conflict("username"))),
        "{dup_name:?}"
    );
    let dup_mail = s
        .create_user(&NewUser {
            username: "carol".into(),
            email: "alice@example.com".into(),
        })
        .await;
    assert!(
        matches!(dup_mail, Err(StoreError::Conflict("email"))),
        "{dup_mail:?}"
    );
    assert_eq!(s.user_by_id(alice.id).await.unwrap().unwrap(), alice);
    assert!(s.user_by_id(9999).await.unwrap().is_none());

    // Links: create writes a `created` event in the same transaction.
    let l1 = s.create_link(&new_link(alice.id, "abc123")).await.unwrap();
    assert!(l1.is_active);
    assert_eq!(l1.short_code, "abc123");
    assert_eq!(l1.created_at, l1.updated_at);
    let taken = s.create_link(&new_link(bob.id, "abc123")).await;
    assert!(
        matches!(taken, Err(StoreError::Conflict("short_code"))),
        "{taken:?}"
    );
    let nouser = s.create_link(&new_link(9999, "zzz999")).await;
    assert!(
        matches!(nouser, Err(StoreError::NotFound(Entity::User))),
        "{nouser:?}"
    );
    assert_eq!(s.link_by_code("abc123").await.unwrap().unwrap(), l1);
    assert_eq!(s.link_by_id(l1.id).await.unwrap().unwrap(), l1);
    assert!(s.link_by_code("nope").await.unwrap().is_none());

    let l2 = s.create_link(&new_link(bob.id, "bob001")).await.unwrap();
    let l3 = s.create_link(&new_link(bob.id, "bob002")).await.unwrap();

    // Listing: filters, order, paging and totals.
    let (all, total) = s
        .list_links(&LinkFilter::default(), Page::new(1, 2))
        .await
        .unwrap();
    assert_eq!(total, 3);
    assert_eq!(
        all.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![l1.id, l2.id]
    );
    let (p2, _) = s
        .list_links(&LinkFilter::default(), Page::new(2, 2))
        .await
        .unwrap();
    assert_eq!(p2, vec![l3.clone()]);
    let (bobs, total) = s
        .list_links(
            &LinkFilter {
                user_id: Some(bob.id),
                is_active: None,
            },
            Page::new(1, 20),
        )
        .await
        .unwrap();
    assert_eq!((bobs.len(), total), (2, 2));

    // Update: only changed fields make events; unchanged patch is a no-op.
    let patched = s
        .update_link(
            l2.id,
            &LinkPatch {
                original_url: Some("https://example.org/new".into()),
                title: Some(None),
                is_active: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.original_url, "https://example.org/new");
    assert_eq!(patched.title, None);
    assert!(patched.updated_at >= l2.updated_at);
    let same = s
        .update_link(
            l2.id,
            &LinkPatch {
                is_active: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(same, patched);
    let missing = s.update_link(9999, &LinkPatch::default()).await;
    assert!(matches!(missing, Err(StoreError::NotFound(Entity::Link))));

    // Soft delete keeps the row and writes one `deleted` event, idempotently.
    let gone = s.deactivate_link(l3.id, "user_requested").await.unwrap();
    assert!(!gone.is_active);
    assert_eq!(
        s.deactivate_link(l3.id, "user_requested").await.unwrap().id,
        l3.id
    );
    assert!(!s.link_by_id(l3.id).await.unwrap().unwrap().is_active);
    let (inactive, n) = s
        .list_links(
            &LinkFilter {
                user_id: None,
                is_active: Some(false),
            },
            Page::new(1, 20),
        )
        .await
        .unwrap();
    assert_eq!((inactive[0].id, n), (l3.id, 1));

    // Events written by the changes above.
    let (evs, n) = s
        .list_events(&EventFilter::default(), Page::new(1, 100))
        .await
        .unwrap();
    let kinds: Vec<(i64, &str)> = evs
        .iter()
        .map(|e| (e.url_id, e.event_type.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (l1.id, "created"),
            (l2.id, "created"),
            (l3.id, "created"),
            (l2.id, "updated"),
            (l2.id, "updated"),
            (l3.id, "deleted"),
        ]
    );
    assert_eq!(n, 6);
    assert_eq!(
        evs[0].details,
        json!({"short_code": "abc123", "original_url": "https://example.com/abc123"})
    );
    assert_eq!(
        evs[3].details,
        json!({"field": "original_url", "old_value": "https://example.com/bob001", "new_value": "https://example.org/new"})
    );
    assert_eq!(evs[5].details, json!({"reason": "user_requested"}));

    // Client events, with filters.
    let click = s
        .create_event(&NewEvent {
            url_id: l1.id,
            user_id: bob.id,
            event_type: "click".into(),
            details: json!({"referrer": "https://news.example", "n": 1}),
        })
        .await
        .unwrap();
    assert_eq!(click.details["n"], json!(1));
    let bad_url = s
        .create_event(&NewEvent {
            url_id: 9999,
            user_id: bob.id,
            event_type: "click".into(),
            details: json!({}),
        })
        .await;
    assert!(matches!(bad_url, Err(StoreError::NotFound(Entity::Url))));
    let bad_user = s
        .create_event(&NewEvent {
            url_id: l1.id,
            user_id: 9999,
            event_type: "click".into(),
            details: json!({}),
        })
        .await;
    assert!(matches!(bad_user, Err(StoreError::NotFound(Entity::User))));
    let (clicks, n) = s
        .list_events(
            &EventFilter {
                url_id: Some(l1.id),
                user_id: None,
                event_type: Some("click".into()),
            },
            Page::new(1, 10),
        )
        .await
        .unwrap();
    assert_eq!((clicks, n), (vec![click.clone()], 1));
    let (by_user, _) = s
        .list_events(
            &EventFilter {
                user_id: Some(bob.id),
                ..Default::default()
            },
            Page::new(1, 100),
        )
        .await
        .unwrap();
    assert!(by_user.iter().all(|e| e.user_id == bob.id));

    // Users: update, conflicts, delete rules.
    let renamed = s
        .update_user(
            bob.id,
            &UserPatch {
                username: Some("robert".into()),
                email: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (renamed.username.as_str(), renamed.email.as_str()),
        ("robert", "bob@example.com")
    );
    let clash = s
        .update_user(
            bob.id,
            &UserPatch {
                username: Some("alice".into()),
                email: None,
            },
        )
        .await;
    assert!(matches!(clash, Err(StoreError::Conflict("username"))));
    assert!(matches!(
        s.delete_user(alice.id).await,
        Err(StoreError::InUse(_))
    ));
    assert!(matches!(
        s.delete_user(9999).await,
        Err(StoreError::NotFound(Entity::User))
    ));
    let carol = s.create_user(&new_user("carol")).await.unwrap();
    s.delete_user(carol.id).await.unwrap();
    assert!(s.user_by_id(carol.id).await.unwrap().is_none());
    let (users, n) = s.list_users(Page::new(1, 10)).await.unwrap();
    assert_eq!((users.len(), n), (2, 2));

    // Clicks: idempotent by request id, counted per link, unknown links skipped.
    let click = |url_id: i64, rid: &str| NewClick {
        url_id,
        user_id: bob.id,
        request_id: rid.into(),
        details: json!({"referrer": "r", "request_id": rid}),
        at: Utc::now(),
    };
    let batch = vec![
        click(l1.id, "rq1"),
        click(l1.id, "rq2"),
        click(l2.id, "rq3"),
        click(9999, "rq4"),
    ];
    let n = s.record_clicks(&batch).await.unwrap();
    assert_eq!((n.recorded, n.duplicates, n.unknown_links), (3, 0, 1));
    let again = s.record_clicks(&batch).await.unwrap();
    assert_eq!(
        (again.recorded, again.duplicates, again.unknown_links),
        (0, 3, 1)
    );
    assert_eq!(s.click_count(l1.id).await.unwrap(), 2);
    assert_eq!(s.click_count(l2.id).await.unwrap(), 1);
    assert_eq!(s.click_count(l3.id).await.unwrap(), 0);
    let (clicks, n) = s
        .list_events(
            &EventFilter {
                url_id: Some(l1.id),
                user_id: None,
                event_type: Some("click".into()),
            },
            Page::new(1, 10),
        )
        .await
        .unwrap();
    assert_eq!(n, 3, "the manual click above plus two recorded: {clicks:?}");

    s.ping().await.unwrap();
    assert!(s.pool_stats().max >= 1);
}

async fn import_contract(s: Arc<dyn LinkStore>) {
    let t = Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap();
    let users = vec![User {
        id: 40,
        username: "imported".into(),
        email: "imp@example.com".into(),
        created_at: t,
    }];
    let links = vec![Link {
        id: 70,
        user_id: 40,
        short_code: "Imp0rt".into(),
        original_url: "https://example.com/imported".into(),
        title: None,
        is_active: false,
        created_at: t,
        updated_at: t,
    }];
    let events = vec![Event {
        id: 90,
        url_id: 70,
        user_id: 40,
        event_type: "created".into(),
        timestamp: t,
        details: json!({"short_code": "Imp0rt"}),
    }];
    let first = s.import(&users, &links, &events).await.unwrap();
    assert_eq!((first.users, first.links, first.events), (1, 1, 1));
    let again = s.import(&users, &links, &events).await.unwrap();
    assert_eq!((again.users, again.links, again.events), (0, 0, 0));
    let l = s.link_by_code("Imp0rt").await.unwrap().unwrap();
    assert_eq!(l, links[0]);
    // Ids continue after the imported ones.
    let u = s.create_user(&new_user("after")).await.unwrap();
    assert!(u.id > 40, "{}", u.id);
    let nl = s.create_link(&new_link(u.id, "after1")).await.unwrap();
    assert!(nl.id > 70, "{}", nl.id);
    let (evs, _) = s
        .list_events(
            &EventFilter {
                url_id: Some(nl.id),
                ..Default::default()
            },
            Page::new(1, 10),
        )
        .await
        .unwrap();
    assert!(evs[0].id > 90);
}

fn sqlite_cfg() -> StoreConfig {
    let dir = std::env::temp_dir().join(format!("shortlink-contract-{}", common::random_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    StoreConfig {
        url: format!("sqlite://{}/test.db", dir.display()),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    }
}

fn pg_cfg(db: &common::TestDb) -> StoreConfig {
    StoreConfig {
        url: db.url.clone(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn store_contract_sqlite() {
    let s = store::connect(&sqlite_cfg()).await.unwrap();
    assert_eq!(s.backend(), "sqlite");
    store_contract(s).await;
}

#[tokio::test]
async fn store_contract_postgres() {
    let db = common::TestDb::new().await;
    let s = store::connect(&pg_cfg(&db)).await.unwrap();
    assert_eq!(s.backend(), "postgres");
    store_contract(s.clone()).await;
    s.close().await;
}

#[tokio::test]
async fn import_contract_sqlite() {
    import_contract(store::connect(&sqlite_cfg()).await.unwrap()).await;
}

#[tokio::test]
async fn import_contract_postgres() {
    let db = common::TestDb::new().await;
    let s = store::connect(&pg_cfg(&db)).await.unwrap();
    import_contract(s.clone()).await;
    s.close().await;
}

#[tokio::test]
async fn migrations_are_idempotent_on_postgres() {
    let db = common::TestDb::new().await;
    assert_eq!(store::migrate(&pg_cfg(&db)).await.unwrap(), "postgres");
    assert_eq!(store::migrate(&pg_cfg(&db)).await.unwrap(), "postgres");
}

fn target(id: i64, url: &str, active: bool) -> Target {
    Target {
        link_id: id,
        user_id: 1,
        original_url: url.into(),
        is_active: active,
    }
}

async fn cache_contract(c: Arc<dyn Cache>) {
    let long = Duration::from_secs(60);
    assert_eq!(c.get("k1").await.unwrap(), None);
    let t = Cached::Found(target(1, "https://example.com/a", true));
    c.put("k1", &t, long).await.unwrap();
    assert_eq!(c.get("k1").await.unwrap(), Some(t.clone()));
    c.put("k2", &Cached::Missing, long).await.unwrap();
    assert_eq!(c.get("k2").await.unwrap(), Some(Cached::Missing));
    let inactive = Cached::Found(target(3, "https://example.com/c", false));
    c.put("k3", &inactive, long).await.unwrap();
    assert_eq!(c.get("k3").await.unwrap(), Some(inactive));
    // Overwrite, invalidate.
    let t2 = Cached::Found(target(1, "https://example.com/b", true));
    c.put("k1", &t2, long).await.unwrap();
    assert_eq!(c.get("k1").await.unwrap(), Some(t2));
    c.invalidate("k1").await.unwrap();
    assert_eq!(c.get("k1").await.unwrap(), None);
    c.invalidate("never-there").await.unwrap();
    // Expiry (Redis TTLs are whole seconds).
    c.put("k4", &Cached::Missing, Duration::from_secs(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(c.get("k4").await.unwrap(), None);
    c.ping().await.unwrap();
}

#[tokio::test]
async fn cache_contract_memory() {
    cache_contract(Arc::new(MemoryCache::new(1000))).await;
}

#[tokio::test]
async fn cache_contract_redis() {
    common::require_redis().await;
    let prefix = format!("shortlink-test:{}:", common::random_suffix());
    let c = RedisCache::new(RedisCacheConfig {
        url: common::redis_url(),
        prefix: prefix.clone(),
        timeout: Duration::from_millis(500),
    })
    .unwrap();
    cache_contract(Arc::new(c)).await;
    // Keys really live in Redis under the prefix.
    let mut conn = common::require_redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.iter().all(|k| k.starts_with(&prefix)));
    assert!(keys.contains(&format!("{prefix}link:k2")), "{keys:?}");
}

#[tokio::test]
async fn memory_cache_stays_within_capacity() {
    let c = MemoryCache::new(100);
    for i in 0..1000 {
        c.put(
            &format!("k{i}"),
            &Cached::Missing,
            Duration::from_secs(60 + i),
        )
        .await
        .unwrap();
    }
    let mut present = 0;
    for i in 0..1000 {
        if c.get(&format!("k{i}")).await.unwrap().is_some() {
            present += 1;
        }
    }
    assert!(present <= 100, "{present}");
    assert_eq!(
        c.get("k999").await.unwrap(),
        Some(Cached::Missing),
        "newest entry kept"
    );
}

#[tokio::test]
async fn redis_cache_down_errors_quickly_instead_of_hanging() {
    // A port with nothing listening.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let c = RedisCache::new(RedisCacheConfig {
        url: format!("redis://127.0.0.1:{port}"),
        prefix: "x:".into(),
        timeout: Duration::from_millis(200),
    })
    .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), c.get("k")).await;
    assert!(matches!(r, Ok(Err(_))), "{r:?}");
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        c.put("k", &Cached::Missing, Duration::from_secs(5)),
    )
    .await;
    assert!(matches!(r, Ok(Err(_))), "{r:?}");
}
