//! One contract suite for `EventBus`, run against the in-process bus and
//! against a real Kafka-protocol broker (`KAFKA_TEST_BROKERS`, started by
//! scripts/test.sh).

use std::sync::Arc;
use std::time::Duration;

use shortlink_runtime::bus::{self, BusArgs, EventBus, Subscription};
use shortlink_runtime::metrics::Metrics;

fn suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_TEST_BROKERS").unwrap_or_else(|_| {
        panic!(
            "KAFKA_TEST_BROKERS is not set: start a Kafka-protocol broker with ./scripts/kafka.sh start \
             (or run ./scripts/test.sh, which does) and export KAFKA_TEST_BROKERS=127.0.0.1:19092"
        )
    })
}

async fn next(sub: &mut Box<dyn Subscription>) -> bus::Delivery {
    tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("an event within 30 s")
        .expect("consume")
}

async fn bus_contract(b: Arc<dyn EventBus>, m: &Metrics) {
    let s = suffix();
    let (t1, t2) = (format!("test.{s}.a"), format!("test.{s}.b"));
    b.ensure_topics(&[t1.clone(), t2.clone()]).await.unwrap();
    b.ensure_topics(std::slice::from_ref(&t1))
        .await
        .expect("existing topics are fine");
    let (g1, g2) = (format!("g1-{s}"), format!("g2-{s}"));
    let mut a = b.subscribe(&g1, std::slice::from_ref(&t1)).await.unwrap();
    let mut c = b.subscribe(&g2, &[t1.clone(), t2.clone()]).await.unwrap();
    for i in 0..10 {
        b.publish(&t1, Some("k"), format!("e{i}").into_bytes());
    }
    b.publish(&t2, None, b"other".to_vec());
    b.flush(Duration::from_secs(10));
    assert_eq!(b.pending(), 0, "flushed");
    assert!(
        !m.render().contains("bus_events_dropped_total{"),
        "nothing dropped"
    );
    // Every group gets every event of its topics, in order per key.
    let mut got_a = Vec::new();
    for _ in 0..10 {
        let d = next(&mut a).await;
        got_a.push(String::from_utf8(d.payload.clone()).unwrap());
        if got_a.len() == 5 {
            a.commit(&d).await.unwrap();
        }
    }
    assert_eq!(got_a, (0..10).map(|i| format!("e{i}")).collect::<Vec<_>>());
    let mut got_c = Vec::new();
    for _ in 0..11 {
        let d = next(&mut c).await;
        c.commit(&d).await.unwrap();
        got_c.push(String::from_utf8(d.payload).unwrap());
    }
    assert_eq!(got_c.iter().filter(|p| p.starts_with('e')).count(), 10);
    assert!(got_c.contains(&"other".to_owned()));
    // A restarted consumer of g1 resumes after its committed offset.
    drop(a);
    let mut a2 = b.subscribe(&g1, std::slice::from_ref(&t1)).await.unwrap();
    let d = next(&mut a2).await;
    assert_eq!(String::from_utf8(d.payload).unwrap(), "e5");
}

#[tokio::test]
async fn bus_contract_memory() {
    let m = Metrics::new("test", "t");
    bus_contract(Arc::new(bus::MemoryBus::new(1000, &m)), &m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_contract_kafka() {
    let m = Metrics::new("test", "t");
    let args = BusArgs {
        kafka_brokers: Some(kafka_brokers()),
        topic_prefix: "test.".into(),
        topic_partitions: 1,
        producer_batch: 1,
        producer_queue: 10_000,
    };
    bus_contract(bus::connect(&args, &m).unwrap(), &m).await;
}

#[tokio::test]
async fn memory_bus_counts_events_evicted_before_a_group_read_them() {
    let m = Metrics::new("test", "t");
    let b = bus::MemoryBus::new(3, &m);
    let mut sub = b.subscribe("slow", &["t".to_owned()]).await.unwrap();
    for i in 0..5 {
        b.publish("t", None, vec![i]);
    }
    let d = sub.next().await.unwrap();
    assert_eq!(d.payload, vec![2]);
    assert!(
        m.render()
            .contains("shortlink_bus_events_dropped_total{topic=\"t\""),
        "{}",
        m.render()
    );
}
