//! Retry for tower services, without retry storms.
//!
//! - **Backoff** ([`Backoff`]): constant, exponential, full jitter (default), equal
//!   jitter, decorrelated jitter; capped; on tokio time.
//! - **What is retried** comes from core's [`Classify`](palisade_core::Classify):
//!   failures yes, ignored outcomes (a 4xx) no, plus an optional predicate. Palisade
//!   rejections that say "don't" (circuit open, budget exhausted, deadline exceeded)
//!   are never retried; a retry-after hint (a rejection's, or a `Retry-After`
//!   header) is waited out only if it fits the deadline and `max_retry_after`.
//! - **Budget** ([`RetryBudget`]): success-funded, shared by all clones; a dead
//!   downstream earns no retries beyond a small floor.
//! - **Deadlines**: a retry that cannot start before the request's
//!   [`Deadline`](palisade_core::Deadline) is not made.
//! - **Hedging** ([`HedgeLayer`]): after a fixed delay or an observed latency
//!   percentile, send up to N extra attempts; the first good answer wins and the
//!   rest are cancelled; hedges spend the same budget as retries.
//! - **Cross-hop control**: when the layer gives up after retrying (or is refused
//!   by its budget or the deadline) while serving a request, it raises a flag that
//!   the server's [`http::NoRetryLayer`] turns into an `x-palisade-no-retry: 1`
//!   header on the error response; a retry layer that sees that header does not
//!   retry. Each HTTP attempt carries `x-palisade-attempt: <n>`.
//!
//! ```
//! use palisade_retry::{Backoff, RetryLayer, Strategy};
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let retry = RetryLayer::builder("inventory")
//!     .max_attempts(3)
//!     .backoff(Backoff { strategy: Strategy::Exponential, base: Duration::from_millis(10), ..Backoff::default() })
//!     .build()
//!     .unwrap();
//! // Fund the budget as earlier successful calls would have.
//! for _ in 0..10 { retry.budget().deposit(); }
//!
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = calls.clone();
//! let mut svc = ServiceBuilder::new().layer(retry).service_fn(move |_: ()| {
//!     let n = counter.fetch_add(1, Ordering::SeqCst);
//!     async move { if n < 2 { Err(std::io::Error::other("flaky")) } else { Ok("third time lucky") } }
//! });
//! assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "third time lucky");
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # }
//! ```
#![forbid(unsafe_code)]

mod backoff;
pub mod budget;
mod config;
mod future;
pub mod hedge;
pub mod hop;
#[cfg(feature = "http")]
pub mod http;
mod layer;
pub mod metrics;
mod protocol;
#[cfg(feature = "http")]
pub mod replay;
mod service;

pub use backoff::{Backoff, Strategy};
pub use budget::{BudgetConfig, RetryBudget};
pub use config::RetryConfig;
pub use future::ResponseFuture;
pub use hedge::{Hedge, HedgeBuilder, HedgeDelay, HedgeFuture, HedgeLayer};
pub use layer::{Builder, RetryLayer};
pub use protocol::{CloneRequests, Protocol};
#[cfg(feature = "http")]
pub use replay::{BufferBody, BufferBodyLayer, BufferFuture, ReplayBody};
pub use service::Retry;

// The README's snippets are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
