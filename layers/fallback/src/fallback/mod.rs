//! The fallback layer: a stand-in response when a call fails or is refused.

mod future;
mod layer;

use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_core::{AllErrorsFail, BoxError, Error, FailureReason, Name, Rejection};
use tower::util::Oneshot;
use tower_service::Service;

pub use future::FallbackFuture;
pub use layer::{FallbackBuilder, FallbackLayer};

use crate::config::KindSet;
use crate::metrics::{FallbackMetrics, FallbackReason};

/// Why a fallback response is being made: handed to the fallback function.
#[derive(Debug)]
pub enum FallbackCause<'a> {
    /// Palisade refused the call.
    Rejected(&'a Rejection),
    /// The call failed, as the classifier judged it: with the inner service's error,
    /// or with no error when a response was judged a failure (an HTTP 503).
    Failed {
        /// The classifier's reason.
        reason: FailureReason,
        /// The error, when the call returned one.
        error: Option<&'a Error>,
    },
}

impl FallbackCause<'_> {
    /// The metric label (and `x-palisade-fallback` header value) for this cause.
    pub fn reason(&self) -> FallbackReason {
        match self {
            FallbackCause::Rejected(r) => FallbackReason::of_rejection(r.kind()),
            FallbackCause::Failed { .. } => FallbackReason::Failure,
        }
    }
}

/// Makes the fallback response for a cause. Implemented for closures
/// `Fn(&FallbackCause<'_>) -> Res`, and by [`Value`] for a fixed response.
pub trait MakeFallback<Res> {
    /// The response to answer with instead.
    fn make(&self, cause: &FallbackCause<'_>) -> Res;
}

impl<F, Res> MakeFallback<Res> for F
where
    F: Fn(&FallbackCause<'_>) -> Res,
{
    fn make(&self, cause: &FallbackCause<'_>) -> Res {
        self(cause)
    }
}

/// A fixed fallback response, cloned for each use.
#[derive(Debug, Clone)]
pub struct Value<T>(pub T);

impl<T: Clone> MakeFallback<T> for Value<T> {
    fn make(&self, _cause: &FallbackCause<'_>) -> T {
        self.0.clone()
    }
}

/// Marks a fallback response so callers can tell it from a real one.
pub trait MarkFallback<Res> {
    /// Marks `response`, made because of `reason`.
    fn mark(&self, response: &mut Res, reason: FallbackReason);
}

/// Leaves fallback responses unmarked (a response type with no place for a mark;
/// the fallback function can mark its own responses).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMark;

impl<Res> MarkFallback<Res> for NoMark {
    fn mark(&self, _response: &mut Res, _reason: FallbackReason) {}
}

/// What every service of one fallback layer shares.
pub(crate) struct Policy<F, C, M> {
    pub(crate) name: Name,
    pub(crate) fallback: F,
    pub(crate) classify: C,
    pub(crate) mark: M,
    pub(crate) on_failure: bool,
    pub(crate) on_rejections: KindSet,
    pub(crate) metrics: FallbackMetrics,
}

impl<F, C, M> std::fmt::Debug for Policy<F, C, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("on_failure", &self.on_failure)
            .field("on_rejections", &self.on_rejections)
            .finish_non_exhaustive()
    }
}

/// Answers with a fallback response when the inner service's call fails (as the
/// classifier judges it) or Palisade refuses it (by kind); built by
/// [`FallbackLayer`].
///
/// `poll_ready` is always ready: each call waits for its own clone of the inner
/// service to be ready inside the response future, so a refusal or error there is
/// caught too, and a clone that was not called holds no capacity.
pub struct Fallback<S, F, C = AllErrorsFail, M = NoMark> {
    inner: S,
    policy: Arc<Policy<F, C, M>>,
}

impl<S: Clone, F, C, M> Clone for Fallback<S, F, C, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<S: std::fmt::Debug, F, C, M> std::fmt::Debug for Fallback<S, F, C, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<S, F, C, M> Fallback<S, F, C, M> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Req, F, C, M> Service<Req> for Fallback<S, F, C, M>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError> + 'static,
    F: MakeFallback<S::Response>,
    C: palisade_core::Classify<S::Response, Error>,
    M: MarkFallback<S::Response>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = FallbackFuture<S, Req, F, C, M>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        FallbackFuture::new(
            Oneshot::new(self.inner.clone(), req),
            Arc::clone(&self.policy),
        )
    }
}
