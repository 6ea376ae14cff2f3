//! A bulkhead: a cap on concurrent calls to a downstream, with a bounded wait
//! queue.
//!
//! - **Permits**: at most `max_concurrent` calls run at once. A permit is taken
//!   in `poll_ready` and given back when the response future completes or is
//!   dropped; a service made ready and dropped uncalled gives it back too. A clone
//!   of a service starts without one.
//! - **Queue**: when every permit is taken, up to `max_queue` calls wait for one,
//!   each for at most `max_wait`, and never past the request's
//!   [`Deadline`](palisade_core::Deadline). With `max_queue = 0` (the default) a
//!   call that finds the bulkhead full is refused at once.
//! - **Refusals never hang**: a call refused because the queue is full or its wait
//!   ran out makes `poll_ready` ready and fails in `call` with
//!   [`BulkheadFull`](palisade_core::RejectionKind::BulkheadFull) (or
//!   [`DeadlineExceeded`](palisade_core::RejectionKind::DeadlineExceeded) when the
//!   deadline ended the wait), naming the downstream. The inner service is not
//!   called and its readiness is not taken.
//! - **Runtime control**: a [`BulkheadHandle`] reads the calls in flight and
//!   queued, and changes `max_concurrent` on the running bulkhead.
//! - **Metrics and events**: see [`metrics`] for the series; [`BulkheadEvent`]s
//!   reach any observer you add.
//!
//! Taking and giving back a permit is one compare-and-swap and one atomic
//! subtraction on a word that holds both the permits held and the calls queued:
//! no lock and no allocation. A release touches the waiters' wake-up (a
//! `tokio::sync::Notify`) only when the same atomic step shows that someone is
//! queued. Admission is not strictly first-come-first-served: waiters are woken
//! oldest first, but a call arriving just as a permit is freed may take it, and
//! the woken waiter then waits on (its `max_wait` still counts from when it
//! started).
//!
//! ```
//! use palisade_core::RejectionKind;
//! use palisade_limit::bulkhead::BulkheadLayer;
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let bulkhead = BulkheadLayer::builder("payment")
//!     .max_concurrent(1)
//!     .max_queue(1)
//!     .max_wait(Duration::from_millis(50))
//!     .build()
//!     .unwrap();
//! let handle = bulkhead.handle();
//! let svc = ServiceBuilder::new()
//!     .layer(bulkhead)
//!     .service_fn(|ms: u64| async move {
//!         tokio::time::sleep(Duration::from_millis(ms)).await;
//!         Ok::<_, std::io::Error>(ms)
//!     });
//!
//! // The first call takes the only permit for 100 ms.
//! let mut first = svc.clone();
//! let running = first.ready().await.unwrap().call(100);
//! assert_eq!(handle.in_flight(), 1);
//!
//! // A second call waits in the queue, and gives up after 50 ms.
//! let waiting = tokio::spawn(svc.clone().oneshot(1));
//! tokio::task::yield_now().await;
//! assert_eq!(handle.queued(), 1);
//! // A third finds the queue full and is refused at once.
//! let err = svc.clone().oneshot(1).await.unwrap_err();
//! assert_eq!(err.rejection().unwrap().kind(), RejectionKind::BulkheadFull);
//!
//! let err = waiting.await.unwrap().unwrap_err();
//! assert_eq!(err.rejection().unwrap().kind(), RejectionKind::BulkheadFull);
//! assert_eq!(running.await.unwrap(), 100);
//! assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
//! # }
//! ```

mod config;
mod future;
mod handle;
mod layer;
pub mod metrics;
mod permits;
mod service;
mod shared;
mod sync;

pub use config::BulkheadConfig;
pub use future::ResponseFuture;
pub use handle::BulkheadHandle;
pub use layer::{BulkheadBuilder, BulkheadLayer};
pub use metrics::{BulkheadEvent, RejectReason};
pub use service::Bulkhead;
