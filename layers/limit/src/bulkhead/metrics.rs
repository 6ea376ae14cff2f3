//! Events a bulkhead reports, and the metrics it records.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `palisade_bulkhead_calls_total` | counter | `downstream`, `outcome` = permitted, rejected_full, rejected_timeout | calls made through the bulkhead: let through (at once or after waiting), refused because the queue was full (or there is none), refused because the wait reached `max_wait` or the request's deadline |
//! | `palisade_bulkhead_in_flight` | gauge | `downstream` | permits held: calls running, plus services made ready and not yet called |
//! | `palisade_bulkhead_queued` | gauge | `downstream` | calls waiting for a permit |
//! | `palisade_bulkhead_limit` | gauge | `downstream` | `max_concurrent` in force |
//! | `palisade_bulkhead_wait_seconds` | histogram | `downstream` | time spent waiting in the queue, for calls that waited (whether the wait ended with a permit or a refusal; an abandoned wait is not recorded) |
//!
//! Counters and gauges are registered at zero when the bulkhead is built, so
//! install a recorder first. The histogram records seconds; its buckets are the
//! exporter's to set (with `metrics-exporter-prometheus`,
//! `PrometheusBuilder::set_buckets_for_metric`, or it renders a summary). No label
//! takes a value from a request. Calls are counted when `call` is made: a service
//! made ready and dropped uncalled counts nothing.

use std::time::Duration;

use metrics::{Gauge, Histogram, Key, Label, Level, Metadata, Unit};
use palisade_core::observe::{CounterSet, LabelValue, MetricScope};
use palisade_core::{Name, RejectionKind};

/// Why a bulkhead refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Every permit was taken and the queue was full (or there is no queue).
    QueueFull,
    /// The call waited `max_wait` without getting a permit.
    MaxWait,
    /// The request's [`Deadline`](palisade_core::Deadline) fell (or had fallen)
    /// before a permit came free.
    Deadline,
}

impl RejectReason {
    /// The kind of the rejection the call fails with:
    /// [`BulkheadFull`](RejectionKind::BulkheadFull), or
    /// [`DeadlineExceeded`](RejectionKind::DeadlineExceeded) for `Deadline`.
    pub const fn kind(self) -> RejectionKind {
        match self {
            RejectReason::QueueFull | RejectReason::MaxWait => RejectionKind::BulkheadFull,
            RejectReason::Deadline => RejectionKind::DeadlineExceeded,
        }
    }
}

/// What a bulkhead reports to its observers.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkheadEvent {
    /// A call was let through, after waiting `waited` (zero if a permit was free).
    Permitted {
        /// Time spent in the queue.
        waited: Duration,
    },
    /// A call was refused.
    Rejected {
        /// Why.
        reason: RejectReason,
        /// Time spent in the queue before the refusal.
        waited: Duration,
    },
    /// `max_concurrent` was changed through the handle.
    LimitChanged {
        /// The previous limit.
        from: u32,
        /// The new limit.
        to: u32,
    },
}

/// How a call through the bulkhead ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    Permitted,
    RejectedFull,
    RejectedTimeout,
}

impl CallOutcome {
    pub(crate) fn of(reason: RejectReason) -> Self {
        match reason {
            RejectReason::QueueFull => CallOutcome::RejectedFull,
            RejectReason::MaxWait | RejectReason::Deadline => CallOutcome::RejectedTimeout,
        }
    }
}

impl LabelValue for CallOutcome {
    const LABEL: &'static str = "outcome";
    const ALL: &'static [Self] = &[
        CallOutcome::Permitted,
        CallOutcome::RejectedFull,
        CallOutcome::RejectedTimeout,
    ];
    fn as_label(self) -> &'static str {
        match self {
            CallOutcome::Permitted => "permitted",
            CallOutcome::RejectedFull => "rejected_full",
            CallOutcome::RejectedTimeout => "rejected_timeout",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

static METADATA: Metadata<'static> = Metadata::new("palisade", Level::INFO, Some("palisade"));

/// Registered metric handles of one bulkhead. Recording is an atomic update.
#[derive(Debug)]
pub(crate) struct BulkheadMetrics {
    calls: CounterSet<CallOutcome>,
    in_flight: Gauge,
    queued: Gauge,
    limit: Gauge,
    wait: Histogram,
}

impl BulkheadMetrics {
    /// Registers every series (counters and gauges at zero) with the current
    /// recorder.
    pub(crate) fn register(name: &Name, limit: u32) -> Self {
        let scope = MetricScope::new("bulkhead", name.clone());
        let metrics = Self {
            calls: scope.counter_set("calls", "Calls through the bulkhead, by outcome."),
            in_flight: scope.gauge(
                "in_flight",
                None,
                "Bulkhead permits held (calls running or made ready).",
            ),
            queued: scope.gauge("queued", None, "Calls waiting for a bulkhead permit."),
            limit: scope.gauge("limit", None, "The bulkhead's max_concurrent in force."),
            wait: register_wait_histogram(name),
        };
        metrics.limit.set(f64::from(limit));
        metrics
    }

    #[inline]
    pub(crate) fn call(&self, outcome: CallOutcome) {
        self.calls.get(outcome).increment(1);
    }

    #[inline]
    pub(crate) fn acquired(&self) {
        self.in_flight.increment(1.0);
    }

    #[inline]
    pub(crate) fn released(&self) {
        self.in_flight.decrement(1.0);
    }

    pub(crate) fn enqueued(&self) {
        self.queued.increment(1.0);
    }

    pub(crate) fn dequeued(&self) {
        self.queued.decrement(1.0);
    }

    pub(crate) fn waited(&self, waited: Duration) {
        self.wait.record(waited.as_secs_f64());
    }

    pub(crate) fn limit(&self, limit: u32) {
        self.limit.set(f64::from(limit));
    }
}

/// `palisade_bulkhead_wait_seconds{downstream}`, registered with the current
/// recorder (as `metrics::histogram!` would, under Palisade's metadata).
fn register_wait_histogram(name: &Name) -> Histogram {
    let metric = palisade_core::observe::metric_name("bulkhead", "wait", Some("seconds"), false);
    let key = Key::from_parts(
        metric.clone(),
        vec![Label::new("downstream", name.as_str().to_owned())],
    );
    metrics::with_recorder(|r| {
        r.describe_histogram(
            metric.into(),
            Some(Unit::Seconds),
            "Time calls waited in the bulkhead's queue.".into(),
        );
        r.register_histogram(&key, &METADATA)
    })
}
