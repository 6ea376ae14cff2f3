//! The server side: [`Inbound`], one stack in front of your handlers.
//!
//! ```text
//! metrics → keyed rate limit → load shed / adaptive limit → deadline extraction → handler
//! ```
//!
//! Refusals become responses at once — `429` for the rate limit, `503` for shedding,
//! `504` for a deadline already passed, each with `Retry-After` where a hint exists
//! and `x-palisade-rejection: <kind>` — and the handler is not called. An error from
//! the handler itself becomes a `500`. The service's error type is
//! [`Infallible`](std::convert::Infallible), so the stack fits `axum::Router::layer`.
//!
//! ```
//! use palisade::Inbound;
//! use palisade::limit::rate::RateLimitConfig;
//! use std::time::Duration;
//! use tower::{Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let inbound = Inbound::builder("orders-api")
//!     // Each API key gets 100 requests a second, bursts of 20.
//!     .rate_limit_by(
//!         RateLimitConfig { rate: 100, burst: Some(20), ..RateLimitConfig::default() },
//!         |req: &http::Request<String>| req.headers().get("x-api-key").cloned(),
//!     )
//!     .max_in_flight(256, Duration::from_millis(50))
//!     .deadline(Duration::from_secs(5))
//!     .build()?;
//! let mut server = inbound.layer(tower::service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, std::io::Error>(http::Response::new(String::from("ok")))
//! }));
//! let res = server.ready().await?.call(http::Request::new(String::new())).await?;
//! assert_eq!(res.status(), 200);
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use palisade_core::{BoxError, ConfigError, Error, Name};
use palisade_limit::adaptive::{AdaptiveLimit, AdaptiveLimitConfig, AdaptiveLimitLayer};
use palisade_limit::rate::{KeyedRateLimit, KeyedRateLimitLayer, RateLimitConfig, RateLimitLayer};
use palisade_limit::shed::{LoadShed, LoadShedLayer};
use palisade_timeout::deadline::{InboundDeadline, InboundDeadlineLayer};
use pin_project::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::downstream::Stage;
use crate::downstream::front::{CallOutcome, FrontMetrics};

/// The key function of an [`Inbound`] without a keyed rate limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKey;

/// The deadline-extraction stage.
pub type DeadlineStage<S> = Stage<InboundDeadline<S>, S>;
/// The adaptive limit stage (server side), classifying HTTP responses.
pub type AdaptiveStage<S> =
    Stage<AdaptiveLimit<DeadlineStage<S>, palisade_core::HttpClassifier>, DeadlineStage<S>>;
/// The load shedding stage.
pub type ShedStage<S> = Stage<LoadShed<AdaptiveStage<S>>, AdaptiveStage<S>>;

/// The keyed rate limit stage: on with a key function, off with [`NoKey`].
#[derive(Debug, Clone)]
pub enum RateStage<S, F> {
    /// Rate limited per key.
    On(KeyedRateLimit<S, F>),
    /// No rate limit.
    Off(S),
}

/// The whole server-side stack an [`Inbound`] builds around a handler `S`.
pub type InboundService<S, F = NoKey> = Answer<RateStage<ShedStage<S>, F>>;

/// The server-side policies, assembled in order as one [`tower::Layer`] for HTTP
/// services; see the [module docs](self).
pub struct Inbound<F = NoKey> {
    name: Name,
    metrics: Option<Arc<FrontMetrics>>,
    rate: Option<KeyedRateLimitLayer<F>>,
    shed: Option<Arc<LoadShedLayer>>,
    adaptive: Option<AdaptiveLimitLayer<palisade_core::HttpClassifier>>,
    deadline: Option<InboundDeadlineLayer>,
}

impl<F: Clone> Clone for Inbound<F> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            metrics: self.metrics.clone(),
            rate: self.rate.clone(),
            shed: self.shed.clone(),
            adaptive: self.adaptive.clone(),
            deadline: self.deadline.clone(),
        }
    }
}

impl<F> std::fmt::Debug for Inbound<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("name", &self.name)
            .field("rate_limit", &self.rate.is_some())
            .field("shed", &self.shed.is_some())
            .field("adaptive_limit", &self.adaptive.is_some())
            .field("deadline", &self.deadline.as_ref().map(InboundDeadlineLayer::max))
            .finish()
    }
}

impl Inbound {
    /// Starts the inbound stack of the service `name` (the `downstream` label of its
    /// metrics).
    pub fn builder(name: &str) -> InboundBuilder {
        InboundBuilder {
            name: name.to_owned(),
            rate: None,
            key: NoKey,
            keys: (100_000, Duration::from_secs(600)),
            shed: None,
            adaptive: None,
            deadline: None,
            metrics: true,
        }
    }
}

impl<S, F: Clone> Layer<S> for Inbound<F> {
    type Service = InboundService<S, F>;

    fn layer(&self, handler: S) -> Self::Service {
        let s = match &self.deadline {
            Some(l) => Stage::On(l.layer(handler)),
            None => Stage::Off(handler),
        };
        let s = match &self.adaptive {
            Some(l) => Stage::On(l.layer(s)),
            None => Stage::Off(s),
        };
        let s = match &self.shed {
            Some(l) => Stage::On(l.layer(s)),
            None => Stage::Off(s),
        };
        let s = match &self.rate {
            Some(l) => RateStage::On(l.layer(s)),
            None => RateStage::Off(s),
        };
        Answer {
            inner: s,
            metrics: self.metrics.clone(),
        }
    }
}

/// Builds an [`Inbound`]; every policy is optional.
#[derive(Debug)]
pub struct InboundBuilder<F = NoKey> {
    name: String,
    rate: Option<RateLimitConfig>,
    key: F,
    keys: (usize, Duration),
    shed: Option<(usize, Duration)>,
    adaptive: Option<AdaptiveLimitConfig>,
    deadline: Option<Duration>,
    metrics: bool,
}

impl<F> InboundBuilder<F> {
    /// Rate limits requests per key (API key, client address, route…) taken from the
    /// request by `key`; requests over the rate get `429` with `Retry-After`.
    pub fn rate_limit_by<F2>(self, config: RateLimitConfig, key: F2) -> InboundBuilder<F2> {
        InboundBuilder {
            name: self.name,
            rate: Some(config),
            key,
            keys: self.keys,
            shed: self.shed,
            adaptive: self.adaptive,
            deadline: self.deadline,
            metrics: self.metrics,
        }
    }

    /// Bounds the keyed rate limiter's memory: at most `capacity` keys, each
    /// forgotten after `idle` without requests. Default 100 000 keys, 10 minutes.
    pub fn rate_limit_keys(mut self, capacity: usize, idle: Duration) -> Self {
        self.keys = (capacity, idle);
        self
    }

    /// Sheds (`503`) requests past `max_in_flight` at once (scaled by criticality:
    /// see [`palisade_limit::shed`]) or that wait longer than `queue_target` for the
    /// handler. With [`adaptive_limit`](Self::adaptive_limit) the in-flight limit
    /// follows the adaptive limit instead, and `max_in_flight` is only its start.
    pub fn max_in_flight(mut self, max_in_flight: usize, queue_target: Duration) -> Self {
        self.shed = Some((max_in_flight, queue_target));
        self
    }

    /// An adaptive concurrency limit measured on the handler's latency; requests
    /// over it are shed (`503`) at once.
    pub fn adaptive_limit(mut self, config: AdaptiveLimitConfig) -> Self {
        self.adaptive = Some(config);
        self
    }

    /// Reads the caller's deadline (`grpc-timeout`, `x-palisade-deadline-ms`),
    /// capped at `max`, for every `Downstream` the handler calls.
    pub fn deadline(mut self, max: Duration) -> Self {
        self.deadline = Some(max);
        self
    }

    /// Records no top-level metrics (the layers still record theirs).
    pub fn without_metrics(mut self) -> Self {
        self.metrics = false;
        self
    }

    /// Validates every policy and builds the layer; errors name the policy and field.
    pub fn build(self) -> Result<Inbound<F>, ConfigError> {
        let name = Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        let n = name.as_str();
        let rate = match self.rate {
            Some(config) => Some(
                RateLimitLayer::builder(n)
                    .config(config)
                    .build_keyed(self.key, self.keys.0, self.keys.1)
                    .map_err(|e| e.within("rate_limit"))?,
            ),
            None => None,
        };
        let adaptive = match self.adaptive {
            Some(config) => Some(
                AdaptiveLimitLayer::builder(n)
                    .config(config)
                    .classify(palisade_core::HttpClassifier)
                    .build()
                    .map_err(|e| e.within("adaptive_limit"))?,
            ),
            None => None,
        };
        let shed = match (self.shed, &adaptive) {
            (None, None) => None,
            (shed, adaptive) => {
                let mut b = LoadShedLayer::builder(n);
                b = match adaptive {
                    Some(a) => {
                        let handle = a.handle();
                        b.limit_from(move || handle.limit() as usize)
                    }
                    None => b.max_in_flight(shed.map(|s| s.0).unwrap_or(0)),
                };
                if let Some((_, target)) = shed {
                    b = b.queue_target(target);
                }
                Some(Arc::new(b.build().map_err(|e| e.within("shed"))?))
            }
        };
        let deadline = match self.deadline {
            Some(max) => Some(
                InboundDeadlineLayer::builder(n)
                    .max(max)
                    .build()
                    .map_err(|e| e.within("deadline"))?,
            ),
            None => None,
        };
        let metrics = self
            .metrics
            .then(|| Arc::new(FrontMetrics::register_as("inbound", "request", &name)));
        Ok(Inbound {
            name,
            metrics,
            rate,
            shed,
            adaptive,
            deadline,
        })
    }
}

impl<S, B> Service<Request<B>> for RateStage<S, NoKey>
where
    S: Service<Request<B>, Error = Error>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self {
            RateStage::On(_) => Poll::Ready(Ok(())),
            RateStage::Off(s) => s.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self {
            // Unreachable: a limiter needs a key function, and `NoKey` is not one.
            RateStage::On(_) => unreachable_key(),
            RateStage::Off(s) => s.call(req),
        }
    }
}

#[cold]
fn unreachable_key() -> ! {
    panic!("palisade: a keyed rate limit was built without a key function")
}

impl<S, B, F, K> Service<Request<B>> for RateStage<S, F>
where
    S: Service<Request<B>, Error = Error> + Clone,
    F: Fn(&Request<B>) -> K + Clone,
    K: Hash,
{
    type Response = S::Response;
    type Error = Error;
    type Future = RateFuture<S, Request<B>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self {
            RateStage::On(s) => s.poll_ready(cx),
            RateStage::Off(s) => s.poll_ready(cx),
        }
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self {
            RateStage::On(s) => RateFuture::On(s.call(req)),
            RateStage::Off(s) => RateFuture::Off(s.call(req)),
        }
    }
}

/// The response future of a keyed [`RateStage`].
#[pin_project(project = RateProj)]
pub enum RateFuture<S: Service<Req>, Req> {
    /// Through the keyed limiter.
    On(#[pin] palisade_limit::rate::KeyedFuture<S, Req>),
    /// Straight to the inner service.
    Off(#[pin] S::Future),
}

impl<S: Service<Req>, Req> std::fmt::Debug for RateFuture<S, Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateFuture")
    }
}

impl<S, Req> Future for RateFuture<S, Req>
where
    S: Service<Req, Error = Error>,
{
    type Output = Result<S::Response, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RateProj::On(f) => f.poll(cx),
            RateProj::Off(f) => f.poll(cx),
        }
    }
}

/// The top of an [`Inbound`] stack: turns refusals into responses (`429`, `503`,
/// `504` with `Retry-After`), handler errors into `500`, and records each request.
#[derive(Debug, Clone)]
pub struct Answer<S> {
    inner: S,
    metrics: Option<Arc<FrontMetrics>>,
}

impl<S, B, ResB> Service<Request<B>> for Answer<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError> + 'static,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = Infallible;
    type Future = AnswerFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A stage that fails to get ready answers the next request with the error.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                tracing::warn!(error = %Error::from_service(e), "inbound service failed to get ready");
                Poll::Ready(Ok(()))
            }
        }
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        AnswerFuture {
            inner: self.inner.call(req),
            start: self.metrics.as_ref().map(|_| Instant::now()),
            metrics: self.metrics.clone(),
        }
    }
}

/// The response future of [`Answer`].
#[pin_project]
#[derive(Debug)]
pub struct AnswerFuture<F> {
    #[pin]
    inner: F,
    start: Option<Instant>,
    metrics: Option<Arc<FrontMetrics>>,
}

impl<F, ResB, E> Future for AnswerFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError> + 'static,
    ResB: Default,
{
    type Output = Result<Response<ResB>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        let (response, outcome) = match result {
            Ok(res) => {
                let outcome = if res.headers().contains_key(palisade_core::REJECTION_HEADER) {
                    CallOutcome::Rejected
                } else if res.status().is_server_error() {
                    CallOutcome::Failure
                } else {
                    CallOutcome::Success
                };
                (res, outcome)
            }
            Err(e) => match Error::from_service(e) {
                Error::Rejected(r) => (r.to_http_response(), CallOutcome::Rejected),
                Error::Inner(e) => {
                    tracing::warn!(error = %e, "handler failed; answering 500");
                    let mut res = Response::new(ResB::default());
                    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    (res, CallOutcome::Failure)
                }
            },
        };
        if let (Some(m), Some(start)) = (this.metrics.as_ref(), *this.start) {
            m.calls.get(outcome).increment(1);
            m.duration.record(start.elapsed().as_secs_f64());
        }
        Poll::Ready(Ok(response))
    }
}
