use std::fmt;

use palisade_core::observe::LabelValue;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Calls flow; outcomes are recorded and the breaker opens when a threshold is
    /// crossed.
    Closed,
    /// Calls are rejected at once until the open wait ends, then the breaker turns
    /// half-open.
    Open,
    /// A limited number of concurrent probe calls test the downstream; enough
    /// successes close the breaker, a failure opens it again.
    HalfOpen,
    /// Opened by hand: every call is rejected until the breaker is reset.
    ForcedOpen,
    /// Switched off by hand: every call flows and nothing is recorded.
    Disabled,
    /// Every call flows; outcomes are recorded (metrics, rates) but the breaker never
    /// opens. For trying thresholds out in production.
    MetricsOnly,
}

impl State {
    /// Every state, in label order.
    pub const ALL: [State; 6] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
        State::MetricsOnly,
    ];

    /// The snake_case label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
            State::MetricsOnly => "metrics_only",
        }
    }

    pub(crate) const fn code(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::ForcedOpen => 3,
            State::Disabled => 4,
            State::MetricsOnly => 5,
        }
    }

    pub(crate) const fn from_code(code: u64) -> State {
        match code {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            4 => State::Disabled,
            _ => State::MetricsOnly,
        }
    }

    /// Whether calls are refused in this state (open or forced open).
    pub const fn rejects(self) -> bool {
        matches!(self, State::Open | State::ForcedOpen)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LabelValue for State {
    const LABEL: &'static str = "state";
    const ALL: &'static [Self] = &State::ALL;
    fn as_label(self) -> &'static str {
        self.as_str()
    }
    fn index(self) -> usize {
        self.code() as usize
    }
}
