use std::time::Duration;

use palisade_core::ConfigError;
use serde::{Deserialize, Serialize};

/// The faults a [`FaultLayer`](crate::FaultLayer) injects, as the admin API or a
/// config file gives them (JSON, TOML, YAML).
///
/// Every part is optional; an empty config injects nothing. Durations are written
/// as `"200ms"`, `"1s"`. Unknown fields are errors.
///
/// Of the requests that match (all of them without `match`), `abort.percent` are
/// aborted and `error.percent` answered with an error, from one roll, so the two
/// shares are exact and never overlap (their sum must not exceed 100).
/// Independently of that, `latency.percent` are delayed first, so a delayed request
/// may still be aborted or answered with an error after its delay.
///
/// ```
/// use palisade_fault::FaultConfig;
/// use std::time::Duration;
///
/// let config: FaultConfig = serde_json::from_str(r#"{
///     "latency": { "percent": 10, "delay": "200ms", "max": "400ms" },
///     "error": { "percent": 20, "status": 503 },
///     "abort": { "percent": 5, "kind": "reset" },
///     "match": { "method": "POST", "path_prefix": "/reserve" }
/// }"#).unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.latency.unwrap().max, Some(Duration::from_millis(400)));
///
/// let bad: FaultConfig = serde_json::from_str(r#"{ "error": { "percent": 120 } }"#).unwrap();
/// assert_eq!(bad.validate().unwrap_err().to_string(),
///     "error.percent: 120 is not within 0..=100");
///
/// let typo = serde_json::from_str::<FaultConfig>(r#"{ "latncy": {} }"#).unwrap_err();
/// assert!(typo.to_string().contains("unknown field `latncy`"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Delay some requests before they are passed on (or failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyFault>,
    /// Answer some requests with an error instead of passing them on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorFault>,
    /// Fail some requests as if the connection had failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortFault>,
    /// Only requests matching this rule get faults (HTTP services only). Default:
    /// every request.
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub matching: Option<RequestMatch>,
}

/// Added latency: `percent` of matching requests wait `delay` (or a uniformly
/// random time in `delay..=max` when `max` is set) before they go on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyFault {
    /// Share of matching requests delayed, `0..=100`. Default 100.
    #[serde(default = "all")]
    pub percent: f64,
    /// The delay, or the low end of the range when `max` is set. At most 1 hour.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// The high end of a uniform range, `>= delay`, at most 1 hour. Default: none
    /// (every delayed request waits exactly `delay`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max: Option<Duration>,
}

/// An injected error: `percent` of matching requests are answered with `status`
/// without being passed on. HTTP services get a response with that status; other
/// services get what their error closure builds from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorFault {
    /// Share of matching requests failed, `0..=100`. Default 100.
    #[serde(default = "all")]
    pub percent: f64,
    /// The status, `400..=599`. Default 503.
    #[serde(default = "default_status")]
    pub status: u16,
}

/// An injected connection failure: `percent` of matching requests fail with an
/// [`std::io::Error`] of the given kind as the service error, without being passed on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortFault {
    /// Share of matching requests aborted, `0..=100`. Default 100.
    #[serde(default = "all")]
    pub percent: f64,
    /// Which connection failure. Default: reset.
    #[serde(default)]
    pub kind: AbortKind,
}

/// The connection failure an abort stands for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortKind {
    /// The connection was reset by the peer ([`std::io::ErrorKind::ConnectionReset`]).
    #[default]
    Reset,
    /// The connection was refused ([`std::io::ErrorKind::ConnectionRefused`]).
    Refused,
}

impl AbortKind {
    /// The [`std::io::ErrorKind`] an aborted call fails with.
    pub fn io_kind(self) -> std::io::ErrorKind {
        match self {
            AbortKind::Reset => std::io::ErrorKind::ConnectionReset,
            AbortKind::Refused => std::io::ErrorKind::ConnectionRefused,
        }
    }

    /// The error an aborted call fails with.
    pub fn to_io_error(self) -> std::io::Error {
        let message = match self {
            AbortKind::Reset => "connection reset (injected fault)",
            AbortKind::Refused => "connection refused (injected fault)",
        };
        std::io::Error::new(self.io_kind(), message)
    }
}

/// Which HTTP requests get faults: all the given parts must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestMatch {
    /// The method, e.g. `"POST"`. Default: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The path starts with this, e.g. `"/reserve"`. Default: any path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The request has this header. Default: no header needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderMatch>,
}

/// A header a matching request carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// The header name (any case).
    pub name: String,
    /// The exact value. Default: any value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

fn all() -> f64 {
    100.0
}

fn default_status() -> u16 {
    503
}

/// The longest delay a config may ask for.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(3600);

fn percent(field: &'static str, v: f64) -> Result<(), ConfigError> {
    if (0.0..=100.0).contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{v} is not within 0..=100"),
        ))
    }
}

impl LatencyFault {
    /// `percent` of requests wait exactly `delay`.
    pub fn fixed(percent: f64, delay: Duration) -> Self {
        Self {
            percent,
            delay,
            max: None,
        }
    }

    /// `percent` of requests wait a uniformly random time in `min..=max`.
    pub fn uniform(percent: f64, min: Duration, max: Duration) -> Self {
        Self {
            percent,
            delay: min,
            max: Some(max),
        }
    }
}

impl ErrorFault {
    /// `percent` of requests are answered with `status`.
    pub fn new(percent: f64, status: u16) -> Self {
        Self { percent, status }
    }
}

impl AbortFault {
    /// `percent` of requests fail with a connection failure of `kind`.
    pub fn new(percent: f64, kind: AbortKind) -> Self {
        Self { percent, kind }
    }
}

impl FaultConfig {
    /// Checks every value, naming the first bad field (`error.percent: 120 is not
    /// within 0..=100`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(latency) = &self.latency {
            percent("latency.percent", latency.percent)?;
            if latency.delay > MAX_DELAY {
                return Err(ConfigError::new(
                    "latency.delay",
                    format!(
                        "{} is longer than 1h",
                        humantime::format_duration(latency.delay)
                    ),
                ));
            }
            if let Some(max) = latency.max {
                if max < latency.delay {
                    return Err(ConfigError::new(
                        "latency.max",
                        format!(
                            "{} is shorter than latency.delay ({})",
                            humantime::format_duration(max),
                            humantime::format_duration(latency.delay)
                        ),
                    ));
                }
                if max > MAX_DELAY {
                    return Err(ConfigError::new(
                        "latency.max",
                        format!("{} is longer than 1h", humantime::format_duration(max)),
                    ));
                }
            }
        }
        if let Some(error) = &self.error {
            percent("error.percent", error.percent)?;
            if !(400..=599).contains(&error.status) {
                return Err(ConfigError::new(
                    "error.status",
                    format!("{} is not an error status (400..=599)", error.status),
                ));
            }
        }
        if let Some(abort) = &self.abort {
            percent("abort.percent", abort.percent)?;
        }
        if let (Some(error), Some(abort)) = (&self.error, &self.abort)
            && error.percent + abort.percent > 100.0
        {
            return Err(ConfigError::new(
                "error.percent",
                format!(
                    "{} plus abort.percent {} is more than 100",
                    error.percent, abort.percent
                ),
            ));
        }
        if let Some(rule) = &self.matching {
            rule.validate().map_err(|e| e.within("match"))?;
        }
        Ok(())
    }

    /// Whether the config injects nothing.
    pub fn is_empty(&self) -> bool {
        self.latency.is_none() && self.error.is_none() && self.abort.is_none()
    }
}

impl RequestMatch {
    /// Checks the method and header name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.compile().map(|_| ())
    }

    /// Checks the rule and parses it for matching requests.
    pub fn compile(&self) -> Result<RequestRule, ConfigError> {
        let method = match &self.method {
            None => None,
            Some(m) => Some(
                http::Method::from_bytes(m.as_bytes())
                    .map_err(|_| ConfigError::new("method", format!("{m:?} is not a method")))?,
            ),
        };
        if let Some(prefix) = &self.path_prefix
            && !prefix.starts_with('/')
        {
            return Err(ConfigError::new(
                "path_prefix",
                format!("{prefix:?} does not start with '/'"),
            ));
        }
        let header = match &self.header {
            None => None,
            Some(h) => {
                let name = http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    ConfigError::new("header.name", format!("{:?} is not a header name", h.name))
                })?;
                let value = match &h.value {
                    None => None,
                    Some(v) => Some(http::HeaderValue::from_str(v).map_err(|_| {
                        ConfigError::new("header.value", format!("{v:?} is not a header value"))
                    })?),
                };
                Some((name, value))
            }
        };
        Ok(RequestRule {
            method,
            path_prefix: self.path_prefix.clone(),
            header,
        })
    }
}

/// A [`RequestMatch`] checked and parsed once, for the call path.
#[derive(Debug, Clone)]
pub struct RequestRule {
    method: Option<http::Method>,
    path_prefix: Option<String>,
    header: Option<(http::HeaderName, Option<http::HeaderValue>)>,
}

impl RequestRule {
    /// Whether `req` matches every part of the rule.
    pub fn matches<B>(&self, req: &http::Request<B>) -> bool {
        if let Some(m) = &self.method
            && req.method() != m
        {
            return false;
        }
        if let Some(prefix) = &self.path_prefix
            && !req.uri().path().starts_with(prefix.as_str())
        {
            return false;
        }
        match &self.header {
            None => true,
            Some((name, None)) => req.headers().contains_key(name),
            Some((name, Some(want))) => req.headers().get_all(name).iter().any(|v| v == want),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        let config: FaultConfig = serde_json::from_str(json).unwrap();
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn names_the_bad_field() {
        assert_eq!(
            err(r#"{"latency":{"percent":-1,"delay":"1s"}}"#),
            "latency.percent: -1 is not within 0..=100"
        );
        assert_eq!(
            err(r#"{"latency":{"delay":"2s","max":"1s"}}"#),
            "latency.max: 1s is shorter than latency.delay (2s)"
        );
        assert_eq!(
            err(r#"{"latency":{"delay":"2h"}}"#),
            "latency.delay: 2h is longer than 1h"
        );
        assert_eq!(
            err(r#"{"error":{"status":200}}"#),
            "error.status: 200 is not an error status (400..=599)"
        );
        assert_eq!(
            err(r#"{"abort":{"percent":100.5}}"#),
            "abort.percent: 100.5 is not within 0..=100"
        );
        assert_eq!(
            err(r#"{"error":{"percent":60},"abort":{"percent":50}}"#),
            "error.percent: 60 plus abort.percent 50 is more than 100"
        );
        assert_eq!(
            err(r#"{"match":{"method":"GE T"}}"#),
            "match.method: \"GE T\" is not a method"
        );
        assert_eq!(
            err(r#"{"match":{"path_prefix":"orders"}}"#),
            "match.path_prefix: \"orders\" does not start with '/'"
        );
        assert_eq!(
            err(r#"{"match":{"header":{"name":"x y"}}}"#),
            "match.header.name: \"x y\" is not a header name"
        );
    }

    #[test]
    fn nan_percent_is_refused() {
        let config = FaultConfig {
            error: Some(ErrorFault::new(f64::NAN, 503)),
            ..FaultConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().field(),
            "error.percent",
            "NaN must not pass as a percentage"
        );
    }

    #[test]
    fn defaults_fill_in_and_round_trip() {
        let errors: FaultConfig = serde_json::from_str(r#"{"error":{}}"#).unwrap();
        assert_eq!(errors.error, Some(ErrorFault::new(100.0, 503)));
        let aborts: FaultConfig = serde_json::from_str(r#"{"abort":{}}"#).unwrap();
        assert_eq!(aborts.abort, Some(AbortFault::new(100.0, AbortKind::Reset)));

        let config: FaultConfig = serde_json::from_str(
            r#"{"error":{"percent":25},"abort":{"percent":75,"kind":"refused"}}"#,
        )
        .unwrap();
        config.validate().unwrap();
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            json,
            r#"{"error":{"percent":25.0,"status":503},"abort":{"percent":75.0,"kind":"refused"}}"#
        );
        assert_eq!(serde_json::from_str::<FaultConfig>(&json).unwrap(), config);
        let toml: FaultConfig = toml::from_str(
            "[latency]\npercent = 1\ndelay = \"2s\"\n[match]\nheader = { name = \"x-tenant\", value = \"acme\" }\n",
        )
        .unwrap();
        toml.validate().unwrap();
        assert_eq!(
            toml.latency,
            Some(LatencyFault::fixed(1.0, Duration::from_secs(2)))
        );
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        for json in [
            r#"{"delay":"1s"}"#,
            r#"{"latency":{"delay":"1s","jitter":"1s"}}"#,
            r#"{"error":{"code":500}}"#,
            r#"{"abort":{"kind":"reset","after":3}}"#,
            r#"{"match":{"path":"/x"}}"#,
            r#"{"match":{"header":{"name":"a","val":"b"}}}"#,
        ] {
            let e = serde_json::from_str::<FaultConfig>(json).unwrap_err();
            assert!(e.to_string().contains("unknown field"), "{json}: {e}");
        }
        let e = serde_json::from_str::<FaultConfig>(r#"{"abort":{"kind":"explode"}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown variant `explode`"), "{e}");
    }

    #[test]
    fn request_rules_match_every_given_part() {
        let rule = RequestMatch {
            method: Some("POST".into()),
            path_prefix: Some("/reserve".into()),
            header: Some(HeaderMatch {
                name: "X-Tenant".into(),
                value: Some("acme".into()),
            }),
        }
        .compile()
        .unwrap();
        let req = |method: &str, path: &str, tenant: Option<&str>| {
            let mut b = http::Request::builder().method(method).uri(path);
            if let Some(t) = tenant {
                b = b.header("x-tenant", t);
            }
            b.body(()).unwrap()
        };
        assert!(rule.matches(&req("POST", "/reserve/42", Some("acme"))));
        assert!(!rule.matches(&req("GET", "/reserve/42", Some("acme"))));
        assert!(!rule.matches(&req("POST", "/release/42", Some("acme"))));
        assert!(!rule.matches(&req("POST", "/reserve/42", Some("other"))));
        assert!(!rule.matches(&req("POST", "/reserve/42", None)));

        let any_value = RequestMatch {
            header: Some(HeaderMatch {
                name: "x-canary".into(),
                value: None,
            }),
            ..RequestMatch::default()
        }
        .compile()
        .unwrap();
        assert!(!any_value.matches(&req("GET", "/", None)));
        let mut with = req("GET", "/", None);
        with.headers_mut().insert("x-canary", "1".parse().unwrap());
        assert!(any_value.matches(&with));
    }
}
