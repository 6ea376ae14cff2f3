use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a config file could not be loaded. Every variant names the file; the
/// display form points at what to fix:
///
/// ```text
/// palisade.toml: downstreams.customer.breaker.failure_rate_threshold: 1.5 is not within 0..=1
/// palisade.toml:14:1: downstreams.customer.breaker.failure_rate: unknown field `failure_rate`, expected one of …
/// palisade.yaml:3:9: did not find expected key
/// palisade.toml: downstreams.customer.retry.max_attempts: must be at least 1 (1 means no retries) (set by PALISADE__DOWNSTREAMS__CUSTOMER__RETRY__MAX_ATTEMPTS)
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file could not be read (missing, unreadable, too large).
    Read {
        /// The file.
        path: PathBuf,
        /// The reason.
        #[source]
        source: Arc<io::Error>,
    },
    /// The file name does not say which format it is in.
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The text is not valid TOML or YAML.
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line of the error, from 1.
        line: usize,
        /// The column of the error, from 1.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// The file is well-formed but a setting is wrong: an unknown field, a value of
    /// the wrong type, a missing required field, or a value the policy refuses.
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field path, e.g. `downstreams.customer.breaker.failure_rate_threshold`
        /// (empty for the whole document).
        field: String,
        /// What is wrong with it.
        problem: String,
        /// Line and column (from 1), where the parser knows them.
        location: Option<(usize, usize)>,
        /// The environment variable that set the value, if one did.
        env_var: Option<String>,
    },
    /// An environment override could not be applied.
    Env {
        /// The file the override applies to.
        path: PathBuf,
        /// The variable.
        var: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl ConfigFileError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigFileError::Read { path, .. }
            | ConfigFileError::UnknownFormat { path }
            | ConfigFileError::Syntax { path, .. }
            | ConfigFileError::Invalid { path, .. }
            | ConfigFileError::Env { path, .. } => path,
        }
    }

    /// The field path of an [`Invalid`](Self::Invalid) error.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigFileError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Line and column (from 1) of the error, where known.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            ConfigFileError::Syntax { line, column, .. } => Some((*line, *column)),
            ConfigFileError::Invalid { location, .. } => *location,
            _ => None,
        }
    }

    pub(crate) fn read(path: &Path, source: io::Error) -> Self {
        ConfigFileError::Read {
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }

    /// Whether the file was missing (as opposed to present and wrong).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ConfigFileError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigFileError::Read { path, source } => {
                write!(f, "{}: cannot read the file: {source}", path.display())
            }
            ConfigFileError::UnknownFormat { path } => write!(
                f,
                "{}: unknown config format; the file name must end in .toml, .yaml or .yml",
                path.display()
            ),
            ConfigFileError::Syntax {
                path,
                line,
                column,
                message,
            } => write!(f, "{}:{line}:{column}: {message}", path.display()),
            ConfigFileError::Invalid {
                path,
                field,
                problem,
                location,
                env_var,
            } => {
                write!(f, "{}", path.display())?;
                if let Some((line, column)) = location {
                    write!(f, ":{line}:{column}")?;
                }
                if field.is_empty() {
                    write!(f, ": {problem}")?;
                } else {
                    write!(f, ": {field}: {problem}")?;
                }
                if let Some(var) = env_var {
                    write!(f, " (set by {var})")?;
                }
                Ok(())
            }
            ConfigFileError::Env { path, var, problem } => {
                write!(f, "{}: {var}: {problem}", path.display())
            }
        }
    }
}
