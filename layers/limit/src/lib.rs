//! Limits for tower services.
//!
//! - [`rate`]: GCRA rate limiting through `governor`, direct or keyed (bounded
//!   key store), rejecting at once or waiting up to a bound.
//!
//! Bulkheads, adaptive concurrency, client-side throttling and load shedding are
//! being added to this crate.
#![forbid(unsafe_code)]

pub mod rate;
