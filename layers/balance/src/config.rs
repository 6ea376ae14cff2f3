use std::time::Duration;

use palisade_core::ConfigError;
use serde::{Deserialize, Serialize};

/// How the balancer measures an endpoint's load when it compares two candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadMetric {
    /// Peak-EWMA of response latency times (pending requests + 1), as Finagle and
    /// tower measure it: a latency spike counts at once, recovery decays over
    /// [`BalanceConfig::decay`]. Failures count as at least
    /// [`BalanceConfig::failure_penalty`] so a replica that fails fast is not mistaken
    /// for a fast one. The default.
    #[default]
    PeakEwma,
    /// Requests in flight only.
    PendingRequests,
}

/// When an endpoint is taken out of rotation (ejected) for failing.
///
/// Both detectors judge calls through the balancer's
/// [`Classify`](palisade_core::Classify): ignored outcomes (a 4xx) count for
/// neither side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierConfig {
    /// Eject after this many failures in a row (0 turns the detector off). Default 5.
    pub consecutive_failures: u32,
    /// Eject when at least this share of the calls in [`Self::failure_rate_interval`]
    /// failed (0 < rate <= 1; `None` turns the detector off). Default 0.5.
    pub failure_rate: Option<f64>,
    /// The window the failure rate is measured over. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub failure_rate_interval: Duration,
    /// Calls the window must hold before the failure rate is judged. Default 20.
    pub failure_rate_min_calls: u32,
    /// The first ejection lasts this long; the n-th in a row lasts n times as long.
    /// Default 1 s.
    #[serde(with = "humantime_serde")]
    pub base_ejection_time: Duration,
    /// The longest an ejection lasts. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub max_ejection_time: Duration,
    /// At most this share of the endpoints (0..=100) is ejected at once; one endpoint
    /// may always be ejected when none is. Default 50.
    pub max_ejection_percent: u8,
    /// Panic mode: when fewer than this share (0..=100) of the endpoints is healthy,
    /// balance over all of them, ejected or not, rather than overload the few left.
    /// 0 turns panic mode off. Default 50.
    pub panic_threshold_percent: u8,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: Some(0.5),
            failure_rate_interval: Duration::from_secs(10),
            failure_rate_min_calls: 20,
            base_ejection_time: Duration::from_secs(1),
            max_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 50,
            panic_threshold_percent: 50,
        }
    }
}

/// Slow start: a new endpoint (or one back from ejection) gets a growing share of
/// traffic instead of its full share at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlowStartConfig {
    /// How long the ramp lasts (0 turns slow start off). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The share of its full traffic an endpoint gets when the ramp starts
    /// (0 < share <= 1); it grows linearly to 1 over the window. Default 0.1.
    pub min_weight: f64,
}

impl Default for SlowStartConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            min_weight: 0.1,
        }
    }
}

/// A balancer's settings, as a builder fills them or a config file gives them.
///
/// ```
/// use palisade_balance::BalanceConfig;
///
/// let config: BalanceConfig = toml::from_str(r#"
///     load = "peak_ewma"
///     decay = "5s"
///     outlier = { consecutive_failures = 3, base_ejection_time = "2s" }
///     slow_start = { window = "30s" }
/// "#).unwrap();
/// config.validate().unwrap();
///
/// let bad: BalanceConfig = toml::from_str("outlier = { failure_rate = 1.5 }").unwrap();
/// assert_eq!(bad.validate().unwrap_err().to_string(),
///     "outlier.failure_rate: 1.5 is not within 0..=1 (and above 0)");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalanceConfig {
    /// How load is measured. Default peak-EWMA.
    pub load: LoadMetric,
    /// Peak-EWMA: how fast an old latency estimate fades. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub decay: Duration,
    /// Peak-EWMA: the latency assumed for an endpoint not yet measured, until any
    /// endpoint has answered (then the average latency over all endpoints is
    /// assumed). Default 30 ms.
    #[serde(with = "humantime_serde")]
    pub default_rtt: Duration,
    /// Peak-EWMA: the latency a failed call counts as, at least, so a replica that
    /// fails fast (connection refused) is avoided after its first failure instead of
    /// looking like the fastest; the penalty fades over `decay`. Zero turns it off.
    /// Default 1 s.
    #[serde(with = "humantime_serde")]
    pub failure_penalty: Duration,
    /// Outlier ejection.
    pub outlier: OutlierConfig,
    /// Slow start.
    pub slow_start: SlowStartConfig,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            load: LoadMetric::PeakEwma,
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            failure_penalty: Duration::from_secs(1),
            outlier: OutlierConfig::default(),
            slow_start: SlowStartConfig::default(),
        }
    }
}

impl BalanceConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.decay.is_zero() {
            return Err(ConfigError::new("decay", "must be longer than zero"));
        }
        let o = &self.outlier;
        if let Some(rate) = o.failure_rate {
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(ConfigError::new(
                    "outlier.failure_rate",
                    format!("{rate} is not within 0..=1 (and above 0)"),
                ));
            }
            if o.failure_rate_interval < Duration::from_millis(10) {
                return Err(ConfigError::new(
                    "outlier.failure_rate_interval",
                    format!("{:?} is shorter than 10ms", o.failure_rate_interval),
                ));
            }
        }
        if o.base_ejection_time.is_zero() {
            return Err(ConfigError::new(
                "outlier.base_ejection_time",
                "must be longer than zero",
            ));
        }
        if o.max_ejection_time < o.base_ejection_time {
            return Err(ConfigError::new(
                "outlier.max_ejection_time",
                format!(
                    "{:?} is shorter than outlier.base_ejection_time ({:?})",
                    o.max_ejection_time, o.base_ejection_time
                ),
            ));
        }
        if o.max_ejection_percent > 100 {
            return Err(ConfigError::new(
                "outlier.max_ejection_percent",
                format!("{} is not within 0..=100", o.max_ejection_percent),
            ));
        }
        if o.panic_threshold_percent > 100 {
            return Err(ConfigError::new(
                "outlier.panic_threshold_percent",
                format!("{} is not within 0..=100", o.panic_threshold_percent),
            ));
        }
        let s = &self.slow_start;
        if !(s.min_weight > 0.0 && s.min_weight <= 1.0) {
            return Err(ConfigError::new(
                "slow_start.min_weight",
                format!("{} is not within 0..=1 (and above 0)", s.min_weight),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let err = toml::from_str::<BalanceConfig>("laod = \"peak_ewma\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `laod`"), "{err}");
        let mut c = BalanceConfig::default();
        c.outlier.max_ejection_time = Duration::from_millis(10);
        assert_eq!(
            c.validate().unwrap_err().field(),
            "outlier.max_ejection_time"
        );
        let mut c = BalanceConfig::default();
        c.slow_start.min_weight = 0.0;
        assert_eq!(c.validate().unwrap_err().field(), "slow_start.min_weight");
        let mut c = BalanceConfig::default();
        c.outlier.panic_threshold_percent = 101;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "outlier.panic_threshold_percent: 101 is not within 0..=100"
        );
        BalanceConfig::default().validate().unwrap();
    }
}
