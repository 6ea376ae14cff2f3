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
//! [`std::convert::Infallible`], so the stack fits `axum::Router::layer`.
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
use palisade_core::clock;
use palisade_core::lanes::{Lane, Lanes};
use palisade_core::{BoxError, ConfigError, Error, HttpClassifier, Name};
use palisade_limit::adaptive::{AdaptiveLimitConfig, AdaptiveLimitLayer};
use palisade_limit::rate::{KeyedRateLimitLayer, RateLimitConfig, RateLimitLayer};
use palisade_limit::shed::LoadShedLayer;
use palisade_timeout::deadline::InboundDeadlineLayer;
use pin_project::pin_project;
use tokio::time::Instant;
use tower::layer::util::{Identity, Stack};
use tower_layer::Layer;
use tower_service::Service;

use crate::downstream::Off;
use crate::downstream::front::{CallOutcome, FrontMetrics};

/// The server-side policies, assembled in order as one [`tower::Layer`] for HTTP
/// services; see the [module docs](self). `L` is the stack of configured layers
/// (left-out policies are [`Identity`] and cost nothing).
#[derive(Clone)]
pub struct Inbound<L> {
    name: Name,
    metrics: Option<Lanes<FrontMetrics>>,
    layers: L,
}

impl<L> std::fmt::Debug for Inbound<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Inbound<()> {
    /// Starts the inbound stack of the service `name` (the `downstream` label of its
    /// metrics).
    pub fn builder(name: &str) -> InboundBuilder {
        InboundBuilder {
            name: name.to_owned(),
            rate: Off,
            admission: Off,
            deadline: Off,
            metrics: true,
        }
    }
}

impl<S, L: Layer<S>> Layer<S> for Inbound<L> {
    type Service = Answer<L::Service>;

    fn layer(&self, handler: S) -> Self::Service {
        Answer {
            inner: self.layers.layer(handler),
            metrics: self.metrics.clone(),
            unready: None,
        }
    }
}

/// A keyed rate limit: its settings, the key function and the bound on keys.
#[derive(Debug, Clone)]
pub struct KeyedRate<F> {
    config: RateLimitConfig,
    key: F,
    capacity: usize,
    idle: Duration,
}

/// How an inbound rate-limit slot builds its layer ([`Off`] or [`KeyedRate`]).
pub trait RateSlot {
    /// The layer ([`Identity`] when off).
    type Layer: Clone;
    /// Builds it for service `name`.
    fn build(self, name: &str) -> Result<Self::Layer, ConfigError>;
}

impl RateSlot for Off {
    type Layer = Identity;
    fn build(self, _: &str) -> Result<Identity, ConfigError> {
        Ok(Identity::new())
    }
}

impl<F: Clone> RateSlot for KeyedRate<F> {
    type Layer = KeyedRateLimitLayer<F>;
    fn build(self, name: &str) -> Result<Self::Layer, ConfigError> {
        RateLimitLayer::builder(name)
            .config(self.config)
            .build_keyed(self.key, self.capacity, self.idle)
            .map_err(|e| e.within("rate_limit"))
    }
}

/// Load shedding past a fixed in-flight limit, or after waiting past a queue target.
#[derive(Debug, Clone, Copy)]
pub struct Shed {
    max_in_flight: usize,
    queue_target: Duration,
}

/// An adaptive limit on the handler's latency; requests past it are shed.
#[derive(Debug, Clone)]
pub struct AdaptiveShed {
    config: AdaptiveLimitConfig,
    queue_target: Option<Duration>,
}

/// How an admission slot builds its layers ([`Off`], [`Shed`] or [`AdaptiveShed`]).
pub trait AdmissionSlot {
    /// The layer ([`Identity`] when off).
    type Layer: Clone;
    /// Builds it for service `name`.
    fn build(self, name: &str) -> Result<Self::Layer, ConfigError>;
}

impl AdmissionSlot for Off {
    type Layer = Identity;
    fn build(self, _: &str) -> Result<Identity, ConfigError> {
        Ok(Identity::new())
    }
}

/// A [`LoadShedLayer`] shared by every service it builds.
#[derive(Debug, Clone)]
pub struct SharedShed(Arc<LoadShedLayer>);

impl<S> Layer<S> for SharedShed {
    type Service = <LoadShedLayer as Layer<S>>::Service;
    fn layer(&self, inner: S) -> Self::Service {
        self.0.layer(inner)
    }
}

impl AdmissionSlot for Shed {
    type Layer = SharedShed;

    fn build(self, name: &str) -> Result<Self::Layer, ConfigError> {
        let shed = LoadShedLayer::builder(name)
            .max_in_flight(self.max_in_flight)
            .queue_target(self.queue_target)
            .build()
            .map_err(|e| e.within("shed"))?;
        Ok(SharedShed(Arc::new(shed)))
    }
}

impl AdmissionSlot for AdaptiveShed {
    /// The adaptive limit (inner) under the shedder (outer), which reads its limit.
    type Layer = Stack<AdaptiveLimitLayer<HttpClassifier>, SharedShed>;

    fn build(self, name: &str) -> Result<Self::Layer, ConfigError> {
        let adaptive = AdaptiveLimitLayer::builder(name)
            .config(self.config)
            .classify(HttpClassifier)
            .build()
            .map_err(|e| e.within("adaptive_limit"))?;
        let handle = adaptive.handle();
        let mut shed = LoadShedLayer::builder(name).limit_from(move || handle.limit() as usize);
        if let Some(target) = self.queue_target {
            shed = shed.queue_target(target);
        }
        let shed = shed.build().map_err(|e| e.within("shed"))?;
        Ok(Stack::new(adaptive, SharedShed(Arc::new(shed))))
    }
}

/// Deadline extraction: the longest deadline a caller may ask for.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineMax(pub Duration);

/// How a deadline slot builds its layer ([`Off`] or [`DeadlineMax`]).
pub trait DeadlineSlot {
    /// The layer ([`Identity`] when off).
    type Layer: Clone;
    /// Builds it for service `name`.
    fn build(self, name: &str) -> Result<Self::Layer, ConfigError>;
}

impl DeadlineSlot for Off {
    type Layer = Identity;
    fn build(self, _: &str) -> Result<Identity, ConfigError> {
        Ok(Identity::new())
    }
}

impl DeadlineSlot for DeadlineMax {
    type Layer = InboundDeadlineLayer;
    fn build(self, name: &str) -> Result<Self::Layer, ConfigError> {
        InboundDeadlineLayer::builder(name)
            .max(self.0)
            .build()
            .map_err(|e| e.within("deadline"))
    }
}

/// Builds an [`Inbound`]; every policy is optional. The type parameters record which
/// are configured, so the built stack holds exactly those.
#[derive(Debug)]
pub struct InboundBuilder<R = Off, A = Off, D = Off> {
    name: String,
    rate: R,
    admission: A,
    deadline: D,
    metrics: bool,
}

/// The layers of an inbound stack, innermost first: deadline extraction, admission
/// (adaptive limit and shedding), keyed rate limit.
pub type InboundLayers<R, A, D> = Stack<D, Stack<A, R>>;

impl<R, A, D> InboundBuilder<R, A, D> {
    /// Rate limits requests per key (API key, client address, route…) taken from the
    /// request by `key`; requests over the rate get `429` with `Retry-After`. At most
    /// 100 000 keys are held, each forgotten after 10 minutes idle
    /// ([`rate_limit_keys`](InboundBuilder::rate_limit_keys) changes that).
    pub fn rate_limit_by<F, B, K>(
        self,
        config: RateLimitConfig,
        key: F,
    ) -> InboundBuilder<KeyedRate<F>, A, D>
    where
        F: Fn(&Request<B>) -> K + Clone,
        K: Hash,
    {
        InboundBuilder {
            name: self.name,
            rate: KeyedRate {
                config,
                key,
                capacity: 100_000,
                idle: Duration::from_secs(600),
            },
            admission: self.admission,
            deadline: self.deadline,
            metrics: self.metrics,
        }
    }

    /// Sheds (`503`) requests past `max_in_flight` at once (scaled by criticality:
    /// see [`palisade_limit::shed`]) or that wait longer than `queue_target` for the
    /// handler.
    pub fn max_in_flight(
        self,
        max_in_flight: usize,
        queue_target: Duration,
    ) -> InboundBuilder<R, Shed, D> {
        InboundBuilder {
            name: self.name,
            rate: self.rate,
            admission: Shed {
                max_in_flight,
                queue_target,
            },
            deadline: self.deadline,
            metrics: self.metrics,
        }
    }

    /// An adaptive concurrency limit measured on the handler's latency; requests
    /// past it (scaled by criticality), or waiting longer than `queue_target` for
    /// the handler, are shed (`503`) at once.
    pub fn adaptive_limit(
        self,
        config: AdaptiveLimitConfig,
        queue_target: Option<Duration>,
    ) -> InboundBuilder<R, AdaptiveShed, D> {
        InboundBuilder {
            name: self.name,
            rate: self.rate,
            admission: AdaptiveShed {
                config,
                queue_target,
            },
            deadline: self.deadline,
            metrics: self.metrics,
        }
    }

    /// Reads the caller's deadline (`grpc-timeout`, `x-palisade-deadline-ms`),
    /// capped at `max`, for every `Downstream` the handler calls.
    pub fn deadline(self, max: Duration) -> InboundBuilder<R, A, DeadlineMax> {
        InboundBuilder {
            name: self.name,
            rate: self.rate,
            admission: self.admission,
            deadline: DeadlineMax(max),
            metrics: self.metrics,
        }
    }

    /// Records no top-level metrics (the layers still record theirs).
    pub fn without_metrics(mut self) -> Self {
        self.metrics = false;
        self
    }
}

impl<F, A, D> InboundBuilder<KeyedRate<F>, A, D> {
    /// Bounds the keyed rate limiter's memory: at most `capacity` keys, each
    /// forgotten after `idle` without requests.
    pub fn rate_limit_keys(mut self, capacity: usize, idle: Duration) -> Self {
        self.rate.capacity = capacity;
        self.rate.idle = idle;
        self
    }
}

impl<R: RateSlot, A: AdmissionSlot, D: DeadlineSlot> InboundBuilder<R, A, D> {
    /// Validates every policy and builds the layer; errors name the policy and field.
    #[allow(clippy::type_complexity)]
    pub fn build(
        self,
    ) -> Result<Inbound<InboundLayers<R::Layer, A::Layer, D::Layer>>, ConfigError> {
        let name = Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        let n = name.as_str();
        let rate = self.rate.build(n)?;
        let admission = self.admission.build(n)?;
        let deadline = self.deadline.build(n)?;
        let metrics = self.metrics.then(|| {
            Lanes::new(Arc::new(FrontMetrics::register_as(
                "inbound", "request", &name,
            )))
        });
        Ok(Inbound {
            name,
            metrics,
            layers: Stack::new(deadline, Stack::new(admission, rate)),
        })
    }
}

/// The top of an [`Inbound`] stack: turns refusals into responses (`429`, `503`,
/// `504` with `Retry-After`), handler errors into `500`, and records each request.
#[derive(Debug)]
pub struct Answer<S> {
    inner: S,
    metrics: Option<Lanes<FrontMetrics>>,
    /// The error of the `poll_ready` that failed: the next request is answered
    /// with it, without calling the stages below (they are not ready).
    unready: Option<Error>,
}

impl<S: Clone> Clone for Answer<S> {
    fn clone(&self) -> Self {
        // A clone has not been made ready.
        Self {
            inner: self.inner.clone(),
            metrics: self.metrics.clone(),
            unready: None,
        }
    }
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
        // The stages below that read the time while getting ready share one reading.
        match clock::lend_lazy(|| self.inner.poll_ready(cx)).0 {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                let e = Error::from_service(e);
                tracing::warn!(error = %e, "inbound service failed to get ready");
                self.unready = Some(e);
                Poll::Ready(Ok(()))
            }
        }
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        let start = self.metrics.as_ref().map(|_| Instant::now());
        let metrics = self.metrics.as_ref().map(Lanes::pick);
        if let Some(unready) = self.unready.take() {
            return AnswerFuture {
                inner: None,
                unready: Some(unready),
                start,
                metrics,
            };
        }
        let inner = match start {
            // Every stage below reads this one reading as its now while it is called.
            Some(at) => clock::lend(at, || self.inner.call(req)),
            None => self.inner.call(req),
        };
        AnswerFuture {
            inner: Some(inner),
            unready: None,
            start,
            metrics,
        }
    }
}

/// The response future of [`Answer`].
#[pin_project]
#[derive(Debug)]
pub struct AnswerFuture<F> {
    /// The stages' future; `None` when they failed to get ready.
    #[pin]
    inner: Option<F>,
    /// Why they failed to get ready.
    unready: Option<Error>,
    start: Option<Instant>,
    metrics: Option<Arc<Lane<FrontMetrics>>>,
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
        let result = match (this.inner.as_pin_mut(), this.unready.take()) {
            (Some(inner), _) => match inner.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r.map_err(Error::from_service),
            },
            (None, Some(unready)) => Err(unready),
            (None, None) => Err(Error::Inner(
                "palisade: inbound answer polled after it completed".into(),
            )),
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
            Err(e) => match e {
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
