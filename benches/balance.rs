//! Power of two choices over peak-EWMA load, Palisade's balancer against tower's
//! `p2c::Balance` over `PeakEwmaDiscover`, both over the same ten trivial endpoints,
//! one task calling through one balancer (tower's is not `Clone`; sharing it between
//! tasks takes a `Buffer`, a different cost). Palisade's balancer also does what
//! tower's does not: outlier ejection, slow start, failure penalty, metrics into a
//! Prometheus recorder (installed here, as in production).
//!
//! `cargo bench -p palisade-benches --bench balance`

// Benches measure wall time, so `std::time::Instant` is the right clock here.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_main};
use palisade::balance::{Balance, discover};
use tokio::runtime::Runtime;
use tower::balance::p2c;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::{Service, ServiceExt};

/// Endpoints behind each balancer.
const ENDPOINTS: u16 = 10;

/// An endpoint that answers at once.
fn endpoint(
    _addr: SocketAddr,
) -> impl Service<
    u64,
    Response = u64,
    Error = std::io::Error,
    Future = std::future::Ready<Result<u64, std::io::Error>>,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(|x: u64| std::future::ready(Ok::<u64, std::io::Error>(x)))
}

fn addrs() -> Vec<SocketAddr> {
    (0..ENDPOINTS)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
        .collect()
}

fn balancers(c: &mut Criterion) {
    let _handle = palisade::metrics::install_prometheus_recorder().expect("recorder installs");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("current-thread runtime");

    let palisade = rt.block_on(async {
        let mut balance = Balance::builder("bench")
            .build(
                discover::fixed("bench", addrs()).expect("distinct addresses"),
                endpoint,
            )
            .expect("valid balancer");
        // Discovery fills the balancer from a task of its own: wait for it.
        for _ in 0..1000 {
            if balance.ready().await.expect("ready").call(0).await.is_ok() {
                return balance;
            }
            tokio::task::yield_now().await;
        }
        panic!("the balancer never saw its endpoints")
    });
    let tower = rt.block_on(async {
        let list = ServiceList::new(addrs().into_iter().map(endpoint).collect::<Vec<_>>());
        let discover = PeakEwmaDiscover::new(
            list,
            Duration::from_millis(30),
            Duration::from_secs(10),
            CompleteOnResponse::default(),
        );
        p2c::Balance::new(discover)
    });

    let mut group = c.benchmark_group("balance_single");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    single(&mut group, &rt, "palisade", Mutex::new(Some(palisade)));
    single(&mut group, &rt, "tower_p2c", Mutex::new(Some(tower)));
    group.finish();
}

/// Times one task calling through `svc` (the same balancer every sample, so its
/// latency estimates carry over as in a running service).
fn single<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    svc: Mutex<Option<S>>,
) where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let svc = &svc;
            async move {
                // Taken out for the timed loop and put back after it.
                let taken = svc.lock().expect("not poisoned").take();
                let mut balancer = taken.expect("one sample at a time");
                let start = Instant::now();
                for i in 0..iters {
                    let out = balancer
                        .ready()
                        .await
                        .expect("balancer ready")
                        .call(black_box(i))
                        .await
                        .expect("call succeeds");
                    black_box(out);
                }
                let elapsed = start.elapsed();
                *svc.lock().expect("not poisoned") = Some(balancer);
                elapsed
            }
        });
    });
}

fn benches() {
    let mut criterion = Criterion::default().configure_from_args();
    balancers(&mut criterion);
}

criterion_main!(benches);
