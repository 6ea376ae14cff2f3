//! Limits for tower services.
//!
//! - [`rate`]: GCRA rate limiting through `governor`, direct or keyed (bounded
//!   key store), rejecting at once or waiting up to a bound.
//! - [`adaptive`]: a concurrency limit that follows measured latency (AIMD,
//!   Gradient2).
//! - [`throttle`]: Google SRE client-side adaptive throttling.
//! - [`shed`]: inbound load shedding with criticality classes.
//!
//! A bulkhead is being added to this crate.
#![forbid(unsafe_code)]

pub mod adaptive;
pub mod rate;
#[cfg(feature = "http")]
pub mod shed;
pub mod throttle;
