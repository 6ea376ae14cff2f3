use std::time::Duration;

use palisade_core::ConfigError;
use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::budget::BudgetConfig;

/// A retry layer's settings, as a builder fills them or a config file gives them.
///
/// ```
/// use palisade_retry::RetryConfig;
///
/// let config: RetryConfig = toml::from_str(r#"
///     max_attempts = 4
///     backoff = { strategy = "decorrelated_jitter", base = "20ms", max = "1s" }
///     budget = { deposit_ratio = 0.1, min_retries_per_sec = 5 }
/// "#).unwrap();
/// config.validate().unwrap();
///
/// let bad: RetryConfig = toml::from_str("max_attempts = 0").unwrap();
/// assert_eq!(bad.validate().unwrap_err().to_string(),
///     "max_attempts: must be at least 1 (1 means no retries)");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per call, the first included (1 = never retry). Default 3.
    pub max_attempts: u32,
    /// The wait before each retry. Default: full jitter from 50 ms, doubling, up to 2 s.
    pub backoff: Backoff,
    /// The success-funded budget shared by every clone of the layer.
    pub budget: BudgetConfig,
    /// The longest `Retry-After` (or rejection hint) the layer waits out; a longer
    /// one ends the call instead; at most a day. Default: the backoff's `max`.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Option<Duration>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::default(),
            budget: BudgetConfig::default(),
            max_retry_after: None,
        }
    }
}

/// The longest backoff, and the longest `Retry-After` a retry may honour.
const MAX_DELAY: Duration = Duration::from_secs(86_400);

impl RetryConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new(
                "max_attempts",
                "must be at least 1 (1 means no retries)",
            ));
        }
        if self.max_attempts > 100 {
            return Err(ConfigError::new(
                "max_attempts",
                format!("{} is more than 100", self.max_attempts),
            ));
        }
        let b = &self.backoff;
        if !(b.multiplier >= 1.0 && b.multiplier.is_finite()) {
            return Err(ConfigError::new(
                "backoff.multiplier",
                format!("{} must be a finite number >= 1", b.multiplier),
            ));
        }
        if b.max < b.base {
            return Err(ConfigError::new(
                "backoff.max",
                format!("{:?} is shorter than backoff.base ({:?})", b.max, b.base),
            ));
        }
        if b.max > MAX_DELAY {
            return Err(ConfigError::new(
                "backoff.max",
                format!("{:?} is longer than a day", b.max),
            ));
        }
        if let Some(max) = self.max_retry_after
            && max > MAX_DELAY
        {
            return Err(ConfigError::new(
                "max_retry_after",
                format!("{max:?} is longer than a day"),
            ));
        }
        self.budget.validate()?;
        Ok(())
    }

    pub(crate) fn max_retry_after(&self) -> Duration {
        self.max_retry_after.unwrap_or(self.backoff.max)
    }
}
