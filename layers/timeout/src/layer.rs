use std::sync::Arc;
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
    pub(crate) timeout: Duration,
    pub(crate) armed: Duration,
    pub(crate) metrics: TimeoutMetrics,
}

impl Shared {
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
                timeout,
                // Arithmetic uses a timeout clamped to ten years, so `now + armed`
                // cannot overflow and needs no checked path per call.
                armed: timeout.min(Duration::from_secs(10 * 365 * 86_400)),
                metrics,
            })),
        })
    }

    /// The downstream name.
    pub fn name(&self) -> &Name {
        &self.shared.name
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.shared.clone())
    }
}
