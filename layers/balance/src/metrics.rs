//! The balancer's and the discovery sources' metrics.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `palisade_balance_endpoints` | gauge | `downstream`, `state` = ready, ejected, slow_start | endpoints known, by state |
//! | `palisade_balance_ejections_total` | counter | `downstream`, `detector` = consecutive_failures, failure_rate | endpoints ejected, by the detector that fired |
//! | `palisade_balance_panic_mode` | gauge | `downstream` | 1 while balancing over every endpoint because too few are healthy |
//! | `palisade_balance_requests_total` | counter | `downstream`, `outcome` = success, failure, ignored, no_endpoints | requests through the balancer, by outcome |
//! | `palisade_discovery_updates_total` | counter | `downstream`, `source` = static, registry, file, dns, etcd | endpoint sets a source published |
//! | `palisade_discovery_errors_total` | counter | `downstream`, `source` | failed reads of the source (unreachable, malformed) |
//! | `palisade_discovery_last_update_timestamp_seconds` | gauge | `downstream` | Unix time of the last successful read |
//! | `palisade_discovery_stale` | gauge | `downstream` | 1 while the last known set is served because the source cannot be read |
//!
//! There are no per-endpoint labels: an endpoint's address would make the series
//! count grow with every replica ever seen.

use metrics::Gauge;
use palisade_core::Name;
use palisade_core::observe::{CounterSet, GaugeSet, LabelValue, MetricScope};

macro_rules! closed_label {
    ($(#[$doc:meta])* $name:ident, $label:literal, { $($(#[$vdoc:meta])* $variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }
        impl LabelValue for $name {
            const LABEL: &'static str = $label;
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn as_label(self) -> &'static str {
                match self { $($name::$variant => $value),+ }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

closed_label!(
    /// An endpoint's state, as the `state` label shows it.
    EndpointState, "state", {
    /// In rotation at full weight.
    Ready => "ready",
    /// Out of rotation for failing, until its ejection ends.
    Ejected => "ejected",
    /// In rotation, ramping up its share of traffic.
    SlowStart => "slow_start",
});

closed_label!(
    /// The outlier detector that ejected an endpoint.
    Detector, "detector", {
    /// Too many failures in a row.
    ConsecutiveFailures => "consecutive_failures",
    /// Too high a failure rate over the window.
    FailureRate => "failure_rate",
});

closed_label!(
    /// How a request through the balancer ended, as the `outcome` label shows it.
    RequestOutcome, "outcome", {
    /// The endpoint answered and the classifier called it a success.
    Success => "success",
    /// The endpoint failed.
    Failure => "failure",
    /// The classifier ignored the result (a 4xx).
    Ignored => "ignored",
    /// Refused: no endpoint was available.
    NoEndpoints => "no_endpoints",
});

closed_label!(
    /// Where a discovery source reads its endpoints from.
    SourceKind, "source", {
    /// A fixed list.
    Static => "static",
    /// The in-process registry.
    Registry => "registry",
    /// A watched file.
    File => "file",
    /// DNS.
    Dns => "dns",
    /// etcd.
    Etcd => "etcd",
});

pub(crate) struct BalanceMetrics {
    pub(crate) endpoints: GaugeSet<EndpointState>,
    pub(crate) ejections: CounterSet<Detector>,
    pub(crate) panic_mode: Gauge,
    pub(crate) requests: CounterSet<RequestOutcome>,
}

impl BalanceMetrics {
    pub(crate) fn new(name: &Name) -> Self {
        let scope = MetricScope::new("balance", name.clone());
        Self {
            endpoints: scope.gauge_set("endpoints", None, "Endpoints known, by state."),
            ejections: scope.counter_set("ejections", "Endpoints ejected, by detector."),
            panic_mode: scope.gauge(
                "panic_mode",
                None,
                "1 while balancing over every endpoint because too few are healthy.",
            ),
            requests: scope.counter_set("requests", "Requests through the balancer, by outcome."),
        }
    }
}

/// A discovery source's metrics: updates, errors, last update time and staleness.
///
/// Sources in this crate record them themselves; a source of your own can use this
/// handle too.
#[derive(Clone)]
pub struct DiscoveryMetrics {
    kind: SourceKind,
    updates: std::sync::Arc<CounterSet<SourceKind>>,
    errors: std::sync::Arc<CounterSet<SourceKind>>,
    last_update: Gauge,
    stale: Gauge,
}

impl std::fmt::Debug for DiscoveryMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryMetrics")
            .field("source", &self.kind.as_label())
            .finish_non_exhaustive()
    }
}

impl DiscoveryMetrics {
    /// Registers the discovery metrics of downstream `name` read from a `kind` source.
    pub fn new(name: &Name, kind: SourceKind) -> Self {
        let scope = MetricScope::new("discovery", name.clone());
        Self {
            kind,
            updates: std::sync::Arc::new(
                scope.counter_set("updates", "Endpoint sets a discovery source published."),
            ),
            errors: std::sync::Arc::new(
                scope.counter_set("errors", "Failed reads of a discovery source."),
            ),
            last_update: scope.gauge(
                "last_update_timestamp",
                Some("seconds"),
                "Unix time of the last successful read of the discovery source.",
            ),
            stale: scope.gauge(
                "stale",
                None,
                "1 while the last known endpoints are served because the source cannot be read.",
            ),
        }
    }

    /// A successful read: counts an update, stamps the time, clears staleness.
    pub fn updated(&self) {
        self.updates.get(self.kind).increment(1);
        self.last_update.set(unix_now_secs());
        self.stale.set(0.0);
    }

    /// A successful read that found nothing new: stamps the time, clears staleness.
    pub fn confirmed(&self) {
        self.last_update.set(unix_now_secs());
        self.stale.set(0.0);
    }

    /// A read that found the same unusable content as before: still stale, but not
    /// counted again.
    pub fn still_stale(&self) {
        self.stale.set(1.0);
    }

    /// A failed read (the source is unreachable, or what it holds is malformed):
    /// counts the error and marks the served set stale.
    pub fn failed(&self) {
        self.errors.get(self.kind).increment(1);
        self.stale.set(1.0);
    }
}

/// A Unix timestamp is wall-clock by nature; it is only reported, never used to
/// decide anything, so paused-time tests are not affected.
#[allow(clippy::disallowed_methods)]
fn unix_now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
