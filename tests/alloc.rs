//! The breaker's closed path allocates nothing per call: counted with a counting
//! global allocator, with no recorder and with a Prometheus recorder installed.

use std::alloc::System;
use std::time::Duration;

use palisade::breaker::CircuitBreakerLayer;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn allocations_per_call(build: impl FnOnce() -> CircuitBreakerLayer) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let layer = build();
        let mut svc = layer.layer(tower::service_fn(|x: u64| {
            std::future::ready(Ok::<u64, std::io::Error>(x))
        }));
        // Warm up: thread-locals and lazily built state.
        for i in 0..1_000 {
            svc.ready().await.unwrap().call(i).await.unwrap();
        }
        const CALLS: u64 = 10_000;
        let region = Region::new(GLOBAL);
        for i in 0..CALLS {
            svc.ready().await.unwrap().call(i).await.unwrap();
        }
        region.change().allocations as f64 / CALLS as f64
    })
}

#[test]
fn closed_path_allocates_nothing() {
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
