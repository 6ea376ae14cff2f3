use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_core::lanes::Lane;
use palisade_core::timer::LazyTimer;
use palisade_core::{BoxError, Error, Rejection, RejectionKind};
use pin_project::pin_project;
use tokio::time::Instant;

use crate::layer::Shared;
use crate::metrics::CallOutcome;

/// Which limit the timer of a call stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// The layer's own timeout.
    Timeout,
    /// The request's deadline (earlier than, or at the same instant as, the timeout).
    Deadline,
}

/// The response future of [`Timeout`](crate::Timeout): the inner call raced against
/// one timer, or a refusal.
///
/// The timer is held inside the future (no allocation), and made only when the
/// inner call first returns pending: a call answered at once (a cache hit, a
/// refusal from a layer below) never touches the runtime's timer. When it fires
/// first, the inner future is dropped at once — before this future returns its rejection —
/// so whatever the inner call holds (a connection, a permit) is released.
#[pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    state: State<F>,
}

#[pin_project(project = StateProj)]
enum State<F> {
    Running {
        #[pin]
        future: F,
        #[pin]
        timer: LazyTimer,
        expiry: Expiry,
        shared: Arc<Lane<Shared>>,
    },
    Refused {
        rejection: Option<Rejection>,
    },
    /// Timed out: the inner future has been dropped.
    Expired,
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F> ResponseFuture<F> {
    #[inline(always)]
    /// `call` runs last, which lets the compiler write its future in place.
    pub(crate) fn running(
        until: Instant,
        expiry: Expiry,
        shared: Arc<Lane<Shared>>,
        call: impl FnOnce() -> F,
    ) -> Self {
        Self {
            state: State::Running {
                timer: LazyTimer::due(until),
                expiry,
                shared,
                future: call(),
            },
        }
    }

    pub(crate) fn refused(rejection: Rejection) -> Self {
        Self {
            state: State::Refused {
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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        let rejection = match state.as_mut().project() {
            StateProj::Running {
                future,
                timer,
                expiry,
                shared,
            } => {
                // The response wins a tie with the timer.
                if let Poll::Ready(result) = future.poll(cx) {
                    shared.metrics.call(CallOutcome::Completed);
                    return Poll::Ready(result.map_err(Error::from_service));
                }
                if timer.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let (kind, outcome) = match expiry {
                    Expiry::Timeout => (RejectionKind::Timeout, CallOutcome::TimedOut),
                    Expiry::Deadline => (
                        RejectionKind::DeadlineExceeded,
                        CallOutcome::DeadlineExceeded,
                    ),
                };
                shared.metrics.call(outcome);
                tracing::debug!(downstream = %shared.name, reason = kind.as_str(), "call cut off");
                shared.rejection(kind)
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
