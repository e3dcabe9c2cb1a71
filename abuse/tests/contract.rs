//! The contract every `AbuseBackend` keeps, run against both: memory
//! always, Redis on `TEST_REDIS_URL` (default 127.0.0.1:6379) under a
//! random key prefix. A missing Redis fails with instructions.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use shortlink_abuse::{AbuseStore, Ban, BanType, Change, Limits, StoreOptions};
use shortlink_runtime::shutdown::Shutdown;

fn defaults() -> Limits {
    Limits {
        rps: 7.0,
        burst: 11.0,
        ..Limits::default()
    }
}

async fn memory_store() -> Arc<AbuseStore> {
    AbuseStore::new(StoreOptions {
        redis_url: None,
        database_url: None,
        prefix: "unused:",
        defaults: defaults(),
        max_clients: 10_000,
    })
    .await
    .unwrap()
}

async fn redis_store_on(prefix: &str) -> Arc<AbuseStore> {
    shortlink_testkit::require_redis().await;
    AbuseStore::new(StoreOptions {
        redis_url: Some(&shortlink_testkit::redis_url()),
        database_url: None,
        prefix,
        defaults: defaults(),
        max_clients: 10_000,
    })
    .await
    .unwrap()
}

fn random_prefix() -> String {
    format!("t:abuse:{}:", shortlink_testkit::random_suffix())
}

async fn redis_store() -> Arc<AbuseStore> {
    redis_store_on(&random_prefix()).await
}

/// Runs the named contract function against both backends.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod on_memory {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::memory_store().await).await;
            })*
        }
        mod on_redis {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::redis_store().await).await;
            })*
        }
    };
}

contract!(
    bans_are_stored_listed_and_lifted,
    expired_bans_are_not_in_force_and_are_dropped_from_the_list,
    strikes_count_within_a_window_and_clear,
    strikes_reset_as_they_cross_the_ban_threshold,
    hour_bans_accumulate,
    budgets_allow_the_burst_then_refuse_with_a_wait,
    raised_limits_reach_a_spent_budget_at_once,
    limits_default_until_stored_and_enforcement_is_separate,
    reported_limits_prefer_stored_then_announced_then_defaults,
    changes_reach_subscribers_in_this_process,
);

fn ban(key: &str, secs: Option<i64>) -> Ban {
    let now = Utc::now();
    Ban {
        ip: key.into(),
        ban_type: if secs.is_some() {
            BanType::Temporary
        } else {
            BanType::Permanent
        },
        reason: "test".into(),
        strikes: 3,
        hour_bans: 1,
        issued_by: "contract".into(),
        created_at: now,
        expires_at: secs.map(|s| now + chrono::Duration::seconds(s)),
    }
}

async fn bans_are_stored_listed_and_lifted(store: Arc<AbuseStore>) {
    assert_eq!(store.ban("203.0.113.1").await.unwrap(), None);
    let a = ban("203.0.113.1", Some(600));
    let b = ban("2001:db8:1:2::/64", None);
    store.put_ban(&a).await.unwrap();
    store.put_ban(&b).await.unwrap();
    assert_eq!(store.ban("203.0.113.1").await.unwrap(), Some(a.clone()));
    assert_eq!(
        store.ban("2001:db8:1:2::/64").await.unwrap(),
        Some(b.clone())
    );
    let mut keys: Vec<String> = store
        .bans()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.ip)
        .collect();
    keys.sort();
    assert_eq!(keys, ["2001:db8:1:2::/64", "203.0.113.1"]);
    // Replacing keeps one entry.
    let a2 = Ban {
        reason: "again".into(),
        ..a.clone()
    };
    store.put_ban(&a2).await.unwrap();
    assert_eq!(
        store.ban("203.0.113.1").await.unwrap().unwrap().reason,
        "again"
    );
    assert_eq!(store.bans().await.unwrap().len(), 2);
    // Lifting clears the strikes too and says whether a ban was in force.
    store
        .strike("203.0.113.1", Duration::from_secs(60), 100)
        .await
        .unwrap();
    assert!(store.lift_ban("203.0.113.1").await.unwrap());
    assert!(!store.lift_ban("203.0.113.1").await.unwrap());
    assert_eq!(store.ban("203.0.113.1").await.unwrap(), None);
    assert_eq!(store.strikes("203.0.113.1").await.unwrap(), 0);
    assert_eq!(store.bans().await.unwrap().len(), 1);
}

async fn expired_bans_are_not_in_force_and_are_dropped_from_the_list(store: Arc<AbuseStore>) {
    store.put_ban(&ban("198.51.100.1", Some(-5))).await.unwrap();
    store
        .put_ban(&ban("198.51.100.2", Some(600)))
        .await
        .unwrap();
    assert_eq!(store.ban("198.51.100.1").await.unwrap(), None);
    let listed: Vec<String> = store
        .bans()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.ip)
        .collect();
    assert_eq!(listed, ["198.51.100.2"]);
    assert!(!store.lift_ban("198.51.100.1").await.unwrap());
}

async fn strikes_count_within_a_window_and_clear(store: Arc<AbuseStore>) {
    let w = Duration::from_secs(600);
    assert_eq!(store.strikes("k1").await.unwrap(), 0);
    for want in 1..=3 {
        assert_eq!(store.strike("k1", w, 100).await.unwrap(), want);
    }
    assert_eq!(store.strikes("k1").await.unwrap(), 3);
    assert_eq!(
        store.strike("k2", w, 100).await.unwrap(),
        1,
        "keys are separate"
    );
    store.clear_strikes("k1").await.unwrap();
    assert_eq!(store.strikes("k1").await.unwrap(), 0);
    assert_eq!(store.strike("k1", w, 100).await.unwrap(), 1);
    // The window starts at the first strike: once over, counting restarts.
    let short = Duration::from_secs(1);
    assert_eq!(store.strike("k3", short, 100).await.unwrap(), 1);
    assert_eq!(store.strike("k3", short, 100).await.unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(store.strike("k3", short, 100).await.unwrap(), 1);
}

/// The crossing of the threshold is seen once: the count that reaches it
/// (or passes it, after the threshold was lowered) resets the counter.
async fn strikes_reset_as_they_cross_the_ban_threshold(store: Arc<AbuseStore>) {
    let w = Duration::from_secs(600);
    assert_eq!(store.strike("t1", w, 3).await.unwrap(), 1);
    assert_eq!(store.strike("t1", w, 3).await.unwrap(), 2);
    assert_eq!(store.strike("t1", w, 3).await.unwrap(), 3);
    assert_eq!(store.strikes("t1").await.unwrap(), 0);
    assert_eq!(store.strike("t1", w, 3).await.unwrap(), 1);
    for _ in 0..4 {
        store.strike("t2", w, 100).await.unwrap();
    }
    assert_eq!(
        store.strike("t2", w, 3).await.unwrap(),
        5,
        "past a lowered threshold"
    );
    assert_eq!(store.strikes("t2").await.unwrap(), 0);
}

async fn hour_bans_accumulate(store: Arc<AbuseStore>) {
    assert_eq!(store.add_hour_ban("h1").await.unwrap(), 1);
    assert_eq!(store.add_hour_ban("h1").await.unwrap(), 2);
    assert_eq!(store.add_hour_ban("h2").await.unwrap(), 1);
}

async fn budgets_allow_the_burst_then_refuse_with_a_wait(store: Arc<AbuseStore>) {
    let l = Limits {
        rps: 0.01,
        burst: 3.0,
        ..Limits::default()
    };
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let t = store.take("b1", &l).await.unwrap();
        assert!(t.allowed, "{t:?}");
        remaining.push(t.remaining);
    }
    assert_eq!(remaining, [2, 1, 0]);
    let t = store.take("b1", &l).await.unwrap();
    assert!(!t.allowed);
    assert_eq!(t.remaining, 0);
    // One request per 100 s: the wait is about 100 s, never 0.
    assert!((90..=100).contains(&t.retry_after_s), "{t:?}");
    assert!(
        store.take("b2", &l).await.unwrap().allowed,
        "keys are separate"
    );
    // A fast rate refills within the test.
    let fast = Limits {
        rps: 20.0,
        burst: 1.0,
        ..Limits::default()
    };
    assert!(store.take("b3", &fast).await.unwrap().allowed);
    assert!(!store.take("b3", &fast).await.unwrap().allowed);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(store.take("b3", &fast).await.unwrap().allowed);
}

/// A budget spent under a slow rate is carried over to raised limits as
/// a token bucket would be: empty, then refilled at the new rate (before, a
/// time-based state computed under 1 request per 100 s kept the client
/// refused for minutes after the limits were raised).
async fn raised_limits_reach_a_spent_budget_at_once(store: Arc<AbuseStore>) {
    let slow = Limits {
        rps: 0.01,
        burst: 2.0,
        ..Limits::default()
    };
    assert!(store.take("r1", &slow).await.unwrap().allowed);
    assert!(store.take("r1", &slow).await.unwrap().allowed);
    assert!(!store.take("r1", &slow).await.unwrap().allowed);
    let fast = Limits {
        rps: 1000.0,
        burst: 1000.0,
        ..Limits::default()
    };
    store.take("r1", &fast).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = store.take("r1", &fast).await.unwrap();
    assert!(t.allowed, "{t:?}");
    // Back to the slow limits: what is left is capped at the burst.
    let t = store.take("r1", &slow).await.unwrap();
    assert!(t.remaining <= 1, "{t:?}");
}

async fn limits_default_until_stored_and_enforcement_is_separate(store: Arc<AbuseStore>) {
    assert_eq!(store.limits().await.unwrap(), defaults());
    // Enforcement alone stores no limits: the defaults stay in force.
    store.set_enforce(false).await.unwrap();
    assert_eq!(
        store.limits().await.unwrap(),
        Limits {
            enforce: false,
            ..defaults()
        }
    );
    let set = Limits {
        rps: 2.0,
        burst: 5.0,
        ban_strikes: 4,
        enforce: true,
        ..Limits::default()
    };
    store.put_limits(&set).await.unwrap();
    assert_eq!(store.limits().await.unwrap(), set);
    // Switching enforcement keeps every stored limit.
    store.set_enforce(false).await.unwrap();
    assert_eq!(
        store.limits().await.unwrap(),
        Limits {
            enforce: false,
            ..set.clone()
        }
    );
    store.set_enforce(true).await.unwrap();
    assert_eq!(store.limits().await.unwrap(), set);
}

async fn reported_limits_prefer_stored_then_announced_then_defaults(store: Arc<AbuseStore>) {
    assert_eq!(store.reported_limits().await.unwrap(), defaults());
    let edge = Limits {
        rps: 3.0,
        burst: 4.0,
        ..Limits::default()
    };
    store.announce("edge-1", &edge).await.unwrap();
    assert_eq!(store.reported_limits().await.unwrap(), edge);
    store.set_enforce(false).await.unwrap();
    assert_eq!(
        store.reported_limits().await.unwrap(),
        Limits {
            enforce: false,
            ..edge.clone()
        }
    );
    let set = Limits {
        rps: 9.0,
        burst: 9.0,
        ..Limits::default()
    };
    store.put_limits(&set).await.unwrap();
    assert_eq!(store.reported_limits().await.unwrap(), set);
}

async fn changes_reach_subscribers_in_this_process(store: Arc<AbuseStore>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = Shutdown::new();
    store.subscribe(shutdown.clone(), move |c| {
        let _ = tx.send(c);
    });
    store.put_ban(&ban("192.0.2.9", Some(60))).await.unwrap();
    store.set_enforce(true).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let c = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("change delivered")
            .unwrap();
        // Through Redis a change may also arrive from pub/sub.
        if !seen.contains(&c) {
            seen.push(c);
        }
    }
    assert!(seen.contains(&Change::Ban("192.0.2.9".into())));
    assert!(seen.contains(&Change::Limits));
    shutdown.trigger();
}

/// Two processes on one Redis prefix spend one budget: the edge pair does
/// not double a client's burst.
#[tokio::test]
async fn redis_budgets_are_shared_between_stores() {
    let prefix = random_prefix();
    let (a, b) = (redis_store_on(&prefix).await, redis_store_on(&prefix).await);
    let l = Limits {
        rps: 0.01,
        burst: 4.0,
        ..Limits::default()
    };
    let mut allowed = 0;
    for i in 0..8 {
        let s = if i % 2 == 0 { &a } else { &b };
        if s.take("shared", &l).await.unwrap().allowed {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 4);
}

/// A ban or limits change made through one store reaches another store's
/// subscriber through pub/sub.
#[tokio::test]
async fn redis_changes_reach_other_processes() {
    let prefix = random_prefix();
    let (a, b) = (redis_store_on(&prefix).await, redis_store_on(&prefix).await);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = Shutdown::new();
    b.subscribe(shutdown.clone(), move |c| {
        let _ = tx.send(c);
    });
    // The subscription is made in the background; repeat until it hears.
    let heard = shortlink_testkit::eventually(Duration::from_secs(5), async || {
        a.put_ban(&ban("192.0.2.10", Some(60))).await.unwrap();
        matches!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv()).await,
            Ok(Some(Change::Ban(k))) if k == "192.0.2.10"
        )
    })
    .await;
    assert!(heard, "store B never heard of A's ban");
    shutdown.trigger();
}

/// Bans persisted in PostgreSQL come back into a backend that lost them:
/// a fresh memory store (a restarted edge) and a wiped Redis prefix.
#[tokio::test]
async fn persisted_bans_are_restored_into_either_backend() {
    let db = shortlink_testkit::TestDb::new().await;
    let prefix = random_prefix();
    let mk_redis = || async {
        AbuseStore::new(StoreOptions {
            redis_url: Some(&shortlink_testkit::redis_url()),
            database_url: Some(&db.url),
            prefix: &prefix,
            defaults: defaults(),
            max_clients: 100,
        })
        .await
        .unwrap()
    };
    let writer = mk_redis().await;
    writer
        .put_ban(&ban("2001:db8:9:9::/64", None))
        .await
        .unwrap();
    writer
        .put_ban(&ban("203.0.113.99", Some(-1)))
        .await
        .unwrap();

    let mem = AbuseStore::new(StoreOptions {
        redis_url: None,
        database_url: Some(&db.url),
        prefix: "unused:",
        defaults: defaults(),
        max_clients: 100,
    })
    .await
    .unwrap();
    assert_eq!(
        mem.restore_from_pg().await.unwrap(),
        1,
        "expired bans stay out"
    );
    assert!(mem.ban("2001:db8:9:9::/64").await.unwrap().is_some());

    // Redis loses the prefix (as a restart would): the marker is gone, so
    // the next check restores; with the marker back it costs nothing.
    let mut conn = shortlink_testkit::require_redis().await;
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}bans"))
        .arg(format!("{prefix}restored"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let reader = mk_redis().await;
    assert!(reader.ban("2001:db8:9:9::/64").await.unwrap().is_none());
    assert_eq!(reader.restore_if_lost().await.unwrap(), 1);
    assert!(reader.ban("2001:db8:9:9::/64").await.unwrap().is_some());
    assert_eq!(reader.restore_if_lost().await.unwrap(), 0);
    // Lifting deletes the persisted copy too.
    reader.lift_ban("2001:db8:9:9::/64").await.unwrap();
    let fresh = AbuseStore::new(StoreOptions {
        redis_url: None,
        database_url: Some(&db.url),
        prefix: "unused:",
        defaults: defaults(),
        max_clients: 100,
    })
    .await
    .unwrap();
    assert_eq!(fresh.restore_from_pg().await.unwrap(), 0);
}

/// A flood of distinct clients costs bounded memory in the memory backend.
#[tokio::test]
async fn memory_backend_maps_are_bounded() {
    let backend = shortlink_abuse::memory::MemoryBackend::new(100);
    let store = AbuseStore::with_backend(backend, None, defaults())
        .await
        .unwrap();
    let l = Limits {
        rps: 0.01,
        burst: 2.0,
        ..Limits::default()
    };
    for i in 0..5_000 {
        let k = format!("c{i}");
        store.take(&k, &l).await.unwrap();
        store
            .strike(&k, Duration::from_secs(600), 100)
            .await
            .unwrap();
        store.add_hour_ban(&k).await.unwrap();
        store.put_ban(&ban(&k, Some(600))).await.unwrap();
    }
    assert!(store.bans().await.unwrap().len() <= 100);
    let strikes_kept = futures_count(&store).await;
    assert!(strikes_kept <= 100, "{strikes_kept} strike counters kept");
    // The newest clients are the ones kept.
    assert_eq!(store.strikes("c4999").await.unwrap(), 1);
}

async fn futures_count(store: &AbuseStore) -> usize {
    let mut n = 0;
    for i in 0..5_000 {
        if store.strikes(&format!("c{i}")).await.unwrap() > 0 {
            n += 1;
        }
    }
    n
}
