use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use palisade_core::{BoxError, Classify, Error, Outcome};
use pin_project::pin_project;
use tower::util::Oneshot;
use tower_service::Service;

use super::{FallbackCause, MakeFallback, MarkFallback, Policy};

/// The response future of [`Fallback`](crate::Fallback): the inner call, then the
/// decision whether to answer with the fallback instead.
#[pin_project]
pub struct FallbackFuture<S: Service<Req>, Req, F, C, M> {
    #[pin]
    inner: Oneshot<S, Req>,
    policy: Arc<Policy<F, C, M>>,
}

impl<S: Service<Req>, Req, F, C, M> FallbackFuture<S, Req, F, C, M> {
    pub(crate) fn new(inner: Oneshot<S, Req>, policy: Arc<Policy<F, C, M>>) -> Self {
        Self { inner, policy }
    }
}

impl<S: Service<Req>, Req, F, C, M> std::fmt::Debug for FallbackFuture<S, Req, F, C, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackFuture").finish_non_exhaustive()
    }
}

impl<S, Req, F, C, M> Future for FallbackFuture<S, Req, F, C, M>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    F: MakeFallback<S::Response>,
    C: Classify<S::Response, Error>,
    M: MarkFallback<S::Response>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx)).map_err(Error::from_service);
        let policy = &**this.policy;
        let response = match &result {
            Err(Error::Rejected(rejection)) => {
                if !policy.on_rejections.contains(rejection.kind()) {
                    return Poll::Ready(result);
                }
                policy.fallback.make(&FallbackCause::Rejected(rejection))
            }
            _ => {
                let reason = match policy.classify.classify(result.as_ref()) {
                    Outcome::Failure(reason) if policy.on_failure => reason,
                    _ => return Poll::Ready(result),
                };
                let cause = FallbackCause::Failed {
                    reason,
                    error: result.as_ref().err(),
                };
                policy.fallback.make(&cause)
            }
        };
        let reason = match &result {
            Err(Error::Rejected(r)) => crate::FallbackReason::of_rejection(r.kind()),
            _ => crate::FallbackReason::Failure,
        };
        let mut response = response;
        policy.mark.mark(&mut response, reason);
        policy.metrics.fallback(reason);
        tracing::debug!(downstream = %policy.name, %reason, "served a fallback response");
        Poll::Ready(Ok(response))
    }
}
