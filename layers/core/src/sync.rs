//! Atomics used by the lock-free windows: `loom`'s under the `loom` feature (model
//! checking), the standard library's otherwise.

#[cfg(feature = "loom")]
pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU64, Ordering};
#[cfg(not(feature = "loom"))]
pub(crate) use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
