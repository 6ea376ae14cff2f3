use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_core::{AllErrorsFail, BoxError, Classify, Error};
use tokio::time::Instant;
use tower_service::Service;

use super::future::ResponseFuture;
use super::handle::AdaptiveLimitHandle;
use super::shared::{Admission, Shared};

/// An adaptive concurrency limit around a service; built by
/// [`AdaptiveLimitLayer`](super::AdaptiveLimitLayer).
///
/// All clones made from one layer share one limit. Admission is decided in
/// `poll_ready`: a permit is taken there (one compare-and-swap below the limit) and
/// held by this clone until `call`, or given back if the clone is dropped unused; a
/// clone starts without one. At the limit, `poll_ready` is ready at once (without
/// polling the inner service) and `call` fails with the configured rejection
/// ([`BulkheadFull`](palisade_core::RejectionKind::BulkheadFull) by default): a
/// refused call never waits.
pub struct AdaptiveLimit<S, C = AllErrorsFail> {
    inner: S,
    shared: Arc<Shared>,
    classify: C,
    admission: Option<Admission>,
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for AdaptiveLimit<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<S: Clone, C: Clone> Clone for AdaptiveLimit<S, C> {
    fn clone(&self) -> Self {
        // A clone starts without a permit: it has not been made ready.
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            classify: self.classify.clone(),
            admission: None,
        }
    }
}

impl<S, C> AdaptiveLimit<S, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, classify: C) -> Self {
        Self {
            inner,
            shared,
            classify,
            admission: None,
        }
    }

    /// A handle to this service's limiter.
    pub fn handle(&self) -> AdaptiveLimitHandle {
        AdaptiveLimitHandle::new(Arc::clone(&self.shared))
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, Req> Service<Req> for AdaptiveLimit<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let admission = self.admission.get_or_insert_with(|| self.shared.admit());
        if let Admission::Refused { .. } = admission {
            // A refused call never reaches the inner service, so its readiness is
            // not taken for it.
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                // Gives the permit back.
                self.admission = None;
                Poll::Ready(Err(Error::from_service(e)))
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Calling without `poll_ready` breaks the `Service` contract; decide
        // admission here rather than panic.
        let admission = match self.admission.take() {
            Some(a) => a,
            None => self.shared.admit(),
        };
        match admission {
            Admission::Refused { in_flight, limit } => {
                ResponseFuture::rejected(self.shared.refusal(in_flight, limit))
            }
            Admission::Admitted(permit) => {
                self.shared.permitted();
                let started = Instant::now();
                let future = self.inner.call(req);
                ResponseFuture::called(future, permit, started, self.classify.clone())
            }
        }
    }
}
