//! Degradation for tower services: answer with something sensible when a dependency
//! is slow or down, and never stampede it when it comes back.
//!
//! - [`FallbackLayer`] answers a classified failure (core's
//!   [`Classify`](palisade_core::Classify)) or a Palisade rejection (chosen by kind)
//!   with a response of your own — from a closure that is told why
//!   ([`FallbackCause`]), or a fixed [`Value`] — marked so callers can tell
//!   ([`MarkFallback`]; for HTTP the `x-palisade-fallback` header and a
//!   [`ServedFallback`] extension) and counted by [`FallbackReason`].
//! - [`CacheLayer`] is a stale-if-error cache on [`moka`], bounded by weight: fresh
//!   entries answer at once; past their fresh TTL the dependency is asked (one
//!   refresh per key at a time), and if it fails or refuses, an entry up to
//!   `max_stale` past its TTL answers instead, marked stale ([`Served`]; for HTTP
//!   an `Age` header and an extension).
//! - [`CoalesceLayer`] lets concurrent identical requests share one call.
//!
//! Requests are keyed by a [`KeyOf`] function (a closure through [`key_fn`], or for
//! HTTP [`HttpKey`]: method, scheme and authority when present, path, query and
//! chosen headers, for `GET`/`HEAD` by default);
//! requests without a key pass through untouched. Responses are kept and shared by
//! a [`StoreOf`] ([`CloneStore`] for `Clone` responses, [`HttpStore`] which buffers
//! HTTP bodies up to a bound).
//!
//! Time is read only through `tokio::time`, so everything can be tested on paused
//! time. The metrics are listed in [`metrics`].
//!
//! In a downstream's stack the cache sits outside retry and the breaker, so an open
//! breaker's rejection is what turns into a stale answer:
//!
//! ```text
//! metrics → deadline → fallback → cache → retry → breaker → limits → timeout → endpoint
//! ```
//!
//! ```
//! use palisade_fallback::{key_fn, CacheLayer, CloneStore, FallbackCause, FallbackLayer};
//! use palisade_core::{Rejection, RejectionKind};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let cache = CacheLayer::builder("catalog", key_fn(|id: &u32| Some(*id)), CloneStore::new())
//!     .fresh_ttl(Duration::from_secs(30))
//!     .max_stale(Duration::from_secs(300))
//!     .build()
//!     .unwrap();
//! let fallback = FallbackLayer::builder("catalog", |_: &FallbackCause<'_>| "unknown product".to_string())
//!     .build()
//!     .unwrap();
//! let mut catalog = ServiceBuilder::new()
//!     .layer(fallback)
//!     .layer(cache)
//!     .service_fn(|id: u32| async move {
//!         if id == 0 { Err(Rejection::new(RejectionKind::CircuitOpen)) } else { Ok(format!("product {id}")) }
//!     });
//! assert_eq!(catalog.ready().await.unwrap().call(1).await.unwrap(), "product 1");
//! assert_eq!(catalog.ready().await.unwrap().call(0).await.unwrap(), "unknown product");
//! # }
//! ```
#![forbid(unsafe_code)]

mod cache;
mod coalesce;
mod config;
mod fallback;
mod flight;
mod future;
#[cfg(feature = "http")]
pub mod http;
mod key;
pub mod metrics;
mod store;

pub use cache::{Cache, CacheBuilder, CacheHandle, CacheLayer};
pub use coalesce::{Coalesce, CoalesceBuilder, CoalesceLayer};
pub use config::{CacheConfig, CoalesceConfig, FallbackConfig, RejectionName};
pub use fallback::{
    Fallback, FallbackBuilder, FallbackCause, FallbackFuture, FallbackLayer, MakeFallback,
    MarkFallback, NoMark, Value,
};
pub use flight::SharedError;
pub use future::ResponseFuture;
#[cfg(feature = "http")]
pub use http::{CachedBody, HttpEntry, HttpKey, HttpMark, HttpStore, RequestKey, ServedFallback};
pub use key::{FnKey, KeyFn, KeyOf, key_fn};
pub use metrics::FallbackReason;
pub use store::{Captured, CloneStore, Served, Store, StoreOf};

// The README's snippets are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
