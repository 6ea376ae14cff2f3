//! Per-thread lanes to state shared by every clone of a layer.
//!
//! A response future that must keep a layer's shared state alive holds a reference
//! count. With one `Arc` for all, that count's cache line moves between cores on
//! every call when several threads call through clones of one stack, and the
//! transfer costs more than the rest of the layer. [`Lanes`] give each thread (by a
//! round-robin index fixed at its first use) its own counted handle, on its own cache
//! line, to the same state, so the count stays core-local. Lanes are made once per
//! layer; nothing is allocated per call or per clone.
//!
//! ```
//! use std::sync::Arc;
//! use palisade_core::lanes::Lanes;
//!
//! let lanes = Lanes::new(Arc::new(String::from("shared")));
//! let handle = lanes.pick(); // a counted handle on this thread's lane
//! assert_eq!(handle.as_str(), "shared");
//! assert!(Arc::ptr_eq(lanes.shared(), lanes.pick().shared()));
//! ```

use std::cell::Cell;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One counted handle to the shared state, alone on its cache line.
#[repr(align(128))]
pub struct Lane<T> {
    shared: Arc<T>,
}

impl<T> Lane<T> {
    /// A lane of its own to `shared` (for state that is not shared across threads
    /// enough to need [`Lanes`], but is handled through the same type).
    pub fn new(shared: Arc<T>) -> Self {
        Self { shared }
    }

    /// The state every lane leads to.
    #[inline]
    pub fn shared(&self) -> &Arc<T> {
        &self.shared
    }
}

impl<T> Deref for Lane<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.shared
    }
}

impl<T: fmt::Debug> fmt::Debug for Lane<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

/// The lanes to one shared state: a power of two, at least twice the available
/// parallelism (so threads rarely share one), at most 16. Cloning shares them.
pub struct Lanes<T> {
    lanes: Arc<[Arc<Lane<T>>]>,
}

impl<T> Clone for Lanes<T> {
    fn clone(&self) -> Self {
        Self {
            lanes: Arc::clone(&self.lanes),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Lanes<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lanes")
            .field("count", &self.lanes.len())
            .field("shared", self.shared())
            .finish()
    }
}

impl<T> Deref for Lanes<T> {
    type Target = T;

    /// The shared state (for reads that take no count).
    #[inline]
    fn deref(&self) -> &T {
        self.shared()
    }
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's round-robin index, fixed at its first use: threads started one
/// after another get consecutive indexes, so `thread_index() & (n - 1)` spreads
/// them over `n` (a power of two) slots.
#[inline]
pub fn thread_index() -> usize {
    THREAD_INDEX.with(|i| {
        let v = i.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
        i.set(v);
        v
    })
}

/// How many lanes a [`Lanes`] has on this machine: a power of two, at least twice
/// the available parallelism, at most 16.
pub fn lane_count() -> usize {
    let parallelism = std::thread::available_parallelism().map_or(1, usize::from);
    (2 * parallelism).next_power_of_two().clamp(1, 16)
}

impl<T> Lanes<T> {
    /// Lanes to `shared`.
    pub fn new(shared: Arc<T>) -> Self {
        Self {
            lanes: (0..lane_count())
                .map(|_| Arc::new(Lane::new(Arc::clone(&shared))))
                .collect(),
        }
    }

    /// The state every lane leads to.
    #[inline]
    pub fn shared(&self) -> &Arc<T> {
        self.lanes[0].shared()
    }

    /// This thread's lane, without taking a count.
    #[inline]
    pub fn local(&self) -> &Lane<T> {
        &self.lanes[thread_index() & (self.lanes.len() - 1)]
    }

    /// A counted handle on this thread's lane.
    #[inline]
    pub fn pick(&self) -> Arc<Lane<T>> {
        Arc::clone(&self.lanes[thread_index() & (self.lanes.len() - 1)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_get_lanes_of_their_own_to_one_state() {
        let lanes = Lanes::new(Arc::new(5_u32));
        let here = lanes.pick();
        let there = std::thread::scope(|s| s.spawn(|| lanes.pick()).join().expect("thread"));
        assert!(!Arc::ptr_eq(&here, &there), "each thread its own lane");
        assert!(Arc::ptr_eq(here.shared(), there.shared()));
        assert_eq!((**here, **there), (5, 5));
        assert!(Arc::ptr_eq(&here, &lanes.pick()), "a thread keeps its lane");
    }
}
