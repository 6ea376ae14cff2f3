use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::lanes::Lanes;
use palisade_core::{BoxError, Deadline, Error, RejectionKind};
use tokio::time::Instant;
use tower_service::Service;

use crate::future::{Expiry, ResponseFuture};
use crate::layer::Shared;
use crate::metrics::CallOutcome;

/// A service whose calls are bounded by a timeout and by the request's
/// [`Deadline`]; built by [`TimeoutLayer`](crate::TimeoutLayer).
///
/// `call` reads [`Deadline::current`] once and arms one timer for the earlier of
/// now + timeout and the deadline. When it fires, the inner future is dropped and
/// the call fails with a [`Timeout`](RejectionKind::Timeout) rejection, or
/// [`DeadlineExceeded`](RejectionKind::DeadlineExceeded) when the deadline was the
/// binding limit (also when both fall at the same instant). The inner service's own
/// errors pass through as [`Error::Inner`] (flattened by [`Error::from_service`]).
///
/// A request whose deadline has already passed is refused with `DeadlineExceeded`
/// without calling the inner service. `poll_ready` decides this first: when the
/// current deadline has passed it is ready at once without polling the inner
/// service, so no inner capacity is reserved for a call that will not be made. A
/// deadline that passes between `poll_ready` and `call` is refused in `call`; the
/// inner service's readiness then stays reserved for this service's next call, as
/// tower allows.
///
/// The timeout bounds the response future, not the wait for readiness, as tower's
/// own `Timeout` does: put a limit with a queue timeout (or a load shedder) under it
/// if readiness can wait long.
pub struct Timeout<S> {
    inner: S,
    shared: Lanes<Shared>,
    /// What `poll_ready` learned of the current deadline, for `call`.
    readied: Readied,
}

/// The deadline as `poll_ready` found it, so `call` need not look again.
#[derive(Debug, Clone, Copy, Default)]
enum Readied {
    /// `poll_ready` has not run since the last call.
    #[default]
    Unknown,
    /// The current deadline, not yet passed.
    Deadline(Deadline),
    /// The current deadline had already passed.
    Expired,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Timeout<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeout")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("timeout", &self.shared.armed())
            .finish_non_exhaustive()
    }
}

impl<S: Clone> Clone for Timeout<S> {
    fn clone(&self) -> Self {
        // A clone has not been made ready: it decides again in its own poll_ready.
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            readied: Readied::Unknown,
        }
    }
}

impl<S> Timeout<S> {
    #[cold]
    fn refuse<F>(&self) -> ResponseFuture<F> {
        self.shared.metrics.call(CallOutcome::DeadlineExceeded);
        tracing::debug!(
            downstream = %self.shared.name,
            "deadline already passed; call refused without calling the service"
        );
        ResponseFuture::refused(self.shared.rejection(RejectionKind::DeadlineExceeded))
    }

    pub(crate) fn new(inner: S, shared: Lanes<Shared>) -> Self {
        Self {
            inner,
            shared,
            readied: Readied::Unknown,
        }
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.shared.armed()
    }

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

/// `at + d`, or a year past `at` if that overflows (tokio's timer saturates far
/// sooner anyway).
pub(crate) fn instant_after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(86_400 * 365))
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The deadline in scope now decides: a service made ready again (a balancer
        // readies its endpoints ahead, then again for the request it sends) follows
        // the request it is now made ready for. Without one in scope, what an
        // earlier poll saw stays; one may still be set around `call` (an inbound
        // layer scopes its inner service's `call`).
        if let Some(d) = Deadline::current() {
            self.readied = if d.is_expired() {
                Readied::Expired
            } else {
                Readied::Deadline(d)
            };
        }
        if let Readied::Expired = self.readied {
            // The call will be refused: take no readiness from the inner service.
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Error::from_service)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let deadline = match std::mem::take(&mut self.readied) {
            Readied::Expired => return self.refuse(),
            Readied::Deadline(deadline) => Some(deadline),
            Readied::Unknown => Deadline::current(),
        };
        let now = palisade_core::clock::now();
        let limit = now + self.shared.armed();
        let (until, expiry) = match deadline {
            Some(deadline) if deadline.instant() <= limit => (deadline.instant(), Expiry::Deadline),
            _ => (limit, Expiry::Timeout),
        };
        if expiry == Expiry::Deadline && until <= now {
            return self.refuse();
        }
        ResponseFuture::running(until, expiry, self.shared.pick(), || self.inner.call(req))
    }
}
