use std::time::Duration;

use palisade_core::ConfigError;
use serde::{Deserialize, Serialize};

/// A bulkhead's settings, as a builder fills them or a config file gives them.
///
/// Durations in files are written as `"500ms"`, `"2s"`. Unknown fields are errors.
///
/// ```
/// use palisade_limit::bulkhead::BulkheadConfig;
/// use std::time::Duration;
///
/// let config: BulkheadConfig = toml::from_str(r#"
///     max_concurrent = 16
///     max_queue = 32
///     max_wait = "250ms"
/// "#).unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.max_wait, Duration::from_millis(250));
///
/// let bad: BulkheadConfig = toml::from_str("max_concurrent = 0").unwrap();
/// assert_eq!(bad.validate().unwrap_err().to_string(),
///     "max_concurrent: must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkheadConfig {
    /// Calls admitted at once, `1..=1000000`. Default 25. Can be changed on a
    /// running bulkhead through its [`BulkheadHandle`](super::BulkheadHandle).
    pub max_concurrent: u32,
    /// Calls that may wait for a permit when all are taken, `0..=1000000`.
    /// Default 0: a call that finds the bulkhead full is refused at once.
    pub max_queue: u32,
    /// The longest a call waits in the queue before it is refused; greater than
    /// zero when `max_queue` is. A shorter [`Deadline`](palisade_core::Deadline) of
    /// the request bounds the wait too. Default 1 s (used only with a queue).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 25,
            max_queue: 0,
            max_wait: Duration::from_secs(1),
        }
    }
}

impl BulkheadConfig {
    /// The largest `max_concurrent` and `max_queue` accepted.
    pub const MAX: u32 = 1_000_000;

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_max_concurrent(self.max_concurrent)?;
        if self.max_queue > Self::MAX {
            return Err(ConfigError::new(
                "max_queue",
                format!("{} is not within 0..={}", self.max_queue, Self::MAX),
            ));
        }
        if self.max_queue > 0 && self.max_wait.is_zero() {
            return Err(ConfigError::new(
                "max_wait",
                "must be greater than zero when max_queue is (set max_queue = 0 to refuse at once when full)",
            ));
        }
        Ok(())
    }
}

/// Checks a `max_concurrent` value (also when changed at runtime).
pub(crate) fn check_max_concurrent(n: u32) -> Result<(), ConfigError> {
    if n == 0 {
        return Err(ConfigError::new("max_concurrent", "must be at least 1"));
    }
    if n > BulkheadConfig::MAX {
        return Err(ConfigError::new(
            "max_concurrent",
            format!("{n} is not within 1..={}", BulkheadConfig::MAX),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(f: impl FnOnce(&mut BulkheadConfig)) -> String {
        let mut c = BulkheadConfig::default();
        f(&mut c);
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid() {
        BulkheadConfig::default().validate().unwrap();
    }

    #[test]
    fn every_bad_value_names_its_field() {
        assert_eq!(
            err(|c| c.max_concurrent = 0),
            "max_concurrent: must be at least 1"
        );
        assert_eq!(
            err(|c| c.max_concurrent = 1_000_001),
            "max_concurrent: 1000001 is not within 1..=1000000"
        );
        assert_eq!(
            err(|c| c.max_queue = 1_000_001),
            "max_queue: 1000001 is not within 0..=1000000"
        );
        assert!(
            err(|c| {
                c.max_queue = 1;
                c.max_wait = Duration::ZERO;
            })
            .starts_with("max_wait: must be greater than zero")
        );
        // No queue: the wait is never used, so zero is fine.
        BulkheadConfig {
            max_wait: Duration::ZERO,
            ..BulkheadConfig::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn files_with_unknown_fields_are_refused() {
        let e = toml::from_str::<BulkheadConfig>("max_concurrency = 5").unwrap_err();
        assert!(
            e.to_string().contains("unknown field `max_concurrency`"),
            "{e}"
        );
    }

    #[test]
    fn reads_a_full_file_and_fills_defaults() {
        let c: BulkheadConfig = toml::from_str(
            r#"
            max_concurrent = 4
            max_queue = 8
            max_wait = "1500ms"
            "#,
        )
        .unwrap();
        assert_eq!(
            c,
            BulkheadConfig {
                max_concurrent: 4,
                max_queue: 8,
                max_wait: Duration::from_millis(1500),
            }
        );
        let c: BulkheadConfig = toml::from_str("max_queue = 3").unwrap();
        assert_eq!(c.max_concurrent, 25);
        assert_eq!(c.max_wait, Duration::from_secs(1));
    }
}
