//! State shared by every clone of one bulkhead: the permits, the wake-up for
//! waiters, metrics and observers; and the guards that give a permit or a queue
//! place back when dropped.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::lanes::{Lane, Lanes};
use palisade_core::observe::Observers;
use palisade_core::{ConfigError, Name, Rejection};
use tokio::sync::Notify;

use super::config::{BulkheadConfig, check_max_concurrent};
use super::metrics::{BulkheadEvent, BulkheadMetrics, CallOutcome, RejectReason};
use super::permits::{Admit, Permits};
use super::service::Wait;

pub(crate) struct Shared {
    pub(crate) permits: Permits,
    /// Wakes waiters. Touched only when someone is queued (or the limit rises).
    pub(crate) notify: Arc<Notify>,
    pub(crate) name: Name,
    pub(crate) max_queue: u32,
    pub(crate) max_wait: Duration,
    metrics: Option<BulkheadMetrics>,
    observers: Observers<BulkheadEvent>,
    /// Serialises limit changes, so the limit gauge ends at the limit in force.
    limit_change: Mutex<()>,
    /// Boxed wait states of dropped services, for the next services that wait
    /// (at most `max_queue`). Locked only on the waiting path.
    spare_waits: Mutex<Vec<Pin<Box<Wait>>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("permits", &self.permits)
            .field("max_queue", &self.max_queue)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

/// What `Shared::admit` decided, with the guard to hold.
pub(crate) enum Admitted {
    Permit(Permit),
    Queued(QueueSlot),
    Full,
}

impl Shared {
    pub(crate) fn new(
        name: Name,
        config: &BulkheadConfig,
        metrics: Option<BulkheadMetrics>,
        observers: Observers<BulkheadEvent>,
    ) -> Result<Arc<Self>, ConfigError> {
        config.validate()?;
        Ok(Arc::new(Shared {
            permits: Permits::new(config.max_concurrent),
            notify: Arc::new(Notify::new()),
            name,
            max_queue: config.max_queue,
            max_wait: config.max_wait,
            metrics,
            observers,
            limit_change: Mutex::new(()),
            spare_waits: Mutex::new(Vec::new()),
        }))
    }

    /// Takes a permit, or a place in the queue, or neither. Lock-free. The permit
    /// or queue place keeps the state alive through this thread's lane.
    #[inline]
    pub(crate) fn admit(lanes: &Lanes<Self>, max_queue: u32) -> Admitted {
        let this: &Self = lanes;
        match this.permits.admit(max_queue) {
            Admit::Acquired => {
                if let Some(m) = &this.metrics {
                    m.acquired();
                }
                Admitted::Permit(Permit {
                    shared: lanes.pick(),
                })
            }
            Admit::Queued => {
                if let Some(m) = &this.metrics {
                    m.enqueued();
                }
                Admitted::Queued(QueueSlot {
                    shared: Some(lanes.pick()),
                })
            }
            Admit::Full => Admitted::Full,
        }
    }

    /// A boxed wait state: a spare one, or a new one.
    pub(crate) fn spare_wait(&self) -> Pin<Box<Wait>> {
        let spare = self
            .spare_waits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        spare.unwrap_or_else(|| Box::pin(Wait::idle()))
    }

    /// Keeps a disarmed wait state for a later wait, unless enough are kept.
    pub(crate) fn keep_spare_wait(&self, wait: Pin<Box<Wait>>) {
        let mut spares = self
            .spare_waits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if spares.len() < self.max_queue as usize {
            spares.push(wait);
        }
    }

    /// Gives a permit back, waking a waiter if one can use it.
    #[inline]
    fn release(&self) {
        if self.permits.release() {
            self.notify.notify_one();
        }
        if let Some(m) = &self.metrics {
            m.released();
        }
    }

    /// Records the end of a wait in the queue.
    pub(crate) fn waited(&self, waited: Duration) {
        if let Some(m) = &self.metrics {
            m.waited(waited);
        }
    }

    /// Counts a call let through (when `call` is made).
    #[inline]
    pub(crate) fn permitted(&self, waited: Duration) {
        if let Some(m) = &self.metrics {
            m.call(CallOutcome::Permitted);
        }
        if !self.observers.is_empty() {
            self.observers.emit(&BulkheadEvent::Permitted { waited });
        }
    }

    /// The rejection a refused call fails with.
    pub(crate) fn rejection(&self, reason: RejectReason) -> Rejection {
        Rejection::new(reason.kind()).with_downstream(self.name.clone())
    }

    /// Counts a refused call (when `call` is made) and builds its rejection.
    pub(crate) fn refuse(&self, reason: RejectReason, waited: Duration) -> Rejection {
        if let Some(m) = &self.metrics {
            m.call(CallOutcome::of(reason));
        }
        if !self.observers.is_empty() {
            self.observers
                .emit(&BulkheadEvent::Rejected { reason, waited });
        }
        self.rejection(reason)
    }

    /// Changes `max_concurrent`. A raised limit wakes waiters at once; a lowered
    /// one lets calls above it finish and admits no new one until below it.
    pub(crate) fn set_max_concurrent(&self, limit: u32) -> Result<(), ConfigError> {
        check_max_concurrent(limit)?;
        let _serial = self
            .limit_change
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let from = self.permits.set_limit(limit);
        if limit > from {
            // Unconditionally: the wake-up orders the new limit before the
            // waiter's next look (see `permits`). The woken waiter wakes the next
            // while permits remain free.
            self.notify.notify_one();
        }
        if let Some(m) = &self.metrics {
            m.limit(limit);
        }
        if from != limit {
            tracing::info!(downstream = %self.name, from, to = limit, "bulkhead limit changed");
            if !self.observers.is_empty() {
                self.observers
                    .emit(&BulkheadEvent::LimitChanged { from, to: limit });
            }
        }
        Ok(())
    }
}

/// A held permit: given back when dropped.
pub(crate) struct Permit {
    shared: Arc<Lane<Shared>>,
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.shared.release();
    }
}

/// A place in the queue: left when dropped, unless turned into a permit.
pub(crate) struct QueueSlot {
    /// `None` once the place became a permit.
    shared: Option<Arc<Lane<Shared>>>,
}

impl QueueSlot {
    /// Takes a free permit and leaves the queue in one step, if a permit is free.
    pub(crate) fn try_acquire(&mut self) -> Option<Permit> {
        let shared = self.shared.as_ref()?;
        let wake_next = shared.permits.try_acquire_queued()?;
        if wake_next {
            shared.notify.notify_one();
        }
        if let Some(m) = &shared.metrics {
            m.dequeued();
            m.acquired();
        }
        self.shared.take().map(|shared| Permit { shared })
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.permits.leave_queue();
            if let Some(m) = &shared.metrics {
                m.dequeued();
            }
        }
    }
}
