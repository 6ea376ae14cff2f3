//! The metrics the fallback, cache and coalescing layers record.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `palisade_fallback_fallbacks_total` | counter | `downstream`, `reason` = failure, circuit_open, rate_limited, bulkhead_full, timeout, deadline_exceeded, budget_exhausted, shed, no_endpoints | fallback responses a [`Fallback`](crate::Fallback) served instead of a classified failure (`failure`) or a Palisade rejection (its kind) |
//! | `palisade_fallback_cache_lookups_total` | counter | `downstream`, `result` = hit, miss, stale | cacheable requests through a [`Cache`](crate::Cache): answered from a fresh entry (`hit`), by the dependency or with its error (`miss`), or from a stale entry because the dependency failed, refused or was already being refreshed (`stale`) |
//! | `palisade_fallback_cache_evictions_total` | counter | `downstream` | entries evicted to keep the cache within its weight bound |
//! | `palisade_fallback_cache_entries` | gauge | `downstream` | entries held by the cache |
//! | `palisade_fallback_stale_age_seconds` | histogram | `downstream` | age (time since it was fetched) of each stale entry served |
//! | `palisade_fallback_coalesced_waiters_total` | counter | `downstream` | requests that joined a call already in flight for the same key instead of making their own |
//! | `palisade_fallback_refreshes_in_flight` | gauge | `downstream` | calls to the dependency a cache or coalescing layer has in flight, at most one per key |
//!
//! Every series is registered at zero when the layer is built, so install a recorder
//! (e.g. `palisade::prometheus::install`) first. No label takes a value from a
//! request: `downstream` is the layer's checked name, every other label has the
//! closed set of values listed here.

use std::fmt;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Unit};
use palisade_core::observe::{CounterSet, LabelValue, MetricScope, metric_name};
use palisade_core::{Name, RejectionKind};

/// Why a fallback response was served: a classified failure of the call, or the kind
/// of Palisade rejection. The `reason` label of `palisade_fallback_fallbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    /// The call failed, as the layer's classifier judged it.
    Failure,
    /// A circuit breaker refused the call.
    CircuitOpen,
    /// A rate limiter refused the call.
    RateLimited,
    /// A bulkhead or concurrency limit was full.
    BulkheadFull,
    /// The call timed out.
    Timeout,
    /// The request's deadline passed or could not be met.
    DeadlineExceeded,
    /// A retry budget refused a retry.
    BudgetExhausted,
    /// The request was shed.
    Shed,
    /// No endpoint was available.
    NoEndpoints,
}

impl FallbackReason {
    /// The reason for a rejection of `kind`.
    pub fn of_rejection(kind: RejectionKind) -> Self {
        match kind {
            RejectionKind::CircuitOpen => FallbackReason::CircuitOpen,
            RejectionKind::RateLimited => FallbackReason::RateLimited,
            RejectionKind::BulkheadFull => FallbackReason::BulkheadFull,
            RejectionKind::Timeout => FallbackReason::Timeout,
            RejectionKind::DeadlineExceeded => FallbackReason::DeadlineExceeded,
            RejectionKind::BudgetExhausted => FallbackReason::BudgetExhausted,
            RejectionKind::Shed => FallbackReason::Shed,
            RejectionKind::NoEndpoints => FallbackReason::NoEndpoints,
            // A kind added to core later: still a refusal, counted as a failure
            // until it gets its own label.
            _ => FallbackReason::Failure,
        }
    }

    /// The label value (also the value of the `x-palisade-fallback` header).
    pub const fn as_str(self) -> &'static str {
        match self {
            FallbackReason::Failure => "failure",
            FallbackReason::CircuitOpen => "circuit_open",
            FallbackReason::RateLimited => "rate_limited",
            FallbackReason::BulkheadFull => "bulkhead_full",
            FallbackReason::Timeout => "timeout",
            FallbackReason::DeadlineExceeded => "deadline_exceeded",
            FallbackReason::BudgetExhausted => "budget_exhausted",
            FallbackReason::Shed => "shed",
            FallbackReason::NoEndpoints => "no_endpoints",
        }
    }
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LabelValue for FallbackReason {
    const LABEL: &'static str = "reason";
    const ALL: &'static [Self] = &[
        FallbackReason::Failure,
        FallbackReason::CircuitOpen,
        FallbackReason::RateLimited,
        FallbackReason::BulkheadFull,
        FallbackReason::Timeout,
        FallbackReason::DeadlineExceeded,
        FallbackReason::BudgetExhausted,
        FallbackReason::Shed,
        FallbackReason::NoEndpoints,
    ];
    fn as_label(self) -> &'static str {
        self.as_str()
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// How a cache lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    Hit,
    Miss,
    Stale,
}

impl LabelValue for Lookup {
    const LABEL: &'static str = "result";
    const ALL: &'static [Self] = &[Lookup::Hit, Lookup::Miss, Lookup::Stale];
    fn as_label(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Stale => "stale",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

static METADATA: Metadata<'static> = Metadata::new("palisade", Level::INFO, Some("palisade"));

/// Registered handles of one `FallbackLayer`.
#[derive(Debug)]
pub(crate) struct FallbackMetrics {
    fallbacks: CounterSet<FallbackReason>,
}

impl FallbackMetrics {
    pub(crate) fn register(name: &Name) -> Self {
        let scope = MetricScope::new("fallback", name.clone());
        Self {
            fallbacks: scope.counter_set(
                "fallbacks",
                "Fallback responses served instead of a failure or a rejection, by reason.",
            ),
        }
    }

    #[inline]
    pub(crate) fn fallback(&self, reason: FallbackReason) {
        self.fallbacks.get(reason).increment(1);
    }
}

/// Handles shared by the cache and coalescing layers: waiters and calls in flight.
#[derive(Debug, Clone)]
pub(crate) struct FlightMetrics {
    pub(crate) coalesced: Counter,
    pub(crate) in_flight: Gauge,
}

impl FlightMetrics {
    pub(crate) fn register(name: &Name) -> Self {
        let scope = MetricScope::new("fallback", name.clone());
        Self {
            coalesced: scope.counter(
                "coalesced_waiters",
                "Requests that joined a call already in flight for the same key.",
            ),
            in_flight: scope.gauge(
                "refreshes_in_flight",
                None,
                "Calls to the dependency in flight, at most one per key.",
            ),
        }
    }
}

/// Registered handles of one `CacheLayer`.
#[derive(Debug)]
pub(crate) struct CacheMetrics {
    lookups: CounterSet<Lookup>,
    pub(crate) evictions: Counter,
    pub(crate) entries: Gauge,
    stale_age: Histogram,
}

impl CacheMetrics {
    pub(crate) fn register(name: &Name) -> Self {
        let scope = MetricScope::new("fallback", name.clone());
        Self {
            lookups: scope.counter_set(
                "cache_lookups",
                "Cacheable requests, by how they were answered: fresh entry, dependency, or stale entry.",
            ),
            evictions: scope.counter(
                "cache_evictions",
                "Cache entries evicted to stay within the weight bound.",
            ),
            entries: scope.gauge("cache_entries", None, "Entries held by the cache."),
            stale_age: register_stale_age(name),
        }
    }

    #[inline]
    pub(crate) fn lookup(&self, result: Lookup) {
        self.lookups.get(result).increment(1);
    }

    #[inline]
    pub(crate) fn stale_served(&self, age: std::time::Duration) {
        self.stale_age.record(age.as_secs_f64());
    }
}

/// `palisade_fallback_stale_age_seconds{downstream}`, registered with the current
/// recorder under Palisade's metadata.
fn register_stale_age(name: &Name) -> Histogram {
    let metric = metric_name("fallback", "stale_age", Some("seconds"), false);
    let key = Key::from_parts(
        metric.clone(),
        vec![Label::new("downstream", name.as_str().to_owned())],
    );
    metrics::with_recorder(|r| {
        r.describe_histogram(
            metric.into(),
            Some(Unit::Seconds),
            "Age of each stale cache entry served.".into(),
        );
        r.register_histogram(&key, &METADATA)
    })
}
