use std::any::Any;
use std::fmt;
use std::time::Duration;

use crate::Name;

/// The boxed error type that tower middleware conventionally passes around.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why Palisade refused a piece of work: one closed vocabulary for every layer.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectionKind {
    /// A circuit breaker is open (or forced open) for this downstream or key.
    CircuitOpen,
    /// A rate limiter has no permit for this request now.
    RateLimited,
    /// A bulkhead or concurrency limit is full.
    BulkheadFull,
    /// The call (or one try of it) took longer than its timeout.
    Timeout,
    /// The request's deadline passed, or cannot be met.
    DeadlineExceeded,
    /// A retry budget refused the retry.
    BudgetExhausted,
    /// The server shed the request to protect itself.
    Shed,
    /// No endpoint of the downstream is available.
    NoEndpoints,
}

impl RejectionKind {
    /// Every kind, in declaration order (for zero-filling metric labels).
    pub const ALL: [RejectionKind; 8] = [
        RejectionKind::CircuitOpen,
        RejectionKind::RateLimited,
        RejectionKind::BulkheadFull,
        RejectionKind::Timeout,
        RejectionKind::DeadlineExceeded,
        RejectionKind::BudgetExhausted,
        RejectionKind::Shed,
        RejectionKind::NoEndpoints,
    ];

    /// The snake_case word used in metric labels, logs and the
    /// `x-palisade-rejection` header.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectionKind::CircuitOpen => "circuit_open",
            RejectionKind::RateLimited => "rate_limited",
            RejectionKind::BulkheadFull => "bulkhead_full",
            RejectionKind::Timeout => "timeout",
            RejectionKind::DeadlineExceeded => "deadline_exceeded",
            RejectionKind::BudgetExhausted => "budget_exhausted",
            RejectionKind::Shed => "shed",
            RejectionKind::NoEndpoints => "no_endpoints",
        }
    }

    /// Whether trying again (elsewhere or later) can help. Circuit-open,
    /// budget-exhausted and deadline-exceeded say "don't": retrying them only adds
    /// load or cannot finish in time.
    pub const fn is_retryable(self) -> bool {
        !matches!(
            self,
            RejectionKind::CircuitOpen
                | RejectionKind::BudgetExhausted
                | RejectionKind::DeadlineExceeded
        )
    }

    /// Whether the rejection reflects the downstream's health (a try that timed
    /// out, no endpoints) rather than a local decision. Classifiers count the former
    /// as failures and ignore the latter. A deadline refusal is local: below the
    /// front of a stack it refuses a call before it is sent (too little time left)
    /// or ends its wait in a queue, and says nothing about the downstream — counted
    /// as a failure, callers with nearly spent deadlines could open a breaker on a
    /// healthy downstream.
    pub const fn is_downstream_failure(self) -> bool {
        matches!(self, RejectionKind::Timeout | RejectionKind::NoEndpoints)
    }

    /// Whether the call was surely refused before it was sent: an open breaker, a
    /// rate limit, a full bulkhead or adaptive limit, shedding, a spent budget, no
    /// endpoints. A timeout, or a deadline, may have cut off a call that went out.
    /// Retries and hedges give their budget token back for these.
    pub const fn is_never_sent(self) -> bool {
        !matches!(
            self,
            RejectionKind::Timeout | RejectionKind::DeadlineExceeded
        )
    }

    /// The HTTP status a server answers with when it turns this rejection into a
    /// response: 429 for rate limiting, 504 for timeouts and deadlines, 503 otherwise.
    pub const fn http_status(self) -> u16 {
        match self {
            RejectionKind::RateLimited => 429,
            RejectionKind::Timeout | RejectionKind::DeadlineExceeded => 504,
            _ => 503,
        }
    }
}

impl fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Palisade refused the work: what kind of refusal, which downstream, and when trying
/// again may succeed.
///
/// Creating and cloning a rejection does not allocate (the downstream name is an
/// `Arc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    kind: RejectionKind,
    retry_after: Option<Duration>,
    downstream: Option<Name>,
}

impl Rejection {
    /// A rejection of `kind` with no hint and no downstream name.
    pub const fn new(kind: RejectionKind) -> Self {
        Self {
            kind,
            retry_after: None,
            downstream: None,
        }
    }

    /// Adds a hint: the work may succeed if tried again after `after`.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Names the downstream (or layer instance) that refused.
    pub fn with_downstream(mut self, downstream: Name) -> Self {
        self.downstream = Some(downstream);
        self
    }

    /// The kind of refusal.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// When trying again may succeed, if the refusing layer knows.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The downstream that refused, if named.
    pub fn downstream(&self) -> Option<&Name> {
        self.downstream.as_ref()
    }

    /// The `Retry-After` header value for this rejection: whole seconds, rounded up,
    /// at least 1.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|d| {
            let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
            secs.max(1)
        })
    }

    /// Turns the rejection into an HTTP response: [`RejectionKind::http_status`],
    /// `Retry-After` when a hint exists, and `x-palisade-rejection: <kind>` so a
    /// caller can tell a Palisade refusal from an application error.
    #[cfg(feature = "http")]
    pub fn to_http_response<B: Default>(&self) -> http::Response<B> {
        let mut response = http::Response::new(B::default());
        *response.status_mut() = http::StatusCode::from_u16(self.kind.http_status())
            .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
        let headers = response.headers_mut();
        headers.insert(
            REJECTION_HEADER,
            http::HeaderValue::from_static(self.kind.as_str()),
        );
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        response
    }
}

/// The response header naming the kind of a Palisade rejection.
#[cfg(feature = "http")]
pub const REJECTION_HEADER: &str = "x-palisade-rejection";

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RejectionKind::CircuitOpen => f.write_str("circuit open")?,
            RejectionKind::RateLimited => f.write_str("rate limited")?,
            RejectionKind::BulkheadFull => f.write_str("bulkhead full")?,
            RejectionKind::Timeout => f.write_str("timed out")?,
            RejectionKind::DeadlineExceeded => f.write_str("deadline exceeded")?,
            RejectionKind::BudgetExhausted => f.write_str("retry budget exhausted")?,
            RejectionKind::Shed => f.write_str("load shed")?,
            RejectionKind::NoEndpoints => f.write_str("no endpoints")?,
        }
        if let Some(name) = &self.downstream {
            write!(f, " for downstream {name:?}")?;
        }
        if let Some(after) = self.retry_after {
            write!(f, "; retry after {:.3}s", after.as_secs_f64())?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejection {}

/// The error of every Palisade layer: either Palisade refused the work, or the inner
/// service failed.
///
/// Layers convert their inner service's error with [`Error::from_service`], which
/// flattens: an inner Palisade [`Error`] or [`Rejection`] (also inside a
/// [`BoxError`], as tower's own layers return) stays what it is instead of nesting.
/// So a stack of any number of Palisade and tower layers has one error type, and
/// [`Error::rejection`] answers "did Palisade refuse?" at every depth.
#[derive(Debug)]
pub enum Error {
    /// Palisade refused the work.
    Rejected(Rejection),
    /// The inner service failed with this error.
    Inner(BoxError),
}

impl Error {
    /// Converts an inner service's error, flattening Palisade errors and rejections.
    ///
    /// Does not allocate when `err` is already an [`Error`] or a [`Rejection`].
    pub fn from_service<E>(err: E) -> Self
    where
        E: Into<BoxError> + 'static,
    {
        let mut slot = Some(err);
        let any: &mut dyn Any = &mut slot;
        if let Some(own) = any.downcast_mut::<Option<Error>>().and_then(Option::take) {
            return own;
        }
        if let Some(rejection) = any
            .downcast_mut::<Option<Rejection>>()
            .and_then(Option::take)
        {
            return Error::Rejected(rejection);
        }
        match slot {
            Some(err) => Self::from_boxed(err.into()),
            // Unreachable: `slot` is only taken by a matching downcast above.
            None => Error::Inner("palisade: error value lost in conversion".into()),
        }
    }

    fn from_boxed(boxed: BoxError) -> Self {
        let boxed = match boxed.downcast::<Error>() {
            Ok(own) => return *own,
            Err(other) => other,
        };
        match boxed.downcast::<Rejection>() {
            Ok(rejection) => Error::Rejected(*rejection),
            Err(other) => Error::Inner(other),
        }
    }

    /// The rejection, when Palisade refused the work.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Error::Rejected(r) => Some(r),
            Error::Inner(_) => None,
        }
    }

    /// Whether Palisade refused the work.
    pub fn is_rejection(&self) -> bool {
        matches!(self, Error::Rejected(_))
    }

    /// The inner service's error, when it failed.
    pub fn inner(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            Error::Inner(e) => Some(&**e),
            Error::Rejected(_) => None,
        }
    }

    /// Splits into the inner error or the rejection.
    pub fn into_inner(self) -> Result<BoxError, Rejection> {
        match self {
            Error::Inner(e) => Ok(e),
            Error::Rejected(r) => Err(r),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Rejected(r) => write!(f, "rejected by palisade: {r}"),
            Error::Inner(e) => write!(f, "downstream error: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Rejected(r) => Some(r),
            Error::Inner(e) => Some(&**e),
        }
    }
}

impl From<Rejection> for Error {
    fn from(r: Rejection) -> Self {
        Error::Rejected(r)
    }
}

/// The Palisade rejection inside `err`, if any: `err` itself, an [`Error`], or a
/// [`BoxError`] holding either. Lets classifiers that see an inner service's error
/// type tell a rejection from a downstream failure.
pub fn rejection_of<E: 'static>(err: &E) -> Option<&Rejection> {
    let any: &dyn Any = err;
    if let Some(r) = any.downcast_ref::<Rejection>() {
        return Some(r);
    }
    if let Some(e) = any.downcast_ref::<Error>() {
        return e.rejection();
    }
    if let Some(b) = any.downcast_ref::<BoxError>() {
        if let Some(r) = b.downcast_ref::<Rejection>() {
            return Some(r);
        }
        if let Some(e) = b.downcast_ref::<Error>() {
            return e.rejection();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_round_up_and_saturate() {
        let secs = |d| {
            Rejection::new(RejectionKind::Shed)
                .with_retry_after(d)
                .retry_after_secs()
        };
        assert_eq!(secs(Duration::from_millis(1)), Some(1));
        assert_eq!(secs(Duration::from_millis(1500)), Some(2));
        assert_eq!(secs(Duration::from_secs(3)), Some(3));
        // The longest hint a config can hold does not overflow the rounding.
        assert_eq!(secs(Duration::MAX), Some(u64::MAX));
    }

    #[test]
    fn flattens_nested_palisade_errors() {
        let r = Rejection::new(RejectionKind::BulkheadFull);
        let e = Error::from_service(Error::from(r.clone()));
        assert_eq!(e.rejection(), Some(&r));
        let boxed: BoxError = Box::new(Error::from(r.clone()));
        assert_eq!(Error::from_service(boxed).rejection(), Some(&r));
        let boxed: BoxError = Box::new(r.clone());
        assert_eq!(Error::from_service(boxed).rejection(), Some(&r));
        assert_eq!(Error::from_service(r.clone()).rejection(), Some(&r));
    }

    #[test]
    fn keeps_inner_errors_as_they_are() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let e = Error::from_service(io);
        assert!(!e.is_rejection());
        let inner = e.inner().unwrap();
        assert_eq!(
            inner.downcast_ref::<std::io::Error>().unwrap().kind(),
            std::io::ErrorKind::ConnectionReset
        );
        assert_eq!(e.to_string(), "downstream error: reset");
    }

    #[test]
    fn finds_rejections_behind_any_wrapper() {
        let r = Rejection::new(RejectionKind::Timeout);
        assert!(rejection_of(&r).is_some());
        assert!(rejection_of(&Error::from(r.clone())).is_some());
        let boxed: BoxError = Box::new(r);
        assert!(rejection_of(&boxed).is_some());
        assert!(rejection_of(&std::io::Error::other("x")).is_none());
    }

    #[test]
    fn describes_itself() {
        let r = Rejection::new(RejectionKind::CircuitOpen)
            .with_downstream(Name::new("customer").unwrap())
            .with_retry_after(Duration::from_millis(2500));
        assert_eq!(
            r.to_string(),
            "circuit open for downstream \"customer\"; retry after 2.500s"
        );
        assert_eq!(r.retry_after_secs(), Some(3));
        assert_eq!(
            Rejection::new(RejectionKind::Shed)
                .with_retry_after(Duration::ZERO)
                .retry_after_secs(),
            Some(1)
        );
    }

    #[test]
    fn vocabulary_is_closed_and_labelled() {
        let labels: Vec<_> = RejectionKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), 8);
        assert!(!RejectionKind::CircuitOpen.is_retryable());
        assert!(!RejectionKind::BudgetExhausted.is_retryable());
        assert!(!RejectionKind::DeadlineExceeded.is_retryable());
        assert!(RejectionKind::BulkheadFull.is_retryable());
        // Only a timeout or a deadline can cut off a call that went out.
        let sent: Vec<_> = RejectionKind::ALL
            .into_iter()
            .filter(|k| !k.is_never_sent())
            .collect();
        assert_eq!(
            sent,
            [RejectionKind::Timeout, RejectionKind::DeadlineExceeded]
        );
        assert_eq!(RejectionKind::RateLimited.http_status(), 429);
        assert_eq!(RejectionKind::Timeout.http_status(), 504);
        assert_eq!(RejectionKind::CircuitOpen.http_status(), 503);
    }

    #[cfg(feature = "http")]
    #[test]
    fn becomes_an_http_response() {
        let r = Rejection::new(RejectionKind::RateLimited)
            .with_retry_after(Duration::from_millis(1200));
        let resp: http::Response<()> = r.to_http_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(resp.headers()[REJECTION_HEADER], "rate_limited");
    }
}
