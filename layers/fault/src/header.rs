use std::fmt;
use std::time::Duration;

use crate::config::{AbortKind, MAX_DELAY};

/// The request header that asks for faults on this one request, when the layer
/// allows it ([`FaultLayer::allow_header_faults`](crate::FaultLayer::allow_header_faults)).
///
/// Value: `;`-separated parts, each at most once: `delay=<duration>` (`200ms`, `1s`),
/// `error=<status 400..=599>`, `abort` or `abort=reset|refused`. Example:
/// `x-palisade-fault: delay=200ms;error=503`.
pub const FAULT_HEADER: &str = "x-palisade-fault";

/// Faults a request asked for through [`FAULT_HEADER`]; each applies to that request
/// for certain (no percentage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestedFaults {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer with this error status.
    pub error: Option<u16>,
    /// Then fail as if the connection had failed.
    pub abort: Option<AbortKind>,
}

/// Why a [`FAULT_HEADER`] value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderFaultError {
    problem: String,
}

impl HeaderFaultError {
    pub(crate) fn parse_error(problem: &str) -> Self {
        Self::new(problem)
    }

    fn new(problem: impl Into<String>) -> Self {
        Self {
            problem: problem.into(),
        }
    }
}

impl fmt::Display for HeaderFaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{FAULT_HEADER}: {}", self.problem)
    }
}

impl std::error::Error for HeaderFaultError {}

impl RequestedFaults {
    /// Reads a [`FAULT_HEADER`] value.
    ///
    /// ```
    /// use palisade_fault::{AbortKind, RequestedFaults};
    /// use std::time::Duration;
    ///
    /// let asked = RequestedFaults::parse("delay=200ms; abort").unwrap();
    /// assert_eq!(asked.delay, Some(Duration::from_millis(200)));
    /// assert_eq!(asked.abort, Some(AbortKind::Reset));
    ///
    /// let bad = RequestedFaults::parse("error=200").unwrap_err();
    /// assert_eq!(bad.to_string(), "x-palisade-fault: error=200 is not an error status (400..=599)");
    /// ```
    pub fn parse(value: &str) -> Result<Self, HeaderFaultError> {
        let mut asked = RequestedFaults::default();
        let mut any = false;
        for part in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            any = true;
            let (key, arg) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (part, None),
            };
            match (key, arg) {
                ("delay", Some(arg)) => {
                    if asked.delay.is_some() {
                        return Err(HeaderFaultError::new("delay is given twice"));
                    }
                    let delay = humantime::parse_duration(arg).map_err(|e| {
                        HeaderFaultError::new(format!("delay={arg} is not a duration ({e})"))
                    })?;
                    if delay > MAX_DELAY {
                        return Err(HeaderFaultError::new(format!(
                            "delay={arg} is longer than 1h"
                        )));
                    }
                    asked.delay = Some(delay);
                }
                ("error", Some(arg)) => {
                    if asked.error.is_some() {
                        return Err(HeaderFaultError::new("error is given twice"));
                    }
                    match arg.parse::<u16>() {
                        Ok(status) if (400..=599).contains(&status) => asked.error = Some(status),
                        _ => {
                            return Err(HeaderFaultError::new(format!(
                                "error={arg} is not an error status (400..=599)"
                            )));
                        }
                    }
                }
                ("abort", arg) => {
                    if asked.abort.is_some() {
                        return Err(HeaderFaultError::new("abort is given twice"));
                    }
                    asked.abort = Some(match arg {
                        None | Some("reset") => AbortKind::Reset,
                        Some("refused") => AbortKind::Refused,
                        Some(other) => {
                            return Err(HeaderFaultError::new(format!(
                                "abort={other} is not reset or refused"
                            )));
                        }
                    });
                }
                ("delay" | "error", None) => {
                    return Err(HeaderFaultError::new(format!("{key} needs a value")));
                }
                _ => {
                    return Err(HeaderFaultError::new(format!(
                        "{part:?} is not delay=, error= or abort"
                    )));
                }
            }
        }
        if !any {
            return Err(HeaderFaultError::new("is empty"));
        }
        if asked.error.is_some() && asked.abort.is_some() {
            return Err(HeaderFaultError::new(
                "error and abort cannot both be given",
            ));
        }
        Ok(asked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_part() {
        assert_eq!(
            RequestedFaults::parse("delay=1s;error=503").unwrap(),
            RequestedFaults {
                delay: Some(Duration::from_secs(1)),
                error: Some(503),
                abort: None
            }
        );
        assert_eq!(
            RequestedFaults::parse("abort=refused;").unwrap().abort,
            Some(AbortKind::Refused)
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for (value, message) in [
            ("", "x-palisade-fault: is empty"),
            ("delay", "x-palisade-fault: delay needs a value"),
            (
                "delay=soon",
                "x-palisade-fault: delay=soon is not a duration (expected number at 0)",
            ),
            ("delay=2h", "x-palisade-fault: delay=2h is longer than 1h"),
            (
                "delay=1s;delay=2s",
                "x-palisade-fault: delay is given twice",
            ),
            (
                "error=abc",
                "x-palisade-fault: error=abc is not an error status (400..=599)",
            ),
            (
                "abort=boom",
                "x-palisade-fault: abort=boom is not reset or refused",
            ),
            (
                "error=500;abort",
                "x-palisade-fault: error and abort cannot both be given",
            ),
            (
                "explode",
                "x-palisade-fault: \"explode\" is not delay=, error= or abort",
            ),
        ] {
            assert_eq!(
                RequestedFaults::parse(value).unwrap_err().to_string(),
                message
            );
        }
    }
}
