//! A bounded gRPC load client for ResolveLink, used by
//! `scripts/bench-resolve.sh`: `concurrency` workers over `channels` HTTP/2
//! connections resolve active codes from a seed `urls.csv` for at most
//! `duration_s` seconds or `max_requests` calls, then print throughput and
//! latency percentiles as one JSON line.
//!
//! `cargo run --release -p shortlink-links --example resolve_load -- \
//!   http://127.0.0.1:50061 ../shared/seed-data/urls.csv 64 10`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shortlink_proto::v1::ResolveLinkRequest;
use shortlink_proto::v1::link_service_client::LinkServiceClient;
use tonic::transport::Channel;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let target = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:50061".into());
    let csv_path = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "../shared/seed-data/urls.csv".into());
    let concurrency: usize = args.get(3).map_or(Ok(64), |s| s.parse())?;
    let duration = Duration::from_secs(args.get(4).map_or(Ok(10), |s| s.parse())?);
    let max_requests: u64 = args.get(5).map_or(Ok(5_000_000), |s| s.parse())?;
    let channels = 4usize;

    let mut codes = Vec::new();
    let mut rdr = csv::Reader::from_path(&csv_path)?;
    let headers = rdr.headers()?.clone();
    let code_i = headers
        .iter()
        .position(|h| h == "short_code")
        .expect("short_code column");
    let active_i = headers
        .iter()
        .position(|h| h == "is_active")
        .expect("is_active column");
    for rec in rdr.records() {
        let rec = rec?;
        if rec[active_i].eq_ignore_ascii_case("true") {
            codes.push(rec[code_i].to_owned());
        }
    }
    anyhow::ensure!(!codes.is_empty(), "no active codes in {csv_path}");
    let codes = Arc::new(codes);

    let mut chans = Vec::new();
    for _ in 0..channels {
        chans.push(Channel::from_shared(target.clone())?.connect().await?);
    }
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut client = LinkServiceClient::new(chans[w % channels].clone());
        let codes = codes.clone();
        let issued = issued.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut i = w;
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max_requests
            {
                let code = codes[i % codes.len()].clone();
                i += concurrency;
                let t = Instant::now();
                let r = client
                    .resolve_link(ResolveLinkRequest { short_code: code })
                    .await;
                lat.push(t.elapsed().as_micros() as u32);
                if r.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"requests\":{},\"errors\":{},\"seconds\":{:.2},\"rps\":{:.0},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{},\"concurrency\":{}}}",
        all.len(),
        errors.load(Ordering::Relaxed),
        elapsed,
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        all.last().copied().unwrap_or(0),
        concurrency
    );
    Ok(())
}
