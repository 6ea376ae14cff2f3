//! Hedging: when a call is slower than usual, send a copy to another replica and take
//! whichever answer comes first.
//!
//! After `delay` — fixed, or a latency percentile the layer observes — the layer
//! sends up to `max_hedges` extra attempts of an eligible request (one the protocol
//! can replay). The first successful (or ignored, e.g. 4xx) answer wins and the
//! attempts still running are dropped, which cancels them. A hedge that a Palisade
//! layer below refuses (a full bulkhead, a spent rate limit: it was never sent) does
//! not win, and the attempts in flight go on; nor does a hedge whose service is not
//! ready when it is due wait for it — it is not sent, and what its readiness held
//! is let go at once. If every attempt fails, the last failure is returned. Each
//! hedge takes a token from a retry budget, and gives it back if a layer below
//! refuses to send it — share a [`RetryLayer`](crate::RetryLayer)'s with
//! [`HedgeBuilder::budget`] so retries and hedges together stay within one budget.
//!
//! ```
//! use palisade_retry::{HedgeDelay, HedgeLayer, RetryLayer};
//! use std::time::Duration;
//!
//! let retry = RetryLayer::builder("catalog").build().unwrap();
//! let hedge = HedgeLayer::builder("catalog")
//!     .delay(HedgeDelay::Percentile { percentile: 0.95, min: Duration::from_millis(5) })
//!     .max_hedges(1)
//!     .budget(retry.budget().clone())
//!     .build()
//!     .unwrap();
//! let svc = tower::ServiceBuilder::new()
//!     .layer(retry)
//!     .layer(hedge)
//!     .service_fn(|id: u32| async move { Ok::<_, std::io::Error>(id) });
//! # drop(svc);
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::Counter;
use palisade_core::lanes::{Lane, Lanes};
use palisade_core::observe::MetricScope;
use palisade_core::{AllErrorsFail, BoxError, Classify, ConfigError, Error, Name, Outcome};

/// The longest hedge delay (fixed, or the floor of a percentile delay).
const MAX_HEDGE_DELAY: Duration = Duration::from_secs(3600);
use pin_project::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::budget::{BudgetConfig, RetryBudget, Token};
use crate::protocol::{CloneRequests, Protocol};
use crate::service::{Core, refused_unsent};

/// When to send a hedge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    /// A fixed time after the first attempt, at most an hour.
    Fixed(Duration),
    /// The given percentile (e.g. 0.95) of the latencies this layer has observed,
    /// but at least `min`. Until 100 calls have been observed, no hedges are sent.
    Percentile {
        /// The percentile, `0 < p < 1`.
        percentile: f64,
        /// The shortest delay, at most an hour.
        min: Duration,
    },
}

/// Latencies observed by a hedge layer: a log-linear histogram (four buckets per
/// doubling, about 19% resolution, from 1 µs to 2⁴⁰ µs) with atomic counts. When the
/// total passes [`Self::DECAY_AT`] every count is halved, so old latencies fade.
#[derive(Debug)]
struct Latencies {
    buckets: Box<[AtomicU64]>,
    total: AtomicU64,
    /// The cached percentile, in µs (0 = not enough data).
    cached_us: AtomicU64,
}

const SUB_BUCKETS: u32 = 4;
const BUCKETS: usize = 41 * SUB_BUCKETS as usize;

impl Latencies {
    const DECAY_AT: u64 = 10_000;
    const MIN_SAMPLES: u64 = 100;
    const REFRESH_EVERY: u64 = 64;

    fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            cached_us: AtomicU64::new(0),
        }
    }

    fn bucket_of(us: u64) -> usize {
        let us = us.max(1);
        let log = 63 - us.leading_zeros();
        let sub = if log >= 2 {
            ((us >> (log - 2)) & 0b11) as u32
        } else {
            0
        };
        ((log * SUB_BUCKETS + sub) as usize).min(BUCKETS - 1)
    }

    /// The upper bound (µs) of a bucket.
    fn bucket_upper(index: usize) -> u64 {
        let log = index as u32 / SUB_BUCKETS;
        let sub = u64::from(index as u32 % SUB_BUCKETS);
        if log < 2 {
            return 1 << (log + 1);
        }
        (4 + sub + 1) << (log - 2)
    }

    fn record(&self, latency: Duration, percentile: f64) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        if total >= Self::DECAY_AT {
            self.decay();
        }
        if total.is_multiple_of(Self::REFRESH_EVERY) && total >= Self::MIN_SAMPLES {
            self.cached_us
                .store(self.percentile_us(percentile), Ordering::Relaxed);
        }
    }

    fn decay(&self) {
        let mut remaining = 0;
        for b in self.buckets.iter() {
            let halved = b.load(Ordering::Relaxed) / 2;
            b.store(halved, Ordering::Relaxed);
            remaining += halved;
        }
        self.total.store(remaining, Ordering::Relaxed);
    }

    fn percentile_us(&self, p: f64) -> u64 {
        // A stack copy: this runs on the call path (every 64th call), so no
        // allocation, and one consistent-enough read of each bucket.
        let mut counts = [0u64; BUCKETS];
        for (count, bucket) in counts.iter_mut().zip(self.buckets.iter()) {
            *count = bucket.load(Ordering::Relaxed);
        }
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let target = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Self::bucket_upper(i);
            }
        }
        Self::bucket_upper(BUCKETS - 1)
    }

    fn delay(&self, min: Duration) -> Option<Duration> {
        match self.cached_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us).max(min)),
        }
    }
}

struct HedgeShared {
    name: Name,
    delay: HedgeDelay,
    max_hedges: u32,
    budget: Arc<RetryBudget>,
    /// Whether the budget is the layer's own (then its successes fund it); a shared
    /// budget is funded by the retry layer it belongs to.
    owns_budget: bool,
    latencies: Option<Latencies>,
    sent: Counter,
    won: Counter,
}

impl HedgeShared {
    fn delay(&self) -> Option<Duration> {
        match self.delay {
            HedgeDelay::Fixed(d) => Some(d),
            HedgeDelay::Percentile { min, .. } => self.latencies.as_ref()?.delay(min),
        }
    }
}

/// Sends hedged attempts; see the [module docs](self).
pub struct HedgeLayer<P = CloneRequests, C = AllErrorsFail> {
    shared: Arc<HedgeShared>,
    protocol: P,
    classify: C,
}

impl<P: Clone, C: Clone> Clone for HedgeLayer<P, C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            protocol: self.protocol.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<P, C> std::fmt::Debug for HedgeLayer<P, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("name", &self.shared.name)
            .field("delay", &self.shared.delay)
            .finish_non_exhaustive()
    }
}

impl HedgeLayer {
    /// Starts a builder for the hedge layer of downstream `name`.
    pub fn builder(name: &str) -> HedgeBuilder {
        HedgeBuilder {
            name: name.to_owned(),
            delay: HedgeDelay::Percentile {
                percentile: 0.95,
                min: Duration::from_millis(1),
            },
            max_hedges: 1,
            budget: None,
            protocol: CloneRequests,
            classify: AllErrorsFail,
            metrics: true,
        }
    }
}

/// Builds a [`HedgeLayer`].
pub struct HedgeBuilder<P = CloneRequests, C = AllErrorsFail> {
    name: String,
    delay: HedgeDelay,
    max_hedges: u32,
    budget: Option<Arc<RetryBudget>>,
    protocol: P,
    classify: C,
    metrics: bool,
}

impl<P, C> std::fmt::Debug for HedgeBuilder<P, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeBuilder")
            .field("name", &self.name)
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl<P, C> HedgeBuilder<P, C> {
    /// When to hedge. Default: the observed 95th percentile, at least 1 ms.
    pub fn delay(mut self, delay: HedgeDelay) -> Self {
        self.delay = delay;
        self
    }

    /// Extra attempts per call, at most. Default 1.
    pub fn max_hedges(mut self, n: u32) -> Self {
        self.max_hedges = n;
        self
    }

    /// Spends from this budget (share a retry layer's, which its successes fund).
    /// Default: a budget of its own with [`BudgetConfig`]'s defaults, funded by this
    /// layer's successful calls.
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Replays requests with `protocol` instead of [`CloneRequests`].
    pub fn protocol<P2>(self, protocol: P2) -> HedgeBuilder<P2, C> {
        HedgeBuilder {
            name: self.name,
            delay: self.delay,
            max_hedges: self.max_hedges,
            budget: self.budget,
            protocol,
            classify: self.classify,
            metrics: self.metrics,
        }
    }

    /// Classifies answers with `classify` (a failed answer does not win).
    pub fn classify<C2>(self, classify: C2) -> HedgeBuilder<P, C2> {
        HedgeBuilder {
            name: self.name,
            delay: self.delay,
            max_hedges: self.max_hedges,
            budget: self.budget,
            protocol: self.protocol,
            classify,
            metrics: self.metrics,
        }
    }

    /// Records no metrics.
    pub fn without_metrics(mut self) -> Self {
        self.metrics = false;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<HedgeLayer<P, C>, ConfigError> {
        let name = Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        if self.max_hedges == 0 || self.max_hedges > 8 {
            return Err(ConfigError::new(
                "max_hedges",
                format!("{} is not within 1..=8", self.max_hedges),
            ));
        }
        let latencies = match self.delay {
            HedgeDelay::Fixed(d) if d.is_zero() => {
                return Err(ConfigError::new("delay", "must be greater than zero"));
            }
            HedgeDelay::Fixed(d) if d > MAX_HEDGE_DELAY => {
                return Err(ConfigError::new(
                    "delay",
                    format!("{d:?} is longer than an hour"),
                ));
            }
            HedgeDelay::Fixed(_) => None,
            HedgeDelay::Percentile { min, .. } if min > MAX_HEDGE_DELAY => {
                return Err(ConfigError::new(
                    "delay.min",
                    format!("{min:?} is longer than an hour"),
                ));
            }
            HedgeDelay::Percentile { percentile, .. } => {
                if !(percentile > 0.0 && percentile < 1.0) {
                    return Err(ConfigError::new(
                        "delay.percentile",
                        format!("{percentile} is not within 0 < p < 1"),
                    ));
                }
                Some(Latencies::new())
            }
        };
        let owns_budget = self.budget.is_none();
        let budget = match self.budget {
            Some(b) => b,
            None => Arc::new(RetryBudget::new(&BudgetConfig::default())?),
        };
        let (sent, won) = if self.metrics {
            let scope = MetricScope::new("retry", name.clone());
            (
                scope.counter("hedges_sent", "Hedged attempts sent."),
                scope.counter("hedges_won", "Calls answered by a hedged attempt."),
            )
        } else {
            (Counter::noop(), Counter::noop())
        };
        Ok(HedgeLayer {
            shared: Arc::new(HedgeShared {
                name,
                delay: self.delay,
                max_hedges: self.max_hedges,
                budget,
                owns_budget,
                latencies,
                sent,
                won,
            }),
            protocol: self.protocol,
            classify: self.classify,
        })
    }
}

impl<P, C> HedgeLayer<P, C> {
    /// The budget each hedge withdraws from: the one given to
    /// [`HedgeBuilder::budget`] (a retry layer's), or the layer's own.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.shared.budget
    }
}

impl<S: Clone, P: Clone, C: Clone> Layer<S> for HedgeLayer<P, C> {
    type Service = Hedge<S, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge {
            core: Core::lanes(Arc::clone(&self.shared), &inner),
            inner,
            protocol: self.protocol.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// The service of [`HedgeLayer`]. The first attempt goes to the service made ready;
/// a call that hedges takes a clone of the inner service then, so a call answered
/// before the hedge delay clones nothing.
pub struct Hedge<S, P, C> {
    inner: S,
    core: Lanes<Core<HedgeShared, S>>,
    protocol: P,
    classify: C,
}

impl<S: Clone, P: Clone, C: Clone> Clone for Hedge<S, P, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            core: self.core.clone(),
            protocol: self.protocol.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<S: std::fmt::Debug, P, C> std::fmt::Debug for Hedge<S, P, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .field("name", &self.core.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S, P, C, Req> Service<Req> for Hedge<S, P, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError> + 'static,
    P: Protocol<Req, S::Response> + Clone,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = HedgeFuture<S, Req, P, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_service)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.core.shared;
        let delay = shared.delay();
        let replay = delay.and_then(|_| self.protocol.replay(&req));
        let primary = self.inner.call(req);
        let timer = match (&replay, delay) {
            (Some(_), Some(d)) => Some(tokio::time::sleep(d)),
            _ => None,
        };
        HedgeFuture {
            primary: Some(primary),
            hedges: Vec::new(),
            timer,
            delay: delay.unwrap_or_default(),
            service: None,
            replay,
            hedges_left: shared.max_hedges,
            started: shared.latencies.as_ref().map(|_| Instant::now()),
            last_failure: None,
            core: self.core.pick(),
            classify: self.classify.clone(),
            protocol: self.protocol.clone(),
        }
    }
}

/// The response future of [`Hedge`].
#[pin_project]
pub struct HedgeFuture<S, Req, P, C>
where
    S: Service<Req>,
{
    #[pin]
    primary: Option<S::Future>,
    /// Hedges in flight, each with the budget token it took (given back if a layer
    /// below refuses to send it).
    hedges: Vec<(Pin<Box<S::Future>>, Token)>,
    #[pin]
    timer: Option<Sleep>,
    delay: Duration,
    /// The service for hedged attempts, taken when the first hedge is sent.
    service: Option<Box<S>>,
    replay: Option<Req>,
    hedges_left: u32,
    started: Option<Instant>,
    last_failure: Option<Result<S::Response, S::Error>>,
    core: Arc<Lane<Core<HedgeShared, S>>>,
    classify: C,
    protocol: P,
}

impl<S, Req, P, C> std::fmt::Debug for HedgeFuture<S, Req, P, C>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeFuture")
            .field("hedges", &self.hedges.len())
            .finish_non_exhaustive()
    }
}

impl<S, Req, P, C> Future for HedgeFuture<S, Req, P, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError> + 'static,
    P: Protocol<Req, S::Response>,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The primary attempt.
        if let Some(primary) = this.primary.as_mut().as_pin_mut()
            && let Poll::Ready(result) = primary.poll(cx)
        {
            this.primary.set(None);
            if let Some(done) = settle(&this.core.shared, this.classify, result, this.last_failure)
            {
                if let (Some(start), Some(l), HedgeDelay::Percentile { percentile, .. }) = (
                    this.started,
                    &this.core.shared.latencies,
                    this.core.shared.delay,
                ) {
                    l.record(start.elapsed(), percentile);
                }
                return Poll::Ready(done.map_err(Error::from_service));
            }
        }
        // Hedged attempts.
        let mut i = 0;
        while i < this.hedges.len() {
            if let Poll::Ready(result) = this.hedges[i].0.as_mut().poll(cx) {
                let (_, token) = this.hedges.swap_remove(i);
                if result.as_ref().is_err_and(refused_unsent) {
                    this.core.shared.budget.give_back(token);
                }
                if let Some(done) =
                    settle_hedge(&this.core.shared, this.classify, result, this.last_failure)
                {
                    this.core.shared.won.increment(1);
                    // The primary was slower than this: record what it took so far.
                    if let (Some(start), Some(l), HedgeDelay::Percentile { percentile, .. }) = (
                        this.started,
                        &this.core.shared.latencies,
                        this.core.shared.delay,
                    ) {
                        l.record(start.elapsed(), percentile);
                    }
                    return Poll::Ready(done.map_err(Error::from_service));
                }
                continue;
            }
            i += 1;
        }
        // Time for another hedge?
        while let Some(timer) = this.timer.as_mut().as_pin_mut() {
            if timer.poll(cx).is_pending() {
                break;
            }
            if *this.hedges_left == 0 || this.replay.is_none() {
                this.timer.set(None);
                break;
            }
            let core = &this.core;
            let service = this.service.get_or_insert_with(|| Box::new(core.service()));
            // Readiness first, so a hedge that cannot go out spends no budget.
            let ready = matches!(service.poll_ready(cx), Poll::Ready(Ok(())));
            let token = if ready {
                this.core.shared.budget.take()
            } else {
                None
            };
            // Not ready or broken, or no budget: no hedge now; the attempts in flight
            // decide. The service goes, with whatever its readiness holds (a queue
            // place, a probe slot, a waiter's turn), rather than keep it until the
            // call ends.
            let Some(token) = token else {
                *this.service = None;
                this.timer.set(None);
                break;
            };
            *this.hedges_left -= 1;
            // Keep the copy for a further hedge while one may follow.
            let req = if *this.hedges_left > 0 {
                this.replay.as_ref().and_then(|r| this.protocol.replay(r))
            } else {
                this.replay.take()
            };
            let Some(req) = req else {
                // Made ready for a call that will not come: let its capacity go.
                this.core.shared.budget.give_back(token);
                *this.service = None;
                this.timer.set(None);
                break;
            };
            this.core.shared.sent.increment(1);
            let mut fut = Box::pin(service.call(req));
            match fut.as_mut().poll(cx) {
                Poll::Ready(result) => {
                    if result.as_ref().is_err_and(refused_unsent) {
                        this.core.shared.budget.give_back(token);
                    }
                    if let Some(done) =
                        settle_hedge(&this.core.shared, this.classify, result, this.last_failure)
                    {
                        this.core.shared.won.increment(1);
                        return Poll::Ready(done.map_err(Error::from_service));
                    }
                }
                Poll::Pending => this.hedges.push((fut, token)),
            }
            if *this.hedges_left > 0 && this.replay.is_some() {
                // The delay is at most an hour (checked when built).
                if let (Some(next), Some(t)) = (
                    Instant::now().checked_add(*this.delay),
                    this.timer.as_mut().as_pin_mut(),
                ) {
                    t.reset(next);
                }
            } else {
                this.timer.set(None);
            }
        }
        if this.primary.is_none() && this.hedges.is_empty() {
            // Every attempt has failed, and no further hedge will be sent.
            if this.timer.is_none() || this.replay.is_none() {
                return match this.last_failure.take() {
                    Some(result) => Poll::Ready(result.map_err(Error::from_service)),
                    None => Poll::Ready(Err(Error::Inner(
                        "palisade-retry: hedged call ended without an answer".into(),
                    ))),
                };
            }
        }
        Poll::Pending
    }
}

/// [`settle`] for a hedged attempt: one that a Palisade layer below refused
/// (bulkhead full, rate limited, circuit open in half-open…) was never sent, and
/// does not win over the attempts still running; it is kept aside as a failure,
/// unless a real failure is already kept.
fn settle_hedge<C, Res, E>(
    shared: &HedgeShared,
    classify: &C,
    result: Result<Res, E>,
    last_failure: &mut Option<Result<Res, E>>,
) -> Option<Result<Res, E>>
where
    C: Classify<Res, E>,
    E: 'static,
{
    if let Err(e) = &result
        && palisade_core::rejection_of(e).is_some_and(|r| !r.kind().is_downstream_failure())
    {
        if last_failure.is_none() {
            *last_failure = Some(result);
        }
        return None;
    }
    settle(shared, classify, result, last_failure)
}

/// Keeps a failed result aside (returning `None`), or returns a winning one.
fn settle<C, Res, E>(
    shared: &HedgeShared,
    classify: &C,
    result: Result<Res, E>,
    last_failure: &mut Option<Result<Res, E>>,
) -> Option<Result<Res, E>>
where
    C: Classify<Res, E>,
    E: 'static,
{
    match classify.classify(result.as_ref()) {
        Outcome::Failure(_) => {
            *last_failure = Some(result);
            None
        }
        Outcome::Success => {
            if shared.owns_budget {
                shared.budget.deposit();
            }
            Some(result)
        }
        Outcome::Ignored => Some(result),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_ordered_and_bound_their_values() {
        for us in [1u64, 2, 3, 5, 7, 8, 100, 1_000, 123_456, 10_000_000] {
            let b = Latencies::bucket_of(us);
            assert!(Latencies::bucket_upper(b) >= us, "{us} µs in bucket {b}");
            if b > 0 {
                assert!(Latencies::bucket_upper(b - 1) <= us.max(1) * 2);
            }
        }
        let l = Latencies::new();
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms), 0.95);
        }
        for _ in 0..28 {
            l.record(Duration::from_millis(50), 0.95);
        }
        let p95 = Duration::from_micros(l.percentile_us(0.95));
        assert!(
            p95 >= Duration::from_millis(90) && p95 <= Duration::from_millis(120),
            "{p95:?}"
        );
    }
}
