//! Per-thread lanes to a breaker's shared state.
//!
//! Every call's response future must keep the breaker's state alive, so it holds a
//! reference count. With one `Arc` for all, that count's cache line moves between
//! cores on every call when several threads share a breaker. Lanes give each thread
//! (by a round-robin index fixed at its first call) its own counted handle, on its own
//! cache line, to the same state: the count stays core-local. Lanes are made once per
//! breaker; nothing is allocated per call or per clone.

use std::cell::Cell;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::shared::Shared;

/// One counted handle to the shared state, alone on its cache line.
#[repr(align(128))]
#[derive(Debug)]
pub(crate) struct Lane {
    shared: Arc<Shared>,
}

impl Lane {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Deref for Lane {
    type Target = Shared;

    #[inline]
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// The lanes of one breaker: a power of two, at least twice the available
/// parallelism (so threads rarely share one), at most 16.
#[derive(Debug, Clone)]
pub(crate) struct Lanes {
    lanes: Arc<[Arc<Lane>]>,
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn thread_index() -> usize {
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

impl Lanes {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let parallelism = std::thread::available_parallelism().map_or(1, usize::from);
        let count = (2 * parallelism).next_power_of_two().clamp(1, 16);
        Self {
            lanes: (0..count)
                .map(|_| Arc::new(Lane::new(Arc::clone(&shared))))
                .collect(),
        }
    }

    /// The state every lane leads to.
    #[inline]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        self.lanes[0].shared()
    }

    /// A counted handle on this thread's lane.
    #[inline]
    pub(crate) fn pick(&self) -> Arc<Lane> {
        let i = thread_index() & (self.lanes.len() - 1);
        Arc::clone(&self.lanes[i])
    }
}
