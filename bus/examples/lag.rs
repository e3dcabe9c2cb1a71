//! Consumer lag of the pipeline's groups, for `scripts/bench-pipeline.sh`:
//! for each group, the sum over the topics' partitions of (high watermark -
//! committed offset). Prints one JSON line per sample.
//!
//! `cargo run --release -p shortlink-bus --example lag -- BROKERS PREFIX GROUP...`

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() >= 4, "usage: lag BROKERS PREFIX GROUP...");
    let (brokers, prefix) = (&args[1], &args[2]);
    let topics = ["requests", "link-events", "logs"].map(|t| format!("{prefix}{t}"));
    let mut out = serde_json::Map::new();
    for group in &args[3..] {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        let md = c.fetch_metadata(None, Duration::from_secs(5))?;
        let mut tpl = TopicPartitionList::new();
        for t in md
            .topics()
            .iter()
            .filter(|t| topics.contains(&t.name().to_owned()))
        {
            for p in t.partitions() {
                tpl.add_partition(t.name(), p.id());
            }
        }
        let committed = c.committed_offsets(tpl, Duration::from_secs(5))?;
        let mut lag = 0i64;
        for e in committed.elements() {
            let (_, high) = c.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5))?;
            let done = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            // Groups that do not read a topic (analytics reads link events
            // only) would show its whole length: count only read topics.
            if done > 0 || group_reads(group, e.topic(), prefix) {
                lag += (high - done).max(0);
            }
        }
        out.insert(group.clone(), lag.into());
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

fn group_reads(group: &str, topic: &str, prefix: &str) -> bool {
    let t = topic.strip_prefix(prefix).unwrap_or(topic);
    match group {
        g if g.contains("analytics") => t == "link-events",
        g if g.contains("alerter") => t == "requests" || t == "logs",
        _ => true,
    }
}
