//! One optional stage of a downstream stack, as a concrete type.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use palisade_core::{BoxError, Error};
use pin_project::pin_project;
use tower_service::Service;

/// A stage of a [`Downstream`](super::Downstream) stack that is either configured
/// (`On`, the layer's service around the inner one) or left out (`Off`, the inner
/// service itself). Both arms answer with [`palisade_core::Error`], so a stack keeps one
/// concrete type whichever policies it has — no boxing per call.
#[derive(Debug, Clone)]
pub enum Stage<A, B> {
    /// The policy is configured: its service wraps the inner one.
    On(A),
    /// The policy is left out: calls go straight to the inner service.
    Off(B),
}

impl<A, B, Req> Service<Req> for Stage<A, B>
where
    A: Service<Req, Error = Error>,
    B: Service<Req, Response = A::Response>,
    B::Error: Into<BoxError> + 'static,
{
    type Response = A::Response;
    type Error = Error;
    type Future = StageFuture<A::Future, B::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self {
            Stage::On(a) => a.poll_ready(cx),
            Stage::Off(b) => b.poll_ready(cx).map_err(Error::from_service),
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self {
            Stage::On(a) => StageFuture::On(a.call(req)),
            Stage::Off(b) => StageFuture::Off(b.call(req)),
        }
    }
}

/// The response future of a [`Stage`].
#[pin_project(project = StageProj)]
#[derive(Debug)]
pub enum StageFuture<A, B> {
    /// The configured policy's future.
    On(#[pin] A),
    /// The inner service's future.
    Off(#[pin] B),
}

impl<A, B, T, E> Future for StageFuture<A, B>
where
    A: Future<Output = Result<T, Error>>,
    B: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
{
    type Output = Result<T, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            StageProj::On(a) => a.poll(cx),
            StageProj::Off(b) => b.poll(cx).map_err(Error::from_service),
        }
    }
}
