//! Small checks shared by the config's own validators.

use std::time::Duration;

use palisade_core::ConfigError;

/// Runs a layer builder only to validate its settings: whatever the builder
/// registers goes to a recorder that keeps nothing, so validating a file leaves no
/// metric series behind.
pub(crate) fn quietly<T>(
    build: impl FnOnce() -> Result<T, ConfigError>,
) -> Result<(), ConfigError> {
    metrics::with_local_recorder(&metrics::NoopRecorder, build).map(drop)
}

pub(crate) fn unit_interval(field: &'static str, v: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::new(field, format!("{v} is not within 0..=1")))
    }
}

pub(crate) fn positive(field: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(ConfigError::new(field, "must be greater than zero"))
    } else {
        Ok(())
    }
}
