//! Fault injection for tower services, and a TCP chaos proxy for network faults.
//!
//! - [`FaultLayer`] injects **latency** (fixed, or uniform in a range), **errors**
//!   (an HTTP status response, or any error a closure builds) and **aborts**
//!   (the call fails with an [`std::io::Error`] of kind `ConnectionReset` or
//!   `ConnectionRefused`, as a dropped connection would) into a percentage of calls,
//!   optionally only for requests matching a rule (HTTP method, path prefix,
//!   header) or a predicate.
//! - It is **off by default**: nothing is injected until a [`FaultConfig`] is set,
//!   at build time or at runtime through the layer's [`FaultHandle`] (atomic
//!   changes, lock-free reads on the call path). The config is serde
//!   (`Serialize + Deserialize`, unknown fields refused), so an admin API can take it
//!   as JSON; [`FaultConfig::validate`] names the bad field.
//! - A request may ask for its own faults with the [`FAULT_HEADER`] header **only
//!   when the layer explicitly allows it** ([`FaultLayer::allow_header_faults`]),
//!   which must never be done where untrusted callers can reach the service.
//!   Otherwise the header is stripped.
//! - A seed ([`FaultLayer::seed`]) makes the random choices reproducible for tests.
//! - [`metrics`] lists the series recorded: `palisade_fault_injected_total`.
//! - [`proxy::ChaosProxy`] is a TCP proxy for network faults between a client and
//!   a real server: latency per direction, resets mid-stream, blackhole, bandwidth
//!   cap, refused connections.
//!
//! ```
//! use palisade_fault::{ErrorFault, FaultConfig, FaultLayer, LatencyFault};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let layer = FaultLayer::http("inventory")?.seed(7);
//! let faults = layer.handle();
//! let mut inventory = ServiceBuilder::new().layer(layer).service_fn(
//!     |_req: http::Request<String>| async {
//!         Ok::<_, std::io::Error>(http::Response::new(String::from("in stock")))
//!     },
//! );
//! let request = || http::Request::new(String::new());
//!
//! // Off by default.
//! let response = inventory.ready().await?.call(request()).await?;
//! assert_eq!(response.status(), 200);
//!
//! // Every request: 300 ms slower, then a 503.
//! faults.set(FaultConfig {
//!     latency: Some(LatencyFault::fixed(100.0, Duration::from_millis(300))),
//!     error: Some(ErrorFault::new(100.0, 503)),
//!     ..Default::default()
//! })?;
//! let started = tokio::time::Instant::now();
//! let response = inventory.ready().await?.call(request()).await?;
//! assert_eq!(response.status(), 503);
//! assert_eq!(started.elapsed(), Duration::from_millis(300));
//!
//! faults.clear();
//! let response = inventory.ready().await?.call(request()).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod config;
mod future;
mod handle;
mod header;
mod layer;
pub mod metrics;
pub mod protocol;
pub mod proxy;
mod service;

pub use config::{
    AbortFault, AbortKind, ErrorFault, FaultConfig, HeaderMatch, LatencyFault, RequestMatch,
    RequestRule,
};
pub use future::ResponseFuture;
pub use handle::FaultHandle;
pub use header::{FAULT_HEADER, HeaderFaultError, RequestedFaults};
pub use layer::FaultLayer;
pub use layer::HttpProtocol;
pub use metrics::FaultKind;
pub use protocol::{AnyRequest, Custom, Http, HttpWith, Predicate, Protocol};
pub use service::Fault;

// The README's snippets are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
