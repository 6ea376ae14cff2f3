//! The harness both benchmarks share: the trivial inner service and the timed call
//! loops (single task, and contended).

// Each benchmark uses a subset of the harness; benches measure wall time, so
// `std::time::Instant` is the right clock here.
#![allow(dead_code, clippy::disallowed_types, clippy::disallowed_methods)]

use std::fmt::Debug;
use std::hint::black_box;
use std::time::Instant;

use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;
use tokio::runtime::Runtime;
use tower::{Service, ServiceExt};

/// Tasks sharing one breaker in the contended group.
pub(crate) const TASKS: u64 = 4;

/// The trivial inner service every variant wraps.
pub(crate) fn inner() -> impl Service<
    u64,
    Response = u64,
    Error = std::io::Error,
    Future = impl Future<Output = Result<u64, std::io::Error>> + Send,
> + Clone
+ Send
+ 'static {
    // A named future type (not an `async` block): stacks built from configuration
    // compile slowly over async-block futures, and real endpoints (hyper clients,
    // balancers) have named ones.
    tower::service_fn(|x: u64| std::future::ready(Ok::<u64, std::io::Error>(x)))
}

/// The inner service of the "pending" variants: each call's future returns pending
/// once (waking itself) before it answers, as a call over a network would, so that
/// the layers' timers are made and registered.
pub(crate) fn inner_pending()
-> impl Service<u64, Response = u64, Error = std::io::Error, Future = YieldOnce> + Clone + Send + 'static
{
    tower::service_fn(|x: u64| YieldOnce { x, yielded: false })
}

/// A future that is pending once, then answers.
pub(crate) struct YieldOnce {
    x: u64,
    yielded: bool,
}

impl Future for YieldOnce {
    type Output = Result<u64, std::io::Error>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        if self.yielded {
            std::task::Poll::Ready(Ok(self.x))
        } else {
            self.yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}

/// Makes `iters` calls through `svc`, checking each succeeded (so a breaker that
/// opened by mistake would abort the bench rather than measure rejections).
pub(crate) async fn calls<S>(svc: &mut S, iters: u64)
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
{
    for i in 0..iters {
        let out = svc
            .ready()
            .await
            .expect("service ready")
            .call(black_box(i))
            .await
            .expect("call succeeds");
        black_box(out);
    }
}

/// Times one task calling through `svc` on a current-thread runtime.
pub(crate) fn single<S>(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, svc: &S)
where
    S: Service<u64, Response = u64> + Clone,
    S::Error: Debug,
{
    // Each sample gets a clone of the one service: the clones share the breaker,
    // so its state accumulates across samples. `iter_custom` times a plain loop of
    // calls, so nothing but the calls is inside the measurement.
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut svc = svc.clone();
            async move {
                let start = Instant::now();
                calls(&mut svc, iters).await;
                start.elapsed()
            }
        });
    });
}

/// Times [`TASKS`] tasks calling at once through clones of `svc` (one shared
/// breaker) on a two-worker runtime.
pub(crate) fn contended<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    svc: &S,
) where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug + Send,
{
    // Each task makes `iters` calls through its own clone. We return the whole
    // wall time unscaled, so criterion's figure (elapsed / iters) is the time each
    // task takes to get one call through while all TASKS tasks are calling: time
    // per call, per task. With 4 tasks on 2 workers that includes 2x
    // oversubscription; divide it by TASKS for the wall time per call across the
    // whole runtime (the throughput cost of one call).
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| {
                        let mut svc = svc.clone();
                        tokio::spawn(async move { calls(&mut svc, iters).await })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("bench task panicked");
                }
                start.elapsed()
            })
        });
    });
}
