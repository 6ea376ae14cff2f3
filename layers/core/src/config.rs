use std::borrow::Cow;
use std::fmt;

/// A configuration value that was refused, naming the field and the problem.
///
/// Display form: `<field>: <problem>`, e.g.
/// `failure_rate_threshold: 1.5 is not within 0..=1`. Builders and config loaders of
/// every layer return this type so the message always points at the setting to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: Cow<'static, str>,
    problem: String,
}

impl ConfigError {
    /// A refusal of `field` because of `problem`.
    pub fn new(field: impl Into<Cow<'static, str>>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The field path, e.g. `failure_rate_threshold` or `breaker.window.size`.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with the value.
    pub fn problem(&self) -> &str {
        &self.problem
    }

    /// The same error with `prefix.` put in front of the field path, for nesting
    /// (`downstreams.customer.breaker` + `failure_rate_threshold`).
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = Cow::Owned(format!("{prefix}.{}", self.field));
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_nested_field() {
        let e = ConfigError::new("failure_rate_threshold", "1.5 is not within 0..=1")
            .within("breaker")
            .within("downstreams.customer");
        assert_eq!(
            e.to_string(),
            "downstreams.customer.breaker.failure_rate_threshold: 1.5 is not within 0..=1"
        );
        assert_eq!(
            e.field(),
            "downstreams.customer.breaker.failure_rate_threshold"
        );
    }
}
