//! Converts the API contract, `docs/openapi.yaml`, into the JSON the edge
//! serves at `GET /openapi.json`. Done at build time so the binary carries
//! no YAML parser and a document that does not parse fails the build, not
//! a request.

use std::path::PathBuf;

fn main() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml");
    println!("cargo:rerun-if-changed={}", src.display());
    let text = std::fs::read_to_string(&src)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", src.display()));
    let doc: serde_json::Value = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", src.display()));
    assert!(
        doc.get("openapi").and_then(|v| v.as_str()).is_some() && doc.get("paths").is_some(),
        "{} is not an OpenAPI document (no `openapi` or `paths`)",
        src.display()
    );
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let json = serde_json::to_vec(&doc).expect("a JSON value serialises");
    std::fs::write(out.join("openapi.json"), json).expect("write openapi.json");
}
