//! Adaptive concurrency limits: a cap on concurrent calls that follows measured
//! latency instead of a number someone guessed.
//!
//! A fixed bulkhead has to be sized for a downstream's capacity, which changes with
//! deployments, autoscaling and every dependency behind it. An adaptive limiter
//! measures each admitted call's round-trip time and outcome, and moves its limit
//! the way TCP moves a congestion window:
//!
//! - [`Aimd`]: additive increase while calls succeed fast with the limit in use,
//!   multiplicative decrease on a failure, a timeout or a call over a latency
//!   threshold. Simple and predictable; reacts to errors.
//! - [`Gradient2`] (the default): Netflix's latency gradient. Compares the
//!   short-term RTT with a long-term average and shrinks the limit as queues build
//!   up, before anything fails; grows it back as latency recovers.
//! - Your own, through [`LimitAlgorithm`].
//!
//! **Admission** happens in `poll_ready`: a lock-free compare-and-swap takes a
//! permit while fewer calls than the limit are in flight. At the limit the call is
//! refused at once, never queued: with
//! [`BulkheadFull`](palisade_core::RejectionKind::BulkheadFull) by default (a client
//! protecting itself from a slow downstream) or
//! [`Shed`](palisade_core::RejectionKind::Shed) (a server protecting itself from its
//! callers; see [`AdaptiveLimitBuilder::rejection`]). The permit is given back when
//! the response future completes or is dropped; a service clone that was never made
//! ready holds none.
//!
//! **Sampling.** Only admitted calls are timed (with `tokio::time`, so tests run on
//! paused time). A completed call is classified with [`Classify`]
//! ([`AllErrorsFail`](palisade_core::AllErrorsFail) by default): a success is a
//! sample, a failure is a *drop* (so is a
//! [`Timeout`](palisade_core::RejectionKind::Timeout) rejection from an inner
//! timeout layer, whatever the classifier says), an ignored outcome (a 4xx, a local
//! rejection) is not sampled, and neither is a call whose future was dropped. Put
//! per-try timeouts *inside* the limiter, as Palisade's canonical order does, so
//! that a timeout reaches the limiter as a drop. Successful calls also maintain the
//! observed minimum RTT, which [`AdaptiveLimitHandle::reset_min_rtt`] forgets.
//!
//! **Concurrency.** Admission and release touch two atomics and never lock. The
//! algorithm's update, once per sampled call, runs under a `std::sync::Mutex` held
//! for a few floating-point operations (never across an `.await`): algorithms keep
//! several values that must change together, and user algorithms keep arbitrary
//! state, so a short lock off the admission path is simpler and no slower in
//! practice than forcing every algorithm into atomics. The integer limit it decides
//! is published to an atomic that admission reads. Nothing is allocated per call.
//!
//! **Metrics**: see [`metrics`] for the series; [`AdaptiveEvent`]s reach any
//! observer you add.
//!
//! ```
//! use palisade_limit::adaptive::{AdaptiveLimitLayer, Aimd};
//! use palisade_core::RejectionKind;
//! use std::time::Duration;
//! use tower::{Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = AdaptiveLimitLayer::builder("inventory")
//!     .algorithm(Aimd { latency_threshold: Duration::from_millis(100), ..Aimd::default() })
//!     .min_limit(1)
//!     .max_limit(10)
//!     .initial_limit(2)
//!     .build()
//!     .unwrap();
//! let handle = layer.handle();
//! let svc = layer.layer(tower::service_fn(|ms: u64| async move {
//!     tokio::time::sleep(Duration::from_millis(ms)).await;
//!     Ok::<_, std::io::Error>(ms)
//! }));
//!
//! // Two calls hold the two permits; a third is refused at once.
//! let (mut a, mut b, mut c) = (svc.clone(), svc.clone(), svc.clone());
//! let first = a.ready().await.unwrap().call(10);
//! let second = b.ready().await.unwrap().call(20);
//! let err = c.ready().await.unwrap().call(10).await.unwrap_err();
//! assert_eq!(err.rejection().unwrap().kind(), RejectionKind::BulkheadFull);
//!
//! // Fast successes with the limit in use grow it by one each...
//! let (x, y) = tokio::join!(first, second);
//! assert_eq!((x.unwrap(), y.unwrap()), (10, 20));
//! assert_eq!(handle.limit(), 4);
//! // ... and a call over the latency threshold shrinks it.
//! c.ready().await.unwrap().call(150).await.unwrap();
//! assert_eq!(handle.limit(), 3);
//! assert_eq!(handle.min_rtt(), Some(Duration::from_millis(10)));
//! # }
//! ```
//!
//! [`Classify`]: palisade_core::Classify

mod algorithm;
mod config;
mod future;
mod handle;
mod layer;
pub mod metrics;
mod service;
mod shared;
mod sync;

pub use algorithm::{Aimd, AlgorithmConfig, Gradient2, Gradient2State, LimitAlgorithm, Sample};
pub use config::AdaptiveLimitConfig;
pub use future::ResponseFuture;
pub use handle::AdaptiveLimitHandle;
pub use layer::{AdaptiveLimitBuilder, AdaptiveLimitLayer};
pub use metrics::AdaptiveEvent;
pub use service::AdaptiveLimit;
