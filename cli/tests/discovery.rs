//! Replica discovery by DNS (`LINKS_UPSTREAMS=dns://name:port`), as
//! compose's service DNS and a Kubernetes headless Service drive it: real
//! `shortlink links` replicas on loopback addresses 127.0.0.2.. (one port,
//! one address each, like containers or pods), a real edge, and a DNS server
//! on loopback that the test controls, whose answer changes under load.

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use shortlink_testkit::{TestDb, eventually, free_port, http_get, require_redis};
use support::{EdgeProc, Load, Proc, links_env, spawn_raw, user_and_link, wait_http_ok};

/// What the test DNS server answers: `None` is SERVFAIL (a sick resolver).
type Answer = Arc<Mutex<Option<BTreeSet<Ipv4Addr>>>>;

/// A DNS server on 127.0.0.1 (UDP) answering A queries for `name` with the
/// current `Answer` (TTL 600 s, like Docker's embedded DNS, which the edge
/// must not honour), AAAA with no records, anything else NXDOMAIN.
async fn dns_server(
    name: &'static str,
    answer: Answer,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::new();
            r.set_id(q.id())
                .set_message_type(MessageType::Response)
                .set_op_code(q.op_code())
                .set_recursion_desired(q.recursion_desired())
                .set_recursion_available(true)
                .set_authoritative(true);
            let current = answer.lock().unwrap().clone();
            let mut code = ResponseCode::NoError;
            for query in q.queries() {
                r.add_query(query.clone());
                let qname = query.name().to_ascii();
                if qname.trim_end_matches('.') != name {
                    code = ResponseCode::NXDomain;
                    continue;
                }
                match (&current, query.query_type()) {
                    (None, _) => code = ResponseCode::ServFail,
                    (Some(ips), RecordType::A) => {
                        for ip in ips {
                            r.add_answer(Record::from_rdata(
                                query.name().clone(),
                                600,
                                RData::A(A(*ip)),
                            ));
                        }
                    }
                    _ => {}
                }
            }
            r.set_response_code(code);
            if let Ok(bytes) = r.to_vec() {
                let _ = sock.send_to(&bytes, peer).await;
            }
        }
    });
    (addr, task)
}

/// A links replica listening on `ip:port` (gRPC), its side port on 127.0.0.1.
async fn replica_on(ip: Ipv4Addr, port: u16, env: &[(&'static str, String)]) -> (Proc, SocketAddr) {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut all = env.to_vec();
    all.push(("LINKS_GRPC_ADDR", format!("{ip}:{port}")));
    all.push(("LINKS_HTTP_ADDR", http.to_string()));
    all.push(("SHUTDOWN_DELAY_MS", "0".into()));
    let mut p = spawn_raw(&["links"], &all);
    wait_http_ok(&mut p, http, "/ready").await;
    (p, http)
}

fn set(answer: &Answer, ips: &[Ipv4Addr]) {
    *answer.lock().unwrap() = Some(ips.iter().copied().collect());
}

async fn metrics(edge: &EdgeProc) -> String {
    http_get(edge.metrics, "/metrics").await.1
}

/// Sum of the `name` series whose replica label is `ip:port`; None when
/// the edge has no such series (the replica is not in its set).
fn series(body: &str, name: &str, ip: Ipv4Addr, port: u16) -> Option<f64> {
    let needle = format!("{name}{{replica=\"{ip}:{port}\"");
    let vals: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!vals.is_empty()).then(|| vals.iter().sum())
}

async fn selections(edge: &EdgeProc, ip: Ipv4Addr, port: u16) -> Option<f64> {
    series(
        &metrics(edge).await,
        "shortlink_upstream_selections_total",
        ip,
        port,
    )
}

#[tokio::test]
async fn dns_discovery_adds_and_removes_replicas_under_load_without_a_failed_request() {
    require_redis().await;
    let db = TestDb::new().await;
    let env = links_env(&db, &[]);
    let port = free_port();
    let ips: Vec<Ipv4Addr> = (2..=4).map(|d| Ipv4Addr::new(127, 0, 0, d)).collect();
    let (r2, _) = replica_on(ips[0], port, &env).await;
    let (r3, _) = replica_on(ips[1], port, &env).await;
    let (r4, _) = replica_on(ips[2], port, &env).await;
    let mut procs = vec![Some(r2), Some(r3), Some(r4)];

    let answer: Answer = Arc::new(Mutex::new(None));
    set(&answer, &ips[..1]);
    let (dns, _dns_task) = dns_server("links.test", answer.clone()).await;

    let edge = EdgeProc::start(
        &[],
        &[
            ("LINKS_UPSTREAMS", format!("dns://links.test:{port}")),
            ("EDGE_DNS_SERVER", dns.to_string()),
            ("EDGE_DNS_INTERVAL_MS", "200".into()),
            ("EDGE_RESOLVE_CACHE_TTL_MS", "0".into()),
            ("RATE_LIMIT_RPS", "1000000".into()),
            ("RATE_LIMIT_BURST", "1000000".into()),
        ],
    )
    .await;
    let (_, code) = user_and_link(edge.http, "dnsuser").await;
    assert!(selections(&edge, ips[0], port).await.is_some());
    assert!(
        selections(&edge, ips[1], port).await.is_none(),
        "not yet discovered"
    );

    let load = Load::start(edge.http, &code, 8, 60, usize::MAX);
    let limit = Duration::from_secs(15);

    // Scale up: 1 -> 2 -> 3 replicas, each taking traffic once resolved.
    set(&answer, &ips[..2]);
    assert!(
        eventually(limit, async || selections(&edge, ips[1], port)
            .await
            .unwrap_or(0.0)
            > 20.0)
        .await,
        "the second replica never took traffic"
    );
    let first_before = selections(&edge, ips[0], port).await.unwrap();
    set(&answer, &ips[..3]);
    assert!(
        eventually(limit, async || selections(&edge, ips[2], port)
            .await
            .unwrap_or(0.0)
            > 20.0)
        .await,
        "the third replica never took traffic"
    );
    // The replica that stayed kept its state (its counter went on, it was
    // not replaced by a fresh one).
    assert!(selections(&edge, ips[0], port).await.unwrap() > first_before);

    // A sick resolver (SERVFAIL) and an empty answer keep the last set.
    *answer.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_millis(800)).await;
    set(&answer, &[]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let m = metrics(&edge).await;
    for ip in &ips {
        assert_eq!(
            series(&m, "shortlink_upstream_healthy", *ip, port),
            Some(1.0),
            "{ip} left the set on a DNS failure"
        );
    }
    for result in ["error", "empty"] {
        let needle = format!("shortlink_upstream_discovery_lookups_total{{result=\"{result}\"");
        assert!(
            m.lines().any(|l| l.starts_with(&needle)),
            "no {result} lookups counted: {m}"
        );
    }

    // Scale down the way orchestrators do: out of DNS first, then stopped.
    set(&answer, &ips[1..3]);
    assert!(
        eventually(limit, async || selections(&edge, ips[0], port)
            .await
            .is_none())
        .await,
        "the removed replica's series stayed"
    );
    let mut gone = procs[0].take().unwrap();
    gone.sigterm();
    gone.wait_exit(Duration::from_secs(10)).await;
    // Then a replica that dies before DNS notices (a crash): ejection and
    // retry keep every request answered, and DNS then takes it out.
    let mut crashed = procs[1].take().unwrap();
    crashed.0.kill().unwrap();
    let _ = crashed.0.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    set(&answer, &ips[2..3]);
    assert!(
        eventually(limit, async || selections(&edge, ips[1], port)
            .await
            .is_none())
        .await,
        "the crashed replica stayed in the set"
    );
    let last_before = selections(&edge, ips[2], port).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(selections(&edge, ips[2], port).await.unwrap() > last_before);

    // Stop the load early: 60 s was only an upper bound.
    let (failed, total) = load.finish_now().await;
    drop(procs);
    assert!(total > 500, "too little load to mean anything: {total}");
    assert_eq!(failed, 0, "{failed} of {total} requests failed");
}
