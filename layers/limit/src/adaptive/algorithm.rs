//! Limit algorithms: the [`LimitAlgorithm`] trait, [`Aimd`] and [`Gradient2`].

use std::time::Duration;

use palisade_core::ConfigError;
use serde::{Deserialize, Serialize};

/// One completed call, as a limit algorithm sees it.
///
/// Only calls the limiter admitted and that completed are sampled: a call whose
/// response future was dropped, or whose outcome was classified as
/// [`Ignored`](palisade_core::Outcome::Ignored), says nothing about the downstream's
/// capacity and is not sampled.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// How long the call took, from `call` until its response future completed.
    pub rtt: Duration,
    /// Calls in flight when this one was admitted, itself included.
    pub in_flight: u32,
    /// Whether the call failed (classified as a failure, or timed out): a sign of
    /// overload.
    pub dropped: bool,
    /// The smallest RTT of a successful call since the limiter was built or its
    /// minimum was last reset, this call included. `None` before any success.
    pub min_rtt: Option<Duration>,
}

impl Sample {
    /// A sample of a call that took `rtt`, was admitted with `in_flight` calls in
    /// flight (itself included), and failed if `dropped`.
    pub const fn new(rtt: Duration, in_flight: u32, dropped: bool) -> Self {
        Self {
            rtt,
            in_flight,
            dropped,
            min_rtt: None,
        }
    }

    /// The same sample with the observed minimum RTT.
    pub const fn with_min_rtt(mut self, min_rtt: Duration) -> Self {
        self.min_rtt = Some(min_rtt);
        self
    }
}

/// How an adaptive limiter moves its concurrency limit: given the limit in force and
/// one [`Sample`], the new limit.
///
/// The algorithm's settings (`self`) are kept apart from its running state
/// ([`State`](Self::State)), so settings stay plain data (written as struct literals,
/// read from config files) while the limiter owns the state. The limiter calls
/// [`update`](Self::update) once per sampled call, under a short lock, and clamps the
/// result to its `min_limit..=max_limit`; a result that is not finite leaves the
/// limit unchanged. Limits are `f64` so that algorithms that move by fractions (a
/// smoothed estimate) do not stall on rounding; admission uses the limit rounded
/// down.
///
/// ```
/// use palisade_limit::adaptive::{LimitAlgorithm, Sample};
///
/// /// Grows by one on each success, halves on each failure.
/// struct Halve;
///
/// impl LimitAlgorithm for Halve {
///     type State = ();
///     fn start(&self) {}
///     fn update(&self, _: &mut (), limit: f64, sample: &Sample) -> f64 {
///         if sample.dropped { limit / 2.0 } else { limit + 1.0 }
///     }
/// }
///
/// let fail = Sample::new(std::time::Duration::from_millis(5), 10, true);
/// assert_eq!(Halve.update(&mut (), 10.0, &fail), 5.0);
/// ```
pub trait LimitAlgorithm: Send + 'static {
    /// What the algorithm remembers between samples (e.g. RTT averages).
    type State: Send + 'static;

    /// The state of a limiter that has seen no sample yet.
    fn start(&self) -> Self::State;

    /// The new limit after `sample`, given the `limit` in force.
    fn update(&self, state: &mut Self::State, limit: f64, sample: &Sample) -> f64;

    /// Checks the settings; the error names the bad field. Called once, when the
    /// limiter is built.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Additive increase, multiplicative decrease: a loss-based algorithm, as TCP Reno
/// and Netflix's `AIMDLimit`.
///
/// - A failed call (a drop), or one taking at least
///   [`latency_threshold`](Self::latency_threshold), multiplies the limit by
///   [`backoff_ratio`](Self::backoff_ratio) (lowering it by at least 1).
/// - A successful call under the threshold raises the limit by
///   [`increase`](Self::increase), when the limit was in use: when at least half
///   of it was in flight as the call was admitted. A limiter that is never
///   approached does not grow without bound.
///
/// ```
/// use palisade_limit::adaptive::{Aimd, LimitAlgorithm, Sample};
/// use std::time::Duration;
///
/// let aimd = Aimd { latency_threshold: Duration::from_millis(250), ..Aimd::default() };
/// let ok = Sample::new(Duration::from_millis(20), 10, false);
/// let slow = Sample::new(Duration::from_millis(300), 10, false);
/// assert_eq!(aimd.update(&mut (), 10.0, &ok), 11.0);
/// assert_eq!(aimd.update(&mut (), 10.0, &slow), 9.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Aimd {
    /// The factor applied on a drop or a slow call, `0.5..1`. Default 0.9.
    pub backoff_ratio: f64,
    /// A call taking at least this long counts as a sign of overload, like a drop.
    /// Default 1 s.
    #[serde(with = "humantime_serde")]
    pub latency_threshold: Duration,
    /// Added to the limit on a fast success while the limit is in use, `> 0`.
    /// Default 1.
    pub increase: f64,
}

impl Default for Aimd {
    fn default() -> Self {
        Self {
            backoff_ratio: 0.9,
            latency_threshold: Duration::from_secs(1),
            increase: 1.0,
        }
    }
}

impl LimitAlgorithm for Aimd {
    type State = ();

    fn start(&self) {}

    fn update(&self, _state: &mut (), limit: f64, sample: &Sample) -> f64 {
        if sample.dropped || sample.rtt >= self.latency_threshold {
            (limit * self.backoff_ratio).min(limit - 1.0)
        } else if f64::from(sample.in_flight) * 2.0 >= limit {
            limit + self.increase
        } else {
            limit
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(0.5..1.0).contains(&self.backoff_ratio) {
            return Err(ConfigError::new(
                "algorithm.backoff_ratio",
                format!("{} is not within 0.5..1", self.backoff_ratio),
            ));
        }
        if self.latency_threshold.is_zero() {
            return Err(ConfigError::new(
                "algorithm.latency_threshold",
                "must be greater than zero",
            ));
        }
        if !(self.increase > 0.0 && self.increase.is_finite()) {
            return Err(ConfigError::new(
                "algorithm.increase",
                format!("{} must be a finite number > 0", self.increase),
            ));
        }
        Ok(())
    }
}

/// Netflix's Gradient2: a latency-based algorithm that compares the short-term RTT
/// with a long-term RTT and shrinks the limit when calls take longer than usual.
///
/// For each sample:
///
/// ```text
/// short    = exponential average of the last `short_window` RTTs
/// long     = exponential average of the last `long_window` RTTs
/// gradient = max(0.5, min(1.0, tolerance × long / short))
/// target   = limit × gradient + queue_size
/// new      = limit × (1 − smoothing) + target × smoothing
/// ```
///
/// So while the short-term RTT stays within `tolerance` × the long-term one, the
/// limit grows (by `queue_size × smoothing` per sample); when it rises above, the
/// limit shrinks (by at most half × `smoothing` per sample). The long-term average
/// follows a lasting change in latency, so a new normal is accepted after about
/// `long_window` samples. As in Netflix's implementation:
///
/// - when the long-term RTT is more than twice the short-term one (latency recovered
///   after a long overload), the long-term average decays by 10 % per sample, so the
///   limit does not stay low waiting for the average to come down;
/// - the limit does not move while less than half of it was in flight (the
///   application, not the downstream, limits the rate).
///
/// Drops (failed or timed-out calls) differ from Netflix's, which ignores them: a
/// drop never grows the limit (its `queue_size` allowance is not added), and its
/// RTT enters the averages only when it raises the short-term one (a timeout says
/// latency is high; a fast error says nothing about latency). Gradient2 does not
/// back off on fast errors alone: choose [`Aimd`] for that.
///
/// ```
/// use palisade_limit::adaptive::{Gradient2, LimitAlgorithm, Sample};
/// use std::time::Duration;
///
/// let g = Gradient2 { short_window: 1, ..Gradient2::default() };
/// let mut state = g.start();
/// let mut limit = 20.0;
/// for _ in 0..20 {
///     limit = g.update(&mut state, limit, &Sample::new(Duration::from_millis(10), 20, false));
/// }
/// assert!(limit > 30.0, "steady latency grows the limit: {limit}");
/// let grown = limit;
/// limit = g.update(&mut state, limit, &Sample::new(Duration::from_millis(100), 40, false));
/// assert!(limit < grown, "a latency spike shrinks it: {limit}");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gradient2 {
    /// How much slower than the long-term RTT the short-term RTT may be before the
    /// limit shrinks, `>= 1`. Default 1.5.
    pub tolerance: f64,
    /// How far each sample moves the limit toward its target, `0 < s <= 1`.
    /// Default 0.2.
    pub smoothing: f64,
    /// Calls allowed to queue beyond the estimated capacity: how fast the limit
    /// grows while latency is steady. Default 4.
    pub queue_size: u32,
    /// Samples in the long-term RTT average, `>= 1`. Default 600.
    pub long_window: u32,
    /// Samples in the short-term RTT average, `>= 1`. Default 10; 1 reacts to
    /// every sample, as Netflix's unwindowed Gradient2 does.
    pub short_window: u32,
}

impl Default for Gradient2 {
    fn default() -> Self {
        Self {
            tolerance: 1.5,
            smoothing: 0.2,
            queue_size: 4,
            long_window: 600,
            short_window: 10,
        }
    }
}

/// The running state of [`Gradient2`]: its short- and long-term RTT averages.
#[derive(Debug, Clone)]
pub struct Gradient2State {
    short: ExpAvg,
    long: ExpAvg,
}

impl Gradient2State {
    /// The short-term RTT average (zero before any sample).
    pub fn short_rtt(&self) -> Duration {
        secs(self.short.value)
    }

    /// The long-term RTT average (zero before any sample).
    pub fn long_rtt(&self) -> Duration {
        secs(self.long.value)
    }
}

fn secs(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or_default()
}

/// An exponential moving average over about `window` samples, that averages its
/// first samples plainly so that the first one does not weigh too much.
#[derive(Debug, Clone)]
struct ExpAvg {
    value: f64,
    sum: f64,
    count: u32,
    warmup: u32,
    factor: f64,
}

impl ExpAvg {
    /// Samples averaged plainly before the exponential average takes over.
    const WARMUP: u32 = 10;

    fn new(window: u32) -> Self {
        Self {
            value: 0.0,
            sum: 0.0,
            count: 0,
            warmup: window.clamp(1, Self::WARMUP),
            factor: 2.0 / (f64::from(window) + 1.0),
        }
    }

    fn add(&mut self, sample: f64) -> f64 {
        if self.count < self.warmup {
            self.count += 1;
            self.sum += sample;
            self.value = self.sum / f64::from(self.count);
        } else {
            self.value = self.value * (1.0 - self.factor) + sample * self.factor;
        }
        self.value
    }

    /// Scales the average by `factor`, also while it is still averaging plainly (the
    /// next sample builds on the scaled value, not on the samples' plain mean).
    fn scale(&mut self, factor: f64) {
        self.value *= factor;
        self.sum *= factor;
    }
}

impl LimitAlgorithm for Gradient2 {
    type State = Gradient2State;

    fn start(&self) -> Gradient2State {
        Gradient2State {
            short: ExpAvg::new(self.short_window),
            long: ExpAvg::new(self.long_window),
        }
    }

    fn update(&self, state: &mut Gradient2State, limit: f64, sample: &Sample) -> f64 {
        let rtt = sample.rtt.as_secs_f64();
        if sample.dropped && (state.short.count == 0 || rtt <= state.short.value) {
            // A failure no slower than usual is no latency measurement.
            return limit;
        }
        let short = state.short.add(rtt);
        let long = state.long.add(rtt);
        if long > 2.0 * short {
            // Latency came back down after a long overload: let the baseline follow
            // quickly rather than over `long_window` samples.
            state.long.scale(0.9);
        }
        if f64::from(sample.in_flight) < limit / 2.0 {
            // The application does not use the limit: nothing to learn about it.
            return limit;
        }
        // A zero RTT (a response ready at once, or paused time) gives no gradient.
        let gradient = if short > 0.0 && long > 0.0 {
            (self.tolerance * long / short).clamp(0.5, 1.0)
        } else {
            1.0
        };
        let queue = if sample.dropped {
            0.0
        } else {
            f64::from(self.queue_size)
        };
        let target = limit * gradient + queue;
        limit * (1.0 - self.smoothing) + target * self.smoothing
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.tolerance >= 1.0 && self.tolerance.is_finite()) {
            return Err(ConfigError::new(
                "algorithm.tolerance",
                format!("{} must be a finite number >= 1", self.tolerance),
            ));
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return Err(ConfigError::new(
                "algorithm.smoothing",
                format!("{} is not within 0 < smoothing <= 1", self.smoothing),
            ));
        }
        if self.long_window == 0 {
            return Err(ConfigError::new(
                "algorithm.long_window",
                "must be at least 1",
            ));
        }
        if self.short_window == 0 {
            return Err(ConfigError::new(
                "algorithm.short_window",
                "must be at least 1",
            ));
        }
        if self.short_window > self.long_window {
            return Err(ConfigError::new(
                "algorithm.short_window",
                format!(
                    "{} is longer than long_window ({})",
                    self.short_window, self.long_window
                ),
            ));
        }
        Ok(())
    }
}

/// A built-in algorithm and its settings, as a config file names it:
/// `algorithm = { kind = "aimd", backoff_ratio = 0.8 }` or
/// `algorithm = { kind = "gradient2", tolerance = 2.0 }`. Default: Gradient2 with
/// its default settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AlgorithmConfig {
    /// [`Aimd`].
    Aimd(Aimd),
    /// [`Gradient2`].
    Gradient2(Gradient2),
}

impl Default for AlgorithmConfig {
    fn default() -> Self {
        AlgorithmConfig::Gradient2(Gradient2::default())
    }
}

impl From<Aimd> for AlgorithmConfig {
    fn from(a: Aimd) -> Self {
        AlgorithmConfig::Aimd(a)
    }
}

impl From<Gradient2> for AlgorithmConfig {
    fn from(g: Gradient2) -> Self {
        AlgorithmConfig::Gradient2(g)
    }
}

impl AlgorithmConfig {
    /// Checks the chosen algorithm's settings; the error names the bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            AlgorithmConfig::Aimd(a) => a.validate(),
            AlgorithmConfig::Gradient2(g) => g.validate(),
        }
    }

    pub(crate) fn into_running(self) -> Result<Box<dyn DynAlgorithm>, ConfigError> {
        match self {
            AlgorithmConfig::Aimd(a) => running(a),
            AlgorithmConfig::Gradient2(g) => running(g),
        }
    }
}

/// An algorithm with its state, behind one object-safe call, so that the limiter's
/// types do not carry the algorithm's.
pub(crate) trait DynAlgorithm: Send {
    fn update(&mut self, limit: f64, sample: &Sample) -> f64;
}

struct Running<A: LimitAlgorithm> {
    algorithm: A,
    state: A::State,
}

impl<A: LimitAlgorithm> DynAlgorithm for Running<A> {
    fn update(&mut self, limit: f64, sample: &Sample) -> f64 {
        self.algorithm.update(&mut self.state, limit, sample)
    }
}

/// Validates `algorithm` and starts it.
pub(crate) fn running<A: LimitAlgorithm>(
    algorithm: A,
) -> Result<Box<dyn DynAlgorithm>, ConfigError> {
    algorithm.validate()?;
    let state = algorithm.start();
    Ok(Box::new(Running { algorithm, state }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn aimd_grows_only_when_the_limit_is_in_use() {
        let a = Aimd::default();
        assert_eq!(a.update(&mut (), 10.0, &Sample::new(ms(5), 5, false)), 11.0);
        assert_eq!(a.update(&mut (), 10.0, &Sample::new(ms(5), 4, false)), 10.0);
        // Backs off by at least one, even when the ratio would round to the same.
        assert_eq!(a.update(&mut (), 10.0, &Sample::new(ms(5), 10, true)), 9.0);
        assert_eq!(a.update(&mut (), 3.0, &Sample::new(ms(5), 1, true)), 2.0);
        let half = Aimd {
            backoff_ratio: 0.5,
            ..Aimd::default()
        };
        assert_eq!(
            half.update(&mut (), 40.0, &Sample::new(ms(5), 1, true)),
            20.0
        );
        // At the threshold counts as slow.
        assert_eq!(
            a.update(
                &mut (),
                10.0,
                &Sample::new(Duration::from_secs(1), 10, false)
            ),
            9.0
        );
    }

    #[test]
    fn gradient2_ignores_fast_drops_and_zero_rtts() {
        let g = Gradient2::default();
        let mut s = g.start();
        assert_eq!(g.update(&mut s, 20.0, &Sample::new(ms(5), 20, true)), 20.0);
        assert_eq!(s.short_rtt(), Duration::ZERO, "a fast drop is not averaged");
        // Zero RTTs grow the limit as steady latency does.
        let l = g.update(&mut s, 20.0, &Sample::new(Duration::ZERO, 20, false));
        assert!((l - 20.8).abs() < 1e-9, "{l}");
        // App-limited: no change.
        assert_eq!(g.update(&mut s, 20.0, &Sample::new(ms(5), 9, false)), 20.0);
    }

    #[test]
    fn gradient2_slow_drops_shrink_but_never_grow() {
        let g = Gradient2 {
            short_window: 1,
            ..Gradient2::default()
        };
        let mut s = g.start();
        let mut limit = 20.0;
        for _ in 0..10 {
            limit = g.update(&mut s, limit, &Sample::new(ms(10), 20, false));
        }
        let before = limit;
        let after = g.update(&mut s, limit, &Sample::new(ms(10), 20, true));
        assert_eq!(after, before, "a drop at normal latency keeps the limit");
        let after = g.update(&mut s, limit, &Sample::new(ms(200), 20, true));
        assert!(after < before, "a timeout-like drop shrinks it");
    }

    #[test]
    fn gradient2_baseline_follows_a_latency_drop_during_warm_up() {
        // The long average is still a plain mean of its first samples when latency
        // drops to a tenth: each sample after the drop lowers it by a tenth more
        // than the mean would.
        let g = Gradient2 {
            short_window: 1,
            ..Gradient2::default()
        };
        let mut s = g.start();
        for _ in 0..5 {
            g.update(&mut s, 20.0, &Sample::new(ms(100), 20, false));
        }
        g.update(&mut s, 20.0, &Sample::new(ms(10), 20, false));
        // Mean of 500 + 10 ms over six samples, then the decay.
        let decayed = 0.9 * 510.0 / 6.0;
        assert!((s.long_rtt().as_secs_f64() * 1e3 - decayed).abs() < 1e-6);
        g.update(&mut s, 20.0, &Sample::new(ms(10), 20, false));
        let next = 0.9 * (0.9 * 510.0 + 10.0) / 7.0;
        let got = s.long_rtt().as_secs_f64() * 1e3;
        assert!(
            (got - next).abs() < 1e-6,
            "long average {got} ms, not {next}"
        );
    }

    #[test]
    fn settings_are_validated_by_field() {
        let e = Aimd {
            backoff_ratio: 1.0,
            ..Aimd::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "algorithm.backoff_ratio: 1 is not within 0.5..1"
        );
        let e = Aimd {
            latency_threshold: Duration::ZERO,
            ..Aimd::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field(), "algorithm.latency_threshold");
        let e = Aimd {
            increase: f64::NAN,
            ..Aimd::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field(), "algorithm.increase");
        let e = Gradient2 {
            tolerance: 0.9,
            ..Gradient2::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field(), "algorithm.tolerance");
        let e = Gradient2 {
            smoothing: 0.0,
            ..Gradient2::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field(), "algorithm.smoothing");
        let e = Gradient2 {
            long_window: 0,
            ..Gradient2::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field(), "algorithm.long_window");
        let e = Gradient2 {
            short_window: 700,
            ..Gradient2::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field(), "algorithm.short_window");
        Aimd::default().validate().unwrap();
        Gradient2::default().validate().unwrap();
    }
}
