use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::{
    BoxError, ConfigError, Deadline, DeadlineScope, Error, Name, Rejection, RejectionKind,
};
use pin_project::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::deadline::header::timeout_from_headers;
use crate::metrics::InboundMetrics;
use crate::service::instant_after;

/// Server side: turns the caller's deadline headers into the request's
/// [`Deadline`], capped by the server's own limit.
///
/// Built with [`InboundDeadlineLayer::builder`]; see [the module docs](super) for the
/// whole picture.
///
/// ```
/// use palisade_core::Deadline;
/// use palisade_timeout::deadline::InboundDeadlineLayer;
/// use std::time::Duration;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let layer = InboundDeadlineLayer::builder("order-api")
///     .max(Duration::from_secs(10))                         // never more than 10 s
///     .default_timeout(Some(Duration::from_secs(2)))        // 2 s without a header
///     .build()?;
/// let mut server = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|_req: http::Request<()>| async {
///         Ok::<_, std::io::Error>(Deadline::current().map(|d| d.remaining()))
///     });
///
/// let req = http::Request::builder().header("x-palisade-deadline-ms", "1500").body(())?;
/// assert_eq!(server.ready().await?.call(req).await?, Some(Duration::from_millis(1500)));
/// let req = http::Request::new(());
/// assert_eq!(server.ready().await?.call(req).await?, Some(Duration::from_secs(2)));
/// let req = http::Request::builder().header("grpc-timeout", "1H").body(())?;
/// assert_eq!(server.ready().await?.call(req).await?, Some(Duration::from_secs(10)));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct InboundDeadlineLayer {
    shared: Arc<InboundShared>,
}

#[derive(Debug)]
struct InboundShared {
    name: Name,
    max: Duration,
    default_timeout: Duration,
    metrics: InboundMetrics,
}

impl InboundDeadlineLayer {
    /// Starts a builder for the server (or route) `name` (the `downstream` metric
    /// label: 1 to 64 ASCII letters, digits, `_`, `-`, `.`). Setting
    /// [`max`](InboundDeadlineBuilder::max) is required.
    pub fn builder(name: &str) -> InboundDeadlineBuilder {
        InboundDeadlineBuilder {
            name: name.to_owned(),
            max: None,
            default_timeout: None,
        }
    }

    /// The most time a request is given.
    pub fn max(&self) -> Duration {
        self.shared.max
    }

    /// The time a request without a readable deadline header is given.
    pub fn default_timeout(&self) -> Duration {
        self.shared.default_timeout
    }
}

impl<S> Layer<S> for InboundDeadlineLayer {
    type Service = InboundDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InboundDeadline {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Builds an [`InboundDeadlineLayer`]; `build` validates and names the bad field.
#[derive(Debug, Clone)]
pub struct InboundDeadlineBuilder {
    name: String,
    max: Option<Duration>,
    default_timeout: Option<Duration>,
}

impl InboundDeadlineBuilder {
    /// The server's cap (required): a request is never given more than `max`,
    /// whatever its caller asked for.
    pub fn max(mut self, max: Duration) -> Self {
        self.max = Some(max);
        self
    }

    /// The time given to a request without a (readable) deadline header. `None`, the
    /// default, gives it [`max`](Self::max).
    pub fn default_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Validates the settings, registers the metrics (at zero) and builds the layer.
    ///
    /// ```
    /// use palisade_timeout::deadline::InboundDeadlineLayer;
    /// use std::time::Duration;
    ///
    /// let err = InboundDeadlineLayer::builder("api").build().unwrap_err();
    /// assert_eq!(err.to_string(), "max: must be set (the most time a request is given)");
    /// let err = InboundDeadlineLayer::builder("api")
    ///     .max(Duration::from_secs(1))
    ///     .default_timeout(Some(Duration::from_secs(2)))
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "default_timeout: 2s is more than max (1s)");
    /// ```
    pub fn build(self) -> Result<InboundDeadlineLayer, ConfigError> {
        let name = Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        let Some(max) = self.max else {
            return Err(ConfigError::new(
                "max",
                "must be set (the most time a request is given)",
            ));
        };
        if max.is_zero() {
            return Err(ConfigError::new("max", "must be more than zero"));
        }
        let default_timeout = match self.default_timeout {
            None => max,
            Some(d) if d.is_zero() => {
                return Err(ConfigError::new(
                    "default_timeout",
                    "must be more than zero",
                ));
            }
            Some(d) if d > max => {
                return Err(ConfigError::new(
                    "default_timeout",
                    format!("{d:?} is more than max ({max:?})"),
                ));
            }
            Some(d) => d,
        };
        let metrics = InboundMetrics::register(&name);
        Ok(InboundDeadlineLayer {
            shared: Arc::new(InboundShared {
                name,
                max,
                default_timeout,
                metrics,
            }),
        })
    }
}

/// The service of an [`InboundDeadlineLayer`].
///
/// `poll_ready` delegates to the inner service. Whether a request's deadline has
/// already passed is only known from its headers, in `call`; a request refused
/// there leaves the inner service's readiness reserved for this service's next
/// call (tower allows that; nothing is leaked).
pub struct InboundDeadline<S> {
    inner: S,
    shared: Arc<InboundShared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for InboundDeadline<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundDeadline")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("max", &self.shared.max)
            .finish_non_exhaustive()
    }
}

impl<S: Clone> Clone for InboundDeadline<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> InboundDeadline<S> {
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

impl<S, B> Service<http::Request<B>> for InboundDeadline<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError> + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = InboundFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_service)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let now = Instant::now();
        let shared = &*self.shared;
        let asked = timeout_from_headers(req.headers(), |header, reason| {
            shared.metrics.header_error(header, reason);
            tracing::debug!(
                downstream = %shared.name,
                header = header.as_str(),
                reason = reason.as_str(),
                "ignoring an unreadable deadline header"
            );
        });
        let given = match asked {
            Some(asked) if asked > shared.max => {
                shared.metrics.capped();
                shared.max
            }
            Some(asked) => asked,
            None => shared.default_timeout,
        };
        let mut deadline = Deadline::at(instant_after(now, given));
        if let Some(outer) = Deadline::current() {
            deadline = deadline.min(outer);
        }
        if deadline.instant() <= now {
            shared.metrics.refused();
            tracing::debug!(downstream = %shared.name, "deadline passed on arrival; request refused");
            return InboundFuture::refused(
                Rejection::new(RejectionKind::DeadlineExceeded)
                    .with_downstream(shared.name.clone()),
            );
        }
        req.extensions_mut().insert(deadline);
        let inner = &mut self.inner;
        let future = deadline.sync_scope(|| inner.call(req));
        InboundFuture::called(deadline.scoped(future))
    }
}

/// The response future of [`InboundDeadline`]: the inner call, run with the
/// request's deadline as [`Deadline::current`], or a refusal.
#[pin_project]
pub struct InboundFuture<F> {
    #[pin]
    state: State<F>,
}

#[pin_project(project = StateProj)]
enum State<F> {
    Called {
        #[pin]
        future: DeadlineScope<F>,
    },
    Refused {
        rejection: Option<Rejection>,
    },
}

impl<F> std::fmt::Debug for InboundFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InboundFuture")
    }
}

impl<F> InboundFuture<F> {
    fn called(future: DeadlineScope<F>) -> Self {
        Self {
            state: State::Called { future },
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

impl<F, T, E> Future for InboundFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future } => future.poll(cx).map_err(Error::from_service),
            StateProj::Refused { rejection } => match rejection.take() {
                Some(r) => Poll::Ready(Err(Error::Rejected(r))),
                None => Poll::Pending,
            },
        }
    }
}
