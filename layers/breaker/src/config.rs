use std::time::Duration;

use palisade_core::ConfigError;
use palisade_core::window::{CountWindow, TimeWindow};
use serde::{Deserialize, Serialize};

use crate::machine::{Tunables, Window};

/// How a breaker counts the calls it judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowConfig {
    /// The last `size` calls.
    Count {
        /// Calls in the window, `1..=524288`.
        size: u32,
    },
    /// The calls of the last `length`, in `buckets` slices that leave the window one
    /// at a time.
    Time {
        /// The window's length, e.g. `"60s"`.
        #[serde(with = "humantime_serde")]
        length: Duration,
        /// Slices of the window, `1..=4096` (default 10). Each counts up to 65,535 calls.
        #[serde(default = "default_buckets")]
        buckets: u32,
    },
}

fn default_buckets() -> u32 {
    10
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig::Count { size: 100 }
    }
}

/// Whether an open breaker fails calls fast or holds back readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `poll_ready` never waits on the breaker; a refused call fails at once with a
    /// circuit-open rejection carrying the remaining open time. The default.
    #[default]
    FailFast,
    /// `poll_ready` is pending while the breaker refuses calls, and ready again when
    /// it turns half-open with a probe slot free. For use inside a load balancer,
    /// which then routes around the endpoint.
    Gate,
}

/// A circuit breaker's settings, as a builder fills them or a config file gives them.
///
/// Durations in files are written as `"30s"`, `"250ms"`. Unknown fields are errors.
///
/// ```
/// use palisade_breaker::BreakerConfig;
///
/// let config: BreakerConfig = toml::from_str(r#"
///     window = { kind = "time", length = "60s", buckets = 12 }
///     failure_rate_threshold = 0.25
///     slow_call_duration = "800ms"
///     wait_in_open = "10s"
/// "#).unwrap();
/// config.validate().unwrap();
///
/// let bad: BreakerConfig = toml::from_str("failure_rate_threshold = 1.5").unwrap();
/// assert_eq!(bad.validate().unwrap_err().to_string(),
///     "failure_rate_threshold: 1.5 is not within 0..=1");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// The window calls are judged over. Default: the last 100 calls.
    pub window: WindowConfig,
    /// Open when failures ÷ calls in the window reach this, `0..=1`. Default 0.5.
    /// (0 opens on the first failure once the window holds the minimum calls.)
    pub failure_rate_threshold: f64,
    /// Open when slow calls ÷ calls reach this, `0..=1`. Default 1.0. Needs
    /// `slow_call_duration`.
    pub slow_call_rate_threshold: f64,
    /// A call taking at least this long is slow. Default: none (slow-call detection
    /// off, and the breaker never reads the clock on the closed path).
    #[serde(with = "humantime_serde")]
    pub slow_call_duration: Option<Duration>,
    /// The rates are judged only once the window holds this many calls. Default 20.
    ///
    /// Rates are judged when a failure or slow call is recorded and, for count
    /// windows, also when the window first reaches this many calls.
    pub minimum_calls: u32,
    /// Also open after this many failures in a row, whatever the rates. Default: off.
    pub consecutive_failures: Option<u32>,
    /// How long the breaker stays open after its first trip. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub wait_in_open: Duration,
    /// Each further trip without closing in between multiplies the wait by this,
    /// `>= 1`. Default 2.
    pub wait_multiplier: f64,
    /// The longest open wait. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub max_wait_in_open: Duration,
    /// Each wait is shortened by a random fraction up to this, `0..=1`, so breakers
    /// that tripped together do not probe together. Default 0.2.
    pub wait_jitter: f64,
    /// Probe calls admitted at once while half-open; further calls are rejected, not
    /// queued. Default 5.
    pub half_open_probes: u32,
    /// Successful probes needed to close. Default: `half_open_probes`.
    pub half_open_successes: Option<u32>,
    /// Reopen if the half-open state has not closed within this. Default: no limit.
    #[serde(with = "humantime_serde")]
    pub max_wait_in_half_open: Option<Duration>,
    /// Fail fast (default) or gate readiness.
    pub mode: Mode,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: WindowConfig::default(),
            failure_rate_threshold: 0.5,
            slow_call_rate_threshold: 1.0,
            slow_call_duration: None,
            minimum_calls: 20,
            consecutive_failures: None,
            wait_in_open: Duration::from_secs(30),
            wait_multiplier: 2.0,
            max_wait_in_open: Duration::from_secs(300),
            wait_jitter: 0.2,
            half_open_probes: 5,
            half_open_successes: None,
            max_wait_in_half_open: None,
            mode: Mode::FailFast,
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn unit_interval(field: &'static str, v: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::new(field, format!("{v} is not within 0..=1")))
    }
}

impl BreakerConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.window {
            WindowConfig::Count { size } => {
                if size == 0 || size > CountWindow::MAX_SIZE {
                    return Err(ConfigError::new(
                        "window.size",
                        format!("{size} is not within 1..={}", CountWindow::MAX_SIZE),
                    ));
                }
                if self.minimum_calls > size {
                    return Err(ConfigError::new(
                        "minimum_calls",
                        format!(
                            "{} is larger than the window ({size} calls), so the breaker could never open",
                            self.minimum_calls
                        ),
                    ));
                }
            }
            WindowConfig::Time { length, buckets } => {
                if buckets == 0 || buckets > TimeWindow::MAX_BUCKETS {
                    return Err(ConfigError::new(
                        "window.buckets",
                        format!("{buckets} is not within 1..={}", TimeWindow::MAX_BUCKETS),
                    ));
                }
                if length.is_zero() {
                    return Err(ConfigError::new(
                        "window.length",
                        "must be greater than zero",
                    ));
                }
                if nanos(length) / u64::from(buckets) == 0 {
                    return Err(ConfigError::new(
                        "window.length",
                        format!("{length:?} is too short for {buckets} buckets"),
                    ));
                }
            }
        }
        unit_interval("failure_rate_threshold", self.failure_rate_threshold)?;
        unit_interval("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        unit_interval("wait_jitter", self.wait_jitter)?;
        if self.slow_call_duration == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "slow_call_duration",
                "must be greater than zero (leave it unset to turn slow-call detection off)",
            ));
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::new("minimum_calls", "must be at least 1"));
        }
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                "consecutive_failures",
                "must be at least 1 (leave it unset to turn the mode off)",
            ));
        }
        if self.wait_in_open.is_zero() {
            return Err(ConfigError::new(
                "wait_in_open",
                "must be greater than zero",
            ));
        }
        if !(self.wait_multiplier >= 1.0 && self.wait_multiplier.is_finite()) {
            return Err(ConfigError::new(
                "wait_multiplier",
                format!("{} must be a finite number >= 1", self.wait_multiplier),
            ));
        }
        if self.max_wait_in_open < self.wait_in_open {
            return Err(ConfigError::new(
                "max_wait_in_open",
                format!(
                    "{:?} is shorter than wait_in_open ({:?})",
                    self.max_wait_in_open, self.wait_in_open
                ),
            ));
        }
        if self.half_open_probes == 0 || self.half_open_probes > 0xFFFF {
            return Err(ConfigError::new(
                "half_open_probes",
                format!("{} is not within 1..=65535", self.half_open_probes),
            ));
        }
        if let Some(n) = self.half_open_successes
            && (n == 0 || n > 0xFFFF)
        {
            return Err(ConfigError::new(
                "half_open_successes",
                format!("{n} is not within 1..=65535"),
            ));
        }
        if self.max_wait_in_half_open == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "max_wait_in_half_open",
                "must be greater than zero (leave it unset for no limit)",
            ));
        }
        Ok(())
    }

    pub(crate) fn tunables(&self) -> Tunables {
        Tunables {
            failure_rate: self.failure_rate_threshold,
            slow_rate: self.slow_call_rate_threshold,
            slow_call_nanos: self.slow_call_duration.map_or(0, |d| nanos(d).max(1)),
            minimum_calls: u64::from(self.minimum_calls),
            consecutive_failures: self.consecutive_failures.map_or(0, u64::from),
            wait_nanos: nanos(self.wait_in_open),
            wait_multiplier: self.wait_multiplier,
            max_wait_nanos: nanos(self.max_wait_in_open),
            wait_jitter: self.wait_jitter,
            probes: u64::from(self.half_open_probes),
            probe_successes: u64::from(self.half_open_successes.unwrap_or(self.half_open_probes)),
            max_half_open_nanos: self.max_wait_in_half_open.map_or(0, |d| nanos(d).max(1)),
        }
    }

    /// Builds the window. Call after [`validate`](Self::validate).
    pub(crate) fn build_window(&self) -> Result<Window, ConfigError> {
        match self.window {
            WindowConfig::Count { size } => {
                CountWindow::new(size).map(Window::Count).ok_or_else(|| {
                    ConfigError::new("window.size", format!("{size} is not a valid window size"))
                })
            }
            WindowConfig::Time { length, buckets } => {
                TimeWindow::new(buckets, nanos(length) / u64::from(buckets.max(1)))
                    .map(Window::Time)
                    .ok_or_else(|| ConfigError::new("window", "is not a valid time window"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(f: impl FnOnce(&mut BreakerConfig)) -> String {
        let mut c = BreakerConfig::default();
        f(&mut c);
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid() {
        BreakerConfig::default().validate().unwrap();
    }

    #[test]
    fn every_bad_value_names_its_field() {
        assert_eq!(
            err(|c| c.failure_rate_threshold = 1.5),
            "failure_rate_threshold: 1.5 is not within 0..=1"
        );
        assert_eq!(
            err(|c| c.slow_call_rate_threshold = -0.1),
            "slow_call_rate_threshold: -0.1 is not within 0..=1"
        );
        assert_eq!(
            err(|c| c.failure_rate_threshold = f64::NAN),
            "failure_rate_threshold: NaN is not within 0..=1"
        );
        assert_eq!(
            err(|c| c.window = WindowConfig::Count { size: 0 }),
            "window.size: 0 is not within 1..=524288"
        );
        assert_eq!(
            err(|c| c.window = WindowConfig::Time {
                length: Duration::ZERO,
                buckets: 10
            }),
            "window.length: must be greater than zero"
        );
        assert_eq!(
            err(|c| c.window = WindowConfig::Time {
                length: Duration::from_secs(1),
                buckets: 0
            }),
            "window.buckets: 0 is not within 1..=4096"
        );
        assert_eq!(
            err(|c| c.half_open_probes = 0),
            "half_open_probes: 0 is not within 1..=65535"
        );
        assert_eq!(
            err(|c| c.half_open_successes = Some(0)),
            "half_open_successes: 0 is not within 1..=65535"
        );
        assert_eq!(
            err(|c| c.minimum_calls = 0),
            "minimum_calls: must be at least 1"
        );
        assert!(
            err(|c| c.minimum_calls = 101)
                .starts_with("minimum_calls: 101 is larger than the window")
        );
        assert!(err(|c| c.consecutive_failures = Some(0)).starts_with("consecutive_failures:"));
        assert!(err(|c| c.wait_in_open = Duration::ZERO).starts_with("wait_in_open:"));
        assert!(err(|c| c.wait_multiplier = 0.5).starts_with("wait_multiplier:"));
        assert!(
            err(|c| c.max_wait_in_open = Duration::from_secs(1)).starts_with("max_wait_in_open:")
        );
        assert!(err(|c| c.wait_jitter = 2.0).starts_with("wait_jitter:"));
        assert!(
            err(|c| c.slow_call_duration = Some(Duration::ZERO)).starts_with("slow_call_duration:")
        );
        assert!(
            err(|c| c.max_wait_in_half_open = Some(Duration::ZERO))
                .starts_with("max_wait_in_half_open:")
        );
    }

    #[test]
    fn files_with_unknown_fields_are_refused() {
        let e = toml::from_str::<BreakerConfig>("failure_rate = 0.5").unwrap_err();
        assert!(
            e.to_string().contains("unknown field `failure_rate`"),
            "{e}"
        );
        let e =
            toml::from_str::<BreakerConfig>("window = { kind = \"count\", size = 10, extra = 1 }")
                .unwrap_err();
        assert!(e.to_string().contains("unknown field `extra`"), "{e}");
    }

    #[test]
    fn reads_a_full_file() {
        let c: BreakerConfig = toml::from_str(
            r#"
            window = { kind = "count", size = 50 }
            failure_rate_threshold = 0.3
            slow_call_rate_threshold = 0.8
            slow_call_duration = "2s"
            minimum_calls = 10
            consecutive_failures = 5
            wait_in_open = "5s"
            wait_multiplier = 1.5
            max_wait_in_open = "1m"
            wait_jitter = 0.0
            half_open_probes = 2
            half_open_successes = 3
            max_wait_in_half_open = "30s"
            mode = "gate"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.mode, Mode::Gate);
        assert_eq!(c.slow_call_duration, Some(Duration::from_secs(2)));
        assert_eq!(c.tunables().probe_successes, 3);
    }
}
