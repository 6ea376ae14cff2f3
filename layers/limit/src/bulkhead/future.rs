use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use palisade_core::{BoxError, Error, Rejection};
use pin_project::pin_project;

use super::shared::Permit;

/// The response future of [`Bulkhead`](super::Bulkhead): the inner call, holding
/// its permit until it completes or is dropped; or a rejection.
#[pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    kind: Kind<F>,
}

#[pin_project(project = KindProj)]
enum Kind<F> {
    Called {
        #[pin]
        future: F,
        /// Given back (dropped) as soon as the inner future completes.
        permit: Option<Permit>,
    },
    Rejected {
        rejection: Option<Rejection>,
    },
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F> ResponseFuture<F> {
    #[inline(always)]
    /// `call` runs last, which lets the compiler write its future in place.
    pub(crate) fn called(permit: Permit, call: impl FnOnce() -> F) -> Self {
        Self {
            kind: Kind::Called {
                permit: Some(permit),
                future: call(),
            },
        }
    }

    #[inline(always)]
    pub(crate) fn rejected(rejection: Rejection) -> Self {
        Self {
            kind: Kind::Rejected {
                rejection: Some(rejection),
            },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError> + 'static,
{
    type Output = Result<T, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, permit } => {
                let result = ready!(future.poll(cx));
                drop(permit.take());
                Poll::Ready(result.map_err(Error::from_service))
            }
            KindProj::Rejected { rejection } => match rejection.take() {
                Some(r) => Poll::Ready(Err(Error::Rejected(r))),
                None => Poll::Pending,
            },
        }
    }
}
