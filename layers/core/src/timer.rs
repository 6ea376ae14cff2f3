//! A timer made only when it is first needed.
//!
//! Making a tokio timer takes a count on the runtime's handle, and a call answered
//! at once (a cache hit, a refusal from a layer below) never needs one. A
//! [`LazyTimer`] holds the instant it is due and makes its `Sleep` at its first
//! poll, which a layer does only once the call it guards has returned pending.
//!
//! ```
//! use std::pin::pin;
//! use std::time::Duration;
//! use palisade_core::timer::LazyTimer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let start = tokio::time::Instant::now();
//! let mut timer = pin!(LazyTimer::due(start + Duration::from_secs(1)));
//! std::future::poll_fn(|cx| timer.as_mut().poll(cx)).await;
//! assert_eq!(start.elapsed(), Duration::from_secs(1));
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

/// A timer due at an instant, made at its first poll; see the [module docs](self).
#[pin_project(project = LazyTimerProj)]
#[derive(Debug)]
pub enum LazyTimer {
    /// Due at this instant; no timer made yet.
    Due(Instant),
    /// Made and registered.
    Armed(#[pin] Sleep),
}

impl LazyTimer {
    /// A timer due at `at`.
    pub fn due(at: Instant) -> Self {
        LazyTimer::Due(at)
    }

    /// Polls the timer, making it first if need be (so its waker is registered).
    pub fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.as_mut().project() {
                LazyTimerProj::Armed(sleep) => return sleep.poll(cx),
                LazyTimerProj::Due(at) => {
                    let at = *at;
                    self.set(LazyTimer::Armed(sleep_until(at)));
                }
            }
        }
    }
}
