use std::sync::Arc;
use std::time::Duration;

use palisade_core::{ConfigError, Name};

use super::shared::Shared;

/// Inspects and controls an adaptive limiter at runtime. Cheap to clone.
///
/// ```
/// use palisade_limit::adaptive::AdaptiveLimitLayer;
///
/// let layer = AdaptiveLimitLayer::builder("inventory")
///     .min_limit(2)
///     .max_limit(50)
///     .initial_limit(10)
///     .build()
///     .unwrap();
/// let handle = layer.handle();
/// assert_eq!((handle.limit(), handle.in_flight(), handle.min_rtt()), (10, 0, None));
/// handle.set_limit(25).unwrap();
/// assert_eq!(handle.limit(), 25);
/// assert_eq!(handle.set_limit(51).unwrap_err().field(), "limit");
/// ```
#[derive(Clone)]
pub struct AdaptiveLimitHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AdaptiveLimitHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveLimitHandle")
            .field("name", &self.shared.name)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("min_rtt", &self.min_rtt())
            .finish()
    }
}

impl AdaptiveLimitHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The limiter's name (the `downstream` label).
    pub fn name(&self) -> &Name {
        &self.shared.name
    }

    /// The concurrency limit in force.
    pub fn limit(&self) -> u32 {
        self.shared.permits.limit()
    }

    /// Calls holding a permit: admitted (in `poll_ready`) and not yet finished.
    pub fn in_flight(&self) -> u32 {
        self.shared.permits.in_flight()
    }

    /// The smallest RTT of a successful call since the limiter was built or this was
    /// last reset; `None` before any.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.shared.min_rtt()
    }

    /// Forgets the minimum RTT (after a deployment or a topology change made the
    /// old one meaningless); the next successful call sets it again.
    pub fn reset_min_rtt(&self) {
        self.shared.reset_min_rtt();
    }

    /// The bounds the limit stays within: `(min_limit, max_limit)`.
    pub fn bounds(&self) -> (u32, u32) {
        (self.shared.min_limit, self.shared.max_limit)
    }

    /// Sets the limit by hand; the algorithm carries on from it with the next
    /// sample. A limit outside the bounds is refused (field `limit`) and nothing
    /// changes. Calls already in flight over a lowered limit finish normally; new
    /// ones are refused until the count is under it.
    pub fn set_limit(&self, limit: u32) -> Result<(), ConfigError> {
        self.shared.set_limit(limit)
    }
}
