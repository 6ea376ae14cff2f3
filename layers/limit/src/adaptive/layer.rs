use std::sync::Arc;

use palisade_core::observe::{Observer, Observers};
use palisade_core::{AllErrorsFail, ConfigError, Name, RejectionKind};
use tower_layer::Layer;

use super::algorithm::{DynAlgorithm, LimitAlgorithm, running};
use super::config::{AdaptiveLimitConfig, validate_limits};
use super::handle::AdaptiveLimitHandle;
use super::metrics::{AdaptiveEvent, AdaptiveMetrics};
use super::service::AdaptiveLimit;
use super::shared::{Settings, Shared};

/// Wraps services in one shared adaptive concurrency limit. Every service this
/// layer makes, and every clone of them, shares the limit.
///
/// ```
/// use palisade_limit::adaptive::{AdaptiveLimitLayer, Aimd};
/// use palisade_core::RejectionKind;
/// use std::time::Duration;
///
/// // A server shedding inbound load when its handlers slow down.
/// let layer = AdaptiveLimitLayer::builder("orders-inbound")
///     .algorithm(Aimd { latency_threshold: Duration::from_millis(200), ..Aimd::default() })
///     .min_limit(4)
///     .max_limit(500)
///     .initial_limit(50)
///     .rejection(RejectionKind::Shed)
///     .build()
///     .expect("valid limiter settings");
/// let svc = tower::ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|name: String| async move { Ok::<_, std::io::Error>(name.len()) });
/// # drop(svc);
/// ```
#[derive(Clone)]
pub struct AdaptiveLimitLayer<C = AllErrorsFail> {
    shared: Arc<Shared>,
    classify: C,
}

impl<C> std::fmt::Debug for AdaptiveLimitLayer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveLimitLayer")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl AdaptiveLimitLayer {
    /// Starts a builder for the limiter of downstream `name` (the `downstream`
    /// metric label: ASCII letters, digits, `_`, `-`, `.`).
    pub fn builder(name: &str) -> AdaptiveLimitBuilder {
        let defaults = AdaptiveLimitConfig::default();
        AdaptiveLimitBuilder {
            name: name.to_owned(),
            algorithm: defaults.algorithm.into_running(),
            min_limit: defaults.min_limit,
            max_limit: defaults.max_limit,
            initial_limit: defaults.initial_limit,
            rejection: defaults.rejection,
            classify: AllErrorsFail,
            observers: Vec::new(),
            metrics: true,
        }
    }

    /// A limiter for `name` with the settings of `config`.
    pub fn from_config(name: &str, config: AdaptiveLimitConfig) -> Result<Self, ConfigError> {
        Self::builder(name).config(config).build()
    }
}

impl<C> AdaptiveLimitLayer<C> {
    /// A handle to the limiter.
    pub fn handle(&self) -> AdaptiveLimitHandle {
        AdaptiveLimitHandle::new(Arc::clone(&self.shared))
    }
}

impl<S, C: Clone> Layer<S> for AdaptiveLimitLayer<C> {
    type Service = AdaptiveLimit<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimit::new(inner, Arc::clone(&self.shared), self.classify.clone())
    }
}

/// Builds an [`AdaptiveLimitLayer`]. Every setting has a default (see
/// [`AdaptiveLimitConfig`]); `build` validates and names the bad field.
pub struct AdaptiveLimitBuilder<C = AllErrorsFail> {
    name: String,
    algorithm: Result<Box<dyn DynAlgorithm>, ConfigError>,
    min_limit: u32,
    max_limit: u32,
    initial_limit: Option<u32>,
    rejection: RejectionKind,
    classify: C,
    observers: Vec<Arc<dyn Observer<AdaptiveEvent>>>,
    metrics: bool,
}

impl<C> std::fmt::Debug for AdaptiveLimitBuilder<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveLimitBuilder")
            .field("name", &self.name)
            .field("min_limit", &self.min_limit)
            .field("max_limit", &self.max_limit)
            .field("initial_limit", &self.initial_limit)
            .field("rejection", &self.rejection)
            .finish_non_exhaustive()
    }
}

impl<C> AdaptiveLimitBuilder<C> {
    /// Replaces every setting with `config` (algorithm included).
    pub fn config(mut self, config: AdaptiveLimitConfig) -> Self {
        self.algorithm = config.algorithm.into_running();
        self.min_limit = config.min_limit;
        self.max_limit = config.max_limit;
        self.initial_limit = config.initial_limit;
        self.rejection = config.rejection;
        self
    }

    /// Moves the limit with `algorithm`: [`Aimd`](super::Aimd),
    /// [`Gradient2`](super::Gradient2) (the default) or your own. Its settings are
    /// checked by `build`.
    pub fn algorithm<A: LimitAlgorithm>(mut self, algorithm: A) -> Self {
        self.algorithm = running(algorithm);
        self
    }

    /// The limit never goes below `limit` (`>= 1`). Default 1.
    pub fn min_limit(mut self, limit: u32) -> Self {
        self.min_limit = limit;
        self
    }

    /// The limit never goes above `limit`. Default 200.
    pub fn max_limit(mut self, limit: u32) -> Self {
        self.max_limit = limit;
        self
    }

    /// Starts from `limit`, within the bounds. Default: 20, clamped to the bounds.
    pub fn initial_limit(mut self, limit: u32) -> Self {
        self.initial_limit = Some(limit);
        self
    }

    /// Refuses calls over the limit with `kind`:
    /// [`BulkheadFull`](RejectionKind::BulkheadFull) (the default) for a client
    /// protecting itself from a slow downstream, [`Shed`](RejectionKind::Shed) for
    /// a server protecting itself from its callers. Other kinds are refused by
    /// `build`.
    pub fn rejection(mut self, kind: RejectionKind) -> Self {
        self.rejection = kind;
        self
    }

    /// Classifies calls with `classify` instead of [`AllErrorsFail`]: failures are
    /// drops for the algorithm, ignored outcomes are not sampled. A
    /// [`Timeout`](RejectionKind::Timeout) rejection from an inner layer is a drop
    /// whatever the classifier says.
    pub fn classify<C2>(self, classify: C2) -> AdaptiveLimitBuilder<C2> {
        AdaptiveLimitBuilder {
            name: self.name,
            algorithm: self.algorithm,
            min_limit: self.min_limit,
            max_limit: self.max_limit,
            initial_limit: self.initial_limit,
            rejection: self.rejection,
            classify,
            observers: self.observers,
            metrics: self.metrics,
        }
    }

    /// Adds an observer of the limiter's events (called inline; keep it cheap).
    pub fn on_event(mut self, observer: impl Observer<AdaptiveEvent>) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Records no metrics (events still reach observers).
    pub fn without_metrics(mut self) -> Self {
        self.metrics = false;
        self
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<AdaptiveLimitLayer<C>, ConfigError> {
        let name = Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        let algorithm = self.algorithm?;
        let initial_limit = validate_limits(
            self.min_limit,
            self.max_limit,
            self.initial_limit,
            self.rejection,
        )?;
        let metrics = self.metrics.then(|| AdaptiveMetrics::register(&name));
        let shared = Shared::new(Settings {
            name,
            algorithm,
            min_limit: self.min_limit,
            max_limit: self.max_limit,
            initial_limit,
            rejection: self.rejection,
            metrics,
            observers: Observers::new(self.observers),
        });
        Ok(AdaptiveLimitLayer {
            shared,
            classify: self.classify,
        })
    }
}
