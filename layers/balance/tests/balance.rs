//! The balancer on paused time: ejection timing, max ejection, panic mode, slow start,
//! no endpoints, and endpoints that change while calls are in flight.

#![allow(clippy::field_reassign_with_default)] // settings read best one per line

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_balance::discover::Registry;
use palisade_balance::{Balance, BalanceConfig, EndpointState, LoadMetric};
use palisade_core::RejectionKind;
use tower::{Service, ServiceExt};

/// How each test endpoint behaves, by address.
#[derive(Default, Clone)]
struct Fleet {
    nodes: Arc<Mutex<HashMap<SocketAddr, Arc<Node>>>>,
}

#[derive(Default)]
struct Node {
    failing: AtomicBool,
    delay_ms: AtomicU64,
    hits: AtomicUsize,
    /// Calls never answer while set.
    stuck: AtomicBool,
}

impl Fleet {
    fn node(&self, addr: SocketAddr) -> Arc<Node> {
        self.nodes.lock().unwrap().entry(addr).or_default().clone()
    }

    fn hits(&self, addr: SocketAddr) -> usize {
        self.node(addr).hits.load(Ordering::SeqCst)
    }

    fn maker(
        &self,
    ) -> impl Fn(SocketAddr) -> tower::util::BoxCloneSyncService<(), SocketAddr, std::io::Error>
    + Send
    + 'static {
        let fleet = self.clone();
        move |addr| {
            let node = fleet.node(addr);
            tower::util::BoxCloneSyncService::new(tower::service_fn(move |_: ()| {
                let node = node.clone();
                async move {
                    node.hits.fetch_add(1, Ordering::SeqCst);
                    if node.stuck.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    let delay = node.delay_ms.load(Ordering::SeqCst);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    if node.failing.load(Ordering::SeqCst) {
                        Err(std::io::Error::other("boom"))
                    } else {
                        Ok(addr)
                    }
                }
            }))
        }
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn quiet() -> BalanceConfig {
    let mut c = BalanceConfig::default();
    c.slow_start.window = Duration::ZERO;
    c.outlier.failure_rate = None;
    // Without the latency penalty a failing endpoint keeps being picked, so the
    // ejection detectors see every failure.
    c.failure_penalty = Duration::ZERO;
    // Paused time answers in zero time, which peak-EWMA would read as "this one is
    // fastest" forever; picking by pending requests spreads calls evenly.
    c.load = LoadMetric::PendingRequests;
    c
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn state(balance: &Balance<impl Sized, impl Sized>, a: SocketAddr) -> Option<EndpointState> {
    balance
        .endpoints()
        .iter()
        .find(|e| e.addr == a)
        .map(|e| e.state)
}

type Svc = tower::util::BoxCloneSyncService<(), SocketAddr, std::io::Error>;

async fn call(b: &mut Balance<Svc>) -> Result<SocketAddr, palisade_core::Error> {
    b.ready().await?.call(()).await
}

fn three(
    fleet: &Fleet,
    config: BalanceConfig,
) -> (
    Registry,
    Vec<palisade_balance::discover::Registration>,
    Balance<Svc>,
) {
    let registry = Registry::new();
    let guards = (1..=3).map(|p| registry.register("svc", addr(p))).collect();
    let balance = Balance::builder("svc")
        .config(config)
        .without_metrics()
        .build(registry.watch("svc").unwrap(), fleet.maker())
        .unwrap();
    (registry, guards, balance)
}

#[tokio::test(start_paused = true)]
async fn no_endpoints_is_refused_at_once() {
    let registry = Registry::new();
    let mut balance = Balance::builder("empty")
        .without_metrics()
        .build(registry.watch("empty").unwrap(), Fleet::default().maker())
        .unwrap();
    let started = tokio::time::Instant::now();
    // poll_ready does not wait for endpoints; call refuses.
    let err = call(&mut balance).await.unwrap_err();
    assert_eq!(err.rejection().unwrap().kind(), RejectionKind::NoEndpoints);
    assert_eq!(
        err.rejection().unwrap().downstream().unwrap().as_str(),
        "empty"
    );
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_for_growing_capped_times() {
    let fleet = Fleet::default();
    let mut config = quiet();
    config.outlier.consecutive_failures = 3;
    config.outlier.base_ejection_time = Duration::from_secs(1);
    config.outlier.max_ejection_time = Duration::from_millis(2500);
    let (_r, _g, mut balance) = three(&fleet, config);
    let bad = addr(2);
    fleet.node(bad).failing.store(true, Ordering::SeqCst);

    let mut ejected_after = Vec::new();
    for round in 0..4 {
        // Send until the bad endpoint has failed 3 times in a row.
        let before = fleet.hits(bad);
        while state(&balance, bad) != Some(EndpointState::Ejected) {
            let _ = call(&mut balance).await;
        }
        assert_eq!(
            fleet.hits(bad) - before,
            3,
            "round {round}: ejected after 3 failures"
        );
        // While ejected it gets nothing.
        let during = fleet.hits(bad);
        for _ in 0..50 {
            call(&mut balance).await.unwrap();
        }
        assert_eq!(fleet.hits(bad), during);
        // Find how long the ejection lasts, in 100 ms steps.
        let start = tokio::time::Instant::now();
        while state(&balance, bad) == Some(EndpointState::Ejected) {
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        ejected_after.push(start.elapsed().as_millis());
    }
    // 1 s, 2 s, then capped at 2.5 s.
    assert_eq!(ejected_after, vec![1000, 2000, 2500, 2500]);
}

#[tokio::test(start_paused = true)]
async fn a_long_healthy_stretch_resets_the_ejection_time() {
    let fleet = Fleet::default();
    let mut config = quiet();
    config.outlier.consecutive_failures = 2;
    config.outlier.max_ejection_time = Duration::from_secs(5);
    let (_r, _g, mut balance) = three(&fleet, config);
    let bad = addr(1);
    let node = fleet.node(bad);
    node.failing.store(true, Ordering::SeqCst);
    for expected in [1000u128, 2000, 1000] {
        while state(&balance, bad) != Some(EndpointState::Ejected) {
            let _ = call(&mut balance).await;
        }
        let start = tokio::time::Instant::now();
        while state(&balance, bad) == Some(EndpointState::Ejected) {
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert_eq!(start.elapsed().as_millis(), expected);
        if expected == 2000 {
            // Healthy for as long as the longest ejection: the count starts afresh.
            tokio::time::advance(Duration::from_secs(5)).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn failure_rate_ejects_an_endpoint_that_fails_half_its_calls() {
    let fleet = Fleet::default();
    let mut config = quiet();
    config.outlier.consecutive_failures = 0;
    config.outlier.failure_rate = Some(0.5);
    config.outlier.failure_rate_min_calls = 10;
    let (_r, _g, mut balance) = three(&fleet, config);
    let flaky = addr(3);
    let node = fleet.node(flaky);
    let mut n = 0;
    // Every other call to `flaky` fails: never two in a row.
    while state(&balance, flaky) != Some(EndpointState::Ejected) {
        node.failing.store(n % 2 == 0, Ordering::SeqCst);
        let _ = call(&mut balance).await;
        n = fleet.hits(flaky);
        assert!(
            n <= 12,
            "ejected by 10 calls at a 50% failure rate, got {n}"
        );
    }
    assert!(n >= 10, "not ejected before min_calls: {n}");
}

#[tokio::test(start_paused = true)]
async fn at_most_max_ejection_percent_is_ejected() {
    let fleet = Fleet::default();
    let mut config = quiet();
    config.outlier.consecutive_failures = 2;
    config.outlier.max_ejection_percent = 50;
    config.outlier.panic_threshold_percent = 0;
    let registry = Registry::new();
    let _g: Vec<_> = (1..=4).map(|p| registry.register("svc", addr(p))).collect();
    let mut balance = Balance::builder("svc")
        .config(config)
        .without_metrics()
        .build(registry.watch("svc").unwrap(), fleet.maker())
        .unwrap();
    for p in 1..=3 {
        fleet.node(addr(p)).failing.store(true, Ordering::SeqCst);
    }
    for _ in 0..200 {
        let _ = call(&mut balance).await;
    }
    let ejected = balance
        .endpoints()
        .iter()
        .filter(|e| e.state == EndpointState::Ejected)
        .count();
    assert_eq!(ejected, 2, "50% of 4");
}

#[tokio::test(start_paused = true)]
async fn panic_mode_balances_over_all_when_too_few_are_healthy() {
    let fleet = Fleet::default();
    let mut config = quiet();
    config.outlier.consecutive_failures = 1;
    config.outlier.max_ejection_percent = 100;
    config.outlier.panic_threshold_percent = 50;
    config.outlier.base_ejection_time = Duration::from_secs(10);
    let (_r, _g, mut balance) = three(&fleet, config);
    fleet.node(addr(1)).failing.store(true, Ordering::SeqCst);
    while state(&balance, addr(1)) != Some(EndpointState::Ejected) {
        let _ = call(&mut balance).await;
    }
    // 2 of 3 healthy: not panicking, the ejected one gets nothing.
    assert!(!balance.is_panicking());
    fleet.node(addr(2)).failing.store(true, Ordering::SeqCst);
    while state(&balance, addr(2)) != Some(EndpointState::Ejected) {
        let _ = call(&mut balance).await;
    }
    // 1 of 3 healthy (33% < 50%): every endpoint takes traffic again.
    assert!(balance.is_panicking());
    let before: Vec<usize> = (1..=3).map(|p| fleet.hits(addr(p))).collect();
    for _ in 0..300 {
        let _ = call(&mut balance).await;
    }
    for p in 1..=3 {
        let got = fleet.hits(addr(p)) - before[usize::from(p) - 1];
        assert!(got > 30, "endpoint {p} got {got} of 300 in panic mode");
    }
    // The ejections end; panic mode ends with them.
    fleet.node(addr(1)).failing.store(false, Ordering::SeqCst);
    fleet.node(addr(2)).failing.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(10)).await;
    settle().await;
    assert!(!balance.is_panicking());
    assert!(
        balance
            .endpoints()
            .iter()
            .all(|e| e.state == EndpointState::Ready)
    );
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_new_endpoint_up() {
    let fleet = Fleet::default();
    let mut config = quiet();
    config.load = LoadMetric::PendingRequests;
    config.slow_start.window = Duration::from_secs(10);
    config.slow_start.min_weight = 0.1;
    let registry = Registry::new();
    let _a = registry.register("svc", addr(1));
    let mut balance = Balance::builder("svc")
        .config(config)
        .without_metrics()
        .build(registry.watch("svc").unwrap(), fleet.maker())
        .unwrap();
    assert_eq!(
        state(&balance, addr(1)),
        Some(EndpointState::Ready),
        "the first set starts at full weight"
    );
    let _b = registry.register("svc", addr(2));
    balance.wait_for_endpoints(2).await;
    assert_eq!(state(&balance, addr(2)), Some(EndpointState::SlowStart));
    let share = |fleet: &Fleet, before: usize| (fleet.hits(addr(2)) - before) as f64 / 1000.0;
    let before = fleet.hits(addr(2));
    for _ in 0..1000 {
        call(&mut balance).await.unwrap();
    }
    let early = share(&fleet, before);
    // Even split would be 50%; at weight 0.1 the new endpoint wins 10% of its draws.
    assert!(early < 0.15, "new endpoint took {early}");
    tokio::time::advance(Duration::from_secs(5)).await;
    let before = fleet.hits(addr(2));
    for _ in 0..1000 {
        call(&mut balance).await.unwrap();
    }
    let half = share(&fleet, before);
    assert!(half > early + 0.1 && half < 0.45, "half-way share {half}");
    tokio::time::advance(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(state(&balance, addr(2)), Some(EndpointState::Ready));
    let before = fleet.hits(addr(2));
    for _ in 0..1000 {
        call(&mut balance).await.unwrap();
    }
    let full = share(&fleet, before);
    assert!(full > 0.4, "full share {full}");
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_removed_mid_call_is_never_picked_and_its_late_failure_is_harmless() {
    // tower issue 856: a ready index that went stale when an endpoint was removed.
    let fleet = Fleet::default();
    let mut config = quiet();
    config.outlier.consecutive_failures = 1;
    config.outlier.max_ejection_percent = 100;
    let registry = Registry::new();
    let a = registry.register("svc", addr(1));
    let _b = registry.register("svc", addr(2));
    let mut balance = Balance::builder("svc")
        .config(config)
        .without_metrics()
        .build(registry.watch("svc").unwrap(), fleet.maker())
        .unwrap();
    let node = fleet.node(addr(1));
    node.delay_ms.store(100, Ordering::SeqCst);
    node.failing.store(true, Ordering::SeqCst);
    // Start calls until one is in flight to endpoint 1.
    let mut in_flight = Vec::new();
    while fleet.hits(addr(1)) == 0 {
        let mut svc = balance.clone();
        let fut = tokio::spawn(async move { svc.ready().await?.call(()).await });
        settle().await;
        in_flight.push(fut);
    }
    drop(a);
    settle().await;
    assert_eq!(balance.endpoints().len(), 1);
    // The same address comes back as a new endpoint before the old call fails.
    let _a2 = registry.register("svc", addr(1));
    settle().await;
    node.failing.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_millis(100)).await;
    for f in in_flight {
        let _ = f.await.unwrap();
    }
    // The late failure belonged to the removed endpoint: the new one is not ejected.
    assert_eq!(state(&balance, addr(1)), Some(EndpointState::Ready));
    drop(_a2);
    settle().await;
    let before = fleet.hits(addr(1));
    for _ in 0..100 {
        assert_eq!(call(&mut balance).await.unwrap(), addr(2));
    }
    assert_eq!(fleet.hits(addr(1)), before);
}

#[tokio::test(start_paused = true)]
async fn a_new_endpoint_gets_traffic_while_the_others_are_saturated() {
    // tower issue 824: new endpoints starved behind a buffer of waiting requests.
    let fleet = Fleet::default();
    let mut config = quiet();
    config.load = LoadMetric::PendingRequests;
    let registry = Registry::new();
    let _a = registry.register("svc", addr(1));
    let balance = Balance::builder("svc")
        .config(config)
        .without_metrics()
        .build(registry.watch("svc").unwrap(), fleet.maker())
        .unwrap();
    fleet.node(addr(1)).stuck.store(true, Ordering::SeqCst);
    let mut stuck = Vec::new();
    for _ in 0..100 {
        let mut svc = balance.clone();
        stuck.push(tokio::spawn(
            async move { svc.ready().await?.call(()).await },
        ));
    }
    settle().await;
    assert_eq!(fleet.hits(addr(1)), 100);
    let _b = registry.register("svc", addr(2));
    balance.wait_for_endpoints(2).await;
    let mut svc = balance.clone();
    for _ in 0..20 {
        assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), addr(2));
    }
    for s in stuck {
        s.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_prefers_the_fast_endpoint() {
    let fleet = Fleet::default();
    let mut config = quiet();
    config.load = LoadMetric::PeakEwma;
    let (_r, _g, balance) = three(&fleet, config);
    for p in 1..=3 {
        fleet
            .node(addr(p))
            .delay_ms
            .store(if p == 3 { 100 } else { 10 }, Ordering::SeqCst);
    }
    // 10 concurrent callers for 20 s of virtual time.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut svc = balance.clone();
        tasks.push(tokio::spawn(async move {
            let end = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::time::Instant::now() < end {
                svc.ready().await.unwrap().call(()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total: usize = (1..=3).map(|p| fleet.hits(addr(p))).sum();
    let slow = fleet.hits(addr(3)) as f64 / total as f64;
    assert!(slow < 0.1, "the 10× slower endpoint took {slow}");
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_stops_answering_stops_looking_cheap() {
    // Peak-EWMA load over two endpoints, each call cut off after 100 ms (as a
    // per-try timeout above the balancer does); one endpoint answers in 10 ms, the
    // other never answers.
    let fleet = Fleet::default();
    let registry = Registry::new();
    let _guards: Vec<_> = (1..=2).map(|p| registry.register("svc", addr(p))).collect();
    let mut config = quiet();
    config.load = LoadMetric::PeakEwma;
    let mut balance = Balance::builder("svc")
        .config(config)
        .without_metrics()
        .build(registry.watch("svc").unwrap(), fleet.maker())
        .unwrap();
    settle().await;
    fleet.node(addr(1)).delay_ms.store(10, Ordering::SeqCst);
    fleet.node(addr(2)).stuck.store(true, Ordering::SeqCst);
    for _ in 0..40 {
        let _ = tokio::time::timeout(Duration::from_millis(100), call(&mut balance)).await;
    }
    // A call cut off after 100 ms counts as a 100 ms answer in the stuck endpoint's
    // cost (as in tower's peak-EWMA), so the balancer moves off it at once rather
    // than keep sending it half the calls.
    assert!(
        fleet.hits(addr(2)) <= 2,
        "the stuck endpoint got {} of 40 calls",
        fleet.hits(addr(2))
    );
}
