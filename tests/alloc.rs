//! The breaker's closed path, and a whole downstream stack (retry, breaker, rate
//! limit, bulkhead, per-try timeout, total timeout), allocate nothing per call:
//! counted with a counting global allocator, with no recorder and with a metrics
//! recorder installed.

use std::alloc::System;
use std::time::Duration;

use palisade::Downstream;
use palisade::breaker::{BreakerConfig, CircuitBreakerLayer};
use palisade::limit::bulkhead::BulkheadConfig;
use palisade::limit::rate::RateLimitConfig;
use palisade::retry::RetryConfig;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn allocations_per_call<L>(build: impl FnOnce() -> L) -> f64
where
    L: Layer<Inner>,
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
        // Warm up: thread-locals and lazily built state.
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

/// The allocator counts every thread, so the tests in this file run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn closed_path_allocates_nothing() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let per_call = allocations_per_call(|| CircuitBreakerLayer::builder("alloc").build().unwrap());
    assert_eq!(per_call, 0.0);

    let per_call = allocations_per_call(|| {
        CircuitBreakerLayer::builder("alloc_slow")
            .slow_calls(Duration::from_secs(1), 1.0)
            .time_window(Duration::from_secs(10), 10)
            .build()
            .unwrap()
    });
    assert_eq!(per_call, 0.0);

    // With a Prometheus recorder: series are registered when the layer is built,
    // so recording is atomic updates only.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let per_call = allocations_per_call(|| {
        metrics::with_local_recorder(&recorder, || {
            CircuitBreakerLayer::builder("alloc_metrics")
                .build()
                .unwrap()
        })
    });
    assert_eq!(per_call, 0.0);
    let text = handle.render();
    assert!(
        text.contains(
            r#"palisade_breaker_calls_total{downstream="alloc_metrics",outcome="success"} 11000"#
        ),
        "{text}"
    );
}

type Inner = tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, std::io::Error>>>;

fn whole_stack(
    name: &str,
) -> impl Layer<Inner, Service: Service<u64, Response = u64, Error = palisade::Error>> {
    Downstream::builder(name)
        .retry(RetryConfig::default())
        .breaker(BreakerConfig::default())
        .rate_limit(RateLimitConfig {
            rate: 1_000_000_000,
            ..RateLimitConfig::default()
        })
        .bulkhead(BulkheadConfig {
            max_concurrent: 100,
            ..BulkheadConfig::default()
        })
        .timeout(Duration::from_secs(10))
        .total_timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[test]
fn a_whole_downstream_stack_allocates_nothing_per_call() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let per_call = allocations_per_call(|| whole_stack("alloc_stack"));
    assert_eq!(per_call, 0.0);

    // With a recorder: counters and gauges are atomics, but a recorder keeps each
    // histogram sample (the call's duration) in a block list until it is read —
    // metrics-util's `AtomicBucket`, which the Prometheus exporter uses too — and
    // allocates a new block every 64 samples. That is the only allocation left.
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let per_call = allocations_per_call(|| {
        metrics::with_local_recorder(&recorder, || whole_stack("alloc_stack_metrics"))
    });
    assert!(
        per_call <= 1.0 / 64.0,
        "{per_call} allocations per call: more than the recorder's one block per 64 samples"
    );
    let calls = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| {
            key.key().name() == "palisade_downstream_calls_total"
                && key.key().labels().any(|l| l.value() == "success")
        })
        .map(|(.., value)| value);
    assert_eq!(
        calls,
        Some(metrics_util::debugging::DebugValue::Counter(11_000)),
        "every call was counted"
    );
}
