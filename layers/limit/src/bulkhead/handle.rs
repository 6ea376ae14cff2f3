use std::sync::Arc;
use std::time::Duration;

use palisade_core::{ConfigError, Name};

use super::config::BulkheadConfig;
use super::shared::Shared;

/// Inspects a bulkhead and changes its limit at runtime. Cheap to clone.
///
/// ```
/// use palisade_limit::bulkhead::BulkheadLayer;
///
/// let layer = BulkheadLayer::builder("payment").max_concurrent(4).build().unwrap();
/// let handle = layer.handle();
/// assert_eq!((handle.in_flight(), handle.queued(), handle.max_concurrent()), (0, 0, 4));
/// handle.set_max_concurrent(8).unwrap();
/// assert_eq!(handle.available(), 8);
/// assert_eq!(handle.set_max_concurrent(0).unwrap_err().field(), "max_concurrent");
/// ```
#[derive(Clone)]
pub struct BulkheadHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BulkheadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkheadHandle")
            .field("name", &self.shared.name)
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .field("max_concurrent", &self.max_concurrent())
            .finish()
    }
}

impl BulkheadHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The bulkhead's name (the `downstream` label).
    pub fn name(&self) -> &Name {
        &self.shared.name
    }

    /// Permits held now: calls running, plus services made ready and not yet
    /// called. Can exceed [`max_concurrent`](Self::max_concurrent) for a while
    /// after the limit was lowered.
    pub fn in_flight(&self) -> u32 {
        self.shared.permits.held()
    }

    /// Calls waiting for a permit now.
    pub fn queued(&self) -> u32 {
        self.shared.permits.queued()
    }

    /// Permits free now.
    pub fn available(&self) -> u32 {
        self.max_concurrent().saturating_sub(self.in_flight())
    }

    /// The limit on concurrent calls in force.
    pub fn max_concurrent(&self) -> u32 {
        self.shared.permits.limit()
    }

    /// The most calls that may wait.
    pub fn max_queue(&self) -> u32 {
        self.shared.max_queue
    }

    /// The longest a call waits.
    pub fn max_wait(&self) -> Duration {
        self.shared.max_wait
    }

    /// The settings in force (with the current `max_concurrent`).
    pub fn config(&self) -> BulkheadConfig {
        BulkheadConfig {
            max_concurrent: self.max_concurrent(),
            max_queue: self.max_queue(),
            max_wait: self.max_wait(),
        }
    }

    /// Changes the limit on concurrent calls. Raising it admits waiting calls at
    /// once; lowering it lets calls above the new limit finish, and admits no new
    /// call until fewer than the new limit run. Zero (or more than
    /// [`BulkheadConfig::MAX`]) is refused with an error naming `max_concurrent`,
    /// and nothing changes.
    pub fn set_max_concurrent(&self, max_concurrent: u32) -> Result<(), ConfigError> {
        self.shared.set_max_concurrent(max_concurrent)
    }
}
