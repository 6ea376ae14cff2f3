//! Limits for tower services.
//!
//! - [`rate`]: GCRA rate limiting through `governor`, direct or keyed (bounded
//!   key store), rejecting at once or waiting up to a bound.
//! - [`shed`]: inbound load shedding with criticality classes.
//!
//! Bulkheads, adaptive concurrency and client-side throttling are being added to
//! this crate.
#![forbid(unsafe_code)]

pub mod rate;
#[cfg(feature = "http")]
pub mod shed;
