//! The rate limiters (direct, and keyed once its keys are known), the bulkhead and
//! the adaptive limiter allocate nothing per call in steady state: counted with a counting global allocator, with no
//! metrics recorder and with a debugging recorder installed.

use std::alloc::System;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use palisade_limit::adaptive::{AdaptiveLimitLayer, Aimd, Gradient2};
use palisade_limit::bulkhead::BulkheadLayer;
use palisade_limit::rate::{KeyedRateLimitLayer, RateLimitLayer};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations per call through `layer` around a service that answers at once,
/// after a warm-up (thread-locals, lazily built state).
fn allocations_per_call<L>(build: impl FnOnce() -> L) -> f64
where
    L: Layer<tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, std::io::Error>>>>,
    L::Service: Service<u64, Response = u64>,
    <L::Service as Service<u64>>::Error: std::fmt::Debug,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let layer = build();
        let inner: fn(u64) -> std::future::Ready<Result<u64, std::io::Error>> =
            |x| std::future::ready(Ok(x));
        let mut svc = layer.layer(tower::service_fn(inner));
        for i in 0..1_000 {
            svc.ready().await.unwrap().call(i).await.unwrap();
        }
        // The allocator counts every thread of the process (the test harness's
        // too), so take the quietest of several rounds: a per-call allocation would
        // show in every round, another thread's stray one in a round or two.
        const CALLS: u64 = 2_000;
        let mut fewest = u64::MAX;
        for _ in 0..5 {
            let region = Region::new(GLOBAL);
            for i in 0..CALLS {
                svc.ready().await.unwrap().call(i).await.unwrap();
            }
            fewest = fewest.min(region.change().allocations as u64);
        }
        fewest as f64 / CALLS as f64
    })
}

fn rate_limiter() -> RateLimitLayer {
    RateLimitLayer::builder("alloc_rate")
        .rate(1_000_000_000, Duration::from_secs(1))
        .build()
        .unwrap()
}

/// Keyed by the request modulo 100: after the warm-up, every key is known.
fn keyed_rate_limiter() -> KeyedRateLimitLayer<fn(&u64) -> u64> {
    RateLimitLayer::builder("alloc_keyed")
        .rate(1_000_000_000, Duration::from_secs(1))
        .build_keyed(
            (|x: &u64| *x % 100) as fn(&u64) -> u64,
            1_000,
            Duration::from_secs(600),
        )
        .unwrap()
}

fn bulkhead() -> BulkheadLayer {
    BulkheadLayer::builder("alloc_bulkhead")
        .max_concurrent(10)
        .max_queue(10)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap()
}

fn gradient2() -> AdaptiveLimitLayer {
    AdaptiveLimitLayer::builder("alloc_gradient2")
        .algorithm(Gradient2::default())
        .build()
        .unwrap()
}

fn aimd() -> AdaptiveLimitLayer {
    AdaptiveLimitLayer::builder("alloc_aimd")
        .algorithm(Aimd::default())
        .build()
        .unwrap()
}

// One test function: the allocator counts every thread's allocations, and the test
// harness allocates on its own threads as other tests finish.
#[test]
fn steady_state_calls_allocate_nothing() {
    assert_eq!(
        allocations_per_call(rate_limiter),
        0.0,
        "direct rate limiter"
    );
    assert_eq!(
        allocations_per_call(keyed_rate_limiter),
        0.0,
        "keyed rate limiter, known keys"
    );
    assert_eq!(allocations_per_call(bulkhead), 0.0, "bulkhead");
    assert_eq!(allocations_per_call(gradient2), 0.0, "adaptive, Gradient2");
    assert_eq!(allocations_per_call(aimd), 0.0, "adaptive, AIMD");
    recording_metrics_allocates_nothing();
}

/// With a recorder installed, series are registered when the layer is built, so
/// recording a call is an update of handles already held.
fn recording_metrics_allocates_nothing() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    assert_eq!(
        allocations_per_call(|| metrics::with_local_recorder(&recorder, rate_limiter)),
        0.0,
        "direct rate limiter, recording"
    );
    assert_eq!(
        allocations_per_call(|| metrics::with_local_recorder(&recorder, bulkhead)),
        0.0,
        "bulkhead, recording"
    );
    assert_eq!(
        allocations_per_call(|| metrics::with_local_recorder(&recorder, gradient2)),
        0.0,
        "adaptive, recording"
    );
    // The calls were recorded: 1,000 warm-up calls and 10,000 counted ones each.
    // (A snapshot drains what it reads: take one.)
    let snapshot = snapshotter.snapshot().into_vec();
    let permitted = |name: &str| {
        snapshot.iter().find_map(|(key, _, _, value)| {
            let key = key.key();
            let is_it = key.name() == name
                && key
                    .labels()
                    .any(|l| l.key() == "outcome" && l.value() == "permitted");
            match value {
                DebugValue::Counter(n) if is_it => Some(*n),
                _ => None,
            }
        })
    };
    assert_eq!(permitted("palisade_ratelimit_calls_total"), Some(11_000));
    assert_eq!(permitted("palisade_bulkhead_calls_total"), Some(11_000));
    assert_eq!(permitted("palisade_adaptive_calls_total"), Some(11_000));
}
