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
    // invalidate_missing removes a negative entry and keeps a positive one
    // (the second invalidation after a create).
    c.invalidate_missing("k2").await.unwrap();
    assert_eq!(c.get("k2").await.unwrap(), None);
    let t3 = Cached::Found(target(5, "https://example.com/e", true));
    c.put("k5", &t3, long).await.unwrap();
    c.invalidate_missing("k5").await.unwrap();
    assert_eq!(c.get("k5").await.unwrap(), Some(t3));
    c.invalidate_missing("never-there").await.unwrap();
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
    assert!(keys.contains(&format!("{prefix}link:k5")), "{keys:?}");
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

// ---------------------------------------------------------------------------
// List totals (issue 8, D52): `total` comes from counts that triggers keep in
// the writing transaction, never from a COUNT(*) per request. These tests
// compare every total, for every filter combination, with a COUNT(*) made
// on a separate connection, across every kind of write.

/// Ground truth, counted straight from the tables.
struct Truth(sqlx::AnyPool);

impl Truth {
    async fn connect(url: &str) -> Self {
        sqlx::any::install_default_drivers();
        // The SQLite file may not exist yet (the migration test connects
        // before the store does).
        let url = if url.starts_with("sqlite:") {
            format!("{url}?mode=rwc")
        } else {
            url.to_owned()
        };
        Self(
            sqlx::AnyPool::connect(&url)
                .await
                .expect("ground-truth pool"),
        )
    }

    async fn ids(&self, sql: &'static str) -> Vec<i64> {
        sqlx::query_scalar(sql).fetch_all(&self.0).await.unwrap()
    }

    async fn event_types(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT DISTINCT event_type FROM events ORDER BY event_type")
            .fetch_all(&self.0)
            .await
            .unwrap()
    }

    async fn count(&self, table: &str, conds: &[(&str, Bind)]) -> i64 {
        let mut sql = format!("SELECT COUNT(*) FROM {table} WHERE 1 = 1");
        for (i, (col, _)) in conds.iter().enumerate() {
            sql.push_str(&format!(" AND {col} = ${}", i + 1));
        }
        let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
        for (_, b) in conds {
            q = match b {
                Bind::Int(v) => q.bind(*v),
                Bind::Bool(v) => q.bind(*v),
                Bind::Text(v) => q.bind(v.clone()),
            };
        }
        q.fetch_one(&self.0).await.unwrap()
    }

    async fn exec(&self, sql: &'static str) {
        sqlx::raw_sql(sql).execute(&self.0).await.unwrap();
    }
}

#[derive(Clone)]
enum Bind {
    Int(i64),
    Bool(bool),
    Text(String),
}

/// Every total the store reports, for every filter combination over the
/// users, links and event types present (plus ones that match nothing),
/// equals the COUNT(*). Returns how many combinations it checked.
async fn assert_totals_exact(s: &dyn LinkStore, truth: &Truth, when: &str) -> usize {
    let one = Page::new(1, 1);
    let mut checked = 0;
    let (_, users) = s.list_users(one).await.unwrap();
    assert_eq!(users, truth.count("users", &[]).await, "{when}: /users");
    checked += 1;

    let mut user_ids: Vec<Option<i64>> = truth
        .ids("SELECT id FROM users ORDER BY id")
        .await
        .into_iter()
        .map(Some)
        .collect();
    user_ids.extend([None, Some(987_654)]);
    let mut url_ids: Vec<Option<i64>> = truth
        .ids("SELECT id FROM urls ORDER BY id")
        .await
        .into_iter()
        .map(Some)
        .collect();
    url_ids.extend([None, Some(987_655)]);
    let mut types: Vec<Option<String>> = truth.event_types().await.into_iter().map(Some).collect();
    types.extend([None, Some("never_seen".into())]);

    for user_id in &user_ids {
        for is_active in [None, Some(true), Some(false)] {
            let f = LinkFilter {
                user_id: *user_id,
                is_active,
            };
            let (_, total) = s.list_links(&f, one).await.unwrap();
            let mut conds = Vec::new();
            if let Some(u) = user_id {
                conds.push(("user_id", Bind::Int(*u)));
            }
            if let Some(a) = is_active {
                conds.push(("is_active", Bind::Bool(a)));
            }
            assert_eq!(total, truth.count("urls", &conds).await, "{when}: {f:?}");
            checked += 1;
        }
    }
    for url_id in &url_ids {
        for user_id in &user_ids {
            for t in &types {
                let f = EventFilter {
                    url_id: *url_id,
                    user_id: *user_id,
                    event_type: t.clone(),
                };
                let (_, total) = s.list_events(&f, one).await.unwrap();
                let mut conds = Vec::new();
                if let Some(u) = url_id {
                    conds.push(("url_id", Bind::Int(*u)));
                }
                if let Some(u) = user_id {
                    conds.push(("user_id", Bind::Int(*u)));
                }
                if let Some(t) = t {
                    conds.push(("event_type", Bind::Text(t.clone())));
                }
                assert_eq!(total, truth.count("events", &conds).await, "{when}: {f:?}");
                checked += 1;
            }
        }
    }
    checked
}

/// Creates, updates (is_active flips both ways, changes that leave the
/// counts alone), soft deletes, bulk user creation, imports, client events,
/// click batches (with duplicates and unknown links) and user deletion, with
/// the totals checked after each step, before and after the deltas are
/// folded.
async fn totals_contract(s: Arc<dyn LinkStore>, truth: Truth) {
    let check = async |when: &str| {
        assert_totals_exact(s.as_ref(), &truth, when).await;
        s.compact_list_counts().await.unwrap();
        assert_totals_exact(s.as_ref(), &truth, &format!("{when}, folded")).await
    };
    check("empty").await;

    // Bulk user creation (POST /users/bulk is one create per row).
    let mut users = Vec::new();
    for n in ["ann", "ben", "cat", "dan"] {
        users.push(s.create_user(&new_user(n)).await.unwrap());
    }
    let mut links = Vec::new();
    for (i, u) in users.iter().take(3).enumerate() {
        for j in 0..=i {
            links.push(
                s.create_link(&new_link(u.id, &format!("t{i}x{j}")))
                    .await
                    .unwrap(),
            );
        }
    }
    // A failed create (taken code) changes no total.
    assert!(s.create_link(&new_link(users[0].id, "t0x0")).await.is_err());
    check("after creates").await;

    let flip = |v: bool| LinkPatch {
        is_active: Some(v),
        ..Default::default()
    };
    s.update_link(links[1].id, &flip(false)).await.unwrap();
    s.update_link(links[2].id, &flip(false)).await.unwrap();
    s.update_link(links[2].id, &flip(true)).await.unwrap();
    s.update_link(links[3].id, &flip(false)).await.unwrap();
    s.update_link(links[3].id, &flip(false)).await.unwrap();
    s.update_link(
        links[4].id,
        &LinkPatch {
            title: Some(Some("only the title".into())),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    check("after updates").await;

    s.deactivate_link(links[0].id, "user_requested")
        .await
        .unwrap();
    s.deactivate_link(links[0].id, "user_requested")
        .await
        .unwrap();
    s.deactivate_link(links[3].id, "user_requested")
        .await
        .unwrap();
    check("after deletes").await;

    let t = Utc.with_ymd_and_hms(2025, 3, 4, 5, 6, 7).unwrap();
    s.import(
        &[User {
            id: 500,
            username: "imp".into(),
            email: "imp@example.com".into(),
            created_at: t,
        }],
        &[
            Link {
                id: 600,
                user_id: 500,
                short_code: "imp600".into(),
                original_url: "https://example.com/600".into(),
                title: None,
                is_active: false,
                created_at: t,
                updated_at: t,
            },
            Link {
                id: 601,
                user_id: users[0].id,
                short_code: "imp601".into(),
                original_url: "https://example.com/601".into(),
                title: None,
                is_active: true,
                created_at: t,
                updated_at: t,
            },
        ],
        &[Event {
            id: 700,
            url_id: 600,
            user_id: 500,
            event_type: "imported".into(),
            timestamp: t,
            details: json!({}),
        }],
    )
    .await
    .unwrap();
    check("after import").await;

    for (url, user, kind) in [
        (links[0].id, users[3].id, "click"),
        (links[5].id, users[1].id, "share"),
        (600, users[2].id, "share"),
    ] {
        s.create_event(&NewEvent {
            url_id: url,
            user_id: user,
            event_type: kind.into(),
            details: json!({}),
        })
        .await
        .unwrap();
    }
    check("after client events").await;

    let click = |url_id: i64, user_id: i64, rid: &str| NewClick {
        url_id,
        user_id,
        request_id: rid.into(),
        details: json!({"request_id": rid}),
        at: Utc::now(),
    };
    let batch = vec![
        click(links[0].id, users[0].id, "c1"),
        click(links[0].id, users[0].id, "c2"),
        click(links[0].id, users[0].id, "c2"),
        click(links[5].id, users[2].id, "c3"),
        click(601, users[0].id, "c4"),
        click(987_001, users[0].id, "c5"),
        click(links[1].id, 987_002, "c6"),
    ];
    let n = s.record_clicks(&batch).await.unwrap();
    assert_eq!((n.recorded, n.duplicates, n.unknown_links), (4, 1, 2));
    let again = s.record_clicks(&batch).await.unwrap();
    assert_eq!((again.recorded, again.duplicates), (0, 5));
    assert_eq!(s.click_count(links[0].id).await.unwrap(), 2);
    // A batch larger than one INSERT chunk.
    let big: Vec<NewClick> = (0..1234)
        .map(|i| click(links[i % links.len()].id, users[i % 3].id, &format!("b{i}")))
        .collect();
    assert_eq!(s.record_clicks(&big).await.unwrap().recorded, 1234);
    check("after click batches").await;

    let dan = users[3].id;
    assert!(matches!(
        s.delete_user(users[0].id).await,
        Err(StoreError::InUse(_))
    ));
    let eve = s.create_user(&new_user("eve")).await.unwrap();
    s.delete_user(eve.id).await.unwrap();
    // dan owns no links but is referenced by an event: refused, no change.
    assert!(matches!(
        s.delete_user(dan).await,
        Err(StoreError::InUse(_))
    ));
    let checked = check("after user deletes").await;
    assert!(checked > 500, "{checked} combinations");

    // Paging past the end keeps the exact total and returns nothing.
    let (rows, total) = s
        .list_events(&EventFilter::default(), Page::new(10_000, 100))
        .await
        .unwrap();
    assert!(rows.is_empty());
    assert_eq!(total, truth.count("events", &[]).await);
    // Deep pages list the right rows (the deferred join).
    let (last, _) = s
        .list_events(
            &EventFilter {
                event_type: Some("click".into()),
                ..Default::default()
            },
            Page::new(13, 100),
        )
        .await
        .unwrap();
    let all_clicks = truth
        .ids("SELECT id FROM events WHERE event_type = 'click' ORDER BY id")
        .await;
    assert_eq!(
        last.iter().map(|e| e.id).collect::<Vec<_>>(),
        all_clicks[1200..].to_vec()
    );
    s.close().await;
}

#[tokio::test]
async fn list_totals_stay_exact_sqlite() {
    let cfg = sqlite_cfg();
    let s = store::connect(&cfg).await.unwrap();
    totals_contract(s, Truth::connect(&cfg.url).await).await;
}

#[tokio::test]
async fn list_totals_stay_exact_postgres() {
    let db = common::TestDb::new().await;
    let s = store::connect(&pg_cfg(&db)).await.unwrap();
    totals_contract(s, Truth::connect(&db.url).await).await;
}

/// Writers in parallel (creates for shared users, is_active flips, client
/// events, click batches) while folds run in a loop: no update is lost.
async fn concurrent_totals_contract(s: Arc<dyn LinkStore>, truth: Truth) {
    let a = s.create_user(&new_user("hot1")).await.unwrap();
    let b = s.create_user(&new_user("hot2")).await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let folder = {
        let (s, stop) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            let mut folds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                s.compact_list_counts().await.unwrap();
                folds += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            folds
        })
    };
    let mut tasks = Vec::new();
    for w in 0..8i64 {
        let s = s.clone();
        let owner = if w % 2 == 0 { a.id } else { b.id };
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let l = s
                    .create_link(&new_link(owner, &format!("w{w}n{i}")))
                    .await
                    .unwrap();
                if i % 3 == 0 {
                    s.deactivate_link(l.id, "user_requested").await.unwrap();
                }
                if i % 6 == 0 {
                    s.update_link(
                        l.id,
                        &LinkPatch {
                            is_active: Some(true),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                }
                let clicks: Vec<NewClick> = (0..5)
                    .map(|k| NewClick {
                        url_id: l.id,
                        user_id: owner,
                        request_id: format!("w{w}n{i}k{k}"),
                        details: json!({}),
                        at: Utc::now(),
                    })
                    .collect();
                s.record_clicks(&clicks).await.unwrap();
                s.create_event(&NewEvent {
                    url_id: l.id,
                    user_id: if owner == a.id { b.id } else { a.id },
                    event_type: "share".into(),
                    details: json!({}),
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(folder.await.unwrap() > 0);
    assert_eq!(truth.count("urls", &[]).await, 160);
    assert_totals_exact(s.as_ref(), &truth, "after concurrent writes").await;
    s.compact_list_counts().await.unwrap();
    assert_totals_exact(s.as_ref(), &truth, "after the last fold").await;
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_totals_exact_under_concurrent_writes_postgres() {
    let db = common::TestDb::new().await;
    let mut cfg = pg_cfg(&db);
    cfg.max_connections = 12;
    let s = store::connect(&cfg).await.unwrap();
    concurrent_totals_contract(s, Truth::connect(&db.url).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_totals_exact_under_concurrent_writes_sqlite() {
    let cfg = sqlite_cfg();
    let s = store::connect(&cfg).await.unwrap();
    concurrent_totals_contract(s, Truth::connect(&cfg.url).await).await;
}

/// `total` is read from the counts, not counted per request: skewing a
/// count shows through, and (PostgreSQL) `list_counts_rebuild()` repairs it.
async fn totals_come_from_counts(s: Arc<dyn LinkStore>, truth: &Truth) {
    let u = s.create_user(&new_user("skew")).await.unwrap();
    s.create_link(&new_link(u.id, "skew01")).await.unwrap();
    s.compact_list_counts().await.unwrap();
    let all = LinkFilter::default();
    let (_, before) = s.list_links(&all, Page::new(1, 1)).await.unwrap();
    assert_eq!(before, 1);
    truth
        .exec("UPDATE list_counts SET n = n + 1000 WHERE list = 'urls' AND user_id = 0 AND facet = 'active'")
        .await;
    let (_, skewed) = s.list_links(&all, Page::new(1, 1)).await.unwrap();
    assert_eq!(skewed, 1001, "total must come from list_counts");

    // The skip bound: with 2,001,001 rows claimed, a page that starts
    // within them but skips more than Page::MAX_SKIP rows is refused; the
    // last allowed offset runs; a page past the end answers empty at once.
    truth
        .exec("UPDATE list_counts SET n = n + 2000000 WHERE list = 'urls' AND user_id = 0 AND facet = 'active'")
        .await;
    let at_bound = Page::new(10_001, 100);
    assert_eq!(at_bound.offset(), Page::MAX_SKIP);
    let (rows, total) = s.list_links(&all, at_bound).await.unwrap();
    assert_eq!((rows.len(), total), (0, 2_001_001));
    let too_deep = s.list_links(&all, Page::new(10_002, 100)).await;
    assert!(
        matches!(too_deep, Err(StoreError::PageTooDeep)),
        "{too_deep:?}"
    );
    let (rows, total) = s.list_links(&all, Page::new(30_000, 100)).await.unwrap();
    assert_eq!((rows.len(), total), (0, 2_001_001));
}

#[tokio::test]
async fn totals_are_read_from_counts_sqlite() {
    let cfg = sqlite_cfg();
    let s = store::connect(&cfg).await.unwrap();
    totals_come_from_counts(s, &Truth::connect(&cfg.url).await).await;
}

#[tokio::test]
async fn totals_are_read_from_counts_and_rebuilt_postgres() {
    let db = common::TestDb::new().await;
    let s = store::connect(&pg_cfg(&db)).await.unwrap();
    let truth = Truth::connect(&db.url).await;
    totals_come_from_counts(s.clone(), &truth).await;
    // Writes leave deltas for the fold (not counters updated in place).
    let u = s.create_user(&new_user("delta")).await.unwrap();
    s.create_link(&new_link(u.id, "delta1")).await.unwrap();
    assert!(truth.count("list_count_deltas", &[]).await > 0);
    assert!(s.compact_list_counts().await.unwrap() > 0);
    assert_eq!(truth.count("list_count_deltas", &[]).await, 0);
    truth.exec("SELECT list_counts_rebuild()").await;
    assert_totals_exact(s.as_ref(), &truth, "after rebuild").await;
    s.close().await;
}

/// Applies only the migrations before the list counts (as a database of the
/// previous release has them), fills the tables through SQL, then lets the
/// store apply the rest: the backfill makes every total exact, and writes
/// afterwards keep them exact.
async fn migration_on_populated_database(cfg: StoreConfig, dir: &str, fill: &'static str) {
    let tmp = std::env::temp_dir().join(format!("shortlink-mig-{}", common::random_suffix()));
    std::fs::create_dir_all(&tmp).unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    for name in ["0001_init.sql", "0002_clicks.sql"] {
        std::fs::copy(src.join(name), tmp.join(name)).unwrap();
    }
    let truth = Truth::connect(&cfg.url).await;
    sqlx::migrate::Migrator::new(tmp.as_path())
        .await
        .unwrap()
        .run(&truth.0)
        .await
        .unwrap();
    truth.exec(fill).await;
    assert!(truth.count("events", &[]).await >= 300);

    let s = store::connect(&cfg).await.unwrap();
    let checked = assert_totals_exact(s.as_ref(), &truth, "right after the migration").await;
    assert!(checked > 1000, "{checked}");
    let (_, inactive) = s
        .list_links(
            &LinkFilter {
                user_id: None,
                is_active: Some(false),
            },
            Page::new(1, 5),
        )
        .await
        .unwrap();
    assert!(inactive > 0);
    let l = s.create_link(&new_link(3, "postmig")).await.unwrap();
    s.deactivate_link(l.id, "user_requested").await.unwrap();
    s.update_link(
        5,
        &LinkPatch {
            is_active: Some(false),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    s.compact_list_counts().await.unwrap();
    assert_totals_exact(s.as_ref(), &truth, "after writes on the migrated database").await;
    // Applying the migrations again changes nothing.
    s.close().await;
    let s = store::connect(&cfg).await.unwrap();
    assert_totals_exact(s.as_ref(), &truth, "after reconnecting").await;
    s.close().await;
}

#[tokio::test]
async fn migration_backfills_totals_on_populated_postgres() {
    let db = common::TestDb::new().await;
    migration_on_populated_database(
        pg_cfg(&db),
        "migrations/postgres",
        "INSERT INTO users (username, email, created_at) \
             SELECT 'u' || g, 'u' || g || '@example.com', now() FROM generate_series(1, 8) g; \
         INSERT INTO urls (user_id, short_code, original_url, is_active, created_at, updated_at) \
             SELECT 1 + g % 6, 'c' || g, 'https://example.com/' || g, g % 4 <> 0, now(), now() \
             FROM generate_series(1, 24) g; \
         INSERT INTO events (url_id, user_id, event_type, timestamp, details) \
             SELECT 1 + g % 24, 1 + g % 7, (ARRAY['created', 'click', 'updated', 'deleted'])[1 + g % 4], \
                    now(), '{}' FROM generate_series(1, 300) g;",
    )
    .await;
}

#[tokio::test]
async fn migration_backfills_totals_on_populated_sqlite() {
    migration_on_populated_database(
        sqlite_cfg(),
        "migrations/sqlite",
        "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 8) \
         INSERT INTO users (username, email, created_at) \
             SELECT 'u' || x, 'u' || x || '@example.com', '2025-01-01T00:00:00Z' FROM g; \
         WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 24) \
         INSERT INTO urls (user_id, short_code, original_url, is_active, created_at, updated_at) \
             SELECT 1 + x % 6, 'c' || x, 'https://example.com/' || x, x % 4 <> 0, \
                    '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z' FROM g; \
         WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 300) \
         INSERT INTO events (url_id, user_id, event_type, timestamp, details) \
             SELECT 1 + x % 24, 1 + x % 7, \
                    CASE x % 4 WHEN 0 THEN 'created' WHEN 1 THEN 'click' WHEN 2 THEN 'updated' ELSE 'deleted' END, \
                    '2025-01-01T00:00:00Z', '{}' FROM g;",
    )
    .await;
}
