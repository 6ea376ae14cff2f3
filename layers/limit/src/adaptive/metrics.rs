//! Events an adaptive limiter reports, and the metrics it records.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `palisade_adaptive_limit` | gauge | `downstream` | the concurrency limit in force |
//! | `palisade_adaptive_in_flight` | gauge | `downstream` | calls holding a permit (admitted and not finished) |
//! | `palisade_adaptive_min_rtt_seconds` | gauge | `downstream` | the smallest RTT of a successful call since the last reset (0 while unknown) |
//! | `palisade_adaptive_calls_total` | counter | `downstream`, `outcome` = permitted, rejected | calls let through or refused |
//!
//! Every series is registered at zero when the limiter is built (the limit gauge then
//! holds the initial limit). Recording is an atomic operation on a registered handle:
//! nothing is allocated per call.

use metrics::Gauge;
use palisade_core::Name;
use palisade_core::observe::{CounterSet, LabelValue, MetricScope};

/// What an adaptive limiter reports to its observers.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdaptiveEvent {
    /// The concurrency limit changed (by the algorithm or by hand).
    LimitChanged {
        /// The limit before.
        from: u32,
        /// The limit now.
        to: u32,
    },
    /// A call was refused because the limit was reached.
    Rejected {
        /// Calls in flight when it was refused.
        in_flight: u32,
        /// The limit then.
        limit: u32,
    },
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum CallLabel {
    Permitted,
    Rejected,
}

impl LabelValue for CallLabel {
    const LABEL: &'static str = "outcome";
    const ALL: &'static [Self] = &[CallLabel::Permitted, CallLabel::Rejected];
    fn as_label(self) -> &'static str {
        match self {
            CallLabel::Permitted => "permitted",
            CallLabel::Rejected => "rejected",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Registered metric handles of one adaptive limiter.
#[derive(Debug)]
pub(crate) struct AdaptiveMetrics {
    pub(crate) limit: Gauge,
    pub(crate) in_flight: Gauge,
    pub(crate) min_rtt: Gauge,
    pub(crate) calls: CounterSet<CallLabel>,
}

impl AdaptiveMetrics {
    /// Registers every series at zero.
    pub(crate) fn register(name: &Name) -> Self {
        let scope = MetricScope::new("adaptive", name.clone());
        Self {
            limit: scope.gauge(
                "limit",
                None,
                "The adaptive concurrency limit in force.",
            ),
            in_flight: scope.gauge(
                "in_flight",
                None,
                "Calls holding a permit of the adaptive limiter.",
            ),
            min_rtt: scope.gauge(
                "min_rtt",
                Some("seconds"),
                "The smallest round-trip time of a successful call since the last reset (0 while unknown).",
            ),
            calls: scope.counter_set(
                "calls",
                "Calls let through (permitted) or refused (rejected) by the adaptive limiter.",
            ),
        }
    }
}
