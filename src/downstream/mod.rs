//! One dependency, one cooperating stack: [`Downstream`].
//!
//! A `Downstream` names a dependency ("customer", "inventory") and assembles the
//! policies you give it in the one order that makes them cooperate:
//!
//! ```text
//! metrics → deadline → fallback → cache → retry (+ hedge, one budget) → breaker → rate limit
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
//! The stack is one concrete type with exactly the policies you configured — a
//! policy you leave out costs nothing, not even a branch — and no boxing per call;
//! [`Downstream::boxed`] gives a nameable, cloneable [`BoxDownstream`] for code that
//! must store it.
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

mod configured;
pub(crate) mod front;
mod hop;
mod slot;

use std::sync::Arc;
use std::time::Duration;

use palisade_breaker::{BreakerConfig, BreakerHandle};
use palisade_core::{AllErrorsFail, ConfigError, Error, Name};
use palisade_limit::adaptive::{AdaptiveLimitConfig, AdaptiveLimitHandle};
use palisade_limit::bulkhead::{BulkheadConfig, BulkheadHandle};
use palisade_limit::rate::{RateLimitConfig, RateLimitHandle};
use palisade_limit::throttle::{ThrottleConfig, ThrottleHandle};
use palisade_retry::{CloneRequests, HedgeDelay, RetryBudget, RetryConfig};
use palisade_timeout::TimeoutHandle;
use tower::layer::util::Stack;
use tower_layer::Layer;

pub use configured::{
    ConcurrencyLayer, ConcurrencySlot, Configured, ConfiguredBuilder, ConfiguredLayers, Keep,
    LiveDownstream, LiveHandle, Optional, Passthrough, PassthroughFuture, PassthroughService,
    Updated,
};
pub use front::{Front, FrontFuture};
#[cfg(feature = "http")]
pub use hop::HttpDeadline;
pub use hop::{HopSpec, RefuseLate, RefuseLateFuture, RefuseLateLayer, RefuseLateService};
pub use slot::{
    AdaptiveSlot, BreakerSlot, BuildContext, BulkheadSlot, HedgeSlot, LayerSlot, Off, RateSlot,
    RetrySlot, Slot, ThrottleSlot, TimeoutSlot,
};

use front::{FrontMetrics, FrontShared};
use palisade_core::lanes::Lanes;

/// A nameable, cloneable downstream stack: see [`Downstream::boxed`].
pub type BoxDownstream<Req, Res> = tower::util::BoxCloneSyncService<Req, Res, Error>;

/// The layers of a stack, innermost first: per-try timeout, deadline check (`H`),
/// throttle, bulkhead or adaptive limit, rate limit, breaker, hedge, retry, cache,
/// fallback.
pub type Layers<O, H, T, K, L, B, G, R, A, F> =
    Stack<O, Stack<H, Stack<T, Stack<K, Stack<L, Stack<B, Stack<G, Stack<R, Stack<A, F>>>>>>>>>;

/// The [`Downstream`] a [`Builder`] with these slots builds.
pub type Built<C, P, H, F, A, R, G, B, L, K, T, O> = Downstream<
    Layers<
        <O as Slot<C, P>>::Layer,
        <H as HopSpec>::Layer,
        <T as Slot<C, P>>::Layer,
        <K as Slot<C, P>>::Layer,
        <L as Slot<C, P>>::Layer,
        <B as Slot<C, P>>::Layer,
        <G as Slot<C, P>>::Layer,
        <R as Slot<C, P>>::Layer,
        <A as Slot<C, P>>::Layer,
        <F as Slot<C, P>>::Layer,
    >,
    C,
>;

/// One dependency's policies, assembled in the canonical order as one
/// [`tower::Layer`]. See the [module docs](self) for the order and the rules it gives.
///
/// `L` is the stack of configured layers (left-out policies are
/// [`Identity`](tower::layer::util::Identity) and cost nothing); `C` classifies
/// results for the front's metrics, and every judging layer (breaker, retry, hedge,
/// adaptive limit, throttle) was built with the same classifier.
#[derive(Clone)]
pub struct Downstream<L, C = AllErrorsFail> {
    front: Lanes<FrontShared>,
    classify: C,
    layers: L,
    handle: DownstreamHandle,
}

impl<L, C> std::fmt::Debug for Downstream<L, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downstream")
            .field("name", &self.front.name)
            .field("total_timeout", &self.front.total)
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl Downstream<()> {
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
            metrics: true,
            fallback: Off,
            cache: Off,
            retry: Off,
            hedge: Off,
            breaker: Off,
            rate: Off,
            concurrency: Off,
            throttle: Off,
            timeout: Off,
        }
    }
}

impl<L, C> Downstream<L, C> {
    /// The downstream's name.
    pub fn name(&self) -> &Name {
        &self.front.name
    }

    /// A handle on the stack's runtime state: breaker, limits, budget.
    pub fn handle(&self) -> DownstreamHandle {
        self.handle.clone()
    }

    /// Wraps `endpoint` and boxes the stack into a nameable, cloneable service (one
    /// allocation per call, for the boxed future).
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

impl<S, L, C> Layer<S> for Downstream<L, C>
where
    L: Layer<S>,
    C: Clone,
{
    type Service = Front<L::Service, C>;

    fn layer(&self, endpoint: S) -> Self::Service {
        Front::new(
            self.layers.layer(endpoint),
            self.classify.clone(),
            self.front.clone(),
        )
    }
}

/// The runtime side of a [`Downstream`]: each configured policy's handle.
#[derive(Debug, Clone, Default)]
pub struct DownstreamHandle {
    pub(crate) breaker: Option<BreakerHandle>,
    pub(crate) rate: Option<Arc<RateLimitHandle>>,
    pub(crate) bulkhead: Option<BulkheadHandle>,
    pub(crate) adaptive: Option<AdaptiveLimitHandle>,
    pub(crate) throttle: Option<ThrottleHandle>,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    pub(crate) timeout: Option<TimeoutHandle>,
}

impl DownstreamHandle {
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
    /// The retry budget that retries and hedges spend: the retry's, or with hedging
    /// alone the hedge's own; `None` with neither.
    pub fn retry_budget(&self) -> Option<&Arc<RetryBudget>> {
        self.budget.as_ref()
    }
    /// The per-try timeout's handle, if one is configured.
    pub fn timeout(&self) -> Option<&TimeoutHandle> {
        self.timeout.as_ref()
    }
}

/// Builds a [`Downstream`]; every policy is optional. The type parameters record
/// which policies are configured ([`Off`] or a slot), so the built stack holds
/// exactly those.
#[derive(Debug, Clone)]
pub struct Builder<
    C = AllErrorsFail,
    P = CloneRequests,
    H = RefuseLate,
    F = Off,
    A = Off,
    R = Off,
    G = Off,
    B = Off,
    L = Off,
    K = Off,
    T = Off,
    O = Off,
> {
    name: String,
    classify: C,
    protocol: P,
    hop: H,
    total_timeout: Option<Duration>,
    margin: Duration,
    min_remaining: Duration,
    metrics: bool,
    fallback: F,
    cache: A,
    retry: R,
    hedge: G,
    breaker: B,
    rate: L,
    concurrency: K,
    throttle: T,
    timeout: O,
}

impl<C, P, H, F, A, R, G, B, L, K, T, O> Builder<C, P, H, F, A, R, G, B, L, K, T, O> {
    /// Classifies results with `classify` in every layer that judges calls.
    pub fn classify<C2>(self, classify: C2) -> Builder<C2, P, H, F, A, R, G, B, L, K, T, O> {
        Builder {
            name: self.name,
            classify,
            protocol: self.protocol,
            hop: self.hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            metrics: self.metrics,
            fallback: self.fallback,
            cache: self.cache,
            retry: self.retry,
            hedge: self.hedge,
            breaker: self.breaker,
            rate: self.rate,
            concurrency: self.concurrency,
            throttle: self.throttle,
            timeout: self.timeout,
        }
    }

    /// Replays requests for retries and hedges with `protocol`.
    pub fn protocol<P2>(self, protocol: P2) -> Builder<C, P2, H, F, A, R, G, B, L, K, T, O> {
        Builder {
            name: self.name,
            classify: self.classify,
            protocol,
            hop: self.hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            metrics: self.metrics,
            fallback: self.fallback,
            cache: self.cache,
            retry: self.retry,
            hedge: self.hedge,
            breaker: self.breaker,
            rate: self.rate,
            concurrency: self.concurrency,
            throttle: self.throttle,
            timeout: self.timeout,
        }
    }

    /// Sends each attempt with `hop` (see [`HopSpec`]).
    pub fn hop<H2>(self, hop: H2) -> Builder<C, P, H2, F, A, R, G, B, L, K, T, O> {
        Builder {
            name: self.name,
            classify: self.classify,
            protocol: self.protocol,
            hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            metrics: self.metrics,
            fallback: self.fallback,
            cache: self.cache,
            retry: self.retry,
            hedge: self.hedge,
            breaker: self.breaker,
            rate: self.rate,
            concurrency: self.concurrency,
            throttle: self.throttle,
            timeout: self.timeout,
        }
    }

    /// HTTP: classify with [`HttpClassifier`](palisade_core::HttpClassifier) (5xx,
    /// 429 and timeouts fail, other 4xx are ignored), retry with
    /// [`HttpRetry`](palisade_retry::http::HttpRetry) (idempotent methods only,
    /// `Retry-After`, cross-hop "do not retry"), and send the time left to the next
    /// hop in deadline headers.
    #[cfg(feature = "http")]
    #[allow(clippy::type_complexity)]
    pub fn http(
        self,
    ) -> Builder<
        palisade_core::HttpClassifier,
        palisade_retry::http::HttpRetry,
        HttpDeadline,
        F,
        A,
        R,
        G,
        B,
        L,
        K,
        T,
        O,
    > {
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

    /// Records no top-level metrics (the layers still record theirs).
    pub fn without_metrics(mut self) -> Self {
        self.metrics = false;
        self
    }

    /// A fallback, outermost but for the metrics: it sees every failure and refusal
    /// of the layers below, and why (e.g. a
    /// [`FallbackLayer`](palisade_fallback::FallbackLayer)).
    #[allow(clippy::type_complexity)]
    pub fn fallback<X: Clone>(
        self,
        layer: X,
    ) -> Builder<C, P, H, LayerSlot<X>, A, R, G, B, L, K, T, O> {
        Builder {
            name: self.name,
            classify: self.classify,
            protocol: self.protocol,
            hop: self.hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            metrics: self.metrics,
            fallback: LayerSlot(layer),
            cache: self.cache,
            retry: self.retry,
            hedge: self.hedge,
            breaker: self.breaker,
            rate: self.rate,
            concurrency: self.concurrency,
            throttle: self.throttle,
            timeout: self.timeout,
        }
    }

    /// A cache (and/or request coalescing) above the retry: answers from it do not
    /// touch the downstream, and a failed call can be answered stale (e.g. a
    /// [`CacheLayer`](palisade_fallback::CacheLayer), or a
    /// [`CoalesceLayer`](palisade_fallback::CoalesceLayer)).
    #[allow(clippy::type_complexity)]
    pub fn cache<X: Clone>(
        self,
        layer: X,
    ) -> Builder<C, P, H, F, LayerSlot<X>, R, G, B, L, K, T, O> {
        Builder {
            name: self.name,
            classify: self.classify,
            protocol: self.protocol,
            hop: self.hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            metrics: self.metrics,
            fallback: self.fallback,
            cache: LayerSlot(layer),
            retry: self.retry,
            hedge: self.hedge,
            breaker: self.breaker,
            rate: self.rate,
            concurrency: self.concurrency,
            throttle: self.throttle,
            timeout: self.timeout,
        }
    }

    /// Retries failed calls with these settings.
    pub fn retry(self, config: RetryConfig) -> Builder<C, P, H, F, A, RetrySlot, G, B, L, K, T, O> {
        Builder {
            name: self.name,
            classify: self.classify,
            protocol: self.protocol,
            hop: self.hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            metrics: self.metrics,
            fallback: self.fallback,
            cache: self.cache,
            retry: RetrySlot(config),
            hedge: self.hedge,
            breaker: self.breaker,
            rate: self.rate,
            concurrency: self.concurrency,
            throttle: self.throttle,
            timeout: self.timeout,
        }
    }

    /// Hedges: after `delay`, sends up to `max_hedges` extra attempts; they spend the
    /// retry budget when retry is configured.
    pub fn hedge(
        self,
        delay: HedgeDelay,
        max_hedges: u32,
    ) -> Builder<C, P, H, F, A, R, HedgeSlot, B, L, K, T, O> {
        Builder {
            name: self.name,
            classify: self.classify,
            protocol: self.protocol,
            hop: self.hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            metrics: self.metrics,
            fallback: self.fallback,
            cache: self.cache,
            retry: self.retry,
            hedge: HedgeSlot { delay, max_hedges },
            breaker: self.breaker,
            rate: self.rate,
            concurrency: self.concurrency,
            throttle: self.throttle,
            timeout: self.timeout,
        }
    }

    /// A circuit breaker with these settings.
    pub fn breaker(
        self,
        config: BreakerConfig,
    ) -> Builder<C, P, H, F, A, R, G, BreakerSlot, L, K, T, O> {
        Builder {
            name: self.name,
            classify: self.classify,
            protocol: self.protocol,
            hop: self.hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            metrics: self.metrics,
            fallback: self.fallback,
            cache: self.cache,
            retry: self.retry,
            hedge: self.hedge,
            breaker: BreakerSlot(config),
            rate: self.rate,
            concurrency: self.concurrency,
            throttle: self.throttle,
            timeout: self.timeout,
        }
    }

    /// A rate limit on calls to the downstream.
    pub fn rate_limit(
        self,
        config: RateLimitConfig,
    ) -> Builder<C, P, H, F, A, R, G, B, RateSlot, K, T, O> {
        Builder {
            name: self.name,
            classify: self.classify,
            protocol: self.protocol,
            hop: self.hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            metrics: self.metrics,
            fallback: self.fallback,
            cache: self.cache,
            retry: self.retry,
            hedge: self.hedge,
            breaker: self.breaker,
            rate: RateSlot(config),
            concurrency: self.concurrency,
            throttle: self.throttle,
            timeout: self.timeout,
        }
    }

    /// A bulkhead: at most so many calls at once (replaces an adaptive limit).
    pub fn bulkhead(
        self,
        config: BulkheadConfig,
    ) -> Builder<C, P, H, F, A, R, G, B, L, BulkheadSlot, T, O> {
        Builder {
            name: self.name,
            classify: self.classify,
            protocol: self.protocol,
            hop: self.hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            metrics: self.metrics,
            fallback: self.fallback,
            cache: self.cache,
            retry: self.retry,
            hedge: self.hedge,
            breaker: self.breaker,
            rate: self.rate,
            concurrency: BulkheadSlot(config),
            throttle: self.throttle,
            timeout: self.timeout,
        }
    }

    /// An adaptive concurrency limit that follows latency (replaces a bulkhead).
    pub fn adaptive_limit(
        self,
        config: AdaptiveLimitConfig,
    ) -> Builder<C, P, H, F, A, R, G, B, L, AdaptiveSlot, T, O> {
        Builder {
            name: self.name,
            classify: self.classify,
            protocol: self.protocol,
            hop: self.hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            metrics: self.metrics,
            fallback: self.fallback,
            cache: self.cache,
            retry: self.retry,
            hedge: self.hedge,
            breaker: self.breaker,
            rate: self.rate,
            concurrency: AdaptiveSlot(config),
            throttle: self.throttle,
            timeout: self.timeout,
        }
    }

    /// Google SRE client-side throttling.
    pub fn throttle(
        self,
        config: ThrottleConfig,
    ) -> Builder<C, P, H, F, A, R, G, B, L, K, ThrottleSlot, O> {
        Builder {
            name: self.name,
            classify: self.classify,
            protocol: self.protocol,
            hop: self.hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            metrics: self.metrics,
            fallback: self.fallback,
            cache: self.cache,
            retry: self.retry,
            hedge: self.hedge,
            breaker: self.breaker,
            rate: self.rate,
            concurrency: self.concurrency,
            throttle: ThrottleSlot(config),
            timeout: self.timeout,
        }
    }

    /// A timeout on each attempt.
    pub fn timeout(
        self,
        timeout: Duration,
    ) -> Builder<C, P, H, F, A, R, G, B, L, K, T, TimeoutSlot> {
        Builder {
            name: self.name,
            classify: self.classify,
            protocol: self.protocol,
            hop: self.hop,
            total_timeout: self.total_timeout,
            margin: self.margin,
            min_remaining: self.min_remaining,
            metrics: self.metrics,
            fallback: self.fallback,
            cache: self.cache,
            retry: self.retry,
            hedge: self.hedge,
            breaker: self.breaker,
            rate: self.rate,
            concurrency: self.concurrency,
            throttle: self.throttle,
            timeout: TimeoutSlot(timeout),
        }
    }
}

impl<C, P, H, F, A, R, G, B, L, K, T, O> Builder<C, P, H, F, A, R, G, B, L, K, T, O>
where
    C: Clone,
    P: Clone,
    H: HopSpec,
    F: Slot<C, P>,
    A: Slot<C, P>,
    R: Slot<C, P>,
    G: Slot<C, P>,
    B: Slot<C, P>,
    L: Slot<C, P>,
    K: Slot<C, P>,
    T: Slot<C, P>,
    O: Slot<C, P>,
{
    /// Validates every policy and builds the layer. Errors name the policy and the
    /// field, e.g. `breaker.failure_rate_threshold: 1.5 is not within 0..=1`.
    #[allow(clippy::type_complexity)]
    pub fn build(self) -> Result<Built<C, P, H, F, A, R, G, B, L, K, T, O>, ConfigError> {
        self.build_parts().map(|(downstream, _)| downstream)
    }

    /// [`build`](Self::build), also returning a clone of each policy's layer (sharing
    /// its state), for a stack built again with some of them kept.
    #[allow(clippy::type_complexity)]
    pub(crate) fn build_parts(
        self,
    ) -> Result<
        (
            Built<C, P, H, F, A, R, G, B, L, K, T, O>,
            Parts<R::Layer, G::Layer, B::Layer, L::Layer, K::Layer, T::Layer, O::Layer>,
        ),
        ConfigError,
    > {
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
        let mut cx = BuildContext {
            name: name.as_str(),
            classify: &self.classify,
            protocol: &self.protocol,
            handle: DownstreamHandle::default(),
        };
        // Retry first: the hedge spends its budget.
        let retry = self.retry.build(&mut cx)?;
        let hedge = self.hedge.build(&mut cx)?;
        let breaker = self.breaker.build(&mut cx)?;
        let rate = self.rate.build(&mut cx)?;
        let concurrency = self.concurrency.build(&mut cx)?;
        let throttle = self.throttle.build(&mut cx)?;
        let timeout = self.timeout.build(&mut cx)?;
        let cache = self.cache.build(&mut cx)?;
        let fallback = self.fallback.build(&mut cx)?;
        let hop = self
            .hop
            .build(name.as_str(), self.margin, self.min_remaining)?;
        let handle = cx.handle;
        let parts = Parts {
            retry: retry.clone(),
            hedge: hedge.clone(),
            breaker: breaker.clone(),
            rate: rate.clone(),
            concurrency: concurrency.clone(),
            throttle: throttle.clone(),
            timeout: timeout.clone(),
        };
        let layers = Stack::new(
            timeout,
            Stack::new(
                hop,
                Stack::new(
                    throttle,
                    Stack::new(
                        concurrency,
                        Stack::new(
                            rate,
                            Stack::new(
                                breaker,
                                Stack::new(hedge, Stack::new(retry, Stack::new(cache, fallback))),
                            ),
                        ),
                    ),
                ),
            ),
        );
        let metrics = self.metrics.then(|| FrontMetrics::register(&name));
        let downstream = Downstream {
            front: Lanes::new(Arc::new(FrontShared {
                name,
                total: self.total_timeout,
                metrics,
            })),
            classify: self.classify,
            layers,
            handle,
        };
        Ok((downstream, parts))
    }
}

/// Clones of a built stack's policy layers (sharing their state).
#[derive(Debug, Clone)]
pub(crate) struct Parts<R, G, B, L, K, T, O> {
    pub(crate) retry: R,
    pub(crate) hedge: G,
    pub(crate) breaker: B,
    pub(crate) rate: L,
    pub(crate) concurrency: K,
    pub(crate) throttle: T,
    pub(crate) timeout: O,
}

/// What [`DownstreamHandle::apply`] did with a configuration change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Sections retuned in place, their layers' state kept (a breaker that is open
    /// stays open; a rate limiter starts afresh with a full burst).
    pub retuned: Vec<crate::config::Section>,
    /// Sections that changed but cannot be changed in a running stack (a policy
    /// added or removed, or one without runtime settings): build a new stack for them.
    pub needs_rebuild: Vec<crate::config::SectionChange>,
}

impl DownstreamHandle {
    /// Applies a configuration change from `old` to `new` to the running stack:
    /// breaker and rate limit settings, a bulkhead's `max_concurrent` and the
    /// per-try timeout are retuned in place, keeping their state (calls in flight
    /// keep their timeout) — except the rate limiter's permits: a retuned limiter
    /// starts afresh, with a full burst; every other change is reported in
    /// [`Applied::needs_rebuild`]. Nothing is applied unless every retune is valid.
    pub fn apply(
        &self,
        old: &crate::config::DownstreamConfig,
        new: &crate::config::DownstreamConfig,
    ) -> Result<Applied, ConfigError> {
        let (applied, retunes) = self.plan(old, new)?;
        for retune in retunes {
            retune()?;
        }
        Ok(applied)
    }

    /// What [`apply`](Self::apply) would do, without doing it: the sections it
    /// would retune (and the steps that retune them, to run in order) and those it
    /// would leave for a rebuild.
    pub(crate) fn plan(
        &self,
        old: &crate::config::DownstreamConfig,
        new: &crate::config::DownstreamConfig,
    ) -> Result<(Applied, Vec<Retune<'_>>), ConfigError> {
        use crate::config::{ChangeKind, Section};
        new.validate()?;
        let mut applied = Applied::default();
        let mut plan: Vec<Retune<'_>> = Vec::new();
        for change in old.diff(new) {
            let live = change.kind == ChangeKind::Changed;
            match (change.section, live) {
                // A new window or mode needs a new breaker.
                (Section::Breaker, true)
                    if self.breaker.is_some() && same_breaker_window_and_mode(old, new) =>
                {
                    let (h, c) = (self.breaker.as_ref(), new.breaker.clone());
                    if let (Some(h), Some(c)) = (h, c) {
                        plan.push(Box::new(move || {
                            h.reconfigure(c).map_err(|e| e.within("breaker"))
                        }));
                        applied.retuned.push(Section::Breaker);
                    }
                }
                (Section::RateLimit, true) if self.rate.is_some() => {
                    if let (Some(h), Some(c)) = (self.rate.as_deref(), new.rate_limit) {
                        plan.push(Box::new(move || {
                            h.set_config(c).map_err(|e| e.within("rate_limit"))
                        }));
                        applied.retuned.push(Section::RateLimit);
                    }
                }
                (Section::Timeout, true) if self.timeout.is_some() => {
                    if let (Some(h), Some(t)) = (self.timeout.as_ref(), new.timeout) {
                        plan.push(Box::new(move || h.set_timeout(t)));
                        applied.retuned.push(Section::Timeout);
                    }
                }
                (Section::Bulkhead, true)
                    if self.bulkhead.is_some() && only_max_concurrent_changed(old, new) =>
                {
                    if let (Some(h), Some(c)) = (self.bulkhead.as_ref(), new.bulkhead.as_ref()) {
                        let max = c.max_concurrent;
                        plan.push(Box::new(move || {
                            h.set_max_concurrent(max).map_err(|e| e.within("bulkhead"))
                        }));
                        applied.retuned.push(Section::Bulkhead);
                    }
                }
                _ => applied.needs_rebuild.push(change),
            }
        }
        Ok((applied, plan))
    }
}

/// One step of a retune in place.
pub(crate) type Retune<'a> = Box<dyn FnOnce() -> Result<(), ConfigError> + 'a>;

fn same_breaker_window_and_mode(
    old: &crate::config::DownstreamConfig,
    new: &crate::config::DownstreamConfig,
) -> bool {
    match (&old.breaker, &new.breaker) {
        (Some(o), Some(n)) => o.window == n.window && o.mode == n.mode,
        _ => false,
    }
}

fn only_max_concurrent_changed(
    old: &crate::config::DownstreamConfig,
    new: &crate::config::DownstreamConfig,
) -> bool {
    match (&old.bulkhead, &new.bulkhead) {
        (Some(o), Some(n)) => {
            let mut o = o.clone();
            o.max_concurrent = n.max_concurrent;
            &o == n
        }
        _ => false,
    }
}
