//! The API contract served at `GET /openapi.json`: `docs/openapi.yaml`,
//! converted to JSON by `build.rs` and embedded in the binary, so serving it
//! costs no parsing and no allocation (a static `Bytes`).
//!
//! The tests below hold the document and the route table together: every
//! line of [`super::routes::ROUTES`] is a path and method of the document,
//! and every operation of the document is a line of the table. A route added
//! without its contract (or the other way round) fails `cargo test`.

use bytes::Bytes;

use super::Reply;

/// The document, as JSON.
pub static DOCUMENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// The answer of `GET /openapi.json`.
pub fn reply() -> Reply {
    Reply::raw_json(200, Bytes::from_static(DOCUMENT))
}

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::Value;

    use super::*;
    use crate::api::routes::{Handler, Local, Lookup, ROUTES, Route, lookup, route};

    /// The operation keys of a path item (OpenAPI 3.1).
    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn served() -> Value {
        serde_json::from_slice(DOCUMENT).expect("the served document is JSON")
    }

    fn source() -> Value {
        let yaml = include_str!("../../../docs/openapi.yaml");
        serde_norway::from_str(yaml).expect("docs/openapi.yaml parses")
    }

    #[test]
    fn served_json_is_the_yaml_document() {
        let doc = served();
        assert_eq!(
            doc,
            source(),
            "the served JSON differs from docs/openapi.yaml"
        );
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1.")),
            "an OpenAPI 3.1 document"
        );
        let r = reply();
        assert_eq!((r.status, r.content_type), (200, "application/json"));
        assert_eq!(&r.body[..], DOCUMENT);
    }

    #[test]
    fn every_route_of_the_table_is_in_the_document_and_the_other_way_round() {
        let doc = served();
        let paths = doc["paths"].as_object().expect("paths is an object");
        for def in ROUTES {
            let path = def.route.template();
            let method = def.method.as_str().to_ascii_lowercase();
            assert!(
                paths.get(path).and_then(|p| p.get(&method)).is_some(),
                "{} {path} is in the route table but not in docs/openapi.yaml",
                def.method
            );
        }
        for (path, item) in paths {
            // The path routes to the template it is written as (ids and
            // codes filled in with valid values).
            let sample = path.replace("{id}", "7").replace("{short_code}", "Ab12Cd");
            let routed = route(&sample);
            assert_eq!(
                routed.route.template(),
                path,
                "{path} in docs/openapi.yaml routes to {:?}",
                routed.route
            );
            let item = item.as_object().expect("a path item is an object");
            for m in item.keys().filter(|k| METHODS.contains(&k.as_str())) {
                let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap();
                assert!(
                    ROUTES
                        .iter()
                        .any(|d| d.route == routed.route && d.method == method),
                    "{method} {path} is in docs/openapi.yaml but not in the route table"
                );
            }
        }
        assert!(matches!(
            lookup(Route::OpenApi, &Method::GET),
            Lookup::Found(Handler::Local(Local::OpenApi))
        ));
        assert!(!Route::OpenApi.is_health(), "the document is rate limited");
    }

    /// Resolves a local `$ref` (`#/components/...`).
    fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let ptr = r.strip_prefix('#').expect("only local references");
                deref(
                    doc,
                    doc.pointer(ptr).unwrap_or_else(|| panic!("{r} resolves")),
                )
            }
            None => v,
        }
    }

    /// Whether every shape `schema` allows has an `error` string property.
    fn has_error_field(doc: &Value, schema: &Value) -> bool {
        let s = deref(doc, schema);
        if let Some(branches) = s.get("anyOf").or_else(|| s.get("oneOf")) {
            return branches
                .as_array()
                .unwrap()
                .iter()
                .all(|b| has_error_field(doc, b));
        }
        if let Some(all) = s.get("allOf") {
            return all
                .as_array()
                .unwrap()
                .iter()
                .any(|b| has_error_field(doc, b));
        }
        s["properties"]["error"].is_object()
    }

    #[test]
    fn every_response_declares_the_standard_headers_and_a_body() {
        let doc = served();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (m, op) in item.as_object().unwrap() {
                if !METHODS.contains(&m.as_str()) {
                    continue;
                }
                let responses = op["responses"].as_object().unwrap();
                assert!(!responses.is_empty(), "{m} {path} has no responses");
                for (status, resp) in responses {
                    let resp = deref(&doc, resp);
                    for h in ["X-Request-ID", "X-Response-Time"] {
                        assert!(
                            resp["headers"].get(h).is_some(),
                            "{m} {path} {status} does not declare {h}"
                        );
                    }
                    assert!(
                        resp["content"].as_object().is_some_and(|c| !c.is_empty()),
                        "{m} {path} {status} declares no body"
                    );
                    // Errors are `{"error": string}` (or a shape that has it).
                    let code: u16 = status.parse().expect("explicit status codes");
                    if code >= 400 && path != "/ready" && path != "/health" {
                        let schema = &resp["content"]["application/json"]["schema"];
                        assert!(
                            has_error_field(&doc, schema),
                            "{m} {path} {status} is not an error body: {schema}"
                        );
                    }
                }
            }
        }
    }
}
