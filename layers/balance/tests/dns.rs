//! DNS discovery against a small DNS responder on 127.0.0.1 that the test controls:
//! A records and SRV records, refresh on TTL, and the last set kept (and marked stale)
//! while the server does not answer.
#![cfg(feature = "dns")]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use palisade_balance::Balance;
use palisade_balance::discover::{DnsQuery, DnsSource};
use tokio::time::Instant;

/// SRV answers by name: (port, target) pairs.
type SrvTable = HashMap<String, Vec<(u16, String)>>;

/// Answers A and SRV questions from a table; stays silent while `down` is set.
#[derive(Clone, Default)]
struct Zone {
    a: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    aaaa: Arc<Mutex<HashMap<String, Vec<Ipv6Addr>>>>,
    srv: Arc<Mutex<SrvTable>>,
    down: Arc<AtomicBool>,
}

impl Zone {
    async fn serve(self) -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if self.down.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut reply = Message::new();
                reply
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(query.op_code())
                    .set_recursion_desired(query.recursion_desired())
                    .set_recursion_available(true)
                    .set_response_code(ResponseCode::NoError);
                for q in query.queries() {
                    reply.add_query(q.clone());
                    let name = q.name().to_ascii();
                    match q.query_type() {
                        RecordType::A => {
                            for ip in self
                                .a
                                .lock()
                                .unwrap()
                                .get(&name)
                                .cloned()
                                .unwrap_or_default()
                            {
                                reply.add_answer(Record::from_rdata(
                                    q.name().clone(),
                                    0,
                                    RData::A(A(ip)),
                                ));
                            }
                        }
                        RecordType::AAAA => {
                            for ip in self
                                .aaaa
                                .lock()
                                .unwrap()
                                .get(&name)
                                .cloned()
                                .unwrap_or_default()
                            {
                                reply.add_answer(Record::from_rdata(
                                    q.name().clone(),
                                    0,
                                    RData::AAAA(AAAA(ip)),
                                ));
                            }
                        }
                        RecordType::SRV => {
                            for (port, target) in self
                                .srv
                                .lock()
                                .unwrap()
                                .get(&name)
                                .cloned()
                                .unwrap_or_default()
                            {
                                let srv = SRV::new(1, 1, port, Name::from_str(&target).unwrap());
                                reply.add_answer(Record::from_rdata(
                                    q.name().clone(),
                                    0,
                                    RData::SRV(srv),
                                ));
                            }
                        }
                        _ => {}
                    }
                }
                let _ = socket.send_to(&reply.to_vec().unwrap(), peer).await;
            }
        });
        addr
    }
}

fn make(
    addr: SocketAddr,
) -> impl tower::Service<(), Response = SocketAddr, Error = std::io::Error, Future = impl Send>
+ Clone
+ Send
+ Sync {
    tower::service_fn(move |_: ()| async move { Ok(addr) })
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ports(b: &Balance<impl Sized>) -> Vec<(IpAddr, u16)> {
    b.endpoints()
        .iter()
        .map(|e| (e.addr.ip(), e.addr.port()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_are_followed_and_kept_while_dns_is_down() {
    let zone = Zone::default();
    zone.a.lock().unwrap().insert(
        "inventory.test.".into(),
        vec![Ipv4Addr::new(127, 0, 0, 11), Ipv4Addr::new(127, 0, 0, 12)],
    );
    let server = zone.clone().serve().await;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let balance = metrics::with_local_recorder(&recorder, || {
        let source = DnsSource::builder(
            "inventory",
            DnsQuery::Host {
                host: "inventory.test.".into(),
                port: 8080,
            },
        )
        .nameservers(vec![server])
        // The records say TTL 0: the lower bound decides how often we ask.
        .min_ttl(Duration::from_millis(100))
        .max_ttl(Duration::from_secs(5))
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
        Balance::builder("inventory").build(source, make).unwrap()
    });
    tokio::time::timeout(Duration::from_secs(5), balance.wait_for_endpoints(2))
        .await
        .expect("both A records resolved within 5 s");
    let ip = |last: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
    assert_eq!(ports(&balance), vec![(ip(11), 8080), (ip(12), 8080)]);

    zone.a
        .lock()
        .unwrap()
        .insert("inventory.test.".into(), vec![Ipv4Addr::new(127, 0, 0, 13)]);
    until("the new record", || ports(&balance) == vec![(ip(13), 8080)]).await;

    // The server stops answering: the last set stays, and it is marked stale.
    zone.down.store(true, Ordering::SeqCst);
    let stale = || {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .any(|(k, _, _, v)| {
                k.key().name() == "palisade_discovery_stale"
                    && matches!(v, DebugValue::Gauge(g) if g.into_inner() == 1.0)
            })
    };
    until("the stale mark", stale).await;
    assert_eq!(ports(&balance), vec![(ip(13), 8080)]);

    // Back: fresh again, with the current records.
    zone.a
        .lock()
        .unwrap()
        .insert("inventory.test.".into(), vec![Ipv4Addr::new(127, 0, 0, 14)]);
    zone.down.store(false, Ordering::SeqCst);
    until("recovery", || ports(&balance) == vec![(ip(14), 8080)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_each_target_its_port() {
    let zone = Zone::default();
    zone.srv.lock().unwrap().insert(
        "_http._tcp.payment.test.".into(),
        vec![
            (7001, "a.payment.test.".into()),
            (7002, "b.payment.test.".into()),
            // Taken down before its SRV record: skipped, not a failed lookup.
            (7003, "gone.payment.test.".into()),
        ],
    );
    zone.a
        .lock()
        .unwrap()
        .insert("a.payment.test.".into(), vec![Ipv4Addr::new(127, 0, 0, 21)]);
    zone.a
        .lock()
        .unwrap()
        .insert("b.payment.test.".into(), vec![Ipv4Addr::new(127, 0, 0, 22)]);
    // A dual-stack target: both its addresses.
    zone.aaaa
        .lock()
        .unwrap()
        .insert("b.payment.test.".into(), vec![Ipv6Addr::LOCALHOST]);
    let server = zone.clone().serve().await;
    let source = DnsSource::builder("payment", DnsQuery::Srv("_http._tcp.payment.test.".into()))
        .nameservers(vec![server])
        .min_ttl(Duration::from_millis(100))
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let balance = Balance::builder("payment")
        .without_metrics()
        .build(source, make)
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), balance.wait_for_endpoints(3))
        .await
        .expect("three endpoints within 5 s");
    let ip = |last: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
    let mut seen = ports(&balance);
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (ip(21), 7001),
            (ip(22), 7002),
            (IpAddr::V6(Ipv6Addr::LOCALHOST), 7002)
        ]
    );
}

#[test]
fn bad_settings_are_named() {
    let err = DnsSource::builder("x", DnsQuery::Srv(" ".into()))
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "query: the name to resolve is empty");
    let err = DnsSource::builder("x", DnsQuery::Srv("a.".into()))
        .min_ttl(Duration::from_secs(5))
        .max_ttl(Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "max_ttl: 1s is shorter than min_ttl (5s)");
}
