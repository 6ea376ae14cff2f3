use std::sync::Arc;

use palisade_core::{AllErrorsFail, ConfigError, Name, RejectionKind};
use tower_layer::Layer;

use super::{Fallback, NoMark, Policy};
use crate::config::{FallbackConfig, KindSet};
use crate::metrics::FallbackMetrics;

/// Wraps services so that a failed or refused call is answered with a fallback
/// response, marked and counted by reason.
///
/// ```
/// use palisade_fallback::{FallbackCause, FallbackLayer};
/// use palisade_core::{Rejection, RejectionKind};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = FallbackLayer::builder("recommendations", |cause: &FallbackCause<'_>| {
///     format!("bestsellers (because {})", cause.reason())
/// })
/// .build()
/// .unwrap();
/// let mut svc = ServiceBuilder::new().layer(layer).service_fn(|user: u32| async move {
///     match user {
///         0 => Err(Rejection::new(RejectionKind::CircuitOpen)),
///         _ => Ok(format!("picked for user {user}")),
///     }
/// });
/// assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), "picked for user 7");
/// assert_eq!(svc.ready().await.unwrap().call(0).await.unwrap(),
///     "bestsellers (because circuit_open)");
/// # }
/// ```
pub struct FallbackLayer<F, C = AllErrorsFail, M = NoMark> {
    policy: Arc<Policy<F, C, M>>,
}

impl<F, C, M> Clone for FallbackLayer<F, C, M> {
    fn clone(&self) -> Self {
        Self {
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<F, C, M> std::fmt::Debug for FallbackLayer<F, C, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("policy", &self.policy)
            .finish()
    }
}

impl<F> FallbackLayer<F> {
    /// Starts a builder for downstream `name` (the `downstream` metric label) whose
    /// fallback responses come from `fallback`: a closure
    /// `Fn(&FallbackCause<'_>) -> Res`, or [`Value`](crate::Value) for a fixed
    /// response.
    ///
    /// By default every classified failure and every rejection falls back, judged by
    /// [`AllErrorsFail`], unmarked.
    pub fn builder(name: &str, fallback: F) -> FallbackBuilder<F> {
        FallbackBuilder {
            name: name.to_owned(),
            config: FallbackConfig::default(),
            fallback,
            classify: AllErrorsFail,
            mark: NoMark,
        }
    }
}

impl<F, C, M> FallbackLayer<F, C, M> {
    /// The downstream name.
    pub fn name(&self) -> &Name {
        &self.policy.name
    }
}

impl<S, F, C, M> Layer<S> for FallbackLayer<F, C, M> {
    type Service = Fallback<S, F, C, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback {
            inner,
            policy: Arc::clone(&self.policy),
        }
    }
}

/// Builds a [`FallbackLayer`]; see [`FallbackConfig`] for the settings.
pub struct FallbackBuilder<F, C = AllErrorsFail, M = NoMark> {
    name: String,
    config: FallbackConfig,
    fallback: F,
    classify: C,
    mark: M,
}

impl<F, C, M> std::fmt::Debug for FallbackBuilder<F, C, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackBuilder")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<F, C, M> FallbackBuilder<F, C, M> {
    /// Replaces the settings with `config`.
    pub fn config(mut self, config: FallbackConfig) -> Self {
        self.config = config;
        self
    }

    /// Whether classified failures fall back (default true).
    pub fn on_failure(mut self, on: bool) -> Self {
        self.config.on_failure = on;
        self
    }

    /// The rejection kinds that fall back (default: all).
    pub fn on_rejections(mut self, kinds: &[RejectionKind]) -> Self {
        self.config.on_rejections = crate::config::RejectionName::ALL
            .into_iter()
            .filter(|n| kinds.contains(&n.kind()))
            .collect();
        self
    }

    /// Judges calls with `classify` (e.g. `HttpClassifier`) instead of
    /// [`AllErrorsFail`].
    pub fn classify<C2>(self, classify: C2) -> FallbackBuilder<F, C2, M> {
        FallbackBuilder {
            name: self.name,
            config: self.config,
            fallback: self.fallback,
            classify,
            mark: self.mark,
        }
    }

    /// Marks fallback responses with `mark` (e.g. `HttpMark` for the
    /// `x-palisade-fallback` header and extension).
    pub fn mark<M2>(self, mark: M2) -> FallbackBuilder<F, C, M2> {
        FallbackBuilder {
            name: self.name,
            config: self.config,
            fallback: self.fallback,
            classify: self.classify,
            mark,
        }
    }

    /// Validates the settings, registers the metrics and builds the layer.
    pub fn build(self) -> Result<FallbackLayer<F, C, M>, ConfigError> {
        let name = Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        self.config.validate()?;
        let on_rejections: KindSet = self.config.kinds();
        let metrics = FallbackMetrics::register(&name);
        Ok(FallbackLayer {
            policy: Arc::new(Policy {
                name,
                fallback: self.fallback,
                classify: self.classify,
                mark: self.mark,
                on_failure: self.config.on_failure,
                on_rejections,
                metrics,
            }),
        })
    }
}
