use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_core::{AllErrorsFail, BoxError, Classify, Error};
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::config::Mode;
use crate::future::ResponseFuture;
use crate::lanes::Lanes;
use crate::machine::Ticket;
use crate::shared::Shared;
use crate::{BreakerHandle, State};

/// A circuit breaker around a service; built by
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// All clones made from one layer share one breaker. Admission is decided in
/// `poll_ready` and held by this clone until `call` (a half-open probe slot is
/// reserved there and given back if the clone is dropped unused). In the default
/// fail-fast mode a refused call does not touch the inner service: `poll_ready`
/// returns ready at once and `call` fails with a
/// [`CircuitOpen`](palisade_core::RejectionKind::CircuitOpen) rejection carrying the
/// remaining open time. In gate mode `poll_ready` is pending while calls are
/// refused.
pub struct CircuitBreaker<S, C = AllErrorsFail> {
    inner: S,
    // Admission reads the state through `shared` directly; response futures take
    // their counted handle from `lanes`, so the count stays core-local.
    shared: Arc<Shared>,
    lanes: Lanes,
    classify: C,
    admission: Option<Admission>,
    gate: Option<GateWait>,
}

enum Admission {
    Admitted(Ticket),
    /// Counted and turned into a rejection only when `call` comes.
    Refused {
        state: State,
        retry_after_nanos: Option<u64>,
    },
}

/// What a gated `poll_ready` waits for: any transition or freed probe, or the end
/// of the open wait.
struct GateWait {
    notified: Pin<Box<OwnedNotified>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        // A clone starts without an admission: it has not been made ready.
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            lanes: self.lanes.clone(),
            classify: self.classify.clone(),
            admission: None,
            gate: None,
        }
    }
}

impl<S, C> Drop for CircuitBreaker<S, C> {
    fn drop(&mut self) {
        if let Some(Admission::Admitted(Ticket::Probe { generation })) = self.admission.take() {
            self.shared.release_probe(generation);
        }
    }
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(inner: S, lanes: Lanes, classify: C) -> Self {
        Self {
            inner,
            shared: Arc::clone(lanes.shared()),
            lanes,
            classify,
            admission: None,
            gate: None,
        }
    }

    /// A handle to this service's breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle::new(Arc::clone(&self.shared))
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn admit(&mut self) -> Admission {
        match self.shared.acquire() {
            Ticket::Refused {
                state,
                retry_after_nanos,
            } => Admission::Refused {
                state,
                retry_after_nanos,
            },
            ticket => Admission::Admitted(ticket),
        }
    }

    /// Gate mode: waits until the breaker admits a call. `Ready` once admitted.
    fn poll_gate(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(wait) = &mut self.gate {
                let notified = wait.notified.as_mut().poll(cx).is_ready();
                let slept = wait
                    .sleep
                    .as_mut()
                    .is_some_and(|s| s.as_mut().poll(cx).is_ready());
                if !(notified || slept) {
                    return Poll::Pending;
                }
                self.gate = None;
                if slept {
                    self.shared.tick();
                }
            }
            match self.shared.acquire() {
                Ticket::Refused { .. } => {}
                ticket => {
                    self.admission = Some(Admission::Admitted(ticket));
                    return Poll::Ready(());
                }
            }
            // Refused: register for a wake-up first, then look again, so a
            // transition between the look and the wait is not missed.
            let mut notified = Box::pin(Arc::clone(&self.shared.notify).notified_owned());
            notified.as_mut().enable();
            match self.shared.acquire() {
                Ticket::Refused {
                    state,
                    retry_after_nanos,
                } => {
                    let sleep = (state == State::Open)
                        .then_some(retry_after_nanos)
                        .flatten()
                        .map(|n| Box::pin(tokio::time::sleep(std::time::Duration::from_nanos(n))));
                    self.gate = Some(GateWait { notified, sleep });
                }
                ticket => {
                    self.admission = Some(Admission::Admitted(ticket));
                    return Poll::Ready(());
                }
            }
        }
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.admission.is_none() {
            match self.shared.mode {
                Mode::FailFast => self.admission = Some(self.admit()),
                Mode::Gate => {
                    if self.poll_gate(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
        if let Some(Admission::Refused { .. }) = self.admission {
            // Refused calls never reach the inner service, so its readiness is not
            // taken for them.
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                if let Some(Admission::Admitted(Ticket::Probe { generation })) =
                    self.admission.take()
                {
                    self.shared.release_probe(generation);
                }
                Poll::Ready(Err(Error::from_service(e)))
            }
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // Calling without `poll_ready` breaks the `Service` contract; decide
        // admission here rather than panic.
        let admission = match self.admission.take() {
            Some(a) => a,
            None => self.admit(),
        };
        match admission {
            Admission::Refused {
                state,
                retry_after_nanos,
            } => ResponseFuture::rejected(self.shared.refusal(state, retry_after_nanos)),
            Admission::Admitted(ticket) => {
                let started = self
                    .shared
                    .machine
                    .slow_call_nanos()
                    .map(|_| Instant::now());
                ResponseFuture::called(
                    self.lanes.pick(),
                    self.classify.clone(),
                    ticket,
                    started,
                    || self.inner.call(req),
                )
            }
        }
    }
}
