use std::sync::Arc;
use std::time::Duration;

use palisade_core::observe::{Observer, Observers};
use palisade_core::{AllErrorsFail, ConfigError, Name};
use tower_layer::Layer;

use crate::config::{BreakerConfig, Mode, WindowConfig};
use crate::keyed::KeyedCircuitBreakerLayer;
use crate::lanes::Lanes;
use crate::metrics::{BreakerEvent, BreakerMetrics};
use crate::shared::Shared;
use crate::{BreakerHandle, CircuitBreaker};

/// Wraps services in one shared circuit breaker. Every service this layer makes,
/// and every clone of them, shares the breaker.
///
/// ```
/// use palisade_breaker::CircuitBreakerLayer;
/// use std::time::Duration;
///
/// let layer = CircuitBreakerLayer::builder("customer")
///     .count_window(50)
///     .failure_rate_threshold(0.5)
///     .minimum_calls(10)
///     .slow_calls(Duration::from_secs(1), 0.8)
///     .wait_in_open(Duration::from_secs(10))
///     .build()
///     .expect("valid breaker settings");
/// let svc = tower::ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|name: String| async move { Ok::<_, std::io::Error>(name.len()) });
/// # drop(svc);
/// ```
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = AllErrorsFail> {
    lanes: Lanes,
    classify: C,
}

impl<C> std::fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("shared", self.lanes.shared())
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// Starts a builder for the breaker of downstream `name` (the `downstream` metric
    /// label: ASCII letters, digits, `_`, `-`, `.`).
    pub fn builder(name: &str) -> Builder {
        Builder {
            name: name.to_owned(),
            config: BreakerConfig::default(),
            classify: AllErrorsFail,
            observers: Vec::new(),
            metrics: true,
        }
    }

    /// A breaker for `name` with the settings of `config`.
    pub fn from_config(name: &str, config: BreakerConfig) -> Result<Self, ConfigError> {
        Self::builder(name).config(config).build()
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// A handle to the breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle::new(Arc::clone(self.lanes.shared()))
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.lanes.clone(), self.classify.clone())
    }
}

/// Builds a [`CircuitBreakerLayer`] (or a keyed one). Every setting has a default;
/// see [`BreakerConfig`] for each. `build` validates and names the bad field.
pub struct Builder<C = AllErrorsFail> {
    name: String,
    config: BreakerConfig,
    classify: C,
    observers: Vec<Arc<dyn Observer<BreakerEvent>>>,
    metrics: bool,
}

impl<C> std::fmt::Debug for Builder<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<C> Builder<C> {
    /// Replaces every setting with `config`.
    pub fn config(mut self, config: BreakerConfig) -> Self {
        self.config = config;
        self
    }

    /// Judges the last `size` calls.
    pub fn count_window(mut self, size: u32) -> Self {
        self.config.window = WindowConfig::Count { size };
        self
    }

    /// Judges the calls of the last `length`, in `buckets` slices.
    pub fn time_window(mut self, length: Duration, buckets: u32) -> Self {
        self.config.window = WindowConfig::Time { length, buckets };
        self
    }

    /// Opens when the failure rate reaches `rate` (`0..=1`).
    pub fn failure_rate_threshold(mut self, rate: f64) -> Self {
        self.config.failure_rate_threshold = rate;
        self
    }

    /// Calls of at least `duration` are slow; opens when the slow rate reaches
    /// `rate` (`0..=1`).
    pub fn slow_calls(mut self, duration: Duration, rate: f64) -> Self {
        self.config.slow_call_duration = Some(duration);
        self.config.slow_call_rate_threshold = rate;
        self
    }

    /// Judges rates only once the window holds `calls` calls.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// Also opens after `failures` failures in a row.
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.config.consecutive_failures = Some(failures);
        self
    }

    /// Stays open this long after the first trip.
    pub fn wait_in_open(mut self, wait: Duration) -> Self {
        self.config.wait_in_open = wait;
        self
    }

    /// Multiplies the open wait by `multiplier` on each further trip, up to `max`.
    pub fn wait_backoff(mut self, multiplier: f64, max: Duration) -> Self {
        self.config.wait_multiplier = multiplier;
        self.config.max_wait_in_open = max;
        self
    }

    /// Shortens each open wait by a random fraction up to `jitter` (`0..=1`).
    pub fn wait_jitter(mut self, jitter: f64) -> Self {
        self.config.wait_jitter = jitter;
        self
    }

    /// Admits `probes` concurrent probe calls while half-open.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.config.half_open_probes = probes;
        self
    }

    /// Closes after `successes` successful probes.
    pub fn half_open_successes(mut self, successes: u32) -> Self {
        self.config.half_open_successes = Some(successes);
        self
    }

    /// Reopens if still half-open after `wait`.
    pub fn max_wait_in_half_open(mut self, wait: Duration) -> Self {
        self.config.max_wait_in_half_open = Some(wait);
        self
    }

    /// Gate mode: `poll_ready` is pending while calls are refused (for use inside a
    /// load balancer).
    pub fn gate(mut self) -> Self {
        self.config.mode = Mode::Gate;
        self
    }

    /// Classifies calls with `classify` instead of [`AllErrorsFail`].
    pub fn classify<C2>(self, classify: C2) -> Builder<C2> {
        Builder {
            name: self.name,
            config: self.config,
            classify,
            observers: self.observers,
            metrics: self.metrics,
        }
    }

    /// Adds an observer of the breaker's events (called inline; keep it cheap).
    pub fn on_event(mut self, observer: impl Observer<BreakerEvent>) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Records no metrics (events still reach observers).
    pub fn without_metrics(mut self) -> Self {
        self.metrics = false;
        self
    }

    fn name(&self) -> Result<Name, ConfigError> {
        Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError> {
        let name = self.name()?;
        self.config.validate()?;
        let metrics = self
            .metrics
            .then(|| Arc::new(BreakerMetrics::register(&name, false)));
        let shared = Shared::new(name, self.config, metrics, Observers::new(self.observers))?;
        Ok(CircuitBreakerLayer {
            lanes: Lanes::new(shared),
            classify: self.classify,
        })
    }

    /// Builds per-key breakers instead: each key that `key` extracts from a request
    /// gets its own breaker with these settings, held in a registry of at most
    /// `capacity` keys that forgets keys idle for `idle_timeout`.
    ///
    /// Keyed breakers decide admission in `call` (the key comes from the request),
    /// always fail fast, and aggregate their metrics under this breaker's name.
    pub fn build_keyed<F>(
        self,
        key: F,
        capacity: usize,
        idle_timeout: Duration,
    ) -> Result<KeyedCircuitBreakerLayer<F, C>, ConfigError> {
        let name = self.name()?;
        self.config.validate()?;
        if self.config.mode == Mode::Gate {
            return Err(ConfigError::new(
                "mode",
                "keyed breakers cannot gate readiness (the key is only known in call)",
            ));
        }
        let metrics = self
            .metrics
            .then(|| Arc::new(BreakerMetrics::register(&name, true)));
        KeyedCircuitBreakerLayer::new(
            name,
            self.config,
            metrics,
            Observers::new(self.observers),
            key,
            self.classify,
            capacity,
            idle_timeout,
        )
    }
}
