use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use palisade_core::window::{Sample, TimeWindow};

use crate::config::{BalanceConfig, LoadMetric};

/// Makes the service that talks to one endpoint, from its address.
///
/// The balancer calls it once per discovered address and clones the service for each
/// request, so the service should be cheap to clone (a hyper client is). Implemented
/// for closures `Fn(SocketAddr) -> S`.
///
/// ```
/// use palisade_balance::MakeEndpoint;
/// use std::net::SocketAddr;
///
/// let make = |addr: SocketAddr| tower::service_fn(move |_: ()| async move {
///     Ok::<_, std::io::Error>(addr.port())
/// });
/// let _svc = make.make_endpoint("127.0.0.1:8080".parse().unwrap());
/// ```
pub trait MakeEndpoint {
    /// The service for one endpoint.
    type Service;
    /// Makes the service for the endpoint at `addr`.
    fn make_endpoint(&self, addr: SocketAddr) -> Self::Service;
}

impl<F, S> MakeEndpoint for F
where
    F: Fn(SocketAddr) -> S,
{
    type Service = S;
    fn make_endpoint(&self, addr: SocketAddr) -> S {
        self(addr)
    }
}

/// `ejected_until` value meaning "not ejected".
pub(crate) const NOT_EJECTED: u64 = 0;
/// `slow_start_from` value meaning "not in slow start".
pub(crate) const NO_SLOW_START: u64 = u64::MAX;

/// The latency and failure bookkeeping of one endpoint.
struct Stats {
    /// Peak-EWMA latency estimate in nanoseconds; `None` before the first response.
    cost: Option<f64>,
    /// When `cost` was last decayed or updated.
    stamp: u64,
    consecutive_failures: u32,
    /// Ejections in a row; the next ejection lasts `base × (this + 1)`.
    ejections: u32,
    /// When the endpoint last came back from an ejection (0: never ejected).
    returned_at: u64,
}

/// One endpoint: its service, its load and its health.
pub(crate) struct Endpoint<S> {
    pub(crate) addr: SocketAddr,
    pub(crate) service: S,
    pending: AtomicU32,
    stats: Mutex<Stats>,
    window: Option<TimeWindow>,
    /// Clock nanos until which the endpoint is ejected, or [`NOT_EJECTED`]. Written
    /// only under the balancer's table lock.
    pub(crate) ejected_until: AtomicU64,
    /// Clock nanos when slow start began, or [`NO_SLOW_START`].
    pub(crate) slow_start_from: AtomicU64,
    /// Set when discovery removed the endpoint; a late response must not act on it.
    pub(crate) removed: AtomicBool,
}

/// What a response did to an endpoint's failure detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tripped {
    No,
    ConsecutiveFailures,
    FailureRate,
}

impl<S> Endpoint<S> {
    pub(crate) fn new(
        addr: SocketAddr,
        service: S,
        config: &BalanceConfig,
        slow_start_from: u64,
    ) -> Self {
        let window = config.outlier.failure_rate.map(|_| {
            let bucket = (config.outlier.failure_rate_interval.as_nanos() / 10) as u64;
            TimeWindow::new(10, bucket.max(1)).expect("10 buckets of a non-zero width")
        });
        Self {
            addr,
            service,
            pending: AtomicU32::new(0),
            stats: Mutex::new(Stats {
                cost: None,
                stamp: 0,
                consecutive_failures: 0,
                ejections: 0,
                returned_at: 0,
            }),
            window,
            ejected_until: AtomicU64::new(NOT_EJECTED),
            slow_start_from: AtomicU64::new(slow_start_from),
            removed: AtomicBool::new(false),
        }
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        // A panic while holding this lock leaves plain numbers behind: still usable.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Acquire) != NOT_EJECTED
    }

    pub(crate) fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    pub(crate) fn start(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn finish(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    /// The load P2C compares: lower is better. `unmeasured` is the latency assumed
    /// for an endpoint with no response yet.
    pub(crate) fn load(&self, config: &BalanceConfig, now: u64, unmeasured: f64) -> f64 {
        let pending = f64::from(self.pending());
        match config.load {
            LoadMetric::PendingRequests => pending,
            LoadMetric::PeakEwma => {
                let mut stats = self.stats();
                let cost = match stats.cost {
                    None => unmeasured,
                    Some(cost) => {
                        let decayed = cost * decay_factor(config, now, stats.stamp);
                        stats.cost = Some(decayed);
                        stats.stamp = now;
                        decayed
                    }
                };
                cost * (pending + 1.0)
            }
        }
    }

    /// The share of its full traffic the endpoint takes now (1 outside slow start).
    pub(crate) fn weight(&self, config: &BalanceConfig, now: u64) -> f64 {
        let from = self.slow_start_from.load(Ordering::Relaxed);
        if from == NO_SLOW_START {
            return 1.0;
        }
        let window = config.slow_start.window.as_nanos() as f64;
        let progress = (now.saturating_sub(from) as f64 / window).min(1.0);
        let min = config.slow_start.min_weight;
        min + (1.0 - min) * progress
    }

    /// Records one response and says whether a detector tripped.
    pub(crate) fn record(
        &self,
        config: &BalanceConfig,
        failed: Option<bool>,
        latency_nanos: u64,
        now: u64,
    ) -> Tripped {
        let mut stats = self.stats();
        let mut rtt = latency_nanos as f64;
        if failed == Some(true) && !config.failure_penalty.is_zero() {
            rtt = rtt.max(config.failure_penalty.as_nanos() as f64);
        }
        stats.cost = Some(match stats.cost {
            Some(cost) if cost >= rtt => {
                let w = decay_factor(config, now, stats.stamp);
                cost * w + rtt * (1.0 - w)
            }
            // A peak counts at once.
            _ => rtt,
        });
        stats.stamp = now;
        let Some(failed) = failed else {
            return Tripped::No;
        };
        if let Some(window) = &self.window {
            window.record(
                now,
                Sample {
                    failure: failed,
                    slow: false,
                },
            );
        }
        if !failed {
            stats.consecutive_failures = 0;
            return Tripped::No;
        }
        stats.consecutive_failures = stats.consecutive_failures.saturating_add(1);
        let limit = config.outlier.consecutive_failures;
        if limit > 0 && stats.consecutive_failures >= limit {
            return Tripped::ConsecutiveFailures;
        }
        if let (Some(rate), Some(window)) = (config.outlier.failure_rate, &self.window) {
            let snap = window.snapshot(now);
            if snap.calls >= config.outlier.failure_rate_min_calls && snap.failure_rate() >= rate {
                return Tripped::FailureRate;
            }
        }
        Tripped::No
    }

    /// Marks the endpoint ejected and returns until when. Called under the table lock.
    pub(crate) fn eject(&self, config: &BalanceConfig, now: u64) -> u64 {
        let mut stats = self.stats();
        let o = &config.outlier;
        let max = o.max_ejection_time.as_nanos() as u64;
        // Healthy for as long as the longest ejection: start counting afresh.
        if stats.returned_at != 0 && now.saturating_sub(stats.returned_at) >= max {
            stats.ejections = 0;
        }
        stats.ejections = stats.ejections.saturating_add(1);
        let base = o.base_ejection_time.as_nanos() as u64;
        let duration = base.saturating_mul(u64::from(stats.ejections)).min(max);
        stats.consecutive_failures = 0;
        if let Some(window) = &self.window {
            window.reset();
        }
        let until = now.saturating_add(duration).max(1);
        self.ejected_until.store(until, Ordering::Release);
        until
    }

    /// Brings the endpoint back from ejection. Called under the table lock.
    pub(crate) fn unject(&self, now: u64, slow_start: bool) {
        let mut stats = self.stats();
        stats.returned_at = now.max(1);
        // Forget the failures' latency penalty: it described the endpoint as it was.
        stats.cost = None;
        stats.consecutive_failures = 0;
        if slow_start {
            self.slow_start_from.store(now, Ordering::Relaxed);
        }
        self.ejected_until.store(NOT_EJECTED, Ordering::Release);
    }
}

fn decay_factor(config: &BalanceConfig, now: u64, stamp: u64) -> f64 {
    let elapsed = now.saturating_sub(stamp) as f64;
    (-elapsed / config.decay.as_nanos() as f64).exp()
}
