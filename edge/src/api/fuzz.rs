//! The HTTP → gRPC translation as a fuzz target (proptest, stable Rust):
//! routing and the route table, typed query strings, JSON bodies, the bulk
//! CSV and multipart parser, the gRPC status mapping, the JSON renderers,
//! and every API handler end to end up to its gRPC call. Each target feeds
//! arbitrary input (plain random bytes and strings, and structured input
//! near the valid shapes, where the interesting branches are) and asserts
//! that nothing panics and that every refusal is a 4xx with a JSON `error`.
//!
//! The handlers run against a replica set whose one replica is never in
//! rotation, so a request that passes every edge check ends in the
//! "no healthy links replica" 503 without any network: that 503 proves the
//! input was translated into a gRPC call; anything else but a 4xx fails.
//!
//! Cases per target: `PROPTEST_CASES` (default 2,000, which keeps
//! `cargo test` quick). A long run, as recorded in docs/API.md:
//! `PROPTEST_CASES=200000 cargo nextest run -p shortlink-edge fuzz --no-capture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value};
use shortlink_proto::v1 as pb;

use super::input::{self, JsonBody, ListEvents, ListUrls, Paging, UserUrls};
use super::routes::{Handler, Lookup, ROUTES, Route, lookup, route};
use super::{Call, Reply, bulk, dispatch, render, status_reply};
use crate::balance::{BalanceConfig, Upstreams};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Runs `test` on `cases()` inputs from `strategy` and prints how long it
/// took (shown with `--no-capture`).
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let n = cases();
    let mut runner = TestRunner::new(Config {
        cases: n,
        // Shrinking a failure is worth its time; the default 1024 rejects
        // and 4x shrink iterations are fine.
        failure_persistence: None,
        ..Config::default()
    });
    let start = Instant::now();
    let result = runner.run(&strategy, test);
    println!("fuzz {name}: {n} cases in {:.1?}", start.elapsed());
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
}

/// A refusal: a 4xx whose body is a JSON object with an `error` string.
fn check_refusal(r: &Reply, what: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        (400..500).contains(&r.status),
        "{what}: status {} ({:?})",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    check_error_body(r, what)
}

fn check_error_body(r: &Reply, what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(r.content_type, "application/json", "{}", what);
    let v: Value = serde_json::from_slice(&r.body)
        .map_err(|e| TestCaseError::fail(format!("{what}: body is not JSON: {e}")))?;
    prop_assert!(
        v["error"].as_str().is_some_and(|s| !s.is_empty()),
        "{what}: no error string in {v}"
    );
    Ok(())
}

// ---------------------------------------------------------------- inputs

/// Path segments: the fixed route names, ids valid and not, codes, and
/// arbitrary text.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "urls",
            "users",
            "events",
            "shorten",
            "bulk",
            "health",
            "live",
            "ready",
            "metrics",
            "openapi.json",
            "",
            "0",
            "-1",
            "+5",
            "9223372036854775807",
            "9223372036854775808",
            "%00",
            "%2F",
        ])
        .prop_map(str::to_owned),
        "[0-9]{1,20}",
        "[A-Za-z0-9_-]{1,70}",
        any::<String>(),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(segment(), 0..5).prop_map(|s| format!("/{}", s.join("/"))),
        any::<String>(),
        any::<String>().prop_map(|s| format!("/{s}")),
    ]
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        prop::sample::select(vec![
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
            Method::TRACE,
            Method::CONNECT,
        ]),
        "[A-Z]{1,12}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
    ]
}

/// Query strings: `key=value` pairs over the keys the routes read, with
/// values valid and not (encoded, huge, NUL, invalid UTF-8), or raw text.
fn query() -> impl Strategy<Value = Option<String>> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "page",
            "per_page",
            "user_id",
            "url_id",
            "is_active",
            "event_type",
            "pa%67e",
        ])
        .prop_map(str::to_owned),
        "[a-z_%0-9]{0,8}",
    ];
    let value = prop_oneof![
        prop::sample::select(vec![
            "",
            "1",
            "0",
            "-1",
            "100",
            "101",
            "4294967295",
            "4294967296",
            "9223372036854775807",
            "9223372036854775808",
            "1.5",
            "1e3",
            "+7",
            " 7 ",
            "true",
            "YES",
            "no",
            "maybe",
            "click",
            "%ff",
            "%00",
            "a%00b",
            "%c3%28",
            "%",
            "%zz",
            "a+b",
        ])
        .prop_map(str::to_owned),
        "-?[0-9]{1,25}",
        any::<String>(),
    ];
    let pairs = prop::collection::vec(
        (key, prop::option::of(value)).prop_map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k,
        }),
        0..6,
    )
    .prop_map(|p| p.join("&"));
    prop::option::of(prop_oneof![pairs, any::<String>()])
}

/// Any JSON value, nested past the depth limit sometimes, with strings
/// that hold NUL characters and numbers at the edges of a double.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        prop::sample::select(vec![f64::MAX, f64::MIN, f64::MIN_POSITIVE, 5e-324, -0.0])
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::String),
        "[a-z]{0,3}\u{0}[a-z]{0,3}".prop_map(Value::String),
    ];
    leaf.prop_recursive(40, 400, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value for one of the fields the handlers read: plausible values of
/// every JSON type, or anything.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            Value::Null,
            Value::from(1),
            Value::from(0),
            Value::from(-3),
            Value::from(1.0),
            Value::from(1.5),
            Value::from(u64::MAX),
            Value::from(true),
            Value::from(""),
            Value::from("   "),
            Value::from("https://example.com/a"),
            Value::from("ftp://x"),
            Value::from("ann"),
            Value::from("ann@example.com"),
            Value::from("click"),
            Value::from("docs"),
            Value::from("a\u{0}b"),
            serde_json::json!({}),
            serde_json::json!({"k": [1, {"x": null}]}),
            serde_json::json!([]),
        ]),
        "[ -~]{0,40}".prop_map(Value::String),
        json_value(),
    ]
}

/// JSON objects over the fields the handlers read.
fn json_object() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(vec![
            "original_url",
            "user_id",
            "title",
            "short_code",
            "is_active",
            "username",
            "email",
            "url_id",
            "event_type",
            "details",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ];
    prop::collection::btree_map(key, field_value(), 0..7)
        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
}

/// JSON bodies as bytes: objects over the known fields, any JSON, and
/// broken text (truncated, spliced, random bytes).
fn json_body() -> impl Strategy<Value = Vec<u8>> {
    let text = prop_oneof![json_object(), json_value()]
        .prop_map(|v| serde_json::to_vec(&v).unwrap_or_default());
    prop_oneof![
        4 => text.clone(),
        1 => (text.clone(), any::<prop::sample::Index>())
            .prop_map(|(t, i)| t[..i.index(t.len() + 1)].to_vec()),
        1 => (text, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut t, i, b)| {
            let at = i.index(t.len() + 1);
            t.insert(at, b);
            t
        }),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => (1usize..5000).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
    ]
}

fn json_content_type() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        prop::sample::select(vec![
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "application/problem+json",
            "text/plain",
            "multipart/form-data; boundary=x",
            "",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ])
}

/// CSV text: rows of fields plain, quoted, empty, with NUL, commas,
/// quotes, CR/LF and non-UTF-8 bytes.
fn csv() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        prop::sample::select(vec![
            "username",
            "email",
            "ann",
            "ann@example.com",
            "",
            " b ",
            "\"q,uoted\"",
            "\"open",
            "a\"b",
            "x\u{0}y",
            "\r",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        "[ -~]{0,20}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..12),
    ];
    let row = prop::collection::vec(field, 0..5).prop_map(|f| f.join(&b","[..]));
    let eol = prop::sample::select(vec!["\n", "\r\n", "\r", ""]);
    prop::collection::vec((row, eol), 0..12).prop_map(|rows| {
        rows.into_iter()
            .flat_map(|(mut r, e)| {
                r.extend_from_slice(e.as_bytes());
                r
            })
            .collect()
    })
}

/// Upload bodies with their content type: plain CSV, CSV in a multipart
/// body (with other parts, odd headers, missing closing boundary), and
/// arbitrary bytes under every content type.
fn upload() -> impl Strategy<Value = (String, Vec<u8>)> {
    let boundary = "[A-Za-z0-9'()+_,./:=?-]{1,40}";
    let part_headers = prop::sample::select(vec![
        "Content-Disposition: form-data; name=\"file\"; filename=\"u.csv\"\r\nContent-Type: text/csv",
        "Content-Disposition: form-data; name=\"file\"",
        "Content-Disposition: form-data; name=\"note\"",
        "Content-Disposition: form-data; filename=\"x\"",
        "Content-Disposition: attachment",
        "",
        "Garbage",
    ]);
    let multipart = (
        boundary,
        prop::collection::vec((part_headers, csv()), 0..3),
        any::<bool>(),
    )
        .prop_map(|(b, parts, close)| {
            let mut body = Vec::new();
            for (h, content) in parts {
                body.extend_from_slice(format!("--{b}\r\n{h}\r\n\r\n").as_bytes());
                body.extend_from_slice(&content);
                body.extend_from_slice(b"\r\n");
            }
            if close {
                body.extend_from_slice(format!("--{b}--\r\n").as_bytes());
            }
            (format!("multipart/form-data; boundary={b}"), body)
        });
    let content_type = prop_oneof![
        prop::sample::select(vec![
            "text/csv",
            "text/plain; charset=utf-8",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "application/json",
            "",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ];
    prop_oneof![
        (Just("text/csv".to_owned()), csv()),
        multipart,
        (content_type, prop::collection::vec(any::<u8>(), 0..300)),
    ]
}

// --------------------------------------------------------------- targets

#[test]
fn fuzz_routing_and_the_route_table() {
    fuzz("routing", (path(), method()), |(p, m)| {
        let r = route(&p);
        match r.route {
            Route::Redirect => {
                let code = r.code.as_deref().unwrap_or_default();
                prop_assert!(!code.is_empty() && code.len() <= 64 && !code.contains('/'));
                prop_assert_eq!(p, format!("/{code}"));
            }
            Route::Url | Route::UrlEvents | Route::User | Route::UserUrls => {
                prop_assert!(r.id.is_some_and(|id| id > 0), "{:?}", r);
            }
            _ => prop_assert!(r.id.is_none() && r.code.is_none()),
        }
        match lookup(r.route, &m) {
            Lookup::Found(_) => {
                let want = if m == Method::HEAD { Method::GET } else { m };
                prop_assert!(
                    ROUTES
                        .iter()
                        .any(|d| d.route == r.route && d.method == want)
                );
            }
            Lookup::MethodNotAllowed(allow) => {
                prop_assert!(!allow.is_empty());
                prop_assert!(!allow.split(", ").any(|a| a == m.as_str()));
            }
            Lookup::NotFound => prop_assert_eq!(r.route, Route::NotFound),
        }
        Ok(())
    });
}

#[test]
fn fuzz_query_strings() {
    fuzz("query", query(), |q| {
        let q = q.as_deref();
        let checks: [(&str, Result<(), Reply>); 4] = [
            (
                "ListUrls",
                input::query::<ListUrls>(q).and_then(|v| v.paging().map(drop)),
            ),
            (
                "UserUrls",
                input::query::<UserUrls>(q).and_then(|v| v.paging().map(drop)),
            ),
            (
                "ListEvents",
                input::query::<ListEvents>(q).and_then(|v| v.paging().map(drop)),
            ),
            (
                "Paging",
                input::query::<Paging>(q).and_then(|v| v.request().map(drop)),
            ),
        ];
        for (what, r) in checks {
            if let Err(e) = r {
                check_refusal(&e, what)?;
                prop_assert_eq!(e.status, 400);
            }
        }
        if let Ok(p) = input::query::<Paging>(q).and_then(|v| v.request()) {
            prop_assert!(p.page >= 1 && (1..=100).contains(&p.per_page));
        }
        Ok(())
    });
}

#[test]
fn fuzz_json_bodies() {
    fuzz("json", (json_content_type(), json_body()), |(ct, body)| {
        match JsonBody::parse(ct.as_deref(), &body) {
            Err(e) => check_refusal(&e, "parse")?,
            Ok(b) => {
                // What reaches a service holds no NUL and is an object.
                let text = serde_json::to_string(&b.0).unwrap();
                prop_assert!(!text.contains("\\u0000"));
                for k in [
                    "original_url",
                    "user_id",
                    "title",
                    "is_active",
                    "details",
                    "nope",
                ] {
                    for r in [
                        b.string(k).map(drop),
                        b.opt_string(k).map(drop),
                        b.int(k).map(drop),
                        b.opt_bool(k).map(drop),
                        b.opt_object(k).map(drop),
                    ] {
                        if let Err(e) = r {
                            check_refusal(&e, k)?;
                        }
                    }
                }
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_bulk_uploads() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    fuzz("bulk", upload(), |(ct, body)| {
        match rt.block_on(bulk::parse_rows(&ct, &Bytes::from(body))) {
            Err(e) => check_refusal(&e, "bulk")?,
            Ok(rows) => {
                let mut last = 0;
                for (n, u) in rows {
                    prop_assert!(n > last, "row numbers increase");
                    last = n;
                    prop_assert!(!u.username.contains('\0') && !u.email.contains('\0'));
                }
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_grpc_status_mapping() {
    let code = (0i32..20).prop_map(tonic::Code::from_i32);
    let route = prop::sample::select(ROUTES.iter().map(|d| d.route).collect::<Vec<_>>());
    fuzz(
        "status",
        (code, any::<String>(), route),
        |(code, msg, route)| {
            let r = status_reply(&tonic::Status::new(code, msg), route);
            prop_assert!((400..=504).contains(&r.status) && r.status != 500);
            check_error_body(&r, "status")
        },
    );
}

#[test]
fn fuzz_renderers() {
    let ts = prop::option::of(
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    );
    let details = prop_oneof![
        json_value().prop_map(|v| match v {
            Value::Object(m) => Some(shortlink_proto::json::struct_from_json(&m)),
            _ => None,
        }),
        prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300]).prop_map(
            |n| {
                let v = prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(n)),
                };
                Some(prost_types::Struct {
                    fields: [("n".to_owned(), v)].into(),
                })
            }
        ),
    ];
    fuzz(
        "render",
        (ts, details, any::<String>(), any::<i64>()),
        |(ts, details, text, id)| {
            let e = pb::Event {
                id,
                url_id: id,
                user_id: id,
                event_type: text.clone(),
                timestamp: ts,
                details,
            };
            let l = pb::Link {
                id,
                short_code: text.clone(),
                original_url: text.clone(),
                title: Some(text),
                created_at: ts,
                ..Default::default()
            };
            for v in [render::event(&e), render::url(&l)] {
                let body = Reply::json(200, v).body;
                let back: Value = serde_json::from_slice(&body)
                    .map_err(|e| TestCaseError::fail(format!("not JSON: {e}")))?;
                prop_assert!(back.is_object());
            }
            if let Value::String(s) = render::iso(ts.as_ref()) {
                prop_assert!(s.ends_with('Z'), "{}", s);
            }
            Ok(())
        },
    );
}

/// Every API handler, end to end up to its gRPC call.
#[test]
fn fuzz_handlers_end_to_end() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let upstreams: Arc<Upstreams> = rt.block_on(async {
        // One replica that is never checked, so never in rotation: no call
        // leaves the process.
        Upstreams::new(
            &["127.0.0.1:9".to_owned()],
            BalanceConfig {
                interval: Duration::from_secs(3600),
                check_timeout: Duration::from_millis(10),
                healthy_after: 1,
                unhealthy_after: 1,
                call_timeout: Duration::from_millis(10),
                retries: 0,
            },
            &shortlink_runtime::metrics::Metrics::new("edge", "fuzz"),
        )
        .unwrap()
    });
    let (refused, reached) = (AtomicU64::new(0), AtomicU64::new(0));
    let body = prop_oneof![json_body(), upload().prop_map(|(_, b)| b), Just(Vec::new())];
    let ct = prop_oneof![json_content_type(), upload().prop_map(|(ct, _)| Some(ct)),];
    // Mostly a line of the table with its method and its path filled in
    // (ids and codes valid or not), so that most inputs reach a handler.
    let line = prop::sample::select(
        ROUTES
            .iter()
            .filter(|d| matches!(d.handler, Handler::Api(_)))
            .map(|d| (d.route.template(), d.method.clone()))
            .collect::<Vec<_>>(),
    )
    .prop_flat_map(|(t, m)| {
        (segment(), "[A-Za-z0-9_-]{1,40}").prop_map(move |(id, code)| {
            let id = if id.bytes().all(|b| b.is_ascii_digit()) && !id.is_empty() {
                id
            } else {
                "7".to_owned()
            };
            (
                m.clone(),
                t.replace("{id}", &id).replace("{short_code}", &code),
            )
        })
    });
    let request = prop_oneof![4 => line, 1 => (method(), path())];
    fuzz(
        "handlers",
        (request, query(), ct, body),
        |((m, p), q, ct, body)| {
            let routed = route(&p);
            let Lookup::Found(Handler::Api(f)) = lookup(routed.route, &m) else {
                return Ok(());
            };
            let call = Call {
                upstreams: &upstreams,
                routed: &routed,
                query: q.as_deref(),
                content_type: ct.as_deref(),
                body: Bytes::from(body),
                request_id: "fuzz",
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                cache: None,
            };
            let r = rt.block_on(dispatch(f, &call));
            let what = format!("{m} {p}");
            if r.status == 503 {
                // Translated into a gRPC call, which found no replica.
                check_error_body(&r, &what)?;
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                prop_assert!(
                    v["error"]
                        .as_str()
                        .unwrap()
                        .contains("no healthy links replica"),
                    "{what}: {v}"
                );
                reached.fetch_add(1, Ordering::Relaxed);
            } else {
                check_refusal(&r, &what)?;
                refused.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        },
    );
    let (refused, reached) = (refused.into_inner(), reached.into_inner());
    println!("fuzz handlers: {reached} reached a gRPC call, {refused} refused with a 4xx");
    assert!(
        reached > 0 && refused > 0,
        "the inputs must exercise both outcomes ({reached} reached, {refused} refused)"
    );
}
