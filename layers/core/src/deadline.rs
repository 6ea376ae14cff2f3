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

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static CURRENT: Deadline;
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
        let now = Instant::now();
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
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether it has passed.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.at
    }

    /// The earlier of two deadlines.
    pub fn min(self, other: Deadline) -> Deadline {
        if other.at < self.at { other } else { self }
    }

    /// The deadline of the request being served by this task, if any.
    pub fn current() -> Option<Deadline> {
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
        CURRENT.scope(effective, future)
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
        CURRENT.sync_scope(effective, f)
    }
}

/// The future returned by [`Deadline::scoped`]: `F`, run with a current deadline.
pub type DeadlineScope<F> = tokio::task::futures::TaskLocalFuture<Deadline, F>;
