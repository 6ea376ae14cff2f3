use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use palisade_core::{BoxError, Classify, Error, Outcome, Rejection, RejectionKind, rejection_of};
use pin_project::pin_project;
use tokio::time::Instant;

use super::shared::Permit;

/// The response future of [`AdaptiveLimit`](super::AdaptiveLimit): the inner call,
/// holding its permit until it completes, or a rejection.
///
/// When the call completes, its latency and classified outcome feed the limit
/// algorithm and the permit is given back. Dropped before completing, it gives the
/// permit back without a sample.
#[pin_project]
pub struct ResponseFuture<F, C> {
    #[pin]
    kind: Kind<F, C>,
}

#[pin_project(project = KindProj)]
enum Kind<F, C> {
    Called {
        #[pin]
        future: F,
        permit: Option<Permit>,
        started: Instant,
        classify: C,
    },
    Rejected {
        rejection: Option<Rejection>,
    },
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(future: F, permit: Permit, started: Instant, classify: C) -> Self {
        Self {
            kind: Kind::Called {
                future,
                permit: Some(permit),
                started,
                classify,
            },
        }
    }

    pub(crate) fn rejected(rejection: Rejection) -> Self {
        Self {
            kind: Kind::Rejected {
                rejection: Some(rejection),
            },
        }
    }
}

/// Whether a finished call is a drop (`Some(true)`), a good sample (`Some(false)`)
/// or no sample at all (`None`, an ignored outcome).
fn judge<T, E: 'static, C: Classify<T, E>>(classify: &C, result: Result<&T, &E>) -> Option<bool> {
    if let Err(e) = result
        && rejection_of(e).is_some_and(|r| r.kind() == RejectionKind::Timeout)
    {
        // A timeout is overload whatever the classifier thinks of it.
        return Some(true);
    }
    match classify.classify(result) {
        Outcome::Success => Some(false),
        Outcome::Failure(_) => Some(true),
        Outcome::Ignored => None,
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
    E: Into<BoxError> + 'static,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                permit,
                started,
                classify,
            } => {
                let result = ready!(future.poll(cx));
                if let Some(permit) = permit.take() {
                    match judge(classify, result.as_ref()) {
                        Some(dropped) => permit.complete(started.elapsed(), dropped),
                        None => drop(permit),
                    }
                }
                Poll::Ready(result.map_err(Error::from_service))
            }
            KindProj::Rejected { rejection } => match rejection.take() {
                Some(r) => Poll::Ready(Err(Error::Rejected(r))),
                None => Poll::Pending,
            },
        }
    }
}
