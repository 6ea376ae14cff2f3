//! A circuit breaker for tower services.
//!
//! Stops calling a downstream that is failing, gives it time to recover, and probes
//! it carefully before trusting it again:
//!
//! - **States**: closed, open, half-open, plus forced-open, disabled and metrics-only
//!   set by hand through a [`BreakerHandle`].
//! - **Windows**: the last N calls ([`WindowConfig::Count`]) or the last T of time
//!   ([`WindowConfig::Time`]); old calls leave the window. Opens on a failure-rate or
//!   slow-call-rate threshold once a minimum number of calls is in the window, or on
//!   N consecutive failures.
//! - **Half-open**: exactly N concurrent probes (extra calls are rejected, not
//!   queued); enough successful probes close the breaker, a failed probe reopens it;
//!   an optional limit on time spent half-open.
//! - **Open wait backoff**: each trip without closing in between waits longer
//!   (multiplied, capped) and jittered, so a dead downstream is probed less and
//!   breakers that tripped together do not probe together.
//! - **Fail fast or gate**: by default a refused call fails at once with a
//!   [`CircuitOpen`](palisade_core::RejectionKind::CircuitOpen) rejection carrying the
//!   remaining open time; [`Mode::Gate`] instead holds back readiness, for use inside
//!   a load balancer.
//! - **Per-key breakers** on a bounded registry ([`KeyedCircuitBreakerLayer`]).
//! - **Metrics and events**: see [`metrics`] for the series; [`BreakerEvent`]s reach
//!   any observer you add.
//!
//! The closed path takes no lock and allocates nothing: admission is one atomic
//! load, recording is three atomic operations on the window, and the clock is read
//! only when slow-call detection or a time window needs it.
//!
//! ```
//! use palisade_breaker::{CircuitBreakerLayer, State};
//! use palisade_core::RejectionKind;
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = CircuitBreakerLayer::builder("inventory")
//!     .consecutive_failures(3)
//!     .wait_in_open(Duration::from_secs(5))
//!     .build()
//!     .unwrap();
//! let handle = breaker.handle();
//! let mut svc = ServiceBuilder::new()
//!     .layer(breaker)
//!     .service_fn(|fail: bool| async move {
//!         if fail { Err(std::io::Error::other("down")) } else { Ok("ok") }
//!     });
//!
//! for _ in 0..3 {
//!     let err = svc.ready().await.unwrap().call(true).await.unwrap_err();
//!     assert!(!err.is_rejection()); // the downstream's own error
//! }
//! assert_eq!(handle.state(), State::Open);
//! let err = svc.ready().await.unwrap().call(false).await.unwrap_err();
//! let rejection = err.rejection().unwrap();
//! assert_eq!(rejection.kind(), RejectionKind::CircuitOpen);
//! assert!(rejection.retry_after().unwrap() <= Duration::from_secs(5));
//! # }
//! ```
#![forbid(unsafe_code)]

mod config;
mod future;
mod handle;
mod keyed;
mod lanes;
mod layer;
mod machine;
pub mod metrics;
mod service;
mod shared;
mod state;
mod sync;

pub use config::{BreakerConfig, Mode, WindowConfig};
pub use future::ResponseFuture;
pub use handle::{BreakerHandle, BreakerSnapshot};
pub use keyed::{KeyedCircuitBreaker, KeyedCircuitBreakerLayer};
pub use layer::{Builder, CircuitBreakerLayer};
pub use metrics::BreakerEvent;
pub use service::CircuitBreaker;
pub use state::State;

// The README's snippets are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
