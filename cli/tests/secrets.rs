//! Secrets stay out of `--help`, start-up errors and logs: database and
//! Redis URLs with passwords, the admin token, webhook URLs (whose token is
//! in the path). Real `shortlink` processes, their whole output searched.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use shortlink_testkit::free_port;
use support::{BIN, spawn_to_file};

/// Every secret the environment holds in these tests, and where.
const SECRETS: &[(&str, &str, &str)] = &[
    (
        "DATABASE_URL",
        "postgres://app:pgsecret1@127.0.0.1:1/app",
        "pgsecret1",
    ),
    (
        "REDIS_URL",
        "redis://:redissecret2@127.0.0.1:1/0",
        "redissecret2",
    ),
    (
        "ADMIN_TOKEN",
        "admintoken-secret-3-0123456789",
        "admintoken-secret-3",
    ),
    (
        "ALERT_WEBHOOK_URLS",
        "https://discord.example/api/webhooks/1/hooksecret4",
        "hooksecret4",
    ),
    (
        "DASHBOARD_DATABASE_URL",
        "postgres://dash:dashsecret5@127.0.0.1:1/dash",
        "dashsecret5",
    ),
    (
        "DASHBOARD_TOKEN",
        "dashtoken-secret-6-0123456789",
        "dashtoken-secret-6",
    ),
    (
        "WATCHDOG_TOKEN",
        "watchdogtoken-secret-7-0123456789",
        "watchdogtoken-secret-7",
    ),
];

fn run(args: &[&str], extra: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LOG_LEVEL", "debug")
        .stdin(Stdio::null());
    for (k, v, _) in SECRETS {
        cmd.env(k, v);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run shortlink");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn assert_no_secret(what: &str, text: &str) {
    for (var, _, secret) in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} printed the secret of {var}:\n{text}"
        );
    }
}

#[test]
fn help_never_shows_secret_values_from_the_environment() {
    let subcommands = [
        "links",
        "edge",
        "admin",
        "alerter",
        "dashboard-ingest",
        "dashboard",
        "analytics",
        "log-printer",
        "migrate",
        "import",
        "up",
    ];
    for sub in subcommands {
        let (code, text) = run(&[sub, "--help"], &[]);
        assert_eq!(code, Some(0), "{sub} --help: {text}");
        assert_no_secret(&format!("shortlink {sub} --help"), &text);
    }
    // The variables are still documented, only their values are hidden.
    let (_, text) = run(&["links", "--help"], &[]);
    assert!(text.contains("[env: DATABASE_URL]"), "{text}");
    assert!(text.contains("[env: REDIS_URL]"), "{text}");
    let (_, text) = run(&["admin", "--help"], &[]);
    assert!(text.contains("[env: ADMIN_TOKEN]"), "{text}");
    let (_, text) = run(&["alerter", "--help"], &[]);
    assert!(text.contains("[env: ALERT_WEBHOOK_URLS]"), "{text}");
    let (_, text) = run(&["dashboard", "--help"], &[]);
    assert!(text.contains("[env: DASHBOARD_TOKEN]"), "{text}");
    assert!(text.contains("[env: WATCHDOG_TOKEN]"), "{text}");
    // A value that is no secret is still shown.
    let (_, text) = run(&["links", "--help"], &[("CACHE_PREFIX", "visible-prefix:")]);
    assert!(text.contains("visible-prefix:"), "{text}");
}

#[test]
fn start_up_failures_do_not_print_passwords() {
    // Unreachable database, no retry: links and migrate fail at start.
    for sub in ["links", "migrate"] {
        let (code, text) = run(&[sub], &[("DB_CONNECT_RETRY_S", "0")]);
        assert_ne!(code, Some(0), "{sub} started on an unreachable database");
        assert!(text.contains("shortlink: "), "{sub}: {text}");
        assert_no_secret(&format!("shortlink {sub} failing"), &text);
    }
    // A malformed URL fails in parsing.
    let (code, text) = run(
        &["migrate"],
        &[(
            "DATABASE_URL",
            "postgres://app:pgsecret1@127.0.0.1:notaport/app",
        )],
    );
    assert_ne!(code, Some(0));
    assert_no_secret("migrate with a malformed URL", &text);
    // The dashboard ingest cannot open its database.
    let (code, text) = run(&["dashboard-ingest"], &[]);
    assert_ne!(code, Some(0));
    assert_no_secret("dashboard-ingest failing", &text);
    // Nor can the dashboard.
    let (code, text) = run(&["dashboard"], &[("DASHBOARD_ADDR", "127.0.0.1:0")]);
    assert_ne!(code, Some(0));
    assert_no_secret("dashboard failing", &text);
}

#[tokio::test]
async fn alerter_logs_name_a_webhook_by_its_origin_only() {
    // A webhook that refuses connections: every attempt fails and is
    // logged.
    let dead = free_port();
    let webhook = format!("http://127.0.0.1:{dead}/api/webhooks/1/hooksecret4");
    let http_port = free_port();
    let log = std::env::temp_dir().join(format!(
        "shortlink-alerter-{}.log",
        shortlink_testkit::random_suffix()
    ));
    let _alerter = spawn_to_file(
        &["alerter"],
        &[
            ("ALERT_WEBHOOK_URLS", webhook),
            ("ALERTER_HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            ("LOG_LEVEL", "info".into()),
        ],
        &log,
    );
    let addr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let ready = shortlink_testkit::eventually(Duration::from_secs(20), async || {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert!(ready, "the alerter never listened");
    // One Alertmanager alert; the answer waits for the sender, so do not
    // wait for it.
    let body = serde_json::json!({"alerts": [{"status": "firing",
        "labels": {"alertname": "SecretsTest", "severity": "critical"},
        "annotations": {"summary": "s"}, "startsAt": "2026-01-01T00:00:00Z"}]});
    tokio::spawn(async move {
        support::post_json(addr, "/alertmanager", body).await;
    });
    let logged = shortlink_testkit::eventually(Duration::from_secs(30), async || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("webhook unreachable"))
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged, "no delivery failure logged:\n{text}");
    assert!(
        !text.contains("hooksecret4") && !text.contains("/api/webhooks/1/"),
        "the webhook's secret path was logged:\n{text}"
    );
    assert!(
        text.contains(&format!("http://127.0.0.1:{dead}")),
        "the log line should still name the webhook's origin:\n{text}"
    );
}
