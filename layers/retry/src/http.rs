//! HTTP: which requests may be retried, the headers that carry attempt numbers and
//! "do not retry" across hops, and `Retry-After`.
//!
//! | header | direction | meaning |
//! |---|---|---|
//! | `x-palisade-attempt: <n>` | request | the attempt number of this request (1 = first try) |
//! | `x-palisade-no-retry: 1` | response | the server already retried its own dependencies for this request (or its budget or deadline refused to): do not retry this answer |
//! | `Retry-After` | response | delta-seconds or HTTP-date; waited out only if it fits the deadline and `max_retry_after`; malformed values are ignored |
//! | `idempotency-key` | request | makes a non-idempotent request (POST, PATCH) retryable |
//!
//! ```
//! use palisade_retry::RetryLayer;
//! use palisade_retry::http::HttpRetry;
//! use palisade_core::HttpClassifier;
//!
//! let layer = RetryLayer::builder("catalog")
//!     .classify(HttpClassifier)
//!     .protocol(HttpRetry::default())
//!     .build()
//!     .unwrap();
//! # drop(layer);
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body::Body;
use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::hop::{self, GaveUpScope};
use crate::protocol::Protocol;
use crate::replay::ReplayBody;

/// The request header carrying the attempt number.
pub const ATTEMPT_HEADER: &str = "x-palisade-attempt";
/// The response header asking callers not to retry.
pub const NO_RETRY_HEADER: &str = "x-palisade-no-retry";
/// The request header that makes a non-idempotent request retryable.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// HTTP's retry rules: only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE,
/// TRACE) or requests with an `idempotency-key` header are retried, and only when
/// the body's size is known and at most `max_body_bytes` (the body is cloned for
/// the replay: a buffered body type such as `Full<Bytes>`, or a streaming body put
/// through [`BufferBodyLayer`](crate::BufferBodyLayer) first).
#[derive(Debug, Clone, Copy)]
pub struct HttpRetry {
    /// The largest body replayed. Default 64 KiB.
    pub max_body_bytes: u64,
}

impl Default for HttpRetry {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
        }
    }
}

/// Whether `method` may be sent twice with the same effect.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl HttpRetry {
    fn replay_with<B: Body>(
        &self,
        req: &Request<B>,
        body: impl FnOnce(&B) -> Option<B>,
    ) -> Option<Request<B>> {
        if !is_idempotent(req.method()) && !req.headers().contains_key(IDEMPOTENCY_KEY_HEADER) {
            return None;
        }
        let size = req.body().size_hint();
        if size.upper().is_none_or(|upper| upper > self.max_body_bytes) {
            return None;
        }
        let mut copy = Request::new(body(req.body())?);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}

/// Requests with a body that can be cloned (`Full<Bytes>`, `Empty`, `String`…).
impl<B, RB> Protocol<Request<B>, Response<RB>> for HttpRetry
where
    B: Body + Clone,
{
    fn replay(&self, req: &Request<B>) -> Option<Request<B>> {
        self.replay_with(req, |b| Some(b.clone()))
    }

    fn prepare(&self, req: &mut Request<B>, attempt: u32) {
        set_attempt(req.headers_mut(), attempt);
    }

    fn retry_after(&self, res: &Response<RB>) -> Option<Duration> {
        retry_after(res.headers())
    }

    fn forbids_retry(&self, res: &Response<RB>) -> bool {
        forbids_retry(res.headers())
    }
}

/// Requests whose body went through [`BufferBodyLayer`](crate::BufferBodyLayer):
/// buffered bodies are replayed, streaming ones are not.
impl<B, RB> Protocol<Request<ReplayBody<B>>, Response<RB>> for HttpRetry
where
    B: Body<Data = bytes::Bytes>,
    B::Error: Into<palisade_core::BoxError>,
{
    fn replay(&self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        self.replay_with(req, ReplayBody::try_clone)
    }

    fn prepare(&self, req: &mut Request<ReplayBody<B>>, attempt: u32) {
        set_attempt(req.headers_mut(), attempt);
    }

    fn retry_after(&self, res: &Response<RB>) -> Option<Duration> {
        retry_after(res.headers())
    }

    fn forbids_retry(&self, res: &Response<RB>) -> bool {
        forbids_retry(res.headers())
    }
}

/// Sets the attempt header.
fn set_attempt(headers: &mut HeaderMap, attempt: u32) {
    headers.insert(ATTEMPT_HEADER, HeaderValue::from(attempt));
}

/// Whether the answer carries the no-retry marker.
fn forbids_retry(headers: &HeaderMap) -> bool {
    headers
        .get(NO_RETRY_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1")
}

/// Parses a `Retry-After` header: delta-seconds or an HTTP-date. Absent, malformed
/// or past values give `None` (a malformed hint is ignored, never an error).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    parse_retry_after(value)
}

/// Parses a `Retry-After` value; see [`retry_after`].
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Delta-seconds; absurdly large values are capped at a day.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX).min(86_400);
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(wall_clock_now()).ok()
}

/// An HTTP-date is wall-clock time by definition; this is the only wall-clock read,
/// and it only turns such a date into a delay.
#[allow(clippy::disallowed_methods)]
fn wall_clock_now() -> std::time::SystemTime {
    std::time::SystemTime::now()
}

/// Server side of cross-hop control: runs each request with a fresh give-up flag,
/// and when a retry layer gave up on a downstream while serving it and the answer
/// is an error (5xx or 429), adds `x-palisade-no-retry: 1` so the caller does not
/// retry what was already retried.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRetryLayer;

impl<S> Layer<S> for NoRetryLayer {
    type Service = NoRetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NoRetry { inner }
    }
}

/// The service of [`NoRetryLayer`].
#[derive(Debug, Clone)]
pub struct NoRetry<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for NoRetry<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = NoRetryFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        NoRetryFuture {
            inner: hop::scope(self.inner.call(req)),
        }
    }
}

/// The response future of [`NoRetry`].
#[pin_project]
#[derive(Debug)]
pub struct NoRetryFuture<F: Future> {
    #[pin]
    inner: GaveUpScope<F>,
}

impl<F, B, E> Future for NoRetryFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.project().inner;
        let mut result = ready!(inner.as_mut().poll(cx));
        if hop::gave_up(inner)
            && let Ok(res) = &mut result
            && (res.status().is_server_error()
                || res.status() == http::StatusCode::TOO_MANY_REQUESTS)
        {
            res.headers_mut()
                .insert(NO_RETRY_HEADER, HeaderValue::from_static("1"));
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use proptest::prelude::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999"),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(parse_retry_after("-5"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after(""), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            None,
            "in the past"
        );
        let later = wall_clock_now() + Duration::from_secs(3600);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(d > Duration::from_secs(3590) && d <= Duration::from_secs(3600));
    }

    proptest! {
        #[test]
        fn retry_after_never_panics(s in ".*") {
            let _ = parse_retry_after(&s);
        }

        #[test]
        fn retry_after_header_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                let mut h = HeaderMap::new();
                h.insert(http::header::RETRY_AFTER, v);
                let _ = retry_after(&h);
            }
        }
    }

    fn req(method: Method, body: &'static str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri("http://x/a")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    #[test]
    fn only_idempotent_or_keyed_requests_replay() {
        let p = HttpRetry::default();
        let replay = |r: &Request<Full<Bytes>>| Protocol::<_, Response<()>>::replay(&p, r);
        assert!(replay(&req(Method::GET, "")).is_some());
        assert!(replay(&req(Method::PUT, "x")).is_some());
        assert!(replay(&req(Method::POST, "x")).is_none());
        let mut keyed = req(Method::POST, "x");
        keyed
            .headers_mut()
            .insert(IDEMPOTENCY_KEY_HEADER, HeaderValue::from_static("k1"));
        let copy = replay(&keyed).unwrap();
        assert_eq!(copy.method(), Method::POST);
        assert_eq!(copy.headers()[IDEMPOTENCY_KEY_HEADER], "k1");
        let small = HttpRetry { max_body_bytes: 2 };
        assert!(Protocol::<_, Response<()>>::replay(&small, &req(Method::PUT, "abc")).is_none());
    }
}
