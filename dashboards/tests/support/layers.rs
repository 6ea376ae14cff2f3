//! Every Palisade layer on main, built for one downstream under whatever metrics
//! recorder is current, composed into client stacks (`u32` requests) and a server
//! stack (HTTP requests), so their series exist and calls move them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use palisade::balance::discover::{Registration, Registry};
use palisade::balance::{Balance, BalanceConfig, LoadMetric};
use palisade::breaker::CircuitBreakerLayer;
use palisade::core::{BoxError, Error};
use palisade::fallback::{CacheLayer, CloneStore, FallbackCause, FallbackLayer, key_fn};
use palisade::fault::{ErrorFault, FaultConfig, FaultHandle, FaultLayer};
use palisade::limit::adaptive::AdaptiveLimitLayer;
use palisade::limit::bulkhead::BulkheadLayer;
use palisade::limit::rate::RateLimitLayer;
use palisade::limit::shed::LoadShedLayer;
use palisade::limit::throttle::ThrottleLayer;
use palisade::retry::{HedgeDelay, HedgeLayer, RetryLayer};
use palisade::timeout::{InboundDeadlineLayer, OutboundDeadlineLayer, TimeoutLayer};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

/// A client stack for calls to a downstream, in Palisade's canonical order.
pub(crate) type Client = BoxCloneSyncService<u32, u32, Error>;
/// A server stack answering HTTP requests.
pub(crate) type Server = BoxCloneSyncService<http::Request<()>, http::Response<()>, BoxError>;

/// The downstream's behaviour, changeable while it runs: request `n` fails when
/// `n % fail_every == 0`, and takes `slow` instead of `latency` when
/// `n % slow_every == 0` (0: never).
#[derive(Debug, Clone, Default)]
pub(crate) struct Behaviour {
    /// Every n-th request fails (0: none).
    pub(crate) fail_every: Arc<AtomicU32>,
    /// Every n-th request is slow (0: none).
    pub(crate) slow_every: Arc<AtomicU32>,
    /// How long a request takes (at least 1 ms, so time moves).
    pub(crate) latency: Duration,
    /// How long a slow request takes.
    pub(crate) slow: Duration,
}

impl Behaviour {
    /// Fails every `fail_every`-th request, each taking `latency`.
    pub(crate) fn new(fail_every: u32, latency: Duration) -> Self {
        Self {
            fail_every: Arc::new(AtomicU32::new(fail_every)),
            latency,
            ..Self::default()
        }
    }
}

/// Builds every layer for `downstream`, registering its series with the current recorder.
pub(crate) fn client(downstream: &str, behaviour: Behaviour) -> Client {
    let retry = RetryLayer::builder(downstream)
        .max_attempts(3)
        .build()
        .unwrap();
    let hedge = HedgeLayer::builder(downstream)
        .delay(HedgeDelay::Fixed(Duration::from_millis(200)))
        .max_hedges(1)
        .budget(retry.budget().clone())
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::builder(downstream)
        .count_window(20)
        .minimum_calls(10)
        .failure_rate_threshold(0.5)
        .slow_calls(Duration::from_millis(100), 0.8)
        .wait_in_open(Duration::from_secs(2))
        .build()
        .unwrap();
    let rate = RateLimitLayer::builder(downstream)
        .rate(30, Duration::from_secs(1))
        .burst(5)
        .max_wait(Duration::from_millis(200))
        .build()
        .unwrap();
    let bulkhead = BulkheadLayer::builder(downstream)
        .max_concurrent(8)
        .max_queue(8)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let adaptive = AdaptiveLimitLayer::builder(downstream)
        .min_limit(2)
        .max_limit(16)
        .build()
        .unwrap();
    let throttle = ThrottleLayer::builder(downstream).seed(7).build().unwrap();
    let timeout = TimeoutLayer::new(downstream, Duration::from_millis(150)).unwrap();
    let n = Arc::new(AtomicU32::new(0));
    let svc = ServiceBuilder::new()
        .layer(retry)
        .layer(hedge)
        .layer(breaker)
        .layer(rate)
        .layer(bulkhead)
        .layer(adaptive)
        .layer(throttle)
        .layer(timeout)
        .service_fn(move |req: u32| {
            let i = n.fetch_add(1, Ordering::Relaxed) + 1;
            let fail_every = behaviour.fail_every.load(Ordering::Relaxed);
            let slow_every = behaviour.slow_every.load(Ordering::Relaxed);
            let latency = if slow_every > 0 && i.is_multiple_of(slow_every) {
                behaviour.slow
            } else {
                behaviour.latency
            };
            async move {
                tokio::time::sleep(latency.max(Duration::from_millis(1))).await;
                if fail_every > 0 && i.is_multiple_of(fail_every) {
                    Err(std::io::Error::other("downstream failed"))
                } else {
                    Ok(req)
                }
            }
        });
    BoxCloneSyncService::new(svc)
}

/// An inbound stack for `name`: deadline extraction and load shedding around a
/// handler that calls the downstream `downstream` through an outbound deadline.
pub(crate) fn server(name: &str, downstream: &str) -> Server {
    let outbound = ServiceBuilder::new()
        .layer(OutboundDeadlineLayer::builder(downstream).build().unwrap())
        .service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok::<_, std::io::Error>(http::Response::new(()))
        });
    let svc = ServiceBuilder::new()
        .layer(
            LoadShedLayer::builder(name)
                .max_in_flight(64)
                .build()
                .unwrap(),
        )
        .map_err(|e: Error| BoxError::from(e))
        .layer(
            InboundDeadlineLayer::builder(name)
                .max(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
        .service_fn(move |_req: http::Request<()>| {
            let mut outbound = outbound.clone();
            async move {
                use tower::{Service, ServiceExt};
                let res = outbound.ready().await?.call(http::Request::new(())).await?;
                Ok::<_, Error>(res)
            }
        });
    BoxCloneSyncService::new(svc)
}

/// A client for a replicated downstream, with its controls.
pub(crate) struct Replicated {
    /// Fallback → stale-if-error cache → fault injection → balancer over the replicas.
    pub(crate) client: Client,
    /// Turns injected faults on and off.
    pub(crate) faults: FaultHandle,
    /// The replicas' registrations; dropping one takes its endpoint out of rotation.
    pub(crate) replicas: Vec<Registration>,
}

/// How long a cached answer is fresh.
pub(crate) const FRESH_TTL: Duration = Duration::from_secs(10);

/// A client for `downstream` served by two replicas registered in an in-process
/// registry: the one at 127.0.0.1:1 fails every call, the one at 127.0.0.1:2 answers
/// with the request after `latency`. A failed call is answered by the fallback
/// (`u32::MAX`); answers are cached per request for [`FRESH_TTL`] and served stale for
/// a minute more when the downstream fails. Three failures in a row eject a replica.
/// Fault injection is off until [`Replicated::faults`] sets it.
pub(crate) fn replicated(downstream: &str, latency: Duration) -> Replicated {
    let registry = Registry::new();
    let replicas = vec![
        registry.register(downstream, SocketAddr::from(([127, 0, 0, 1], 1))),
        registry.register(downstream, SocketAddr::from(([127, 0, 0, 1], 2))),
    ];
    let make = move |addr: SocketAddr| {
        tower::service_fn(move |req: u32| async move {
            tokio::time::sleep(latency.max(Duration::from_millis(1))).await;
            if addr.port() == 1 {
                Err(std::io::Error::other("replica failed"))
            } else {
                Ok(req)
            }
        })
    };
    let mut config = BalanceConfig {
        load: LoadMetric::PendingRequests,
        failure_penalty: Duration::ZERO,
        ..BalanceConfig::default()
    };
    config.outlier.consecutive_failures = 3;
    let balance = Balance::builder(downstream)
        .config(config)
        .build(registry.watch(downstream).unwrap(), make)
        .unwrap();
    let fault = FaultLayer::custom(downstream, |status: u16| -> Result<u32, BoxError> {
        Err(format!("injected {status}").into())
    })
    .unwrap()
    .seed(7);
    let faults = fault.handle();
    let cache = CacheLayer::builder(downstream, key_fn(|n: &u32| Some(*n)), CloneStore::new())
        .fresh_ttl(FRESH_TTL)
        .max_stale(Duration::from_secs(60))
        .build()
        .unwrap();
    let fallback = FallbackLayer::builder(downstream, |_: &FallbackCause<'_>| u32::MAX)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(fallback)
        .layer(cache)
        .layer(fault)
        .service(balance);
    Replicated {
        client: BoxCloneSyncService::new(svc),
        faults,
        replicas,
    }
}

/// Every call of `downstream` answered by an injected error (503).
pub(crate) fn all_errors() -> FaultConfig {
    FaultConfig {
        error: Some(ErrorFault::new(100.0, 503)),
        ..FaultConfig::default()
    }
}
