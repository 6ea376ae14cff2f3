//! Per-call overhead of retry and timeout layers around a trivial, always-successful
//! tower service, compared in one run: the bare service, Palisade's layer, tower's
//! own and tower-resilience's.
//!
//! Two groups, each one task on a current-thread runtime:
//!
//! - `retry_no_failure`: Palisade's `RetryLayer` with default settings (3 attempts),
//!   `tower::retry::Retry` with a minimal policy that never retries a success, and
//!   tower-resilience's retry layer with 3 attempts. The service never fails, so this
//!   measures the no-failure path: one attempt per call, no backoff.
//! - `timeout_no_expiry`: Palisade's `TimeoutLayer`, `tower::timeout::Timeout` and
//!   tower-resilience's time limiter, all with a 1 s timeout that never fires, so
//!   this measures arming (and dropping) a timer around each call.
//!
//! Each call is `ready().await` then `call(x).await`, on a service built once
//! outside the measured loop.
//!
//! Run with `cargo bench -p palisade-benches --bench retry_timeout`.

// Benches measure wall time: `std::time::Instant` is the right clock here (the
// workspace forbids it elsewhere so that tests can run on tokio's paused clock).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Duration;

use criterion::{Criterion, criterion_main};
use tower::Layer;

mod support;
use support::{inner, single};

/// The timeout every timeout layer of the comparison is given: far longer than any
/// call, so it never fires.
const TIMEOUT: Duration = Duration::from_secs(1);

/// The smallest `tower::retry::Policy` that still retries failures: a success is
/// never retried, a failure is retried at once, and every request can be replayed.
/// Only the success path runs in this bench.
#[derive(Clone, Copy)]
struct RetryFailures;

impl tower::retry::Policy<u64, u64, std::io::Error> for RetryFailures {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut u64,
        result: &mut Result<u64, std::io::Error>,
    ) -> Option<Self::Future> {
        match result {
            Ok(_) => None,
            Err(_) => Some(std::future::ready(())),
        }
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

fn retry_and_timeout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("current-thread runtime");

    // The bare service, the baseline of both groups.
    let raw = inner();

    // Retry: Palisade with default settings.
    let palisade_retry = palisade::retry::RetryLayer::builder("bench")
        .build()
        .expect("valid retry settings")
        .layer(inner());

    // Retry: tower 0.5 with a minimal policy.
    let tower_retry = tower::retry::RetryLayer::new(RetryFailures).layer(inner());

    // Retry: tower-resilience 0.13, 3 attempts.
    let tower_resilience_retry =
        tower_resilience_retry::RetryLayer::<u64, u64, std::io::Error>::builder()
            .max_attempts(3)
            .build()
            .layer(inner());

    // Timeout: Palisade.
    let palisade_timeout = palisade::timeout::TimeoutLayer::new("bench", TIMEOUT)
        .expect("valid timeout settings")
        .layer(inner());

    // Timeout: tower 0.5.
    let tower_timeout = tower::timeout::TimeoutLayer::new(TIMEOUT).layer(inner());

    // Timeout: tower-resilience 0.13's time limiter (cancels the call on timeout,
    // its default, like the other two).
    let tower_resilience_timeout = tower_resilience_timelimiter::TimeLimiterLayer::builder()
        .timeout_duration(TIMEOUT)
        .build()
        .layer(inner());

    let mut group = c.benchmark_group("retry_no_failure");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    single(&mut group, &rt, "raw", &raw);
    single(&mut group, &rt, "palisade", &palisade_retry);
    single(&mut group, &rt, "tower", &tower_retry);
    single(&mut group, &rt, "tower_resilience", &tower_resilience_retry);
    group.finish();

    let mut group = c.benchmark_group("timeout_no_expiry");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    single(&mut group, &rt, "raw", &raw);
    single(&mut group, &rt, "palisade", &palisade_timeout);
    single(&mut group, &rt, "tower", &tower_timeout);
    single(
        &mut group,
        &rt,
        "tower_resilience",
        &tower_resilience_timeout,
    );
    group.finish();
}

/// Runs this file's benchmarks: what `criterion_group!(benches, retry_and_timeout)`
/// would generate, written out so that it can carry the doc comment the workspace's
/// `missing_docs` lint asks for.
fn benches() {
    let mut criterion = Criterion::default().configure_from_args();
    retry_and_timeout(&mut criterion);
}

criterion_main!(benches);
