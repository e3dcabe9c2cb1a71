//! Abuse controls that cannot be turned against us, through real
//! processes: `shortlink links`, `shortlink edge` (one or two, sharing
//! Redis under a random key prefix) and `shortlink admin`, driven over HTTP
//! on loopback and with grpcurl. Clients are told apart by
//! `X-Forwarded-For` from the trusted proxy 127.0.0.1 (the test itself).

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use shortlink_testkit::{HttpResponse, TestDb, eventually, http, redis_url, require_redis};
use support::{EdgeProc, Replica, grpcurl, links_env};

fn prefix() -> String {
    format!("t:{}:", shortlink_testkit::random_suffix())
}

/// An edge environment on shared Redis state under `prefix`, trusting the
/// test as a proxy, with `burst` requests per client and a refill far
/// slower than the test.
fn edge_env(prefix: &str, burst: u32) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", redis_url()),
        ("ABUSE_KEY_PREFIX", prefix.to_owned()),
        ("TRUSTED_PROXIES", "127.0.0.1/32".into()),
        ("RATE_LIMIT_RPS", "0.01".into()),
        ("RATE_LIMIT_BURST", burst.to_string()),
    ]
}

async fn get_as(edge: SocketAddr, xff: &str) -> HttpResponse {
    http(edge, "GET", "/urls", &[("X-Forwarded-For", xff)], b"").await
}

struct Admin {
    _proc: support::Proc,
    grpc: u16,
    bearer: String,
}

impl Admin {
    async fn start(prefix: &str, extra: &[(&'static str, String)]) -> Self {
        let (grpc, httpp) = (
            shortlink_testkit::free_port(),
            shortlink_testkit::free_port(),
        );
        let token = format!("test-token-{}", shortlink_testkit::random_suffix());
        let mut env = vec![
            ("ADMIN_GRPC_ADDR", format!("127.0.0.1:{grpc}")),
            ("ADMIN_HTTP_ADDR", format!("127.0.0.1:{httpp}")),
            ("ADMIN_TOKEN", token.clone()),
            ("REDIS_URL", redis_url()),
            ("ABUSE_KEY_PREFIX", prefix.to_owned()),
        ];
        env.extend_from_slice(extra);
        let mut p = support::spawn_raw(&["admin"], &env);
        support::wait_http_ok(
            &mut p,
            format!("127.0.0.1:{httpp}").parse().unwrap(),
            "/ready",
        )
        .await;
        Self {
            _proc: p,
            grpc,
            bearer: format!("authorization: Bearer {token}"),
        }
    }

    /// Calls `method` with `data`: Ok(JSON) or Err(grpcurl's stderr).
    fn call(&self, method: &str, data: Value) -> Result<Value, String> {
        let out = grpcurl(
            self.grpc,
            &["-H", &self.bearer, "-d", &data.to_string()],
            &[&format!("shortlink.v1.AdminService/{method}")],
        );
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).expect("grpcurl prints JSON"))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn ok(&self, method: &str, data: Value) -> Value {
        self.call(method, data)
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }
}

async fn bans_in_redis(prefix: &str) -> Vec<String> {
    let mut conn = require_redis().await;
    redis::cmd("HKEYS")
        .arg(format!("{prefix}bans"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Before: one byte >= 0x80 in `X-Forwarded-For` made the header unreadable,
/// the trusted proxy became the client, collected the strikes and was
/// banned, and everyone behind it with it.
#[tokio::test]
async fn a_trusted_proxy_forwarding_unreadable_bytes_is_never_banned() {
    require_redis().await;
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &[])).await;
    let prefix = prefix();
    let edge = EdgeProc::start(&[replica.grpc], &edge_env(&prefix, 3)).await;

    // 3 fit the budget; then 10 strikes would ban (the default
    // ban_strikes); 30 is well past that.
    let mut statuses = Vec::new();
    for i in 0..30 {
        let bad = if i % 2 == 0 {
            "203.0.113.5\u{e9}"
        } else {
            "198.51.100.1, \u{ff}garbage"
        };
        statuses.push(get_as(edge.http, bad).await.status);
    }
    assert!(
        statuses.contains(&429),
        "the unparseable identity is limited: {statuses:?}"
    );
    assert!(!statuses.contains(&403), "nobody is banned: {statuses:?}");

    // The proxy's own requests and the clients behind it are served.
    assert_eq!(http(edge.http, "GET", "/urls", &[], b"").await.status, 200);
    for c in ["198.51.100.20", "198.51.100.21"] {
        assert_eq!(get_as(edge.http, c).await.status, 200);
    }
    assert_eq!(bans_in_redis(&prefix).await, Vec::<String>::new());
    assert!(
        edge.metric("shortlink_client_identity_unparseable_total")
            .await
            >= 30.0
    );

    // Several header lines are one list, read right to left: the client is
    // in the last line (before: only the first line was read).
    for _ in 0..3 {
        assert_eq!(get_as(edge.http, "198.51.100.90").await.status, 200);
    }
    let two_lines = async |first: &str, last: &str| {
        http(
            edge.http,
            "GET",
            "/urls",
            &[("X-Forwarded-For", first), ("X-Forwarded-For", last)],
            b"",
        )
        .await
    };
    assert_eq!(
        two_lines("198.51.100.91", "198.51.100.90").await.status,
        429,
        "the last line names the client whose budget is spent"
    );
    assert_eq!(
        two_lines("198.51.100.90", "198.51.100.92").await.status,
        200
    );
}

/// Before: each edge kept its own token buckets, so a client spreading
/// its requests over the edge pair got twice the burst.
#[tokio::test]
async fn two_edges_share_one_budget_per_client() {
    require_redis().await;
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &[])).await;
    let prefix = prefix();
    let env = edge_env(&prefix, 4);
    let a = EdgeProc::start(&[replica.grpc], &env).await;
    let b = EdgeProc::start(&[replica.grpc], &env).await;
    let client = "198.51.100.30";
    for _ in 0..3 {
        assert_eq!(get_as(a.http, client).await.status, 200);
    }
    assert_eq!(get_as(b.http, client).await.status, 200, "the 4th of 4");
    let r = get_as(b.http, client).await;
    assert_eq!(r.status, 429, "edge B refuses the 5th, not the 9th: {r:?}");
    assert_eq!(r.header("x-ratelimit-limit"), Some("4"));
    assert_eq!(get_as(a.http, client).await.status, 429);
    // Other clients have their own budget, on either edge.
    assert_eq!(get_as(b.http, "198.51.100.31").await.status, 200);
    assert_eq!(
        a.metric("shortlink_rate_limit_local_fallback_total").await,
        0.0,
        "Redis answered every time"
    );
}

/// Before: `SetEnforcement` read the limits in force *in admin* (its own
/// `RATE_LIMIT_*` defaults when none were stored) and stored them, so
/// switching enforcement replaced the limits the edges ran with; and
/// `GetLimits` reported admin's defaults, not the edges' limits.
#[tokio::test]
async fn set_enforcement_keeps_the_limits_the_edges_run_with() {
    require_redis().await;
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &[])).await;
    let prefix = prefix();
    let edge = EdgeProc::start(&[replica.grpc], &edge_env(&prefix, 3)).await;
    // Admin runs with its built-in defaults (burst 100).
    let admin = Admin::start(&prefix, &[]).await;

    // GetLimits reports what the edge runs with.
    let got = admin.ok("GetLimits", json!({}));
    assert_eq!(got["limits"]["burst"], 3.0, "{got}");
    assert_eq!(got["limits"]["rps"], 0.01, "{got}");

    // A banned client shows when each switch has reached the edge.
    admin.ok(
        "BanIp",
        json!({"ip": "198.51.100.99", "reason": "marker", "duration_s": 0}),
    );
    let state_is = |want: u16| async move {
        eventually(Duration::from_secs(3), async || {
            get_as(edge.http, "198.51.100.99").await.status == want
        })
        .await
    };
    assert!(state_is(403).await, "ban reached the edge");
    let r = admin.ok("SetEnforcement", json!({"enforce": false}));
    assert_eq!(r["limits"]["burst"], 3.0, "{r}");
    assert!(state_is(200).await, "enforcement off reached the edge");
    let r = admin.ok("SetEnforcement", json!({"enforce": true}));
    assert_eq!(r["limits"]["burst"], 3.0, "{r}");
    assert_eq!(r["limits"]["enforce"], true, "{r}");
    assert!(state_is(403).await, "enforcement on reached the edge");

    // The edge still limits at 3, not at admin's 100.
    for _ in 0..3 {
        assert_eq!(get_as(edge.http, "198.51.100.50").await.status, 200);
    }
    let r = get_as(edge.http, "198.51.100.50").await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));

    // Limits set through SetLimits survive enforcement switches too.
    let set = json!({"rps": 0.02, "burst": 5, "strike_window_s": 600, "warn_strikes": 2,
                     "ban_strikes": 6, "ban_duration_s": 1800, "permanent_after": 2, "enforce": true});
    admin.ok("SetLimits", json!({"limits": set}));
    admin.ok("SetEnforcement", json!({"enforce": false}));
    admin.ok("SetEnforcement", json!({"enforce": true}));
    let got = admin.ok("GetLimits", json!({}));
    assert_eq!(got["limits"]["burst"], 5.0, "{got}");
    assert_eq!(got["limits"]["rps"], 0.02, "{got}");
    assert_eq!(got["limits"]["banStrikes"], 6, "{got}");
    assert_eq!(got["limits"]["banDurationS"], "1800", "{got}");
}

/// Before: limits and bans were per address, so a client rotating through
/// the 2^64 addresses of its IPv6 /64 was never limited nor banned; and an
/// IPv4-mapped spelling was another client.
#[tokio::test]
async fn ipv6_clients_rotating_inside_a_64_are_limited_and_banned_as_one() {
    require_redis().await;
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &[])).await;
    let prefix = prefix();
    let edge = EdgeProc::start(&[replica.grpc], &edge_env(&prefix, 2)).await;

    // Burst 2, then the default 10 strikes: the 10th strike (12th
    // request) is answered with the ban.
    let mut statuses = Vec::new();
    for i in 1..=12u32 {
        let addr = format!("2001:db8:7:7:{i:x}::{:x}", i * 4099);
        statuses.push(get_as(edge.http, &addr).await.status);
    }
    assert_eq!(&statuses[..2], [200, 200], "{statuses:?}");
    assert!(statuses[2..11].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(statuses[11], 403, "{statuses:?}");
    assert_eq!(bans_in_redis(&prefix).await, ["2001:db8:7:7::/64"]);
    assert_eq!(get_as(edge.http, "2001:db8:7:7:ffff::1").await.status, 403);
    assert_eq!(
        get_as(edge.http, "2001:db8:7:8::1").await.status,
        200,
        "the next /64"
    );

    // Mapped and plain IPv4 spend one budget.
    assert_eq!(get_as(edge.http, "::ffff:198.51.100.40").await.status, 200);
    assert_eq!(get_as(edge.http, "198.51.100.40").await.status, 200);
    assert_eq!(get_as(edge.http, "::ffff:198.51.100.40").await.status, 429);

    // Admin: one IPv6 address bans its /64; either IPv4 spelling names the
    // same client for ban, lookup and unban.
    let admin = Admin::start(&prefix, &[]).await;
    let r = admin.ok(
        "BanIp",
        json!({"ip": "2001:db8:5:6::9", "reason": "scraping", "duration_s": 600}),
    );
    assert_eq!(r["ban"]["ip"], "2001:db8:5:6::/64");
    let r = admin.ok(
        "BanIp",
        json!({"ip": "::ffff:198.51.100.41", "duration_s": 0}),
    );
    assert_eq!(r["ban"]["ip"], "198.51.100.41");
    for (client, want) in [
        ("2001:db8:5:6:abcd::1", 403),
        ("198.51.100.41", 403),
        ("::ffff:198.51.100.41", 403),
    ] {
        let ok = eventually(Duration::from_secs(3), async || {
            get_as(edge.http, client).await.status == want
        })
        .await;
        assert!(ok, "{client} should get {want}");
    }
    let r = admin.ok("GetBan", json!({"ip": "198.51.100.41"}));
    assert_eq!(r["ban"]["banType"], "permanent", "{r}");
    let r = admin.ok("GetBan", json!({"ip": "2001:db8:5:6::1"}));
    assert_eq!(r["ban"]["ip"], "2001:db8:5:6::/64", "{r}");
    let r = admin.ok("UnbanIp", json!({"ip": "::ffff:198.51.100.41"}));
    assert_eq!(r["wasBanned"], true, "{r}");
    let ok = eventually(Duration::from_secs(3), async || {
        get_as(edge.http, "198.51.100.41").await.status == 200
    })
    .await;
    assert!(ok, "unban reached the edge");
    let err = admin
        .call("BanIp", json!({"ip": "2001:db8::/48"}))
        .expect_err("a network other than the keyed /64 is refused");
    assert!(
        err.contains("InvalidArgument") && err.contains("/64"),
        "{err}"
    );
}

/// Before: a listener on `[::]` saw IPv4 clients as `::ffff:a.b.c.d`, which
/// no IPv4 entry of `TRUSTED_PROXIES` matched: the proxy's forwarded
/// clients were ignored and all of them shared (and lost) one budget.
#[tokio::test]
async fn ipv4_mapped_peers_match_ipv4_trusted_proxies() {
    require_redis().await;
    let db = TestDb::new().await;
    let replica = Replica::start(&links_env(&db, &[])).await;
    let port = shortlink_testkit::free_port();
    let dir = std::env::temp_dir().join(format!(
        "shortlink-edge-{}",
        shortlink_testkit::random_suffix()
    ));
    let mut env = edge_env(&prefix(), 2);
    env.extend([
        ("EDGE_HTTP_ADDR", format!("[::]:{port}")),
        ("EDGE_HTTPS_ADDR", "off".into()),
        (
            "EDGE_METRICS_ADDR",
            format!("127.0.0.1:{}", shortlink_testkit::free_port()),
        ),
        ("LINKS_UPSTREAMS", replica.grpc.to_string()),
        (
            "EDGE_UPGRADE_SOCK",
            dir.join("up.sock").display().to_string(),
        ),
        ("EDGE_HEALTH_INTERVAL_MS", "200".into()),
    ]);
    let mut p = support::spawn_raw(&["edge"], &env);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    support::wait_http_ok(&mut p, addr, "/ready").await;
    for _ in 0..2 {
        assert_eq!(get_as(addr, "198.51.100.60").await.status, 200);
    }
    assert_eq!(get_as(addr, "198.51.100.60").await.status, 429);
    assert_eq!(
        get_as(addr, "198.51.100.61").await.status,
        200,
        "another client behind the proxy has its own budget"
    );
}

/// Before: admin accepted any positive rate and any ban duration; a tiny
/// rate gave an infinite refill time and a huge duration overflowed the
/// ban's end, both panicking later in an edge, in a request.
#[tokio::test]
async fn admin_refuses_values_that_would_overflow_later() {
    require_redis().await;
    let prefix = prefix();
    let admin = Admin::start(&prefix, &[]).await;
    let base = json!({"rps": 5, "burst": 10, "strike_window_s": 600, "warn_strikes": 2,
                      "ban_strikes": 6, "ban_duration_s": 1800, "permanent_after": 2, "enforce": true});
    admin.ok("SetLimits", json!({"limits": base}));
    for (field, value) in [
        ("rps", json!(1e-300)),
        ("rps", json!("NaN")),
        ("rps", json!("Infinity")),
        ("burst", json!(1e300)),
        ("ban_duration_s", json!("9223372036854775807")),
        ("ban_duration_s", json!("18446744073709551615")),
        ("strike_window_s", json!("18446744073709551615")),
    ] {
        let mut l = base.clone();
        l[field] = value.clone();
        let err = admin
            .call("SetLimits", json!({ "limits": l }))
            .expect_err("refused");
        assert!(err.contains("InvalidArgument"), "{field}={value}: {err}");
        assert!(err.contains(field), "{field}={value}: {err}");
    }
    let err = admin
        .call(
            "BanIp",
            json!({"ip": "198.51.100.70", "duration_s": "18446744073709551615"}),
        )
        .expect_err("refused");
    assert!(
        err.contains("InvalidArgument") && err.contains("duration_s"),
        "{err}"
    );
    // Nothing was changed.
    let got = admin.ok("GetLimits", json!({}));
    assert_eq!(got["limits"]["rps"], 5.0);
    assert_eq!(got["limits"]["banDurationS"], "1800");
    assert_eq!(bans_in_redis(&prefix).await, Vec::<String>::new());
}

/// The same bounds apply to the edge's and admin's flags: a clear error
/// and exit code 64 at start, never a panic in a request.
#[tokio::test]
async fn out_of_range_limit_flags_stop_the_start_with_exit_64() {
    /// Subcommand, environment, what the message must name.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        ("edge", &[("RATE_LIMIT_RPS", "1e-300")], "RATE_LIMIT_RPS"),
        ("edge", &[("RATE_LIMIT_RPS", "NaN")], "RATE_LIMIT_RPS"),
        ("edge", &[("RATE_LIMIT_BURST", "1e300")], "RATE_LIMIT_BURST"),
        ("edge", &[("CLIENT_PREFIX_V6", "8")], "CLIENT_PREFIX_V6"),
        ("admin", &[("RATE_LIMIT_RPS", "1e-300")], "RATE_LIMIT_RPS"),
    ];
    for (cmd, env, needle) in cases {
        let mut c = Command::new(support::BIN);
        c.arg(cmd)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ADMIN_TOKEN", "a-token-of-16-chars-or-more")
            .env("REDIS_URL", redis_url())
            .env(
                "EDGE_HTTP_ADDR",
                format!("127.0.0.1:{}", shortlink_testkit::free_port()),
            )
            .env("EDGE_HTTPS_ADDR", "off")
            .env(
                "EDGE_METRICS_ADDR",
                format!("127.0.0.1:{}", shortlink_testkit::free_port()),
            )
            .env(
                "ADMIN_GRPC_ADDR",
                format!("127.0.0.1:{}", shortlink_testkit::free_port()),
            )
            .env(
                "ADMIN_HTTP_ADDR",
                format!("127.0.0.1:{}", shortlink_testkit::free_port()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = support::Proc(c.spawn().expect("spawn shortlink"));
        let status = child.wait_exit(Duration::from_secs(20)).await;
        let mut err = String::new();
        use std::io::Read;
        if let Some(mut s) = child.0.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        assert_eq!(status.code(), Some(64), "{cmd} {env:?}: {err}");
        assert!(err.contains(needle), "{cmd} {env:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
