//! Inbound load shedding with criticality classes.
//!
//! A server sheds work it cannot finish in time rather than queueing it: a
//! [`LoadShedLayer`] counts the requests in flight and answers at once — `503` with
//! `Retry-After` and `x-palisade-rejection: shed`, without calling the handler —
//! when taking one more would go past the limit for its class, or when the handler
//! has not been ready for longer than the queue target.
//!
//! The class comes from the `x-palisade-criticality` request header:
//!
//! | value | shed when in-flight reaches |
//! |---|---|
//! | `sheddable` | 80% of the limit |
//! | `default` (or no header, or anything else) | the limit |
//! | `critical` | 125% of the limit |
//!
//! So under overload sheddable work goes first and critical work last. Independently
//! of the class, a request that finds the handler not ready for longer than the
//! queue target is shed (the handler's readiness says nothing about which request
//! comes next). The limit is
//! fixed or read on every request from a [`LimitSource`] (for example an adaptive
//! limiter's current limit), so shedding follows measured capacity.
//!
//! ```
//! use palisade_limit::shed::LoadShedLayer;
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let shed = LoadShedLayer::builder("orders-api")
//!     .max_in_flight(100)
//!     .queue_target(Duration::from_millis(20))
//!     .build()
//!     .unwrap();
//! let mut server = ServiceBuilder::new().layer(shed).service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
//! });
//! let res = server.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use http::{HeaderValue, Request, Response};
use metrics::Gauge;
use palisade_core::observe::{CounterSet, LabelValue, MetricScope};
use palisade_core::{ConfigError, Name, Rejection, RejectionKind};
use pin_project::{pin_project, pinned_drop};
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

/// The request header naming a request's criticality.
pub const CRITICALITY_HEADER: &str = "x-palisade-criticality";

/// How much a request matters when the server must shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Criticality {
    /// Shed first (at 80% of the limit): prefetches, batch work, retries.
    Sheddable,
    /// Shed at the limit.
    Default,
    /// Shed last (at 125% of the limit).
    Critical,
}

impl Criticality {
    /// The class of a request, from [`CRITICALITY_HEADER`]; unknown values are
    /// `Default`.
    pub fn of<B>(req: &Request<B>) -> Self {
        match req
            .headers()
            .get(CRITICALITY_HEADER)
            .map(HeaderValue::as_bytes)
        {
            Some(b"critical") => Criticality::Critical,
            Some(b"sheddable") => Criticality::Sheddable,
            _ => Criticality::Default,
        }
    }

    /// The in-flight count at which this class is shed, for a limit of `limit`.
    pub fn threshold(self, limit: usize) -> usize {
        match self {
            // Saturating: a limit near `usize::MAX` means "never shed".
            Criticality::Sheddable => (limit.saturating_mul(4) / 5).max(1),
            Criticality::Default => limit.max(1),
            Criticality::Critical => limit.saturating_mul(5).div_ceil(4).max(1),
        }
    }
}

/// Where the in-flight limit comes from: a number, or anything that reports the
/// current limit (a closure returning it, an adaptive limiter's handle).
pub trait LimitSource: Send + Sync + 'static {
    /// The limit now.
    fn current_limit(&self) -> usize;
}

impl LimitSource for usize {
    fn current_limit(&self) -> usize {
        *self
    }
}

impl<F: Fn() -> usize + Send + Sync + 'static> LimitSource for F {
    fn current_limit(&self) -> usize {
        self()
    }
}

#[derive(Debug, Clone, Copy)]
enum ShedLabel {
    Admitted,
    ShedInFlight,
    ShedQueue,
}

impl LabelValue for ShedLabel {
    const LABEL: &'static str = "outcome";
    const ALL: &'static [Self] = &[
        ShedLabel::Admitted,
        ShedLabel::ShedInFlight,
        ShedLabel::ShedQueue,
    ];
    fn as_label(self) -> &'static str {
        match self {
            ShedLabel::Admitted => "admitted",
            ShedLabel::ShedInFlight => "shed_in_flight",
            ShedLabel::ShedQueue => "shed_queue",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

struct Shared {
    name: Name,
    limit: Box<dyn LimitSource>,
    queue_target: Option<Duration>,
    retry_after: Duration,
    in_flight: CachePadded<AtomicUsize>,
    calls: CounterSet<ShedLabel>,
    in_flight_gauge: Gauge,
}

impl Shared {
    /// Takes an in-flight slot if the class's threshold allows.
    fn try_admit(&self, class: Criticality) -> bool {
        let threshold = class.threshold(self.limit.current_limit());
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= threshold {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.in_flight_gauge.set((current + 1) as f64);
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
    }

    fn release(&self) {
        let before = self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.in_flight_gauge.set(before.saturating_sub(1) as f64);
    }

    fn shed<B: Default>(&self, why: ShedLabel) -> Response<B> {
        self.calls.get(why).increment(1);
        Rejection::new(RejectionKind::Shed)
            .with_downstream(self.name.clone())
            .with_retry_after(self.retry_after)
            .to_http_response()
    }
}

/// Sheds inbound requests; see the [module docs](self).
#[derive(Clone)]
pub struct LoadShedLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LoadShedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadShedLayer")
            .field("name", &self.shared.name)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl LoadShedLayer {
    /// Starts a builder for the shedder of server `name`.
    pub fn builder(name: &str) -> Builder {
        Builder {
            name: name.to_owned(),
            limit: None,
            queue_target: None,
            retry_after: Duration::from_secs(1),
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }
}

/// Builds a [`LoadShedLayer`].
pub struct Builder {
    name: String,
    limit: Option<Box<dyn LimitSource>>,
    queue_target: Option<Duration>,
    retry_after: Duration,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// A fixed in-flight limit.
    pub fn max_in_flight(mut self, limit: usize) -> Self {
        self.limit = Some(Box::new(limit));
        self
    }

    /// An in-flight limit read on every request (e.g. an adaptive limiter's).
    pub fn limit_from(mut self, source: impl LimitSource) -> Self {
        self.limit = Some(Box::new(source));
        self
    }

    /// Shed non-critical requests when the handler has not been ready for this long.
    pub fn queue_target(mut self, target: Duration) -> Self {
        self.queue_target = Some(target);
        self
    }

    /// The `Retry-After` sent with shed answers (rounded up to seconds). Default 1 s.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<LoadShedLayer, ConfigError> {
        let name = Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        let limit = self
            .limit
            .ok_or_else(|| ConfigError::new("max_in_flight", "is required"))?;
        if limit.current_limit() == 0 {
            return Err(ConfigError::new("max_in_flight", "must be at least 1"));
        }
        if self.queue_target == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "queue_target",
                "must be greater than zero",
            ));
        }
        let scope = MetricScope::new("shed", name.clone());
        Ok(LoadShedLayer {
            shared: Arc::new(Shared {
                calls: scope.counter_set("requests", "Inbound requests, admitted or shed and why."),
                in_flight_gauge: scope.gauge("in_flight", None, "Inbound requests in flight."),
                name,
                limit,
                queue_target: self.queue_target,
                retry_after: self.retry_after,
                in_flight: CachePadded::new(AtomicUsize::new(0)),
            }),
        })
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            shared: Arc::clone(&self.shared),
            queue_timer: None,
            ready: false,
        }
    }
}

/// The service of [`LoadShedLayer`].
///
/// `poll_ready` never waits on the handler past the queue target: once the handler
/// has not been ready for that long, this service reports ready anyway and `call`
/// sheds the request.
pub struct LoadShed<S> {
    inner: S,
    shared: Arc<Shared>,
    /// Fires when the handler has not been ready for the queue target.
    queue_timer: Option<Pin<Box<Sleep>>>,
    /// Whether the inner service is ready for the next call.
    ready: bool,
}

impl<S: Clone> Clone for LoadShed<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            queue_timer: None,
            ready: false,
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for LoadShed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadShed")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for LoadShed<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ShedFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.ready {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.queue_timer = None;
                self.ready = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(target) = self.shared.queue_target else {
                    return Poll::Pending;
                };
                let timer = self
                    .queue_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(target)));
                if timer.as_mut().poll(cx).is_ready() {
                    // Ready to answer, by shedding: `call` sees `ready == false`.
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let class = Criticality::of(&req);
        if !std::mem::take(&mut self.ready) {
            // The handler was not ready within the queue target.
            self.queue_timer = None;
            return ShedFuture::shed(self.shared.shed(ShedLabel::ShedQueue));
        }
        if !self.shared.try_admit(class) {
            return ShedFuture::shed(self.shared.shed(ShedLabel::ShedInFlight));
        }
        self.shared.calls.get(ShedLabel::Admitted).increment(1);
        ShedFuture {
            state: ShedState::Running {
                future: self.inner.call(req),
                shared: Some(Arc::clone(&self.shared)),
            },
        }
    }
}

/// The response future of [`LoadShed`]; frees the in-flight slot when done or
/// dropped.
#[pin_project(PinnedDrop)]
pub struct ShedFuture<F, B> {
    #[pin]
    state: ShedState<F, B>,
}

#[pin_project(project = ShedStateProj)]
enum ShedState<F, B> {
    Running {
        #[pin]
        future: F,
        shared: Option<Arc<Shared>>,
    },
    Shed {
        response: Option<Response<B>>,
    },
}

impl<F, B> ShedFuture<F, B> {
    fn shed(response: Response<B>) -> Self {
        Self {
            state: ShedState::Shed {
                response: Some(response),
            },
        }
    }
}

impl<F, B> std::fmt::Debug for ShedFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShedFuture")
    }
}

impl<F, B, E> Future for ShedFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            ShedStateProj::Running { future, shared } => {
                let out = std::task::ready!(future.poll(cx));
                if let Some(shared) = shared.take() {
                    shared.release();
                }
                Poll::Ready(out)
            }
            ShedStateProj::Shed { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}

#[pinned_drop]
impl<F, B> PinnedDrop for ShedFuture<F, B> {
    fn drop(self: Pin<&mut Self>) {
        if let ShedStateProj::Running { shared, .. } = self.project().state.project()
            && let Some(shared) = shared.take()
        {
            shared.release();
        }
    }
}
