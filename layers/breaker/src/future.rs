use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use palisade_core::{BoxError, Classify, Error, Rejection, Verdict};
use pin_project::{pin_project, pinned_drop};
use tokio::time::Instant;

use crate::lanes::Lane;
use crate::machine::Ticket;

/// The response future of [`CircuitBreaker`](crate::CircuitBreaker): the inner call,
/// judged and recorded when it completes, or a rejection.
///
/// A probe call dropped before it completes gives its half-open slot back.
#[pin_project(PinnedDrop)]
pub struct ResponseFuture<F, C> {
    #[pin]
    kind: Kind<F, C>,
}

#[pin_project(project = KindProj)]
enum Kind<F, C> {
    Called {
        #[pin]
        future: F,
        shared: Arc<Lane>,
        classify: C,
        ticket: Option<Ticket>,
        started: Option<Instant>,
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
    #[inline(always)]
    /// `call` runs last, which lets the compiler write its future in place.
    pub(crate) fn called(
        shared: Arc<Lane>,
        classify: C,
        ticket: Ticket,
        started: Option<Instant>,
        call: impl FnOnce() -> F,
    ) -> Self {
        Self {
            kind: Kind::Called {
                shared,
                classify,
                ticket: Some(ticket),
                started,
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
                shared,
                classify,
                ticket,
                started,
            } => {
                let result = ready!(future.poll(cx));
                if let Some(ticket) = ticket.take() {
                    let outcome = classify.classify(result.as_ref());
                    // The second clock read happens only for calls whose start was
                    // read, i.e. when slow-call detection is on.
                    let verdict = match started {
                        Some(start) => match shared.machine.slow_call_nanos() {
                            Some(threshold) => Verdict::judge(
                                outcome,
                                start.elapsed(),
                                std::time::Duration::from_nanos(threshold),
                            ),
                            None => Verdict::unmeasured(outcome),
                        },
                        None => Verdict::unmeasured(outcome),
                    };
                    shared.complete(ticket, verdict);
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

#[pinned_drop]
impl<F, C> PinnedDrop for ResponseFuture<F, C> {
    fn drop(self: Pin<&mut Self>) {
        if let KindProj::Called { shared, ticket, .. } = self.project().kind.project()
            && let Some(Ticket::Probe { generation }) = ticket.take()
        {
            shared.release_probe(generation);
        }
    }
}
