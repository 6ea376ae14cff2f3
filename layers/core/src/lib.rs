//! The shared vocabulary of Palisade's resilience layers.
//!
//! Every Palisade layer (circuit breaker, retry, limits, timeouts, balancing,
//! fallback) speaks the words defined here, so one decision means the same thing
//! everywhere:
//!
//! - [`Classify`] turns a call's result into an [`Outcome`]: success, failure (with a
//!   low-cardinality [`FailureReason`]) or ignored. Slowness is judged separately from
//!   the measured latency ([`Verdict`]).
//! - [`Rejection`] is the one closed vocabulary for "Palisade refused this work"
//!   ([`RejectionKind`]), with a retry-after hint where one exists. Layers return
//!   [`Error`], which keeps a rejection apart from the inner service's own error.
//! - [`observe`] holds the event/observer plumbing and the metric helpers that keep
//!   every metric name under `palisade_<layer>_<what>_<unit>[_total]` with closed,
//!   zero-filled label sets.
//! - [`window`] holds the lock-free rolling windows (count-based ring and
//!   time-bucketed) used on the hot path.
//! - [`keyed`] holds a bounded registry with idle eviction for per-key state.
//! - [`clock`] is time as the layers read it: [`Clock`] for atomics, and one clock
//!   reading lent to every layer of a stack for the synchronous part of a call.
//! - [`lanes`] gives response futures per-thread counted handles to a layer's shared
//!   state, so their reference counts stay core-local under contention.
//! - [`timer`] is a timer made at its first poll, so a call answered at once never
//!   touches the runtime's timer.
//! - [`Deadline`] carries the time by which a request must be answered across
//!   layers (and, with the timeout crate's headers, across hops).
//! - [`Clock`] reads time only through `tokio::time`, so tests can pause it.
//!
//! ```
//! use palisade_core::{Classify, AllErrorsFail, Outcome, Rejection, RejectionKind, Error};
//! use std::time::Duration;
//!
//! // Every error counts as a failure; a palisade rejection of a local limit does not.
//! let classify = AllErrorsFail;
//! let ok: Result<&u32, &std::io::Error> = Ok(&1);
//! assert_eq!(Classify::<u32, std::io::Error>::classify(&classify, ok), Outcome::Success);
//!
//! // A rejection is told apart from the inner service's error without guessing.
//! let err = Error::from(Rejection::new(RejectionKind::CircuitOpen)
//!     .with_retry_after(Duration::from_secs(5)));
//! let rejection = err.rejection().expect("a rejection");
//! assert_eq!(rejection.kind(), RejectionKind::CircuitOpen);
//! assert_eq!(rejection.retry_after(), Some(Duration::from_secs(5)));
//! ```
#![forbid(unsafe_code)]

mod classify;
pub mod clock;
mod config;
mod deadline;
mod error;
pub mod keyed;
pub mod lanes;
mod name;
pub mod observe;
mod sync;
pub mod timer;
pub mod window;

#[cfg(feature = "http")]
pub use classify::HttpClassifier;
pub use classify::{
    AllErrorsFail, Classify, ClassifyFn, FailureReason, Outcome, Verdict, classify_fn,
};
pub use clock::Clock;
pub use config::ConfigError;
pub use deadline::{Deadline, DeadlineScope};
#[cfg(feature = "http")]
pub use error::REJECTION_HEADER;
pub use error::{BoxError, Error, Rejection, RejectionKind, rejection_of};
pub use name::{Name, NameError};
