//! The metrics the fault layer records.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `palisade_fault_injected_total` | counter | `downstream`, `kind` = latency, error, abort | faults injected by a [`FaultLayer`](crate::FaultLayer): requests delayed, answered with an injected error, or failed with an injected connection failure (a delayed request that is then failed counts under both) |
//!
//! Every series is registered at zero when the layer is built, so install a recorder
//! first. `downstream` is the layer's checked name; `kind` has the closed set above.

use palisade_core::Name;
use palisade_core::observe::{CounterSet, LabelValue, MetricScope};

/// A kind of injected fault, the `kind` label of `palisade_fault_injected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The request was delayed.
    Latency,
    /// The request was answered with an injected error.
    Error,
    /// The request failed with an injected connection failure.
    Abort,
}

impl LabelValue for FaultKind {
    const LABEL: &'static str = "kind";
    const ALL: &'static [Self] = &[FaultKind::Latency, FaultKind::Error, FaultKind::Abort];
    fn as_label(self) -> &'static str {
        match self {
            FaultKind::Latency => "latency",
            FaultKind::Error => "error",
            FaultKind::Abort => "abort",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Registered handles of one `FaultLayer`.
#[derive(Debug)]
pub(crate) struct FaultMetrics {
    injected: CounterSet<FaultKind>,
}

impl FaultMetrics {
    pub(crate) fn register(name: &Name) -> Self {
        let scope = MetricScope::new("fault", name.clone());
        Self {
            injected: scope.counter_set("injected", "Faults injected, by kind."),
        }
    }

    #[inline]
    pub(crate) fn injected(&self, kind: FaultKind) {
        self.injected.get(kind).increment(1);
    }
}
