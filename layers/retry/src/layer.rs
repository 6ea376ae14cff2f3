use std::sync::Arc;

use palisade_core::{AllErrorsFail, ConfigError, Name, Outcome};
use tower_layer::Layer;

use crate::backoff::Backoff;
use crate::budget::{BudgetConfig, RetryBudget};
use crate::config::RetryConfig;
use crate::metrics::RetryMetrics;
use crate::protocol::CloneRequests;
use crate::service::{Jitter, Retry, Shared};

/// A user predicate: may this failure be retried at all?
pub(crate) type RetryIf = Arc<dyn Fn(&Outcome) -> bool + Send + Sync>;

/// Retries failed calls of one downstream. Every service this layer makes, and every
/// clone, shares one retry budget.
///
/// ```
/// use palisade_retry::RetryLayer;
///
/// let layer = RetryLayer::builder("inventory").max_attempts(3).build().unwrap();
/// let svc = tower::ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|sku: String| async move { Ok::<_, std::io::Error>(sku.len()) });
/// # drop(svc);
/// ```
pub struct RetryLayer<P = CloneRequests, C = AllErrorsFail> {
    shared: Arc<Shared>,
    protocol: P,
    classify: C,
}

impl<P: Clone, C: Clone> Clone for RetryLayer<P, C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            protocol: self.protocol.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<P, C> std::fmt::Debug for RetryLayer<P, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLayer")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl RetryLayer {
    /// Starts a builder for the retry layer of downstream `name`.
    pub fn builder(name: &str) -> Builder {
        Builder {
            name: name.to_owned(),
            config: RetryConfig::default(),
            protocol: CloneRequests,
            classify: AllErrorsFail,
            retry_if: None,
            metrics: true,
            seed: None,
        }
    }
}

impl<P, C> RetryLayer<P, C> {
    /// The shared retry budget: for inspection, and to let a
    /// [`HedgeLayer`](crate::HedgeLayer) spend from the same budget.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.shared.budget
    }
}

impl<S: Clone, P: Clone, C: Clone> Layer<S> for RetryLayer<P, C> {
    type Service = Retry<S, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(
            inner,
            Arc::clone(&self.shared),
            self.protocol.clone(),
            self.classify.clone(),
        )
    }
}

/// Builds a [`RetryLayer`]; see [`RetryConfig`] for each setting's default.
pub struct Builder<P = CloneRequests, C = AllErrorsFail> {
    name: String,
    config: RetryConfig,
    protocol: P,
    classify: C,
    retry_if: Option<RetryIf>,
    metrics: bool,
    seed: Option<u64>,
}

impl<P, C> std::fmt::Debug for Builder<P, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl<P, C> Builder<P, C> {
    /// Replaces every setting with `config`.
    pub fn config(mut self, config: RetryConfig) -> Self {
        self.config = config;
        self
    }

    /// Attempts per call, the first included.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts;
        self
    }

    /// The wait before each retry.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// The retry budget's settings.
    pub fn budget(mut self, budget: BudgetConfig) -> Self {
        self.config.budget = budget;
        self
    }

    /// Only failures for which `predicate` is true are retried (on top of the
    /// classifier and the built-in rules).
    pub fn retry_if(
        mut self,
        predicate: impl Fn(&Outcome) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.retry_if = Some(Arc::new(predicate));
        self
    }

    /// Classifies results with `classify` instead of [`AllErrorsFail`].
    pub fn classify<C2>(self, classify: C2) -> Builder<P, C2> {
        Builder {
            name: self.name,
            config: self.config,
            protocol: self.protocol,
            classify,
            retry_if: self.retry_if,
            metrics: self.metrics,
            seed: self.seed,
        }
    }

    /// Replays requests and reads response hints with `protocol` instead of
    /// [`CloneRequests`] (e.g. `HttpRetry` for HTTP).
    pub fn protocol<P2>(self, protocol: P2) -> Builder<P2, C> {
        Builder {
            name: self.name,
            config: self.config,
            protocol,
            classify: self.classify,
            retry_if: self.retry_if,
            metrics: self.metrics,
            seed: self.seed,
        }
    }

    /// Records no metrics.
    pub fn without_metrics(mut self) -> Self {
        self.metrics = false;
        self
    }

    /// Draws the backoff jitter from one generator seeded from `seed`, shared by
    /// every service and clone the layer makes, so that a run whose calls happen in
    /// the same order (paused time, a simulated network) waits the same delays.
    /// Default: `fastrand`'s generator of the calling thread.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<RetryLayer<P, C>, ConfigError> {
        let name = Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        self.config.validate()?;
        let budget = Arc::new(RetryBudget::new(&self.config.budget)?);
        let metrics = self.metrics.then(|| RetryMetrics::register(&name));
        Ok(RetryLayer {
            shared: Arc::new(Shared {
                name,
                config: self.config,
                budget,
                metrics,
                retry_if: self.retry_if,
                jitter: Jitter::new(self.seed),
            }),
            protocol: self.protocol,
            classify: self.classify,
        })
    }
}
