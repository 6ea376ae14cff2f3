use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::lanes::Lanes;
use palisade_core::{BoxError, Deadline, Error};
use pin_project::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::future::ResponseFuture;
use super::handle::BulkheadHandle;
use super::metrics::RejectReason;
use super::shared::{Admitted, Permit, QueueSlot, Shared};

/// A service whose concurrent calls are capped by a bulkhead; built by
/// [`BulkheadLayer`](super::BulkheadLayer).
///
/// Every service a layer makes, and every clone of them, shares the layer's
/// permits. A permit is taken in `poll_ready` and held by this service until
/// `call`, then by the response future until it completes or is dropped. A clone
/// starts without a permit; a service dropped while holding an unused permit
/// gives it back.
///
/// When no permit is free, `poll_ready` waits in the queue (pending) for at most
/// `max_wait`, or until the request's [`Deadline`] if that falls sooner. When the
/// queue is full, or the wait runs out, `poll_ready` is ready at once without
/// polling the inner service and `call` fails with a
/// [`BulkheadFull`](palisade_core::RejectionKind::BulkheadFull) rejection
/// ([`DeadlineExceeded`](palisade_core::RejectionKind::DeadlineExceeded) when the
/// deadline ended the wait), so readiness never hangs.
///
/// A waiting service holds its place in the queue until its wait ends or it is
/// dropped: drop a service whose readiness you stop waiting for (as
/// `ServiceExt::oneshot` and `ready_oneshot` do when their future is dropped).
pub struct Bulkhead<S> {
    inner: S,
    shared: Lanes<Shared>,
    /// The permit `poll_ready` took for the next call. Apart from `pending` so
    /// that the fast path reads and writes one word.
    permit: Option<Permit>,
    /// Where admission stands while no permit is held.
    pending: Pending,
    /// Whether the permit or refusal held came after a wait in the queue (its
    /// length is then in `Wait::waited`).
    waited: bool,
    /// The queue wait's timer and wake-up registration. Boxed, as they must stay
    /// pinned while this service moves; taken from the bulkhead's spares on this
    /// service's first wait, kept for its later waits, and given back to the
    /// spares when it is dropped: waiting allocates only while more services
    /// wait at once than ever before.
    wait: Option<Pin<Box<Wait>>>,
}

enum Pending {
    /// Not being made ready (or holding a permit).
    None,
    /// In the queue; the wait's details are in `Bulkhead::wait`.
    Waiting(QueueSlot),
    /// The next call is refused.
    Refused(RejectReason),
}

/// The state of a wait in the queue, kept pinned in a box.
#[pin_project]
pub(crate) struct Wait {
    /// Registered with the bulkhead's `Notify` while waiting; `None` otherwise, so
    /// no notification is caught by a service that no longer waits.
    #[pin]
    notified: Option<OwnedNotified>,
    /// Fires at `max_wait` or the deadline; `None` between waits.
    #[pin]
    sleep: Option<Sleep>,
    /// When the current (or last) wait started.
    started: Instant,
    /// Why the current wait ends when its timer fires.
    expiry: RejectReason,
    /// How long the last wait lasted.
    waited: Duration,
}

impl Wait {
    /// A wait with nothing armed.
    pub(crate) fn idle() -> Self {
        Self {
            notified: None,
            sleep: None,
            started: Instant::now(),
            expiry: RejectReason::MaxWait,
            waited: Duration::ZERO,
        }
    }
}

/// How a wait in the queue ended.
enum WaitEnd {
    Permit(Permit),
    Expired(RejectReason),
}

impl<S: std::fmt::Debug> std::fmt::Debug for Bulkhead<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field(
                "state",
                &match (&self.permit, &self.pending) {
                    (Some(_), _) => "held",
                    (None, Pending::None) => "idle",
                    (None, Pending::Waiting(_)) => "waiting",
                    (None, Pending::Refused(_)) => "refused",
                },
            )
            .finish_non_exhaustive()
    }
}

impl<S: Clone> Clone for Bulkhead<S> {
    fn clone(&self) -> Self {
        // A clone has not been made ready: it holds no permit and no queue place.
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            permit: None,
            pending: Pending::None,
            waited: false,
            wait: None,
        }
    }
}

/// `at + d`, or a year past `at` if that overflows.
fn instant_after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(86_400 * 365))
}

impl<S> Bulkhead<S> {
    pub(crate) fn new(inner: S, shared: Lanes<Shared>) -> Self {
        Self {
            inner,
            shared,
            permit: None,
            pending: Pending::None,
            waited: false,
            wait: None,
        }
    }

    /// A handle to this service's bulkhead.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle::new(Arc::clone(self.shared.shared()))
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Admission: a permit, a refusal, or a place in the queue (with its timer
    /// armed).
    #[inline]
    fn start(&mut self) {
        self.waited = false;
        match Shared::admit(&self.shared, self.shared.max_queue) {
            Admitted::Permit(permit) => self.permit = Some(permit),
            Admitted::Full => self.pending = Pending::Refused(RejectReason::QueueFull),
            Admitted::Queued(slot) => self.pending = self.enqueue(slot),
        }
    }

    /// Arms the wait of a call that joined the queue (or refuses it at once if
    /// its deadline has passed).
    #[cold]
    fn enqueue(&mut self, slot: QueueSlot) -> Pending {
        let now = Instant::now();
        let mut until = instant_after(now, self.shared.max_wait);
        let mut expiry = RejectReason::MaxWait;
        if let Some(deadline) = Deadline::current()
            && deadline.instant() <= until
        {
            if deadline.instant() <= now {
                // Nothing to wait for: the slot is left as it drops.
                return Pending::Refused(RejectReason::Deadline);
            }
            until = deadline.instant();
            expiry = RejectReason::Deadline;
        }
        let sleep = tokio::time::sleep_until(until);
        let wait = match &mut self.wait {
            Some(wait) => wait,
            none => none.insert(self.shared.spare_wait()),
        };
        let mut wait = wait.as_mut().project();
        wait.sleep.set(Some(sleep));
        *wait.started = now;
        *wait.expiry = expiry;
        Pending::Waiting(slot)
    }

    /// Waits in the queue: `Ready` once the wait ended, with `self.permit` or
    /// `self.pending` holding the permit or the refusal.
    ///
    /// The order matters: take any notification first, then try for a permit,
    /// registering for a wake-up before the first failed try is acted on, and
    /// only then look at the timer. So a notification is never taken without a
    /// try following it, and a permit freed at the very moment the wait runs out
    /// is still taken.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Pending::Waiting(slot) = &mut self.pending else {
            return Poll::Ready(());
        };
        let Some(wait) = self.wait.as_mut() else {
            // Unreachable: `enqueue` arms the wait before entering `Waiting`.
            self.pending = Pending::Refused(RejectReason::MaxWait);
            return Poll::Ready(());
        };
        let mut wait = wait.as_mut().project();
        let end = loop {
            let notified = wait
                .notified
                .as_mut()
                .as_pin_mut()
                .is_some_and(|n| n.poll(cx).is_ready());
            if notified {
                wait.notified.set(None);
            }
            if let Some(permit) = slot.try_acquire() {
                break WaitEnd::Permit(permit);
            }
            if wait.notified.is_none() {
                // Register, then try once more before sleeping: a permit released
                // in between is either seen by that try or notified to us.
                wait.notified
                    .set(Some(Arc::clone(&self.shared.notify).notified_owned()));
                if let Some(n) = wait.notified.as_mut().as_pin_mut() {
                    n.enable();
                }
                continue;
            }
            let expired = wait
                .sleep
                .as_mut()
                .as_pin_mut()
                .is_none_or(|s| s.poll(cx).is_ready());
            if expired {
                break WaitEnd::Expired(*wait.expiry);
            }
            return Poll::Pending;
        };
        // Stop catching notifications (one caught and not taken goes on to the
        // next waiter) and disarm the timer.
        wait.notified.set(None);
        wait.sleep.set(None);
        let waited = Instant::now().saturating_duration_since(*wait.started);
        *wait.waited = waited;
        self.shared.waited(waited);
        self.waited = true;
        match end {
            WaitEnd::Permit(permit) => {
                self.pending = Pending::None;
                self.permit = Some(permit);
            }
            // Dropping `Waiting` leaves the queue.
            WaitEnd::Expired(reason) => self.pending = Pending::Refused(reason),
        }
        Poll::Ready(())
    }

    /// How long the call about to be made waited.
    fn take_waited(&mut self) -> Duration {
        match (std::mem::take(&mut self.waited), &self.wait) {
            (true, Some(wait)) => wait.waited,
            _ => Duration::ZERO,
        }
    }

    /// Leaves a wait that is being given up (a `call` made without readiness).
    fn abandon_wait(&mut self) {
        if let Some(wait) = self.wait.as_mut() {
            let mut wait = wait.as_mut().project();
            wait.notified.set(None);
            wait.sleep.set(None);
        }
    }
}

impl<S> Drop for Bulkhead<S> {
    fn drop(&mut self) {
        if self.wait.is_some() {
            // Disarm before giving the box back (a caught notification goes on
            // to the next waiter); a queue place still held is left as
            // `pending` drops.
            self.abandon_wait();
            if let Some(wait) = self.wait.take() {
                self.shared.keep_spare_wait(wait);
            }
        }
    }
}

impl<S, Req> Service<Req> for Bulkhead<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while self.permit.is_none() {
            match self.pending {
                Pending::None => self.start(),
                Pending::Waiting(_) => {
                    if self.poll_wait(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                // Refused calls never reach the inner service, so its readiness
                // is not taken for them.
                Pending::Refused(_) => return Poll::Ready(Ok(())),
            }
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                // Give the permit back: no call follows a failed readiness.
                self.permit = None;
                Poll::Ready(Err(Error::from_service(e)))
            }
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(permit) = self.permit.take() {
            let waited = self.take_waited();
            self.shared.permitted(waited);
            return ResponseFuture::called(permit, || self.inner.call(req));
        }
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::Refused(reason) => {
                let waited = self.take_waited();
                ResponseFuture::rejected(self.shared.refuse(reason, waited))
            }
            unready @ (Pending::None | Pending::Waiting(_)) => {
                // Calling without `poll_ready` breaks the `Service` contract;
                // decide here, without waiting, rather than panic.
                drop(unready);
                self.abandon_wait();
                match Shared::admit(&self.shared, 0) {
                    Admitted::Permit(permit) => {
                        self.shared.permitted(Duration::ZERO);
                        ResponseFuture::called(permit, || self.inner.call(req))
                    }
                    Admitted::Queued(_) | Admitted::Full => ResponseFuture::rejected(
                        self.shared.refuse(RejectReason::QueueFull, Duration::ZERO),
                    ),
                }
            }
        }
    }
}
