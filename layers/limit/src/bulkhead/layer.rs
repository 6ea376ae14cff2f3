use std::sync::Arc;
use std::time::Duration;

use palisade_core::lanes::Lanes;
use palisade_core::observe::{Observer, Observers};
use palisade_core::{ConfigError, Name};
use tower_layer::Layer;

use super::config::BulkheadConfig;
use super::handle::BulkheadHandle;
use super::metrics::{BulkheadEvent, BulkheadMetrics};
use super::service::Bulkhead;
use super::shared::Shared;

/// Wraps services in one shared bulkhead. Every service this layer makes, and
/// every clone of them, takes its permits from the same pool.
///
/// ```
/// use palisade_limit::bulkhead::BulkheadLayer;
/// use std::time::Duration;
///
/// let layer = BulkheadLayer::builder("inventory")
///     .max_concurrent(10)
///     .max_queue(20)
///     .max_wait(Duration::from_millis(200))
///     .build()
///     .expect("valid bulkhead settings");
/// let svc = tower::ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|sku: String| async move { Ok::<_, std::io::Error>(sku.len()) });
/// # drop(svc);
/// ```
#[derive(Clone)]
pub struct BulkheadLayer {
    shared: Lanes<Shared>,
}

impl std::fmt::Debug for BulkheadLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("shared", &*self.shared)
            .finish()
    }
}

impl BulkheadLayer {
    /// Starts a builder for the bulkhead of downstream `name` (the `downstream`
    /// metric label: ASCII letters, digits, `_`, `-`, `.`).
    pub fn builder(name: &str) -> BulkheadBuilder {
        BulkheadBuilder {
            name: name.to_owned(),
            config: BulkheadConfig::default(),
            observers: Vec::new(),
            metrics: true,
        }
    }

    /// A bulkhead for `name` with the settings of `config`.
    pub fn from_config(name: &str, config: BulkheadConfig) -> Result<Self, ConfigError> {
        Self::builder(name).config(config).build()
    }

    /// A handle to the bulkhead.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle::new(Arc::clone(self.shared.shared()))
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::new(inner, self.shared.clone())
    }
}

/// Builds a [`BulkheadLayer`]. Every setting has a default; see
/// [`BulkheadConfig`] for each. `build` validates and names the bad field.
pub struct BulkheadBuilder {
    name: String,
    config: BulkheadConfig,
    observers: Vec<Arc<dyn Observer<BulkheadEvent>>>,
    metrics: bool,
}

impl std::fmt::Debug for BulkheadBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkheadBuilder")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl BulkheadBuilder {
    /// Replaces every setting with `config`.
    pub fn config(mut self, config: BulkheadConfig) -> Self {
        self.config = config;
        self
    }

    /// Admits at most `n` calls at once (at least 1).
    pub fn max_concurrent(mut self, n: u32) -> Self {
        self.config.max_concurrent = n;
        self
    }

    /// Lets at most `n` calls wait for a permit; 0 refuses at once when full.
    pub fn max_queue(mut self, n: u32) -> Self {
        self.config.max_queue = n;
        self
    }

    /// Refuses a call that has waited `wait` without getting a permit.
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.config.max_wait = wait;
        self
    }

    /// Adds an observer of the bulkhead's events (called inline; keep it cheap).
    pub fn on_event(mut self, observer: impl Observer<BulkheadEvent>) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Records no metrics (events still reach observers).
    pub fn without_metrics(mut self) -> Self {
        self.metrics = false;
        self
    }

    /// Validates the settings and builds the layer, registering its metrics
    /// with the current recorder.
    pub fn build(self) -> Result<BulkheadLayer, ConfigError> {
        let name = Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        self.config.validate()?;
        let metrics = self
            .metrics
            .then(|| BulkheadMetrics::register(&name, self.config.max_concurrent));
        let shared = Shared::new(name, &self.config, metrics, Observers::new(self.observers))?;
        Ok(BulkheadLayer {
            shared: Lanes::new(shared),
        })
    }
}
