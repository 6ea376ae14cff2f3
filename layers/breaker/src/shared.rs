//! State shared by every clone of one breaker: the machine, the clock, metrics,
//! observers, and the timers that make time-driven transitions without traffic.

use std::cell::Cell;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use palisade_core::observe::Observers;
use palisade_core::{Clock, Name, Outcome, Rejection, RejectionKind, Verdict};
use tokio::sync::Notify;

use crate::State;
use crate::config::{BreakerConfig, Mode};
use crate::machine::{Machine, Rates, Ticket, Transition, Transitions};
use crate::metrics::{BreakerEvent, BreakerMetrics};

/// How often (in completed calls per thread) the rate gauges are refreshed when no
/// failure forces an evaluation.
const RATE_REFRESH_EVERY: u32 = 32;

thread_local! {
    static COMPLETIONS: Cell<u32> = const { Cell::new(0) };
}

pub(crate) struct Shared {
    pub(crate) machine: Machine,
    pub(crate) clock: Clock,
    pub(crate) name: Name,
    pub(crate) mode: Mode,
    pub(crate) config: Mutex<BreakerConfig>,
    metrics: Option<Arc<BreakerMetrics>>,
    observers: Observers<BreakerEvent>,
    /// Woken on every transition and freed probe, for gate mode.
    pub(crate) notify: Arc<Notify>,
    this: Weak<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("state", &self.machine.state())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        name: Name,
        config: BreakerConfig,
        metrics: Option<Arc<BreakerMetrics>>,
        observers: Observers<BreakerEvent>,
    ) -> Result<Arc<Self>, palisade_core::ConfigError> {
        config.validate()?;
        let window = config.build_window()?;
        let machine = Machine::new(window, &config.tunables(), fastrand::f64);
        if let Some(m) = &metrics {
            m.breaker_created();
        }
        Ok(Arc::new_cyclic(|this| Shared {
            machine,
            clock: Clock::new(),
            name,
            mode: config.mode,
            config: Mutex::new(config),
            metrics,
            observers,
            notify: Arc::new(Notify::new()),
            this: this.clone(),
        }))
    }

    /// Admission. The closed path is one atomic load: no clock read, no randomness.
    #[inline]
    pub(crate) fn acquire(&self) -> Ticket {
        if let Some(generation) = self.machine.closed_generation() {
            return Ticket::Closed { generation };
        }
        let (ticket, transitions) = self.machine.acquire(self.clock.now_nanos());
        self.report(transitions);
        ticket
    }

    /// The rejection for a refused ticket (and counts it).
    pub(crate) fn refusal(&self, state: State, retry_after_nanos: Option<u64>) -> Rejection {
        if let Some(m) = &self.metrics {
            m.not_permitted();
        }
        if !self.observers.is_empty() {
            self.observers.emit(&BreakerEvent::NotPermitted { state });
        }
        let rejection =
            Rejection::new(RejectionKind::CircuitOpen).with_downstream(self.name.clone());
        match retry_after_nanos {
            Some(n) => rejection.with_retry_after(Duration::from_nanos(n)),
            None => rejection,
        }
    }

    /// Records a completed call.
    #[inline]
    pub(crate) fn complete(&self, ticket: Ticket, verdict: Verdict) {
        if matches!(ticket, Ticket::Closed { .. })
            && verdict.outcome == Outcome::Success
            && !verdict.slow
            && self.machine.clean_success_is_noop()
        {
            if let Some(m) = &self.metrics {
                m.call(Outcome::Success, false);
            }
            if !self.observers.is_empty() {
                self.observers.emit(&BreakerEvent::Call {
                    outcome: Outcome::Success,
                    slow: false,
                });
            }
            return;
        }
        self.complete_slow(ticket, verdict);
    }

    #[cold]
    fn complete_slow(&self, ticket: Ticket, verdict: Verdict) {
        let (transition, rates) = self
            .machine
            .complete(ticket, verdict, || self.clock.now_nanos());
        if let Some(m) = &self.metrics {
            m.call(verdict.outcome, verdict.slow);
            self.refresh_rates(m, rates);
        }
        if !self.observers.is_empty() {
            self.observers.emit(&BreakerEvent::Call {
                outcome: verdict.outcome,
                slow: verdict.slow,
            });
        }
        if matches!(ticket, Ticket::Probe { .. }) && self.mode == Mode::Gate {
            self.notify.notify_waiters();
        }
        if let Some(t) = transition {
            self.report_one(t);
        }
    }

    /// Keeps the rate gauges current: exact for count windows (refreshed whenever
    /// the counts change), and for time windows refreshed on every bad call and every
    /// 32nd call on each thread (reading a time window costs a pass over it).
    #[inline]
    fn refresh_rates(&self, m: &BreakerMetrics, rates: Rates) {
        let snap = match rates {
            Rates::Unchanged => return,
            Rates::Known(snap) => snap,
            Rates::Unknown => {
                let due = COMPLETIONS.with(|c| {
                    let n = c.get().wrapping_add(1);
                    c.set(n);
                    n % RATE_REFRESH_EVERY == 0
                });
                if !due {
                    return;
                }
                self.machine.window.snapshot(self.clock.now_nanos())
            }
        };
        m.rates(snap.failure_rate(), snap.slow_rate());
    }

    /// Frees a probe slot of a call that was dropped before it completed.
    pub(crate) fn release_probe(&self, generation: u64) {
        self.machine.release_probe(generation);
        if self.mode == Mode::Gate {
            self.notify.notify_waiters();
        }
    }

    /// Makes time-driven transitions due now.
    pub(crate) fn tick(&self) {
        if let Some(t) = self.machine.tick(self.clock.now_nanos()) {
            self.report_one(t);
        }
    }

    /// Moves to `to` by hand.
    pub(crate) fn force(&self, to: State) {
        if let Some(t) = self.machine.force(to, self.clock.now_nanos()) {
            self.report_one(t);
        }
    }

    pub(crate) fn report(&self, transitions: Transitions) {
        if transitions.is_empty() {
            return;
        }
        for t in transitions.iter() {
            self.report_one(t);
        }
    }

    fn report_one(&self, t: Transition) {
        let now = self.clock.now_nanos();
        let open_for = t
            .open_until
            .map(|u| Duration::from_nanos(u.saturating_sub(now)));
        if let Some(m) = &self.metrics {
            m.transition(t.from, t.to);
            if t.from == State::Closed || t.to == State::Closed {
                m.rates(0.0, 0.0);
            }
        }
        match t.to {
            State::Open | State::ForcedOpen => tracing::warn!(
                downstream = %self.name, from = %t.from, to = %t.to,
                open_for_ms = open_for.map(|d| d.as_millis() as u64),
                "circuit breaker opened"
            ),
            _ => tracing::info!(
                downstream = %self.name, from = %t.from, to = %t.to,
                "circuit breaker changed state"
            ),
        }
        if !self.observers.is_empty() {
            self.observers.emit(&BreakerEvent::Transition {
                from: t.from,
                to: t.to,
                open_for,
            });
        }
        self.notify.notify_waiters();
        if let Some(at) = t.open_until.or(t.half_open_until) {
            self.schedule_tick(at);
        }
    }

    /// Makes the open → half-open (or half-open → open) transition happen on time
    /// even when no call arrives, when a tokio runtime is at hand. Without one, the
    /// transition happens at the next call or state read.
    fn schedule_tick(&self, at_nanos: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.this.clone();
        let deadline = self.clock.instant_at(at_nanos);
        runtime.spawn(async move {
            tokio::time::sleep_until(deadline).await;
            if let Some(shared) = this.upgrade() {
                shared.tick();
            }
        });
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.breaker_dropped(self.machine.state());
        }
    }
}
