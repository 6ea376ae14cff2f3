use std::fmt;
use std::time::Duration;

use crate::error::rejection_of;

/// A low-cardinality reason for a failure, used as a metric label value.
///
/// Reasons are `&'static str`, so the set of values is fixed by the code that names
/// them and a metric label built from them cannot grow without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FailureReason(&'static str);

impl FailureReason {
    /// The inner service returned an error.
    pub const ERROR: FailureReason = FailureReason("error");
    /// The call timed out or its deadline passed.
    pub const TIMEOUT: FailureReason = FailureReason("timeout");
    /// The connection or transport failed (HTTP client errors).
    pub const TRANSPORT: FailureReason = FailureReason("transport");
    /// The server answered with a 5xx status.
    pub const SERVER_ERROR: FailureReason = FailureReason("server_error");
    /// The server answered 429 Too Many Requests.
    pub const TOO_MANY_REQUESTS: FailureReason = FailureReason("too_many_requests");
    /// No endpoint of the downstream was available.
    pub const NO_ENDPOINTS: FailureReason = FailureReason("no_endpoints");

    /// A reason of your own. Keep the set of values you use small and fixed: it
    /// becomes a metric label.
    pub const fn custom(reason: &'static str) -> Self {
        FailureReason(reason)
    }

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// What a call's result means for the layers that judge calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed for this reason; it counts against the downstream's health.
    Failure(FailureReason),
    /// The call neither succeeded nor failed in a way that says anything about the
    /// downstream's health (a 4xx, a local rejection): it is not counted.
    Ignored,
}

impl Outcome {
    /// The closed label value: `success`, `failure` or `ignored`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Ignored => "ignored",
        }
    }

    /// Whether this is a failure.
    pub const fn is_failure(self) -> bool {
        matches!(self, Outcome::Failure(_))
    }
}

/// An [`Outcome`] together with whether the call was slow.
///
/// Slowness is orthogonal to success: a slow success and a slow failure are both slow
/// (as resilience4j counts them). A layer that has a slow-call threshold measures the
/// call's latency and builds the verdict with [`Verdict::judge`]; a layer without one
/// never reads the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Success, failure or ignored.
    pub outcome: Outcome,
    /// Whether the call took at least the slow-call threshold.
    pub slow: bool,
}

impl Verdict {
    /// A verdict for a call whose latency was not measured (never slow).
    pub const fn unmeasured(outcome: Outcome) -> Self {
        Self {
            outcome,
            slow: false,
        }
    }

    /// Judges `outcome` with its `latency` against `slow_threshold`: the call is slow
    /// when `latency >= slow_threshold`.
    pub fn judge(outcome: Outcome, latency: Duration, slow_threshold: Duration) -> Self {
        Self {
            outcome,
            slow: latency >= slow_threshold,
        }
    }
}

/// Turns a call's result into an [`Outcome`].
///
/// Every layer that judges calls (breaker, retry, outlier detection, adaptive limits,
/// metrics) takes a `Classify`, so one classification means the same thing
/// everywhere. Built-ins: [`AllErrorsFail`], `HttpClassifier` (feature `http`), and
/// closures through [`classify_fn`].
pub trait Classify<Res, E> {
    /// Classifies one call's result.
    fn classify(&self, result: Result<&Res, &E>) -> Outcome;
}

/// The default classifier: every `Ok` is a success and every error a failure — except
/// Palisade rejections, which are judged by kind: a try that timed out and "no
/// endpoints" are failures (the downstream is unhealthy); local decisions (circuit
/// open, rate limited, bulkhead full, a deadline too close to send the call, …) are
/// ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllErrorsFail;

impl<Res, E: 'static> Classify<Res, E> for AllErrorsFail {
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(err) => classify_error(err, FailureReason::ERROR),
        }
    }
}

/// Classifies an error: a Palisade rejection by its kind, anything else as a failure
/// with `reason`.
fn classify_error<E: 'static>(err: &E, reason: FailureReason) -> Outcome {
    match rejection_of(err) {
        Some(r) if r.kind().is_downstream_failure() => Outcome::Failure(match r.kind() {
            crate::RejectionKind::NoEndpoints => FailureReason::NO_ENDPOINTS,
            _ => FailureReason::TIMEOUT,
        }),
        Some(_) => Outcome::Ignored,
        None => Outcome::Failure(reason),
    }
}

/// A classifier made from a closure; see [`classify_fn`].
#[derive(Clone, Copy)]
pub struct ClassifyFn<F>(F);

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClassifyFn")
    }
}

/// A classifier from a closure `Fn(Result<&Res, &E>) -> Outcome`.
///
/// ```
/// use palisade_core::{classify_fn, Classify, FailureReason, Outcome};
///
/// // A response body that says "busy" is a failure; a "not found" error is ignored.
/// let classify = classify_fn(|result: Result<&String, &String>| match result {
///     Ok(body) if body == "busy" => Outcome::Failure(FailureReason::custom("busy")),
///     Ok(_) => Outcome::Success,
///     Err(e) if e == "not found" => Outcome::Ignored,
///     Err(_) => Outcome::Failure(FailureReason::ERROR),
/// });
/// assert_eq!(classify.classify(Ok(&"busy".to_string())), Outcome::Failure(FailureReason::custom("busy")));
/// assert_eq!(classify.classify(Err(&"not found".to_string())), Outcome::Ignored);
/// ```
pub fn classify_fn<F>(f: F) -> ClassifyFn<F> {
    ClassifyFn(f)
}

impl<F, Res, E> Classify<Res, E> for ClassifyFn<F>
where
    F: Fn(Result<&Res, &E>) -> Outcome,
{
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        (self.0)(result)
    }
}

/// Classifies HTTP responses: 5xx and 429 fail, other 4xx are ignored (the caller's
/// mistake says nothing about the server's health), 1xx–3xx succeed. Errors are
/// transport failures, except Palisade rejections, judged as [`AllErrorsFail`] does.
#[cfg(feature = "http")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpClassifier;

#[cfg(feature = "http")]
impl HttpClassifier {
    /// The outcome for a response status.
    pub fn classify_status(status: http::StatusCode) -> Outcome {
        if status.is_server_error() {
            Outcome::Failure(FailureReason::SERVER_ERROR)
        } else if status == http::StatusCode::TOO_MANY_REQUESTS {
            Outcome::Failure(FailureReason::TOO_MANY_REQUESTS)
        } else if status.is_client_error() {
            Outcome::Ignored
        } else {
            Outcome::Success
        }
    }
}

#[cfg(feature = "http")]
impl<B, E: 'static> Classify<http::Response<B>, E> for HttpClassifier {
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Outcome {
        match result {
            Ok(response) => Self::classify_status(response.status()),
            Err(err) => classify_error(err, FailureReason::TRANSPORT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, Rejection, RejectionKind};

    fn all<E: 'static>(result: Result<&(), &E>) -> Outcome {
        Classify::<(), E>::classify(&AllErrorsFail, result)
    }

    #[test]
    fn all_errors_fail_but_local_rejections_are_ignored() {
        assert_eq!(all::<std::io::Error>(Ok(&())), Outcome::Success);
        assert_eq!(
            all(Err(&std::io::Error::other("boom"))),
            Outcome::Failure(FailureReason::ERROR)
        );
        let open = Error::from(Rejection::new(RejectionKind::CircuitOpen));
        assert_eq!(all(Err(&open)), Outcome::Ignored);
        let timeout = Error::from(Rejection::new(RejectionKind::Timeout));
        assert_eq!(all(Err(&timeout)), Outcome::Failure(FailureReason::TIMEOUT));
        // Refused (or held back) for the caller's deadline: not the downstream's doing.
        let late = Error::from(Rejection::new(RejectionKind::DeadlineExceeded));
        assert_eq!(all(Err(&late)), Outcome::Ignored);
        let none = Rejection::new(RejectionKind::NoEndpoints);
        assert_eq!(
            all(Err(&none)),
            Outcome::Failure(FailureReason::NO_ENDPOINTS)
        );
    }

    #[test]
    fn slowness_is_judged_from_latency() {
        let t = Duration::from_millis(100);
        assert!(Verdict::judge(Outcome::Success, Duration::from_millis(100), t).slow);
        assert!(!Verdict::judge(Outcome::Success, Duration::from_millis(99), t).slow);
        assert!(!Verdict::unmeasured(Outcome::Ignored).slow);
    }

    #[cfg(feature = "http")]
    #[test]
    fn http_statuses() {
        let c = HttpClassifier;
        let status = |s: u16| {
            let resp = http::Response::builder().status(s).body(()).unwrap();
            Classify::<_, std::io::Error>::classify(&c, Ok(&resp))
        };
        assert_eq!(status(200), Outcome::Success);
        assert_eq!(status(302), Outcome::Success);
        assert_eq!(status(404), Outcome::Ignored);
        assert_eq!(status(400), Outcome::Ignored);
        assert_eq!(
            status(429),
            Outcome::Failure(FailureReason::TOO_MANY_REQUESTS)
        );
        assert_eq!(status(500), Outcome::Failure(FailureReason::SERVER_ERROR));
        assert_eq!(status(503), Outcome::Failure(FailureReason::SERVER_ERROR));
        let transport =
            Classify::<http::Response<()>, _>::classify(&c, Err(&std::io::Error::other("refused")));
        assert_eq!(transport, Outcome::Failure(FailureReason::TRANSPORT));
    }
}
