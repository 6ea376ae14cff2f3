//! The balancer over three real HTTP replicas on 127.0.0.1: an erroring replica is
//! ejected, a slow one is avoided, a killed one is routed around (with retry in the
//! stack, no user request fails).
#![cfg(feature = "http")]
#![allow(clippy::field_reassign_with_default)] // settings read best one per line

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade_balance::discover::Registry;
use palisade_balance::http::SetAuthority;
use palisade_balance::{Balance, BalanceConfig, EndpointState};
use palisade_core::HttpClassifier;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

type Req = http::Request<Full<Bytes>>;

/// The tests here measure real latencies on a 2-core machine: run one at a time, so
/// that no test's replicas slow down because another's are busy.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Replica {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<()>,
}

async fn replica(delay_ms: u64) -> Replica {
    let hits = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let (h, f) = (hits.clone(), failing.clone());
    let app = Router::new().route(
        "/item",
        get(move || {
            let (h, f) = (h.clone(), f.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let ms = delay_ms;
                if ms > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                if f.load(Ordering::SeqCst) {
                    (StatusCode::INTERNAL_SERVER_ERROR, "broken")
                } else {
                    (StatusCode::OK, "ok")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Replica {
        addr,
        hits,
        failing,
        server,
    }
}

/// One hyper client, pointed at each endpoint by `SetAuthority`; attempts counted
/// per address on the client side (a dead replica cannot count them).
fn maker(
    pooled: bool,
    attempts: Arc<Mutex<HashMap<SocketAddr, usize>>>,
) -> impl Fn(SocketAddr) -> CountingEndpoint + Send + 'static {
    let mut builder = Client::builder(TokioExecutor::new());
    if !pooled {
        builder.pool_max_idle_per_host(0);
    }
    let client: Client<HttpConnector, Full<Bytes>> = builder.build_http();
    move |addr| CountingEndpoint {
        inner: SetAuthority::new(client.clone(), addr),
        addr,
        attempts: attempts.clone(),
    }
}

#[derive(Clone)]
struct CountingEndpoint {
    inner: SetAuthority<Client<HttpConnector, Full<Bytes>>>,
    addr: SocketAddr,
    attempts: Arc<Mutex<HashMap<SocketAddr, usize>>>,
}

impl Service<Req> for CountingEndpoint {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = <SetAuthority<Client<HttpConnector, Full<Bytes>>> as Service<Req>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        *self.attempts.lock().unwrap().entry(self.addr).or_default() += 1;
        self.inner.call(req)
    }
}

fn get_item() -> Req {
    http::Request::get("/item")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn send<S>(svc: &mut S) -> Result<StatusCode, palisade_core::Error>
where
    S: Service<Req, Response = http::Response<hyper::body::Incoming>, Error = palisade_core::Error>,
{
    let resp = svc.ready().await?.call(get_item()).await?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erroring_replica_is_ejected_quickly_and_then_gets_almost_nothing() {
    let _serial = SERIAL.lock().await;
    let replicas = [replica(1).await, replica(1).await, replica(1).await];
    let bad = &replicas[0];
    bad.failing.store(true, Ordering::SeqCst);
    let registry = Registry::new();
    let _guards: Vec<_> = replicas
        .iter()
        .map(|r| registry.register("loop-errors", r.addr))
        .collect();
    let mut config = BalanceConfig::default();
    // Judge ejection alone: no latency steering traffic away first (peak-EWMA would
    // shun the replica after one slow answer on a busy machine, and the penalty after
    // one failure), so calls spread evenly until the detector decides.
    config.failure_penalty = Duration::ZERO;
    config.load = palisade_balance::LoadMetric::PendingRequests;
    let balance = Balance::builder("loop-errors")
        .config(config)
        .classify(HttpClassifier)
        .without_metrics()
        .build(
            registry.watch("loop-errors").unwrap(),
            maker(true, Default::default()),
        )
        .unwrap();

    let started = Instant::now();
    let mut svc = balance.clone();
    while balance
        .endpoints()
        .iter()
        .all(|e| e.state != EndpointState::Ejected)
    {
        let _ = send(&mut svc).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not ejected within 1 s"
        );
    }
    let errors = bad.hits.load(Ordering::SeqCst);
    assert!(errors <= 5, "ejected after {errors} errors");
    let ejected = balance
        .endpoints()
        .into_iter()
        .find(|e| e.state == EndpointState::Ejected)
        .unwrap();
    assert_eq!(ejected.addr, bad.addr);

    // 8 concurrent callers, 2400 requests: the ejected replica returns after 1 s,
    // fails 5 more, and is ejected for 2 s, and so on.
    let before = bad.hits.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut svc = balance.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..300 {
                let _ = send(&mut svc).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let share = (bad.hits.load(Ordering::SeqCst) - before) as f64 / 2400.0;
    assert!(
        share < 0.02,
        "the ejected replica got {share} of the traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_times_slower_replica_gets_under_ten_percent() {
    let _serial = SERIAL.lock().await;
    let replicas = [replica(4).await, replica(4).await, replica(40).await];
    let registry = Registry::new();
    let _guards: Vec<_> = replicas
        .iter()
        .map(|r| registry.register("loop-slow", r.addr))
        .collect();
    let balance = Balance::builder("loop-slow")
        .classify(HttpClassifier)
        .without_metrics()
        .build(
            registry.watch("loop-slow").unwrap(),
            maker(true, Default::default()),
        )
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut svc = balance.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                assert_eq!(send(&mut svc).await.unwrap(), StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total: usize = replicas.iter().map(|r| r.hits.load(Ordering::SeqCst)).sum();
    assert_eq!(total, 600);
    let slow = replicas[2].hits.load(Ordering::SeqCst) as f64 / total as f64;
    assert!(slow < 0.10, "the slow replica got {slow}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_is_routed_around_and_retry_hides_it() {
    let _serial = SERIAL.lock().await;
    let mut replicas = vec![replica(2).await, replica(2).await, replica(2).await];
    let registry = Registry::new();
    let _guards: Vec<_> = replicas
        .iter()
        .map(|r| registry.register("loop-kill", r.addr))
        .collect();
    let attempts: Arc<Mutex<HashMap<SocketAddr, usize>>> = Default::default();
    // Default settings: the failure penalty steers away after the first refusal.
    let balance = Balance::builder("loop-kill")
        .classify(HttpClassifier)
        .without_metrics()
        .build(
            registry.watch("loop-kill").unwrap(),
            // No pooled connections: after the kill every attempt must connect, and
            // is refused.
            maker(false, attempts.clone()),
        )
        .unwrap();
    let retry = palisade_retry::RetryLayer::builder("loop-kill")
        .max_attempts(3)
        .backoff(palisade_retry::Backoff {
            strategy: palisade_retry::Strategy::Constant,
            base: Duration::from_millis(1),
            ..palisade_retry::Backoff::default()
        })
        .budget(palisade_retry::BudgetConfig {
            deposit_ratio: 1.0,
            min_retries_per_sec: 1_000,
            max_balance: 1_000,
        })
        .classify(HttpClassifier)
        .protocol(palisade_retry::http::HttpRetry::default())
        .without_metrics()
        .build()
        .unwrap();
    let stack = tower::ServiceBuilder::new()
        .layer(retry)
        .service(balance.clone());

    let failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for _ in 0..6 {
        let mut svc = stack.clone();
        let failures = failures.clone();
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < Duration::from_millis(2500) {
                match send(&mut svc).await {
                    Ok(StatusCode::OK) => {}
                    other => {
                        eprintln!("user request failed: {other:?}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let counts = |seen: &HashMap<SocketAddr, usize>| -> Vec<usize> {
        replicas
            .iter()
            .map(|r| seen.get(&r.addr).copied().unwrap_or(0))
            .collect()
    };
    let earlier = counts(&attempts.lock().unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Kill the replica busiest in the last 100 ms, so the kill surely hits traffic.
    let now = counts(&attempts.lock().unwrap());
    let victim_index = (0..now.len()).max_by_key(|&i| now[i] - earlier[i]).unwrap();
    // It was in rotation when it died.
    assert!(now[victim_index] > earlier[victim_index]);
    let victim = replicas.remove(victim_index);
    let dead = victim.addr;
    victim.server.abort();
    let _ = victim.server.await;
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_one_second = attempts.lock().unwrap().clone();
    for t in tasks {
        t.await.unwrap();
    }
    let at_end = attempts.lock().unwrap().clone();
    assert!(killed_at.elapsed() >= Duration::from_secs(1));
    assert_eq!(failures.load(Ordering::SeqCst), 0, "a user request failed");
    let late_dead =
        at_end.get(&dead).copied().unwrap_or(0) - at_one_second.get(&dead).copied().unwrap_or(0);
    let late_all: usize = at_end.values().sum::<usize>() - at_one_second.values().sum::<usize>();
    assert!(late_all > 100, "too little traffic to judge: {late_all}");
    assert!(
        (late_dead as f64) < 0.01 * late_all as f64,
        "the killed replica still got {late_dead} of {late_all} attempts a second after it died"
    );
}
