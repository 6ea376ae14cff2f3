//! The last stage before the wire: refuse an attempt that cannot finish in time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::{BoxError, ConfigError, Deadline, Error, Name, Rejection, RejectionKind};
use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// How a [`Downstream`](super::Downstream) sends each attempt on its way: refuses it
/// when too little of the call's deadline is left and, for HTTP, tells the next hop
/// how much is left. Implemented by [`RefuseLate`] (any request type) and, with the
/// `http` feature, by [`HttpDeadline`].
pub trait HopSpec {
    /// The layer placed just above the per-attempt timeout.
    type Layer: Clone;

    /// Builds the layer for downstream `name`.
    fn build(
        &self,
        name: &str,
        margin: Duration,
        min_remaining: Duration,
    ) -> Result<Self::Layer, ConfigError>;
}

/// Any request type: refuse attempts with less than `min_remaining` left before the
/// call's deadline; nothing is written on the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefuseLate;

impl HopSpec for RefuseLate {
    type Layer = RefuseLateLayer;

    fn build(
        &self,
        name: &str,
        _margin: Duration,
        min_remaining: Duration,
    ) -> Result<RefuseLateLayer, ConfigError> {
        let name = Name::new(name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        Ok(RefuseLateLayer {
            shared: Arc::new(RefuseShared {
                name,
                min_remaining,
            }),
        })
    }
}

/// HTTP requests: as [`RefuseLate`], and each attempt carries the time left (minus
/// the margin) in `x-palisade-deadline-ms` and `grpc-timeout`, through
/// [`OutboundDeadlineLayer`](palisade_timeout::OutboundDeadlineLayer).
#[cfg(feature = "http")]
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpDeadline;

#[cfg(feature = "http")]
impl HopSpec for HttpDeadline {
    type Layer = palisade_timeout::OutboundDeadlineLayer;

    fn build(
        &self,
        name: &str,
        margin: Duration,
        min_remaining: Duration,
    ) -> Result<Self::Layer, ConfigError> {
        palisade_timeout::OutboundDeadlineLayer::builder(name)
            .margin(margin)
            .min_remaining(min_remaining)
            .build()
            .map_err(|e| e.within("deadline"))
    }
}

#[derive(Debug)]
struct RefuseShared {
    name: Name,
    min_remaining: Duration,
}

/// Builds [`RefuseLateService`]s; see [`RefuseLate`].
#[derive(Debug, Clone)]
pub struct RefuseLateLayer {
    shared: Arc<RefuseShared>,
}

impl<S> Layer<S> for RefuseLateLayer {
    type Service = RefuseLateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RefuseLateService {
            inner,
            shared: Arc::clone(&self.shared),
            refuse: false,
        }
    }
}

/// Refuses an attempt, without sending it, when less than `min_remaining` is left
/// before the call's deadline.
#[derive(Debug)]
pub struct RefuseLateService<S> {
    inner: S,
    shared: Arc<RefuseShared>,
    refuse: bool,
}

impl<S: Clone> Clone for RefuseLateService<S> {
    fn clone(&self) -> Self {
        // A clone starts without the readiness (or refusal) of its original.
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            refuse: false,
        }
    }
}

impl<S, Req> Service<Req> for RefuseLateService<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = RefuseLateFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // The deadline in scope now decides (a service made ready again follows the
        // request it is now made ready for); without one, an earlier decision stays.
        if let Some(d) = Deadline::current() {
            self.refuse = d.remaining() < self.shared.min_remaining;
        }
        if self.refuse {
            // The call will be refused: take no capacity from the inner service.
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Error::from_service)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        if std::mem::take(&mut self.refuse) {
            tracing::debug!(
                downstream = %self.shared.name,
                "too little time left before the deadline; attempt refused without sending"
            );
            return RefuseLateFuture::Refused(Some(
                Rejection::new(RejectionKind::DeadlineExceeded)
                    .with_downstream(self.shared.name.clone()),
            ));
        }
        RefuseLateFuture::Sent(self.inner.call(req))
    }
}

/// The response future of [`RefuseLateService`].
#[pin_project(project = RefuseProj)]
#[derive(Debug)]
pub enum RefuseLateFuture<F> {
    /// The attempt was sent.
    Sent(#[pin] F),
    /// The attempt was refused.
    Refused(Option<Rejection>),
}

impl<F, T, E> Future for RefuseLateFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
{
    type Output = Result<T, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RefuseProj::Sent(f) => f.poll(cx).map_err(Error::from_service),
            RefuseProj::Refused(r) => Poll::Ready(Err(Error::Rejected(
                r.take()
                    .unwrap_or(Rejection::new(RejectionKind::DeadlineExceeded)),
            ))),
        }
    }
}
