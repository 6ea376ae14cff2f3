//! Palisade: resilience for tower services.
//!
//! Composable tower layers that keep a service standing when the services it calls
//! fail, all speaking one vocabulary ([`core`]): how a call's result is classified,
//! how Palisade says "no" ([`Rejection`]), and how every layer reports to Prometheus.
//!
//! - [`Downstream`] assembles one dependency's policies in the canonical order
//!   (deadline, fallback and cache, retry with hedging and a budget, breaker, rate
//!   limit, bulkhead or adaptive limit, per-try timeout, balancer) as one
//!   `tower::Layer` whose layers cooperate; [`Inbound`] (feature `http`) is the
//!   server side: keyed rate limit, load shedding, deadline extraction, refusals
//!   answered with `429`/`503` and `Retry-After`.
//! - [`Config`] reads the same policies from TOML or YAML (with environment
//!   overrides), names the field of every error, and reloads a watched file
//!   without dropping calls in flight.
//! - [`metrics`] (feature `prometheus`) installs the Prometheus recorder and serves
//!   `/metrics`; its page lists every series.
//! - Each policy is also a layer of its own: [`breaker`], [`retry`], [`timeout`],
//!   [`limit`], [`balance`], [`fallback`], and [`fault`] for injecting failures.
//!
//! One layer on its own, a circuit breaker:
//!
//! ```
//! use palisade::prelude::*;
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One breaker for the "customer" dependency.
//! let breaker = CircuitBreakerLayer::builder("customer")
//!     .failure_rate_threshold(0.5)
//!     .minimum_calls(10)
//!     .wait_in_open(Duration::from_secs(30))
//!     .build()?;
//!
//! let mut customer = ServiceBuilder::new()
//!     .layer(breaker)
//!     .service_fn(|id: u64| async move { Ok::<_, std::io::Error>(format!("customer {id}")) });
//!
//! match customer.ready().await?.call(7).await {
//!     Ok(body) => assert_eq!(body, "customer 7"),
//!     // Palisade refused: circuit open, with a retry-after hint.
//!     Err(e) if e.is_rejection() => println!("refused: {e}"),
//!     // The customer service itself failed.
//!     Err(e) => println!("customer failed: {e}"),
//! }
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub use palisade_balance as balance;
pub use palisade_breaker as breaker;
pub use palisade_core as core;
pub use palisade_fallback as fallback;
pub use palisade_fault as fault;
pub use palisade_limit as limit;
pub use palisade_retry as retry;
pub use palisade_timeout as timeout;

pub use palisade_core::{
    AllErrorsFail, BoxError, Classify, ConfigError, Error, FailureReason, Name, Outcome, Rejection,
    RejectionKind, classify_fn,
};
#[cfg(feature = "http")]
pub use palisade_core::{HttpClassifier, REJECTION_HEADER};

pub mod config;
pub mod downstream;
#[cfg(feature = "http")]
pub mod inbound;
#[cfg(feature = "prometheus")]
pub mod metrics;

pub use config::Config;
#[cfg(feature = "prometheus")]
pub mod prometheus;

pub use downstream::{Applied, BoxDownstream, Downstream, DownstreamHandle};
#[cfg(feature = "http")]
pub use inbound::Inbound;

// The README's snippets are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The names most programs need: `use palisade::prelude::*;`.
pub mod prelude {
    pub use palisade_breaker::{
        BreakerConfig, BreakerHandle, CircuitBreakerLayer, Mode, State, WindowConfig,
    };
    #[cfg(feature = "http")]
    pub use palisade_core::HttpClassifier;
    pub use palisade_core::{
        AllErrorsFail, Classify, Error, FailureReason, Outcome, Rejection, RejectionKind,
        classify_fn,
    };
}
