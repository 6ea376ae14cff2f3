//! Timeouts and cross-hop deadlines for tower services.
//!
//! - [`TimeoutLayer`] bounds each call by a timeout *and* by the request's
//!   [`Deadline`](palisade_core::Deadline), whichever falls first. When the timer
//!   fires the inner future is dropped and the call fails with a
//!   [`Timeout`](palisade_core::RejectionKind::Timeout) rejection — or
//!   [`DeadlineExceeded`](palisade_core::RejectionKind::DeadlineExceeded) when the
//!   deadline was the binding limit. A call whose deadline has already passed is
//!   refused without calling the inner service.
//! - [`deadline`] carries deadlines across HTTP hops: [`InboundDeadlineLayer`] reads
//!   the caller's `grpc-timeout` / `x-palisade-deadline-ms` headers on a server,
//!   capped by the server's own maximum, and [`OutboundDeadlineLayer`] sends what is
//!   left (minus a margin) to the next downstream and refuses calls that cannot
//!   finish in time.
//! - [`metrics`] lists the series the layers record, all registered at zero.
//!
//! The response futures are hand-written: the timer lives inside the future (no
//! allocation per call), and time is read only through `tokio::time`, so every
//! behaviour can be tested on paused time.
//!
//! ```
//! use palisade_core::{Deadline, RejectionKind};
//! use palisade_timeout::TimeoutLayer;
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut inventory = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new("inventory", Duration::from_millis(500))?)
//!     .service_fn(|delay: Duration| async move {
//!         tokio::time::sleep(delay).await;
//!         Ok::<_, std::io::Error>("in stock")
//!     });
//!
//! // In time.
//! let answer = inventory.ready().await?.call(Duration::from_millis(100)).await?;
//! assert_eq!(answer, "in stock");
//!
//! // Too slow: cut off at 500 ms.
//! let err = inventory.ready().await?.call(Duration::from_secs(3)).await.unwrap_err();
//! assert_eq!(err.rejection().unwrap().kind(), RejectionKind::Timeout);
//!
//! // The request's deadline is nearer than the timeout: it wins.
//! let err = Deadline::after(Duration::from_millis(200))
//!     .scope(async { inventory.ready().await?.call(Duration::from_secs(3)).await })
//!     .await
//!     .unwrap_err();
//! assert_eq!(err.rejection().unwrap().kind(), RejectionKind::DeadlineExceeded);
//! # Ok(())
//! # }
//! ```
//!
//! # Per-attempt or total
//!
//! The same layer means two things depending on where it sits. **Inside** a retry
//! layer it is a *per-attempt* timeout: each try gets the full timeout, and a
//! timed-out try can be retried ([`Timeout`](palisade_core::RejectionKind::Timeout)
//! is retryable). **Outside** the retry layer it is a *total* timeout: all tries,
//! and the backoff between them, share it. Both together are common:
//!
//! ```text
//! TimeoutLayer(total, 2 s) → retry → TimeoutLayer(per attempt, 300 ms) → endpoint
//! ```
//!
//! A request deadline bounds both, and because
//! [`DeadlineExceeded`](palisade_core::RejectionKind::DeadlineExceeded) is not
//! retryable, a try cut off by the deadline is not retried: nobody is waiting for
//! its answer any more.
#![forbid(unsafe_code)]

pub mod deadline;
mod future;
mod layer;
pub mod metrics;
mod service;

pub use deadline::{InboundDeadlineLayer, OutboundDeadlineLayer};
pub use future::ResponseFuture;
pub use layer::{TimeoutHandle, TimeoutLayer};
pub use service::Timeout;

// The README's snippets are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
