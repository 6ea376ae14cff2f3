//! Load balancing for tower services over discovered endpoints.
//!
//! - **Power of two choices** ([`Balance`]): each request goes to the less loaded of
//!   two endpoints drawn at random, by peak-EWMA latency × (pending + 1) or by
//!   pending requests ([`LoadMetric`]).
//! - **Outlier ejection** ([`OutlierConfig`]): an endpoint that fails too many calls
//!   in a row, or too high a share of them, leaves rotation for a time that grows with
//!   repeated ejections (capped). At most `max_ejection_percent` of the endpoints is
//!   ejected at once, and in **panic mode** (too few healthy) the balancer uses every
//!   endpoint rather than overload the few left. Calls are judged by core's
//!   [`Classify`](palisade_core::Classify).
//! - **Slow start** ([`SlowStartConfig`]): an endpoint that joins (or returns from
//!   ejection) gets a share of traffic growing from `min_weight` to full.
//! - **No endpoints** is core's [`RejectionKind::NoEndpoints`](palisade_core::RejectionKind),
//!   returned at once by `call`; `poll_ready` never waits for endpoints.
//! - **Discovery** ([`discover`]): one change stream, `tower::discover`-compatible
//!   ([`Change::Insert`](tower::discover::Change)/`Remove` of `SocketAddr`s), from a fixed
//!   list, an in-process [`Registry`](discover::Registry), a watched JSON/TOML file,
//!   DNS (feature `dns`) or etcd (feature `etcd`). Every source keeps its last known
//!   endpoints when it cannot be read and says so in `palisade_discovery_stale`.
//! - **Endpoints** are made by a [`MakeEndpoint`] (address → tower service); with
//!   feature `http`, [`http::SetAuthority`] points each request at its endpoint.
//!
//! ```
//! use palisade_balance::{Balance, discover::Registry};
//! use palisade_core::RejectionKind;
//! use std::net::SocketAddr;
//! use tower::{Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let registry = Registry::new();
//! let make = |addr: SocketAddr| tower::service_fn(move |_: ()| async move {
//!     Ok::<_, std::io::Error>(addr.port())
//! });
//! let mut balance = Balance::builder("inventory")
//!     .build(registry.watch("inventory").unwrap(), make)
//!     .unwrap();
//!
//! // Nobody registered yet: refused at once.
//! let err = balance.ready().await.unwrap().call(()).await.unwrap_err();
//! assert_eq!(err.rejection().unwrap().kind(), RejectionKind::NoEndpoints);
//!
//! // A replica registers; it is deregistered when its guard is dropped.
//! let guard = registry.register("inventory", "127.0.0.1:9001".parse().unwrap());
//! balance.wait_for_endpoints(1).await;
//! assert_eq!(balance.ready().await.unwrap().call(()).await.unwrap(), 9001);
//! drop(guard);
//! # }
//! ```
#![forbid(unsafe_code)]

mod config;
pub mod discover;
mod endpoint;
mod future;
#[cfg(feature = "http")]
pub mod http;
pub mod metrics;
mod service;

pub use config::{BalanceConfig, LoadMetric, OutlierConfig, SlowStartConfig};
pub use endpoint::MakeEndpoint;
pub use future::ResponseFuture;
pub use metrics::{Detector, EndpointState};
pub use service::{Balance, Builder, EndpointInfo};

// The README's snippets are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
