//! Per-call overhead of circuit breakers around a trivial, always-successful tower
//! service, compared in one run: the bare service, Palisade's breaker (with and
//! without slow-call detection), tower-resilience's and failsafe's.
//!
//! Two groups:
//!
//! - `breaker_single`: one task on a current-thread runtime.
//! - `breaker_contended`: four tasks on a two-worker multi-thread runtime, each with
//!   its own clone of one service, so all four share one breaker.
//!
//! Every breaker is configured to stay closed (a 100-call count window, opening at
//! a 50% failure rate, and the service never fails), so this measures the closed
//! path. Each call is `ready().await` then `call(x).await`, on a service built once
//! outside the measured loop so the breaker's state accumulates across iterations.
//!
//! Run with `cargo bench -p palisade-benches --bench breaker`.

// Benches measure wall time: `std::time::Instant` is the right clock here (the
// workspace forbids it elsewhere so that tests can run on tokio's paused clock).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{Criterion, criterion_main};
use tower::{Layer, Service};

mod support;
use support::{contended, inner, single};

/// The closed-path Palisade breaker of the comparison.
fn palisade_builder() -> palisade::breaker::Builder {
    palisade::breaker::CircuitBreakerLayer::builder("bench")
        .count_window(100)
        .failure_rate_threshold(0.5)
        .minimum_calls(100)
        .wait_in_open(Duration::from_secs(30))
}

/// failsafe's futures API as a tower service: `ready` on the inner service, then
/// `failsafe::futures::CircuitBreaker::call(&cb, inner.call(x))`, exactly as a
/// caller would write it by hand.
#[derive(Clone)]
struct Failsafe<S, B> {
    inner: S,
    breaker: B,
}

impl<S, B> Service<u64> for Failsafe<S, B>
where
    S: Service<u64>,
    B: failsafe::futures::CircuitBreaker,
{
    type Response = S::Response;
    type Error = failsafe::Error<S::Error>;
    type Future = failsafe::futures::ResponseFuture<
        S::Future,
        B::FailurePolicy,
        B::Instrument,
        failsafe::Any,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(failsafe::Error::Inner)
    }

    fn call(&mut self, x: u64) -> Self::Future {
        failsafe::futures::CircuitBreaker::call(&self.breaker, self.inner.call(x))
    }
}

fn breakers(c: &mut Criterion) {
    let single_rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("current-thread runtime");
    let contended_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("multi-thread runtime");

    // 1. The bare service.
    let raw = inner();

    // 2. Palisade, closed path, no slow-call detection.
    let palisade = palisade_builder()
        .build()
        .expect("valid breaker settings")
        .layer(inner());

    // 3. Palisade with slow-call detection: two clock reads per call.
    let palisade_slow_calls = palisade_builder()
        .slow_calls(Duration::from_secs(1), 1.0)
        .build()
        .expect("valid breaker settings")
        .layer(inner());

    // 4. tower-resilience 0.13.
    let tower_resilience = {
        use tower_resilience_circuitbreaker::{CircuitBreakerLayer, SlidingWindowType};
        CircuitBreakerLayer::builder()
            .sliding_window_type(SlidingWindowType::CountBased)
            .sliding_window_size(100)
            .failure_rate_threshold(0.5)
            .minimum_number_of_calls(100)
            .wait_duration_in_open(Duration::from_secs(30))
            .build()
            .expect("valid tower-resilience settings")
            .layer(inner())
    };

    // 5. failsafe 1.3, futures API.
    let failsafe = Failsafe {
        inner: inner(),
        breaker: failsafe::Config::new()
            .failure_policy(failsafe::failure_policy::success_rate_over_time_window(
                0.5,
                100,
                Duration::from_secs(30),
                failsafe::backoff::constant(Duration::from_secs(30)),
            ))
            .build(),
    };

    let mut group = c.benchmark_group("breaker_single");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    single(&mut group, &single_rt, "raw", &raw);
    single(&mut group, &single_rt, "palisade", &palisade);
    single(
        &mut group,
        &single_rt,
        "palisade_slow_calls",
        &palisade_slow_calls,
    );
    single(
        &mut group,
        &single_rt,
        "tower_resilience",
        &tower_resilience,
    );
    single(&mut group, &single_rt, "failsafe", &failsafe);
    group.finish();

    let mut group = c.benchmark_group("breaker_contended");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    contended(&mut group, &contended_rt, "raw", &raw);
    contended(&mut group, &contended_rt, "palisade", &palisade);
    contended(
        &mut group,
        &contended_rt,
        "palisade_slow_calls",
        &palisade_slow_calls,
    );
    contended(
        &mut group,
        &contended_rt,
        "tower_resilience",
        &tower_resilience,
    );
    contended(&mut group, &contended_rt, "failsafe", &failsafe);
    group.finish();
}

/// Runs this file's benchmarks: what `criterion_group!(benches, breakers)` would
/// generate, written out so that it can carry the doc comment the workspace's
/// `missing_docs` lint asks for.
fn benches() {
    let mut criterion = Criterion::default().configure_from_args();
    breakers(&mut criterion);
}

criterion_main!(benches);
