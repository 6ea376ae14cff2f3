use std::sync::Arc;
use std::time::Duration;

use palisade_core::window::WindowSnapshot;
use palisade_core::{ConfigError, Name};

use crate::State;
use crate::config::BreakerConfig;
use crate::shared::Shared;

/// Inspects and controls a breaker at runtime. Cheap to clone.
///
/// ```
/// use palisade_breaker::{CircuitBreakerLayer, State};
///
/// let layer = CircuitBreakerLayer::builder("inventory").build().unwrap();
/// let handle = layer.handle();
/// assert_eq!(handle.state(), State::Closed);
/// handle.force_open();
/// assert_eq!(handle.state(), State::ForcedOpen);
/// handle.reset();
/// assert_eq!(handle.state(), State::Closed);
/// ```
#[derive(Clone)]
pub struct BreakerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerHandle")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish()
    }
}

/// A breaker's state and window at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSnapshot {
    /// The state.
    pub state: State,
    /// Counts in the window.
    pub window: WindowSnapshot,
    /// Failures ÷ calls in the window.
    pub failure_rate: f64,
    /// Slow calls ÷ calls in the window.
    pub slow_call_rate: f64,
    /// Trips since the breaker last closed (drives the growing open wait).
    pub consecutive_trips: u64,
    /// While open: how long until it turns half-open.
    pub remaining_open: Option<Duration>,
    /// While half-open: probes in flight and successful probes so far.
    pub probes: Option<(u64, u64)>,
}

impl BreakerHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The breaker's name (the `downstream` label).
    pub fn name(&self) -> &Name {
        &self.shared.name
    }

    /// The current state (making a due open → half-open transition first).
    pub fn state(&self) -> State {
        self.shared.tick();
        self.shared.machine.state()
    }

    /// State, window counts and rates.
    pub fn snapshot(&self) -> BreakerSnapshot {
        self.shared.tick();
        let now = self.shared.clock.now_nanos();
        let m = &self.shared.machine;
        let window = m.window.snapshot(now);
        let state = m.state();
        BreakerSnapshot {
            state,
            window,
            failure_rate: window.failure_rate(),
            slow_call_rate: window.slow_rate(),
            consecutive_trips: m.trips(),
            remaining_open: m
                .open_until()
                .map(|until| Duration::from_nanos(until.saturating_sub(now))),
            probes: (state == State::HalfOpen).then(|| m.probe_counts()),
        }
    }

    /// Opens the breaker until [`reset`](Self::reset): every call is refused.
    pub fn force_open(&self) {
        self.shared.force(State::ForcedOpen);
    }

    /// Switches the breaker off: every call flows, nothing is recorded.
    pub fn disable(&self) {
        self.shared.force(State::Disabled);
    }

    /// Records calls but never opens (for trying thresholds out).
    pub fn metrics_only(&self) {
        self.shared.force(State::MetricsOnly);
    }

    /// Closes the breaker with an empty window and no trip history.
    pub fn reset(&self) {
        self.shared.force(State::Closed);
    }

    /// The settings in force.
    pub fn config(&self) -> BreakerConfig {
        self.shared
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies new thresholds, waits and probe counts at once, keeping the state and
    /// the window. The window's shape and the mode cannot change on a live breaker:
    /// such a config is refused with an error naming the field, and nothing changes.
    pub fn reconfigure(&self, config: BreakerConfig) -> Result<(), ConfigError> {
        config.validate()?;
        let mut current = self.shared.config.lock().unwrap_or_else(|p| p.into_inner());
        if config.window != current.window {
            return Err(ConfigError::new(
                "window",
                "cannot change on a running breaker; build a new one",
            ));
        }
        if config.mode != current.mode {
            return Err(ConfigError::new(
                "mode",
                "cannot change on a running breaker; build a new one",
            ));
        }
        self.shared.machine.set_tunables(&config.tunables());
        *current = config;
        Ok(())
    }
}
