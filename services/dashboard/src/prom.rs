//! Prometheus's HTTP API (`/api/v1/query_range`, `/api/v1/query`): the
//! golden signals' source when PROMETHEUS_URL is set.

use serde_json::Value;

/// One labelled series of a range query: (label value, points).
pub type Labelled = Vec<(String, Vec<(i64, f64)>)>;

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn parse_point(p: &Value) -> Option<(i64, f64)> {
    let t = p.get(0)?.as_f64()? as i64;
    let v: f64 = p.get(1)?.as_str()?.parse().ok()?;
    v.is_finite().then_some((t, v))
}

async fn get(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    q: &[(&str, String)],
) -> anyhow::Result<Value> {
    let query = q
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let url = format!("{}{path}?{query}", base.trim_end_matches('/'));
    let v: Value = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    if v.get("status").and_then(Value::as_str) != Some("success") {
        anyhow::bail!(
            "prometheus: {}",
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("query failed")
        );
    }
    Ok(v)
}

/// A range query over [start, end] with `step` seconds, by `label`.
pub async fn range(
    http: &reqwest::Client,
    base: &str,
    expr: &str,
    start: i64,
    end: i64,
    step: i64,
    label: &str,
) -> anyhow::Result<Labelled> {
    let v = get(
        http,
        base,
        "/api/v1/query_range",
        &[
            ("query", expr.to_owned()),
            ("start", start.to_string()),
            ("end", end.to_string()),
            ("step", step.max(1).to_string()),
        ],
    )
    .await?;
    let mut out = Vec::new();
    for r in v["data"]["result"].as_array().into_iter().flatten() {
        let name = r["metric"][label].as_str().unwrap_or("all").to_owned();
        let pts = r["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(parse_point)
            .collect();
        out.push((name, pts));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// An instant query, by `label`.
pub async fn instant(
    http: &reqwest::Client,
    base: &str,
    expr: &str,
    label: &str,
) -> anyhow::Result<Vec<(String, f64)>> {
    let v = get(http, base, "/api/v1/query", &[("query", expr.to_owned())]).await?;
    let mut out: Vec<(String, f64)> = v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["metric"][label].as_str().unwrap_or("all").to_owned(),
                parse_point(&r["value"])?.1,
            ))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
