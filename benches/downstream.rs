//! A whole downstream stack against tower-resilience's equivalent five layers, with
//! metrics recording into a Prometheus recorder: timeout, retry, circuit breaker,
//! rate limit and bulkhead around a trivial service, single task and contended; and,
//! single task, around a service whose calls are pending once before they answer
//! (as a network call is), so every timer is made.
//!
//! `cargo bench -p palisade-benches --bench downstream`
//!
//! With `PALISADE_BENCH_NO_RECORDER=1` no recorder is installed, so every metric is
//! a no-op: the difference between the two runs is what the metrics cost.

use std::time::Duration;

use criterion::{Criterion, criterion_main};
use palisade::Downstream;
use palisade::breaker::BreakerConfig;
use palisade::limit::bulkhead::BulkheadConfig;
use palisade::limit::rate::RateLimitConfig;
use palisade::retry::RetryConfig;
use tower::{Layer, ServiceBuilder};

mod support;
use support::{contended, inner, inner_pending, single};

/// A rate so high the limiter never binds: the bench measures its bookkeeping.
const HUGE: u32 = 1_000_000_000;
const TIMEOUT: Duration = Duration::from_secs(10);

fn stacks(c: &mut Criterion) {
    // Metrics on, as in production: every layer records into this recorder (unless
    // the run measures the stack without it).
    let _handle = std::env::var_os("PALISADE_BENCH_NO_RECORDER")
        .is_none()
        .then(|| palisade::metrics::install_prometheus_recorder().expect("recorder installs"));

    let single_rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("current-thread runtime");
    let contended_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("multi-thread runtime");

    let palisade = single_rt.block_on(async { palisade_stack(inner()) });
    let configured = single_rt.block_on(async { configured_stack(inner()) });
    let tower_resilience = contended_rt.block_on(async { tower_resilience_stack(inner()) });
    let palisade_pending = single_rt.block_on(async { palisade_stack(inner_pending()) });
    let tower_resilience_pending =
        single_rt.block_on(async { tower_resilience_stack(inner_pending()) });

    // The size of the stack's response future (what each call builds and moves).
    single_rt.block_on(async {
        use tower::{Service, ServiceExt};
        let mut svc = palisade.clone();
        let call = svc.ready().await.expect("ready").call(1);
        eprintln!(
            "palisade's response future: {} bytes",
            std::mem::size_of_val(&call)
        );
        call.await.expect("answered");
    });

    let mut group = timed_group(c, "downstream_single");
    single(&mut group, &single_rt, "raw", &inner());
    single(&mut group, &single_rt, "palisade", &palisade);
    single(&mut group, &single_rt, "palisade_configured", &configured);
    single(
        &mut group,
        &single_rt,
        "tower_resilience",
        &tower_resilience,
    );
    group.finish();

    let mut group = timed_group(c, "downstream_contended");
    contended(&mut group, &contended_rt, "raw", &inner());
    contended(&mut group, &contended_rt, "palisade", &palisade);
    contended(
        &mut group,
        &contended_rt,
        "tower_resilience",
        &tower_resilience,
    );
    group.finish();

    let mut group = timed_group(c, "downstream_pending_single");
    single(&mut group, &single_rt, "raw", &inner_pending());
    single(&mut group, &single_rt, "palisade", &palisade_pending);
    single(
        &mut group,
        &single_rt,
        "tower_resilience",
        &tower_resilience_pending,
    );
    group.finish();
}

/// A benchmark group with this file's timing settings.
fn timed_group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    group
}

/// Palisade's five layers around `inner` (build inside a runtime).
fn palisade_stack<S>(
    inner: S,
) -> impl tower::Service<u64, Response = u64, Error: std::fmt::Debug + Send, Future: Send>
+ Clone
+ Send
+ 'static
where
    S: tower::Service<u64, Response = u64, Error = std::io::Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    Downstream::builder("bench")
        .retry(RetryConfig::default())
        .breaker(BreakerConfig::default())
        .rate_limit(RateLimitConfig {
            rate: HUGE,
            ..RateLimitConfig::default()
        })
        .bulkhead(BulkheadConfig {
            max_concurrent: 1_000,
            ..BulkheadConfig::default()
        })
        .timeout(TIMEOUT)
        .build()
        .expect("valid downstream")
        .layer(inner)
}

/// The same five policies, built from a configuration section
/// (`Builder::configured`: each slot its layer or a pass-through), followed live.
fn configured_stack<S>(
    inner: S,
) -> impl tower::Service<u64, Response = u64, Error: std::fmt::Debug + Send, Future: Send>
+ Clone
+ Send
+ 'static
where
    S: tower::Service<u64, Response = u64, Error = std::io::Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    let section = palisade::config::DownstreamConfig {
        retry: Some(RetryConfig::default()),
        breaker: Some(BreakerConfig::default()),
        rate_limit: Some(RateLimitConfig {
            rate: HUGE,
            ..RateLimitConfig::default()
        }),
        bulkhead: Some(BulkheadConfig {
            max_concurrent: 1_000,
            ..BulkheadConfig::default()
        }),
        timeout: Some(TIMEOUT),
        ..palisade::config::DownstreamConfig::default()
    };
    let (service, _live) = Downstream::builder("configured")
        .live(&section, inner)
        .expect("valid section");
    service
}

/// tower-resilience's same five layers around `inner` (build inside a runtime).
fn tower_resilience_stack<S>(
    inner: S,
) -> impl tower::Service<u64, Response = u64, Error: std::fmt::Debug + Send, Future: Send>
+ Clone
+ Send
+ 'static
where
    S: tower::Service<u64, Response = u64, Error = std::io::Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    ServiceBuilder::new()
        .layer(
            tower_resilience_retry::RetryLayer::<u64, u64, std::io::Error>::builder()
                .max_attempts(3)
                .build(),
        )
        .map_err(to_io)
        .layer(
            tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
                .sliding_window_size(100)
                .failure_rate_threshold(0.5)
                .minimum_number_of_calls(100)
                .wait_duration_in_open(Duration::from_secs(30))
                .build()
                .expect("valid tower-resilience breaker"),
        )
        .map_err(to_io)
        .layer(
            tower_resilience_ratelimiter::RateLimiterLayer::builder()
                .limit_for_period(HUGE as usize)
                .refresh_period(Duration::from_secs(1))
                .timeout_duration(Duration::from_millis(10))
                .build()
                .expect("valid tower-resilience rate limiter"),
        )
        .map_err(to_io)
        .layer(
            tower_resilience_bulkhead::BulkheadLayer::builder()
                .max_concurrent_calls(1_000)
                .build()
                .expect("valid tower-resilience bulkhead"),
        )
        .map_err(to_io)
        .layer(
            tower_resilience_timelimiter::TimeLimiterLayer::builder()
                .timeout_duration(TIMEOUT)
                .build(),
        )
        .service(inner)
}

/// tower-resilience's layers each wrap the inner error in their own type; a user
/// stacking them maps each back (this runs only on errors, which the bench has none).
fn to_io<E: std::fmt::Display>(e: E) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Runs this file's benchmarks: what `criterion_group!(benches, stacks)` would
/// generate, written out so that it can carry the doc comment the workspace's
/// `missing_docs` lint asks for.
fn benches() {
    let mut criterion = Criterion::default().configure_from_args();
    stacks(&mut criterion);
}

criterion_main!(benches);
