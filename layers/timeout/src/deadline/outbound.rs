use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::{BoxError, ConfigError, Deadline, Error, Name, Rejection, RejectionKind};
use pin_project::pin_project;

use palisade_core::timer::LazyTimer;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::deadline::header::{DEADLINE_MS, GRPC_TIMEOUT, encode_deadline_ms, encode_grpc_timeout};
use crate::metrics::OutboundMetrics;

/// Client side: sends the request's deadline to the downstream in its headers,
/// refuses calls that cannot finish in time, and cuts off calls when the deadline
/// passes.
///
/// Built with [`OutboundDeadlineLayer::builder`]; see [the module docs](super) for
/// the whole picture.
///
/// ```
/// use palisade_core::{Deadline, RejectionKind};
/// use palisade_timeout::deadline::OutboundDeadlineLayer;
/// use std::time::Duration;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let layer = OutboundDeadlineLayer::builder("customer")
///     .margin(Duration::from_millis(20))        // the network's share
///     .min_remaining(Duration::from_millis(50)) // not worth sending with less left
///     .build()?;
/// let mut client = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|req: http::Request<()>| async move {
///         Ok::<_, std::io::Error>(req.headers().get("grpc-timeout").cloned())
///     });
///
/// // No deadline: passed through untouched.
/// assert_eq!(client.ready().await?.call(http::Request::new(())).await?, None);
///
/// // 300 ms left: 280 ms are sent.
/// let sent = Deadline::after(Duration::from_millis(300))
///     .scope(async { client.ready().await?.call(http::Request::new(())).await })
///     .await?;
/// assert_eq!(sent.unwrap(), "280m");
///
/// // 40 ms left: refused before sending.
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(Deadline::after(Duration::from_millis(40)));
/// let err = client.ready().await?.call(req).await.unwrap_err();
/// assert_eq!(err.rejection().unwrap().kind(), RejectionKind::DeadlineExceeded);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct OutboundDeadlineLayer {
    shared: Arc<OutboundShared>,
}

#[derive(Debug)]
struct OutboundShared {
    name: Name,
    margin: Duration,
    min_remaining: Duration,
    metrics: OutboundMetrics,
}

impl OutboundShared {
    fn rejection(&self) -> Rejection {
        Rejection::new(RejectionKind::DeadlineExceeded).with_downstream(self.name.clone())
    }
}

impl OutboundDeadlineLayer {
    /// The default [`margin`](OutboundDeadlineBuilder::margin): 5 ms.
    pub const DEFAULT_MARGIN: Duration = Duration::from_millis(5);
    /// The default [`min_remaining`](OutboundDeadlineBuilder::min_remaining): 10 ms.
    pub const DEFAULT_MIN_REMAINING: Duration = Duration::from_millis(10);

    /// Starts a builder for calls to downstream `name` (the `downstream` metric
    /// label: 1 to 64 ASCII letters, digits, `_`, `-`, `.`).
    pub fn builder(name: &str) -> OutboundDeadlineBuilder {
        OutboundDeadlineBuilder {
            name: name.to_owned(),
            margin: Self::DEFAULT_MARGIN,
            min_remaining: Self::DEFAULT_MIN_REMAINING,
        }
    }

    /// The time subtracted from what is sent.
    pub fn margin(&self) -> Duration {
        self.shared.margin
    }

    /// The least time left for which a call is still sent.
    pub fn min_remaining(&self) -> Duration {
        self.shared.min_remaining
    }
}

impl<S> Layer<S> for OutboundDeadlineLayer {
    type Service = OutboundDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OutboundDeadline {
            inner,
            shared: Arc::clone(&self.shared),
            refuse: false,
        }
    }
}

/// Builds an [`OutboundDeadlineLayer`]; `build` validates and names the bad field.
#[derive(Debug, Clone)]
pub struct OutboundDeadlineBuilder {
    name: String,
    margin: Duration,
    min_remaining: Duration,
}

impl OutboundDeadlineBuilder {
    /// Subtracted from the time left before it is sent, to cover the network and
    /// the downstream's queueing before it reads the header. Default 5 ms; zero is
    /// allowed.
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// A call with less than this left is refused without being sent. Default
    /// 10 ms; must be more than the margin, so that something is left to send.
    pub fn min_remaining(mut self, min_remaining: Duration) -> Self {
        self.min_remaining = min_remaining;
        self
    }

    /// Validates the settings, registers the metrics (at zero) and builds the layer.
    ///
    /// ```
    /// use palisade_timeout::deadline::OutboundDeadlineLayer;
    /// use std::time::Duration;
    ///
    /// let err = OutboundDeadlineLayer::builder("customer")
    ///     .margin(Duration::from_millis(20))
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "min_remaining: 10ms is not more than margin (20ms)");
    /// ```
    pub fn build(self) -> Result<OutboundDeadlineLayer, ConfigError> {
        let name = Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        if self.min_remaining <= self.margin {
            return Err(ConfigError::new(
                "min_remaining",
                format!(
                    "{:?} is not more than margin ({:?})",
                    self.min_remaining, self.margin
                ),
            ));
        }
        let metrics = OutboundMetrics::register(&name);
        Ok(OutboundDeadlineLayer {
            shared: Arc::new(OutboundShared {
                name,
                margin: self.margin,
                min_remaining: self.min_remaining,
                metrics,
            }),
        })
    }
}

/// The service of an [`OutboundDeadlineLayer`].
///
/// The deadline is the earlier of [`Deadline::current`] and the request's
/// [`Deadline`] extension. `poll_ready` looks at the current deadline first: with
/// less than `min_remaining` left it is ready at once without polling the inner
/// service, and `call` refuses, so no inner capacity is reserved for a call that
/// will not be made. A refusal decided only in `call` (from the request's
/// extension, or because time passed since `poll_ready`) leaves the inner service's
/// readiness reserved for this service's next call, as tower allows.
///
/// Setting the two headers allocates their values (an `http::HeaderValue` owns its
/// bytes); nothing else on the call path does.
pub struct OutboundDeadline<S> {
    inner: S,
    shared: Arc<OutboundShared>,
    /// Set by `poll_ready` when the current deadline left too little time.
    refuse: bool,
}

impl<S: std::fmt::Debug> std::fmt::Debug for OutboundDeadline<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundDeadline")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S: Clone> Clone for OutboundDeadline<S> {
    fn clone(&self) -> Self {
        // A clone has not been made ready: it decides again in its own poll_ready.
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            refuse: false,
        }
    }
}

impl<S> OutboundDeadline<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<http::Request<B>> for OutboundDeadline<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError> + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = OutboundFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The deadline in scope now decides (a service made ready again follows the
        // request it is now made ready for); without one, an earlier decision stays.
        if let Some(d) = Deadline::current() {
            self.refuse = d.remaining() < self.shared.min_remaining;
        }
        if self.refuse {
            // The call will be refused: take no readiness from the inner service.
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Error::from_service)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let refuse = std::mem::take(&mut self.refuse);
        let current = Deadline::current();
        let attached = req.extensions().get::<Deadline>().copied();
        let deadline = match (current, attached) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let remaining = match deadline {
            // `refuse` without a deadline only happens if poll_ready and call ran in
            // different deadline scopes; the inner service was not made ready then.
            None if !refuse => return OutboundFuture::passthrough(self.inner.call(req)),
            None => Duration::ZERO,
            Some(d) => d.instant().saturating_duration_since(Instant::now()),
        };
        let shared = &*self.shared;
        let deadline = match deadline {
            Some(d) if !refuse && remaining >= shared.min_remaining => d,
            _ => {
                shared.metrics.refused();
                tracing::debug!(
                    downstream = %shared.name,
                    remaining_ms = remaining.as_millis() as u64,
                    "too little time left before the deadline; call refused without sending"
                );
                return OutboundFuture::refused(shared.rejection());
            }
        };
        let send = remaining.saturating_sub(shared.margin);
        let headers = req.headers_mut();
        headers.insert(DEADLINE_MS, encode_deadline_ms(send));
        headers.insert(GRPC_TIMEOUT, encode_grpc_timeout(send));
        let future = self.inner.call(req);
        OutboundFuture::bounded(future, deadline.instant(), Arc::clone(&self.shared))
    }
}

/// The response future of [`OutboundDeadline`]: the inner call, cut off when the
/// deadline passes (the inner future is dropped then), passed through when there
/// is no deadline, or a refusal.
#[pin_project]
pub struct OutboundFuture<F> {
    #[pin]
    state: State<F>,
}

#[pin_project(project = StateProj)]
enum State<F> {
    Passthrough {
        #[pin]
        future: F,
    },
    Bounded {
        #[pin]
        future: F,
        #[pin]
        timer: LazyTimer,
        shared: Arc<OutboundShared>,
    },
    Refused {
        rejection: Option<Rejection>,
    },
    /// Cut off: the inner future has been dropped.
    Expired,
}

impl<F> std::fmt::Debug for OutboundFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutboundFuture")
    }
}

impl<F> OutboundFuture<F> {
    fn passthrough(future: F) -> Self {
        Self {
            state: State::Passthrough { future },
        }
    }

    fn bounded(future: F, deadline: Instant, shared: Arc<OutboundShared>) -> Self {
        Self {
            state: State::Bounded {
                future,
                timer: LazyTimer::due(deadline),
                shared,
            },
        }
    }

    fn refused(rejection: Rejection) -> Self {
        Self {
            state: State::Refused {
                rejection: Some(rejection),
            },
        }
    }
}

impl<F, T, E> Future for OutboundFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        let rejection = match state.as_mut().project() {
            StateProj::Passthrough { future } => {
                return future.poll(cx).map_err(Error::from_service);
            }
            StateProj::Bounded {
                future,
                timer,
                shared,
            } => {
                // The response wins a tie with the deadline.
                if let Poll::Ready(result) = future.poll(cx) {
                    return Poll::Ready(result.map_err(Error::from_service));
                }
                if timer.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                shared.metrics.expired();
                tracing::debug!(downstream = %shared.name, "deadline passed; call cut off");
                shared.rejection()
            }
            StateProj::Refused { rejection } => {
                return match rejection.take() {
                    Some(r) => Poll::Ready(Err(Error::Rejected(r))),
                    None => Poll::Pending,
                };
            }
            StateProj::Expired => return Poll::Pending,
        };
        // Drop the inner future (and the timer) now, not when the caller drops us.
        state.set(State::Expired);
        Poll::Ready(Err(Error::Rejected(rejection)))
    }
}
