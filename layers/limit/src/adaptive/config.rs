//! The adaptive limiter's settings, as a builder fills them or a config file gives
//! them.

use palisade_core::{ConfigError, RejectionKind};
use serde::{Deserialize, Serialize};

use super::algorithm::AlgorithmConfig;

/// The limit a limiter starts from when none is given, clamped to its bounds.
pub(crate) const DEFAULT_INITIAL_LIMIT: u32 = 20;

/// An adaptive limiter's settings.
///
/// Durations in files are written as `"1s"`, `"250ms"`. Unknown fields are errors.
///
/// ```
/// use palisade_limit::adaptive::{AdaptiveLimitConfig, AlgorithmConfig};
/// use palisade_core::RejectionKind;
///
/// let config: AdaptiveLimitConfig = toml::from_str(r#"
///     algorithm = { kind = "aimd", backoff_ratio = 0.8, latency_threshold = "300ms" }
///     min_limit = 5
///     max_limit = 100
///     rejection = "shed"
/// "#).unwrap();
/// config.validate().unwrap();
/// assert!(matches!(config.algorithm, AlgorithmConfig::Aimd(a) if a.backoff_ratio == 0.8));
/// assert_eq!(config.rejection, RejectionKind::Shed);
///
/// let bad: AdaptiveLimitConfig = toml::from_str("min_limit = 50\nmax_limit = 10").unwrap();
/// assert_eq!(bad.validate().unwrap_err().to_string(),
///     "min_limit: 50 is larger than max_limit (10)");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveLimitConfig {
    /// How the limit follows latency. Default: Gradient2.
    pub algorithm: AlgorithmConfig,
    /// The limit never goes below this, `>= 1`. Default 1.
    pub min_limit: u32,
    /// The limit never goes above this, `>= min_limit`. Default 200.
    pub max_limit: u32,
    /// The limit to start from, within `min_limit..=max_limit`. Default: 20, clamped
    /// to the bounds.
    pub initial_limit: Option<u32>,
    /// The rejection of a call over the limit: `bulkhead_full` (the default, for a
    /// client protecting itself from a slow downstream) or `shed` (for a server
    /// protecting itself from its callers).
    #[serde(with = "rejection_kind")]
    pub rejection: RejectionKind,
}

impl Default for AdaptiveLimitConfig {
    fn default() -> Self {
        Self {
            algorithm: AlgorithmConfig::default(),
            min_limit: 1,
            max_limit: 200,
            initial_limit: None,
            rejection: RejectionKind::BulkheadFull,
        }
    }
}

impl AdaptiveLimitConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.algorithm.validate()?;
        validate_limits(
            self.min_limit,
            self.max_limit,
            self.initial_limit,
            self.rejection,
        )
        .map(drop)
    }
}

/// Checks the bounds and the rejection kind; returns the initial limit.
pub(crate) fn validate_limits(
    min: u32,
    max: u32,
    initial: Option<u32>,
    rejection: RejectionKind,
) -> Result<u32, ConfigError> {
    if min == 0 {
        return Err(ConfigError::new("min_limit", "must be at least 1"));
    }
    if max == 0 {
        return Err(ConfigError::new("max_limit", "must be at least 1"));
    }
    if min > max {
        return Err(ConfigError::new(
            "min_limit",
            format!("{min} is larger than max_limit ({max})"),
        ));
    }
    let initial = match initial {
        Some(0) => return Err(ConfigError::new("initial_limit", "must be at least 1")),
        Some(n) if n < min || n > max => {
            return Err(ConfigError::new(
                "initial_limit",
                format!("{n} is not within min_limit..=max_limit ({min}..={max})"),
            ));
        }
        Some(n) => n,
        None => DEFAULT_INITIAL_LIMIT.clamp(min, max),
    };
    if !matches!(rejection, RejectionKind::BulkheadFull | RejectionKind::Shed) {
        return Err(ConfigError::new(
            "rejection",
            format!(
                "`{rejection}` does not describe a concurrency limit; use `bulkhead_full` (client side) or `shed` (server side)"
            ),
        ));
    }
    Ok(initial)
}

/// A [`RejectionKind`] in files: its snake_case word (`"shed"`).
pub(crate) mod rejection_kind {
    use palisade_core::RejectionKind;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        kind: &RejectionKind,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(kind.as_str())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<RejectionKind, D::Error> {
        let word = String::deserialize(deserializer)?;
        RejectionKind::ALL
            .into_iter()
            .find(|k| k.as_str() == word)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown rejection kind `{word}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(f: impl FnOnce(&mut AdaptiveLimitConfig)) -> ConfigError {
        let mut c = AdaptiveLimitConfig::default();
        f(&mut c);
        c.validate().unwrap_err()
    }

    #[test]
    fn defaults_are_valid() {
        AdaptiveLimitConfig::default().validate().unwrap();
        assert_eq!(validate_limits(1, 5, None, RejectionKind::Shed), Ok(5));
        assert_eq!(validate_limits(30, 50, None, RejectionKind::Shed), Ok(30));
    }

    #[test]
    fn every_bad_value_names_its_field() {
        assert_eq!(
            err(|c| c.min_limit = 0).to_string(),
            "min_limit: must be at least 1"
        );
        assert_eq!(
            err(|c| c.max_limit = 0).to_string(),
            "max_limit: must be at least 1"
        );
        assert_eq!(
            err(|c| c.initial_limit = Some(0)).to_string(),
            "initial_limit: must be at least 1"
        );
        assert_eq!(
            err(|c| c.initial_limit = Some(201)).to_string(),
            "initial_limit: 201 is not within min_limit..=max_limit (1..=200)"
        );
        assert_eq!(
            err(|c| c.rejection = RejectionKind::Timeout).field(),
            "rejection"
        );
        assert_eq!(
            err(
                |c| c.algorithm = AlgorithmConfig::Gradient2(super::super::Gradient2 {
                    smoothing: 2.0,
                    ..Default::default()
                })
            )
            .field(),
            "algorithm.smoothing"
        );
    }

    #[test]
    fn files_round_trip_and_refuse_unknown_fields() {
        let c = AdaptiveLimitConfig {
            rejection: RejectionKind::Shed,
            initial_limit: Some(7),
            ..Default::default()
        };
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<AdaptiveLimitConfig>(&text).unwrap(), c);
        let e = toml::from_str::<AdaptiveLimitConfig>("limit = 3").unwrap_err();
        assert!(e.to_string().contains("unknown field `limit`"), "{e}");
        let e = toml::from_str::<AdaptiveLimitConfig>("rejection = \"nope\"").unwrap_err();
        assert!(
            e.to_string().contains("unknown rejection kind `nope`"),
            "{e}"
        );
        let e = toml::from_str::<AdaptiveLimitConfig>(
            "algorithm = { kind = \"aimd\", backof_ratio = 0.5 }",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("unknown field `backof_ratio`"),
            "{e}"
        );
    }
}
