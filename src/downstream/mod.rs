//! One dependency, one cooperating stack: [`Downstream`].
//!
//! A `Downstream` names a dependency ("customer", "inventory") and assembles the
//! policies you give it in the one order that makes them cooperate:
//!
//! ```text
//! metrics → deadline → retry (+ hedge, one budget) → breaker → rate limit
//!         → bulkhead | adaptive limit → throttle → deadline check → per-try timeout → endpoint
//! ```
//!
//! Every policy is optional. The order gives these rules, each proven by a test:
//!
//! - **Retry never retries a refusal that says "don't":** circuit open, budget
//!   exhausted and deadline exceeded are final; the retry layer sits above the breaker
//!   and limits, so it sees their rejections as what they are.
//! - **Retries and hedges spend one budget**, funded by successes.
//! - **The deadline bounds everything**: the front sets the call's deadline (the total
//!   timeout, or the caller's own deadline if that is earlier) for every layer below;
//!   retry backoff never sleeps past it, each per-try timeout is cut to it, and the
//!   front answers `deadline_exceeded` when it passes.
//! - **An attempt that cannot finish in time is refused before it is sent** (less
//!   than `min_remaining` left); for HTTP the time left travels to the next hop in
//!   `x-palisade-deadline-ms` / `grpc-timeout`.
//! - **The per-try timeout is inside the retry**, so a timed-out attempt can be
//!   retried, and inside the limits, so a hung attempt gives its permit back.
//!
//! The stack is one concrete type (no boxing per call); [`Downstream::boxed`] gives a
//! nameable, cloneable [`BoxDownstream`] for code that must store it.
//!
//! ```
//! use palisade::Downstream;
//! use palisade::breaker::BreakerConfig;
//! use palisade::retry::RetryConfig;
//! use std::time::Duration;
//! use tower::{Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let customer = Downstream::builder("customer")
//!     .total_timeout(Duration::from_secs(2))
//!     .retry(RetryConfig { max_attempts: 3, ..RetryConfig::default() })
//!     .breaker(BreakerConfig::default())
//!     .timeout(Duration::from_millis(300))
//!     .build()?;
//! let handle = customer.handle();
//!
//! let mut svc = customer.layer(tower::service_fn(|id: u64| async move {
//!     Ok::<_, std::io::Error>(format!("customer {id}"))
//! }));
//! assert_eq!(svc.ready().await?.call(7).await?, "customer 7");
//! assert_eq!(handle.breaker().unwrap().state(), palisade::breaker::State::Closed);
//! # Ok(())
//! # }
//! ```

pub(crate) mod front;
mod hop;
mod stage;

use std::sync::Arc;
use std::time::Duration;

use palisade_breaker::{BreakerConfig, BreakerHandle, CircuitBreaker, CircuitBreakerLayer};
use palisade_core::{AllErrorsFail, ConfigError, Error, Name};
use palisade_limit::adaptive::{
    AdaptiveLimit, AdaptiveLimitConfig, AdaptiveLimitHandle, AdaptiveLimitLayer,
};
use palisade_limit::bulkhead::{Bulkhead, BulkheadConfig, BulkheadHandle, BulkheadLayer};
use palisade_limit::rate::{RateLimit, RateLimitConfig, RateLimitHandle, RateLimitLayer};
use palisade_limit::throttle::{Throttle, ThrottleConfig, ThrottleHandle, ThrottleLayer};
use palisade_retry::{
    CloneRequests, Hedge, HedgeDelay, HedgeLayer, Retry, RetryBudget, RetryConfig, RetryLayer,
};
use palisade_timeout::{Timeout, TimeoutLayer};
use tower_layer::Layer;

pub use front::{Front, FrontFuture};
#[cfg(feature = "http")]
pub use hop::HttpDeadline;
pub use hop::{HopSpec, RefuseLate, RefuseLateFuture, RefuseLateLayer, RefuseLateService};
pub use stage::{Stage, StageFuture};

use front::{FrontMetrics, FrontShared};

/// The per-try timeout stage around the endpoint.
pub type TryStage<S> = Stage<Timeout<S>, S>;
/// The deadline check (and, for HTTP, propagation) above the per-try timeout.
pub type HopStage<S, H> = <<H as HopSpec>::Layer as Layer<TryStage<S>>>::Service;
/// The client-side throttle stage.
pub type ThrottleStage<S, C, H> = Stage<Throttle<HopStage<S, H>, C>, HopStage<S, H>>;
/// The adaptive concurrency limit stage.
pub type AdaptiveStage<S, C, H> = Stage<AdaptiveLimit<ThrottleStage<S, C, H>, C>, ThrottleStage<S, C, H>>;
/// The bulkhead stage.
pub type BulkheadStage<S, C, H> = Stage<Bulkhead<AdaptiveStage<S, C, H>>, AdaptiveStage<S, C, H>>;
/// The rate limit stage.
pub type RateStage<S, C, H> = Stage<RateLimit<BulkheadStage<S, C, H>>, BulkheadStage<S, C, H>>;
/// The circuit breaker stage.
pub type BreakerStage<S, C, H> = Stage<CircuitBreaker<RateStage<S, C, H>, C>, RateStage<S, C, H>>;
/// The hedging stage.
pub type HedgeStage<S, C, P, H> = Stage<Hedge<BreakerStage<S, C, H>, P, C>, BreakerStage<S, C, H>>;
/// The retry stage.
pub type RetryStage<S, C, P, H> = Stage<Retry<HedgeStage<S, C, P, H>, P, C>, HedgeStage<S, C, P, H>>;
/// The whole stack a [`Downstream`] builds around an endpoint service `S`.
pub type DownstreamService<S, C = AllErrorsFail, P = CloneRequests, H = RefuseLate> =
    Front<RetryStage<S, C, P, H>, C>;

/// A nameable, cloneable downstream stack: see [`Downstream::boxed`].
pub type BoxDownstream<Req, Res> = tower::util::BoxCloneSyncService<Req, Res, Error>;

/// One dependency's policies, assembled in the canonical order as one
/// [`tower::Layer`]. See the [module docs](self) for the order and the rules it gives.
///
/// `C` classifies results for every judging layer (breaker, retry, hedge, adaptive
/// limit, throttle, metrics) so one decision means the same thing everywhere; `P` is
/// the retry protocol (how a request is replayed); `H` how an attempt goes on the wire.
pub struct Downstream<C = AllErrorsFail, P = CloneRequests, H: HopSpec = RefuseLate> {
    front: Arc<FrontShared>,
    classify: C,
    retry: Option<RetryLayer<P, C>>,
    hedge: Option<HedgeLayer<P, C>>,
    breaker: Option<CircuitBreakerLayer<C>>,
    rate: Option<RateLimitLayer>,
    bulkhead: Option<BulkheadLayer>,
    adaptive: Option<AdaptiveLimitLayer<C>>,
    throttle: Option<ThrottleLayer<C>>,
    hop: H::Layer,
    timeout: Option<TimeoutLayer>,
}

impl<C: Clone, P: Clone, H: HopSpec> Clone for Downstream<C, P, H> {
    fn clone(&self) -> Self {
        Self {
            front: Arc::clone(&self.front),
            classify: self.classify.clone(),
            retry: self.retry.clone(),
            hedge: self.hedge.clone(),
            breaker: self.breaker.clone(),
            rate: self.rate.clone(),
            bulkhead: self.bulkhead.clone(),
            adaptive: self.adaptive.clone(),
            throttle: self.throttle.clone(),
            hop: self.hop.clone(),
            timeout: self.timeout.clone(),
        }
    }
}

impl<C, P, H: HopSpec> std::fmt::Debug for Downstream<C, P, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downstream")
            .field("name", &self.front.name)
            .field("total_timeout", &self.front.total)
            .field("retry", &self.retry.is_some())
            .field("hedge", &self.hedge.is_some())
            .field("breaker", &self.breaker.is_some())
            .field("rate_limit", &self.rate.is_some())
            .field("bulkhead", &self.bulkhead.is_some())
            .field("adaptive_limit", &self.adaptive.is_some())
            .field("throttle", &self.throttle.is_some())
            .field("timeout", &self.timeout.as_ref().map(TimeoutLayer::timeout))
            .finish()
    }
}

impl Downstream {
    /// Starts a downstream named `name` (the `downstream` label of its metrics) with
    /// no policies: add the ones you want, then [`build`](Builder::build).
    pub fn builder(name: &str) -> Builder {
        Builder {
            name: name.to_owned(),
            classify: AllErrorsFail,
            protocol: CloneRequests,
            hop: RefuseLate,
            total_timeout: None,
            margin: Duration::from_millis(5),
            min_remaining: Duration::from_millis(10),
            retry: None,
            hedge: None,
            breaker: None,
            rate: None,
            concurrency: None,
            throttle: None,
            timeout: None,
            metrics: true,
        }
    }
}

impl<C, P, H: HopSpec> Downstream<C, P, H> {
    /// The downstream's name.
    pub fn name(&self) -> &Name {
        &self.front.name
    }

    /// A handle on the stack's runtime state: breaker, limits, budget.
    pub fn handle(&self) -> DownstreamHandle {
        DownstreamHandle {
            name: self.front.name.clone(),
            breaker: self.breaker.as_ref().map(CircuitBreakerLayer::handle),
            rate: self.rate.as_ref().map(|r| Arc::new(r.handle())),
            bulkhead: self.bulkhead.as_ref().map(BulkheadLayer::handle),
            adaptive: self.adaptive.as_ref().map(AdaptiveLimitLayer::handle),
            throttle: self.throttle.as_ref().map(ThrottleLayer::handle),
            budget: self.retry.as_ref().map(|r| Arc::clone(r.budget())),
        }
    }

    /// Wraps `endpoint` and boxes the stack into a nameable, cloneable service.
    pub fn boxed<S, Req>(&self, endpoint: S) -> BoxDownstream<Req, S::Response>
    where
        Self: Layer<S>,
        <Self as Layer<S>>::Service: tower_service::Service<Req, Response = S::Response, Error = Error>
            + Clone
            + Send
            + Sync
            + 'static,
        <<Self as Layer<S>>::Service as tower_service::Service<Req>>::Future: Send + 'static,
        S: tower_service::Service<Req>,
    {
        tower::util::BoxCloneSyncService::new(self.layer(endpoint))
    }
}

fn stage<L: Layer<S>, S>(layer: Option<&L>, inner: S) -> Stage<L::Service, S> {
    match layer {
        Some(l) => Stage::On(l.layer(inner)),
        None => Stage::Off(inner),
    }
}

impl<S, C, P, H> Layer<S> for Downstream<C, P, H>
where
    C: Clone,
    P: Clone,
    H: HopSpec,
    H::Layer: Layer<TryStage<S>>,
{
    type Service = DownstreamService<S, C, P, H>;

    fn layer(&self, endpoint: S) -> Self::Service {
        let s = stage(self.timeout.as_ref(), endpoint);
        let s = self.hop.layer(s);
        let s = stage(self.throttle.as_ref(), s);
        let s = stage(self.adaptive.as_ref(), s);
        let s = stage(self.bulkhead.as_ref(), s);
        let s = stage(self.rate.as_ref(), s);
        let s = stage(self.breaker.as_ref(), s);
        let s = stage(self.hedge.as_ref(), s);
        let s = stage(self.retry.as_ref(), s);
        Front::new(s, self.classify.clone(), Arc::clone(&self.front))
    }
}

/// The runtime side of a [`Downstream`]: each configured policy's handle.
#[derive(Debug, Clone)]
pub struct DownstreamHandle {
    name: Name,
    breaker: Option<BreakerHandle>,
    rate: Option<Arc<RateLimitHandle>>,
    bulkhead: Option<BulkheadHandle>,
    adaptive: Option<AdaptiveLimitHandle>,
    throttle: Option<ThrottleHandle>,
    budget: Option<Arc<RetryBudget>>,
}

impl DownstreamHandle {
    /// The downstream's name.
    pub fn name(&self) -> &Name {
        &self.name
    }
    /// The circuit breaker's handle, if one is configured.
    pub fn breaker(&self) -> Option<&BreakerHandle> {
        self.breaker.as_ref()
    }
    /// The rate limiter's handle, if one is configured.
    pub fn rate_limit(&self) -> Option<&RateLimitHandle> {
        self.rate.as_deref()
    }
    /// The bulkhead's handle, if one is configured.
    pub fn bulkhead(&self) -> Option<&BulkheadHandle> {
        self.bulkhead.as_ref()
    }
    /// The adaptive limit's handle, if one is configured.
    pub fn adaptive_limit(&self) -> Option<&AdaptiveLimitHandle> {
        self.adaptive.as_ref()
    }
    /// The throttle's handle, if one is configured.
    pub fn throttle(&self) -> Option<&ThrottleHandle> {
        self.throttle.as_ref()
    }
    /// The retry budget that retries and hedges spend, if retry is configured.
    pub fn retry_budget(&self) -> Option<&Arc<RetryBudget>> {
        self.budget.as_ref()
    }
}

/// How calls to a downstream are bounded in concurrency.
#[derive(Debug, Clone, PartialEq)]
enum Concurrency {
    Bulkhead(BulkheadConfig),
    Adaptive(AdaptiveLimitConfig),
}

/// Builds a [`Downstream`]; every policy is optional.
#[derive(Debug, Clone)]
pub struct Builder<C = AllErrorsFail, P = CloneRequests, H = RefuseLate> {
    name: String,
    classify: C,
    protocol: P,
    hop: H,
    total_timeout: Option<Duration>,
    margin: Duration,
    min_remaining: Duration,
    retry: Option<RetryConfig>,
    hedge: Option<(HedgeDelay, u32)>,
    breaker: Option<BreakerConfig>,
    rate: Option<RateLimitConfig>,
    concurrency: Option<Concurrency>,
    throttle: Option<ThrottleConfig>,
    timeout: Option<Duration>,
    metrics: bool,
}

impl<C, P, H> Builder<C, P, H> {
    /// Classifies results with `classify` in every layer that judges calls.
    pub fn classify<C2>(self, classify: C2) -> Builder<C2, P, H> {
        Builder {
            name: self.name,
            classify,
            protocol: self.protocol,
            hop: self.hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            retry: self.retry,
            hedge: self.hedge,
            breaker: self.breaker,
            rate: self.rate,
            concurrency: self.concurrency,
            throttle: self.throttle,
            timeout: self.timeout,
            metrics: self.metrics,
        }
    }

    /// Replays requests for retries and hedges with `protocol`.
    pub fn protocol<P2>(self, protocol: P2) -> Builder<C, P2, H> {
        Builder {
            name: self.name,
            classify: self.classify,
            protocol,
            hop: self.hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            retry: self.retry,
            hedge: self.hedge,
            breaker: self.breaker,
            rate: self.rate,
            concurrency: self.concurrency,
            throttle: self.throttle,
            timeout: self.timeout,
            metrics: self.metrics,
        }
    }

    /// Sends each attempt with `hop` (see [`HopSpec`]).
    pub fn hop<H2>(self, hop: H2) -> Builder<C, P, H2> {
        Builder {
            name: self.name,
            classify: self.classify,
            protocol: self.protocol,
            hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            retry: self.retry,
            hedge: self.hedge,
            breaker: self.breaker,
            rate: self.rate,
            concurrency: self.concurrency,
            throttle: self.throttle,
            timeout: self.timeout,
            metrics: self.metrics,
        }
    }

    /// HTTP: classify with [`HttpClassifier`](palisade_core::HttpClassifier) (5xx,
    /// 429 and timeouts fail, other 4xx are ignored), retry with
    /// [`HttpRetry`](palisade_retry::http::HttpRetry) (idempotent methods only,
    /// `Retry-After`, cross-hop "do not retry"), and send the time left to the next
    /// hop in deadline headers.
    #[cfg(feature = "http")]
    pub fn http(
        self,
    ) -> Builder<palisade_core::HttpClassifier, palisade_retry::http::HttpRetry, HttpDeadline> {
        self.classify(palisade_core::HttpClassifier)
            .protocol(palisade_retry::http::HttpRetry::default())
            .hop(HttpDeadline)
    }

    /// Every call (all attempts and the waits between them) must finish within
    /// `timeout` — sooner if the caller's own deadline is earlier.
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = Some(timeout);
        self
    }

    /// An attempt with less than this left before the deadline is refused without
    /// being sent. Default 10 ms.
    pub fn min_remaining(mut self, min_remaining: Duration) -> Self {
        self.min_remaining = min_remaining;
        self
    }

    /// Taken off the time left before it is sent to the next hop (HTTP), to cover
    /// the network. Default 5 ms; must be less than `min_remaining`.
    pub fn deadline_margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// Retries failed calls with these settings.
    pub fn retry(mut self, config: RetryConfig) -> Self {
        self.retry = Some(config);
        self
    }

    /// Hedges: after `delay`, sends up to `max_hedges` extra attempts; they spend the
    /// retry budget when retry is configured.
    pub fn hedge(mut self, delay: HedgeDelay, max_hedges: u32) -> Self {
        self.hedge = Some((delay, max_hedges));
        self
    }

    /// A circuit breaker with these settings.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Some(config);
        self
    }

    /// A rate limit on calls to the downstream.
    pub fn rate_limit(mut self, config: RateLimitConfig) -> Self {
        self.rate = Some(config);
        self
    }

    /// A bulkhead: at most so many calls at once (replaces an adaptive limit).
    pub fn bulkhead(mut self, config: BulkheadConfig) -> Self {
        self.concurrency = Some(Concurrency::Bulkhead(config));
        self
    }

    /// An adaptive concurrency limit that follows latency (replaces a bulkhead).
    pub fn adaptive_limit(mut self, config: AdaptiveLimitConfig) -> Self {
        self.concurrency = Some(Concurrency::Adaptive(config));
        self
    }

    /// Google SRE client-side throttling.
    pub fn throttle(mut self, config: ThrottleConfig) -> Self {
        self.throttle = Some(config);
        self
    }

    /// A timeout on each attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Records no top-level metrics (the layers still record theirs).
    pub fn without_metrics(mut self) -> Self {
        self.metrics = false;
        self
    }
}

impl<C, P, H> Builder<C, P, H>
where
    C: Clone,
    P: Clone,
    H: HopSpec,
{
    /// Validates every policy and builds the layer. Errors name the policy and the
    /// field, e.g. `breaker.failure_rate_threshold: 1.5 is not within 0..=1`.
    pub fn build(self) -> Result<Downstream<C, P, H>, ConfigError> {
        let name = Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        if self.total_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new("total_timeout", "must be more than zero"));
        }
        if self.min_remaining <= self.margin {
            return Err(ConfigError::new(
                "deadline.min_remaining",
                format!(
                    "{:?} is not more than deadline.margin ({:?})",
                    self.min_remaining, self.margin
                ),
            ));
        }
        let n = name.as_str();
        let retry = match &self.retry {
            Some(config) => Some(
                RetryLayer::builder(n)
                    .config(config.clone())
                    .classify(self.classify.clone())
                    .protocol(self.protocol.clone())
                    .build()
                    .map_err(|e| e.within("retry"))?,
            ),
            None => None,
        };
        let hedge = match self.hedge {
            Some((delay, max_hedges)) => {
                let mut b = HedgeLayer::builder(n)
                    .delay(delay)
                    .max_hedges(max_hedges)
                    .classify(self.classify.clone())
                    .protocol(self.protocol.clone());
                if let Some(r) = &retry {
                    b = b.budget(Arc::clone(r.budget()));
                }
                Some(b.build().map_err(|e| e.within("hedge"))?)
            }
            None => None,
        };
        let breaker = match &self.breaker {
            Some(config) => Some(
                CircuitBreakerLayer::builder(n)
                    .config(config.clone())
                    .classify(self.classify.clone())
                    .build()
                    .map_err(|e| e.within("breaker"))?,
            ),
            None => None,
        };
        let rate = match self.rate {
            Some(config) => Some(
                RateLimitLayer::builder(n)
                    .config(config)
                    .build()
                    .map_err(|e| e.within("rate_limit"))?,
            ),
            None => None,
        };
        let (bulkhead, adaptive) = match &self.concurrency {
            Some(Concurrency::Bulkhead(config)) => (
                Some(
                    BulkheadLayer::from_config(n, config.clone())
                        .map_err(|e| e.within("bulkhead"))?,
                ),
                None,
            ),
            Some(Concurrency::Adaptive(config)) => (
                None,
                Some(
                    AdaptiveLimitLayer::builder(n)
                        .config(config.clone())
                        .classify(self.classify.clone())
                        .build()
                        .map_err(|e| e.within("adaptive_limit"))?,
                ),
            ),
            None => (None, None),
        };
        let throttle = match &self.throttle {
            Some(config) => Some(
                ThrottleLayer::builder(n)
                    .config(config.clone())
                    .classify(self.classify.clone())
                    .build()
                    .map_err(|e| e.within("throttle"))?,
            ),
            None => None,
        };
        let timeout = match self.timeout {
            Some(t) => Some(TimeoutLayer::new(n, t).map_err(|e| e.within("timeout"))?),
            None => None,
        };
        let hop = self.hop.build(n, self.margin, self.min_remaining)?;
        let metrics = self.metrics.then(|| FrontMetrics::register(&name));
        Ok(Downstream {
            front: Arc::new(FrontShared {
                name,
                total: self.total_timeout,
                metrics,
            }),
            classify: self.classify,
            retry,
            hedge,
            breaker,
            rate,
            bulkhead,
            adaptive,
            throttle,
            hop,
            timeout,
        })
    }
}

