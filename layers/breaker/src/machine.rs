//! The breaker's state machine: lock-free on the call path, serialized transitions.
//!
//! The state and a generation number share one atomic word. Admission in the closed
//! state is a single load. Transitions (rare) take a small `std` mutex, write the new
//! state's data (open deadline, probe counters, reset window) and then publish the new
//! word with `Release`, so a reader that sees the new word also sees its data. A
//! transition only happens if the word is still the one the deciding thread saw, so a
//! decision made on stale data cannot win, and none is lost.
//!
//! Half-open probes are counted in one word `generation:32 | in_flight:16 |
//! successes:16`, updated by compare-and-swap that checks the generation: a probe
//! admitted in an earlier half-open period can neither take nor free a slot of a
//! later one, so at most N probes are ever in flight.
//!
//! No clock is read here: callers pass `now` in nanoseconds, which keeps the machine
//! testable under loom and on paused time.

use palisade_core::window::{CountWindow, Sample, TimeWindow, WindowSnapshot};
use palisade_core::{Outcome, Verdict};

use crossbeam_utils::CachePadded;

use crate::State;
use crate::sync::{AtomicU64, Mutex, Ordering};

const STATE_BITS: u32 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

fn word(state: State, generation: u64) -> u64 {
    (generation << STATE_BITS) | state.code()
}

fn unword(w: u64) -> (State, u64) {
    (State::from_code(w & STATE_MASK), w >> STATE_BITS)
}

fn probes_word(generation: u64, in_flight: u64, successes: u64) -> u64 {
    ((generation & 0xFFFF_FFFF) << 32) | ((in_flight & 0xFFFF) << 16) | (successes & 0xFFFF)
}

fn unprobes(w: u64) -> (u64, u64, u64) {
    (w >> 32, (w >> 16) & 0xFFFF, w & 0xFFFF)
}

/// The rolling window a breaker judges by.
// One per breaker, inside its `Arc`: the padded count window's size costs nothing,
// while boxing it would add a pointer chase to every call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    /// Records a call; for a count window, also returns the counts and whether they
    /// changed.
    #[inline]
    fn record(&self, now: u64, sample: Sample) -> Option<(WindowSnapshot, bool)> {
        match self {
            Window::Count(w) => Some(w.record_detailed(sample)),
            Window::Time(w) => {
                w.record(now, sample);
                None
            }
        }
    }

    pub(crate) fn snapshot(&self, now: u64) -> WindowSnapshot {
        match self {
            Window::Count(w) => w.snapshot(),
            Window::Time(w) => w.snapshot(now),
        }
    }

    fn reset(&self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }

    #[inline]
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Window::Time(_))
    }
}

/// Thresholds and waits, changeable at runtime. Rates are stored as `f64` bits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Tunables {
    pub(crate) failure_rate: f64,
    pub(crate) slow_rate: f64,
    /// 0 = slow-call detection off.
    pub(crate) slow_call_nanos: u64,
    pub(crate) minimum_calls: u64,
    /// 0 = consecutive-failures mode off.
    pub(crate) consecutive_failures: u64,
    pub(crate) wait_nanos: u64,
    pub(crate) wait_multiplier: f64,
    pub(crate) max_wait_nanos: u64,
    pub(crate) wait_jitter: f64,
    pub(crate) probes: u64,
    pub(crate) probe_successes: u64,
    /// 0 = no limit on the time spent half-open.
    pub(crate) max_half_open_nanos: u64,
}

#[derive(Debug)]
struct Settings {
    failure_rate: AtomicU64,
    slow_rate: AtomicU64,
    slow_call_nanos: AtomicU64,
    minimum_calls: AtomicU64,
    consecutive_failures: AtomicU64,
    wait_nanos: AtomicU64,
    wait_multiplier: AtomicU64,
    max_wait_nanos: AtomicU64,
    wait_jitter: AtomicU64,
    probes: AtomicU64,
    probe_successes: AtomicU64,
    max_half_open_nanos: AtomicU64,
}

impl Settings {
    fn new(t: &Tunables) -> Self {
        let s = Settings {
            failure_rate: AtomicU64::new(0),
            slow_rate: AtomicU64::new(0),
            slow_call_nanos: AtomicU64::new(0),
            minimum_calls: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
            wait_nanos: AtomicU64::new(0),
            wait_multiplier: AtomicU64::new(0),
            max_wait_nanos: AtomicU64::new(0),
            wait_jitter: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            probe_successes: AtomicU64::new(0),
            max_half_open_nanos: AtomicU64::new(0),
        };
        s.store(t);
        s
    }

    fn store(&self, t: &Tunables) {
        let r = Ordering::Relaxed;
        self.failure_rate.store(t.failure_rate.to_bits(), r);
        self.slow_rate.store(t.slow_rate.to_bits(), r);
        self.slow_call_nanos.store(t.slow_call_nanos, r);
        self.minimum_calls.store(t.minimum_calls, r);
        self.consecutive_failures.store(t.consecutive_failures, r);
        self.wait_nanos.store(t.wait_nanos, r);
        self.wait_multiplier.store(t.wait_multiplier.to_bits(), r);
        self.max_wait_nanos.store(t.max_wait_nanos, r);
        self.wait_jitter.store(t.wait_jitter.to_bits(), r);
        self.probes.store(t.probes, r);
        self.probe_successes.store(t.probe_successes, r);
        self.max_half_open_nanos.store(t.max_half_open_nanos, r);
    }

    fn load(&self) -> Tunables {
        let r = Ordering::Relaxed;
        Tunables {
            failure_rate: f64::from_bits(self.failure_rate.load(r)),
            slow_rate: f64::from_bits(self.slow_rate.load(r)),
            slow_call_nanos: self.slow_call_nanos.load(r),
            minimum_calls: self.minimum_calls.load(r),
            consecutive_failures: self.consecutive_failures.load(r),
            wait_nanos: self.wait_nanos.load(r),
            wait_multiplier: f64::from_bits(self.wait_multiplier.load(r)),
            max_wait_nanos: self.max_wait_nanos.load(r),
            wait_jitter: f64::from_bits(self.wait_jitter.load(r)),
            probes: self.probes.load(r),
            probe_successes: self.probe_successes.load(r),
            max_half_open_nanos: self.max_half_open_nanos.load(r),
        }
    }
}

/// What admission decided for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ticket {
    /// Admitted while closed, in this generation.
    Closed { generation: u64 },
    /// Admitted as a half-open probe, in this generation; its slot must be freed.
    Probe { generation: u64 },
    /// Admitted in metrics-only mode: recorded, never trips.
    Record,
    /// Admitted while disabled: nothing recorded.
    Pass,
    /// Refused: the state, and for `Open` the nanoseconds until half-open.
    Refused {
        state: State,
        retry_after_nanos: Option<u64>,
    },
}

/// What a completed call tells about the window's rates, for the rate gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rates {
    /// The window did not change.
    Unchanged,
    /// The window's counts now.
    Known(WindowSnapshot),
    /// The window changed but reading it would cost a pass over its buckets.
    Unknown,
}

/// A state change that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: State,
    pub(crate) to: State,
    /// For transitions into `Open`: when the open wait ends (clock nanos).
    pub(crate) open_until: Option<u64>,
    /// For transitions into `HalfOpen`, when the half-open period must end if a
    /// limit is set (clock nanos).
    pub(crate) half_open_until: Option<u64>,
}

/// Up to two transitions reported by one operation (e.g. open → half-open → open).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transitions {
    items: [Option<Transition>; 2],
}

impl Transitions {
    fn push(&mut self, t: Option<Transition>) {
        if let Some(t) = t {
            if self.items[0].is_none() {
                self.items[0] = Some(t);
            } else {
                self.items[1] = Some(t);
            }
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Transition> + '_ {
        self.items.iter().flatten().copied()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items[0].is_none()
    }
}

/// The lock-free core of a breaker; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Machine {
    /// Read by every call: on its own cache line, away from the `Arc` counts and
    /// the window's written lines.
    word: CachePadded<AtomicU64>,
    open_until: AtomicU64,
    half_open_since: AtomicU64,
    trips: AtomicU64,
    probes: AtomicU64,
    consecutive_failures: CachePadded<AtomicU64>,
    pub(crate) window: Window,
    settings: Settings,
    transition_lock: Mutex<()>,
    /// A random number in `[0, 1)` for jittering open waits.
    jitter: fn() -> f64,
}

impl Machine {
    pub(crate) fn new(window: Window, tunables: &Tunables, jitter: fn() -> f64) -> Self {
        Self {
            word: CachePadded::new(AtomicU64::new(word(State::Closed, 0))),
            open_until: AtomicU64::new(0),
            half_open_since: AtomicU64::new(0),
            trips: AtomicU64::new(0),
            probes: AtomicU64::new(probes_word(0, 0, 0)),
            consecutive_failures: CachePadded::new(AtomicU64::new(0)),
            window,
            settings: Settings::new(tunables),
            transition_lock: Mutex::new(()),
            jitter,
        }
    }

    pub(crate) fn tunables(&self) -> Tunables {
        self.settings.load()
    }

    pub(crate) fn set_tunables(&self, t: &Tunables) {
        self.settings.store(t);
    }

    /// The slow-call threshold in nanoseconds, if detection is on.
    #[inline]
    pub(crate) fn slow_call_nanos(&self) -> Option<u64> {
        match self.settings.slow_call_nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    pub(crate) fn state(&self) -> State {
        unword(self.word.load(Ordering::Acquire)).0
    }

    /// When the current open period ends, if open.
    pub(crate) fn open_until(&self) -> Option<u64> {
        let (state, _) = unword(self.word.load(Ordering::Acquire));
        (state == State::Open).then(|| self.open_until.load(Ordering::Acquire))
    }

    /// Consecutive trips since the breaker last closed.
    pub(crate) fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    /// Probes in flight and successes in the current half-open period.
    pub(crate) fn probe_counts(&self) -> (u64, u64) {
        let (_, in_flight, successes) = unprobes(self.probes.load(Ordering::Acquire));
        (in_flight, successes)
    }

    /// Whether calls in the current state would be admitted right now (for the
    /// closed fast path: one load).
    #[inline]
    pub(crate) fn closed_generation(&self) -> Option<u64> {
        let (state, generation) = unword(self.word.load(Ordering::Acquire));
        (state == State::Closed).then_some(generation)
    }

    /// Decides whether a call may proceed at `now`.
    pub(crate) fn acquire(&self, now: u64) -> (Ticket, Transitions) {
        let mut transitions = Transitions::default();
        loop {
            let current = self.word.load(Ordering::Acquire);
            let (state, generation) = unword(current);
            match state {
                State::Closed => return (Ticket::Closed { generation }, transitions),
                State::Disabled => return (Ticket::Pass, transitions),
                State::MetricsOnly => return (Ticket::Record, transitions),
                State::ForcedOpen => {
                    return (
                        Ticket::Refused {
                            state,
                            retry_after_nanos: None,
                        },
                        transitions,
                    );
                }
                State::Open => {
                    let until = self.open_until.load(Ordering::Acquire);
                    if now < until {
                        return (
                            Ticket::Refused {
                                state,
                                retry_after_nanos: Some(until - now),
                            },
                            transitions,
                        );
                    }
                    transitions.push(self.transition(current, State::HalfOpen, now));
                }
                State::HalfOpen => {
                    let max_half_open = self.settings.max_half_open_nanos.load(Ordering::Relaxed);
                    if max_half_open != 0
                        && now
                            >= self
                                .half_open_since
                                .load(Ordering::Acquire)
                                .saturating_add(max_half_open)
                    {
                        transitions.push(self.transition(current, State::Open, now));
                        continue;
                    }
                    let mut p = self.probes.load(Ordering::Acquire);
                    loop {
                        let (probe_gen, in_flight, successes) = unprobes(p);
                        if probe_gen != generation & 0xFFFF_FFFF {
                            // The state moved on since we read it: start over.
                            break;
                        }
                        if in_flight >= self.settings.probes.load(Ordering::Relaxed) {
                            return (
                                Ticket::Refused {
                                    state,
                                    retry_after_nanos: None,
                                },
                                transitions,
                            );
                        }
                        let next = probes_word(generation, in_flight + 1, successes);
                        match self.probes.compare_exchange(
                            p,
                            next,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => return (Ticket::Probe { generation }, transitions),
                            Err(actual) => p = actual,
                        }
                    }
                }
            }
        }
    }

    /// Frees a probe's slot without counting it (cancelled or ignored).
    pub(crate) fn release_probe(&self, generation: u64) {
        self.update_probe(generation, false);
    }

    /// Frees a probe slot, counting a success if `success`. Returns the successes so
    /// far, or `None` if the half-open period the probe belonged to is over.
    fn update_probe(&self, generation: u64, success: bool) -> Option<u64> {
        let mut p = self.probes.load(Ordering::Acquire);
        loop {
            let (probe_gen, in_flight, successes) = unprobes(p);
            if probe_gen != generation & 0xFFFF_FFFF || in_flight == 0 {
                return None;
            }
            let successes = successes + u64::from(success);
            let next = probes_word(generation, in_flight - 1, successes);
            match self
                .probes
                .compare_exchange(p, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(successes),
                Err(actual) => p = actual,
            }
        }
    }

    /// Whether a clean success admitted while closed would change nothing: the
    /// count window is full of clean calls and no failure run is open. The healthy
    /// steady state: two loads, no write.
    #[inline]
    pub(crate) fn clean_success_is_noop(&self) -> bool {
        matches!(&self.window, Window::Count(w) if w.is_full_and_clean())
            && self.consecutive_failures.load(Ordering::Relaxed) == 0
    }

    /// Records the verdict of a call admitted with `ticket`, at `now`, and makes the
    /// transition it causes, if any. Returns the transition and, when the window
    /// gives one cheaply, a snapshot of it.
    #[inline]
    pub(crate) fn complete(
        &self,
        ticket: Ticket,
        verdict: Verdict,
        clock: impl Fn() -> u64,
    ) -> (Option<Transition>, Rates) {
        // The clock is read only when the answer depends on it: a time window, a
        // probe, or a possible trip.
        let needs_now = self.window.needs_clock() || !matches!(ticket, Ticket::Closed { .. });
        let early_now = needs_now.then(&clock);
        let now = || early_now.unwrap_or_else(&clock);
        let failure = verdict.outcome.is_failure();
        let bad = failure || verdict.slow;
        let sample = Sample {
            failure,
            slow: verdict.slow,
        };
        match ticket {
            Ticket::Closed { generation } => {
                if verdict.outcome == Outcome::Ignored {
                    return (None, Rates::Unchanged);
                }
                if self.word.load(Ordering::Acquire) != word(State::Closed, generation) {
                    // Admitted in an earlier closed period: the breaker has opened
                    // (and maybe closed again, with a fresh window) since, and this
                    // verdict says nothing about the period it would land in.
                    return (None, Rates::Unchanged);
                }
                let recorded = self.window.record(early_now.unwrap_or(0), sample);
                let consecutive = if failure {
                    self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1
                } else {
                    if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                        self.consecutive_failures.store(0, Ordering::Release);
                    }
                    0
                };
                // Only a bad call can raise a rate, except that the call which brings
                // a count window up to the minimum may find the rates already over a
                // threshold. (Time windows are judged on bad calls only: reading them
                // costs a pass over the buckets.)
                if !bad {
                    let rates = match recorded {
                        Some((_, false)) => return (None, Rates::Unchanged),
                        Some((snap, true)) => snap,
                        None => return (None, Rates::Unknown),
                    };
                    let may_trip = (rates.failures > 0 || rates.slow > 0)
                        && u64::from(rates.calls)
                            == self.settings.minimum_calls.load(Ordering::Relaxed);
                    if !may_trip {
                        return (None, Rates::Known(rates));
                    }
                }
                let t = self.tunables();
                let snap = match recorded {
                    Some((snap, _)) => snap,
                    None => self.window.snapshot(now()),
                };
                let trip = (t.consecutive_failures != 0 && consecutive >= t.consecutive_failures)
                    || (snap.calls as u64 >= t.minimum_calls
                        && ((snap.failures > 0 && snap.failure_rate() >= t.failure_rate)
                            || (t.slow_call_nanos != 0
                                && snap.slow > 0
                                && snap.slow_rate() >= t.slow_rate)));
                let transition = if trip {
                    self.transition(word(State::Closed, generation), State::Open, now())
                } else {
                    None
                };
                (transition, Rates::Known(snap))
            }
            Ticket::Probe { generation } => match verdict.outcome {
                Outcome::Ignored if !verdict.slow => {
                    self.release_probe(generation);
                    (None, Rates::Unchanged)
                }
                _ if bad => {
                    self.release_probe(generation);
                    let t = self.transition(word(State::HalfOpen, generation), State::Open, now());
                    (t, Rates::Unchanged)
                }
                _ => {
                    let needed = self.settings.probe_successes.load(Ordering::Relaxed);
                    match self.update_probe(generation, true) {
                        Some(successes) if successes >= needed => {
                            let t = self.transition(
                                word(State::HalfOpen, generation),
                                State::Closed,
                                now(),
                            );
                            (t, Rates::Unchanged)
                        }
                        _ => (None, Rates::Unchanged),
                    }
                }
            },
            Ticket::Record => {
                if verdict.outcome == Outcome::Ignored {
                    return (None, Rates::Unchanged);
                }
                let rates = match self.window.record(early_now.unwrap_or(0), sample) {
                    Some((_, false)) => Rates::Unchanged,
                    Some((snap, true)) => Rates::Known(snap),
                    None if bad => Rates::Known(self.window.snapshot(now())),
                    None => Rates::Unknown,
                };
                (None, rates)
            }
            Ticket::Pass | Ticket::Refused { .. } => (None, Rates::Unchanged),
        }
    }

    /// Makes the time-driven transitions due at `now` (open → half-open after the
    /// wait, half-open → open after the max half-open time).
    pub(crate) fn tick(&self, now: u64) -> Option<Transition> {
        let current = self.word.load(Ordering::Acquire);
        let (state, _) = unword(current);
        match state {
            State::Open if now >= self.open_until.load(Ordering::Acquire) => {
                self.transition(current, State::HalfOpen, now)
            }
            State::HalfOpen => {
                let limit = self.settings.max_half_open_nanos.load(Ordering::Relaxed);
                let since = self.half_open_since.load(Ordering::Acquire);
                if limit != 0 && now >= since.saturating_add(limit) {
                    self.transition(current, State::Open, now)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Moves to `to` whatever the current state (the handle's force/disable/reset).
    pub(crate) fn force(&self, to: State, now: u64) -> Option<Transition> {
        loop {
            let current = self.word.load(Ordering::Acquire);
            if unword(current).0 == to && to != State::Closed {
                return None;
            }
            if let Some(t) = self.transition(current, to, now) {
                return Some(t);
            }
            if unword(self.word.load(Ordering::Acquire)).0 == to && to != State::Closed {
                return None;
            }
        }
    }

    fn open_wait(&self, t: &Tunables, trips: u64) -> u64 {
        let jitter = (self.jitter)();
        let exponent = trips.saturating_sub(1).min(64) as i32;
        let grown = t.wait_nanos as f64 * t.wait_multiplier.powi(exponent);
        let capped = grown.min(t.max_wait_nanos.max(t.wait_nanos) as f64);
        // Jitter shortens the wait by up to `wait_jitter` of itself, so breakers that
        // tripped together do not probe together.
        let jittered = capped * (1.0 - t.wait_jitter * jitter.clamp(0.0, 1.0));
        jittered.max(0.0) as u64
    }

    /// Moves from exactly `expected` to `to`, or does nothing if the word changed.
    fn transition(&self, expected: u64, to: State, now: u64) -> Option<Transition> {
        let _guard = self
            .transition_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.word.load(Ordering::Acquire) != expected {
            return None;
        }
        let (from, generation) = unword(expected);
        let next_gen = generation.wrapping_add(1) & (u64::MAX >> STATE_BITS);
        let mut open_until = None;
        let mut half_open_until = None;
        match to {
            State::Open => {
                let t = self.tunables();
                let trips = self.trips.fetch_add(1, Ordering::AcqRel) + 1;
                let until = now.saturating_add(self.open_wait(&t, trips));
                self.open_until.store(until, Ordering::Release);
                open_until = Some(until);
            }
            State::HalfOpen => {
                // A read-modify-write, not a plain store, so that it is ordered with
                // the compare-and-swaps of probes still finishing from an earlier
                // period (loom finds a stale release landing after a plain store).
                self.probes
                    .swap(probes_word(next_gen, 0, 0), Ordering::AcqRel);
                self.half_open_since.store(now, Ordering::Release);
                let limit = self.settings.max_half_open_nanos.load(Ordering::Relaxed);
                if limit != 0 {
                    half_open_until = Some(now.saturating_add(limit));
                }
            }
            State::Closed => {
                self.window.reset();
                self.consecutive_failures.store(0, Ordering::Release);
                self.trips.store(0, Ordering::Release);
            }
            State::MetricsOnly => {
                self.window.reset();
                self.consecutive_failures.store(0, Ordering::Release);
            }
            State::ForcedOpen | State::Disabled => {}
        }
        self.word.store(word(to, next_gen), Ordering::Release);
        Some(Transition {
            from,
            to,
            open_until,
            half_open_until,
        })
    }
}

/// Model checks of the lock-free paths under every interleaving loom can find:
/// `cargo test -p palisade-breaker --features loom --release --lib loom_`.
#[cfg(all(test, feature = "loom"))]
mod loom_tests {
    use super::*;
    use crate::config::BreakerConfig;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize;
    use palisade_core::{FailureReason, Outcome, Verdict};

    const FAIL: Verdict = Verdict::unmeasured(Outcome::Failure(FailureReason::ERROR));
    const OK: Verdict = Verdict::unmeasured(Outcome::Success);

    fn machine(f: impl FnOnce(&mut BreakerConfig)) -> Machine {
        let mut c = BreakerConfig {
            window: crate::WindowConfig::Count { size: 4 },
            minimum_calls: 2,
            wait_in_open: std::time::Duration::from_nanos(10),
            max_wait_in_open: std::time::Duration::from_nanos(1000),
            wait_jitter: 0.0,
            half_open_probes: 1,
            ..BreakerConfig::default()
        };
        f(&mut c);
        c.validate().unwrap();
        Machine::new(c.build_window().unwrap(), &c.tunables(), || 0.0)
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.max_branches = 100_000;
        builder.check(f);
    }

    #[test]
    fn loom_concurrent_failures_trip_exactly_once() {
        model(|| {
            let m = Arc::new(machine(|c| c.consecutive_failures = Some(2)));
            let opened = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (m, opened) = (m.clone(), opened.clone());
                    loom::thread::spawn(move || {
                        let (ticket, _) = m.acquire(1);
                        let (t, _) = m.complete(ticket, FAIL, || 1);
                        if let Some(t) = t {
                            assert_eq!((t.from, t.to), (State::Closed, State::Open));
                            opened.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            // Both failures were counted: the breaker opened, exactly once.
            assert_eq!(m.state(), State::Open);
            assert_eq!(opened.load(Ordering::SeqCst), 1);
        });
    }

    #[test]
    fn loom_half_open_never_admits_more_than_n() {
        model(|| {
            let m = Arc::new(machine(|c| c.half_open_probes = 1));
            m.force(State::Open, 0);
            m.tick(100);
            assert_eq!(m.state(), State::HalfOpen);
            let in_probe = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = [FAIL, OK]
                .into_iter()
                .map(|verdict| {
                    let (m, in_probe) = (m.clone(), in_probe.clone());
                    loom::thread::spawn(move || {
                        let (ticket, _) = m.acquire(100);
                        if let Ticket::Probe { .. } = ticket {
                            let before = in_probe.fetch_add(1, Ordering::SeqCst);
                            assert_eq!(before, 0, "two probes in flight with a limit of one");
                            in_probe.fetch_sub(1, Ordering::SeqCst);
                            m.complete(ticket, verdict, || 100);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert!(matches!(
                m.state(),
                State::Open | State::HalfOpen | State::Closed
            ));
        });
    }

    #[test]
    fn loom_a_stale_probe_cannot_free_a_later_slot() {
        model(|| {
            let m = Arc::new(machine(|c| c.half_open_probes = 1));
            m.force(State::Open, 0);
            m.tick(100);
            let (stale, _) = m.acquire(100);
            let Ticket::Probe { generation } = stale else {
                panic!("first probe must be admitted");
            };
            let releaser = {
                let m = m.clone();
                loom::thread::spawn(move || m.release_probe(generation))
            };
            // Meanwhile the breaker reopens and turns half-open again.
            m.force(State::Open, 200);
            m.tick(10_000);
            let (first, _) = m.acquire(10_000);
            let (second, _) = m.acquire(10_000);
            releaser.join().unwrap();
            let (third, _) = m.acquire(10_000);
            assert!(matches!(first, Ticket::Probe { .. }));
            assert!(matches!(second, Ticket::Refused { .. }));
            assert!(
                matches!(third, Ticket::Refused { .. }),
                "the stale release freed a new slot"
            );
        });
    }

    #[test]
    fn loom_window_totals_match_slots() {
        model(|| {
            let w = Arc::new(palisade_core::window::CountWindow::new(2).unwrap());
            let threads: Vec<_> = [true, false]
                .into_iter()
                .map(|failure| {
                    let w = w.clone();
                    loom::thread::spawn(move || {
                        w.record(palisade_core::window::Sample {
                            failure,
                            slow: false,
                        });
                        w.record(palisade_core::window::Sample {
                            failure,
                            slow: false,
                        });
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let s = w.snapshot();
            assert_eq!(s.calls, 2);
            assert!(s.failures <= 2);
        });
    }

    /// Two threads record at once into a time window of `buckets` buckets of one
    /// tick, after a first call at `first`: the window read at the later tick holds
    /// `expected` calls, whatever the interleaving.
    fn time_window_race(buckets: u32, first: u64, ticks: [u64; 2], expected: u32) {
        use palisade_core::window::{Sample, TimeWindow};
        model(move || {
            let w = Arc::new(TimeWindow::new(buckets, 1).unwrap());
            w.record(first, Sample::default());
            let threads: Vec<_> = ticks
                .into_iter()
                .map(|tick| {
                    let w = w.clone();
                    loom::thread::spawn(move || w.record(tick, Sample::default()))
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(w.snapshot(ticks[1]).calls, expected);
        });
    }

    #[test]
    fn loom_time_window_a_late_reading_never_wipes_a_newer_bucket() {
        // One bucket: the call read at tick 1 is older than the window at tick 2;
        // however late it lands, the call of tick 2 stays.
        time_window_race(1, 0, [1, 2], 1);
    }
}
