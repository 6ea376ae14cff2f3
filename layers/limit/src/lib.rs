//! Limits for tower services.
//!
//! - [`rate`]: GCRA rate limiting through `governor`, direct or keyed (bounded
//!   key store), rejecting at once or waiting up to a bound.
//! - [`bulkhead`]: a cap on concurrent calls with a bounded wait queue; lock-free
//!   permits, no waiter-list lock on release unless someone waits.
//! - [`adaptive`]: a concurrency limit that follows measured latency (AIMD,
//!   Gradient2).
//! - [`throttle`]: Google SRE client-side adaptive throttling.
//! - [`shed`]: inbound load shedding with criticality classes.
#![forbid(unsafe_code)]

pub mod adaptive;
pub mod bulkhead;
pub mod rate;
#[cfg(feature = "http")]
pub mod shed;
pub mod throttle;

// The README's snippets are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
