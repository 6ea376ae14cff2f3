//! Per-call overhead of the limit layers, compared in one run with the peer crates:
//!
//! - `ratelimit`: Palisade's direct and keyed rate limiters (as tower layers, quotas
//!   large enough never to refuse), governor's own direct and keyed checks (the
//!   floor: no service around them), and tower-resilience 0.13's rate limiter.
//! - `bulkhead_single` / `bulkhead_contended`: Palisade's bulkhead, tower's
//!   `ConcurrencyLimit` and tower-resilience 0.13's bulkhead, limits high enough
//!   never to queue; single task, and four tasks on two worker threads.
//!
//! Run with `cargo bench -p palisade-benches --bench limit`.

// Benches measure wall time: `std::time::Instant` is the right clock here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_main};
use tower::Layer;

mod support;
use support::{contended, inner, single};

/// A quota that never refuses during a benchmark.
const HUGE: u32 = 1_000_000_000;
/// Distinct keys cycled through by the keyed benchmarks.
const KEYS: u64 = 1_000;

fn ratelimit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("current-thread runtime");
    let mut group = c.benchmark_group("ratelimit");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);

    single(&mut group, &rt, "raw", &inner());

    let direct = rt.block_on(async {
        palisade::limit::rate::RateLimitLayer::builder("bench")
            .rate(HUGE, Duration::from_secs(1))
            .build()
            .expect("valid rate limit")
    });
    single(&mut group, &rt, "palisade_direct", &direct.layer(inner()));

    let keyed = rt.block_on(async {
        palisade::limit::rate::RateLimitLayer::builder("bench_keyed")
            .rate(HUGE, Duration::from_secs(1))
            .build_keyed(|x: &u64| *x % KEYS, 10_000, Duration::from_secs(600))
            .expect("valid keyed rate limit")
    });
    single(&mut group, &rt, "palisade_keyed", &keyed.layer(inner()));

    let quota = governor::Quota::per_second(NonZeroU32::new(HUGE).expect("non-zero"));
    let governor_direct = governor::RateLimiter::direct(quota);
    group.bench_function("governor_direct_check", |b| {
        b.iter(|| black_box(governor_direct.check()).is_ok())
    });
    let governor_keyed = governor::RateLimiter::keyed(quota);
    group.bench_function("governor_keyed_check", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                black_box(governor_keyed.check_key(&(i % KEYS)).is_ok());
            }
            start.elapsed()
        })
    });

    let tower_resilience = rt.block_on(async {
        tower_resilience_ratelimiter::RateLimiterLayer::builder()
            .limit_for_period(HUGE as usize)
            .refresh_period(Duration::from_secs(1))
            .timeout_duration(Duration::from_millis(10))
            .build()
            .expect("valid tower-resilience rate limiter")
    });
    single(
        &mut group,
        &rt,
        "tower_resilience",
        &tower_resilience.layer(inner()),
    );
    group.finish();
}

fn bulkhead(c: &mut Criterion) {
    let single_rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("current-thread runtime");
    let contended_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("multi-thread runtime");
    let palisade = palisade::limit::bulkhead::BulkheadLayer::builder("bench")
        .max_concurrent(1_000)
        .build()
        .expect("valid bulkhead")
        .layer(inner());
    let tower_limit = tower::limit::ConcurrencyLimitLayer::new(1_000).layer(inner());
    let tower_resilience = contended_rt.block_on(async {
        tower_resilience_bulkhead::BulkheadLayer::builder()
            .max_concurrent_calls(1_000)
            .build()
            .expect("valid tower-resilience bulkhead")
            .layer(inner())
    });

    let mut group = c.benchmark_group("bulkhead_single");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    single(&mut group, &single_rt, "raw", &inner());
    single(&mut group, &single_rt, "palisade", &palisade);
    single(
        &mut group,
        &single_rt,
        "tower_concurrency_limit",
        &tower_limit,
    );
    single(
        &mut group,
        &single_rt,
        "tower_resilience",
        &tower_resilience,
    );
    group.finish();

    let mut group = c.benchmark_group("bulkhead_contended");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    contended(&mut group, &contended_rt, "raw", &inner());
    contended(&mut group, &contended_rt, "palisade", &palisade);
    contended(
        &mut group,
        &contended_rt,
        "tower_concurrency_limit",
        &tower_limit,
    );
    contended(
        &mut group,
        &contended_rt,
        "tower_resilience",
        &tower_resilience,
    );
    group.finish();
}

/// Runs every group (written out rather than with `criterion_group!`, whose
/// generated function has no documentation).
fn benches() {
    let mut criterion = Criterion::default().configure_from_args();
    ratelimit(&mut criterion);
    bulkhead(&mut criterion);
}

criterion_main!(benches);
