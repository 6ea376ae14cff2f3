//! State shared by every clone of one adaptive limiter: the lock-free permit
//! counter, the algorithm behind its short lock, the minimum RTT, metrics and
//! observers.
//!
//! Why a lock around the algorithm: admission and release must be lock-free, and
//! they are (two atomics, below). The algorithm's update reads and writes several
//! floating-point values together (a smoothed limit, RTT averages), and user
//! algorithms keep arbitrary state; packing that into atomics would constrain every
//! algorithm for no gain, because an update runs once per completed call and takes
//! well under a microsecond. So a `std::sync::Mutex` guards the algorithm and its
//! estimate, held only for the update (never across an `.await`, and never on the
//! admission path), and the integer limit it decides is published to an atomic that
//! admission reads.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use palisade_core::observe::Observers;
use palisade_core::{ConfigError, Name, Rejection, RejectionKind};

use super::algorithm::{DynAlgorithm, Sample};
use super::metrics::{AdaptiveEvent, AdaptiveMetrics, CallLabel};
use super::sync::{AtomicU32, Ordering};
use std::sync::atomic::AtomicU64;

/// The permit counter: calls in flight and the limit they must stay under.
#[derive(Debug)]
pub(crate) struct Permits {
    // Written by every admission and release; the limit is read by every admission
    // and written rarely: separate cache lines.
    in_flight: CachePadded<AtomicU32>,
    limit: CachePadded<AtomicU32>,
}

impl Permits {
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            in_flight: CachePadded::new(AtomicU32::new(0)),
            limit: CachePadded::new(AtomicU32::new(limit)),
        }
    }

    /// Takes a permit if fewer than `limit` calls are in flight: the calls in flight
    /// with this one, or the calls in flight and the limit that refused it.
    #[inline]
    pub(crate) fn try_acquire(&self) -> Result<u32, (u32, u32)> {
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            let limit = self.limit.load(Ordering::Relaxed);
            if current >= limit {
                return Err((current, limit));
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(current + 1),
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives a permit back.
    #[inline]
    pub(crate) fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    /// Publishes a new limit; returns the previous one.
    pub(crate) fn set_limit(&self, limit: u32) -> u32 {
        self.limit.swap(limit, Ordering::AcqRel)
    }
}

/// The algorithm and the unrounded limit it works on.
struct Estimator {
    limit: f64,
    algorithm: Box<dyn DynAlgorithm>,
}

/// The minimum RTT's "none yet" value.
const NO_RTT: u64 = u64::MAX;

pub(crate) struct Shared {
    pub(crate) name: Name,
    pub(crate) permits: Permits,
    pub(crate) min_limit: u32,
    pub(crate) max_limit: u32,
    rejection: RejectionKind,
    min_rtt_nanos: AtomicU64,
    estimator: Mutex<Estimator>,
    metrics: Option<AdaptiveMetrics>,
    observers: Observers<AdaptiveEvent>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("limit", &self.permits.limit())
            .field("in_flight", &self.permits.in_flight())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Settings {
    pub(crate) name: Name,
    pub(crate) algorithm: Box<dyn DynAlgorithm>,
    pub(crate) min_limit: u32,
    pub(crate) max_limit: u32,
    pub(crate) initial_limit: u32,
    pub(crate) rejection: RejectionKind,
    pub(crate) metrics: Option<AdaptiveMetrics>,
    pub(crate) observers: Observers<AdaptiveEvent>,
}

/// Whether a service clone may call: decided in `poll_ready`, used in `call`.
pub(crate) enum Admission {
    Admitted(Permit),
    Refused { in_flight: u32, limit: u32 },
}

impl Shared {
    pub(crate) fn new(s: Settings) -> Arc<Self> {
        if let Some(m) = &s.metrics {
            m.limit.set(f64::from(s.initial_limit));
        }
        Arc::new(Self {
            name: s.name,
            permits: Permits::new(s.initial_limit),
            min_limit: s.min_limit,
            max_limit: s.max_limit,
            rejection: s.rejection,
            min_rtt_nanos: AtomicU64::new(NO_RTT),
            estimator: Mutex::new(Estimator {
                limit: f64::from(s.initial_limit),
                algorithm: s.algorithm,
            }),
            metrics: s.metrics,
            observers: s.observers,
        })
    }

    /// Admission: one compare-and-swap below the limit, no lock, no allocation.
    #[inline]
    pub(crate) fn admit(self: &Arc<Self>) -> Admission {
        match self.permits.try_acquire() {
            Ok(in_flight) => {
                if let Some(m) = &self.metrics {
                    m.in_flight.increment(1.0);
                }
                Admission::Admitted(Permit {
                    shared: Arc::clone(self),
                    in_flight,
                })
            }
            Err((in_flight, limit)) => Admission::Refused { in_flight, limit },
        }
    }

    /// Counts a call let through.
    #[inline]
    pub(crate) fn permitted(&self) {
        if let Some(m) = &self.metrics {
            m.calls.get(CallLabel::Permitted).increment(1);
        }
    }

    /// The rejection of a refused call (and counts it).
    pub(crate) fn refusal(&self, in_flight: u32, limit: u32) -> Rejection {
        if let Some(m) = &self.metrics {
            m.calls.get(CallLabel::Rejected).increment(1);
        }
        if !self.observers.is_empty() {
            self.observers
                .emit(&AdaptiveEvent::Rejected { in_flight, limit });
        }
        Rejection::new(self.rejection).with_downstream(self.name.clone())
    }

    #[inline]
    fn release(&self) {
        self.permits.release();
        if let Some(m) = &self.metrics {
            m.in_flight.decrement(1.0);
        }
    }

    /// Feeds one completed call to the algorithm.
    fn record(&self, in_flight: u32, rtt: Duration, dropped: bool) {
        let mut sample = Sample::new(rtt, in_flight, dropped);
        if let Some(min) = self.observe_rtt(rtt, dropped) {
            sample = sample.with_min_rtt(min);
        }
        let change = {
            let mut est = self
                .estimator
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let current = est.limit;
            let next = est.algorithm.update(current, &sample);
            if next.is_finite() {
                est.limit = next.clamp(f64::from(self.min_limit), f64::from(self.max_limit));
            }
            self.publish(est.limit)
        };
        if let Some((from, to)) = change {
            self.report_change(from, to);
        }
    }

    /// Publishes the rounded-down `limit`; the change, if any. Called under the
    /// estimator's lock, so published limits follow the estimates' order.
    fn publish(&self, limit: f64) -> Option<(u32, u32)> {
        // `as` saturates; the estimate is within the u32 bounds anyway.
        let to = (limit as u32).clamp(self.min_limit, self.max_limit);
        let from = self.permits.set_limit(to);
        if from == to {
            return None;
        }
        if let Some(m) = &self.metrics {
            m.limit.set(f64::from(to));
        }
        Some((from, to))
    }

    fn report_change(&self, from: u32, to: u32) {
        tracing::debug!(downstream = %self.name, from, to, "adaptive limit changed");
        if !self.observers.is_empty() {
            self.observers
                .emit(&AdaptiveEvent::LimitChanged { from, to });
        }
    }

    /// Updates the minimum RTT with a successful call's; the minimum now.
    fn observe_rtt(&self, rtt: Duration, dropped: bool) -> Option<Duration> {
        let current = self.min_rtt_nanos.load(Ordering::Relaxed);
        if dropped {
            // A failure's RTT (a fast error) is no measure of the downstream's best.
            return (current != NO_RTT).then(|| Duration::from_nanos(current));
        }
        let nanos = u64::try_from(rtt.as_nanos()).unwrap_or(NO_RTT - 1);
        if nanos >= current {
            return Some(Duration::from_nanos(current));
        }
        let previous = self.min_rtt_nanos.fetch_min(nanos, Ordering::AcqRel);
        if nanos < previous
            && let Some(m) = &self.metrics
        {
            m.min_rtt.set(rtt.as_secs_f64());
        }
        Some(Duration::from_nanos(nanos.min(previous)))
    }

    pub(crate) fn min_rtt(&self) -> Option<Duration> {
        let nanos = self.min_rtt_nanos.load(Ordering::Acquire);
        (nanos != NO_RTT).then(|| Duration::from_nanos(nanos))
    }

    pub(crate) fn reset_min_rtt(&self) {
        self.min_rtt_nanos.store(NO_RTT, Ordering::Release);
        if let Some(m) = &self.metrics {
            m.min_rtt.set(0.0);
        }
    }

    /// Sets the limit by hand; the algorithm carries on from it.
    pub(crate) fn set_limit(&self, limit: u32) -> Result<(), ConfigError> {
        if limit < self.min_limit || limit > self.max_limit {
            return Err(ConfigError::new(
                "limit",
                format!(
                    "{limit} is not within min_limit..=max_limit ({}..={})",
                    self.min_limit, self.max_limit
                ),
            ));
        }
        let change = {
            let mut est = self
                .estimator
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            est.limit = f64::from(limit);
            self.publish(est.limit)
        };
        if let Some((from, to)) = change {
            self.report_change(from, to);
        }
        Ok(())
    }
}

/// A call's place under the limit, given back when dropped.
pub(crate) struct Permit {
    shared: Arc<Shared>,
    /// Calls in flight when this one was admitted, itself included.
    in_flight: u32,
}

impl Permit {
    /// Records the finished call with the algorithm, then gives the permit back.
    pub(crate) fn complete(self, rtt: Duration, dropped: bool) {
        self.shared.record(self.in_flight, rtt, dropped);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.release();
    }
}

/// Model checks of the permit counter under every interleaving loom can find:
/// `cargo test -p palisade-limit --features loom --release --lib loom_`.
#[cfg(all(test, feature = "loom"))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    #[test]
    fn loom_permits_never_exceed_the_limit() {
        model(|| {
            let permits = Arc::new(Permits::new(1));
            let held = Arc::new(AtomicU32::new(0));
            let use_one = |permits: &Permits, held: &AtomicU32| {
                if permits.try_acquire().is_ok() {
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    assert_eq!(now, 1, "two permits held under a limit of 1");
                    held.fetch_sub(1, Ordering::SeqCst);
                    permits.release();
                }
            };
            let (p, h) = (permits.clone(), held.clone());
            let other = loom::thread::spawn(move || use_one(&p, &h));
            use_one(&permits, &held);
            other.join().unwrap();
            assert_eq!(permits.in_flight(), 0);
        });
    }

    #[test]
    fn loom_lowering_the_limit_admits_no_more_than_before() {
        model(|| {
            let permits = Arc::new(Permits::new(2));
            let p = permits.clone();
            let lower = loom::thread::spawn(move || {
                p.set_limit(1);
            });
            let a = permits.try_acquire();
            let b = permits.try_acquire();
            lower.join().unwrap();
            // Whatever the order, at most two, and after the lowering at most one
            // more is admitted while two are held.
            let admitted = [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count();
            assert!(admitted >= 1);
            assert!(permits.try_acquire().is_err());
        });
    }
}
