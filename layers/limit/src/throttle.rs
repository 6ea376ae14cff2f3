//! Client-side adaptive throttling, as in Google's SRE book ("Handling Overload").
//!
//! A backend that is overloaded still spends effort rejecting requests. When it
//! rejects much of what a client sends, the client can do the rejecting itself,
//! locally, and send only about as much as the backend accepts. Over a rolling
//! window (2 minutes by default) the client counts
//!
//! - **requests**: every request the application attempted through this layer,
//!   counted when it is throttled (locally rejected requests count: that is what
//!   raises the probability as the backend keeps refusing) or, once sent, when its
//!   answer arrives or it is dropped unanswered. A request still in flight is not
//!   counted yet: counted at send time, a burst of first calls to a healthy backend
//!   would be throttled before any answer could arrive (with nothing accepted yet,
//!   the second concurrent call would be refused with probability ½);
//! - **accepts**: requests the backend answered with an outcome that is not a
//!   failure, as judged by [`Classify`]
//!   ([`AllErrorsFail`] by default): `Success` and `Ignored` are accepts,
//!   `Failure` is not;
//!
//! and rejects each new request locally with probability
//!
//! ```text
//! p = max(0, (requests − K × accepts) / (requests + 1))
//! ```
//!
//! With `K = 2` (the default) the backend keeps receiving about twice what it
//! accepts: while it accepts at least half of what it is sent, nothing is
//! throttled; as it accepts less, the client sends less, yet keeps probing, so the
//! probability falls again as soon as the backend recovers. A lower `K` throttles
//! sooner; a higher one lets more through.
//!
//! **Rejections** are [`RateLimited`](RejectionKind::RateLimited) and carry no
//! retry-after hint, on purpose: the throttle refuses with a probability, not for a
//! known time, so the very next request may be sent, and no moment exists from which
//! sending is certain. Any hint would be invented, and it would make HTTP clients
//! and retry layers wait a fixed time when the right reaction, sending less, is
//! already arranged by the probability. (A retry layer above the throttle that
//! retries a throttled request adds an attempt to `requests`, which raises the
//! probability: retries of throttled requests throttle themselves.)
//!
//! **Where it sits**: as close to the transport as possible: below retries,
//! breakers, rate limits and bulkheads/adaptive limits, directly above the per-try
//! timeout. Then it counts what is really sent (each retry attempt included), a
//! timeout reaches it as a failure, and local rejections never reach it. A local
//! rejection by a layer *inside* it would be classified `Ignored` by
//! [`AllErrorsFail`] and so count as an accept, which errs on the side of sending.
//! (Above an adaptive limiter, a throttled request is an ignored outcome there: it
//! is not sampled.)
//!
//! **Determinism**: the random draw uses [`fastrand`]. Give the builder a
//! [`seed`](ThrottleBuilder::seed) and every service made by the layer draws from a
//! generator seeded from it (the n-th service or clone made gets the n-th derived
//! seed), so tests on paused time are exactly repeatable. The healthy path
//! (`p = 0`) draws nothing.
//!
//! **Hot path**: the window is two lock-free rolling counters (requests and
//! accepts) with running totals, so computing `p` is a handful of atomic loads
//! (plus, once per bucket width, emptying the buckets that left the window), and
//! recording is one compare-and-swap and one add; nothing is allocated per call.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `palisade_throttle_probability` | gauge | `downstream` | the local rejection probability, as computed for the latest call |
//! | `palisade_throttle_calls_total` | counter | `downstream`, `outcome` = sent, throttled | requests sent to the backend or rejected locally |
//!
//! Both series are registered at zero when the layer is built.
//!
//! ```
//! use palisade_limit::throttle::ThrottleLayer;
//! use palisade_core::RejectionKind;
//! use tower::{Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = ThrottleLayer::builder("payments").seed(7).build().unwrap();
//! let handle = layer.handle();
//! // A backend refusing everything.
//! let mut svc = layer.layer(tower::service_fn(|_: ()| async {
//!     Err::<(), _>(std::io::Error::other("overloaded"))
//! }));
//!
//! let mut throttled = 0;
//! for _ in 0..100 {
//!     let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//!     if let Some(rejection) = err.rejection() {
//!         assert_eq!(rejection.kind(), RejectionKind::RateLimited);
//!         assert_eq!(rejection.retry_after(), None);
//!         throttled += 1;
//!     }
//! }
//! // Almost everything stays local, yet a few requests still probe the backend.
//! assert!(throttled > 80 && throttled < 100, "{throttled}");
//! assert!(handle.probability() > 0.95);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use metrics::Gauge;
use palisade_core::observe::{CounterSet, LabelValue, MetricScope, Observer, Observers};
use palisade_core::{
    AllErrorsFail, BoxError, Classify, Clock, ConfigError, Error, Name, Rejection, RejectionKind,
};
use pin_project::pin_project;
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use self::sync::{AtomicU64, Ordering};

/// Atomics of the rolling counters: `loom`'s under the `loom` feature (model
/// checking), the standard library's otherwise.
mod sync {
    #[cfg(feature = "loom")]
    pub(super) use loom::sync::atomic::{AtomicU64, Ordering};
    #[cfg(not(feature = "loom"))]
    pub(super) use std::sync::atomic::{AtomicU64, Ordering};
}

// ---- settings -----------------------------------------------------------------------

/// A throttle's settings, as a builder fills them or a config file gives them.
///
/// Durations in files are written as `"2m"`, `"30s"`. Unknown fields are errors.
///
/// ```
/// use palisade_limit::throttle::ThrottleConfig;
/// use std::time::Duration;
///
/// let config: ThrottleConfig = toml::from_str(r#"
///     k = 1.5
///     window = "1m"
/// "#).unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.window, Duration::from_secs(60));
///
/// let bad: ThrottleConfig = toml::from_str("k = 0.5").unwrap();
/// assert_eq!(bad.validate().unwrap_err().to_string(), "k: 0.5 must be a finite number >= 1");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// The backend may receive `k` times what it accepts before the client throttles,
    /// `>= 1`. Default 2.
    pub k: f64,
    /// How far back requests and accepts are counted. Default 2 minutes.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Slices of the window, `1..=4096`: the window slides one slice at a time.
    /// Default 120 (one second each, with the default window).
    pub buckets: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            k: 2.0,
            window: Duration::from_secs(120),
            buckets: 120,
        }
    }
}

/// The most slices a window may have.
const MAX_BUCKETS: u32 = 4096;

impl ThrottleConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.k >= 1.0 && self.k.is_finite()) {
            return Err(ConfigError::new(
                "k",
                format!("{} must be a finite number >= 1", self.k),
            ));
        }
        if self.window.is_zero() {
            return Err(ConfigError::new("window", "must be greater than zero"));
        }
        if self.buckets == 0 || self.buckets > MAX_BUCKETS {
            return Err(ConfigError::new(
                "buckets",
                format!("{} is not within 1..={MAX_BUCKETS}", self.buckets),
            ));
        }
        if self.bucket_nanos() == 0 {
            return Err(ConfigError::new(
                "window",
                format!(
                    "{:?} is too short for {} buckets",
                    self.window, self.buckets
                ),
            ));
        }
        Ok(())
    }

    fn bucket_nanos(&self) -> u64 {
        let nanos = u64::try_from(self.window.as_nanos()).unwrap_or(u64::MAX);
        nanos / u64::from(self.buckets.max(1))
    }
}

// ---- rolling counter ----------------------------------------------------------------

/// A bucket word: `[tag:16][count:48]`, high to low. The tag is the bucket's
/// rotation (`tick / buckets`, truncated), so a stale bucket is told from a current
/// one; a zero count is an empty bucket whatever its tag.
const COUNT_BITS: u32 = 48;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const TAG_MASK: u64 = 0xFFFF;

fn decode(word: u64) -> (u64, u64) {
    (word >> COUNT_BITS, word & COUNT_MASK)
}

/// Whether tag `a` is the rotation right after `b` (across the 16-bit wrap): a
/// bucket a concurrent recorder with a slightly later clock reading has already
/// moved on. Any other tag that is not `b` is an older rotation, however long ago —
/// after an idle stretch of half the tag range or more, a half-range comparison would
/// take a stale bucket for a later one and freeze it.
fn is_next(a: u64, b: u64) -> bool {
    a == (b + 1) & TAG_MASK
}

/// Counts events over the last `buckets × bucket_nanos`, with a running total, so
/// reading the count is one atomic load (after expiring, at most once per bucket
/// width, the buckets that left the window).
///
/// Every change to a bucket is a compare-and-swap that also adjusts the total by
/// exactly what it added or removed, so the total always converges to the sum of the
/// live buckets; between a bucket's change and the total's, a reader may see the
/// total off by the events in flight. An event recorded with a clock reading older
/// than the whole window is dropped (it is outside the window anyway) or, if its
/// bucket was just emptied, may linger until that bucket rotates; one whose reading
/// is more than two windows old (a thread stalled that long between reading the
/// clock and recording) takes its bucket for an older rotation and restarts it.
#[derive(Debug)]
struct SlidingCount {
    buckets: Box<[AtomicU64]>,
    /// Sum of the live buckets (wrapping; read as signed, floored at zero).
    total: CachePadded<AtomicU64>,
    /// The latest tick whose expired buckets have been emptied.
    head: AtomicU64,
    bucket_nanos: u64,
}

impl SlidingCount {
    fn new(buckets: u32, bucket_nanos: u64) -> Self {
        Self {
            buckets: (0..buckets.max(1)).map(|_| AtomicU64::new(0)).collect(),
            total: CachePadded::new(AtomicU64::new(0)),
            head: AtomicU64::new(0),
            bucket_nanos: bucket_nanos.max(1),
        }
    }

    fn locate(&self, tick: u64) -> (&AtomicU64, u64) {
        let n = self.buckets.len() as u64;
        (&self.buckets[(tick % n) as usize], (tick / n) & TAG_MASK)
    }

    /// Records one event at `now` (nanoseconds of the throttle's clock).
    fn add(&self, now: u64) {
        let (bucket, tag) = self.locate(now / self.bucket_nanos);
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let (held_tag, count) = decode(current);
            let (next, evicted) = if held_tag == tag {
                if count == COUNT_MASK {
                    return;
                }
                (current + 1, 0)
            } else if count != 0 && is_next(held_tag, tag) {
                // The bucket already holds a later rotation: this clock reading is
                // older than the window.
                return;
            } else {
                // Empty, or an older rotation: start the bucket afresh.
                ((tag << COUNT_BITS) | 1, count)
            };
            match bucket.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.total
                        .fetch_add(1u64.wrapping_sub(evicted), Ordering::AcqRel);
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// The events of the window ending at `now`.
    fn count(&self, now: u64) -> u64 {
        self.advance(now / self.bucket_nanos);
        let total = self.total.load(Ordering::Acquire) as i64;
        total.max(0) as u64
    }

    /// Empties the buckets that left the window since the last advance. One caller
    /// per tick does the work; the others return at once.
    fn advance(&self, tick: u64) {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            if tick <= head {
                return;
            }
            match self
                .head
                .compare_exchange_weak(head, tick, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(actual) => head = actual,
            }
        }
        let n = self.buckets.len() as u64;
        // The buckets of ticks (head, tick] held rotations that are now out of the
        // window; at most the whole ring.
        for t in (head + 1).max((tick + 1).saturating_sub(n))..=tick {
            self.expire(t);
        }
    }

    /// Empties the bucket of `tick` if it holds an earlier rotation.
    fn expire(&self, tick: u64) {
        let (bucket, tag) = self.locate(tick);
        let mut current = bucket.load(Ordering::Acquire);
        loop {
            let (held_tag, count) = decode(current);
            if count == 0 || held_tag == tag || is_next(held_tag, tag) {
                return;
            }
            match bucket.compare_exchange_weak(current, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.total.fetch_sub(count, Ordering::AcqRel);
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Empties the window. Events recorded concurrently may survive.
    fn reset(&self) {
        for bucket in self.buckets.iter() {
            let (_, count) = decode(bucket.swap(0, Ordering::AcqRel));
            if count != 0 {
                self.total.fetch_sub(count, Ordering::AcqRel);
            }
        }
    }
}

// ---- events and metrics -------------------------------------------------------------

/// What a throttle reports to its observers.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThrottleEvent {
    /// A request was rejected locally.
    Throttled {
        /// The rejection probability it was drawn against.
        probability: f64,
    },
}

#[derive(Debug, Clone, Copy)]
enum CallLabel {
    Sent,
    Throttled,
}

impl LabelValue for CallLabel {
    const LABEL: &'static str = "outcome";
    const ALL: &'static [Self] = &[CallLabel::Sent, CallLabel::Throttled];
    fn as_label(self) -> &'static str {
        match self {
            CallLabel::Sent => "sent",
            CallLabel::Throttled => "throttled",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug)]
struct ThrottleMetrics {
    probability: Gauge,
    calls: CounterSet<CallLabel>,
}

impl ThrottleMetrics {
    fn register(name: &Name) -> Self {
        let scope = MetricScope::new("throttle", name.clone());
        Self {
            probability: scope.gauge(
                "probability",
                None,
                "Probability with which the client-side throttle rejects a request locally.",
            ),
            calls: scope.counter_set(
                "calls",
                "Requests sent to the backend or rejected locally (throttled) by the client-side throttle.",
            ),
        }
    }
}

// ---- shared state -------------------------------------------------------------------

struct Shared {
    name: Name,
    k: f64,
    clock: Clock,
    requests: SlidingCount,
    accepts: SlidingCount,
    seed: Option<u64>,
    /// Generators handed out so far, for deriving seeds (not model-checked).
    forks: std::sync::atomic::AtomicU64,
    metrics: Option<ThrottleMetrics>,
    observers: Observers<ThrottleEvent>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("k", &self.k)
            .finish_non_exhaustive()
    }
}

/// Whether a service clone sends its next request: decided in `poll_ready`, used in
/// `call`.
#[derive(Debug, Clone, Copy)]
struct Decision {
    at: u64,
    probability: f64,
    throttled: bool,
}

impl Shared {
    fn probability_at(&self, now: u64) -> f64 {
        let requests = self.requests.count(now) as f64;
        let accepts = self.accepts.count(now) as f64;
        ((requests - self.k * accepts) / (requests + 1.0)).max(0.0)
    }

    fn decide(&self, rng: &mut fastrand::Rng) -> Decision {
        let at = self.clock.now_nanos();
        let probability = self.probability_at(at);
        if let Some(m) = &self.metrics {
            m.probability.set(probability);
        }
        Decision {
            at,
            probability,
            throttled: probability > 0.0 && rng.f64() < probability,
        }
    }

    fn rng(&self) -> fastrand::Rng {
        match self.seed {
            Some(seed) => {
                let n = self
                    .forks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                fastrand::Rng::with_seed(seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            }
            None => fastrand::Rng::new(),
        }
    }

    fn sent(&self) {
        if let Some(m) = &self.metrics {
            m.calls.get(CallLabel::Sent).increment(1);
        }
    }

    /// A sent request's answer arrived (or it was dropped unanswered).
    fn answered(&self, accepted: bool) {
        let at = self.clock.now_nanos();
        self.requests.add(at);
        if accepted {
            self.accepts.add(at);
        }
    }

    fn throttled(&self, at: u64, probability: f64) -> Rejection {
        self.requests.add(at);
        if let Some(m) = &self.metrics {
            m.calls.get(CallLabel::Throttled).increment(1);
        }
        if !self.observers.is_empty() {
            self.observers
                .emit(&ThrottleEvent::Throttled { probability });
        }
        Rejection::new(RejectionKind::RateLimited).with_downstream(self.name.clone())
    }
}

// ---- layer and builder --------------------------------------------------------------

/// Wraps services in one shared client-side throttle. Every service this layer
/// makes, and every clone of them, shares the window and the probability.
///
/// ```
/// use palisade_limit::throttle::ThrottleLayer;
/// use std::time::Duration;
///
/// let layer = ThrottleLayer::builder("search")
///     .k(1.5)
///     .window(Duration::from_secs(60))
///     .build()
///     .expect("valid throttle settings");
/// let svc = tower::ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|q: String| async move { Ok::<_, std::io::Error>(q.len()) });
/// # drop(svc);
/// ```
#[derive(Clone)]
pub struct ThrottleLayer<C = AllErrorsFail> {
    shared: Arc<Shared>,
    classify: C,
}

impl<C> std::fmt::Debug for ThrottleLayer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleLayer")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl ThrottleLayer {
    /// Starts a builder for the throttle of downstream `name` (the `downstream`
    /// metric label: ASCII letters, digits, `_`, `-`, `.`).
    pub fn builder(name: &str) -> ThrottleBuilder {
        ThrottleBuilder {
            name: name.to_owned(),
            config: ThrottleConfig::default(),
            seed: None,
            classify: AllErrorsFail,
            observers: Vec::new(),
            metrics: true,
        }
    }

    /// A throttle for `name` with the settings of `config`.
    pub fn from_config(name: &str, config: ThrottleConfig) -> Result<Self, ConfigError> {
        Self::builder(name).config(config).build()
    }
}

impl<C> ThrottleLayer<C> {
    /// A handle to the throttle.
    pub fn handle(&self) -> ThrottleHandle {
        ThrottleHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, C: Clone> Layer<S> for ThrottleLayer<C> {
    type Service = Throttle<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Throttle {
            inner,
            rng: self.shared.rng(),
            shared: Arc::clone(&self.shared),
            classify: self.classify.clone(),
            decision: None,
        }
    }
}

/// Builds a [`ThrottleLayer`]. Every setting has a default (see [`ThrottleConfig`]);
/// `build` validates and names the bad field.
pub struct ThrottleBuilder<C = AllErrorsFail> {
    name: String,
    config: ThrottleConfig,
    seed: Option<u64>,
    classify: C,
    observers: Vec<Arc<dyn Observer<ThrottleEvent>>>,
    metrics: bool,
}

impl<C> std::fmt::Debug for ThrottleBuilder<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleBuilder")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl<C> ThrottleBuilder<C> {
    /// Replaces every setting with `config`.
    pub fn config(mut self, config: ThrottleConfig) -> Self {
        self.config = config;
        self
    }

    /// Lets the backend receive `k` times what it accepts before throttling (`>= 1`).
    /// Default 2.
    pub fn k(mut self, k: f64) -> Self {
        self.config.k = k;
        self
    }

    /// Counts requests and accepts over the last `window`. Default 2 minutes.
    pub fn window(mut self, window: Duration) -> Self {
        self.config.window = window;
        self
    }

    /// Slides the window in `buckets` steps (`1..=4096`). Default 120.
    pub fn buckets(mut self, buckets: u32) -> Self {
        self.config.buckets = buckets;
        self
    }

    /// Draws from generators seeded from `seed`, for repeatable tests. Default:
    /// seeds from `fastrand`'s thread-local generator.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Judges accepts with `classify` instead of [`AllErrorsFail`]: every outcome
    /// but `Failure` is an accept.
    pub fn classify<C2>(self, classify: C2) -> ThrottleBuilder<C2> {
        ThrottleBuilder {
            name: self.name,
            config: self.config,
            seed: self.seed,
            classify,
            observers: self.observers,
            metrics: self.metrics,
        }
    }

    /// Adds an observer of the throttle's events (called inline; keep it cheap).
    pub fn on_event(mut self, observer: impl Observer<ThrottleEvent>) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Records no metrics (events still reach observers).
    pub fn without_metrics(mut self) -> Self {
        self.metrics = false;
        self
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<ThrottleLayer<C>, ConfigError> {
        let name = Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        self.config.validate()?;
        let bucket_nanos = self.config.bucket_nanos();
        let metrics = self.metrics.then(|| ThrottleMetrics::register(&name));
        let shared = Arc::new(Shared {
            name,
            k: self.config.k,
            clock: Clock::new(),
            requests: SlidingCount::new(self.config.buckets, bucket_nanos),
            accepts: SlidingCount::new(self.config.buckets, bucket_nanos),
            seed: self.seed,
            forks: std::sync::atomic::AtomicU64::new(0),
            metrics,
            observers: Observers::new(self.observers),
        });
        Ok(ThrottleLayer {
            shared,
            classify: self.classify,
        })
    }
}

// ---- service ------------------------------------------------------------------------

/// A client-side throttle around a service; built by [`ThrottleLayer`].
///
/// The decision is made in `poll_ready`: throttled, `poll_ready` is ready at once
/// (without polling the inner service) and `call` fails with a
/// [`RateLimited`](RejectionKind::RateLimited) rejection; otherwise the inner
/// service's readiness is awaited and `call` sends the request. The request is
/// counted in `call`, so a clone made ready and dropped unused counts nothing. Each
/// clone draws from its own random generator.
pub struct Throttle<S, C = AllErrorsFail> {
    inner: S,
    shared: Arc<Shared>,
    classify: C,
    rng: fastrand::Rng,
    decision: Option<Decision>,
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for Throttle<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<S: Clone, C: Clone> Clone for Throttle<S, C> {
    fn clone(&self) -> Self {
        // A clone starts undecided, with its own generator.
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            classify: self.classify.clone(),
            rng: self.shared.rng(),
            decision: None,
        }
    }
}

impl<S, C> Throttle<S, C> {
    /// A handle to this service's throttle.
    pub fn handle(&self) -> ThrottleHandle {
        ThrottleHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, Req> Service<Req> for Throttle<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let decision = self
            .decision
            .get_or_insert_with(|| self.shared.decide(&mut self.rng));
        if decision.throttled {
            // A throttled request never reaches the inner service.
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                self.decision = None;
                Poll::Ready(Err(Error::from_service(e)))
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Calling without `poll_ready` breaks the `Service` contract; decide here
        // rather than panic.
        let decision = match self.decision.take() {
            Some(d) => d,
            None => self.shared.decide(&mut self.rng),
        };
        if decision.throttled {
            return ResponseFuture {
                kind: Kind::Throttled {
                    rejection: Some(self.shared.throttled(decision.at, decision.probability)),
                },
            };
        }
        self.shared.sent();
        ResponseFuture {
            kind: Kind::Sent {
                future: self.inner.call(req),
                in_flight: Some(InFlight::new(Arc::clone(&self.shared))),
                classify: self.classify.clone(),
            },
        }
    }
}

/// A sent request not answered yet: counted as a request (not accepted) if it is
/// dropped unanswered.
struct InFlight {
    shared: Arc<Shared>,
    answered: bool,
}

impl InFlight {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            answered: false,
        }
    }

    fn answer(mut self, accepted: bool) {
        self.answered = true;
        self.shared.answered(accepted);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.answered {
            self.shared.answered(false);
        }
    }
}

/// The response future of [`Throttle`]: the request sent, counted as an accept when
/// its outcome is not a failure, or a local rejection.
#[pin_project]
pub struct ResponseFuture<F, C> {
    #[pin]
    kind: Kind<F, C>,
}

#[pin_project(project = KindProj)]
enum Kind<F, C> {
    Sent {
        #[pin]
        future: F,
        /// `None` once the answer has been counted.
        in_flight: Option<InFlight>,
        classify: C,
    },
    Throttled {
        rejection: Option<Rejection>,
    },
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
    E: Into<BoxError> + 'static,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Sent {
                future,
                in_flight,
                classify,
            } => {
                let result = ready!(future.poll(cx));
                if let Some(in_flight) = in_flight.take() {
                    in_flight.answer(!classify.classify(result.as_ref()).is_failure());
                }
                Poll::Ready(result.map_err(Error::from_service))
            }
            KindProj::Throttled { rejection } => match rejection.take() {
                Some(r) => Poll::Ready(Err(Error::Rejected(r))),
                None => Poll::Pending,
            },
        }
    }
}

// ---- handle -------------------------------------------------------------------------

/// Inspects a throttle at runtime. Cheap to clone.
///
/// ```
/// use palisade_limit::throttle::ThrottleLayer;
///
/// let handle = ThrottleLayer::builder("search").build().unwrap().handle();
/// assert_eq!((handle.requests(), handle.accepts(), handle.probability()), (0, 0, 0.0));
/// ```
#[derive(Clone)]
pub struct ThrottleHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ThrottleHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleHandle")
            .field("name", &self.shared.name)
            .field("probability", &self.probability())
            .finish()
    }
}

impl ThrottleHandle {
    /// The throttle's name (the `downstream` label).
    pub fn name(&self) -> &Name {
        &self.shared.name
    }

    /// The probability with which the next request would be rejected locally.
    pub fn probability(&self) -> f64 {
        self.shared.probability_at(self.shared.clock.now_nanos())
    }

    /// Requests (sent and throttled) in the window.
    pub fn requests(&self) -> u64 {
        self.shared.requests.count(self.shared.clock.now_nanos())
    }

    /// Accepts in the window.
    pub fn accepts(&self) -> u64 {
        self.shared.accepts.count(self.shared.clock.now_nanos())
    }

    /// Forgets the window: the throttle sends everything until new failures.
    pub fn reset(&self) {
        self.shared.requests.reset();
        self.shared.accepts.reset();
        if let Some(m) = &self.shared.metrics {
            m.probability.set(0.0);
        }
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    #[test]
    fn the_count_slides_bucket_by_bucket() {
        // 4 buckets of 10 ns.
        let c = SlidingCount::new(4, 10);
        c.add(0);
        c.add(5);
        c.add(25);
        assert_eq!(c.count(39), 3);
        // At 40 the bucket [0, 10) leaves the window.
        assert_eq!(c.count(40), 1);
        c.add(40);
        assert_eq!(c.count(40), 2);
        assert_eq!(c.count(65), 1, "the bucket of 25 left at 60");
        // A long silence empties everything, whatever was skipped.
        c.add(66);
        assert_eq!(c.count(1_000), 0);
        c.add(1_000);
        assert_eq!(c.count(1_000), 1);
        c.reset();
        assert_eq!(c.count(1_000), 0);
    }

    #[test]
    fn stale_events_are_dropped() {
        let c = SlidingCount::new(2, 10);
        c.add(25); // tick 2: slot 0, rotation 1
        // tick 0 maps to the same slot, rotation 0: outside the window of tick 2.
        c.add(0);
        assert_eq!(c.count(25), 1);
    }

    #[test]
    fn the_count_matches_a_model() {
        let buckets = 5u64;
        let width = 7u64;
        let c = SlidingCount::new(buckets as u32, width);
        let mut events = Vec::new();
        let mut now = 0u64;
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..5_000 {
            now += rng.u64(0..12);
            if rng.bool() {
                c.add(now);
                events.push(now);
            }
            let tick = now / width;
            let oldest = (tick + 1).saturating_sub(buckets);
            let live = events.iter().filter(|t| **t / width >= oldest).count() as u64;
            assert_eq!(c.count(now), live, "at {now}");
        }
    }

    #[test]
    fn concurrent_adds_keep_an_exact_total() {
        let c = Arc::new(SlidingCount::new(8, 100));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        // Each thread walks through time, far past the window.
                        let now = i / 10 + t;
                        c.add(now);
                        if i % 64 == 0 {
                            c.count(now);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let now = 2_000 + 3;
        let live: u64 = c
            .buckets
            .iter()
            .map(|b| decode(b.load(Ordering::Relaxed)))
            .filter(|(_, count)| *count != 0)
            .count() as u64;
        assert!(live > 0);
        // After one more advance the total equals the sum of what the buckets hold.
        let counted = c.count(now);
        let held: u64 = c
            .buckets
            .iter()
            .map(|b| decode(b.load(Ordering::Relaxed)).1)
            .sum();
        assert_eq!(counted, held);
    }

    #[tokio::test(start_paused = true)]
    async fn answered_and_dropped_requests_release_the_shared_state() {
        use tower::{Layer, Service, ServiceExt};
        let layer = ThrottleLayer::builder("release")
            .without_metrics()
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut svc = layer.layer(tower::service_fn(|()| async {
            Ok::<(), std::io::Error>(())
        }));
        for _ in 0..10 {
            svc.ready().await.unwrap().call(()).await.unwrap();
        }
        let dropped = svc.ready().await.unwrap().call(());
        drop(dropped);
        drop((svc, layer));
        assert_eq!((handle.requests(), handle.accepts()), (11, 10));
        assert_eq!(Arc::strong_count(&handle.shared), 1, "no count left behind");
    }

    #[test]
    fn tags_compare_across_the_wrap() {
        assert!(is_next(1, 0));
        assert!(is_next(0, 0xFFFF));
        assert!(!is_next(0, 1));
        assert!(!is_next(5, 5));
        // Half the tag range or more ago is older, not later.
        assert!(!is_next(0x8001, 1));
    }

    #[test]
    fn a_window_left_idle_for_most_of_the_tag_range_counts_afresh() {
        // Ten buckets of 100 ms: a rotation is one second.
        let w = SlidingCount::new(10, 100_000_000);
        let second = 1_000_000_000u64;
        for i in 0..10 {
            for _ in 0..10 {
                w.add(i * 100_000_000);
            }
        }
        assert_eq!(w.count(999_000_000), 100);
        // Idle for 40,000 rotations (11 hours): every bucket is out of the window,
        // and new events count from zero.
        let later = 40_000 * second;
        assert_eq!(w.count(later), 0);
        for _ in 0..3 {
            w.add(later);
        }
        assert_eq!(w.count(later), 3);
    }

    #[test]
    fn settings_are_validated_by_field() {
        let err = |f: fn(&mut ThrottleConfig)| {
            let mut c = ThrottleConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        ThrottleConfig::default().validate().unwrap();
        assert_eq!(err(|c| c.k = 0.9), "k: 0.9 must be a finite number >= 1");
        assert_eq!(
            err(|c| c.k = f64::INFINITY),
            "k: inf must be a finite number >= 1"
        );
        assert_eq!(
            err(|c| c.window = Duration::ZERO),
            "window: must be greater than zero"
        );
        assert_eq!(err(|c| c.buckets = 0), "buckets: 0 is not within 1..=4096");
        assert_eq!(
            err(|c| c.window = Duration::from_nanos(10)),
            "window: 10ns is too short for 120 buckets"
        );
        let e = toml::from_str::<ThrottleConfig>("K = 2").unwrap_err();
        assert!(e.to_string().contains("unknown field `K`"), "{e}");
    }
}

/// Model checks of the rolling counter under every interleaving loom can find:
/// `cargo test -p palisade-limit --features loom --release --lib loom_`.
#[cfg(all(test, feature = "loom"))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    fn held(c: &SlidingCount) -> u64 {
        c.buckets
            .iter()
            .map(|b| decode(b.load(Ordering::SeqCst)).1)
            .sum()
    }

    #[test]
    fn loom_rotation_and_expiry_keep_the_total_exact() {
        loom::model(|| {
            // 2 buckets of 10: tick 2 reuses tick 0's bucket.
            let c = Arc::new(SlidingCount::new(2, 10));
            c.add(0);
            let (a, b) = (c.clone(), c.clone());
            let writer = loom::thread::spawn(move || a.add(20));
            let reader = loom::thread::spawn(move || {
                b.count(25);
            });
            c.add(15);
            writer.join().unwrap();
            reader.join().unwrap();
            // Once quiet, the total is what the buckets hold: the event at 0 was
            // removed exactly once, by the writer's rotation or the reader's expiry.
            assert_eq!(c.count(25), held(&c));
            assert_eq!(c.count(25), 2);
        });
    }
}
