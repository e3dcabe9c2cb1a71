//! One contract suite for `EventBus`, run against the in-process bus and
//! against a real Kafka-protocol broker (`KAFKA_TEST_BROKERS`, started by
//! scripts/test.sh), plus what is particular to each backend: the
//! in-process bus's retention and typed hand-over, and on Kafka resuming in
//! the middle of a large record batch and surviving a broker restart (on a
//! tansu of the test's own, `TANSU_BIN`).

use std::sync::Arc;
use std::time::Duration;

use shortlink_bus::{self as bus, BusArgs, Delivery, EventBus, Payload, Subscription};
use shortlink_proto::events::LinkEvent;
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

fn kafka_args(brokers: &str) -> BusArgs {
    BusArgs {
        kafka_brokers: Some(brokers.to_owned()),
        topic_prefix: "test.".into(),
        topic_partitions: 1,
        producer_queue: 10_000,
        ..BusArgs::default()
    }
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("an event within 30 s")
        .expect("consume")
}

fn text(d: &Delivery) -> String {
    String::from_utf8(d.json().into_owned()).unwrap()
}

/// The value of an unlabelled (or first matching) series in `m`.
fn metric(m: &Metrics, prefix: &str) -> f64 {
    m.render()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn click(i: i64) -> LinkEvent {
    LinkEvent {
        schema_version: 1,
        kind: "click".into(),
        link_id: i,
        request_id: format!("r{i}"),
        ..Default::default()
    }
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
        b.publish(&t1, Some("k"), format!("\"e{i}\"").into_bytes().into());
    }
    b.publish(&t2, None, click(7).into());
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
        got_a.push(text(&d));
        if got_a.len() == 5 {
            a.commit(&d).await.unwrap();
        }
    }
    assert_eq!(
        got_a,
        (0..10).map(|i| format!("\"e{i}\"")).collect::<Vec<_>>()
    );
    let mut got_c = Vec::new();
    let mut typed = None;
    for _ in 0..11 {
        let d = next(&mut c).await;
        c.commit(&d).await.unwrap();
        if d.topic == t2 {
            typed = Some(d.clone());
        }
        got_c.push(text(&d));
    }
    assert_eq!(got_c.iter().filter(|p| p.starts_with("\"e")).count(), 10);
    // A typed event arrives in its JSON wire form and decodes back.
    let typed = typed.expect("the typed event");
    assert_eq!(
        typed.json().as_ref(),
        serde_json::to_vec(&click(7)).unwrap()
    );
    assert_eq!(typed.decode::<LinkEvent>().unwrap(), click(7));
    // A restarted consumer of g1 resumes after its committed offset.
    drop(a);
    let mut a2 = b.subscribe(&g1, std::slice::from_ref(&t1)).await.unwrap();
    let d = next(&mut a2).await;
    assert_eq!(text(&d), "\"e5\"");
}

#[tokio::test]
async fn bus_contract_memory() {
    let m = Metrics::new("test", "t");
    bus_contract(Arc::new(bus::MemoryBus::new(1000, &m)), &m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_contract_kafka() {
    let m = Metrics::new("test", "t");
    bus_contract(bus::connect(&kafka_args(&kafka_brokers()), &m).unwrap(), &m).await;
}

#[tokio::test]
async fn memory_bus_counts_events_evicted_before_a_group_read_them() {
    let m = Metrics::new("test", "t");
    let b = bus::MemoryBus::new(3, &m);
    let mut sub = b.subscribe("slow", &["t".to_owned()]).await.unwrap();
    for i in 0..5 {
        b.publish("t", None, vec![i].into());
    }
    let d = sub.next().await.unwrap();
    assert_eq!(d.json().as_ref(), [2]);
    assert!(
        m.render()
            .contains("shortlink_bus_events_dropped_total{topic=\"t\""),
        "{}",
        m.render()
    );
}

#[tokio::test]
async fn memory_bus_retains_only_what_subscribed_groups_have_not_committed() {
    let m = Metrics::new("test", "t");
    let b = bus::MemoryBus::new(100_000, &m);
    let t = "t".to_owned();
    // Nobody subscribed: nothing is kept (an edge running alone).
    for i in 0..1000 {
        b.publish(&t, None, click(i).into());
    }
    assert_eq!(b.retained(), 0, "no group, no retention");
    assert_eq!(metric(&m, "shortlink_bus_events_published_total"), 1000.0);

    // A group keeps what it has not committed, and starts at what is held.
    let mut g1 = b.subscribe("g1", std::slice::from_ref(&t)).await.unwrap();
    for i in 1000..1010 {
        b.publish(&t, None, click(i).into());
    }
    assert_eq!(b.retained(), 10);
    let mut last = None;
    for want in 1000..1010 {
        let d = g1.next().await.unwrap();
        assert_eq!(d.decode::<LinkEvent>().unwrap().link_id, want);
        if want == 1004 {
            g1.commit(&d).await.unwrap();
        }
        last = Some(d);
    }
    assert_eq!(b.retained(), 5, "read but not committed is still held");
    // A second group holds from its own committed offset.
    let mut g2 = b.subscribe("g2", std::slice::from_ref(&t)).await.unwrap();
    let first = g2.next().await.unwrap();
    assert_eq!(first.decode::<LinkEvent>().unwrap().link_id, 1005);
    g1.commit(&last.unwrap()).await.unwrap();
    assert_eq!(b.retained(), 5, "g2 has not committed");
    g2.commit(&first).await.unwrap();
    assert_eq!(b.retained(), 4);
    // A restarted g1 resumes after its commit and sees nothing old.
    drop(g1);
    let mut g1 = b.subscribe("g1", std::slice::from_ref(&t)).await.unwrap();
    b.publish(&t, None, click(2000).into());
    let d = g1.next().await.unwrap();
    assert_eq!(d.decode::<LinkEvent>().unwrap().link_id, 2000);
    assert!(!m.render().contains("bus_events_dropped_total{"));
}

#[tokio::test]
async fn memory_bus_hands_typed_events_over_without_serialising() {
    let m = Metrics::new("test", "t");
    let b = bus::MemoryBus::new(10, &m);
    let t = vec!["t".to_owned()];
    let mut g1 = b.subscribe("g1", &t).await.unwrap();
    let mut g2 = b.subscribe("g2", &t).await.unwrap();
    b.publish("t", Some("7"), click(7).into());
    let (d1, d2) = (g1.next().await.unwrap(), g2.next().await.unwrap());
    match (&d1.payload, &d2.payload) {
        (Payload::Event(a), Payload::Event(b)) => {
            assert!(Arc::ptr_eq(a, b), "both groups share the one event")
        }
        other => panic!("expected typed payloads, got {other:?}"),
    }
    assert_eq!(d1.key.as_deref(), Some("7"));
    assert_eq!(d1.decode::<LinkEvent>().unwrap(), click(7));
}

/// With the producer's defaults (large batches), a group that committed an
/// offset in the middle of a record batch resumes exactly there: nothing
/// lost, nothing seen twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_group_resumes_in_the_middle_of_a_large_record_batch() {
    let m = Metrics::new("test", "t");
    let b = bus::connect(&kafka_args(&kafka_brokers()), &m).unwrap();
    let t = format!("test.{}.batch", suffix());
    let group = format!("g-{}", suffix());
    b.ensure_topics(std::slice::from_ref(&t)).await.unwrap();
    let n = 2000;
    for i in 0..n {
        b.publish(&t, Some("k"), click(i).into());
    }
    b.flush(Duration::from_secs(30));
    assert_eq!(b.pending(), 0, "every event acknowledged");
    assert_eq!(
        metric(&m, "shortlink_bus_events_delivered_total{result=\"ok\""),
        n as f64
    );
    // librdkafka reports the batches it sent every 5 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while metric(&m, "shortlink_bus_producer_batches_total") == 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no producer statistics"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let batches = metric(&m, "shortlink_bus_producer_batches_total");
    assert!(
        batches * 20.0 <= n as f64,
        "{n} events in {batches} batches: expected at least 20 records per batch"
    );

    let mut sub = b.subscribe(&group, std::slice::from_ref(&t)).await.unwrap();
    let cut = 737;
    for want in 0..cut {
        let d = next(&mut sub).await;
        assert_eq!(d.decode::<LinkEvent>().unwrap().link_id, want);
        if want == cut - 1 {
            sub.commit(&d).await.unwrap();
        }
    }
    // The commit is asynchronous: give it time to reach the broker.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(sub);
    let mut sub = b.subscribe(&group, std::slice::from_ref(&t)).await.unwrap();
    for want in cut..n {
        let d = next(&mut sub).await;
        assert_eq!(
            d.decode::<LinkEvent>().unwrap().link_id,
            want,
            "resumed at {cut}, in order, no gap, no repeat"
        );
    }
    let extra = tokio::time::timeout(Duration::from_secs(2), sub.next()).await;
    assert!(extra.is_err(), "nothing after the last event: {extra:?}");
}

/// A tansu of the test's own, on its own port and SQLite file.
struct Tansu {
    bin: String,
    addr: String,
    file: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl Tansu {
    async fn start() -> Self {
        let bin = std::env::var("TANSU_BIN").unwrap_or_else(|_| {
            panic!("TANSU_BIN is not set: run ./scripts/test.sh, or export TANSU_BIN=$(./scripts/kafka.sh path)")
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let file = std::env::temp_dir().join(format!("tansu-test-{}.db", suffix()));
        let mut t = Self {
            bin,
            addr: format!("127.0.0.1:{port}"),
            file,
            child: None,
        };
        t.run().await;
        t
    }

    async fn run(&mut self) {
        let child = std::process::Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{}", self.addr),
                "--advertised-listener-url",
                &format!("tcp://{}", self.addr),
                "--storage-engine",
                &format!("sqlite://{}", self.file.display()),
            ])
            // tansu resolves the SQLite path against its working directory.
            .current_dir("/")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("tansu did not listen on {}", self.addr);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
        for ext in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{ext}", self.file.display()));
        }
    }
}

/// Events the broker acknowledged before it was killed are there after it
/// restarts on the same file, and so is the group's committed offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_restart_loses_no_acknowledged_event() {
    let mut tansu = Tansu::start().await;
    let m = Metrics::new("test", "t");
    let b = bus::connect(&kafka_args(&tansu.addr), &m).unwrap();
    let t = format!("test.{}.restart", suffix());
    let group = format!("g-{}", suffix());
    b.ensure_topics(std::slice::from_ref(&t)).await.unwrap();
    for i in 0..500 {
        b.publish(&t, None, click(i).into());
    }
    b.flush(Duration::from_secs(30));
    assert_eq!(b.pending(), 0, "acknowledged before the kill");
    let mut sub = b.subscribe(&group, std::slice::from_ref(&t)).await.unwrap();
    for want in 0..200 {
        let d = next(&mut sub).await;
        assert_eq!(d.decode::<LinkEvent>().unwrap().link_id, want);
        if want == 199 {
            sub.commit(&d).await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(sub);

    tansu.kill();
    // Published while the broker is down: they wait in the producer.
    for i in 500..1000 {
        b.publish(&t, None, click(i).into());
    }
    tansu.run().await;
    b.flush(Duration::from_secs(60));
    assert_eq!(b.pending(), 0, "delivered after the restart");

    let mut sub = b.subscribe(&group, std::slice::from_ref(&t)).await.unwrap();
    for want in 200..1000 {
        let d = next(&mut sub).await;
        assert_eq!(
            d.decode::<LinkEvent>().unwrap().link_id,
            want,
            "resumed at the committed offset, nothing lost or repeated"
        );
    }
    assert!(!m.render().contains("bus_events_dropped_total{"));
}
