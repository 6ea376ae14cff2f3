//! Rate limiting with GCRA (through `governor`), direct or keyed.
//!
//! A [`RateLimitLayer`] lets `rate` calls through per `per` (bursts of up to `burst`),
//! and either refuses the rest at once or lets a call wait up to `max_wait` — never
//! past the request's [`Deadline`] — for a permit. A refusal
//! is a [`RateLimited`](RejectionKind::RateLimited) rejection carrying the wait that
//! governor computed as its retry-after.
//!
//! Keyed limiting ([`Builder::build_keyed`]) gives each key taken from the request
//! (client API key, peer address, route) its own limit, in a bounded registry with
//! idle eviction, so a flood of distinct keys cannot grow memory without bound.
//!
//! Time is read through `tokio::time` (governor runs on a clock of ours), so tests
//! run on paused time.
//!
//! ```
//! use palisade_limit::rate::RateLimitLayer;
//! use palisade_core::RejectionKind;
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limit = RateLimitLayer::builder("partner-api").rate(2, Duration::from_secs(1)).build()?;
//! let mut svc = ServiceBuilder::new().layer(limit).service_fn(|_: ()| async { Ok::<_, std::io::Error>("ok") });
//! svc.ready().await?.call(()).await?;
//! svc.ready().await?.call(()).await?;
//! let refused = svc.ready().await?.call(()).await.unwrap_err();
//! let rejection = refused.rejection().unwrap();
//! assert_eq!(rejection.kind(), RejectionKind::RateLimited);
//! assert_eq!(rejection.retry_after(), Some(Duration::from_millis(500)));
//! # Ok(())
//! # }
//! ```

use std::cell::Cell;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use arc_swap::cache::Cache;
use governor::Quota;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use metrics::{Counter, Gauge, Histogram};
use palisade_core::keyed::KeyedRegistry;
use palisade_core::observe::{CounterSet, LabelValue, MetricScope};
use palisade_core::{
    BoxError, Clock, ConfigError, Deadline, Error, Name, Rejection, RejectionKind,
};
use pin_project::pin_project;
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

/// governor's clock, read through `tokio::time`.
#[derive(Debug, Clone, Copy)]
struct TokioClock(Clock);

impl governor::clock::Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(LENT_NOW.get().unwrap_or_else(|| self.0.now_nanos()))
    }
}

thread_local! {
    /// A clock reading lent to governor for one check on this thread: the keyed
    /// path reads the time once, for its registry and for governor (a clock read
    /// is a good part of a check's cost). Set and cleared around the check only.
    static LENT_NOW: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Clears the lent reading when the check is over, even if it unwinds.
struct Lent;

impl Lent {
    fn new(nanos: u64) -> Self {
        LENT_NOW.set(Some(nanos));
        Lent
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        LENT_NOW.set(None);
    }
}

type Limiter = governor::RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

/// A rate limit's settings.
///
/// ```
/// use palisade_limit::rate::RateLimitConfig;
/// let c: RateLimitConfig = toml::from_str(r#"
///     rate = 100
///     per = "1s"
///     burst = 20
///     max_wait = "50ms"
/// "#).unwrap();
/// c.validate().unwrap();
/// let zero: RateLimitConfig = toml::from_str("rate = 0").unwrap();
/// assert_eq!(zero.validate().unwrap_err().to_string(), "rate: must be at least 1");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Calls allowed per `per`. Default 100.
    pub rate: u32,
    /// The period `rate` applies to. Default 1 s. A burst's worth of permits
    /// (`burst` × `per` / `rate`) must refill within 100 years.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// The most calls let through at once after a quiet spell. Default: `rate`.
    pub burst: Option<u32>,
    /// How long a call may wait for a permit, at most a day; none = refuse at once.
    /// Default none.
    #[serde(with = "humantime_serde")]
    pub max_wait: Option<Duration>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            rate: 100,
            per: Duration::from_secs(1),
            burst: None,
            max_wait: None,
        }
    }
}

/// The longest a burst's worth of permits may take to refill.
const MAX_REFILL: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The longest `max_wait`.
const MAX_WAIT: Duration = Duration::from_secs(86_400);

impl RateLimitConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.quota().map(|_| ())
    }

    fn quota(&self) -> Result<Quota, ConfigError> {
        let rate = NonZeroU32::new(self.rate)
            .ok_or_else(|| ConfigError::new("rate", "must be at least 1"))?;
        if self.per.is_zero() {
            return Err(ConfigError::new("per", "must be greater than zero"));
        }
        let burst = match self.burst {
            None => rate,
            Some(b) => {
                NonZeroU32::new(b).ok_or_else(|| ConfigError::new("burst", "must be at least 1"))?
            }
        };
        let interval = self.per / self.rate;
        // The limiter counts in nanoseconds in a u64: a burst's worth of permits
        // must refill within that (and a refill that takes a century is a typo).
        let refill = interval.as_nanos().saturating_mul(u128::from(burst.get()));
        if refill > MAX_REFILL.as_nanos() {
            return Err(ConfigError::new(
                if self.burst.is_some() { "burst" } else { "per" },
                format!(
                    "a burst of {} at {} per {:?} takes more than 100 years to refill",
                    burst, self.rate, self.per
                ),
            ));
        }
        if let Some(max_wait) = self.max_wait
            && max_wait > MAX_WAIT
        {
            return Err(ConfigError::new(
                "max_wait",
                format!("{max_wait:?} is longer than a day"),
            ));
        }
        let quota = Quota::with_period(interval).ok_or_else(|| {
            ConfigError::new(
                "rate",
                format!(
                    "{} per {:?} is too fast (under a nanosecond apart)",
                    self.rate, self.per
                ),
            )
        })?;
        Ok(quota.allow_burst(burst))
    }
}

#[derive(Debug, Clone, Copy)]
enum CallLabel {
    Permitted,
    PermittedAfterWait,
    Rejected,
}

impl LabelValue for CallLabel {
    const LABEL: &'static str = "outcome";
    const ALL: &'static [Self] = &[
        CallLabel::Permitted,
        CallLabel::PermittedAfterWait,
        CallLabel::Rejected,
    ];
    fn as_label(self) -> &'static str {
        match self {
            CallLabel::Permitted => "permitted",
            CallLabel::PermittedAfterWait => "permitted_after_wait",
            CallLabel::Rejected => "rejected",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug)]
struct RateMetrics {
    calls: CounterSet<CallLabel>,
    wait: Histogram,
    keys: Option<(Gauge, Counter)>,
}

impl RateMetrics {
    fn register(name: &Name, keyed: bool) -> Self {
        let scope = MetricScope::new("ratelimit", name.clone());
        let wait_name =
            palisade_core::observe::metric_name("ratelimit", "wait", Some("seconds"), false);
        metrics::describe_histogram!(
            wait_name.clone(),
            metrics::Unit::Seconds,
            "Time calls waited for a rate-limit permit."
        );
        Self {
            calls: scope.counter_set("calls", "Calls through the rate limiter, by outcome."),
            wait: metrics::histogram!(wait_name, "downstream" => name.as_str().to_owned()),
            keys: keyed.then(|| {
                (
                    scope.gauge("keys", None, "Keys held by the keyed rate limiter."),
                    scope.counter("key_evictions", "Keys evicted from the keyed rate limiter."),
                )
            }),
        }
    }
}

struct Shared {
    name: Name,
    config: ArcSwap<RateLimitConfig>,
    clock: TokioClock,
    metrics: RateMetrics,
}

impl Shared {
    fn new(name: Name, config: RateLimitConfig, keyed: bool) -> Self {
        let metrics = RateMetrics::register(&name, keyed);
        Self {
            name,
            config: ArcSwap::from_pointee(config),
            clock: TokioClock(Clock::new()),
            metrics,
        }
    }

    fn limiter(&self, config: &RateLimitConfig) -> Limiter {
        // Validated before it was stored.
        let quota = config
            .quota()
            .unwrap_or_else(|_| Quota::per_second(NonZeroU32::MIN));
        Limiter::direct_with_clock(quota, self.clock)
    }

    /// Asks `limiter` for a permit: `Ok` or the wait until one.
    fn check(&self, limiter: &Limiter) -> Result<(), Duration> {
        use governor::clock::Clock as _;
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// [`check`](Self::check) at `now`, a reading the caller just took.
    fn check_at(&self, limiter: &Limiter, now: Instant) -> Result<(), Duration> {
        let nanos = self.clock.0.nanos_at(now);
        let _lent = Lent::new(nanos);
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(Nanos::from(nanos)))
    }

    /// Whether a call may wait `wait` (within `max_wait` from `started` and the
    /// deadline).
    fn may_wait(&self, wait: Duration, started: Instant) -> bool {
        let Some(max_wait) = self.config.load().max_wait else {
            return false;
        };
        let Some(until) = Instant::now().checked_add(wait) else {
            return false;
        };
        if started
            .checked_add(max_wait)
            .is_some_and(|latest| until > latest)
        {
            return false;
        }
        Deadline::current().is_none_or(|d| until < d.instant())
    }

    fn refusal(&self, wait: Duration) -> Rejection {
        self.metrics.calls.get(CallLabel::Rejected).increment(1);
        Rejection::new(RejectionKind::RateLimited)
            .with_downstream(self.name.clone())
            .with_retry_after(wait)
    }

    fn permitted(&self, started: Option<Instant>) {
        match started {
            None => self.metrics.calls.get(CallLabel::Permitted).increment(1),
            Some(start) => {
                self.metrics
                    .calls
                    .get(CallLabel::PermittedAfterWait)
                    .increment(1);
                self.metrics.wait.record(start.elapsed().as_secs_f64());
            }
        }
    }
}

/// Rate limits one downstream; see the [module docs](self).
#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
    limiter: Arc<ArcSwap<Limiter>>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("name", &self.shared.name)
            .field("config", &**self.shared.config.load())
            .finish()
    }
}

impl RateLimitLayer {
    /// Starts a builder for the limiter of `name` (the `downstream` metric label).
    pub fn builder(name: &str) -> Builder {
        Builder {
            name: name.to_owned(),
            config: RateLimitConfig::default(),
        }
    }

    /// A handle to inspect and change the limit.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            target: Target::Direct {
                shared: Arc::clone(&self.shared),
                limiter: Arc::clone(&self.limiter),
            },
        }
    }
}

/// Builds a [`RateLimitLayer`] or a [`KeyedRateLimitLayer`].
#[derive(Debug, Clone)]
pub struct Builder {
    name: String,
    config: RateLimitConfig,
}

impl Builder {
    /// Replaces every setting.
    pub fn config(mut self, config: RateLimitConfig) -> Self {
        self.config = config;
        self
    }

    /// `rate` calls per `per`.
    pub fn rate(mut self, rate: u32, per: Duration) -> Self {
        self.config.rate = rate;
        self.config.per = per;
        self
    }

    /// Bursts of up to `burst` calls after a quiet spell.
    pub fn burst(mut self, burst: u32) -> Self {
        self.config.burst = Some(burst);
        self
    }

    /// Lets a call wait up to `max_wait` for a permit instead of failing at once.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = Some(max_wait);
        self
    }

    fn parts(&self) -> Result<Name, ConfigError> {
        self.config.validate()?;
        Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))
    }

    /// A limiter shared by every call.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        let name = self.parts()?;
        let shared = Arc::new(Shared::new(name, self.config, false));
        let limiter = Arc::new(ArcSwap::from_pointee(shared.limiter(&self.config)));
        Ok(RateLimitLayer { shared, limiter })
    }

    /// A limit per key: `key` takes the key from the request; at most `capacity`
    /// keys are held, keys idle for `idle_timeout` are forgotten.
    pub fn build_keyed<F>(
        self,
        key: F,
        capacity: usize,
        idle_timeout: Duration,
    ) -> Result<KeyedRateLimitLayer<F>, ConfigError> {
        let name = self.parts()?;
        let registry = KeyedRegistry::with_hasher(
            capacity,
            idle_timeout,
            BuildHasherDefault::<PreHashed>::default(),
        )
        .map_err(|e| {
            let field = match e {
                palisade_core::keyed::RegistryError::ZeroCapacity => "keys.capacity",
                palisade_core::keyed::RegistryError::ZeroIdleTimeout => "keys.idle_timeout",
            };
            ConfigError::new(field, e.to_string())
        })?;
        Ok(KeyedRateLimitLayer {
            keyed: Arc::new(Keyed {
                shared: Shared::new(name, self.config, true),
                registry,
                generation: AtomicU64::new(0),
                hasher: foldhash::quality::RandomState::default(),
            }),
            key,
        })
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            shared: Arc::clone(&self.shared),
            limiter: Cache::new(Arc::clone(&self.limiter)),
            state: Admission::Idle,
        }
    }
}

enum Admission {
    Idle,
    Waiting {
        sleep: Pin<Box<Sleep>>,
        started: Instant,
    },
    Permitted {
        started: Option<Instant>,
    },
    Refused(Rejection),
}

/// The service of [`RateLimitLayer`]: the permit is taken in `poll_ready`
/// (waiting there up to `max_wait`); a refusal is returned by `call` without calling
/// the inner service.
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
    /// The current limiter, cached: a call compares one pointer with the swap's,
    /// and loads afresh only after a quota change.
    limiter: Cache<Arc<ArcSwap<Limiter>>, Arc<Limiter>>,
    state: Admission,
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            limiter: self.limiter.clone(),
            state: Admission::Idle,
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for RateLimit<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = RateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.state {
                Admission::Idle => {
                    let limiter = self.limiter.load();
                    self.state = match self.shared.check(limiter) {
                        Ok(()) => Admission::Permitted { started: None },
                        Err(wait) => {
                            let started = Instant::now();
                            if self.shared.may_wait(wait, started) {
                                Admission::Waiting {
                                    sleep: Box::pin(tokio::time::sleep(wait)),
                                    started,
                                }
                            } else {
                                Admission::Refused(self.shared.refusal(wait))
                            }
                        }
                    };
                }
                Admission::Waiting { sleep, started } => {
                    ready!(sleep.as_mut().poll(cx));
                    let started = *started;
                    let limiter = self.limiter.load();
                    match self.shared.check(limiter) {
                        Ok(()) => {
                            self.state = Admission::Permitted {
                                started: Some(started),
                            }
                        }
                        Err(wait) if self.shared.may_wait(wait, started) => {
                            sleep.as_mut().reset(Instant::now() + wait);
                        }
                        Err(wait) => self.state = Admission::Refused(self.shared.refusal(wait)),
                    }
                }
                Admission::Permitted { .. } => {
                    return self.inner.poll_ready(cx).map_err(Error::from_service);
                }
                // A refused call does not take the inner service's readiness.
                Admission::Refused(_) => return Poll::Ready(Ok(())),
            }
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match std::mem::replace(&mut self.state, Admission::Idle) {
            Admission::Refused(rejection) => RateFuture::Refused(Some(rejection)),
            Admission::Permitted { started } => {
                self.shared.permitted(started);
                RateFuture::Calling(self.inner.call(req))
            }
            // Called without being made ready: decide now, without waiting.
            Admission::Idle | Admission::Waiting { .. } => {
                match self.shared.check(self.limiter.load()) {
                    Ok(()) => {
                        self.shared.permitted(None);
                        RateFuture::Calling(self.inner.call(req))
                    }
                    Err(wait) => RateFuture::Refused(Some(self.shared.refusal(wait))),
                }
            }
        }
    }
}

/// The response future of [`RateLimit`].
#[pin_project(project = RateFutureProj)]
#[derive(Debug)]
pub enum RateFuture<F> {
    /// The inner call.
    Calling(#[pin] F),
    /// Refused before calling.
    Refused(Option<Rejection>),
}

impl<F, T, E> Future for RateFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RateFutureProj::Calling(f) => f.poll(cx).map_err(Error::from_service),
            RateFutureProj::Refused(r) => match r.take() {
                Some(r) => Poll::Ready(Err(Error::Rejected(r))),
                None => Poll::Pending,
            },
        }
    }
}

/// The registry's hasher: its keys are already 64-bit hashes of the request keys
/// (seeded, see `Keyed::hasher`), so they are used as they are rather than hashed
/// twice more (for the shard and the slot).
#[derive(Debug, Default, Clone, Copy)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys reach this hasher; mix anything else anyway.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Keyed {
    shared: Shared,
    /// Keys are 64-bit hashes with a per-process random seed; each entry carries
    /// the quota generation it was made under.
    registry: KeyedRegistry<u64, (u64, Arc<Limiter>), BuildHasherDefault<PreHashed>>,
    generation: AtomicU64,
    /// Hashes request keys: foldhash with a per-process random seed. Request keys
    /// may come from anyone; the seed keeps colliding keys from being chosen, and
    /// the registry's bound caps what a collision could cost anyway.
    hasher: foldhash::quality::RandomState,
}

impl Keyed {
    /// Asks the limiter of `key` for a permit at `now` (and marks the key used):
    /// `Ok`, or the wait until one and the key's limiter to wait on.
    fn check<K: Hash>(&self, key: &K, now: Instant) -> Result<(), (Duration, Arc<Limiter>)> {
        let hash = self.hasher.hash_one(key);
        let generation = self.generation.load(Ordering::Acquire);
        let before = self.registry.evictions();
        // Whether this call added a key: only then can the count of keys change
        // (by the key, and by the keys evicted to make room for it). A known key,
        // the steady state, leaves the gauge alone: counting keys takes every
        // shard's lock.
        let made = Cell::new(false);
        let make = || {
            made.set(true);
            let config = self.shared.config.load();
            (generation, Arc::new(self.shared.limiter(&config)))
        };
        // Checked under the shard's lock: no reference count taken for a permit.
        let checked = self
            .registry
            .with_or_insert_at(hash, now, &make, |(made_in, limiter)| {
                (*made_in == generation).then(|| {
                    self.shared
                        .check_at(limiter, now)
                        .map_err(|wait| (wait, Arc::clone(limiter)))
                })
            });
        let checked = checked.unwrap_or_else(|| {
            // Made under an older quota: replace it.
            let fresh = make();
            self.registry.insert(hash, fresh.clone());
            self.shared
                .check_at(&fresh.1, now)
                .map_err(|wait| (wait, fresh.1))
        });
        if made.get()
            && let Some((keys, evictions)) = &self.shared.metrics.keys
        {
            let evicted = self.registry.evictions() - before;
            if evicted > 0 {
                evictions.increment(evicted);
            }
            keys.set(self.registry.len() as f64);
        }
        checked
    }
}

/// A rate limit per key; built by [`Builder::build_keyed`].
pub struct KeyedRateLimitLayer<F> {
    keyed: Arc<Keyed>,
    key: F,
}

impl<F: Clone> Clone for KeyedRateLimitLayer<F> {
    fn clone(&self) -> Self {
        Self {
            keyed: Arc::clone(&self.keyed),
            key: self.key.clone(),
        }
    }
}

impl<F> std::fmt::Debug for KeyedRateLimitLayer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedRateLimitLayer")
            .field("name", &self.keyed.shared.name)
            .field("keys", &self.keyed.registry.len())
            .finish_non_exhaustive()
    }
}

impl<F> KeyedRateLimitLayer<F> {
    /// A handle to inspect and change the limit of every key.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            target: Target::Keyed(Arc::clone(&self.keyed)),
        }
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.keyed.registry.len()
    }
}

impl<S, F: Clone> Layer<S> for KeyedRateLimitLayer<F> {
    type Service = KeyedRateLimit<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`KeyedRateLimitLayer`]. The key is known only in `call`, so the
/// permit is taken there; a call allowed to wait keeps the service that was made
/// ready and calls it once the permit is granted.
pub struct KeyedRateLimit<S, F> {
    inner: S,
    layer: KeyedRateLimitLayer<F>,
}

impl<S: Clone, F: Clone> Clone for KeyedRateLimit<S, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: std::fmt::Debug, F> std::fmt::Debug for KeyedRateLimit<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedRateLimit")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, F, K, Req> Service<Req> for KeyedRateLimit<S, F>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError> + 'static,
    F: Fn(&Req) -> K,
    K: Hash,
{
    type Response = S::Response;
    type Error = Error;
    type Future = KeyedFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_service)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let keyed = &self.layer.keyed;
        let now = Instant::now();
        match keyed.check(&(self.layer.key)(&req), now) {
            Ok(()) => {
                keyed.shared.permitted(None);
                KeyedFuture {
                    state: KeyedState::Calling {
                        future: self.inner.call(req),
                    },
                }
            }
            Err((wait, limiter)) => {
                let started = now;
                if keyed.shared.may_wait(wait, started) {
                    let clone = self.inner.clone();
                    let ready = std::mem::replace(&mut self.inner, clone);
                    KeyedFuture {
                        state: KeyedState::Waiting {
                            sleep: Box::pin(tokio::time::sleep(wait)),
                            started,
                            limiter,
                            keyed: Arc::clone(keyed),
                            request: Some((ready, req)),
                        },
                    }
                } else {
                    KeyedFuture {
                        state: KeyedState::Refused {
                            rejection: Some(keyed.shared.refusal(wait)),
                        },
                    }
                }
            }
        }
    }
}

/// The response future of [`KeyedRateLimit`].
#[pin_project]
pub struct KeyedFuture<S, Req>
where
    S: Service<Req>,
{
    #[pin]
    state: KeyedState<S, Req>,
}

#[pin_project(project = KeyedFutureProj)]
enum KeyedState<S, Req>
where
    S: Service<Req>,
{
    /// Waiting for a permit.
    Waiting {
        /// Until the next permit may be free.
        sleep: Pin<Box<Sleep>>,
        /// When the wait began.
        started: Instant,
        /// The key's limiter.
        limiter: Arc<Limiter>,
        /// The limiter's shared state.
        keyed: Arc<Keyed>,
        /// The ready service and the request, until the permit is granted.
        request: Option<(S, Req)>,
    },
    /// The inner call.
    Calling {
        /// The inner call.
        #[pin]
        future: S::Future,
    },
    /// Refused.
    Refused {
        /// The refusal, until returned.
        rejection: Option<Rejection>,
    },
}

impl<S, Req> std::fmt::Debug for KeyedFuture<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedFuture")
    }
}

impl<S, Req> Future for KeyedFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                KeyedFutureProj::Waiting {
                    sleep,
                    started,
                    limiter,
                    keyed,
                    request,
                } => {
                    ready!(sleep.as_mut().poll(cx));
                    match keyed.shared.check(limiter) {
                        Ok(()) => {
                            keyed.shared.permitted(Some(*started));
                            let Some((mut service, req)) = request.take() else {
                                return Poll::Ready(Err(Error::Inner(
                                    "palisade-limit: request sent twice".into(),
                                )));
                            };
                            let future = service.call(req);
                            state.set(KeyedState::Calling { future });
                        }
                        Err(wait) if keyed.shared.may_wait(wait, *started) => {
                            sleep.as_mut().reset(Instant::now() + wait);
                        }
                        Err(wait) => {
                            let rejection = keyed.shared.refusal(wait);
                            state.set(KeyedState::Refused {
                                rejection: Some(rejection),
                            });
                        }
                    }
                }
                KeyedFutureProj::Calling { future } => {
                    return future.poll(cx).map_err(Error::from_service);
                }
                KeyedFutureProj::Refused { rejection } => {
                    return match rejection.take() {
                        Some(r) => Poll::Ready(Err(Error::Rejected(r))),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }
}

enum Target {
    Direct {
        shared: Arc<Shared>,
        limiter: Arc<ArcSwap<Limiter>>,
    },
    Keyed(Arc<Keyed>),
}

/// Reads and changes a rate limit at runtime.
pub struct RateLimitHandle {
    target: Target,
}

impl std::fmt::Debug for RateLimitHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitHandle")
            .field("config", &self.config())
            .finish()
    }
}

impl RateLimitHandle {
    fn shared(&self) -> &Shared {
        match &self.target {
            Target::Direct { shared, .. } => shared,
            Target::Keyed(keyed) => &keyed.shared,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> RateLimitConfig {
        **self.shared().config.load()
    }

    /// Applies a new limit at once. The limiter starts afresh under the new quota
    /// (for keyed limits, each key does at its next call). Refused with an error
    /// naming the field if invalid; nothing changes then.
    pub fn set_config(&self, config: RateLimitConfig) -> Result<(), ConfigError> {
        config.validate()?;
        let shared = self.shared();
        shared.config.store(Arc::new(config));
        match &self.target {
            Target::Direct { limiter, shared } => limiter.store(Arc::new(shared.limiter(&config))),
            Target::Keyed(keyed) => {
                keyed.generation.fetch_add(1, Ordering::AcqRel);
            }
        }
        Ok(())
    }
}

/// HTTP answers for rate-limit refusals: 429 with `Retry-After` and the IETF draft
/// `RateLimit-Policy` / `RateLimit` fields.
#[cfg(feature = "http")]
pub mod http_response {
    use super::RateLimitConfig;
    use palisade_core::Rejection;

    /// A 429 (or the rejection's own status) answer for `rejection`, describing the
    /// policy `config` in `RateLimit-Policy: "default";q=<rate>;w=<seconds>` and the
    /// state in `RateLimit: "default";r=0;t=<seconds until a permit>`.
    ///
    /// ```
    /// use palisade_core::{Rejection, RejectionKind};
    /// use palisade_limit::rate::{RateLimitConfig, http_response::too_many_requests};
    /// use std::time::Duration;
    ///
    /// let rejection = Rejection::new(RejectionKind::RateLimited).with_retry_after(Duration::from_millis(1500));
    /// let config = RateLimitConfig { rate: 10, per: Duration::from_secs(1), ..RateLimitConfig::default() };
    /// let res: http::Response<()> = too_many_requests(&rejection, &config);
    /// assert_eq!(res.status(), 429);
    /// assert_eq!(res.headers()["retry-after"], "2");
    /// assert_eq!(res.headers()["ratelimit-policy"], "\"default\";q=10;w=1");
    /// assert_eq!(res.headers()["ratelimit"], "\"default\";r=0;t=2");
    /// ```
    pub fn too_many_requests<B: Default>(
        rejection: &Rejection,
        config: &RateLimitConfig,
    ) -> http::Response<B> {
        let mut res: http::Response<B> = rejection.to_http_response();
        let window = config.per.as_secs().max(1);
        let reset = rejection.retry_after_secs().unwrap_or(0);
        let headers = res.headers_mut();
        if let Ok(v) =
            http::HeaderValue::from_str(&format!("\"default\";q={};w={window}", config.rate))
        {
            headers.insert("ratelimit-policy", v);
        }
        if let Ok(v) = http::HeaderValue::from_str(&format!("\"default\";r=0;t={reset}")) {
            headers.insert("ratelimit", v);
        }
        res
    }
}
