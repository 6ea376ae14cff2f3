//! Stacks built from a configuration section, and live stacks that follow it.
//!
//! [`Builder::configured`] fills the policy slots from a [`DownstreamConfig`]:
//! every section present becomes its layer, every section absent a pass-through.
//! The stack's type is the same whichever sections are set, so a program can
//! build it from a file it only reads at run time — and build it again when the
//! file changes. [`Builder::live`] does that: it returns a service that follows
//! every [`LiveHandle::update`], and [`LiveHandle::follow`] feeds it from a
//! [`ConfigWatcher`](crate::config::ConfigWatcher).
//!
//! On an update, settings a running layer can take (breaker thresholds, rate,
//! bulkhead size) are retuned in place. When a policy is added or removed, or
//! changed in a way its layer cannot take, a new stack is built in which every
//! other policy keeps its layer and state (an open breaker stays open, a spent
//! retry budget stays spent), and clones of the service move to it at their next
//! `poll_ready`. Calls in flight finish on the stack they started on. A clone
//! waiting in the old stack's `poll_ready` (a bulkhead queue, a rate limit's wait)
//! gives up its place at its next wake-up and starts getting ready again on the new
//! stack (a kept rate limiter's `max_wait` then counts from there). A retuned rate
//! limiter starts afresh, with a full burst. A limiter built anew (a bulkhead changed
//! beyond its size, an adaptive limit) starts empty while calls on the old one are
//! still in flight; a removed policy's gauges keep their last value.
//!
//! The sections that need your code — `balance` (the endpoints), `cache` (what a
//! response is) and `fallback` (the answer) — are not built from the config: give
//! their layers to the builder, and an update reports their changes in
//! [`Updated::not_followed`].
//!
//! Every policy slot of a configured stack is either its layer or a pass-through,
//! so the compiler checks each layer's code for both. With an endpoint whose future
//! is an `async` block (a `service_fn` closure) that work grows steeply: minutes
//! for one stack here. An endpoint with a named future type — a hyper client, a
//! balancer, or any service boxed with `tower::util::BoxCloneSyncService` —
//! compiles in seconds; box a closure endpoint.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use palisade_breaker::CircuitBreakerLayer;
use palisade_core::{BoxError, ConfigError, Error};
use palisade_limit::adaptive::AdaptiveLimitLayer;
use palisade_limit::bulkhead::BulkheadLayer;
use palisade_limit::rate::RateLimitLayer;
use palisade_limit::throttle::ThrottleLayer;
use palisade_retry::{HedgeLayer, RetryLayer};
use palisade_timeout::TimeoutLayer;
use pin_project::pin_project;
use tower::util::Either;
use tower_layer::Layer;
use tower_service::Service;

use super::slot::{
    AdaptiveSlot, BreakerSlot, BuildContext, BulkheadSlot, HedgeSlot, Off, RateSlot, RetrySlot,
    Slot, ThrottleSlot, TimeoutSlot,
};
use super::{Builder, Downstream, DownstreamHandle, HopSpec, Layers, Parts};
use crate::config::{DownstreamConfig, Section, SectionChange};

/// A policy built from configuration ([`Either::Left`]), or a [`Passthrough`] when
/// its section is absent.
pub type Optional<L> = Either<L, Passthrough>;

/// The concurrency limit of a configured stack: a bulkhead or an adaptive limit.
pub type ConcurrencyLayer<C> = Either<BulkheadLayer, AdaptiveLimitLayer<C>>;

/// The layers of a stack built from configuration; see [`Builder::configured`].
pub type ConfiguredLayers<C, P, H, F, A> = Layers<
    Optional<TimeoutLayer>,
    <H as HopSpec>::Layer,
    Optional<ThrottleLayer<C>>,
    Optional<ConcurrencyLayer<C>>,
    Optional<RateLimitLayer>,
    Optional<CircuitBreakerLayer<C>>,
    Optional<HedgeLayer<P, C>>,
    Optional<RetryLayer<P, C>>,
    <A as Slot<C, P>>::Layer,
    <F as Slot<C, P>>::Layer,
>;

/// The builder [`Builder::configured`] returns: every policy slot filled from the
/// configuration.
pub type ConfiguredBuilder<C, P, H, F, A> = Builder<
    C,
    P,
    H,
    F,
    A,
    Configured<RetrySlot, RetryLayer<P, C>>,
    Configured<HedgeSlot, HedgeLayer<P, C>>,
    Configured<BreakerSlot, CircuitBreakerLayer<C>>,
    Configured<RateSlot, RateLimitLayer>,
    Configured<ConcurrencySlot, ConcurrencyLayer<C>>,
    Configured<ThrottleSlot, ThrottleLayer<C>>,
    Configured<TimeoutSlot, TimeoutLayer>,
>;

type ConfiguredParts<C, P> = Parts<
    Optional<RetryLayer<P, C>>,
    Optional<HedgeLayer<P, C>>,
    Optional<CircuitBreakerLayer<C>>,
    Optional<RateLimitLayer>,
    Optional<ConcurrencyLayer<C>>,
    Optional<ThrottleLayer<C>>,
    Optional<TimeoutLayer>,
>;

// ---- pass-through ---------------------------------------------------------------------

/// The place of a policy whose section is absent: the inner service as it is, its
/// errors turned into [`Error`] like every policy's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Passthrough;

impl<S> Layer<S> for Passthrough {
    type Service = PassthroughService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PassthroughService(inner)
    }
}

/// The service of a [`Passthrough`].
#[derive(Debug, Clone)]
pub struct PassthroughService<S>(S);

impl<S, Req> Service<Req> for PassthroughService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = PassthroughFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.0.poll_ready(cx).map_err(Error::from_service)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        PassthroughFuture(self.0.call(req))
    }
}

/// The response future of a [`PassthroughService`].
#[pin_project]
#[derive(Debug)]
pub struct PassthroughFuture<F>(#[pin] F);

impl<F, T, E> Future for PassthroughFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
{
    type Output = Result<T, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().0.poll(cx).map_err(Error::from_service)
    }
}

// ---- slots ----------------------------------------------------------------------------

/// A policy slot filled from configuration: left out, built from its section, or a
/// layer kept (with its state) from the stack this one replaces.
#[derive(Debug, Clone)]
pub enum Configured<S, L> {
    /// The section is absent.
    Off,
    /// Build the layer from these settings.
    New(S),
    /// Keep this already-built layer.
    Kept(L),
}

/// A built layer that a rebuilt stack can keep: it registers its handle again.
pub trait Keep: Clone {
    /// Puts this layer's handle where the downstream's handle (and the layers built
    /// after it) find it.
    fn keep<C, P>(&self, cx: &mut BuildContext<'_, C, P>);
}

impl<C, P, S, L> Slot<C, P> for Configured<S, L>
where
    S: Slot<C, P, Layer = L>,
    L: Keep,
{
    type Layer = Optional<L>;

    fn build(self, cx: &mut BuildContext<'_, C, P>) -> Result<Self::Layer, ConfigError> {
        match self {
            Configured::Off => Ok(Either::Right(Passthrough)),
            Configured::New(slot) => slot.build(cx).map(Either::Left),
            Configured::Kept(layer) => {
                layer.keep(cx);
                Ok(Either::Left(layer))
            }
        }
    }
}

impl<P, C> Keep for RetryLayer<P, C>
where
    RetryLayer<P, C>: Clone,
{
    fn keep<C2, P2>(&self, cx: &mut BuildContext<'_, C2, P2>) {
        cx.handle.budget = Some(Arc::clone(self.budget()));
    }
}

impl<P, C> Keep for HedgeLayer<P, C>
where
    HedgeLayer<P, C>: Clone,
{
    fn keep<C2, P2>(&self, cx: &mut BuildContext<'_, C2, P2>) {
        // Without a retry, the budget hedges spend is the hedge's own.
        cx.handle
            .budget
            .get_or_insert_with(|| Arc::clone(self.budget()));
    }
}

impl<C: Clone> Keep for CircuitBreakerLayer<C> {
    fn keep<C2, P2>(&self, cx: &mut BuildContext<'_, C2, P2>) {
        cx.handle.breaker = Some(self.handle());
    }
}

impl Keep for RateLimitLayer {
    fn keep<C2, P2>(&self, cx: &mut BuildContext<'_, C2, P2>) {
        cx.handle.rate = Some(Arc::new(self.handle()));
    }
}

impl<C: Clone> Keep for ConcurrencyLayer<C> {
    fn keep<C2, P2>(&self, cx: &mut BuildContext<'_, C2, P2>) {
        match self {
            Either::Left(bulkhead) => cx.handle.bulkhead = Some(bulkhead.handle()),
            Either::Right(adaptive) => cx.handle.adaptive = Some(adaptive.handle()),
        }
    }
}

impl<C: Clone> Keep for ThrottleLayer<C> {
    fn keep<C2, P2>(&self, cx: &mut BuildContext<'_, C2, P2>) {
        cx.handle.throttle = Some(self.handle());
    }
}

impl Keep for TimeoutLayer {
    fn keep<C2, P2>(&self, cx: &mut BuildContext<'_, C2, P2>) {
        cx.handle.timeout = Some(self.handle());
    }
}

/// The concurrency limit's settings: a bulkhead or an adaptive limit.
#[derive(Debug, Clone)]
pub enum ConcurrencySlot {
    /// A fixed limit.
    Bulkhead(BulkheadSlot),
    /// A limit that follows latency.
    Adaptive(AdaptiveSlot),
}

impl<C: Clone, P> Slot<C, P> for ConcurrencySlot {
    type Layer = ConcurrencyLayer<C>;

    fn build(self, cx: &mut BuildContext<'_, C, P>) -> Result<Self::Layer, ConfigError> {
        match self {
            ConcurrencySlot::Bulkhead(s) => s.build(cx).map(Either::Left),
            ConcurrencySlot::Adaptive(s) => s.build(cx).map(Either::Right),
        }
    }
}

// ---- building from a section ------------------------------------------------------------

/// Which slots keep their layer in a rebuild.
struct Keeping<'a, C, P> {
    old: Option<&'a ConfiguredParts<C, P>>,
    rebuild: &'a [Section],
}

impl<C, P> Keeping<'_, C, P> {
    /// Nothing to keep: a first build.
    fn nothing() -> Self {
        Keeping {
            old: None,
            rebuild: &[],
        }
    }
}

impl<C: Clone, P: Clone> Keeping<'_, C, P> {
    fn slot<S, L: Clone>(
        &self,
        section: Section,
        settings: Option<S>,
        old: impl FnOnce(&ConfiguredParts<C, P>) -> &Optional<L>,
    ) -> Configured<S, L> {
        match (settings, self.old.map(old)) {
            (None, _) => Configured::Off,
            (Some(_), Some(Either::Left(layer))) if !self.rebuild.contains(&section) => {
                Configured::Kept(layer.clone())
            }
            (Some(s), _) => Configured::New(s),
        }
    }
}

impl<C, P, H, F, A> Builder<C, P, H, F, A, Off, Off, Off, Off, Off, Off, Off>
where
    C: Clone,
    P: Clone,
{
    /// Fills every policy slot from `config` (validated first; errors name the
    /// section and field): each section present becomes its layer, each absent one
    /// a [`Passthrough`]. The `deadline` section sets the margin and minimum time
    /// left (absent, the builder's own apply). `balance`, `cache` and `fallback` need your code: build their layers
    /// from their sections and give them to [`fallback`](Builder::fallback),
    /// [`cache`](Builder::cache) or as the endpoint.
    ///
    /// ```
    /// use palisade::{Config, Downstream};
    /// use palisade::config::Format;
    /// use tower::{Layer, Service, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = Config::parse(r#"
    ///     [downstreams.customer]
    ///     timeout = "300ms"
    ///     breaker = { failure_rate_threshold = 0.5 }
    ///     retry = { max_attempts = 3 }
    /// "#, Format::Toml)?;
    /// let customer = Downstream::builder("customer")
    ///     .configured(&config.downstreams["customer"])?
    ///     .build()?;
    /// assert!(customer.handle().breaker().is_some());
    /// assert!(customer.handle().rate_limit().is_none());
    ///
    /// // A boxed endpoint: see the module docs on compile time.
    /// let endpoint = tower::util::BoxCloneSyncService::new(tower::service_fn(|id: u64| async move {
    ///     Ok::<_, std::io::Error>(id * 2)
    /// }));
    /// let mut svc = customer.layer(endpoint);
    /// assert_eq!(svc.ready().await?.call(21).await?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub fn configured(
        self,
        config: &DownstreamConfig,
    ) -> Result<ConfiguredBuilder<C, P, H, F, A>, ConfigError> {
        config.validate()?;
        Ok(self.fill(config, &Keeping::nothing()))
    }

    fn fill(
        self,
        config: &DownstreamConfig,
        keep: &Keeping<'_, C, P>,
    ) -> ConfiguredBuilder<C, P, H, F, A> {
        let retry = keep.slot(Section::Retry, config.retry.clone().map(RetrySlot), |p| {
            &p.retry
        });
        // The hedge spends the retry's budget: a new retry layer means a new hedge,
        // and so does a retry removed (the hedge then needs a budget of its own,
        // which its own successes fund). Without a retry before and after, the
        // hedge has its own budget and can stay.
        let retry_kept = matches!(retry, Configured::Kept(_));
        let retry_before = keep.old.is_some_and(|p| matches!(p.retry, Either::Left(_)));
        let hedge_keep = Keeping {
            old: keep
                .old
                .filter(|_| retry_kept || (config.retry.is_none() && !retry_before)),
            rebuild: keep.rebuild,
        };
        let hedge = hedge_keep.slot(
            Section::Hedge,
            config.hedge.map(|h| HedgeSlot {
                delay: h.delay.into(),
                max_hedges: h.max_hedges,
            }),
            |p| &p.hedge,
        );
        let concurrency = match (&config.bulkhead, &config.adaptive) {
            (Some(b), _) => keep.slot(
                Section::Bulkhead,
                Some(ConcurrencySlot::Bulkhead(BulkheadSlot(b.clone()))),
                |p| &p.concurrency,
            ),
            (None, Some(a)) => keep.slot(
                Section::Adaptive,
                Some(ConcurrencySlot::Adaptive(AdaptiveSlot(a.clone()))),
                |p| &p.concurrency,
            ),
            (None, None) => Configured::Off,
        };
        // A bulkhead is never kept for an adaptive limit, nor the other way round
        // (a switch shows in the diff as one added and one removed, so both are
        // rebuilt; this holds even if it did not).
        let concurrency = match concurrency {
            Configured::Kept(Either::Right(_)) if config.bulkhead.is_some() => {
                Configured::New(ConcurrencySlot::Bulkhead(BulkheadSlot(
                    config.bulkhead.clone().unwrap_or_default(),
                )))
            }
            Configured::Kept(Either::Left(_)) if config.bulkhead.is_none() => {
                match &config.adaptive {
                    Some(a) => Configured::New(ConcurrencySlot::Adaptive(AdaptiveSlot(a.clone()))),
                    None => Configured::Off,
                }
            }
            other => other,
        };
        Builder {
            name: self.name,
            classify: self.classify,
            protocol: self.protocol,
            hop: self.hop,
            total_timeout: self.total_timeout,
            margin: config.deadline.map_or(self.margin, |d| d.margin),
            min_remaining: config
                .deadline
                .map_or(self.min_remaining, |d| d.min_remaining),
            metrics: self.metrics,
            fallback: self.fallback,
            cache: self.cache,
            retry,
            hedge,
            breaker: keep.slot(
                Section::Breaker,
                config.breaker.clone().map(BreakerSlot),
                |p| &p.breaker,
            ),
            rate: keep.slot(Section::RateLimit, config.rate_limit.map(RateSlot), |p| {
                &p.rate
            }),
            concurrency,
            throttle: keep.slot(
                Section::Throttle,
                config.throttle.clone().map(ThrottleSlot),
                |p| &p.throttle,
            ),
            timeout: keep.slot(Section::Timeout, config.timeout.map(TimeoutSlot), |p| {
                &p.timeout
            }),
        }
    }
}

// ---- live stacks ------------------------------------------------------------------------

/// What [`LiveHandle::update`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Updated {
    /// Sections retuned in place, their layers' state kept.
    pub retuned: Vec<Section>,
    /// Sections added, removed or changed beyond what a running layer takes: the
    /// stack was built again for them, every other policy keeping its layer.
    pub rebuilt: Vec<SectionChange>,
    /// Changes to sections a live stack does not build (`balance`, `cache`,
    /// `fallback`): yours to apply.
    pub not_followed: Vec<SectionChange>,
}

impl Updated {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.retuned.is_empty() && self.rebuilt.is_empty() && self.not_followed.is_empty()
    }
}

/// The current stack of a live downstream, and its generation (one more per
/// rebuild).
struct Current<T> {
    generation: AtomicU64,
    service: Mutex<(u64, T)>,
}

impl<T> Current<T> {
    fn replace(&self, service: T) {
        let mut current = lock(&self.service);
        current.0 += 1;
        current.1 = service;
        self.generation.store(current.0, Ordering::Release);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update leaves the state whole before it can panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A downstream stack that follows its configuration section; see
/// [`Builder::live`]. Each clone moves to a rebuilt stack at its next `poll_ready`
/// (one atomic load per call when nothing changed); a call already made finishes
/// on the stack it started on.
pub struct LiveDownstream<T> {
    current: Arc<Current<T>>,
    generation: u64,
    service: T,
}

impl<T: Clone> Clone for LiveDownstream<T> {
    fn clone(&self) -> Self {
        Self {
            current: Arc::clone(&self.current),
            generation: self.generation,
            service: self.service.clone(),
        }
    }
}

impl<T> std::fmt::Debug for LiveDownstream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveDownstream")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl<T, Req> Service<Req> for LiveDownstream<T>
where
    T: Service<Req> + Clone,
{
    type Response = T::Response;
    type Error = T::Error;
    type Future = T::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), T::Error>> {
        if self.current.generation.load(Ordering::Acquire) != self.generation {
            let current = lock(&self.current.service);
            self.generation = current.0;
            self.service = current.1.clone();
        }
        self.service.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> T::Future {
        self.service.call(req)
    }
}

/// Updates a [`LiveDownstream`]'s policies; cloneable, `Send` and `Sync`.
#[derive(Clone)]
pub struct LiveHandle {
    core: Arc<dyn Update>,
}

impl std::fmt::Debug for LiveHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveHandle")
            .field("name", &self.core.name())
            .finish_non_exhaustive()
    }
}

trait Update: Send + Sync {
    fn name(&self) -> String;
    fn update(&self, new: &DownstreamConfig) -> Result<Updated, ConfigError>;
    fn handle(&self) -> DownstreamHandle;
    fn config(&self) -> DownstreamConfig;
}

impl LiveHandle {
    /// Moves the stack to `new`: validated first (nothing changes on an error,
    /// which names the section and field); settings running layers take are
    /// retuned in place; a policy added, removed or changed beyond that gets a
    /// rebuilt stack in which every other policy keeps its layer and state.
    pub fn update(&self, new: &DownstreamConfig) -> Result<Updated, ConfigError> {
        self.core.update(new)
    }

    /// The current stack's handles (breaker, limits, budget).
    pub fn handle(&self) -> DownstreamHandle {
        self.core.handle()
    }

    /// The section last applied (including the parts a live stack does not
    /// follow: see [`Updated::not_followed`]).
    pub fn config(&self) -> DownstreamConfig {
        self.core.config()
    }

    /// Follows `configs` (e.g. [`ConfigWatcher::subscribe`](crate::config::ConfigWatcher::subscribe))
    /// in a task on the current runtime: each new configuration's section for this
    /// downstream is applied with [`update`](Self::update), starting with the one
    /// current now. A configuration without the section, or one the stack refuses,
    /// is logged, counted in `palisade_config_reload_errors_total` (registered with
    /// the recorder current when `follow` is called) and leaves the running stack as
    /// it is. The task ends when the
    /// sender is dropped; it keeps the stack's state alive until then (abort the
    /// returned handle to stop following sooner).
    pub fn follow(
        &self,
        mut configs: tokio::sync::watch::Receiver<Arc<crate::Config>>,
    ) -> tokio::task::JoinHandle<()> {
        let handle = self.clone();
        let refused = crate::config::refused_by_a_stack();
        tokio::spawn(async move {
            loop {
                let config = Arc::clone(&configs.borrow_and_update());
                let name = handle.core.name();
                match config.downstreams.get(&name) {
                    Some(section) => match handle.update(section) {
                        Ok(updated) if !updated.is_empty() => {
                            tracing::info!(
                                downstream = %name,
                                retuned = ?updated.retuned,
                                rebuilt = ?updated.rebuilt,
                                not_followed = ?updated.not_followed,
                                "downstream follows its new configuration"
                            );
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(
                                downstream = %name,
                                error = %e.within(&format!("downstreams.{name}")),
                                "new configuration refused; the running stack is kept"
                            );
                            refused.increment(1);
                        }
                    },
                    None => {
                        tracing::warn!(
                            downstream = %name,
                            "the new configuration has no section for this downstream; the running stack is kept"
                        );
                        refused.increment(1);
                    }
                }
                if configs.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

/// What a live downstream keeps to build its stack again.
struct LiveCore<C, P, H, F, A, S, T> {
    base: Builder<C, P, H, F, A>,
    current: Arc<Current<T>>,
    state: Mutex<LiveState<C, P, S>>,
}

struct LiveState<C, P, S> {
    config: DownstreamConfig,
    parts: ConfiguredParts<C, P>,
    handle: DownstreamHandle,
    endpoint: S,
}

/// The sections a live stack builds.
fn built_here(section: Section) -> bool {
    !matches!(
        section,
        Section::Balance | Section::Cache | Section::Fallback | Section::Shed | Section::Name
    )
}

impl<C, P, H, F, A, S, T> Update for LiveCore<C, P, H, F, A, S, T>
where
    C: Clone + Send + Sync + 'static,
    P: Clone + Send + Sync + 'static,
    H: HopSpec + Clone + Send + Sync + 'static,
    F: Slot<C, P> + Clone + Send + Sync + 'static,
    A: Slot<C, P> + Clone + Send + Sync + 'static,
    S: Clone + Send + 'static,
    T: Send + 'static,
    Downstream<ConfiguredLayers<C, P, H, F, A>, C>: Layer<S, Service = T>,
    ConfiguredParts<C, P>: Send,
{
    fn name(&self) -> String {
        self.base.name.clone()
    }

    fn update(&self, new: &DownstreamConfig) -> Result<Updated, ConfigError> {
        let mut state = lock(&self.state);
        // What changes, decided before anything is changed: an error in planning
        // or in building the new stack leaves the running one as it was.
        let handle = state.handle.clone();
        let (applied, retunes) = handle.plan(&state.config, new)?;
        let mut updated = Updated {
            retuned: applied.retuned,
            ..Updated::default()
        };
        let mut rebuild = Vec::new();
        for change in applied.needs_rebuild {
            if built_here(change.section) {
                rebuild.push(change.section);
                updated.rebuilt.push(change);
            } else {
                updated.not_followed.push(change);
            }
        }
        let rebuilt = if rebuild.is_empty() {
            None
        } else {
            let keeping = Keeping {
                old: Some(&state.parts),
                rebuild: &rebuild,
            };
            Some(self.base.clone().fill(new, &keeping).build_parts()?)
        };
        // Kept layers are shared by both stacks: retuning them now retunes the new
        // one too. Every retune was checked by the plan's validation.
        for retune in retunes {
            retune()?;
        }
        if let Some((downstream, parts)) = rebuilt {
            let service = downstream.layer(state.endpoint.clone());
            state.handle = downstream.handle();
            state.parts = parts;
            self.current.replace(service);
        }
        state.config = new.clone();
        Ok(updated)
    }

    fn handle(&self) -> DownstreamHandle {
        lock(&self.state).handle.clone()
    }

    fn config(&self) -> DownstreamConfig {
        lock(&self.state).config.clone()
    }
}

impl<C, P, H, F, A> Builder<C, P, H, F, A, Off, Off, Off, Off, Off, Off, Off>
where
    C: Clone + Send + Sync + 'static,
    P: Clone + Send + Sync + 'static,
    H: HopSpec + Clone + Send + Sync + 'static,
    F: Slot<C, P> + Clone + Send + Sync + 'static,
    A: Slot<C, P> + Clone + Send + Sync + 'static,
{
    /// Builds the stack `config` describes (see [`configured`](Self::configured))
    /// around `endpoint`, as a service that follows later configurations given to
    /// the returned [`LiveHandle`] (or fed to it by [`LiveHandle::follow`]).
    ///
    /// ```
    /// use palisade::{Config, Downstream};
    /// use palisade::config::{Format, Section};
    /// use tower::{Service, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let v1 = Config::parse("[downstreams.customer]\ntimeout = \"300ms\"\n", Format::Toml)?;
    /// let endpoint = tower::util::BoxCloneSyncService::new(tower::service_fn(|id: u64| async move {
    ///     Ok::<_, std::io::Error>(id)
    /// }));
    /// let (mut customer, live) = Downstream::builder("customer")
    ///     .live(&v1.downstreams["customer"], endpoint)?;
    /// assert!(live.handle().breaker().is_none());
    ///
    /// // A breaker added to the file: the stack is built again with it.
    /// let v2 = Config::parse(
    ///     "[downstreams.customer]\ntimeout = \"300ms\"\nbreaker = {}\n",
    ///     Format::Toml,
    /// )?;
    /// let updated = live.update(&v2.downstreams["customer"])?;
    /// assert_eq!(updated.rebuilt[0].section, Section::Breaker);
    /// assert!(live.handle().breaker().is_some());
    /// assert_eq!(customer.ready().await?.call(7).await?, 7);
    /// # Ok(())
    /// # }
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn live<S>(
        self,
        config: &DownstreamConfig,
        endpoint: S,
    ) -> Result<
        (
            LiveDownstream<<Downstream<ConfiguredLayers<C, P, H, F, A>, C> as Layer<S>>::Service>,
            LiveHandle,
        ),
        ConfigError,
    >
    where
        S: Clone + Send + 'static,
        Downstream<ConfiguredLayers<C, P, H, F, A>, C>: Layer<S>,
        <Downstream<ConfiguredLayers<C, P, H, F, A>, C> as Layer<S>>::Service:
            Clone + Send + 'static,
    {
        config.validate()?;
        let base = self.clone();
        let (downstream, parts) = self.fill(config, &Keeping::nothing()).build_parts()?;
        let service = downstream.layer(endpoint.clone());
        let current = Arc::new(Current {
            generation: AtomicU64::new(0),
            service: Mutex::new((0, service.clone())),
        });
        let core = LiveCore {
            base,
            current: Arc::clone(&current),
            state: Mutex::new(LiveState {
                config: config.clone(),
                parts,
                handle: downstream.handle(),
                endpoint,
            }),
        };
        Ok((
            LiveDownstream {
                current,
                generation: 0,
                service,
            },
            LiveHandle {
                core: Arc::new(core),
            },
        ))
    }
}
