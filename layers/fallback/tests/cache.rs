//! The stale-if-error cache, on paused time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use palisade_core::{Rejection, RejectionKind};
use palisade_fallback::{CacheLayer, CloneStore, Served, key_fn};
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

#[derive(Debug, Clone, PartialEq)]
struct Product {
    id: u32,
    version: u32,
    served: Option<Served>,
}

/// How the catalog answers while it is down.
#[derive(Clone, Copy, PartialEq)]
enum Down {
    /// Fails after the given time.
    Fails(Duration),
    /// Palisade refuses (as an open breaker would).
    Refused,
}

/// A catalog dependency: answers `Product { id, version }` after `latency`; while
/// down, fails or refuses. Counts calls, tracks calls in flight per key.
#[derive(Clone)]
struct Catalog {
    latency: Duration,
    down: Arc<Mutex<Option<Down>>>,
    version: Arc<AtomicU32>,
    calls: Arc<AtomicUsize>,
    in_flight: Arc<Mutex<HashMap<u32, usize>>>,
    max_in_flight_per_key: Arc<AtomicUsize>,
    /// When each call made while down started.
    dead_calls: Arc<Mutex<Vec<Instant>>>,
}

impl Catalog {
    fn new(latency: Duration) -> Self {
        Self {
            latency,
            down: Arc::new(Mutex::new(None)),
            version: Arc::new(AtomicU32::new(1)),
            calls: Arc::new(AtomicUsize::new(0)),
            in_flight: Arc::default(),
            max_in_flight_per_key: Arc::default(),
            dead_calls: Arc::default(),
        }
    }

    fn go_down(&self, how: Down) {
        *self.down.lock().unwrap() = Some(how);
    }

    fn recover(&self) {
        *self.down.lock().unwrap() = None;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn service(
        catalog: Catalog,
    ) -> impl Service<u32, Response = Product, Error = BoxError, Future = impl Send>
    + Clone
    + Send
    + 'static {
        tower::service_fn(move |id: u32| {
            let catalog = catalog.clone();
            async move {
                catalog.calls.fetch_add(1, Ordering::SeqCst);
                {
                    let mut in_flight = catalog.in_flight.lock().unwrap();
                    let n = in_flight.entry(id).or_default();
                    *n += 1;
                    catalog
                        .max_in_flight_per_key
                        .fetch_max(*n, Ordering::SeqCst);
                }
                let down = *catalog.down.lock().unwrap();
                let result = match down {
                    None => {
                        tokio::time::sleep(catalog.latency).await;
                        Ok(Product {
                            id,
                            version: catalog.version.load(Ordering::SeqCst),
                            served: None,
                        })
                    }
                    Some(Down::Fails(after)) => {
                        catalog.dead_calls.lock().unwrap().push(Instant::now());
                        tokio::time::sleep(after).await;
                        Err::<Product, BoxError>("connection refused".into())
                    }
                    Some(Down::Refused) => Err(Rejection::new(RejectionKind::CircuitOpen).into()),
                };
                *catalog.in_flight.lock().unwrap().get_mut(&id).unwrap() -= 1;
                result
            }
        })
    }
}

fn store() -> CloneStore<Product> {
    CloneStore::new()
        .with_weigher(|_| 100)
        .with_marker(|p: &mut Product, served| p.served = Some(served))
}

fn cache(
    fresh: Duration,
    max_stale: Duration,
) -> palisade_fallback::CacheBuilder<
    impl palisade_fallback::KeyOf<u32, Key = u32>,
    CloneStore<Product>,
> {
    // Product 0 is not cacheable.
    CacheLayer::builder(
        "catalog",
        key_fn(|id: &u32| (*id != 0).then_some(*id)),
        store(),
    )
    .fresh_ttl(fresh)
    .max_stale(max_stale)
}

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn fresh_entries_answer_until_the_fresh_ttl() {
    let catalog = Catalog::new(5 * MS);
    let mut svc = ServiceBuilder::new()
        .layer(cache(10 * SEC, 60 * SEC).build().unwrap())
        .service(Catalog::service(catalog.clone()));
    let first = svc.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(first.served, Some(Served::Fetched));
    assert_eq!(catalog.calls(), 1);

    // 5 ms were spent fetching; the entry's age counts from when it arrived.
    tokio::time::advance(10 * SEC - MS).await;
    let hit = svc.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(hit.served, Some(Served::Fresh { age: 10 * SEC - MS }));
    assert_eq!(catalog.calls(), 1);

    // At exactly the TTL the entry is no longer fresh: the catalog is asked.
    tokio::time::advance(MS).await;
    let refreshed = svc.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(refreshed.served, Some(Served::Fetched));
    assert_eq!(catalog.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn stale_entries_answer_failures_until_max_stale() {
    let catalog = Catalog::new(Duration::ZERO);
    let mut svc = ServiceBuilder::new()
        .layer(cache(10 * SEC, 60 * SEC).build().unwrap())
        .service(Catalog::service(catalog.clone()));
    svc.ready().await.unwrap().call(1).await.unwrap();
    catalog.go_down(Down::Fails(Duration::ZERO));

    tokio::time::advance(70 * SEC - MS).await;
    let stale = svc.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(stale.served, Some(Served::Stale { age: 70 * SEC - MS }));
    assert_eq!(stale.version, 1);
    assert_eq!(catalog.calls(), 2, "the catalog was asked first");

    // At fresh_ttl + max_stale the entry is expired: the failure comes through.
    tokio::time::advance(MS).await;
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(err.to_string(), "downstream error: connection refused");
    assert_eq!(catalog.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn rejections_are_answered_from_stale_entries() {
    let catalog = Catalog::new(Duration::ZERO);
    let mut svc = ServiceBuilder::new()
        .layer(cache(SEC, 60 * SEC).build().unwrap())
        .service(Catalog::service(catalog.clone()));
    svc.ready().await.unwrap().call(1).await.unwrap();
    catalog.go_down(Down::Refused);
    tokio::time::advance(2 * SEC).await;
    // A circuit-open rejection is not a failure to the classifier, but it is a
    // refusal: the stale entry answers.
    let stale = svc.ready().await.unwrap().call(1).await.unwrap();
    assert!(stale.served.unwrap().is_stale());
    // With nothing cached the rejection comes through as it is.
    let err = svc.ready().await.unwrap().call(2).await.unwrap_err();
    assert_eq!(err.rejection().unwrap().kind(), RejectionKind::CircuitOpen);
}

#[tokio::test(start_paused = true)]
async fn with_serve_fresh_off_every_request_asks_the_dependency() {
    let catalog = Catalog::new(Duration::ZERO);
    let mut svc = ServiceBuilder::new()
        .layer(
            cache(10 * SEC, 60 * SEC)
                .serve_fresh(false)
                .build()
                .unwrap(),
        )
        .service(Catalog::service(catalog.clone()));
    for _ in 0..3 {
        let p = svc.ready().await.unwrap().call(1).await.unwrap();
        assert_eq!(p.served, Some(Served::Fetched));
    }
    assert_eq!(catalog.calls(), 3);
    catalog.go_down(Down::Fails(Duration::ZERO));
    tokio::time::advance(SEC).await;
    let p = svc.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(p.served, Some(Served::Stale { age: SEC }));
}

#[tokio::test(start_paused = true)]
async fn with_serve_fresh_off_requests_during_a_call_share_its_fresh_answer() {
    let catalog = Catalog::new(SEC);
    let svc = ServiceBuilder::new()
        .layer(
            cache(Duration::ZERO, 60 * SEC)
                .serve_fresh(false)
                .build()
                .unwrap(),
        )
        .service(Catalog::service(catalog.clone()));
    svc.clone().oneshot(1).await.unwrap();
    catalog.version.store(2, Ordering::SeqCst);
    let concurrent = |n| -> Vec<_> {
        (0..n)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move { svc.oneshot(1).await.unwrap() })
            })
            .collect()
    };

    // A healthy dependency: every request gets its answer, none the old entry.
    for answer in concurrent(10) {
        let p = answer.await.unwrap();
        assert_eq!((p.version, p.served), (2, Some(Served::Fetched)));
    }
    assert_eq!(catalog.calls(), 2, "the ten shared one call");

    // A failing one: they all get the entry, marked stale.
    catalog.go_down(Down::Fails(SEC));
    for answer in concurrent(10) {
        let p = answer.await.unwrap();
        assert_eq!(p.version, 2);
        assert!(p.served.unwrap().is_stale());
    }
}

#[tokio::test(start_paused = true)]
async fn during_a_refresh_others_get_the_stale_entry_at_once() {
    let catalog = Catalog::new(SEC);
    let svc = ServiceBuilder::new()
        .layer(cache(10 * SEC, 60 * SEC).build().unwrap())
        .service(Catalog::service(catalog.clone()));
    svc.clone().oneshot(1).await.unwrap();
    tokio::time::advance(20 * SEC).await;
    catalog.version.store(2, Ordering::SeqCst);

    let start = Instant::now();
    let leader = tokio::spawn(svc.clone().oneshot(1));
    tokio::task::yield_now().await;
    let others: Vec<_> = (0..10)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let p = svc.oneshot(1).await.unwrap();
                (p, Instant::now())
            })
        })
        .collect();
    for other in others {
        let (p, at) = other.await.unwrap();
        assert_eq!(at, start, "answered without waiting");
        assert_eq!(p.version, 1);
        assert!(p.served.unwrap().is_stale());
    }
    let refreshed = leader.await.unwrap().unwrap();
    assert_eq!(refreshed.version, 2);
    assert_eq!(Instant::now() - start, SEC);
    assert_eq!(catalog.calls(), 2);
    assert_eq!(catalog.max_in_flight_per_key.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn within_stale_while_revalidate_the_refresh_runs_in_the_background() {
    let catalog = Catalog::new(SEC);
    let layer = cache(10 * SEC, 60 * SEC)
        .stale_while_revalidate(20 * SEC)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(Catalog::service(catalog.clone()));
    svc.clone().oneshot(1).await.unwrap();
    catalog.version.store(2, Ordering::SeqCst);

    // 29.999 s old: within the window, answered at once, refreshed behind.
    tokio::time::advance(30 * SEC - MS).await;
    let start = Instant::now();
    let p = svc.clone().oneshot(1).await.unwrap();
    assert_eq!(Instant::now(), start);
    assert_eq!(
        (p.version, p.served),
        (1, Some(Served::Stale { age: 30 * SEC - MS }))
    );
    assert_eq!(handle.refreshes_in_flight(), 1);
    tokio::time::sleep(SEC + MS).await;
    assert_eq!(handle.refreshes_in_flight(), 0);
    let p = svc.clone().oneshot(1).await.unwrap();
    assert_eq!((p.version, p.served), (2, Some(Served::Fresh { age: MS })));
    assert_eq!(catalog.calls(), 2);

    // Exactly fresh_ttl + window old: the request waits for the refresh.
    catalog.version.store(3, Ordering::SeqCst);
    tokio::time::advance(30 * SEC - MS).await;
    let start = Instant::now();
    let p = svc.clone().oneshot(1).await.unwrap();
    assert_eq!(Instant::now() - start, SEC);
    assert_eq!((p.version, p.served), (3, Some(Served::Fetched)));
}

#[tokio::test(start_paused = true)]
async fn cold_misses_wait_for_one_call_and_share_its_error() {
    let catalog = Catalog::new(100 * MS);
    let svc = ServiceBuilder::new()
        .layer(cache(10 * SEC, 60 * SEC).build().unwrap())
        .service(Catalog::service(catalog.clone()));
    let tasks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(svc.clone().oneshot(3)))
        .collect();
    for task in tasks {
        let p = task.await.unwrap().unwrap();
        assert_eq!((p.id, p.served), (3, Some(Served::Fetched)));
    }
    assert_eq!(catalog.calls(), 1);

    catalog.go_down(Down::Fails(100 * MS));
    let tasks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(svc.clone().oneshot(4)))
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "downstream error: connection refused");
    }
    assert_eq!(catalog.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn responses_judged_ignored_are_passed_on_not_cached() {
    let catalog = Catalog::new(Duration::ZERO);
    // Version 0 means "not published yet": not a failure, but not worth keeping.
    let classify =
        palisade_core::classify_fn(
            |result: Result<&Product, &palisade_core::Error>| match result {
                Ok(p) if p.version == 0 => palisade_core::Outcome::Ignored,
                Ok(_) => palisade_core::Outcome::Success,
                Err(_) => palisade_core::Outcome::Failure(palisade_core::FailureReason::ERROR),
            },
        );
    let layer = cache(10 * SEC, 60 * SEC)
        .classify(classify)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(Catalog::service(catalog.clone()));
    catalog.version.store(0, Ordering::SeqCst);
    svc.ready().await.unwrap().call(1).await.unwrap();
    svc.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(catalog.calls(), 2);
    assert_eq!(handle.age_of(&1), None);
    catalog.version.store(1, Ordering::SeqCst);
    svc.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(handle.age_of(&1), Some(Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_key_pass_through_untouched() {
    let (recorder, snapshotter) = recorder();
    let layer =
        metrics::with_local_recorder(&recorder, || cache(10 * SEC, 60 * SEC).build().unwrap());
    let catalog = Catalog::new(Duration::ZERO);
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(Catalog::service(catalog.clone()));
    for _ in 0..3 {
        let p = svc.ready().await.unwrap().call(0).await.unwrap();
        assert_eq!(p.served, None, "not marked");
    }
    assert_eq!(catalog.calls(), 3);
    let metrics = Metrics::read(&snapshotter);
    assert_eq!(
        metrics.lookups("hit") + metrics.lookups("miss") + metrics.lookups("stale"),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_refresh_outlives_the_request_that_started_it() {
    let catalog = Catalog::new(SEC);
    let layer = cache(10 * SEC, 60 * SEC).build().unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(Catalog::service(catalog.clone()));
    let gave_up = tokio::time::timeout(100 * MS, svc.clone().oneshot(1)).await;
    assert!(gave_up.is_err());
    assert_eq!(handle.refreshes_in_flight(), 1);
    tokio::time::sleep(SEC).await;
    assert_eq!(handle.refreshes_in_flight(), 0);
    let p = svc.clone().oneshot(1).await.unwrap();
    assert!(matches!(p.served, Some(Served::Fresh { .. })));
    assert_eq!(catalog.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn entries_are_evicted_by_weight() {
    let (recorder, snapshotter) = recorder();
    // Each entry weighs 100 (value) + 4 (key) + overhead: at most 20 fit in 4000.
    let layer = metrics::with_local_recorder(&recorder, || {
        cache(10 * SEC, 60 * SEC)
            .max_weight_bytes(4000)
            .build()
            .unwrap()
    });
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(Catalog::service(Catalog::new(Duration::ZERO)));
    for id in 1..=200 {
        svc.ready().await.unwrap().call(id).await.unwrap();
    }
    handle.run_pending_tasks();
    assert!(handle.weighted_size() <= 4000, "{}", handle.weighted_size());
    let held = handle.entry_count();
    assert!((1..=20).contains(&held), "{held} entries held");
    let metrics = Metrics::read(&snapshotter);
    assert_eq!(
        metrics.counter("palisade_fallback_cache_evictions_total"),
        200 - held
    );
    assert_eq!(
        metrics.gauge("palisade_fallback_cache_entries"),
        held as f64
    );
}

/// Fills a cache bounded at 1 MiB with `keys` distinct keys, checking the bound
/// every tenth of the way.
async fn fill_with_distinct_keys(keys: u32) {
    const BOUND: u64 = 1 << 20;
    let layer = cache(10 * SEC, 60 * SEC)
        .max_weight_bytes(BOUND)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(Catalog::service(Catalog::new(Duration::ZERO)));
    for id in 1..=keys {
        svc.ready().await.unwrap().call(id).await.unwrap();
        if id % (keys / 10) == 0 {
            handle.run_pending_tasks();
            assert!(
                handle.weighted_size() <= BOUND,
                "{}",
                handle.weighted_size()
            );
        }
    }
    handle.run_pending_tasks();
    assert!(handle.weighted_size() <= BOUND);
    // 1 MiB holds about 5,000 entries of 200 bytes.
    assert!(handle.entry_count() > 1000, "the cache is in use");
    assert!(handle.entry_count() < 6000, "{}", handle.entry_count());
    assert_eq!(handle.refreshes_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn many_keys_stay_within_the_bound() {
    fill_with_distinct_keys(20_000).await;
}

#[tokio::test(start_paused = true)]
#[ignore = "a million calls take minutes in a debug build: run with --release -- --ignored"]
async fn a_million_keys_stay_within_the_bound() {
    fill_with_distinct_keys(1_000_000).await;
}

#[tokio::test(start_paused = true)]
async fn lookups_are_counted_by_result() {
    let (recorder, snapshotter) = recorder();
    let layer =
        metrics::with_local_recorder(&recorder, || cache(10 * SEC, 60 * SEC).build().unwrap());
    let catalog = Catalog::new(Duration::ZERO);
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(Catalog::service(catalog.clone()));
    svc.ready().await.unwrap().call(1).await.unwrap(); // miss
    svc.ready().await.unwrap().call(1).await.unwrap(); // hit
    catalog.go_down(Down::Fails(Duration::ZERO));
    tokio::time::advance(30 * SEC).await;
    svc.ready().await.unwrap().call(1).await.unwrap(); // stale, 30 s old
    svc.ready().await.unwrap().call(2).await.unwrap_err(); // miss
    let metrics = Metrics::read(&snapshotter);
    assert_eq!(metrics.lookups("hit"), 1);
    assert_eq!(metrics.lookups("miss"), 2);
    assert_eq!(metrics.lookups("stale"), 1);
    assert_eq!(
        metrics.histogram("palisade_fallback_stale_age_seconds"),
        vec![30.0]
    );
    assert_eq!(metrics.gauge("palisade_fallback_cache_entries"), 1.0);
}

#[test]
fn bad_settings_name_the_field() {
    let err = cache(SEC, SEC).max_weight_bytes(0).build().unwrap_err();
    assert_eq!(err.to_string(), "max_weight_bytes: must be at least 1");
    let err = cache(SEC, SEC)
        .max_refreshes_in_flight(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_refreshes_in_flight");
    let err = cache(Duration::ZERO, Duration::ZERO).build().unwrap_err();
    assert_eq!(err.field(), "max_stale");
}

/// The scenario: the catalog goes down for 60 s behind a circuit breaker.
/// Cached reads keep succeeding without added latency, the dead catalog is probed
/// once per open interval, one refresh per key at most is in flight, and once it
/// recovers fresh values replace the stale ones.
#[tokio::test(start_paused = true)]
async fn a_catalog_outage_behind_a_breaker_is_served_from_the_cache() {
    const PRODUCTS: u32 = 50;
    const OPEN: Duration = Duration::from_secs(5);
    let catalog = Catalog::new(5 * MS);
    let layer = cache(10 * SEC, 300 * SEC)
        .stale_while_revalidate(30 * SEC)
        .build()
        .unwrap();
    let handle = layer.handle();
    let first_open: Arc<Mutex<Option<Instant>>> = Arc::default();
    let opened = first_open.clone();
    let breaker = palisade_breaker::CircuitBreakerLayer::builder("catalog")
        .on_event(move |event: &palisade_breaker::BreakerEvent| {
            if let palisade_breaker::BreakerEvent::Transition {
                to: palisade_breaker::State::Open,
                ..
            } = event
            {
                opened.lock().unwrap().get_or_insert_with(Instant::now);
            }
        })
        .consecutive_failures(5)
        .wait_in_open(OPEN)
        .wait_backoff(1.0, OPEN)
        .wait_jitter(0.0)
        .half_open_probes(1)
        .half_open_successes(1)
        .build()
        .unwrap();
    let breaker_handle = breaker.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .layer(breaker)
        .service(Catalog::service(catalog.clone()));

    // One read every 10 ms, round robin over the products, for 140 s:
    // healthy 0–20 s, down 20–80 s (calls hang for 1 s, then fail), healthy again.
    #[derive(Clone, Copy, PartialEq)]
    enum Phase {
        Healthy,
        Outage,
        Recovered,
    }
    let results = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut tick = tokio::time::interval(10 * MS);
    let mut tasks = Vec::new();
    let mut went_down_at = None;
    for i in 0..14_000u32 {
        tick.tick().await;
        let elapsed = Instant::now() - start;
        let phase = if elapsed < 20 * SEC {
            Phase::Healthy
        } else if elapsed < 80 * SEC {
            if went_down_at.is_none() {
                catalog.go_down(Down::Fails(SEC));
                went_down_at = Some(Instant::now());
            }
            Phase::Outage
        } else {
            if catalog.down.lock().unwrap().is_some() {
                catalog.recover();
                catalog.version.store(2, Ordering::SeqCst);
            }
            Phase::Recovered
        };
        let svc = svc.clone();
        let results = results.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let result = svc.oneshot(1 + i % PRODUCTS).await;
            results
                .lock()
                .unwrap()
                .push((phase, result.is_ok(), Instant::now() - sent));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let results = std::mem::take(&mut *results.lock().unwrap());
    let p99 = |phase: Phase| {
        let mut latencies: Vec<Duration> = results
            .iter()
            .filter(|r| r.0 == phase)
            .map(|r| r.2)
            .collect();
        latencies.sort();
        latencies[latencies.len() * 99 / 100]
    };
    let outage: Vec<_> = results.iter().filter(|r| r.0 == Phase::Outage).collect();
    let ok = outage.iter().filter(|r| r.1).count();
    assert_eq!(outage.len(), 6000);
    assert!(
        ok * 1000 >= outage.len() * 999,
        "{ok} of {} reads succeeded during the outage",
        outage.len()
    );
    let (healthy_p99, outage_p99) = (p99(Phase::Healthy), p99(Phase::Outage));
    assert!(
        outage_p99 <= healthy_p99 + MS,
        "p99 {outage_p99:?} during the outage against {healthy_p99:?} before it"
    );

    // The dead catalog: until the breaker first opens (when the first failures come
    // back) refreshes reach it, one per product at a time (checked below); from
    // then on it sees one probe per open interval.
    let dead_calls = catalog.dead_calls.lock().unwrap().clone();
    let first_open = first_open.lock().unwrap().expect("the breaker opened");
    assert!(first_open - went_down_at.unwrap() < 5 * SEC);
    let probes: Vec<Instant> = dead_calls
        .iter()
        .copied()
        .filter(|at| *at >= first_open)
        .collect();
    // Each cycle is 5 s open, then one probe that hangs for 1 s and fails.
    assert!(
        (8..=12).contains(&probes.len()),
        "{} probes in the 59 s the breaker guarded the dead catalog",
        probes.len()
    );
    for pair in probes.windows(2) {
        assert!(
            pair[1] - pair[0] >= OPEN,
            "probes {:?} apart",
            pair[1] - pair[0]
        );
    }

    assert_eq!(
        catalog.max_in_flight_per_key.load(Ordering::SeqCst),
        1,
        "at most one refresh per key in flight"
    );

    // Recovered: the breaker closed and every product is fresh, at version 2.
    assert_eq!(breaker_handle.state(), palisade_breaker::State::Closed);
    let recovered: Vec<_> = results.iter().filter(|r| r.0 == Phase::Recovered).collect();
    assert!(recovered.iter().all(|r| r.1));
    for id in 1..=PRODUCTS {
        let p = svc.clone().oneshot(id).await.unwrap();
        assert_eq!(p.version, 2, "product {id}");
        assert!(
            matches!(p.served, Some(Served::Fresh { .. })),
            "product {id}"
        );
        assert!(handle.age_of(&id).unwrap() < 10 * SEC);
    }
}

fn recorder() -> (DebuggingRecorder, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    (recorder, snapshotter)
}

/// A series: name, labels, value.
type Series = (String, Vec<(String, String)>, DebugValue);

struct Metrics(Vec<Series>);

impl Metrics {
    fn read(snapshotter: &Snapshotter) -> Self {
        Self(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| {
                    let key = key.key().clone();
                    let labels = key
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect();
                    (key.name().to_owned(), labels, value)
                })
                .collect(),
        )
    }

    fn find(&self, name: &str, label: Option<(&str, &str)>) -> &DebugValue {
        self.0
            .iter()
            .find(|(n, labels, _)| {
                n == name
                    && label.is_none_or(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| v)
            .unwrap_or_else(|| panic!("{name} {label:?} registered"))
    }

    fn lookups(&self, result: &str) -> u64 {
        match self.find(
            "palisade_fallback_cache_lookups_total",
            Some(("result", result)),
        ) {
            DebugValue::Counter(c) => *c,
            other => panic!("{other:?}"),
        }
    }

    fn counter(&self, name: &str) -> u64 {
        match self.find(name, None) {
            DebugValue::Counter(c) => *c,
            other => panic!("{other:?}"),
        }
    }

    fn gauge(&self, name: &str) -> f64 {
        match self.find(name, None) {
            DebugValue::Gauge(g) => g.into_inner(),
            other => panic!("{other:?}"),
        }
    }

    fn histogram(&self, name: &str) -> Vec<f64> {
        match self.find(name, None) {
            DebugValue::Histogram(h) => h.iter().map(|v| v.into_inner()).collect(),
            other => panic!("{other:?}"),
        }
    }
}
