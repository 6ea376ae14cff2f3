//! Deadlines: the point in time by which a request must be answered, carried across
//! layers and hops.
//!
//! A server learns its caller's deadline from the request (Palisade's timeout
//! crate reads the `grpc-timeout` header and `x-palisade-deadline-ms`), and runs the
//! handler inside [`Deadline::scope`]. Every outbound call made while serving the
//! request — in the same task — sees it through [`Deadline::current`]: retries do not
//! back off past it, timeouts do not wait past it, and a call that cannot finish in
//! time is refused before it is sent.
//!
//! ```
//! use palisade_core::Deadline;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! assert_eq!(Deadline::current(), None);
//! let deadline = Deadline::after(Duration::from_millis(300));
//! deadline.scope(async {
//!     assert_eq!(Deadline::current(), Some(deadline));
//!     // A nested, later deadline cannot extend the outer one.
//!     Deadline::after(Duration::from_secs(10)).scope(async {
//!         assert_eq!(Deadline::current(), Some(deadline));
//!     }).await;
//!     tokio::time::sleep(Duration::from_millis(100)).await;
//!     assert_eq!(deadline.remaining(), Duration::from_millis(200));
//! }).await;
//! # }
//! ```

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project::pin_project;
use tokio::time::Instant;

tokio::task_local! {
    static CURRENT: Deadline;
}

thread_local! {
    /// How many deadline scopes this thread is inside right now. Most calls run
    /// outside any scope; this lets [`Deadline::current`] answer them with one
    /// thread-local read instead of a task-local lookup.
    static ACTIVE: Cell<u32> = const { Cell::new(0) };
}

/// Marks this thread as inside a scope until dropped (also on unwind).
struct Active;

impl Active {
    fn enter() -> Self {
        ACTIVE.with(|a| a.set(a.get() + 1));
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(a.get().saturating_sub(1)));
    }
}

/// A point in (tokio) time by which a request must be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// A deadline at `at`.
    pub fn at(at: Instant) -> Self {
        Self { at }
    }

    /// A deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        let now = crate::clock::now();
        Self {
            at: now
                .checked_add(timeout)
                .unwrap_or(now + Duration::from_secs(86_400 * 365)),
        }
    }

    /// When it falls.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(crate::clock::now())
    }

    /// Whether it has passed.
    pub fn is_expired(&self) -> bool {
        crate::clock::now() >= self.at
    }

    /// The earlier of two deadlines.
    pub fn min(self, other: Deadline) -> Deadline {
        if other.at < self.at { other } else { self }
    }

    /// The deadline of the request being served by this task, if any.
    #[inline]
    pub fn current() -> Option<Deadline> {
        if ACTIVE.with(Cell::get) == 0 {
            return None;
        }
        CURRENT.try_with(|d| *d).ok()
    }

    /// Runs `future` with this deadline as [`current`](Self::current) — or with the
    /// current one, if that is earlier: an inner scope can shorten a deadline but
    /// never extend it.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        self.scoped(future).await
    }

    /// As [`scope`](Self::scope), returning a nameable future (for layers that need
    /// to name their response future type). The effective deadline is decided now,
    /// from the deadline current when this is called.
    pub fn scoped<F: Future>(self, future: F) -> DeadlineScope<F> {
        let effective = match Self::current() {
            Some(outer) => outer.min(self),
            None => self,
        };
        DeadlineScope {
            inner: CURRENT.scope(effective, future),
        }
    }
}

impl Deadline {
    /// Runs the synchronous `f` with this deadline as [`current`](Self::current) (or
    /// the current one, if earlier): for code that must see the deadline outside a
    /// future, such as a service's `call`.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        let effective = match Self::current() {
            Some(outer) => outer.min(self),
            None => self,
        };
        let _active = Active::enter();
        CURRENT.sync_scope(effective, f)
    }
}

/// The future returned by [`Deadline::scoped`]: `F`, run with a current deadline.
#[pin_project]
pub struct DeadlineScope<F> {
    #[pin]
    inner: tokio::task::futures::TaskLocalFuture<Deadline, F>,
}

impl<F> std::fmt::Debug for DeadlineScope<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadlineScope")
    }
}

impl<F: Future> Future for DeadlineScope<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _active = Active::enter();
        self.project().inner.poll(cx)
    }
}
