//! Single-flight: at most one call per key in flight, its result handed to everyone
//! who asked for that key meanwhile.
//!
//! The call runs in its own task, so no waiter — not even the one that started it —
//! owns it: a waiter that goes away cancels nothing while others still wait. The map
//! of calls in flight is bounded; a key beyond the bound gets a call of its own,
//! unregistered. The map lock is taken to start, join, finish or abandon a call,
//! never while a response is being produced, and never on a cache hit.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use palisade_core::{BoxError, Error, Rejection};
use pin_project::{pin_project, pinned_drop};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::metrics::FlightMetrics;

/// An error of a shared call, handed to every caller that waited for it.
///
/// Each waiter gets an [`Error::Inner`](palisade_core::Error::Inner) holding a
/// `SharedError`; its [`source`](std::error::Error::source) is the dependency's
/// error, so callers can still look for their error type along the chain.
#[derive(Clone)]
pub struct SharedError(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl SharedError {
    fn new(err: BoxError) -> Self {
        Self(Arc::from(err))
    }

    /// The dependency's error.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedError").field(&self.0).finish()
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// A failure every waiter receives: a rejection stays a rejection.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    Rejected(Rejection),
    Inner(SharedError),
}

impl Failure {
    pub(crate) fn from_error(err: Error) -> Self {
        match err.into_inner() {
            Ok(inner) => Failure::Inner(SharedError::new(inner)),
            Err(rejection) => Failure::Rejected(rejection),
        }
    }

    pub(crate) fn from_boxed(err: BoxError) -> Self {
        Failure::from_error(Error::from_service(err))
    }

    fn lost() -> Self {
        Failure::Inner(SharedError::new(
            "the shared call ended without a result (its task panicked or was cancelled)".into(),
        ))
    }

    pub(crate) fn to_error(&self) -> Error {
        match self {
            Failure::Rejected(r) => Error::Rejected(r.clone()),
            Failure::Inner(e) => Error::Inner(Box::new(e.clone())),
        }
    }
}

/// What a shared call produced for everyone.
#[derive(Debug, Clone)]
pub(crate) enum Delivery<E> {
    /// A response from the dependency.
    Fetched(E),
    /// A stale entry (fetched this long ago), because the dependency failed.
    Stale(E, Duration),
    /// The call failed and nothing could stand in for it.
    Failed(Failure),
    /// The result could not be shared: make your own call.
    CallThrough,
}

/// What a waiter receives.
pub(crate) enum Landing<E> {
    Shared(Delivery<E>),
    /// A response that cannot be shared, for one waiter only (the layer's output
    /// type, boxed: this path is rare).
    Own(Box<dyn Any + Send>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The calls in flight of one layer.
pub(crate) struct Flights<K, E> {
    map: Mutex<HashMap<K, Arc<Flight<K, E>>>>,
    max: usize,
    /// Cancel a call when every waiter has gone (coalescing); a cache lets its
    /// refreshes finish, because they fill the cache.
    cancel_abandoned: bool,
    pub(crate) metrics: FlightMetrics,
}

pub(crate) struct Flight<K, E> {
    key: K,
    registered: bool,
    state: Mutex<FlightState<E>>,
}

struct FlightState<E> {
    waiters: Vec<oneshot::Sender<Landing<E>>>,
    live: usize,
    finished: bool,
    abort: Option<AbortHandle>,
}

/// The result of asking for a key.
pub(crate) enum Joined<K: Hash + Eq + Clone, E: Clone> {
    /// No call in flight: start one with the launch, wait with the waiter.
    Lead(Launch<K, E>, Waiter<K, E>),
    /// A call is in flight: wait for it.
    Follow(Waiter<K, E>),
    /// A call is in flight and the caller chose not to wait.
    Busy,
}

impl<K: Hash + Eq + Clone, E: Clone> Flights<K, E> {
    pub(crate) fn new(max: usize, cancel_abandoned: bool, metrics: FlightMetrics) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max,
            cancel_abandoned,
            metrics,
        }
    }

    /// Keys with a call in flight.
    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Starts or joins the call for `key`; when one is in flight and `follow` is
    /// false, returns [`Joined::Busy`].
    pub(crate) fn join(self: &Arc<Self>, key: K, follow: bool) -> Joined<K, E> {
        let mut map = lock(&self.map);
        if let Some(flight) = map.get(&key) {
            if !follow {
                return Joined::Busy;
            }
            let rx = flight.add_waiter();
            let flight = Arc::clone(flight);
            drop(map);
            self.metrics.coalesced.increment(1);
            return Joined::Follow(self.waiter(rx, flight));
        }
        let registered = map.len() < self.max;
        let flight = Arc::new(Flight {
            key,
            registered,
            state: Mutex::new(FlightState {
                waiters: Vec::with_capacity(1),
                live: 0,
                finished: false,
                abort: None,
            }),
        });
        let rx = flight.add_waiter();
        if registered {
            map.insert(flight.key.clone(), Arc::clone(&flight));
        }
        drop(map);
        self.metrics.in_flight.increment(1.0);
        let launch = Launch {
            flights: Arc::clone(self),
            flight: Arc::clone(&flight),
        };
        Joined::Lead(launch, self.waiter(rx, flight))
    }

    fn waiter(
        self: &Arc<Self>,
        rx: oneshot::Receiver<Landing<E>>,
        flight: Arc<Flight<K, E>>,
    ) -> Waiter<K, E> {
        Waiter {
            rx,
            leave: self.cancel_abandoned.then(|| (Arc::clone(self), flight)),
            done: false,
        }
    }

    /// Marks `flight` finished and forgets it: returns its waiters, or `None` when it
    /// was already finished.
    fn finish(&self, flight: &Arc<Flight<K, E>>) -> Option<Vec<oneshot::Sender<Landing<E>>>> {
        let mut map = lock(&self.map);
        let mut state = lock(&flight.state);
        if state.finished {
            return None;
        }
        state.finished = true;
        if flight.registered && map.get(&flight.key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(&flight.key);
        }
        drop(map);
        self.metrics.in_flight.decrement(1.0);
        Some(std::mem::take(&mut state.waiters))
    }

    /// A waiter went away before the result came: when it was the last, the call is
    /// cancelled.
    fn leave(&self, flight: &Arc<Flight<K, E>>) {
        {
            let mut state = lock(&flight.state);
            state.live = state.live.saturating_sub(1);
            if state.live > 0 || state.finished {
                return;
            }
        }
        // Check again under the map lock: a waiter may have joined in between.
        let mut map = lock(&self.map);
        let mut state = lock(&flight.state);
        if state.live > 0 || state.finished {
            return;
        }
        state.finished = true;
        if flight.registered && map.get(&flight.key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(&flight.key);
        }
        let abort = state.abort.take();
        drop(state);
        drop(map);
        self.metrics.in_flight.decrement(1.0);
        // Nobody waits any more: stop the call (its launch, dropped with the task,
        // finds the flight finished and does nothing).
        if let Some(abort) = abort {
            abort.abort();
        }
    }
}

impl<K, E> Flight<K, E> {
    fn add_waiter(&self) -> oneshot::Receiver<Landing<E>> {
        let (tx, rx) = oneshot::channel();
        let mut state = lock(&self.state);
        state.waiters.push(tx);
        state.live += 1;
        rx
    }
}

/// The right and duty to finish a call in flight: [`Launch::land`] hands its result
/// to every waiter. Dropped without landing (the task panicked or was cancelled),
/// it forgets the call and the waiters learn that it ended without a result.
pub(crate) struct Launch<K: Hash + Eq + Clone, E: Clone> {
    flights: Arc<Flights<K, E>>,
    flight: Arc<Flight<K, E>>,
}

impl<K: Hash + Eq + Clone, E: Clone> Launch<K, E> {
    /// Where to put the handle of the task that runs the call, so the last
    /// waiter's departure can cancel it.
    pub(crate) fn abort_slot(&self) -> AbortSlot<K, E> {
        AbortSlot(Arc::clone(&self.flight))
    }

    /// Hands the result to the waiters.
    pub(crate) fn land(self, landing: Landing<E>) {
        let Some(waiters) = self.flights.finish(&self.flight) else {
            return;
        };
        match landing {
            Landing::Shared(delivery) => {
                for tx in waiters {
                    let _ = tx.send(Landing::Shared(delivery.clone()));
                }
            }
            Landing::Own(mut own) => {
                let mut waiters = waiters.into_iter();
                // The first waiter still there gets the response; the others call on
                // their own.
                for tx in waiters.by_ref() {
                    match tx.send(Landing::Own(own)) {
                        Ok(()) => break,
                        Err(Landing::Own(back)) => own = back,
                        Err(Landing::Shared(_)) => return,
                    }
                }
                for tx in waiters {
                    let _ = tx.send(Landing::Shared(Delivery::CallThrough));
                }
            }
        }
    }
}

impl<K: Hash + Eq + Clone, E: Clone> Drop for Launch<K, E> {
    fn drop(&mut self) {
        // Landed already, or dropped unlanded: either way finishing is idempotent,
        // and dropping the senders tells any waiter the result is lost.
        drop(self.flights.finish(&self.flight));
    }
}

/// Holds the task handle of a call in flight.
pub(crate) struct AbortSlot<K, E>(Arc<Flight<K, E>>);

impl<K, E> AbortSlot<K, E> {
    /// Lets the last waiter's departure cancel the task; cancels at once if every
    /// waiter has already gone.
    pub(crate) fn set(self, abort: AbortHandle) {
        let mut state = lock(&self.0.state);
        if state.finished && state.live == 0 {
            drop(state);
            abort.abort();
        } else {
            state.abort = Some(abort);
        }
    }
}

/// The calls of a layer and the one a waiter belongs to.
type Membership<K, E> = (Arc<Flights<K, E>>, Arc<Flight<K, E>>);

/// Waits for the result of a call in flight. Dropping it before the result comes
/// cancels the call only when it was the last waiter of a coalescing layer.
#[pin_project(PinnedDrop)]
pub(crate) struct Waiter<K: Hash + Eq + Clone, E: Clone> {
    #[pin]
    rx: oneshot::Receiver<Landing<E>>,
    leave: Option<Membership<K, E>>,
    done: bool,
}

impl<K: Hash + Eq + Clone, E: Clone> Future for Waiter<K, E> {
    type Output = Landing<E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let landing = match ready!(this.rx.poll(cx)) {
            Ok(landing) => landing,
            Err(_) => Landing::Shared(Delivery::Failed(Failure::lost())),
        };
        *this.done = true;
        Poll::Ready(landing)
    }
}

#[pinned_drop]
impl<K: Hash + Eq + Clone, E: Clone> PinnedDrop for Waiter<K, E> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        if !*this.done
            && let Some((flights, flight)) = this.leave.take()
        {
            flights.leave(&flight);
        }
    }
}
