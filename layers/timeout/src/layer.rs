use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_core::lanes::Lanes;
use palisade_core::{ConfigError, Name, Rejection, RejectionKind};
use tower_layer::Layer;

use crate::Timeout;
use crate::metrics::TimeoutMetrics;

/// Bounds every call of the services it wraps by a timeout and by the request's
/// [`Deadline`](palisade_core::Deadline), whichever falls first.
///
/// Inside a retry layer this is a per-attempt timeout; outside it, a total one (see
/// [the crate docs](crate#per-attempt-or-total)).
///
/// ```
/// use palisade_timeout::TimeoutLayer;
/// use std::time::Duration;
///
/// let layer = TimeoutLayer::new("inventory", Duration::from_millis(300))?;
/// let svc = tower::ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|sku: String| async move { Ok::<_, std::io::Error>(sku.len()) });
/// # drop(svc);
///
/// let bad = TimeoutLayer::new("inventory", Duration::ZERO).unwrap_err();
/// assert_eq!(bad.to_string(), "timeout: must be more than zero");
/// # Ok::<(), palisade_core::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    shared: Lanes<Shared>,
}

/// What every service of one layer shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: Name,
    /// The timeout in nanoseconds, clamped to ten years so that `now + timeout`
    /// cannot overflow and needs no checked path per call. Changed by a
    /// [`TimeoutHandle`]; read (relaxed) once per call.
    armed: AtomicU64,
    pub(crate) metrics: TimeoutMetrics,
}

/// The longest timeout a call is armed with (longer ones are clamped to it).
const MAX_ARMED: Duration = Duration::from_secs(10 * 365 * 86_400);

fn armed_nanos(timeout: Duration) -> u64 {
    // Ten years in nanoseconds fits a u64 (about 3.2e17).
    timeout.min(MAX_ARMED).as_nanos() as u64
}

impl Shared {
    /// The timeout a call made now gets.
    #[inline]
    pub(crate) fn armed(&self) -> Duration {
        Duration::from_nanos(self.armed.load(Ordering::Relaxed))
    }

    pub(crate) fn rejection(&self, kind: RejectionKind) -> Rejection {
        Rejection::new(kind).with_downstream(self.name.clone())
    }
}

impl TimeoutLayer {
    /// A timeout of `timeout` for downstream `name` (the `downstream` metric label:
    /// 1 to 64 ASCII letters, digits, `_`, `-`, `.`). Registers the layer's metrics,
    /// at zero, with the installed recorder.
    ///
    /// Refuses a bad name (field `name`) and a zero timeout (field `timeout`).
    pub fn new(name: &str, timeout: Duration) -> Result<Self, ConfigError> {
        let name = Name::new(name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        if timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be more than zero"));
        }
        let metrics = TimeoutMetrics::register(&name);
        Ok(Self {
            shared: Lanes::new(Arc::new(Shared {
                name,
                armed: AtomicU64::new(armed_nanos(timeout)),
                metrics,
            })),
        })
    }

    /// A handle that reads and changes the timeout of every service of this layer.
    pub fn handle(&self) -> TimeoutHandle {
        TimeoutHandle {
            shared: Arc::clone(self.shared.shared()),
        }
    }

    /// The downstream name.
    pub fn name(&self) -> &Name {
        &self.shared.name
    }

    /// The timeout (clamped to ten years).
    pub fn timeout(&self) -> Duration {
        self.shared.armed()
    }
}

/// Reads and changes a [`TimeoutLayer`]'s timeout at run time: calls made after a
/// change get the new timeout; calls in flight keep theirs.
///
/// ```
/// use std::time::Duration;
/// use palisade_timeout::TimeoutLayer;
///
/// let layer = TimeoutLayer::new("customer", Duration::from_millis(300)).unwrap();
/// let handle = layer.handle();
/// handle.set_timeout(Duration::from_millis(150)).unwrap();
/// assert_eq!(layer.timeout(), Duration::from_millis(150));
/// let err = handle.set_timeout(Duration::ZERO).unwrap_err();
/// assert_eq!(err.to_string(), "timeout: must be more than zero");
/// ```
#[derive(Debug, Clone)]
pub struct TimeoutHandle {
    shared: Arc<Shared>,
}

impl TimeoutHandle {
    /// The timeout (clamped to ten years).
    pub fn timeout(&self) -> Duration {
        self.shared.armed()
    }

    /// Sets the timeout for calls made from now on; a zero timeout is refused
    /// (field `timeout`) and changes nothing.
    pub fn set_timeout(&self, timeout: Duration) -> Result<(), ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::new("timeout", "must be more than zero"));
        }
        self.shared
            .armed
            .store(armed_nanos(timeout), Ordering::Relaxed);
        Ok(())
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.shared.clone())
    }
}
