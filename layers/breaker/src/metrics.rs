//! Events a breaker reports, and the metrics it records.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `palisade_breaker_state` | gauge | `downstream`, `state` | breakers of this downstream in each state (1/0 for a plain breaker; a count for keyed breakers) |
//! | `palisade_breaker_calls_total` | counter | `downstream`, `outcome` = success, failure, ignored | calls the breaker let through, by classified outcome |
//! | `palisade_breaker_slow_calls_total` | counter | `downstream`, `outcome` = success, failure | of those, calls at or over `slow_call_duration` |
//! | `palisade_breaker_not_permitted_calls_total` | counter | `downstream` | calls refused (open, forced open, half-open full) |
//! | `palisade_breaker_failure_rate_ratio` | gauge | `downstream` | failure rate of the window (plain breakers only) |
//! | `palisade_breaker_slow_call_rate_ratio` | gauge | `downstream` | slow-call rate of the window (plain breakers only) |
//! | `palisade_breaker_transitions_total` | counter | `downstream`, `from`, `to` | state changes |
//! | `palisade_breaker_last_transition_timestamp_seconds` | gauge | `downstream` | Unix time of the last state change |
//! | `palisade_breaker_keys` | gauge | `downstream` | keys held by a keyed breaker |
//! | `palisade_breaker_key_evictions_total` | counter | `downstream` | keys evicted (idle or to stay within capacity) |
//!
//! Every series is registered at zero when the breaker is built. No label takes a
//! value from a request: per-key breakers aggregate into their downstream's series.

use std::time::Duration;

use metrics::{Counter, Gauge};
use palisade_core::observe::{CounterSet, GaugeSet, LabelValue, MetricScope};
use palisade_core::{Name, Outcome};

use crate::State;

/// What a breaker reports to its observers.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BreakerEvent {
    /// The breaker changed state.
    Transition {
        /// The state it left.
        from: State,
        /// The state it entered.
        to: State,
        /// For transitions into `Open`: how long it stays open.
        open_for: Option<Duration>,
    },
    /// A call the breaker let through completed (dropped calls are not reported).
    Call {
        /// The classified outcome.
        outcome: Outcome,
        /// Whether it was at or over the slow-call duration.
        slow: bool,
    },
    /// A call was refused.
    NotPermitted {
        /// The state that refused it.
        state: State,
    },
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum CallLabel {
    Success,
    Failure,
    Ignored,
}

impl LabelValue for CallLabel {
    const LABEL: &'static str = "outcome";
    const ALL: &'static [Self] = &[CallLabel::Success, CallLabel::Failure, CallLabel::Ignored];
    fn as_label(self) -> &'static str {
        match self {
            CallLabel::Success => "success",
            CallLabel::Failure => "failure",
            CallLabel::Ignored => "ignored",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum SlowLabel {
    Success,
    Failure,
}

impl LabelValue for SlowLabel {
    const LABEL: &'static str = "outcome";
    const ALL: &'static [Self] = &[SlowLabel::Success, SlowLabel::Failure];
    fn as_label(self) -> &'static str {
        match self {
            SlowLabel::Success => "success",
            SlowLabel::Failure => "failure",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Registered metric handles of one downstream's breaker(s).
#[derive(Debug)]
pub(crate) struct BreakerMetrics {
    state: GaugeSet<State>,
    calls: CounterSet<CallLabel>,
    slow: CounterSet<SlowLabel>,
    not_permitted: Counter,
    failure_rate: Option<Gauge>,
    slow_rate: Option<Gauge>,
    transitions: Vec<Counter>,
    last_transition: Gauge,
    pub(crate) keys: Option<(Gauge, Counter)>,
}

impl BreakerMetrics {
    /// Registers every series at zero. `keyed` breakers get key gauges and no rate
    /// gauges (a rate of one key among many would mislead).
    pub(crate) fn register(name: &Name, keyed: bool) -> Self {
        let scope = MetricScope::new("breaker", name.clone());
        let mut transitions = Vec::with_capacity(State::ALL.len() * State::ALL.len());
        for from in State::ALL {
            for to in State::ALL {
                transitions.push(if from == to {
                    Counter::noop()
                } else {
                    scope.counter_with(
                        "transitions",
                        "Circuit breaker state changes.",
                        &[("from", from.as_str()), ("to", to.as_str())],
                    )
                });
            }
        }
        Self {
            state: scope.gauge_set(
                "state",
                None,
                "Circuit breakers of this downstream in each state.",
            ),
            calls: scope.counter_set(
                "calls",
                "Calls let through by the circuit breaker, by classified outcome.",
            ),
            slow: scope.counter_set(
                "slow_calls",
                "Calls let through that took at least the slow-call duration.",
            ),
            not_permitted: scope.counter(
                "not_permitted_calls",
                "Calls refused by the circuit breaker.",
            ),
            failure_rate: (!keyed).then(|| {
                scope.gauge(
                    "failure_rate",
                    Some("ratio"),
                    "Failure rate of the circuit breaker's window.",
                )
            }),
            slow_rate: (!keyed).then(|| {
                scope.gauge(
                    "slow_call_rate",
                    Some("ratio"),
                    "Slow-call rate of the circuit breaker's window.",
                )
            }),
            transitions,
            last_transition: scope.gauge(
                "last_transition_timestamp",
                Some("seconds"),
                "Unix time of the circuit breaker's last state change.",
            ),
            keys: keyed.then(|| {
                (
                    scope.gauge("keys", None, "Keys held by the keyed circuit breaker."),
                    scope.counter(
                        "key_evictions",
                        "Keys evicted from the keyed circuit breaker.",
                    ),
                )
            }),
        }
    }

    pub(crate) fn breaker_created(&self) {
        self.state.get(State::Closed).increment(1.0);
        if let Some((keys, _)) = &self.keys {
            keys.increment(1.0);
        }
    }

    pub(crate) fn breaker_dropped(&self, state: State) {
        self.state.get(state).decrement(1.0);
        if let Some((keys, _)) = &self.keys {
            keys.decrement(1.0);
        }
    }

    pub(crate) fn transition(&self, from: State, to: State) {
        self.state.get(from).decrement(1.0);
        self.state.get(to).increment(1.0);
        self.transitions[from.index() * State::ALL.len() + to.index()].increment(1);
        self.last_transition.set(unix_now_secs());
    }

    #[inline]
    pub(crate) fn call(&self, outcome: Outcome, slow: bool) {
        let label = match outcome {
            Outcome::Success => CallLabel::Success,
            Outcome::Failure(_) => CallLabel::Failure,
            Outcome::Ignored => CallLabel::Ignored,
        };
        self.calls.get(label).increment(1);
        if slow {
            let label = if outcome.is_failure() {
                SlowLabel::Failure
            } else {
                SlowLabel::Success
            };
            self.slow.get(label).increment(1);
        }
    }

    #[inline]
    pub(crate) fn not_permitted(&self) {
        self.not_permitted.increment(1);
    }

    pub(crate) fn rates(&self, failure_rate: f64, slow_rate: f64) {
        if let Some(g) = &self.failure_rate {
            g.set(failure_rate);
        }
        if let Some(g) = &self.slow_rate {
            g.set(slow_rate);
        }
    }
}

/// Wall-clock time, for the exported timestamp only: no decision reads it.
#[allow(clippy::disallowed_methods)]
fn unix_now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
